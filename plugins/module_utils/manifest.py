# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_manifest as PostgreSQL's server writes it (``backup_manifest.c``), for a copy made without it.

Layout (version 1 on 13-16, version 2 with ``System-Identifier`` on 17-18)::

    { "PostgreSQL-Backup-Manifest-Version": 1,
    "Files": [
    { "Path": "backup_label", "Size": 225, "Last-Modified": "2026-11-22 19:51:31 GMT", "Checksum-Algorithm": "SHA256", "Checksum": "..." },
    ...
    ],
    "WAL-Ranges": [
    { "Timeline": 1, "Start-LSN": "0/6600050", "End-LSN": "0/8100138" }
    ],
    "Manifest-Checksum": "<sha256 hex of every byte before this line>"}

Names that are not valid UTF-8 go in ``Encoded-Path`` as lowercase hex of their bytes.
CRC32C checksums are the little-endian bytes of the CRC in hex (``0xBE29A9DB`` -> ``dba929be``).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from typing import Callable, Optional

from . import copy_state
from .backup_label import parse_backup_label
from .durable import fsync_dir, write_atomically
from .errors import PgBackupError
from .lsn import format_lsn
from .pg_control import read_control_file
from .wal import history_file_name, parse_history, timeline_ranges

ALGORITHMS = ("SHA256", "SHA224", "SHA384", "SHA512", "CRC32C", "NONE")
CHUNK = 1024 * 1024
# Never listed: the manifest itself; pg_wal's contents (pg_verifybackup ignores pg_wal).
SKIP_TOP = ("backup_manifest",)


def native_crc32c() -> Optional[Callable]:
    """A C implementation of CRC-32C, ``f(data, crc) -> crc``, when one is importable (never a pure-Python one)."""
    try:
        import crc32c as mod  # type: ignore[import-not-found]

        return mod.crc32c
    except ImportError:
        pass
    try:
        import google_crc32c as gmod  # type: ignore[import-not-found]

        return lambda data, crc: gmod.extend(crc, data)  # google_crc32c.extend takes (crc, data)
    except ImportError:
        return None


def check_algorithm(name: str) -> str:
    algo = name.upper().replace("-", "")
    if algo not in ALGORITHMS:
        raise PgBackupError(f"checksum algorithm {name!r} is not one of {', '.join(ALGORITHMS)}")
    if algo == "CRC32C" and native_crc32c() is None:
        raise PgBackupError(
            "CRC32C needs a C implementation (the crc32c or google-crc32c Python package) on this host; "
            "a pure-Python CRC over data files is far too slow; use SHA256 (the default) or install one"
        )
    return algo


def file_checksum(path: str, algo: str) -> str:
    """Lowercase hex checksum of the file at ``path`` as backup_manifest writes it."""
    with open(path, "rb", buffering=0) as f:
        if algo == "CRC32C":
            fn = native_crc32c()
            crc = 0
            while True:
                data = f.read(CHUNK)
                if not data:
                    break
                crc = fn(data, crc)
            return crc.to_bytes(4, "little").hex()
        h = hashlib.new(algo.lower())
        while True:
            data = f.read(CHUNK)
            if not data:
                break
            h.update(data)
        return h.hexdigest()


def path_field(rel: str) -> str:
    """``"Path": "..."`` for valid UTF-8, else ``"Encoded-Path": "<hex>"`` (``rel`` as os.fsdecode gives it)."""
    raw = os.fsencode(rel)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return f'"Encoded-Path": "{raw.hex()}"'
    return f'"Path": {json.dumps(text, ensure_ascii=False)}'


def format_mtime(mtime: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S GMT", time.gmtime(int(mtime)))


def file_line(rel: str, size: int, mtime: float, algo: str, checksum: Optional[str]) -> str:
    line = f'{{ {path_field(rel)}, "Size": {size}, "Last-Modified": "{format_mtime(mtime)}"'
    if algo != "NONE":
        line += f', "Checksum-Algorithm": "{algo}", "Checksum": "{checksum}"'
    return line + " }"


def render(major: int, system_identifier: int, files: list, wal_ranges: list) -> bytes:
    """The manifest's bytes: ``files`` are pre-rendered lines (:func:`file_line`), ``wal_ranges`` (tli, start, end)."""
    if not 13 <= major <= 18:
        raise PgBackupError(f"backup_manifest is written for PostgreSQL 13 to 18, not {major}")
    head = (
        '{ "PostgreSQL-Backup-Manifest-Version": 1,\n'
        if major < 17
        else f'{{ "PostgreSQL-Backup-Manifest-Version": 2,\n"System-Identifier": {system_identifier},\n'
    )
    body = head + '"Files": ['
    body += ",".join("\n" + line for line in files)
    body += '\n],\n"WAL-Ranges": ['
    body += ",".join(f'\n{{ "Timeline": {tli}, "Start-LSN": "{format_lsn(start)}", "End-LSN": "{format_lsn(end)}" }}' for tli, start, end in wal_ranges)
    body += "\n],\n"
    data = body.encode("utf-8", "surrogateescape")
    return data + f'"Manifest-Checksum": "{hashlib.sha256(data).hexdigest()}"}}\n'.encode()


def walk_copy(data_dir: str) -> list:
    """``(relative path, absolute path, lstat)`` of every regular file of a copy, tablespaces through pg_tblspc."""
    out = []
    stack = [("", data_dir)]
    while stack:
        rel, path = stack.pop()
        for de in sorted(os.scandir(path), key=lambda d: d.name):
            r = f"{rel}/{de.name}" if rel else de.name
            if not rel and (de.name in SKIP_TOP or de.name.startswith(".pgbackup-")):
                continue
            st = de.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode) and rel == "pg_tblspc":
                stack.append((r, de.path + "/"))
            elif stat.S_ISDIR(st.st_mode):
                if r == "pg_wal":
                    continue
                stack.append((r, de.path))
            elif stat.S_ISREG(st.st_mode):
                out.append((r, de.path, st))
    out.sort(key=lambda t: t[0])
    return out


