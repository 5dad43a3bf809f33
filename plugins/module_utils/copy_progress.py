# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The copy's progress file: bytes and files done of the totals, phase and rate, rewritten at most once a second
(0600, replaced atomically), read by copy_wait on the same host."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Optional


class Progress:
    def __init__(self, path: Optional[str], total_bytes: int, total_files: int) -> None:
        self.path = path
        self.total_bytes = total_bytes
        self.total_files = total_files
        self.bytes = 0
        self.files = 0
        self.phase = "copy"
        self.start = time.monotonic()
        self.lock = threading.Lock()
        self.last = 0.0

    def add(self, size: int) -> None:
        with self.lock:
            self.bytes += size
            self.files += 1
        self.write()

    def add_bytes(self, size: int) -> None:
        """Bytes of a file still being copied (the progress file moves within a large file too)."""
        with self.lock:
            self.bytes += size
        self.write()

    def file_done(self) -> None:
        with self.lock:
            self.files += 1
        self.write()

    def write(self, force: bool = False) -> None:
        if not self.path:
            return
        now = time.monotonic()
        with self.lock:
            if not force and now - self.last < 1.0:
                return
            self.last = now
            self._dump(now)

    def _dump(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-6)
        data = {
            "phase": self.phase,
            "bytes_done": self.bytes,
            "bytes_total": self.total_bytes,
            "files_done": self.files,
            "files_total": self.total_files,
            "seconds": round(elapsed, 3),
            "rate_bytes_per_second": int(self.bytes / elapsed),
        }
        tmp = self.path + ".tmp"
        # 0600: it sits beside the destination, and nothing the collection writes is for other users
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.chmod(tmp, 0o600)  # a .tmp left by an older run keeps its mode through O_CREAT
        os.replace(tmp, self.path)
