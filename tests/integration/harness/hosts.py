"""Test hosts: the controller itself (local mode) or network namespaces with an address and an sshd each.

Namespaces share the filesystem with the controller; only the network differs, which is what the
cross-host tests need (PostgreSQL, ssh and rsync see separate addresses).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass
class Host:
    name: str
    address: str
    netns: Optional[str] = None
    sshd_pid: Optional[int] = None

    def wrap(self, argv: list[str], user: str = "root") -> list[str]:
        """The command line that runs ``argv`` on this host as ``user``."""
        if user != "root":
            argv = ["runuser", "-u", user, "--", *argv]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv

    def run(self, argv: list[str], user: str = "root", check: bool = True, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.wrap(argv, user), check=check, **kw)

    def popen(self, argv: list[str], user: str = "root", **kw) -> subprocess.Popen:
        return subprocess.Popen(self.wrap(argv, user), **kw)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


class Network:
    """A bridge in the root namespace (the controller's address is .1) and one namespace per host."""

    def __init__(self, run_id: str, ssh_dir: Path) -> None:
        self.prefix = f"pgb{run_id}"
        self.bridge = f"{self.prefix}br"
        self.subnet = 20 + int(run_id, 16) % 200
        self.controller_address = f"10.231.{self.subnet}.1"
        self.ssh_dir = ssh_dir
        self.hosts: list[Host] = []
        self.client_key = ssh_dir / "id_ed25519"

    def setup(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.controller_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        self.ssh_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        _keygen(self.client_key)
        _keygen(self.ssh_dir / "host_ed25519_key")
        keys = self.ssh_dir / "authorized_keys"
        keys.mkdir(mode=0o755, exist_ok=True)
        public = (self.ssh_dir / "id_ed25519.pub").read_text()
        for user in ("root", "postgres"):
            (keys / user).write_text(public)
            (keys / user).chmod(0o644)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    def add_host(self, name: str) -> Host:
        index = len(self.hosts) + 1
        netns = f"{self.prefix}-{name}"
        address = f"10.231.{self.subnet}.{10 + index}"
        veth = f"{self.prefix}v{index}"
        _ip("netns", "add", netns)
        host = Host(name, address, netns)
        self.hosts.append(host)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "route", "add", "default", "via", self.controller_address)
        self._start_sshd(host)
        return host

    def _start_sshd(self, host: Host) -> None:
        config = self.ssh_dir / f"sshd_{host.name}.conf"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {host.address}",
                    "Port 22",
                    f"HostKey {self.ssh_dir / 'host_ed25519_key'}",
                    f"PidFile {self.ssh_dir / f'sshd_{host.name}.pid'}",
                    f"AuthorizedKeysFile {self.ssh_dir / 'authorized_keys'}/%u",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    # The run dir lives under /tmp (world-writable), which StrictModes would reject.
                    "StrictModes no",
                    "Subsystem sftp internal-sftp",
                    "",
                ]
            )
        )
        log = open(self.ssh_dir / f"sshd_{host.name}.log", "ab")
        proc = host.popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
        log.close()
        host.sshd_pid = proc.pid
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                sock.settimeout(1)
                if sock.connect_ex((host.address, 22)) == 0:
                    return
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"sshd on {host.name} ({host.address}) did not come up; see {self.ssh_dir}/sshd_{host.name}.log")

    def ssh_options(self) -> list[str]:
        options = ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "LogLevel=ERROR", "BatchMode=yes"]
        return ["-i", str(self.client_key)] + [arg for option in options for arg in ("-o", option)]

    def teardown(self) -> None:
        for host in self.hosts:
            if host.sshd_pid:
                _kill(host.sshd_pid)
            pids = _ip("netns", "pids", host.netns, check=False).stdout.split()
            for pid in pids:
                _kill(int(pid))
            _ip("netns", "del", host.netns, check=False)
        self.hosts = []
        _ip("link", "del", self.bridge, check=False)


def _keygen(path: Path) -> None:
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pgbackup-testbed", "-f", str(path)], check=True)


def _kill(pid: int, timeout: float = 10) -> None:
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass
