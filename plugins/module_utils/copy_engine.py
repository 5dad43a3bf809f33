# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Copy a PostgreSQL data directory (and its tablespaces) the way a base backup would, with rsync.

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
4. Copy ``global/pg_control`` last, to ``global/pg_control.pgbackup-pending``.
5. fsync every directory; record the sums; remove the marker.

The source is read once (by rsync, or by the copy itself on one host).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import pwd
import re
import shlex
import socket
import stat
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from . import copy_state, stream_transport
from .errors import PgBackupError
from .exclusions import Exclusions, wal_dirs_kept

CHUNK = 1024 * 1024
FSYNC_THREADS = 16
BIG_FILE = 16 * CHUNK
RSYNC_VANISHED = 24


class Source:
    """Where the data directory is: ``host`` None means this host."""

    def __init__(self, path: str, host: Optional[str] = None, user: Optional[str] = None, port: Optional[int] = None,
                 key: Optional[str] = None, ssh_options: tuple = ()) -> None:  # fmt: skip
        if not os.path.isabs(path):
            raise PgBackupError(f"source path {path!r} must be absolute")
        if host is not None and (host.startswith("-") or not host):
            raise PgBackupError(f"source host {host!r} is not a host name")
        self.path = os.path.normpath(path)
        self.host = host
        self.user = user
        self.port = port
        self.key = key
        self.ssh_options = list(ssh_options)

    @property
    def remote(self) -> bool:
        return self.host is not None

    def ssh_argv(self) -> list:
        argv = ["ssh", "-o", "BatchMode=yes"]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.key:
            argv += ["-i", self.key]
        if self.user:
            argv += ["-l", self.user]
        return argv + self.ssh_options

    def run(self, argv: list) -> bytes:
        """Run ``argv`` on the source host (each word quoted for the remote shell) and return stdout."""
        if self.remote:
            full = [*self.ssh_argv(), self.host, "--", " ".join(shlex.quote(a) for a in argv)]
        else:
            full = argv
        proc = subprocess.run(full, capture_output=True, check=False)
        if proc.returncode == 255 and self.remote:
            raise PgBackupError(self.ssh_failure(proc.stderr.decode(errors="replace").strip()), source_host=self.host)
        if proc.returncode != 0:
            where = f"on {self.host}" if self.remote else "locally"
            raise PgBackupError(f"{argv[0]} {where} failed ({proc.returncode}): {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout

    def ssh_failure(self, stderr: str) -> str:
        """What a failed ssh login to the source means, between which hosts, and what to do."""
        who = f"{self.user}@{self.host}" if self.user else self.host
        port = self.port or 22
        return f"ssh from this host ({socket.gethostname()}) to {who} port {port} failed: {stderr}. {ssh_hint(stderr, self.host, port, self.user)}"

    def rsync_spec(self, path: str) -> str:
        return f"{self.host}:{path}" if self.remote else path


def ssh_hint(stderr: str, host: str, port: int, user: Optional[str]) -> str:
    """What to do about an ssh error (module option names; the roles say their own variables)."""
    user = user or "the user"
    if "Host key verification failed" in stderr or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        return (
            f"This host does not know {host}'s host key: add it to the known_hosts of the user that runs the copy here "
            f"(ssh-keyscan -p {port} {host} >> ~/.ssh/known_hosts, after checking its fingerprint), or pass ssh_options "
            "(e.g. ['-o', 'StrictHostKeyChecking=accept-new'])"
        )
    if "Permission denied" in stderr:
        return f"{host} refused the key: add this host's public key to {user}'s ~/.ssh/authorized_keys on {host}, or give ssh_key (and source_user)"
    if "Could not resolve" in stderr or "Name or service not known" in stderr:
        return f"{host} is not a known host name here: give an address or a resolvable name"
    return f"check that sshd listens on {host} port {port} and that this host can reach it (source_port, ssh_options)"


class Entry:
    __slots__ = ("kind", "mode", "rel", "size", "target")

    def __init__(self, rel: str, kind: str, size: int, mode: int, target: str = "") -> None:
        self.rel = rel
        self.kind = kind
        self.size = size
        self.mode = mode
        self.target = target


def _list_local(root: str) -> list:
    out = []
    st = os.stat(root)
    out.append(Entry("", "d", 0, stat.S_IMODE(st.st_mode)))
    stack = [("", root)]
    while stack:
        rel, path = stack.pop()
        try:
            it = list(os.scandir(path))
        except FileNotFoundError:
            continue
        for de in it:
            r = f"{rel}/{de.name}" if rel else de.name
            try:
                st = de.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                out.append(Entry(r, "d", 0, stat.S_IMODE(st.st_mode)))
                stack.append((r, de.path))
            elif stat.S_ISLNK(st.st_mode):
                out.append(Entry(r, "l", 0, 0o777, os.readlink(de.path)))
            elif stat.S_ISREG(st.st_mode):
                out.append(Entry(r, "f", st.st_size, stat.S_IMODE(st.st_mode)))
    return out


def _parse_find(data: bytes) -> list:
    out = []
    for rec in data.split(b"\0"):
        if not rec:
            continue
        kind, size, mode, target, rel = rec.split(b"\t", 4)
        k = kind.decode()
        if k not in ("f", "d", "l"):
            continue
        out.append(Entry(os.fsdecode(rel), k, int(size), int(mode, 8), os.fsdecode(target)))
    return out


def list_tree(source: Source, root: str) -> list:
    if not source.remote:
        return _list_local(root)
    return _parse_find(source.run(["find", "-H", root, "-printf", r"%y\t%s\t%m\t%l\t%P\0"]))


class Plan:
    """What will be copied: ``roots`` maps a destination root to (source root, entries)."""

    def __init__(self) -> None:
        self.major = 0
        self.roots: list = []  # (src_root, dest_root, [Entry])
        self.tablespaces: list = []  # dicts: oid, source, dest, in_place
        self.excluded: list = []
        self.control: Optional[Entry] = None
        self.system_identifier: Optional[int] = None

    @property
    def files(self) -> int:
        return sum(1 for _s, _d, es in self.roots for e in es if e.kind == "f") + (1 if self.control else 0)

    @property
    def bytes(self) -> int:
        return sum(e.size for _s, _d, es in self.roots for e in es if e.kind == "f") + (self.control.size if self.control else 0)


def _inside(a: str, b: str) -> bool:
    a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b.rstrip("/") + "/")


