from __future__ import annotations

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import LSN_MAX, parse_lsn
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.wal import (
    DEFAULT_SEG_SIZE,
    XLOG_BLCKSZ,
    TimelineHistoryEntry,
    backup_history_file_name,
    check_segment_size,
    check_timeline,
    classify_wal_file,
    end_segment_number,
    format_history,
    history_file_name,
    history_files_needed,
    old_timeline_files,
    parse_backup_history_file_name,
    parse_history,
    parse_history_file_name,
    parse_wal_file_name,
    segment_number,
    segment_offset,
    segment_start_lsn,
    segments_between,
    segments_per_xlogid,
    timeline_of_lsn,
    timeline_ranges,
    timeline_starts,
    wal_file_name,
    wal_file_name_of_lsn,
)
from hypothesis import assume, given
from hypothesis import strategies as st

from . import core_vectors

MB = 1 << 20
SEG_SIZES = [1 << n for n in range(20, 31)]
seg_sizes = st.sampled_from(SEG_SIZES)
tlis = st.integers(min_value=1, max_value=0xFFFFFFFF)
E = TimelineHistoryEntry


def test_constants():
    assert XLOG_BLCKSZ == 8192
    assert DEFAULT_SEG_SIZE == 16 * MB


@pytest.mark.parametrize("size", SEG_SIZES)
def test_valid_segment_sizes(size):
    assert check_segment_size(size) == size
    assert segments_per_xlogid(size) * size == 1 << 32


