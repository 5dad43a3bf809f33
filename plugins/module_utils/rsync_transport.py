# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rsync transport: ``parallel`` rsync processes (``--protect-args``, ``--files-from --from0``, argument lists
only, no shell on this side) over file lists balanced by size, over ssh from another host (or locally for a delta or a
rate-limited copy), then pg_control alone to its pending name. Its output is followed for the progress file and to
hand each file to the caller once rsync has put it in place."""

from __future__ import annotations

import os
import re
import shlex
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

from . import copy_state, processes
from .copy_plan import Plan
from .copy_progress import Progress
from .copy_source import Source
from .errors import PgBackupError

RSYNC_VANISHED = 24


def balance(entries: list, n: int) -> list:
    """Split file entries into ``n`` lists of about equal total size (largest first, to the lightest list)."""
    buckets: list = [[0, []] for _bucket in range(max(1, n))]
    for e in sorted(entries, key=lambda x: -x.size):
        b = min(buckets, key=lambda x: x[0])
        b[0] += e.size
        b[1].append(e)
    return [b[1] for b in buckets if b[1]]


def stream_rate_limit(max_rate: int, streams: int) -> Optional[int]:
    """rsync's --bwlimit (KiB/s) for each of ``streams`` concurrent streams sharing ``max_rate`` bytes/s (0: none).
    Rounded down, at least 1 KiB/s: the streams together never exceed max_rate (one that ends early leaves its share)."""
    if not max_rate:
        return None
    return max(1, max_rate // 1024 // max(1, streams))


def rsync_argv(source: Source, src_root: str, dest_root: str, files_from: str, delta: bool, progress: bool = False, bwlimit: Optional[int] = None) -> list:
    """rsync pulling ``files_from`` (NUL-separated, relative to ``src_root``) into ``dest_root``. ``progress`` adds
    ``--progress`` (bytes within each file), only asked for when there is a progress file to keep; ``bwlimit`` is
    rsync's --bwlimit in KiB/s."""
    argv = ["rsync", "--protect-args", "--links", "--perms", "--times", "--devices", "--specials", "--from0", f"--files-from={files_from}"]
    argv += ["--ignore-missing-args", OUT_FORMAT, "--no-implied-dirs"]
    if bwlimit:
        argv.append(f"--bwlimit={bwlimit}")
    if progress:
        argv.append("--progress")
    argv += ["--checksum"] if delta else ["--whole-file"]
    if source.remote:
        argv += ["-e", shlex.join(source.ssh_argv())]
    argv += ["--", source.rsync_spec(src_root.rstrip("/") + "/"), dest_root.rstrip("/") + "/"]
    return argv


def _drain(stream, into: list) -> None:
    into.append(stream.read())


_RSYNC_ESCAPE = re.compile(rb"\\#([0-7]{3})")
OUT_PREFIX = b"pgbackup-file "
OUT_FORMAT = f"--out-format={OUT_PREFIX.decode()}%l %n"
_LINE_END = re.compile(rb"[\r\n]")
_PROGRESS_LINE = re.compile(rb"^\s*([\d,.]+)\s+\d+%")


def rsync_logged_name(field: bytes) -> str:
    """A name as rsync's --out-format %n prints it: non-printable bytes (newline, non-UTF-8...) and a backslash
    before '#' come as \\#ooo (octal)."""
    return os.fsdecode(_RSYNC_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def run_rsync(argv: list, progress: Progress, on_done=None) -> None:
    """Run rsync, following its output: a ``OUT_PREFIX<size> <name>`` line as each file starts, and with
    ``--progress`` the bytes of the current file about once a second (lines ending in a carriage return), so the
    progress file moves within large files too.

    ``on_done(name)`` is called for each file once it is in place: rsync's receiver handles one file at a time and
    renames it into place before it starts the next, so a file is done when the next one is logged, and the last
    one when rsync exits."""
    proc = processes.start(argv)
    err: list = []
    t = threading.Thread(target=_drain, args=(proc.stderr, err))
    t.start()
    previous = None
    current = None  # bytes of the file in transfer counted so far; None before the first file
    pending = b""
    fd = proc.stdout.fileno()
    while True:
        data = os.read(fd, 65536)
        if not data:
            break
        *lines, pending = _LINE_END.split(pending + data)
        for line in lines:
            if line.startswith(OUT_PREFIX):
                if current is not None:
                    progress.file_done()
                current = 0
                name = rsync_logged_name(line[len(OUT_PREFIX) :].partition(b" ")[2])
                if on_done is not None and name:
                    if previous is not None:
                        on_done(previous)
                    previous = name
                continue
            m = _PROGRESS_LINE.match(line)
            if m and current is not None:
                now = int(re.sub(rb"\D", b"", m.group(1)))  # digit grouping depends on the locale
                if now > current:
                    progress.add_bytes(now - current)
                    current = now
    proc.wait()
    t.join()
    if proc.returncode not in (0, RSYNC_VANISHED):
        raise PgBackupError(f"rsync failed ({proc.returncode}): {b''.join(err).decode(errors='replace').strip()[-2000:]}", rsync_rc=proc.returncode)
    if current is not None:
        progress.file_done()
    if on_done is not None and previous is not None:
        on_done(previous)


def rsync_all(source: Source, plan: Plan, dest: str, ts_links: dict, parallel: int, delta: bool, progress: Progress,
              tmpdir: Optional[str], on_done_for: Optional[Callable] = None, max_rate: int = 0) -> None:  # fmt: skip
    """rsync (over ssh for a remote source; locally in delta mode) with ``parallel`` streams, then pg_control last.

    With ``on_done_for``, ``on_done_for(dest_root)`` is called with the name of each file rsync has put in place
    there (copy_engine hashes, fsyncs and chowns it while the others are still copied)."""
    jobs = []
    bwlimit = stream_rate_limit(max_rate, parallel)
    workdir = tmpdir or os.path.dirname(dest.rstrip("/")) or "/"
    lists = []
    try:
        for src, droot, es in plan.roots:
            items = [e for e in es if e.kind == "f" or (e.kind == "l" and e.rel not in ts_links)]
            for i, bucket in enumerate(balance(items, parallel)):
                fname = os.path.join(workdir, f".pgbackup-files-{os.getpid()}-{len(lists)}-{i}")
                with open(fname, "wb") as f:
                    f.write(b"".join(os.fsencode(e.rel) + b"\0" for e in bucket))
                lists.append(fname)
                done = None if on_done_for is None else on_done_for(droot)
                jobs.append((rsync_argv(source, src, droot, fname, delta, progress.path is not None, bwlimit), done))
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            for fut in [pool.submit(run_rsync, argv, progress, done) for argv, done in jobs]:
                fut.result()
        # pg_control last, under its pending name
        pending = os.path.join(dest, copy_state.PENDING_CONTROL)
        argv = ["rsync", "--protect-args", "--perms", "--times", "--whole-file", OUT_FORMAT]
        if source.remote:
            argv += ["-e", shlex.join(source.ssh_argv())]
        argv += ["--", source.rsync_spec(os.path.join(source.path, "global/pg_control")), pending]
        run_rsync(argv, progress)
    finally:
        for fname in lists:
            try:
                os.unlink(fname)
            except FileNotFoundError:
                pass
