"""Peak RSS of a process tree, sampled from /proc (no psutil in the venv): the ansible-playbook run and, across hosts,
the module processes the namespace hosts' sshd start for it (they are not the playbook's children)."""

from __future__ import annotations

import os
import threading
from typing import Iterable


def _children_map() -> dict:
    kids: dict = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree(roots: Iterable[int]) -> set:
    """``roots`` and all their descendants now (the roots themselves excluded when they are sshd listeners)."""
    kids = _children_map()
    seen, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(kids.get(pid, ()))
    return seen


class PeakRss:
    """Samples every ``interval`` s the largest RSS of one process below ``roots`` (``exclude``: e.g. the sshd listeners)."""

    def __init__(self, roots: Iterable[int], exclude: Iterable[int] = (), interval: float = 0.2) -> None:
        self.roots, self.exclude, self.interval = list(roots), set(exclude), interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for pid in tree(self.roots) - self.exclude:
                self.peak = max(self.peak, _rss(pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