@pytest.mark.parametrize("size", [0, -MB, MB // 2, MB + 1, 3 * MB, 2 << 30, 1 << 31, 16_000_000, True, "16MB", 16.0 * MB, None])
def test_invalid_segment_sizes(size):
    with pytest.raises(PgBackupError, match="power of two from 1 MB to 1 GB"):
        check_segment_size(size)


@pytest.mark.parametrize("tli", [0, -1, 1 << 32, True, "1", None])
def test_invalid_timelines(tli):
    with pytest.raises(PgBackupError, match="1 to 4294967295"):
        check_timeline(tli)


@pytest.mark.parametrize(
    ("lsn", "seg_size", "name"),
    [
        ("0/6600050", 16 * MB, "000000010000000000000006"),  # the reference's example
        ("0/6600050", MB, "000000010000000000000066"),  # ... seen on a real 1 MB cluster
        ("0/2500028", 16 * MB, "000000010000000000000002"),
        ("0/0", 16 * MB, "000000010000000000000000"),
        ("1/0", 16 * MB, "000000010000000100000000"),
        ("1/FF000000", 16 * MB, "0000000100000001000000FF"),
        ("1/FFFFFFFF", MB, "000000010000000100000FFF"),
        ("A/12345678", 64 * MB, "000000010000000A00000004"),
        ("FFFFFFFF/FFFFFFFF", 1 << 30, "00000001FFFFFFFF00000003"),
    ],
)
def test_file_name_of_an_lsn(lsn, seg_size, name):
    assert wal_file_name_of_lsn(1, parse_lsn(lsn), seg_size) == name
    assert parse_wal_file_name(name, seg_size) == (1, segment_number(parse_lsn(lsn), seg_size))


def test_timelines_are_hex_in_file_names():
    assert wal_file_name(10, 0x25, 16 * MB) == "0000000A0000000000000025"
    assert wal_file_name(0xFFFFFFFF, 0, 16 * MB) == "FFFFFFFF0000000000000000"
    assert parse_wal_file_name("0000000A0000000000000025", 16 * MB) == (10, 0x25)


@pytest.mark.parametrize(
    ("lsn", "start_seg", "end_seg"),
    [
        ("0/1000000", 1, 0),  # exactly on a boundary: the end pointer belongs to the previous segment
        ("0/1000001", 1, 1),
        ("0/FFFFFF", 0, 0),
        ("0/1", 0, 0),
        ("1/0", 256, 255),
    ],
)
def test_start_and_end_segment_rules(lsn, start_seg, end_seg):
    assert segment_number(parse_lsn(lsn), 16 * MB) == start_seg
    assert end_segment_number(parse_lsn(lsn), 16 * MB) == end_seg


def test_end_segment_of_zero_is_refused():
    with pytest.raises(PgBackupError, match="no byte before it"):
        end_segment_number(0, 16 * MB)


def test_end_file_name():
    assert wal_file_name_of_lsn(1, parse_lsn("0/3000000"), 16 * MB, end=True) == "000000010000000000000002"
    assert wal_file_name_of_lsn(1, parse_lsn("0/3000000"), 16 * MB) == "000000010000000000000003"


def test_segment_offsets():
    assert segment_offset(parse_lsn("0/2500028"), 16 * MB) == 0x500028
    assert segment_offset(parse_lsn("0/2500028"), MB) == 0x28
    assert segment_start_lsn(0x25, 16 * MB) == parse_lsn("0/25000000")
    with pytest.raises(PgBackupError, match="out of range"):
        segment_start_lsn(-1, 16 * MB)
    with pytest.raises(PgBackupError, match="out of range"):
        segment_start_lsn(1 << 60, 16 * MB)


@given(tlis, st.data(), seg_sizes)
def test_file_name_round_trip_for_every_segment_size(tli, data, seg_size):
    segno = data.draw(st.integers(min_value=0, max_value=(1 << 64) // seg_size - 1))
    name = wal_file_name(tli, segno, seg_size)
    assert len(name) == 24 and name == name.upper()
    assert parse_wal_file_name(name, seg_size) == (tli, segno)
    assert classify_wal_file(name) == "segment"
    assert name[8:16] == f"{(segno * seg_size) >> 32:08X}"  # the middle field is always lsn >> 32


@given(st.integers(min_value=0, max_value=LSN_MAX), seg_sizes)
def test_segment_of_an_lsn_holds_it(lsn, seg_size):
    segno = segment_number(lsn, seg_size)
    assert segment_start_lsn(segno, seg_size) <= lsn < segment_start_lsn(segno, seg_size) + seg_size
    if lsn:
        end = end_segment_number(lsn, seg_size)
        assert end in (segno, segno - 1)
        assert (end == segno - 1) == (lsn % seg_size == 0)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "00000001000000000000002",  # 23 digits
        "0000000100000000000000025",  # 25 digits
        "00000001000000000000002g",
        "00000001000000000000002a",  # lowercase: PostgreSQL never writes or reads it
        "000000010000000000000025.partial",
        "000000010000000000000025 ",
        " 000000010000000000000025",
        "00000001.history",
        None,
        25,
    ],
)
def test_parse_wal_file_name_refuses_non_names(name):
    with pytest.raises(PgBackupError, match="not a WAL segment file name"):
        parse_wal_file_name(name, 16 * MB)


def test_parse_wal_file_name_refuses_timeline_zero():
    with pytest.raises(PgBackupError, match="timeline 0"):
        parse_wal_file_name("000000000000000000000025", 16 * MB)


@pytest.mark.parametrize(
    ("name", "seg_size"),
    [("000000010000000000000100", 16 * MB), ("00000001000000000000FFFF", 16 * MB), ("000000010000000000001000", MB), ("000000010000000000000004", 1 << 30)],
)
def test_parse_wal_file_name_refuses_an_index_the_size_cannot_have(name, seg_size):
    with pytest.raises(PgBackupError, match="impossible with"):
        parse_wal_file_name(name, seg_size)
    if int(name[16:], 16) < 4096:
        assert parse_wal_file_name(name, MB)[0] == 1  # the same name is fine with 1 MB segments (4096 per 4 GB)


def test_wal_file_name_refuses_out_of_range():
    with pytest.raises(PgBackupError, match="timeline"):
        wal_file_name(0, 1, 16 * MB)
    with pytest.raises(PgBackupError, match="segment number"):
        wal_file_name(1, (1 << 64) // (16 * MB), 16 * MB)
    with pytest.raises(PgBackupError, match="segment number"):
        wal_file_name(1, -1, 16 * MB)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("000000010000000000000025", "segment"),
        ("000000010000000000000025.partial", "partial"),
        ("0000000A.history", "history"),
        ("000000010000000000000025.00000028.backup", "backup"),
        ("000000010000000000000025.gz", None),
        ("archive_status", None),
        ("0000000a.history", None),
        ("RECOVERYXLOG", None),
        (None, None),
    ],
)
def test_classify_wal_file(name, kind):
    assert classify_wal_file(name) == kind


def test_history_file_names():
    assert history_file_name(2) == "00000002.history"
    assert history_file_name(10) == "0000000A.history"
    assert history_file_name(0xFFFFFFFF) == "FFFFFFFF.history"
    assert parse_history_file_name("0000000A.history") == 10
    for bad in (1, 0, 1 << 32, "2"):
        with pytest.raises(PgBackupError):
            history_file_name(bad)
    for bad in ("00000001.history", "0000000a.history", "A.history", "0000000A.histor", None):
        with pytest.raises(PgBackupError, match="not a timeline history file name"):
            parse_history_file_name(bad)


def test_backup_history_file_names():
    name = backup_history_file_name(1, parse_lsn("0/2500028"), 16 * MB)
    assert name == "000000010000000000000002.00500028.backup"
    assert parse_backup_history_file_name(name, 16 * MB) == (1, parse_lsn("0/2500028"))
    assert backup_history_file_name(3, parse_lsn("0/E00028"), MB) == "00000003000000000000000E.00000028.backup"
    with pytest.raises(PgBackupError, match="not a backup history file name"):
        parse_backup_history_file_name("000000010000000000000002.backup", 16 * MB)
    with pytest.raises(PgBackupError, match="beyond"):
        parse_backup_history_file_name("000000010000000000000002.01000000.backup", 16 * MB)


@pytest.mark.parametrize(("major", "label"), [(m, lab) for m, lab in core_vectors.labels() if lab.get("backup_history_name")])
def test_backup_history_file_name_of_real_backups(major, label):
    seg_size = core_vectors.expected(major)["seg_size"]
    assert backup_history_file_name(1, parse_lsn(label["start_lsn"]), seg_size) == label["backup_history_name"]


# --- timeline history -----------------------------------------------------------------------------


def test_parse_history_like_postgres_writes_it():
    text = '1\t0/3000000\tno recovery target specified\n\n2\t0/5000158\tat restore point "x"\n'
    assert parse_history(text, 3) == [E(1, 0x3000000, "no recovery target specified"), E(2, 0x5000158, 'at restore point "x"')]


def test_parse_history_skips_comments_and_blank_lines_and_accepts_spaces():
    text = "# made by hand\n\n   \n  # indented comment\n1 0/3000000 reason with  spaces \r\n5\t1/0\n"
    assert parse_history(text, 10) == [E(1, 0x3000000, "reason with  spaces"), E(5, 1 << 32, "")]


def test_parse_empty_history():
    assert parse_history("", 2) == []
    assert parse_history("# nothing\n", 1) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x\t0/1\tr\n", "syntax error on line 1"),
        ("1\n", "syntax error on line 1"),
        ("1\t0/G\tr\n", "syntax error on line 1"),
        ("\n\n1\tnot-an-lsn\n", "syntax error on line 3"),
        ("1\t123456789/0\n", "not a valid LSN"),
        ("2\t0/1\n1\t0/2\n", "line 2 .* increasing sequence"),
        ("1\t0/1\n1\t0/2\n", "line 2 .* increasing sequence"),
        ("1\t0/5\n2\t0/4\n", "line 2 .* before the previous one"),
        ("3\t0/5\n", "not below the file's own timeline 3"),
        ("4\t0/5\n", "not below the file's own timeline 3"),
        ("0\t0/5\n", "parent timeline 0"),
        ("\u0661\t0/5\n", "syntax error"),  # an Arabic-Indic digit one
    ],
)
def test_parse_history_refusals_name_the_line(text, message):
    with pytest.raises(PgBackupError, match=message) as err:
        parse_history(text, 3)
    assert "00000003.history" in str(err.value)


