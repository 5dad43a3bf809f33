"""The sandbox `make demo` runs against: a primary and a streaming standby on this machine.

python -m tests.integration.harness.sandbox up --dir build/demo [--mode local|netns] [--major 15]
python -m tests.integration.harness.sandbox load --dir build/demo --seconds 300   # pgbench on the primary
python -m tests.integration.harness.sandbox load --dir build/demo --stop          # stop it, print what it committed
python -m tests.integration.harness.sandbox down --dir build/demo
python -m tests.integration.harness.sandbox reap

`up` writes <dir>/inventory.yml (groups primary and standby, one host each; in local mode also backup_host and
new_replica, this machine, with a free port for the replica a demo clones into <dir>/clone) and keeps the password
only in <dir>/group_vars/all/secret.yml (mode 0600), which Ansible reads next to the inventory. <dir>/state.json is
the test bed's ledger: `down` stops every process by PID from it (pgbench, the servers, a clone started in
<dir>/clone) and removes what `up` made (with <dir>/backup and <dir>/clone).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from . import inventory, ledger, procs
from .cluster import chown_postgres
from .pgbins import SUPPORTED_MAJORS, client_bindir
from .testbed import RUN_BASE, Testbed

# What a demo writes into the sandbox directory (besides the run dir): removed by `down`, refused non-empty by `up`.
DEMO_DIRS = ("backup", "clone")


def up(directory: Path, mode: str, major: int) -> None:
    state = directory / "state.json"
    if state.exists():
        raise SystemExit(f"a sandbox is already up in {directory}: run `down --dir {directory}` first")
    for name in DEMO_DIRS:
        if (directory / name).exists() and any((directory / name).iterdir()):
            raise SystemExit(f"{directory / name} is not empty (left by an earlier demo?): remove it or run `down --dir {directory}` first")
    directory.mkdir(parents=True, exist_ok=True)
    bed = Testbed(mode, hosts=("primary", "standby"), run_dir=directory / "run", ledger_path=state)
    try:
        primary = bed.new_primary(major, host=bed.host("primary"), name="primary")
        primary.pgbench_init(scale=1)
        standby = primary.make_standby("standby", host=bed.host("standby"))
        hosts = {}
        for cluster in (primary, standby):
            connection = {"ansible_host": cluster.host} if mode == "netns" else {}
            sandbox_vars = {"login_host": cluster.host, "login_port": cluster.port, "login_user": "postgres", "data_dir": str(cluster.datadir)}
            hosts[cluster.name] = {
                **connection,
                **inventory.connection_vars(bed),
                **{f"sandbox_{k}": v for k, v in sandbox_vars.items()},
                "sandbox_pg_bindir": str(cluster.pg.bindir),
                "sandbox_socket_dir": str(cluster.socket_dir),
                "sandbox_state_dir": str(directory / "keepers"),  # backup_start's keepers (made 0700 by the module)
            }
        if mode == "local":
            hosts.update(_demo_hosts(bed, directory, primary, hosts["standby"]))
        # Hosts are named apart from their groups (Ansible warns when a host and a group share a name).
        # The demo's hosts are in the groups its playbooks run on by default.
        groups = {"primary": "primary", "standby": "standby", "backup": "backup_host", "clone": "new_replica"}
        document = {"all": {"children": {groups[name]: {"hosts": {f"sandbox-{name}": host_vars}} for name, host_vars in hosts.items()}}}
        (directory / "inventory.yml").write_text(yaml.safe_dump(document, sort_keys=False))
        inventory.write_secret(directory, {"sandbox_login_password": bed.password})
    except BaseException:
        bed.teardown()
        raise
    # The sandbox outlives this command: no teardown at exit, and `reap` must leave it alone. `load` writes on the primary.
    load_target = {"socket_dir": str(primary.socket_dir), "port": primary.port}
    bed.ledger.data.update(persistent=True, owner_pid=None, sandbox_dir=str(directory), load_target=load_target)
    bed.ledger.save()
    bed._torn_down = True  # this process never tears it down; `down` does, from the ledger
    for cluster in (primary, standby):
        print(f"{cluster.name}: PostgreSQL {cluster.pg.version} ({cluster.role}) on {cluster.host}:{cluster.port}, data directory {cluster.datadir}")
    print(f"inventory: {directory / 'inventory.yml'} (password in {directory / 'group_vars/all/secret.yml'})")


def _demo_hosts(bed: Testbed, directory: Path, primary, standby_vars: dict) -> dict[str, dict]:
    """The demo's two other hosts, both this machine: backup (receives a backup in <dir>/backup) and clone (a new
    replica in <dir>/clone on a free port, its own socket directory and cluster_name). The clone's data directory is
    in the ledger, so `down` (and `reap`) stop the server a demo started there."""
    common = {k: v for k, v in standby_vars.items() if k.startswith("ansible_") or k in ("sandbox_pg_bindir", "sandbox_state_dir")}
    base = bed.run_dir / "clone"  # its socket and server log, writable by postgres (pg_ctl -l runs as postgres)
    socket_dir = base / "socket"
    for path in (base, socket_dir):
        path.mkdir(mode=0o750)
        chown_postgres(path)
    port = bed._port(bed.host("standby"))
    bed.ledger.add("clusters", {"name": "clone", "pg_ctl": str(primary.pg.bindir / "pg_ctl"), "datadir": str(directory / "clone"), "pid": None})
    clone = {
        "sandbox_login_host": "127.0.0.1",
        "sandbox_login_port": port,
        "sandbox_login_user": "postgres",
        "sandbox_data_dir": str(directory / "clone"),
        "sandbox_socket_dir": str(socket_dir),
        "sandbox_log_file": str(base / "postgres.log"),
        "sandbox_cluster_name": f"{bed.prefix}/clone",  # the prefix marks its processes as the sandbox's
    }
    return {"backup": {**common, "sandbox_dest": str(directory / "backup")}, "clone": {**common, **clone}}


def _update_ledger(state: Path, change) -> dict:
    data = json.loads(state.read_text())
    change(data)
    tmp = state.with_name(state.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(state)
    return data


def _history_rows(target: dict) -> int:
    """pgbench_history's rows on the primary: one per committed pgbench transaction (over its socket, trust)."""
    import psycopg2  # the harness's driver; imported here so `down` and `reap` work without it

    conn = psycopg2.connect(host=target["socket_dir"], port=target["port"], user="postgres", dbname="postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pgbench_history")
            return cur.fetchone()[0]
    finally:
        conn.close()


