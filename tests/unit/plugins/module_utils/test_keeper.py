"""The keeper without a server: state files, the socket protocol, the loop with a fake session, the fork, and the
module-side decisions of backup_start/backup_stop on stored state."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import types

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.session import backup_session, keeper, keeper_files, keeper_protocol
from hypothesis import given
from hypothesis import strategies as st

# --- state files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backup_id", ["a", "20261123T004501Z-3f9a1c", "nightly.2026_11", "A" * 63])
def test_backup_ids_accepted(backup_id):
    assert keeper_files.check_backup_id(backup_id) == backup_id


@pytest.mark.parametrize("backup_id", ["", ".", "..", "-x", "a/b", "../etc", "a b", "a\nb", "A" * 64, "é", None, 5])
def test_backup_ids_refused(backup_id):
    with pytest.raises(PgBackupError, match="is not valid"):
        keeper_files.check_backup_id(backup_id)


@given(st.text(max_size=70))
def test_an_accepted_id_is_one_plain_path_component(backup_id):
    try:
        keeper_files.check_backup_id(backup_id)
    except PgBackupError:
        return
    assert os.path.basename(backup_id) == backup_id and backup_id not in (".", "..") and not backup_id.startswith("-")


def test_new_backup_ids_are_valid_and_distinct():
    ids = {keeper_files.new_backup_id() for _unused in range(50)}
    assert len(ids) == 50 and all(keeper_files.check_backup_id(i) for i in ids)


def test_state_dir_created_private(tmp_path):
    path = keeper_files.ensure_state_dir(str(tmp_path / "a" / "b"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700


def test_state_dir_open_to_others_refused(tmp_path):
    (tmp_path / "open").mkdir(mode=0o755)
    os.chmod(tmp_path / "open", 0o755)
    with pytest.raises(PgBackupError, match="has mode 0755; it must be private"):
        keeper_files.ensure_state_dir(str(tmp_path / "open"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory away")
def test_state_dir_of_another_user_refused(tmp_path):
    (tmp_path / "theirs").mkdir(mode=0o700)
    os.chown(tmp_path / "theirs", 65534, 65534)
    with pytest.raises(PgBackupError, match="belongs to uid 65534"):
        keeper_files.ensure_state_dir(str(tmp_path / "theirs"))


def test_state_dir_that_cannot_be_made(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PgBackupError, match="cannot create state_dir"):
        keeper_files.ensure_state_dir(str(tmp_path / "file" / "sub"))
    with pytest.raises(PgBackupError, match="does not exist"):
        keeper_files.ensure_state_dir(str(tmp_path / "missing"), create=False)


def test_json_written_atomically_and_private(tmp_path):
    keeper_files.write_json(str(tmp_path), "x.json", {"a": 1})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
    assert stat.S_IMODE(os.stat(tmp_path / "x.json").st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"], "no temporary file left"
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PgBackupError, match="damaged"):
        keeper_files.read_json(str(tmp_path), "bad.json")
    assert keeper_files.read_json(str(tmp_path), "none.json") is None


def test_pid_alive():
    assert keeper_files.pid_alive(os.getpid())
    assert not keeper_files.pid_alive(None)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not keeper_files.pid_alive(child.pid)


# --- the socket protocol -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "error"),
    [({"op": "nope"}, "unknown op"), ({}, "unknown op"), ({"op": "stop", "wait_for_archive": "yes"}, "true or false")],
)
def test_requests_refused(message, error):
    with pytest.raises(ValueError, match=error):
        keeper_protocol.check_request(message)


def test_decode_limits_and_types():
    assert keeper_protocol.decode(keeper_protocol.encode({"a": "é"}).rstrip(b"\n"), limit=100) == {"a": "é"}
    with pytest.raises(ValueError, match="larger than"):
        keeper_protocol.decode(b"{}" * 100, limit=10)
    with pytest.raises(ValueError, match="JSON object"):
        keeper_protocol.decode(b"[1]", limit=10)


def serve_once(directory, behaviour):
    """A one-shot server on directory/keeper.sock; behaviour(conn) does what the test needs."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with keeper_protocol.socket_path(str(directory), keeper_files.SOCKET) as path:
        listener.bind(path)
    listener.listen(1)

    def run():
        conn, _unused = listener.accept()
        with conn:
            behaviour(conn)
        listener.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_request_answered(tmp_path):
    def echo(conn):
        line = keeper_protocol.read_line(conn, limit=1000, deadline=None)
        conn.sendall(keeper_protocol.encode({"ok": True, "got": json.loads(line)}))

    serve_once(tmp_path, echo)
    assert keeper_protocol.request(str(tmp_path), keeper_files.SOCKET, {"op": "status"}, timeout=5) == {"ok": True, "got": {"op": "status"}}