def test_parse_history_refuses_non_text_and_bad_timeline():
    with pytest.raises(PgBackupError):
        parse_history(b"1\t0/1\n", 2)
    with pytest.raises(PgBackupError):
        parse_history("", 0)


@pytest.mark.parametrize("major", core_vectors.MAJORS)
def test_parse_real_history_files(major):
    history = core_vectors.expected(major)["history"]
    entries = parse_history(history["text"], parse_history_file_name(history["name"]))
    assert len(entries) == 1
    assert entries[0].parent_tli == 1
    assert entries[0].reason == "no recovery target specified"
    assert format_history(entries) == history["text"]


@given(st.lists(st.tuples(st.integers(min_value=1, max_value=1000), st.integers(min_value=1, max_value=1 << 40)), max_size=8, unique_by=lambda t: t[0]))
def test_history_round_trip(pairs):
    parents = sorted(pair[0] for pair in pairs)
    points = sorted(pair[1] for pair in pairs)
    entries = [E(p, s, f"reason {p}") for p, s in zip(parents, points)]
    newest = (parents[-1] if parents else 1) + 1
    assert parse_history(format_history(entries), newest) == entries


HISTORY_3 = [E(1, parse_lsn("0/3000000"), "r"), E(2, parse_lsn("0/5000158"), "r")]


