"""backup_start through pgbouncer (Debian's package), for real: transaction pooling is refused before any backup starts
(it would run the start, the hold and the stop in different server sessions); session pooling works end to end."""

from __future__ import annotations

import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.backup_label import parse_backup_label
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import parse_lsn
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.session import backup_session

from .conftest import spot_check

pytestmark = pytest.mark.integration

PGBOUNCER = Path("/usr/sbin/pgbouncer")
# Backends that are running (or last ran) a backup start, other than this query's own.
STARTS = "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND (query ILIKE '%pg_backup_start%' OR query ILIKE '%pg_start_backup%')"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def pgbouncer(testbed, cluster, mode: str):
    """pgbouncer in ``mode`` on 127.0.0.1, in front of ``cluster`` (through its Unix socket, as postgres)."""
    if not PGBOUNCER.exists():
        pytest.fail(f"{PGBOUNCER} is missing: scripts/install-system-deps.sh installs pgbouncer")
    work = testbed.scratch_dir(f"pgbouncer-{cluster.name}-{mode}")
    port = _free_port()
    conf = work / "pgbouncer.ini"
    conf.write_text(
        "[databases]\n"
        f"postgres = host={cluster.socket_dir} port={cluster.port} user=postgres\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = any\npool_mode = {mode}\ndefault_pool_size = 4\n"
        # libpq's options (statement_timeout=0, keepalives) are not a parameter pgbouncer passes on
        "ignore_startup_parameters = options,extra_float_digits\n"
        f"logfile = {work / 'pgbouncer.log'}\npidfile = {work / 'pgbouncer.pid'}\n"
    )
    conf.chmod(0o644)
    proc = subprocess.Popen(["runuser", "-u", "postgres", "--", str(PGBOUNCER), str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (work / "pgbouncer.log").read_text(errors="replace") if (work / "pgbouncer.log").exists() else ""
                    pytest.fail(f"pgbouncer did not listen on 127.0.0.1:{port}: {log[-2000:]}")
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _params(port: int, password: str) -> dict:
    return {"login_host": "127.0.0.1", "login_port": port, "login_user": "postgres", "login_password": password, "login_db": "postgres", "connect_params": {}}


def _start(params: dict, state_dir: Path, backup_id: str) -> dict:
    state_dir.mkdir(mode=0o700, exist_ok=True)
    options = {"label": f"pooler {backup_id}", "fast": True, "max_duration": 0, "timeout": 60}
    return backup_session.start_backup(params, backup_id=backup_id, state_dir=str(state_dir), **options)


def test_transaction_pooling_is_refused_before_a_backup_starts(primary_standby, testbed, tmp_path, pg_major):
    spot_check(pg_major, (13, 18), "the pooler check runs before any version-specific SQL")
    primary, _standby = primary_standby
    with pgbouncer(testbed, primary, "transaction") as port:
        params = _params(port, primary.password)
        with pytest.raises(PgBackupError) as refused:
            _start(params, tmp_path / "keepers", "tx")
        message = refused.value.message
        assert f"host=127.0.0.1, port={port}" in message and "goes through a connection pooler in transaction or statement pooling mode" in message, message
        assert "two connections were both served by server process" in message and "pool_mode = session" in message, message
        assert primary.sql(STARTS) == [(0,)], "no backup was started in a pooled server process"
        # check mode meets the same refusal
        with pytest.raises(PgBackupError) as checked:
            backup_session.check_only(params, "tx-check")
        assert "goes through a connection pooler in transaction or statement pooling mode" in checked.value.message


def test_session_pooling_backs_up_end_to_end(primary_standby, testbed, tmp_path, pg_major):
    """The negative control of the refusal above: the same check passes a pool that keeps one server process per client."""
    spot_check(pg_major, (13, 18), "the pooler check runs before any version-specific SQL")
    primary, _standby = primary_standby
    with pgbouncer(testbed, primary, "session") as port:
        params = _params(port, primary.password)
        assert backup_session.check_only(params, "sess-check")["server_role"] == "primary"
        started = _start(params, tmp_path / "keepers", "sess")
        primary.sql("CREATE TABLE IF NOT EXISTS pooled_t AS SELECT 1 AS x")
        stopped = backup_session.stop_backup(backup_id="sess", state_dir=str(tmp_path / "keepers"), state="stopped", wait_for_archive=True, timeout=60)
    label = parse_backup_label(stopped["backup_label"], seg_size=16 << 20)
    assert label.label == "pooler sess" and label.start_lsn == parse_lsn(started["start_lsn"])
    assert parse_lsn(stopped["stop_lsn"]) >= label.start_lsn
