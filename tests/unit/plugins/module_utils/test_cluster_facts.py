"""cluster_facts without a server: the SQL branches by version and role, typed values, and data directories."""

from __future__ import annotations

import datetime
import decimal
import os
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import cluster_facts
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.cluster_facts import (
    SETTINGS,
    SLOT_COLUMNS,
    data_dir_facts,
    jsonable,
    postmaster_status,
    server_facts,
    setting_value,
    timeline_of_wal_file,
)
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.connection import Session
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError

UTC = datetime.timezone.utc
SYSID = 7311234567890123456


class _DbError(Exception):
    def __init__(self, pgcode: str, message: str) -> None:
        super().__init__(message)
        self.pgcode = pgcode
        self.pgerror = message


class FakeServer:
    """Answers the statements cluster_facts runs, as a PostgreSQL ``major`` primary or standby would."""

    def __init__(self, major: int, *, standby: bool = False, privileged: bool = True, denied: tuple = (), **overrides) -> None:
        self.major = major
        self.standby = standby
        self.privileged = privileged
        self.denied = denied  # substrings of statements that fail with "permission denied"
        self.overrides = overrides
        self.statements: list[str] = []

    def answer(self, sql: str, params) -> tuple[list[str], list[tuple]]:
        self.statements.append(sql)
        for needle in self.denied:
            if needle in sql:
                raise _DbError("42501", f"ERROR:  permission denied for {needle}")
        for needle, answer in self.overrides.items():
            if needle in sql:
                if isinstance(answer, Exception):
                    raise answer
                return answer
        if "server_version_num" in sql:
            return ["server_version", "server_version_num", "in_recovery"], [(f"{self.major}.4", self.major * 10000 + 4, self.standby)]
        if "FROM pg_catalog.pg_roles" in sql:
            p = self.privileged
            return ["name", "superuser", "replication", "pg_monitor", "pg_read_all_settings", "pg_read_all_stats"], [("u", p, p, p, p, p)]
        if "pg_control_system()" in sql:
            modified = datetime.datetime(2024, 5, 1, 10, tzinfo=UTC)
            return ["system_identifier", "pg_control_version", "catalog_version_no", "pg_control_last_modified"], [(SYSID, 1300, 202307071, modified)]
        if "pg_control_checkpoint()" in sql:
            columns = ["checkpoint_lsn", "redo_lsn", "redo_wal_file", "timeline_id", "prev_timeline_id", "full_page_writes", "checkpoint_time"]
            return columns, [("0/3000060", "0/3000028", "000000020000000000000003", 2, 1, True, datetime.datetime(2024, 5, 1, tzinfo=UTC))]
        if "pg_control_recovery()" in sql:
            columns = ["min_recovery_end_lsn", "min_recovery_end_timeline", "backup_start_lsn", "backup_end_lsn", "end_of_backup_record_required"]
            return columns, [("0/3000148", 2, "0/0", "0/0", False)] if self.standby else [("0/0", 0, "0/0", "0/0", False)]
        if "pg_current_wal_lsn()" in sql:
            if self.standby:
                raise _DbError("55000", "ERROR:  recovery is in progress")
            return ["current_lsn", "insert_lsn", "flush_lsn", "current_wal_file"], [("0/4000000", "0/4000028", "0/4000000", "000000030000000000000004")]
        if "pg_last_wal_receive_lsn()" in sql:
            if not self.standby:
                raise _DbError("55000", "ERROR:  recovery is not in progress")
            if "pg_get_wal_replay_pause_state" in sql and self.major < 14:
                raise _DbError("42883", "ERROR:  function pg_get_wal_replay_pause_state() does not exist")
            columns = ["receive_lsn", "replay_lsn", "last_replay_timestamp", "replay_paused"]
            row = ("0/5000000", "0/4FFFF00", datetime.datetime(2024, 5, 1, 10, 0, 1, tzinfo=UTC), False)
            if self.major >= 14:
                columns, row = [*columns, "replay_pause_state"], (*row, "not paused")
            return columns, [row]
        if "pg_settings" in sql:
            return ["name", "setting", "unit", "vartype"], self._settings(params[0])
        if "pg_tablespace" in sql:
            return ["name", "oid", "location"], [("pg_default", 1663, ""), ("pg_global", 1664, ""), ("fast", 16390, "/srv/fast")]
        if "pg_stat_replication" in sql:
            return self._replication()
        if "pg_stat_wal_receiver" in sql:
            return self._wal_receiver()
        if "pg_replication_slots" in sql:
            return self._slots()
        raise AssertionError(f"unexpected statement {sql}")

    def _settings(self, names) -> list[tuple]:
        values = {
            "wal_segment_size": ("16777216", "B", "integer"),
            "block_size": ("8192", None, "integer"),
            "wal_block_size": ("8192", None, "integer"),
            "full_page_writes": ("on", None, "bool"),
            "data_checksums": ("on", None, "bool"),
            "wal_log_hints": ("off", None, "bool"),
            "wal_level": ("replica", None, "enum"),
            "archive_mode": ("on", None, "enum"),
            "archive_command": ("cp %p /archive/%f", None, "string"),
            "archive_library": ("", None, "string"),
            "archive_timeout": ("60", "s", "integer"),
            "restore_command": ("", None, "string"),
            "hot_standby": ("on", None, "bool"),
            "data_directory": ("/var/lib/postgresql/data", None, "string"),
            "cluster_name": ("main", None, "string"),
            "max_wal_senders": ("10", None, "integer"),
            "max_replication_slots": ("10", None, "integer"),
            "wal_keep_size": ("128", "MB", "integer"),
            "max_slot_wal_keep_size": ("-1", "MB", "integer"),
            "primary_slot_name": ("", None, "string"),
            "summarize_wal": ("off", None, "bool"),
        }
        assert set(names) <= set(values)
        hidden = set() if self.privileged else {"data_directory"}
        return [(name, *values[name]) for name in names if name not in hidden]

    def _replication(self):
        columns = ["pid", "usesysid", "usename", "application_name", "client_addr", "backend_xmin", "state", "sent_lsn", "write_lag", "reply_time"]
        if self.standby:
            return columns, []
        if not self.privileged:
            return columns, [(4242, 10, "postgres", "standby1", None, None, None, None, None, None)]
        lag = datetime.timedelta(milliseconds=1500)
        return columns, [(4242, 10, "postgres", "standby1", "10.0.0.2", "771", "streaming", "0/4000000", lag, datetime.datetime(2024, 5, 1, tzinfo=UTC))]

    def _wal_receiver(self):
        columns = ["pid", "status", "received_tli", "sender_host", "sender_port", "conninfo"]
        if not self.privileged:
            return columns, [(4343, None, None, None, None, None)]
        return columns, [(4343, "streaming", 3, "10.0.0.1", 5432, "user=rep password=******** host=10.0.0.1")]

    def _slots(self):
        columns = [name for name, since in SLOT_COLUMNS.items() if self.major >= since]
        row = {name: None for name in columns}
        row.update(slot_name="backup", slot_type="physical", temporary=False, active=True, active_pid=99, xmin="1234", restart_lsn="0/3000000")
        row.update(wal_status="reserved", safe_wal_size=decimal.Decimal(1 << 30))
        return columns, [tuple(row[name] for name in columns)]