@pytest.mark.parametrize(
    ("lsn", "tli"),
    [("0/0", 1), ("0/2FFFFFF", 1), ("0/3000000", 2), ("0/5000157", 2), ("0/5000158", 3), ("FFFFFFFF/FFFFFFFF", 3)],
)
def test_timeline_of_lsn(lsn, tli):
    assert timeline_of_lsn(parse_lsn(lsn), HISTORY_3, 3) == tli


def test_timeline_of_lsn_without_history():
    assert timeline_of_lsn(12345, [], 1) == 1
    assert timeline_of_lsn(12345, [], 7) == 7  # no history file: no parents, as readTimeLineHistory assumes


def test_timeline_of_lsn_refuses_a_history_of_another_timeline():
    with pytest.raises(PgBackupError, match="not the history of timeline 2"):
        timeline_of_lsn(0, HISTORY_3, 2)
    with pytest.raises(PgBackupError, match="out of order"):
        timeline_of_lsn(0, list(reversed(HISTORY_3)), 3)
    with pytest.raises(PgBackupError, match="TimelineHistoryEntry"):
        timeline_of_lsn(0, [(1, 5)], 3)


def test_timeline_starts():
    assert timeline_starts(HISTORY_3, 3) == [(1, 0), (2, 0x3000000), (3, 0x5000158)]
    assert timeline_starts([], 1) == [(1, 0)]


# --- segments a backup needs ------------------------------------------------------------------------


def test_segments_between_on_one_timeline():
    names = segments_between(parse_lsn("0/2500028"), parse_lsn("0/4000000"), 1, [], 16 * MB)
    assert names == ["000000010000000000000002", "000000010000000000000003"]  # 0/4000000 needs nothing of segment 4


def test_segments_between_one_segment():
    assert segments_between(parse_lsn("0/E00028"), parse_lsn("0/E04268"), 1, [], MB) == ["00000001000000000000000E"]


def test_segments_between_crosses_an_xlogid():
    names = segments_between(parse_lsn("0/FE000028"), parse_lsn("1/1000001"), 1, [], 16 * MB)
    assert names == ["0000000100000000000000FE", "0000000100000000000000FF", "000000010000000100000000", "000000010000000100000001"]


