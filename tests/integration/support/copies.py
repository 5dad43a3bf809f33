"""Copies for the module tests: a backup copied by hand around the low-level API, its label placed, checked by
pg_verifybackup; a copy made and verified by the playbooks; a server asked to start on a copy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from ansible_collections.pgbackup.lowlevel.plugins.module_utils import copy_state
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_engine import Source, check_destination, execute, make_plan
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import parse_lsn
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.session import backup_session

from ..harness.pgtools import tools_bindir
from .playbooks import run_playbook


def backup_copy(primary, testbed, tmp_path: Path, dest: Path, ts_map: dict, canary: str) -> tuple:
    """A copy of the primary under backup_start/backup_stop, with pgbench writing; returns (started, stopped)."""
    state_dir = tmp_path / "keepers"
    state_dir.mkdir(mode=0o700)
    params = {"login_host": primary.host, "login_port": primary.port, "login_user": "postgres", "login_password": primary.password}
    with testbed.load(primary, 30, clients=2):
        time.sleep(1)
        started = backup_session.start_backup(
            params, backup_id="lp", label="label_place test", fast=True, max_duration=0, state_dir=str(state_dir), timeout=120
        )
        primary.sql(f"CREATE TABLE {canary} AS SELECT 42 AS answer")
        source = Source(str(primary.datadir))
        plan = make_plan(source, str(dest), ts_map, [])
        check_destination(source, plan, str(dest), False)
        execute(source, plan, str(dest), parallel=2, owner="postgres")
        stopped = backup_session.stop_backup(backup_id="lp", state_dir=str(state_dir), state="stopped", wait_for_archive=True, timeout=120)
    return started, stopped


def verified_backup(primary, testbed, tmp_path: Path, dest: Path, ts_map: dict, canary: str) -> tuple:
    """A copy of the primary under backup_start/backup_stop, pgbench writing, WAL switched three times in between."""
    state_dir = tmp_path / "keepers"
    state_dir.mkdir(mode=0o700)
    params = {"login_host": primary.host, "login_port": primary.port, "login_user": "postgres", "login_password": primary.password}
    with testbed.load(primary, 30, clients=2):
        time.sleep(0.5)
        started = backup_session.start_backup(
            params, backup_id="bv", label="backup_verify test", fast=True, max_duration=0, state_dir=str(state_dir), timeout=120
        )
        primary.sql(f"CREATE TABLE {canary} AS SELECT 42 AS answer")
        source = Source(str(primary.datadir))
        plan = make_plan(source, str(dest), ts_map, [])
        check_destination(source, plan, str(dest), False)
        execute(source, plan, str(dest), parallel=2, owner="postgres")
        for _unused in range(3):  # a WAL range of at least four segments: one in the middle can go missing
            time.sleep(0.3)
            primary.sql("SELECT pg_switch_wal()")
        time.sleep(0.3)
        stopped = backup_session.stop_backup(backup_id="bv", state_dir=str(state_dir), state="stopped", wait_for_archive=True, timeout=120)
    return started, stopped


def run_verify(env, testbed, tmp_path: Path, copies: list, *args: str) -> list:
    """backup_verify on each (data_dir, options) in one ansible-playbook run; the results in that order."""
    inventory = testbed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    result_file = tmp_path / f"verify-{uuid.uuid4().hex[:8]}.json"
    extra = {"copies": [{"data_dir": str(d), "args": a} for d, a in copies], "result_file": str(result_file)}
    run_playbook(env, inventory, "backup_verify.yml", extra, "--limit", testbed.hosts[0].name, *args)
    results = json.loads(result_file.read_text())
    assert [r["item"]["data_dir"] for r in results] == [str(d) for d, _a in copies]
    return results


def start_backup(conn, major: int) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backup_start('datadir_copy test', true)" if major >= 15 else "SELECT pg_start_backup('datadir_copy test', true, false)")


def stop_backup(conn, major: int) -> tuple:
    with conn.cursor() as cur:
        if major >= 15:
            cur.execute("SELECT lsn::text, labelfile, spcmapfile, substr(pg_walfile_name(lsn), 1, 8) FROM pg_backup_stop(true)")
        else:
            cur.execute("SELECT lsn::text, labelfile, spcmapfile, substr(pg_walfile_name(lsn), 1, 8) FROM pg_stop_backup(false, true)")
        lsn, label, spcmap, tli = cur.fetchone()
    return parse_lsn(lsn), int(tli, 16), label, spcmap


def tree(root: Path) -> set:
    """Relative paths of every file and directory, following pg_tblspc's symlinks."""
    out = set()
    for dirpath, dirs, files in os.walk(root, followlinks=True):
        for name in dirs + files:
            out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out


def place_label(dest: Path, label: str, spcmap: str) -> None:
    (dest / "backup_label").write_text(label)
    if spcmap:
        (dest / "tablespace_map").write_text(spcmap)
    os.rename(dest / copy_state.PENDING_CONTROL, dest / "global" / "pg_control")
    for name in ("backup_label", "tablespace_map"):
        if (dest / name).exists():
            shutil.chown(dest / name, "postgres", "postgres")
            (dest / name).chmod(0o600)


def verifybackup(major: int, *args: str) -> subprocess.CompletedProcess:
    """pg_verifybackup of ``major`` itself (harness/pgtools): another major's refuses or misreads the manifest and WAL."""
    return subprocess.run([str(tools_bindir(major) / "pg_verifybackup"), *args], capture_output=True, text=True, check=False)


def postgres_refuses(cluster, dest: Path, tmp: Path) -> str:
    """Try to start a server on the copy; return its complaint (it must not start)."""
    sock = tmp / "sock"
    sock.mkdir(exist_ok=True)
    shutil.chown(sock, "postgres", "postgres")
    argv = [
        "runuser",
        "-u",
        "postgres",
        "--",
        str(cluster.pg.bindir / "postgres"),
        "-D",
        str(dest),
        "-c",
        "listen_addresses=",
        "-c",
        f"unix_socket_directories={sock}",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    return proc.stderr
