"""datadir_copy with source_kind finished_backup (module_utils/finished_backup.py and the plan's branch for it): a
backup's label, map, manifest and WAL come along, our working files stay behind, tablespaces come from tablespace_map
and move where the mapping says, and what is not a finished backup, or a destination that is not empty, is refused."""

from __future__ import annotations

import os
import sys

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import copy_state, finished_backup
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_engine import Source, check_destination, execute, make_plan
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_source import Entry
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError

SYSID = 7301234567890123456
SEGMENT = "000000010000000000000003"
TS_VERSION_DIR = "PG_15_202209061"


def write(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def backup(tmp_path):
    """A finished backup as the standby_backup role leaves it: label, map, manifest, WAL, our checksum record, a
    tablespace (its link and its map line pointing at the backup's copy of it)."""
    b = tmp_path / "backup"
    ts = tmp_path / "ts_backup"
    write(b / "PG_VERSION", b"15\n")
    write(b / "global" / "pg_control", SYSID.to_bytes(8, sys.byteorder) + b"c" * 8184)
    write(b / "global" / "1262", b"g" * 100)
    write(b / "base" / "5" / "16384", b"u" * 8192)
    write(b / "backup_label", b"START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\n")
    write(b / "backup_manifest", b"{}\n")
    write(b / "pg_wal" / SEGMENT, b"w" * 1000)
    (b / "pg_wal" / "archive_status").mkdir()
    write(b / copy_state.CHECKSUMS_FILE, b'{"algorithm": "SHA256", "files": {}}')
    write(b / "global" / ".pg_control.pgbackup-tmp", b"left by a crash")
    write(b / "tablespace_map", f"16499 {ts}\n".encode())
    write(ts / TS_VERSION_DIR / "5" / "16500", b"s" * 300)
    (b / "pg_tblspc").mkdir()
    (b / "pg_tblspc" / "16499").symlink_to(ts)
    return b


def tree(root):
    out = set()
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            out.add(os.path.relpath(os.path.join(dirpath, n), root))
    return out


def restore(backup, dest, mapping):
    source = Source(str(backup))
    plan = make_plan(source, str(dest), mapping, [], source_kind=finished_backup.FINISHED_BACKUP)
    check_destination(source, plan, str(dest), False)
    return plan, execute(source, plan, str(dest), owner=None)


def test_a_finished_backup_is_copied_with_its_label_map_manifest_and_wal(backup, tmp_path):
    dest, ts_new = tmp_path / "restored", tmp_path / "ts_new"
    plan, result = restore(backup, dest, {str(tmp_path / "ts_backup"): str(ts_new)})
    got = tree(dest)
    assert (dest / "backup_label").read_bytes() == (backup / "backup_label").read_bytes()
    assert (dest / "backup_manifest").read_bytes() == b"{}\n"
    assert (dest / "pg_wal" / SEGMENT).read_bytes() == b"w" * 1000, "the backup's WAL is what makes it restorable"
    assert (dest / "global" / "pg_control").read_bytes() == (backup / "global" / "pg_control").read_bytes()
    assert copy_state.PENDING_CONTROL not in got, "a finished backup's pg_control goes straight to its place"
    assert copy_state.INCOMPLETE_MARKER not in got
    assert "global/.pg_control.pgbackup-tmp" not in got, "our working files stay behind"
    assert copy_state.CHECKSUMS_FILE not in got, "neither the backup's record nor one of its own: the manifest is the record"
    assert (dest / "tablespace_map").read_bytes() == f"16499 {ts_new}\n".encode(), "the map names the new place"
    assert os.readlink(dest / "pg_tblspc" / "16499") == str(ts_new)
    assert (ts_new / TS_VERSION_DIR / "5" / "16500").read_bytes() == b"s" * 300
    assert plan.tablespaces == [{"oid": "16499", "source": str(tmp_path / "ts_backup"), "dest": str(ts_new), "in_place": False}]
    files = [p for p in got if (dest / p).is_file() and not (dest / p).is_symlink()] + [f"ts/{p}" for p in tree(ts_new) if (ts_new / p).is_file()]
    assert plan.new_map is not None and result["files"] == len(files), "every file copied, the rewritten map with them"
    assert result["bytes"] == sum((dest / p).stat().st_size for p in got if (dest / p).is_file()) + 300


def test_the_map_is_kept_byte_for_byte_when_no_tablespace_moves(backup, tmp_path):
    """Across hosts an unmapped tablespace keeps its path: the map stays the backup's (its manifest's checksum holds)."""
    ts = str(tmp_path / "ts_backup")
    tablespaces = [{"oid": "16499", "source": ts, "dest": ts, "in_place": False}]
    assert finished_backup.rewritten_map(tablespaces, 15) is None
    entries = [Entry("tablespace_map", "f", 10, 0o600), Entry("global/pg_control", "f", 8192, 0o600), Entry("PG_VERSION", "f", 3, 0o600)]
    kept, _dropped = finished_backup.kept_entries(entries, rewrites_map=False)
    assert [e.rel for e in kept] == ["tablespace_map", "PG_VERSION"], "the map travels; pg_control travels alone"
    kept, dropped = finished_backup.kept_entries(entries, rewrites_map=True)
    assert [e.rel for e in kept] == ["PG_VERSION"] and dropped[0][0] == "tablespace_map"


def test_a_backup_without_tablespaces_keeps_no_map(backup, tmp_path):
    (backup / "tablespace_map").unlink()
    (backup / "pg_tblspc" / "16499").unlink()
    plan, _result = restore(backup, tmp_path / "restored", {})
    assert plan.tablespaces == [] and plan.new_map is None
    assert not (tmp_path / "restored" / "tablespace_map").exists()


def test_working_files_are_ours_at_any_depth():
    assert finished_backup.is_own_file(".pgbackup-checksums.json")
    assert finished_backup.is_own_file(".pgbackup-wal-staging/000000010000000000000003")
    assert finished_backup.is_own_file("global/.pg_control.pgbackup-tmp")
    assert not finished_backup.is_own_file("base/5/16384") and not finished_backup.is_own_file("backup_label")


def test_the_live_kind_is_the_default_and_leaves_out_the_label_and_the_wal(backup, tmp_path):
    plan = make_plan(Source(str(backup)), str(tmp_path / "copy"), {"16499": str(tmp_path / "ts_new")}, [])
    copied = {e.rel for _s, _d, es in plan.roots for e in es}
    assert plan.source_kind == finished_backup.LIVE
    assert "backup_label" not in copied and f"pg_wal/{SEGMENT}" not in copied and "tablespace_map" not in copied


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda b: (b / "backup_label").unlink(), "it has no backup_label"),
        (lambda b: write(b / copy_state.INCOMPLETE_MARKER, b"failed\n"), f"it carries {copy_state.INCOMPLETE_MARKER}"),
        (lambda b: (b / "global" / "pg_control").rename(b / copy_state.PENDING_CONTROL), "its label was never placed"),
        (lambda b: write(b / "postmaster.pid", b"12345\n"), "it has postmaster.pid"),
    ],
    ids=["no-backup-label", "incomplete", "pending-control", "postmaster-pid"],
)
def test_what_is_not_a_finished_backup_is_refused(backup, tmp_path, damage, words):
    damage(backup)
    with pytest.raises(PgBackupError) as err:
        make_plan(Source(str(backup)), str(tmp_path / "restored"), {}, [], source_kind=finished_backup.FINISHED_BACKUP)
    message = err.value.message
    assert "is not a finished backup" in message and words in message, message
    assert str(backup) in message and "source_kind: live" in message, "names the path and the option to set"
    assert not (tmp_path / "restored").exists()


