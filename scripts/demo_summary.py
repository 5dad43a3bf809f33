"""The end of `make demo`: check the clone against the primary, then print what the demo did.

python scripts/demo_summary.py --dir build/demo [--elapsed SECONDS]

Reads <dir>/summary.json (written by playbooks/demo.yml), <dir>/pgbench.json (`sandbox load --stop`) and
<dir>/inventory.yml (the sandbox's sockets). pgbench has stopped by then, so the clone, once it replayed the primary's
last WAL position, must hold exactly the primary's pgbench rows: that is checked here over the unix sockets (trust:
no password). Exits 1 when a verification failed, naming what differed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import psycopg2
import yaml

MIB = 1024 * 1024
# What pgbench changed: its history rows (one per transaction) and the balances its updates moved.
FINGERPRINT = "SELECT (SELECT count(*) FROM pgbench_history), (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(bbalance) FROM pgbench_branches)"


def _query(host_vars: dict, sql: str) -> tuple:
    conn = psycopg2.connect(host=host_vars["sandbox_socket_dir"], port=host_vars["sandbox_login_port"], user="postgres", dbname="postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()
    finally:
        conn.close()


def check_clone(hosts: dict, timeout: float = 60) -> dict:
    """Wait until the clone replayed the primary's current position, then compare pgbench's data on both."""
    primary, clone = hosts["sandbox-primary"], hosts["sandbox-clone"]
    target = _query(primary, "SELECT pg_current_wal_lsn()::text")[0]
    deadline = time.monotonic() + timeout
    while True:
        replayed, in_recovery = _query(clone, f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn, pg_is_in_recovery()")
        if replayed or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    on_primary, on_clone = _query(primary, FINGERPRINT), _query(clone, FINGERPRINT)
    return {"target_lsn": target, "replayed": bool(replayed), "in_recovery": in_recovery, "primary": on_primary, "clone": on_clone}


def _hosts(inventory: Path) -> dict:
    document = yaml.safe_load(inventory.read_text())
    return {name: host_vars for group in document["all"]["children"].values() for name, host_vars in group["hosts"].items()}


def _mib(n) -> str:
    return f"{(n or 0) / MIB:.1f} MiB"


def _copy_line(copy: dict) -> str:
    rate = copy.get("throughput_bytes_per_second") or 0
    return f"{_mib(copy.get('bytes'))}, {copy.get('files')} files in {copy.get('seconds', 0):.1f} s ({rate / MIB:.1f} MiB/s)"


def _wal_line(result: dict, wal_bytes) -> str:
    segments = result.get("wal_segments") or []
    span = f"{segments[0]} .. {segments[-1]}" if segments else "none"
    return f"{len(segments)} segment(s), {_mib(wal_bytes)}: {span}"


def report(summary: dict, pgbench: dict, clone_check: dict, elapsed: str) -> tuple[list[str], list[str]]:
    """The summary's lines and the failed verifications (empty when everything held)."""
    failures = []
    backup, clone = summary["backup"], summary["clone"]
    result, verify = backup["result"], backup["verify"]
    restore = verify.get("restore_test") or {}
    verifybackup = verify.get("pg_verifybackup") or {}
    if verify["problems"]:
        failures.append("backup_verify: " + "; ".join(verify["problems"]))
    if not restore.get("ok"):
        failures.append(f"restore test: {restore.get('problems') or restore.get('reason') or 'did not run'}")
    if verifybackup.get("ran") and verifybackup.get("rc") != 0:
        failures.append(f"pg_verifybackup exited {verifybackup.get('rc')}: {verifybackup.get('output', '')[-300:]}")
    amcheck = restore.get("amcheck") or {}
    lines = [
        "",
        "=== make demo: summary " + "=" * 57,
        f"pgbench on the primary    {pgbench['clients']} clients, {pgbench['transactions']} transactions in {pgbench['seconds']} s "
        f"({pgbench['tps']} tps), writing all through the backup and the clone",
        "",
        f"Coordinated standby backup -> {result['dest']} (id {result['backup_id']}), {backup['seconds']:.1f} s in all",
        f"  backup started (primary)  {result['start_lsn']} on timeline {result['start_timeline']}",
        f"  standby restartpoint      redo at {backup['restartpoint_redo_lsn']}, after waiting {backup['replay_waited_seconds'] or 0:.1f} s for replay",
        f"  copied from the standby   {_copy_line(backup['copy'])}",
        f"  backup stopped (primary)  {result['stop_lsn']} on timeline {result['stop_timeline']}, {backup['seconds_in_backup_mode']:.1f} s in backup mode",
        f"  WAL collected             {_wal_line(result, backup['wal_bytes'])}",
        f"  backup_verify             {'ok' if not verify['problems'] else 'FAILED: ' + '; '.join(verify['problems'])}"
        + (f"; pg_verifybackup rc={verifybackup.get('rc')}" if verifybackup.get("ran") else f"; pg_verifybackup not run ({verifybackup.get('reason')})"),
        f"  restore test              {'ok' if restore.get('ok') else 'FAILED'}: consistent at {restore.get('consistent_at')}, "
        f"promoted={restore.get('promoted')}, amcheck ({amcheck.get('method', 'not run')}) {'ok' if amcheck.get('ok') else amcheck.get('reason', 'failed')}, "
        f"{restore.get('seconds', 0):.1f} s",
    ]
    streaming, cresult = clone["streaming"], clone["result"]
    if streaming["status"] != "streaming":
        failures.append(f"the clone's WAL receiver is {streaming['status']!r}, expected 'streaming'")
    same = clone_check["replayed"] and clone_check["primary"] == clone_check["clone"]
    if not same:
        failures.append(
            f"the clone {'replayed' if clone_check['replayed'] else 'did not replay'} the primary's {clone_check['target_lsn']}; "
            f"pgbench rows, sum(abalance), sum(bbalance): primary {clone_check['primary']}, clone {clone_check['clone']}"
        )
    lines += [
        "",
        f"Replica clone -> {clone['data_dir']} (port {clone['port']}), {clone['seconds']:.1f} s in all",
        f"  copied from the standby   {_copy_line(clone['copy'])}, {clone['seconds_in_backup_mode']:.1f} s in backup mode on the primary",
        f"  backup LSNs               {cresult['start_lsn']} .. {cresult['stop_lsn']}, {len(cresult.get('wal_segments') or [])} WAL segment(s)",
        f"  consistent                at {clone['consistent_lsn']}, after {clone['consistent_waited_seconds'] or 0:.1f} s",
        f"  replication               {streaming['status']} from {streaming['sender']}, lag {streaming['lag_bytes']} bytes, "
        f"replayed {streaming['replay_lsn']} (waited {streaming['waited_seconds'] or 0:.1f} s)",
        f"  after pgbench stopped     {'same data as the primary' if same else 'DIFFERENT from the primary'}: "
        f"{clone_check['clone'][0]} pgbench_history rows, balances {clone_check['clone'][1]}/{clone_check['clone'][2]} at {clone_check['target_lsn']}",
        "",
        f"Result: {'every verification passed' if not failures else 'FAILED: ' + ' | '.join(failures)}" + (f"; {elapsed} s up to here" if elapsed else ""),
    ]
    return lines, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="print what make demo did")
    parser.add_argument("--dir", type=Path, required=True, help="the sandbox directory")
    parser.add_argument("--elapsed", default="", help="seconds the demo took so far")
    args = parser.parse_args(argv)
    summary = json.loads((args.dir / "summary.json").read_text())
    pgbench = json.loads((args.dir / "pgbench.json").read_text())
    clone_check = check_clone(_hosts(args.dir / "inventory.yml"))
    lines, failures = report(summary, pgbench, clone_check, args.elapsed)
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
