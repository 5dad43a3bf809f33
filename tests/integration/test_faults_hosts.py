"""Fault suite (issue 12), servers and network failing mid-copy: namespace hosts (primary db1, standby db2, the backup
written on db3 over ssh), pgbench writing on the primary, the copy throttled with tc on the standby's link so that it
lasts, coordinated mode, on the oldest and newest major. Each fault hits while the copy runs:

- the primary shut down with ``-m immediate`` (then started again): the keeper's session ends with the server, the keeper
  records the server's message and copy_wait stops the copy within seconds;
- the standby's postmaster SIGKILLed (then started again): its files stay readable over ssh, so the copy goes on to its
  end; the re-check after the copy ("Check that the standby is still the backup's source") fails naming the standby;
- the primary's link cut (``ip link set eth0 down`` in db1) for longer than the keeper's TCP keepalives allow (short
  ones through standby_backup_connect_params, idle 5 s + 3 x 2 s, so the long path runs in seconds; the defaults are
  backup_session.KEEPALIVES, idle 30 s + 6 x 10 s), then up again: the keeper's keepalives give up, it says the
  network (not the server) ended its session, and copy_wait stops the copy.

Each run must end in the failure contract (contract.py): the cause named with host:port, the written destination marked
and refused by verify and restore, no backup left on the primary once the network is back (its server-side backend
ends at the server's next keepalive probe), no slot, the standby streaming, and a re-run into a fresh destination that
succeeds. The seconds from the fault to the play's end are printed, not asserted. The netns pair is shared by later
tests and its fixture does not heal it: every fault is undone in a finally (server started, link up, tc removed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from .conftest import one_end
from .contract import KEEPERS, assert_failure_contract
from .support.faults import throttle, unthrottle
from .support.roles import SSH_OPTIONS, backup_vars, run_to_end, start_playbook
from .support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.netns]
RECHECK = "Check that the standby is still the backup's source"
# The keeper's client-side keepalives in the link-cut case (the role's standby_backup_connect_params override the
# defaults, 30 s idle + 6 probes 10 s apart): they give up at most 11 s after the last answered probe. The link stays
# down well past that, not past the server's (60 s + 6 x 10 s): the server-side backend outlives the keeper's end.
SHORT_KEEPALIVES = {"keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3}
LINK_DOWN_SECONDS = 30


def _link(bed, host, state: str) -> None:
    host.run(["ip", "link", "set", "eth0", state])
    if state == "up":  # the kernel dropped the default route with the link; the bed's hosts route via the controller
        subprocess.run(["ip", "-n", host.netns, "route", "replace", "default", "via", bed.network.controller_address], check=True)


# The faults hit the role's wait and re-checks, the same on every version: each case on one end (conftest.one_end).
_END = {"test_primary_immediate_shutdown_mid_copy": "newest", "test_standby_killed_mid_copy": "oldest", "test_primary_link_cut_past_the_keepalives": "newest"}


class _Run:
    """One throttled role run on db3 under pgbench load, with what the test needs to fault it mid-copy."""

    def __init__(self, bed, primary, standby, ansible_env, tmp_path, name: str, rate: str) -> None:
        self.bed, self.primary, self.standby, self.env, self.tmp_path = bed, primary, standby, ansible_env, tmp_path
        self.db3 = bed.host("db3")
        self.keepers = tmp_path / "keepers"
        self.dest = bed.scratch_dir(name) / "copy"
        self.progress = self.dest.parent / ".copy.progress.json"
        self.rate = rate
        self.connect_params: dict = {}
        self.inventory = bed.write_inventory(tmp_path / "inventory" / "hosts.yml")

    def vars(self, dest) -> dict:
        return backup_vars(self.db3.name, self.primary, self.standby, dest, self.keepers, standby_backup_source_ssh_host=self.standby.node.address,
                           standby_backup_ssh_key=str(self.bed.run_dir / "ssh" / "id_ed25519"), standby_backup_ssh_options=SSH_OPTIONS,
                           standby_backup_progress_interval=1, standby_backup_connect_params=self.connect_params)  # fmt: skip

    def start(self) -> subprocess.Popen:
        throttle(self.standby.node, self.rate)
        self.proc = start_playbook(self.env, self.inventory, self.vars(self.dest))
        wait_for(lambda: self.progress.exists() and b'"bytes_done": 0,' not in self.progress.read_bytes(), "the copy moving", timeout=180)
        self.started = json.loads(next(self.keepers.glob("*/started.json")).read_text())
        return self.proc

    def rerun(self) -> tuple:
        """The same backup, once the fault is gone, unthrottled into a fresh destination (a new backup id)."""
        unthrottle(self.standby.node)
        proc = start_playbook(self.env, self.inventory, self.vars(self.dest.parent / "again"))
        stdout, stderr = proc.communicate(timeout=600)
        return proc.returncode, stdout + stderr

    def finish(self, timeout: float = 600) -> str:
        stdout, stderr = self.proc.communicate(timeout=timeout)
        (self.tmp_path / "play.log").write_text(stdout + stderr)  # the whole run, for a failure's report
        return stdout + stderr

    def stop(self) -> None:
        unthrottle(self.standby.node)
        if getattr(self, "proc", None) is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def _message(output: str) -> str:
    """The role's closing message ("standby_backup ID failed in ..."), for the report."""
    lines = [line for line in output.splitlines() if "standby_backup " in line and " failed in " in line]
    return lines[-1].strip()[:2000] if lines else output[-2000:]


