# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Physical replication slots that keep a backup's WAL on the server it is read from (``wal_retain``).

``ensure_present`` creates the slot with ``pg_create_physical_replication_slot(name, true)``, which reserves WAL
at once (from the last checkpoint's redo point on a primary, the last restartpoint's on a standby), so every
segment from there on stays in ``pg_wal`` until ``ensure_absent`` drops the slot. Both are idempotent.

A slot is refused, never silently used, when it is not what a backup can rely on: a logical or temporary
slot of that name, one that reserves no WAL (``restart_lsn`` null), one whose WAL is ``lost`` or
``unreserved`` (``max_slot_wal_keep_size`` let the server remove, or allows it to remove, segments it
holds), or one that starts after ``required_lsn``. Dropping an active slot is refused with its user.

``query(sql, params)`` is injected (rows as dictionaries; ``PgBackupError`` with ``details['sqlstate']``).
Same SQL on 13-18: ``pg_replication_slots.wal_status`` and ``safe_wal_size`` exist from 13.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

from .errors import PgBackupError
from .lsn import parse_lsn

NAME_MAX = 63  # NAMEDATALEN - 1
NAME_RE = re.compile(r"\A[a-z0-9_]{1,63}\Z")
DEFAULT_PREFIX = "pgbackup_"
CONFIGURATION_LIMIT_EXCEEDED = "53400"  # all replication slots are in use
OBJECT_IN_USE = "55006"  # replication slot "x" is active for PID n
DUPLICATE_OBJECT = "42710"
UNDEFINED_OBJECT = "42704"
OBJECT_NOT_IN_PREREQUISITE_STATE = "55000"  # max_replication_slots = 0, wal_level = minimal
INSUFFICIENT_PRIVILEGE = "42501"
BAD_WAL_STATUS = {
    "lost": "the server already removed WAL the slot needed (max_slot_wal_keep_size was exceeded), so WAL the backup needs may be gone",
    "unreserved": "the slot holds more WAL than max_slot_wal_keep_size allows, so the next checkpoint may remove WAL the backup needs",
}

SLOT_SQL = (
    "SELECT slot_name::text AS slot_name, slot_type, temporary, active, active_pid, restart_lsn::text AS restart_lsn, wal_status, "
    "safe_wal_size, pg_catalog.pg_is_in_recovery() AS in_recovery FROM pg_catalog.pg_replication_slots WHERE slot_name = %s"
)
CREATE_SQL = "SELECT slot_name::text AS slot_name, lsn::text AS lsn FROM pg_catalog.pg_create_physical_replication_slot(%s, true)"
DROP_SQL = "SELECT pg_catalog.pg_drop_replication_slot(%s)"
SLOTS_SQL = (
    "SELECT s.slot_name::text AS slot_name, s.slot_type, s.active, s.restart_lsn::text AS restart_lsn, "
    "(SELECT p.setting::int FROM pg_catalog.pg_settings p WHERE p.name = 'max_replication_slots') AS max_replication_slots "
    "FROM pg_catalog.pg_replication_slots s ORDER BY s.slot_name"
)
USER_SQL = "SELECT pid, application_name, client_addr::text AS client_addr, backend_type, state FROM pg_catalog.pg_stat_activity WHERE pid = %s"

Query = Callable[..., list]


