from __future__ import annotations

import struct

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import pg_control as pgc
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.crc32c import crc32c
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import format_lsn
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.pg_control import (
    CATALOG_VERSION,
    PG_CONTROL_FILE_SIZE,
    major_version_of,
    parse_control_file,
    read_control_file,
)
from hypothesis import given
from hypothesis import strategies as st

from . import core_vectors
from .control_views import controldata_view, normalise_sql

CONTROLS = core_vectors.controls()


def real_file(major: int, role: str = "primary") -> bytes:
    return core_vectors.read(major, f"pg_control_{role}.gz")


def recrc(data: bytes) -> bytes:
    """The bytes with a correct CRC again (after a test changed a field)."""
    offset = 292 if struct.unpack_from("<I", data, 8)[0] == 1800 else 288
    out = bytearray(data)
    struct.pack_into("<I", out, offset, crc32c(bytes(out[:offset])))
    return bytes(out)


def put(data: bytes, offset: int, fmt: str, value) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return recrc(bytes(out))


# --- real files of PostgreSQL 13-18 ---------------------------------------------------------------------------


@pytest.mark.parametrize(("major", "control"), CONTROLS, ids=core_vectors.ids(CONTROLS, "role"))
def test_real_files_parse(major, control):
    exp = core_vectors.expected(major)
    parsed = parse_control_file(core_vectors.read(major, control["file"]))
    assert parsed.major_version == major
    assert parsed.system_identifier == int(exp["system_identifier"])
    assert parsed.xlog_seg_size == exp["seg_size"] == 1 << 20
    assert parsed.pg_control_version == {17: 1700, 18: 1800}.get(major, 1300)
    assert parsed.catalog_version_no == CATALOG_VERSION[major]
    assert parsed.blcksz == parsed.xlog_blcksz == 8192
    assert parsed.data_checksum_version == 1 and parsed.data_checksums
    assert parsed.wal_level_name == "replica"
    assert (parsed.checkpoint_wal_level is not None) == (major >= 17)
    if major >= 17:
        assert parsed.checkpoint_wal_level == parsed.wal_level
    assert (parsed.default_char_signedness is not None) == (major >= 18)
    state = {"primary": "in production", "standby": "in archive recovery", "shutdown": "shut down"}[control["role"]]
    assert parsed.state_name == state
    assert parsed.in_recovery == (control["role"] == "standby")
    if control["role"] == "standby":
        assert parsed.min_recovery_point > parsed.redo_lsn and parsed.min_recovery_point_tli == 1
    facts = parsed.as_dict()
    assert facts["checkpoint_lsn"] == format_lsn(parsed.checkpoint_lsn)
    assert len(facts["mock_authentication_nonce"]) == 64


@pytest.mark.parametrize(("major", "control"), [c for c in CONTROLS if c[1]["sql"]], ids=core_vectors.ids([c for c in CONTROLS if c[1]["sql"]], "role"))
def test_real_files_agree_with_the_sql_functions_field_by_field(major, control):
    parsed = parse_control_file(core_vectors.read(major, control["file"]))
    ours = parsed.sql_view()
    theirs = normalise_sql(control["sql"])
    for group in ("system", "checkpoint", "recovery", "init"):
        assert sorted(ours[group]) == sorted(theirs[group]), group  # every column, no more, no fewer
        for key, value in theirs[group].items():
            assert ours[group][key] == value, f"{group}.{key}"


PG_CONTROLDATA = [c for c in CONTROLS if c[1].get("pg_controldata")]


@pytest.mark.parametrize(("major", "control"), PG_CONTROLDATA, ids=core_vectors.ids(PG_CONTROLDATA, "role"))
def test_real_files_agree_with_pg_controldata(major, control):
    # pg_controldata printed times in the generating machine's zone, UTC (make_vectors runs in UTC containers)
    parsed = parse_control_file(core_vectors.read(major, control["file"]))
    assert controldata_view(parsed) == control["pg_controldata"]


def test_read_a_data_directory_and_a_path(tmp_path):
    (tmp_path / "global").mkdir()
    (tmp_path / "global" / "pg_control").write_bytes(real_file(15))
    assert read_control_file(str(tmp_path)).major_version == 15
    assert read_control_file(tmp_path / "global" / "pg_control").major_version == 15


def test_read_a_missing_file(tmp_path):
    with pytest.raises(PgBackupError, match=r"cannot read .*pg_control"):
        read_control_file(str(tmp_path / "nothing"))


# --- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 296, 8191, 8193, 16384])
def test_wrong_size(size):
    data = (real_file(15) + bytes(PG_CONTROL_FILE_SIZE))[:size]
    with pytest.raises(PgBackupError, match=f"has {size} bytes, expected 8192"):
        parse_control_file(data)


def test_not_bytes():
    with pytest.raises(PgBackupError, match="expected the file's bytes"):
        parse_control_file("text")