class _Cursor:
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.description = None
        self.query = None
        self._rows: list = []

    def execute(self, sql, params=None) -> None:
        columns, self._rows = self.server.answer(sql, params)
        self.description = [(name,) for name in columns] if columns else None
        self.query = sql.encode()

    def fetchall(self):
        return self._rows

    def close(self) -> None:
        pass


class _Connection:
    def __init__(self, server: FakeServer) -> None:
        self.server = server

    def cursor(self):
        return _Cursor(self.server)

    def close(self) -> None:
        pass


def _facts(server: FakeServer) -> tuple:
    warnings: list[str] = []
    session = Session(_Connection(server), target="host=db1, port=5432, user=u, database=postgres")
    return server_facts(session, warn=warnings.append), warnings, session


# --- values ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "unit", "vartype", "expected"),
    [
        ("on", None, "bool", True),
        ("off", None, "bool", False),
        ("16777216", "B", "integer", 16777216),
        ("128", "MB", "integer", 128 << 20),
        ("-1", "MB", "integer", -1),
        ("1024", "8kB", "integer", 8 << 20),
        ("60", "s", "integer", 60),
        ("1500", "ms", "integer", 1.5),
        ("2", "min", "integer", 120),
        ("0.9", None, "real", 0.9),
        ("replica", None, "enum", "replica"),
        ("", None, "string", ""),
        (None, None, "string", None),
    ],
)
def test_setting_values_are_typed(setting, unit, vartype, expected):
    assert setting_value(setting, unit, vartype) == expected