def validate_slot_name(name: object) -> str:
    """``name`` if PostgreSQL takes it as a slot name: lower-case letters, digits and underscores, 1 to 63 of them."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        got = name if isinstance(name, str) else type(name).__name__
        length = f" ({len(name)} characters)" if isinstance(name, str) and len(name) > NAME_MAX else ""
        raise PgBackupError(
            f"slot name {got!r}{length} is not a valid replication slot name: use 1 to {NAME_MAX} lower-case letters, digits and underscores "
            "([a-z0-9_]), as PostgreSQL requires"
        )
    return name


def slot_name_for_backup(backup_id: object, prefix: str = DEFAULT_PREFIX) -> str:
    """The slot name of a backup: ``prefix`` + the backup id, lower-cased, with ``-``, ``.`` and ``:`` turned into ``_``.

    Only case and those three separators are changed (``20240501T101500-ab12`` gives ``pgbackup_20240501t101500_ab12``);
    anything else that PostgreSQL would refuse is refused here, so two backups never share a slot by accident.
    """
    if not isinstance(backup_id, str) or not backup_id:
        raise PgBackupError(f"backup_id must be a non-empty string (as backup_start returns it), got {backup_id!r}")
    name = prefix + re.sub(r"[-.:]", "_", backup_id.lower())
    try:
        return validate_slot_name(name)
    except PgBackupError:
        raise PgBackupError(
            f"backup_id {backup_id!r} does not make a valid slot name: {prefix!r} + the id must be 1 to {NAME_MAX} characters of [a-z0-9_] "
            f"once lower-cased with '-', '.' and ':' turned into '_' (got {name!r}, {len(name)} characters); pass a shorter id or name the slot with slot_name"
        ) from None


def _lsn_int(text: Optional[str]) -> Optional[int]:
    return None if text is None else parse_lsn(text, what="restart_lsn")


def read_slot(query: Query, name: str) -> Optional[dict]:
    rows = query(SLOT_SQL, (name,))
    if not rows:
        return None
    row = dict(rows[0])
    if row.get("safe_wal_size") is not None:
        row["safe_wal_size"] = int(row["safe_wal_size"])
    return row


def _describe(slot: dict) -> dict:
    return {
        "slot_name": slot["slot_name"],
        "restart_lsn": slot.get("restart_lsn"),
        "wal_status": slot.get("wal_status"),
        "safe_wal_size": slot.get("safe_wal_size"),
        "active": bool(slot.get("active")),
        "active_pid": slot.get("active_pid"),
        "in_recovery": slot.get("in_recovery"),
    }


def check_usable(slot: dict, *, required_lsn: Optional[str] = None) -> None:
    """Refuse a slot a backup cannot rely on (see the module docstring)."""
    name = slot["slot_name"]
    if slot.get("slot_type") != "physical":
        raise PgBackupError(
            f"replication slot {name} exists but is a {slot.get('slot_type')} slot, not a physical one: it does not keep WAL for a backup; "
            "choose another name, or drop it if it is a leftover",
            **_describe(slot),
        )
    if slot.get("temporary"):
        raise PgBackupError(
            f"replication slot {name} is a temporary slot of another session: it disappears with that session; choose another name", **_describe(slot)
        )
    status = slot.get("wal_status")
    if status in BAD_WAL_STATUS:
        raise PgBackupError(
            f"replication slot {name} has wal_status '{status}': {BAD_WAL_STATUS[status]}; restart_lsn is {slot.get('restart_lsn')}. "
            "Raise max_slot_wal_keep_size (or set it to -1), collect the WAL sooner, and take the backup again",
            **_describe(slot),
        )
    if slot.get("restart_lsn") is None:
        raise PgBackupError(
            f"replication slot {name} exists but reserves no WAL (restart_lsn is null: it was created without immediately_reserve, or was invalidated); "
            "drop it (state=absent) and create it again, or choose another name",
            **_describe(slot),
        )
    if required_lsn is not None:
        required = parse_lsn(required_lsn, what="required_lsn")
        restart = _lsn_int(slot["restart_lsn"])
        if restart is not None and restart > required:
            raise PgBackupError(
                f"replication slot {name} keeps WAL only from {slot['restart_lsn']}, after required_lsn {required_lsn}: the WAL before it may "
                "already be gone; create the slot before the backup starts (wal_retain before backup_start)",
                **_describe(slot),
            )


def ensure_present(query: Query, name: str, *, check_mode: bool = False, required_lsn: Optional[str] = None) -> dict:
    """Create the slot if it is missing (reserving WAL at once); check it either way. Returns the module result."""
    validate_slot_name(name)
    if required_lsn is not None:
        parse_lsn(required_lsn, what="required_lsn")
    slot = read_slot(query, name)
    if slot is not None:
        check_usable(slot, required_lsn=required_lsn)
        return dict(_describe(slot), changed=False, created=False)
    if check_mode:
        return {"slot_name": name, "restart_lsn": None, "wal_status": None, "safe_wal_size": None, "active": False, "active_pid": None,
                "in_recovery": None, "changed": True, "created": False}  # fmt: skip
    created = True
    try:
        query(CREATE_SQL, (name,))
    except PgBackupError as exc:
        sqlstate = exc.details.get("sqlstate")
        if sqlstate == DUPLICATE_OBJECT:
            created = False  # made meanwhile by someone else: check it like an existing one
        else:
            raise _create_error(query, name, exc) from None
    slot = read_slot(query, name)
    if slot is None:
        raise PgBackupError(f"replication slot {name} was created but is not in pg_replication_slots any more: something dropped it at once")
    check_usable(slot, required_lsn=required_lsn)
    return dict(_describe(slot), changed=created, created=created)


def _create_error(query: Query, name: str, exc: PgBackupError) -> PgBackupError:
    sqlstate = exc.details.get("sqlstate")
    server = exc.details.get("server_message") or exc.message
    if sqlstate == CONFIGURATION_LIMIT_EXCEEDED:
        try:
            slots = query(SLOTS_SQL)
        except PgBackupError:
            slots = []
        limit = slots[0]["max_replication_slots"] if slots else None
        inactive = [s["slot_name"] for s in slots if not s["active"]]
        ours = [n for n in inactive if n.startswith(DEFAULT_PREFIX)]
        listing = ", ".join(f"{s['slot_name']} ({'active' if s['active'] else 'inactive'})" for s in slots) or "none readable"
        hint = (
            f"drop the leftovers of earlier backups ({', '.join(ours)}) with state=absent, or raise max_replication_slots and restart"
            if ours
            else "drop a slot that is no longer used, or raise max_replication_slots and restart the server"
        )
        return PgBackupError(
            f"cannot create replication slot {name}: all replication slots are in use (max_replication_slots = {limit}); slots: {listing}; {hint}",
            sqlstate=sqlstate,
            max_replication_slots=limit,
            slots=[s["slot_name"] for s in slots],
        )
    if sqlstate == OBJECT_NOT_IN_PREREQUISITE_STATE:
        return PgBackupError(
            f"cannot create replication slot {name}: {server}; set max_replication_slots above 0 and wal_level to replica or logical, then restart",
            sqlstate=sqlstate,
        )
    if sqlstate == INSUFFICIENT_PRIVILEGE:
        return PgBackupError(
            f"cannot create replication slot {name}: {server}; the connected role needs the REPLICATION attribute (or to be a superuser)", sqlstate=sqlstate
        )
    return exc


def ensure_absent(query: Query, name: str, *, check_mode: bool = False) -> dict:
    """Drop the slot if it exists; refuse an active one. Returns the module result."""
    validate_slot_name(name)
    slot = read_slot(query, name)
    if slot is None:
        return {"slot_name": name, "restart_lsn": None, "wal_status": None, "safe_wal_size": None, "active": False, "active_pid": None,
                "in_recovery": None, "changed": False, "dropped": False}  # fmt: skip
    if slot.get("active"):
        raise _active_error(query, slot)
    if check_mode:
        return dict(_describe(slot), changed=True, dropped=False)
    try:
        query(DROP_SQL, (name,))
    except PgBackupError as exc:
        sqlstate = exc.details.get("sqlstate")
        if sqlstate == UNDEFINED_OBJECT:
            return dict(_describe(slot), changed=False, dropped=False)
        if sqlstate == OBJECT_IN_USE:
            again = read_slot(query, name) or slot
            raise _active_error(query, dict(again, active=True)) from None
        raise
    return dict(_describe(slot), changed=True, dropped=True)


def _active_error(query: Query, slot: dict) -> PgBackupError:
    pid = slot.get("active_pid")
    user = ""
    if pid is not None:
        try:
            rows = query(USER_SQL, (pid,))
        except PgBackupError:
            rows = []
        if rows:
            row: Any = rows[0]
            parts = [f"{key} {row[key]}" for key in ("backend_type", "application_name", "client_addr") if row.get(key)]
            user = f" ({', '.join(parts)})" if parts else ""
    return PgBackupError(
        f"replication slot {slot['slot_name']} is active: process {pid}{user} streams from it, and dropping it would break that stream; "
        "stop the process using it (or let the backup's WAL collection finish) and try again",
        **_describe(slot),
    )
