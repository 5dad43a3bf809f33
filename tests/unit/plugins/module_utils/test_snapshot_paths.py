"""A copy from filesystem snapshots: each tablespace is read from the snapshot of its live location (snapshot_paths), its
mapping and its link in the copy stay the live location; a tablespace no snapshot covers is refused."""

from __future__ import annotations

import os

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_engine import Source, check_destination, execute, make_plan
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.snapshot_paths import checked_snapshot_paths, snapshot_location

from .test_copy_engine import datadir, write  # noqa: F401  # pylint: disable=unused-import  # datadir is the fixture

SNAPS = {"/srv/a/data": "/srv/a/.pgbackup-snapshots/bk1/2-data/data", "/srv/b/ts": "/srv/b/.pgbackup-snapshots/bk1/1-ts/ts"}


def test_a_tablespace_below_a_key_is_read_below_its_snapshot():
    assert snapshot_location("16400", "/srv/b/ts/PG_15", SNAPS) == "/srv/b/.pgbackup-snapshots/bk1/1-ts/ts/PG_15"
    assert snapshot_location("16400", "/srv/b/ts/one/two", SNAPS) == "/srv/b/.pgbackup-snapshots/bk1/1-ts/ts/one/two"


def test_the_exact_key_gives_its_value():
    assert snapshot_location("16400", "/srv/b/ts", SNAPS) == "/srv/b/.pgbackup-snapshots/bk1/1-ts/ts"


def test_the_longest_key_wins_whatever_the_order():
    for snaps in ({"/srv": "/snap/root", "/srv/b": "/snap/b"}, {"/srv/b": "/snap/b", "/srv": "/snap/root"}):
        assert snapshot_location("1", "/srv/b/ts", snaps) == "/snap/b/ts"
        assert snapshot_location("1", "/srv/c/ts", snaps) == "/snap/root/c/ts"


def test_a_key_covers_whole_components_only():
    """/srv/ts2 is not below /srv/ts: a string prefix would read /snap/ts2's neighbour, a place that does not exist."""
    with pytest.raises(PgBackupError, match="no source_snapshot_paths key covers"):
        snapshot_location("16401", "/srv/ts2", {"/srv/ts": "/snap/ts"})
    assert snapshot_location("16401", "/srv/ts2", {"/srv/ts": "/snap/ts", "/srv": "/snap/srv"}) == "/snap/srv/ts2"


def test_the_root_key_covers_everything():
    assert snapshot_location("1", "/srv/b/ts", {"/": "/snap"}) == "/snap/srv/b/ts"


def test_paths_are_compared_normalised():
    snaps = checked_snapshot_paths({"/srv/b/ts/": "/snap//ts/"})
    assert snaps == {"/srv/b/ts": "/snap/ts"}
    assert snapshot_location("1", "/srv/b//ts/./x/", snaps) == "/snap/ts/x"


def test_an_uncovered_tablespace_is_refused_naming_it_the_keys_and_what_to_do():
    with pytest.raises(PgBackupError) as caught:
        snapshot_location("16500", "/srv/c/ts", SNAPS)
    msg = caught.value.message
    assert "tablespace 16500 is at /srv/c/ts" in msg
    assert "keys: /srv/a/data, /srv/b/ts" in msg
    assert "read it live" in msg and "Snapshot its volume too: add its path to the snapshot set" in msg
    assert caught.value.details == {"tablespace": "16500", "location": "/srv/c/ts", "snapshot_keys": ["/srv/a/data", "/srv/b/ts"]}


def test_a_relative_tablespace_link_is_refused():
    with pytest.raises(PgBackupError, match="relative path 'ts'"):
        snapshot_location("1", "ts", {"/": "/snap"})


@pytest.mark.parametrize("bad", [{"srv/b": "/snap"}, {"/srv/b": "snap"}, {"/srv/b": ""}, {"/srv/b": None}])
def test_every_key_and_value_must_be_absolute(bad):
    with pytest.raises(PgBackupError, match="must be an absolute path"):
        checked_snapshot_paths(bad)


@pytest.mark.parametrize("none", [None, {}])
def test_no_map_means_no_snapshot(none):
    assert checked_snapshot_paths(none) == {}


def _snapshot_world(datadir, tmp_path):  # noqa: F811 - the fixture's value
    """The data directory of ``datadir`` seen as a snapshot whose link still points at the live tablespace, which has
    gained a file (16599) the snapshot of it lacks."""
    live_ts = tmp_path / "ts_src"
    frozen_ts = tmp_path / "snaps" / "ts"
    write(frozen_ts / "PG_15_202209061" / "5" / "16500", b"s" * 300)
    write(live_ts / "PG_15_202209061" / "5" / "16599", b"new")
    return {str(datadir): str(tmp_path / "unused"), str(live_ts): str(frozen_ts)}


