"""backup_verify's offline checks on synthetic copies: real pg_control files of 13-18, labels placed by label_place,
synthetic WAL segments with the cluster's system identifier, a manifest written by the library (no server)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import copy_state, label_placer
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.backup_verifier import find_bindir, verify
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.manifest import write_manifest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.pg_control import parse_control_file
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.wal_segment import WAL_PAGE_MAGIC

from .pages import page
from .walbuilder import full_segment

VECTORS = Path(__file__).parent / "vectors"
MAJORS = (13, 14, 15, 16, 17, 18)
# The vectors' clusters use 1 MB segments: 0/C000A8 is in segment 0x0C, 0/E00100 in 0x0E.
LABEL = (
    b"START WAL LOCATION: 0/C000A8 (file 00000001000000000000000C)\nCHECKPOINT LOCATION: 0/C000E0\n"
    b"BACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-11-22 22:28:48 UTC\nLABEL: t\nSTART TIMELINE: 1\n"
)
STOP = "0/E00100"
SEGMENTS = ["00000001000000000000000C", "00000001000000000000000D", "00000001000000000000000E"]


def control_bytes(major: int) -> bytes:
    return gzip.decompress((VECTORS / f"pg{major}" / "pg_control_primary.gz").read_bytes())


def fix_modes(copy: Path) -> None:
    for dirpath, _dirs, files in os.walk(copy):
        os.chmod(dirpath, 0o700)
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o600)


def make_copy(tmp_path: Path, major: int = 15, *, guard: bool = True, manifest: bool = True, sysid: int = 0) -> Path:
    """A finished copy: label and guarded pg_control placed, the WAL from 0/C000A8 to 0/E00100 in pg_wal, a manifest."""
    copy = tmp_path / f"copy{major}"
    for sub in ("global", "pg_wal", "base/1", "pg_stat_tmp", "pg_tblspc"):
        (copy / sub).mkdir(parents=True)
    (copy / "PG_VERSION").write_text(f"{major}\n")
    # A page last changed before the start (its checksum must hold) and one changed during the copy (up to the stop).
    (copy / "base" / "1" / "1259").write_bytes(page(0xB00000, 0) + page(0xD00000, 1))
    (copy / "postgresql.conf").write_text("port = 5432\n")
    control = control_bytes(major)
    (copy / copy_state.PENDING_CONTROL).write_bytes(control)
    sysid = sysid or parse_control_file(control).system_identifier
    for name in SEGMENTS:
        (copy / "pg_wal" / name).write_bytes(full_segment(segno=int(name[16:], 16), sysid=sysid, magic=WAL_PAGE_MAGIC[major]))
    fix_modes(copy)
    label_placer.place(str(copy), label=LABEL, guard_control=guard)
    if manifest:
        write_manifest(str(copy), end_lsn=0xE00100, end_tli=1)
    fix_modes(copy)
    return copy


def problems(copy: Path, **kwargs) -> list:
    kwargs.setdefault("pg_verifybackup", False)
    _verifier, report = verify(str(copy), **kwargs)
    return report["problems"]


def has(found: list, *words: str) -> bool:
    return any(all(w in p for w in words) for p in found)


@pytest.mark.parametrize("major", MAJORS)
def test_a_good_copy_passes(tmp_path, major):
    copy = make_copy(tmp_path, major)
    verifier, report = verify(str(copy), stop_lsn=STOP, pg_verifybackup=False)
    assert report["problems"] == [], report["problems"]
    assert report["control"]["guarded"] is True and report["major_version"] == major
    assert report["wal"]["checked"] == SEGMENTS
    assert report["manifest"]["files"] == 5  # PG_VERSION, postgresql.conf, base/1/1259, backup_label, global/pg_control
    assert verifier.label.start_lsn == 0xC000A8


def test_stop_lsn_from_the_manifest_when_not_given(tmp_path):
    copy = make_copy(tmp_path)
    _verifier, report = verify(str(copy), pg_verifybackup=False)
    assert report["problems"] == [] and report["wal"]["stop_lsn"] == STOP and report["wal"]["checked"] == SEGMENTS


def test_without_stop_lsn_or_manifest_the_range_is_a_note(tmp_path):
    copy = make_copy(tmp_path, manifest=False)
    _verifier, report = verify(str(copy), pg_verifybackup=False)
    assert report["problems"] == []
    assert any("give stop_lsn" in n for n in report["notes"]) and any("no backup_manifest" in n for n in report["notes"])


def test_every_fault_is_listed_at_once(tmp_path):
    copy = make_copy(tmp_path)
    os.unlink(copy / "pg_wal" / SEGMENTS[1])
    with open(copy / "base" / "1" / "1259", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x02")
    (copy / "postmaster.pid").write_text("12345\n")
    (copy / "pg_stat_tmp" / "global.stat").write_text("x")
    os.chmod(copy / "PG_VERSION", 0o644)
    os.chmod(copy / "base", 0o755)
    (copy / copy_state.INCOMPLETE_MARKER).write_text("x")
    found = problems(copy, stop_lsn=STOP)
    assert has(found, "missing from", SEGMENTS[1])
    assert has(found, "checksum not matching backup_manifest", "base/1/1259")
    assert has(found, "not in backup_manifest", "postmaster.pid")
    assert has(found, "a base backup leaves out", "postmaster.pid") and has(found, "pg_stat_tmp/global.stat")
    assert has(found, "wrong mode", "PG_VERSION (0644, expected 0600)", "base (0755, expected 0700)")
    assert has(found, "incomplete")
    assert has(found, "fail their data checksum", "base/1/1259 block 0")  # the changed byte is in a page older than the start
    assert len(found) == 7, found  # postmaster.pid and global.stat are named together as not in the manifest


def test_a_segment_of_another_cluster(tmp_path):
    copy = make_copy(tmp_path)
    (copy / "pg_wal" / SEGMENTS[2]).write_bytes(full_segment(segno=0xE, sysid=1234567890123, magic=WAL_PAGE_MAGIC[15]))
    found = problems(copy, stop_lsn=STOP)
    assert has(found, SEGMENTS[2], "belongs to another cluster", "1234567890123")
    assert has(found, SEGMENTS[2], "is not valid")


def test_a_segment_not_reaching_the_stop_lsn(tmp_path):
    copy = make_copy(tmp_path)
    with open(copy / "pg_wal" / SEGMENTS[2], "r+b") as handle:
        handle.truncate(8192)
    assert has(problems(copy, stop_lsn=STOP), SEGMENTS[2], "has 8192 bytes", "truncated")
    with open(copy / "pg_wal" / SEGMENTS[2], "r+b") as handle:
        handle.truncate(1 << 20)
        handle.write(bytes(8192))  # the WAL ends before the stop LSN
    assert has(problems(copy, stop_lsn=STOP), SEGMENTS[2], "is not valid")


def test_unguarded_copy_without_label(tmp_path):
    copy = make_copy(tmp_path, guard=False, manifest=False)
    os.unlink(copy / "backup_label")
    assert has(problems(copy), "would start crash recovery from the wrong checkpoint")


def test_guarded_copy_without_label(tmp_path):
    copy = make_copy(tmp_path, manifest=False)
    os.unlink(copy / "backup_label")
    found = problems(copy)
    assert has(found, "backup_label is missing", "refuse to start") and not has(found, "wrong checkpoint")


def test_pending_control_and_bad_crc(tmp_path):
    copy = make_copy(tmp_path, manifest=False)
    os.rename(copy / "global" / "pg_control", copy / copy_state.PENDING_CONTROL)
    assert has(problems(copy), "label_place was not run")
    os.rename(copy / copy_state.PENDING_CONTROL, copy / "global" / "pg_control")
    with open(copy / "global" / "pg_control", "r+b") as handle:
        handle.seek(40)
        handle.write(b"\xff")
    assert has(problems(copy), "global/pg_control is not valid")


def test_incremental_and_invalid_labels(tmp_path):
    copy = make_copy(tmp_path, 17, manifest=False)
    (copy / "backup_label").write_bytes(LABEL + b"INCREMENTAL FROM LSN: 0/A000028\nINCREMENTAL FROM TLI: 1\n")
    assert has(problems(copy), "incremental")
    (copy / "backup_label").write_bytes(b"not a label\n")
    assert has(problems(copy), "backup_label is not valid")


def test_manifest_checksum_and_missing_file(tmp_path):
    copy = make_copy(tmp_path)
    data = (copy / "backup_manifest").read_bytes()
    (copy / "backup_manifest").write_bytes(data.replace(b'"Size": 16384', b'"Size": 16385'))
    os.unlink(copy / "postgresql.conf")
    found = problems(copy)
    assert has(found, "Manifest-Checksum does not match")
    assert has(found, "wrong size", "base/1/1259") and has(found, "not in the copy", "postgresql.conf")


def test_a_user_file_at_the_top_may_be_readable_but_not_writable_by_others(tmp_path):
    copy = make_copy(tmp_path, manifest=False)
    (copy / "standby.signal").touch()
    os.chmod(copy / "standby.signal", 0o644)
    os.chmod(copy / "postgresql.conf", 0o640)
    assert problems(copy) == []
    os.chmod(copy / "postgresql.conf", 0o666)
    assert has(problems(copy), "wrong mode", "postgresql.conf (0666")


def test_manifest_that_is_not_json(tmp_path):
    copy = make_copy(tmp_path)
    (copy / "backup_manifest").write_text("{ nope")
    assert has(problems(copy), "backup_manifest cannot be parsed")


def test_manifest_crc32c_checksums(tmp_path):
    copy = make_copy(tmp_path)
    data = json.loads((copy / "backup_manifest").read_text())
    entry = next(f for f in data["Files"] if f["Path"] == "base/1/1259")
    assert entry["Checksum-Algorithm"] == "SHA256"
    # the CRC-32C of the file, little-endian hex, as PostgreSQL writes it
    from ansible_collections.pgbackup.lowlevel.plugins.module_utils.crc32c import crc32c

    good = crc32c((copy / "base" / "1" / "1259").read_bytes()).to_bytes(4, "little").hex()
    text = (copy / "backup_manifest").read_text()
    line = next(li for li in text.splitlines() if '"base/1/1259"' in li)
    new_line = line.split('"Checksum-Algorithm"')[0] + f'"Checksum-Algorithm": "CRC32C", "Checksum": "{good}" }},'
    (copy / "backup_manifest").write_text(text.replace(line, new_line))
    found = problems(copy)
    assert not has(found, "checksum not matching"), found
    (copy / "backup_manifest").write_text(text.replace(line, new_line.replace(good, "00000000")))
    assert has(problems(copy), "checksum not matching", "base/1/1259")


def test_tablespace_map_checks(tmp_path):
    copy = make_copy(tmp_path, manifest=False)
    ts = tmp_path / "ts"
    (ts / "PG_15_202209061").mkdir(parents=True)
    fix_modes(ts)
    os.symlink(str(ts), copy / "pg_tblspc" / "16400")
    (copy / "tablespace_map").write_text(f"16400 {ts}\n")
    os.chmod(copy / "tablespace_map", 0o600)
    _verifier, report = verify(str(copy), pg_verifybackup=False)
    assert report["problems"] == [] and report["tablespaces"] == {"16400": str(ts)}
    (copy / "tablespace_map").write_text(f"16400 {tmp_path}/elsewhere\n16401 {ts}\n")
    found = problems(copy)
    assert has(found, "elsewhere", "not a directory") and has(found, "16401", "does not have")


def test_a_later_timeline_needs_its_history_file(tmp_path):
    copy = make_copy(tmp_path, manifest=False)
    found = problems(copy, stop_lsn=STOP, stop_timeline=2)
    assert has(found, "00000002.history", "missing")


def test_across_a_timeline_switch_with_its_history(tmp_path):
    copy = make_copy(tmp_path, manifest=False)
    sysid = parse_control_file((copy / "global" / "pg_control").read_bytes()).system_identifier
    for name in SEGMENTS[1:]:
        os.unlink(copy / "pg_wal" / name)
        new = "00000002" + name[8:]
        (copy / "pg_wal" / new).write_bytes(full_segment(segno=int(name[16:], 16), tli=2, sysid=sysid, magic=WAL_PAGE_MAGIC[15]))
    (copy / "pg_wal" / "00000002.history").write_text("1\t0/D00000\tno recovery target specified\n")
    fix_modes(copy)
    _verifier, report = verify(str(copy), stop_lsn=STOP, stop_timeline=2, pg_verifybackup=False)
    assert report["problems"] == [], report["problems"]
    assert report["wal"]["checked"] == [SEGMENTS[0], "00000002" + SEGMENTS[1][8:], "00000002" + SEGMENTS[2][8:]]
    os.unlink(copy / "pg_wal" / ("00000002" + SEGMENTS[1][8:]))
    assert has(problems(copy, stop_lsn=STOP, stop_timeline=2), "missing from", "00000002" + SEGMENTS[1][8:])


def timeline_3_copy(tmp_path: Path) -> Path:
    """A copy whose WAL switched to timeline 2 at 0/D00000 and to timeline 3 at 0/E00000, each history file in pg_wal."""
    copy = make_copy(tmp_path, manifest=False)
    sysid = parse_control_file((copy / "global" / "pg_control").read_bytes()).system_identifier
    for name, tli in ((SEGMENTS[1], 2), (SEGMENTS[2], 3)):
        os.unlink(copy / "pg_wal" / name)
        (copy / "pg_wal" / (f"{tli:08X}" + name[8:])).write_bytes(full_segment(segno=int(name[16:], 16), tli=tli, sysid=sysid, magic=WAL_PAGE_MAGIC[15]))
    (copy / "pg_wal" / "00000002.history").write_text("1\t0/D00000\tno recovery target specified\n")
    (copy / "pg_wal" / "00000003.history").write_text("1\t0/D00000\tno recovery target specified\n2\t0/E00000\tno recovery target specified\n")
    fix_modes(copy)
    return copy


def test_an_ancestor_timeline_s_missing_history_file_is_refused(tmp_path):
    copy = timeline_3_copy(tmp_path)
    _verifier, report = verify(str(copy), stop_lsn=STOP, stop_timeline=3, pg_verifybackup=False)
    assert report["problems"] == [], report["problems"]
    assert report["wal"]["checked"] == [SEGMENTS[0], "00000002" + SEGMENTS[1][8:], "00000003" + SEGMENTS[2][8:]]
    os.unlink(copy / "pg_wal" / "00000002.history")  # the stop timeline's own file is there, its parent's is not
    _verifier, report = verify(str(copy), stop_lsn=STOP, stop_timeline=3, pg_verifybackup=False)
    assert report["problems"] == [f"history file(s) missing from {copy / 'pg_wal'}: 00000002.history"], report["problems"]
    # the range is still checked: the missing file is named, the segments are not held against the copy
    assert report["wal"]["checked"] == [SEGMENTS[0], "00000002" + SEGMENTS[1][8:], "00000003" + SEGMENTS[2][8:]]


def test_the_stop_timeline_s_own_history_file_missing_stops_the_range_check(tmp_path):
    copy = timeline_3_copy(tmp_path)
    os.unlink(copy / "pg_wal" / "00000003.history")
    _verifier, report = verify(str(copy), stop_lsn=STOP, stop_timeline=3, pg_verifybackup=False)
    assert report["problems"] == [f"history file 00000003.history of the stop timeline is missing from {copy / 'pg_wal'}"], report["problems"]
    assert report["wal"]["checked"] == []


def test_wal_dir_elsewhere(tmp_path):
    copy = make_copy(tmp_path, manifest=False)
    archive = tmp_path / "archive"
    shutil.move(str(copy / "pg_wal"), archive)
    (copy / "pg_wal").mkdir(mode=0o700)
    assert has(problems(copy, stop_lsn=STOP), "3 WAL segment(s)", "missing")
    _verifier, report = verify(str(copy), stop_lsn=STOP, wal_dir=str(archive), pg_verifybackup=False)
    assert report["problems"] == [] and report["wal"]["checked"] == SEGMENTS


def test_not_a_data_directory(tmp_path):
    with pytest.raises(PgBackupError, match="no PG_VERSION"):
        verify(str(tmp_path))


def test_a_copy_killed_before_pg_version_is_named_unfinished(tmp_path):
    (tmp_path / ".pgbackup-incomplete").write_text("killed\n")
    with pytest.raises(PgBackupError, match=r"unfinished copy \(\.pgbackup-incomplete is there, and PG_VERSION was not copied yet\)"):
        verify(str(tmp_path))


def test_pg_verifybackup_of_another_major_is_not_used(tmp_path):
    copy = make_copy(tmp_path, 16)
    _verifier, report = verify(str(copy), pg_bindir=str(tmp_path / "nothing"))
    if find_bindir(16, None, "pg_verifybackup") is None:
        assert report["pg_verifybackup"] == {"ran": False, "reason": "no pg_verifybackup of PostgreSQL 16 on this host"}
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "pg_verifybackup").write_text("#!/bin/sh\necho 'pg_verifybackup (PostgreSQL) 15.8'\n")
    os.chmod(fake / "pg_verifybackup", 0o755)
    assert find_bindir(16, str(fake), "pg_verifybackup") != str(fake)
    assert find_bindir(15, str(fake), "pg_verifybackup") == str(fake)


def _rewrite(copy: Path, *pages: bytes) -> None:
    """Replace base/1/1259 and write the manifest again, so that only the page audit can see what changed."""
    (copy / "base" / "1" / "1259").write_bytes(b"".join(pages))
    os.chmod(copy / "base" / "1" / "1259", 0o600)
    os.unlink(copy / "backup_manifest")
    write_manifest(str(copy), end_lsn=0xE00100, end_tli=1)
    os.chmod(copy / "backup_manifest", 0o600)


@pytest.mark.parametrize("major", (13, 18))
def test_a_page_past_the_stop_lsn_is_refused(tmp_path, major):
    copy = make_copy(tmp_path, major)
    _rewrite(copy, page(0xB00000, 0), page(0xE00101, 1), bytes(8192))
    _verifier, report = verify(str(copy), stop_lsn=STOP, pg_verifybackup=False)
    found = report["problems"]
    assert has(found, "1 page(s) carry an LSN past the copy's end point 0/E00100 (the backup's stop LSN)", "base/1/1259 block 1 (LSN 0/E00101)"), found
    assert has(found, "pg_control was not copied last") and len(found) == 1, found
    pages = report["pages"]
    assert pages["read"] == 3 and pages["new_or_zero"] == 1 and pages["max_lsn"] == "0/E00101" and pages["bound"] == "0/E00100"


def test_the_page_bound_without_stop_lsn_is_the_manifest_s_end(tmp_path):
    copy = make_copy(tmp_path)
    _rewrite(copy, page(0xB00000, 0), page(0xF00000, 1))
    found = problems(copy)
    assert has(found, "past the copy's end point 0/E00100 (the end of backup_manifest's WAL-Ranges)", "block 1"), found


def test_a_standby_copy_is_bounded_by_its_pg_control_s_minimum_recovery_point(tmp_path):
    """BACKUP FROM: standby - recovery ends at the copied pg_control's minRecoveryPoint (0/C00158 in the vector)."""
    copy = make_copy(tmp_path)
    label = (copy / "backup_label").read_bytes().replace(b"BACKUP FROM: primary", b"BACKUP FROM: standby")
    (copy / "backup_label").write_bytes(label)
    control = gzip.decompress((VECTORS / "pg15" / "pg_control_standby.gz").read_bytes())
    (copy / "global" / "pg_control").write_bytes(control)
    _rewrite(copy, page(0xB00000, 0), page(0xC00158, 1), page(0xC00159, 2))
    _verifier, report = verify(str(copy), stop_lsn=STOP, pg_verifybackup=False)
    found = [p for p in report["problems"] if "page(s)" in p]
    assert len(found) == 1 and "past the copy's end point 0/C00158 (the minimum recovery point of the copied pg_control" in found[0], found
    assert "block 2 (LSN 0/C00159)" in found[0] and "block 1 " not in found[0]