def test_segments_between_takes_the_switch_segment_from_the_new_timeline():
    # timeline 2 began at 0/3000100 (in segment 3), timeline 3 at 0/5000158 (segment 5)
    history = [E(1, parse_lsn("0/3000100"), "r"), E(2, parse_lsn("0/5000158"), "r")]
    names = segments_between(parse_lsn("0/2000028"), parse_lsn("0/6000100"), 3, history, 16 * MB)
    assert names == [
        "000000010000000000000002",
        "000000020000000000000003",
        "000000020000000000000004",
        "000000030000000000000005",
        "000000030000000000000006",
    ]


def test_segments_between_with_a_switch_on_a_segment_boundary():
    history = [E(1, parse_lsn("0/3000000"), "r")]
    names = segments_between(parse_lsn("0/2000028"), parse_lsn("0/3000000"), 2, history, 16 * MB)
    assert names == ["000000010000000000000002"]
    names = segments_between(parse_lsn("0/2000028"), parse_lsn("0/3000001"), 2, history, 16 * MB)
    assert names == ["000000010000000000000002", "000000020000000000000003"]


def test_segments_between_hex_timelines():
    history = [E(9, parse_lsn("0/3000100"), "r")]
    assert segments_between(parse_lsn("0/3000200"), parse_lsn("0/3000300"), 10, history, 16 * MB) == ["0000000A0000000000000003"]


def test_segments_between_start_on_the_old_timeline_in_the_switch_segment():
    history = [E(1, parse_lsn("0/3800000"), "r")]
    # the start is on timeline 1, but recovery reads segment 3 from timeline 2, which holds timeline 1's WAL up to the switch
    assert segments_between(parse_lsn("0/3000028"), parse_lsn("0/3900000"), 2, history, 16 * MB) == ["000000020000000000000003"]


@pytest.mark.parametrize(("start", "stop"), [("0/3000000", "0/3000000"), ("0/3000001", "0/3000000")])
def test_segments_between_refuses_an_empty_range(start, stop):
    with pytest.raises(PgBackupError, match="not after start LSN"):
        segments_between(parse_lsn(start), parse_lsn(stop), 1, [], 16 * MB)


def test_segments_between_refuses_a_stop_before_its_timeline():
    with pytest.raises(PgBackupError, match="before timeline 2 began"):
        segments_between(parse_lsn("0/1000000"), parse_lsn("0/2000000"), 2, [E(1, parse_lsn("0/3000000"), "r")], 16 * MB)


def test_segments_between_refuses_a_history_of_another_timeline():
    with pytest.raises(PgBackupError, match="not the history of timeline 2"):
        segments_between(parse_lsn("0/1000000"), parse_lsn("0/9000000"), 2, HISTORY_3, 16 * MB)


def test_segments_between_refuses_bad_sizes_and_lsns():
    with pytest.raises(PgBackupError):
        segments_between(0, 10, 1, [], 1000)
    with pytest.raises(PgBackupError):
        segments_between(-1, 10, 1, [], MB)


@st.composite
def backup_ranges(draw):
    """A segment size, a timeline history, a stop timeline and a start/stop pair in it."""
    seg_size = draw(st.sampled_from([MB, 16 * MB, 1 << 30]))
    count = draw(st.integers(min_value=0, max_value=5))
    parents = sorted(draw(st.lists(st.integers(min_value=1, max_value=50), min_size=count, max_size=count, unique=True)))
    points = sorted(draw(st.lists(st.integers(min_value=1, max_value=60 * seg_size), min_size=count, max_size=count)))
    history = [E(p, s, "") for p, s in zip(parents, points)]
    stop_tli = (parents[-1] if parents else 0) + draw(st.integers(min_value=1, max_value=3))
    floor = points[-1] if points else 0
    stop = draw(st.integers(min_value=max(floor, 1), max_value=floor + 20 * seg_size))
    start = draw(st.integers(min_value=max(0, stop - 40 * seg_size), max_value=stop - 1)) if stop > 0 else 0
    assume(start < stop)
    return seg_size, history, stop_tli, start, stop


