"""Every role's defaults/main.yml and meta/argument_specs.yml (its entry points) list the same variables, with the
role's prefix and the same default values; exit 1 naming every difference. Run by `make lint`."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def check(role: Path) -> list:
    problems = []
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    entries = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    spec = {}
    # A public role's variables are its entry point main's; the private server role has no main, but one entry point
    # per tasks file, all taking its variables.
    for entry in [entries["main"]] if "main" in entries else entries.values():
        spec.update(entry["options"])
    prefix = f"{role.name}_"
    for name in sorted(set(defaults) | set(spec)):
        if not name.startswith(prefix):
            problems.append(f"{role.name}: variable {name} does not start with the role's prefix {prefix}")
        if name not in spec:
            problems.append(f"{role.name}: {name} is in defaults/main.yml but not documented in meta/argument_specs.yml")
            continue
        option = spec[name]
        if name not in defaults:
            if not option.get("required"):
                problems.append(f"{role.name}: {name} is documented but has no default in defaults/main.yml (and is not required)")
            continue
        if "default" in option and option["default"] != defaults[name]:
            problems.append(f"{role.name}: {name} defaults to {defaults[name]!r} in defaults/main.yml but {option['default']!r} in argument_specs")
        if "default" not in option and not option.get("required"):
            problems.append(f"{role.name}: {name} has a default in defaults/main.yml that argument_specs does not show")
    return problems


def main() -> int:
    problems = [p for role in sorted((ROOT / "roles").iterdir()) if role.is_dir() for p in check(role)]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
