"""The sandbox `make demo` runs against: a primary and a streaming standby on this machine.

    python -m tests.integration.harness.sandbox up --dir build/demo [--major 15]
    python -m tests.integration.harness.sandbox down --dir build/demo

`up` writes <dir>/inventory.yml (groups primary and standby) and keeps the password only in
<dir>/group_vars/all/secret.yml (mode 0600), which Ansible reads next to the inventory.
`down` stops the servers by PID using <dir>/state.json.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from .hosts import _kill
from .pgbins import selected_majors
from .testbed import Testbed


def up(directory: Path, major: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    bed = Testbed("local", hosts=("sandbox",), run_dir=directory / "run")
    try:
        primary = bed.new_primary(major, name="primary")
        primary.pgbench_init(scale=1)
        standby = bed.new_standby(primary, name="standby")
    except BaseException:
        bed.teardown()
        raise
    atexit.unregister(bed.teardown)  # the sandbox outlives this command; `down` stops it
    hosts = {}
    for cluster in (primary, standby):
        hosts[cluster.name] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "sandbox_login_host": cluster.host,
            "sandbox_login_port": cluster.port,
            "sandbox_login_user": "postgres",
            "sandbox_data_dir": str(cluster.datadir),
        }
    inventory = {"all": {"children": {"primary": {"hosts": {"primary": hosts["primary"]}}, "standby": {"hosts": {"standby": hosts["standby"]}}}}}
    (directory / "inventory.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    secret = directory / "group_vars" / "all" / "secret.yml"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.touch(mode=0o600)
    secret.chmod(0o600)
    secret.write_text(yaml.safe_dump({"sandbox_login_password": bed.password}))
    state = {
        "run_dir": str(bed.run_dir),
        "clusters": [{"name": c.name, "pg_ctl": str(c.pg.bindir / "pg_ctl"), "datadir": str(c.datadir), "pid": c.postmaster_pid()} for c in bed.clusters],
    }
    (directory / "state.json").write_text(json.dumps(state, indent=2))
    for cluster in bed.clusters:
        print(f"{cluster.name}: PostgreSQL {cluster.pg.version} on {cluster.host}:{cluster.port}, data directory {cluster.datadir}")


def down(directory: Path) -> None:
    state_file = directory / "state.json"
    if not state_file.exists():
        print(f"no sandbox in {directory}")
        return
    state = json.loads(state_file.read_text())
    for cluster in reversed(state["clusters"]):
        stop = ["runuser", "-u", "postgres", "--", cluster["pg_ctl"], "-D", cluster["datadir"], "-m", "fast", "-w", "stop"]
        subprocess.run(stop, check=False, capture_output=True)
        if cluster["pid"]:
            _kill(cluster["pid"])
    shutil.rmtree(state["run_dir"], ignore_errors=True)
    shutil.rmtree(directory / "group_vars", ignore_errors=True)
    for name in ("inventory.yml", "state.json"):
        (directory / name).unlink(missing_ok=True)
    print(f"sandbox in {directory} stopped and removed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a local primary + streaming standby for the demo playbook")
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--mode", choices=("local",), default="local")
    parser.add_argument("--major", type=int, default=15, choices=selected_majors() or [15])
    args = parser.parse_args(argv)
    if args.action == "up":
        up(args.dir.resolve(), args.major)
    else:
        down(args.dir.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
