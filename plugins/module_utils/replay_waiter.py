# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Waiting until a standby, or a restored copy, is where a backup needs it: the waiter of ``replay_wait``.

Three things to wait for (``mode``):

* ``target_lsn``: ``pg_last_wal_replay_lsn()`` at or past ``target_lsn``. With ``restartpoint`` the waiter then
  runs ``CHECKPOINT`` on the standby (a restartpoint) and waits until ``pg_control_checkpoint()`` shows a redo
  point at or past the target, so every page changed before the target is on the standby's disk before a file
  is copied. The target must then be a backup's start LSN, which is the redo point of the primary's backup
  checkpoint. The backup's checkpoint record comes after its redo point, so a restartpoint can only land there
  once that record is replayed; ``CHECKPOINT`` is issued again each time replay advanced since the last one.
* ``consistent``: the server accepts connections and ``pg_control_recovery()`` shows the end of the backup
  reached (no backup start point, no backup end point, no end-of-backup record required). SQLSTATE 57P03
  ("the database system is starting up" in 13, "... not yet accepting connections" in 14+) means keep waiting.
* ``streaming``: the WAL receiver streams (from the expected upstream) and the replay lag behind what the
  upstream reported as its end of WAL is within ``max_lag_bytes``.

This module is the wait loop: it observes, keeps the timeouts and fails fast on what is wrong whatever the mode; what
each mode waits for (when it is reached, the ``CHECKPOINT`` of ``restartpoint``, its own fail-fast checks, the words of
its failures and its part of the result) is a goal object in ``replay_goals``, picked by mode from ``GOALS``.

Timeouts: ``stall_timeout`` runs from the last observed progress (replay position, or a restored copy's
pg_control when ``probe_files`` reads it) and ``timeout`` from the start. Some conditions fail at once: the
server left recovery (promoted), replay is paused (unless ``resume_paused``), the system identifier or the
timeline is not the expected one, ``recovery_min_apply_delay`` holds replay back longer than the time left,
or (``restartpoint``) the standby has a checkpoint past the target whose redo point is before it, which a
standby replaying this primary's WAL cannot have. Every failure names the target, the last replayed LSN and
how long the waiter waited.

All I/O is injected: ``query(sql)`` runs one statement and returns rows as dictionaries (raising
``PgBackupError`` with ``details['connect_failed']`` when it could not connect), ``clock()`` gives monotonic
seconds and ``sleep(seconds)`` waits, so every branch is testable without a server.

Per-version notes (13-18): one statement serves every major. ``pg_is_wal_replay_paused()`` is true for a
requested pause too in 14+ (13 has no separate pause request state); ``pg_stat_wal_receiver`` has
``flushed_lsn``, ``latest_end_lsn``, ``sender_host`` and ``sender_port`` in all of them; the startup process'
wait event ``RecoveryApplyDelay`` exists in all of them; ``CHECKPOINT`` needs a superuser before 15 and
``pg_checkpoint`` (or a superuser) from 15.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .connection import LazySession
from .errors import PgBackupError
from .lsn import format_lsn, parse_lsn
from .replay_goals import GOALS, INSUFFICIENT_PRIVILEGE, MODES, lsn_or_unknown

CANNOT_CONNECT_NOW = "57P03"
APPLY_DELAY_WAIT_EVENT = "RecoveryApplyDelay"
DEFAULT_TIMEOUT = 3600.0
DEFAULT_STALL_TIMEOUT = 300.0
DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_MAX_LAG_BYTES = 16 << 20
SYSID_MODULUS = 1 << 64
# The drivers give no SQLSTATE for a refused connection; these are the server's messages for "alive, not yet" (lc_messages C).
NOT_YET_ACCEPTING = (
    "the database system is starting up",  # 13, and 14+ before recovery starts
    "the database system is not yet accepting connections",  # 14+: recovering, not consistent yet
    "the database system is in recovery mode",  # crash recovery
)
HOT_STANDBY_OFF = "hot standby mode is disabled"  # 14+ DETAIL of "the database system is not accepting connections"

