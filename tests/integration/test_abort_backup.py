"""playbooks/abort_backup.yml across namespace hosts: a standby_backup run whose controller is SIGKILLed mid-copy (the
whole ansible-playbook process group, ssh connections included: neither rescue nor always runs) leaves the keeper, the
slot and the async copy behind; the abort ends them, marks the destination incomplete, a second abort finds nothing, and
a new backup into a fresh destination succeeds. A run killed while the standby has not yet replayed past the start
leaves its copy waiting at its start gate (launched, nothing written): the abort cancels it there."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest

from .harness.pgbins import selected_majors
from .jobs import alive as _alive
from .jobs import copy_job as _copy_job
from .support.faults import throttle, unthrottle
from .support.roles import SSH_OPTIONS, backup_vars, run_to_end, start_shipped_playbook
from .support.waiting import KEEPERS, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.netns]
OUR_SLOTS = "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pgbackup\\_%'"


def _changed(output: str, host: str) -> int:
    match = re.search(rf"^{host}\s*:.*changed=(\d+)", output, re.M)
    assert match, output[-3000:]
    return int(match.group(1))


def test_abort_ends_what_a_killed_controller_left(netns_testbed, netns_pair, ansible_env, tmp_path, pg_major):
    if pg_major != selected_majors()[-1] and pg_major != 13:
        pytest.skip("the abort is the same on every version: 13 (pg_stop_backup) and the newest (pg_backup_stop) show it")
    bed = netns_testbed
    primary, standby = netns_pair
    primary.pgbench_init()
    db3 = bed.host("db3")
    scratch = bed.scratch_dir(f"abort-{pg_major}")
    dest = scratch / "copy"
    keepers = tmp_path / "keepers"
    inventory = bed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    extra = backup_vars(db3.name, primary, standby, dest, keepers, standby_backup_source_ssh_host=standby.node.address,
                        standby_backup_ssh_key=str(bed.run_dir / "ssh" / "id_ed25519"), standby_backup_ssh_options=SSH_OPTIONS,
                        standby_backup_progress_interval=0.5)  # fmt: skip
    throttle(standby.node)
    try:
        # The controller dies: SIGKILL to ansible-playbook's whole process group (its workers and ssh connections).
        proc = start_shipped_playbook(ansible_env, inventory, "standby_backup.yml", extra, start_new_session=True)
        progress = dest.parent / ".copy.progress.json"
        wait_for(lambda: progress.exists() and b'"bytes_done": 0,' not in progress.read_bytes(), "the copy moving")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        keeper_pid = int(next(keepers.glob("*/keeper.pid")).read_text())
        backup_id = next(keepers.glob("*/keeper.pid")).parent.name
        backend = json.loads((keepers / backup_id / "started.json").read_text())["backend_pid"]

        # Negative control: what the abort must end is there.
        assert _alive(keeper_pid), "the keeper outlived the controller"
        assert primary.sql(KEEPERS) == [(1,)], "the backup session is open on the primary"
        assert primary.sql("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,)) == [(1,)]
        assert standby.sql(OUR_SLOTS) == [(1,)], "the slot pins WAL on the standby"
        job = _copy_job(dest)
        commands = " ".join(job.values())
        assert "async_wrapper" in commands and "datadir_copy" in commands and "rsync" in commands, f"the async copy goes on: {job}"

        # --check lists it and ends nothing.
        rc, output = run_to_end(ansible_env, inventory, "abort_backup.yml", extra, "--check")
        assert rc == 0, output[-3000:]
        assert "Would end" in output and backup_id in output and str(dest) in output, output[-3000:]
        assert _alive(keeper_pid) and primary.sql(KEEPERS) == [(1,)] and standby.sql(OUR_SLOTS) == [(1,)]
        assert all(_alive(pid) for pid in job), "--check stopped no copy process"

        rc, output = run_to_end(ansible_env, inventory, "abort_backup.yml", extra)
        assert rc == 0, output[-3000:]
        print(output[-2500:])
        assert "Ended on" in output and backup_id in output, output[-3000:]
        wait_for(lambda: primary.sql(KEEPERS) == [(0,)], "the backup session ending on the primary")
        # The very session that ran the start is gone: on 15+ that is the only state pg_backup_start has; on 13/14 a
        # non-exclusive backup also ends with its session (and no exclusive one was ever started).
        assert primary.sql("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,)) == [(0,)], "the backup's backend ended"
        if pg_major < 15:
            assert primary.sql("SELECT pg_is_in_backup()") == [(False,)]
        assert not _alive(keeper_pid), "the keeper ended"
        assert standby.sql(OUR_SLOTS) == [(0,)], "the slot is dropped"
        assert [pid for pid in job if _alive(pid)] == [] and _copy_job(dest) == {}, "no copy process is left"
        assert (dest / ".pgbackup-incomplete").exists(), "the destination is marked incomplete"
        assert not progress.exists() and not list(scratch.glob(".pgbackup-files-*")), "the copy's progress file and file lists are removed"
        aborted = json.loads((keepers / backup_id / "aborted.json").read_text())
        assert "abort" in aborted["reason"], aborted

        # Idempotent: a second run finds nothing and says so.
        rc, output = run_to_end(ansible_env, inventory, "abort_backup.yml", extra)
        assert rc == 0, output[-3000:]
        assert "Nothing to end" in output, output[-3000:]
        assert _changed(output, db3.name) == 0, output[-3000:]
    finally:
        unthrottle(standby.node)
        for pid_file in keepers.glob("*/keeper.pid"):  # a failed test leaves no backup open for the next one
            pid = int(pid_file.read_text())
            if _alive(pid):
                os.kill(pid, signal.SIGTERM)

    # The source is healthy: a new backup into a fresh destination succeeds.
    fresh = dict(extra, standby_backup_dest=str(scratch / "again"))
    rc, output = run_to_end(ansible_env, inventory, "standby_backup.yml", fresh)
    assert rc == 0, output[-3000:]
    assert not (scratch / "again" / ".pgbackup-incomplete").exists()


def test_abort_cancels_a_copy_still_waiting_at_its_gate(netns_testbed, netns_pair, ansible_env, tmp_path, pg_major):
    if pg_major != selected_majors()[-1]:
        pytest.skip("the gate is the controller's and the copy's, the same on every version: the newest shows it")
    bed = netns_testbed
    primary, standby = netns_pair
    db3 = bed.host("db3")
    dest = bed.scratch_dir(f"abort-gate-{pg_major}") / "copy"
    keepers = tmp_path / "keepers"
    inventory = bed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    extra = backup_vars(db3.name, primary, standby, dest, keepers, standby_backup_source_ssh_host=standby.node.address,
                        standby_backup_ssh_key=str(bed.run_dir / "ssh" / "id_ed25519"), standby_backup_ssh_options=SSH_OPTIONS)  # fmt: skip
    note = dest.parent / ".copy.gate.waiting"
    # The standby's startup process stopped: replay cannot pass the backup's start, so replay_wait waits (and the gate stays shut).
    ((startup,),) = standby.sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'startup'")
    os.kill(startup, signal.SIGSTOP)
    try:
        proc = start_shipped_playbook(ansible_env, inventory, "standby_backup.yml", extra, start_new_session=True)
        wait_for(lambda: note.exists() and list(keepers.glob("*/started.json")), "the backup open and its copy waiting at the gate")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        copy_pid = int(note.read_text().split()[0])
        assert _alive(copy_pid), "the copy waits at its gate after the controller died"
        assert not dest.exists(), "behind the gate the copy wrote nothing"
        assert primary.sql(KEEPERS) == [(1,)] and standby.sql(OUR_SLOTS) == [(1,)]

        rc, output = run_to_end(ansible_env, inventory, "abort_backup.yml", extra)
        assert rc == 0, output[-3000:]
        print(output[-2000:])
        assert "waiting at its start gate" in output and "not written by the run: left as it is" in output, output[-3000:]
        wait_for(lambda: not _alive(copy_pid) and not note.exists(), "the waiting copy ending")
        wait_for(lambda: primary.sql(KEEPERS) == [(0,)], "the backup session ending on the primary")
        assert standby.sql(OUR_SLOTS) == [(0,)], "the slot is dropped"
        assert not dest.exists(), "nothing was written, nothing is marked"
    finally:
        os.kill(startup, signal.SIGCONT)
        for pid_file in keepers.glob("*/keeper.pid"):
            pid = int(pid_file.read_text())
            if _alive(pid):
                os.kill(pid, signal.SIGTERM)
