"""Fault suite (issue 12): tables and databases dropped and created during the copy. On real PostgreSQL (oldest and newest
major, local pair) with pgbench writing, the standby_backup role's copy is frozen (SIGSTOP) while it has the standby's
files open; the primary then creates a database, drops one that existed at the start, creates and drops tables, rewrites
one (VACUUM FULL) and changes another's column type (ALTER TABLE ... TYPE, a rewrite too), truncates one; the standby
replays all of it before the copy goes on (SIGCONT), so files appear, vanish and change under the running copy.

The backup must succeed and restore correctly: redo from the label's start, consistency at or after the backup's end,
the canary made mid-copy, amcheck clean, every pgbench table and every table the DDL touched equal to the primary's,
the new database there with its table and the dropped database and table gone."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid

import pytest

from .conftest import one_end
from .support.faults import copy_module_pid
from .support.restore_checks import fingerprints, recover_and_check
from .support.roles import role_run

pytestmark = [pytest.mark.integration]


def _names(tag: str) -> dict:
    kinds = ("doomed_db", "new_db", "truncated", "vacuumed", "retyped", "dropped", "created", "canary")
    return {kind: f"ddl_{kind}_{tag}" for kind in kinds}


def _before_the_backup(primary, n: dict) -> None:
    """What exists at the start: a database and tables the DDL will drop, rewrite and truncate."""
    primary.sql(f"CREATE DATABASE {n['doomed_db']}")
    primary.sql("CREATE TABLE doomed AS SELECT g FROM generate_series(1, 5000) g", dbname=n["doomed_db"])
    for table in ("truncated", "vacuumed", "retyped", "dropped"):
        primary.sql(f"CREATE TABLE {n[table]} (id int PRIMARY KEY, v int, pad text)")
        primary.sql(f"INSERT INTO {n[table]} SELECT g, g % 97, repeat('p', 200) FROM generate_series(1, 20000) g")  # noqa: S608 - names the test made
    primary.sql(f"DELETE FROM {n['vacuumed']} WHERE id % 2 = 0")  # noqa: S608 - VACUUM FULL then writes a smaller new file
    # a table large enough that the copy is still running when the test freezes it
    primary.sql("CREATE TABLE IF NOT EXISTS recheck_bulk AS SELECT g, repeat('x', 400) AS pad FROM generate_series(1, 100000) g")


def _ddl_during_the_copy(primary, standby, n: dict, seen: dict) -> None:
    """Freeze the copy once it has the standby's files open, run the DDL on the primary, wait until the standby replayed
    it (its files now differ from what the copy saw), then let the copy go on."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not seen.get("done"):
        pid = copy_module_pid(standby.datadir)
        if pid is None:
            time.sleep(0.002)
            continue
        os.kill(pid, signal.SIGSTOP)
        seen["frozen"] = time.monotonic()
        try:
            filenode = "SELECT pg_relation_filenode(%s)"
            before = {t: primary.sql(filenode, (n[t],))[0][0] for t in ("vacuumed", "retyped", "truncated")}
            primary.sql(f"CREATE TABLE {n['canary']} AS SELECT 42 AS answer")
            primary.sql(f"CREATE DATABASE {n['new_db']}")
            primary.sql("CREATE TABLE born AS SELECT g, md5(g::text) AS h FROM generate_series(1, 3000) g", dbname=n["new_db"])
            primary.sql(f"DROP DATABASE {n['doomed_db']}")
            primary.sql(f"CREATE TABLE {n['created']} AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 10000) g")  # noqa: S608 - names the test made
            primary.sql(f"DROP TABLE {n['dropped']}")
            primary.sql(f"VACUUM FULL {n['vacuumed']}")
            primary.sql(f"ALTER TABLE {n['retyped']} ALTER COLUMN v TYPE bigint")
            primary.sql(f"TRUNCATE {n['truncated']}")
            primary.sql(f"INSERT INTO {n['truncated']} SELECT g, -g, 'after' FROM generate_series(1, 500) g")  # noqa: S608 - names the test made
            after = {t: primary.sql(filenode, (n[t],))[0][0] for t in before}
            seen["rewritten"] = sorted(t for t in before if before[t] != after[t])
            standby.wait_replayed(primary.current_lsn(), timeout=120)
            seen["replayed"] = True
        finally:
            os.kill(pid, signal.SIGCONT)
            seen["frozen_seconds"] = time.monotonic() - seen["frozen"]
        return


