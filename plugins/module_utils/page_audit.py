# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One read of every file of a copy: the manifest's digest and, for relation files, each page's LSN and checksum.

Why the LSN audit: recovery of a copy ends at its end point (the stop LSN of a backup stopped on the primary; for a
backup from a standby, the minimum recovery point of the ``pg_control`` that was copied). A page can only carry an LSN
up to the WAL its server had written (a primary) or replayed and recorded in pg_control before writing it (a standby).
So a page past the end point was copied after the end point was read - ``pg_control`` copied before the other files,
or files (volumes) taken at different times - and recovery would stop before reaching that page's state: the copy
would start and be silently inconsistent. No page may carry an LSN past the end point.

Why checksums are skipped on pages with an LSN at or after the backup's start: those pages were changed while the copy
ran and may be torn (half old, half new, read while PostgreSQL wrote them); the full-page image that the backup forces
into the WAL for their first change replaces them during recovery, as pg_basebackup's own checksum check assumes. A
page last changed before the start must be intact.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from typing import Optional

from .crc32c import crc32c as py_crc32c
from .lsn import format_lsn
from .page_checksum import BLCKSZ, PAGES_PER_CHUNK, page_checksums

# base/<db>/<relfilenode>, global/<relfilenode>, pg_tblspc/<oid>/PG_<major>_<catversion>/<db>/<relfilenode>, any fork
# and segment. (Temporary relations, t<backend>_<n>, are never copied.)
RELATION_FILE = re.compile(r"^(?:global|base/[0-9]+|pg_tblspc/[0-9]+/PG_[^/]+/[0-9]+)/[0-9]+(?:_(?:fsm|vm|init))?(?:\.([0-9]+))?$")
CHUNK = BLCKSZ * PAGES_PER_CHUNK
LISTED = 10  # pages named per kind of problem


def relation_segment(rel: str) -> Optional[int]:
    """The segment number of a relation file (0 for the first), None when ``rel`` is not a relation file."""
    match = RELATION_FILE.match(rel)
    if match is None:
        return None
    return int(match.group(1) or 0)


class _Digest:
    """update()/result() over the manifest's algorithm: CRC-32C (C when importable) or a hashlib one."""

    def __init__(self, algorithm: str) -> None:
        self.crc = algorithm == "CRC32C"
        if self.crc:
            from .manifest import native_crc32c

            self.fn = native_crc32c() or py_crc32c
            self.value = 0
        else:
            self.hash = hashlib.new(algorithm.lower())

    def update(self, data: bytes) -> None:
        if self.crc:
            self.value = self.fn(data, self.value)
        else:
            self.hash.update(data)

    def result(self) -> str:
        return self.value.to_bytes(4, "little").hex() if self.crc else self.hash.hexdigest()


def audit_file(path: str, rel: str, algorithm: Optional[str], *, checksums: bool, start_lsn: int, bound: Optional[int], relseg_size: int) -> dict:
    """Read ``path`` once: its digest, and for a relation file its pages (counts, highest LSN, offenders)."""
    segment = relation_segment(rel)
    digest = None if algorithm in (None, "NONE") else _Digest(algorithm)
    out: dict = {"rel": rel, "pages": 0, "new": 0, "checked": 0, "max_lsn": 0, "past": [], "bad": [], "partial": 0, "error": None}
    check_sums = checksums and sys.byteorder == "little"
    block = 0 if segment is None else segment * relseg_size
    try:
        with open(path, "rb", buffering=0) as handle:
            while True:
                data = handle.read(CHUNK)
                if not data:
                    break
                if digest is not None:
                    digest.update(data)
                if segment is None:
                    continue
                block = _audit_pages(data, block, out, check_sums, start_lsn, bound)
    except OSError as exc:
        out["error"] = f"{rel}: {exc.strerror}"
    out["digest"] = digest.result() if digest is not None else None
    return out


