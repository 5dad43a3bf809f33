#!/usr/bin/python
# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_start
short_description: Start a non-exclusive PostgreSQL backup in a session a keeper holds open until backup_stop
version_added: 0.1.0
description:
  - Starts a non-exclusive backup on a PostgreSQL 13 to 18 server, primary or standby -
    C(pg_backup_start(label, fast)) on 15+, C(pg_start_backup(label, fast, false)) on 13 and 14 (never the
    exclusive default, which would write C(backup_label) into the live data directory).
  - A non-exclusive backup lives in one database session, but every Ansible task is a new process. The module
    therefore forks a keeper (double fork, new session) that owns the connection, with C(statement_timeout=0),
    C(idle_session_timeout=0) (14+), TCP keepalives and an C(application_name) naming the backup, and waits for
    P(pgbackup.lowlevel.backup_stop#module) on a Unix socket in a private state directory.
  - If the keeper dies, is stopped, or O(max_duration) passes, its session closes and PostgreSQL aborts the backup
    - the safe outcome; P(pgbackup.lowlevel.backup_stop#module) then says that no usable label exists.
  - Idempotent - the same O(backup_id) with a live keeper returns the running backup with C(changed=false);
    a different id starts a second, concurrent backup with its own keeper. An id whose backup ended is refused.
  - The label is refused before anything starts when it holds a newline or another control character, or is
    longer than 1023 bytes; it reaches the server as a bound parameter, so quotes and shell characters are harmless.
author:
  - pgbackup.lowlevel developers (@pgbackup)
extends_documentation_fragment:
  - pgbackup.lowlevel.connection
options:
  backup_id:
    description:
      - Names the backup in the state directory, in C(application_name) and for P(pgbackup.lowlevel.backup_stop#module).
      - 1 to 63 letters, digits, C(.), C(_) or C(-), starting with a letter or digit. Generated (UTC time and random
        hex) when omitted.
    type: str
  label:
    description: The backup's label (C(LABEL) in C(backup_label)). Defaults to C(pgbackup.lowlevel <backup_id>).
    type: str
  fast:
    description:
      - Request an immediate checkpoint. V(false), PostgreSQL's default, spreads it over
        C(checkpoint_timeout * checkpoint_completion_target), which spares the server's I/O but can take minutes.
      - On a standby the start is the redo point of the latest restartpoint either way.
    type: bool
    default: false
  max_duration:
    description:
      - Seconds the backup may run. Past it the keeper closes the session, PostgreSQL aborts the backup, and the
        reason is recorded for P(pgbackup.lowlevel.backup_stop#module). V(0) means no limit.
      - A forgotten backup keeps full-page writes forced on the primary; this bounds it.
    type: int
    default: 86400
  timeout:
    description: Seconds to wait for the start (its checkpoint); past it the keeper is killed and nothing is left running.
    type: float
    default: 1800
  state_dir:
    description:
      - The keeper's private directory (created 0700, refused when another user owns it or others may enter it).
        One subdirectory per backup id holds its results, log and socket.
      - P(pgbackup.lowlevel.backup_stop#module) must run on the same host, as the same user, with the same O(state_dir).
      - Defaults to C(~/.cache/pgbackup.lowlevel/keepers) of the user the module runs as.
    type: path
  snapshot_set:
    description:
      - The snapshot set the caller makes once the backup has started (keys C(name), C(host), C(provider) and
        C(paths), absolute). Written as C(snapshot_set.json), mode 0600, into the backup's directory in O(state_dir)
        before the start, so that P(pgbackup.lowlevel.backup_abort#module) finds and releases it after a controller
        that died between the snapshots and their release. P(pgbackup.lowlevel.standby_backup#role) sets it with
        C(standby_backup_copy_method=snapshot).
      - Refused before anything starts when a key is missing or a path is not absolute.
    type: dict
attributes:
  check_mode:
    description: Connects, checks C(wal_level), C(full_page_writes) and that the role may run the backup functions; starts nothing.
    support: full
  diff_mode:
    description: Nothing to diff.
    support: none
notes:
  - The role needs EXECUTE on the start and stop functions (a superuser has it); check mode tells.
  - The keeper must survive the task. Do not run the module under C(async) with a short C(poll) cleanup, and on hosts
    where systemd-logind kills a user's processes at logout (C(KillUserProcesses=yes)) enable lingering for that user.
  - Connection poolers in transaction or statement mode break the one-session rule. The start refuses them before
    anything starts (a second connection served by the same server process, or the session changing server process),
    and the stop refuses a session that moved; connect to the server, or through a pool in session mode (pgbouncer
    then needs C(ignore_startup_parameters = options)).
seealso:
  - module: pgbackup.lowlevel.backup_stop
  - name: Making a non-exclusive low-level backup
    description: PostgreSQL's procedure this module and backup_stop implement.
    link: https://www.postgresql.org/docs/current/continuous-archiving.html#BACKUP-LOWLEVEL-BASE-BACKUP
"""

EXAMPLES = r"""
- name: Start a backup on the primary
  pgbackup.lowlevel.backup_start:
    login_host: "{{ primary_address }}"
    login_password: "{{ vault_postgres_password }}"
    fast: true
  register: backup

- name: Copy the files here, then stop it (another task, or another play on this host)
  pgbackup.lowlevel.backup_stop:
    backup_id: "{{ backup.backup_id }}"
"""

RETURN = r"""
backup_id:
  description: The backup's id (given or generated).
  returned: always
  type: str
  sample: 20261123T004501Z-3f9a1c
label:
  description: The label passed to the server.
  returned: always
  type: str
  sample: pgbackup.lowlevel 20261123T004501Z-3f9a1c
start_lsn:
  description: The start point (redo of the backup's checkpoint or, on a standby, restartpoint); C(START WAL LOCATION) of the label.
  returned: success and not check mode
  type: str
  sample: 0/9000028
start_wal_file:
  description: The WAL file holding RV(start_lsn), computed here (C(pg_walfile_name) fails on a standby).
  returned: success and not check mode
  type: str
  sample: "000000010000000000000009"
start_timeline:
  description:
    - The start point's timeline, C(START TIMELINE) of the label.
    - Passed on as O(pgbackup.lowlevel.wal_collect#module:start_timeline) and O(pgbackup.lowlevel.backup_manifest#module:start_timeline).
  returned: success
  type: int
  sample: 1
timeline:
  description: The same as RV(start_timeline), its name before 0.2.0; deprecated, it goes in 0.3.0.
  returned: always
  type: int
  sample: 1
checkpoint_lsn:
  description: The checkpoint record of the start point when it could be read (V(null) when a later checkpoint overtook it).
  returned: success and not check mode
  type: str
  sample: 0/9000060
server_role:
  description: V(primary) or V(standby).
  returned: always
  type: str
  sample: primary
server_version:
  description: The server's version.
  returned: always
  type: str
  sample: "16.14"
system_identifier:
  description: The cluster's system identifier, as a string.
  returned: always
  type: str
  sample: "7440123456789012345"
started_at:
  description: The server's clock when the start returned.
  returned: success and not check mode
  type: str
  sample: "2026-11-23T00:45:02.123456+00:00"
start_attempts:
  description:
    - How many times the start was run. On a hot standby a start cancelled by a conflict with recovery (SQLSTATE 40001)
      is run again, up to 3 times, then refused saying what to set (O(fast), C(hot_standby_feedback),
      C(max_standby_streaming_delay)).
  returned: success and not check mode
  type: int
  sample: 1
keeper_pid:
  description: PID of the keeper process on this host.
  returned: success and not check mode
  type: int
  sample: 41234
backend_pid:
  description: PID of the keeper's backend on the server (C(pg_stat_activity.pid)).
  returned: success and not check mode
  type: int
  sample: 5123
state_dir:
  description: The state directory.
  returned: success and not check mode
  type: str
  sample: /var/lib/postgresql/.cache/pgbackup.lowlevel/keepers
session_dir:
  description: This backup's directory in it.
  returned: success and not check mode
  type: str
  sample: /var/lib/postgresql/.cache/pgbackup.lowlevel/keepers/20261123T004501Z-3f9a1c
queries:
  description:
    - The statements the backup's session ran (the keeper's, up to the start; in check mode the checks').
    - Statements whose parameters are secret are left out.
  returned: always
  type: list
  elements: str
  sample: ["SELECT lsn::text AS lsn, clock_timestamp() AS at FROM pg_backup_start('pgbackup.lowlevel 20261123T004501Z-3f9a1c', true) AS lsn"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.connection import connection_secrets, with_connection_options
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.session.backup_api import check_label
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.session.backup_session import check_only, start_backup
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.session.keeper_files import (
    check_backup_id,
    default_state_dir,
    ensure_state_dir,
    new_backup_id,
    snapshot_set_problem,
)

ARGS = {
    "backup_id": {"type": "str"},
    "label": {"type": "str"},
    "fast": {"type": "bool", "default": False},
    "max_duration": {"type": "int", "default": 86400},
    "timeout": {"type": "float", "default": 1800},
    "state_dir": {"type": "path"},
    "snapshot_set": {"type": "dict"},
}


def run_module(module: AnsibleModule) -> dict:
    p = module.params
    backup_id = check_backup_id(p["backup_id"]) if p["backup_id"] else new_backup_id()
    label = check_label(p["label"] if p["label"] is not None else f"pgbackup.lowlevel {backup_id}")
    for option in ("max_duration", "timeout"):
        if p[option] < 0 or (option == "timeout" and p[option] == 0):
            raise PgBackupError(f"{option} must be a positive number of seconds{' or 0' if option == 'max_duration' else ''}, got {p[option]}")
    problem = None if p["snapshot_set"] is None else snapshot_set_problem(p["snapshot_set"])
    if problem:
        raise PgBackupError(f"snapshot_set is not a snapshot set record: {problem} (found {p['snapshot_set']!r}); nothing was started")
    if module.check_mode:
        return dict(check_only(p, backup_id), changed=True, backup_id=backup_id, label=label)
    state_dir = ensure_state_dir(p["state_dir"] or default_state_dir())
    return start_backup(
        p,
        backup_id=backup_id,
        label=label,
        fast=p["fast"],
        max_duration=p["max_duration"],
        state_dir=state_dir,
        timeout=p["timeout"],
        snapshot_set=p["snapshot_set"],
    )


def main() -> None:
    module = AnsibleModule(argument_spec=with_connection_options(ARGS), supports_check_mode=True)
    module.no_log_values.update(connection_secrets(module.params))
    try:
        result = run_module(module)
    except PgBackupError as exc:
        module.fail_json(msg=exc.message, **exc.details)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