def load_start(directory: Path, seconds: int, clients: int) -> None:
    """pgbench -T ``seconds`` on the primary, detached from this command; recorded in the ledger (`down` stops it)."""
    state = directory / "state.json"
    data = json.loads(state.read_text()) if state.exists() else {}
    target = data.get("load_target")
    if not target:
        raise SystemExit(f"no sandbox made for the demo in {directory} (state.json has no load_target): run `up --dir {directory}` first")
    if data.get("load") and procs.alive(data["load"]["pid"], target["socket_dir"]):
        raise SystemExit(f"pgbench (PID {data['load']['pid']}) already runs against the sandbox: `load --stop` first")
    before = _history_rows(target)
    argv = [str(client_bindir() / "pgbench"), "-h", target["socket_dir"], "-p", str(target["port"]), "-U", "postgres"]
    argv += ["-n", "-T", str(seconds), "-c", str(clients), "-j", str(clients), "postgres"]
    log = Path(data["run_dir"]) / "pgbench.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}  # the socket and trust: no password anywhere
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    entry = {"pid": proc.pid, "marker": target["socket_dir"], "what": "pgbench"}
    load = {"pid": proc.pid, "started": time.time(), "seconds": seconds, "clients": clients, "history_before": before, "log": str(log)}
    _update_ledger(state, lambda d: (d["processes"].append(entry), d.update(load=load)))
    print(f"pgbench: {clients} clients for at most {seconds} s on the primary (PID {proc.pid}, output in {log})")


