"""A standby-only backup across a timeline switch, on real servers: primary P, standby S1 of P, standby S2 of S1
(cascade). The backup starts on S2 on timeline 1; P stops, S1 is promoted (timeline 2) and S2 follows it; the backup
stops on S2 on timeline 2. backup_manifest's WAL-Ranges then list timeline 1 up to the switchpoint, which lies inside a
segment recovery reads from timeline 2: pg_verifybackup (parsing WAL) reads that range from timeline 1's file of the
segment, which wal_collect now collects (from S2's pg_wal; from the archive's .partial), and backup_verify checks.
Negative controls: without that file backup_verify and pg_verifybackup refuse the copy naming it, and wal_collect
refuses a source that lacks it instead of shipping a copy pg_verifybackup rejects.

13, 15 and 18 only (the segment math and the record check do not depend on the major between them); 15 is the one
major with a pg_verifybackup on this host (Debian's), so only there is PostgreSQL's own verifier run.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import label_placer
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.backup_verifier import verify
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_engine import Source, check_destination, execute, make_plan
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import format_lsn, parse_lsn
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.manifest import write_manifest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.session import backup_session
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.wal import parse_history, wal_file_name
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.wal_collector import Collector, open_target
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.wal_source import WalSource

from .harness.pgbins import selected_majors

pytestmark = pytest.mark.integration

MAJORS = (13, 15, 18)
SEG = 16 << 20


@pytest.fixture(autouse=True)
def _few_majors(pg_major):
    if pg_major not in MAJORS:
        pytest.skip(f"a timeline switch inside a segment is the same WAL arithmetic on every major: runs on {MAJORS} ({selected_majors()} selected)")


def _wait(what: str, done, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def _settled(cluster) -> str:
    """The replay LSN of a standby whose upstream has stopped, once it no longer moves."""
    last = None
    while True:
        now = cluster.current_lsn()
        if now == last:
            return now
        last = now
        time.sleep(1)


def _cascade_switch_backup(testbed, pg_major: int, dest: Path, keepers: Path) -> dict:
    primary = testbed.new_primary(pg_major)
    s1 = testbed.new_standby(primary)
    s2 = testbed.new_standby(s1)
    primary.sql("CREATE TABLE tl_switch (id int, at text)")
    primary.sql("INSERT INTO tl_switch SELECT g, 'before' FROM generate_series(1, 1000) g")
    primary.sql("SELECT pg_switch_wal()")
    primary.sql("CHECKPOINT")
    s1.wait_replayed()
    s2.wait_replayed(primary.current_lsn())

    keepers.mkdir(mode=0o700, exist_ok=True)
    params = {"login_host": s2.host, "login_port": s2.port, "login_user": "postgres", "login_password": s2.password}
    started = backup_session.start_backup(params, backup_id="tls", label="tls", fast=True, max_duration=0, state_dir=str(keepers), timeout=120)
    source = Source(str(s2.datadir))
    plan = make_plan(source, str(dest), {}, [])
    check_destination(source, plan, str(dest), False)
    execute(source, plan, str(dest), parallel=2, owner="postgres")

    # timeline 1 goes on after the copy and across a segment boundary; then the primary is gone and S1 takes over
    primary.sql("INSERT INTO tl_switch SELECT g, 'after copy' FROM generate_series(1, 1000) g")
    primary.sql("SELECT pg_switch_wal()")
    primary.sql("INSERT INTO tl_switch SELECT g, 'last on timeline 1' FROM generate_series(1, 100) g")
    before_stop = primary.current_lsn()
    primary.stop()
    _wait("S1 to replay the primary's shutdown checkpoint", lambda: parse_lsn(s1.current_lsn()) > parse_lsn(before_stop))
    s2.wait_replayed(_settled(s1))
    s1.sql("SELECT pg_promote()")
    s1.sql("INSERT INTO tl_switch SELECT g, 'timeline 2' FROM generate_series(1, 1000) g")
    s1.sql("CHECKPOINT")
    s2.wait_replayed(s1.current_lsn(), timeout=90)  # S2 follows S1 onto timeline 2 (recovery_target_timeline latest)
    s2.sql("CHECKPOINT")  # a restartpoint: S2's minimum recovery point moves onto timeline 2
    stopped = backup_session.stop_backup(backup_id="tls", state_dir=str(keepers), state="stopped", wait_for_archive=False, timeout=120)
    assert started["timeline"] == 1 and stopped["stop_timeline"] == 2, (started, stopped)
    # complete the stop segment (it ends in a switch) and let S1 archive it, with timeline 1's .partial and the history
    s1.sql("SELECT pg_switch_wal()")
    s2.wait_replayed(s1.current_lsn())
    label = base64.b64decode(stopped["backup_label_base64"])
    label_placer.place(str(dest), label=label, tablespace_map=base64.b64decode(stopped["tablespace_map_base64"]), expected_start_lsn=started["start_lsn"])
    history = parse_history((s2.datadir / "pg_wal" / "00000002.history").read_text(), 2)
    switchpoint = history[-1].switchpoint
    assert switchpoint % SEG, "the switch fell on a segment boundary: nothing to test"
    old = wal_file_name(1, switchpoint // SEG, SEG)
    return {"primary": primary, "s1": s1, "s2": s2, "started": started, "stopped": stopped, "switchpoint": switchpoint, "old": old}


def test_standby_only_backup_across_a_timeline_switch(testbed, pg_major, tmp_path):
    dest = testbed.scratch_dir(f"tls-{pg_major}")
    os.rmdir(dest)
    b = _cascade_switch_backup(testbed, pg_major, dest, tmp_path / "keepers")
    s1, s2, old, switchpoint = b["s1"], b["s2"], b["old"], b["switchpoint"]
    start, stop = parse_lsn(b["started"]["start_lsn"]), parse_lsn(b["stopped"]["stop_lsn"])
    new = wal_file_name(2, switchpoint // SEG, SEG)
    assert (s2.datadir / "pg_wal" / old).exists(), f"S2's pg_wal has no {old}"

    # WAL from S2's pg_wal: recovery's segments, the history, and timeline 1's file of the switch segment
    plan, out = Collector(open_target(str(dest)), WalSource(str(s2.datadir / "pg_wal")), source_type="pg_wal", timeout=60).run(start, 1, stop, 2, SEG)
    assert new in plan.segments and old not in plan.segments and plan.old_timeline == [(old, switchpoint)]
    assert out.old_timeline_segments == [old] and old in out.segments and "00000002.history" in out.history_files
    placed = (dest / "pg_wal" / old).read_bytes()
    keep = switchpoint % SEG
    assert len(placed) == SEG and not any(placed[keep:])
    # the WAL before the switchpoint is what timeline 2's file (the one recovery reads) starts with
    assert placed[:keep] == (dest / "pg_wal" / new).read_bytes()[:keep]
    write_manifest(str(dest), end_lsn=stop, end_tli=2)
    os.chmod(dest / "backup_manifest", 0o600)
    shutil.chown(dest / "backup_manifest", "postgres", "postgres")

    _verifier, good = verify(str(dest), stop_lsn=format_lsn(stop), stop_timeline=2)
    assert good["problems"] == [], good["problems"]
    assert [r["Timeline"] for r in good["manifest"]["wal_ranges"]] == [2, 1]
    assert good["manifest"]["wal_ranges"][1]["End-LSN"] == format_lsn(switchpoint)
    assert old in good["wal"]["checked"] and new in good["wal"]["checked"], good["wal"]
    if pg_major == 15:  # Debian's 15 is this host's only pg_verifybackup; with WAL parsing (no -n) it accepts the copy
        assert good["pg_verifybackup"]["ran"] is True and good["pg_verifybackup"]["rc"] == 0, good["pg_verifybackup"]
        assert "-n" not in good["pg_verifybackup"]["command"]
    else:
        assert good["pg_verifybackup"]["ran"] is False, good["pg_verifybackup"]

    # negative control: the copy without timeline 1's file, as shipped before; both verifiers name it
    aside = tmp_path / old
    shutil.move(str(dest / "pg_wal" / old), aside)
    _verifier, bad = verify(str(dest), stop_lsn=format_lsn(stop), stop_timeline=2)
    missing = [p for p in bad["problems"] if p.startswith(f"WAL file {old} is missing from {dest / 'pg_wal'}")]
    assert missing and f"switched at {format_lsn(switchpoint)}" in missing[0], bad["problems"]
    assert old in bad["wal"]["missing"]
    if pg_major == 15:
        assert bad["pg_verifybackup"]["rc"] != 0 and f'could not find file "{old}"' in bad["pg_verifybackup"]["output"], bad["pg_verifybackup"]
    # and a damaged one (a byte of a record before the switchpoint flipped) is refused by the record check
    damaged = bytearray(aside.read_bytes())
    damaged[keep - 10] ^= 0xFF
    (dest / "pg_wal" / old).write_bytes(bytes(damaged))
    _verifier, broken = verify(str(dest), stop_lsn=format_lsn(stop), stop_timeline=2, pg_verifybackup=False)
    assert any(p.startswith(f"WAL segment {old} does not hold valid records through {format_lsn(switchpoint)}") for p in broken["problems"]), broken
    (dest / "pg_wal" / old).unlink()

    # from an archive both servers archived into: timeline 1's file is there only as S1's .partial of the promotion
    archive = testbed.scratch_dir(f"tls-archive-{pg_major}")
    _wait(f"S1 to archive {old}.partial and {new}", lambda: (s1.archive_dir / f"{old}.partial").exists() and (s1.archive_dir / new).exists())
    for directory in (b["primary"].archive_dir, s1.archive_dir):
        for path in directory.iterdir():
            if not (archive / path.name).exists():
                shutil.copy(path, archive / path.name)
    assert not (archive / old).exists()
    os.unlink(archive / f"{old}.partial")
    with pytest.raises(PgBackupError) as refused:  # negative control: the source lacks it, nothing is shipped
        Collector(open_target(str(dest)), WalSource(str(archive)), timeout=0).run(start, 1, stop, 2, SEG)
    assert refused.value.message.startswith(f"{old}, timeline 1's file of the segment where the timeline switched at {format_lsn(switchpoint)}")
    assert f"Looked for {old} and {old}.partial in {archive}" in refused.value.message
    assert not (dest / "pg_wal" / old).exists()
    shutil.copy(s1.archive_dir / f"{old}.partial", archive / f"{old}.partial")
    _plan, again = Collector(open_target(str(dest)), WalSource(str(archive)), timeout=30).run(start, 1, stop, 2, SEG)
    assert again.old_timeline_segments == [old] and (dest / "pg_wal" / old).read_bytes()[:keep] == placed[:keep]
    _verifier, healed = verify(str(dest), stop_lsn=format_lsn(stop), stop_timeline=2)
    assert healed["problems"] == [], healed["problems"]

    # the extra file does not change what a restore replays: archive recovery (recovery_target_timeline latest) takes
    # the switch segment from timeline 2's file, follows timeline 2 and has its rows; at the end it promotes to 3
    restored = testbed.empty_cluster(pg_major)
    subprocess.run(["cp", "-a", f"{dest}/.", str(restored.datadir)], check=True)
    for name in ("standby.signal", "backup_manifest"):
        if (restored.datadir / name).exists():
            os.unlink(restored.datadir / name)
    restored.write_settings()
    with open(restored.datadir / "postgresql.auto.conf", "a") as conf:
        conf.write("restore_command = 'false'\n")  # pg_wal only: what the copy holds
    (restored.datadir / "recovery.signal").write_text("")
    shutil.chown(restored.datadir / "recovery.signal", "postgres", "postgres")
    restored.start()
    _wait("the restored copy to finish recovery", lambda: restored.sql("SELECT pg_is_in_recovery()") == [(False,)])
    assert restored.sql("SELECT at, count(*) FROM tl_switch GROUP BY at ORDER BY at") == [
        ("after copy", 1000),
        ("before", 1000),
        ("last on timeline 1", 100),
        ("timeline 2", 1000),
    ]
    log = restored.log_file.read_text()
    assert "selected new timeline ID: 3" in log, restored.log_tail()
