"""meta/runtime.yml's action groups: `all` lists every module in plugins/modules, `postgres` is part of it."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def modules(root: Path = ROOT) -> set:
    return {p.stem for p in (root / "plugins" / "modules").glob("*.py") if p.stem != "__init__"}


def group_problems(groups: dict, module_names: set) -> list:
    """What is wrong with the action groups, each naming the module and what to do."""
    problems = []
    listed = groups.get("all") or []
    for name in sorted(module_names - set(listed)):
        problems.append(f"module {name} (plugins/modules/{name}.py) is missing from action group all in meta/runtime.yml: add it")
    for name in sorted(set(listed) - module_names):
        problems.append(f"action group all lists {name}, which is not in plugins/modules: remove it")
    if len(listed) != len(set(listed)):
        problems.append("action group all lists a module twice")
    for name in sorted(set(groups.get("postgres") or []) - set(listed)):
        problems.append(f"action group postgres lists {name}, which action group all does not")
    return problems


def test_all_lists_every_module_and_postgres_is_part_of_it():
    groups = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())["action_groups"]
    assert groups["postgres"], "the postgres group stays (roles and users set connection options with it)"
    assert group_problems(groups, modules()) == []


def test_a_module_missing_from_all_is_named():
    # Negative control: a new module nobody added to `all`, a stale entry, and a postgres member outside `all`.
    groups = {"all": ["backup_start", "gone"], "postgres": ["backup_start", "cluster_info"]}
    problems = group_problems(groups, {"backup_start", "copy_wait"})
    assert any("module copy_wait" in p and "missing from action group all" in p for p in problems), problems
    assert any("lists gone" in p for p in problems), problems
    assert any("postgres lists cluster_info" in p for p in problems), problems
