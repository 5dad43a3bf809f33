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

MODES = ("target_lsn", "consistent", "streaming")
CANNOT_CONNECT_NOW = "57P03"
INSUFFICIENT_PRIVILEGE = "42501"
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
CHECKPOINT_SQL = "CHECKPOINT"
# CHECKPOINT fails with this when the checkpointer's restartpoint raised an error (seen on loaded 17 and 18 standbys);
# the checkpointer's own reason is only in the server log. Asking again is safe (a restartpoint is idempotent), so the
# wait asks again at its next look, up to CHECKPOINT_RETRIES failures in a row.
CHECKPOINT_FAILED = "checkpoint request failed"
CHECKPOINT_RETRIES = 5
# The checkpointer's reason: ERROR/PANIC/WARNING lines from the end of the server's current log (superuser, logging_collector).
LOG_TAIL_SQL = "SELECT pg_read_file(f, greatest(0, (pg_stat_file(f)).size - 16384), 16384) AS tail FROM pg_current_logfile() AS f WHERE f IS NOT NULL"
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


def _fmt(lsn: Optional[int]) -> str:
    return "unknown" if lsn is None else format_lsn(lsn)


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


class ReplayWaiter:
    """One wait (see the module docstring); ``wait()`` returns the result or raises ``PgBackupError``."""

    def __init__(
        self,
        query: Query,
        *,
        mode: str = "target_lsn",
        target_lsn: Optional[str] = None,
        restartpoint: bool = False,
        expect_system_identifier: Optional[int] = None,
        expect_timeline: Optional[int] = None,
        resume_paused: bool = False,
        upstream_host: Optional[str] = None,
        upstream_port: Optional[int] = None,
        max_lag_bytes: int = DEFAULT_MAX_LAG_BYTES,
        timeout: float = DEFAULT_TIMEOUT,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        check_mode: bool = False,
        probe_files: Optional[Callable[[], FileProbe]] = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        warn: Optional[Callable[[str], None]] = None,
        server: Optional[str] = None,
    ) -> None:
        if mode not in MODES:
            raise PgBackupError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        if mode == "target_lsn" and not target_lsn:
            raise PgBackupError("mode=target_lsn needs target_lsn: the LSN the standby must replay, such as the backup's start LSN from backup_start")
        if restartpoint and mode != "target_lsn":
            raise PgBackupError(f"restartpoint=true only goes with mode=target_lsn (it waits for a restartpoint past the target), not mode={mode}")
        if mode != "streaming" and (upstream_host or upstream_port):
            raise PgBackupError(f"upstream_host and upstream_port only go with mode=streaming, not mode={mode}")
        for name, value in (("timeout", timeout), ("stall_timeout", stall_timeout), ("poll_interval", poll_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise PgBackupError(f"{name} must be a positive number of seconds, got {value!r}")
        if isinstance(max_lag_bytes, bool) or not isinstance(max_lag_bytes, int) or max_lag_bytes < 0:
            raise PgBackupError(f"max_lag_bytes must be a number of bytes, 0 or more, got {max_lag_bytes!r}")
        if expect_timeline is not None and (isinstance(expect_timeline, bool) or not isinstance(expect_timeline, int) or expect_timeline < 1):
            raise PgBackupError(f"expect_timeline must be a timeline ID (1 or more), got {expect_timeline!r}")
        self.query = query
        self.mode = mode
        self.target_text = target_lsn
        self.target = parse_lsn(target_lsn, what="target_lsn") if target_lsn else None
        self.restartpoint = restartpoint
        self.expect_system_identifier = _sysid(expect_system_identifier)
        self.expect_timeline = expect_timeline
        self.resume_paused = resume_paused
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.max_lag_bytes = max_lag_bytes
        self.timeout = float(timeout)
        self.stall_timeout = float(stall_timeout)
        self.poll_interval = float(poll_interval)
        self.check_mode = check_mode
        self.probe_files = probe_files
        self.clock = clock
        self.sleep = sleep
        self.warn = warn or (lambda message: None)
        self.server = server  # host:port named in every failure: the role waits on more than one server
        # what the wait saw so far
        self.started = 0.0
        self.last: Optional[Observation] = None
        self.first_replay: Optional[int] = None
        self.best_replay: Optional[int] = None
        self.observations = 0
        self.checkpoints = 0
        self.checkpoint_failures = 0  # in a row; reset by a CHECKPOINT that succeeds
        self.checkpoint_retries = 0  # every failed request, for the result
        self.checkpoint_at_replay: Optional[int] = None
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
                if self.check_mode:
                    return self._result(observation, reached=self._reached(observation, act=False), now=now)
                if self._reached(observation, act=True):
                    if self.restartpoint:
                        self._check_restartpoint_timeline()
                    return self._result(self.last, reached=True, now=self.clock())
            elif self.check_mode:
                return self._result(None, reached=False, now=now)
            now = self.clock()
            waited = now - self.started
            if waited >= self.timeout:
                raise self._failure("timeout", f"{self._goal()} not reached within timeout={format_duration(self.timeout)}", now)
            if now - last_progress >= self.stall_timeout:
                raise self._failure(
                    "stalled", f"{self._goal()} not reached: no progress for stall_timeout={format_duration(self.stall_timeout)}{self._stall_hint()}", now
                )
            self.sleep(max(0.0, min(self.poll_interval, self.timeout - waited, self.stall_timeout - (now - last_progress))))

    def _observe(self) -> Optional[Observation]:
        """One observation, or None when the server does not let us in yet (consistent mode)."""
        if self.probe_files is not None:
            self.files = self.probe_files()
            if self.files.running:
                self.files_seen_running = True
            elif self.files_seen_running:
                raise self._failure(
                    "server_stopped",
                    "the server on the data directory stopped while it was recovering (its postmaster is gone); its log says why, "
                    "often a missing WAL segment (check restore_command) or a backup_label that does not match the copy",
                    self.clock(),
                )
        try:
            rows = self.query(OBSERVE_SQL)
        except PgBackupError as exc:
            if self.mode == "consistent" and exc.details.get("connect_failed"):
                self.refusals += 1
                self.last_refusal = exc.message
                self.last_refusal_alive = not_yet_accepting(exc)
                if HOT_STANDBY_OFF in exc.message.lower():
                    raise self._failure(
                        "hot_standby_off",
                        f"the server refuses connections because hot_standby is off ({exc.message}); it will not accept any before recovery ends, "
                        "so consistency cannot be observed: set hot_standby=on on it and restart it",
                        self.clock(),
                    ) from None
                return None
            if exc.details.get("sqlstate") == INSUFFICIENT_PRIVILEGE:
                raise self._failure(
                    "privilege",
                    f"the connected role may not read the recovery state: {exc.details.get('server_message') or exc.message}; "
                    "connect as a superuser, or GRANT pg_monitor and EXECUTE on pg_control_system(), pg_control_checkpoint() and pg_control_recovery()",
                    self.clock(),
                ) from None
            if exc.details.get("connection_lost"):
                raise self._failure(
                    "connection_lost", f"lost the connection to the server while waiting ({exc.message}); it may have restarted or stopped", self.clock()
                ) from None
            raise
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

    def _position(self, observation: Optional[Observation]) -> Optional[int]:
        """The number whose growth counts as progress: replay, then the restartpoint's redo; pg_control's points on disk."""
        if observation is not None and observation.replay_lsn is not None:
            position = observation.replay_lsn
            if self.restartpoint and observation.redo_lsn is not None:
                position += observation.redo_lsn  # both only grow; either moving is progress
            return position
        if self.files is not None and self.files.running:
            return self.files.position
        return None

    # --- fail fast ---------------------------------------------------------------------------------

    def _fail_fast(self, obs: Observation, now: float) -> None:
        if self.expect_system_identifier is not None and obs.system_identifier is not None and obs.system_identifier != self.expect_system_identifier:
            raise self._failure(
                "system_identifier",
                f"the server belongs to another cluster: its system identifier is {obs.system_identifier}, expected {self.expect_system_identifier} "
                "(the cluster the backup was started on); point the module at a standby of that cluster",
                now,
            )
        if not obs.in_recovery and self.mode != "consistent":
            raise self._failure(
                "promoted",
                "the server is not in recovery: it was promoted (or is a primary), so it will never replay the target; "
                "take the backup from the primary or from another standby",
                now,
            )
        if self.expect_timeline is not None:
            newest = obs.newest_timeline
            if newest is not None and newest > self.expect_timeline:
                raise self._failure(
                    "timeline",
                    f"the server is on timeline {newest}, expected timeline {self.expect_timeline}: it follows a newer timeline than the "
                    "backup's (a promotion the primary is not part of), so it does not replay the primary's WAL",
                    now,
                )
        if self.restartpoint and self.target is not None and obs.checkpoint_lsn is not None and obs.redo_lsn is not None:
            if obs.checkpoint_lsn > self.target and obs.redo_lsn < self.target:
                raise self._failure(
                    "checkpoint_ahead",
                    f"the standby's checkpoint {format_lsn(obs.checkpoint_lsn)} is ahead of the target but its redo point "
                    f"{format_lsn(obs.redo_lsn)} is before it: the primary's WAL has no such checkpoint (the target is the redo point of the "
                    "backup's own checkpoint, and no checkpoint record after it has an earlier redo point), so this standby does not "
                    "follow the primary the backup was started on",
                    now,
                )
        if obs.in_recovery and obs.replay_paused and self.mode != "consistent" and not self._paused_is_harmless(obs):
            self._handle_pause(obs, now)
        self._check_apply_delay(obs, now)
        if self.mode == "streaming":
            self._check_upstream(obs, now)

    def _paused_is_harmless(self, obs: Observation) -> bool:
        """Paused where it does not matter: the goal is reached, or a restartpoint may still land past the target."""
        if self._reached(obs, act=False):
            return True
        return bool(self.restartpoint and obs.replay_lsn is not None and obs.replay_lsn >= self.target and self.checkpoint_at_replay != obs.replay_lsn)

    def _handle_pause(self, obs: Observation, now: float) -> None:
        if not self.resume_paused:
            raise self._failure(
                "paused",
                "WAL replay is paused on the server (pg_is_wal_replay_paused()), so it will not reach the target; "
                "resume it with SELECT pg_wal_replay_resume() or set resume_paused=true. If it paused by itself, its log says why",
                now,
            )
        if self.resumed:
            raise self._failure(
                "paused",
                "WAL replay was resumed by this module and is paused again: something else pauses it; find out what before taking a backup from it",
                now,
            )
        targets = self.query(RECOVERY_TARGETS_SQL)
        if targets:
            settings = ", ".join(f"{row['name']}={row['setting']!r}" for row in targets)
            raise self._failure(
                "paused",
                f"WAL replay is paused and a recovery target is set ({settings}): it probably paused at that target, where resuming "
                "ends recovery and promotes the server, so resume_paused does not resume it; resume it yourself if that is what you want",
                now,
            )
        if self.check_mode:
            return
        self.query(RESUME_SQL)
        self.resumed = True
        self.warn("WAL replay was paused on the server; resumed it with pg_wal_replay_resume() (resume_paused=true)")

    def _check_apply_delay(self, obs: Observation, now: float) -> None:
        delay_ms = obs.apply_delay_ms or 0
        if delay_ms <= 0 or not obs.in_recovery or self._reached(obs, act=False) or self.mode == "consistent":
            return
        held = obs.startup_wait_event == APPLY_DELAY_WAIT_EVENT
        if obs.startup_wait_event is None and self.target is not None and obs.receive_lsn is not None and obs.replay_lsn is not None:
            held = obs.receive_lsn >= self.target > obs.replay_lsn  # received, not applied: the delay holds it back
        if not held:
            return
        left = self.timeout - (now - self.started)
        delay = delay_ms / 1000.0
        if delay < left:
            return
        raise self._failure(
            "apply_delay",
            f"recovery_min_apply_delay = {format_duration(delay)} ({delay_ms} ms) holds replay back: the server applies each commit only that long "
            f"after the primary made it, and it is waiting on one now, so the target cannot be replayed within the {format_duration(left)} left of "
            "timeout; back up from a standby without an apply delay, or reset recovery_min_apply_delay and reload",
            now,
        )

    def _check_upstream(self, obs: Observation, now: float) -> None:
        if obs.receiver_status != "streaming":
            return
        wrong = []
        if self.upstream_host is not None and obs.sender_host is not None and obs.sender_host != self.upstream_host:
            wrong.append(f"host {obs.sender_host} (expected {self.upstream_host})")
        if self.upstream_port is not None and obs.sender_port is not None and obs.sender_port != self.upstream_port:
            wrong.append(f"port {obs.sender_port} (expected {self.upstream_port})")
        if wrong:
            raise self._failure(
                "upstream", f"the WAL receiver streams from the wrong upstream: {' and '.join(wrong)}; check primary_conninfo on the server", now
            )

    def _check_restartpoint_timeline(self) -> None:
        obs = self.last
        if self.expect_timeline is not None and obs is not None and obs.checkpoint_timeline is not None and obs.checkpoint_timeline != self.expect_timeline:
            raise self._failure(
                "timeline",
                f"the standby's restartpoint past the target is on timeline {obs.checkpoint_timeline}, expected timeline {self.expect_timeline}: "
                "it does not replay the WAL of the primary the backup was started on",
                self.clock(),
            )

    # --- reached? ---------------------------------------------------------------------------------

    def _reached(self, obs: Observation, *, act: bool) -> bool:
        if self.mode == "consistent":
            return obs.backup_end_reached
        if self.mode == "streaming":
            lag = self._lag(obs)
            return obs.receiver_status == "streaming" and lag is not None and lag <= self.max_lag_bytes
        if obs.replay_lsn is None or obs.replay_lsn < self.target:
            return False
        if not self.restartpoint:
            return True
        if obs.redo_lsn is not None and obs.redo_lsn >= self.target:
            return True
        if act and (self.checkpoint_at_replay is None or obs.replay_lsn > self.checkpoint_at_replay):
            self._checkpoint(obs)
            after = self._observe()
            if after is None:  # cannot happen outside consistent mode
                return False
            self._fail_fast(after, self.clock())
            return after.redo_lsn is not None and after.redo_lsn >= self.target
        return False

    def _checkpoint(self, obs: Observation) -> None:
        try:
            self.query(CHECKPOINT_SQL)
        except PgBackupError as exc:
            if exc.details.get("sqlstate") == INSUFFICIENT_PRIVILEGE:
                raise self._failure(
                    "privilege",
                    "the connected role may not run CHECKPOINT for the restartpoint: connect as a superuser, or (15 and later) GRANT pg_checkpoint to it",
                    self.clock(),
                ) from None
            server = exc.details.get("server_message") or exc.message
            if CHECKPOINT_FAILED not in server:
                raise
            self.checkpoint_failures += 1
            self.checkpoint_retries += 1
            if self.checkpoint_failures >= CHECKPOINT_RETRIES:
                raise self._failure(
                    "restartpoint_failed",
                    f"the standby's checkpointer failed the restartpoint {self.checkpoint_failures} times in a row ({CHECKPOINT_FAILED}){self._log_reason()}; "
                    "fix what the standby's server log names (disk space, permissions, an fsync error), then run the backup again",
                    self.clock(),
                ) from None
            return  # checkpoint_at_replay stays: the next look asks again
        self.checkpoint_failures = 0
        self.checkpoints += 1
        self.checkpoint_at_replay = obs.replay_lsn

    def _log_reason(self) -> str:
        """The server log's last ERROR/PANIC/WARNING lines (the checkpointer's, not our request's), when this session may read them; else where to look."""
        try:
            rows = self.query(LOG_TAIL_SQL)
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

    @staticmethod
    def _lag(obs: Observation) -> Optional[int]:
        if obs.replay_lsn is None:
            return None
        end = obs.latest_end_lsn if obs.latest_end_lsn else obs.flushed_lsn
        if end is None:
            return None
        return max(0, end - obs.replay_lsn)

    # --- messages and results -----------------------------------------------------------------------

    def _goal(self) -> str:
        if self.mode == "consistent":
            return "consistency (connections accepted and the end of the backup reached)"
        if self.mode == "streaming":
            upstream = ""
            if self.upstream_host or self.upstream_port:
                upstream = f" from {self.upstream_host or '*'}:{self.upstream_port or '*'}"
            return f"streaming{upstream} with replay lag at most {self.max_lag_bytes} bytes"
        if self.restartpoint:
            return f"a restartpoint with its redo point at or past {self.target_text}"
        return f"replay of {self.target_text}"

    def _stall_hint(self) -> str:
        obs = self.last
        if obs is None:
            if self.mode == "consistent" and self.last_refusal:
                return f"; the server still refuses connections: {self.last_refusal}"
            return ""
        if self.restartpoint and obs.replay_lsn is not None and self.target is not None and obs.replay_lsn >= self.target:
            return (
                f"; replay passed the target but the restartpoint's redo point is still {_fmt(obs.redo_lsn)}: the backup's checkpoint record "
                "was not replayed yet (is WAL still arriving?)"
            )
        if obs.receiver_status != "streaming":
            status = obs.receiver_status or "no WAL receiver"
            return f"; its WAL receiver is not streaming ({status}): check primary_conninfo, the upstream and its pg_hba.conf, or restore_command"
        return "; is replication running and current on the standby?"

    def _failure(self, reason: str, what: str, now: float) -> PgBackupError:
        waited = max(0.0, now - self.started)
        replayed = self.last.replay_lsn if self.last is not None else None
        target = self.target_text if self.target_text else "none"
        where = f" on {self.server}" if self.server else ""
        message = f"replay_wait ({self.mode}){where}: {what} (target {target}, last replayed {_fmt(replayed)}, waited {waited:.1f} s)"
        details: dict = {"reason": reason, "target_lsn": self.target_text, "replay_lsn": None if replayed is None else format_lsn(replayed),
                         "waited_seconds": round(waited, 3)}  # fmt: skip
        if self.last is not None:
            details.update(self._position_facts(self.last))
        return PgBackupError(message, **details)

    @staticmethod
    def _position_facts(obs: Observation) -> dict:
        def text(lsn: Optional[int]) -> Optional[str]:
            return None if lsn is None else format_lsn(lsn)

        return {
            "in_recovery": obs.in_recovery,
            "receive_lsn": text(obs.receive_lsn),
            "checkpoint_lsn": text(obs.checkpoint_lsn),
            "redo_lsn": text(obs.redo_lsn),
            "timeline": obs.newest_timeline,
            "checkpoint_timeline": obs.checkpoint_timeline,
            "system_identifier": obs.system_identifier,
            "replay_paused": obs.replay_paused,
        }

    def _result(self, obs: Optional[Observation], *, reached: bool, now: float) -> dict:
        waited = max(0.0, now - self.started)
        result: dict = {
            "mode": self.mode,
            "reached": reached,
            "target_lsn": self.target_text,
            "waited_seconds": round(waited, 3),
            "replay_lsn": None,
            "replay_progress_bytes": 0,
            "observations": self.observations,
            "checkpoints_requested": self.checkpoints,
            "checkpoint_requests_failed": self.checkpoint_retries,
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
        result.update(self._position_facts(obs))
        result["replay_lsn"] = None if obs.replay_lsn is None else format_lsn(obs.replay_lsn)
        result["server_version_num"] = obs.server_version_num
        result["receiver_status"] = obs.receiver_status
        result["sender_host"] = obs.sender_host
        result["sender_port"] = obs.sender_port
        result["apply_delay_ms"] = obs.apply_delay_ms
        lag = self._lag(obs)
        result["lag_bytes"] = lag
        consistent = None
        if self.mode == "consistent" and reached:
            # pg_control's minimum recovery point: the copy is consistent there (recovery may have got consistent a little earlier).
            consistent = obs.min_recovery_end_lsn if obs.min_recovery_end_lsn else obs.replay_lsn
        result["consistent_lsn"] = None if not consistent else format_lsn(consistent)
        result["min_recovery_end_lsn"] = None if obs.min_recovery_end_lsn is None else format_lsn(obs.min_recovery_end_lsn)
        result["backup_start_lsn"] = None if obs.backup_start_lsn is None else format_lsn(obs.backup_start_lsn)
        result["backup_end_lsn"] = None if obs.backup_end_lsn is None else format_lsn(obs.backup_end_lsn)
        result["end_of_backup_record_required"] = obs.end_of_backup_record_required
        return result


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