def load_stop(directory: Path) -> dict:
    """Stop the pgbench `load` started and say what it committed (rows pgbench_history gained), as JSON."""
    state = directory / "state.json"
    data = json.loads(state.read_text()) if state.exists() else {}
    load, target = data.get("load"), data.get("load_target")
    if not load:
        raise SystemExit(f"no pgbench was started in the sandbox in {directory} (`load --dir {directory} --seconds N` starts one)")
    ran = procs.alive(load["pid"], target["socket_dir"])
    procs.kill(load["pid"], target["socket_dir"], sig=signal.SIGINT, timeout=30)
    elapsed = time.time() - load["started"]
    transactions = _history_rows(target) - load["history_before"]
    result = {
        "clients": load["clients"],
        "seconds": round(elapsed, 1),
        "transactions": transactions,
        "tps": round(transactions / elapsed, 1) if elapsed > 0 else None,
        "ran_until_stopped": ran,  # false: pgbench ended by itself (its -T, or an error: see the log)
        "log": load["log"],
    }
    _update_ledger(state, lambda d: d.pop("load", None))
    if not ran:
        tail = Path(load["log"]).read_text(errors="replace").splitlines()[-5:] if Path(load["log"]).exists() else []
        result["log_tail"] = tail
    return result


def down(directory: Path) -> None:
    state = directory / "state.json"
    if not state.exists():
        print(f"no sandbox in {directory}")
        return
    ledger.teardown(json.loads(state.read_text()), state)  # also stops a clone started in <dir>/clone (in the ledger)
    (directory / "inventory.yml").unlink(missing_ok=True)
    shutil.rmtree(directory / "group_vars", ignore_errors=True)
    for name in DEMO_DIRS:
        shutil.rmtree(directory / name, ignore_errors=True)
        # Next to a destination: the copy's progress file, and the passfile recovery_config wrote for a replica.
        for leftover in (f".{name}.progress.json", f".{name}.pgpass"):
            (directory / leftover).unlink(missing_ok=True)
    shutil.rmtree(directory / "keepers", ignore_errors=True)  # backup_start's state; its keepers ended with the servers
    print(f"sandbox in {directory} stopped and removed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a primary + streaming standby for the demo playbook")
    parser.add_argument("action", choices=("up", "load", "down", "reap"))
    parser.add_argument("--dir", type=Path, help="the sandbox directory (up, load, down)")
    parser.add_argument("--mode", choices=("local", "netns"), default="local")
    parser.add_argument("--major", type=int, default=15, choices=SUPPORTED_MAJORS)
    parser.add_argument("--seconds", type=int, default=300, help="load: pgbench's -T (an upper bound; --stop ends it sooner)")
    parser.add_argument("--clients", type=int, default=2, help="load: pgbench's clients")
    parser.add_argument("--stop", action="store_true", help="load: stop pgbench and print what it committed (JSON)")
    parser.add_argument("--output", type=Path, help="load --stop: also write the JSON to this file")
    args = parser.parse_args(argv)
    if args.action == "reap":
        for path in ledger.reap(RUN_BASE) if RUN_BASE.is_dir() else []:
            print(f"tore down {path}")
        return 0
    if args.dir is None:
        parser.error(f"{args.action} needs --dir")
    if args.action == "up":
        up(args.dir.resolve(), args.mode, args.major)
    elif args.action == "load" and args.stop:
        text = json.dumps(load_stop(args.dir.resolve()), indent=2)
        print(text)
        if args.output:
            args.output.write_text(text + "\n")
    elif args.action == "load":
        load_start(args.dir.resolve(), args.seconds, args.clients)
    else:
        down(args.dir.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
