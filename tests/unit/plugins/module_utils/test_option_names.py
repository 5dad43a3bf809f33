# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One name set for a backup's WAL range, the old names as deprecated aliases; one rule for a system identifier."""

from __future__ import annotations

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.option_names import REMOVED_IN, backup_range_argument_spec, renamed_from
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.system_identifier import expected_system_identifier


def test_range_spec_with_old_names_as_deprecated_aliases():
    spec = backup_range_argument_spec("start_lsn", "stop_lsn", required=("stop_lsn",), old_names={"wal_end_lsn": "stop_lsn"})
    assert spec["start_lsn"] == {"type": "str", "required": False}
    assert spec["stop_lsn"]["required"] is True and spec["stop_lsn"]["aliases"] == ["wal_end_lsn"]
    assert spec["stop_lsn"]["deprecated_aliases"] == [{"name": "wal_end_lsn", "version": REMOVED_IN, "collection_name": "pgbackup.lowlevel"}]
    assert backup_range_argument_spec("stop_timeline")["stop_timeline"]["type"] == "int"


@pytest.mark.parametrize(
    "call",
    [
        lambda: backup_range_argument_spec("end_lsn"),
        lambda: backup_range_argument_spec("start_lsn", required=("stop_lsn",)),
        lambda: backup_range_argument_spec("start_lsn", old_names={"wal_end_lsn": "stop_lsn"}),
    ],
)
def test_range_spec_refuses_names_outside_the_set(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, None),
        ("", None),
        ("7440123456789012345", "7440123456789012345"),
        (7440123456789012345, "7440123456789012345"),
        ("-1", str((1 << 64) - 1)),
        (str((1 << 64) - 1), str((1 << 64) - 1)),
        (str(-(1 << 63)), str(1 << 63)),
    ],
)
def test_system_identifier_as_digits(given, expected):
    assert expected_system_identifier(given) == expected


@pytest.mark.parametrize("given", ["abc", "12a", 1.5, True, "1 2", "\u00b2", str(1 << 64), str(-(1 << 63) - 1), "+1", "--1"])
def test_system_identifier_refuses_what_is_not_one(given):
    with pytest.raises(PgBackupError, match=r"expect_system_identifier must be a system identifier \(digits"):
        expected_system_identifier(given)


def test_renamed_from_keeps_the_old_name_with_a_warning():
    option = renamed_from({"type": "path"}, "dest")
    assert option["aliases"] == ["dest"] and option["deprecated_aliases"][0]["name"] == "dest"