def test_a_refusal_names_the_host_and_its_ssh_port():
    where = finished_backup.describe(Source("/backups/b1", "db3", "postgres", 2222))
    assert "/backups/b1" in where and "db3" in where and "2222" in where
    assert "port 22)" in finished_backup.describe(Source("/backups/b1", "db3"))


@pytest.mark.parametrize("where", ["data_dir", "tablespace"])
def test_a_destination_that_is_not_empty_is_refused(backup, tmp_path, where):
    dest, ts_new = tmp_path / "restored", tmp_path / "ts_new"
    write((dest if where == "data_dir" else ts_new) / "PG_VERSION", b"15\n")
    source = Source(str(backup))
    plan = make_plan(source, str(dest), {"16499": str(ts_new)}, [], source_kind=finished_backup.FINISHED_BACKUP)
    with pytest.raises(PgBackupError) as err:
        check_destination(source, plan, str(dest), False)
    assert "is not empty" in err.value.message and "choose another data_dir" in err.value.message, err.value.message
    assert str(backup) in err.value.message


def test_a_linked_tablespace_missing_from_the_map_is_refused(backup, tmp_path):
    (backup / "pg_tblspc" / "16600").symlink_to(tmp_path)
    with pytest.raises(PgBackupError, match="pg_tblspc links 16600 but its tablespace_map lists 16499"):
        make_plan(Source(str(backup)), str(tmp_path / "restored"), {"16499": str(tmp_path / "ts_new")}, [], source_kind=finished_backup.FINISHED_BACKUP)


def test_the_tablespaces_come_from_the_map_not_from_the_links(backup, tmp_path):
    """The link points wherever the backup's copy put it; the map says where the backup holds the tablespace."""
    moved = tmp_path / "ts_moved"
    (tmp_path / "ts_backup").rename(moved)
    (backup / "tablespace_map").write_bytes(f"16499 {moved}\n".encode())
    plan = make_plan(Source(str(backup)), str(tmp_path / "restored"), {str(moved): str(tmp_path / "ts_new")}, [], source_kind="finished_backup")
    assert plan.tablespaces[0]["source"] == str(moved)


@pytest.mark.parametrize(
    ("options", "words"),
    [({"delta": True}, "delta does not apply"), ({"excludes": ["log/*"]}, "excludes (log/*)"), ({"gate": "/g"}, "start gate does not apply")],
)
def test_options_that_do_not_fit_a_restore_are_refused(options, words):
    with pytest.raises(PgBackupError, match=words.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        finished_backup.check_options(**{"delta": False, "excludes": [], "gate": None, **options})
    finished_backup.check_options(delta=False, excludes=[], gate=None)


def test_an_unknown_source_kind_is_refused(backup, tmp_path):
    with pytest.raises(PgBackupError, match="source_kind must be one of live, finished_backup"):
        make_plan(Source(str(backup)), str(tmp_path / "restored"), {}, [], source_kind="backup")


def test_the_rewritten_map_follows_the_major():
    tablespaces = [{"oid": "16499", "source": "/old", "dest": "/new\\dir", "in_place": False}, {"oid": "1", "source": "/x", "dest": "/y", "in_place": True}]
    assert finished_backup.rewritten_map(tablespaces, 15) == b"16499 /new\\\\dir\n"
    assert finished_backup.rewritten_map(tablespaces, 13) == b"16499 /new\\dir\n"
