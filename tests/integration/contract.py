"""The failure contract every fault test ends in (issue 12): a message that names the cause, the destination marked
incomplete only if something was written there, a marked copy refused by the verify_backup and restore_backup
playbooks, the source healthy (no backup session left, no slot, the standby streaming) and a re-run that succeeds.

Each part is judged by PostgreSQL or by the other playbooks, not by the run that failed: the sessions and slots are read
from the servers, and the refusals come from verify_backup.yml and restore_backup.yml run on the copy."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from .support.roles import restore_vars, run_restore_playbook
from .support.waiting import KEEPERS, wait_for


def assert_names_the_cause(output: str, *words: str) -> None:
    """Every one of ``words`` is in the play's output (the cause, host:port, the role variable...)."""
    missing = [word for word in words if word not in output]
    assert not missing, (missing, output[-4000:])


def assert_source_healthy(primary, standby, streaming: bool = True, timeout: float = 60) -> None:
    """No keeper session and no slot of ours on either server, and the standby (still a standby) streaming again."""
    for server in (primary, standby):
        if server is None:
            continue
        wait_for(lambda server=server: server.sql(KEEPERS) == [(0,)], f"the keeper's session on {server.host}:{server.port} ending", timeout=timeout)
        slots = server.sql("SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'pgbackup%'")
        assert slots == [], f"a slot of ours is left on {server.host}:{server.port}: {slots}"
    if streaming and standby is not None:
        assert standby.sql("SELECT pg_is_in_recovery()") == [(True,)], f"{standby.host}:{standby.port} is no longer a standby"
        standby.wait_streaming(timeout=timeout)


def assert_no_backup_left(state_dir: Path) -> None:
    """Every backup the keeper started was stopped or aborted: none is left open on a server."""
    for started in Path(state_dir).glob("*/started.json"):
        assert (started.parent / "aborted.json").exists() or (started.parent / "stopped.json").exists(), f"{started.parent} was left open"


def assert_destination(dest: Path, written: bool) -> None:
    """A written destination carries the marker; one the run never wrote to is absent or empty, and said nothing of a marker."""
    dest = Path(dest)
    if written:
        assert (dest / ".pgbackup-incomplete").exists(), f"{dest} was written but is not marked incomplete"
    else:
        assert not dest.exists() or not any(dest.iterdir()), f"{dest} was not to be written: {sorted(p.name for p in dest.iterdir())}"


def assert_no_copy_waiting(dest: Path) -> None:
    """A coordinated copy launched behind its start gate (copy_gate) has ended: its waiting note (removed when it stops
    waiting, however it stops) and its gate are gone, so no copy job is left behind by the failure."""
    note, gate = dest.parent / f".{dest.name}.gate.waiting", dest.parent / f".{dest.name}.gate"
    wait_for(lambda: not note.exists() and not gate.exists(), f"the copy behind its gate ending ({note} and {gate} gone)", timeout=15)


def assert_copy_refused(env, bed, tmp_path: Path, dest: Path, primary, pg_major: int) -> None:
    """verify_backup.yml and restore_backup.yml both refuse the marked copy, and the restore writes nothing."""
    verify_vars = {"verify_backup_hosts": bed.hosts[0].name, "verify_backup_dir": str(dest), "verify_backup_pg_bindir": str(primary.pg.bindir)}
    verified = run_restore_playbook(env, bed, tmp_path, "verify_backup.yml", verify_vars)
    assert verified.returncode != 0, "verify_backup passed a copy marked incomplete: " + verified.stdout[-3000:]
    assert ".pgbackup-incomplete" in verified.stdout, verified.stdout[-3000:]
    target = bed.empty_cluster(pg_major, name=f"pg{pg_major}-contract-{Path(dest).name}"[:60])
    restored = run_restore_playbook(env, bed, tmp_path, "restore_backup.yml", restore_vars(bed, dest, target, primary, backup_restore_hosts=bed.hosts[0].name))
    assert restored.returncode != 0, "restore_backup restored a copy marked incomplete: " + restored.stdout[-3000:]
    assert "is not a finished backup" in restored.stdout, restored.stdout[-3000:]
    assert not target.datadir.exists() or not any(target.datadir.iterdir()), "the refused restore wrote into its destination"


def assert_failure_contract(
    output: str,
    *,
    returncode: int,
    cause: tuple,
    primary,
    standby,
    state_dir: Path,
    dest: Path,
    written: bool,
    refusal: Optional[tuple] = None,
    rerun: Optional[Callable[[], tuple]] = None,
    streaming: bool = True,
) -> None:
    """The whole contract. ``refusal`` = (env, bed, tmp_path, pg_major) runs the verify/restore refusals on a written copy;
    ``rerun`` returns (returncode, output) of the same backup once the fault is gone, which must succeed."""
    assert returncode != 0, "the run did not fail: " + output[-3000:]
    assert_names_the_cause(output, *cause)
    if not written:
        assert "marked incomplete" not in output, "nothing was written, so nothing is said to be marked"
    assert_destination(dest, written)
    assert_no_copy_waiting(dest)
    assert_source_healthy(primary, standby, streaming=streaming)
    assert_no_backup_left(state_dir)
    if written and refusal is not None:
        env, bed, tmp_path, pg_major = refusal
        assert_copy_refused(env, bed, tmp_path, dest, primary, pg_major)
    if rerun is not None:
        code, again = rerun()
        assert code == 0, "the re-run after the fault failed: " + again[-4000:]
