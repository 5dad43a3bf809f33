#!/usr/bin/python
# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: wal_retain
short_description: Keep a backup's WAL on the server it is read from with a physical replication slot
version_added: 0.1.0
description:
  - O(state=present) creates a physical replication slot with C(pg_create_physical_replication_slot(name, true)),
    which reserves WAL at once - from the last checkpoint's redo point on a primary, from the last restartpoint's on
    a standby - so no segment from there on is removed or recycled until the slot is dropped, however many
    checkpoints run meanwhile. Create it before the backup starts, on the server the backup's WAL will be read from.
  - O(state=absent) drops it once the WAL is collected.
  - Idempotent - an existing usable slot is kept as it is, a missing one is not an error for O(state=absent).
  - Refuses a slot a backup cannot rely on - a logical or temporary slot of that name, one that reserves no WAL,
    one whose C(wal_status) is V(lost) (WAL it held is gone) or V(unreserved) (the next checkpoint may remove WAL it
    holds), or one that starts after O(required_lsn). Fails clearly when C(max_replication_slots) are all used
    (listing the slots) and when asked to drop a slot that is active (naming the process using it).
  - The slot name is O(slot_name), or O(slot_prefix) followed by O(backup_id) lower-cased with C(-), C(.) and C(:)
    turned into C(_); either way it must be 1 to 63 characters of C([a-z0-9_]).
author:
  - pgbackup.lowlevel developers (@pgbackup)
extends_documentation_fragment:
  - pgbackup.lowlevel.connection
options:
  state:
    description: Whether the slot should exist.
    type: str
    choices: [present, absent]
    default: present
  backup_id:
    description: The backup the slot is for (as P(pgbackup.lowlevel.backup_start#module) returns it); names the slot.
    type: str
  slot_name:
    description: The slot name, instead of one made from O(backup_id).
    type: str
  slot_prefix:
    description: What goes before O(backup_id) in the slot name.
    type: str
    default: pgbackup_
  required_lsn:
    description:
      - O(state=present) - an LSN the slot must keep WAL from (for example the backup's start LSN when the slot is
        checked again later). A slot whose C(restart_lsn) is after it is refused.
    type: str
attributes:
  check_mode:
    description:
      - Reads the slot and reports what a real run would do - C(changed=true) when it would create or drop the slot
        (then RV(created) and RV(dropped) stay V(false)); an existing slot is checked and refused as in a real run.
    support: full
  diff_mode:
    description: Nothing to diff.
    support: none
notes:
  - The connected role needs the C(REPLICATION) attribute (or to be a superuser).
  - A slot keeps WAL until it is dropped, even if the play fails - drop it in an C(always) section or with a cleanup play;
    C(max_slot_wal_keep_size) bounds how much WAL it can hold (V(-1), the default, is unbounded).
"""

EXAMPLES = r"""
- name: Keep the WAL of the backup on the standby it is copied from
  pgbackup.lowlevel.wal_retain:
    login_unix_socket: /var/run/postgresql
    backup_id: "{{ backup_id }}"
  register: slot

- name: Release it once the WAL is collected
  pgbackup.lowlevel.wal_retain:
    login_unix_socket: /var/run/postgresql
    backup_id: "{{ backup_id }}"
    state: absent
"""

RETURN = r"""
slot_name:
  description: The slot's name.
  returned: always
  type: str
  sample: pgbackup_20240501t101500_ab12
restart_lsn:
  description: The first LSN the slot keeps WAL from (V(null) when there is no slot, or in check mode before creation).
  returned: always
  type: str
  sample: 0/3000028
wal_status:
  description: C(pg_replication_slots.wal_status) - V(reserved) or V(extended) for a usable slot.
  returned: always
  type: str
  sample: reserved
safe_wal_size:
  description: Bytes of WAL that can still be written before the slot is in danger of losing WAL (V(null) when unbounded).
  returned: always
  type: int
  sample: null
active:
  description: Whether a process streams from the slot.
  returned: always
  type: bool
  sample: false
active_pid:
  description: That process' PID.
  returned: always
  type: int
  sample: null
in_recovery:
  description: Whether the server holding the slot is a standby.
  returned: always
  type: bool
  sample: true
created:
  description: O(state=present) - whether this run created the slot.
  returned: when state is present
  type: bool
  sample: true
dropped:
  description: O(state=absent) - whether this run dropped the slot.
  returned: when state is absent
  type: bool
  sample: false
queries:
  description: The statements the module ran.
  returned: always
  type: list
  elements: str
  sample: ["SELECT slot_name::text AS slot_name, lsn::text AS lsn FROM pg_catalog.pg_create_physical_replication_slot('pgbackup_x', true)"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.connection import connect, connection_secrets, with_connection_options
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.slots import (
    DEFAULT_PREFIX,
    ensure_absent,
    ensure_present,
    slot_name_for_backup,
    validate_slot_name,
)

APPLICATION_NAME = "pgbackup.lowlevel/wal_retain"

ARGS = {
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
    "backup_id": {"type": "str"},
    "slot_name": {"type": "str"},
    "slot_prefix": {"type": "str", "default": DEFAULT_PREFIX},
    "required_lsn": {"type": "str"},
}


def slot_name_of(params: dict) -> str:
    if params["slot_name"]:
        return validate_slot_name(params["slot_name"])
    return slot_name_for_backup(params["backup_id"], params["slot_prefix"])


def run_module(module: AnsibleModule) -> dict:
    """The module's result; raises PgBackupError."""
    p = module.params
    name = slot_name_of(p)
    if p["required_lsn"] and p["state"] == "absent":
        raise PgBackupError("required_lsn only goes with state=present")
    with connect(p, application_name=APPLICATION_NAME) as session:

        def query(sql, params=None):
            return session.query(sql, params)

        try:
            if p["state"] == "present":
                result = ensure_present(query, name, check_mode=module.check_mode, required_lsn=p["required_lsn"])
            else:
                result = ensure_absent(query, name, check_mode=module.check_mode)
        except PgBackupError as exc:
            exc.details.setdefault("queries", list(session.queries))
            raise
        result["queries"] = list(session.queries)
        return result


def main() -> None:
    module = AnsibleModule(
        argument_spec=with_connection_options(ARGS),
        mutually_exclusive=[("backup_id", "slot_name")],
        required_one_of=[("backup_id", "slot_name")],
        supports_check_mode=True,
    )
    module.no_log_values.update(connection_secrets(module.params))
    try:
        result = run_module(module)
    except PgBackupError as exc:
        module.fail_json(msg=exc.message, **exc.details)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