def _read_head(source: Source, path: str, size: int) -> bytes:
    if source.remote:
        return source.run(["head", "-c", str(size), path])
    with open(path, "rb") as f:
        return f.read(size)


def make_plan(source: Source, dest: str, tablespace_mapping: dict, excludes: list) -> Plan:
    plan = Plan()
    entries = list_tree(source, source.path)
    names = {e.rel: e for e in entries}
    if "PG_VERSION" not in names or names["PG_VERSION"].kind != "f" or "global/pg_control" not in names:
        raise PgBackupError(f"{source.path} is not a PostgreSQL data directory (no PG_VERSION or global/pg_control)", source=source.path)
    version = source.run(["cat", os.path.join(source.path, "PG_VERSION")]).decode().strip()
    try:
        plan.major = int(version.split(".")[0])
    except ValueError as exc:
        raise PgBackupError(f"{source.path}/PG_VERSION holds {version!r}, not a major version") from exc
    if not 13 <= plan.major <= 18:
        raise PgBackupError(f"{source.path} is PostgreSQL {plan.major}; this collection supports 13 to 18")
    rules = Exclusions(plan.major, excludes)
    plan.system_identifier = copy_state.system_identifier_of(_read_head(source, os.path.join(source.path, "global", "pg_control"), 8))

    main: list = []
    for e in entries:
        parts = e.rel.split("/")
        if len(parts) == 2 and parts[0] == "pg_tblspc" and e.kind == "l":
            oid = parts[1]
            new = tablespace_mapping.get(oid) or tablespace_mapping.get(e.target) or tablespace_mapping.get(e.target.rstrip("/"))
            if new is None:
                if not source.remote:
                    raise PgBackupError(
                        f"tablespace {oid} ({e.target}) has no mapping and would land on its source's own path on this host; give tablespace_mapping",
                        tablespace=oid,
                    )
                new = e.target
            new = os.path.normpath(new)
            if not os.path.isabs(new):
                raise PgBackupError(f"tablespace mapping of {oid} to {new!r} must be an absolute path")
            if not source.remote and (_inside(new, e.target) or _inside(e.target, new)):
                raise PgBackupError(f"tablespace {oid} would be copied onto or into its own source {e.target} ({new})", tablespace=oid)
            plan.tablespaces.append({"oid": oid, "source": e.target, "dest": new, "in_place": False})
            main.append(e)
            continue
        if len(parts) == 2 and parts[0] == "pg_tblspc" and e.kind == "d":
            plan.tablespaces.append({"oid": parts[1], "source": os.path.join(source.path, e.rel), "dest": os.path.join(dest, e.rel), "in_place": True})
        if e.rel == "pg_wal" and e.kind == "l":
            continue  # sent as a directory
        main.append(e)

    main, inner = _skip_tablespaces_inside(main, plan.tablespaces, source)
    plan.excluded.extend(inner)
    kept, dropped = rules.filter([(e.rel, e.kind) for e in main])
    plan.excluded.extend(dropped)
    keep = {rel for rel, _k in kept}
    main_entries = [e for e in main if e.rel in keep and e.rel != "global/pg_control"]
    plan.control = names["global/pg_control"]
    # pg_wal as a directory, with archive_status (and summaries on 17+), even when the source's is a symlink
    have = {e.rel for e in main_entries}
    for d in ("pg_wal", *wal_dirs_kept(plan.major)):
        if d not in have:
            main_entries.append(Entry(d, "d", 0, names[""].mode))
    plan.roots.append((source.path, dest, main_entries))

    for ts in plan.tablespaces:
        if ts["in_place"]:
            continue
        tentries = list_tree(source, ts["source"])
        prefix = f"pg_tblspc/{ts['oid']}/"
        tk, td = rules.filter([(prefix + e.rel if e.rel else prefix.rstrip("/"), e.kind) for e in tentries])
        tkeep = {r for r, _k in tk}
        plan.excluded.extend(td)
        plan.roots.append((ts["source"], ts["dest"], [e for e in tentries if (prefix + e.rel if e.rel else prefix.rstrip("/")) in tkeep]))
    return plan


