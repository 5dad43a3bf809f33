from __future__ import annotations

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.exclusions import (
    Exclusions,
    is_database_dir,
    is_temp_relation_name,
    parse_relation_file_name,
)

ALL = (13, 14, 15, 16, 17, 18)


def kept_paths(major, entries, extra=()):
    kept, _dropped = Exclusions(major, extra).filter(entries)
    return [p for p, _k in kept]


def test_relation_names():
    assert parse_relation_file_name("16384") == ("16384", "main")
    assert parse_relation_file_name("16384_fsm") == ("16384", "fsm")
    assert parse_relation_file_name("16384_init.1") == ("16384", "init")
    assert parse_relation_file_name("16384.12") == ("16384", "main")
    assert parse_relation_file_name("16384_main") is None
    assert parse_relation_file_name("PG_VERSION") is None
    assert is_temp_relation_name("t3_16384")
    assert is_temp_relation_name("t3_16384_fsm.2")
    assert not is_temp_relation_name("t3x_16384")
    assert not is_temp_relation_name("16384")


@pytest.mark.parametrize("major", ALL)
def test_database_dirs(major):
    assert is_database_dir("base/5", major)
    assert is_database_dir(f"pg_tblspc/16400/PG_{major}_202209061/5", major)
    assert not is_database_dir("pg_tblspc/16400/PG_99_202209061/5", major)
    assert not is_database_dir("base", major)
    assert not is_database_dir("base/5/x", major)
    assert is_database_dir("global", major) == (major >= 17)


@pytest.mark.parametrize("major", ALL)
def test_unlogged_keeps_only_init(major):
    entries = [("base", "d"), ("base/5", "d")] + [
        (f"base/5/{n}", "f") for n in ("16384", "16384_fsm", "16384_vm", "16384.1", "16384_init", "16390", "16390_vm")
    ]
    kept = kept_paths(major, entries)
    assert "base/5/16384_init" in kept
    assert not {"base/5/16384", "base/5/16384_fsm", "base/5/16384_vm", "base/5/16384.1"} & set(kept)
    assert {"base/5/16390", "base/5/16390_vm"} <= set(kept)


@pytest.mark.parametrize("major", ALL)
def test_unlogged_in_global_only_17_plus(major):
    entries = [("global", "d"), ("global/16384", "f"), ("global/16384_init", "f")]
    assert ("global/16384" in kept_paths(major, entries)) == (major < 17)


@pytest.mark.parametrize("major", ALL)
def test_unlogged_and_temp_in_tablespace(major):
    d = f"pg_tblspc/16400/PG_{major}_202209061/5"
    entries = [(f"{d}/16384", "f"), (f"{d}/16384_init", "f"), (f"{d}/t3_16390", "f"), (f"{d}/16391", "f")]
    assert kept_paths(major, entries) == [f"{d}/16384_init", f"{d}/16391"]


@pytest.mark.parametrize("major", ALL)
def test_temp_relations_only_in_database_dirs(major):
    assert kept_paths(major, [("base/5/t3_16384", "f"), ("t3_16384", "f")]) == ["t3_16384"]


@pytest.mark.parametrize("major", ALL)
def test_dir_contents_excluded_dirs_kept(major):
    for d in ("pg_stat_tmp", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots", "pg_subtrans"):
        entries = [(d, "d"), (f"{d}/0000", "f"), (f"{d}/slot", "d"), (f"{d}/slot/state", "f")]
        assert kept_paths(major, entries) == [d]


@pytest.mark.parametrize("major", ALL)
def test_files_excluded_by_name(major):
    names = [
        "postmaster.pid",
        "postmaster.opts",
        "backup_label",
        "tablespace_map",
        "backup_manifest",
        "postgresql.auto.conf.tmp",
        "current_logfiles.tmp",
        "global/pg_internal.init",
        "base/5/pg_internal.init.1234",
    ]
    keep = ["PG_VERSION", "postgresql.auto.conf", "postgresql.conf", "global/pg_control", "global/pg_filenode.map", "backup_label.old", "current_logfiles"]
    assert kept_paths(major, [(n, "f") for n in names + keep]) == keep


@pytest.mark.parametrize("major", ALL)
def test_pgsql_tmp_any_depth(major):
    entries = [
        ("base/pgsql_tmp", "d"),
        ("base/pgsql_tmp/pgsql_tmp123.0", "f"),
        ("pg_tblspc/1/PG_15_1/pgsql_tmp", "d"),
        ("pg_tblspc/1/PG_15_1/pgsql_tmp/x", "f"),
        ("base/5/pgsql_tmp9", "f"),
    ]
    assert kept_paths(major, entries) == []


@pytest.mark.parametrize("major", ALL)
def test_pg_wal_empty(major):
    entries = [
        ("pg_wal", "d"),
        ("pg_wal/000000010000000000000001", "f"),
        ("pg_wal/00000002.history", "f"),
        ("pg_wal/archive_status", "d"),
        ("pg_wal/archive_status/000000010000000000000001.done", "f"),
        ("pg_wal/summaries", "d"),
        ("pg_wal/summaries/x.summary", "f"),
    ]
    expected = ["pg_wal", "pg_wal/archive_status"] + (["pg_wal/summaries"] if major >= 17 else [])
    assert kept_paths(major, entries) == expected


@pytest.mark.parametrize("major", ALL)
def test_ds_store(major):
    assert (kept_paths(major, [(".DS_Store", "f")]) == []) == (major >= 17)


def test_user_excludes_and_reasons():
    kept, dropped = Exclusions(15, ["*.log", "log"]).filter([("log", "d"), ("log/a.log", "f"), ("log/b", "f"), ("pg_log/x.log", "f"), ("PG_VERSION", "f")])
    assert [p for p, _k in kept] == ["PG_VERSION"]
    assert dropped[0] == ("log", "user exclude log")


@pytest.mark.parametrize("major", ALL)
def test_tablespace_only_its_version_directory(major):
    """basebackup's sendTablespace sends only PG_<major>_<catversion> of a tablespace (not another major's
    directory left by pg_upgrade, nor stray files at the tablespace's root)."""
    entries = [
        ("pg_tblspc/16400", "d"),
        (f"pg_tblspc/16400/PG_{major}_202209061", "d"),
        (f"pg_tblspc/16400/PG_{major}_202209061/5", "d"),
        (f"pg_tblspc/16400/PG_{major}_202209061/5/16384", "f"),
        ("pg_tblspc/16400/PG_12_201909212", "d"),
        ("pg_tblspc/16400/PG_12_201909212/5/16384", "f"),
        ("pg_tblspc/16400/stray file", "f"),
    ]
    assert kept_paths(major, entries) == [p for p, _k in entries[:4]]
    _kept, dropped = Exclusions(major).filter(entries)
    assert dict(dropped)["pg_tblspc/16400/stray file"] == f"outside the tablespace's PG_{major}_* directory"
