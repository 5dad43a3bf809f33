"""The test bed: hosts, clusters on them, pgbench load, an Ansible inventory, and a teardown by PID.

    with Testbed(mode="netns", hosts=("db1", "db2")) as bed:
        primary = bed.new_primary(16, host=bed.hosts[0])
        standby = bed.new_standby(primary, host=bed.hosts[1])
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import yaml

from .cluster import Cluster, chown_postgres
from .hosts import Host, Network, _kill
from .pgbins import ROOT, client_bindir, postgres_install

RUN_PREFIX = "pgbt-"


class Load:
    """pgbench writing against a primary in the background, bounded by -T and stopped by PID."""

    def __init__(self, cluster: Cluster, seconds: int, clients: int) -> None:
        argv = [str(client_bindir() / "pgbench"), "-h", str(cluster.socket_dir), "-p", str(cluster.port), "-U", "postgres"]
        argv += ["-n", "-T", str(seconds), "-c", str(clients), "-j", str(clients), "postgres"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.pid = self.proc.pid

    def stop(self) -> str:
        """Stop pgbench (if still running) and return what it printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out or ""


class Testbed:
    __test__ = False  # not a pytest test class
    def __init__(self, mode: str = "local", hosts: tuple = ("db1", "db2"), run_dir: Optional[Path] = None) -> None:
        if mode not in ("local", "netns"):
            raise ValueError(f"mode must be local or netns, not {mode!r}")
        self.mode = mode
        self.run_id = secrets.token_hex(2)
        self.run_dir = Path(run_dir or tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{self.run_id}-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o755)
        self.password = secrets.token_urlsafe(18)
        self.passfile = self.run_dir / "pgpass"
        self.clusters: list[Cluster] = []
        self.loads: list[Load] = []
        self.network: Optional[Network] = None
        self._torn_down = False
        atexit.register(self.teardown)
        self.passfile.write_text(f"*:*:*:postgres:{self.password}\n")
        self.passfile.chmod(0o600)
        chown_postgres(self.passfile)
        if mode == "local":
            self.hosts = [Host(name, "127.0.0.1") for name in hosts]
        else:
            self.network = Network(self.run_id, self.run_dir / "ssh")
            try:
                self.network.setup()
                self.hosts = [self.network.add_host(name) for name in hosts]
            except BaseException:
                self.teardown()
                raise

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    # --- clusters -----------------------------------------------------------------------------------
    def _free_port(self, address: str) -> int:
        used = {c.port for c in self.clusters}
        for port in range(26000 + int(self.run_id, 16) % 2000 * 10, 65000):
            if port in used:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind((address if self.mode == "local" else "127.0.0.1", port))
                except OSError:
                    continue
            return port
        raise RuntimeError("no free TCP port")

    def new_primary(self, major: int, host: Optional[Host] = None, wal_segsize: Optional[int] = None, name: Optional[str] = None) -> Cluster:
        host = host or self.hosts[0]
        name = name or f"pg{major}-primary{len(self.clusters) + 1}"
        cluster = Cluster(
            name=name, pg=postgres_install(major), host=host, port=self._free_port(host.address), base=self.run_dir / name,
            password=self.password, passfile=self.passfile,
        )
        self.clusters.append(cluster)
        cluster.initdb(wal_segsize=wal_segsize)
        cluster.start()
        return cluster

    def new_standby(self, upstream: Cluster, host: Optional[Host] = None, name: Optional[str] = None) -> Cluster:
        host = host or upstream.host_obj
        name = name or f"pg{upstream.major}-standby{len(self.clusters) + 1}"
        standby = upstream.make_standby(name, host, self._free_port(host.address), self.run_dir / name)
        self.clusters.append(standby)
        return standby

    def load(self, cluster: Cluster, seconds: int, clients: int = 2) -> Load:
        load = Load(cluster, seconds, clients)
        self.loads.append(load)
        return load

    # --- ansible ------------------------------------------------------------------------------------
    def write_inventory(self, path: Optional[Path] = None) -> Path:
        """A YAML inventory of the hosts; each host lists the clusters on it under ``testbed_clusters``."""
        path = Path(path or self.run_dir / "inventory.yml")
        common = {"ansible_python_interpreter": sys.executable}
        if self.mode == "local":
            common["ansible_connection"] = "local"
        else:
            common.update(
                ansible_user="root",
                ansible_ssh_private_key_file=str(self.network.client_key),
                ansible_ssh_common_args="-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            )
        hosts = {}
        for host in self.hosts:
            clusters = [c for c in self.clusters if c.host_obj is host]
            hosts[host.name] = {
                "ansible_host": host.address,
                "testbed_clusters": [{"name": c.name, "major": c.major, "port": c.port, "role": c.role, "datadir": str(c.datadir)} for c in clusters],
            }
        path.write_text(yaml.safe_dump({"all": {"vars": common, "hosts": hosts}}, sort_keys=False))
        return path

    def ssh(self, host: Host, argv: list[str], user: str = "root") -> subprocess.CompletedProcess:
        """Run a command on a namespace host through its sshd, as a remote user would."""
        return subprocess.run(["ssh", *self.network.ssh_options(), f"{user}@{host.address}", "--", *argv], capture_output=True, text=True, check=False)

    # --- teardown -----------------------------------------------------------------------------------
    def teardown(self) -> None:
        """Stop everything this test bed started, by PID, and remove its namespaces and files."""
        if self._torn_down:
            return
        self._torn_down = True
        for load in self.loads:
            load.stop()
        for cluster in reversed(self.clusters):
            pid = cluster.postmaster_pid()
            if pid is None:
                continue
            for mode in ("fast", "immediate"):
                try:
                    cluster.stop(mode)
                    break
                except (subprocess.CalledProcessError, OSError):
                    continue
            _kill(pid)
        if self.network:
            self.network.teardown()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def leftovers(run_dir: Path, prefix: str) -> list[str]:
    """What a torn-down test bed left behind: processes naming its run dir, namespaces and links with its prefix."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(run_dir) in cmdline:
            found.append(f"process {proc.name}: {cmdline.strip()}")
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    found += [f"namespace {line.split()[0]}" for line in namespaces.splitlines() if line.startswith(prefix)]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False).stdout
    found += [f"link {line.split(':')[1].strip()}" for line in links.splitlines() if f" {prefix}" in line]
    if run_dir.exists():
        found.append(f"directory {run_dir}")
    return found


__all__ = ["ROOT", "Load", "Testbed", "leftovers"]
