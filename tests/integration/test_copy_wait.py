"""copy_wait in the standby_backup role across namespace hosts: the copy is throttled with tc on the standby's link so
it lasts, then the backup is lost mid-copy (the keeper SIGKILLed, or its backend terminated on the primary). The play must fail within seconds naming the
keeper's loss, with the async copy stopped, the destination marked incomplete and nothing left on the primary, and end
in the shared failure contract (contract.py: verify and restore refuse the copy, a re-run succeeds)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time

import pytest

from .conftest import one_end
from .contract import assert_failure_contract
from .harness.pgbins import selected_majors
from .jobs import alive as _alive
from .jobs import copy_job as _copy_job
from .support.faults import throttle, unthrottle
from .support.playbooks import ANSIBLE_PLAYBOOK, PLAYBOOKS
from .support.roles import SSH_OPTIONS, backup_vars, start_playbook
from .support.waiting import KEEPERS, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.netns]
TERMINATE = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE 'pgbackup.lowlevel keeper %'"


@pytest.mark.parametrize("fault", ["keeper_killed", "backend_terminated"])
def test_backup_lost_mid_copy_stops_the_copy_at_once(netns_testbed, netns_pair, ansible_env, tmp_path, pg_major, fault):
    one_end(pg_major, "oldest" if fault == "keeper_killed" else "newest")  # the wait is the same on every version
    bed = netns_testbed
    primary, standby = netns_pair
    primary.pgbench_init()
    db3 = bed.host("db3")
    dest = bed.scratch_dir(f"cw-lost-{pg_major}-{fault}") / "copy"
    keepers = tmp_path / "keepers"
    inventory = bed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    extra = backup_vars(db3.name, primary, standby, dest, keepers, standby_backup_source_ssh_host=standby.node.address,
                        standby_backup_ssh_key=str(bed.run_dir / "ssh" / "id_ed25519"), standby_backup_ssh_options=SSH_OPTIONS,
                        standby_backup_progress_interval=0.5)  # fmt: skip
    throttle(standby.node)
    try:
        proc = start_playbook(ansible_env, inventory, extra)
        progress = dest.parent / ".copy.progress.json"
        wait_for(lambda: progress.exists() and b'"bytes_done": 0,' not in progress.read_bytes(), "the copy moving")
        assert stat.S_IMODE(progress.stat().st_mode) == 0o600, "the progress file is private"
        pid = int(next(keepers.glob("*/keeper.pid")).read_text())
        job = _copy_job(dest)  # this test's async copy (its sessions), not another test's or a concurrent tool's
        assert any("datadir_copy" in line for line in job.values()), job
        if fault == "keeper_killed":
            os.kill(pid, signal.SIGKILL)
        else:
            assert primary.sql(TERMINATE) == [(1,)]
        killed = time.monotonic()
        stdout, stderr = proc.communicate(timeout=300)
        seconds = time.monotonic() - killed
    finally:
        unthrottle(standby.node)
    output = stdout + stderr
    print(f"the play ended {seconds:.1f} s after the fault ({fault})")
    assert proc.returncode != 0
    assert 'failed in "Follow the copy"' in output or "Follow the copy" in output, output[-3000:]
    cause = f"(pid {pid}) is gone" if fault == "keeper_killed" else "the server ended the keeper's session"
    assert "was lost during the copy" in output and cause in output, output[-3000:]
    assert f"{primary.host}:{primary.port}" in output, "the failure names the primary"
    assert "FAILED - RETRYING" not in output and "(done)" not in output
    # Noticed at once, not after copying the rest: the copy (minutes at 4 Mbit/s) had not got to its end.
    last = json.loads(progress.read_text())
    assert last["bytes_done"] < last["bytes_total"], last
    assert (dest / ".pgbackup-incomplete").exists(), "the stopped copy is marked incomplete"
    assert [line for p, line in job.items() if _alive(p)] == [], "no process of the copy's job is left"
    wait_for(lambda: primary.sql(KEEPERS) == [(0,)], "the keeper's session ending")
    assert primary.sql("SELECT count(*) FROM pg_replication_slots") == [(0,)]
    assert standby.sql("SELECT count(*) FROM pg_replication_slots") == [(0,)]

    def rerun() -> tuple:  # the same backup, unthrottled, into a fresh destination
        again = start_playbook(ansible_env, inventory, dict(extra, standby_backup_dest=str(dest.parent / "again")))
        out, err = again.communicate(timeout=600)
        return again.returncode, out + err

    words = (cause, f"{primary.host}:{primary.port}", "Follow the copy")
    assert_failure_contract(output, returncode=proc.returncode, cause=words, primary=primary, standby=standby, state_dir=keepers, dest=dest,
                            written=True, refusal=(ansible_env, bed, tmp_path, pg_major), rerun=rerun)  # fmt: skip


def test_the_wait_runs_hundreds_of_rounds(testbed, primary_standby, ansible_env, tmp_path, pg_major):
    """The old wait included itself once a round and ansible-core gave up after ~245 nested includes (rc 250): the
    action plugin's loop runs well past that, then returns when the job ends. The job ends when the test has counted
    260 progress lines (past where the old wait died), so the count does not depend on the machine's speed."""
    if pg_major != selected_majors()[-1]:
        pytest.skip("the loop is the controller's, the same on every version: the newest shows it")
    primary, _standby = primary_standby
    flag = tmp_path / "job-may-end"
    result_file = tmp_path / "followed.json"
    inventory = testbed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    extra = {"cluster_name": primary.name, "state_dir": str(tmp_path / "keepers"), "flag_file": str(flag), "result_file": str(result_file)}
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    playbook = str(PLAYBOOKS / "copy_wait_rounds.yml")
    argv = [ANSIBLE_PLAYBOOK, "-i", str(inventory), playbook, "-e", f"@{tmp_path / 'extra.json'}", "--limit", testbed.hosts[0].name]
    proc = subprocess.Popen(argv, env=ansible_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, output = 0, []
    try:
        for line in proc.stdout:
            output.append(line)
            if ": copy" in line:  # a progress line: "<host>: copy<phase>: ..."
                lines += 1
                if lines == 260:
                    flag.touch()
        proc.wait(timeout=120)
    finally:
        flag.touch()
        if proc.poll() is None:
            proc.kill()
    text = "".join(output)
    assert proc.returncode == 0, text[-3000:]
    followed = json.loads(result_file.read_text())
    assert followed["finished"] is True and followed["rounds"] > 250, followed
    assert "FAILED - RETRYING" not in text and "recursion" not in text
