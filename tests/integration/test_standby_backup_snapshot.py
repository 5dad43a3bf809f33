"""standby_backup with standby_backup_copy_method=snapshot, end to end on real btrfs: a standby whose data directory and
one tablespace live on two separate filesystems, pgbench writing on the primary, coordinated and standby-only, the
role on a third namespace host pulling over ssh.

The role snapshots both volumes read-only (pg_control's last), stops the backup at once, copies from the snapshots
(datadir_copy source_snapshot_paths: the snapshot's pg_tblspc link points at the live tablespace) and releases them.
The copy must pass PostgreSQL's own tools - pg_verifybackup with WAL parsing, recovery to consistency with the
primary's tables, amcheck, pg_checksums - and leave no snapshot behind. A snapshot that fails aborts the backup and
releases the one already made; a snapshot host that is not in the inventory is refused before anything starts; a
controller killed while the set exists leaves it to playbooks/abort_backup.yml, which releases it from the run's record."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from .conftest import spot_check
from .support.faults import RECHECK
from .support.restore_checks import checksums_clean, manifest_clean, recover_and_check
from .support.roles import SSH_OPTIONS, backup_vars, clean_after_failure, role_run, run_to_end, start_playbook, start_shipped_playbook
from .support.snapshots import snapshot_pair
from .support.waiting import KEEPERS, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.majors(13, 18),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mkfs.btrfs") is None, reason="needs root and btrfs-progs"),
]
ROWS = 20000
# The role's refusals, failures and abort around the set do not depend on the server version (the procedure's runs
# above cover 13 and 18): the newest shows them.
ROLE_LOGIC = "the role's handling of the snapshot set"


@pytest.fixture
def snapshot_bed(testbed, pg_major, tmp_path):
    spot_check(pg_major, (18,), ROLE_LOGIC)  # before the bed is made: a skipped test builds nothing
    with ExitStack() as stack:  # not a bare with: pylint (contextmanager-generator-missing-cleanup)
        yield stack.enter_context(snapshot_pair(testbed, pg_major, tmp_path / "images", ROWS))


def _snapshots_left(*volumes) -> list:
    return [str(p) for v in volumes for p in (v / ".pgbackup-snapshots").glob("*/*")]


def _snapshot_vars(primary, ts_dest, **overrides) -> dict:
    (oid,) = primary.sql("SELECT oid::text FROM pg_tablespace WHERE spcname = 'snap_ts'")[0]
    return {
        "standby_backup_copy_method": "snapshot",
        "standby_backup_tablespace_mapping": {oid: str(ts_dest)},
        "standby_backup_pg_bindir": str(primary.pg.bindir),
        **overrides,
    }


def _volumes(standby, ts_dir) -> tuple:
    return standby.base / "volA", ts_dir.parent


@pytest.fixture
def hosts_snapshot_bed(netns_testbed, pg_major, tmp_path, request):
    """The same layout across namespace hosts: the primary on db1, the standby on db2; the role runs on db3. Made only
    for the major the case runs on (its ``preferred``)."""
    params = request.node.callspec.params
    spot_check(pg_major, (params["preferred"],), f"the {params['mode']} snapshot backup through the role")
    with ExitStack() as stack:  # not a bare with: pylint (contextmanager-generator-missing-cleanup)
        yield stack.enter_context(snapshot_pair(netns_testbed, pg_major, tmp_path / "images", ROWS, standby_host=netns_testbed.host("db2")))


def _command_provider(bed, port: int) -> dict:
    """The command provider driven by btrfs commands, as a user would write it for their own tool: each snapshot beside
    its volume's filesystem root, bind-mounted read-only where the module says (mount_root/<name>/<index>)."""
    snap = "{mount_point}/.cmd-snap-{name}-{index}"
    return {
        "standby_backup_snapshot_provider": "command",
        "standby_backup_snapshot_mount_root": str(bed.scratch_dir(f"snaprole-mounts-{port}")),
        "standby_backup_snapshot_create_command": ["btrfs", "subvolume", "snapshot", "-r", "{volume}", snap],
        "standby_backup_snapshot_mount_command": ["mount", "--bind", "-o", "ro", snap, "{snapshot_mount}"],
        "standby_backup_snapshot_unmount_command": ["umount", "{snapshot_mount}"],
        "standby_backup_snapshot_release_command": ["btrfs", "subvolume", "delete", snap],
    }