def test_request_through_a_long_path(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    assert len(str(deep / keeper_files.SOCKET)) > keeper_protocol.SUN_PATH_MAX

    def answer(conn):
        keeper_protocol.read_line(conn, limit=1000, deadline=None)
        conn.sendall(b'{"ok": true}\n')

    serve_once(deep, answer)
    assert keeper_protocol.request(str(deep), keeper_files.SOCKET, {"op": "status"}, timeout=5) == {"ok": True}


def test_request_to_nobody(tmp_path):
    with pytest.raises(keeper_protocol.KeeperUnreachable, match="no keeper listens"):
        keeper_protocol.request(str(tmp_path), keeper_files.SOCKET, {"op": "status"}, timeout=1)


def test_request_closed_without_answer(tmp_path):
    serve_once(tmp_path, lambda conn: keeper_protocol.read_line(conn, limit=1000, deadline=None))
    with pytest.raises(keeper_protocol.KeeperUnreachable, match="closed the connection"):
        keeper_protocol.request(str(tmp_path), keeper_files.SOCKET, {"op": "status"}, timeout=5)


def test_request_times_out_and_the_keeper_goes_on(tmp_path):
    done = threading.Event()

    def slow(conn):
        keeper_protocol.read_line(conn, limit=1000, deadline=None)
        done.wait(5)

    serve_once(tmp_path, slow)
    with pytest.raises(socket.timeout):
        keeper_protocol.request(str(tmp_path), keeper_files.SOCKET, {"op": "stop"}, timeout=0.3)
    done.set()


# --- the keeper loop with a fake session ---------------------------------------------------------


class FakeConnection:
    def __init__(self):
        self.server_end, self.client_end = socket.socketpair()
        self.notices = []
        self.closed = False

    def fileno(self):
        return self.client_end.fileno()


class FakeSession:
    """Answers the keeper's statements; ``fail`` maps a SQL fragment to the server message it fails with."""

    def __init__(self, fail=None, stop_delay=0.0, backend_pid=4242):
        self.connection = FakeConnection()
        self.fail = dict(fail or {})
        self.stop_delay = stop_delay
        self.backend_pid = backend_pid
        self.target = "db1:5432"
        self.statements = []
        self.queries = []  # connection.Session's: what the stop returns as ``queries``

    @property
    def notices(self):
        return self.connection.notices

    def clear_notices(self):
        del self.connection.notices[:]

    def query(self, sql, params=None, *, record=True):
        self.statements.append(sql)
        if record:
            self.queries.append(sql)
        for fragment, message in self.fail.items():
            if fragment in sql:
                raise PgBackupError(f"query failed: {message}", server_message=message)
        if "pg_backup_stop" in sql:
            time.sleep(self.stop_delay)
            self.connection.notices.append("NOTICE:  all required WAL segments have been archived\n")
            return [{"lsn": "0/3000100", "labelfile": b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n", "spcmapfile": b"", "at": None}]
        if "pg_control_checkpoint" in sql and "system_identifier" in sql:
            return [{"system_identifier": "1", "timeline": 1}]
        if "timeline_id AS tli" in sql:
            return [{"tli": 1}]
        if "pg_backend_pid() AS pid" in sql:
            return [{"pid": self.backend_pid}]
        return [{"?column?": 1}]

    def close(self):
        self.connection.closed = True


STARTED = {
    "backup_id": "b",
    "backend_pid": 4242,
    "server_version_num": 160000,
    "server_role": "primary",
    "wal_segment_size": 16 << 20,
    "start_lsn": "0/2000028",
}


def run_keeper(tmp_path, session, *, max_duration=0.0, clock=time.monotonic):
    directory = tmp_path / "b"
    directory.mkdir(exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(directory / keeper_files.SOCKET))
    listener.listen(4)
    running = keeper.Keeper(str(directory), session, dict(STARTED), max_duration=max_duration, clock=clock)
    outcome = {}

    def serve():
        outcome["state"] = running.serve(listener)
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return directory, thread, outcome


def ask(directory, message, timeout=10):
    return keeper_protocol.request(str(directory), keeper_files.SOCKET, message, timeout=timeout)


def test_status_then_stop_writes_the_result_before_answering(tmp_path):
    session = FakeSession()
    directory, thread, outcome = run_keeper(tmp_path, session)
    assert ask(directory, {"op": "status"})["result"]["backup_id"] == "b"
    answer = ask(directory, {"op": "stop", "wait_for_archive": True})
    thread.join(5)
    assert answer["ok"] and answer["state"] == "stopped" and outcome["state"] == "stopped"
    stored = keeper_files.read_json(str(directory), keeper_files.STOPPED)
    assert stored == answer["result"] and stored["stop_lsn"] == "0/3000100" and stored["stop_wal_file"] == "000000010000000000000003"
    assert stored["notices"] == ["NOTICE: all required WAL segments have been archived"]
    assert any("pg_backup_stop" in q for q in stored["queries"]) and not any("pg_backend_pid" in q for q in stored["queries"])
    assert session.connection.closed


def test_requests_while_the_stop_runs(tmp_path):
    session = FakeSession(stop_delay=1.0)
    directory, thread, outcome = run_keeper(tmp_path, session)
    answers = []
    first = threading.Thread(target=lambda: answers.append(ask(directory, {"op": "stop"})))
    first.start()
    time.sleep(0.3)
    assert ask(directory, {"op": "status"})["state"] == "stopping"
    refused = ask(directory, {"op": "abort"})
    assert not refused["ok"] and "never cancelled" in refused["error"]
    second = ask(directory, {"op": "stop"})
    first.join(5)
    thread.join(5)
    assert second["ok"] and second["joined"] and not answers[0]["joined"]
    assert answers[0]["result"] == second["result"], "a repeated stop gets the result of the running one"
    assert outcome["state"] == "stopped" and sum("pg_backup_stop" in s for s in session.statements) == 1


def test_abort_closes_the_session(tmp_path):
    session = FakeSession()
    directory, thread, outcome = run_keeper(tmp_path, session)
    answer = ask(directory, {"op": "abort", "reason": "cleanup"})
    thread.join(5)
    assert answer["state"] == "aborted" and answer["result"]["reason"] == "cleanup"
    assert session.connection.closed and outcome["state"] == "aborted"
    assert not any("pg_backup_stop" in s for s in session.statements), "an abort never runs the stop"


def test_max_duration(tmp_path, monkeypatch):
    monkeypatch.setattr(keeper, "IDLE_WAKEUP", 0.05)  # the loop looks at its (fake) clock often
    now = [0.0]
    session = FakeSession()
    directory, thread, outcome = run_keeper(tmp_path, session, max_duration=60, clock=lambda: now[0])
    assert ask(directory, {"op": "status"})["state"] == "running"
    now[0] = 61
    thread.join(5)
    assert outcome["state"] == "aborted" and session.connection.closed
    assert "max_duration of 60 seconds" in keeper_files.read_json(str(directory), keeper_files.ABORTED)["reason"]


def test_session_ended_by_the_server(tmp_path):
    session = FakeSession(fail={"SELECT 1": "terminating connection due to administrator command"})
    directory, thread, outcome = run_keeper(tmp_path, session)
    session.connection.server_end.sendall(b"E")  # the server speaks while the session is idle
    thread.join(5)
    assert outcome["state"] == "aborted"
    assert "terminating connection due to administrator command" in keeper_files.read_json(str(directory), keeper_files.ABORTED)["reason"]


def test_session_lost_to_the_network_says_the_server_still_holds_it(tmp_path, monkeypatch):
    # A keepalive timeout cannot be made on a socketpair; the socket's pending error is what the keeper reads.
    monkeypatch.setattr(keeper, "socket_error", lambda fd: errno.ETIMEDOUT)
    session = FakeSession(fail={"SELECT 1": "server closed the connection unexpectedly"})
    directory, thread, outcome = run_keeper(tmp_path, session)
    session.connection.server_end.sendall(b"E")
    thread.join(5)
    reason = keeper_files.read_json(str(directory), keeper_files.ABORTED)["reason"]
    assert outcome["state"] == "aborted" and session.connection.closed
    assert "the network to the server failed" in reason and "db1:5432" in reason and "Connection timed out" in reason, reason
    assert "The server still holds it open" in reason and "pg_terminate_backend(4242)" in reason, reason
    assert "the server ended" not in reason and "closed the connection unexpectedly" not in reason


def test_socket_error_reads_a_real_sockets_pending_error():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]  # closed again below: nobody listens there
    with socket.socket() as sock:
        sock.setblocking(False)
        assert sock.connect_ex(("127.0.0.1", port)) == errno.EINPROGRESS  # the refusal arrives as the socket's error
        time.sleep(0.2)
        assert keeper.socket_error(sock.fileno()) == errno.ECONNREFUSED
        assert keeper.socket_error(sock.fileno()) == 0, "reading the error clears it"
    read, write = os.pipe()
    assert keeper.socket_error(read) == 0, "not a socket"
    os.close(read)
    os.close(write)


def test_the_server_keepalives_named_in_the_message_are_the_keepers():
    settings = backup_session.SERVER_KEEPALIVES
    idle, interval, count = (settings[f"tcp_keepalives_{k}"] for k in ("idle", "interval", "count"))
    assert keeper.SERVER_KEEPALIVES_TEXT.startswith(f"tcp_keepalives_idle {idle} s, then {count} probes {interval} s apart")


def test_failed_stop_is_an_abort(tmp_path):
    session = FakeSession(fail={"pg_backup_stop": "the standby was promoted during online backup"})
    directory, thread, outcome = run_keeper(tmp_path, session)
    answer = ask(directory, {"op": "stop"})
    thread.join(5)
    assert not answer["ok"] and "the standby was promoted during online backup" in answer["error"] and "no usable backup_label" in answer["error"]
    assert outcome["state"] == "aborted" and keeper_files.read_json(str(directory), keeper_files.STOPPED) is None


def test_mismatched_standby_aborts_before_stopping(tmp_path):
    session = FakeSession()
    directory, thread, outcome = run_keeper(tmp_path, session)
    answer = ask(directory, {"op": "stop", "expect_system_identifier": "2"})
    thread.join(5)
    assert not answer["ok"] and "system identifier 1, but the standby" in answer["error"]
    assert outcome["state"] == "aborted" and not any("pg_backup_stop" in s for s in session.statements)


def test_bad_request_is_answered_and_the_backup_goes_on(tmp_path):
    session = FakeSession()
    directory, thread, _outcome = run_keeper(tmp_path, session)
    assert "unknown op" in ask(directory, {"op": "drop"})["error"]
    assert ask(directory, {"op": "abort"})["state"] == "aborted"
    thread.join(5)


# --- backup_stop's decisions on stored state ---------------------------------------------------------


def session_dir(tmp_path, backup_id="b", **files):
    directory = tmp_path / backup_id
    directory.mkdir(mode=0o700)
    keeper_files.write_json(str(directory), keeper_files.STARTED, dict(STARTED, backup_id=backup_id))
    for name, data in files.items():
        keeper_files.write_json(str(directory), name, data)
    return directory


def stop(tmp_path, backup_id="b", state="stopped", timeout=5):
    return backup_session.stop_backup(backup_id=backup_id, state_dir=str(tmp_path), state=state, wait_for_archive=True, timeout=timeout)


def test_unknown_id_lists_the_known_ones(tmp_path):
    session_dir(tmp_path, "known1")
    with pytest.raises(PgBackupError, match=r"unknown backup_id other.*known there: known1"):
        stop(tmp_path, "other")


def test_stored_result_answers_a_retry(tmp_path):
    session_dir(tmp_path, **{keeper_files.STOPPED: {"stop_lsn": "0/5000000", "backup_label": "L"}})
    result = stop(tmp_path)
    assert result["changed"] is False and result["stop_lsn"] == "0/5000000" and result["start_lsn"] == "0/2000028"
    assert stop(tmp_path, state="aborted")["state"] == "stopped", "nothing to abort after a stop"


def test_aborted_backup(tmp_path):
    session_dir(tmp_path, **{keeper_files.ABORTED: {"reason": "max_duration of 5 seconds was reached"}})
    with pytest.raises(PgBackupError, match=r"was aborted: max_duration of 5 seconds.*no usable backup_label"):
        stop(tmp_path)
    assert stop(tmp_path, state="aborted") == {
        "changed": False,
        "state": "aborted",
        "backup_id": "b",
        "reason": "max_duration of 5 seconds was reached",
        "session_dir": str(tmp_path / "b"),
    }


def test_lost_keeper_is_recorded(tmp_path):
    directory = session_dir(tmp_path)
    keeper_files.write_pid(str(directory), 999999999)
    with pytest.raises(PgBackupError, match=r"keeper of backup b \(pid 999999999\) is gone.*discard"):
        stop(tmp_path)
    assert "is gone" in keeper_files.read_json(str(directory), keeper_files.ABORTED)["reason"]


def test_stop_that_does_not_answer_in_time_is_never_cancelled(tmp_path):
    directory = session_dir(tmp_path)
    release = threading.Event()
    serve_once(directory, lambda conn: release.wait(5))
    with pytest.raises(PgBackupError, match=r"never cancelled.*Run backup_stop again"):
        stop(tmp_path, timeout=0.3)
    release.set()


def test_start_refuses_an_id_that_ended(tmp_path):
    directory = session_dir(tmp_path, **{keeper_files.STOPPED: {}})
    with pytest.raises(PgBackupError, match=r"already was stopped.*choose a new backup_id"):
        backup_session.existing_start(str(directory), "b")


def test_start_clears_a_start_that_died_before_starting(tmp_path):
    directory = tmp_path / "b"
    directory.mkdir()
    keeper_files.write_pid(str(directory), 999999999)
    assert backup_session.existing_start(str(directory), "b") is None and not directory.exists()


def test_start_sees_another_task_starting(tmp_path):
    directory = tmp_path / "b"
    directory.mkdir()
    keeper_files.write_pid(str(directory), os.getpid())
    with pytest.raises(PgBackupError, match="being started by another task"):
        backup_session.existing_start(str(directory), "b")


# --- the fork ------------------------------------------------------------------------------------


def test_launch_reports_what_the_keeper_says(tmp_path):
    def main(report):
        report({"ok": True, "result": {"pid": os.getpid(), "sid": os.getsid(0)}})
        return 0

    report = keeper.launch(str(tmp_path), main, timeout=10)
    assert report["ok"] and report["result"]["pid"] != os.getpid()
    assert report["result"]["sid"] == report["result"]["pid"] - 1 or report["result"]["sid"] != os.getsid(0), "a new session"
    assert keeper_files.read_pid(str(tmp_path)) == report["result"]["pid"]


def test_launch_keeper_that_exits_silently(tmp_path):
    with pytest.raises(PgBackupError, match="exited before reporting"):
        keeper.launch(str(tmp_path), lambda report: 3, timeout=10)


def test_launch_timeout_kills_the_keeper(tmp_path):
    def main(report):
        time.sleep(60)
        return 0

    with pytest.raises(PgBackupError, match=r"did not start within 0.5 seconds.*killed"):
        keeper.launch(str(tmp_path), main, timeout=0.5)
    pid = keeper_files.read_pid(str(tmp_path))
    deadline = time.monotonic() + 5
    while keeper_files.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not keeper_files.pid_alive(pid)


def test_scrub_environment_hides_the_password_from_proc(tmp_path):
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from ansible_collections.pgbackup.lowlevel.plugins.module_utils.session.backup_session import scrub_environment;"
        "scrub_environment(); import os;"
        "print('PGPASSWORD' in os.environ, b's3cret' in open('/proc/self/environ', 'rb').read())"
    )
    root = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "build", "collections")
    env = dict(os.environ, PGPASSWORD="s3cret")
    out = subprocess.run([sys.executable, "-c", code, os.path.abspath(root)], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_request_to_a_keeper_closing_under_us(tmp_path, monkeypatch):
    """The keeper exits right after recording an end: a broken pipe on sending means 'no keeper', not a traceback."""

    class ClosingSocket(socket.socket):
        def sendall(self, data, flags=0):
            raise BrokenPipeError(32, "Broken pipe")

    serve_once(tmp_path, lambda conn: None)
    monkeypatch.setattr(keeper_protocol.socket, "socket", ClosingSocket)
    with pytest.raises(keeper_protocol.KeeperUnreachable, match="went away before answering"):
        keeper_protocol.request(str(tmp_path), keeper_files.SOCKET, {"op": "stop"}, timeout=5)


def test_a_session_a_pooler_moved_to_another_server_process_is_not_stopped_there(tmp_path):
    """Transaction pooling: the stop would run in another server process, where no backup is in progress."""
    session = FakeSession(backend_pid=5151)
    directory, thread, outcome = run_keeper(tmp_path, session)
    answer = ask(directory, {"op": "stop", "wait_for_archive": True})
    thread.join(5)
    assert not answer["ok"] and outcome["state"] == "aborted"
    assert "now runs in server process 5151, but the backup started in process 4242" in answer["error"]
    assert "pg_terminate_backend(4242)" in answer["error"] and "pool_mode = session" in answer["error"]
    assert not any("pg_backup_stop" in sql for sql in session.statements), "no stop in a session the backup is not in"


def test_a_long_stop_is_watched_and_described(tmp_path, monkeypatch):
    """While the stop runs, the keeper records what a second connection sees (never on the stopping session); a
    stop that answers fast records nothing. A look that fails is recorded as such, and the stop goes on."""
    monkeypatch.setattr(keeper, "STOP_WATCH_FIRST", 0.1)
    monkeypatch.setattr(keeper, "STOP_WATCH_EVERY", 0.1)
    looks = []

    def probe():
        looks.append(1)
        if len(looks) == 1:
            raise PgBackupError("cannot connect: too many connections")
        return {"server": "db1:5432", "wait_event_type": "IPC", "wait_event": "BackupWaitWalArchive", "archive_mode": "on",
                "archived_count": 3, "last_archived_wal": "000000010000000000000002", "failed_count": 7,
                "last_failed_wal": "000000010000000000000003", "last_failed_time": "2026-12-02 10:00:00+00"}  # fmt: skip

    session = FakeSession(stop_delay=0.8)
    directory = tmp_path / "b"
    directory.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(directory / keeper_files.SOCKET))
    listener.listen(4)
    running = keeper.Keeper(str(directory), session, dict(STARTED), max_duration=0, stop_probe=probe)
    seen = []
    thread = threading.Thread(target=lambda: running.serve(listener), daemon=True)
    thread.start()
    first = threading.Thread(target=lambda: ask(directory, {"op": "stop"}), daemon=True)
    first.start()
    time.sleep(0.5)
    seen.append(keeper_files.read_json(str(directory), keeper_files.STOP_WAIT))
    first.join(5)
    thread.join(5)
    assert len(looks) >= 2 and seen[0]["wait_event"] == "BackupWaitWalArchive", seen
    assert all("pg_stat_archiver" not in s for s in session.statements), "the stopping session is never used for a look"
    text = backup_session.describe_stop_wait(seen[0], STARTED)
    assert "IPC/BackupWaitWalArchive (WAL archiving: wait_for_archive)" in text and "on db1:5432" in text
    assert "7 failures, last failed 000000010000000000000003" in text and "archive_command fails" in text
    failed = backup_session.describe_stop_wait({"error": "cannot connect: too many connections", "stopping_for_seconds": 1}, STARTED)
    assert "could not be read (cannot connect: too many connections)" in failed
    assert "most likely waiting for WAL archiving" in backup_session.describe_stop_wait(None, STARTED)
    assert "in backend 4242" in backup_session.describe_stop_wait(None, STARTED)