def test_jsonable_converts_what_psycopg2_returns():
    value = {
        "d": decimal.Decimal("3"),
        "f": decimal.Decimal("1.5"),
        "lag": datetime.timedelta(seconds=2, microseconds=500000),
        "t": datetime.datetime(2024, 5, 1, tzinfo=UTC),
        "b": memoryview(b"\x01\xff"),
        "l": (1, None, True),
        "o": object,
    }
    out = jsonable(value)
    assert out["d"] == 3 and isinstance(out["d"], int)
    assert out["f"] == 1.5 and out["lag"] == 2.5
    assert out["t"] == "2024-05-01T00:00:00+00:00" and out["b"] == "01ff"
    assert out["l"] == [1, None, True] and isinstance(out["o"], str)


def test_timeline_of_wal_file():
    assert timeline_of_wal_file("0000000A0000000100000002") == 10
    assert timeline_of_wal_file("not a wal file") is None
    assert timeline_of_wal_file(None) is None


# --- a running server --------------------------------------------------------------------------------


@pytest.mark.parametrize("major", [13, 14, 15, 16, 17, 18])
def test_primary_facts(major):
    facts, warnings, session = _facts(FakeServer(major))
    assert warnings == []
    assert facts["source"] == "server" and facts["major"] == major and facts["in_recovery"] is False
    assert facts["system_identifier"] == SYSID
    assert facts["current_lsn"] == "0/4000000" and facts["insert_lsn"] == "0/4000028" and facts["flush_lsn"] == "0/4000000"
    assert facts["receive_lsn"] is None and facts["replay_lsn"] is None and facts["replay_paused"] is None and facts["wal_receiver"] is None
    # Right after a promotion the checkpoint still has the old timeline; WAL is already written on the new one.
    assert facts["checkpoint_timeline"] == 2 and facts["insert_timeline"] == 3 and facts["timeline"] == 3
    assert facts["wal_segment_size"] == 16777216 and facts["archive_timeout"] == 60 and facts["wal_keep_size"] == 128 << 20
    assert facts["full_page_writes"] is True and facts["data_checksums"] is True and facts["wal_level"] == "replica"
    assert facts["archive_library"] == ("" if major >= 15 else None)
    assert facts["summarize_wal"] == (False if major >= 17 else None)
    assert set(SETTINGS) <= set(facts)
    assert facts["tablespaces"] == [
        {"name": "pg_default", "oid": 1663, "location": None},
        {"name": "pg_global", "oid": 1664, "location": None},
        {"name": "fast", "oid": 16390, "location": "/srv/fast"},
    ]
    (standby,) = facts["replication"]
    assert standby["write_lag"] == 1.5 and standby["backend_xmin"] == 771 and standby["reply_time"] == "2024-05-01T00:00:00+00:00"
    (slot,) = facts["replication_slots"]
    assert list(slot) == list(SLOT_COLUMNS), "every slot key on every version, in one order"
    assert slot["xmin"] == 1234 and slot["safe_wal_size"] == 1 << 30
    assert slot["two_phase"] is None and slot["failover"] is None  # the fake leaves them null; absent columns are null too
    assert session.queries and not any("pg_last_wal_receive_lsn" in q for q in session.queries)