@given(backup_ranges())
def test_segments_between_is_contiguous_and_monotonic(case):
    seg_size, history, stop_tli, start, stop = case
    names = segments_between(start, stop, stop_tli, history, seg_size)
    parsed = [parse_wal_file_name(n, seg_size) for n in names]
    segnos = [pair[1] for pair in parsed]
    assert segnos == list(range(segment_number(start, seg_size), end_segment_number(stop, seg_size) + 1))
    file_tlis = [pair[0] for pair in parsed]
    assert file_tlis == sorted(file_tlis)  # timelines never go back
    assert file_tlis[-1] >= timeline_of_lsn(stop - 1, history, stop_tli)
    known = {pair[0] for pair in timeline_starts(history, stop_tli)}
    for tli, segno in parsed:
        assert tli in known
        # the newest timeline that began at or before the end of this segment...
        begins = dict(timeline_starts(history, stop_tli))
        assert segment_number(begins[tli], seg_size) <= segno
        # ... and no newer one began in or before it
        assert all(segment_number(b, seg_size) > segno for t, b in begins.items() if t > tli)
        # every byte of the segment that recovery reads is on this timeline or an older one
        assert timeline_of_lsn(segno * seg_size, history, stop_tli) <= tli


@given(backup_ranges())
def test_segments_between_covers_every_needed_byte(case):
    seg_size, history, stop_tli, start, stop = case
    names = segments_between(start, stop, stop_tli, history, seg_size)
    first = parse_wal_file_name(names[0], seg_size)[1]
    last = parse_wal_file_name(names[-1], seg_size)[1]
    assert first * seg_size <= start
    assert (last + 1) * seg_size >= stop


# --- manifest WAL ranges and history files -------------------------------------------------------------


def test_timeline_ranges_on_one_timeline():
    assert timeline_ranges(parse_lsn("0/2000028"), 1, parse_lsn("0/3000100"), 1, []) == [(1, parse_lsn("0/2000028"), parse_lsn("0/3000100"))]


def test_timeline_ranges_across_switches_newest_first():
    ranges = timeline_ranges(parse_lsn("0/2000028"), 1, parse_lsn("0/6000100"), 3, HISTORY_3)
    assert ranges == [
        (3, parse_lsn("0/5000158"), parse_lsn("0/6000100")),
        (2, parse_lsn("0/3000000"), parse_lsn("0/5000158")),
        (1, parse_lsn("0/2000028"), parse_lsn("0/3000000")),
    ]


def test_timeline_ranges_skips_timelines_that_ended_before_the_start():
    ranges = timeline_ranges(parse_lsn("0/4000000"), 2, parse_lsn("0/6000100"), 3, HISTORY_3)
    assert ranges == [(3, parse_lsn("0/5000158"), parse_lsn("0/6000100")), (2, parse_lsn("0/4000000"), parse_lsn("0/5000158"))]


def test_timeline_ranges_refuses_a_start_timeline_outside_the_history():
    with pytest.raises(PgBackupError, match="start timeline 7 is not in the history"):
        timeline_ranges(parse_lsn("0/4000000"), 7, parse_lsn("0/6000100"), 3, HISTORY_3)
    with pytest.raises(PgBackupError, match="start timeline 1 is not in the history"):
        timeline_ranges(parse_lsn("0/4000000"), 1, parse_lsn("0/6000100"), 3, HISTORY_3)


def test_history_files_needed():
    assert history_files_needed(1, []) == []
    assert history_files_needed(2, [E(1, 5, "")]) == ["00000002.history"]
    assert history_files_needed(3, HISTORY_3) == ["00000002.history", "00000003.history"]
    assert history_files_needed(3, HISTORY_3, required_only=True) == ["00000003.history"]
    assert history_files_needed(1, [], required_only=True) == []
    assert history_files_needed(12, [E(1, 5, ""), E(10, 9, "")]) == ["0000000A.history", "0000000C.history"]
    with pytest.raises(PgBackupError):
        history_files_needed(2, HISTORY_3)


