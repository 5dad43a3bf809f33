"""wal_retain's slot logic against a fake server: names, idempotent create/drop, and every refusal."""

from __future__ import annotations

from typing import Optional

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.slots import (
    CREATE_SQL,
    DROP_SQL,
    SLOT_SQL,
    SLOTS_SQL,
    USER_SQL,
    ensure_absent,
    ensure_present,
    slot_name_for_backup,
    validate_slot_name,
)


class Server:
    """pg_replication_slots as a dictionary; creating and dropping act on it."""

    def __init__(self, *, max_slots: int = 10, in_recovery: bool = False, redo: str = "0/3000028") -> None:
        self.slots: dict = {}
        self.max_slots = max_slots
        self.in_recovery = in_recovery
        self.redo = redo
        self.statements: list = []
        self.create_error: Optional[PgBackupError] = None
        self.drop_error: Optional[PgBackupError] = None
        self.activity: dict = {}

    def add(self, name: str, **kw) -> dict:
        slot = {"slot_name": name, "slot_type": "physical", "temporary": False, "active": False, "active_pid": None, "restart_lsn": "0/2000000",
                "wal_status": "reserved", "safe_wal_size": None}  # fmt: skip
        slot.update(kw)
        self.slots[name] = slot
        return slot

    def __call__(self, sql: str, params=None) -> list:
        self.statements.append(sql)
        if sql == SLOT_SQL:
            slot = self.slots.get(params[0])
            return [dict(slot, in_recovery=self.in_recovery)] if slot else []
        if sql == CREATE_SQL:
            if self.create_error is not None:
                raise self.create_error
            if params[0] in self.slots:
                raise PgBackupError(f'replication slot "{params[0]}" already exists', sqlstate="42710")
            if len(self.slots) >= self.max_slots:
                raise PgBackupError("all replication slots are in use", sqlstate="53400", server_message="all replication slots are in use")
            self.add(params[0], restart_lsn=self.redo)
            return [{"slot_name": params[0], "lsn": None}]
        if sql == DROP_SQL:
            if self.drop_error is not None:
                raise self.drop_error
            self.slots.pop(params[0])
            return [{"pg_drop_replication_slot": None}]
        if sql == SLOTS_SQL:
            return [
                {"slot_name": s["slot_name"], "slot_type": s["slot_type"], "active": s["active"], "restart_lsn": s["restart_lsn"],
                 "max_replication_slots": self.max_slots}
                for s in sorted(self.slots.values(), key=lambda s: s["slot_name"])
            ]  # fmt: skip
        if sql == USER_SQL:
            row = self.activity.get(params[0])
            return [row] if row else []
        raise AssertionError(sql)


# --- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pgbackup_1", "a", "x" * 63, "slot_2024_05_01"])
def test_valid_names(name):
    assert validate_slot_name(name) == name


@pytest.mark.parametrize("name", ["", "Upper", "with-dash", "x" * 64, "sp ace", "ünï", "semi;colon", None, 5])
def test_invalid_names(name):
    with pytest.raises(PgBackupError, match=r"\[a-z0-9_\]"):
        validate_slot_name(name)


def test_name_length_is_said():
    with pytest.raises(PgBackupError, match="64 characters"):
        validate_slot_name("x" * 64)


@pytest.mark.parametrize(
    ("backup_id", "name"),
    [
        ("20240501T101500-ab12", "pgbackup_20240501t101500_ab12"),
        ("nightly.2024:05", "pgbackup_nightly_2024_05"),
        ("abc", "pgbackup_abc"),
    ],
)
def test_slot_name_for_backup(backup_id, name):
    assert slot_name_for_backup(backup_id) == name


def test_slot_name_for_backup_with_another_prefix():
    assert slot_name_for_backup("X1", prefix="keep_") == "keep_x1"


@pytest.mark.parametrize(("backup_id", "message"), [("a" * 60, "69 characters"), ("with space", "does not make a valid slot name"), ("", "non-empty")])
def test_slot_name_for_backup_refused(backup_id, message):
    with pytest.raises(PgBackupError, match=message):
        slot_name_for_backup(backup_id)


# --- present --------------------------------------------------------------------------------------


def test_present_creates_reserving_at_once_then_is_idempotent():
    server = Server()
    first = ensure_present(server, "pgbackup_b1")
    assert first["changed"] is True and first["created"] is True and first["restart_lsn"] == "0/3000028" and first["wal_status"] == "reserved"
    assert CREATE_SQL in server.statements and "true" in CREATE_SQL
    server.statements.clear()
    second = ensure_present(server, "pgbackup_b1")
    assert second["changed"] is False and second["created"] is False and second["restart_lsn"] == "0/3000028"
    assert CREATE_SQL not in server.statements


def test_present_in_check_mode_creates_nothing():
    server = Server()
    result = ensure_present(server, "pgbackup_b1", check_mode=True)
    assert result["changed"] is True and result["restart_lsn"] is None and not server.slots


def test_present_on_a_standby_reports_it():
    result = ensure_present(Server(in_recovery=True), "pgbackup_b1")
    assert result["in_recovery"] is True


def test_extended_wal_status_is_usable():
    server = Server()
    server.add("pgbackup_b1", wal_status="extended")
    assert ensure_present(server, "pgbackup_b1")["wal_status"] == "extended"


