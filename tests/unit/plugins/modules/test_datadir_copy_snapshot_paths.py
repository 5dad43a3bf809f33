"""datadir_copy's source_snapshot_paths through the module: the map is checked before the gate or the listing, and the
result says where each tablespace was read."""

from __future__ import annotations

import os

from ansible_collections.pgbackup.lowlevel.plugins.modules import datadir_copy

from ..module_utils.test_copy_engine import datadir, write  # noqa: F401  # pylint: disable=unused-import  # datadir is the fixture
from .module_runner import run_main


def test_a_relative_snapshot_path_is_refused_before_the_gate(monkeypatch, capsys, tmp_path):
    waited = []
    monkeypatch.setattr(datadir_copy, "wait_for_gate", lambda *a: waited.append(a))
    args = {"source_path": "/nowhere/data", "data_dir": str(tmp_path / "dst"), "gate": str(tmp_path / "gate"), "gate_token": "t" * 16,
            "source_snapshot_paths": {"/srv/ts": "snaps/ts"}}  # fmt: skip
    result = run_main(datadir_copy.main, monkeypatch, capsys, args)
    assert result["failed"] is True and "every value must be an absolute path, not 'snaps/ts'" in result["msg"], result
    assert waited == [] and not (tmp_path / "dst").exists()


def test_the_result_names_the_live_location_and_the_place_read(monkeypatch, capsys, datadir, tmp_path):  # noqa: F811
    frozen = tmp_path / "snaps" / "ts"
    write(frozen / "PG_15_202209061" / "5" / "16500", b"s" * 300)
    live, dest, ts_dst = str(tmp_path / "ts_src"), tmp_path / "dst", tmp_path / "ts_dst"
    args = {"source_path": str(datadir), "data_dir": str(dest), "tablespace_mapping": {"16499": str(ts_dst)}, "owner": "",
            "source_snapshot_paths": {live: str(frozen)}}  # fmt: skip
    result = run_main(datadir_copy.main, monkeypatch, capsys, args)
    assert result.get("failed") is not True, result
    assert {"oid": "16499", "source": live, "dest": str(ts_dst), "in_place": False, "read_from": str(frozen)} in result["tablespaces"]
    assert os.readlink(dest / "pg_tblspc" / "16499") == str(ts_dst)
    assert sorted(os.listdir(ts_dst / "PG_15_202209061" / "5")) == ["16500"]
