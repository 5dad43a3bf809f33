# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What ``replay_wait`` waits for: one goal object per ``mode``, picked from ``GOALS`` by the wait loop in ``replay_waiter``.

The loop (``ReplayWaiter``) observes, keeps the timeouts and the stall timer, and fails fast on what is wrong for
every goal (another cluster, a promoted server where the goal needs recovery, a newer timeline). A goal owns the rest:

* ``check_options`` / ``build``: which options it takes; ``TargetLsnGoal.build`` gives ``RestartpointGoal`` with
  ``restartpoint=true``.
* ``reached(obs)``: is this observation the goal; ``advance(wait, obs)`` is the same for the loop, and may act
  (``RestartpointGoal`` runs ``CHECKPOINT`` there).
* ``check(wait, obs, now)``: its own fail-fast conditions, in the order they are judged; the pause and the apply
  delay are judged by the loop's ``check_pause`` and ``check_apply_delay`` for the goals that need replay to move.
* ``text()`` and ``stall_hint()``: the words of its failures; ``progress(obs)``: what counts as progress;
  ``request_facts()`` and ``facts()``: its part of the result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .errors import PgBackupError
from .lsn import format_lsn, parse_lsn

if TYPE_CHECKING:  # the loop hands itself and its observations in; importing it at run time would be circular
    from .replay_waiter import Observation, ReplayWaiter, WaitOptions

INSUFFICIENT_PRIVILEGE = "42501"
CHECKPOINT_SQL = "CHECKPOINT"
# CHECKPOINT fails with this when the checkpointer's restartpoint raised an error (seen on loaded 17 and 18 standbys);
# the checkpointer's own reason is only in the server log. Asking again is safe (a restartpoint is idempotent), so the
# wait asks again at its next look, up to CHECKPOINT_RETRIES failures in a row.
CHECKPOINT_FAILED = "checkpoint request failed"
CHECKPOINT_RETRIES = 5
# The checkpointer's reason: ERROR/PANIC/WARNING lines from the end of the server's current log (superuser, logging_collector).
LOG_TAIL_SQL = "SELECT pg_read_file(f, greatest(0, (pg_stat_file(f)).size - 16384), 16384) AS tail FROM pg_current_logfile() AS f WHERE f IS NOT NULL"


def lsn_or_unknown(lsn: Optional[int]) -> str:
    return "unknown" if lsn is None else format_lsn(lsn)


def receiver_hint(obs: Observation) -> str:
    """Why replay may not move, as far as the WAL receiver shows it."""
    if obs.receiver_status != "streaming":
        status = obs.receiver_status or "no WAL receiver"
        return f"; its WAL receiver is not streaming ({status}): check primary_conninfo, the upstream and its pg_hba.conf, or restore_command"
    return "; is replication running and current on the standby?"


class Goal:
    """What one mode waits for (see the module docstring); the base is what most goals share."""

    mode = ""
    needs_recovery = True  # a server out of recovery (promoted) can never reach it
    takes_restartpoint = False
    takes_upstream = False

    def __init__(self, options: WaitOptions) -> None:
        self.target_text: Optional[str] = options.target_lsn
        self.target = parse_lsn(options.target_lsn, what="target_lsn") if options.target_lsn else None

    @classmethod
    def check_options(cls, options: WaitOptions) -> None:
        if options.restartpoint and not cls.takes_restartpoint:
            raise PgBackupError(f"restartpoint=true only goes with mode=target_lsn (it waits for a restartpoint past the target), not mode={cls.mode}")
        if (options.upstream_host or options.upstream_port) and not cls.takes_upstream:
            raise PgBackupError(f"upstream_host and upstream_port only go with mode=streaming, not mode={cls.mode}")

    @classmethod
    def build(cls, options: WaitOptions) -> Goal:
        return cls(options)

    def text(self) -> str:
        raise NotImplementedError

    def reached(self, obs: Observation) -> bool:
        raise NotImplementedError

    def advance(self, wait: ReplayWaiter, obs: Observation) -> bool:
        """``reached`` as the loop asks it, where a goal may act to get there."""
        return self.reached(obs)

    def progress(self, obs: Observation) -> Optional[int]:
        """The number whose growth counts as progress."""
        return obs.replay_lsn

    def check(self, wait: ReplayWaiter, obs: Observation, now: float) -> None:
        """This goal's fail-fast conditions; replay that cannot move (a pause, an apply delay) fails a goal that needs it."""
        if obs.in_recovery and obs.replay_paused and self.pause_matters(obs):
            wait.check_pause(obs, now)
        if self.apply_delay_matters(obs):
            wait.check_apply_delay(obs, now)

    def pause_matters(self, obs: Observation) -> bool:
        return not self.reached(obs)

    def apply_delay_matters(self, obs: Observation) -> bool:
        return obs.in_recovery and not self.reached(obs)

    def stall_hint(self, obs: Optional[Observation], last_refusal: Optional[str]) -> str:
        return "" if obs is None else receiver_hint(obs)

    def request_facts(self) -> dict:
        return {"checkpoints_requested": 0, "checkpoint_requests_failed": 0}

    def facts(self, obs: Observation, *, reached: bool) -> dict:
        return {"consistent_lsn": None}


