"""backup_verify's page audit on real standby-only copies of a standby under pgbench load (13-18): the right copy
(pg_control copied last) passes; the classic mistake (pg_control copied first, pages written after it) is refused,
naming pages past the copied pg_control's minimum recovery point - a copy that pg_verifybackup accepts; a page whose
bytes changed while its LSN is older than the start is refused by its data checksum."""

from __future__ import annotations

import os
import struct
import subprocess

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import format_lsn, parse_lsn
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.manifest import write_manifest

from .conftest import spot_check
from .mixed_copy import standby_only_copy
from .support.copies import run_verify

pytestmark = pytest.mark.integration


def _older_page(copy, start_lsn: int):
    """(relation file, block) of an initialised page whose LSN is before the backup's start."""
    for path in sorted((copy / "base").rglob("*")):
        if not (path.is_file() and path.name.isdigit()):
            continue
        data = path.read_bytes()
        for block in range(len(data) // 8192):
            hi, lo = struct.unpack_from("<II", data, block * 8192)
            upper = struct.unpack_from("<H", data, block * 8192 + 14)[0]
            if upper and 0 < (hi << 32 | lo) < start_lsn:
                return path, block
    raise AssertionError("no page older than the start in the copy")


def test_page_audit_on_standby_only_copies(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    spot_check(pg_major, (15, 18), "the page layout is the same on every major; 15 has the pg_verifybackup to compare with, 18 is the newest")
    primary, standby = primary_standby
    good = testbed.scratch_dir(f"pa-good-{pg_major}")
    mixed = testbed.scratch_dir(f"pa-mixed-{pg_major}")
    right = standby_only_copy(primary, standby, testbed, good, tmp_path / "keepers", control_first=False, backup_id="pa-good")
    wrong = standby_only_copy(primary, standby, testbed, mixed, tmp_path / "keepers", control_first=True, backup_id="pa-mixed")

    # The checksum negative control: a damaged byte in a page last changed before the start, the manifest written
    # again so that only the page checksum can see it.
    damaged = testbed.scratch_dir(f"pa-damaged-{pg_major}")
    os.rmdir(damaged)
    subprocess.run(["cp", "-a", str(good), str(damaged)], check=True)  # owners and modes kept
    victim, block = _older_page(damaged, parse_lsn(right["started"]["start_lsn"]))
    with open(victim, "r+b") as handle:
        handle.seek(block * 8192 + 6000)
        byte = handle.read(1)
        handle.seek(block * 8192 + 6000)
        handle.write(bytes([byte[0] ^ 0x40]))
    os.unlink(damaged / "backup_manifest")
    write_manifest(str(damaged), end_lsn=parse_lsn(right["stop_lsn"]), end_tli=right["stop_timeline"])
    os.chmod(damaged / "backup_manifest", 0o600)

    args = {"stop_lsn": right["stop_lsn"], "stop_timeline": right["stop_timeline"], "parallel": 2}
    copies = [(good, args), (mixed, {"stop_lsn": wrong["stop_lsn"], "stop_timeline": wrong["stop_timeline"], "parallel": 1}), (damaged, args)]
    ok, refused, broken = run_verify(ansible_env, testbed, tmp_path, copies)

    assert ok.get("failed") is not True and ok["problems"] == [], ok["problems"]
    pages = ok["pages"]
    assert pages["read"] > 100 and pages["relation_files"] > 100, pages
    assert pages["bound"] == format_lsn(right["min_recovery_point"]) and "minimum recovery point" in pages["bound_source"], pages
    assert parse_lsn(pages["max_lsn"]) <= right["min_recovery_point"], pages
    assert pages["checksums"] is True and pages["checksum_verified"] > 0, pages  # the test bed's clusters have checksums

    assert refused.get("failed") is True, refused
    past = [p for p in refused["problems"] if "carry an LSN past the copy's end point" in p]
    assert len(past) == 1 and f"end point {format_lsn(wrong['min_recovery_point'])} (the minimum recovery point of the copied pg_control" in past[0]
    assert "global/pg_control was not copied last" in past[0] and " block " in past[0], past
    assert parse_lsn(refused["pages"]["max_lsn"]) > wrong["min_recovery_point"]
    if pg_major == 15:  # PostgreSQL's own verifier finds nothing wrong with the mixed copy: only the page audit does
        assert refused["pg_verifybackup"]["ran"] is True and refused["pg_verifybackup"]["rc"] == 0, refused["pg_verifybackup"]

    rel = str(victim.relative_to(damaged))
    assert broken.get("failed") is True, broken
    bad = [p for p in broken["problems"] if "fail their data checksum" in p]
    assert bad and f"{rel} block {block}" in bad[0], broken["problems"]
    assert not any("checksum not matching backup_manifest" in p for p in broken["problems"]), "only the page checksum can see it"
