"""pgBackRest and Barman set up against the bench's primary and standby, with all their state in the test bed's run dir
(removed with it). Each ``setup()`` raises ``Unavailable`` with the reason when the peer cannot be had; the bench then
reports it as "not available: <why>"."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import psycopg2

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class Unavailable(Exception):
    pass


def as_postgres(argv: list, env: Optional[dict] = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """``argv`` as the postgres OS user with a clean environment (plus ``env``)."""
    variables = {"PATH": f"{PG_BIN}:/usr/bin:/bin", "LANG": "C.UTF-8", **(env or {})}
    wrapped = ["runuser", "-u", "postgres", "--", "env", "-i", *[f"{k}={v}" for k, v in variables.items()], *argv]
    return subprocess.run(wrapped, capture_output=True, text=True, timeout=timeout, check=False)


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def _own(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    shutil.chown(path, "postgres", "postgres")
    return path


class PgBackRest:
    """backup-standby: pg_backup_start/stop on the primary (pg1), files from the standby (pg2), both over their sockets
    (namespaces share the filesystem). The primary's archive_command also pushes into the repo from setup() on."""

    stanza = "bench"

    def __init__(self, run_dir: Path, primary, standby) -> None:
        self.dir = _own(run_dir / "pgbackrest")
        self.conf = self.dir / "pgbackrest.conf"
        self.primary, self.standby = primary, standby

    def cmd(self, *args: str) -> list:
        return ["pgbackrest", f"--config={self.conf}", f"--stanza={self.stanza}", *args]

    def setup(self) -> None:
        if not shutil.which("pgbackrest"):
            raise Unavailable("pgbackrest is not installed (scripts/install-bench-deps.sh could not install it)")
        for sub in ("repo", "log", "lock", "spool"):
            _own(self.dir / sub)
        p, s = self.primary, self.standby
        self.conf.write_text(
            f"[global]\nrepo1-path={self.dir}/repo\nrepo1-retention-full=1\nlog-path={self.dir}/log\nlock-path={self.dir}/lock\n"
            f"spool-path={self.dir}/spool\nlog-level-console=warn\nlog-level-file=info\ncompress-type=none\nstart-fast=y\n"
            f"backup-standby=y\narchive-timeout=300\n\n[{self.stanza}]\n"
            f"pg1-path={p.datadir}\npg1-port={p.port}\npg1-socket-path={p.socket_dir}\npg1-user=postgres\n"
            f"pg2-path={s.datadir}\npg2-port={s.port}\npg2-socket-path={s.socket_dir}\npg2-user=postgres\n"
        )
        shutil.chown(self.conf, "postgres", "postgres")
        original = p.settings()["archive_command"]
        push = " ".join(self.cmd("archive-push", "%p"))
        p.sql("ALTER SYSTEM SET archive_command = %s", (f"({original}) && {push}",))
        p.sql("SELECT pg_reload_conf()")
        for step in (self.cmd("stanza-create"), self.cmd("check")):
            res = as_postgres(step)
            if res.returncode != 0:
                raise Unavailable(f"`{' '.join(step[:1] + step[3:])}` failed: {(res.stderr or res.stdout).strip()[-300:]}")

    def backup(self, process_max: int) -> list:
        return self.cmd("--type=full", f"--process-max={process_max}", "backup")

    def last_backup(self) -> tuple:
        """(seconds in backup mode from its info: stop - start timestamps, whole seconds; bytes of WAL start..stop)."""
        res = as_postgres(self.cmd("--output=json", "info"))
        backup = json.loads(res.stdout)[0]["backup"][-1]
        mode = backup["timestamp"]["stop"] - backup["timestamp"]["start"]
        return float(mode), _lsn(backup["lsn"]["stop"]) - _lsn(backup["lsn"]["start"])

    def verify(self) -> str:
        res = as_postgres(self.cmd("verify"))
        return "pgbackrest verify OK" if res.returncode == 0 else f"pgbackrest verify FAILED: {res.stderr.strip()[-200:]}"

    def teardown(self) -> None:
        try:
            self.primary.sql("ALTER SYSTEM RESET archive_command")
            self.primary.sql("SELECT pg_reload_conf()")
        except psycopg2.Error as exc:  # the cluster may be gone already (Ctrl-C); the run dir goes with the test bed
            print(f"pgBackRest teardown: {exc}", file=sys.stderr)


