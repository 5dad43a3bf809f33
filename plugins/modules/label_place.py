#!/usr/bin/python
# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: label_place
short_description: Place backup_label, tablespace_map and then pg_control in a finished copy
version_added: 0.1.0
description:
  - Writes C(backup_label) and, when not empty, C(tablespace_map) into a copy made by
    P(pgbackup.lowlevel.datadir_copy#module), byte for byte as P(pgbackup.lowlevel.backup_stop#module) returned them
    (the map's paths changed by O(tablespace_mapping)), each through a temporary file, fsync, rename and fsync of the
    directory, owned like the data directory, mode 0600 (0640 when the data directory allows group access).
  - Then, last, moves the copy's pending C(global/pg_control.pgbackup-pending) into place as C(global/pg_control).
    Until then PostgreSQL refuses to start the copy, so it can never be started without its label.
  - With O(guard_control=true) the placed C(pg_control) carries the impossible checkpoint location C(0/DEAD) (with its CRC
    rewritten), as pgBackRest does on restore since 2.51. With the label present recovery reads the checkpoint from the
    label and starts normally; if someone deletes the label later, startup fails instead of running crash recovery from
    the wrong checkpoint, which would silently corrupt the copy.
  - Refuses a data directory with a live postmaster, one datadir_copy did not finish, a label that is not a label,
    a label whose C(START WAL LOCATION) is not O(start_lsn), a different existing C(backup_label) (unless
    O(force=true)), and - when O(stop_lsn) is given and C(pg_wal) of the copy holds WAL - WAL missing for the label's range.
  - Idempotent - a second run with the same label changes nothing; diff mode shows C(backup_label) and C(tablespace_map)
    before and after.
author:
  - pgbackup.lowlevel developers (@pgbackup)
options:
  data_dir:
    description: The copy's data directory on this host.
    type: path
    required: true
  backup_label:
    description: The label as text (RV(pgbackup.lowlevel.backup_stop#module:backup_label)).
    type: str
  backup_label_base64:
    description: The label's exact bytes in base64 (RV(pgbackup.lowlevel.backup_stop#module:backup_label_base64)); preferred.
    type: str
  tablespace_map:
    description: The tablespace map as text; empty or omitted when there are no tablespaces.
    type: str
  tablespace_map_base64:
    description: The map's exact bytes in base64.
    type: str
  tablespace_mapping:
    description:
      - Where each tablespace was copied, as given to datadir_copy - keys are tablespace OIDs or their old paths, values
        the new paths. Applied to the map's paths; recovery creates the C(pg_tblspc) links from the map.
    type: dict
    default: {}
  start_lsn:
    description:
      - The backup's start LSN (RV(pgbackup.lowlevel.backup_start#module:start_lsn)); the label must say the same.
      - The alias O(expected_start_lsn) is deprecated and goes in 0.3.0.
    type: str
    aliases: [expected_start_lsn]
  stop_lsn:
    description: The backup's stop LSN; with it, WAL in the copy's C(pg_wal) is checked for completeness up to it.
    type: str
  stop_timeline:
    description: The stop LSN's timeline (default the label's start timeline).
    type: int
  guard_control:
    description: Set the placed C(pg_control)'s checkpoint location to C(0/DEAD), see the description.
    type: bool
    default: true
  force:
    description: Replace an existing, different C(backup_label).
    type: bool
    default: false
attributes:
  check_mode:
    description: Checks everything and reports the files it would write.
    support: full
  diff_mode:
    description: Shows C(backup_label) and C(tablespace_map) before and after.
    support: full
seealso:
  - module: pgbackup.lowlevel.datadir_copy
  - module: pgbackup.lowlevel.backup_stop
"""

EXAMPLES = r"""
- name: Label the copy with what backup_stop returned, then put pg_control in place
  pgbackup.lowlevel.label_place:
    data_dir: /srv/restore/data
    backup_label_base64: "{{ stopped.backup_label_base64 }}"
    tablespace_map_base64: "{{ stopped.tablespace_map_base64 }}"
    tablespace_mapping: {"/srv/pg/ts1": "/srv/restore/ts1"}
    start_lsn: "{{ backup.start_lsn }}"
    stop_lsn: "{{ stopped.stop_lsn }}"
    stop_timeline: "{{ stopped.stop_timeline }}"
"""

RETURN = r"""
files:
  description: What this run wrote, in order (C(global/pg_control) last).
  returned: always
  type: list
  elements: str
  sample: [backup_label, global/pg_control]
start_lsn:
  description: The label's START WAL LOCATION.
  returned: always
  type: str
  sample: 0/9000028
checkpoint_lsn:
  description: The label's CHECKPOINT LOCATION, where recovery starts.
  returned: always
  type: str
  sample: 0/9000060
start_timeline:
  description: The label's START TIMELINE.
  returned: always
  type: int
  sample: 1
backup_from:
  description: V(primary) or V(standby).
  returned: always
  type: str
  sample: standby
system_identifier:
  description: The copy's system identifier (from its pg_control).
  returned: always
  type: str
  sample: "7440123456789012345"
major_version:
  description: The copy's PostgreSQL major version.
  returned: always
  type: int
  sample: 16
guarded:
  description: Whether the placed pg_control carries the 0/DEAD checkpoint guard.
  returned: always
  type: bool
  sample: true
tablespace_map:
  description: The map as written (after O(tablespace_mapping)).
  returned: always
  type: str
  sample: ""
"""

import base64
import binascii

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.label_placer import place
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.option_names import backup_range_argument_spec

ARGS = {
    "data_dir": {"type": "path", "required": True},
    "backup_label": {"type": "str"},
    "backup_label_base64": {"type": "str"},
    "tablespace_map": {"type": "str"},
    "tablespace_map_base64": {"type": "str"},
    "tablespace_mapping": {"type": "dict", "default": {}},
    **backup_range_argument_spec("start_lsn", "stop_lsn", "stop_timeline", old_names={"expected_start_lsn": "start_lsn"}),
    "guard_control": {"type": "bool", "default": True},
    "force": {"type": "bool", "default": False},
}


def _bytes(params: dict, name: str) -> bytes:
    encoded = params.get(f"{name}_base64")
    if encoded is not None:
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise PgBackupError(f"{name}_base64 is not valid base64: pass {name}_base64 exactly as backup_stop returned it") from None
    return (params.get(name) or "").encode("utf-8")


def run_module(module: AnsibleModule) -> dict:
    p = module.params
    mapping = {str(k): str(v) for k, v in p["tablespace_mapping"].items()}
    return place(
        p["data_dir"],
        label=_bytes(p, "backup_label"),
        tablespace_map=_bytes(p, "tablespace_map"),
        tablespace_mapping=mapping,
        expected_start_lsn=p["start_lsn"],
        stop_lsn=p["stop_lsn"],
        stop_timeline=p["stop_timeline"],
        guard_control=p["guard_control"],
        force=p["force"],
        check_mode=module.check_mode,
    )


def main() -> None:
    module = AnsibleModule(
        argument_spec=ARGS,
        mutually_exclusive=[("backup_label", "backup_label_base64"), ("tablespace_map", "tablespace_map_base64")],
        required_one_of=[("backup_label", "backup_label_base64")],
        supports_check_mode=True,
    )
    try:
        result = run_module(module)
    except PgBackupError as exc:
        module.fail_json(msg=exc.message, **exc.details)
    diff = result.pop("diff")
    if module._diff:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
