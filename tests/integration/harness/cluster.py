"""A PostgreSQL cluster of the test bed, run as the postgres OS user on one of the hosts."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Optional

import psycopg2

from .hosts import Host
from .pgbins import PgInstall, client_bindir

OS_USER = "postgres"


def chown_postgres(path: Path) -> None:
    shutil.chown(path, OS_USER, OS_USER)


class Cluster:
    def __init__(self, *, name: str, pg: PgInstall, host: Host, port: int, base: Path, password: str, passfile: Path, role: str = "primary") -> None:
        self.name = name
        self.pg = pg
        self.major = pg.major
        self.host_obj = host
        self.host = host.address
        self.port = port
        self.base = base
        self.datadir = base / "data"
        self.socket_dir = base / "socket"
        self.archive_dir = base / "archive"
        self.log_file = base / "postgres.log"
        self.password = password
        self.passfile = passfile
        self.role = role
        self.upstream: Optional[Cluster] = None

    def __repr__(self) -> str:
        return f"<Cluster {self.name} pg{self.major} {self.role} {self.host}:{self.port}>"

    # --- running the binaries as postgres on the cluster's host -------------------------------------
    def _bin(self, tool: str) -> str:
        return str(self.pg.bindir / tool)

    def run(self, argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        return self.host_obj.run(argv, user=OS_USER, check=check, **kw)

    def initdb(self, wal_segsize: Optional[int] = None) -> None:
        for path in (self.base, self.socket_dir, self.archive_dir):
            path.mkdir(mode=0o755, parents=True, exist_ok=True)
            chown_postgres(path)
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        chown_postgres(pwfile)
        argv = [self._bin("initdb"), "-D", str(self.datadir), "--data-checksums", "--no-sync", "-U", OS_USER, f"--pwfile={pwfile}"]
        argv += ["--auth-local=trust", "--auth-host=md5", "--encoding=UTF8", "--locale=C"]
        if wal_segsize:
            argv.append(f"--wal-segsize={wal_segsize}")
        self.run(argv)
        pwfile.unlink()
        with open(self.datadir / "pg_hba.conf", "a") as hba:
            # md5 accepts scram-sha-256 verifiers too (14+ store those by default, 13 stores md5).
            hba.write("host all all 10.231.0.0/16 md5\nhost replication all 10.231.0.0/16 md5\n")
        self.configure(
            wal_level="replica",
            archive_mode="on",
            archive_command=f"test ! -f {self.archive_dir}/%f && cp %p {self.archive_dir}/%f",
            hot_standby="on",
            max_wal_senders=10,
            max_replication_slots=10,
            wal_keep_size="128MB",
            shared_buffers="32MB",
            log_line_prefix="%m [%p] %a ",
            log_min_messages="info",
            lc_messages="C",
        )

    def configure(self, **settings) -> None:
        """Append settings to postgresql.auto.conf (the last occurrence wins) and point the cluster at its host."""
        settings.setdefault("listen_addresses", self.host)
        settings.setdefault("port", self.port)
        settings.setdefault("unix_socket_directories", str(self.socket_dir))
        with open(self.datadir / "postgresql.auto.conf", "a") as conf:
            for key, value in settings.items():
                text = str(value).replace("'", "''")
                conf.write(f"{key} = '{text}'\n")

    def start(self) -> None:
        self.run([self._bin("pg_ctl"), "-D", str(self.datadir), "-l", str(self.log_file), "-w", "-t", "120", "start"])

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

    # --- SQL ----------------------------------------------------------------------------------------
    def connect(self, dbname: str = "postgres"):
        """A psycopg2 connection over the unix socket (files are shared with every namespace host)."""
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
        info = {"host": self.host, "port": self.port, "user": OS_USER, "password": self.password, "dbname": "postgres"}
        info.update(overrides)
        return info

    # --- replication --------------------------------------------------------------------------------
    def make_standby(self, name: str, host: Optional[Host], port: int, base: Path) -> Cluster:
        """A streaming standby of this cluster made by a cold copy of its stopped data directory."""
        standby = Cluster(
            name=name, pg=self.pg, host=host or self.host_obj, port=port, base=base, password=self.password, passfile=self.passfile, role="standby"
        )
        for path in (standby.base, standby.socket_dir, standby.archive_dir):
            path.mkdir(parents=True, exist_ok=True)
            chown_postgres(path)
        self.stop()
        try:
            self.run(["cp", "-a", str(self.datadir), str(standby.datadir)])
        finally:
            self.start()
        standby.configure(
            archive_command=f"test ! -f {standby.archive_dir}/%f && cp %p {standby.archive_dir}/%f",
            primary_conninfo=f"host={self.host} port={self.port} user={OS_USER} passfile={self.passfile} application_name={name}",
        )
        signal = standby.datadir / "standby.signal"
        signal.touch()
        chown_postgres(signal)
        standby.upstream = self
        standby.start()
        standby.wait_streaming()
        return standby

    def wait_streaming(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.sql("SELECT status FROM pg_stat_wal_receiver")
            if rows and rows[0][0] == "streaming":
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self} is not streaming after {timeout}s; see {self.log_file}")

    def pgbench_init(self, scale: int = 1) -> None:
        self.client("pgbench", "-i", "-q", "-s", str(scale))

    def client(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run one of Debian 15's client tools against this cluster over its socket."""
        argv = [str(client_bindir() / tool), "-h", str(self.socket_dir), "-p", str(self.port), "-U", OS_USER, *args]
        env = dict(os.environ, PGDATABASE="postgres")
        return subprocess.run(argv, check=check, capture_output=True, text=True, env=env)
