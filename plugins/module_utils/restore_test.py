# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_verify's restore test: start a scratch server on a copy, stop it at the backup's end point, check it with amcheck.

The copy itself is never started nor written. As root the scratch server runs on an overlay (overlay.py: the copy and
each tablespace read-only below, a scratch directory above), else on a ``cp -a`` of it (``method: copy``). It runs as
the data directory's owner on its own unix socket directory, with no TCP listener, archiving off and ``trust`` on that
private socket only.

Recovery stops at the end point, not at the end of the WAL: replaying everything there is can repair a copy whose
files are from mixed times (a page newer than the end point is overwritten by later WAL) and so prove nothing. The
scratch server is a hot standby (``standby.signal``, no ``primary_conninfo``, ``restore_command`` reading the copy's
WAL) with ``recovery_target_lsn`` = the end point, ``recovery_target_inclusive = off`` and action ``pause``: it stops
before the first record starting at or after the end point (xlogrecovery.c recoveryStopsBefore). A standby whose WAL
ends exactly there waits for more instead of failing, which is why ``recovery_target = 'immediate'`` (or archive
recovery with a target) is not used: those fail a good copy whose WAL ends at the end point. The end point is the stop
LSN for a backup from a primary, the copied pg_control's minRecoveryPoint for one from a standby (InitWalRecovery's
backupFromStandby handling). There amcheck runs with heapallindexed, read-only; then, with ``promote``, the server is
promoted to show it becomes read-write.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import tempfile
import time
from typing import Optional

from . import processes
from .errors import PgBackupError
from .lsn import format_lsn, parse_lsn
from .overlay import mount_overlay, tree_bytes, unmount
from .tablespace_map import format_tablespace_map, parse_tablespace_map

LOG_PATTERNS = (
    "starting backup recovery",
    "redo starts at",
    "consistent recovery state reached at",
    "redo done at",
    "selected new timeline ID",
    "archive recovery complete",
    "database system is ready to accept connections",
    "recovery stopping before",
    "pausing at the end of recovery",
    "recovery has paused",
    "invalid record",
    "incorrect resource manager data checksum",
    "unexpected pageaddr",
    "invalid magic number",
    "record with incorrect prev-link",
    "contrecord",
    "FATAL",
    "PANIC",
)


NOT_TROUBLE = ("the database system is starting up", "not yet accepting connections", "is not accepting connections")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


MAX_SOCKET_PATH = 107  # sizeof(sun_path) - 1 on Linux