@pytest.mark.parametrize("major", core_vectors.MAJORS)
def test_a_damaged_file_names_both_crcs(major):
    data = bytearray(real_file(major))
    data[100] ^= 0x01
    stored = struct.unpack_from("<I", data, 292 if major == 18 else 288)[0]
    computed = crc32c(bytes(data[: 292 if major == 18 else 288]))
    with pytest.raises(PgBackupError) as err:
        parse_control_file(bytes(data), source="copy/global/pg_control")
    message = str(err.value)
    assert f"calculated CRC checksum {computed:08X}" in message and f"({stored:08X})" in message
    assert message.startswith("copy/global/pg_control:")
    assert err.value.details == {"calculated_crc": f"{computed:08X}", "stored_crc": f"{stored:08X}"}


def test_bytes_after_the_crc_are_not_covered():
    data = bytearray(real_file(15))
    data[4000] = 0xFF
    assert parse_control_file(bytes(data)).major_version == 15


def test_the_crc_sits_at_292_in_18_and_288_before():
    assert parse_control_file(real_file(18)).crc == struct.unpack_from("<I", real_file(18), 292)[0]
    assert parse_control_file(real_file(17)).crc == struct.unpack_from("<I", real_file(17), 288)[0]
    # a 17 file relabelled 1800 is checked at 292 and fails
    with pytest.raises(PgBackupError, match="CRC"):
        parse_control_file(put(real_file(17), 8, "<I", 1800)[:288] + real_file(17)[288:])


@pytest.mark.parametrize("version", [0, 1201, 1299, 1301, 1600, 1900, 0xFFFFFFFF])
def test_unknown_pg_control_version(version):
    with pytest.raises(PgBackupError, match=f"pg_control version {version}, expected 1300"):
        parse_control_file(put(real_file(15), 8, "<I", version))


def test_a_big_endian_file():
    with pytest.raises(PgBackupError, match="big-endian"):
        parse_control_file(put(real_file(15), 8, ">I", 1300))


def test_catalog_and_control_versions_must_agree():
    with pytest.raises(PgBackupError, match="expected pg_control version 1300"):
        parse_control_file(put(real_file(17), 12, "<I", CATALOG_VERSION[15]))


@pytest.mark.parametrize("catversion", [201909212, 201707211, 202506292, 202607071, 0])
def test_catalog_versions_outside_13_to_18(catversion):
    with pytest.raises(PgBackupError, match=f"catalog version {catversion}, which is not PostgreSQL 13 to 18"):
        major_version_of(catversion)
    with pytest.raises(PgBackupError, match="supports PostgreSQL 13 to 18"):
        parse_control_file(put(real_file(15), 12, "<I", catversion))


@pytest.mark.parametrize(
    ("catversion", "major"),
    [(202007201, 13), (201909213, 13), (202107181, 14), (202007202, 14), (202209061, 15), (202307071, 16), (202406281, 17), (202506291, 18), (202406290, 18)],
)
def test_major_from_catalog_version_including_development_builds(catversion, major):
    assert major_version_of(catversion) == major


def test_a_32_bit_layout_is_refused():
    with pytest.raises(PgBackupError, match="32-bit"):
        parse_control_file(put(real_file(15), 208, "<d", 0.0))


# --- fields -----------------------------------------------------------------------------------------


def test_field_offsets_with_synthetic_values():
    data = real_file(16)
    data = put(data, 16, "<i", 5)  # state
    data = put(data, 136, "<Q", 0x1234_5678_9ABC)  # minRecoveryPoint
    data = put(data, 144, "<I", 7)  # minRecoveryPointTLI
    data = put(data, 152, "<Q", 0x100)  # backupStartPoint
    data = put(data, 160, "<Q", 0x200)  # backupEndPoint
    data = put(data, 168, "<?", True)  # backupEndRequired
    data = put(data, 64, "<Q", (3 << 32) | 777)  # nextXid: epoch 3, xid 777
    data = put(data, 48, "<I", 10)  # ThisTimeLineID
    parsed = parse_control_file(data)
    assert parsed.state_name == "in archive recovery" and parsed.in_recovery
    assert parsed.min_recovery_point == 0x1234_5678_9ABC and parsed.min_recovery_point_tli == 7
    assert (parsed.backup_start_point, parsed.backup_end_point, parsed.backup_end_required) == (0x100, 0x200, True)
    assert parsed.next_xid == "3:777"
    assert parsed.redo_wal_file.startswith("0000000A")
    view = parsed.sql_view()
    assert view["recovery"] == {
        "min_recovery_end_lsn": "1234/56789ABC",
        "min_recovery_end_timeline": 7,
        "backup_start_lsn": "0/100",
        "backup_end_lsn": "0/200",
        "end_of_backup_record_required": True,
    }


@pytest.mark.parametrize(("state", "name"), [*pgc.STATE_NAMES.items(), (9, "unrecognized status code 9")])
def test_state_names(state, name):
    assert parse_control_file(put(real_file(15), 16, "<i", state)).state_name == name


