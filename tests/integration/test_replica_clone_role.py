"""The replica_clone role across namespace hosts over ssh on real PostgreSQL 13-18, pgbench writing on the primary: a clone
on db3 from the primary (db1) and a cascading clone from the standby (db2) each reach streaming, catch up and equal the
primary table by table; run again, the role changes nothing."""

from __future__ import annotations

import re
import time

import pytest

from .conftest import one_end
from .support.restore_checks import TABLES, amcheck, fingerprints
from .support.roles import SSH_OPTIONS, run_clone
from .support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.netns]


@pytest.mark.parametrize("upstream_role", ["primary", "standby"])
def test_clone_reaches_streaming_and_is_idempotent(netns_testbed, netns_pair, ansible_env, tmp_path, pg_major, upstream_role):
    one_end(pg_major, "oldest" if upstream_role == "standby" else "newest")
    bed = netns_testbed
    primary, standby = netns_pair
    primary.pgbench_init()
    primary.sql("CREATE EXTENSION IF NOT EXISTS amcheck")
    upstream = primary if upstream_role == "primary" else standby
    db3 = bed.host("db3")
    clone = bed.empty_cluster(pg_major, host=db3, name=f"pg{pg_major}-clone-of-{upstream_role}")
    inventory = bed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    settings = f"-c listen_addresses={clone.host} -c port={clone.port} -c unix_socket_directories={clone.socket_dir}"
    extra = {
        "replica_clone_hosts": db3.name,
        "replica_clone_upstream_host": upstream.host,
        "replica_clone_upstream_port": upstream.port,
        "replica_clone_upstream_data_dir": str(upstream.datadir),
        "replica_clone_primary_host": primary.host if upstream_role == "standby" else "",
        "replica_clone_primary_port": primary.port,
        "replica_clone_login_password": primary.password,
        "replica_clone_upstream_ssh_host": upstream.node.address,
        "replica_clone_ssh_key": str(bed.run_dir / "ssh" / "id_ed25519"),
        "replica_clone_ssh_options": SSH_OPTIONS,
        "replica_clone_data_dir": str(clone.datadir),
        "replica_clone_state_dir": str(tmp_path / "keepers"),
        "replica_clone_application_name": clone.name,
        "replica_clone_slot_name": f"clone_{upstream_role}_{pg_major}",
        "replica_clone_pg_bindir": str(clone.pg.bindir),
        "replica_clone_pg_ctl_options": ["-o", settings],
        "replica_clone_log_file": str(clone.log_file),
        "replica_clone_address": clone.host,
        "replica_clone_port": clone.port,
        "replica_clone_timeout": 300,
    }
    try:
        with bed.load(primary, 600, clients=2) as load:
            time.sleep(1)
            first = run_clone(ansible_env, inventory, extra)
            assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
            again = run_clone(ansible_env, inventory, extra)
            load.stop()
        assert again.returncode == 0, again.stdout[-4000:]
        assert re.search(rf"{db3.name}\s*:\s*ok=\d+\s+changed=0\s", again.stdout), again.stdout[-3000:]
        assert "nothing to do" in again.stdout
        assert primary.password not in first.stdout + again.stdout
        wait_for(
            lambda: upstream.sql("SELECT count(*) FROM pg_stat_replication WHERE application_name = %s AND state = 'streaming'", (clone.name,)) == [(1,)],
            "the clone streaming from its upstream",
        )
        assert upstream.sql("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (extra["replica_clone_slot_name"],)) == [(True,)]
        wait_for(lambda: primary.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'") == [(0,)], "pgbench's sessions ending")
        (lsn,) = primary.sql("SELECT pg_current_wal_lsn()::text")[0]
        if upstream_role == "standby":
            standby.wait_replayed(lsn)
        clone.wait_replayed(lsn)
        assert fingerprints(clone, TABLES) == fingerprints(primary, TABLES)
        amcheck(clone, pg_major)
        if upstream_role == "primary":
            # replica_clone_force re-seeds a replica whose server is stopped already (pg_ctl stop used to fail there)
            clone.stop()
            reseeded = run_clone(ansible_env, inventory, {**extra, "replica_clone_force": True})
            assert reseeded.returncode == 0, reseeded.stdout[-6000:] + reseeded.stderr[-3000:]
            assert "Ask pg_ctl whether the server runs" in reseeded.stdout
            clone.wait_replayed(primary.current_lsn())
            assert fingerprints(clone, TABLES) == fingerprints(primary, TABLES)
    finally:
        if clone.is_running():
            clone.stop("immediate")
        upstream.sql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active AND slot_name LIKE 'clone_%'")
