"""wal_retain against real PostgreSQL 13-18 through ansible-playbook: a slot made for a backup keeps every WAL segment
from the backup's start on the primary's disk through a checkpoint storm that removes the WAL nobody holds, is gone
after state=absent, and both states are idempotent; dropping an active slot and a full max_replication_slots fail."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import psycopg2
import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import parse_lsn
from psycopg2.extras import PhysicalReplicationConnection

from .harness.pgbins import ROOT

pytestmark = pytest.mark.integration

PLAYBOOK = Path(__file__).resolve().parent / "playbooks" / "wal_retain.yml"
ANSIBLE_PLAYBOOK = str(ROOT / ".venv" / "bin" / "ansible-playbook")
SEGMENT = 16 << 20  # the test bed's clusters use the default WAL segment size


def _wal_retain(env: dict, inventory: Path, host: str, slots: list) -> list:
    """Run the playbook over ``slots`` (``{cluster_name, state, backup_id}`` each); the registered result of each."""
    result_file = inventory.parent / "wal_retain-result.json"
    result_file.unlink(missing_ok=True)
    extra_file = inventory.parent / "wal_retain-extra.json"
    extra_file.write_text(json.dumps({"slots": slots, "result_file": str(result_file)}))
    argv = [ANSIBLE_PLAYBOOK, "-i", str(inventory), str(PLAYBOOK), "-e", f"@{extra_file}", "--limit", host]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0 or not result_file.exists():
        pytest.fail(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}")
    return json.loads(result_file.read_text())


def _segment_name(lsn: int) -> str:
    segno = lsn // SEGMENT
    return f"{1:08X}{segno // (0x100000000 // SEGMENT):08X}{segno % (0x100000000 // SEGMENT):08X}"


def _segments(cluster) -> set:
    """Names of the WAL segment files of timeline 1 in the cluster's pg_wal."""
    return {p.name for p in (cluster.datadir / "pg_wal").iterdir() if len(p.name) == 24 and p.name.startswith("00000001")}


def _slot(cluster, name: str) -> list:
    return cluster.sql("SELECT restart_lsn::text, wal_status, active, slot_type::text FROM pg_replication_slots WHERE slot_name = %s", (name,))


def _backup_start(cluster, conn) -> int:
    with conn.cursor() as cur:
        if cluster.major >= 15:
            cur.execute("SELECT pg_backup_start('wal_retain test', true)::text")
        else:
            cur.execute("SELECT pg_start_backup('wal_retain test', true, false)::text")
        return parse_lsn(cur.fetchone()[0])


def _backup_stop(cluster, conn) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM pg_backup_stop(false)" if cluster.major >= 15 else "SELECT * FROM pg_stop_backup(false, false)")


def _ok(result: dict, *, changed: bool) -> dict:
    assert result.get("failed") is not True, result
    assert result["changed"] is changed, result
    return result


