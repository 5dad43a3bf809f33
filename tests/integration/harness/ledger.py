"""What a test bed created, written to a JSON file as it goes, and the teardown that works from it alone.

Because every PID, namespace and link is recorded before or right after it exists, the same teardown serves
a live test bed, a half-built one, `sandbox down` in another process, and `sandbox reap` after a crash.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any, Optional

from . import procs


class Ledger:
    def __init__(self, path: Path, **header: Any) -> None:
        self.path = path
        self.data: dict[str, Any] = {**header, "owner_pid": os.getpid(), "processes": [], "clusters": [], "netns": [], "links": []}
        self.save()

    def add(self, kind: str, item: Any) -> None:
        if item not in self.data[kind]:
            self.data[kind].append(item)
        self.save()

    def set_cluster_pid(self, datadir: Path, pid: Optional[int]) -> None:
        for entry in self.data["clusters"]:
            if entry["datadir"] == str(datadir):
                entry["pid"] = pid
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        tmp.replace(self.path)


def teardown(data: dict[str, Any], ledger_path: Optional[Path] = None) -> None:
    """Stop every recorded process by PID, remove namespaces, links and the run dir. Safe to repeat."""
    for proc in reversed(data.get("processes", [])):  # pgbench and sshd
        procs.kill(proc["pid"], proc["marker"], sig=signal.SIGINT if proc.get("what") == "pgbench" else signal.SIGTERM)
    for cluster in reversed(data.get("clusters", [])):
        stop_cluster(cluster)
    if data.get("run_dir"):
        # Servers the code under test started in data directories of its own under the run dir (restores, clones).
        for pid_file in Path(data["run_dir"]).rglob("postmaster.pid"):
            stop_cluster({"datadir": str(pid_file.parent), "pg_ctl": None})
    for netns in data.get("netns", []):
        # Anything still inside one of our namespaces was started there by us (an ssh session, a server).
        pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, check=False).stdout.split()
        for pid in pids:
            procs.kill(int(pid))
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
    for link in data.get("links", []):
        subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
    run_dir = data.get("run_dir")
    if run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
    if ledger_path:
        ledger_path.unlink(missing_ok=True)


def stop_cluster(cluster: dict[str, Any]) -> None:
    datadir, pid = cluster["datadir"], cluster.get("pid")
    pid_file = Path(datadir) / "postmaster.pid"
    if pid_file.exists():
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            pass
    if not pid or not procs.alive(pid, datadir):
        return
    if cluster["pg_ctl"] is None:
        procs.kill(pid, datadir, sig=signal.SIGINT, timeout=60)  # SIGINT is a fast shutdown; SIGKILL follows if it hangs
        return
    for mode in ("fast", "immediate"):
        stop = ["runuser", "-u", "postgres", "--", cluster["pg_ctl"], "-D", datadir, "-m", mode, "-w", "-t", "60", "stop"]
        subprocess.run(stop, capture_output=True, check=False)
        if not procs.alive(pid, datadir):
            return
    procs.kill(pid, datadir, sig=signal.SIGKILL)


def reap(base: Path) -> list[Path]:
    """Tear down test beds under ``base`` whose owning process is gone (a killed pytest, an interrupted demo)."""
    reaped = []
    for ledger_path in sorted(base.glob("*/state.json")):
        try:
            data = json.loads(ledger_path.read_text())
        except (OSError, ValueError):
            continue
        owner = data.get("owner_pid")
        if data.get("persistent") or (owner and procs.cmdline(owner)):
            continue
        teardown(data, ledger_path)
        reaped.append(ledger_path.parent)
    return reaped