@pytest.mark.parametrize(
    ("slot", "message"),
    [
        ({"slot_type": "logical"}, "is a logical slot, not a physical one"),
        ({"temporary": True}, "temporary slot of another session"),
        ({"restart_lsn": None, "wal_status": None}, "reserves no WAL"),
        ({"wal_status": "lost"}, "wal_status 'lost'.*already removed WAL"),
        ({"wal_status": "lost", "restart_lsn": None}, "wal_status 'lost'.*already removed WAL"),  # 13+ clears restart_lsn when it invalidates
        ({"wal_status": "unreserved"}, "wal_status 'unreserved'.*next checkpoint may remove"),
    ],
)
def test_unusable_existing_slots_are_refused(slot, message):
    server = Server()
    server.add("pgbackup_b1", **slot)
    with pytest.raises(PgBackupError, match=message) as caught:
        ensure_present(server, "pgbackup_b1")
    assert caught.value.details["slot_name"] == "pgbackup_b1"


def test_required_lsn():
    server = Server()
    server.add("pgbackup_b1", restart_lsn="0/5000000")
    assert ensure_present(server, "pgbackup_b1", required_lsn="0/5000028")["changed"] is False
    assert ensure_present(server, "pgbackup_b1", required_lsn="0/5000000")["changed"] is False
    with pytest.raises(PgBackupError, match="keeps WAL only from 0/5000000, after required_lsn 0/4FFFFFF"):
        ensure_present(server, "pgbackup_b1", required_lsn="0/4FFFFFF")


def test_required_lsn_is_checked_before_anything_runs():
    server = Server()
    with pytest.raises(PgBackupError, match="not a valid LSN"):
        ensure_present(server, "pgbackup_b1", required_lsn="5000000")
    assert server.statements == []


def test_all_slots_in_use_lists_them_and_names_leftovers():
    server = Server(max_slots=3)
    server.add("pgbackup_old1")
    server.add("standby1", active=True, active_pid=4242)
    server.add("pgbackup_old2")
    with pytest.raises(PgBackupError) as caught:
        ensure_present(server, "pgbackup_new")
    message = caught.value.message
    assert "all replication slots are in use (max_replication_slots = 3)" in message
    assert "standby1 (active)" in message and "pgbackup_old1 (inactive)" in message
    assert "drop the leftovers of earlier backups (pgbackup_old1, pgbackup_old2)" in message
    assert caught.value.details["max_replication_slots"] == 3


def test_all_slots_in_use_without_leftovers():
    server = Server(max_slots=1)
    server.add("standby1", active=True)
    with pytest.raises(PgBackupError, match="drop a slot that is no longer used, or raise max_replication_slots"):
        ensure_present(server, "pgbackup_new")


@pytest.mark.parametrize(
    ("sqlstate", "message"),
    [("55000", "max_replication_slots above 0 and wal_level"), ("42501", "REPLICATION attribute"), ("XX000", "boom")],
)
def test_other_create_errors(sqlstate, message):
    server = Server()
    server.create_error = PgBackupError("query failed: boom", sqlstate=sqlstate, server_message="boom")
    with pytest.raises(PgBackupError, match=message):
        ensure_present(server, "pgbackup_b1")


def test_created_meanwhile_by_someone_else_is_checked_not_claimed():
    server = Server()
    server.create_error = PgBackupError("already exists", sqlstate="42710")
    real_call = server.__call__

    def racing(sql, params=None):
        if sql == CREATE_SQL and "pgbackup_b1" not in server.slots:
            server.add("pgbackup_b1")
        return real_call(sql, params)

    result = ensure_present(racing, "pgbackup_b1")
    assert result["changed"] is False and result["created"] is False


# --- absent ---------------------------------------------------------------------------------------


def test_absent_drops_then_is_idempotent():
    server = Server()
    server.add("pgbackup_b1")
    assert ensure_absent(server, "pgbackup_b1")["dropped"] is True and not server.slots
    again = ensure_absent(server, "pgbackup_b1")
    assert again["changed"] is False and again["dropped"] is False


def test_absent_in_check_mode_drops_nothing():
    server = Server()
    server.add("pgbackup_b1")
    result = ensure_absent(server, "pgbackup_b1", check_mode=True)
    assert result["changed"] is True and result["dropped"] is False and "pgbackup_b1" in server.slots


def test_absent_refuses_an_active_slot_naming_its_user():
    server = Server()
    server.add("pgbackup_b1", active=True, active_pid=4242)
    server.activity[4242] = {"pid": 4242, "backend_type": "walsender", "application_name": "pg_receivewal", "client_addr": "10.0.0.5"}
    with pytest.raises(PgBackupError) as caught:
        ensure_absent(server, "pgbackup_b1")
    assert "is active: process 4242 (backend_type walsender, application_name pg_receivewal, client_addr 10.0.0.5)" in caught.value.message
    assert DROP_SQL not in server.statements and "pgbackup_b1" in server.slots


def test_absent_refuses_a_slot_that_became_active_meanwhile():
    server = Server()
    server.add("pgbackup_b1")
    server.drop_error = PgBackupError('replication slot "pgbackup_b1" is active for PID 77', sqlstate="55006")
    with pytest.raises(PgBackupError, match="is active: process None"):
        ensure_absent(server, "pgbackup_b1")


def test_absent_slot_dropped_meanwhile_is_fine():
    server = Server()
    server.add("pgbackup_b1")
    server.drop_error = PgBackupError("does not exist", sqlstate="42704")
    assert ensure_absent(server, "pgbackup_b1")["changed"] is False


def test_names_are_validated_before_any_query():
    server = Server()
    for function in (ensure_present, ensure_absent):
        with pytest.raises(PgBackupError):
            function(server, "Bad-Name")
    assert server.statements == []
