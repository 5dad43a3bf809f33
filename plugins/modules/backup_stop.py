#!/usr/bin/python
# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_stop
short_description: Stop (or abort) a backup started by backup_start, through its keeper
version_added: 0.1.0
description:
  - Asks the keeper of O(backup_id) to run C(pg_backup_stop(wait_for_archive)) (15+) or
    C(pg_stop_backup(false, wait_for_archive)) (13, 14) in the session the backup started in, and returns the stop
    point with C(backup_label) and C(tablespace_map) exactly as the server returned them.
  - The keeper stores the result before it answers, so a retried call whose first answer was lost returns the same
    result with C(changed=false).
  - O(state=aborted) ends the backup on purpose - the keeper closes its session and PostgreSQL aborts the backup. Use it
    in the cleanup path of every play.
  - A keeper that is gone (killed, host rebooted), a backend that was terminated, a server that restarted, or a stop
    that fails (a standby promoted during the backup) all mean PostgreSQL aborted the backup - the module fails and says
    that no usable backup_label exists and that the copy must be discarded.
  - The running stop is never cancelled (a cancelled stop loses the label); when it does not answer within O(timeout)
    the module fails, the stop goes on, and a later call collects its result.
  - Runs on the host C(backup_start) ran on, as the same user, with the same O(state_dir); it does not connect to the
    server itself, so it takes no connection options.
author:
  - pgbackup.lowlevel developers (@pgbackup)