class RestoreTest:
    def __init__(self, data_dir: str, *, major: int, bindir: str, wal_dir: str, tablespaces: dict, scratch_dir: Optional[str], port: Optional[int],
                 timeout: int, end_lsn: int, promote: bool = True) -> None:  # fmt: skip
        self.data_dir = data_dir
        self.end_lsn = end_lsn
        self.promote = promote
        self.method = "copy"
        self.method_note = None
        self.mounts: list = []
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

    def as_owner(self, argv: list, timeout: int, check: bool = False) -> processes.CompletedProcess:
        if os.geteuid() == 0 and self.uid != 0:
            argv = ["runuser", "-u", self.user, "--", *argv]
        return processes.run(argv, text=True, timeout=timeout, check=check)

    def place(self, source: str, target: str, name: str) -> None:
        """target: a writable view of source - an overlay when it mounts (the first decides for all), else a copy."""
        if self.method == "overlay" or self.method_note is None:
            upper, work = os.path.join(self.scratch, f"upper-{name}"), os.path.join(self.scratch, f"work-{name}")
            why = mount_overlay(os.path.realpath(source), upper, work, target, self.uid, self.gid)
            if why is None:
                self.mounts.append(target)
                self.method = "overlay"
                self.method_note = "overlay"
                return
            if self.method == "overlay":
                raise PgBackupError(f"overlay of {source} failed although the data directory's worked: {why}")
            self.method_note = why
            for path in (target, upper, work):
                shutil.rmtree(path, ignore_errors=True)
        processes.run(["cp", "-a", os.path.realpath(source), target], check=True)

    def upper_bytes(self) -> Optional[int]:
        if self.method != "overlay":
            return None
        return sum(tree_bytes(os.path.join(self.scratch, n)) for n in os.listdir(self.scratch) if n.startswith("upper-"))

    def prepare(self) -> None:
        self.place(self.data_dir, self.pgdata, "data")
        if self.short_sockdir:
            self.sockdir = tempfile.mkdtemp(prefix="pgbr-")
        else:
            os.mkdir(self.sockdir, 0o700)
        os.chown(self.sockdir, self.uid, self.gid)
        self.retarget_tablespace_map(self.place_tablespaces())
        for name in ("recovery.signal", "postmaster.pid"):
            path = os.path.join(self.pgdata, name)
            if os.path.exists(path):
                os.unlink(path)
        with open(os.path.join(self.pgdata, "postgresql.auto.conf"), "a", encoding="utf-8") as handle:
            handle.write("\n# pgbackup.lowlevel.backup_verify restore test\n")
            handle.writelines(f"{key} = {_quote(value)}\n" for key, value in self.server_settings().items())
        for name, text in (("pg_hba.conf", "local all all trust\n"), ("pg_ident.conf", ""), ("data/standby.signal", "")):
            path = os.path.join(self.scratch, name)
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chown(path, self.uid, self.gid)
            os.chmod(path, 0o600)

    def place_tablespaces(self) -> dict:
        """Each tablespace placed in the scratch directory and the scratch copy's pg_tblspc link pointed there; oid -> place."""
        mapping = {}
        for oid, path in self.tablespaces.items():
            target = os.path.join(self.scratch, f"tablespace-{oid}")
            self.place(path, target, f"tablespace-{oid}")
            mapping[oid] = target
            link = os.path.join(self.pgdata, "pg_tblspc", oid)
            if os.path.lexists(link):
                if os.path.islink(link):
                    os.unlink(link)
                else:
                    shutil.rmtree(link)
            os.symlink(target, link)
            os.lchown(link, self.uid, self.gid)
        return mapping

    def retarget_tablespace_map(self, mapping: dict) -> None:
        """The scratch copy's tablespace_map names the scratch places: recovery would otherwise link back to the copy's."""
        map_path = os.path.join(self.pgdata, "tablespace_map")
        if not os.path.exists(map_path):
            return
        with open(map_path, "rb") as handle:
            entries = parse_tablespace_map(handle.read(), major_version=self.major)
        with open(map_path, "w", encoding="utf-8", errors="surrogateescape") as handle:
            handle.write(format_tablespace_map([(oid, mapping.get(str(oid), path)) for oid, path in entries], major_version=self.major))

    def server_settings(self) -> dict:
        """postgresql.auto.conf of the scratch server: a private hot standby stopping before the end point (module docstring)."""
        return {
            "port": str(self.port),
            "listen_addresses": "",
            "unix_socket_directories": self.sockdir,
            "archive_mode": "off",
            "restore_command": f'cp "{self.wal_dir}/%f" "%p"',
            "recovery_target": "",
            "recovery_target_inclusive": "off",
            "recovery_target_action": "pause",
            "recovery_target_time": "",
            "recovery_target_xid": "",
            "recovery_target_name": "",
            "recovery_target_timeline": "latest",
            "wal_retrieve_retry_interval": "1s",
            "primary_conninfo": "",
            "primary_slot_name": "",
            "hot_standby": "on",
            "logging_collector": "off",
            "hba_file": os.path.join(self.scratch, "pg_hba.conf"),
            "ident_file": os.path.join(self.scratch, "pg_ident.conf"),
            # last: each recovery_target* assignment of '' unsets the target and another non-empty one after it is
            # "multiple recovery targets specified" (the GUC assign hooks run in file order)
            "recovery_target_lsn": format_lsn(self.end_lsn),
        }

    def sql(self, query: str, dbname: str = "postgres") -> list:
        from .connection import driver_connect  # only the restore test needs a driver

        conn = driver_connect()(host=self.sockdir, port=self.port, user=self.user, dbname=dbname, connect_timeout=10)
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
        # our own connection attempts before consistency log FATALs of their own: not the server's trouble
        return [line for line in lines if any(p in line for p in LOG_PATTERNS) and not any(n in line for n in NOT_TROUBLE)][-40:]

    def start(self) -> None:
        # no -w: pg_ctl would wait for a standby only until it accepts connections, i.e. forever when it never
        # becomes consistent; wait_end_point watches the log and the postmaster instead
        pg_ctl = os.path.join(self.bindir, "pg_ctl")
        proc = self.as_owner([pg_ctl, "-D", self.pgdata, "-l", self.log, "-W", "start"], 60)
        self.started = True
        if proc.returncode != 0:
            raise PgBackupError(f"the scratch copy did not start ({proc.returncode}): {(proc.stdout + proc.stderr).strip()[-1000:]}")

    def running(self) -> bool:
        proc = self.as_owner([os.path.join(self.bindir, "pg_ctl"), "-D", self.pgdata, "status"], 30)
        return proc.returncode == 0

    def wal_read_error(self) -> Optional[str]:
        """The standby's complaint about the WAL it read (it then waits for more WAL that never comes)."""
        stuck = ("invalid record", "incorrect resource manager", "unexpected pageaddr", "invalid magic number", "incorrect prev-link", "contrecord")
        lines = [line for line in self.log_excerpt() if any(p in line for p in stuck)]
        return lines[-1].split(":  ", 1)[-1] if lines else None

    def wait_end_point(self) -> dict:
        """Wait until the standby is consistent and replay reached exactly the end point; report what it found."""
        end = format_lsn(self.end_lsn)
        deadline = time.monotonic() + self.timeout
        stuck_since = down_since = None
        paused_fn = "pg_get_wal_replay_pause_state() <> 'not paused'" if self.major >= 14 else "pg_is_wal_replay_paused()"
        while True:
            try:
                replay, paused, in_recovery = self.sql(f"SELECT pg_last_wal_replay_lsn()::text, {paused_fn}, pg_is_in_recovery()")[0]
                if not in_recovery:
                    raise PgBackupError("the scratch copy left recovery although it was told to pause at the end point")
                reached = parse_lsn(replay)
                if reached > self.end_lsn:
                    raise PgBackupError(f"replay went past the end point {end} to {replay}")
                # a standby whose WAL ends at the end point waits for more: nothing further can be replayed (the next
                # record would start at or after the end point and stop recovery before it)
                if paused or reached == self.end_lsn:
                    return {"end_lsn": end, "replay_lsn": replay, "paused": bool(paused)}
            except PgBackupError:
                raise
            except Exception as exc:  # noqa: BLE001 - the driver's errors: not consistent yet, so not accepting connections
                last = str(exc).strip()
                if "does not exist" in last and "database" in last:
                    raise PgBackupError(f"the scratch copy has no database 'postgres': {last}") from None
            fatal = [line for line in self.log_excerpt() if "FATAL:" in line or "PANIC:" in line]
            # pg_ctl -W returns before postmaster.pid exists: "not running" counts only once it lasted a while
            down_since = None if self.running() else (down_since or time.monotonic())
            if fatal or (down_since is not None and time.monotonic() - down_since > 5):
                self.started = self.running()
                why = fatal[-1].split(":  ", 1)[-1] if fatal else "see its log"
                raise PgBackupError(f"the scratch copy stopped before reaching the end point {end}: {why}")
            error = self.wal_read_error()
            if error is not None:
                # not consistent and the WAL read failed: a standby retries for ever; a few retries are enough
                stuck_since = stuck_since or time.monotonic()
                if time.monotonic() - stuck_since > 10:
                    raise PgBackupError(
                        f"the copy's WAL ends before end of online backup: replay stopped before the end point {end} "
                        f"and before consistency; the server's log says: {error}"
                    )
            if time.monotonic() > deadline:
                raise PgBackupError(f"the scratch copy did not reach the end point {end} within {self.timeout:g} seconds")
            time.sleep(0.3)

    def databases(self) -> list:
        """(name, amcheck version or None) of every database that allows connections."""
        result = []
        for (dbname,) in self.sql("SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname"):
            rows = self.sql("SELECT extversion FROM pg_extension WHERE extname = 'amcheck'", dbname)
            result.append((dbname, rows[0][0] if rows else None))
        return result

    def amcheck_sql(self, dbname: str, version: str) -> tuple:
        """bt_index_check(heapallindexed) on every permanent btree index, verify_heapam (amcheck 1.3+) on every table."""
        checked = self.sql(
            "SELECT count(bt_index_check(c.oid, true)) FROM pg_class c JOIN pg_am a ON a.oid = c.relam "
            "JOIN pg_index i ON i.indexrelid = c.oid WHERE a.amname = 'btree' AND c.relpersistence = 'p' AND i.indisvalid AND i.indisready",
            dbname,
        )[0][0]
        problems = []
        if tuple(int(x) for x in version.split(".")[:2]) >= (1, 3):
            rows = self.sql(
                "SELECT c.oid::regclass::text, v.blkno, v.offnum, v.msg FROM pg_class c, verify_heapam(c.oid) v "
                "WHERE c.relkind IN ('r', 'm', 't') AND c.relpersistence = 'p' LIMIT 20",
                dbname,
            )
            problems = [f"{dbname}: {rel} block {blk} offset {off}: {msg}" for rel, blk, off, msg in rows]
        return checked, problems

    def amcheck(self, after_promotion: bool = False) -> dict:
        """amcheck on every database; on the read-only standby only where amcheck was installed before the backup."""
        tool = os.path.join(self.bindir, "pg_amcheck")
        use_tool = self.major >= 14 and os.access(tool, os.X_OK)
        checked, failures, skipped, done = 0, [], [], []
        for dbname, version in self.databases():
            if version is None and after_promotion:
                self.sql("CREATE EXTENSION amcheck", dbname)
                version = self.sql("SELECT extversion FROM pg_extension WHERE extname = 'amcheck'", dbname)[0][0]
            if version is None:
                skipped.append(dbname)
                continue
            done.append(dbname)
            if use_tool:
                continue
            try:
                count, problems = self.amcheck_sql(dbname, version)
                checked += count
                failures.extend(problems)
            except Exception as exc:  # noqa: BLE001 - a corrupt index raises; report it
                failures.append(f"{dbname}: {str(exc).strip()}")
        report = {"ran": bool(done), "databases": done, "skipped": skipped, "after_promotion": after_promotion}
        if skipped:
            report["reason"] = "amcheck is not installed there and cannot be created on a read-only standby: CREATE EXTENSION amcheck in the source"
        if use_tool and done:
            argv = [tool, "-h", self.sockdir, "-p", str(self.port), "-U", self.user, "--heapallindexed"]
            for dbname in done:
                argv += ["-d", dbname]
            proc = self.as_owner(argv, self.timeout)
            output = (proc.stdout + proc.stderr).strip()
            report.update(method="pg_amcheck", ok=proc.returncode == 0, output=output[-4000:])
        else:
            report.update(method="bt_index_check", ok=not failures, indexes_checked=checked, output="\n".join(failures))
        return report

    def do_promote(self, paused: bool) -> dict:
        if not paused:
            # the WAL ends at the end point, so the target was never "reached": promoting now ends recovery with
            # "recovery ended before configured recovery target was reached". Restart without the target first (a
            # later line wins); nothing more can be replayed anyway.
            self.stop()
            with open(os.path.join(self.pgdata, "postgresql.auto.conf"), "a", encoding="utf-8") as handle:
                handle.write("recovery_target_lsn = ''\n")
            self.start()
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    self.sql("SELECT 1")
                    break
                except Exception:  # noqa: BLE001 - not accepting connections yet
                    if time.monotonic() > deadline or not self.running():
                        raise PgBackupError("the scratch copy did not come back as a standby before its promotion") from None
                    time.sleep(0.3)
        self.sql(f"SELECT pg_promote(true, {int(self.timeout)})")
        writable = self.sql("SELECT NOT pg_is_in_recovery()")[0][0]
        if writable:
            self.sql("CREATE TEMPORARY TABLE pgbackup_restore_test_write AS SELECT 1 AS x")
        return {"promoted": bool(writable)}

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
        for target in reversed(self.mounts):  # never rmtree through a mount: that would delete the copy below
            unmount(target)
            if os.path.ismount(target):
                raise PgBackupError(f"could not unmount the restore test's overlay {target}; unmount it, then remove {self.scratch}")
        self.mounts = []
        if self.own_scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
        else:
            for name in os.listdir(self.scratch):
                path = os.path.join(self.scratch, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)


