"""The test bed itself: every major runs, standbys stream, namespace hosts answer ssh, nothing is left behind."""

from __future__ import annotations

import time

import pytest

from .harness.testbed import Testbed, leftovers

pytestmark = pytest.mark.integration


def test_primary_and_standby_run_the_major(primary_standby, pg_major):
    primary, standby = primary_standby
    for cluster, in_recovery in ((primary, False), (standby, True)):
        rows = cluster.sql("SELECT current_setting('server_version_num')::int / 10000, pg_is_in_recovery(), current_setting('data_checksums')")
        assert rows == [(pg_major, in_recovery, "on")]
    assert standby.sql("SELECT status FROM pg_stat_wal_receiver") == [("streaming",)]
    assert primary.sql("SELECT application_name, state FROM pg_stat_replication") == [(standby.name, "streaming")]


def test_cascaded_standby_streams_from_the_standby(testbed, primary_standby):
    primary, standby = primary_standby
    cascaded = testbed.new_standby(standby)
    try:
        assert standby.sql("SELECT application_name, state FROM pg_stat_replication") == [(cascaded.name, "streaming")]
        primary.sql("CREATE TABLE IF NOT EXISTS cascade_probe (id int)")
        lsn = primary.sql("SELECT pg_current_wal_lsn()::text")[0][0]
        deadline = time.monotonic() + 30
        while cascaded.sql("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))[0][0] is not True:
            assert time.monotonic() < deadline, "the cascaded standby did not replay the primary's change"
            time.sleep(0.1)
        assert cascaded.sql("SELECT to_regclass('cascade_probe') IS NOT NULL") == [(True,)]
    finally:
        cascaded.stop()


def test_load_writes_and_stops(testbed, primary_standby):
    primary, _ = primary_standby
    primary.pgbench_init(scale=1)
    before = primary.sql("SELECT sum(xact_commit) FROM pg_stat_database")[0][0]
    load = testbed.load(primary, seconds=60)
    time.sleep(2)
    output = load.stop()
    assert load.proc.returncode is not None
    assert primary.sql("SELECT sum(xact_commit) FROM pg_stat_database")[0][0] > before + 10, output


def test_namespace_hosts_answer_ssh_and_postgres(netns_testbed):
    bed = netns_testbed
    for user in ("root", "postgres"):
        for host in bed.hosts:
            result = bed.ssh(host, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"], user=user)
            assert result.returncode == 0, result.stderr
            assert f" {host.address}/" in result.stdout
            assert bed.ssh(host, ["id", "-un"], user=user).stdout.strip() == user
    primary = bed.new_primary(15, host=bed.hosts[0])
    standby = bed.new_standby(primary, host=bed.hosts[1])
    import psycopg2

    for cluster in (primary, standby):
        with psycopg2.connect(connect_timeout=5, **cluster.conninfo()) as conn, conn.cursor() as cur:
            cur.execute("SELECT inet_server_addr()::text")
            assert cur.fetchone()[0] in (cluster.host, f"{cluster.host}/32")
    assert standby.sql("SELECT sender_host FROM pg_stat_wal_receiver") == [(primary.host,)]


def test_teardown_leaves_nothing_behind():
    bed = Testbed("netns", hosts=("a", "b"))
    primary = bed.new_primary(15, host=bed.hosts[0])
    bed.new_standby(primary, host=bed.hosts[1])
    primary.pgbench_init()
    bed.load(primary, seconds=30)
    run_dir, prefix = bed.run_dir, bed.network.prefix
    assert leftovers(run_dir, prefix), "the probe must see a running test bed"
    bed.teardown()
    bed.teardown()
    assert leftovers(run_dir, prefix) == []
