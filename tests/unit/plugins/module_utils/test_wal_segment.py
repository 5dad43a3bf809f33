from __future__ import annotations

import gzip
import io

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import format_lsn, parse_lsn
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.wal import parse_wal_file_name, wal_file_name
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.wal_segment import WAL_PAGE_MAGIC, check_records_through, validate_segment
from hypothesis import given, settings
from hypothesis import strategies as st

from . import core_vectors
from .walbuilder import MAGIC_15, MB, PAGE, SYSID, build_segment, full_segment, page, patch, record, switch_record, with_page

NAME = "000000010000000000000005"  # segment 5 of 1 MB segments: 0/500000
BASE = 5 * MB


def check(data, name=NAME, **kw):
    kw.setdefault("system_identifier", SYSID)
    kw.setdefault("seg_size", MB)
    return validate_segment(data, file_name=name, **kw)


def refused(data, name=NAME, **kw) -> str:
    with pytest.raises(PgBackupError) as err:
        check(data, name, **kw)
    return str(err.value)


def test_magic_numbers_by_major():
    assert WAL_PAGE_MAGIC == {13: 0xD106, 14: 0xD10D, 15: 0xD110, 16: 0xD113, 17: 0xD116, 18: 0xD118}


# --- complete segments ------------------------------------------------------------------------------


def test_a_full_segment_is_complete():
    result = check(full_segment())
    assert result.complete
    assert result.valid_pages == result.pages_read == 128
    assert result.zero_from_page is None and result.switch_lsn is None
    assert (result.major_version, result.magic, result.timelines) == (15, MAGIC_15, (1,))
    assert result.start_lsn == BASE and result.end_lsn == BASE + MB
    assert result.as_dict()["end_lsn"] == "0/600000"


@pytest.mark.parametrize("major", sorted(WAL_PAGE_MAGIC))
def test_every_known_magic(major):
    data = full_segment(magic=WAL_PAGE_MAGIC[major])
    assert check(data).major_version == major
    assert check(data, major_version=major).major_version == major


def test_a_switch_mid_page_completes_the_segment():
    data = build_segment([record(100), record(5000), switch_record()])
    result = check(data)
    assert result.complete
    assert result.zero_from_page == 1 and result.valid_pages == 1
    # records: 40 + 124 -> 168 (aligned), + 5024 -> 5192, switch at 5192
    assert result.switch_lsn == BASE + 5192
    assert result.switch_end_lsn == BASE + 5192 + 24
    assert result.as_dict()["switch_end_lsn"] == format_lsn(BASE + 5216)


def test_a_switch_record_split_across_pages():
    # fill page 0 up to 16 bytes before its end, so the 24-byte switch header continues on page 1
    first = 8192 - 40 - 16 - 24
    data = build_segment([record(first), switch_record()])
    assert page(data, 1)[:2] != bytes(2) and page(data, 2) == bytes(PAGE)
    result = check(data)
    assert result.complete
    assert result.switch_lsn == BASE + 8192 - 16
    assert result.switch_end_lsn == BASE + 8192 + 24 + 8  # the rest of the header after page 1's header


def test_a_switch_record_ending_exactly_at_a_page_end():
    data = build_segment([record(8192 - 40 - 24 - 24), switch_record()])
    result = check(data)
    assert result.complete and result.zero_from_page == 1
    assert result.switch_end_lsn == BASE + 8192  # an end pointer on a boundary stays there


def test_a_switch_after_a_long_record_spanning_pages():
    data = build_segment([record(30000), switch_record()])
    result = check(data)
    assert result.complete
    assert result.zero_from_page == 4


def test_a_segment_starting_with_the_continuation_of_a_record():
    data = build_segment([record(50), switch_record()], continued=300)
    result = check(data)
    assert result.complete and result.switch_lsn == BASE + 40 + 304 + 80


def test_a_segment_entirely_continuation_then_a_switch():
    data = build_segment([switch_record()], continued=3 * 8192)
    assert check(data).complete


