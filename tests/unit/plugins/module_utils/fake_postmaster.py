"""A live process named ``postgres`` working in a directory, with the postmaster.pid a server would write there: what
postmaster.postmaster_status() calls a running server, made without a server (a copy of ``sleep`` under that name)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path


@contextlib.contextmanager
def fake_postmaster(data_dir: Path, scratch: Path):
    fake = scratch / "postgres"
    shutil.copy(shutil.which("sleep"), fake)
    proc = subprocess.Popen([str(fake), "30"], cwd=data_dir)
    try:
        # until it has exec'd: before that its /proc comm is still the forking Python's
        deadline = time.monotonic() + 10
        while Path(f"/proc/{proc.pid}/comm").read_text().strip() != "postgres" and time.monotonic() < deadline:
            time.sleep(0.01)
        (data_dir / "postmaster.pid").write_text(f"{proc.pid}\n{data_dir}\n")
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()
