"""Fault suite (issue 12), the WAL side of the standby_backup role on real PostgreSQL (oldest and newest major, local pair):

- WAL recycled before collection: without the role's slot (standby_backup_use_slot: false), WAL collected from the
  standby's pg_wal, and the standby made to remove the backup's first segments while the copy is frozen (writes, a
  checkpoint on the primary and a restartpoint on a standby of a pair of its own with wal_keep_size 0). The run must
  fail in "Collect the WAL from the start to the stop" naming the segment and the true cause (removed or recycled,
  keep the slot or collect from the archive), never "fix the archive"; then the failure contract, whose re-run is the
  default run with the slot, which succeeds on the same recycling standby.
- A standby promoted mid-copy in standby_only mode (the backup started on the standby itself), WAL from its pg_wal or
  from the archive: the run fails at once saying the standby was promoted, aborts the backup and leaves nothing open.
- WAL from an archive directory the primary does not archive into (newest major): the run says the segment was not
  archived there, with the primary's pg_stat_archiver figures and host:port, and nothing of slots; the re-run with the
  primary's own archive succeeds.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from .conftest import one_end, per_major_cache, spot_check
from .contract import assert_failure_contract
from .support.faults import RECHECK, copy_module_pid, promote_during_the_copy
from .support.roles import role_run

pytestmark = [pytest.mark.integration]
COLLECT = "Collect the WAL from the start to the stop"
_RECYCLING_PAIRS = per_major_cache()


@pytest.fixture
def recycling_pair(testbed, pg_major):
    """A primary and standby of their own that keep no WAL beyond what a checkpoint needs (wal_keep_size 0, small
    max_wal_size): the shared pair keeps 256 MB, so nothing would be recycled there within a test."""
    pair = _RECYCLING_PAIRS.get(pg_major)
    if pair is None or not all(c.is_running() for c in pair):
        primary = testbed.new_primary(pg_major, name=f"pg{pg_major}-recycle-primary{len(_RECYCLING_PAIRS)}")
        for setting in ("wal_keep_size = 0", "max_wal_size = '32MB'", "min_wal_size = '32MB'"):
            primary.sql(f"ALTER SYSTEM SET {setting}")  # copied into the standby's postgresql.auto.conf too
        primary.sql("SELECT pg_reload_conf()")
        primary.sql("CREATE TABLE recycle_bulk AS SELECT g, repeat('x', 400) AS pad FROM generate_series(1, 100000) g")
        pair = _RECYCLING_PAIRS[pg_major] = (primary, primary.make_standby(f"pg{pg_major}-recycle-standby{len(_RECYCLING_PAIRS)}"))
    yield pair


def _started(state_dir: Path) -> dict:
    found = list(Path(state_dir).glob("*/started.json"))
    return json.loads(found[0].read_text()) if found else {}


def _restartpoint(standby) -> None:
    """CHECKPOINT on the standby (a restartpoint), asked again when the checkpointer is busy (issue 9's flake)."""
    for attempt in range(5):
        try:
            standby.sql("CHECKPOINT")
            return
        except Exception:  # psycopg2's error; the last attempt raises
            if attempt == 4:
                raise
            time.sleep(1)


def _recycle_during_the_copy(primary, standby, state_dir: Path, seen: dict) -> None:
    """Freeze the copy once it runs; make the standby drop the backup's first segment (writes and segment switches on the
    primary, a checkpoint there, replayed, then a restartpoint on the standby); let the copy go on."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not seen.get("done"):
        pid = copy_module_pid(standby.datadir)
        if pid is None:
            time.sleep(0.002)
            continue
        os.kill(pid, signal.SIGSTOP)
        seen["frozen"] = True
        try:
            started = _started(state_dir)
            # pg_walfile_name_offset: the segment holding the LSN (pg_walfile_name names the one before a boundary)
            first = started.get("start_wal_file") or primary.sql("SELECT file_name FROM pg_walfile_name_offset(%s::pg_lsn)", (started["start_lsn"],))[0][0]
            seen["first"] = first
            for _round in range(6):
                for _switch in range(3):
                    primary.sql("INSERT INTO recycle_bulk SELECT g, repeat('y', 400) FROM generate_series(1, 2000) g")
                    primary.sql("SELECT pg_switch_wal()")
                primary.sql("CHECKPOINT")
                standby.wait_replayed(primary.current_lsn())
                _restartpoint(standby)
                if not (standby.datadir / "pg_wal" / first).exists():
                    seen["recycled"] = True
                    break
        finally:
            os.kill(pid, signal.SIGCONT)
        return


def test_wal_recycled_before_collection_is_named_with_its_cause(recycling_pair, testbed, ansible_env, tmp_path, pg_major):
    one_end(pg_major, "newest")
    primary, standby = recycling_pair
    dest = testbed.scratch_dir(f"faults-recycled-{pg_major}")
    seen: dict = {}
    recycler = threading.Thread(target=_recycle_during_the_copy, args=(primary, standby, tmp_path / "keepers", seen), daemon=True)
    recycler.start()
    began = time.monotonic()
    try:
        code, output = role_run(ansible_env, testbed, tmp_path, primary, standby, dest, standby_backup_use_slot=False, standby_backup_wal_timeout=3)
    finally:
        seen["done"] = True
        recycler.join(timeout=120)
    seconds = time.monotonic() - began
    print(f"the run without a slot failed after {seconds:.1f} s; {seen.get('first')} recycled while the copy was frozen: {seen.get('recycled')}")
    print(output[output.find("failed in") : output.find("failed in") + 1500])
    assert seen.get("frozen") and seen.get("recycled"), ("the test did not recycle the start segment during the copy", seen)
    assert f'failed in "{COLLECT}"' in output, output[-3000:]
    assert "fix the archive" not in output and "archive_command" not in output, "the archive has nothing to do with a standby's pg_wal"

    def rerun():
        # The fault gone: the default run keeps the standby's WAL with its slot, on the same recycling standby.
        again = testbed.scratch_dir(f"faults-recycled-rerun-{pg_major}")
        rerun_state = tmp_path / "rerun"
        rerun_state.mkdir()
        rerun_seen: dict = {}
        thread = threading.Thread(target=_recycle_during_the_copy, args=(primary, standby, rerun_state / "keepers", rerun_seen), daemon=True)
        thread.start()
        try:
            result = role_run(ansible_env, testbed, rerun_state, primary, standby, again, standby_backup_wal_timeout=30)
        finally:
            rerun_seen["done"] = True
            thread.join(timeout=120)
        print(f"the re-run with the slot: rc {result[0]}; restartpoints while frozen: {rerun_seen}")
        assert rerun_seen.get("frozen") and not rerun_seen.get("recycled"), ("the slot kept the start segment through the restartpoints", rerun_seen)
        return result

    assert_failure_contract(
        output,
        returncode=code,
        cause=(
            seen["first"],
            f"are missing or invalid in {standby.datadir / 'pg_wal'}",
            "older than the oldest segment in",
            "the server removed or recycled",
            "(standby_backup_use_slot: true, the default)",
            "standby_backup_wal_source: archive",
        ),
        primary=primary,
        standby=standby,
        state_dir=tmp_path / "keepers",
        dest=dest,
        written=True,
        refusal=(ansible_env, testbed, tmp_path, pg_major),
        rerun=rerun,
    )


@pytest.mark.parametrize("wal_source", ["standby_pg_wal", "archive"])
def test_a_standby_promoted_during_a_standby_only_copy_fails_at_once(primary_standby, testbed, ansible_env, tmp_path, pg_major, wal_source):
    one_end(pg_major, "oldest" if wal_source == "standby_pg_wal" else "newest")
    primary, standby = primary_standby
    primary.sql("CREATE TABLE IF NOT EXISTS recheck_bulk AS SELECT g, repeat('x', 400) AS pad FROM generate_series(1, 100000) g")
    standby.wait_replayed(primary.current_lsn())
    dest = testbed.scratch_dir(f"fpromo-{wal_source[:4]}-{pg_major}")  # short: the contract's restore target is named after it
    seen: dict = {}
    promoter = threading.Thread(target=promote_during_the_copy, args=(standby, seen), daemon=True)
    promoter.start()
    began = time.monotonic()
    try:
        code, output = role_run(
            ansible_env,
            testbed,
            tmp_path,
            primary,
            standby,
            dest,
            standby_backup_mode="standby_only",
            standby_backup_wal_source=wal_source,
            standby_backup_archive_dir=str(primary.archive_dir),
            standby_backup_wal_timeout=10,
        )
    finally:
        seen["done"] = True
        promoter.join(timeout=120)
    seconds = time.monotonic() - began
    print(f"standby_only, {wal_source}: the promoted standby's run failed after {seconds:.1f} s (frozen copy: {seen.get('frozen')})")
    print(output[output.find("failed in") : output.find("failed in") + 1500])
    assert seen.get("promoted"), "the test did not promote the standby during the run"
    assert standby.sql("SELECT pg_is_in_recovery()") == [(False,)]
    assert f'failed in "{RECHECK}"' in output, output[-3000:]
    assert "The backup was aborted on" in output, output[-3000:]
    # the standby was promoted: it streams no more (the shared pair is replaced by its fixture after this test)
    assert_failure_contract(
        output,
        returncode=code,
        cause=("promoted", f"{standby.host}:{standby.port}", "discard this copy", f"{dest} is marked incomplete"),
        primary=primary,
        standby=standby,
        state_dir=tmp_path / "keepers",
        dest=dest,
        written=True,
        refusal=(ansible_env, testbed, tmp_path, pg_major),
        streaming=False,
    )


def test_wal_missing_from_the_archive_names_the_archiver_and_its_server(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    """WAL from an archive directory the primary does not archive into: the message says the segment was not archived
    there, with the primary's pg_stat_archiver figures and host:port (it archived past the segment without a failure),
    and nothing of slots or recycling; the re-run with the primary's own archive succeeds."""
    spot_check(pg_major, (18,), "the archive's wording does not depend on the version")
    primary, standby = primary_standby
    dest = testbed.scratch_dir(f"farch-{pg_major}")
    elsewhere = testbed.scratch_dir(f"farch-elsewhere-{pg_major}")
    began = time.monotonic()
    code, output = role_run(ansible_env, testbed, tmp_path, primary, standby, dest, standby_backup_wal_source="archive",
                            standby_backup_archive_dir=str(elsewhere), standby_backup_wal_timeout=5)  # fmt: skip
    print(f"the run with the wrong archive failed after {time.monotonic() - began:.1f} s")
    print(output[output.find("failed in") : output.find("failed in") + 1500])
    assert f'failed in "{COLLECT}"' in output, output[-3000:]
    assert "recycled" not in output and "standby_backup_use_slot" not in output
    # When the archiver's last file is a later segment (the pair is not idle), the message also says the server archived
    # past it; here the primary is idle, its last file the stop's .backup, which says nothing of its own segment.
    print("the message says the primary archived past the segment:", f"{primary.host}:{primary.port} archived past" in output)

    def rerun():
        again = testbed.scratch_dir(f"farch-rerun-{pg_major}")
        (tmp_path / "rerun").mkdir()
        return role_run(ansible_env, testbed, tmp_path / "rerun", primary, standby, again, standby_backup_wal_source="archive",
                        standby_backup_archive_dir=str(primary.archive_dir), standby_backup_wal_timeout=60)  # fmt: skip

    server = f"{primary.host}:{primary.port}"
    # The advice ends one of two ways, both right: the primary archived nothing after the segment (it is idle: "check
    # that archive_command ... archives into <dir>"), or it archived a later one, e.g. when the role's pg_switch_wal
    # closed a segment that had WAL written after the stop ("archived past ... without a failure").
    idle, busy = f"check that archive_command on {server} archives into {elsewhere}", f"{server} archived past"
    assert idle in output or busy in output, output[output.find("failed in") : output.find("failed in") + 1500]
    assert_failure_contract(
        output,
        returncode=code,
        cause=(f"was not archived into {elsewhere} (yet): pg_stat_archiver on {server}", "; 0 failed"),
        primary=primary,
        standby=standby,
        state_dir=tmp_path / "keepers",
        dest=dest,
        written=True,
        refusal=(ansible_env, testbed, tmp_path, pg_major),
        rerun=rerun,
    )