@pytest.mark.parametrize("major", [13, 14, 18])
def test_standby_facts(major):
    server = FakeServer(major, standby=True)
    facts, warnings, session = _facts(server)
    assert warnings == []
    assert facts["in_recovery"] is True
    assert facts["current_lsn"] is None and facts["current_wal_file"] is None and facts["insert_timeline"] is None
    assert facts["receive_lsn"] == "0/5000000" and facts["replay_lsn"] == "0/4FFFF00" and facts["replay_paused"] is False
    assert facts["last_replay_timestamp"] == "2024-05-01T10:00:01+00:00"
    assert facts["replay_pause_state"] == ("not paused" if major >= 14 else None)
    assert any("pg_get_wal_replay_pause_state" in s for s in server.statements) is (major >= 14)
    assert facts["wal_receiver"]["status"] == "streaming" and facts["received_timeline"] == 3
    # The newest timeline the standby knows: the WAL receiver's (3) beats the restartpoint's (2).
    assert facts["checkpoint_timeline"] == 2 and facts["timeline"] == 3
    assert facts["recovery"]["min_recovery_end_lsn"] == "0/3000148"
    assert facts["replication"] == []
    assert not any("pg_current_wal_lsn" in q for q in session.queries)


def test_standby_without_wal_receiver_uses_the_recovery_timelines():
    facts = _facts(FakeServer(16, standby=True, pg_stat_wal_receiver=(["pid"], [])))[0]
    assert facts["wal_receiver"] is None and facts["received_timeline"] is None
    assert facts["timeline"] == 2


def test_unprivileged_role_gets_nulls_and_warnings():
    facts, warnings = _facts(FakeServer(16, privileged=False))[:2]
    assert facts["data_directory"] is None and facts["wal_segment_size"] == 16777216
    assert facts["replication"][0]["state"] is None
    assert len(warnings) == 2
    assert "data_directory" in warnings[0] and "pg_read_all_settings" in warnings[0]
    assert "pg_stat_replication" in warnings[1] and "pg_read_all_stats" in warnings[1]
    facts, warnings = _facts(FakeServer(16, standby=True, privileged=False))[:2]
    assert facts["wal_receiver"]["status"] is None and facts["received_timeline"] is None
    assert any("pg_stat_wal_receiver" in w for w in warnings)


def test_revoked_functions_give_nulls_and_say_what_to_grant():
    facts, warnings = _facts(FakeServer(15, denied=("pg_control_system()", "pg_control_checkpoint()", "pg_replication_slots")))[:2]
    assert facts["system_identifier"] is None and facts["checkpoint"] is None and facts["checkpoint_timeline"] is None
    assert facts["replication_slots"] is None
    assert facts["timeline"] == 3, "the primary's timeline still comes from its current WAL file"
    assert len(warnings) == 3
    assert "GRANT EXECUTE ON FUNCTION pg_catalog.pg_control_system() TO the role" in warnings[0]
    assert "permission denied" in warnings[0] and "SQLSTATE" not in warnings[0]


def test_a_promotion_while_reading_is_a_clear_error():
    server = FakeServer(16, standby=True, pg_last_wal_receive_lsn=_DbError("55000", "ERROR:  recovery is not in progress"))
    with pytest.raises(PgBackupError, match="probably promoted: run cluster_info again"):
        _facts(server)