def _skip_tablespaces_inside(main: list, tablespaces: list, source: Source) -> tuple[list, list]:
    """A tablespace located inside the data directory (PostgreSQL warns, but allows it) is copied once, as the
    tablespace: the data directory's copy keeps its directory, empty, like pg_basebackup (basebackup.c sendDir skips a
    directory that is a tablespace's ``rpath``). Without this its files were copied twice, once as plain files."""
    root = os.path.normpath(source.path)
    inner = {}
    for ts in tablespaces:
        if ts["in_place"]:
            continue
        target = os.path.normpath(ts["source"] if os.path.isabs(ts["source"]) else os.path.join(root, "pg_tblspc", ts["source"]))
        if not source.remote:
            target, root_real = os.path.realpath(target), os.path.realpath(root)
        else:
            root_real = root
        if target.startswith(root_real.rstrip("/") + "/"):
            inner[os.path.relpath(target, root_real)] = ts["oid"]
    if not inner:
        return main, []
    kept, skipped = [], []
    for e in main:
        location = next((rel for rel in inner if e.rel.startswith(rel + "/")), None)
        if location is None:
            kept.append(e)
        else:
            skipped.append((e.rel, f"inside the location of tablespace {inner[location]}: copied once, as that tablespace"))
    return kept, skipped