def test_timeline_may_rise_within_a_file_but_not_above_its_name():
    name = "000000020000000000000005"
    data = full_segment(tli=2, page_tlis={n: 1 for n in range(10)})
    result = check(data, name)
    assert result.timelines == (1, 2) and result.first_timeline == 1 and result.last_timeline == 2


# --- refusals ---------------------------------------------------------------------------------------


def test_zeros_without_a_switch_are_an_unfinished_segment():
    data = build_segment([record(100), record(5000)])
    message = refused(data)
    assert "without a WAL switch record" in message and "0/502000" in message
    # ... which is fine when only the WAL up to an LSN is needed and the rest may still come
    result = check(data, complete=False, through_lsn=BASE + 5000)
    assert not result.complete and result.pages_read == 1


def test_a_record_cut_off_by_zero_pages_is_unfinished():
    data = build_segment([record(30000)])
    assert "without a WAL switch record" in refused(data)


def test_a_non_switch_last_record_is_unfinished():
    data = build_segment([record(100), record(0, rmid=0, info=0x30)])  # XLOG_NEXTOID-like, 24 bytes
    assert "without a WAL switch record" in refused(data)


def test_a_switch_record_with_a_bad_crc_is_not_trusted():
    data = build_segment([record(100), switch_record()])
    data = patch(data, 40 + 128 + 20, "<I", 0xDEADBEEF)
    assert "without a WAL switch record" in refused(data)


def test_through_lsn_beyond_the_written_wal():
    data = build_segment([record(100), record(5000), record(100)])
    message = refused(data, through_lsn=BASE + 3 * PAGE, complete=False)
    assert "only up to 0/502000, not through 0/506000" in message


def test_a_switch_holds_the_wal_through_the_segment_end():
    # The zero tail after an XLOG_SWITCH is the switch's: a stop exactly on the next boundary (X/Y000000) is satisfied,
    # whether the segment is read as complete or only through the stop (the last segment of a standby backup).
    data = build_segment([record(100), switch_record()])
    for complete in (True, False):
        assert check(data, through_lsn=BASE + MB, complete=complete).switch_lsn is not None
        assert check(data, through_lsn=BASE + 3 * PAGE, complete=complete).switch_lsn is not None
    # Negative control: an ordinary record where the switch was, zeros after it (a copy cut short) is still refused.
    broken = build_segment([record(100), record(0)])
    assert "not through 0/600000 as needed" in refused(broken, through_lsn=BASE + MB, complete=False)


def test_through_lsn_must_be_in_the_segment():
    assert "cannot hold WAL through 0/400000" in refused(full_segment(), through_lsn=4 * MB)
    assert "cannot hold WAL through 0/500000" in refused(full_segment(), through_lsn=BASE)
    assert check(full_segment(), through_lsn=BASE + MB).complete


def test_complete_false_needs_through_lsn():
    assert "needs through_lsn" in refused(full_segment(), complete=False)


def test_a_renamed_segment_is_caught_on_every_page():
    data = full_segment()
    message = refused(data, "000000010000000000000007")
    assert "page 0 (LSN 0/700000) has page address 0/500000, expected 0/700000" in message
    assert "recycled or renamed" in message and "127 more pages" in message
    with pytest.raises(PgBackupError) as err:
        check(data, "000000010000000000000007")
    assert len(err.value.details["problems"]) == 128


def test_a_recycled_file_with_only_its_first_pages_rewritten():
    fresh = build_segment([record(100), record(100)])
    stale = full_segment(segno=2)
    data = fresh[:PAGE] + stale[PAGE:]
    message = refused(data)
    assert "page 1 (LSN 0/502000) has page address 0/202000" in message
    assert check(data, complete=False, through_lsn=BASE + 300).valid_pages == 1


def test_wal_of_another_cluster():
    message = refused(full_segment(sysid=SYSID + 1))
    assert f"system identifier {SYSID + 1}, expected {SYSID}" in message and "another cluster" in message


def test_segment_size_and_block_size_in_the_long_header():
    assert "segment size 16777216, expected 1048576" in refused(patch(full_segment(), 32, "<I", 16 * MB))
    assert "WAL block size 4096, expected 8192" in refused(patch(full_segment(), 36, "<I", 4096))


