# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The keeper: a detached process that owns the one session a non-exclusive backup lives in.

``launch()`` double-forks (new session, stdio on /dev/null and keeper.log, cwd /) so the keeper outlives the
module and holds no descriptor Ansible waits on; everything is imported before the fork, because Ansible
removes the module's files once it exits. The keeper connects, starts the backup, writes started.json,
reports to the module through a pipe, and then waits on its Unix socket and on the database connection:

- ``stop``: runs the stop function in a worker thread (never cancelled: statement_timeout is 0, and SIGTERM,
  max_duration and abort requests are ignored meanwhile), writes stopped.json, answers, exits;
- ``abort``, SIGTERM or ``max_duration`` reached: closes the session (PostgreSQL then aborts the backup),
  writes aborted.json, exits;
- the connection breaks (backend terminated, server restarted): writes aborted.json with the server's message,
  exits. If the keeper itself is killed, the session closes with it and backup_stop finds no keeper;
- the network fails (the TCP keepalives of the idle session get no answer): writes aborted.json saying so, and that the
  server still holds the backup until its end of the session ends too (its own keepalives, or a reset once the network
  is back), exits.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import threading
import time
import traceback
from typing import Any, Callable, Optional

from ..errors import PgBackupError
from . import backup_api, keeper_files, keeper_protocol

ACCEPT_READ_TIMEOUT = 5.0
IDLE_WAKEUP = 30.0
STOP_WATCH_FIRST = 1.5  # seconds into a stop before the first look at what it waits for (most stops are done by then)
STOP_WATCH_EVERY = 5.0  # seconds between two looks at what a running stop waits for
# What the socket says when the keepalives of an idle session got no answer (or the route to the server went away).
NETWORK_ERRORS = (errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN)
# How the server ends its side of a session it no longer hears from: backup_session.SERVER_KEEPALIVES, for the message.
SERVER_KEEPALIVES_TEXT = "tcp_keepalives_idle 60 s, then 6 probes 10 s apart: about 2 minutes"


class _Terminate(Exception):
    pass