options:
  backup_id:
    description: The id C(backup_start) returned.
    type: str
    required: true
  state:
    description: V(stopped) stops the backup and returns its label; V(aborted) ends it without one.
    type: str
    choices: [stopped, aborted]
    default: stopped
  wait_for_archive:
    description:
      - Let the stop wait until the WAL the backup needs is archived (on a primary with C(archive_mode) on, on a standby
        only with C(archive_mode=always)). A warning is returned when the server reported waiting.
      - V(false) when the WAL is collected by other means (for example P(pgbackup.lowlevel.wal_retain#module) and a copy of C(pg_wal)).
    type: bool
    default: true
  timeout:
    description: Seconds to wait for the keeper's answer (the stop itself goes on past it).
    type: float
    default: 3600
  report_interval:
    description:
      - Seconds between two lines, shown on the controller while the stop runs, that say what it waits for (the stopping
        backend's wait event and C(pg_stat_archiver), read by the keeper on a second connection), so that a stop waiting
        on a failing C(archive_command) is not silent for its whole O(timeout).
    type: int
    default: 30
  expect_system_identifier:
    description:
      - With a backup started on the primary and files copied from a standby - the standby's system identifier. Checked
        against the server before stopping; a mismatch aborts the backup.
    type: str
  expect_timeline:
    description: As O(expect_system_identifier), for the standby's timeline.
    type: int
  state_dir:
    description: The O(pgbackup.lowlevel.backup_start#module:state_dir) C(backup_start) used.
    type: path
attributes:
  check_mode:
    description: Reports whether the keeper is alive and what would happen; stops nothing.
    support: full
  action:
    description: An action plugin waits in rounds of O(report_interval) on the controller and shows what the stop waits for.
    support: full
  diff_mode:
    description: Nothing to diff.
    support: none
seealso:
  - module: pgbackup.lowlevel.backup_start
"""

EXAMPLES = r"""
- name: Back up, and abort the backup whatever fails
  block:
    - name: Start
      pgbackup.lowlevel.backup_start:
        login_host: "{{ primary_address }}"
        login_password: "{{ vault_postgres_password }}"
      register: backup
    # ... copy the data directory ...
    - name: Stop
      pgbackup.lowlevel.backup_stop:
        backup_id: "{{ backup.backup_id }}"
      register: stopped
  rescue:
    - name: Abort
      pgbackup.lowlevel.backup_stop:
        backup_id: "{{ backup.backup_id }}"
        state: aborted
      when: backup.backup_id is defined
"""

RETURN = r"""
state:
  description: V(stopped) or V(aborted).
  returned: always
  type: str
  sample: stopped
stop_lsn:
  description: The stop point (end of the backup-end record on a primary, the minimum recovery point on a standby).
  returned: state is stopped
  type: str
  sample: 0/9000138
stop_wal_file:
  description: The WAL file holding the last byte before RV(stop_lsn).
  returned: state is stopped
  type: str
  sample: "000000010000000000000009"
stop_timeline:
  description: The stop point's timeline.
  returned: state is stopped
  type: int
  sample: 1
backup_label:
  description: The C(backup_label) contents as the server returned them (as text; exact bytes in RV(backup_label_base64)).
  returned: state is stopped
  type: str
  sample: "START WAL LOCATION: 0/9000028 (file 000000010000000000000009)\n..."
tablespace_map:
  description: The C(tablespace_map) contents, empty when there are no tablespaces.
  returned: state is stopped
  type: str
  sample: ""
backup_label_base64:
  description: The label's exact bytes, base64.
  returned: state is stopped
  type: str
tablespace_map_base64:
  description: The map's exact bytes, base64.
  returned: state is stopped
  type: str
duration_seconds:
  description: Seconds the server spent in backup mode (its clock at start to its clock at stop).
  returned: state is stopped
  type: float
  sample: 42.5
start_lsn:
  description: The start point, as C(backup_start) returned it.
  returned: state is stopped
  type: str
  sample: 0/9000028
notices:
  description: What the server said while stopping (for example about WAL archiving).
  returned: state is stopped
  type: list
  elements: str
reason:
  description: Why the backup was aborted.
  returned: state is aborted
  type: str
  sample: backup_stop was called with state=aborted
waiting:
  description:
    - What a stop that did not answer within O(timeout) was waiting for, from the keeper's last look - the stopping
      backend's C(wait_event_type) and C(wait_event), C(archive_mode), C(pg_stat_archiver)'s counts and last failure,
      C(stopping_for_seconds) (or C(error) when the look failed).
  returned: when the stop did not answer in time and the keeper had looked
  type: dict
rounds:
  description: How many rounds of O(report_interval) the controller waited.
  returned: always
  type: int
  sample: 1
queries:
  description: The statements the backup's session ran to stop the backup.
  returned: state is stopped and the stop was run by this task
  type: list
  elements: str
  sample:
    - "SELECT lsn::text AS lsn, convert_to(labelfile, current_setting('server_encoding')) AS labelfile,
      convert_to(coalesce(spcmapfile, ''), current_setting('server_encoding')) AS spcmapfile, clock_timestamp() AS at FROM pg_backup_stop(true)"
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.session.backup_session import stop_backup
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.session.keeper_files import check_backup_id, default_state_dir, ensure_state_dir
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.system_identifier import expected_system_identifier

ARGS = {
    "backup_id": {"type": "str", "required": True},
    "state": {"type": "str", "choices": ["stopped", "aborted"], "default": "stopped"},
    "wait_for_archive": {"type": "bool", "default": True},
    "timeout": {"type": "float", "default": 3600},
    "report_interval": {"type": "int", "default": 30},
    "expect_system_identifier": {"type": "str"},
    "expect_timeline": {"type": "int"},
    "state_dir": {"type": "path"},
}


def run_module(module: AnsibleModule) -> dict:
    p = module.params
    if p["timeout"] <= 0:
        raise PgBackupError(f"timeout must be a positive number of seconds, got {p['timeout']}")
    result = stop_backup(
        backup_id=check_backup_id(p["backup_id"]),
        state_dir=ensure_state_dir(p["state_dir"] or default_state_dir(), create=False),
        state=p["state"],
        wait_for_archive=p["wait_for_archive"],
        timeout=p["timeout"],
        expect_system_identifier=expected_system_identifier(p["expect_system_identifier"]),
        expect_timeline=p["expect_timeline"],
        check_mode=module.check_mode,
    )
    for notice in result.get("archive_wait_notices") or []:
        module.warn(f"the stop waited for WAL archiving: {notice}")
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