def test_other_sql_errors_fail():
    server = FakeServer(16, pg_tablespace=_DbError("XX000", "ERROR:  catalog is broken"))
    with pytest.raises(PgBackupError, match="catalog is broken") as caught:
        _facts(server)
    assert caught.value.details["sqlstate"] == "XX000"


@pytest.mark.parametrize("major", [12, 19])
def test_unsupported_majors_warn(major):
    version = (["server_version", "server_version_num", "in_recovery"], [(f"{major}.1", major * 10000 + 1, False)])
    warnings = _facts(FakeServer(13, server_version_num=version))[1]
    assert any("supports 13 to 18" in w for w in warnings)


# --- a data directory --------------------------------------------------------------------------------


def _fake_control(major: int = 16, state_name: str = "shut down in recovery") -> SimpleNamespace:
    fields = {
        "system_identifier": SYSID,
        "pg_control_version": 1300,
        "catalog_version_no": 202307071,
        "major_version": major,
        "timeline": 2,
        "xlog_seg_size": 16777216,
        "blcksz": 8192,
        "xlog_blcksz": 8192,
        "full_page_writes": True,
        "data_checksum_version": 1,
        "wal_log_hints": False,
        "wal_level_name": "replica",
        "state_name": state_name,
    }
    as_dict = dict(fields, checkpoint_lsn="0/3000060", mock_authentication_nonce="00" * 32)
    return SimpleNamespace(**fields, as_dict=lambda: dict(as_dict))


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    (tmp_path / "global").mkdir()
    (tmp_path / "global" / "pg_control").write_bytes(b"\0" * 8192)
    (tmp_path / "PG_VERSION").write_text("16\n")
    monkeypatch.setattr(cluster_facts, "read_control_file", lambda path: _fake_control())
    return tmp_path


def test_data_dir_facts_of_a_stopped_standby_copy(data_dir):
    (data_dir / "standby.signal").touch()
    (data_dir / "pg_tblspc").mkdir()
    (data_dir / "pg_tblspc" / "16390").symlink_to("/srv/fast")
    (data_dir / "pg_tblspc" / "16400").mkdir()  # in-place tablespace
    (data_dir / "pg_tblspc" / "README").touch()
    warnings: list[str] = []
    facts = data_dir_facts(str(data_dir), warn=warnings.append)
    assert warnings == []
    assert facts["source"] == "data_dir" and facts["data_directory"] == os.path.realpath(data_dir)
    assert facts["system_identifier"] == SYSID and facts["major"] == 16 and facts["pg_version"] == "16"
    assert facts["timeline"] == 2 and facts["wal_segment_size"] == 16777216 and facts["data_checksums"] is True
    assert facts["state"] == "shut down in recovery" and facts["wal_level"] == "replica"
    assert facts["control"]["checkpoint_lsn"] == "0/3000060"
    assert "mock_authentication_nonce" not in facts["control"]
    assert facts["running"] is False and facts["postmaster"]["pid_file"] is False
    assert facts["standby_signal"] is True and facts["recovery_signal"] is False and facts["tablespace_map"] is False
    assert facts["backup_label"] is None
    assert facts["tablespaces"] == [{"name": None, "oid": 16390, "location": "/srv/fast"}, {"name": None, "oid": 16400, "location": "pg_tblspc/16400"}]


def test_data_dir_with_a_backup_label(data_dir):
    (data_dir / "backup_label").write_text(
        "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"
        "CHECKPOINT LOCATION: 0/2000060\n"
        "BACKUP METHOD: streamed\n"
        "BACKUP FROM: standby\n"
        "START TIME: 2024-05-01 10:00:00 UTC\n"
        "LABEL: nightly\n"
        "START TIMELINE: 1\n"
    )
    (data_dir / "tablespace_map").write_text("")
    facts = data_dir_facts(str(data_dir), warn=pytest.fail)
    assert facts["backup_label"] == {
        "start_lsn": "0/2000028",
        "start_wal_file": "000000010000000000000002",
        "checkpoint_lsn": "0/2000060",
        "start_timeline": 1,
        "backup_from": "standby",
        "label": "nightly",
    }
    assert facts["tablespace_map"] is True