def test_missing_long_header_on_page_0():
    assert "without the long header" in refused(patch(full_segment(), 2, "<H", 0x0000))


def test_long_header_flag_on_another_page():
    data = patch(full_segment(), 3 * PAGE + 2, "<H", 0x0003)
    assert "page 3 (LSN 0/506000) has the long-header flag" in refused(data)


def test_unknown_info_bits():
    assert "unknown flag bits 0012" in refused(patch(full_segment(), 2 * PAGE + 2, "<H", 0x0012))


def test_xlp_overwrite_contrecord_is_a_known_bit():
    assert check(patch(full_segment(), 2 * PAGE + 2, "<H", 0x0009)).complete


def test_magic_of_another_version():
    data = full_segment()
    assert "magic number D110 (PostgreSQL 15), expected D113 (PostgreSQL 16)" in refused(data, major_version=16)


def test_a_page_of_another_version_in_the_middle():
    data = patch(full_segment(), 7 * PAGE, "<H", 0xD106)
    assert "page 7 (LSN 0/50E000) has magic number D106 (PostgreSQL 13), expected D110 (PostgreSQL 15)" in refused(data)


def test_unknown_magic():
    message = refused(full_segment(magic=0xD0FF))
    assert "magic number D0FF, expected the magic of PostgreSQL 13 to 18" in message


def test_timeline_above_the_file_name():
    data = full_segment(page_tlis={4: 2})
    assert "page 4 (LSN 0/508000) was written on timeline 2, above the file name's timeline 1" in refused(data)


def test_timeline_going_back():
    data = full_segment(tli=3, page_tlis={0: 2, 1: 3, 2: 2})
    assert "goes back from timeline 3 to 2" in refused(data, "000000030000000000000005")


def test_timeline_zero():
    assert "timeline 0" in refused(full_segment(page_tlis={1: 0}))


def test_a_never_written_file():
    message = refused(bytes(MB))
    assert "page 0 is all zeros" in message


def test_data_after_zero_pages():
    data = build_segment([record(100), switch_record()])
    data = with_page(data, 9, page(full_segment(), 9))
    assert "page 9 (LSN 0/512000) holds data after the all-zero page 1" in refused(data)


def test_truncated_and_padded_files():
    data = full_segment()
    assert f"has {MB - PAGE} bytes, expected {MB}" in refused(data[:-PAGE])
    assert f"has {MB - 100} bytes, expected {MB}" in refused(data[:-100])
    assert f"has {MB + 1} bytes, expected {MB}" in refused(data + b"\0")
    assert "has 0 bytes" in refused(b"")
    assert "expected at least 16384" in refused(data[: PAGE + 100], complete=False, through_lsn=BASE + PAGE + 1)
    assert check(data[: 2 * PAGE], complete=False, through_lsn=BASE + PAGE + 1).pages_read == 2


def test_bad_arguments():
    assert "not a WAL segment file name" in refused(full_segment(), "000000010000000000000005.gz")
    assert "timeline 0" in refused(full_segment(), "000000000000000000000005")
    assert "system identifier" in refused(full_segment(), system_identifier=0)
    assert "system identifier" in refused(full_segment(), system_identifier="1")
    assert "PostgreSQL 12 is not supported" in refused(full_segment(), major_version=12)
    assert "power of two" in refused(full_segment(), seg_size=1000)
    with pytest.raises(PgBackupError, match="file_name"):
        validate_segment(full_segment(), file_name=None, system_identifier=SYSID, seg_size=MB)
    with pytest.raises(PgBackupError, match="pass a path, bytes or a binary file"):
        check(12345)


def test_a_partial_name_is_the_segment_it_continues():
    data = build_segment([record(100), record(100)])
    assert check(data, NAME + ".partial", complete=False, through_lsn=BASE + 200).file_name == NAME + ".partial"