# One statement for every major: everything a decision needs, in one snapshot.
OBSERVE_SQL = (
    "SELECT current_setting('server_version_num')::int AS server_version_num, "
    "pg_catalog.pg_is_in_recovery() AS in_recovery, "
    "pg_catalog.pg_last_wal_replay_lsn()::text AS replay_lsn, "
    "pg_catalog.pg_last_wal_receive_lsn()::text AS receive_lsn, "
    "CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_is_wal_replay_paused() END AS replay_paused, "
    "s.system_identifier, "
    "c.checkpoint_lsn::text AS checkpoint_lsn, c.redo_lsn::text AS redo_lsn, c.timeline_id AS checkpoint_timeline, "
    "r.min_recovery_end_lsn::text AS min_recovery_end_lsn, r.min_recovery_end_timeline, "
    "r.backup_start_lsn::text AS backup_start_lsn, r.backup_end_lsn::text AS backup_end_lsn, r.end_of_backup_record_required, "
    "w.status AS receiver_status, w.received_tli, w.flushed_lsn::text AS flushed_lsn, w.latest_end_lsn::text AS latest_end_lsn, "
    "w.sender_host, w.sender_port, "
    "(SELECT p.setting::bigint FROM pg_catalog.pg_settings p WHERE p.name = 'recovery_min_apply_delay') AS apply_delay_ms, "
    "(SELECT a.wait_event FROM pg_catalog.pg_stat_activity a WHERE a.backend_type = 'startup' LIMIT 1) AS startup_wait_event "
    "FROM pg_catalog.pg_control_system() s, pg_catalog.pg_control_checkpoint() c, pg_catalog.pg_control_recovery() r "
    "LEFT JOIN pg_catalog.pg_stat_wal_receiver w ON true"
)
RESUME_SQL = "SELECT pg_catalog.pg_wal_replay_resume()"
RECOVERY_CONFLICT = "40001"  # "canceling statement due to conflict with recovery"
CONFLICT_ATTEMPTS = 20
CONFLICT_PAUSE = 0.25
RECOVERY_TARGETS_SQL = (
    "SELECT name, setting FROM pg_catalog.pg_settings "
    "WHERE name IN ('recovery_target', 'recovery_target_lsn', 'recovery_target_name', 'recovery_target_time', 'recovery_target_xid') "
    "AND setting <> '' ORDER BY name"
)

Query = Callable[[str], list]


