"""backup_verify across a timeline switch inside a segment: the old timeline's file of that segment, which
backup_manifest's WAL-Ranges promise and pg_verifybackup reads, checked like the rest of the copy's WAL (real WAL of a
promotion: each major's timeline-2 segment and timeline-1 .partial)."""

from __future__ import annotations

import os

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.backup_verifier import verify
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import parse_lsn
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.pg_control import parse_control_file
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.wal_segment import WAL_PAGE_MAGIC

from . import core_vectors
from .test_backup_verifier import SEGMENTS, STOP, fix_modes, make_copy
from .walbuilder import MB, full_segment

OLD = "00000001000000000000000D"  # the vectors of 15-18 switch to timeline 2 at 0/D000B0, inside segment 0x0D
NEW = "00000002000000000000000D"


def switch_copy(tmp_path, major):
    expected = core_vectors.expected(major)
    assert expected["history"]["text"].startswith("1\t0/D000B0\t")
    copy = make_copy(tmp_path, major, manifest=False)
    sysid = parse_control_file((copy / "global" / "pg_control").read_bytes()).system_identifier
    os.unlink(copy / "pg_wal" / SEGMENTS[1])
    os.unlink(copy / "pg_wal" / SEGMENTS[2])
    segs = {s["name"]: s for s in expected["segments"]}
    (copy / "pg_wal" / NEW).write_bytes(core_vectors.read(major, segs[NEW]["file"]))
    partial = core_vectors.read(major, segs[OLD + ".partial"]["file"])
    keep = parse_lsn("0/D000B0") % MB
    (copy / "pg_wal" / OLD).write_bytes(partial[:keep] + bytes(MB - keep))  # as wal_collect places it
    (copy / "pg_wal" / ("00000002" + SEGMENTS[2][8:])).write_bytes(full_segment(segno=0x0E, tli=2, sysid=sysid, magic=WAL_PAGE_MAGIC[major]))
    (copy / "pg_wal" / "00000002.history").write_text(expected["history"]["text"])
    fix_modes(copy)
    return copy


@pytest.mark.parametrize("major", (15, 16, 17, 18))
def test_the_old_timeline_file_of_the_switch_segment_is_checked(tmp_path, major):
    copy = switch_copy(tmp_path, major)
    _verifier, report = verify(str(copy), stop_lsn=STOP, stop_timeline=2, pg_verifybackup=False)
    assert report["problems"] == [], report["problems"]
    assert report["wal"]["checked"] == [SEGMENTS[0], NEW, "00000002" + SEGMENTS[2][8:], OLD]

    data = (copy / "pg_wal" / OLD).read_bytes()
    os.unlink(copy / "pg_wal" / OLD)  # the copy as shipped before: recovery has its segments, pg_verifybackup does not
    _verifier, report = verify(str(copy), stop_lsn=STOP, stop_timeline=2, pg_verifybackup=False)
    assert report["wal"]["missing"] == [OLD]
    wal_dir = copy / "pg_wal"
    assert len(report["problems"]) == 1 and report["problems"][0].startswith(f"WAL file {OLD} is missing from {wal_dir}: timeline 1 switched at 0/D000B0")
    assert f'could not find file "{OLD}"' in report["problems"][0]

    damaged = bytearray(data)
    damaged[0xA0] ^= 0x01  # a byte of the last record before the switchpoint
    (copy / "pg_wal" / OLD).write_bytes(bytes(damaged))
    fix_modes(copy)
    _verifier, report = verify(str(copy), stop_lsn=STOP, stop_timeline=2, pg_verifybackup=False)
    assert report["wal"]["invalid"] == [OLD]
    assert report["problems"][0].startswith(f"WAL segment {OLD} does not hold valid records through 0/D000B0"), report["problems"]
    assert "wrong CRC" in report["problems"][0]
