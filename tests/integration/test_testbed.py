"""The test bed itself: every major runs, standbys stream, namespace hosts answer ssh, nothing is left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest
import yaml

from .harness import pgbins, pgtools
from .harness.hosts import Network
from .harness.pgbins import ROOT, postgres_install
from .harness.testbed import Testbed, leftovers

# Where these tests run (conftest._skip_outside_its_majors): the test bed's own checks: the oldest, Debian's and the newest.
pytestmark = [pytest.mark.integration, pytest.mark.majors(13, 15, 18)]


def _eventually(check, what: str, timeout: float = 60) -> None:
    """Poll ``check`` until it is true; a deadline only turns a hang into a failure, it asserts nothing about speed."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_primary_and_standby_run_the_major(primary_standby, pg_major):
    primary, standby = primary_standby
    version = postgres_install(pg_major).version
    for cluster, in_recovery in ((primary, False), (standby, True)):
        rows = cluster.sql("SELECT current_setting('server_version_num')::int / 10000, split_part(version(), ' ', 2), pg_is_in_recovery()")
        assert rows == [(pg_major, version, in_recovery)]
        assert cluster.sql("SHOW data_checksums") == [("on",)]
        assert cluster.sql("SHOW fsync") == [("on",)]
    assert standby.sql("SELECT status, sender_host, sender_port FROM pg_stat_wal_receiver") == [("streaming", primary.host, primary.port)]
    assert (standby.name, "streaming") in primary.sql("SELECT application_name, state FROM pg_stat_replication")


def test_password_login_over_tcp_uses_scram(primary_standby):
    primary, standby = primary_standby
    assert primary.sql("SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'postgres'") == [("SCRAM-SHA-256$",)]
    for cluster in (primary, standby):
        with psycopg2.connect(connect_timeout=10, **cluster.conninfo()) as conn, conn.cursor() as cur:
            cur.execute("SELECT inet_server_addr()::text, inet_server_port()")
            assert cur.fetchone() == (f"{cluster.host}/32", cluster.port)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(connect_timeout=10, **primary.conninfo(password="wrong"))


def test_cascaded_standby_streams_from_the_standby(testbed, primary_standby):
    primary, standby = primary_standby
    cascaded = standby.make_standby(f"{standby.name}-cascaded{len(testbed.clusters)}")
    try:
        assert cascaded.sql("SELECT status, sender_port FROM pg_stat_wal_receiver") == [("streaming", standby.port)]
        assert (cascaded.name, "streaming") in standby.sql("SELECT application_name, state FROM pg_stat_replication")
        primary.sql("CREATE TABLE IF NOT EXISTS testbed_cascade_probe (id int)")
        cascaded.wait_replayed(primary.current_lsn())
        assert cascaded.sql("SELECT to_regclass('testbed_cascade_probe') IS NOT NULL") == [(True,)]
    finally:
        cascaded.stop()


def test_archive_and_wal_segment_size(testbed, pg_major):
    primary = testbed.new_primary(pg_major, wal_segsize=1)
    try:
        assert primary.sql("SHOW wal_segment_size") == [("1MB",)]
        primary.sql("CREATE TABLE testbed_archive_probe AS SELECT 1 AS id")
        segment = primary.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
        primary.sql("SELECT pg_switch_wal()")
        _eventually((primary.archive_dir / segment).is_file, f"{segment} was not archived")
        assert (primary.archive_dir / segment).stat().st_size == 1024 * 1024
        assert not list(primary.archive_dir.glob(".*.tmp"))
    finally:
        primary.stop()