def test_a_local_copy_reads_the_tablespace_from_its_snapshot(datadir, tmp_path):  # noqa: F811
    snaps = _snapshot_world(datadir, tmp_path)
    dest, ts_dst = tmp_path / "dst", tmp_path / "ts_dst"
    plan = make_plan(Source(str(datadir)), str(dest), {str(tmp_path / "ts_src"): str(ts_dst)}, [], snapshot_paths=snaps)
    (ts,) = [t for t in plan.tablespaces if not t["in_place"]]
    assert ts == {"oid": "16499", "source": str(tmp_path / "ts_src"), "dest": str(ts_dst), "in_place": False, "read_from": str(tmp_path / "snaps" / "ts")}
    check_destination(Source(str(datadir)), plan, str(dest), False)
    execute(Source(str(datadir)), plan, str(dest), owner=None)
    assert os.readlink(dest / "pg_tblspc" / "16499") == str(ts_dst), "the copy's link is the mapped place"
    assert (ts_dst / "PG_15_202209061" / "5" / "16500").read_bytes() == b"s" * 300
    assert not (ts_dst / "PG_15_202209061" / "5" / "16599").exists(), "read live, not from the snapshot"


def test_an_uncovered_tablespace_is_refused_before_anything_is_written(datadir, tmp_path):  # noqa: F811
    dest = tmp_path / "dst"
    with pytest.raises(PgBackupError, match=r"tablespace 16499 is at .*ts_src, which no source_snapshot_paths key covers"):
        make_plan(Source(str(datadir)), str(dest), {"16499": str(tmp_path / "ts_dst")}, [], snapshot_paths={str(datadir): "/snap/data"})
    assert not dest.exists()


def test_snapshot_paths_are_for_a_live_source_only(tmp_path):
    with pytest.raises(PgBackupError, match="source_snapshot_paths is for source_kind live only"):
        make_plan(Source(str(tmp_path)), str(tmp_path / "dst"), {}, [], source_kind="finished_backup", snapshot_paths={"/a": "/b"})


def test_a_tablespace_inside_the_data_directory_is_found_in_its_snapshot(datadir, tmp_path):  # noqa: F811
    """Its live location is inside the live data directory; in the snapshot it is inside the snapshot: copied once, as
    the tablespace, read from the snapshot (the live directory has a file the snapshot lacks)."""
    live = tmp_path / "live"
    write(live / "inner" / "PG_15_202209061" / "5" / "16800", b"new")
    write(datadir / "inner" / "PG_15_202209061" / "5" / "16700", b"n" * 500)
    (datadir / "pg_tblspc" / "16699").symlink_to(live / "inner")
    snaps = {str(live): str(datadir), str(tmp_path / "ts_src"): str(tmp_path / "ts_src")}
    dest = tmp_path / "dst"
    mapping = {"16499": str(tmp_path / "ts_dst"), "16699": str(tmp_path / "inner_dst")}
    plan = make_plan(Source(str(datadir)), str(dest), mapping, [], snapshot_paths=snaps)
    assert ("inner/PG_15_202209061/5/16700", "inside the location of tablespace 16699: copied once, as that tablespace") in plan.excluded
    execute(Source(str(datadir)), plan, str(dest), owner=None)
    assert (tmp_path / "inner_dst" / "PG_15_202209061" / "5" / "16700").read_bytes() == b"n" * 500
    assert not (tmp_path / "inner_dst" / "PG_15_202209061" / "5" / "16800").exists()
    assert (dest / "inner").is_dir() and not any((dest / "inner").iterdir())
    assert os.readlink(dest / "pg_tblspc" / "16699") == str(tmp_path / "inner_dst")


class _CannedRemote(Source):
    """A source on another host whose commands are answered from ``answers`` (argv tuple -> stdout): none of its paths
    exists here, so a local look at one would fail."""

    def __init__(self, path: str, answers: dict) -> None:
        super().__init__(path, host="db2")
        self.answers = answers
        self.asked: list = []

    def run(self, argv: list) -> bytes:
        self.asked.append(tuple(argv))
        return self.answers[tuple(argv)]


def _find(root: str) -> tuple:
    return ("find", "-H", root, "-printf", r"%y\t%s\t%m\t%l\t%P\0")


def test_a_remote_copy_translates_paths_only():
    data, live_ts, frozen_ts = "/srv/a/.pgbackup-snapshots/bk1/2-data/data", "/srv/b/ts", "/srv/b/.pgbackup-snapshots/bk1/1-ts/ts"
    listing = [b"d\t0\t700\t\t", b"f\t3\t600\t\tPG_VERSION", b"d\t0\t700\t\tglobal", b"f\t8192\t600\t\tglobal/pg_control",
               b"d\t0\t700\t\tpg_tblspc", b"l\t9\t777\t" + live_ts.encode() + b"\tpg_tblspc/16400"]  # fmt: skip
    answers = {
        _find(data): b"\0".join(listing) + b"\0",
        ("cat", f"{data}/PG_VERSION"): b"15\n",
        ("head", "-c", "8", f"{data}/global/pg_control"): b"\1" * 8,
        _find(frozen_ts): b"d\t0\t700\t\t\0d\t0\t700\t\tPG_15_202209061\0",
    }
    source = _CannedRemote(data, answers)
    plan = make_plan(source, "/restore/pgdata", {live_ts: "/restore/ts"}, [], snapshot_paths=SNAPS)
    assert plan.tablespaces == [{"oid": "16400", "source": live_ts, "dest": "/restore/ts", "in_place": False, "read_from": frozen_ts}]
    assert [(sroot, droot) for sroot, droot, _es in plan.roots] == [(data, "/restore/pgdata"), (frozen_ts, "/restore/ts")]
    assert _find(live_ts) not in source.asked, "the live tablespace is never read"