class Keeper:
    """The loop of a running backup. ``session`` is a connection.Session whose backup has started."""

    def __init__(
        self,
        directory: str,
        session: Any,
        started: dict,
        *,
        max_duration: float,
        server_started_at: Any = None,
        clock: Callable[[], float] = time.monotonic,
        stop_probe: Optional[Callable[[], dict]] = None,
    ) -> None:
        self.directory = directory
        self.session = session
        self.started = started
        self.server_started_at = server_started_at
        self.clock = clock
        self.deadline = clock() + max_duration if max_duration and max_duration > 0 else None
        self.max_duration = max_duration
        self.state = "running"
        self.interruptible = False
        self.waiters: list = []
        self.stop_answer: dict = {}
        self.wake_write = -1
        self.stop_probe = stop_probe  # a second connection's look at the stopping backend and the archiver

    # --- the loop ---------------------------------------------------------------------------------

    def serve(self, listener: socket.socket) -> str:
        """Answer requests until the backup is stopped or aborted; return the final state.

        The stop runs in a worker thread so that the loop keeps answering while it waits (for WAL archiving,
        say): a status request hears "stopping", a repeated stop waits for the same result, an abort is refused.
        """
        connection_fd = self.session.connection.fileno()
        wake_read, self.wake_write = os.pipe()
        try:
            while self.state in ("running", "stopping"):
                running = self.state == "running"
                watch = [listener, wake_read] + ([connection_fd] if running else [])
                wait = IDLE_WAKEUP if self.deadline is None or not running else max(0.0, min(IDLE_WAKEUP, self.deadline - self.clock()))
                self.interruptible = running
                try:
                    readable, _unused_w, _unused_x = select.select(watch, [], [], wait)
                except _Terminate:
                    self.abort("the keeper received SIGTERM (someone stopped it on purpose)")
                    break
                finally:
                    self.interruptible = False
                if wake_read in readable:
                    os.read(wake_read, 64)
                    self.answer_waiters()
                    continue
                if self.state == "running" and self.deadline is not None and self.clock() >= self.deadline:
                    self.abort(f"max_duration of {self.max_duration:g} seconds was reached before backup_stop")
                    break
                if connection_fd in readable and self.state == "running":
                    self.check_session()
                if listener in readable and self.state in ("running", "stopping"):
                    self.serve_one(listener)
            self.answer_late_waiters(wake_read)
        finally:
            os.close(wake_read)
            os.close(self.wake_write)
        return self.state

    def check_session(self) -> None:
        """The idle connection became readable: the server is ending it (or sent a notice), or the network failed; find
        out which. The socket's pending error is read first: libpq's own message after a keepalive timeout is often
        "server closed the connection unexpectedly", which is not what happened."""
        error = socket_error(self.session.connection.fileno())
        try:
            self.session.query("SELECT 1", record=False)
        except PgBackupError as exc:
            message = exc.details.get("server_message") or exc.message
            if error in NETWORK_ERRORS:
                self.lost_network(os.strerror(error))
            else:
                self.ended_by_server(message)

    def serve_one(self, listener: socket.socket) -> None:
        try:
            conn, _unused_addr = listener.accept()
        except OSError:
            return
        try:
            if keeper_protocol.peer_uid(conn) not in (os.geteuid(), 0):
                conn.close()
                return
            line = keeper_protocol.read_line(conn, limit=keeper_protocol.MAX_REQUEST_BYTES, deadline=time.monotonic() + ACCEPT_READ_TIMEOUT)
            request = keeper_protocol.check_request(keeper_protocol.decode(line, limit=keeper_protocol.MAX_REQUEST_BYTES))
        except (OSError, ValueError, keeper_protocol.KeeperUnreachable) as exc:
            self.send(conn, {"ok": False, "state": self.state, "error": f"bad request: {exc}"})
            return
        answer = self.handle(request, conn)
        if answer is not None:
            self.send(conn, answer)

    @staticmethod
    def send(conn: socket.socket, answer: dict) -> None:
        try:
            conn.settimeout(ACCEPT_READ_TIMEOUT)
            conn.sendall(keeper_protocol.encode(answer))
        except OSError:
            pass  # the asker gave up; the result is in the state directory for its retry
        finally:
            conn.close()

    # --- requests -----------------------------------------------------------------------------------

    def handle(self, request: dict, conn: socket.socket) -> Optional[dict]:
        """The answer to send now, or None when ``conn`` waits for the stop's result."""
        op = request["op"]
        if op == "status":
            return {"ok": True, "state": self.state, "result": self.started}
        if self.state == "stopping":
            if op == "stop":
                self.waiters.append((conn, True))  # joins the running stop: not the request that changed anything
                return None
            return {
                "ok": False,
                "state": self.state,
                "error": "a stop is running and is never cancelled (a cancelled stop loses the label); run backup_stop again to collect its result",
            }
        if op == "abort":
            self.abort(str(request.get("reason") or "backup_stop was called with state=aborted"))
            return {"ok": True, "state": self.state, "result": keeper_files.read_json(self.directory, keeper_files.ABORTED)}
        keeper_files.log_line(self.directory, "stop requested")
        self.state = "stopping"
        self.waiters.append((conn, False))
        worker = threading.Thread(target=self.stop_in_worker, args=(request,), daemon=True)
        worker.start()
        if self.stop_probe is not None:
            threading.Thread(target=self.watch_stop, daemon=True).start()
        return None

    def watch_stop(self) -> None:
        """While the stop runs, record what it waits for (stop_wait.json): the stopping backend's wait event and
        pg_stat_archiver, read on a second connection, so that backup_stop can show a stop waiting on a failing
        archive_command instead of staying silent for its whole timeout. Never touches the stopping session."""
        began = time.monotonic()
        pause = STOP_WATCH_FIRST
        while self.state == "stopping":
            time.sleep(pause)
            pause = STOP_WATCH_EVERY
            if self.state != "stopping":
                break
            try:
                seen = dict(self.stop_probe())
            except Exception as exc:  # noqa: BLE001 - a failed look is recorded, never fatal to the stop
                seen = {"error": str(getattr(exc, "message", exc))}
            seen["stopping_for_seconds"] = round(time.monotonic() - began)
            if self.state == "stopping":
                keeper_files.write_json(self.directory, keeper_files.STOP_WAIT, seen)

    def stop_in_worker(self, request: dict) -> None:
        try:
            answer = self.stop(request)
        except Exception as exc:  # noqa: BLE001 - whatever happens, the waiters get an answer and the session ends
            self.session.close()
            self.record_aborted(f"the keeper failed while stopping: {exc!r}")
            answer = {"ok": False, "state": self.state, "error": f"the keeper failed while stopping: {exc!r}. {backup_api.ABORTED_ADVICE}"}
        self.stop_answer = answer
        os.write(self.wake_write, b"x")

    def answer_late_waiters(self, wake_read: int) -> None:
        """The worker sets the final state a moment before it posts its answer, so a fast stop (a standby's needs no
        archive wait) can end the loop before the wake-up was read; its askers are answered here, not left to find
        the socket closed (they would report the stop as a retry's, changed=false)."""
        if self.waiters and not self.stop_answer:
            select.select([wake_read], [], [], ACCEPT_READ_TIMEOUT)
        if self.waiters and self.stop_answer:
            self.answer_waiters()

    def answer_waiters(self) -> None:
        waiters, self.waiters = self.waiters, []
        for conn, joined in waiters:
            self.send(conn, dict(self.stop_answer, joined=joined))

    def stop(self, request: dict) -> dict:
        """Run the stop (in the worker); the result is stored before anyone is answered."""
        why = self.expected_mismatch(request)
        if why:
            self.abort(f"{why}; the backup was aborted because a copy taken from that standby would not match it")
            return {"ok": False, "state": self.state, "error": f"{why}. The backup was aborted: {backup_api.ABORTED_ADVICE}"}
        self.session.clear_notices()
        first_query = len(self.session.queries)
        try:
            (row,) = self.session.query("SELECT pg_backend_pid() AS pid", record=False)
            moved = backup_api.moved_session_problem(self.session.target, int(self.started["backend_pid"]), int(row["pid"]))
            if moved:
                self.session.close()
                self.record_aborted(moved)
                return {"ok": False, "state": self.state, "error": f"{moved}. Discard every file copied under this backup and take a new one"}
            wait = request.get("wait_for_archive", True)
            answer = backup_api.stop(self.session.query, wait_for_archive=wait, version_num=self.started["server_version_num"])
            timeline = backup_api.stop_timeline(self.session.query, self.started["server_role"] == "standby")
        except PgBackupError as exc:
            message = exc.details.get("server_message") or exc.message
            self.session.close()
            self.record_aborted(f"the stop function failed: {message}")
            return {"ok": False, "state": self.state, "error": f"stopping the backup failed: {message}. {backup_api.ABORTED_ADVICE}"}
        notices = [" ".join(str(n).split()) for n in self.session.notices]
        seg_size = self.started["wal_segment_size"]
        result = backup_api.stop_result(answer, timeline=timeline, seg_size=seg_size, started_at=self.server_started_at, notices=notices)
        result["notices"] = notices
        result["queries"] = self.session.queries[first_query:]
        keeper_files.write_json(self.directory, keeper_files.STOPPED, result)
        keeper_files.log_line(self.directory, f"stopped at {result['stop_lsn']}")
        self.session.close()
        self.state = "stopped"
        return {"ok": True, "state": self.state, "result": result}

    def expected_mismatch(self, request: dict) -> Optional[str]:
        sysid, timeline = request.get("expect_system_identifier"), request.get("expect_timeline")
        if sysid is None and timeline is None:
            return None
        try:
            snapshot = backup_api.server_snapshot(self.session.query)
        except PgBackupError as exc:
            return f"cannot re-check the server before stopping: {exc.message}"
        return backup_api.check_expected(snapshot, system_identifier=sysid, timeline=timeline)

    # --- endings ------------------------------------------------------------------------------------

    def record_aborted(self, reason: str) -> None:
        record = {"reason": reason, "aborted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        keeper_files.write_json(self.directory, keeper_files.ABORTED, record)
        keeper_files.log_line(self.directory, f"aborted: {reason}")
        self.state = "aborted"

    def abort(self, reason: str) -> None:
        """End the backup on purpose: closing the session makes PostgreSQL abort it."""
        self.session.close()
        self.record_aborted(reason)

    def ended_by_server(self, message: str) -> None:
        self.session.close()
        self.record_aborted(f"the server ended the keeper's session ({message}), and PostgreSQL aborted the backup with it")

    def lost_network(self, why: str) -> None:
        """The server may not know yet: its backend keeps the backup open until its end of the session ends too."""
        self.session.close()
        pid = self.started.get("backend_pid")
        name = self.started.get("application_name") or "pgbackup.lowlevel keeper " + str(self.started.get("backup_id"))
        self.record_aborted(
            f"the network to the server failed: the keeper's connection ({self.session.target}) got no answer to its TCP keepalives "
            f"({why}), so the backup can no longer be stopped and is lost. The server still holds it open until its end of the session "
            f"ends: at its next keepalive probe once the network is back, or by its own keepalives ({SERVER_KEEPALIVES_TEXT}) if it stays "
            f"down. If pg_stat_activity there still shows backend {pid} ('{name}') after that, end it with pg_terminate_backend({pid})"
        )


def socket_error(fd: int) -> int:
    """The pending error (SO_ERROR) of the socket ``fd``; 0 when none or when ``fd`` is no socket. Reading it clears it."""
    try:
        copy = os.dup(fd)
    except OSError:
        return 0
    try:
        sock = socket.socket(fileno=copy)
    except OSError:
        os.close(copy)
        return 0
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    except OSError:
        return 0
    finally:
        sock.close()


# --- the process ---------------------------------------------------------------------------------


def _on_sigterm(keeper_holder: list) -> Callable:
    def handler(signum: int, frame: Any) -> None:
        keeper = keeper_holder[0] if keeper_holder else None
        if keeper is not None and keeper.interruptible:
            raise _Terminate()

    return handler


def _detach(directory: str, keep_fd: int) -> None:
    """Become a daemon: no terminal, no descriptor of Ansible's (it waits for stdout to close), cwd /."""
    os.umask(0o077)
    null = os.open(os.devnull, os.O_RDWR)
    log = os.open(os.path.join(directory, keeper_files.LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(log, 2)
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else []:
        fd = int(name)
        if fd > 2 and fd != keep_fd:
            try:
                os.close(fd)
            except OSError:
                pass
    os.chdir("/")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _report(fd: int, message: dict) -> None:
    data = json.dumps(message).encode("utf-8") + b"\n"
    while data:
        data = data[os.write(fd, data) :]
    os.close(fd)


def launch(directory: str, keeper_main: Callable[[Callable[[dict], None]], int], *, timeout: float) -> dict:
    """Fork the keeper for the session directory ``directory`` and return what it reports once started.

    ``keeper_main(report)`` runs in the keeper; it calls ``report`` once with ``{"ok": ..., ...}`` and returns
    an exit code. Raises PgBackupError when the keeper fails or does not report within ``timeout`` seconds
    (then the keeper is killed, so no backup is left running).
    """
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked processes
        code = 70
        try:
            os.close(read_fd)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            keeper_files.write_pid(directory, os.getpid())
            _detach(directory, write_fd)
            code = keeper_main(lambda message: _report(write_fd, message))
        except BaseException:  # noqa: BLE001 - the keeper must never return into the module's code
            try:
                keeper_files.log_line(directory, "keeper failed: " + traceback.format_exc().replace("\n", " | "))
            finally:
                os._exit(code)
        os._exit(code)
    os.close(write_fd)
    os.waitpid(child, 0)
    try:
        line = _read_report(read_fd, timeout)
    finally:
        os.close(read_fd)
    if line is None:
        pid = keeper_files.read_pid(directory)
        if keeper_files.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        raise PgBackupError(
            f"the backup did not start within {timeout:g} seconds (a spread checkpoint can take checkpoint_timeout * "
            "checkpoint_completion_target; use fast: true or a longer timeout); the keeper was killed, so PostgreSQL aborts whatever it had started"
        )
    if not line:
        raise PgBackupError(f"the keeper exited before reporting whether the backup started; see {os.path.join(directory, keeper_files.LOG)}")
    return json.loads(line.decode("utf-8"))


def _read_report(fd: int, timeout: float) -> Optional[bytes]:
    """The keeper's one line; b'' when it exits without one; None on timeout."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        readable, _unused_w, _unused_x = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return b""
        data += chunk
    return data.split(b"\n", 1)[0]


def install_sigterm_handler(holder: list) -> None:
    signal.signal(signal.SIGTERM, _on_sigterm(holder))