@pytest.mark.parametrize(("level", "name"), [(0, "minimal"), (1, "replica"), (2, "logical"), (5, "unrecognized wal_level 5")])
def test_wal_level_names(level, name):
    assert parse_control_file(put(real_file(15), 172, "<i", level)).wal_level_name == name


def test_17_keeps_wal_level_in_the_checkpoint_too():
    parsed = parse_control_file(put(real_file(17), 60, "<i", 2))
    assert parsed.checkpoint_wal_level == 2 and parsed.wal_level == 1
    assert parse_control_file(put(real_file(16), 60, "<i", 2)).checkpoint_wal_level is None  # padding before 17


def test_18_default_char_signedness():
    assert parse_control_file(put(real_file(18), 256, "<?", False)).default_char_signedness is False
    assert parse_control_file(real_file(18)).sql_view()["init"]["default_char_signedness"] is True


def test_as_dict_is_json_ready():
    import json

    facts = parse_control_file(real_file(15, "standby")).as_dict()
    json.dumps(facts)
    assert facts["state_name"] == "in archive recovery" and facts["data_checksums"] is True
    assert facts["min_recovery_point"].count("/") == 1


@given(st.integers(min_value=0, max_value=(1 << 64) - 1), st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_any_lsn_values_round_trip_through_the_file(checkpoint, redo):
    parsed = parse_control_file(put(put(real_file(15), 32, "<Q", checkpoint), 40, "<Q", redo))
    assert (parsed.checkpoint_lsn, parsed.redo_lsn) == (checkpoint, redo)


# --- torn reads ---------------------------------------------------------------------------------------


class Rewriter:
    """Stands in for time.sleep: writes the next content to the file at each retry, counting the sleeps."""

    def __init__(self, path, contents):
        self.path = path
        self.contents = list(contents)
        self.sleeps = 0

    def __call__(self, seconds):
        assert seconds == 0.01
        self.sleeps += 1
        if self.contents:
            self.path.write_bytes(self.contents.pop(0))


def torn(data: bytes, flip: int) -> bytes:
    out = bytearray(data)
    out[flip] ^= 0xFF
    return bytes(out)


def setup_file(tmp_path, first: bytes):
    target = tmp_path / "pg_control"
    target.write_bytes(first)
    return target


def test_a_torn_read_is_retried(tmp_path, monkeypatch):
    good = real_file(15, "standby")
    target = setup_file(tmp_path, torn(good, 140))
    sleeper = Rewriter(target, [good])
    monkeypatch.setattr(pgc._time, "sleep", sleeper)
    assert read_control_file(str(target)).state_name == "in archive recovery"
    assert sleeper.sleeps == 1


def test_the_same_bad_crc_twice_is_a_damaged_file(tmp_path, monkeypatch):
    target = setup_file(tmp_path, torn(real_file(15), 140))
    sleeper = Rewriter(target, [])
    monkeypatch.setattr(pgc._time, "sleep", sleeper)
    with pytest.raises(PgBackupError, match="calculated CRC checksum"):
        read_control_file(str(target))
    assert sleeper.sleeps == 1  # read twice, as PostgreSQL's frontend does


def test_a_file_that_keeps_changing_gives_up_after_the_attempts(tmp_path, monkeypatch):
    good = real_file(15)
    target = setup_file(tmp_path, torn(good, 100))
    sleeper = Rewriter(target, [torn(good, 101 + n) for n in range(20)])
    monkeypatch.setattr(pgc._time, "sleep", sleeper)
    with pytest.raises(PgBackupError, match="calculated CRC checksum"):
        read_control_file(str(target))
    assert sleeper.sleeps == 10
    sleeper.sleeps = 0
    target.write_bytes(torn(good, 100))
    with pytest.raises(PgBackupError):
        read_control_file(str(target), attempts=3)
    assert sleeper.sleeps == 3


def test_a_good_file_is_read_once(tmp_path, monkeypatch):
    target = setup_file(tmp_path, real_file(18))
    sleeper = Rewriter(target, [])
    monkeypatch.setattr(pgc._time, "sleep", sleeper)
    assert read_control_file(str(target)).major_version == 18
    assert sleeper.sleeps == 0


def test_a_short_file_is_not_retried(tmp_path, monkeypatch):
    target = setup_file(tmp_path, real_file(15)[:4096])
    sleeper = Rewriter(target, [])
    monkeypatch.setattr(pgc._time, "sleep", sleeper)
    with pytest.raises(PgBackupError, match="has 4096 bytes"):
        read_control_file(str(target))
    assert sleeper.sleeps == 0


def test_times_in_utc():
    parsed = parse_control_file(put(put(real_file(15), 24, "<q", 0), 104, "<q", 1795386006))
    facts = parsed.as_dict()
    assert facts["time_utc"] == "1970-01-01T00:00:00+00:00"
    assert facts["checkpoint_time_utc"] == "2026-11-22T22:20:06+00:00"
    assert parse_control_file(put(real_file(15), 24, "<q", -(1 << 62))).as_dict()["time_utc"] is None