class TargetLsnGoal(Goal):
    """``pg_last_wal_replay_lsn()`` at or past the target."""

    mode = "target_lsn"
    takes_restartpoint = True

    @classmethod
    def check_options(cls, options: WaitOptions) -> None:
        if not options.target_lsn:
            raise PgBackupError("mode=target_lsn needs target_lsn: the LSN the standby must replay, such as the backup's start LSN from backup_start")
        super().check_options(options)

    @classmethod
    def build(cls, options: WaitOptions) -> Goal:
        return RestartpointGoal(options) if options.restartpoint else cls(options)

    def text(self) -> str:
        return f"replay of {self.target_text}"

    def reached(self, obs: Observation) -> bool:
        return self.replayed_target(obs)

    def replayed_target(self, obs: Observation) -> bool:
        return obs.replay_lsn is not None and obs.replay_lsn >= self.target


class RestartpointGoal(TargetLsnGoal):
    """The target replayed, then a restartpoint (``CHECKPOINT`` on the standby) whose redo point is at or past it."""

    def __init__(self, options: WaitOptions) -> None:
        super().__init__(options)
        self.expect_timeline: Optional[int] = options.expect_timeline
        self.checkpoints = 0
        self.checkpoint_failures = 0  # in a row; reset by a CHECKPOINT that succeeds
        self.checkpoint_retries = 0  # every failed request, for the result
        self.checkpoint_at_replay: Optional[int] = None

    def text(self) -> str:
        return f"a restartpoint with its redo point at or past {self.target_text}"

    def reached(self, obs: Observation) -> bool:
        return self.replayed_target(obs) and self._redo_past_target(obs)

    def _redo_past_target(self, obs: Observation) -> bool:
        return obs.redo_lsn is not None and obs.redo_lsn >= self.target

    def advance(self, wait: ReplayWaiter, obs: Observation) -> bool:
        reached = self.reached(obs)
        # CHECKPOINT again only once replay moved since the last one: the restartpoint lands on the newest checkpoint record replayed.
        if not reached and self.replayed_target(obs) and (self.checkpoint_at_replay is None or obs.replay_lsn > self.checkpoint_at_replay):
            self._checkpoint(wait, obs)
            after = wait.look()
            reached = after is not None and self._redo_past_target(after)
        if reached:
            self._check_timeline(wait)
        return reached

    def progress(self, obs: Observation) -> Optional[int]:
        if obs.replay_lsn is not None and obs.redo_lsn is not None:
            return obs.replay_lsn + obs.redo_lsn  # both only grow; either moving is progress
        return obs.replay_lsn

    def check(self, wait: ReplayWaiter, obs: Observation, now: float) -> None:
        if obs.checkpoint_lsn is not None and obs.redo_lsn is not None and obs.checkpoint_lsn > self.target and obs.redo_lsn < self.target:
            raise wait.failure(
                "checkpoint_ahead",
                f"the standby's checkpoint {format_lsn(obs.checkpoint_lsn)} is ahead of the target but its redo point "
                f"{format_lsn(obs.redo_lsn)} is before it: the primary's WAL has no such checkpoint (the target is the redo point of the "
                "backup's own checkpoint, and no checkpoint record after it has an earlier redo point), so this standby does not "
                "follow the primary the backup was started on",
                now,
            )
        super().check(wait, obs, now)

    def pause_matters(self, obs: Observation) -> bool:
        """Paused past the target, a restartpoint may still land past it: one CHECKPOINT is asked before the pause counts."""
        return super().pause_matters(obs) and not (self.replayed_target(obs) and self.checkpoint_at_replay != obs.replay_lsn)

    def stall_hint(self, obs: Optional[Observation], last_refusal: Optional[str]) -> str:
        if obs is not None and self.replayed_target(obs):
            return (
                f"; replay passed the target but the restartpoint's redo point is still {lsn_or_unknown(obs.redo_lsn)}: the backup's checkpoint record "
                "was not replayed yet (is WAL still arriving?)"
            )
        return super().stall_hint(obs, last_refusal)

    def request_facts(self) -> dict:
        return {"checkpoints_requested": self.checkpoints, "checkpoint_requests_failed": self.checkpoint_retries}

    def _check_timeline(self, wait: ReplayWaiter) -> None:
        obs = wait.last
        if self.expect_timeline is not None and obs is not None and obs.checkpoint_timeline is not None and obs.checkpoint_timeline != self.expect_timeline:
            raise wait.failure(
                "timeline",
                f"the standby's restartpoint past the target is on timeline {obs.checkpoint_timeline}, expected timeline {self.expect_timeline}: "
                "it does not replay the WAL of the primary the backup was started on",
                wait.clock(),
            )

    def _checkpoint(self, wait: ReplayWaiter, obs: Observation) -> None:
        try:
            wait.query(CHECKPOINT_SQL)
        except PgBackupError as exc:
            if exc.details.get("sqlstate") == INSUFFICIENT_PRIVILEGE:
                raise wait.failure(
                    "privilege",
                    "the connected role may not run CHECKPOINT for the restartpoint: connect as a superuser, or (15 and later) GRANT pg_checkpoint to it",
                    wait.clock(),
                ) from None
            server = exc.details.get("server_message") or exc.message
            if CHECKPOINT_FAILED not in server:
                raise
            self.checkpoint_failures += 1
            self.checkpoint_retries += 1
            if self.checkpoint_failures >= CHECKPOINT_RETRIES:
                raise wait.failure(
                    "restartpoint_failed",
                    f"the standby's checkpointer failed the restartpoint {self.checkpoint_failures} times in a row ({CHECKPOINT_FAILED})"
                    f"{_log_reason(wait)}; fix what the standby's server log names (disk space, permissions, an fsync error), then run the backup again",
                    wait.clock(),
                ) from None
            return  # checkpoint_at_replay stays: the next look asks again
        self.checkpoint_failures = 0
        self.checkpoints += 1
        self.checkpoint_at_replay = obs.replay_lsn