# Each mode on one major (the old API on 13, the newest pg_control on 18; both on the one major PG_VERSIONS may select),
# each with one provider (btrfs; the command provider driven by btrfs commands, mounting after the stop): the procedure
# by hand runs in test_snapshot_backup.py (the good order on 13, the bad on 18); a role run across hosts takes a minute or two.
@pytest.mark.parametrize(("mode", "preferred", "provider"), [("coordinated", 13, "btrfs"), ("standby_only", 18, "command")])
def test_a_snapshot_backup_across_hosts_under_load_restores_to_the_primary(
    hosts_snapshot_bed, netns_testbed, ansible_env, tmp_path, pg_major, mode, preferred, provider
):
    bed = netns_testbed
    primary, standby, ts_dir = hosts_snapshot_bed
    db3 = bed.host("db3")
    restored = bed.empty_cluster(pg_major, host=db3, name=f"pg{pg_major}-snaprole-{mode.replace('_', '-')}")
    ts_dest = bed.scratch_dir(f"snaprole-ts-{restored.port}")
    provider_vars = _command_provider(bed, restored.port) if provider == "command" else {}
    inventory = bed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    extra = backup_vars(
        db3.name, primary, standby, restored.datadir, tmp_path / "keepers",
        standby_backup_mode=mode,
        standby_backup_source_ssh_host=standby.node.address,
        standby_backup_ssh_key=str(bed.run_dir / "ssh" / "id_ed25519"),
        standby_backup_ssh_options=SSH_OPTIONS,
        standby_backup_snapshot_host="db2",  # volume_snapshot runs there; the copy reads the snapshots over ssh as postgres
        standby_backup_progress_interval=2,
        **_snapshot_vars(primary, ts_dest, **provider_vars),
    )  # fmt: skip
    try:
        with bed.load(primary, 600, clients=2) as load:
            time.sleep(1)
            proc = start_playbook(ansible_env, inventory, extra)
            stdout, stderr = proc.communicate(timeout=900)
            load.stop()
        output = stdout + stderr
        assert proc.returncode == 0, output[-8000:]
        assert '"verified": true' in output, output[-4000:]
        assert not _snapshots_left(*_volumes(standby, ts_dir)), "every snapshot is released after the backup"
        if provider == "command":
            # mounted out of backup mode, then unmounted and deleted by the user's commands
            assert output.index("Stop the backup]") < output.index("Make the snapshots readable]"), output[-6000:]
            mounts = provider_vars["standby_backup_snapshot_mount_root"]
            left = [str(p) for v in _volumes(standby, ts_dir) for p in v.glob(".cmd-snap-*")] + [str(p) for p in Path(mounts).glob("*/*")]
            assert not left, left
        in_backup = float(re.search(r'"server_seconds_in_backup_mode": "?([0-9.]+)', output).group(1))
        print(f"snapshot backup {mode}: {in_backup:.2f} s in backup mode")  # not asserted: bench/snapshot_bench.py measures
        start_lsn, stop_lsn = re.search(r'"start_lsn": "([0-9A-F/]+)".*?"stop_lsn": "([0-9A-F/]+)"', output, re.S).groups()
        manifest_clean(restored)  # this major's own pg_verifybackup, parsing the WAL
        assert sorted(os.listdir(ts_dest)), "the tablespace was copied to its mapped place"
        primary.sql("CREATE TABLE snaprole_canary AS SELECT 42 AS answer")
        recover_and_check(
            primary, restored, bed, ansible_env, tmp_path, pg_major, procedure=mode, start_lsn=start_lsn, stop_lsn=stop_lsn, canary="snaprole_canary"
        )
        assert restored.sql("SELECT count(*), sum(v) FROM snap_t") == primary.sql("SELECT count(*), sum(v) FROM snap_t")
        restored.stop("fast")
        checksums_clean(restored)
        assert json.dumps(output).count(primary.password) == 0, "the password is never printed"
    finally:
        if restored.is_running():
            restored.stop("immediate")


