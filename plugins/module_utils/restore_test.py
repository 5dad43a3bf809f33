# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_verify's restore test: start a scratch copy of a copy, let it recover and check it with amcheck.

The copy itself is never started (that would change it). A ``cp -a`` of it (and of its tablespaces) is made next to
it, on the same filesystem, and started as the data directory's owner on its own unix socket directory, with no TCP
listener, archiving off and ``trust`` on that private socket only.

Recovery: ``recovery.signal`` with a ``restore_command`` reading the copy's pg_wal (or ``wal_dir``) and no recovery
target. ``recovery_target = 'immediate'`` is avoided on purpose: it stops only before the record after the
consistency point (or after a commit), so a copy whose WAL ends exactly at the backup's end fails with
``recovery ended before configured recovery target was reached`` although it is good. Without a target, recovery
replays all the WAL there is, then promotes the scratch copy (on a new timeline, in the scratch copy only): the
backup is proven restorable when that happened and the backup end was reached.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Optional

from .errors import PgBackupError
from .tablespace_map import format_tablespace_map, parse_tablespace_map

LOG_PATTERNS = (
    "starting backup recovery",
    "redo starts at",
    "consistent recovery state reached at",
    "redo done at",
    "selected new timeline ID",
    "archive recovery complete",
    "database system is ready to accept connections",
    "FATAL",
    "PANIC",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


MAX_SOCKET_PATH = 107  # sizeof(sun_path) - 1 on Linux


class RestoreTest:
    def __init__(self, data_dir: str, *, major: int, bindir: str, wal_dir: str, tablespaces: dict, scratch_dir: Optional[str], port: Optional[int],
                 timeout: int) -> None:  # fmt: skip
        self.data_dir = data_dir
        self.major = major
        self.bindir = bindir
        self.wal_dir = wal_dir
        self.tablespaces = tablespaces
        self.port = port or free_port()
        self.timeout = timeout
        info = os.stat(data_dir)
        self.uid, self.gid = info.st_uid, info.st_gid
        self.user = pwd.getpwuid(self.uid).pw_name
        self.own_scratch = scratch_dir is None
        if scratch_dir is None:
            scratch_dir = tempfile.mkdtemp(prefix=".pgbackup-restore-test-", dir=os.path.dirname(os.path.abspath(data_dir)))
        else:
            os.makedirs(scratch_dir, exist_ok=True)
            if os.listdir(scratch_dir):
                raise PgBackupError(f"restore_test_dir {scratch_dir} is not empty: give an empty or new directory", path=scratch_dir)
        self.scratch = os.path.abspath(scratch_dir)
        os.chown(self.scratch, self.uid, self.gid)
        os.chmod(self.scratch, 0o700)
        self.pgdata = os.path.join(self.scratch, "data")
        self.sockdir = os.path.join(self.scratch, "socket")
        # A unix socket's path holds at most 107 bytes; below a deep copy the server would fail to start with only
        # "could not create any Unix-domain sockets". The socket then goes to a short private directory instead.
        self.short_sockdir = len(os.path.join(self.sockdir, f".s.PGSQL.{self.port}.lock")) > MAX_SOCKET_PATH
        self.log = os.path.join(self.scratch, "postgres.log")
        self.started = False

    def as_owner(self, argv: list, timeout: int, check: bool = False) -> subprocess.CompletedProcess:
        if os.geteuid() == 0 and self.uid != 0:
            argv = ["runuser", "-u", self.user, "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)

    def prepare(self) -> None:
        subprocess.run(["cp", "-a", self.data_dir, self.pgdata], check=True, capture_output=True)
        if self.short_sockdir:
            self.sockdir = tempfile.mkdtemp(prefix="pgbr-")
        else:
            os.mkdir(self.sockdir, 0o700)
        os.chown(self.sockdir, self.uid, self.gid)
        mapping = {}
        for oid, path in self.tablespaces.items():
            target = os.path.join(self.scratch, f"tablespace-{oid}")
            subprocess.run(["cp", "-a", os.path.realpath(path), target], check=True, capture_output=True)
            mapping[oid] = target
            link = os.path.join(self.pgdata, "pg_tblspc", oid)
            if os.path.lexists(link):
                if os.path.islink(link):
                    os.unlink(link)
                else:
                    shutil.rmtree(link)
            os.symlink(target, link)
            os.lchown(link, self.uid, self.gid)
        map_path = os.path.join(self.pgdata, "tablespace_map")
        if os.path.exists(map_path):
            with open(map_path, "rb") as handle:
                entries = parse_tablespace_map(handle.read(), major_version=self.major)
            with open(map_path, "w", encoding="utf-8", errors="surrogateescape") as handle:
                handle.write(format_tablespace_map([(oid, mapping.get(str(oid), path)) for oid, path in entries], major_version=self.major))
        for name in ("standby.signal", "postmaster.pid"):
            path = os.path.join(self.pgdata, name)
            if os.path.exists(path):
                os.unlink(path)
        settings = {
            "port": str(self.port),
            "listen_addresses": "",
            "unix_socket_directories": self.sockdir,
            "archive_mode": "off",
            "restore_command": f'cp "{self.wal_dir}/%f" "%p"',
            "recovery_target": "",
            "recovery_target_lsn": "",
            "recovery_target_time": "",
            "recovery_target_xid": "",
            "recovery_target_name": "",
            "recovery_target_timeline": "latest",
            "primary_conninfo": "",
            "primary_slot_name": "",
            "hot_standby": "on",
            "logging_collector": "off",
            "hba_file": os.path.join(self.scratch, "pg_hba.conf"),
            "ident_file": os.path.join(self.scratch, "pg_ident.conf"),
        }
        with open(os.path.join(self.pgdata, "postgresql.auto.conf"), "a", encoding="utf-8") as handle:
            handle.write("\n# pgbackup.lowlevel.backup_verify restore test\n")
            handle.writelines(f"{key} = {_quote(value)}\n" for key, value in settings.items())
        for name, text in (("pg_hba.conf", "local all all trust\n"), ("pg_ident.conf", ""), ("data/recovery.signal", "")):
            path = os.path.join(self.scratch, name)
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chown(path, self.uid, self.gid)
            os.chmod(path, 0o600)

    def sql(self, query: str, dbname: str = "postgres") -> list:
        import psycopg2  # only the restore test needs it

        conn = psycopg2.connect(host=self.sockdir, port=self.port, user=self.user, dbname=dbname, connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(query)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def log_excerpt(self) -> list:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as handle:
                lines = handle.read().splitlines()
        except FileNotFoundError:
            return []
        return [line for line in lines if any(p in line for p in LOG_PATTERNS)][-40:]

    def start(self) -> None:
        pg_ctl = os.path.join(self.bindir, "pg_ctl")
        proc = self.as_owner([pg_ctl, "-D", self.pgdata, "-l", self.log, "-w", "-t", str(self.timeout), "start"], self.timeout + 30)
        self.started = True
        if proc.returncode != 0:
            raise PgBackupError(f"the scratch copy did not start ({proc.returncode}): {(proc.stdout + proc.stderr).strip()[-1000:]}")

    def wait_promoted(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                rows = self.sql("SELECT pg_is_in_recovery(), r.backup_end_lsn::text, r.end_of_backup_record_required FROM pg_control_recovery() r")
                in_recovery, backup_end, required = rows[0]
                if not in_recovery:
                    return {"promoted": True, "backup_end_lsn": backup_end, "end_of_backup_record_required": required}
            except Exception as exc:  # noqa: BLE001 - psycopg2's errors: not accepting connections yet
                last = str(exc).strip()
                if "does not exist" in last and "database" in last:
                    raise PgBackupError(f"the scratch copy has no database 'postgres': {last}") from None
            if time.monotonic() > deadline:
                raise PgBackupError(f"the scratch copy did not finish recovery within {self.timeout} seconds")
            time.sleep(0.3)

    def amcheck(self) -> dict:
        tool = os.path.join(self.bindir, "pg_amcheck")
        if self.major >= 14 and os.access(tool, os.X_OK):
            proc = self.as_owner(
                [tool, "-h", self.sockdir, "-p", str(self.port), "-U", self.user, "--all", "--install-missing", "--heapallindexed"], self.timeout
            )
            output = (proc.stdout + proc.stderr).strip()
            return {"ran": True, "method": "pg_amcheck", "ok": proc.returncode == 0, "output": output[-4000:]}
        if not self.sql("SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck'"):
            return {"ran": False, "reason": "neither pg_amcheck nor the amcheck extension is available"}
        checked, failures = 0, []
        for (dbname,) in self.sql("SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname"):
            try:
                self.sql("CREATE EXTENSION IF NOT EXISTS amcheck", dbname)
                rows = self.sql(
                    "SELECT count(bt_index_check(c.oid, true)) FROM pg_class c JOIN pg_am a ON a.oid = c.relam "
                    "JOIN pg_index i ON i.indexrelid = c.oid WHERE a.amname = 'btree' AND c.relpersistence <> 't' AND i.indisvalid AND i.indisready",
                    dbname,
                )
                checked += rows[0][0]
            except Exception as exc:  # noqa: BLE001 - a corrupt index raises; report it
                failures.append(f"{dbname}: {str(exc).strip()}")
        return {"ran": True, "method": "bt_index_check", "ok": not failures, "indexes_checked": checked, "output": "\n".join(failures)}

    def stop(self) -> None:
        if self.started:
            self.as_owner([os.path.join(self.bindir, "pg_ctl"), "-D", self.pgdata, "-m", "fast", "-w", "stop"], 120)
            self.started = False

    def cleanup(self) -> None:
        if self.started:
            self.as_owner([os.path.join(self.bindir, "pg_ctl"), "-D", self.pgdata, "-m", "immediate", "-w", "stop"], 60)
            self.started = False
        if self.short_sockdir:
            shutil.rmtree(self.sockdir, ignore_errors=True)
        if self.own_scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
        else:
            for name in os.listdir(self.scratch):
                path = os.path.join(self.scratch, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)


def run_restore_test(data_dir: str, **kwargs) -> dict:
    """Run the test; returns the report (``ok``, ``problems``, log excerpt). Never raises for a copy that fails to restore."""
    started = time.monotonic()
    test = RestoreTest(data_dir, **kwargs)
    result: dict = {"ran": True, "port": test.port, "scratch_dir": test.scratch, "problems": []}
    try:
        test.prepare()
        test.start()
        result.update(test.wait_promoted())
        result["amcheck"] = test.amcheck()
        if result["amcheck"].get("ran") and not result["amcheck"]["ok"]:
            result["problems"].append(f"restore test: amcheck found corruption: {result['amcheck']['output'][-2000:]}")
        test.stop()
    except (PgBackupError, OSError, subprocess.SubprocessError) as exc:
        result["problems"].append(f"restore test failed: {exc}")
    finally:
        result["log"] = test.log_excerpt()
        test.cleanup()
    log = "\n".join(result["log"])
    fatal = [line for line in result["log"] if "FATAL:" in line or "PANIC:" in line]
    if result["problems"] and fatal:
        result["problems"][0] += f"; the server's log says: {fatal[-1].split(':  ', 1)[-1]}"
    consistent = re.search(r"consistent recovery state reached at ([0-9A-F]+/[0-9A-F]+)", log)
    result["consistent_at"] = consistent.group(1) if consistent else None
    redo = re.search(r"redo starts at ([0-9A-F]+/[0-9A-F]+)", log)
    result["redo_start"] = redo.group(1) if redo else None
    if not result["problems"] and consistent is None:
        result["problems"].append("restore test: the log does not say 'consistent recovery state reached'")
    result["ok"] = not result["problems"]
    result["seconds"] = round(time.monotonic() - started, 1)
    return result