def test_a_fast_stop_records_no_wait(tmp_path):
    session = FakeSession()
    directory = tmp_path / "b"
    directory.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(directory / keeper_files.SOCKET))
    listener.listen(4)
    running = keeper.Keeper(str(directory), session, dict(STARTED), max_duration=0, stop_probe=lambda: {"server": "x"})
    thread = threading.Thread(target=lambda: running.serve(listener), daemon=True)
    thread.start()
    assert ask(directory, {"op": "stop"})["ok"]
    thread.join(5)
    time.sleep(keeper.STOP_WATCH_FIRST + 0.2)
    assert keeper_files.read_json(str(directory), keeper_files.STOP_WAIT) is None


class _RunsAtOnce:
    """A thread that runs its target inside start(): the stop ends before the keeper's loop looks at its state again."""

    def __init__(self, target, args=(), daemon=None):
        self.target, self.args = target, args

    def start(self):
        self.target(*self.args)


def test_a_stop_that_ends_before_the_loop_looks_again_is_still_answered(tmp_path, monkeypatch):
    # Seen under load in the integration suite: a standby's stop (no archive wait) finished before the keeper's loop
    # came round, the loop ended on the final state, and the asker found the socket closed (changed=false).
    session = FakeSession()
    directory, thread, outcome = run_keeper(tmp_path, session)
    monkeypatch.setattr(keeper, "threading", types.SimpleNamespace(Thread=_RunsAtOnce))
    answer = ask(directory, {"op": "stop"})
    thread.join(5)
    assert answer["ok"] and answer["state"] == "stopped" and answer["joined"] is False and outcome["state"] == "stopped"