def _lsn(value: Any, what: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return parse_lsn(str(value), what=what)


def _sysid(value: Any) -> Optional[int]:
    """A system identifier as the unsigned number pg_controldata prints (SQL shows it as a signed bigint)."""
    if value is None:
        return None
    return int(value) % SYSID_MODULUS


def not_yet_accepting(exc: PgBackupError) -> bool:
    """The connection was refused by a server that is alive and starting or recovering (SQLSTATE 57P03, or its message)."""
    message = exc.message.lower()
    if HOT_STANDBY_OFF in message or "shutting down" in message:
        return False
    return exc.details.get("sqlstate") == CANNOT_CONNECT_NOW or any(phrase in message for phrase in NOT_YET_ACCEPTING)


def format_duration(seconds: float) -> str:
    """Seconds as a person reads them: ``45 s``, ``10 min``, ``1 h``, ``1 h 30 min``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 and not seconds.is_integer() else f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    parts = []
    if hours:
        parts.append(f"{hours} h")
    if minutes:
        parts.append(f"{minutes} min")
    if secs and not hours:
        parts.append(f"{secs} s")
    return " ".join(parts)


@dataclass
class Observation:
    """What one execution of ``OBSERVE_SQL`` showed; LSNs as integers, ``None`` where the server had no value."""

    server_version_num: Optional[int] = None
    in_recovery: bool = True
    replay_lsn: Optional[int] = None
    receive_lsn: Optional[int] = None
    replay_paused: bool = False
    system_identifier: Optional[int] = None
    checkpoint_lsn: Optional[int] = None
    redo_lsn: Optional[int] = None
    checkpoint_timeline: Optional[int] = None
    min_recovery_end_lsn: Optional[int] = None
    min_recovery_end_timeline: Optional[int] = None
    backup_start_lsn: Optional[int] = None
    backup_end_lsn: Optional[int] = None
    end_of_backup_record_required: Optional[bool] = None
    receiver_status: Optional[str] = None
    received_tli: Optional[int] = None
    flushed_lsn: Optional[int] = None
    latest_end_lsn: Optional[int] = None
    sender_host: Optional[str] = None
    sender_port: Optional[int] = None
    apply_delay_ms: Optional[int] = None
    startup_wait_event: Optional[str] = None

    @classmethod
    def from_row(cls, row: dict) -> Observation:
        lsn_fields = ("replay_lsn", "receive_lsn", "checkpoint_lsn", "redo_lsn", "min_recovery_end_lsn", "backup_start_lsn", "backup_end_lsn",
                      "flushed_lsn", "latest_end_lsn")  # fmt: skip
        values: dict = {}
        for name in cls.__dataclass_fields__:
            if name not in row:
                continue
            value = row[name]
            if name in lsn_fields:
                value = _lsn(value, name)
            elif name == "system_identifier":
                value = _sysid(value)
            elif name in ("in_recovery", "replay_paused", "end_of_backup_record_required") and value is not None:
                value = bool(value)
            elif name in ("server_version_num", "checkpoint_timeline", "min_recovery_end_timeline", "received_tli", "sender_port", "apply_delay_ms"):
                value = None if value is None else int(value)
            values[name] = value
        if values.get("replay_paused") is None:
            values["replay_paused"] = False
        if values.get("in_recovery") is None:
            values["in_recovery"] = True
        return cls(**values)

    @property
    def backup_end_reached(self) -> bool:
        """pg_control_recovery() says the end of the backup was reached (or there never was a backup to recover)."""
        return not self.backup_start_lsn and not self.backup_end_lsn and not self.end_of_backup_record_required

    @property
    def lag_bytes(self) -> Optional[int]:
        """How far replay is behind what the upstream reported as its end of WAL (what was flushed, before it reported)."""
        if self.replay_lsn is None:
            return None
        end = self.latest_end_lsn if self.latest_end_lsn else self.flushed_lsn
        if end is None:
            return None
        return max(0, end - self.replay_lsn)

    @property
    def timeline_evidence(self) -> list:
        """Timelines this server shows it has reached (each may lag behind where replay is)."""
        found = (self.received_tli, self.min_recovery_end_timeline, self.checkpoint_timeline)
        return [tli for tli in found if isinstance(tli, int) and tli > 0]

    @property
    def newest_timeline(self) -> Optional[int]:
        evidence = self.timeline_evidence
        return max(evidence) if evidence else None


@dataclass
class FileProbe:
    """What a restored copy's data directory shows while the server does not accept connections yet."""

    running: bool
    min_recovery_point: Optional[int] = None
    redo_lsn: Optional[int] = None
    checkpoint_lsn: Optional[int] = None

    @property
    def position(self) -> int:
        return max(self.min_recovery_point or 0, self.redo_lsn or 0, self.checkpoint_lsn or 0)


@dataclass
class WaitOptions:
    """What one wait is asked (the module's options), checked when it is made: the mode's own rules by its goal."""

    mode: str = "target_lsn"
    target_lsn: Optional[str] = None
    restartpoint: bool = False
    expect_system_identifier: Optional[Any] = None
    expect_timeline: Optional[int] = None
    resume_paused: bool = False
    upstream_host: Optional[str] = None
    upstream_port: Optional[int] = None
    max_lag_bytes: int = DEFAULT_MAX_LAG_BYTES
    timeout: float = DEFAULT_TIMEOUT
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    poll_interval: float = DEFAULT_POLL_INTERVAL
    check_mode: bool = False
    server: Optional[str] = None  # host:port named in every failure: the role waits on more than one server

    def __post_init__(self) -> None:
        if self.mode not in GOALS:
            raise PgBackupError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        GOALS[self.mode].check_options(self)
        for name in ("timeout", "stall_timeout", "poll_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise PgBackupError(f"{name} must be a positive number of seconds, got {value!r}")
            setattr(self, name, float(value))
        lag = self.max_lag_bytes
        if isinstance(lag, bool) or not isinstance(lag, int) or lag < 0:
            raise PgBackupError(f"max_lag_bytes must be a number of bytes, 0 or more, got {lag!r}")
        tli = self.expect_timeline
        if tli is not None and (isinstance(tli, bool) or not isinstance(tli, int) or tli < 1):
            raise PgBackupError(f"expect_timeline must be a timeline ID (1 or more), got {tli!r}")
        self.expect_system_identifier = _sysid(self.expect_system_identifier)


class ReplayWaiter:
    """One wait (see the module docstring): the loop and the checks every goal shares; ``wait()`` returns the result or
    raises ``PgBackupError``. The goal (``replay_goals``) of ``mode`` decides the rest."""

    def __init__(
        self,
        query: Query,
        *,
        probe_files: Optional[Callable[[], FileProbe]] = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        warn: Optional[Callable[[str], None]] = None,
        **options: Any,
    ) -> None:
        self.options = WaitOptions(**options)
        self.goal = GOALS[self.options.mode].build(self.options)
        self.query = query
        self.probe_files = probe_files
        self.clock = clock
        self.sleep = sleep
        self.warn = warn or (lambda message: None)
        # what the wait saw so far
        self.started = 0.0
        self.last: Optional[Observation] = None
        self.first_replay: Optional[int] = None
        self.best_replay: Optional[int] = None
        self.observations = 0
        self.resumed = False
        self.refusals = 0
        self.last_refusal: Optional[str] = None
        self.last_refusal_alive = False
        self.files: Optional[FileProbe] = None
        self.files_seen_running = False

    # --- the loop ---------------------------------------------------------------------------------

    def wait(self) -> dict:
        self.started = self.clock()
        last_progress = self.started
        best_position: Optional[int] = None
        while True:
            observation = self._observe()
            now = self.clock()
            position = self._position(observation)
            if position is not None and (best_position is None or position > best_position):
                if best_position is not None:
                    last_progress = now
                best_position = position
            elif observation is None and self.files is None and self.last_refusal_alive:
                last_progress = now  # alive and recovering, progress invisible: only the overall timeout applies
            if observation is not None:
                self._fail_fast(observation, now)
                if self.options.check_mode:
                    return self._result(observation, reached=self.goal.reached(observation), now=now)
                if self.goal.advance(self, observation):
                    return self._result(self.last, reached=True, now=self.clock())
            elif self.options.check_mode:
                return self._result(None, reached=False, now=now)
            now = self.clock()
            self._check_time(now, last_progress)
            left = self.options.timeout - (now - self.started)
            self.sleep(max(0.0, min(self.options.poll_interval, left, self.options.stall_timeout - (now - last_progress))))

    def _check_time(self, now: float, last_progress: float) -> None:
        if now - self.started >= self.options.timeout:
            raise self.failure("timeout", f"{self.goal.text()} not reached within timeout={format_duration(self.options.timeout)}", now)
        if now - last_progress >= self.options.stall_timeout:
            stalled = f"no progress for stall_timeout={format_duration(self.options.stall_timeout)}"
            raise self.failure("stalled", f"{self.goal.text()} not reached: {stalled}{self.goal.stall_hint(self.last, self.last_refusal)}", now)

    def look(self) -> Optional[Observation]:
        """One more observation, judged as the loop judges one (a goal's look after it acted); None as ``_observe``."""
        observation = self._observe()
        if observation is not None:
            self._fail_fast(observation, self.clock())
        return observation

    def _observe(self) -> Optional[Observation]:
        """One observation, or None when the server does not let us in yet (consistent mode)."""
        if self.probe_files is not None:
            self._probe_files()
        try:
            rows = self.query(OBSERVE_SQL)
        except PgBackupError as exc:
            if self.goal.mode == "consistent" and exc.details.get("connect_failed"):
                self._refused(exc)
                return None
            raise self._query_failure(exc) from None
        if not rows:
            raise PgBackupError("the recovery state query returned no row")
        observation = Observation.from_row(rows[0])
        self.observations += 1
        self.last = observation
        if observation.replay_lsn is not None:
            if self.first_replay is None:
                self.first_replay = observation.replay_lsn
            if self.best_replay is None or observation.replay_lsn > self.best_replay:
                self.best_replay = observation.replay_lsn
        return observation

    def _probe_files(self) -> None:
        self.files = self.probe_files()
        if self.files.running:
            self.files_seen_running = True
        elif self.files_seen_running:
            raise self.failure(
                "server_stopped",
                "the server on the data directory stopped while it was recovering (its postmaster is gone); its log says why, "
                "often a missing WAL segment (check restore_command) or a backup_label that does not match the copy",
                self.clock(),
            )

    def _refused(self, exc: PgBackupError) -> None:
        """A refused connection while waiting for consistency: keep waiting, unless it can never be let in."""
        self.refusals += 1
        self.last_refusal = exc.message
        self.last_refusal_alive = not_yet_accepting(exc)
        if HOT_STANDBY_OFF in exc.message.lower():
            raise self.failure(
                "hot_standby_off",
                f"the server refuses connections because hot_standby is off ({exc.message}); it will not accept any before recovery ends, "
                "so consistency cannot be observed: set hot_standby=on on it and restart it",
                self.clock(),
            )

    def _query_failure(self, exc: PgBackupError) -> PgBackupError:
        if exc.details.get("sqlstate") == INSUFFICIENT_PRIVILEGE:
            return self.failure(
                "privilege",
                f"the connected role may not read the recovery state: {exc.details.get('server_message') or exc.message}; "
                "connect as a superuser, or GRANT pg_monitor and EXECUTE on pg_control_system(), pg_control_checkpoint() and pg_control_recovery()",
                self.clock(),
            )
        if exc.details.get("connection_lost"):
            return self.failure(
                "connection_lost", f"lost the connection to the server while waiting ({exc.message}); it may have restarted or stopped", self.clock()
            )
        return exc

    def _position(self, observation: Optional[Observation]) -> Optional[int]:
        """The number whose growth counts as progress: the goal's (replay, and a restartpoint's redo); pg_control's points on disk."""
        if observation is not None and observation.replay_lsn is not None:
            return self.goal.progress(observation)
        if self.files is not None and self.files.running:
            return self.files.position
        return None

    # --- fail fast: what is wrong for every goal; then the goal's own checks -------------------------------------

    def _fail_fast(self, obs: Observation, now: float) -> None:
        expected = self.options.expect_system_identifier
        if expected is not None and obs.system_identifier is not None and obs.system_identifier != expected:
            raise self.failure(
                "system_identifier",
                f"the server belongs to another cluster: its system identifier is {obs.system_identifier}, expected {expected} "
                "(the cluster the backup was started on); point the module at a standby of that cluster",
                now,
            )
        if not obs.in_recovery and self.goal.needs_recovery:
            raise self.failure(
                "promoted",
                "the server is not in recovery: it was promoted (or is a primary), so it will never replay the target; "
                "take the backup from the primary or from another standby",
                now,
            )
        expect_timeline = self.options.expect_timeline
        newest = obs.newest_timeline
        if expect_timeline is not None and newest is not None and newest > expect_timeline:
            raise self.failure(
                "timeline",
                f"the server is on timeline {newest}, expected timeline {expect_timeline}: it follows a newer timeline than the "
                "backup's (a promotion the primary is not part of), so it does not replay the primary's WAL",
                now,
            )
        self.goal.check(self, obs, now)

    def check_pause(self, obs: Observation, now: float) -> None:
        """Replay is paused where the goal needs it to move: fail, or (resume_paused) resume it once."""
        if not self.options.resume_paused:
            raise self.failure(
                "paused",
                "WAL replay is paused on the server (pg_is_wal_replay_paused()), so it will not reach the target; "
                "resume it with SELECT pg_wal_replay_resume() or set resume_paused=true. If it paused by itself, its log says why",
                now,
            )
        if self.resumed:
            raise self.failure(
                "paused",
                "WAL replay was resumed by this module and is paused again: something else pauses it; find out what before taking a backup from it",
                now,
            )
        targets = self.query(RECOVERY_TARGETS_SQL)
        if targets:
            settings = ", ".join(f"{row['name']}={row['setting']!r}" for row in targets)
            raise self.failure(
                "paused",
                f"WAL replay is paused and a recovery target is set ({settings}): it probably paused at that target, where resuming "
                "ends recovery and promotes the server, so resume_paused does not resume it; resume it yourself if that is what you want",
                now,
            )
        if self.options.check_mode:
            return
        self.query(RESUME_SQL)
        self.resumed = True
        self.warn("WAL replay was paused on the server; resumed it with pg_wal_replay_resume() (resume_paused=true)")

    def check_apply_delay(self, obs: Observation, now: float) -> None:
        """recovery_min_apply_delay holds replay back, where the goal needs it to move, longer than the time left."""
        delay_ms = obs.apply_delay_ms or 0
        if delay_ms <= 0:
            return
        held = obs.startup_wait_event == APPLY_DELAY_WAIT_EVENT
        target = self.goal.target
        if obs.startup_wait_event is None and target is not None and obs.receive_lsn is not None and obs.replay_lsn is not None:
            held = obs.receive_lsn >= target > obs.replay_lsn  # received, not applied: the delay holds it back
        if not held:
            return
        left = self.options.timeout - (now - self.started)
        delay = delay_ms / 1000.0
        if delay < left:
            return
        raise self.failure(
            "apply_delay",
            f"recovery_min_apply_delay = {format_duration(delay)} ({delay_ms} ms) holds replay back: the server applies each commit only that long "
            f"after the primary made it, and it is waiting on one now, so the target cannot be replayed within the {format_duration(left)} left of "
            "timeout; back up from a standby without an apply delay, or reset recovery_min_apply_delay and reload",
            now,
        )

    # --- messages and results -----------------------------------------------------------------------

    def failure(self, reason: str, what: str, now: float) -> PgBackupError:
        """The error to raise: ``what`` went wrong, with the target, the last replayed LSN and how long the wait waited."""
        waited = max(0.0, now - self.started)
        replayed = self.last.replay_lsn if self.last is not None else None
        target_text = self.goal.target_text
        where = f" on {self.options.server}" if self.options.server else ""
        position = f"target {target_text or 'none'}, last replayed {lsn_or_unknown(replayed)}, waited {waited:.1f} s"
        message = f"replay_wait ({self.goal.mode}){where}: {what} ({position})"
        details: dict = {"reason": reason, "target_lsn": target_text, "replay_lsn": _lsn_text(replayed), "waited_seconds": round(waited, 3)}
        if self.last is not None:
            details.update(_position_facts(self.last))
        return PgBackupError(message, **details)

    def _result(self, obs: Optional[Observation], *, reached: bool, now: float) -> dict:
        result: dict = {
            "mode": self.goal.mode,
            "reached": reached,
            "target_lsn": self.goal.target_text,
            "waited_seconds": round(max(0.0, now - self.started), 3),
            "replay_lsn": None,
            "replay_progress_bytes": 0,
            "observations": self.observations,
            **self.goal.request_facts(),
            "resumed_replay": self.resumed,
            "refused_connections": self.refusals,
            "accepting_connections": obs is not None,
        }
        if self.first_replay is not None and self.best_replay is not None:
            result["replay_progress_bytes"] = self.best_replay - self.first_replay
        if obs is None:
            result.update(dict.fromkeys(("receive_lsn", "checkpoint_lsn", "redo_lsn", "timeline", "checkpoint_timeline", "system_identifier", "in_recovery")))
            result.update(replay_paused=None, consistent_lsn=None, lag_bytes=None, receiver_status=None, server_version_num=None)
            return result
        result.update(_position_facts(obs))
        result["replay_lsn"] = _lsn_text(obs.replay_lsn)
        result.update(server_version_num=obs.server_version_num, receiver_status=obs.receiver_status, sender_host=obs.sender_host)
        result.update(sender_port=obs.sender_port, apply_delay_ms=obs.apply_delay_ms, lag_bytes=obs.lag_bytes)
        result.update(self.goal.facts(obs, reached=reached))
        result["min_recovery_end_lsn"] = _lsn_text(obs.min_recovery_end_lsn)
        result["backup_start_lsn"] = _lsn_text(obs.backup_start_lsn)
        result["backup_end_lsn"] = _lsn_text(obs.backup_end_lsn)
        result["end_of_backup_record_required"] = obs.end_of_backup_record_required
        return result


def _lsn_text(lsn: Optional[int]) -> Optional[str]:
    return None if lsn is None else format_lsn(lsn)


def _position_facts(obs: Observation) -> dict:
    """Where the server is, in a result and in a failure's details."""
    return {
        "in_recovery": obs.in_recovery,
        "receive_lsn": _lsn_text(obs.receive_lsn),
        "checkpoint_lsn": _lsn_text(obs.checkpoint_lsn),
        "redo_lsn": _lsn_text(obs.redo_lsn),
        "timeline": obs.newest_timeline,
        "checkpoint_timeline": obs.checkpoint_timeline,
        "system_identifier": None if obs.system_identifier is None else str(obs.system_identifier),  # digits, as every module returns it
        "replay_paused": obs.replay_paused,
    }


# --- talking to the server -----------------------------------------------------------------------------


class ServerQuery(LazySession):
    """``query(sql)`` for the waiter: a LazySession (connects on first use and again after a refusal, records each
    distinct statement) called as a function.

    A statement a hot standby cancelled for a conflict with recovery (SQLSTATE 40001) is run again, up to
    ``CONFLICT_ATTEMPTS`` times, on a new connection if it ended the old one, or if it refused the connection's start
    with it: every statement here is a read or idempotent (CHECKPOINT, pg_wal_replay_resume()).
    A standby that has just been resumed, or whose apply delay was lifted, replays WAL received long ago, so
    max_standby_streaming_delay has already run out and the startup process cancels any conflicting query at once: seen
    cancelling the very pg_wal_replay_resume() that set it going.
    """

    def __init__(self, params: dict, *, application_name: str, connect_function: Optional[Callable[..., Any]] = None) -> None:
        super().__init__(params, application_name=application_name, connect_function=connect_function)
        self.conflict_pause = CONFLICT_PAUSE

    def __call__(self, sql: str) -> list:
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                return self.query(sql)
            except PgBackupError as exc:
                if exc.details.get("sqlstate") != RECOVERY_CONFLICT:  # a connection it ended is made again (query closed it)
                    raise
                if attempt == CONFLICT_ATTEMPTS:
                    raise PgBackupError(
                        f"{exc.message} ({attempt} times in a row: the standby replays cleanup that its max_standby_streaming_delay "
                        "no longer lets queries wait for, as after a long pause or apply delay; set hot_standby_feedback = on there, "
                        "or wait until it caught up, and run again)",
                        **exc.details,
                    ) from None
                time.sleep(self.conflict_pause)
        raise AssertionError("unreachable: the last attempt returns or raises")


def data_dir_probe(data_dir: str) -> Callable[[], FileProbe]:
    """A ``probe_files`` for consistent mode: is a postmaster serving ``data_dir``, and where is its pg_control."""
    from .pg_control import read_control_file
    from .postmaster import postmaster_status

    def probe() -> FileProbe:
        running = bool(postmaster_status(data_dir)["running"])
        try:
            control = read_control_file(data_dir)
        except PgBackupError:
            return FileProbe(running=running)
        return FileProbe(running=running, min_recovery_point=control.min_recovery_point, redo_lsn=control.redo_lsn, checkpoint_lsn=control.checkpoint_lsn)

    return probe
