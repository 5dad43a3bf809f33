# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Copy a PostgreSQL data directory (and its tablespaces) the way a base backup would: the runner.

Runs on the destination host; the source is local or reached over ssh. Steps:

1. List the source (``os.scandir`` locally; ``find -printf`` over ssh, NUL-separated), tablespace
   targets included, and filter it with :mod:`exclusions` for the source's major version.
2. Refuse before touching anything: no data directory, non-empty destination without delta, live
   postmaster.pid, nested paths, tablespace landing on its source, too little free space.
3. Write the incomplete marker, create every directory, then copy:
   - over ssh (or in delta mode): rsync (``-s``/``--protect-args``, ``--files-from --from0``, argument
     lists only, no shell on this side) with N streams over lists balanced by size; each file rsync has
     put in place is read once at the destination (page cache) for SHA-256, fsynced and chowned while the
     next ones are copied. Delta mode adds ``--checksum`` (never size+mtime alone) and removes what the
     source no longer has.
   - on one host: N threads read each file once, hash it on the way and write it (mode, mtime, owner);
     then every file is fsynced, 16 at a time.
4. Copy ``global/pg_control`` last, to ``global/pg_control.pgbackup-pending``. A finished backup (source_kind
   finished_backup, see finished_backup.py) has its label already: its pg_control is renamed into place at once and
   its tablespace_map rewritten when a tablespace moved.
5. fsync every directory; record the sums; remove the marker.

The source is read once (by rsync, or by the copy itself on one host).

The parts: copy_source (where the files are, listing), copy_plan (what is copied, the refusals), copy_progress,
rsync_transport, stream_transport and local_transport (how the bytes move); this module runs them and hashes, fsyncs
and records what they put in place. Its public names stay importable from here.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import pwd
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from . import copy_state, finished_backup, stream_transport
from .copy_plan import Plan, check_delta_destination, check_destination, delta_removals, delta_remove, make_plan, oid_of
from .copy_progress import Progress
from .copy_source import Entry, Source, list_tree, ssh_hint
from .durable import fsync_dir
from .errors import PgBackupError
from .local_transport import CHUNK, local_copy_all
from .rsync_transport import OUT_FORMAT, OUT_PREFIX, balance, rsync_all, rsync_argv, rsync_logged_name, run_rsync, stream_rate_limit

__all__ = [
    "OUT_FORMAT", "OUT_PREFIX", "Entry", "Plan", "Progress", "Source", "balance", "check_delta_destination", "check_destination",
    "check_transport", "delta_removals", "execute", "make_plan", "owner_ids", "rsync_argv", "rsync_logged_name", "run_rsync",
    "ssh_hint", "stream_rate_limit",
]  # fmt: skip