def _audit_pages(data: bytes, block: int, out: dict, check_sums: bool, start_lsn: int, bound: Optional[int]) -> int:
    whole = len(data) // BLCKSZ
    if len(data) % BLCKSZ:
        out["partial"] += 1  # a relation file is whole pages; the manifest's size check names a short copy too
    words = memoryview(data)[: whole * BLCKSZ].cast("I")
    per_page = BLCKSZ // 4
    highs, lows, uppers = words[0::per_page], words[1::per_page], memoryview(data)[: whole * BLCKSZ].cast("H")[7 :: BLCKSZ // 2]
    to_check = []
    for n in range(whole):
        if uppers[n] == 0:  # PageIsNew: never initialised (all zero, or extended but not yet written)
            out["new"] += 1
            continue
        lsn = (highs[n] << 32) | lows[n]
        if lsn > out["max_lsn"]:
            out["max_lsn"] = lsn
        if bound is not None and lsn > bound:
            out["past"].append((block + n, lsn))
        if check_sums and lsn < start_lsn:
            to_check.append(n)
    out["pages"] += whole
    if to_check:
        sums = page_checksums(data[: whole * BLCKSZ], block)
        stored = memoryview(data)[: whole * BLCKSZ].cast("H")[4 :: BLCKSZ // 2]
        for n in to_check:
            out["checked"] += 1
            if sums[n] != stored[n]:
                out["bad"].append((block + n, stored[n], sums[n]))
    return block + whole


def audit(files: list, *, parallel: int, checksums: bool, start_lsn: int, bound: Optional[int], relseg_size: int) -> tuple:
    """Audit every ``(path, rel, algorithm)``; returns ``({rel: result}, summary)``. Processes when ``parallel > 1``."""
    started = time.monotonic()
    options = {"checksums": checksums, "start_lsn": start_lsn, "bound": bound, "relseg_size": relseg_size}
    if parallel > 1 and len(files) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # fork: the module's code is already imported; nothing needs pickling but the arguments and results.
        with ProcessPoolExecutor(max_workers=parallel, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = [pool.submit(audit_file, path, rel, algo, **options) for path, rel, algo in files]
            results = [f.result() for f in futures]
    else:
        results = [audit_file(path, rel, algo, **options) for path, rel, algo in files]
    by_rel = {r["rel"]: r for r in results}
    summary = {
        "relation_files": sum(1 for r in results if relation_segment(r["rel"]) is not None),
        "read": sum(r["pages"] for r in results),
        "new_or_zero": sum(r["new"] for r in results),
        "checksum_verified": sum(r["checked"] for r in results),
        "checksums": checksums and sys.byteorder == "little",
        "max_lsn": format_lsn(max((r["max_lsn"] for r in results), default=0)),
        "bound": None if bound is None else format_lsn(bound),
        "bytes": sum(os.path.getsize(p) for p, _r, _a in files if os.path.exists(p)),
        "seconds": round(time.monotonic() - started, 2),
    }
    return by_rel, summary


def page_problems(by_rel: dict, bound: Optional[int], bound_what: str) -> list:
    """The problems the audit found, each naming the first files and pages and what it means."""
    problems = []
    past = [(rel, blk, lsn) for rel, r in sorted(by_rel.items()) for blk, lsn in r["past"]]
    if past:
        named = ", ".join(f"{rel} block {blk} (LSN {format_lsn(lsn)})" for rel, blk, lsn in past[:LISTED])
        more = f" and {len(past) - LISTED} more" if len(past) > LISTED else ""
        problems.append(
            f"{len(past)} page(s) carry an LSN past the copy's end point {format_lsn(bound)} ({bound_what}): {named}{more}. "
            "These pages were copied after the end point was read: global/pg_control was not copied last, or the copy mixes "
            "files (or volume snapshots) taken at different times. Recovery would stop before their changes and the copy "
            "would be silently inconsistent: discard it and take a new backup"
        )
    bad = [(rel, blk, stored, computed) for rel, r in sorted(by_rel.items()) for blk, stored, computed in r["bad"]]
    if bad:
        named = ", ".join(f"{rel} block {blk} (stored {stored}, computed {computed})" for rel, blk, stored, computed in bad[:LISTED])
        more = f" and {len(bad) - LISTED} more" if len(bad) > LISTED else ""
        problems.append(
            f"{len(bad)} page(s) last changed before the backup's start fail their data checksum: {named}{more}. "
            "WAL replay will not repair them: the source's page is damaged or the copy changed it; check the source with "
            "pg_checksums or pg_amcheck and take a new backup"
        )
    partial = sorted(rel for rel, r in by_rel.items() if r["partial"])
    if partial:
        problems.append(f"{len(partial)} relation file(s) do not hold whole {BLCKSZ}-byte pages: {', '.join(partial[:LISTED])}")
    errors = [r["error"] for r in by_rel.values() if r["error"]]
    if errors:
        problems.append(f"{len(errors)} file(s) could not be read: {', '.join(errors[:LISTED])}")
    return problems