def test_checksums_of_pages_changed_during_the_copy_are_not_held_against_it(tmp_path):
    """A page with an LSN at or after the start may be torn; WAL replay rewrites it. An older one must be intact."""
    copy = make_copy(tmp_path)
    torn = bytearray(page(0xD00000, 1))
    torn[5000] ^= 0xFF
    old = bytearray(page(0xB00000, 0))
    old[5000] ^= 0xFF
    _rewrite(copy, bytes(old), bytes(torn))
    _verifier, report = verify(str(copy), stop_lsn=STOP, pg_verifybackup=False)
    found = report["problems"]
    assert has(found, "1 page(s) last changed before the backup's start fail their data checksum", "base/1/1259 block 0"), found
    assert report["pages"]["checksum_verified"] == 1 and len(found) == 1


def test_the_audit_reads_in_parallel_with_the_same_result(tmp_path):
    copy = make_copy(tmp_path)
    (copy / "base" / "1" / "2608").write_bytes(page(0xB00000, 0) + page(0xE00200, 1))
    os.chmod(copy / "base" / "1" / "2608", 0o600)
    one = verify(str(copy), stop_lsn=STOP, pg_verifybackup=False, parallel=1)[1]
    two = verify(str(copy), stop_lsn=STOP, pg_verifybackup=False, parallel=2)[1]
    assert one["problems"] == two["problems"] and has(one["problems"], "base/1/2608 block 1")
    assert {k: v for k, v in one["pages"].items() if k != "seconds"} == {k: v for k, v in two["pages"].items() if k != "seconds"}