def test_problems_of_different_kinds_are_all_listed():
    data = patch(patch(full_segment(sysid=1), 3 * PAGE + 2, "<H", 0x0012), 5 * PAGE + 8, "<Q", 0)
    message = refused(data)
    assert "another cluster" in message and "unknown flag bits" in message and "page address 0/0" in message


# --- sources ----------------------------------------------------------------------------------------


def test_sources_path_bytes_and_file_objects(tmp_path):
    data = build_segment([record(100), switch_record()])
    target = tmp_path / NAME
    target.write_bytes(data)
    for source in (str(target), target, data, bytearray(data), memoryview(data), io.BytesIO(data)):
        assert check(source).complete
    gz = tmp_path / (NAME + ".gz")
    with gzip.open(gz, "wb") as out:
        out.write(data)
    with gzip.open(gz, "rb") as handle:
        assert check(handle).complete
    with gzip.open(gz, "rb") as handle:
        handle.read(10)
        assert "has 1048566 bytes" in refused(handle)


def test_a_stream_longer_than_a_segment():
    assert f"has {MB + 5000} bytes" in refused(io.BytesIO(full_segment() + bytes(5000)))


def test_a_missing_file(tmp_path):
    assert "cannot read WAL segment" in refused(str(tmp_path / NAME))


