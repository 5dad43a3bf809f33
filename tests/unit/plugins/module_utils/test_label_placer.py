"""label_place's logic on synthetic copies made from real pg_control files of 13-18 (no server)."""

from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import copy_state, label_placer
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.pg_control import GUARD_CHECKPOINT_LSN, parse_control_file, read_control_file

from .fake_postmaster import fake_postmaster

VECTORS = Path(__file__).parent / "vectors"
MAJORS = (13, 14, 15, 16, 17, 18)
# The vectors' clusters use 1 MB segments: 0/C000A8 is in segment 0x0C.
LABEL = (
    b"START WAL LOCATION: 0/C000A8 (file 00000001000000000000000C)\nCHECKPOINT LOCATION: 0/C000E0\n"
    b"BACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-11-22 22:28:48 UTC\nLABEL: t\nSTART TIMELINE: 1\n"
)


def control_bytes(major: int) -> bytes:
    return gzip.decompress((VECTORS / f"pg{major}" / "pg_control_primary.gz").read_bytes())


def make_copy(tmp_path: Path, major: int = 15, *, mode: int = 0o700) -> Path:
    copy = tmp_path / f"copy{major}"
    (copy / "global").mkdir(parents=True)
    (copy / "pg_wal").mkdir()
    (copy / "PG_VERSION").write_text(f"{major}\n")
    (copy / copy_state.PENDING_CONTROL).write_bytes(control_bytes(major))
    copy.chmod(mode)
    return copy


@pytest.mark.parametrize("major", MAJORS)
def test_places_label_then_guarded_control(tmp_path, major):
    copy = make_copy(tmp_path, major)
    label = LABEL
    result = label_placer.place(str(copy), label=label, expected_start_lsn="0/C000A8")
    assert result["files"] == ["backup_label", "global/pg_control"] and result["guarded"] is True
    assert (copy / "backup_label").read_bytes() == label
    assert not (copy / copy_state.PENDING_CONTROL).exists() and not (copy / "tablespace_map").exists()
    placed = read_control_file(str(copy))  # CRC rewritten: it still parses
    original = parse_control_file(control_bytes(major))
    assert placed.checkpoint_lsn == GUARD_CHECKPOINT_LSN and placed.redo_lsn == original.redo_lsn
    assert placed.system_identifier == original.system_identifier
    for name in ("backup_label", "global/pg_control"):
        assert stat.S_IMODE((copy / name).stat().st_mode) == 0o600
    assert sorted(p.name for p in (copy / "global").iterdir()) == ["pg_control"], "no temporary file left"
    assert label_placer.place(str(copy), label=label)["changed"] is False


def test_unguarded_control_is_the_copied_bytes(tmp_path):
    copy = make_copy(tmp_path)
    result = label_placer.place(str(copy), label=LABEL, guard_control=False)
    assert result["guarded"] is False and (copy / "global" / "pg_control").read_bytes() == control_bytes(15)


def test_group_access_copy_gets_0640(tmp_path):
    copy = make_copy(tmp_path, mode=0o750)
    label_placer.place(str(copy), label=LABEL)
    assert stat.S_IMODE((copy / "backup_label").stat().st_mode) == 0o640


def test_check_mode_writes_nothing(tmp_path):
    copy = make_copy(tmp_path)
    result = label_placer.place(str(copy), label=LABEL, check_mode=True)
    assert result["changed"] is True and result["files"] == ["backup_label", "global/pg_control"]
    assert not (copy / "backup_label").exists() and (copy / copy_state.PENDING_CONTROL).exists()


@pytest.mark.parametrize(
    ("prepare", "kwargs", "message"),
    [
        (lambda c: (c / "backup_label").write_bytes(LABEL.replace(b"LABEL: t", b"LABEL: other")), {}, "differs from the label given"),
        (lambda c: (c / copy_state.INCOMPLETE_MARKER).write_text("x"), {}, "unfinished copy"),
        (lambda c: os.unlink(c / copy_state.PENDING_CONTROL), {}, "neither"),
        (lambda c: os.unlink(c / "PG_VERSION"), {}, "not a PostgreSQL data directory"),
        (lambda c: None, {"expected_start_lsn": "0/D00028"}, r"START WAL LOCATION is 0/C000A8, but the backup started at 0/D00028"),
        (lambda c: None, {"label": b"START WAL LOCATION: nonsense\n"}, "START WAL LOCATION"),
        (lambda c: (c / copy_state.PENDING_CONTROL).write_bytes(b"\0" * 8192), {}, "pg_control version 0"),
    ],
)
def test_refusals_write_nothing(tmp_path, prepare, kwargs, message):
    copy = make_copy(tmp_path)
    prepare(copy)
    before = sorted((p.relative_to(copy), p.read_bytes()) for p in copy.rglob("*") if p.is_file())
    with pytest.raises(PgBackupError, match=message):
        label_placer.place(str(copy), **{"label": LABEL, **kwargs})
    assert sorted((p.relative_to(copy), p.read_bytes()) for p in copy.rglob("*") if p.is_file()) == before


