"""Fault suite (issue 12), the faults the module-level tests showed, now through the standby_backup role and ending in
the shared failure contract (contract.py), on the oldest and newest major (local pair, pgbench on the primary):

- The destination filesystem fills during the copy: the destination is a small ext4 filesystem on a loop file; the
  preflight's space check passes, then, while the copy is frozen (SIGSTOP), a filler file takes the free space. The run
  must fail in the copy naming the destination and the lack of space; the copy is marked incomplete and refused by the
  verify and restore playbooks; the re-run (filler gone, another destination) succeeds.
- A standby whose replay is paused, and one held back by recovery_min_apply_delay: the role fails at the wait after the
  start, naming the reason and the standby's host:port, aborts the backup on the primary, writes nothing; the re-run
  after pg_wal_replay_resume() / the delay reset succeeds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import psycopg2
import pytest

from .conftest import one_end
from .contract import assert_failure_contract
from .harness.cluster import chown_postgres
from .support.faults import copy_module_pid, small_filesystem
from .support.roles import role_run
from .support.waiting import despite_conflicts

pytestmark = [pytest.mark.integration]
MIB = 1 << 20
INCOMPLETE_MARKER = ".pgbackup-incomplete"  # copy_state.INCOMPLETE_MARKER, spelled out as the other tests do


def _load(testbed, primary, seconds: int):
    """pgbench on the primary for ``seconds`` (the tables made once per cluster), so the faults meet a loaded source."""
    if primary.sql("SELECT to_regclass('pgbench_accounts') IS NULL") == [(True,)]:
        primary.pgbench_init(2)
    return testbed.load(primary, seconds)


def _fill_during_the_copy(datadir, mount, dest, seen: dict) -> None:
    """Freeze the copy once it writes, fill what is left of the destination filesystem, let the copy go on. "Writes" is
    the incomplete marker in the destination: the copy has passed its own checks (the space check among them) and
    begun; the module's open directories while it lists the source are too early (its space check would refuse)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not seen.get("done"):
        pid = copy_module_pid(datadir) if (dest / INCOMPLETE_MARKER).exists() else None
        if pid is None:
            time.sleep(0.002)
            continue
        os.kill(pid, signal.SIGSTOP)
        try:
            stat = os.statvfs(mount)
            free = stat.f_bavail * stat.f_frsize
            with open(mount / "filler", "wb") as filler:
                filler.truncate(0)
                chunk = b"\0" * MIB
                for _mib in range(free // MIB):
                    try:
                        filler.write(chunk)
                    except OSError:
                        break
                filler.flush()
                os.fsync(filler.fileno())
            seen["filled"] = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        except OSError as exc:  # the filesystem is full: what the test wants
            seen["filled"] = str(exc)
        finally:
            os.kill(pid, signal.SIGCONT)
        return


def test_the_destination_filling_up_during_the_copy(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    one_end(pg_major, "oldest")
    primary, standby = primary_standby
    standby.wait_replayed(primary.current_lsn())
    where = testbed.scratch_dir(f"faults-full-{pg_major}", owner="root")
    with small_filesystem(where, size=512 * MIB) as mount:
        mount.chmod(0o755)
        dest = mount / "backup"
        seen: dict = {}
        filler = threading.Thread(target=_fill_during_the_copy, args=(standby.datadir, mount, dest, seen), daemon=True)
        load = _load(testbed, primary, 120)
        filler.start()
        began = time.monotonic()
        try:
            code, output = role_run(ansible_env, testbed, tmp_path, primary, standby, dest)
        finally:
            seen["done"] = True
            filler.join(timeout=120)
            load.stop()
        print(f"the run onto a full filesystem failed after {time.monotonic() - began:.1f} s; free after filling: {seen.get('filled')}")
        print(output[output.find("failed in") : output.find("failed in") + 1200])
        assert "filled" in seen, "the test did not fill the filesystem during the copy"
        (mount / "filler").unlink()  # what a user does first; the contract's checks need room for the playbooks' own files

        def rerun():
            again = testbed.scratch_dir(f"faults-full-rerun-{pg_major}")
            rerun_state = tmp_path / "rerun"
            rerun_state.mkdir()
            chown_postgres(rerun_state)
            return role_run(ansible_env, testbed, rerun_state, primary, standby, again / "backup")

        assert_failure_contract(
            output,
            returncode=code,
            cause=(f"the destination {dest} ran out of space during the copy", "No space left on device"),
            primary=primary,
            standby=standby,
            state_dir=tmp_path / "keepers",
            dest=dest,
            written=True,
            refusal=(ansible_env, testbed, tmp_path, pg_major),
            rerun=rerun,
        )


def _resume(standby) -> None:
    """pg_wal_replay_resume(), asked again while replay stays paused: replay resuming under load can cancel the very
    statement that resumed it (a recovery conflict on the shared standby's short max_standby_streaming_delay)."""
    for _attempt in range(20):
        with contextlib.suppress(psycopg2.Error):  # whether it resumed is read below
            standby.sql("SELECT pg_wal_replay_resume()")
        with contextlib.suppress(psycopg2.Error):  # the same conflict on the check itself
            if standby.sql("SELECT pg_is_wal_replay_paused()") == [(False,)]:
                return
        time.sleep(0.5)
    raise AssertionError(f"replay on {standby.host}:{standby.port} stayed paused")


def _undelay(standby) -> None:
    despite_conflicts(lambda: standby.sql("ALTER SYSTEM RESET recovery_min_apply_delay"))
    despite_conflicts(lambda: standby.sql("SELECT pg_reload_conf()"))


@pytest.mark.parametrize("held", ["paused", "apply_delay"])
def test_a_standby_that_does_not_replay_fails_at_the_wait(primary_standby, testbed, ansible_env, tmp_path, pg_major, held):
    """A paused standby stays paused through the failed run and the contract's checks; the re-run sets
    standby_backup_resume_paused, so the role resumes it itself. The delayed one is reset before its re-run."""
    one_end(pg_major, "newest" if held == "paused" else "oldest")
    primary, standby = primary_standby
    standby.wait_replayed(primary.current_lsn())
    dest = testbed.scratch_dir(f"faults-{held}-{pg_major}") / "backup"
    where = f"replay_wait (target_lsn) on {standby.host}:{standby.port}: "
    if held == "paused":
        standby.sql("SELECT pg_wal_replay_pause()")
        words = (where + "WAL replay is paused on the server", "or set standby_backup_resume_paused: true", "The backup was aborted on")
    else:
        standby.sql("ALTER SYSTEM SET recovery_min_apply_delay = '1h'")
        standby.sql("SELECT pg_reload_conf()")
        words = (where, "recovery_min_apply_delay = 1 h (3600000 ms)", "The backup was aborted on")
    try:
        with _load(testbed, primary, 60):
            began = time.monotonic()
            code, output = role_run(ansible_env, testbed, tmp_path, primary, standby, dest, standby_backup_replay_timeout=120)
        print(f"the run against a standby held by {held} failed after {time.monotonic() - began:.1f} s")
        print(output[output.find("failed in") : output.find("failed in") + 1200])
        if held == "apply_delay":
            _undelay(standby)
            despite_conflicts(lambda: standby.wait_replayed(primary.current_lsn()))

        def rerun():
            again = testbed.scratch_dir(f"faults-{held}-rerun-{pg_major}") / "backup"
            rerun_state = tmp_path / "rerun"
            rerun_state.mkdir()
            resume = {"standby_backup_resume_paused": True} if held == "paused" else {}
            result = role_run(ansible_env, testbed, rerun_state, primary, standby, again, **resume)
            if held == "paused":
                assert "resumed it with pg_wal_replay_resume()" in result[1], result[1][-3000:]
            return result

        assert_failure_contract(
            output,
            returncode=code,
            cause=words,
            primary=primary,
            standby=standby,
            state_dir=tmp_path / "keepers",
            dest=dest,
            written=False,
            rerun=rerun,
        )
        assert list((tmp_path / "keepers").glob("*/aborted.json")), "the backup started on the primary was aborted, not left running"
    finally:
        if held == "paused":
            _resume(standby)
        else:
            _undelay(standby)