# pgbench is the client bindir's, the same program whatever the server: the newest.
@pytest.mark.majors(18)
def test_load_runs_and_stops(testbed, primary_standby):
    primary = primary_standby[0]
    primary.pgbench_init(scale=1)
    before = primary.sql("SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'")[0][0]
    load = testbed.load(primary, seconds=120)
    _eventually(lambda: primary.sql("SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'")[0][0] > before + 50, "pgbench did not write")
    load.stop()
    assert load.returncode is not None
    _eventually(lambda: primary.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'") == [(0,)], "pgbench sessions remain")


def test_installs_ship_amcheck(pg_major, primary_standby):
    primary = primary_standby[0]
    assert postgres_install(pg_major).has_extension("amcheck")
    primary.sql("CREATE EXTENSION IF NOT EXISTS amcheck")
    if pg_major == 13:
        # 13's amcheck (1.2) has no verify_heapam, which Debian 15's pg_amcheck calls: check btrees in SQL instead.
        query = "SELECT count(bt_index_check(indexrelid)::text) FROM pg_index JOIN pg_class c ON c.oid = indexrelid WHERE c.relam = 403"
        assert primary.sql(query)[0][0] > 0  # one (void) row per btree index checked; corruption would raise
        return
    result = primary.client("pg_amcheck", "--database=postgres", "--heapallindexed", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _as_postgres(*argv, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(["runuser", "-u", "postgres", "--", *map(str, argv)], env=env, capture_output=True, text=True, check=False, **kw)


def test_each_majors_own_verifiers_pass_good_files_and_refuse_bad_ones(primary_standby, testbed, pg_major, tmp_path):
    """The tests' independent verifiers (harness/pgtools, support/restore_checks) are this major's own and can refuse:
    pg_verifybackup passes a base backup of the primary and refuses it with a changed byte or without its WAL;
    pg_checksums passes a fresh cluster and refuses it with a changed byte in a page."""
    primary = primary_standby[0]
    bindir = pgtools.tools_bindir(pg_major)
    work = testbed.scratch_dir(f"verifiers-{pg_major}")
    backup = work / "base"
    made = _as_postgres(bindir / "pg_basebackup", "-h", primary.socket_dir, "-p", primary.port, "-U", "postgres", "-D", backup, "-X", "stream", "-c", "fast")
    assert made.returncode == 0, made.stderr
    assert _as_postgres(bindir / "pg_verifybackup", "--version").stdout.split()[2].split(".")[0] == str(pg_major)
    good = _as_postgres(bindir / "pg_verifybackup", backup)
    assert good.returncode == 0, good.stdout + good.stderr
    (relation,) = primary.sql("SELECT pg_relation_filepath('pg_class')")[0]
    original = (backup / relation).read_bytes()
    (backup / relation).write_bytes(original[:100] + bytes([original[100] ^ 0xFF]) + original[101:])
    changed = _as_postgres(bindir / "pg_verifybackup", "--no-parse-wal", backup)
    assert changed.returncode != 0 and "checksum mismatch" in changed.stderr, changed.stderr
    (backup / relation).write_bytes(original)
    for segment in (backup / "pg_wal").glob("0*"):
        segment.unlink()
    no_wal = _as_postgres(bindir / "pg_verifybackup", backup)
    assert no_wal.returncode != 0 and "WAL parsing failed" in no_wal.stderr, no_wal.stderr

    fresh = work / "fresh"
    initdb = _as_postgres(postgres_install(pg_major).bindir / "initdb", "-D", fresh, "--data-checksums", "--no-sync", "-U", "postgres")
    assert initdb.returncode == 0, initdb.stderr
    clean = _as_postgres(bindir / "pg_checksums", "--check", "-D", fresh)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    catalog = fresh / "global" / "1262"  # pg_database: a shared catalog, the same file name on every major
    page = bytearray(catalog.read_bytes())
    page[200] ^= 0xFF
    catalog.write_bytes(bytes(page))
    bad = _as_postgres(bindir / "pg_checksums", "--check", "-D", fresh)
    assert bad.returncode != 0 and "checksum verification failed" in bad.stderr, bad.stdout + bad.stderr


def test_local_inventory_works_with_ansible(testbed, primary_standby, ansible_env, tmp_path):
    path = testbed.write_inventory(tmp_path / "inventory.yml")
    assert testbed.password not in path.read_text()
    secret = tmp_path / "group_vars" / "all" / "secret.yml"
    assert secret.stat().st_mode & 0o777 == 0o600
    clusters = yaml.safe_load(path.read_text())["all"]["hosts"]["db1"]["testbed_clusters"]
    assert {c["name"] for c in clusters} >= {primary_standby[0].name, primary_standby[1].name}
    _ansible_ping(path, ansible_env, "root")


def _ansible_ping(inventory: Path, env: dict, user: str) -> None:
    """`id -un` on every host through Ansible, as ``user`` (extra vars beat the inventory; local connections run as the controller user)."""
    argv = [str(ROOT / ".venv" / "bin" / "ansible"), "all", "-i", str(inventory), "-e", f"ansible_user={user}", "-m", "ansible.builtin.command", "-a", "id -un"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    hosts = yaml.safe_load(inventory.read_text())["all"]["hosts"]
    expected = "root" if "ansible_connection: local" in inventory.read_text() else user
    for name in hosts:
        assert f"{name} | CHANGED | rc=0 >>\n{expected}\n" in result.stdout + "\n", result.stdout


@pytest.mark.netns
def test_namespace_hosts_answer_ssh_as_root_and_postgres(netns_testbed, ansible_env, tmp_path):
    bed = netns_testbed
    addresses = {host.address for host in bed.hosts}
    assert len(addresses) == len(bed.hosts)
    for host in bed.hosts:
        for user in ("root", "postgres"):
            result = bed.ssh(host, ["sh", "-c", "id -un; ip -4 -o addr show dev eth0"], user=user)
            assert result.returncode == 0, result.stderr
            assert result.stdout.splitlines()[0] == user
            assert f" {host.address}/" in result.stdout
    inventory = bed.write_inventory(tmp_path / "inventory.yml")
    for user in ("root", "postgres"):
        _ansible_ping(inventory, ansible_env, user)


@pytest.mark.netns
def test_namespace_hosts_run_postgres_on_their_own_address(netns_testbed, pg_major):
    bed = netns_testbed
    primary = bed.new_primary(pg_major, host=bed.hosts[0])
    standby = primary.make_standby(f"pg{pg_major}-ns-standby", host=bed.hosts[1])
    cascaded = standby.make_standby(f"pg{pg_major}-ns-cascaded", host=bed.hosts[2])
    try:
        for cluster in (primary, standby, cascaded):
            with psycopg2.connect(connect_timeout=10, **cluster.conninfo()) as conn, conn.cursor() as cur:
                cur.execute("SELECT inet_server_addr()::text, current_setting('server_version_num')::int / 10000")
                assert cur.fetchone() == (f"{cluster.host}/32", pg_major)
        assert standby.sql("SELECT sender_host FROM pg_stat_wal_receiver") == [(primary.host,)]
        assert cascaded.sql("SELECT sender_host FROM pg_stat_wal_receiver") == [(standby.host,)]
        # Only its own address: the same port on another host's address is someone else (or nobody).
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(connect_timeout=5, **primary.conninfo(host=bed.hosts[2].address, port=primary.port + 100))
    finally:
        for cluster in (cascaded, standby, primary):
            cluster.stop()


def test_npm_install_is_verified_and_atomic(tmp_path, monkeypatch):
    monkeypatch.setattr(pgbins, "CACHE", tmp_path / "postgres")
    npm_version, integrity = pgbins.PINNED[13]
    half = tmp_path / "postgres" / npm_version
    (half / "native").mkdir(parents=True)  # an unpack interrupted before the rename: not complete, replaced
    root = pgbins._npm_install(npm_version, integrity)
    assert (root / ".complete").is_file()
    assert pgbins._version_of(root / "native" / "bin") == "13.23"
    assert not list((tmp_path / "postgres").glob(".unpack-*"))
    with pytest.raises(RuntimeError, match="integrity"):
        pgbins._npm_install(pgbins.PINNED[14][0], integrity)


def test_sandbox_up_and_down():
    sandbox = [sys.executable, "-m", "tests.integration.harness.sandbox"]
    directory = ROOT / "build" / f"sandbox-test-{os.getpid()}"  # not tmp_path: the postgres user cannot enter /tmp/pytest-of-root
    subprocess.run([*sandbox, "up", "--dir", str(directory), "--major", "15"], cwd=ROOT, check=True, capture_output=True, timeout=300)
    state = json.loads((directory / "state.json").read_text())
    inventory = yaml.safe_load((directory / "inventory.yml").read_text())
    groups = inventory["all"]["children"]
    assert set(groups) == {"primary", "standby", "backup_host", "new_replica"}  # local mode: the demo's backup and clone hosts too
    assert {"sandbox_login_host", "sandbox_login_port", "sandbox_login_user"} <= set(groups["standby"]["hosts"]["sandbox-standby"])
    clone = groups["new_replica"]["hosts"]["sandbox-clone"]
    assert clone["sandbox_login_port"] not in {groups[g]["hosts"][f"sandbox-{g}"]["sandbox_login_port"] for g in ("primary", "standby")}
    load = subprocess.run([*sandbox, "load", "--dir", str(directory), "--seconds", "30"], cwd=ROOT, check=True, capture_output=True, timeout=60)
    time.sleep(2)
    stopped = subprocess.run([*sandbox, "load", "--dir", str(directory), "--stop"], cwd=ROOT, check=True, capture_output=True, text=True, timeout=60)
    assert json.loads(stopped.stdout)["transactions"] > 0, (load.stdout, stopped.stdout)
    assert (directory / "group_vars" / "all" / "secret.yml").stat().st_mode & 0o777 == 0o600
    subprocess.run([*sandbox, "down", "--dir", str(directory)], cwd=ROOT, check=True, capture_output=True, timeout=300)
    assert leftovers(Path(state["run_dir"]), state["prefix"]) == []
    assert not (directory / "state.json").exists()
    directory.rmdir()  # down leaves only the empty directory it was given


@pytest.mark.netns
def test_teardown_leaves_nothing_behind():
    bed = Testbed("netns", hosts=("a", "b"))
    major = pgbins.selected_majors()[-1]
    primary = bed.new_primary(major, host=bed.hosts[0])
    primary.make_standby("standby", host=bed.hosts[1])
    primary.pgbench_init()
    bed.load(primary, seconds=60)
    # A server the code under test started on its own in the run dir (a restore, a clone) is stopped too.
    foreign, bindir = bed.scratch_dir("foreign"), postgres_install(major).bindir
    bed.hosts[1].run([str(bindir / "initdb"), "-D", str(foreign / "data"), "--no-sync", "-U", "postgres"], user="postgres")
    options = f"-p 5499 -k {foreign} -c listen_addresses=''"
    bed.hosts[1].run([str(bindir / "pg_ctl"), "-D", str(foreign / "data"), "-o", options, "-l", str(foreign / "log"), "-w", "start"], user="postgres")
    assert bed.leftovers(), "the probe must see a running test bed"
    bed.teardown()
    bed.teardown()
    assert bed.leftovers() == []


@pytest.mark.netns
def test_teardown_after_a_failed_setup(monkeypatch):
    seen = {}
    add_host = Network.add_host

    def add_host_then_fail(self, name):
        seen.update(run_dir=self.ssh_dir.parent, prefix=self.prefix)
        host = add_host(self, name)
        if len(self.hosts) == 2:
            raise RuntimeError("injected failure after the second host came up")
        return host

    monkeypatch.setattr(Network, "add_host", add_host_then_fail)
    with pytest.raises(RuntimeError, match="injected"):
        Testbed("netns", hosts=("a", "b", "c"))
    assert leftovers(seen["run_dir"], seen["prefix"]) == []


def test_run_base_is_safe_for_sshd_wherever_the_checkout_is(tmp_path):
    """A checkout below world-writable /tmp gets a run base sshd accepts keys under; a safe checkout keeps build/testbed."""
    from .harness.testbed import FALLBACK_BASE, _safe_for_sshd, default_run_base

    under_tmp = Path("/tmp") / tmp_path.name / "checkout"
    chosen = default_run_base(under_tmp)
    assert chosen.parent == FALLBACK_BASE and chosen != default_run_base(under_tmp / "other")
    assert _safe_for_sshd(chosen) and not _safe_for_sshd(under_tmp / "build" / "testbed")
    safe = Path("/var/lib") / "pgbt-probe" / "checkout"  # parents root's and 0755
    assert default_run_base(safe) == safe / "build" / "testbed"
    # And a whole namespace test bed comes up from such a base (sshd's StrictModes accepts the keys below it).
    bed = Testbed("netns", hosts=("a",), run_dir=chosen / "pgbtprobe")
    try:
        assert bed.ssh(bed.hosts[0], ["true"]).returncode == 0
    finally:
        bed.teardown()
