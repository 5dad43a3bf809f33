"""The standby_backup preflight's id rule is the modules' own: an id the role lets through is one backup_start
(keeper_files.check_backup_id) and wal_retain (slots.slot_name_for_backup) take, and one it refuses they would refuse,
after the slot and the start (issue 12 item 4)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.session.keeper_files import check_backup_id
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.slots import slot_name_for_backup

ROOT = Path(__file__).resolve().parents[2]
IDS = ["--rf", "../x", "a b", "-x", ".hidden", "x" * 54, "x" * 55, "x" * 63, "x" * 64, "20261202T013428Z-106094", "A.b_c-d", "é", "a/b", "a:b"]


def _role_rule(use_slot: bool):
    tasks = yaml.safe_load((ROOT / "roles" / "standby_backup" / "tasks" / "preflight.yml").read_text())
    task = next(t for t in tasks if t.get("name") == "Check the backup's id and paths")
    assert "54 if standby_backup_use_slot | bool else 63" in task["vars"]["_id_max"]
    that = task["ansible.builtin.assert"]["that"][0]
    m = re.search(r"match\('(.*?)' ~ \(_id_max \| int - 1\) ~ '(.*?)'\)", that)
    assert m, that
    return re.compile(f"{m.group(1)}{(54 if use_slot else 63) - 1}{m.group(2)}")


def _modules_take(backup_id: str, use_slot: bool) -> bool:
    try:
        check_backup_id(backup_id)
        if use_slot:
            slot_name_for_backup(backup_id)
    except PgBackupError:
        return False
    return True


@pytest.mark.parametrize("use_slot", [True, False])
@pytest.mark.parametrize("backup_id", IDS)
def test_the_role_refuses_exactly_what_the_modules_would(backup_id, use_slot):
    assert bool(_role_rule(use_slot).match(backup_id)) == _modules_take(backup_id, use_slot)