class CountingReader(io.RawIOBase):
    """A binary stream that remembers the largest read asked of it."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.largest = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.largest = max(self.largest, size)
        return self._data.read(size)


def test_a_big_segment_is_read_in_chunks():
    seg_size = 64 * MB
    data = build_segment([record(100), switch_record()], segno=3, seg_size=seg_size)
    reader = CountingReader(data)
    result = validate_segment(reader, file_name=wal_file_name(1, 3, seg_size), system_identifier=SYSID, seg_size=seg_size)
    assert result.complete and result.pages_read == seg_size // PAGE
    assert 0 < reader.largest <= MB + PAGE + 1


# --- real segments from PostgreSQL 13-18 ------------------------------------------------------------------------

COMPLETE = core_vectors.segments("complete")
PARTIAL = core_vectors.segments("partial")


def real(major: int, seg: dict) -> tuple[bytes, dict]:
    exp = core_vectors.expected(major)
    return core_vectors.read(major, seg["file"]), {"system_identifier": int(exp["system_identifier"]), "seg_size": exp["seg_size"]}


@pytest.mark.parametrize(("major", "seg"), COMPLETE, ids=core_vectors.ids(COMPLETE, "name"))
def test_real_segments_are_valid(major, seg):
    data, kw = real(major, seg)
    result = validate_segment(data, file_name=seg["name"], major_version=major, **kw)
    assert result.complete and result.major_version == major
    assert validate_segment(data, file_name=seg["name"], **kw).major_version == major
    tli = parse_wal_file_name(seg["name"], kw["seg_size"])[0]
    assert result.last_timeline == tli
    if seg["switch_end_lsn"]:
        assert result.switch_end_lsn == parse_lsn(seg["switch_end_lsn"])
        # A stop exactly on the segment's end boundary is held by the switch (read only through the stop, too) ...
        end = result.start_lsn + kw["seg_size"]
        assert validate_segment(data, file_name=seg["name"], through_lsn=end, complete=False, **kw).switch_lsn == result.switch_lsn
        # ... and not once the switch record is gone: the tail after the record before it is zero (a truncated copy).
        cut = bytearray(data)
        at = result.switch_lsn - result.start_lsn
        cut[at : at + 24] = bytes(24)
        with pytest.raises(PgBackupError, match=f"not through {format_lsn(end)}"):
            validate_segment(bytes(cut), file_name=seg["name"], through_lsn=end, complete=False, **kw)
    if tli == 2:
        assert result.timelines == (1, 2)  # timeline 1's WAL copied up to the switchpoint, then timeline 2's


@pytest.mark.parametrize(("major", "seg"), COMPLETE, ids=core_vectors.ids(COMPLETE, "name"))
def test_real_segments_refused_under_a_later_name_of_another_cluster_or_truncated(major, seg):
    data, kw = real(major, seg)
    tli, segno = parse_wal_file_name(seg["name"], kw["seg_size"])
    later = wal_file_name(tli, segno + 3, kw["seg_size"])
    with pytest.raises(PgBackupError, match="recycled or renamed"):
        validate_segment(data, file_name=later, **kw)
    with pytest.raises(PgBackupError, match="another cluster"):
        validate_segment(data, file_name=seg["name"], seg_size=kw["seg_size"], system_identifier=kw["system_identifier"] ^ 1)
    with pytest.raises(PgBackupError, match="bytes, expected 1048576"):
        validate_segment(data[: len(data) // 2], file_name=seg["name"], **kw)
    other = 13 if major != 13 else 18
    with pytest.raises(PgBackupError, match=f"expected {WAL_PAGE_MAGIC[other]:04X}"):
        validate_segment(data, file_name=seg["name"], major_version=other, **kw)
    if tli == 2:
        with pytest.raises(PgBackupError, match="above the file name's timeline 1"):
            validate_segment(data, file_name=wal_file_name(1, segno, kw["seg_size"]), **kw)


@pytest.mark.parametrize(("major", "seg"), PARTIAL, ids=core_vectors.ids(PARTIAL, "name"))
def test_real_partial_segments(major, seg):
    data, kw = real(major, seg)
    through = parse_lsn(seg["through_lsn"])
    result = validate_segment(data, file_name=seg["name"], complete=False, through_lsn=through, **kw)
    assert not result.complete and result.last_timeline == 1
    with pytest.raises(PgBackupError, match="bytes, expected 1048576"):
        validate_segment(data, file_name=seg["name"], **kw)


def test_a_live_copy_with_a_recycled_tail_gets_a_hint():
    fresh = build_segment([record(100), record(9000), record(100)])
    stale = full_segment(segno=2)
    data = fresh[: 2 * PAGE] + stale[2 * PAGE :]
    message = refused(data)
    assert "pages 0 to 1 are right" in message and "copied from pg_wal before PostgreSQL finished writing it" in message
    assert "pages 0 to" not in refused(full_segment(), "000000010000000000000007")  # a plain rename: no such hint


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=20000), max_size=25), st.booleans(), st.integers(min_value=0, max_value=3 * PAGE))
def test_any_wal_ending_in_a_switch_is_complete_and_any_other_is_not(lengths, with_switch, continued):
    records = [record(n) for n in lengths] + ([switch_record()] if with_switch else [])
    data = build_segment(records, continued=continued)
    if with_switch:
        result = check(data)
        assert result.complete and result.switch_lsn is not None
        assert result.switch_end_lsn - result.switch_lsn in (24, 24 + 24)  # plus a page header when the record is split
        assert result.zero_from_page == (result.switch_end_lsn - 1 - BASE) // PAGE + 1
    elif records or continued:
        assert "without a WAL switch record" in refused(data)
    else:
        assert "page 0 is all zeros" in refused(data)


# --- records through an LSN (the old timeline's file of a switch segment) -------------------------------------------


def _partial(major: int) -> tuple:
    expected = core_vectors.expected(major)
    seg = next(s for s in expected["segments"] if s.get("partial"))
    return seg, core_vectors.read(major, seg["file"]), int(expected["system_identifier"]), parse_lsn(seg["through_lsn"])


def records(data, name, sysid, through, major, seg_size=MB):
    return check_records_through(data, file_name=name, system_identifier=sysid, seg_size=seg_size, through_lsn=through, major_version=major)


def records_refused(*args, **kw) -> str:
    with pytest.raises(PgBackupError) as err:
        records(*args, **kw)
    return str(err.value)


@pytest.mark.parametrize("major", core_vectors.MAJORS, ids=[f"pg{m}" for m in core_vectors.MAJORS])
def test_real_old_timeline_partial_holds_records_through_the_switchpoint(major):
    seg, data, sysid, switchpoint = _partial(major)
    history = core_vectors.expected(major)["history"]["text"]
    assert format_lsn(switchpoint) in history  # the vector's switchpoint is the history file's
    found = records(data, seg["name"], sysid, switchpoint, major)
    assert found.records >= 1 and found.end_lsn == switchpoint and found.first_record_lsn == (switchpoint // MB) * MB + 40
    # the new timeline's file begins with the same WAL (copied at promotion): it too holds records through the switchpoint
    new = next(s for s in core_vectors.expected(major)["segments"] if s["name"].startswith("00000002"))
    assert records(core_vectors.read(major, new["file"]), new["name"], sysid, switchpoint, major).end_lsn == switchpoint


@pytest.mark.parametrize("major", core_vectors.MAJORS, ids=[f"pg{m}" for m in core_vectors.MAJORS])
def test_real_old_timeline_partial_refused_when_not_a_record_end_or_damaged(major):
    seg, data, sysid, switchpoint = _partial(major)
    assert "is not a record's end" in records_refused(data, seg["name"], sysid, switchpoint - 8, major)
    assert "is not a record's end" in records_refused(data, seg["name"], sysid, switchpoint + 2, major)  # not even aligned
    # the .partial goes on after the switchpoint (what the old primary still sent, or a recycled file's bytes)
    assert f"the record at {format_lsn(switchpoint)}" in records_refused(data, seg["name"], sysid, switchpoint + 8, major)
    base = (switchpoint // MB) * MB
    first = 40
    second = first + ((int.from_bytes(data[first : first + 4], "little") + 7) & ~7)
    flipped = bytearray(data)
    flipped[second + 30] ^= 0xFF
    assert f"the record at {format_lsn(base + second)} has a wrong CRC" in records_refused(bytes(flipped), seg["name"], sysid, switchpoint, major)
    chained = patch(data, second + 8, "<Q", base + 0x1000)
    assert f"points back to {format_lsn(base + 0x1000)}, expected the previous record {format_lsn(base + first)}" in records_refused(
        chained, seg["name"], sysid, switchpoint, major
    )
    # another segment's pages are refused by the header check first
    assert "recycled or renamed" in records_refused(data, wal_file_name(1, switchpoint // MB + 1, MB), sysid, switchpoint + MB, major)


@pytest.mark.parametrize("major", core_vectors.MAJORS, ids=[f"pg{m}" for m in core_vectors.MAJORS])
def test_real_segment_continued_from_the_previous_one_and_ending_in_a_switch(major):
    expected = core_vectors.expected(major)
    seg = next(s for s in expected["segments"] if s["why"].startswith("a 1.5 MB record") and s["switch_end_lsn"])
    data = core_vectors.read(major, seg["file"])
    sysid = int(expected["system_identifier"])
    switch_end = parse_lsn(seg["switch_end_lsn"])
    found = records(data, seg["name"], sysid, switch_end, major)  # the 1.5 MB record's tail skipped, the switch record last
    assert found.first_record_lsn > parse_wal_file_name(seg["name"], MB)[1] * MB + 40 * 8 and found.end_lsn == switch_end
    assert records(data, seg["name"], sysid, switch_end - 24, major).records == found.records - 1


def test_a_record_over_several_pages_and_a_wrong_continuation():
    data = build_segment([record(20000)])
    end = BASE + 2 * PAGE + 24 + (20024 - (PAGE - 40) - (PAGE - 24))
    assert records(data, NAME, SYSID, end, 15).records == 1
    broken = patch(data, PAGE + 16, "<I", 5)  # page 1's xlp_rem_len
    assert "page 1 (LSN 0/502000) does not continue the record at 0/500028" in records_refused(broken, NAME, SYSID, end, 15)
    assert "runs past" in records_refused(data, NAME, SYSID, end - PAGE, 15)


def test_the_lsn_inside_a_record_continued_from_the_previous_segment():
    data = build_segment([record(100)], continued=3 * PAGE)
    assert "inside a record continued from the previous segment" in records_refused(data, NAME, SYSID, BASE + PAGE, 15)


def test_no_record_at_all_before_the_lsn():
    data = build_segment([record(100)])
    assert "the WAL ends before 0/500200" in records_refused(data, NAME, SYSID, BASE + 0x200, 15)
