# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a copy's files come from: a data directory on this host or on another one over ssh (``Source``), and its
listing (``list_tree``: ``os.scandir`` here, ``find -printf`` over ssh, NUL-separated), tablespace targets included."""

from __future__ import annotations

import os
import shlex
import socket
import stat
from functools import cache
from typing import Optional

from . import processes
from .errors import PgBackupError

# Offered first where this host's CPU has AES instructions: aes128-gcm cost ssh's client a fraction of the CPU of
# OpenSSH's default chacha20-poly1305, and copies over ssh ran about 16 % faster with it (bench/README.md, copy_bench).
# OpenSSH's other modern defaults follow, so a server that refuses one (FIPS mode: no chacha20) still finds another.
FAST_CIPHERS = "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-ctr,aes256-ctr"


@cache
def has_aes_instructions(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU advertises AES (x86 ``flags`` and ARMv8 ``Features`` both name it ``aes``)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            return any(line.startswith(("flags", "Features")) and "aes" in line.split() for line in f)
    except OSError:
        return False


def cipher_options(ssh_options: list) -> list:
    """``-c FAST_CIPHERS`` unless the user's own ssh options choose ciphers, or this CPU lacks AES instructions."""
    chosen = any(a == "-c" or (a.startswith("-c") and len(a) > 2) or "ciphers" in a.lower() for a in ssh_options)
    return [] if chosen or not has_aes_instructions() else ["-c", FAST_CIPHERS]


class Source:
    """Where the data directory is: ``host`` None means this host."""

    def __init__(self, path: str, host: Optional[str] = None, user: Optional[str] = None, port: Optional[int] = None,
                 key: Optional[str] = None, ssh_options: tuple = ()) -> None:  # fmt: skip
        if not os.path.isabs(path):
            raise PgBackupError(f"source path {path!r} must be absolute")
        if host is not None and (host.startswith("-") or not host):
            raise PgBackupError(f"source host {host!r} is not a host name")
        self.path = os.path.normpath(path)
        self.host = host
        self.user = user
        self.port = port
        self.key = key
        self.ssh_options = list(ssh_options)

    @property
    def remote(self) -> bool:
        return self.host is not None

    def ssh_argv(self) -> list:
        argv = ["ssh", "-o", "BatchMode=yes"]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.key:
            argv += ["-i", self.key]
        if self.user:
            argv += ["-l", self.user]
        return argv + cipher_options(self.ssh_options) + self.ssh_options

    def run(self, argv: list) -> bytes:
        """Run ``argv`` on the source host (each word quoted for the remote shell) and return stdout."""
        if self.remote:
            full = [*self.ssh_argv(), self.host, "--", " ".join(shlex.quote(a) for a in argv)]
        else:
            full = argv
        proc = processes.run(full)
        if proc.returncode == 255 and self.remote:
            raise PgBackupError(self.ssh_failure(proc.stderr.decode(errors="replace").strip()), source_host=self.host)
        if proc.returncode != 0:
            where = f"on {self.host}" if self.remote else "locally"
            raise PgBackupError(f"{argv[0]} {where} failed ({proc.returncode}): {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout

    def ssh_failure(self, stderr: str) -> str:
        """What a failed ssh login to the source means, between which hosts, and what to do."""
        who = f"{self.user}@{self.host}" if self.user else self.host
        port = self.port or 22
        return f"ssh from this host ({socket.gethostname()}) to {who} port {port} failed: {stderr}. {ssh_hint(stderr, self.host, port, self.user)}"

    def rsync_spec(self, path: str) -> str:
        return f"{self.host}:{path}" if self.remote else path


def ssh_hint(stderr: str, host: str, port: int, user: Optional[str]) -> str:
    """What to do about an ssh error (module option names; the roles say their own variables)."""
    user = user or "the user"
    if "Host key verification failed" in stderr or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        return (
            f"This host does not know {host}'s host key: add it to the known_hosts of the user that runs the copy here "
            f"(ssh-keyscan -p {port} {host} >> ~/.ssh/known_hosts, after checking its fingerprint), or pass ssh_options "
            "(e.g. ['-o', 'StrictHostKeyChecking=accept-new'])"
        )
    if "Permission denied" in stderr:
        return f"{host} refused the key: add this host's public key to {user}'s ~/.ssh/authorized_keys on {host}, or give ssh_key (and source_user)"
    if "Could not resolve" in stderr or "Name or service not known" in stderr:
        return f"{host} is not a known host name here: give an address or a resolvable name"
    return f"check that sshd listens on {host} port {port} and that this host can reach it (source_port, ssh_options)"


class Entry:
    __slots__ = ("kind", "mode", "rel", "size", "target")

    def __init__(self, rel: str, kind: str, size: int, mode: int, target: str = "") -> None:
        self.rel = rel
        self.kind = kind
        self.size = size
        self.mode = mode
        self.target = target


def list_local(root: str) -> list:
    out = []
    st = os.stat(root)
    out.append(Entry("", "d", 0, stat.S_IMODE(st.st_mode)))
    stack = [("", root)]
    while stack:
        rel, path = stack.pop()
        try:
            it = list(os.scandir(path))
        except FileNotFoundError:
            continue
        for de in it:
            r = f"{rel}/{de.name}" if rel else de.name
            try:
                st = de.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                out.append(Entry(r, "d", 0, stat.S_IMODE(st.st_mode)))
                stack.append((r, de.path))
            elif stat.S_ISLNK(st.st_mode):
                out.append(Entry(r, "l", 0, 0o777, os.readlink(de.path)))
            elif stat.S_ISREG(st.st_mode):
                out.append(Entry(r, "f", st.st_size, stat.S_IMODE(st.st_mode)))
    return out


def _parse_find(data: bytes) -> list:
    out = []
    for rec in data.split(b"\0"):
        if not rec:
            continue
        kind, size, mode, target, rel = rec.split(b"\t", 4)
        k = kind.decode()
        if k not in ("f", "d", "l"):
            continue
        out.append(Entry(os.fsdecode(rel), k, int(size), int(mode, 8), os.fsdecode(target)))
    return out


def list_tree(source: Source, root: str) -> list:
    if not source.remote:
        return list_local(root)
    return _parse_find(source.run(["find", "-H", root, "-printf", r"%y\t%s\t%m\t%l\t%P\0"]))
