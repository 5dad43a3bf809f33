# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A lean transport for full copies from another host over ssh, without rsync (datadir_copy ``transport: stream``).

The receiver (this side) starts ``parallel`` ssh connections, each running :data:`SENDER` with the source host's
``python3 -c`` (standard library only: nothing is installed there). Over each connection it asks for work items
(path, offset, length) from one shared queue, two outstanding at a time, and the sender answers each with a frame:

- request: ``>I`` length + JSON ``{"p": path, "o": offset, "n": length (-1: to the end of the file)}``; length 0 ends.
- answer: ``>I`` length + JSON header ``{"s": "ok"|"vanished"|"error", "m": mtime_ns, "e": message}``, then for
  "ok" chunks of ``>I`` length + bytes, ended by a chunk of length 0 (a file that shrank simply ends early).

Files larger than the piece size are split into pieces, so one big relation segment is spread over the streams.
Pieces are written in place with ``pwrite``; once every piece of a file is in, the file gets the source's mode and
mtime and is handed to ``on_done`` (copy_engine hashes, fsyncs and chowns it while the others stream, as it does for
files rsync has put in place). A file that vanished from the source (ENOENT on any piece) is removed here and left to
copy_engine to report as vanished. pg_control comes last, alone, to its pending name (copy_engine's constant).
"""

from __future__ import annotations

import collections
import json
import os
import shlex
import struct
import threading
from typing import Callable, Optional

from . import processes
from .errors import PgBackupError

PIECE = 64 * 1024 * 1024
MARKER = "pgbackup-stream-sender"
_LEN = struct.Struct(">I")

SENDER = r"""# pgbackup-stream-sender
import json, os, stat, struct, sys
L = struct.Struct(">I")
def readn(n):
    out = b""
    while len(out) < n:
        got = os.read(0, n - len(out))
        if not got:
            sys.exit(3)
        out += got
    return out
def put(*parts):
    done = os.writev(1, parts)
    if done < sum(len(p) for p in parts):
        view = memoryview(b"".join(parts))[done:]
        while view:
            view = view[os.write(1, view):]
def header(d):
    b = json.dumps(d).encode()
    put(L.pack(len(b)), b)
buf = bytearray(1 << 20)
mv = memoryview(buf)
while True:
    (n,) = L.unpack(readn(4))
    if n == 0:
        break
    req = json.loads(readn(n).decode("utf-8", "surrogatepass"))
    try:
        fd = os.open(os.fsencode(req["p"]), os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        header({"s": "vanished"})
        continue
    except OSError as exc:
        header({"s": "error", "e": str(exc)})
        continue
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            header({"s": "error", "e": "not a regular file"})
            continue
        header({"s": "ok", "m": st.st_mtime_ns})
        off, left = req["o"], req["n"]
        while left != 0:
            k = os.preadv(fd, [mv[: len(buf) if left < 0 else min(left, len(buf))]], off)
            if not k:
                break
            put(L.pack(k), mv[:k])
            off += k
            if left > 0:
                left -= k
        put(L.pack(0))
    finally:
        os.close(fd)
"""


def pieces(size: int, piece: int = PIECE) -> list:
    """(offset, length) of each piece of a file of ``size`` bytes; the last reads to the end (-1), so a file that grew
    since it was listed arrives whole, as rsync would copy it."""
    piece = max(1, piece)
    out = [(off, piece) for off in range(0, max(0, size - piece), piece)]
    return [*out, (len(out) * piece, -1)]


def work_items(files: list, piece: int = PIECE) -> list:
    """``files``: (src, dst, size, mode). Items (src, dst, offset, length) with big files first (largest first, their
    pieces together so consecutive streams take neighbouring pieces), then the others in listing order."""
    big = sorted((f for f in files if f[2] > piece), key=lambda f: -f[2])
    small = [f for f in files if f[2] <= piece]
    return [(f[0], f[1], off, n) for f in big + small for off, n in pieces(f[2], piece)]


def encode_request(path: str, offset: int, length: int) -> bytes:
    body = json.dumps({"p": path, "o": offset, "n": length}).encode("utf-8", "surrogatepass")
    return _LEN.pack(len(body)) + body


def ssh_command(ssh_argv: list, host: str) -> list:
    """ssh running the sender on ``host`` (``ssh_argv`` from ``Source.ssh_argv``, which chooses the cipher)."""
    return [*ssh_argv, host, "--", "python3 -c " + shlex.quote(SENDER)]


class _File:
    """One destination file being assembled from its pieces."""

    __slots__ = ("dst", "left", "mode", "mtime", "vanished")

    def __init__(self, dst: str, count: int, mode: int) -> None:
        self.dst, self.left, self.mode, self.mtime, self.vanished = dst, count, mode, 0, False


class StreamFailed(PgBackupError):
    pass


class Receiver:
    """Runs the queue of work items over ``parallel`` ssh streams from ``source`` (a copy_engine.Source)."""

    def __init__(self, source, progress, on_done: Optional[Callable] = None) -> None:
        self.source = source
        self.progress = progress
        self.on_done = on_done
        self.lock = threading.Lock()
        self.queue: collections.deque = collections.deque()
        self.files: dict = {}
        self.procs: list = []
        self.error: Optional[BaseException] = None
        self._files_in: list = []
        self.answers: dict = {}  # answers begun per stream: an ssh that ends after some was no login failure

    def add(self, src: str, dst: str, size: int, mode: int, piece: int = PIECE) -> None:
        """Queue a whole file (its pieces); call :meth:`run` once all are queued (it orders them)."""
        parts = pieces(size, piece)
        self.files[dst] = _File(dst, len(parts), mode)
        self._files_in.append((src, dst, size, mode))

    def run(self, parallel: int, piece: int = PIECE) -> None:
        self.queue.extend(work_items(self._files_in, piece))
        self._files_in = []
        streams = max(1, min(parallel, len(self.queue)))
        threads = [threading.Thread(target=self._stream, daemon=True) for _i in range(streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.error is not None:
            raise self.error

    def _fail(self, exc: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = exc
            procs = list(self.procs)
        for proc in procs:  # the first failure ends every stream: nothing more is copied
            if proc.poll() is None:
                proc.kill()

    def _next(self):
        with self.lock:
            if self.error is not None or not self.queue:
                return None
            return self.queue.popleft()

    def _stream(self) -> None:
        try:
            proc = processes.start(ssh_command(self.source.ssh_argv(), self.source.host), stdin=processes.PIPE)
        except OSError as exc:
            self._fail(exc)
            return
        with self.lock:
            self.procs.append(proc)
        err: list = []
        self.answers[id(proc)] = 0
        drain = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
        drain.start()
        try:
            self._serve(proc)
            proc.stdin.write(_LEN.pack(0))
            proc.stdin.close()
            rc = proc.wait()
            drain.join()
            if rc != 0 and self.error is None:
                raise self._broken(proc, err, "the sender exited")
        except (BrokenPipeError, EOFError, ConnectionError):
            try:  # ssh closes its output before it exits: its exit code says what happened
                proc.wait(timeout=5)
            except processes.TimeoutExpired:
                proc.kill()
                proc.wait()
            drain.join()
            self._fail(self._broken(proc, err, "the stream ended"))
        except BaseException as exc:  # noqa: BLE001 - disk full, a write error: named by copy_engine
            proc.kill()
            proc.wait()
            self._fail(exc)

    def _broken(self, proc, err: list, what: str) -> PgBackupError:
        stderr = b"".join(err).decode(errors="replace").strip()[-2000:]
        if proc.returncode == 255 and stderr and not self.answers.get(id(proc)):  # ssh says why a login fails
            return StreamFailed(f"stream transport: {self.source.ssh_failure(stderr)}", source_host=self.source.host)
        rc = proc.returncode
        if rc == 127:
            why = f"exit code 127: the sender needs python3 (3.9+) on {self.source.host}"
        elif rc == 255:
            why = f"ssh exit code 255: the connection or the sender on {self.source.host} was cut or killed"
        elif rc < 0:
            why = f"ssh here was killed by signal {-rc}"
        else:
            why = f"exit code {rc}"
        return StreamFailed(
            f"stream transport from {self.source.host}: {what} before the copy was complete ({why}): {stderr or 'no message'}; the copy is incomplete",
            source_host=self.source.host,
        )

    def _serve(self, proc) -> None:
        out = proc.stdout
        outstanding: collections.deque = collections.deque()
        buf = bytearray(1 << 20)
        while True:
            while len(outstanding) < 2:  # one request ahead: the sender never waits for the next one
                item = self._next()
                if item is None:
                    break
                proc.stdin.write(encode_request(item[0], item[2], item[3]))
                proc.stdin.flush()
                outstanding.append(item)
            if not outstanding:
                return
            self._receive(out, outstanding.popleft(), buf, id(proc))

    def _receive(self, out, item, buf: bytearray, key: int) -> None:
        src, dst, offset, _length = item
        head = json.loads(_read(out, _read_len(out)).decode("utf-8", "surrogatepass"))
        self.answers[key] += 1
        f = self.files[dst]
        if head["s"] == "error":
            raise StreamFailed(f"stream transport: reading {src} on {self.source.host} failed: {head['e']}", source_host=self.source.host)
        if head["s"] == "ok":
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                view = memoryview(buf)
                while True:
                    k = _read_len(out)
                    if not k:
                        break
                    if out.readinto(view[:k]) != k:
                        raise EOFError
                    _pwrite_all(fd, view[:k], offset)
                    offset += k
                    self.progress.add_bytes(k)
            finally:
                os.close(fd)
        self._piece_done(f, head)

    def _piece_done(self, f: _File, head: dict) -> None:
        with self.lock:
            f.left -= 1
            f.vanished |= head["s"] == "vanished"
            f.mtime = max(f.mtime, head.get("m", 0))
            if f.left:
                return
        if f.vanished:  # gone from the source (a dropped table): not copied, reported by copy_engine
            try:
                os.unlink(f.dst)
            except FileNotFoundError:
                pass
        else:
            os.chmod(f.dst, f.mode & 0o7777)
            os.utime(f.dst, ns=(f.mtime, f.mtime))
            if self.on_done is not None:
                self.on_done(f.dst)
        self.progress.file_done()


def _read_len(out) -> int:
    return _LEN.unpack(_read(out, 4))[0]


def _read(out, n: int) -> bytes:
    data = out.read(n)
    if len(data) != n:
        raise EOFError
    return data


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def stream_all(source, plan, dest: str, ts_links: dict, parallel: int, progress, pending: str,
               on_done: Optional[Callable] = None, piece: int = PIECE) -> None:  # fmt: skip
    """Copy every file and symlink of ``plan`` from ``source`` over ``parallel`` streams, then pg_control alone to
    ``pending``. Directories exist already (copy_engine made them); hashing, fsync and ownership are ``on_done``'s."""
    rx = Receiver(source, progress, on_done)
    for src_root, droot, es in plan.roots:
        for e in es:
            if e.kind == "f":
                rx.add(os.path.join(src_root, e.rel), os.path.join(droot, e.rel), e.size, e.mode, piece)
            elif e.kind == "l" and (droot != dest or e.rel not in ts_links):
                link = os.path.join(droot, e.rel)
                if os.path.lexists(link):
                    os.unlink(link)
                os.symlink(e.target, link)
    rx.run(parallel, piece)
    last = Receiver(source, progress)
    control = plan.control
    last.add(os.path.join(source.path, "global", "pg_control"), pending, control.size if control else 8192, control.mode if control else 0o600, piece)
    last.run(1, piece)
    if last.files[pending].vanished:
        raise PgBackupError(f"{source.host}:{source.path}/global/pg_control vanished during the copy")