def test_force_replaces_another_label(tmp_path):
    copy = make_copy(tmp_path)
    (copy / "backup_label").write_bytes(b"old")
    assert label_placer.place(str(copy), label=LABEL, force=True)["files"][0] == "backup_label"
    assert (copy / "backup_label").read_bytes() == LABEL


def test_map_remapped_by_oid_and_by_path_and_a_stale_one_removed(tmp_path):
    copy = make_copy(tmp_path)
    spcmap = b"16385 /old/one\n16386 /old/two\n16387 /kept\n"
    label_placer.place(str(copy), label=LABEL, tablespace_map=spcmap, tablespace_mapping={"16385": "/new/one", "/old/two": "/new/two"})
    assert (copy / "tablespace_map").read_bytes() == b"16385 /new/one\n16386 /new/two\n16387 /kept\n"
    other = make_copy(tmp_path, 16)
    (other / "tablespace_map").write_bytes(b"1 /stale\n")
    assert "tablespace_map (removed)" in label_placer.place(str(other), label=LABEL)["files"]
    assert not (other / "tablespace_map").exists()


def test_unchanged_map_keeps_its_bytes(tmp_path):
    copy = make_copy(tmp_path)
    spcmap = b"16385 /odd\\\\path\n"
    label_placer.place(str(copy), label=LABEL, tablespace_map=spcmap)
    assert (copy / "tablespace_map").read_bytes() == spcmap


def test_missing_wal_listed_only_when_pg_wal_holds_wal(tmp_path):
    copy = make_copy(tmp_path)
    assert label_placer.place(str(copy), label=LABEL, stop_lsn="0/F00010", check_mode=True)["changed"], "empty pg_wal: WAL comes from elsewhere"
    for name in ("00000001000000000000000C", "00000001000000000000000E"):
        (copy / "pg_wal" / name).write_bytes(b"")
    with pytest.raises(PgBackupError, match=r"lacks 2 file\(s\).*00000001000000000000000D, 00000001000000000000000F") as failure:
        label_placer.place(str(copy), label=LABEL, stop_lsn="0/F00010")
    assert failure.value.details["missing"] == ["00000001000000000000000D", "00000001000000000000000F"]
    with pytest.raises(PgBackupError, match=r"00000002\.history"):
        label_placer.place(str(copy), label=LABEL, stop_lsn="0/F00010", stop_timeline=2)


def test_a_live_server_on_the_directory_is_refused_in_its_own_words(tmp_path):
    copy = make_copy(tmp_path)
    with (
        fake_postmaster(copy, tmp_path) as pid,
        pytest.raises(PgBackupError, match=rf"a postmaster \(PID {pid}\) runs on .*: a label is placed only in a stopped copy"),
    ):
        label_placer.place(str(copy), label=LABEL)


def test_diff_shows_the_label_and_the_map_before_and_after(tmp_path):
    copy = make_copy(tmp_path)
    tsmap = b"16400 /srv/ts1\n"
    planned = label_placer.place(str(copy), label=LABEL, tablespace_map=tsmap, check_mode=True)
    label_diff, map_diff = planned["diff"]
    assert label_diff == {"before_header": str(copy / "backup_label"), "after_header": str(copy / "backup_label"), "before": "", "after": LABEL.decode()}
    assert (map_diff["before"], map_diff["after"]) == ("", tsmap.decode())
    assert not (copy / "backup_label").exists(), "check mode wrote nothing"
    label_placer.place(str(copy), label=LABEL, tablespace_map=tsmap)
    again = label_placer.place(str(copy), label=LABEL, check_mode=True)
    assert again["diff"][0]["before"] == again["diff"][0]["after"] == LABEL.decode()
    assert (again["diff"][1]["before"], again["diff"][1]["after"]) == (tsmap.decode(), ""), "a map dropped shows as removed"