def _check_the_ddl(primary, restored, n: dict) -> None:
    """Every table the DDL touched equals the primary's; what was dropped is gone, what was created is there."""
    tables = [n[t] for t in ("truncated", "vacuumed", "retyped", "created")]
    assert fingerprints(restored, tables) == fingerprints(primary, tables)
    assert restored.sql("SELECT to_regclass(%s)::text", (n["dropped"],)) == [(None,)], "the dropped table is gone"
    retyped = "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'v'"
    assert restored.sql(retyped, (n["retyped"],)) == [("bigint",)]
    databases = {row[0] for row in restored.sql("SELECT datname FROM pg_database")}
    assert n["new_db"] in databases and n["doomed_db"] not in databases, databases
    born = "SELECT count(*), md5(string_agg(h, '' ORDER BY g)) FROM born"
    assert restored.sql(born, dbname=n["new_db"]) == primary.sql(born, dbname=n["new_db"])


@pytest.mark.parametrize("mode", ["coordinated", "standby_only"])
def test_ddl_during_the_copy_backs_up_and_restores(primary_standby, testbed, ansible_env, tmp_path, pg_major, mode):
    one_end(pg_major, "oldest" if mode == "coordinated" else "newest")
    primary, standby = primary_standby
    primary.pgbench_init()
    primary.sql("CREATE EXTENSION IF NOT EXISTS amcheck")
    n = _names(uuid.uuid4().hex[:6])
    _before_the_backup(primary, n)
    standby.wait_replayed(primary.current_lsn())
    restored = testbed.empty_cluster(pg_major, name=f"pg{pg_major}-ddl-{mode.replace('_', '-')}")
    seen: dict = {}
    ddl = threading.Thread(target=_ddl_during_the_copy, args=(primary, standby, n, seen), daemon=True)
    try:
        with testbed.load(primary, 600, clients=2) as load:
            time.sleep(1)
            ddl.start()
            began = time.monotonic()
            try:
                code, output = role_run(ansible_env, testbed, tmp_path, primary, standby, restored.datadir, standby_backup_mode=mode)
            finally:
                seen["done"] = True
                ddl.join(timeout=180)
            load.stop()
        print(f"{mode}: the backup with DDL mid-copy took {time.monotonic() - began:.1f} s (copy frozen {seen.get('frozen_seconds', 0):.1f} s)")
        assert seen.get("replayed"), ("the DDL did not land on the standby while the copy was frozen", seen)
        assert seen["rewritten"] == ["retyped", "truncated", "vacuumed"], seen  # each got a new file under the copy
        assert code == 0, output[-6000:]
        summary = re.search(r'"start_lsn": "([0-9A-F/]+)".*?"stop_lsn": "([0-9A-F/]+)"', output, re.S)
        assert summary, output[-4000:]
        start_lsn, stop_lsn = summary.groups()
        lsns = {"start_lsn": start_lsn, "stop_lsn": stop_lsn}
        recover_and_check(primary, restored, testbed, ansible_env, tmp_path, pg_major, procedure=mode, canary=n["canary"], **lsns)
        _check_the_ddl(primary, restored, n)
    finally:
        if restored.is_running():
            restored.stop("immediate")
        for db in (n["new_db"], n["doomed_db"]):
            primary.sql(f"DROP DATABASE IF EXISTS {db}")
        for table in ("truncated", "vacuumed", "retyped", "dropped", "created", "canary"):
            primary.sql(f"DROP TABLE IF EXISTS {n[table]}")