def check_destination(source: Source, plan: Plan, dest: str, delta: bool) -> None:
    """Refusals about the destination, before anything is written."""
    for _src, droot, _es in plan.roots:
        if os.path.lexists(droot) and not os.path.isdir(droot):
            raise PgBackupError(f"destination {droot} exists and is not a directory", dest=droot)
        if os.path.isdir(droot) and os.listdir(droot) and not delta:
            raise PgBackupError(f"destination {droot} is not empty; use delta: true to bring an existing copy in line", dest=droot)
    pid_file = os.path.join(dest, "postmaster.pid")
    if os.path.exists(pid_file):
        try:
            with open(pid_file, encoding="utf-8", errors="replace") as f:
                pid = int(f.readline().strip() or "0")
        except ValueError:
            pid = 0
        if pid > 0:
            try:
                os.kill(pid, 0)
                live = True
            except ProcessLookupError:
                live = False
            except PermissionError:
                live = True
            if live:
                raise PgBackupError(f"destination {dest} holds a live postmaster.pid (PID {pid}): a server runs there; stop it first", dest=dest, pid=pid)
    if not source.remote:
        for sroot, droot, _es in plan.roots:
            if _inside(droot, sroot) or _inside(sroot, droot):
                raise PgBackupError(f"destination {droot} and source {sroot} are nested on the same host", dest=droot, source=sroot)
    if delta:
        check_delta_destination(source, plan, dest)
    # free space, per destination filesystem
    need: dict = {}
    for _src, droot, es in plan.roots:
        probe = droot
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        dev = os.stat(probe).st_dev
        size = sum(e.size for e in es if e.kind == "f")
        if droot == dest and plan.control:
            size += plan.control.size
        if delta:
            size = 0  # rsync replaces files one at a time; only growth matters, which we cannot know cheaply
        entry = need.setdefault(dev, [probe, droot, 0])
        entry[2] += size
    for probe, droot, size in need.values():
        st = os.statvfs(probe)
        free = st.f_bavail * st.f_frsize
        if size > free:
            raise PgBackupError(
                f"too little free space at the destination {droot}: the copy needs {size} bytes, {free} are free",
                dest=droot,
                needed=size,
                free=free,
            )


def _non_empty(path: str) -> bool:
    return os.path.isdir(path) and bool(os.listdir(path))


def check_delta_destination(source: Source, plan: Plan, dest: str) -> None:
    """Delta removes what the source does not have: refuse a destination that is not a copy of the source's cluster
    (see ``copy_state.copy_identity``), naming what would have been removed."""
    src = f"{source.host}:{source.path}" if source.remote else source.path
    if not _non_empty(dest):
        for _src, droot, _es in plan.roots[1:]:
            if _non_empty(droot):
                raise PgBackupError(
                    f"delta refuses the tablespace destination {droot}: it is not empty, and {dest} (empty) is no copy of {src} that "
                    f"it could belong to, so what it holds is not ours to remove; empty it or map the tablespace to an empty directory",
                    dest=droot,
                )
        return
    sysid, evidence = copy_state.copy_identity(dest)
    if sysid is not None and sysid == plan.system_identifier:
        return
    doomed = _delta_remove(plan, dest, dry_run=True)
    shown = ", ".join(doomed[:5]) + (f" and {len(doomed) - 5} more" if len(doomed) > 5 else "")
    n = len(doomed)
    would = f"; delta would remove {n} {'entry' if n == 1 else 'entries'} there that the source does not have ({shown})" if doomed else ""
    if sysid is None:
        found = f"it has no global/pg_control, no {copy_state.PENDING_CONTROL} and no {copy_state.INCOMPLETE_MARKER} naming a system identifier"
    else:
        found = f"its {evidence} has system identifier {sysid}, the source's is {plan.system_identifier}"
    raise PgBackupError(
        f"delta refuses the destination {dest}: it is not a copy of the cluster at {src} ({found}){would}. delta only brings an earlier "
        "copy of the same cluster in line; choose an empty destination, or empty this one yourself if nothing in it is needed",
        dest=dest,
        dest_system_identifier=sysid,
        source_system_identifier=plan.system_identifier,
        would_remove=doomed,
    )


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


class Progress:
    def __init__(self, path: Optional[str], total_bytes: int, total_files: int) -> None:
        self.path = path
        self.total_bytes = total_bytes
        self.total_files = total_files
        self.bytes = 0
        self.files = 0
        self.phase = "copy"
        self.start = time.monotonic()
        self.lock = threading.Lock()
        self.last = 0.0

    def add(self, size: int) -> None:
        with self.lock:
            self.bytes += size
            self.files += 1
        self.write()

    def add_bytes(self, size: int) -> None:
        """Bytes of a file still being copied (the progress file moves within a large file too)."""
        with self.lock:
            self.bytes += size
        self.write()

    def file_done(self) -> None:
        with self.lock:
            self.files += 1
        self.write()

    def write(self, force: bool = False) -> None:
        if not self.path:
            return
        now = time.monotonic()
        with self.lock:
            if not force and now - self.last < 1.0:
                return
            self.last = now
            self._dump(now)

    def _dump(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-6)
        data = {
            "phase": self.phase,
            "bytes_done": self.bytes,
            "bytes_total": self.total_bytes,
            "files_done": self.files,
            "files_total": self.total_files,
            "seconds": round(elapsed, 3),
            "rate_bytes_per_second": int(self.bytes / elapsed),
        }
        tmp = self.path + ".tmp"
        # 0600: it sits beside the destination, and nothing the collection writes is for other users
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.chmod(tmp, 0o600)  # a .tmp left by an older run keeps its mode through O_CREAT
        os.replace(tmp, self.path)


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