def test_a_snapshot_that_fails_aborts_the_backup_and_releases_the_first(snapshot_bed, testbed, ansible_env, tmp_path):
    primary, standby, ts_dir = snapshot_bed
    data_volume, ts_volume = _volumes(standby, ts_dir)
    # btrfs refuses the data directory's volume (taken last), the real one otherwise: the tablespace's snapshot is made first
    wrapper = tmp_path / "btrfs-failing"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *"snapshot -r {data_volume}"*) echo "ERROR: quota exceeded" >&2; exit 1;; esac\nexec btrfs "$@"\n')
    wrapper.chmod(0o700)
    dest = testbed.scratch_dir(f"snaprole-failed-{primary.port}")
    code, output = role_run(
        ansible_env,
        testbed,
        tmp_path,
        primary,
        standby,
        dest,
        **_snapshot_vars(primary, tmp_path / "ts-dest", standby_backup_snapshot_btrfs_command=str(wrapper)),
    )
    assert code != 0, output[-4000:]
    assert "quota exceeded" in output and "Released the 1 snapshot(s)" in output, output[-6000:]
    assert "The backup was aborted on" in output, output[-6000:]
    assert not _snapshots_left(data_volume, ts_volume), "nothing of the set is left"
    assert os.listdir(dest) == [], "nothing was copied"
    clean_after_failure(primary, standby, tmp_path)


def test_a_standby_promoted_once_its_set_is_made_is_refused_after_the_stop(snapshot_bed, testbed, ansible_env, tmp_path):
    """The re-check of the source runs after the stop in a snapshot backup (the snapshots froze the files, so the server
    leaves backup mode a task sooner): a standby promoted between the last snapshot and the stop is still refused,
    the set released, nothing copied. Without the re-check this run would copy and call the backup done."""
    primary, standby, ts_dir = snapshot_bed
    data_volume, ts_volume = _volumes(standby, ts_dir)
    made, promoted = tmp_path / "set-made", tmp_path / "promoted"
    # The real btrfs; after the data directory's snapshot (the set's last) it waits for the test to promote the standby.
    wrapper = tmp_path / "btrfs-then-wait"
    wrapper.write_text(
        f'#!/bin/sh\nbtrfs "$@" || exit $?\ncase "$*" in *"snapshot -r {data_volume}"*) touch {made}\n'
        f"  for i in $(seq 600); do [ -e {promoted} ] && exit 0; sleep 0.1; done; exit 1;; esac\n"
    )
    wrapper.chmod(0o700)
    dest = testbed.scratch_dir(f"snaprole-promoted-{primary.port}")

    def promote_once_the_set_is_made():
        wait_for(made.exists, "the set being made", timeout=300)
        standby.sql("SELECT pg_promote(true, 60)")
        promoted.touch()

    promoter = threading.Thread(target=promote_once_the_set_is_made, daemon=True)
    promoter.start()
    try:
        code, output = role_run(
            ansible_env, testbed, tmp_path, primary, standby, dest,
            **_snapshot_vars(primary, tmp_path / "ts-dest", standby_backup_snapshot_btrfs_command=str(wrapper)),
        )  # fmt: skip
    finally:
        promoted.touch()
        promoter.join(timeout=120)
    assert code != 0, output[-4000:]
    assert standby.sql("SELECT pg_is_in_recovery()") == [(False,)], "the test promoted the standby during the run"
    assert f'failed in "{RECHECK}"' in output, output[-6000:]
    assert "promoted" in output and f"{standby.host}:{standby.port}" in output, output[-6000:]
    assert not _snapshots_left(data_volume, ts_volume), "nothing of the set is left"
    assert os.listdir(dest) == [], "nothing was copied"
    clean_after_failure(primary, standby, tmp_path)


