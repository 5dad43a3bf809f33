"""Running the test playbooks (tests/integration/playbooks) with this checkout's ansible-playbook, and the one major a
single-major test takes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ..harness.pgbins import ROOT, selected_majors

PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"  # tests/integration/playbooks


ANSIBLE_PLAYBOOK = str(ROOT / ".venv" / "bin" / "ansible-playbook")


def one_major() -> int:
    """The major for the tests that need only one: Debian's 15 when selected, else the newest selected."""
    majors = selected_majors()
    return 15 if 15 in majors else majors[-1]


def run_playbook(env: dict, inventory: Path, playbook: str, extra: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    extra_file = inventory.parent / f"extra-{playbook}.json"
    extra_file.write_text(json.dumps(extra))
    extra_file.chmod(0o600)
    argv = [ANSIBLE_PLAYBOOK, "-i", str(inventory), str(PLAYBOOKS / playbook), "-e", f"@{extra_file}", *args]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}")
    return proc
