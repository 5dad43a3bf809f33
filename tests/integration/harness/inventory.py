"""Ansible inventories for the test bed's hosts, with the password kept out of the inventory file."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .pgbins import client_bindir

if TYPE_CHECKING:
    from .cluster import Cluster
    from .testbed import Testbed

SYSTEM_PYTHON = "/usr/bin/python3"


@functools.cache
def host_python() -> str:
    """The interpreter for Ansible modules on the hosts: this venv's Python if the postgres user can run it with
    psycopg2, else Debian's python3 with python3-psycopg2 (a venv built from a Python under /root is unreachable
    for postgres, and modules run as postgres with become_user or ansible_user=postgres)."""
    for candidate in (sys.executable, SYSTEM_PYTHON):
        probe = ["runuser", "-u", "postgres", "--", candidate, "-c", "import psycopg2"]
        if subprocess.run(probe, capture_output=True, check=False, cwd="/").returncode == 0:
            return candidate
    raise RuntimeError(f"neither {sys.executable} nor {SYSTEM_PYTHON} imports psycopg2 as postgres: run scripts/install-system-deps.sh")


def connection_vars(testbed: Testbed, user: str = "root") -> dict[str, Any]:
    """How Ansible reaches the hosts: locally, or over ssh with the test bed's key and no host-key prompts."""
    if testbed.network is None:
        return {"ansible_connection": "local", "ansible_python_interpreter": host_python()}
    return {
        "ansible_user": user,
        "ansible_ssh_private_key_file": str(testbed.network.client_key),
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
        "ansible_python_interpreter": host_python(),
    }


def cluster_vars(cluster: Cluster) -> dict[str, Any]:
    return {
        "name": cluster.name,
        "major": cluster.major,
        "version": cluster.pg.version,
        "role": cluster.role,
        "upstream": cluster.upstream.name if cluster.upstream else None,
        "login_host": cluster.host,
        "login_port": cluster.port,
        "login_user": "postgres",
        "login_unix_socket": str(cluster.socket_dir),
        "data_dir": str(cluster.datadir),
        "archive_dir": str(cluster.archive_dir),
        "log_file": str(cluster.log_file),
        "bindir": str(cluster.pg.bindir),
    }


def write(testbed: Testbed, path: Path) -> Path:
    """One inventory host per test bed host; ``testbed_clusters`` lists the clusters on it. Groups ``primary`` and
    ``standby`` hold the hosts that run at least one cluster of that role."""
    hosts: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {"primary": {"hosts": {}}, "standby": {"hosts": {}}}
    for host in testbed.hosts:
        clusters = [c for c in testbed.clusters if c.node is host]
        hosts[host.name] = {"ansible_host": host.address, "testbed_clusters": [cluster_vars(c) for c in clusters]}
        for cluster in clusters:
            groups[cluster.role]["hosts"][host.name] = None
    common = {**connection_vars(testbed), "testbed_run_dir": str(testbed.run_dir), "testbed_client_bindir": str(client_bindir())}
    document = {"all": {"vars": common, "hosts": hosts, "children": groups}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    write_secret(path.parent, {"testbed_password": testbed.password})
    return path


def write_secret(inventory_dir: Path, values: dict[str, str]) -> Path:
    """group_vars/all/secret.yml next to the inventory (Ansible reads it for every host), created 0600 before the secret is written."""
    secret = inventory_dir / "group_vars" / "all" / "secret.yml"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.touch(mode=0o600)
    secret.chmod(0o600)
    secret.write_text(yaml.safe_dump(values))
    return secret