# --- the copied pg_control against the server the files came from (copied_from, expect_system_identifier) ------------


def set_control(copy: Path, **fields) -> None:
    """Rewrite fields of the copy's pg_control (state, min_recovery_point_tli) with a valid CRC, as a standby's would be."""
    import struct

    from ansible_collections.pgbackup.lowlevel.plugins.module_utils import pg_control as pgc

    path = copy / "global" / "pg_control"
    data = bytearray(path.read_bytes())
    for name, value in fields.items():
        offset, fmt = pgc._FIELDS[name]
        struct.pack_into("<" + fmt, data, offset, value)
    crc_at = pgc._CRC_OFFSET[pgc._layout_version(bytes(data), str(path))]
    struct.pack_into("<I", data, crc_at, pgc.crc32c(bytes(data[:crc_at])))
    path.write_bytes(bytes(data))


def standby_copy(tmp_path: Path, major: int, **fields) -> Path:
    copy = make_copy(tmp_path, major, manifest=False)
    set_control(copy, **{"state": 5, "min_recovery_point_tli": 1, **fields})  # DB_IN_ARCHIVE_RECOVERY on timeline 1
    return copy


@pytest.mark.parametrize("major", (13, 18))
def test_a_standby_copy_in_archive_recovery_passes(tmp_path, major):
    copy = standby_copy(tmp_path, major)
    sysid = str(parse_control_file((copy / "global" / "pg_control").read_bytes()).system_identifier)
    _verifier, report = verify(str(copy), stop_lsn=STOP, stop_timeline=1, copied_from="standby", expect_system_identifier=sysid, pg_verifybackup=False)
    assert report["problems"] == [] and report["copied_from"] == "standby"
    # shut down in recovery (a standby stopped cleanly) is accepted by PostgreSQL for a standby's files too
    set_control(copy, state=2)
    assert problems(copy, stop_lsn=STOP, stop_timeline=1, copied_from="standby") == []


