#!/usr/bin/python
# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_abort
short_description: End what an interrupted backup left running on its backup host - the keeper and the async copy
version_added: 1.0.0
description:
  - For a backup whose play was interrupted (Ctrl-C, the controller killed or lost, an AWX job cancelled), so that
    neither its C(rescue) nor its C(always) ran. Runs on the host C(backup_start) and C(datadir_copy) ran on, as the
    same user.
  - Stops the async P(pgbackup.lowlevel.datadir_copy#module) job writing into O(data_dir) - only an Ansible async job of this
    user that runs datadir_copy and names O(data_dir) on a command line (rsync does) or holds a file under it open, never a
    process found by its name alone - with SIGTERM, then SIGKILL, to every process of that job's session. Removes the
    copy's progress file and file lists beside O(data_dir).
  - Aborts the backup session of O(backup_id) (or of every backup in O(state_dir) whose keeper still holds one) as
    P(pgbackup.lowlevel.backup_stop#module) with C(state=aborted) does - the keeper closes its session and PostgreSQL ends
    the backup, without a label.
  - Returns the slot names of those backups (RV(slot_names)) for P(pgbackup.lowlevel.wal_retain#module) with
    C(state=absent), and whether O(data_dir) holds a copy the run wrote (RV(dest_written)) that must be marked incomplete.
  - Returns the snapshot sets those backups recorded before they snapshotted (RV(snapshot_sets)), for
    P(pgbackup.lowlevel.volume_snapshot#module) with C(action=release) on the host each names; it releases none itself.
  - Idempotent - a second run finds nothing to end and returns C(changed=false).
author:
  - pgbackup.lowlevel developers (@pgbackup)
options:
  backup_id:
    description: The backup to end; omitted, every backup in O(state_dir).
    type: str
  state_dir:
    description: The O(pgbackup.lowlevel.backup_start#module:state_dir) C(backup_start) used.
    type: path
  data_dir:
    description:
      - The copy's data directory (O(pgbackup.lowlevel.datadir_copy#module:data_dir)); omitted, no copy is looked for.
      - The alias O(dest) is deprecated and goes in 0.3.0.
    type: path
    aliases: [dest]
  slot_prefix:
    description: The O(pgbackup.lowlevel.wal_retain#module:slot_prefix) the slots were made with.
    type: str
    default: pgbackup_
attributes:
  check_mode:
    description: Lists what it would end; ends nothing.
    support: full
  diff_mode:
    description: Nothing to diff.
    support: none
seealso:
  - module: pgbackup.lowlevel.backup_stop
  - module: pgbackup.lowlevel.wal_retain
"""

EXAMPLES = r"""
- name: End what the interrupted backup left on this host
  pgbackup.lowlevel.backup_abort:
    state_dir: /var/lib/postgresql/.cache/pgbackup.lowlevel/keepers
    data_dir: /backups/pg/latest
  register: ended

- name: Drop the slots those backups made on the standby
  pgbackup.lowlevel.wal_retain:
    login_host: standby.example.com
    slot_name: "{{ item }}"
    state: absent
  loop: "{{ ended.slot_names }}"
"""

RETURN = r"""
backup_ids:
  description: The backups looked at (O(backup_id), or every id in O(state_dir)).
  returned: always
  type: list
  elements: str
keepers:
  description: Each backup's keeper as found - C(backup_id), C(state) (V(running), V(stopped), V(aborted), V(gone), V(unknown)...), C(keeper_pid).
  returned: always
  type: list
  elements: dict
aborted:
  description: The keepers whose session this run ended (in check mode, would end).
  returned: always
  type: list
  elements: dict
copies:
  description: The async copy jobs into O(data_dir) this run stopped (in check mode, would stop) - C(jid), C(pids), C(commands).
  returned: always
  type: list
  elements: dict
slot_names:
  description: The slot names of RV(backup_ids) (O(slot_prefix) + the id), to drop with wal_retain.
  returned: always
  type: list
  elements: str
snapshot_sets:
  description:
    - The snapshot sets of RV(backup_ids) recorded by standby_backup (copy method snapshot) before it snapshotted - a set
      may be made, partly made or already released; volume_snapshot's release is idempotent.
  returned: always
  type: list
  elements: dict
  contains:
    backup_id:
      description: The backup.
      type: str
    name:
      description: The set's name (O(pgbackup.lowlevel.volume_snapshot#module:name)).
      type: str
    host:
      description: The inventory host the set is on (where volume_snapshot ran).
      type: str
    provider:
      description: O(pgbackup.lowlevel.volume_snapshot#module:provider).
      type: str
    paths:
      description: O(pgbackup.lowlevel.volume_snapshot#module:paths), the data directory last.
      type: list
      elements: str
dest_written:
  description: Whether O(data_dir) holds an unfinished copy (a copy was stopped, or it keeps C(.pgbackup-incomplete) or a pending pg_control).
  returned: always
  type: bool
dest_marked:
  description: Whether O(data_dir) already carries C(.pgbackup-incomplete).
  returned: always
  type: bool
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.backup_abort import abort
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.option_names import renamed_from
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.session.keeper_files import default_state_dir, ensure_state_dir

ARGS = {
    "backup_id": {"type": "str"},
    "state_dir": {"type": "path"},
    "data_dir": renamed_from({"type": "path"}, "dest"),
    "slot_prefix": {"type": "str", "default": "pgbackup_"},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGS, supports_check_mode=True)
    p = module.params
    try:
        state_dir = p["state_dir"] or default_state_dir()
        result = abort(
            # a missing state_dir holds no backup (nothing to end); an existing one must be private and ours
            state_dir=ensure_state_dir(state_dir, create=False) if os.path.isdir(state_dir) else state_dir,
            backup_id=p["backup_id"],
            dest=p["data_dir"],
            slot_prefix=p["slot_prefix"],
            check_mode=module.check_mode,
        )
    except PgBackupError as exc:
        module.fail_json(msg=exc.message, **exc.details)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
