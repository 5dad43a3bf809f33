#!/usr/bin/python
# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: copy_wait
short_description: Wait for an async datadir_copy, showing its progress and stopping it when the backup is lost
description:
  - Waits for the async job of P(pgbackup.lowlevel.datadir_copy#module) started with C(async) and C(poll=0), in a
    loop on the controller (an action plugin), never by nested includes, for at most O(timeout) seconds.
  - Shows one progress line every O(interval) seconds (phase, percentage, MiB, MiB/s, elapsed, ETA).
  - With O(state_dir) and O(backup_id), checks the keeper of P(pgbackup.lowlevel.backup_start#module) every round;
    when its backup is lost (keeper gone, its session ended by the server, aborted) the copy's job is killed at once
    (the destination keeps C(.pgbackup-incomplete)) and the task fails with the keeper's cause.
version_added: 1.0.0
author:
  - pgbackup.lowlevel developers (@pgbackup)
options:
  jid:
    description: The async job id (RV(ansible.builtin.async_status#module:ansible_job_id) of the copy task).
    type: str
    required: true
  progress_file:
    description: The copy's progress file (O(pgbackup.lowlevel.datadir_copy#module:progress_file)).
    type: path
  remove_progress_file:
    description: Remove O(progress_file) once the copy finished, successfully or not (a copy stopped because the backup was lost keeps it).
    type: bool
    default: false
  state_dir:
    description: The keeper's state directory (as given to backup_start); checked only with O(backup_id).
    type: path
  backup_id:
    description: The backup whose keeper is checked every round.
    type: str
  interval:
    description: Seconds between two progress lines (fractions allowed, at least 0.1).
    type: float
    default: 30
  timeout:
    description: Seconds to wait in all (the copy's C(async)); the task fails after them.
    type: float
    required: true
  primary:
    description: C(host:port) of the server the backup runs on, named in the failure when the backup is lost.
    type: str
  async_dir:
    description: Where async_wrapper keeps its job files on the target.
    type: str
    default: ~/.ansible_async
  round_wait:
    description: Set by the action plugin (leave it unset); seconds one round may wait on the target.
    type: float
    default: 0
attributes:
  check_mode:
    description: Not supported; the role does not run the copy in check mode.
    support: none
  action:
    description: An action plugin runs the loop on the controller, the module one round on the target.
    support: full
  async:
    description: Not supported; it follows an async job itself.
    support: none
notes:
  - It returns when the job finished, with the job's result in RV(copy_result) (what M(ansible.builtin.async_status) would
    read), and fails with the copy's message when the copy failed, so no async_status task is needed after it.
"""

EXAMPLES = r"""
- name: Follow the copy
  pgbackup.lowlevel.copy_wait:
    jid: "{{ copy_job.ansible_job_id }}"
    progress_file: /srv/backups/.copy.progress.json
    state_dir: /var/lib/postgresql/.cache/pgbackup.lowlevel/keepers
    backup_id: "{{ started.backup_id }}"
    primary: db1:5432
    interval: 30
    timeout: 86400
    remove_progress_file: true
  register: copied  # copied.copy_result holds datadir_copy's result
"""

RETURN = r"""
finished:
  description: Whether the job finished (successfully; a failed copy fails the task).
  returned: always
  type: bool
copy_result:
  description: The result of the finished job (the P(pgbackup.lowlevel.datadir_copy#module) module's return values).
  returned: when the job finished
  type: dict
rounds:
  description: How many rounds were waited.
  returned: always
  type: int
progress:
  description: The copy's last progress record.
  returned: always
  type: dict
lost:
  description: Why the keeper's backup was lost.
  returned: on failure
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_watch import one_round
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.session.keeper_files import default_state_dir

# The module runs one round on the target (the action plugin calls it with round_wait); alone it is one round.
ARGUMENT_SPEC = {
    "jid": {"type": "str", "required": True},
    "progress_file": {"type": "path"},
    "remove_progress_file": {"type": "bool", "default": False},
    "state_dir": {"type": "path"},
    "backup_id": {"type": "str"},
    "interval": {"type": "float", "default": 30},
    "timeout": {"type": "float", "required": True},
    "primary": {"type": "str"},
    "async_dir": {"type": "str", "default": "~/.ansible_async"},
    "round_wait": {"type": "float", "default": 0},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=False)
    p = module.params
    if p["state_dir"] is None and p["backup_id"]:
        p["state_dir"] = default_state_dir()
    result = one_round(jid=p["jid"], async_dir=p["async_dir"], progress_file=p["progress_file"], state_dir=p["state_dir"],
                       backup_id=p["backup_id"], wait=max(0.0, p["round_wait"]), remove_progress_file=p["remove_progress_file"])  # fmt: skip
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