def end_point(label, control, stop_lsn: Optional[str]) -> Optional[int]:
    """Where the restore test stops: the copied pg_control's minRecoveryPoint for a backup from a standby (recovery is
    consistent there: InitWalRecovery sets backupEndPoint from it), else the stop LSN (the end of the backup-end record,
    where a primary backup becomes consistent). None when unknown."""
    if label is not None and label.backup_from == "standby":
        return (control.min_recovery_point or None) if control is not None else None
    return parse_lsn(stop_lsn, what="stop_lsn") if stop_lsn else None


def run_restore_test(data_dir: str, **kwargs) -> dict:
    """Run the test; returns the report (``ok``, ``problems``, log excerpt). Never raises for a copy that fails to restore."""
    started = time.monotonic()
    test = RestoreTest(data_dir, **kwargs)
    result: dict = {"ran": True, "port": test.port, "scratch_dir": test.scratch, "problems": [], "promoted": False}
    try:
        try:
            test.prepare()
            result["method"] = test.method
            if test.method == "copy":
                result["method_reason"] = test.method_note
            test.start()
            result.update(test.wait_end_point())
            result["amcheck"] = test.amcheck()
            if result["amcheck"].get("ran") and not result["amcheck"]["ok"]:
                result["problems"].append(f"restore test: amcheck at the end point {result['end_lsn']} found corruption: {result['amcheck']['output'][-2000:]}")
            if test.promote:
                result.update(test.do_promote(result["paused"]))
                if result["amcheck"]["skipped"]:
                    result["amcheck_after_promotion"] = late = test.amcheck(after_promotion=True)
                    if not late["ok"]:
                        result["problems"].append(f"restore test: amcheck after promotion found corruption: {late['output'][-2000:]}")
            result["upper_bytes"] = test.upper_bytes()
            test.stop()
        except (PgBackupError, OSError, processes.SubprocessError) as exc:
            result["problems"].append(f"restore test failed: {exc}")
        except Exception as exc:  # noqa: BLE001 - the driver's errors from a query at the end point
            result["problems"].append(f"restore test failed: {str(exc).strip()}")
        finally:
            result["log"] = test.log_excerpt()
            test.cleanup()
    except PgBackupError as exc:
        result["problems"].append(exc.message)
    log = "\n".join(result["log"])
    consistent = re.search(r"consistent recovery state reached at ([0-9A-F]+/[0-9A-F]+)", log)
    result["consistent_at"] = consistent.group(1) if consistent else None
    redo = re.search(r"redo starts at ([0-9A-F]+/[0-9A-F]+)", log)
    result["redo_start"] = redo.group(1) if redo else None
    if not result["problems"] and consistent is None:
        result["problems"].append("restore test: the log does not say 'consistent recovery state reached'")
    result["ok"] = not result["problems"]
    result["seconds"] = round(time.monotonic() - started, 1)
    return result