@pytest.mark.parametrize("major", core_vectors.MAJORS)
def test_segments_across_a_real_promotion(major):
    """The standby promoted in make_vectors: the switch segment exists under timeline 2, the old one only as .partial."""
    exp = core_vectors.expected(major)
    seg_size = exp["seg_size"]
    history = parse_history(exp["history"]["text"], 2)
    switchpoint = history[0].switchpoint
    archived = {s["name"] for s in exp["segments"]}
    first_tli2 = wal_file_name(2, segment_number(switchpoint, seg_size), seg_size)
    assert first_tli2 in archived
    assert wal_file_name(1, segment_number(switchpoint, seg_size), seg_size) + ".partial" in archived
    names = segments_between(switchpoint - seg_size, switchpoint + 100, 2, history, seg_size)
    assert names == [wal_file_name(1, segment_number(switchpoint, seg_size) - 1, seg_size), first_tli2]
    ranges = timeline_ranges(switchpoint - 100, 1, switchpoint + 100, 2, history)
    assert ranges == [(2, switchpoint, switchpoint + 100), (1, switchpoint - 100, switchpoint)]
    assert history_files_needed(2, history) == [exp["history"]["name"]]


def test_old_timeline_files_a_manifest_promises():
    seg = 16 << 20
    history = parse_history("1\t0/1000000\tx\n10\t0/1F000100\tpromoted\n", 11)
    start, stop = 0x1E000028, 0x20000100
    # recovery reads 11's file for segment 1F (it holds 10's WAL up to the switch); pg_waldump on timeline 10 wants 10's
    assert segments_between(start, stop, 11, history, seg)[1] == "0000000B000000000000001F"
    assert old_timeline_files(start, 10, stop, 11, history, seg) == [("0000000A000000000000001F", 0x1F000100)]
    # a switchpoint exactly on a segment boundary: the old range ends in segment 1E, which recovery reads from 10 too
    on_boundary = parse_history("1\t0/1000000\tx\n10\t0/1F000000\tpromoted\n", 11)
    assert old_timeline_files(start, 10, stop, 11, on_boundary, seg) == []
    assert old_timeline_files(0x1000028, 1, 0x2000000, 1, [], seg) == []  # one timeline: nothing extra


@pytest.mark.parametrize("seg_size", [MB, 16 * MB, 1024 * MB])
def test_segments_between_named_run_by_run_equal_each_name_alone(seg_size):
    """The segment list is built a run of one 4 GB xlogid at a time (a million segments: 14 s one name at a time, well
    under a second now): it must equal the names made one by one, across xlogid boundaries and timeline switches."""
    per_id = segments_per_xlogid(seg_size)
    start = segment_start_lsn(per_id - 3, seg_size) + 40
    switch = segment_start_lsn(per_id + 2, seg_size) + 4096  # timeline 2 begins inside a segment of the next xlogid
    stop = segment_start_lsn(2 * per_id + 5, seg_size) + 100
    history = [TimelineHistoryEntry(1, switch, "promoted")]
    names = segments_between(start, stop, 2, history, seg_size)
    first, last = segment_number(start, seg_size), end_segment_number(stop, seg_size)
    expected = [wal_file_name(1 if n < segment_number(switch, seg_size) else 2, n, seg_size) for n in range(first, last + 1)]
    assert names == expected
    assert old_timeline_files(start, 1, stop, 2, history, seg_size) == [(wal_file_name(1, segment_number(switch, seg_size), seg_size), switch)]


def test_a_million_segments():
    names = segments_between(parse_lsn("0/1000028"), parse_lsn("0/1000028") + 1_000_000 * 16 * MB, 1, [], 16 * MB)
    assert len(names) == 1_000_001 and names[-1] == wal_file_name(1, 1_000_001, 16 * MB) and len(set(names)) == len(names)
