#!/usr/bin/python
# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: datadir_copy
short_description: Copy a PostgreSQL data directory and its tablespaces the way a base backup would
version_added: 0.1.0
description:
  - Runs on the destination host and pulls a PostgreSQL 13 to 18 data directory from O(source_host) over ssh
    with rsync, or copies it locally when O(source_host) is not given.
  - Leaves out what PostgreSQL's base backup leaves out for the source's major version (C(basebackup.c)) -
    contents of C(pg_stat_tmp), C(pg_replslot), C(pg_dynshmem), C(pg_notify), C(pg_serial), C(pg_snapshots),
    C(pg_subtrans); C(postmaster.pid), C(postmaster.opts), C(backup_label), C(tablespace_map),
    C(backup_manifest), C(pg_internal.init*), the C(*.tmp) files; C(pgsql_tmp*) at any depth; temporary
    relations; every fork of an unlogged relation except its C(_init) fork; C(pg_wal) is created empty with
    C(archive_status) (and C(summaries) on 17+). O(excludes) adds patterns.
  - C(global/pg_control) is copied after every other file and written as C(global/pg_control.pgbackup-pending),
    so PostgreSQL refuses to start the copy until its backup_label is placed and pg_control renamed.
  - Each symlink in C(pg_tblspc) is followed and its target copied to the path O(tablespace_mapping) gives;
    in-place tablespaces are copied as directories. Of a tablespace, only its C(PG_<major>_<catversion>) directory
    is copied, as in a base backup (not another major's directory left by pg_upgrade, nor other files at its root).
  - Every copied file's SHA-256 is recorded in C(.pgbackup-checksums.json) for
    P(pgbackup.lowlevel.backup_manifest#module); the file is fsynced and given to O(owner); every directory is
    fsynced. On one host the copy is made in-process and hashed on the way (the source is read once, no rsync
    unless O(delta)); over ssh each file rsync has put in place is read once more at the destination (page cache)
    while the next ones are copied.
  - While it runs, the copy carries C(.pgbackup-incomplete); a failed or killed copy keeps it, and every other
    module of the collection refuses such a directory.
  - With O(source_kind=finished_backup) the source is a backup already taken (by the standby_backup role) and the copy
    is its restore. Nothing a base backup leaves out is left out - C(backup_label), C(tablespace_map), C(backup_manifest)
    and the WAL in C(pg_wal) are what make it restorable - only this collection's working files (C(.pgbackup-*)) stay
    behind. C(global/pg_control) goes straight to its place. Tablespaces are those the backup's C(tablespace_map) lists,
    each copied whole to the place O(tablespace_mapping) gives (keyed by OID or by the path in that map); when one moves,
    C(tablespace_map) is rewritten with the new places (RV(remapped_tablespace_map)) and C(pg_tblspc) points there.
    Files are fsynced, hashed on the way and given to O(owner) as in any copy, but no C(.pgbackup-checksums.json) is left
    (the backup's C(backup_manifest) is the record, and C(pg_verifybackup) refuses a file it does not list).
author:
  - pgbackup.lowlevel developers (@pgbackup)
extends_documentation_fragment:
  - pgbackup.lowlevel.ssh_source
options:
  source_path:
    description: The source data directory (absolute).
    type: path
    required: true
  source_host:
    description: Host to pull from over ssh; omit for a copy on this host.
    type: str
  data_dir:
    description:
      - The copy's data directory on this host, the destination. Must be absent or empty unless O(delta).
      - The alias O(dest) is deprecated and goes in 0.3.0.
    aliases: [dest]
    type: path
    required: true
  tablespace_mapping:
    description:
      - Tablespace OID or old path -> new path. Required for every tablespace of a copy on the same host;
        across hosts a tablespace without a mapping keeps its path.
    type: dict
    default: {}
  excludes:
    description: Extra patterns (shell style, matched against the relative path and each of its names) to leave out.
    type: list
    elements: str
    default: []
  parallel:
    description: Number of concurrent streams (rsync processes over ssh, threads on one host), over files balanced by size.
    type: int
    default: 1
  max_rate:
    description:
      - Bandwidth limit in bytes per second over all O(parallel) streams together (each rsync gets its share as
        C(--bwlimit)); V(0) copies as fast as it can. A limited copy on one host also runs through rsync.
    type: int
    default: 0
  delta:
    description:
      - Bring an existing copy in line with the source - files are compared by checksum (never by size and
        modification time alone) and files the source no longer has are removed.
      - Only an earlier copy of the same cluster is taken - the system identifier of the destination's
        C(global/pg_control), of its C(global/pg_control.pgbackup-pending), or the one datadir_copy wrote into its
        C(.pgbackup-incomplete) must be the source's; any other non-empty destination is refused before anything is
        removed, naming what would have been. At a tablespace's destination only the source's
        C(PG_<major>_<catversion>) directory is brought in line; nothing else there is removed.
      - In check mode RV(would_remove) lists what a run would remove.
    type: bool
    default: false
  source_kind:
    description:
      - V(live) - the data directory of a server (running or not), copied the way a base backup would.
      - V(finished_backup) - a finished backup, copied whole for a restore (see the description). Refused, naming the
        source's host, ssh port and path - a source without C(backup_label), with C(.pgbackup-incomplete) (its backup
        failed), with C(global/pg_control.pgbackup-pending) (its label never placed) or with C(postmaster.pid); a
        destination or a tablespace's new place that is not empty; O(delta), O(excludes) and O(gate).
    type: str
    choices: [live, finished_backup]
    default: live
    version_added: 0.2.0
  source_snapshot_paths:
    description:
      - For a copy made from filesystem snapshots (O(source_path) the snapshot of the data directory) - live path ->
        where the snapshot shows it, the C(paths) that M(pgbackup.lowlevel.volume_snapshot) returns.
      - Needed because the snapshot's C(pg_tblspc) links still point at the LIVE tablespace locations - followed as
        they are, the tablespaces would be read live beside a frozen data directory, a torn backup.
      - Each tablespace at live location T is read at the value of the longest key K that is T or a parent directory of
        T (whole path components - C(/srv/ts2) is not below C(/srv/ts)), followed by the rest of T. Its
        O(tablespace_mapping) (by OID or by T), its link in the copy and RV(tablespaces) C(source) stay T;
        RV(tablespaces) C(read_from) says where it was read.
      - A tablespace that no key covers is refused before anything is written, naming it - snapshot its volume too (add
        its path to the snapshot set). Keys and values must be absolute paths. Paths only - nothing is looked up on the
        source host, local or O(source_host). Empty or omitted - the tablespaces are read where the links point.
      - With O(source_kind=live) only.
    type: dict
    version_added: 0.2.0
  owner:
    description: OS user that owns the copy (its primary group too).
    type: str
    default: postgres
  progress_file:
    description: JSON file kept up to date with bytes and files done and total, and the rate.
    type: path
  transport:
    description:
      - How a full copy from O(source_host) travels. V(rsync) runs O(parallel) rsync processes over ssh.
      - V(stream) runs a small sender (Python 3.9+ standard library, shipped over ssh with C(python3 -c); nothing is
        installed on the source) on O(parallel) ssh connections, one framed stream each, with files and pieces of
        big files (O(piece_size)) spread over the streams (the cipher as O(ssh_options) says). Each file is hashed,
        fsynced and chowned here once all its pieces are in.
      - V(stream) makes full copies from another host only; it refuses O(delta), a copy on one host and O(max_rate).
    type: str
    choices: [rsync, stream]
    default: rsync
  piece_size:
    description: With O(transport=stream), files larger than this many bytes are split into pieces of this size.
    type: int
    default: 67108864
  gate:
    description:
      - A start gate (launched async before the backup starts, the copy waits there and writes nothing until it opens).
        The path of the gate file, beside O(data_dir) by convention; V(pgbackup.lowlevel.replay_wait#module:open_gate)
        opens it once the standby replayed past the backup's start, and a C(cancel) written there ends the wait.
      - Only the source's listing and copy come after the gate, so nothing copied is older than the start.
    type: path
  gate_token:
    description: The token that opens O(gate) (16 to 128 letters, digits, C(_) or C(-), random for each run), so that a
      gate left by an earlier run never opens this copy. Required with O(gate).
    type: str
  gate_timeout:
    description: Seconds to wait at O(gate) before giving up (nothing written).
    type: int
    default: 3600
attributes:
  check_mode:
    description: Reports the files, bytes and tablespaces that would be copied; copies nothing.
    support: full
  diff_mode:
    description: Not supported.
    support: none
notes:
  - Needs C(rsync) on both hosts and C(find) (GNU) on the source host when O(source_host) is given; C(rsync) for O(delta).
    With O(transport=stream), C(find) and C(python3) (3.9+) on the source host instead of rsync.
"""

EXAMPLES = r"""
- name: Pull the standby's data directory to this host, two streams, tablespace 16400 to /srv/ts1
  pgbackup.lowlevel.datadir_copy:
    source_host: db2.example.com
    source_user: postgres
    source_path: /var/lib/postgresql/16/main
    data_dir: /srv/restore/pgdata
    tablespace_mapping:
      "16400": /srv/restore/ts1
    parallel: 2
    progress_file: /srv/restore/copy-progress.json
  register: copy

- name: Restore a finished backup from the backup host, tablespace moved to /srv/restore/ts1
  pgbackup.lowlevel.datadir_copy:
    source_kind: finished_backup
    source_host: backup1.example.com
    source_path: /backups/2026-12-07/pgdata
    data_dir: /srv/restore/pgdata
    tablespace_mapping:
      /backups/2026-12-07/ts1: /srv/restore/ts1
    owner: postgres

- name: Re-seed a broken replica in place
  pgbackup.lowlevel.datadir_copy:
    source_host: db1.example.com
    source_path: /var/lib/postgresql/16/main
    data_dir: /var/lib/postgresql/16/main
    delta: true
"""

RETURN = r"""
gate_seconds:
  description: Seconds the copy waited at O(gate) before it began.
  returned: with O(gate), when the copy ran
  type: float
  sample: 1.42
bytes:
  description: Bytes copied (would be copied in check mode).
  returned: always
  type: int
  sample: 1073741824
files:
  description: Files copied (would be copied in check mode).
  returned: always
  type: int
  sample: 1234
seconds:
  description: Wall time of the copy, fsync included.
  returned: success
  type: float
  sample: 12.5
throughput_bytes_per_second:
  description: RV(bytes) / RV(seconds).
  returned: success
  type: int
  sample: 85899345
major:
  description: PostgreSQL major version of the source.
  returned: always
  type: int
  sample: 16
pending_control:
  description: Where pg_control was written, relative to O(data_dir) (C(global/pg_control) with O(source_kind=finished_backup)).
  returned: always
  type: str
  sample: global/pg_control.pgbackup-pending
tablespaces:
  description:
    - Tablespaces copied - OID, source path, destination path, in-place or not.
    - With O(source_snapshot_paths), C(read_from) - where the tablespace was read (its snapshot); C(source) stays its
      live location.
  returned: always
  type: list
  elements: dict
excluded:
  description: Number of entries left out by the rules and O(excludes).
  returned: always
  type: int
vanished:
  description: Files that disappeared from the source during the copy (a dropped table); not an error.
  returned: success
  type: list
  elements: str
removed:
  description: Files removed from the destination because the source no longer has them (O(delta)).
  returned: success
  type: list
  elements: str
would_remove:
  description:
    - What a run would remove from the destination because the source does not have it (O(delta), check mode),
      relative to O(data_dir), or absolute for a tablespace's destination.
  returned: check mode with O(delta)
  type: list
  elements: str
  version_added: 0.2.0
remapped_tablespace_map:
  description:
    - Whether C(tablespace_map) was rewritten with the tablespaces' new places (O(source_kind=finished_backup)), so that
      it no longer matches the backup's C(backup_manifest) (P(pgbackup.lowlevel.backup_verify#module) has an option for that).
  returned: always
  type: bool
  version_added: 0.2.0
system_identifier:
  description: The source's system identifier (from its C(global/pg_control)).
  returned: always
  type: str
  sample: "7301234567890123456"
  version_added: 0.2.0
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_engine import (
    Source,
    check_destination,
    check_transport,
    delta_removals,
    execute,
    make_plan,
)
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_gate import check_token, wait_for_gate
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_state import PENDING_CONTROL
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.finished_backup import CONTROL, FINISHED_BACKUP, SOURCE_KINDS, check_options
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.option_names import renamed_from
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.snapshot_paths import checked_snapshot_paths
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.ssh_source import ssh_argument_spec, ssh_settings

ARGS = {
    "source_path": {"type": "path", "required": True},
    "source_host": {"type": "str"},
    **ssh_argument_spec(),
    "data_dir": renamed_from({"type": "path", "required": True}, "dest"),
    "tablespace_mapping": {"type": "dict", "default": {}},
    "excludes": {"type": "list", "elements": "str", "default": []},
    "parallel": {"type": "int", "default": 1},
    "max_rate": {"type": "int", "default": 0},
    "delta": {"type": "bool", "default": False},
    "source_kind": {"type": "str", "choices": list(SOURCE_KINDS), "default": "live"},
    "source_snapshot_paths": {"type": "dict"},
    "owner": {"type": "str", "default": "postgres"},
    "progress_file": {"type": "path"},
    "transport": {"type": "str", "choices": ["rsync", "stream"], "default": "rsync"},
    "piece_size": {"type": "int", "default": 64 * 1024 * 1024},
    "gate": {"type": "path"},
    "gate_token": {"type": "str", "no_log": True},
    "gate_timeout": {"type": "int", "default": 3600},
}


def run_module(module: AnsibleModule) -> dict:
    p = module.params
    if p["parallel"] < 1:
        raise PgBackupError(f"parallel must be at least 1, not {p['parallel']}")
    if p["max_rate"] < 0 or 0 < p["max_rate"] < 1024 * p["parallel"]:
        least = 1024 * p["parallel"]
        raise PgBackupError(f"max_rate must be 0 (no limit) or at least 1024 bytes/s per stream ({least} for parallel {p['parallel']}), not {p['max_rate']}")
    if p["piece_size"] < 1024 * 1024:
        raise PgBackupError(f"piece_size must be at least 1048576 bytes (1 MiB), not {p['piece_size']}")
    if not os.path.isabs(p["data_dir"]):
        raise PgBackupError(f"data_dir {p['data_dir']!r} must be an absolute path")
    finished = p["source_kind"] == FINISHED_BACKUP
    if finished:
        check_options(delta=p["delta"], excludes=p["excludes"], gate=p["gate"])
    if p["gate"]:
        check_token(p["gate_token"])
    dest = os.path.normpath(p["data_dir"])
    snapshots = checked_snapshot_paths(p["source_snapshot_paths"])  # the map itself, before waiting or listing
    source = Source(p["source_path"], *ssh_settings(p))
    check_transport(source, p["transport"], p["delta"], p["max_rate"])  # before listing anything
    waited = None
    if p["gate"] and not module.check_mode:
        # Before the listing: files listed before the backup's start was replayed could miss what the start needs.
        waited = wait_for_gate(p["gate"], p["gate_token"], p["gate_timeout"], dest)
    mapping = {str(k): v for k, v in p["tablespace_mapping"].items()}
    plan = make_plan(source, dest, mapping, p["excludes"], source_kind=p["source_kind"], snapshot_paths=snapshots)
    check_destination(source, plan, dest, p["delta"])
    result = {
        "changed": not module.check_mode,
        "major": plan.major,
        "files": plan.files,
        "bytes": plan.bytes,
        "tablespaces": plan.tablespaces,
        "excluded": len(plan.excluded),
        "pending_control": CONTROL if finished else PENDING_CONTROL,
        "remapped_tablespace_map": plan.new_map is not None,
        "system_identifier": str(plan.system_identifier),
    }
    if waited is not None:
        result["gate_seconds"] = round(waited, 3)
    if module.check_mode:
        if p["delta"]:
            result["would_remove"] = delta_removals(plan, dest)
        return result
    copied = execute(source, plan, dest, parallel=p["parallel"], delta=p["delta"], owner=p["owner"], progress_file=p["progress_file"], max_rate=p["max_rate"],
                     transport=p["transport"], piece_size=p["piece_size"])  # fmt: skip
    result.update(copied)
    return result


def main() -> None:
    module = AnsibleModule(argument_spec=ARGS, supports_check_mode=True)
    try:
        result = run_module(module)
    except PgBackupError as exc:
        module.fail_json(msg=exc.message, **exc.details)
    except OSError as exc:
        module.fail_json(msg=f"datadir_copy failed: {exc}", path=getattr(exc, "filename", None))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
