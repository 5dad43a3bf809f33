# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where the restore test stops, and the overlay's refusal when it cannot mount (the caller then copies)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import overlay
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.restore_test import end_point


def test_end_point_primary_is_the_stop_lsn():
    label = SimpleNamespace(backup_from="primary")
    control = SimpleNamespace(min_recovery_point=0x5000000)
    assert end_point(label, control, "0/6017148") == 0x6017148


def test_end_point_standby_is_the_copied_min_recovery_point_not_the_stop_lsn():
    label = SimpleNamespace(backup_from="standby")
    control = SimpleNamespace(min_recovery_point=0x5000000)
    assert end_point(label, control, "0/6017148") == 0x5000000


def test_end_point_unknown():
    assert end_point(SimpleNamespace(backup_from="primary"), None, None) is None
    assert end_point(SimpleNamespace(backup_from="standby"), SimpleNamespace(min_recovery_point=0), "0/1") is None


def test_overlay_refuses_without_root(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    why = overlay.mount_overlay(str(tmp_path), str(tmp_path / "u"), str(tmp_path / "w"), str(tmp_path / "t"), 0, 0)
    assert why == "not root: an overlay mount needs root"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")
def test_overlay_refuses_a_path_with_a_comma(tmp_path):
    lower = tmp_path / "a,b"
    lower.mkdir()
    why = overlay.mount_overlay(str(lower), str(tmp_path / "u"), str(tmp_path / "w"), str(tmp_path / "t"), os.getuid(), os.getgid())
    assert why is not None and "','" in why


def test_tree_bytes(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 100)
    (tmp_path / "g").write_bytes(b"y" * 23)
    os.symlink("/nonexistent", tmp_path / "link")
    assert overlay.tree_bytes(str(tmp_path)) == 123 + len("/nonexistent")