# --- the keeper's start: its order is the backup's safety ------------------------------------------


BEFORE = {
    "backend_pid": 4242,
    "server_version_num": 150004,
    "server_version": "15.4",
    "in_recovery": False,
    "wal_segment_size": 16 << 20,
    "system_identifier": "1",
}


def record_keeper_start(tmp_path, monkeypatch, *, problems=(), moved=None):
    """Run the keeper's main in this process with the server, the SIGTERM handler and the loop faked; the events in order."""
    events = []
    directory = tmp_path / "b"
    directory.mkdir()
    session = FakeSession()

    def note(name, value=None):
        def record(*args, **kwargs):
            events.append(name)
            return value

        return record

    real_listen, real_write_json = backup_session._listen, keeper_files.write_json

    def listen(where):
        events.append("listen")
        return real_listen(where)

    def write_json(where, name, data):
        events.append(f"write {name}")
        real_write_json(where, name, data)

    class Loop:
        def __init__(self, *args, **kwargs):
            events.append("keeper")

        def serve(self, listener):
            events.append("serve" if (directory / keeper_files.SOCKET).exists() else "serve without a socket")

    started = {"start_lsn": "0/2000028", "started_at": "t", "start_attempts": 1, "_started": None}
    monkeypatch.setattr(backup_session, "open_session", note("connect", session))
    monkeypatch.setattr(backup_session, "scrub_environment", note("scrub"))
    monkeypatch.setattr(backup_session.backup_api, "server_snapshot", lambda query: dict(BEFORE))
    monkeypatch.setattr(backup_session.backup_api, "preflight", note("preflight", list(problems)))
    monkeypatch.setattr(backup_session, "pooler_check", note("pooler check"))
    monkeypatch.setattr(backup_session, "_listen", listen)
    monkeypatch.setattr(backup_session.backup_api, "start", note("pg_backup_start", started))
    monkeypatch.setattr(backup_session.backup_api, "moved_session_problem", note("moved?", moved))
    monkeypatch.setattr(backup_session.backup_api, "start_position", lambda *args: {"start_wal_file": "x"})
    monkeypatch.setattr(keeper_files, "write_json", write_json)
    monkeypatch.setattr(keeper, "install_sigterm_handler", note("SIGTERM handler"))
    monkeypatch.setattr(keeper, "Keeper", Loop)
    main = backup_session._keeper_main(str(directory), {}, backup_id="b", label="l", fast=True, max_duration=0, state_dir=str(tmp_path))
    code = main(lambda message: events.append(f"report ok={message['ok']}"))
    return code, events, directory


