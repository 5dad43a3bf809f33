"""The standby_backup role end to end across namespace hosts over ssh, on real PostgreSQL 13-18 with pgbench writing on
the primary throughout: primary on db1, standby on db2, the backup pulled onto db3 (coordinated and standby-only), then
restored there: recovery from the label's start, consistency at or after the backup's end, the canary made after the start,
amcheck clean, every table equal to the primary's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid

import pytest

from .conftest import one_end, role_majors
from .harness.pgbins import ROOT
from .support.restore_checks import recover_and_check
from .support.roles import SSH_OPTIONS, backup_vars, clean_after_failure, role_run, start_playbook
from .support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.netns]


def _only_some_majors(pg_major: int) -> None:
    if pg_major not in role_majors():
        pytest.skip(f"role tests across hosts run on ROLE_MAJORS={os.environ.get('ROLE_MAJORS')!r} only")


PSYCOPG3_PYTHON = ROOT / ".venv" / "psycopg3" / "bin" / "python"  # psycopg 3 and no psycopg2 (scripts/bootstrap-venv.sh)


def _keeper_interpreters(state_dir) -> set:
    """The interpreters the running keepers were started with (a keeper is forked from its module, so argv[0] is the
    Python the module ran on), found through the keeper.pid files under ``state_dir``."""
    found = set()
    for pid_file in state_dir.glob("*/keeper.pid"):
        try:
            argv = open(f"/proc/{int(pid_file.read_text())}/cmdline", "rb").read().split(b"\0")
        except (OSError, ValueError):
            continue
        found.add(argv[0].decode(errors="replace"))
    return found


def _this_runs_keeper_sessions(server, state_dir) -> int:
    """How many sessions on ``server`` belong to keepers under ``state_dir`` (their session dirs are their backup ids)."""
    names = [f"pgbackup.lowlevel keeper {pid_file.parent.name}"[:63] for pid_file in state_dir.glob("*/keeper.pid")]
    if not names:
        return 0
    return server.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = ANY(%s)", (names,))[0][0]


# The modules' two drivers: psycopg2 in the first two runs, psycopg 3 (modules run by an interpreter that has only
# psycopg 3) in the third, on the newest major the role tests run on; the coordinated run with psycopg2 is then the
# oldest major's, so each end runs both modes once.
@pytest.mark.parametrize(("mode", "driver"), [("coordinated", "psycopg2"), ("standby_only", "psycopg2"), ("coordinated", "psycopg3")])
def test_standby_backup_role_restores_on_another_host(netns_testbed, netns_pair, ansible_env, tmp_path, pg_major, mode, driver):
    _only_some_majors(pg_major)
    if (mode, driver) == ("coordinated", "psycopg2"):
        one_end(pg_major, "oldest")
    if driver == "psycopg3":
        if pg_major != max(role_majors()):
            pytest.skip("psycopg 3 runs the role on the newest major the role tests run on; the modules' SQL is the same on every major")
        no_psycopg2 = subprocess.run([str(PSYCOPG3_PYTHON), "-c", "import psycopg; import psycopg2"], capture_output=True, text=True, check=False)
        assert "No module named 'psycopg2'" in no_psycopg2.stderr, f"{PSYCOPG3_PYTHON} must have psycopg 3 and not psycopg2: {no_psycopg2.stderr}"
    bed = netns_testbed
    primary, standby = netns_pair
    primary.pgbench_init()
    primary.sql("CREATE EXTENSION IF NOT EXISTS amcheck")
    canary = f"sb_canary_{uuid.uuid4().hex[:8]}"
    db3 = bed.host("db3")
    restored = bed.empty_cluster(pg_major, host=db3, name=f"pg{pg_major}-sb-{mode.replace('_', '-')}")
    inventory = bed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    key = str(bed.run_dir / "ssh" / "id_ed25519")
    extra = backup_vars(
        db3.name,
        primary,
        standby,
        restored.datadir,
        tmp_path / "keepers",
        standby_backup_mode=mode,
        standby_backup_source_ssh_host=standby.node.address,
        standby_backup_ssh_key=key,
        standby_backup_ssh_options=SSH_OPTIONS,
        standby_backup_progress_interval=2,
        standby_backup_transport="stream" if mode == "standby_only" else "rsync",  # each transport through the role, both ends
    )
    if driver == "psycopg3":
        extra["ansible_python_interpreter"] = str(PSYCOPG3_PYTHON)
    # The one run through the deprecated names of the source (removed in 0.3.0): the whole backup takes them.
    old_names = (mode, driver) == ("coordinated", "psycopg2")
    if old_names:
        extra = {name.replace("standby_backup_source_", "standby_backup_standby_"): value for name, value in extra.items()}
    try:
        with bed.load(primary, 600, clients=2) as load:
            time.sleep(1)
            # the canary is made right after the start, from a second ansible-playbook run watching for the keeper
            proc = start_playbook(ansible_env, inventory, extra)
            server = primary if mode == "coordinated" else standby
            # this run's keeper: a session another test's keeper left behind may still be going away
            seen = wait_for(lambda: _this_runs_keeper_sessions(server, tmp_path / "keepers") or (proc.poll() is not None and "ended"), "the backup starting")
            if seen == "ended":  # the play ended before any keeper appeared: say why
                out, err = proc.communicate()
                pytest.fail(f"the playbook ended (rc {proc.returncode}) before the backup started:\n{out[-6000:]}{err[-3000:]}")
            primary.sql(f"CREATE TABLE {canary} AS SELECT 42 AS answer")
            if driver == "psycopg3":
                assert str(PSYCOPG3_PYTHON) in _keeper_interpreters(tmp_path / "keepers"), "the modules, and so the keeper, run on psycopg 3"
            stdout, stderr = proc.communicate(timeout=600)
            load.stop()
        assert proc.returncode == 0, stdout[-6000:] + stderr[-3000:]
        for suffix in ("host", "port", "data_dir", "ssh_host"):
            deprecated = f"standby_backup_standby_{suffix} is deprecated and removed in 0.3.0: use standby_backup_source_{suffix}"
            assert (deprecated in stdout) == old_names, (deprecated, stdout[-6000:])
        summary = re.search(r'"start_lsn": "([0-9A-F/]+)".*?"stop_lsn": "([0-9A-F/]+)"', stdout, re.S)
        assert summary, stdout[-4000:]
        start_lsn, stop_lsn = summary.groups()
        assert "copied " in stdout and " MiB/s" in stdout, "the copy's progress is shown"
        copied = re.search(r'"copied_bytes": (\d+),.*?"copy_seconds": ([0-9.]+),', stdout, re.S)
        assert copied and int(copied.group(1)) > 0, "the summary says what the copy did (copy_wait's copy_result): " + stdout[-3000:]
        assert primary.sql("SELECT count(*) FROM pg_replication_slots") == [(0,)] and standby.sql("SELECT count(*) FROM pg_replication_slots") == [(0,)]

        recover_and_check(primary, restored, bed, ansible_env, tmp_path, pg_major, procedure=mode, start_lsn=start_lsn, stop_lsn=stop_lsn, canary=canary)
        assert json.dumps(stdout).count(primary.password) == 0, "the password is never printed"
    finally:
        if restored.is_running():
            restored.stop("immediate")


def test_role_refuses_a_busy_destination_before_the_start(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    if pg_major not in role_majors():
        pytest.skip("the cleanup path is the role's, the same on every version: the oldest and newest show it")
    primary, standby = primary_standby
    dest = testbed.scratch_dir(f"sb-busy-{pg_major}")
    (dest / "somebody_elses_file").write_text("keep me")
    code, output = role_run(ansible_env, testbed, tmp_path, primary, standby, dest)
    assert code != 0
    assert "Refuse the destination" in output and "is not empty" in output and "Nothing was started (no slot, no backup)" in output, output[-3000:]
    assert "marked incomplete" not in output, "nothing was written there, so nothing is said to be marked"
    assert sorted(p.name for p in dest.iterdir()) == ["somebody_elses_file"], "a destination the copy refused is left as it was"
    clean_after_failure(primary, standby, tmp_path)
    assert not list((tmp_path / "keepers").glob("*/started.json")), "the preflight refused it: no backup was started"


def test_role_failure_after_the_copy_marks_it_incomplete(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    if pg_major not in role_majors():
        pytest.skip("the cleanup path is the role's, the same on every version: the oldest and newest show it")
    primary, standby = primary_standby
    restored = testbed.empty_cluster(pg_major, name=f"pg{pg_major}-sb-fail")
    empty_archive = testbed.scratch_dir(f"sb-empty-archive-{pg_major}")
    code, output = role_run(
        ansible_env,
        testbed,
        tmp_path,
        primary,
        standby,
        restored.datadir,
        standby_backup_wal_source="archive",
        standby_backup_archive_dir=str(empty_archive),
        standby_backup_wal_timeout=1,
    )
    assert code != 0
    assert 'failed in "Collect the WAL from the start to the stop"' in output, output[-3000:]
    assert "The backup had been stopped on " in output and f"{restored.datadir} is marked incomplete" in output, output[-3000:]
    assert (restored.datadir / ".pgbackup-incomplete").exists(), "a finished copy of a failed backup is marked incomplete"
    clean_after_failure(primary, standby, tmp_path)
