#!/usr/bin/python
# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: recovery_config
short_description: Make a labelled copy start as a standby, or recover to a target
version_added: 0.1.0
description:
  - O(mode=standby) - C(standby.signal), C(primary_conninfo) (from the O(primary_host) options) and
    C(primary_slot_name), and optionally a C(restore_command) to read an archive too.
  - O(mode=recovery) - C(recovery.signal), C(restore_command) and at most one recovery target (O(recovery_target_time),
    O(recovery_target_lsn), O(recovery_target_xid), O(recovery_target_name) or O(recovery_target_immediate)), with
    O(recovery_target_action), O(recovery_target_timeline) and O(recovery_target_inclusive).
  - Settings go to C(postgresql.auto.conf), and earlier lines there for every recovery setting the module manages are
    removed, so nothing is appended twice and nothing inherited from the source survives (a standby's
    C(primary_conninfo) pointing elsewhere, another host's C(restore_command), an old target). C(primary_conninfo),
    C(primary_slot_name) and C(restore_command) are always written, as an empty string when not wanted, which also
    overrides a value in C(postgresql.conf); the other settings are written only when given. The other mode's signal
    file is removed.
  - O(primary_password) is written to a passfile (mode 0600, owned like the data directory) that C(primary_conninfo)
    names; it never appears in C(primary_conninfo), in the output or in the diff.
  - Warns about the C(recovery_target = 'immediate') trap (see O(recovery_target_immediate)).
  - Refuses a copy with a live postmaster, an unfinished copy, a copy whose pg_control is still pending
    (run P(pgbackup.lowlevel.label_place#module) first), and a C(recovery.conf).
  - Idempotent; diff mode shows C(postgresql.auto.conf) before and after.
author:
  - pgbackup.lowlevel developers (@pgbackup)
options:
  data_dir:
    description: The copy's data directory on this host (stopped).
    type: path
    required: true
  mode:
    description: Start as a standby, or recover to a target and then act as O(recovery_target_action) says.
    type: str
    choices: [standby, recovery]
    required: true
  primary_host:
    description: Host (name, address or socket directory) of the server to stream from (O(mode=standby)).
    type: str
  primary_port:
    description: Its port.
    type: int
    default: 5432
  primary_user:
    description: The replication role.
    type: str
    default: postgres
  primary_password:
    description: Its password; written to O(primary_passfile), never to C(primary_conninfo).
    type: str
  primary_passfile:
    description:
      - Where the password goes. Defaults to C(.<data dir name>.pgpass) next to the data directory (outside it, so
        later backups of the copy do not carry it).
    type: path
  primary_application_name:
    description: C(application_name) of the WAL receiver (how the primary's C(pg_stat_replication) names it).
    type: str
  primary_sslmode:
    description: C(sslmode) of the replication connection.
    type: str
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
  primary_conninfo_params:
    description: Other libpq keywords for C(primary_conninfo) (not C(password)).
    type: dict
    default: {}
  primary_slot_name:
    description: The physical slot on the primary to stream from.
    type: str
  restore_command:
    description: Command that fetches archived WAL (C(%f), C(%p)). Required with O(mode=recovery).
    type: str
  recovery_target_time:
    description: Recover up to this time.
    type: str
  recovery_target_lsn:
    description: Recover up to this LSN (for example the backup's stop LSN).
    type: str
  recovery_target_xid:
    description: Recover up to this transaction.
    type: str
  recovery_target_name:
    description: Recover up to this restore point.
    type: str
  recovery_target_immediate:
    description:
      - Stop as soon as the copy is consistent (C(recovery_target = 'immediate')).
      - PostgreSQL stops only before the next record after consistency, and only a transaction record ends it; if the WAL
        ends exactly at the consistency point, recovery fails with "recovery ended before configured recovery target was
        reached". Archive one more segment after the backup's stop, or prefer O(recovery_target_lsn) with the stop LSN.
    type: bool
    default: false
  recovery_target_action:
    description: What to do at the target (PostgreSQL's default is V(pause)).
    type: str
    choices: [pause, promote, shutdown]
  recovery_target_timeline:
    description: The timeline to recover along (PostgreSQL's default is V(latest)).
    type: str
  recovery_target_inclusive:
    description: Stop just after (V(true), the default) or just before the target.
    type: bool
  recovery_min_apply_delay:
    description: Delay replay on the standby (a time such as V(5min)).
    type: str
attributes:
  check_mode:
    description: Reports what would change.
    support: full
  diff_mode:
    description: C(postgresql.auto.conf) before and after.
    support: full
seealso:
  - module: pgbackup.lowlevel.label_place
  - module: pgbackup.lowlevel.replay_wait
"""

EXAMPLES = r"""
- name: Make the clone a standby of the primary, streaming from a slot
  pgbackup.lowlevel.recovery_config:
    data_dir: /srv/pg/clone
    mode: standby
    primary_host: db1.example.com
    primary_user: replicator
    primary_password: "{{ vault_replicator_password }}"
    primary_slot_name: clone_db3
    primary_application_name: db3

- name: Recover a restored backup to its stop point, then promote
  pgbackup.lowlevel.recovery_config:
    data_dir: /srv/restore/data
    mode: recovery
    restore_command: cp /srv/archive/%f %p
    recovery_target_lsn: "{{ stopped.stop_lsn }}"
    recovery_target_action: promote
"""

RETURN = r"""
files:
  description: Files written or removed.
  returned: always
  type: list
  elements: str
  sample: [postgresql.auto.conf, standby.signal]
settings:
  description: The recovery settings now in C(postgresql.auto.conf) (an empty string cancels an inherited value).
  returned: always
  type: dict
  sample: {primary_conninfo: "host='db1' port='5432' user='replicator' passfile='/srv/pg/.clone.pgpass'", primary_slot_name: clone_db3}
passfile:
  description: The passfile written, when O(primary_password) is given.
  returned: when primary_password is given
  type: str
  sample: /srv/pg/.clone.pgpass
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.recovery_settings import (
    IMMEDIATE_TRAP,
    build_conninfo,
    configure,
    passfile_line,
    settings_for,
)

TARGET_OPTIONS = ("recovery_target_time", "recovery_target_lsn", "recovery_target_xid", "recovery_target_name", "recovery_target_immediate")
ARGS = {
    "data_dir": {"type": "path", "required": True},
    "mode": {"type": "str", "choices": ["standby", "recovery"], "required": True},
    "primary_host": {"type": "str"},
    "primary_port": {"type": "int", "default": 5432},
    "primary_user": {"type": "str", "default": "postgres"},
    "primary_password": {"type": "str", "no_log": True},
    "primary_passfile": {"type": "path"},
    "primary_application_name": {"type": "str"},
    "primary_sslmode": {"type": "str", "choices": ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]},
    "primary_conninfo_params": {"type": "dict", "default": {}},
    "primary_slot_name": {"type": "str"},
    "restore_command": {"type": "str"},
    "recovery_target_time": {"type": "str"},
    "recovery_target_lsn": {"type": "str"},
    "recovery_target_xid": {"type": "str"},
    "recovery_target_name": {"type": "str"},
    "recovery_target_immediate": {"type": "bool", "default": False},
    "recovery_target_action": {"type": "str", "choices": ["pause", "promote", "shutdown"]},
    "recovery_target_timeline": {"type": "str"},
    "recovery_target_inclusive": {"type": "bool"},
    "recovery_min_apply_delay": {"type": "str"},
}


def target_of(p: dict):
    given = [name for name in TARGET_OPTIONS if p[name]]
    if len(given) > 1:
        raise PgBackupError(f"give at most one recovery target, got {', '.join(given)}: PostgreSQL refuses to start with several")
    if not given:
        return None
    if given[0] == "recovery_target_immediate":
        return ("recovery_target", "immediate")
    return (given[0], str(p[given[0]]))


def run_module(module: AnsibleModule) -> dict:
    p = module.params
    data_dir = os.path.abspath(p["data_dir"])
    conninfo, passfile = None, None
    if p["primary_host"]:
        extra = {str(k): v for k, v in p["primary_conninfo_params"].items()}
        if any(k.lower() in ("password", "passfile") for k in extra):
            raise PgBackupError("primary_conninfo_params may not set password or passfile: use primary_password (no_log)")
        keywords = {"host": p["primary_host"], "port": p["primary_port"], "user": p["primary_user"]}
        if p["primary_password"]:
            path = p["primary_passfile"] or os.path.join(os.path.dirname(data_dir), f".{os.path.basename(data_dir)}.pgpass")
            passfile = (path, passfile_line(p["primary_host"], p["primary_port"], p["primary_user"], p["primary_password"]))
            keywords["passfile"] = path
        keywords.update(application_name=p["primary_application_name"], sslmode=p["primary_sslmode"], **extra)
        conninfo = build_conninfo(keywords)
    elif p["mode"] == "standby" and (p["primary_password"] or p["primary_slot_name"]):
        raise PgBackupError("primary_password and primary_slot_name need primary_host")
    extra_settings = {
        "recovery_target_action": p["recovery_target_action"],
        "recovery_target_timeline": p["recovery_target_timeline"],
        "recovery_target_inclusive": None if p["recovery_target_inclusive"] is None else ("on" if p["recovery_target_inclusive"] else "off"),
        "recovery_min_apply_delay": p["recovery_min_apply_delay"],
    }
    target = target_of(p)
    values = settings_for(
        mode=p["mode"],
        primary_conninfo=conninfo,
        primary_slot_name=p["primary_slot_name"],
        restore_command=p["restore_command"],
        target=target,
        extra=extra_settings,
    )
    if target == ("recovery_target", "immediate"):
        module.warn(IMMEDIATE_TRAP)
    result = configure(data_dir, mode=p["mode"], values=values, passfile=passfile, check_mode=module.check_mode)
    diff = result.pop("diff")
    if module._diff:
        result["diff"] = diff
    result["settings"] = dict(values)
    if passfile is not None:
        result["passfile"] = passfile[0]
    return result


def main() -> None:
    module = AnsibleModule(argument_spec=ARGS, supports_check_mode=True)
    try:
        result = run_module(module)
    except PgBackupError as exc:
        module.fail_json(msg=exc.message, **exc.details)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