def _run_rsync(argv: list, progress: Progress, on_done=None) -> None:
    """Run rsync, following its output: a ``OUT_PREFIX<size> <name>`` line as each file starts, and with
    ``--progress`` the bytes of the current file about once a second (lines ending in a carriage return), so the
    progress file moves within large files too.

    ``on_done(name)`` is called for each file once it is in place: rsync's receiver handles one file at a time and
    renames it into place before it starts the next, so a file is done when the next one is logged, and the last
    one when rsync exits."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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


def delta_removals(plan: Plan, dest: str) -> list:
    """What a delta copy into ``dest`` would remove (check mode); nothing is touched."""
    return _delta_remove(plan, dest, dry_run=True)


def _delta_remove(plan: Plan, dest: str, dry_run: bool = False) -> list:
    """Remove what the destination has beyond the plan (delta mode); returns the removed relative paths (those it
    would remove with ``dry_run``). At a tablespace's destination only the directories the plan copies there
    (``PG_<major>_<catversion>``) are touched: another major's directory or a file beside them is not ours."""
    removed = []
    for _src, droot, es in plan.roots:
        wanted = {e.rel for e in es}
        ours = None if droot == dest else {e.rel.split("/")[0] for e in es if e.rel}
        prefix = "" if droot == dest else f"{droot}/"
        if droot == dest:
            wanted |= set(copy_state.OWN_FILES) | {copy_state.PENDING_CONTROL}
        if not os.path.isdir(droot):
            continue
        for e in sorted(_list_local(droot), key=lambda x: x.rel, reverse=True):
            if not e.rel or e.rel in wanted:
                continue
            if droot == dest and e.rel.split("/")[0] == "pg_tblspc" and len(e.rel.split("/")) > 1:
                continue  # tablespace roots are handled by their own plan
            if ours is not None and e.rel.split("/")[0] not in ours:
                continue
            path = os.path.join(droot, e.rel)
            if dry_run:
                removed.append(prefix + e.rel)
                continue
            if e.kind == "d" and not os.path.islink(path):
                if not os.listdir(path):
                    os.rmdir(path)
            else:
                os.unlink(path)
            removed.append(prefix + e.rel)
    return removed


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
        removed = _delta_remove(plan, dest)
    # directories first (parents before children), with the source's modes
    for _src, droot, es in plan.roots:
        os.makedirs(droot, mode=0o700, exist_ok=True)
        for e in sorted((e for e in es if e.kind == "d"), key=lambda x: x.rel.count("/")):
            path = os.path.join(droot, e.rel) if e.rel else droot
            if e.rel and not os.path.isdir(path):
                os.mkdir(path, 0o700)
    # tablespace symlinks point to the mapped paths
    ts_links = {f"pg_tblspc/{ts['oid']}": ts["dest"] for ts in plan.tablespaces if not ts["in_place"]}
    for rel, target in ts_links.items():
        link = os.path.join(dest, rel)
        if os.path.islink(link) or os.path.exists(link):
            if os.path.islink(link) and os.readlink(link) == target:
                continue
            os.unlink(link)
        os.symlink(target, link)

    if transport == "stream":
        # Each file is hashed, fsynced and chowned (from the page cache) once all its pieces are in, while others stream.
        with ThreadPoolExecutor(max_workers=max(2, parallel)) as early_pool:
            early: Optional[dict] = {"pool": early_pool, "files": {}}
            pending = os.path.join(dest, copy_state.PENDING_CONTROL)
            done = functools.partial(_hash_early, early, "", uid, gid)
            stream_transport.stream_all(source, plan, dest, ts_links, parallel, progress, pending, done, piece_size)
            copy_seconds = time.monotonic() - start
            progress.phase = "sync"
            progress.write(force=True)
            sums, vanished = _hash_pass(plan, dest, parallel, uid, gid, early)
    elif source.remote or delta or max_rate:
        # (A rate limit on one host goes through rsync too: its --bwlimit is the limiter.)
        # Without delta, a file rsync has put in place is final: hash and fsync it while the others are copied.
        # (In delta mode rsync does not log the files it leaves as they are, so all wait for the pass after it.)
        with ThreadPoolExecutor(max_workers=max(2, parallel)) as early_pool:
            # Only when pulling from another host: there the receiving rsync (ours) logs a file once it is in place. A
            # local rsync may log it before its receiver renamed it into place (seen: files left owned by root).
            early = None if delta or not source.remote else {"pool": early_pool, "files": {}}
            _rsync_all(source, plan, dest, ts_links, parallel, delta, progress, tmpdir, uid, gid, early, max_rate)
            copy_seconds = time.monotonic() - start
            progress.phase = "sync"
            progress.write(force=True)
            sums, vanished = _hash_pass(plan, dest, parallel, uid, gid, early)
    else:
        sums, vanished = _local_copy_all(source, plan, dest, ts_links, parallel, uid, gid, progress)
        copy_seconds = time.monotonic() - start
        progress.phase = "sync"
        progress.write(force=True)
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
                copy_state.fsync_dir(path)
        if droot != dest:
            copy_state.fsync_dir(os.path.dirname(droot.rstrip("/")))
    for ts in ts_links:
        if uid >= 0:
            os.lchown(os.path.join(dest, ts), uid, gid)
    if os.path.isdir(os.path.join(dest, "pg_tblspc")):
        copy_state.fsync_dir(os.path.join(dest, "pg_tblspc"))
    copy_state.write_checksums(dest, "SHA256", sums)
    if uid >= 0:
        os.chown(os.path.join(dest, copy_state.CHECKSUMS_FILE), uid, gid)
    copy_state.remove_marker(dest)
    copy_state.fsync_dir(os.path.dirname(dest.rstrip("/")) or "/")
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


