"""recovery_config against real PostgreSQL 13-18 on a labelled copy of the primary: recover to the backup's stop LSN and
pause there (recovery.signal, restore_command, target), then the same copy reconfigured as a standby streaming from the
primary through a slot, with the password in a passfile and the inherited settings replaced, never duplicated."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import label_placer
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import parse_lsn

from .support.copies import backup_copy
from .support.restore_checks import configure_recovery
from .support.waiting import wait_for

# Where these tests run (conftest._skip_outside_its_majors): recovery settings and standby.signal are the same from 12 on.
pytestmark = [pytest.mark.integration, pytest.mark.majors(13, 18)]


def test_recover_to_stop_then_stream_as_standby(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    primary, _standby = primary_standby
    primary.pgbench_init()
    canary = f"rc_canary_{uuid.uuid4().hex[:8]}"
    slot = f"rc_slot_{pg_major}"
    restored = testbed.empty_cluster(pg_major, name=f"pg{pg_major}-rc-restored")
    dest = restored.datadir
    try:
        started, stopped = backup_copy(primary, testbed, tmp_path, dest, {}, canary)
        label_placer.place(str(dest), label=stopped["backup_label"].encode(), expected_start_lsn=started["start_lsn"])
        restored.write_settings()
        with open(dest / "postgresql.auto.conf", "a") as conf:  # what a copy of a standby would carry, twice
            conf.write("primary_conninfo = 'host=elsewhere user=nobody'\nprimary_conninfo = 'host=elsewhere'\nrestore_command = 'false'\n")
        (dest / "standby.signal").touch()

        # --- recover to the stop LSN and pause there ---
        recover = {
            "mode": "recovery",
            "restore_command": f"cp {primary.archive_dir}/%f %p",
            "recovery_target_lsn": stopped["stop_lsn"],
            "recovery_target_action": "pause",
        }
        result, output = configure_recovery(ansible_env, testbed, tmp_path, dest, "--diff", **recover)
        assert result.get("failed") is not True and result["changed"] is True, result
        assert sorted(result["files"]) == ["postgresql.auto.conf", "recovery.signal", "standby.signal (removed)"]
        assert "host=elsewhere" in output, "diff mode shows what was replaced"
        auto = (dest / "postgresql.auto.conf").read_text()
        assert "elsewhere" not in auto and auto.count("restore_command") == 1 and "primary_conninfo = ''" in auto
        assert (dest / "recovery.signal").exists() and not (dest / "standby.signal").exists()
        again, _output = configure_recovery(ansible_env, testbed, tmp_path, dest, **recover)
        assert again["changed"] is False and again["files"] == [], again
        restored.start()
        wait_for(lambda: restored.sql("SELECT pg_is_wal_replay_paused()")[0][0], "recovery pausing at its target")
        replayed = parse_lsn(restored.sql("SELECT pg_last_wal_replay_lsn()::text")[0][0])
        assert replayed >= parse_lsn(stopped["stop_lsn"])
        assert restored.sql(f"SELECT answer FROM {canary}") == [(42,)]  # noqa: S608 - a name the test made
        restored.stop()

        # --- the same copy as a standby of the primary, through a slot ---
        primary.sql("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))
        standby_args = {
            "mode": "standby",
            "primary_host": primary.host,
            "primary_port": primary.port,
            "primary_password": True,
            "primary_application_name": f"rc-{pg_major}",
            "primary_slot_name": slot,
        }
        result, output = configure_recovery(ansible_env, testbed, tmp_path, dest, "--diff", **standby_args)
        assert result.get("failed") is not True and result["changed"] is True, result
        assert primary.password not in output and primary.password not in (dest / "postgresql.auto.conf").read_text()
        passfile = Path(result["passfile"])
        assert passfile.parent == dest.parent and primary.password in passfile.read_text()
        info = passfile.stat()
        assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == dest.stat().st_uid
        auto = (dest / "postgresql.auto.conf").read_text()
        assert auto.count("primary_conninfo") == 1 and "recovery_target" not in auto
        assert (dest / "standby.signal").exists() and not (dest / "recovery.signal").exists()
        restored.start()
        wait_for(
            lambda: primary.sql("SELECT count(*) FROM pg_stat_replication WHERE application_name = %s AND state = 'streaming'", (f"rc-{pg_major}",))[0][0],
            "the copy streaming from the primary",
        )
        assert primary.sql("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)) == [(True,)]
        assert restored.sql("SELECT pg_is_in_recovery()") == [(True,)]
    finally:
        if restored.is_running():
            restored.stop("immediate")
        primary.sql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s AND NOT active", (slot,))
        primary.sql(f"DROP TABLE IF EXISTS {canary}")
