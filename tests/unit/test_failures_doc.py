"""docs/failures.md keeps in step with what the standby_backup and replica_clone roles can print: every task of theirs
that fails with a message of its own is named there, and so is every ending the rescue's message can have."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("standby_backup", "replica_clone")
RESCUE_ENDINGS = (
    "No backup had been started on",
    "The backup was aborted on",
    "The backup had been stopped on",
    "Aborting the backup on",
    "is marked incomplete (",
    "Nothing was written to",
    "carries no incomplete marker",
    "Nothing was started (no slot, no backup) and nothing was written to",
)


def _failing_tasks(tasks) -> list:
    out = []
    for task in tasks or []:
        for key in ("block", "rescue", "always"):
            out += _failing_tasks(task.get(key))
        if "ansible.builtin.assert" in task or "ansible.builtin.fail" in task:
            out.append(task)
    return out


def _role_tasks() -> list:
    out = []
    for role in ROLES:
        for path in sorted((ROOT / "roles" / role / "tasks").glob("*.yml")):
            out += [(path, t) for t in _failing_tasks(yaml.safe_load(path.read_text()))]
    return out


def test_every_failing_task_of_the_roles_is_in_failures_md():
    doc = (ROOT / "docs" / "failures.md").read_text()
    tasks = _role_tasks()
    assert len(tasks) >= 8, "the walk finds the roles' assert and fail tasks"
    missing = [f"{path.relative_to(ROOT)}: {t['name']}" for path, t in tasks if t["name"] != "Fail with the cause" and t["name"] not in doc]
    assert not missing, f"not in docs/failures.md: {missing}"


def test_every_ending_of_the_rescue_message_is_in_the_role_and_in_failures_md():
    doc = (ROOT / "docs" / "failures.md").read_text()
    role = "".join(p.read_text() for p in (ROOT / "roles" / "standby_backup" / "tasks").glob("*.yml"))
    for ending in RESCUE_ENDINGS:
        assert ending in role, f"the role no longer says {ending!r}: update this test and docs/failures.md"
        assert ending in doc, f"docs/failures.md does not explain {ending!r}"
