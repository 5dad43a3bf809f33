"""A PostgreSQL cluster of the test bed, run as the postgres OS user on one of the hosts."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import psycopg2

from .hosts import Host
from .pgbins import PgInstall, client_bindir

if TYPE_CHECKING:
    from .testbed import Testbed

OS_USER = "postgres"
CONF = "testbed.conf"  # included from postgresql.conf; ALTER SYSTEM (postgresql.auto.conf) still overrides it


def chown_postgres(path: Path) -> None:
    shutil.chown(path, OS_USER, OS_USER)


def write_private(path: Path, text: str) -> None:
    """Write a postgres-owned 0600 file that is never readable by others, not even between write and chmod."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)  # an existing file keeps its mode through O_CREAT
        handle.write(text)
    chown_postgres(path)


class Cluster:
    def __init__(self, testbed: Testbed, *, name: str, pg: PgInstall, node: Host, port: int, role: str = "primary", upstream: Optional[Cluster] = None) -> None:
        self.testbed = testbed
        self.name = name
        self.pg = pg
        self.major = pg.major
        self.node = node  # the Host it runs on
        self.host = node.address  # the address it listens on
        self.port = port
        self.role = role
        self.upstream = upstream
        self.base = testbed.run_dir / name
        self.datadir = self.base / "data"
        self.socket_dir = self.base / "socket"
        self.archive_dir = self.base / "archive"
        self.log_file = self.base / "postgres.log"
        self.password = testbed.password
        self.passfile = testbed.passfile
        if len(str(self.socket_dir / f".s.PGSQL.{port}")) > 107:
            raise RuntimeError(f"unix socket path under {self.socket_dir} is too long; set PGBT_RUN_BASE to a shorter directory")

    host_obj = property(lambda self: self.node)  # the name the first version of the harness used

    def __repr__(self) -> str:
        return f"<Cluster {self.name} pg{self.major} {self.role} {self.host}:{self.port}>"

    # --- files and settings -----------------------------------------------------------------------
    def _bin(self, tool: str) -> str:
        return str(self.pg.bindir / tool)

    def run(self, argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        """Run a command as postgres on the cluster's host."""
        return self.node.run(argv, user=OS_USER, check=check, **kw)

    def _make_dirs(self) -> None:
        for path in (self.base, self.socket_dir, self.archive_dir):
            path.mkdir(mode=0o750, parents=True, exist_ok=True)
            chown_postgres(path)
        self.base.chmod(0o755)  # so root-run client tools and other users of the run dir can look in

    def settings(self) -> dict[str, Any]:
        archive = self.archive_dir
        # Never overwrite an archived segment; accept a re-archive of an identical one (after a crash); copy under a
        # temporary name and rename, so a reader of the archive never sees half a segment.
        archive_command = f"if test -f {archive}/%f; then cmp -s %p {archive}/%f; else cp %p {archive}/.%f.tmp && mv {archive}/.%f.tmp {archive}/%f; fi"
        settings: dict[str, Any] = {
            "listen_addresses": self.host,
            "port": self.port,
            "unix_socket_directories": str(self.socket_dir),
            "cluster_name": f"{self.testbed.prefix}/{self.name}",  # in the title of every server process
            "wal_level": "replica",
            "archive_mode": "on",
            "archive_command": archive_command,
            "hot_standby": "on",
            "max_wal_senders": 10,
            "max_replication_slots": 10,
            "wal_keep_size": "256MB",
            "max_connections": 50,
            "shared_buffers": "32MB",
            "password_encryption": "scram-sha-256",
            "log_line_prefix": "%m [%p] %q%a ",
            "log_checkpoints": "on",
            "lc_messages": "C",
        }
        if self.upstream is not None:
            up = self.upstream
            settings["primary_conninfo"] = f"host={up.host} port={up.port} user={OS_USER} passfile={self.passfile} application_name={self.name}"
        return settings

    def write_settings(self) -> None:
        """(Re)write this cluster's own settings file in its data directory."""
        lines = []
        for key, value in self.settings().items():
            text = str(value).replace("'", "''")
            lines.append(f"{key} = '{text}'\n")
        self._write(self.datadir / CONF, "".join(lines))

    def write_hba(self) -> None:
        lines = ["local all all trust\n", "local replication all trust\n"]
        for network in self.testbed.client_networks():
            lines += [f"host all all {network} scram-sha-256\n", f"host replication all {network} scram-sha-256\n"]
        self._write(self.datadir / "pg_hba.conf", "".join(lines))

    def _write(self, path: Path, text: str) -> None:
        write_private(path, text)

    def initdb(self, wal_segsize: Optional[int] = None) -> None:
        self._make_dirs()
        pwfile = self.base / "pwfile"
        self._write(pwfile, self.password + "\n")
        argv = [self._bin("initdb"), "-D", str(self.datadir), "-U", OS_USER, f"--pwfile={pwfile}", "--data-checksums", "--no-sync"]
        # scram-sha-256 here also makes 13 (md5 by default) store a SCRAM verifier for the password.
        argv += ["--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C"]
        if wal_segsize:
            argv.append(f"--wal-segsize={wal_segsize}")
        try:
            self.run(argv)
        finally:
            pwfile.unlink()
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write(f"\ninclude = '{CONF}'\n")
        self.write_settings()
        self.write_hba()

    # --- running ----------------------------------------------------------------------------------
    def start(self) -> None:
        argv = [self._bin("pg_ctl"), "-D", str(self.datadir), "-l", str(self.log_file), "-w", "-t", "120", "start"]
        result = self.run(argv, check=False)
        self.testbed.ledger.set_cluster_pid(self.datadir, self.postmaster_pid())
        if result.returncode != 0:
            raise RuntimeError(f"{self} did not start: {result.stdout}{result.stderr}\n--- {self.log_file}:\n{self.log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        self.run([self._bin("pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "-t", "120", "stop"])

    def restart(self) -> None:
        self.stop()
        self.start()

    def is_running(self) -> bool:
        return self.run([self._bin("pg_ctl"), "-D", str(self.datadir), "status"], check=False).returncode == 0

    def postmaster_pid(self) -> Optional[int]:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "".join(self.log_file.read_text(errors="replace").splitlines(keepends=True)[-lines:])
        except OSError:
            return ""

    # --- SQL ----------------------------------------------------------------------------------------
    def connect(self, dbname: str = "postgres"):
        """A psycopg2 connection over the unix socket (a file, so it works across namespaces), autocommit."""
        conn = psycopg2.connect(host=str(self.socket_dir), port=self.port, user=OS_USER, dbname=dbname, application_name="pgbackup-testbed")
        conn.autocommit = True
        return conn

    def sql(self, query: str, params=None, dbname: str = "postgres") -> list[tuple]:
        conn = self.connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def conninfo(self, **overrides) -> dict:
        """TCP connection parameters (the password included: never print them)."""
        info = {"host": self.host, "port": self.port, "user": OS_USER, "password": self.password, "dbname": "postgres"}
        info.update(overrides)
        return info

    def client(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run one of Debian 15's client tools (psql, pgbench, pg_amcheck...) against this cluster over its socket."""
        argv = [str(client_bindir() / tool), "-h", str(self.socket_dir), "-p", str(self.port), "-U", OS_USER, *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        return subprocess.run(argv, check=check, capture_output=True, text=True, env=dict(env, PGDATABASE="postgres"))

    def pgbench_init(self, scale: int = 1) -> None:
        self.client("pgbench", "-i", "-q", "-s", str(scale))

    # --- replication --------------------------------------------------------------------------------
    def make_standby(self, name: str, host: Optional[Host] = None) -> Cluster:
        """A streaming standby of this cluster (a cold copy), on ``host`` (default: this cluster's host)."""
        return self.testbed.new_standby(self, host=host, name=name)

    def current_lsn(self) -> str:
        """Where this server's WAL is: the insert position on a primary, the replay position on a standby."""
        query = "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text"
        return self.sql(query)[0][0]

    def wait_streaming(self, timeout: float = 60) -> None:
        self._wait(lambda: self.sql("SELECT status FROM pg_stat_wal_receiver") == [("streaming",)], timeout, "streaming")

    def wait_replayed(self, lsn: Optional[str] = None, timeout: float = 60) -> None:
        """Wait until this standby replayed ``lsn`` (default: its upstream's current position)."""
        lsn = lsn or self.upstream.current_lsn()
        self._wait(lambda: self.sql("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)) == [(True,)], timeout, f"replayed {lsn}")

    def _wait(self, done, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self} not {what} after {timeout}s; see {self.log_file}:\n{self.log_tail()}")
            time.sleep(0.1)