def test_data_dir_with_a_broken_backup_label_warns(data_dir):
    (data_dir / "backup_label").write_text("this is not a label\n")
    warnings: list[str] = []
    facts = data_dir_facts(str(data_dir), warn=warnings.append)
    assert facts["backup_label"] == dict.fromkeys(("start_lsn", "start_wal_file", "checkpoint_lsn", "start_timeline", "backup_from", "label"))
    assert len(warnings) == 1 and "backup_label exists but cannot be parsed" in warnings[0]


def test_data_dir_pg_version_mismatch_warns(data_dir):
    (data_dir / "PG_VERSION").write_text("15\n")
    warnings: list[str] = []
    data_dir_facts(str(data_dir), warn=warnings.append)
    assert warnings == [f"{data_dir}/PG_VERSION says 15 but pg_control is from PostgreSQL 16"]


def test_not_a_data_directory(tmp_path):
    with pytest.raises(PgBackupError, match="is not a directory"):
        data_dir_facts(str(tmp_path / "missing"), warn=pytest.fail)
    with pytest.raises(PgBackupError, match="has no global/pg_control"):
        data_dir_facts(str(tmp_path), warn=pytest.fail)


# --- postmaster.pid ----------------------------------------------------------------------------------


def _pid_file(directory, pid: int, recorded=None) -> None:
    lines = [str(pid), str(recorded or directory), "1714557600", "5432", "/run/postgresql", "*", "  1234567     98304", "ready   "]
    (directory / "postmaster.pid").write_text("\n".join(lines) + "\n")


@pytest.fixture
def fake_postgres(tmp_path):
    """A process whose name is 'postgres' (a copy of sleep), started in a directory of our choice."""
    binary = tmp_path / "bin" / "postgres"
    binary.parent.mkdir()
    shutil.copy(shutil.which("sleep"), binary)
    procs = []

    def start(cwd) -> int:
        proc = subprocess.Popen([str(binary), "30"], cwd=cwd)
        procs.append(proc)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # until exec replaced the forked child's name
            with open(f"/proc/{proc.pid}/comm") as handle:
                if handle.read().strip() == "postgres":
                    break
            time.sleep(0.01)
        return proc.pid

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_running_only_when_a_postgres_process_serves_this_directory(tmp_path, fake_postgres):
    live, copy = tmp_path / "live", tmp_path / "copy"
    live.mkdir()
    copy.mkdir()
    pid = fake_postgres(live)
    _pid_file(live, pid)
    status = postmaster_status(str(live))
    assert status == {
        "pid_file": True,
        "pid": pid,
        "running": True,
        "recorded_data_directory": str(live),
        "port": 5432,
        "socket_directory": "/run/postgresql",
        "listen_addresses": "*",
        "status": "ready",
    }
    _pid_file(copy, pid, recorded=live)  # a postmaster.pid copied along with the files
    assert postmaster_status(str(copy))["running"] is False


def test_not_running_for_a_dead_pid_or_another_program(tmp_path):
    proc = subprocess.Popen(["true"])
    proc.wait()
    _pid_file(tmp_path, proc.pid)
    assert postmaster_status(str(tmp_path))["running"] is False
    _pid_file(tmp_path, os.getpid())  # alive, and in this directory's parent, but python, not postgres
    assert postmaster_status(str(tmp_path))["running"] is False


def test_single_user_backend_pid_and_garbage(tmp_path):
    _pid_file(tmp_path, -os.getpid())
    assert postmaster_status(str(tmp_path))["pid"] == os.getpid()
    (tmp_path / "postmaster.pid").write_text("garbage\n")
    status = postmaster_status(str(tmp_path))
    assert status["pid_file"] is True and status["pid"] is None and status["running"] is False and status["port"] is None
