"""The whole backup procedure by hand on real PostgreSQL 13-18, pgbench writing throughout: coordinated (start and stop on
the primary, files from the standby) and standby-only. The copy is then recovered to a point after the backup: its log shows
redo from the label's start and consistency at or after the backup's end (see backup_end), the canary made after the start is there, amcheck
is clean, and every table equals the primary's at that point."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import parse_lsn

from .harness.pgbins import selected_majors
from .support.playbooks import run_playbook
from .support.restore_checks import recover_and_check

pytestmark = pytest.mark.integration


def _both_on_the_ends_one_between(pg_major: int, procedure: str) -> None:
    """Both procedures on the oldest and newest selected majors (both backup APIs, the oldest and newest pg_control),
    one on each major between them, alternating (14 and 16 standby-only, 15 and 17 coordinated): every major takes
    and restores a backup end to end, and the suite does not pay twelve of them (a minute each)."""
    majors = selected_majors()
    if pg_major in (majors[0], majors[-1]):
        return
    between = "coordinated" if pg_major % 2 else "standby_only"
    if procedure != between:
        pytest.skip(f"between the oldest and newest majors one procedure each, alternating: {pg_major} runs {between}")


@pytest.mark.parametrize("procedure", ["coordinated", "standby_only"])
def test_backup_from_standby_restores_consistent(primary_standby, testbed, ansible_env, tmp_path, pg_major, procedure):
    _both_on_the_ends_one_between(pg_major, procedure)
    primary, standby = primary_standby
    primary.pgbench_init()
    primary.sql("CREATE EXTENSION IF NOT EXISTS amcheck")
    canary = f"bp_canary_{uuid.uuid4().hex[:8]}"
    restored = testbed.empty_cluster(pg_major, name=f"pg{pg_major}-bp-{procedure.replace('_', '-')}")
    inventory = testbed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    result_file = tmp_path / "procedure.json"
    extra = {
        "procedure": procedure,
        "primary_name": primary.name,
        "standby_name": standby.name,
        "dest": str(restored.datadir),
        "state_dir": str(tmp_path / "keepers"),
        "archive_dir": str(primary.archive_dir),
        "canary_table": canary,
        "result_file": str(result_file),
    }
    try:
        with testbed.load(primary, 300, clients=2) as load:
            time.sleep(1)
            run_playbook(ansible_env, inventory, "backup_procedure.yml", extra, "--limit", testbed.hosts[0].name, check=False)
            results = json.loads(result_file.read_text())
            time.sleep(1)
            load.stop()
        assert results["failure"] is None, results
        started, stopped = results["started"], results["stopped"]
        assert started["server_role"] == ("primary" if procedure == "coordinated" else "standby")
        if procedure == "coordinated":
            assert parse_lsn(results["replayed"]["redo_lsn"]) >= parse_lsn(started["start_lsn"])
        assert results["placed"]["guarded"] is True and results["collected"]["segments"], results["collected"]

        recover_and_check(
            primary,
            restored,
            testbed,
            ansible_env,
            tmp_path,
            pg_major,
            procedure=procedure,
            start_lsn=started["start_lsn"],
            stop_lsn=stopped["stop_lsn"],
            canary=canary,
        )
    finally:
        if restored.is_running():
            restored.stop("immediate")
        primary.sql(f"DROP TABLE IF EXISTS {canary}")
