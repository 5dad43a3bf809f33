"""scripts/gen_role_readmes.py: the variables table from argument_specs.yml, only between the markers, and --check."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1].parent
_spec = importlib.util.spec_from_file_location("gen_role_readmes", ROOT / "scripts" / "gen_role_readmes.py")
gen = importlib.util.module_from_spec(_spec)
sys.modules["gen_role_readmes"] = gen
_spec.loader.exec_module(gen)

SPEC = {
    "argument_specs": {
        "main": {
            "options": {
                "demo_mode": {"description": ["C(fast) or C(slow)."], "type": "str", "choices": ["fast", "slow"], "default": "fast"},
                "demo_host": {"description": "Where | to go.", "type": "str", "required": True},
                "demo_options": {"description": "Extra.", "type": "list", "elements": "str", "default": []},
                "demo_flag": {"description": "A switch.", "type": "bool", "default": False},
                "demo_password": {"description": "Empty for none.", "type": "str", "default": ""},
            }
        }
    }
}
README = f"# demo\n\nHand-written text.\n\n{gen.BEGIN}\nold table\n{gen.END}\n\nAfter.\n"


def test_table_rows_in_spec_order_with_markup_and_defaults():
    text = gen.render(README, SPEC, "roles/demo/README.md")
    assert text.startswith("# demo\n\nHand-written text.\n\n") and text.endswith(f"{gen.END}\n\nAfter.\n")
    assert "old table" not in text
    rows = [line for line in text.splitlines() if line.startswith("| `demo_")]
    assert [r.split("`")[1] for r in rows] == ["demo_mode", "demo_host", "demo_options", "demo_flag", "demo_password"]
    assert rows[0] == "| `demo_mode` | str | `fast` | `fast` or `slow`. Choices: `fast`, `slow`. |"
    assert rows[1] == "| `demo_host` | str | **required** | Where \\| to go. |"
    assert rows[2] == "| `demo_options` | list of str | `[]` | Extra. |"
    assert rows[3] == "| `demo_flag` | bool | `false` | A switch. |"
    assert rows[4] == '| `demo_password` | str | `""` | Empty for none. |'
    assert gen.render(text, SPEC, "x") == text  # deterministic: a second run changes nothing


@pytest.mark.parametrize("readme", ["no markers\n", f"{gen.END}\n{gen.BEGIN}\n", f"{gen.BEGIN}\n{gen.BEGIN}\n{gen.END}\n"])
def test_markers_missing_or_out_of_order_are_refused(readme):
    with pytest.raises(ValueError, match=r"roles/demo/README.md: needs exactly one <!-- BEGIN VARIABLES -->"):
        gen.render(readme, SPEC, "roles/demo/README.md")


@pytest.fixture
def tree(tmp_path):
    role = tmp_path / "roles" / "demo"
    (role / "meta").mkdir(parents=True)
    (role / "meta" / "argument_specs.yml").write_text(yaml.safe_dump(SPEC))
    (role / "README.md").write_text(README)
    return tmp_path


def test_check_names_the_stale_readme_and_the_write_fixes_it(tree, capsys):
    assert gen.main(["--check"], root=tree) == 1
    assert "roles/demo/README.md is stale" in capsys.readouterr().err
    assert gen.main([], root=tree) == 0
    assert gen.main(["--check"], root=tree) == 0
    # A variable added to the spec makes the README stale again.
    spec = yaml.safe_load((tree / "roles/demo/meta/argument_specs.yml").read_text())
    spec["argument_specs"]["main"]["options"]["demo_new"] = {"description": "New.", "type": "int", "default": 3}
    (tree / "roles/demo/meta/argument_specs.yml").write_text(yaml.safe_dump(spec))
    assert gen.main(["--check"], root=tree) == 1
    assert "roles/demo/README.md is stale" in capsys.readouterr().err


def test_check_names_a_missing_readme(tree, capsys):
    (tree / "roles/demo/README.md").unlink()
    assert gen.main(["--check"], root=tree) == 1
    assert "roles/demo/README.md is missing" in capsys.readouterr().err


def test_the_checked_in_readmes_are_current(tmp_path):
    copy = tmp_path / "checkout"
    shutil.copytree(ROOT / "roles", copy / "roles")
    assert gen.main(["--check"], root=copy) == 0