@pytest.mark.parametrize("major", (13, 18))
def test_a_standby_promoted_during_the_copy_is_refused(tmp_path, major):
    copy = standby_copy(tmp_path, major, state=6, min_recovery_point_tli=2)  # DB_IN_PRODUCTION, the pg_control
    found = problems(copy, stop_lsn=STOP, stop_timeline=1, copied_from="standby")
    assert has(found, '"in production"', "promoted during the copy", "discard"), found
    assert has(found, "timeline 2", "expected timeline 1"), found
    # the same files from a primary (copied_from primary) are a primary's normal state: not these problems
    assert not has(problems(copy, stop_lsn=STOP, copied_from="primary"), "in production")


def test_a_label_backup_from_standby_is_checked_without_copied_from(tmp_path):
    copy = standby_copy(tmp_path, 15, state=6)
    (copy / "backup_label").write_bytes(LABEL.replace(b"BACKUP FROM: primary", b"BACKUP FROM: standby"))
    found = problems(copy, stop_lsn=STOP)
    assert has(found, "promoted during the copy"), found


def test_a_minimum_recovery_point_off_the_backups_timeline(tmp_path):
    copy = standby_copy(tmp_path, 15, min_recovery_point_tli=0)  # a server that ended recovery clears it
    assert has(problems(copy, stop_lsn=STOP, stop_timeline=1, copied_from="standby"), "timeline 0", "expected timeline 1")


