# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make a stopped copy start as a standby or recover to a target (PostgreSQL 12+ style, section 8 of the internals).

Settings go to ``postgresql.auto.conf``, which overrides ``postgresql.conf``: every recovery setting this module
manages is written once - its value, or ``''`` (connection and restore command) to cancel what the copy inherited from its source (a standby's
``primary_conninfo`` pointing elsewhere, a ``restore_command`` of another host) - and earlier lines for those names
are dropped, so nothing is ever appended twice (``pg_basebackup -R`` appends). The signal file is the one of the mode;
the other one is removed. A password never goes into ``primary_conninfo``: it goes into a passfile (0600) that
``primary_conninfo`` names.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Optional

from . import copy_state
from .durable import fsync_dir, write_atomically
from .errors import PgBackupError

AUTO_CONF = "postgresql.auto.conf"
STANDBY_SIGNAL = "standby.signal"
RECOVERY_SIGNAL = "recovery.signal"
TARGETS = ("recovery_target", "recovery_target_lsn", "recovery_target_name", "recovery_target_time", "recovery_target_xid")
# Written in every run (value or ''); the others only when given. The targets cannot be cancelled with '': PostgreSQL's
# assign hooks refuse setting a second target kind even to '' ("multiple recovery targets specified"), so an
# inherited target line is only removed.
ALWAYS = ("primary_conninfo", "primary_slot_name", "restore_command")
OPTIONAL = (*TARGETS, "recovery_target_action", "recovery_target_inclusive", "recovery_target_timeline", "recovery_min_apply_delay")
MANAGED = ALWAYS + OPTIONAL
HEADER = "# recovery settings written by pgbackup.lowlevel.recovery_config"
_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=?")
IMMEDIATE_TRAP = (
    "recovery_target = 'immediate' stops before the first record after the copy is consistent, and only a transaction "
    "record can end it: if the WAL available ends exactly at the consistency point, recovery fails with 'recovery ended "
    "before configured recovery target was reached'. Make sure one more segment is archived after the backup's stop "
    "(pg_switch_wal() on the primary), or use recovery_target_lsn with the stop LSN instead"
)


def quote_conninfo(value: str) -> str:
    """A libpq conninfo value: single-quoted, with backslash and quote escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def build_conninfo(params: Mapping[str, object]) -> str:
    """``key='value'`` pairs in a stable order; None and '' are left out."""
    return " ".join(f"{key}={quote_conninfo(str(value))}" for key, value in params.items() if value is not None and value != "")


def quote_setting(value: str) -> str:
    """A string setting as postgresql.auto.conf spells it (quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def passfile_line(host: str, port: int, user: str, password: str) -> str:
    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace(":", "\\:")

    return f"{escape(host)}:{port}:replication:{escape(user)}:{escape(password)}\n"


def settings_for(
    *,
    mode: str,
    primary_conninfo: Optional[str],
    primary_slot_name: Optional[str],
    restore_command: Optional[str],
    target: Optional[tuple],
    extra: Mapping[str, Optional[str]],
) -> dict:
    """Every managed setting's new value ('' to cancel an inherited one; absent = left out)."""
    if mode == "recovery" and not restore_command:
        raise PgBackupError(
            "mode=recovery needs restore_command: with recovery.signal and no restore_command PostgreSQL refuses to start "
            "(must specify restore_command when standby mode is not enabled)"
        )
    if mode == "standby" and target is not None:
        raise PgBackupError(f"{target[0]} goes with mode=recovery: a standby follows its primary and has no recovery target")
    if mode == "standby" and not primary_conninfo and not restore_command:
        raise PgBackupError("mode=standby needs primary_host (to stream) or restore_command (to read an archive), or both")
    values = {name: "" for name in ALWAYS}
    if mode == "standby":
        values["primary_conninfo"] = primary_conninfo or ""
        values["primary_slot_name"] = primary_slot_name or ""
    values["restore_command"] = restore_command or ""
    if target is not None:
        values[target[0]] = target[1]
    for name, value in extra.items():
        if value is not None:
            values[name] = value
    return values


def render_auto_conf(existing: str, values: Mapping[str, str]) -> str:
    """``existing`` without any line for a managed setting (or our header), followed by ours."""
    kept = []
    for line in existing.splitlines():
        match = _LINE.match(line)
        if line.strip() == HEADER or (match and match.group(1).lower() in MANAGED):
            continue
        kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    ours = [HEADER] + [f"{name} = {quote_setting(value)}" for name, value in values.items()]
    return "\n".join(kept + ([""] if kept else []) + ours) + "\n"


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def configure(
    data_dir: str,
    *,
    mode: str,
    values: Mapping[str, str],
    passfile: Optional[tuple] = None,
    check_mode: bool = False,
) -> dict:
    """Write postgresql.auto.conf, the passfile and the signal file; return what changed and the diff."""
    data_dir = os.path.abspath(data_dir)
    copy_state.check_stopped_copy(
        data_dir,
        writing="recovery settings are written",
        because="its next start would recover to the target or follow another server as a standby",
    )
    if os.path.exists(os.path.join(data_dir, copy_state.PENDING_CONTROL)):
        raise PgBackupError(f"{data_dir} still has its pg_control under the pending name: run label_place first")
    if os.path.exists(os.path.join(data_dir, "recovery.conf")):
        raise PgBackupError(f"{data_dir} has a recovery.conf, which PostgreSQL 12+ refuses to start with: remove it (its settings belong here)")
    auto_path = os.path.join(data_dir, AUTO_CONF)
    before = _read_text(auto_path) or ""
    after = render_auto_conf(before, values)
    wanted, unwanted = (STANDBY_SIGNAL, RECOVERY_SIGNAL) if mode == "standby" else (RECOVERY_SIGNAL, STANDBY_SIGNAL)
    changes = []
    if after != before:
        changes.append(AUTO_CONF)
    if not os.path.exists(os.path.join(data_dir, wanted)):
        changes.append(wanted)
    if os.path.exists(os.path.join(data_dir, unwanted)):
        changes.append(f"{unwanted} (removed)")
    if passfile is not None and _read_text(passfile[0]) != passfile[1]:
        changes.append(passfile[0])
    result = {"changed": bool(changes), "files": changes, "diff": {"before": before, "after": after, "before_header": auto_path, "after_header": auto_path}}
    if check_mode or not changes:
        return result
    info = os.stat(data_dir)
    owner = (info.st_uid, info.st_gid)
    if passfile is not None and passfile[0] in changes:
        write_atomically(passfile[0], passfile[1].encode("utf-8"), mode=0o600, owner=owner)
    if AUTO_CONF in changes:
        write_atomically(auto_path, after.encode("utf-8", "surrogateescape"), mode=0o600, owner=owner)
    if wanted in changes:
        write_atomically(os.path.join(data_dir, wanted), b"", mode=0o600, owner=owner)
    if f"{unwanted} (removed)" in changes:
        os.unlink(os.path.join(data_dir, unwanted))
        fsync_dir(data_dir)
    return result