def test_a_snapshot_host_not_in_the_inventory_is_refused_before_the_start(snapshot_bed, testbed, ansible_env, tmp_path):
    primary, standby, ts_dir = snapshot_bed
    dest = testbed.scratch_dir(f"snaprole-refused-{primary.port}")
    code, output = role_run(
        ansible_env, testbed, tmp_path, primary, standby, dest, **_snapshot_vars(primary, tmp_path / "ts-dest", standby_backup_snapshot_host="db-nowhere")
    )
    assert code != 0
    assert 'standby_backup_snapshot_host "db-nowhere" is not a host of the inventory' in output, output[-4000:]
    assert "Nothing was started (no slot, no backup)" in output, output[-4000:]
    assert standby.sql("SELECT count(*) FROM pg_replication_slots") == [(0,)]
    assert not _snapshots_left(*_volumes(standby, ts_dir))


def test_an_abort_releases_the_set_a_killed_controller_left(snapshot_bed, testbed, ansible_env, tmp_path):
    """The controller dies while the set exists (SIGKILL to ansible-playbook's process group the moment the data
    directory's snapshot, the last, is made): neither rescue nor always runs, so the keeper, the slot and both snapshots
    are left. playbooks/abort_backup.yml with the run's variables ends the keeper and the slot and releases the set on
    the host the run recorded; --check ends nothing; a second abort finds nothing."""
    primary, standby, ts_dir = snapshot_bed
    data_volume, ts_volume = _volumes(standby, ts_dir)
    flag = tmp_path / "set-made"
    # The real btrfs; after the data directory's snapshot (the set's last) it says so and hangs, so the kill lands on a
    # whole set whatever the machine's speed.
    wrapper = tmp_path / "btrfs-then-hang"
    wrapper.write_text(f'#!/bin/sh\nbtrfs "$@" || exit $?\ncase "$*" in *"snapshot -r {data_volume}"*) touch {flag}; sleep 300;; esac\n')
    wrapper.chmod(0o700)
    keepers = tmp_path / "keepers"
    dest = testbed.scratch_dir(f"snaprole-killed-{primary.port}")
    inventory = testbed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    extra = backup_vars(testbed.hosts[0].name, primary, standby, dest, keepers,
                        **_snapshot_vars(primary, tmp_path / "ts-dest", standby_backup_snapshot_btrfs_command=str(wrapper)))  # fmt: skip
    proc = start_shipped_playbook(ansible_env, inventory, "standby_backup.yml", extra, start_new_session=True)
    try:
        wait_for(lambda: flag.exists() or proc.poll() is not None, "the set being made", timeout=300)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        output, _err = proc.communicate(timeout=60)
    assert flag.exists(), output[-4000:]
    backup_id = next(keepers.glob("*/started.json")).parent.name
    record = json.loads((keepers / backup_id / "snapshot_set.json").read_text())
    assert record["name"] == f"pgbackup-{backup_id}" and record["paths"][-1] == str(standby.datadir), record
    # Negative control: what the abort must end is there.
    assert len(_snapshots_left(data_volume, ts_volume)) == 2, "both snapshots outlived the controller"
    assert primary.sql(KEEPERS) == [(1,)] and standby.sql("SELECT count(*) FROM pg_replication_slots") == [(1,)]

    code, listed = run_to_end(ansible_env, inventory, "abort_backup.yml", extra, "--check")
    assert code == 0 and "Would end" in listed and f"snapshot set {record['name']}" in listed, listed[-4000:]
    assert len(_snapshots_left(data_volume, ts_volume)) == 2, "--check released nothing"

    code, ended = run_to_end(ansible_env, inventory, "abort_backup.yml", extra)
    assert code == 0, ended[-4000:]
    assert f"snapshot set {record['name']} on {record['host']}" in ended and "Ended on" in ended, ended[-4000:]
    assert _snapshots_left(data_volume, ts_volume) == [], "the abort released the whole set"
    wait_for(lambda: primary.sql(KEEPERS) == [(0,)], "the backup session ending on the primary")
    assert standby.sql("SELECT count(*) FROM pg_replication_slots") == [(0,)], "the slot is dropped"

    code, again = run_to_end(ansible_env, inventory, "abort_backup.yml", extra)
    assert code == 0 and "Nothing to end" in again and f"no snapshot set left ({record['name']})" in again, again[-4000:]
