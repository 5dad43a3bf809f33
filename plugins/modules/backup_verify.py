#!/usr/bin/python
# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_verify
short_description: Check a finished copy offline, and optionally prove it restores
version_added: 0.1.0
description:
  - Runs on the host holding a copy made by P(pgbackup.lowlevel.datadir_copy#module) and labelled by
    P(pgbackup.lowlevel.label_place#module). Reads the copy, changes nothing, and fails listing every problem found.
  - Checks that C(backup_label) is there, parseable and not an incremental backup's; that C(tablespace_map) agrees with
    C(pg_tblspc); that C(global/pg_control) is in place with a valid CRC (guarded with the C(0/DEAD) checkpoint or not).
    A copy without C(backup_label) whose pg_control is not guarded is reported as one that would start crash recovery
    from the wrong checkpoint.
  - Checks that every WAL segment in the WAL directory has pg_control's system identifier, and that every segment from
    the label's start to O(stop_lsn) is there and valid through the stop LSN, with the history files of the stop timeline.
    Without O(stop_lsn) the end of the manifest's C(WAL-Ranges) is used, if there is a manifest.
  - Checks C(backup_manifest), if present - its C(Manifest-Checksum), every file's size and checksum, files missing
    from it or from the copy. Checks that the copy is not marked incomplete, holds none of the files a base backup
    leaves out (C(postmaster.pid), C(pg_internal.init), the contents of C(pg_stat_tmp), C(pg_replslot)...), and that every
    file belongs to the data directory's owner with mode 0600 (0640 with group access) and every directory 0700 (0750).
  - Runs C(pg_verifybackup) of the copy's major version too when it is on the host (O(pg_bindir) or
    C(/usr/lib/postgresql/<major>/bin)) and the copy has a manifest, parsing the WAL too (C(-w) O(wal_dir), or the
    copy's C(pg_wal)) - every C(WAL-Ranges) entry must be readable there on its timeline.
  - Reads every file once. The manifest's checksum is computed from that read, and every page of every relation file
    (C(base/), C(global/), every tablespace; all forks and segments) is audited from the same buffers. No page may
    carry an LSN past the copy's end point - the stop LSN for a backup stopped on the primary, the copied pg_control's
    minimum recovery point for a backup from a standby (the label says C(BACKUP FROM standby)). Such a page means that
    C(global/pg_control) was not copied last, or that the copy mixes files or volume snapshots taken at different times.
    Recovery would stop before the page's change, and the copy would start and be silently inconsistent.
  - With data checksums on, every page last changed before the backup's start must carry its right checksum. A page
    changed later may be torn (it was read while PostgreSQL wrote it), and the full-page image in the backup's WAL
    replaces it during recovery, so its checksum is not held against the copy. This is the rule pg_basebackup applies.
    New (all-zero) pages are skipped.
  - What it cannot prove offline - that the WAL's records replay, or that heap and index agree - is the restore test's
    part, see O(restore_test).
  - With O(restore_test=true) it also starts a scratch copy (never the copy itself), see O(restore_test).
author:
  - pgbackup.lowlevel developers (@pgbackup)
options:
  data_dir:
    description: The copy's data directory on this host.
    type: path
    required: true
  stop_lsn:
    description: The backup's stop LSN (RV(pgbackup.lowlevel.backup_stop#module:stop_lsn)); the WAL up to it is checked.
    type: str
  stop_timeline:
    description: The stop LSN's timeline (default the manifest's, else the label's start timeline).
    type: int
  wal_dir:
    description: Where the copy's WAL is, when not in its C(pg_wal) (a WAL archive, for example).
    type: path
  pg_bindir:
    description:
      - A directory with the PostgreSQL binaries of the copy's major version (C(pg_verifybackup), C(postgres),
        C(pg_ctl), C(pg_amcheck)); C(/usr/lib/postgresql/<major>/bin) is searched too.
    type: path
  parallel:
    description: Processes that read and audit the files (the page checksum runs on one core per process).
    type: int
    default: 2
  pg_verifybackup:
    description: Run C(pg_verifybackup) when it is available.
    type: bool
    default: true
  remapped_tablespace_map:
    description:
      - The copy's C(tablespace_map) was rewritten after the backup for new tablespace locations (as the
        backup_restore role does); its entries are still checked against C(pg_tblspc), but not against
        C(backup_manifest)'s checksum, and C(pg_verifybackup) ignores it.
    type: bool
    default: false
  copied_from:
    description:
      - Which server the copy's files came from. C(standby) for files copied from a standby (a coordinated backup's
        label says C(BACKUP FROM primary) although its files are the standby's); pg_control must then say
        C(in archive recovery) (or C(shut down in recovery)) with its minimum recovery point on the backup's timeline
        (O(stop_timeline), else the label's), so a standby promoted during the copy is refused.
      - C(auto) takes it from the label's C(BACKUP FROM) line; C(primary) skips these checks.
    type: str
    choices: [auto, primary, standby]
    default: auto
  expect_system_identifier:
    description:
      - The system identifier of the server the backup was started on (backup_start's C(system_identifier)); the
        copy's pg_control must have it. C(backup_manifest)'s C(System-Identifier) is checked against pg_control anyway.
    type: str
  restore_test:
    description:
      - Start a scratch server on the copy, never the copy itself - on an overlay (the copy and its tablespaces
        read-only below, O(restore_test_dir) above) when run as root, else on a C(cp -a) of it (C(method) in RV(restore_test)).
        It runs as the data directory's owner with that major's C(pg_ctl), on its own unix socket (no TCP), archiving
        off, as a hot standby (C(standby.signal), no C(primary_conninfo), a C(restore_command) reading the copy's WAL).
      - Recovery stops exactly at the backup's end point - C(recovery_target_lsn) = the stop LSN (backup from a primary)
        or the copied pg_control's minimum recovery point (backup from a standby), C(recovery_target_inclusive=off),
        C(recovery_target_action=pause) - not at the end of the WAL, which could repair a copy whose files are from
        mixed times. A standby whose WAL ends right at the end point waits there instead of failing (why
        C(recovery_target=immediate) is not used). An end point before consistency is reported as a failure.
      - There amcheck runs with heapallindexed on every database that allows connections (C(pg_amcheck) where that
        major has it, else C(bt_index_check(index, true)) on every btree index and C(verify_heapam) on every table
        with amcheck 1.3+). amcheck cannot be created on the read-only standby, so databases without it are checked after
        promotion (C(amcheck_after_promotion) in RV(restore_test)) - install amcheck in the source to have them checked at
        the end point. Then, with O(restore_test_promote), it is promoted to show it becomes read-write.
      - Costs the time of recovery from the backup start to its end point plus amcheck, and only the disk the server
        writes (C(upper_bytes) in RV(restore_test)) on an overlay; a full copy's size with C(cp -a).
      - Not run when the offline checks found problems, nor in check mode. Missing server binaries are a problem;
        missing amcheck is reported as skipped. Needs the end point, O(stop_lsn) or the manifest's WAL-Ranges for a
        backup from a primary.
    type: bool
    default: false
  restore_test_promote:
    description: After the checks at the end point, promote the scratch server (its own timeline, in the scratch only).
    type: bool
    default: true
  restore_test_dir:
    description: An empty or new directory for the scratch copy; default a temporary directory next to O(data_dir).
    type: path
  restore_test_port:
    description: The scratch server's port (its unix socket's name); default a free one.
    type: int
  restore_test_timeout:
    description: Seconds to wait for the scratch server to start and to finish recovery.
    type: float
    default: 300
attributes:
  check_mode:
    description: Runs the same checks (they only read), without the restore test.
    support: full
  diff_mode:
    description: Not supported.
    support: none
seealso:
  - module: pgbackup.lowlevel.label_place
  - module: pgbackup.lowlevel.wal_collect
  - module: pgbackup.lowlevel.backup_manifest
"""

EXAMPLES = r"""
- name: Check the copy and prove it restores
  pgbackup.lowlevel.backup_verify:
    data_dir: /srv/restore/data
    stop_lsn: "{{ stopped.stop_lsn }}"
    stop_timeline: "{{ stopped.stop_timeline }}"
    pg_bindir: /usr/lib/postgresql/16/bin
    restore_test: true
"""

RETURN = r"""
data_dir:
  description: The copy checked (absolute path).
  returned: always
  type: str
  sample: /srv/restore/data
wal_dir:
  description: Where its WAL was looked for (O(wal_dir), or the copy's C(pg_wal)).
  returned: always
  type: str
  sample: /srv/restore/data/pg_wal
problems:
  description: Every problem found; the module fails when there is one.
  returned: always
  type: list
  elements: str
  sample: ["1 WAL segment(s) recovery needs from 0/9000028 to 0/B000100 are missing from /srv/restore/data/pg_wal: 00000001000000000000000A"]
notes:
  description: What was not checked and why.
  returned: always
  type: list
  elements: str
  sample: ["no backup_manifest: file sizes and checksums not checked"]
major_version:
  description: The copy's PostgreSQL major version (from pg_control).
  returned: when pg_control is valid
  type: int
  sample: 16
system_identifier:
  description: The copy's system identifier.
  returned: when pg_control is valid
  type: str
  sample: "7440123456789012345"
control:
  description: What pg_control says (system identifier, guarded, checkpoint, timeline, segment size, state).
  returned: when pg_control is valid
  type: dict
label:
  description: What backup_label says.
  returned: when the label is valid
  type: dict
tablespaces:
  description: Tablespace OIDs and the directories holding them.
  returned: always
  type: dict
manifest:
  description: Files and WAL ranges of the manifest, or null without one.
  returned: always
  type: dict
wal:
  description: The WAL range checked, the segments checked, missing and invalid.
  returned: always
  type: dict
pages:
  description:
    - The page audit - C(relation_files), pages C(read), C(new_or_zero) (skipped), C(checksum_verified) (pages older
      than the start, with data checksums on), C(checksums) (whether they were verified), the highest page LSN
      C(max_lsn), the end point C(bound) and what it is (C(bound_source)), C(bytes) read in that pass and C(seconds).
  returned: always
  type: dict
  sample: {"relation_files": 312, "read": 111520, "new_or_zero": 12, "checksum_verified": 109800, "checksums": true,
           "max_lsn": "0/5A3F0D0", "bound": "0/5B00000", "bound_source": "the backup's stop LSN", "bytes": 913965056,
           "seconds": 7.4}
files:
  description: How many files the copy has.
  returned: always
  type: int
pg_verifybackup:
  description: Whether C(pg_verifybackup) ran, its command, exit code and output (or why it did not run).
  returned: always
  type: dict
restore_test:
  description:
    - The restore test - C(ok), C(method) (overlay or copy, and C(method_reason) for a copy), C(end_lsn) and
      C(replay_lsn) (equal, or C(paused) true), C(consistent_at), C(redo_start), C(amcheck) at the end point (method,
      databases, skipped, result), C(amcheck_after_promotion), C(promoted), C(upper_bytes) (what the server wrote on
      the overlay), the log lines about recovery, C(seconds); or C(ran=false) and a reason.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.backup_verifier import find_bindir, verify
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.restore_test import end_point, run_restore_test

ARGS = {
    "data_dir": {"type": "path", "required": True},
    "stop_lsn": {"type": "str"},
    "stop_timeline": {"type": "int"},
    "wal_dir": {"type": "path"},
    "pg_bindir": {"type": "path"},
    "pg_verifybackup": {"type": "bool", "default": True},
    "parallel": {"type": "int", "default": 2},
    "restore_test": {"type": "bool", "default": False},
    "remapped_tablespace_map": {"type": "bool", "default": False},
    "copied_from": {"type": "str", "default": "auto", "choices": ["auto", "primary", "standby"]},
    "expect_system_identifier": {"type": "str"},
    "restore_test_dir": {"type": "path"},
    "restore_test_port": {"type": "int"},
    "restore_test_timeout": {"type": "float", "default": 300},
    "restore_test_promote": {"type": "bool", "default": True},
}


def run_module(module: AnsibleModule) -> dict:
    p = module.params
    verifier, report = verify(
        p["data_dir"],
        stop_lsn=p["stop_lsn"],
        stop_timeline=p["stop_timeline"],
        wal_dir=p["wal_dir"],
        pg_bindir=p["pg_bindir"],
        pg_verifybackup=p["pg_verifybackup"],
        remapped_tablespace_map=p["remapped_tablespace_map"],
        parallel=p["parallel"],
        copied_from=p["copied_from"],
        expect_system_identifier=p["expect_system_identifier"],
    )
    if not p["restore_test"]:
        report["restore_test"] = {"ran": False, "reason": "restore_test is false"}
    elif module.check_mode:
        report["restore_test"] = {"ran": False, "reason": "check mode"}
    elif verifier.problems:
        report["restore_test"] = {"ran": False, "reason": "the offline checks found problems"}
    else:
        major = verifier.control.major_version
        bindir = find_bindir(major, p["pg_bindir"], "postgres")
        if bindir is None or not find_bindir(major, bindir, "pg_ctl"):
            verifier.problem(f"restore_test: no postgres and pg_ctl of PostgreSQL {major} on this host; give pg_bindir")
            report["restore_test"] = {"ran": False, "reason": f"no PostgreSQL {major} server binaries"}
        elif end_point(verifier.label, verifier.control, report.get("wal", {}).get("stop_lsn")) is None:
            verifier.problem("restore_test: the backup's end point is unknown: give stop_lsn (the stop LSN of pg_backup_stop)")
            report["restore_test"] = {"ran": False, "reason": "no end point"}
        else:
            result = run_restore_test(
                verifier.data_dir,
                major=major,
                bindir=bindir,
                wal_dir=verifier.wal_dir,
                tablespaces=verifier.tablespaces,
                scratch_dir=p["restore_test_dir"],
                port=p["restore_test_port"],
                timeout=p["restore_test_timeout"],
                end_lsn=end_point(verifier.label, verifier.control, report.get("wal", {}).get("stop_lsn")),
                promote=p["restore_test_promote"],
            )
            verifier.problems.extend(result.pop("problems"))
            report["restore_test"] = result
    report["problems"] = verifier.problems
    return report


def main() -> None:
    module = AnsibleModule(argument_spec=ARGS, supports_check_mode=True)
    try:
        report = run_module(module)
    except PgBackupError as exc:
        module.fail_json(msg=exc.message, **exc.details)
    if report["problems"]:
        count = len(report["problems"])
        module.fail_json(msg=f"backup_verify found {count} problem(s) in {report['data_dir']}: " + " | ".join(report["problems"]), changed=False, **report)
    module.exit_json(changed=False, **report)


if __name__ == "__main__":
    main()