def test_the_keeper_starts_in_its_safe_order(tmp_path, monkeypatch):
    code, events, directory = record_keeper_start(tmp_path, monkeypatch)
    assert code == 0 and events == [
        "connect",
        "scrub",
        "preflight",
        "pooler check",
        "listen",
        "pg_backup_start",
        "moved?",
        f"write {keeper_files.STARTED}",
        "SIGTERM handler",
        "keeper",
        "report ok=True",
        "serve",
    ]
    assert not (directory / keeper_files.SOCKET).exists(), "the socket is removed once the loop ends"
    assert keeper_files.read_json(str(directory), keeper_files.STARTED)["start_lsn"] == "0/2000028"


def test_a_refused_start_neither_listens_nor_starts(tmp_path, monkeypatch):
    code, events, _directory = record_keeper_start(tmp_path, monkeypatch, problems=["wal_level is minimal"])
    assert code == 1 and events == ["connect", "scrub", "preflight", "pooler check", "report ok=False"]


def test_a_moved_session_is_reported_as_a_failed_start(tmp_path, monkeypatch):
    code, events, directory = record_keeper_start(tmp_path, monkeypatch, moved="the server process changed")
    assert code == 1 and events[-3:] == ["pg_backup_start", "moved?", "report ok=False"]
    assert keeper_files.read_json(str(directory), keeper_files.STARTED) is None
    assert "start failed: the backup cannot be held: the server process changed" in (directory / keeper_files.LOG).read_text()