class Barman:
    """backup_method=postgres against the standby (Barman runs pg_basebackup there), WAL by `barman receive-wal`
    (pg_receivewal from the standby under the slot "barman"), started by PID and recorded in the test bed's ledger."""

    server = "bench"

    def __init__(self, bed, primary, standby) -> None:
        self.bed = bed
        self.dir = _own(bed.run_dir / "barman")
        self.conf = self.dir / "barman.conf"
        self.primary, self.standby = primary, standby
        self.receiver = None
        self.env = {"HOME": str(self.dir)}

    def cmd(self, *args: str) -> list:
        return ["barman", "-c", str(self.conf), *args]

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return as_postgres(self.cmd(*args), env=self.env, timeout=timeout)

    def setup(self) -> None:
        if not shutil.which("barman"):
            raise Unavailable("barman is not installed (scripts/install-bench-deps.sh could not install it)")
        _own(self.dir / "home")
        p, s = self.primary, self.standby
        self.conf.write_text(
            f"[barman]\nbarman_user = postgres\nbarman_home = {self.dir}/home\nlog_file = {self.dir}/barman.log\nlog_level = INFO\n"
            f"minimum_redundancy = 0\n\n[{self.server}]\ndescription = bench: backup from the standby\n"
            f"conninfo = host={s.socket_dir} port={s.port} user=postgres dbname=postgres\n"
            f"streaming_conninfo = host={s.socket_dir} port={s.port} user=postgres\n"
            f"primary_conninfo = host={p.socket_dir} port={p.port} user=postgres dbname=postgres\n"
            f"backup_method = postgres\nstreaming_archiver = on\nslot_name = barman\ncreate_slot = auto\npath_prefix = {PG_BIN}\n"
            "immediate_checkpoint = true\n"
        )
        shutil.chown(self.conf, "postgres", "postgres")
        self.run("receive-wal", "--create-slot", self.server)
        argv = ["runuser", "-u", "postgres", "--", "env", f"HOME={self.dir}", f"PATH={PG_BIN}:/usr/bin:/bin", *self.cmd("receive-wal", self.server)]
        log = open(self.dir / "receive-wal.log", "w")
        self.receiver = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.bed.ledger.add("processes", {"pid": self.receiver.pid, "marker": str(self.conf), "what": "barman receive-wal"})
        time.sleep(3)
        p.sql("CHECKPOINT")
        self.run("switch-wal", "--force", "--archive", "--archive-timeout", "120", self.server)
        check = self.run("check", self.server)
        if check.returncode != 0:
            failed = [line.strip() for line in check.stdout.splitlines() if "FAILED" in line]
            raise Unavailable(f"`barman check` failed: {'; '.join(failed) or check.stderr.strip()[-300:]}")

    def backup(self) -> list:
        return self.cmd("-q", "backup", self.server)

    def last_backup_wal(self):
        res = self.run("-f", "json", "show-backup", self.server, "latest")
        try:
            data = json.loads(res.stdout)
        except ValueError:
            return None

        def find(obj, key):
            if isinstance(obj, dict):
                if key in obj:
                    return obj[key]
                for value in obj.values():
                    found = find(value, key)
                    if found is not None:
                        return found
            return None

        try:
            return _lsn(find(data, "end_lsn")) - _lsn(find(data, "begin_lsn"))
        except (AttributeError, TypeError, ValueError):
            return None

    def verify(self) -> str:
        res = self.run("verify-backup", self.server, "latest")
        return "barman verify-backup OK" if res.returncode == 0 else f"barman verify-backup FAILED: {res.stdout.strip()[-200:]}"

    def prune(self) -> None:
        """All backups but the newest (deleting the last would drop the WAL archive and fail the next `barman check`)."""
        ids = self.run("list-backups", "--minimal", self.server).stdout.split()
        for backup_id in ids[1:]:
            self.run("-q", "delete", self.server, backup_id)

    def teardown(self) -> None:
        if self.receiver and self.receiver.poll() is None:
            self.run("receive-wal", "--stop", self.server, timeout=30)
            try:
                self.receiver.wait(10)
            except subprocess.TimeoutExpired:
                self.receiver.terminate()
                self.receiver.wait(10)
        try:
            self.standby.sql("SELECT pg_drop_replication_slot('barman') FROM pg_replication_slots WHERE slot_name = 'barman' AND NOT active")
        except psycopg2.Error as exc:
            print(f"Barman teardown: {exc}", file=sys.stderr)
