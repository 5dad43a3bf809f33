"""TLS through the roles' *_ssl_mode / *_ca_cert variables, on real PostgreSQL with certificates made here (a CA, a
server certificate for 127.0.0.1): a pair of its own where the login role is refused without TLS (pg_hba hostnossl
reject). standby_backup with verify-full and the right CA passes its preflight; without TLS, or with another CA, it is
refused before anything starts. replica_clone writes the same TLS settings into the clone's primary_conninfo, and the
clone's walsender on the upstream runs over TLS (pg_stat_ssl)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .conftest import spot_check
from .harness.cluster import chown_postgres
from .support.roles import check_mode_vars, check_run, nothing_happened, run_clone

pytestmark = [pytest.mark.integration]
USER = "pgbk_tls_only"


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(directory, name: str) -> None:
    key, crt = f"{name}.key", f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}", "-keyout", key, "-out", crt, cwd=directory)


def _server_certificate(directory, ca: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr", cwd=directory)
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial", "-days", "2",
             "-extfile", "san.ext", "-out", "server.crt", cwd=directory)  # fmt: skip


def _serve_tls(cluster, certs) -> None:
    """ssl on, with the certificate, and the test's login role refused over plain TCP (first pg_hba lines win)."""
    for name in ("server.crt", "server.key"):
        shutil.copy(certs / name, cluster.datadir / name)
        (cluster.datadir / name).chmod(0o600)
        chown_postgres(cluster.datadir / name)
    hba = cluster.datadir / "pg_hba.conf"
    hba.write_text(f"hostnossl all {USER} all reject\nhostnossl replication {USER} all reject\n" + hba.read_text())
    cluster.sql("ALTER SYSTEM SET ssl = on")
    cluster.sql("SELECT pg_reload_conf()")


@pytest.fixture
def tls_pair(testbed, pg_major, tmp_path):
    spot_check(pg_major, (13, 18), "libpq's TLS is the same everywhere; the oldest and newest show the roles pass it on")
    certs = testbed.scratch_dir(f"tls-certs-pg{pg_major}-{tmp_path.name}")  # the clone's walreceiver (postgres) reads the CA from here
    _make_ca(certs, "ca")
    _make_ca(certs, "other-ca")
    _server_certificate(certs, "ca")
    primary = testbed.new_primary(pg_major, name=f"pg{pg_major}-tls-primary")
    standby = primary.make_standby(f"pg{pg_major}-tls-standby")
    primary.sql(f"CREATE ROLE {USER} LOGIN SUPERUSER REPLICATION PASSWORD %s", (primary.password,))
    standby.wait_replayed(primary.current_lsn())
    for cluster in (primary, standby):
        _serve_tls(cluster, certs)
    yield primary, standby, certs
    for cluster in (standby, primary):
        testbed.discard(cluster)


def test_the_roles_connect_with_verify_full_and_refuse_what_does_not_verify(tls_pair, testbed, ansible_env, tmp_path, pg_major):
    primary, standby, certs = tls_pair
    state_dir = tmp_path / "keepers"
    dest = testbed.scratch_dir(f"tls-{pg_major}") / "backup"

    def check(**tls):
        extra = check_mode_vars(primary, standby, dest, state_dir, standby_backup_login_user=USER, **tls)
        return check_run(ansible_env, testbed, tmp_path, "standby_backup.yml", extra)

    good = check(standby_backup_ssl_mode="verify-full", standby_backup_ca_cert=str(certs / "ca.crt"))
    assert good.returncode == 0, good.stdout[-4000:]
    plain = check(standby_backup_ssl_mode="disable")
    # pg_hba's words: "SSL off" up to 13, "no encryption" from 14.
    assert plain.returncode != 0 and ("no encryption" in plain.stdout or "SSL off" in plain.stdout), plain.stdout[-3000:]
    wrong = check(standby_backup_ssl_mode="verify-full", standby_backup_ca_cert=str(certs / "other-ca.crt"))
    assert wrong.returncode != 0 and "certificate verify failed" in wrong.stdout, wrong.stdout[-3000:]
    nothing_happened(primary, standby, state_dir)


def test_a_clone_streams_over_tls_with_the_roles_settings(tls_pair, testbed, ansible_env, tmp_path, pg_major):
    spot_check(pg_major, (18,), "one clone shows primary_conninfo carries the TLS settings")
    primary, _standby, certs = tls_pair
    clone = testbed.empty_cluster(pg_major, name=f"pg{pg_major}-tls-clone")
    settings = f"-c listen_addresses={clone.host} -c port={clone.port} -c unix_socket_directories={clone.socket_dir}"
    extra = {
        "replica_clone_hosts": testbed.hosts[0].name,
        "replica_clone_upstream_host": primary.host,
        "replica_clone_upstream_port": primary.port,
        "replica_clone_upstream_data_dir": str(primary.datadir),
        "replica_clone_login_user": USER,
        "replica_clone_login_password": primary.password,
        "replica_clone_ssl_mode": "verify-full",
        "replica_clone_ca_cert": str(certs / "ca.crt"),
        "replica_clone_data_dir": str(clone.datadir),
        "replica_clone_state_dir": str(tmp_path / "keepers"),
        "replica_clone_application_name": clone.name,
        "replica_clone_pg_bindir": str(clone.pg.bindir),
        "replica_clone_pg_ctl_options": ["-o", settings],
        "replica_clone_log_file": str(clone.log_file),
        "replica_clone_address": clone.host,
        "replica_clone_port": clone.port,
        "replica_clone_timeout": 120,
    }
    inventory = testbed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    try:
        run = run_clone(ansible_env, inventory, extra)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
        conninfo = (clone.datadir / "postgresql.auto.conf").read_text()
        assert "sslmode=verify-full" in conninfo.replace("'", "") and str(certs / "ca.crt") in conninfo, conninfo
        rows = primary.sql("SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s ON s.pid = r.pid WHERE r.application_name = %s", (clone.name,))
        assert rows == [(True,)], rows
    finally:
        if clone.is_running():
            clone.stop("immediate")
