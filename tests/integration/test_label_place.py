"""label_place against real PostgreSQL 13-18: a copy taken under backup_start/backup_stop (with a tablespace mapped to a
new path) is labelled byte for byte, pg_control placed last and guarded; the copy then recovers from the archive to
consistency with the canary made after the start; a guarded copy whose label is deleted refuses to start."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import copy_state
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.pg_control import GUARD_CHECKPOINT_LSN, read_control_file

from .support.copies import backup_copy, postgres_refuses
from .support.playbooks import run_playbook

# Where these tests run (conftest._skip_outside_its_majors): the label comes from pg_stop_backup up to 14 (13) and pg_backup_stop from 15 (18: the newest).
pytestmark = [pytest.mark.integration, pytest.mark.majors(13, 18)]


def _place(env, testbed, tmp_path: Path, data_dir: Path, **place_args) -> dict:
    inventory = testbed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    result_file = tmp_path / f"place-{uuid.uuid4().hex[:8]}.json"
    extra = {"data_dir": str(data_dir), "place_args": place_args, "result_file": str(result_file)}
    run_playbook(env, inventory, "label_place.yml", extra, "--limit", testbed.hosts[0].name)
    return json.loads(result_file.read_text())


def test_label_place_then_recover(lone_primary, testbed, ansible_env, tmp_path, pg_major):
    primary = lone_primary  # it makes a tablespace: not on the shared pair (conftest.lone_primary)
    primary.pgbench_init()
    ts_src = testbed.scratch_dir(f"lp-ts-src-{pg_major}")
    ts_dst = testbed.scratch_dir(f"lp-ts-dst-{pg_major}")
    canary = f"lp_canary_{uuid.uuid4().hex[:8]}"
    restored = testbed.empty_cluster(pg_major, name=f"pg{pg_major}-lp-restored")
    dest = restored.datadir
    try:
        primary.sql(f"CREATE TABLESPACE lp_ts LOCATION '{ts_src}'")
        primary.sql("CREATE TABLE lp_ts_t TABLESPACE lp_ts AS SELECT g FROM generate_series(1, 1000) g")
        started, stopped = backup_copy(primary, testbed, tmp_path, dest, {str(ts_src): str(ts_dst)}, canary)
        assert stopped["tablespace_map"].endswith(f" {ts_src}\n")
        assert (dest / copy_state.PENDING_CONTROL).exists() and not (dest / "global" / "pg_control").exists()

        # a label of another backup is refused, and nothing is written
        wrong = _place(ansible_env, testbed, tmp_path, dest, backup_label_base64=stopped["backup_label_base64"], expected_start_lsn="0/1000028")
        assert wrong.get("failed") is True and "belongs to another backup" in wrong["msg"], wrong
        assert not (dest / "backup_label").exists() and (dest / copy_state.PENDING_CONTROL).exists()

        args = {
            "backup_label_base64": stopped["backup_label_base64"],
            "tablespace_map_base64": stopped["tablespace_map_base64"],
            "tablespace_mapping": {str(ts_src): str(ts_dst)},
            "expected_start_lsn": started["start_lsn"],
        }
        placed = _place(ansible_env, testbed, tmp_path, dest, **args)
        assert placed.get("failed") is not True and placed["changed"] is True, placed
        assert placed["files"] == ["backup_label", "tablespace_map", "global/pg_control"] and placed["guarded"] is True
        assert (dest / "backup_label").read_bytes() == base64.b64decode(stopped["backup_label_base64"])
        oid = stopped["tablespace_map"].split()[0]
        assert (dest / "tablespace_map").read_text() == f"{oid} {ts_dst}\n"
        for name in ("backup_label", "tablespace_map", "global/pg_control"):
            info = (dest / name).stat()
            assert stat.S_IMODE(info.st_mode) == 0o600, name
            assert info.st_uid == (dest / "PG_VERSION").stat().st_uid, name
        assert not (dest / copy_state.PENDING_CONTROL).exists()
        control = read_control_file(str(dest))
        assert control.checkpoint_lsn == GUARD_CHECKPOINT_LSN
        again = _place(ansible_env, testbed, tmp_path, dest, **args)
        assert again["changed"] is False and again["files"] == [], again

        # a guarded copy whose label is deleted refuses to start (instead of crash recovery from a wrong checkpoint)
        unlabelled = testbed.scratch_dir(f"lp-unlabelled-{pg_major}")
        shutil.rmtree(unlabelled)
        subprocess.run(["cp", "-a", str(dest), str(unlabelled)], check=True)  # owners kept
        os.unlink(unlabelled / "backup_label")
        os.unlink(unlabelled / "tablespace_map")
        complaint = postgres_refuses(primary, unlabelled, testbed.scratch_dir(f"lp-refuse-{pg_major}"))
        assert "checkpoint record" in complaint, complaint

        # the labelled copy recovers from the archive and reaches consistency with the canary made after the start
        restored.write_settings()
        with open(dest / "testbed.conf", "a") as conf:
            conf.write(f"restore_command = 'cp {primary.archive_dir}/%f %p'\nrecovery_target_action = 'promote'\n")
        (dest / "recovery.signal").touch()
        shutil.chown(dest / "recovery.signal", "postgres", "postgres")
        restored.start()
        deadline = time.monotonic() + 120
        while restored.sql("SELECT pg_is_in_recovery()")[0][0] and time.monotonic() < deadline:
            time.sleep(0.2)
        log = restored.log_file.read_text(errors="replace")
        assert f"redo starts at {started['start_lsn']}" in log, log[-3000:]
        assert "consistent recovery state reached" in log
        assert restored.sql(f"SELECT answer FROM {canary}") == [(42,)]  # noqa: S608 - a name the test made
        assert restored.sql("SELECT count(*) FROM lp_ts_t") == [(1000,)]
        assert os.readlink(dest / "pg_tblspc" / oid) == str(ts_dst)
        checked = restored.sql("SELECT count(*) FROM pg_class c JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'btree' AND c.relpersistence = 'p'")[0][0]
        assert checked > 0
        restored.sql("CREATE EXTENSION IF NOT EXISTS amcheck")
        restored.sql(
            "SELECT bt_index_check(c.oid, true) FROM pg_class c JOIN pg_am a ON a.oid = c.relam "
            "WHERE a.amname = 'btree' AND c.relpersistence = 'p' AND c.relkind = 'i'"
        )
    finally:
        if restored.is_running():
            restored.stop("immediate")
        primary.sql(f"DROP TABLE IF EXISTS {canary}, lp_ts_t")
        primary.sql("DROP TABLESPACE IF EXISTS lp_ts")