def test_slot_keeps_backup_wal_through_checkpoint_storm(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    primary, standby = primary_standby
    backup_id = f"IT-{pg_major}.storm:1"
    slot = f"pgbackup_it_{pg_major}_storm_1"
    if primary.sql("SELECT to_regclass('pgbench_accounts') IS NULL") == [(True,)]:
        primary.pgbench_init()
    inventory = testbed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    item = {"cluster_name": primary.name, "backup_id": backup_id}

    on_standby = {"cluster_name": standby.name, "backup_id": backup_id}
    assert standby.node.name == primary.node.name
    created, again, standby_slot = _wal_retain(
        ansible_env, inventory, primary.node.name, [dict(item, state="present")] * 2 + [dict(on_standby, state="present")]
    )
    # On a standby too the slot reserves WAL at once (from its last restartpoint's redo point).
    _ok(standby_slot, changed=True)
    assert standby_slot["in_recovery"] is True and standby_slot["created"] is True and standby_slot["wal_status"] == "reserved"
    assert _slot(standby, slot) == [(standby_slot["restart_lsn"], "reserved", False, "physical")]
    _ok(created, changed=True)
    _ok(again, changed=False)
    assert created["slot_name"] == again["slot_name"] == slot
    assert created["created"] is True and again["created"] is False
    assert created["wal_status"] == "reserved" and created["in_recovery"] is False and created["active"] is False
    assert again["restart_lsn"] == created["restart_lsn"]
    ((restart_text, wal_status, active, slot_type),) = _slot(primary, slot)
    assert (restart_text, wal_status, active, slot_type) == (created["restart_lsn"], "reserved", False, "physical")

    conn = primary.connect()
    start = _backup_start(primary, conn)
    try:
        restart = parse_lsn(restart_text)
        assert restart <= start, "a slot made before the backup starts reserves WAL from an earlier redo point"
        before = _segments(primary)
        # Storm: nothing but the slot keeps WAL (wal_keep_size 0, a tiny max_wal_size), pgbench writes, checkpoints run.
        primary.sql("ALTER SYSTEM SET max_wal_size = '32MB'")
        primary.sql("ALTER SYSTEM SET min_wal_size = '32MB'")
        primary.sql("ALTER SYSTEM SET wal_keep_size = 0")
        primary.sql("SELECT pg_reload_conf()")
        try:
            with testbed.load(primary, 3, clients=4, rate=0):  # a storm: as much WAL as it can
                for _unused_round in range(3):
                    time.sleep(0.7)
                    primary.sql("SELECT pg_switch_wal()")
                    primary.sql("CHECKPOINT")
            for _unused_round in range(2):
                primary.sql("CREATE TABLE IF NOT EXISTS wal_retain_it (id int); INSERT INTO wal_retain_it VALUES (1)")
                primary.sql("SELECT pg_switch_wal()")
                primary.sql("CHECKPOINT")
            current = parse_lsn(primary.sql("SELECT pg_current_wal_lsn()::text")[0][0])
            after = _segments(primary)
        finally:
            for setting in ("max_wal_size", "min_wal_size", "wal_keep_size"):
                primary.sql(f"ALTER SYSTEM RESET {setting}")
            primary.sql("SELECT pg_reload_conf()")
        ((restart_now, status_now, _unused_active, _unused_pid),) = _slot(primary, slot)
        assert status_now == "reserved" and restart_now == restart_text, "an inactive slot's restart_lsn never moves"
        assert current // SEGMENT - start // SEGMENT >= 4, "the storm switched segments"
        wanted = [_segment_name(lsn) for lsn in range(restart - restart % SEGMENT, current + 1, SEGMENT)]
        assert wanted[0] <= _segment_name(start) <= wanted[-1] == _segment_name(current)
        missing = [name for name in wanted if name not in after]
        assert not missing, f"segments the slot should keep are gone: {missing}"
        # The storm did remove WAL: segments before the slot's first one that were there before are gone.
        older_before = {name for name in before if name < wanted[0]}
        if older_before:
            assert not older_before & after, "checkpoints kept WAL older than the slot: the test would prove nothing"
        else:
            assert min(after) == wanted[0]
    finally:
        try:
            _backup_stop(primary, conn)
        finally:
            conn.close()

    dropped, again, standby_dropped = _wal_retain(
        ansible_env, inventory, primary.node.name, [dict(item, state="absent")] * 2 + [dict(on_standby, state="absent")]
    )
    _ok(standby_dropped, changed=True)
    assert standby_dropped["dropped"] is True and _slot(standby, slot) == []
    _ok(dropped, changed=True)
    _ok(again, changed=False)
    assert dropped["dropped"] is True and again["dropped"] is False and dropped["slot_name"] == slot
    assert _slot(primary, slot) == []


def test_active_slot_and_exhausted_slots_fail(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    primary, _unused_standby = primary_standby
    active = f"pgbackup_it_{pg_major}_active"
    fillers = []
    repl = None
    primary.sql("SELECT pg_create_physical_replication_slot(%s, true)", (active,))
    try:
        restart = primary.sql("SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (active,))[0][0]
        repl = psycopg2.connect(host=str(primary.socket_dir), port=primary.port, user="postgres", connection_factory=PhysicalReplicationConnection)
        repl.cursor().start_replication(slot_name=active, start_lsn=restart)
        deadline = time.monotonic() + 30
        while _slot(primary, active)[0][2] is not True:
            assert time.monotonic() < deadline, "the replication connection did not make the slot active"
            time.sleep(0.1)
        walsender = primary.sql("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (active,))[0][0]
        (used, limit) = primary.sql("SELECT count(*), current_setting('max_replication_slots')::int FROM pg_replication_slots")[0]
        for n in range(limit - used):
            fillers.append(f"it_filler_{pg_major}_{n}")
            primary.sql("SELECT pg_create_physical_replication_slot(%s)", (fillers[-1],))
        inventory = testbed.write_inventory(tmp_path / "inventory" / "hosts.yml")
        drop_active, create_full = _wal_retain(
            ansible_env,
            inventory,
            primary.node.name,
            [
                {"cluster_name": primary.name, "state": "absent", "backup_id": f"it_{pg_major}_active"},
                {"cluster_name": primary.name, "state": "present", "backup_id": f"it_{pg_major}_full"},
            ],
        )
        assert drop_active.get("failed") is True, drop_active
        assert f"replication slot {active} is active: process {walsender}" in drop_active["msg"]
        assert _slot(primary, active)[0][2] is True, "the active slot is still there"
        assert create_full.get("failed") is True, create_full
        assert f"all replication slots are in use (max_replication_slots = {limit})" in create_full["msg"]
        assert f"{active} (active)" in create_full["msg"] and f"{fillers[-1]} (inactive)" in create_full["msg"]
        assert primary.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (f"pgbackup_it_{pg_major}_full",)) == [(0,)]
    finally:
        for name in fillers:
            primary.sql("SELECT pg_drop_replication_slot(%s)", (name,))
        if repl is not None:
            repl.close()
        deadline = time.monotonic() + 30
        while _slot(primary, active)[0][2] and time.monotonic() < deadline:
            time.sleep(0.1)
        primary.sql("SELECT pg_drop_replication_slot(%s)", (active,))