def _log_reason(wait: ReplayWaiter) -> str:
    """The server log's last ERROR/PANIC/WARNING lines (the checkpointer's, not our request's), when this session may read them; else where to look."""
    try:
        rows = wait.query(LOG_TAIL_SQL)
    except Exception:  # noqa: BLE001 - not a superuser, no logging collector: say where to look instead
        rows = []
    lines = [
        " ".join(line.split())
        for row in rows
        for line in str(row.get("tail") or "").splitlines()
        if any(level in line for level in ("ERROR:", "PANIC:", "WARNING:")) and CHECKPOINT_FAILED not in line  # not our own request's
    ]
    if lines:
        return "; the server log says: " + " | ".join(lines[-3:])
    return "; its reason is in the standby's server log, not in this error"


class ConsistentGoal(Goal):
    """A restored copy accepts connections and ``pg_control_recovery()`` shows the end of the backup reached."""

    mode = "consistent"
    needs_recovery = False  # a copy that finished recovery and was promoted is consistent too

    def text(self) -> str:
        return "consistency (connections accepted and the end of the backup reached)"

    def reached(self, obs: Observation) -> bool:
        return obs.backup_end_reached

    def check(self, wait: ReplayWaiter, obs: Observation, now: float) -> None:
        """Nothing of its own: a paused or delayed replay still ends in consistency, or in the timeout."""

    def stall_hint(self, obs: Optional[Observation], last_refusal: Optional[str]) -> str:
        if obs is None and last_refusal:
            return f"; the server still refuses connections: {last_refusal}"
        return super().stall_hint(obs, last_refusal)

    def facts(self, obs: Observation, *, reached: bool) -> dict:
        # pg_control's minimum recovery point: the copy is consistent there (recovery may have got consistent a little earlier).
        consistent = (obs.min_recovery_end_lsn or obs.replay_lsn) if reached else None
        return {"consistent_lsn": format_lsn(consistent) if consistent else None}


class StreamingGoal(Goal):
    """The WAL receiver streams (from the expected upstream), replay within ``max_lag_bytes`` of the upstream's end of WAL."""

    mode = "streaming"
    takes_upstream = True

    def __init__(self, options: WaitOptions) -> None:
        super().__init__(options)
        self.upstream_host: Optional[str] = options.upstream_host
        self.upstream_port: Optional[int] = options.upstream_port
        self.max_lag_bytes: int = options.max_lag_bytes

    def text(self) -> str:
        upstream = ""
        if self.upstream_host or self.upstream_port:
            upstream = f" from {self.upstream_host or '*'}:{self.upstream_port or '*'}"
        return f"streaming{upstream} with replay lag at most {self.max_lag_bytes} bytes"

    def reached(self, obs: Observation) -> bool:
        lag = obs.lag_bytes
        return obs.receiver_status == "streaming" and lag is not None and lag <= self.max_lag_bytes

    def check(self, wait: ReplayWaiter, obs: Observation, now: float) -> None:
        super().check(wait, obs, now)
        if obs.receiver_status != "streaming":
            return
        wrong = []
        if self.upstream_host is not None and obs.sender_host is not None and obs.sender_host != self.upstream_host:
            wrong.append(f"host {obs.sender_host} (expected {self.upstream_host})")
        if self.upstream_port is not None and obs.sender_port is not None and obs.sender_port != self.upstream_port:
            wrong.append(f"port {obs.sender_port} (expected {self.upstream_port})")
        if wrong:
            raise wait.failure(
                "upstream", f"the WAL receiver streams from the wrong upstream: {' and '.join(wrong)}; check primary_conninfo on the server", now
            )


# The goal of each mode, as kubernetes.core's waiter picks a predicate by kind.
GOALS = {goal.mode: goal for goal in (TargetLsnGoal, ConsistentGoal, StreamingGoal)}
MODES = tuple(GOALS)