def write_manifest(
    data_dir: str,
    *,
    end_lsn: int,
    end_tli: int,
    start_lsn: Optional[int] = None,
    start_tli: Optional[int] = None,
    history_dir: Optional[str] = None,
    algorithm: str = "SHA256",
    check_mode: bool = False,
) -> dict:
    """Write ``<data_dir>/backup_manifest`` for a finished copy (label placed, pg_control in place)."""
    copy_state.check_not_incomplete(data_dir)
    algo = check_algorithm(algorithm)
    _check_control_placed(data_dir)
    cf = read_control_file(data_dir)
    start_lsn, start_tli = _wal_start(data_dir, start_lsn, start_tli)
    history = _end_history(data_dir, end_tli, history_dir)
    ranges = timeline_ranges(start_lsn, start_tli, end_lsn, end_tli, history)
    files = walk_copy(data_dir)
    result = {
        "path": os.path.join(data_dir, "backup_manifest"),
        "version": 1 if cf.major_version < 17 else 2,
        "files": len(files),
        "bytes": sum(st.st_size for _r, _p, st in files),
        "checksum_algorithm": algo,
        "wal_ranges": [{"timeline": t, "start_lsn": format_lsn(s), "end_lsn": format_lsn(e)} for t, s, e in ranges],
    }
    if check_mode:
        return result
    lines, reused = _file_lines(data_dir, files, algo)
    data = render(cf.major_version, cf.system_identifier, lines, ranges)
    _write_beside_copy(data_dir, result["path"], data)
    result.update(reused_checksums=reused, manifest_checksum=data.rstrip(b'"}\n').rsplit(b'"', 1)[-1].decode())
    return result


def _check_control_placed(data_dir: str) -> None:
    """pg_control must be in place (label_place moved it): the manifest lists global/pg_control and its major version decides the format."""
    if os.path.isfile(os.path.join(data_dir, "global", "pg_control")):
        return
    if os.path.exists(os.path.join(data_dir, copy_state.PENDING_CONTROL)):
        raise PgBackupError(
            f"{data_dir} still has {copy_state.PENDING_CONTROL}: place the backup_label and move pg_control into place first",
            path=data_dir,
        )
    raise PgBackupError(f"{data_dir} has no global/pg_control: not a copy of a data directory", path=data_dir)


def _wal_start(data_dir: str, start_lsn: Optional[int], start_tli: Optional[int]) -> tuple:
    """``(start LSN, start timeline)`` of the WAL range: as given, else from the copy's backup_label."""
    if start_lsn is not None and start_tli is not None:
        return start_lsn, start_tli
    label_path = os.path.join(data_dir, "backup_label")
    try:
        with open(label_path, encoding="utf-8") as f:
            label = parse_backup_label(f.read())
    except FileNotFoundError as exc:
        raise PgBackupError(f"{data_dir} has no backup_label; give the start LSN and timeline of the WAL range", path=data_dir) from exc
    return (label.start_lsn if start_lsn is None else start_lsn), (label.start_timeline if start_tli is None else start_tli)


def _end_history(data_dir: str, end_tli: int, history_dir: Optional[str]) -> list:
    """The end timeline's history (none for timeline 1), from history_dir or the copy's pg_wal."""
    if end_tli <= 1:
        return []
    hpath = os.path.join(history_dir or os.path.join(data_dir, "pg_wal"), history_file_name(end_tli))
    try:
        with open(hpath, encoding="utf-8") as f:
            return parse_history(f.read(), end_tli)
    except FileNotFoundError as exc:
        raise PgBackupError(f"the history file of timeline {end_tli} is not at {hpath}; give history_dir (the WAL archive)", path=hpath) from exc


def _file_lines(data_dir: str, files: list, algo: str) -> tuple:
    """``(manifest lines, how many checksums were reused)``: datadir_copy's recorded sum of an unchanged file is reused."""
    rec_algo, recorded = copy_state.read_checksums(data_dir)
    lines = []
    reused = 0
    for rel, path, st in files:
        checksum = None
        if algo != "NONE":
            rec = recorded.get(rel) if rec_algo == algo else None
            if rec and rec[0] == st.st_size and rec[1] == st.st_mtime_ns:
                checksum = rec[2]
                reused += 1
            else:
                checksum = file_checksum(path, algo)
        lines.append(file_line(rel, st.st_size, st.st_mtime, algo, checksum))
    return lines, reused


def _write_beside_copy(data_dir: str, target: str, data: bytes) -> None:
    """The manifest with the data directory's owner and mode; the copy's own checksums file goes (they are in it now)."""
    dst = os.stat(data_dir)
    mode = 0o640 if dst.st_mode & 0o070 else 0o600
    write_atomically(target, data, mode=mode, owner=(dst.st_uid, dst.st_gid), temporary=target + ".pgbackup-tmp")
    ck = os.path.join(data_dir, copy_state.CHECKSUMS_FILE)
    if os.path.exists(ck):
        os.unlink(ck)
        fsync_dir(data_dir)
