"""Test hosts: the controller itself (local mode) or network namespaces with an address and an sshd each.

Namespaces share the filesystem (and the PID space) with the controller; only the network differs, which is
what the cross-host tests need: PostgreSQL, ssh and rsync see separate addresses.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .ledger import Ledger

SUPERNET = ipaddress.ip_network("10.231.0.0/16")


@dataclass
class Host:
    name: str
    address: str
    netns: Optional[str] = None
    sshd_pid: Optional[int] = None
    next_port: int = field(default=5432, repr=False)  # namespace hosts have their own port space

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
    """A bridge in the root namespace (the controller's address is .1) and one namespace per host, each with an sshd."""

    def __init__(self, prefix: str, ssh_dir: Path, ledger: Ledger) -> None:
        self.prefix = prefix  # in every namespace and link name, so leftovers are recognisable
        self.bridge = f"{prefix}br"
        self.ssh_dir = ssh_dir
        self.ledger = ledger
        self.hosts: list[Host] = []
        self.client_key = ssh_dir / "id_ed25519"
        self.subnet = _free_subnet()
        self.controller_address = str(self.subnet.network_address + 1)

    def setup(self) -> None:
        self.ledger.add("links", self.bridge)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.controller_address}/{self.subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        # StrictModes checks every directory up from authorized_keys: root-owned, not group/world writable.
        self.ssh_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        _keygen(self.client_key)
        keys = self.ssh_dir / "authorized_keys"
        keys.mkdir(mode=0o755, exist_ok=True)
        public = self.client_key.with_suffix(".pub").read_text()
        for user in ("root", "postgres"):
            (keys / user).write_text(public)
            (keys / user).chmod(0o644)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory

    def add_host(self, name: str) -> Host:
        index = len(self.hosts) + 1
        netns, veth = f"{self.prefix}-{name}", f"{self.prefix}v{index}"
        address = str(self.subnet.network_address + 10 + index)
        self.ledger.add("netns", netns)
        _ip("netns", "add", netns)
        self.ledger.add("links", veth)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "route", "add", "default", "via", self.controller_address)
        host = Host(name, address, netns)
        self.hosts.append(host)
        self._start_sshd(host)
        return host

    def _start_sshd(self, host: Host) -> None:
        key = self.ssh_dir / f"host_{host.name}_ed25519"
        _keygen(key)
        config = self.ssh_dir / f"sshd_{host.name}.conf"
        settings = {
            "ListenAddress": host.address,
            "Port": "22",
            "HostKey": key,
            "PidFile": self.ssh_dir / f"sshd_{host.name}.pid",
            "AuthorizedKeysFile": f"{self.ssh_dir / 'authorized_keys'}/%u",
            "PermitRootLogin": "prohibit-password",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "UsePAM": "no",
            "StrictModes": "yes",
            "Subsystem": "sftp internal-sftp",  # Ansible copies files over sftp by default
            "LogLevel": "VERBOSE",
        }
        config.write_text("".join(f"{key} {value}\n" for key, value in settings.items()))
        with open(self.ssh_dir / f"sshd_{host.name}.log", "ab") as log:
            # ip netns exec execs sshd, so the PID we record is sshd's own; -D keeps it in the foreground.
            proc = host.popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        host.sshd_pid = proc.pid
        self.ledger.add("processes", {"pid": proc.pid, "marker": str(config), "what": "sshd"})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            with socket.socket() as sock:
                sock.settimeout(1)
                if sock.connect_ex((host.address, 22)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"sshd on {host.name} ({host.address}) did not come up; see {self.ssh_dir}/sshd_{host.name}.log")

    def ssh_options(self) -> list[str]:
        options = ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "LogLevel=ERROR", "BatchMode=yes", "ConnectTimeout=10"]
        return ["-i", str(self.client_key)] + [arg for option in options for arg in ("-o", option)]


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 10.231.0.0/16 no interface on this machine uses (another run, or anything else)."""
    used = set()
    for line in _ip("-o", "-4", "addr", "show").stdout.splitlines():
        iface = ipaddress.ip_interface(line.split()[3])
        if iface.ip in SUPERNET:
            used.add(iface.network.supernet(new_prefix=24) if iface.network.prefixlen > 24 else iface.network)
    # Start at a random /24 so two runs setting up at the same moment are unlikely to pick the same one.
    candidates = list(SUPERNET.subnets(new_prefix=24))[20:250]
    start = secrets.randbelow(len(candidates))
    for subnet in candidates[start:] + candidates[:start]:
        if subnet not in used:
            return subnet
    raise RuntimeError(f"every /24 of {SUPERNET} is in use: remove leftover bridges (ip -o addr | grep 10.231.)")


def _keygen(path: Path) -> None:
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pgbackup-testbed", "-f", str(path)], check=True, capture_output=True)


def postgres_login_problem() -> Optional[str]:
    """Why sshd (UsePAM no) would refuse key logins as postgres, or None."""
    try:
        field_ = subprocess.run(["getent", "shadow", "postgres"], capture_output=True, text=True, check=True).stdout.split(":")[1]
    except (subprocess.CalledProcessError, IndexError):
        return "the postgres OS user does not exist"
    if field_.startswith("!"):
        return "the postgres account is locked ('!' in /etc/shadow), which sshd with UsePAM no refuses"
    return None