def _hash_early(early: dict, droot: str, uid: int, gid: int, rel: str) -> None:
    path = os.path.join(droot, rel)
    if not os.path.islink(path):  # symlinks are listed too; only files are hashed
        early["files"][path] = early["pool"].submit(_hash_fsync, path, uid, gid)


def _rsync_all(source: Source, plan: Plan, dest: str, ts_links: dict, parallel: int, delta: bool, progress: Progress,
               tmpdir: Optional[str], uid: int = -1, gid: int = -1, early: Optional[dict] = None, max_rate: int = 0) -> None:  # fmt: skip
    """rsync (over ssh for a remote source; locally in delta mode) with ``parallel`` streams, then pg_control last.

    With ``early`` ({"pool": executor, "files": {}}), each file rsync has put in place is hashed, fsynced and chowned
    while the others are still copied; ``early["files"]`` maps its path to that future."""
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
                done = None if early is None else functools.partial(_hash_early, early, droot, uid, gid)
                jobs.append((rsync_argv(source, src, droot, fname, delta, progress.path is not None, bwlimit), done))
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            for fut in [pool.submit(_run_rsync, argv, progress, done) for argv, done in jobs]:
                fut.result()
        # pg_control last, under its pending name
        pending = os.path.join(dest, copy_state.PENDING_CONTROL)
        argv = ["rsync", "--protect-args", "--perms", "--times", "--whole-file", OUT_FORMAT]
        if source.remote:
            argv += ["-e", shlex.join(source.ssh_argv())]
        argv += ["--", source.rsync_spec(os.path.join(source.path, "global/pg_control")), pending]
        _run_rsync(argv, progress)
    finally:
        for fname in lists:
            try:
                os.unlink(fname)
            except FileNotFoundError:
                pass


def _hash_pass(plan: Plan, dest: str, parallel: int, uid: int, gid: int, early: Optional[dict] = None) -> tuple:
    """Read what rsync wrote (page cache) for SHA-256, fsync and chown each file not done yet (``early``); returns
    (sums, vanished)."""
    done = early["files"] if early else {}
    pending = os.path.join(dest, copy_state.PENDING_CONTROL)
    sums: dict = {}
    vanished: list = []
    tasks = []
    for _src, droot, es in plan.roots:
        prefix = "" if droot == dest else f"pg_tblspc/{_oid_of(plan, droot)}/"
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


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _copy_file(src: str, dst: str, mode: int, uid: int, gid: int, progress: Progress, fsync: bool = True) -> Optional[tuple]:
    """Copy one file on this host reading the source once: SHA-256 on the way, the source's mode and mtime, owner,
    fsync (unless the caller fsyncs later). None when the source vanished (a dropped table).

    No early writeback (posix_fadvise DONTNEED every few MB, as PostgreSQL's pg_flush_data does): measured on the
    bench machine, it made a 860 MB file's copy 1.7x slower than letting fsync write it at once (bench/README.md)."""
    try:
        sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        sst = os.fstat(sfd)
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            h = hashlib.sha256()
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            size = 0
            while True:
                n = os.readv(sfd, [buf])
                if not n:
                    break
                h.update(view[:n])
                _write_all(dfd, view[:n])
                size += n
                progress.add_bytes(n)
            os.fchmod(dfd, mode & 0o7777)
            if uid >= 0:
                os.fchown(dfd, uid, gid)
            os.utime(dfd, ns=(sst.st_atime_ns, sst.st_mtime_ns))
            if fsync:
                os.fsync(dfd)
            mtime_ns = os.fstat(dfd).st_mtime_ns
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
    progress.file_done()
    return size, mtime_ns, h.hexdigest()


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _local_copy_all(source: Source, plan: Plan, dest: str, ts_links: dict, parallel: int, uid: int, gid: int, progress: Progress) -> tuple:
    """A copy on this host without rsync: ``parallel`` threads over the files, largest first; pg_control last."""
    tasks = []
    for src_root, droot, es in plan.roots:
        prefix = "" if droot == dest else f"pg_tblspc/{_oid_of(plan, droot)}/"
        for e in es:
            if e.kind == "f":
                tasks.append((e.size, prefix + e.rel, os.path.join(src_root, e.rel), os.path.join(droot, e.rel), e.mode))
            elif e.kind == "l" and (droot != dest or e.rel not in ts_links):
                link = os.path.join(droot, e.rel)
                if os.path.lexists(link):
                    os.unlink(link)
                os.symlink(e.target, link)
    # Large files first (largest first, so no stream is left with a big file at the end), then the others in the
    # listing's order: directory order keeps the reads of small files close together on disk (sorting them by size
    # made a one-stream copy of a 1 GB cluster 2x slower than cp -a on the bench machine).
    big = sorted((t for t in tasks if t[0] >= BIG_FILE), key=lambda t: -t[0])
    tasks = big + [t for t in tasks if t[0] < BIG_FILE]
    sums: dict = {}
    vanished: list = []
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = [(t[1], pool.submit(_copy_file, t[2], t[3], t[4], uid, gid, progress, False)) for t in tasks]
        try:
            for rel, fut in futures:
                res = fut.result()
                if res is None:
                    vanished.append(rel)
                else:
                    sums[rel] = list(res)
        except BaseException:
            for _rel, fut in futures:
                fut.cancel()  # the first failure (disk full...) ends the copy; files not started are not tried
            raise
    # fsync once everything is written, many at a time: one by one, each fsync of a small file waits for its own
    # journal commit (about 1000 files in an empty cluster: 0.3-0.5 s serially, 0.09 s with 16 threads here)
    copied = [t[3] for t in tasks if t[1] in sums]
    with ThreadPoolExecutor(max_workers=FSYNC_THREADS) as pool:
        for _done in pool.map(_fsync_file, copied):
            pass
    # pg_control last, under its pending name
    pending = os.path.join(dest, copy_state.PENDING_CONTROL)
    res = _copy_file(os.path.join(source.path, "global", "pg_control"), pending, plan.control.mode if plan.control else 0o600, uid, gid, progress)
    if res is None:
        raise PgBackupError(f"{source.path}/global/pg_control vanished during the copy")
    sums["global/pg_control"] = list(res)
    return sums, vanished


def _oid_of(plan: Plan, droot: str) -> str:
    for ts in plan.tablespaces:
        if ts["dest"] == droot:
            return ts["oid"]
    raise PgBackupError(f"no tablespace copies to {droot}")
