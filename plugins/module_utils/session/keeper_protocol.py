# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How backup_start and backup_stop talk to a keeper: one JSON object per line over its Unix socket.

Requests: ``{"op": "status"}``, ``{"op": "stop", "wait_for_archive": bool, "expect_system_identifier": ...,
"expect_timeline": ...}``, ``{"op": "abort", "reason": str}``. Answers: ``{"ok": true, "state": ..., "result": {...}}``
or ``{"ok": false, "state": ..., "error": str}``. One request per connection; the keeper answers in order.

A Unix socket path is limited to 107 bytes; a longer one is reached through ``/proc/self/fd/<dir fd>/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import time
from typing import Iterator, Optional

from ..errors import PgBackupError

MAX_REQUEST_BYTES = 64 * 1024
MAX_ANSWER_BYTES = 64 * 1024 * 1024
SUN_PATH_MAX = 107
OPS = ("status", "stop", "abort")


class KeeperUnreachable(Exception):
    """Nothing answers on the socket (no socket file, connection refused, or the answer was cut off)."""


def encode(message: dict) -> bytes:
    return json.dumps(message, sort_keys=True).encode("utf-8") + b"\n"


def decode(line: bytes, *, limit: int) -> dict:
    if len(line) > limit:
        raise ValueError(f"message of {len(line)} bytes is larger than {limit}")
    data = json.loads(line.decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError("a message must be a JSON object")
    return data


def check_request(message: dict) -> dict:
    """A request the keeper accepts, or ValueError saying what is wrong with it."""
    op = message.get("op")
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
    if op == "stop" and not isinstance(message.get("wait_for_archive", True), bool):
        raise ValueError("wait_for_archive must be true or false")
    return message


@contextlib.contextmanager
def socket_path(directory: str, name: str) -> Iterator[str]:
    """A path to ``directory/name`` short enough for AF_UNIX."""
    path = os.path.join(directory, name)
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield path
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


def read_line(sock: socket.socket, *, limit: int, deadline: Optional[float]) -> bytes:
    """One line from ``sock``, or KeeperUnreachable when the peer closes first; socket.timeout past ``deadline``."""
    chunks = []
    size = 0
    while True:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("timed out")
            sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            raise KeeperUnreachable("the keeper closed the connection without an answer")
        chunks.append(chunk)
        size += len(chunk)
        if b"\n" in chunk:
            return b"".join(chunks).split(b"\n", 1)[0]
        if size > limit:
            raise ValueError(f"message larger than {limit} bytes")


def request(directory: str, name: str, message: dict, *, timeout: Optional[float]) -> dict:
    """Send one request to the keeper whose socket is ``directory/name``; return its answer.

    Raises KeeperUnreachable when no keeper listens there or it went away before answering, and
    socket.timeout when it did not answer within ``timeout`` seconds (the keeper goes on).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    with socket_path(directory, name) as path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(10 if timeout is None else max(0.1, min(10, timeout)))
            try:
                sock.connect(path)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise KeeperUnreachable(f"no keeper listens on {os.path.join(directory, name)} ({exc.strerror})") from None
            except BlockingIOError:
                raise socket.timeout("the keeper's socket queue is full: it is busy") from None
            try:
                # A keeper that is exiting (it just recorded the end of its backup) may close the socket under us.
                sock.sendall(encode(message))
                line = read_line(sock, limit=MAX_ANSWER_BYTES, deadline=deadline)
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise KeeperUnreachable(f"the keeper went away before answering ({exc.strerror})") from None
            try:
                return decode(line, limit=MAX_ANSWER_BYTES)
            except ValueError as exc:
                raise PgBackupError(f"the keeper answered something unreadable ({exc}); see keeper.log in {directory}") from None
        finally:
            sock.close()


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid
