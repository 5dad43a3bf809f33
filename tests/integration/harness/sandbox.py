"""The sandbox `make demo` runs against: a primary and a streaming standby on this machine.

python -m tests.integration.harness.sandbox up --dir build/demo [--mode local|netns] [--major 15]
python -m tests.integration.harness.sandbox down --dir build/demo
python -m tests.integration.harness.sandbox reap

`up` writes <dir>/inventory.yml (groups primary and standby, one host each) and keeps the password only in
<dir>/group_vars/all/secret.yml (mode 0600), which Ansible reads next to the inventory. <dir>/state.json is the
test bed's ledger: `down` stops every process by PID from it and removes what `up` made.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

from . import inventory, ledger
from .pgbins import SUPPORTED_MAJORS
from .testbed import RUN_BASE, Testbed


def up(directory: Path, mode: str, major: int) -> None:
    state = directory / "state.json"
    if state.exists():
        raise SystemExit(f"a sandbox is already up in {directory}: run `down --dir {directory}` first")
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
                "sandbox_state_dir": str(directory / "keepers"),  # backup_start's keepers (made 0700 by the module)
            }
        # Hosts are named apart from their groups (Ansible warns when a host and a group share a name).
        document = {"all": {"children": {name: {"hosts": {f"sandbox-{name}": hosts[name]}} for name in ("primary", "standby")}}}
        (directory / "inventory.yml").write_text(yaml.safe_dump(document, sort_keys=False))
        inventory.write_secret(directory, {"sandbox_login_password": bed.password})
    except BaseException:
        bed.teardown()
        raise
    # The sandbox outlives this command: no teardown at exit, and `reap` must leave it alone.
    bed.ledger.data.update(persistent=True, owner_pid=None, sandbox_dir=str(directory))
    bed.ledger.save()
    bed._torn_down = True  # this process never tears it down; `down` does, from the ledger
    for cluster in (primary, standby):
        print(f"{cluster.name}: PostgreSQL {cluster.pg.version} ({cluster.role}) on {cluster.host}:{cluster.port}, data directory {cluster.datadir}")
    print(f"inventory: {directory / 'inventory.yml'} (password in {directory / 'group_vars/all/secret.yml'})")


def down(directory: Path) -> None:
    state = directory / "state.json"
    if not state.exists():
        print(f"no sandbox in {directory}")
        return
    ledger.teardown(json.loads(state.read_text()), state)
    (directory / "inventory.yml").unlink(missing_ok=True)
    shutil.rmtree(directory / "group_vars", ignore_errors=True)
    print(f"sandbox in {directory} stopped and removed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a primary + streaming standby for the demo playbook")
    parser.add_argument("action", choices=("up", "down", "reap"))
    parser.add_argument("--dir", type=Path, help="the sandbox directory (up, down)")
    parser.add_argument("--mode", choices=("local", "netns"), default="local")
    parser.add_argument("--major", type=int, default=15, choices=SUPPORTED_MAJORS)
    args = parser.parse_args(argv)
    if args.action == "reap":
        for path in ledger.reap(RUN_BASE) if RUN_BASE.is_dir() else []:
            print(f"tore down {path}")
        return 0
    if args.dir is None:
        parser.error(f"{args.action} needs --dir")
    if args.action == "up":
        up(args.dir.resolve(), args.mode, args.major)
    else:
        down(args.dir.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