def test_the_wrong_system_identifier_expected_is_refused(tmp_path):
    copy = standby_copy(tmp_path, 15)
    found = problems(copy, stop_lsn=STOP, copied_from="standby", expect_system_identifier="7000000000000000001")
    assert has(found, "system identifier", "expected 7000000000000000001", "another cluster's"), found
    with pytest.raises(PgBackupError, match="expect_system_identifier"):
        verify(str(copy), expect_system_identifier="abc", pg_verifybackup=False)
    with pytest.raises(PgBackupError, match="copied_from"):
        verify(str(copy), copied_from="replica", pg_verifybackup=False)


@pytest.mark.parametrize("given", ["abc", "12a", "1 2", "0x1F", 1.5, True, "18446744073709551616", "-9223372036854775809", "\u00b2"])
def test_an_expected_system_identifier_that_is_not_one_is_refused(tmp_path, given):
    """The shared rule (system_identifier.expected_system_identifier), as replay_wait applies it."""
    copy = make_copy(tmp_path, manifest=False)
    with pytest.raises(PgBackupError, match=r"expect_system_identifier must be a system identifier \(digits"):
        verify(str(copy), expect_system_identifier=given, pg_verifybackup=False)


def test_the_expected_system_identifier_as_a_number_or_signed_is_the_same_cluster(tmp_path):
    """A play may hand it through as a number, or as SQL's signed bigint: the same identifier, no problem."""
    sysid = 0xF000000000000001  # above 2**63: pg_control_system() shows it negative
    copy = make_copy(tmp_path, manifest=False, sysid=sysid)
    set_control(copy, system_identifier=sysid)
    for given in (sysid, str(sysid), f" {sysid} ", str(sysid - (1 << 64))):
        assert problems(copy, stop_lsn=STOP, expect_system_identifier=given) == [], given
    assert has(problems(copy, stop_lsn=STOP, expect_system_identifier=str(sysid - 1)), "expected", str(sysid - 1), "another cluster's")
