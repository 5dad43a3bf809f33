#!/usr/bin/python
# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_manifest
short_description: Write the backup_manifest of a finished data directory copy, as PostgreSQL would
version_added: 0.1.0
description:
  - Writes C(backup_manifest) into a copy made by P(pgbackup.lowlevel.datadir_copy#module) once its backup_label is placed
    and C(global/pg_control) is in place, in the format C(pg_verifybackup) reads - version 1 for PostgreSQL 13 to 16,
    version 2 with C(System-Identifier) for 17 and 18.
  - Every file (tablespaces as C(pg_tblspc/<oid>/...)) with C(Path) (or C(Encoded-Path) for names that are not UTF-8),
    C(Size), C(Last-Modified) and its checksum; the SHA-256 sums datadir_copy recorded are reused when size and
    modification time still match, others are computed.
  - C(WAL-Ranges) from the start to the end of the backup across every timeline crossed, from the end timeline's
    history file; C(Manifest-Checksum) is the SHA-256 of everything before its line.
  - Refuses a copy that carries datadir_copy's incomplete marker.
author:
  - pgbackup.lowlevel developers (@pgbackup)
options:
  data_dir:
    description: The copy.
    type: path
    required: true
  start_lsn:
    description:
      - The backup's start, RV(pgbackup.lowlevel.backup_start#module:start_lsn); default C(START WAL LOCATION) of the copy's
        backup_label.
      - The alias O(wal_start_lsn) is deprecated and goes in 0.3.0.
    type: str
    aliases: [wal_start_lsn]
  start_timeline:
    description:
      - Timeline of the start, RV(pgbackup.lowlevel.backup_start#module:start_timeline); default C(START TIMELINE) of the
        copy's backup_label.
      - The alias O(wal_start_timeline) is deprecated and goes in 0.3.0.
    type: int
    aliases: [wal_start_timeline]
  stop_lsn:
    description:
      - The backup's end, RV(pgbackup.lowlevel.backup_stop#module:stop_lsn) (the LSN C(pg_backup_stop) returned).
      - The alias O(wal_end_lsn) is deprecated and goes in 0.3.0.
    type: str
    required: true
    aliases: [wal_end_lsn]
  stop_timeline:
    description:
      - Timeline of O(stop_lsn), RV(pgbackup.lowlevel.backup_stop#module:stop_timeline).
      - The alias O(wal_end_timeline) is deprecated and goes in 0.3.0.
    type: int
    required: true
    aliases: [wal_end_timeline]
  history_dir:
    description: Where the end timeline's C(.history) file is (the WAL archive); default the copy's C(pg_wal).
    type: path
  checksum_algorithm:
    description: Per-file checksum. C(CRC32C) needs a C implementation (Python package C(crc32c) or C(google-crc32c)).
    type: str
    default: SHA256
    choices: [SHA256, SHA224, SHA384, SHA512, CRC32C, NONE]
attributes:
  check_mode:
    description: Reports the files and WAL ranges; writes nothing.
    support: full
  diff_mode:
    description: Not supported.
    support: none
"""

EXAMPLES = r"""
- name: Manifest of the copy, from the stop position
  pgbackup.lowlevel.backup_manifest:
    data_dir: /srv/restore/pgdata
    stop_lsn: "{{ stopped.stop_lsn }}"
    stop_timeline: "{{ stopped.stop_timeline }}"
    history_dir: /srv/wal_archive
"""

RETURN = r"""
path:
  description: The manifest written.
  returned: always
  type: str
  sample: /srv/restore/pgdata/backup_manifest
version:
  description: Manifest version (1 for 13-16, 2 for 17-18).
  returned: always
  type: int
  sample: 1
files:
  description: Files listed.
  returned: always
  type: int
  sample: 1000
bytes:
  description: Total size of the files listed.
  returned: always
  type: int
  sample: 123456789
checksum_algorithm:
  description: Per-file checksum algorithm.
  returned: always
  type: str
  sample: SHA256
wal_ranges:
  description: The WAL ranges, newest timeline first.
  returned: always
  type: list
  elements: dict
  sample: [{"timeline": 1, "start_lsn": "0/2000028", "end_lsn": "0/2000100"}]
reused_checksums:
  description: Checksums taken from datadir_copy's record instead of being computed.
  returned: changed
  type: int
manifest_checksum:
  description: The C(Manifest-Checksum) value.
  returned: changed
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import parse_lsn
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.manifest import ALGORITHMS, write_manifest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.option_names import backup_range_argument_spec

ARGS = {
    "data_dir": {"type": "path", "required": True},
    **backup_range_argument_spec(
        "start_lsn",
        "start_timeline",
        "stop_lsn",
        "stop_timeline",
        required=("stop_lsn", "stop_timeline"),
        old_names={"wal_start_lsn": "start_lsn", "wal_start_timeline": "start_timeline", "wal_end_lsn": "stop_lsn", "wal_end_timeline": "stop_timeline"},
    ),
    "history_dir": {"type": "path"},
    "checksum_algorithm": {"type": "str", "default": "SHA256", "choices": list(ALGORITHMS)},
}


def run_module(module: AnsibleModule) -> dict:
    p = module.params
    start = None if p["start_lsn"] is None else parse_lsn(p["start_lsn"], what="start_lsn")
    result = write_manifest(
        p["data_dir"],
        end_lsn=parse_lsn(p["stop_lsn"], what="stop_lsn"),
        end_tli=p["stop_timeline"],
        start_lsn=start,
        start_tli=p["start_timeline"],
        history_dir=p["history_dir"],
        algorithm=p["checksum_algorithm"],
        check_mode=module.check_mode,
    )
    result["changed"] = not module.check_mode
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
