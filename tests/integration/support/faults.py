"""Faults the tests plant: a small full filesystem, a throttled link, a promotion during the copy (and the copy module's
process to time it by)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

MIB = 1 << 20
FS_SIZE = 64 * MIB


@contextmanager
def small_filesystem(where: Path, size: int = FS_SIZE):
    """A fresh ext4 filesystem of ``size`` bytes mounted at ``where/mnt`` (loop device); unmounted and removed after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a loop device needs root")
    image, mnt = where / "small.img", where / "mnt"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", str(size), str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image)], check=True, capture_output=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        image.unlink()
        pytest.fail(f"mount -o loop failed: {mounted.stderr}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False, capture_output=True)
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)
        image.unlink()


def throttle(host, rate: str = "4mbit") -> None:
    subprocess.run(["ip", "netns", "exec", host.netns, "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", rate,
                    "burst", "32kbit", "latency", "400ms"], check=True)  # fmt: skip


def unthrottle(host) -> None:
    subprocess.run(["ip", "netns", "exec", host.netns, "tc", "qdisc", "del", "dev", "eth0", "root"], check=False, stderr=subprocess.DEVNULL)  # none: fine


RECHECK = "Check that the standby is still the backup's source"


def copy_module_pid(datadir):
    """The datadir_copy process copying ``datadir``: it has a file under it open (the preflight's check-mode run of the
    module opens none, and another test's copy has other files open)."""
    prefix = str(datadir) + "/"
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    cmdline = handle.read()
                if b"AnsiballZ_datadir_copy" not in cmdline or b"/bin/sh" in cmdline.split(b"\0")[0]:
                    continue
                for fd in os.listdir(f"/proc/{entry}/fd"):
                    target = os.readlink(f"/proc/{entry}/fd/{fd}")
                    if target.startswith(prefix) and not target.endswith("/global/pg_control"):  # the preflight reads that
                        return int(entry)
            except OSError:
                continue
    return None


def promote_during_the_copy(standby, seen: dict) -> None:
    """Freeze the copy as soon as it runs, promote the standby, let the copy go on: a promotion in the middle of the copy."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not seen.get("done"):
        pid = copy_module_pid(standby.datadir)
        if pid is not None:
            try:
                os.kill(pid, signal.SIGSTOP)
                seen["frozen"] = True
            except ProcessLookupError:
                pass
            try:
                standby.sql("SELECT pg_promote(true, 60)")
                seen["promoted"] = True
            finally:
                if seen.get("frozen"):
                    os.kill(pid, signal.SIGCONT)
            return
        time.sleep(0.002)