def _hash_fsync(path: str, uid: int, gid: int) -> Optional[tuple]:
    """SHA-256 of the copied file, fsync and chown; None when it vanished from the source (never copied)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        h = hashlib.sha256()
        size = 0
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while True:
            n = os.readv(fd, [buf])
            if not n:
                break
            h.update(view[:n])
            size += n
        os.fsync(fd)
        if uid >= 0:
            os.fchown(fd, uid, gid)
        st = os.fstat(fd)
        return size, st.st_mtime_ns, h.hexdigest()
    finally:
        os.close(fd)


def owner_ids(owner: Optional[str]) -> tuple:
    if not owner:
        return -1, -1
    try:
        pw = pwd.getpwnam(owner)
    except KeyError as exc:
        raise PgBackupError(f"owner {owner!r} is not a user on this host") from exc
    if os.geteuid() != 0 and pw.pw_uid != os.geteuid():
        raise PgBackupError(f"only root can give the copy to {owner}; run with become or set owner to the current user")
    return pw.pw_uid, pw.pw_gid


def execute(source: Source, plan: Plan, dest: str, *, parallel: int = 1, delta: bool = False, owner: Optional[str] = "postgres",
            progress_file: Optional[str] = None, tmpdir: Optional[str] = None, max_rate: int = 0,
            transport: str = "rsync", piece_size: int = stream_transport.PIECE) -> dict:  # fmt: skip
    check_transport(source, transport, delta, max_rate)
    uid, gid = owner_ids(owner)
    start = time.monotonic()
    os.makedirs(dest, mode=0o700, exist_ok=True)
    copy_state.write_marker(dest, copy_state.marker_text(f"{source.host or 'localhost'}:{source.path}", plan.system_identifier, time.time()))
    try:
        return _copy(source, plan, dest, parallel, delta, uid, gid, progress_file, tmpdir, start, max_rate, transport, piece_size)
    except (PgBackupError, OSError) as exc:
        if _no_space(exc):
            raise _out_of_space(source, plan, dest, exc) from exc
        raise


def check_transport(source: Source, transport: str, delta: bool, max_rate: int) -> None:
    """The stream transport (stream_transport.py) makes full copies from another host only."""
    if transport == "rsync":
        return
    if transport != "stream":
        raise PgBackupError(f"transport must be rsync or stream, not {transport!r}")
    if delta:
        raise PgBackupError("transport stream makes full copies only: delta copies go through rsync (transport: rsync)")
    if not source.remote:
        raise PgBackupError("transport stream copies from another host (source_host); a copy on one host is made in-process")
    if max_rate:
        raise PgBackupError("transport stream has no bandwidth limit: max_rate needs transport rsync (or max_rate 0)")


def _no_space(exc: Exception) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return "No space left on device" in exc.message or "Disk quota exceeded" in exc.message


def _out_of_space(source: Source, plan: Plan, dest: str, exc: Exception) -> PgBackupError:
    """The disk filled during the copy (the precheck passed): name the destination and the space needed now."""
    needed = plan.bytes
    try:  # the source grew since it was listed (a table growing during the copy): measure it again
        now = 0
        for sroot, _droot, es in plan.roots:
            sizes = {e.rel: e.size for e in list_tree(source, sroot) if e.kind == "f"}
            now += sum(sizes.get(e.rel, e.size) for e in es if e.kind == "f")
        needed = max(needed, now + (plan.control.size if plan.control else 0))
    except (PgBackupError, OSError):
        pass
    st = os.statvfs(dest)
    detail = exc.message if isinstance(exc, PgBackupError) else str(exc)
    return PgBackupError(
        f"the destination {dest} ran out of space during the copy: the copy needs {needed} bytes "
        f"({plan.bytes} when it started; the source grew or the destination filled meanwhile), the destination's "
        f"filesystem has {st.f_blocks * st.f_frsize} bytes in all; the copy is incomplete (it keeps {copy_state.INCOMPLETE_MARKER}). "
        f"{detail}",
        dest=dest,
        needed=needed,
        listed=plan.bytes,
        free=st.f_bavail * st.f_frsize,
    )


def _copy(source: Source, plan: Plan, dest: str, parallel: int, delta: bool, uid: int, gid: int,
          progress_file: Optional[str], tmpdir: Optional[str], start: float, max_rate: int = 0,
          transport: str = "rsync", piece_size: int = stream_transport.PIECE) -> dict:  # fmt: skip
    progress = Progress(progress_file, plan.bytes, plan.files)
    progress.write(force=True)
    removed: list = []
    if delta:
        removed = delta_remove(plan, dest)
    _make_directories(plan)
    ts_links = _link_tablespaces(plan, dest)
    if transport == "stream":
        sums, vanished, copy_seconds = _stream_copy(source, plan, dest, ts_links, parallel, uid, gid, progress, start, piece_size)
    elif source.remote or delta or max_rate:
        # (A rate limit on one host goes through rsync too: its --bwlimit is the limiter.)
        sums, vanished, copy_seconds = _rsync_copy(source, plan, dest, ts_links, parallel, delta, uid, gid, progress, tmpdir, start, max_rate)
    else:
        sums, vanished = local_copy_all(source, plan, dest, ts_links, parallel, uid, gid, progress)
        copy_seconds = _start_sync_phase(progress, start)
    if plan.source_kind == finished_backup.FINISHED_BACKUP:
        finished_backup.place_control_and_map(dest, plan.new_map, uid, gid, sums)
    _settle_tree(plan, dest, ts_links, uid, gid)
    _record_sums(dest, sums, uid, gid, keep=plan.source_kind != finished_backup.FINISHED_BACKUP)
    seconds = time.monotonic() - start
    total = sum(v[0] for v in sums.values())
    progress.phase = "done"
    progress.write(force=True)
    return {
        "bytes": total,
        "files": len(sums),
        "seconds": round(seconds, 3),
        "copy_seconds": round(copy_seconds, 3),
        "throughput_bytes_per_second": int(total / max(seconds, 1e-6)),
        "vanished": vanished,
        "removed": removed,
    }


def _make_directories(plan: Plan) -> None:
    """Every directory before any file, parents before children (the source's modes come in _settle_tree)."""
    for _src, droot, es in plan.roots:
        os.makedirs(droot, mode=0o700, exist_ok=True)
        for e in sorted((e for e in es if e.kind == "d"), key=lambda x: x.rel.count("/")):
            path = os.path.join(droot, e.rel) if e.rel else droot
            if e.rel and not os.path.isdir(path):
                os.mkdir(path, 0o700)


def _link_tablespaces(plan: Plan, dest: str) -> dict:
    """Tablespace symlinks point to the mapped paths; returns {link relative to dest: target}."""
    ts_links = {f"pg_tblspc/{ts['oid']}": ts["dest"] for ts in plan.tablespaces if not ts["in_place"]}
    for rel, target in ts_links.items():
        link = os.path.join(dest, rel)
        if os.path.islink(link) or os.path.exists(link):
            if os.path.islink(link) and os.readlink(link) == target:
                continue
            os.unlink(link)
        os.symlink(target, link)
    return ts_links


def _start_sync_phase(progress: Progress, start: float) -> float:
    """The bytes have moved: returns the copy's seconds and reports the fsync phase."""
    copy_seconds = time.monotonic() - start
    progress.phase = "sync"
    progress.write(force=True)
    return copy_seconds


def _stream_copy(source: Source, plan: Plan, dest: str, ts_links: dict, parallel: int, uid: int, gid: int,
                 progress: Progress, start: float, piece_size: int) -> tuple:  # fmt: skip
    """Returns (sums, vanished, copy_seconds)."""
    # Each file is hashed, fsynced and chowned (from the page cache) once all its pieces are in, while others stream.
    with ThreadPoolExecutor(max_workers=max(2, parallel)) as early_pool:
        early: Optional[dict] = {"pool": early_pool, "files": {}}
        pending = os.path.join(dest, copy_state.PENDING_CONTROL)
        done = functools.partial(_hash_early, early, "", uid, gid)
        stream_transport.stream_all(source, plan, dest, ts_links, parallel, progress, pending, done, piece_size)
        copy_seconds = _start_sync_phase(progress, start)
        sums, vanished = _hash_pass(plan, dest, parallel, uid, gid, early)
    return sums, vanished, copy_seconds


def _rsync_copy(source: Source, plan: Plan, dest: str, ts_links: dict, parallel: int, delta: bool, uid: int, gid: int,
                progress: Progress, tmpdir: Optional[str], start: float, max_rate: int) -> tuple:  # fmt: skip
    """Returns (sums, vanished, copy_seconds)."""
    # Without delta, a file rsync has put in place is final: hash and fsync it while the others are copied.
    # (In delta mode rsync does not log the files it leaves as they are, so all wait for the pass after it.)
    with ThreadPoolExecutor(max_workers=max(2, parallel)) as early_pool:
        # Only when pulling from another host: there the receiving rsync (ours) logs a file once it is in place. A
        # local rsync may log it before its receiver renamed it into place (seen: files left owned by root).
        early = None if delta or not source.remote else {"pool": early_pool, "files": {}}
        on_done_for = None if early is None else (lambda droot: functools.partial(_hash_early, early, droot, uid, gid))
        rsync_all(source, plan, dest, ts_links, parallel, delta, progress, tmpdir, on_done_for, max_rate)
        copy_seconds = _start_sync_phase(progress, start)
        sums, vanished = _hash_pass(plan, dest, parallel, uid, gid, early)
    return sums, vanished, copy_seconds


def _settle_tree(plan: Plan, dest: str, ts_links: dict, uid: int, gid: int) -> None:
    """Owner of symlinks and directories, directory modes, then every directory fsynced, children before parents."""
    for _src, droot, es in plan.roots:
        dirs = sorted((e for e in es if e.kind == "d"), key=lambda x: -x.rel.count("/"))
        for e in es:
            if e.kind == "l":
                path = os.path.join(droot, e.rel)
                if os.path.islink(path) and uid >= 0:
                    os.lchown(path, uid, gid)
        for e in dirs:
            path = os.path.join(droot, e.rel) if e.rel else droot
            if os.path.isdir(path):
                os.chmod(path, e.mode & 0o7777)
                if uid >= 0:
                    os.chown(path, uid, gid)
                fsync_dir(path)
        if droot != dest:
            fsync_dir(os.path.dirname(droot.rstrip("/")))
    for ts in ts_links:
        if uid >= 0:
            os.lchown(os.path.join(dest, ts), uid, gid)
    if os.path.isdir(os.path.join(dest, "pg_tblspc")):
        fsync_dir(os.path.join(dest, "pg_tblspc"))


def _record_sums(dest: str, sums: dict, uid: int, gid: int, keep: bool = True) -> None:
    """The sums go in, then the incomplete marker goes: a copy without the marker is complete and durable.

    A restored backup (``keep`` False) has its backup_manifest for that, and pg_verifybackup refuses a file the manifest
    does not list: the files were hashed on the way (a short read fails the copy) but no record is left."""
    if keep:
        copy_state.write_checksums(dest, "SHA256", sums)
        if uid >= 0:
            os.chown(os.path.join(dest, copy_state.CHECKSUMS_FILE), uid, gid)
    copy_state.remove_marker(dest)
    fsync_dir(os.path.dirname(dest.rstrip("/")) or "/")


def _hash_early(early: dict, droot: str, uid: int, gid: int, rel: str) -> None:
    path = os.path.join(droot, rel)
    if not os.path.islink(path):  # symlinks are listed too; only files are hashed
        early["files"][path] = early["pool"].submit(_hash_fsync, path, uid, gid)


def _hash_pass(plan: Plan, dest: str, parallel: int, uid: int, gid: int, early: Optional[dict] = None) -> tuple:
    """Read what rsync wrote (page cache) for SHA-256, fsync and chown each file not done yet (``early``); returns
    (sums, vanished)."""
    done = early["files"] if early else {}
    pending = os.path.join(dest, copy_state.PENDING_CONTROL)
    sums: dict = {}
    vanished: list = []
    tasks = []
    for _src, droot, es in plan.roots:
        prefix = "" if droot == dest else f"pg_tblspc/{oid_of(plan, droot)}/"
        for e in es:
            if e.kind == "f":
                tasks.append((prefix + e.rel, os.path.join(droot, e.rel)))
    tasks.append((copy_state.PENDING_CONTROL, pending))
    with ThreadPoolExecutor(max_workers=max(2, parallel)) as pool:
        futures = [(rel, done[path] if path in done else pool.submit(_hash_fsync, path, uid, gid)) for rel, path in tasks]
        results = ((rel, fut.result()) for rel, fut in futures)
        for rel, res in results:
            if res is None:
                vanished.append(rel)
            else:
                sums["global/pg_control" if rel == copy_state.PENDING_CONTROL else rel] = list(res)
    return sums, vanished