def _contract(run: _Run, output: str, cause: tuple, pg_major: int) -> None:
    print("the message:", _message(output))
    assert_failure_contract(output, returncode=run.proc.returncode, cause=cause, primary=run.primary, standby=run.standby, state_dir=run.keepers,
                            dest=run.dest, written=True, refusal=(run.env, run.bed, run.tmp_path, pg_major), rerun=run.rerun)  # fmt: skip


@pytest.fixture
def fault_run(netns_testbed, netns_pair, ansible_env, tmp_path, pg_major, request):
    one_end(pg_major, _END[request.node.originalname])
    primary, standby = netns_pair
    primary.pgbench_init()
    load = netns_testbed.load(primary, seconds=900)
    name = f"faults-{request.node.originalname.removeprefix('test_')}-{pg_major}"
    run = _Run(netns_testbed, primary, standby, ansible_env, tmp_path, name, getattr(request, "param", "4mbit"))
    try:
        yield run
    finally:  # the pair is shared and its fixture does not heal it: whatever failed, leave both running and streaming
        run.stop()
        load.stop()
        _link(netns_testbed, primary.node, "up")
        for server in (primary, standby):
            if not server.is_running():
                server.start()
        standby.wait_streaming(timeout=120)


def test_primary_immediate_shutdown_mid_copy(fault_run, pg_major):
    run, primary = fault_run, fault_run.primary
    run.start()
    try:
        primary.stop("immediate")
        fault = time.monotonic()
        output = run.finish()
        seconds = time.monotonic() - fault
    finally:
        if not primary.is_running():
            primary.start()
    print(f"primary immediate shutdown: the play ended {seconds:.1f} s after the fault")
    where = f"{primary.host}:{primary.port}"
    last = json.loads(run.progress.read_text()) if run.progress.exists() else {}
    assert "was lost during the copy" in output and "the server ended the keeper's session" in output, output[-3000:]
    assert last.get("bytes_done", 0) < last.get("bytes_total", 1), f"the copy ran to its end: {last}"
    _contract(run, output, ("Follow the copy", where, "The backup was aborted on " + where), pg_major)


def test_standby_killed_mid_copy(fault_run, pg_major):
    run, standby = fault_run, fault_run.standby
    run.start()
    try:
        os.kill(standby.postmaster_pid(), signal.SIGKILL)
        fault = time.monotonic()
        wait_for(lambda: not standby.is_running() or run.proc.poll() is not None, "the standby gone", timeout=60)
        # Its files stay readable: does copy_wait notice within seconds, or does the copy go on?
        time.sleep(10)
        going_on = run.proc.poll() is None
        unthrottle(standby.node)  # let the rest of the copy go at full speed
        output = run.finish()
        seconds = time.monotonic() - fault
    finally:
        if standby.postmaster_pid() is None or not standby.is_running():
            wait_for(lambda: not any(_children_of(standby)), "the killed standby's processes exiting", timeout=60)
            standby.start()
    print(f"standby killed: copy still running 10 s after the fault: {going_on}; the play ended {seconds:.1f} s after the fault")
    where = f"{standby.host}:{standby.port}"
    backup_id = run.started["backup_id"]
    assert f'failed in "{RECHECK}"' in output and "did not answer after the copy" in output, output[-3000:]
    assert "promoted" not in _message(output), "the standby was killed, not promoted: " + _message(output)
    # The slot is on the dead standby's disk: the run cannot drop it, says so, and the abort it names drops it.
    slot = "pgbackup_" + backup_id.lower().replace("-", "_")
    assert f"the slot {slot} of backup {backup_id} is left on the standby {where}" in output, output[-3000:]
    assert standby.sql("SELECT slot_name FROM pg_replication_slots") == [(slot,)]
    code, aborted = run_to_end(run.env, run.inventory, "abort_backup.yml", dict(run.vars(run.dest), standby_backup_abort_id=backup_id))
    assert code == 0 and f"slot {slot}" in aborted, aborted[-3000:]
    _contract(run, output, (where, "did not answer after the copy", "abort_backup.yml"), pg_major)


def _children_of(cluster) -> list:
    """Processes still holding the data directory as cwd (a SIGKILLed postmaster's children exit on their own)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/cwd") == str(cluster.datadir):
                    found.append(int(name))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("fault_run", ["2mbit"], indirect=True)
def test_primary_link_cut_past_the_keepalives(fault_run, pg_major):
    run, primary = fault_run, fault_run.primary
    db1 = primary.node
    run.connect_params = SHORT_KEEPALIVES
    run.start()
    backend = int(run.started["backend_pid"])
    try:
        _link(run.bed, db1, "down")
        fault = time.monotonic()
        ended = None
        while time.monotonic() - fault < LINK_DOWN_SECONDS:
            if ended is None and run.proc.poll() is not None:
                ended = time.monotonic() - fault
            time.sleep(0.5)
        held = primary.sql("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,)) == [(1,)]
    finally:
        _link(run.bed, db1, "up")
    back = time.monotonic()
    output = run.finish()
    seconds = ended if ended is not None else time.monotonic() - fault
    wait_for(lambda: primary.sql(KEEPERS) == [(0,)], "the keeper's old backend ending on the primary", timeout=180)
    print(f"link cut: the play ended {seconds:.1f} s after the cut; the old backend {backend} was still on the primary when the link came "
          f"back: {held}; it ended {time.monotonic() - back:.1f} s after")  # fmt: skip
    where = f"{primary.host}:{primary.port}"
    assert "was lost during the copy: the network to the server failed" in output, output[-3000:]
    assert "the server ended the keeper's session" not in output and "The backup was aborted on" not in _message(output), _message(output)
    _contract(run, output, ("Follow the copy", where, "TCP keepalives", "The server still holds it open", f"pg_terminate_backend({backend})"), pg_major)
