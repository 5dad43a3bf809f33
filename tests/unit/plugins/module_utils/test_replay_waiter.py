"""The replay waiter against a simulated standby and a fake clock: every mode, timeout and fail-fast branch, no server."""

from __future__ import annotations

import re
from typing import Optional

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.connection import server_address
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import format_lsn, parse_lsn
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.replay_goals import CHECKPOINT_SQL, LOG_TAIL_SQL
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.replay_waiter import (
    CONFLICT_ATTEMPTS,
    OBSERVE_SQL,
    RECOVERY_TARGETS_SQL,
    RESUME_SQL,
    FileProbe,
    Observation,
    ReplayWaiter,
    ServerQuery,
    format_duration,
    not_yet_accepting,
)

SEG = 16 << 20
TARGET = 0x5000028  # a backup's start LSN: the redo point of its checkpoint
TARGET_TEXT = format_lsn(TARGET)
CKPT_RECORD = 0x5000060  # that checkpoint's record, after its redo point
SYSID = 7311234567890123456
FAILURE_TAIL = re.compile(r"\(target (\S+), last replayed (\S+), waited ([0-9.]+) s\)\Z")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


class Standby:
    """A simulated standby: replay runs at ``rate`` bytes/s from ``replay`` up to ``receive``, driven by the fake clock.

    ``records`` are the primary's checkpoint records as (record LSN, redo LSN); ``CHECKPOINT`` makes a restartpoint
    at the newest one replayed, as PostgreSQL does.
    """

    def __init__(self, clock: Clock, *, replay: int = 0x4000000, rate: float = 0, receive: Optional[int] = None, **overrides) -> None:
        self.clock = clock
        self.t0 = clock.now
        self.replay0 = replay
        self.rate = rate
        self.receive = receive if receive is not None else replay
        self.records = [(0x3000060, 0x3000028), (CKPT_RECORD, TARGET)]
        self.checkpoint = (0x3000060, 0x3000028)
        self.state = {
            "server_version_num": 160004,
            "in_recovery": True,
            "replay_paused": False,
            "system_identifier": SYSID,
            "checkpoint_timeline": 1,
            "min_recovery_end_timeline": 1,
            "backup_start_lsn": "0/0",
            "backup_end_lsn": "0/0",
            "end_of_backup_record_required": False,
            "receiver_status": "streaming",
            "received_tli": 1,
            "sender_host": "10.0.0.11",
            "sender_port": 5432,
            "apply_delay_ms": 0,
            "startup_wait_event": "RecoveryWalStream",
        }
        self.state.update(overrides)
        self.statements: list = []
        self.targets: list = []
        self.events: dict = {}  # clock time -> callable(standby), run once when the clock passes it
        self.fail_checkpoint: Optional[PgBackupError] = None
        self.checkpoint_failures_left = 0  # CHECKPOINTs that fail with "checkpoint request failed" before one succeeds
        self.log_tail: Optional[str] = None  # what LOG_TAIL_SQL returns (None: not permitted)
        self.observe_error: Optional[PgBackupError] = None

    @property
    def replay(self) -> int:
        if self.state["replay_paused"]:
            return self.replay0
        return min(self.receive, self.replay0 + int(self.rate * (self.clock.now - self.t0)))

    def freeze(self) -> None:
        """Keep replay where it is now (pausing, or changing the rate)."""
        self.replay0 = self.replay
        self.t0 = self.clock.now

    def _run_events(self) -> None:
        for when in sorted(self.events):
            if when <= self.clock.now:
                self.events.pop(when)(self)

    def __call__(self, sql: str) -> list:
        self._run_events()
        self.statements.append(sql)
        if sql == OBSERVE_SQL:
            if self.observe_error is not None:
                raise self.observe_error
            row = dict(self.state)
            replay = self.replay
            row.update(
                replay_lsn=format_lsn(replay),
                receive_lsn=format_lsn(max(self.receive, replay)),
                flushed_lsn=format_lsn(max(self.receive, replay)),
                latest_end_lsn=format_lsn(max(self.receive, replay)),
                checkpoint_lsn=format_lsn(self.checkpoint[0]),
                redo_lsn=format_lsn(self.checkpoint[1]),
                min_recovery_end_lsn=format_lsn(replay),
            )
            if not row["in_recovery"]:
                row.update(replay_lsn=None, receive_lsn=None, replay_paused=None, receiver_status=None, received_tli=None)
            return [row]
        if sql == CHECKPOINT_SQL:
            if self.fail_checkpoint is not None:
                raise self.fail_checkpoint
            if self.checkpoint_failures_left:
                self.checkpoint_failures_left -= 1
                raise PgBackupError("query failed on db2:5432: checkpoint request failed", server_message="checkpoint request failed")
            replayed = [record for record in self.records if record[0] < self.replay]
            if replayed and max(replayed) > self.checkpoint:
                self.checkpoint = max(replayed)
            return []
        if sql == RESUME_SQL:
            self.freeze()
            self.state["replay_paused"] = False
            self.t0 = self.clock.now
            return [{"pg_wal_replay_resume": None}]
        if sql == RECOVERY_TARGETS_SQL:
            return self.targets
        if sql == LOG_TAIL_SQL:
            if self.log_tail is None:
                raise PgBackupError("query failed: permission denied for function pg_read_file", sqlstate="42501")
            return [{"tail": self.log_tail}]
        raise AssertionError(f"unexpected statement {sql}")


def waiter(standby: Standby, clock: Clock, **kw) -> ReplayWaiter:
    kw.setdefault("target_lsn", TARGET_TEXT)
    kw.setdefault("poll_interval", 1.0)
    kw.setdefault("stall_timeout", 30.0)
    kw.setdefault("timeout", 600.0)
    return ReplayWaiter(standby, clock=clock, sleep=clock.sleep, **kw)


def fails(w: ReplayWaiter, reason: str) -> PgBackupError:
    with pytest.raises(PgBackupError) as caught:
        w.wait()
    exc = caught.value
    assert exc.details["reason"] == reason, exc.message
    assert FAILURE_TAIL.search(exc.message), exc.message
    return exc


# --- target_lsn ------------------------------------------------------------------------------------


def test_target_already_replayed_returns_at_once():
    clock = Clock()
    standby = Standby(clock, replay=0x5000100)
    result = waiter(standby, clock).wait()
    assert result["reached"] is True and result["waited_seconds"] == 0 and clock.sleeps == []
    assert result["replay_lsn"] == "0/5000100" and result["observations"] == 1 and result["checkpoints_requested"] == 0
    assert CHECKPOINT_SQL not in standby.statements


def test_waits_while_replay_advances_and_reports_progress():
    clock = Clock()
    standby = Standby(clock, replay=0x4000000, rate=SEG / 10, receive=0x6000000)  # the target is 10 s of replay away
    result = waiter(standby, clock).wait()
    assert result["reached"] and 10 <= result["waited_seconds"] <= 11
    assert parse_lsn(result["replay_lsn"]) >= TARGET
    assert result["replay_progress_bytes"] == parse_lsn(result["replay_lsn"]) - 0x4000000
    assert all(s <= 1.0 for s in clock.sleeps)


def test_equal_to_target_is_reached():
    clock = Clock()
    result = waiter(Standby(clock, replay=TARGET), clock).wait()
    assert result["reached"] and result["replay_lsn"] == TARGET_TEXT


def test_replay_one_byte_short_of_the_target_never_passes():
    clock = Clock()
    exc = fails(waiter(Standby(clock, replay=TARGET - 1), clock, stall_timeout=5), "stalled")
    assert format_lsn(TARGET - 1) in exc.message


def test_stall_timeout_fails_naming_target_replayed_and_wait():
    clock = Clock()
    standby = Standby(clock, replay=0x4FFF000)  # stuck just before the target
    exc = fails(waiter(standby, clock, stall_timeout=20), "stalled")
    target, replayed, waited = FAILURE_TAIL.search(exc.message).groups()
    assert (target, replayed) == (TARGET_TEXT, "0/4FFF000") and float(waited) == pytest.approx(20, abs=0.01)
    assert "stall_timeout=20 s" in exc.message and "is replication running" in exc.message
    assert exc.details["replay_lsn"] == "0/4FFF000" and exc.details["target_lsn"] == TARGET_TEXT


def test_stall_timer_restarts_on_every_advance():
    clock = Clock()
    # 1 MB every 4 s against a 10 s stall timeout: 17 MB takes ~70 s, far beyond the stall timeout, but never stalls.
    standby = Standby(clock, replay=0x4000000, rate=(1 << 20) / 4, receive=0x6000000)
    result = waiter(standby, clock, stall_timeout=10, poll_interval=2).wait()
    assert result["reached"] and result["waited_seconds"] > 60


def test_stall_timeout_counts_from_the_last_advance():
    clock = Clock()
    standby = Standby(clock, replay=0x4000000, rate=1 << 20, receive=0x4800000)  # replays 8 MB in 8 s, then nothing arrives
    exc = fails(waiter(standby, clock, stall_timeout=15), "stalled")
    assert exc.details["waited_seconds"] == pytest.approx(8 + 15, abs=1.01)


def test_overall_timeout_even_with_progress():
    clock = Clock()
    standby = Standby(clock, replay=0x4000000, rate=1000, receive=0x6000000)  # progress every poll, but far too slow
    exc = fails(waiter(standby, clock, timeout=45, stall_timeout=10), "timeout")
    assert "timeout=45 s" in exc.message and exc.details["waited_seconds"] == pytest.approx(45)
    assert max(clock.sleeps) <= 1.0


def test_never_sleeps_past_the_timeout():
    clock = Clock()
    standby = Standby(clock, replay=0x4000000)
    fails(waiter(standby, clock, timeout=2.5, stall_timeout=100, poll_interval=2), "timeout")
    assert clock.now - 100 == pytest.approx(2.5)


# --- fail fast ------------------------------------------------------------------------------------


def test_promoted_fails_at_once():
    clock = Clock()
    exc = fails(waiter(Standby(clock, in_recovery=False), clock), "promoted")
    assert clock.sleeps == [] and "not in recovery" in exc.message and exc.details["waited_seconds"] == 0
    assert "last replayed unknown" in exc.message


def test_promoted_during_the_wait_fails_at_that_look():
    clock = Clock()
    standby = Standby(clock, replay=0x4000000, rate=1 << 20, receive=0x6000000)
    standby.events[105.0] = lambda s: s.state.update(in_recovery=False)
    exc = fails(waiter(standby, clock), "promoted")
    assert exc.details["waited_seconds"] == pytest.approx(5)


def test_paused_fails_at_once():
    clock = Clock()
    exc = fails(waiter(Standby(clock, replay_paused=True), clock), "paused")
    assert clock.sleeps == [] and "pg_wal_replay_resume()" in exc.message and "resume_paused=true" in exc.message
    assert exc.details["replay_paused"] is True


def test_a_failure_names_the_server_it_waited_on():
    clock = Clock()
    named = fails(waiter(Standby(clock, replay_paused=True), clock, server="db2.example:5433"), "paused")
    assert named.message.startswith("replay_wait (target_lsn) on db2.example:5433: WAL replay is paused"), named.message
    unnamed = fails(waiter(Standby(Clock(), replay_paused=True), Clock()), "paused")
    assert unnamed.message.startswith("replay_wait (target_lsn): "), unnamed.message


def test_server_address_is_the_socket_or_host_and_port():
    assert server_address({"login_host": "db1", "login_port": 5433}) == "db1:5433"
    assert server_address({"login_host": "db1", "login_unix_socket": "/run/pg", "login_port": 5433}) == "/run/pg:5433"
    assert server_address({}) == "localhost:5432"


def test_paused_after_the_target_does_not_matter():
    clock = Clock()
    result = waiter(Standby(clock, replay=0x5000100, replay_paused=True), clock).wait()
    assert result["reached"] and result["replay_paused"] is True


def test_resume_paused_resumes_once_and_warns():
    clock = Clock()
    warnings: list = []
    standby = Standby(clock, replay=0x4000000, rate=SEG, receive=0x6000000, replay_paused=True)
    result = waiter(standby, clock, resume_paused=True, warn=warnings.append).wait()
    assert result["reached"] and result["resumed_replay"] is True
    assert standby.statements.count(RESUME_SQL) == 1 and RECOVERY_TARGETS_SQL in standby.statements
    assert warnings and "resumed" in warnings[0]


def test_resume_paused_refuses_at_a_recovery_target():
    clock = Clock()
    standby = Standby(clock, replay_paused=True)
    standby.targets = [{"name": "recovery_target_lsn", "setting": "0/5000000"}]
    exc = fails(waiter(standby, clock, resume_paused=True), "paused")
    assert "recovery_target_lsn='0/5000000'" in exc.message and "promotes" in exc.message
    assert RESUME_SQL not in standby.statements


def test_paused_again_after_resuming_fails():
    clock = Clock()
    standby = Standby(clock, replay=0x4000000, rate=1 << 20, receive=0x6000000, replay_paused=True)

    def pause(s):
        s.freeze()
        s.state["replay_paused"] = True

    standby.events[103.0] = pause
    exc = fails(waiter(standby, clock, resume_paused=True), "paused")
    assert "paused again" in exc.message


def test_other_cluster_fails_at_once_naming_both_identifiers():
    clock = Clock()
    exc = fails(waiter(Standby(clock), clock, expect_system_identifier=7000000000000000001), "system_identifier")
    assert str(SYSID) in exc.message and "7000000000000000001" in exc.message and clock.sleeps == []


def test_system_identifier_beyond_bigint_compares_unsigned():
    clock = Clock()
    unsigned = (1 << 64) - 5
    standby = Standby(clock, replay=0x5000100, system_identifier=-5)  # how SQL's bigint shows it
    result = waiter(standby, clock, expect_system_identifier=unsigned).wait()
    assert result["system_identifier"] == str(unsigned)  # digits, as every module returns it


def test_newer_timeline_fails_at_once_naming_both():
    clock = Clock()
    exc = fails(waiter(Standby(clock, received_tli=3), clock, expect_timeline=2), "timeline")
    assert "timeline 3" in exc.message and "expected timeline 2" in exc.message


def test_older_timeline_may_still_catch_up():
    clock = Clock()
    standby = Standby(clock, replay=0x4000000, rate=SEG, receive=0x6000000, received_tli=1, checkpoint_timeline=1, min_recovery_end_timeline=1)
    standby.events[101.5] = lambda s: s.state.update(received_tli=2, min_recovery_end_timeline=2)
    assert waiter(standby, clock, expect_timeline=2).wait()["timeline"] == 2


@pytest.mark.parametrize("event", ["RecoveryApplyDelay", None])
def test_apply_delay_beyond_the_timeout_fails_naming_it(event):
    clock = Clock()
    # WAL up to past the target is received; replay waits on a commit for the delay (or we cannot see its wait event).
    standby = Standby(clock, replay=0x4000000, receive=0x6000000, apply_delay_ms=3600000, startup_wait_event=event)
    exc = fails(waiter(standby, clock, timeout=3600), "apply_delay")
    assert "recovery_min_apply_delay = 1 h (3600000 ms)" in exc.message and clock.sleeps == []


def test_apply_delay_shorter_than_the_time_left_is_waited_out():
    clock = Clock()
    standby = Standby(clock, replay=0x4000000, receive=0x6000000, apply_delay_ms=5000, startup_wait_event="RecoveryApplyDelay")
    standby.events[106.0] = lambda s: (s.freeze(), setattr(s, "rate", SEG), s.state.update(startup_wait_event="RecoveryWalStream"))
    assert waiter(standby, clock, timeout=60).wait()["reached"]


def test_apply_delay_that_does_not_hold_replay_is_ignored():
    clock = Clock()
    standby = Standby(clock, replay=0x4000000, rate=SEG, receive=0x6000000, apply_delay_ms=3600000, startup_wait_event="RecoveryWalStream")
    assert waiter(standby, clock).wait()["reached"]


def test_apply_delay_checked_against_the_time_left():
    clock = Clock()
    standby = Standby(clock, replay=0x4000000, rate=(1 << 20) / 8, receive=0x6000000, apply_delay_ms=60000, startup_wait_event="RecoveryWalStream")
    standby.events[150.0] = lambda s: (s.freeze(), setattr(s, "rate", 0), s.state.update(startup_wait_event="RecoveryApplyDelay"))
    exc = fails(waiter(standby, clock, timeout=100, stall_timeout=100), "apply_delay")
    assert exc.details["waited_seconds"] == pytest.approx(50) and "1 min" in exc.message


# --- restartpoint ---------------------------------------------------------------------------------


def test_restartpoint_issues_checkpoint_and_waits_for_the_redo_point():
    clock = Clock()
    standby = Standby(clock, replay=0x4000000, rate=SEG / 4, receive=0x6000000)
    result = waiter(standby, clock, restartpoint=True).wait()
    assert result["reached"] and parse_lsn(result["redo_lsn"]) >= TARGET and result["redo_lsn"] == TARGET_TEXT
    assert result["checkpoint_lsn"] == format_lsn(CKPT_RECORD) and result["checkpoints_requested"] >= 1


def test_restartpoint_reissues_checkpoint_until_the_backup_checkpoint_record_is_replayed():
    clock = Clock()
    # Replay reaches the redo point (the target) but the checkpoint record comes only 6 s later (a spread checkpoint).
    standby = Standby(clock, replay=TARGET, rate=SEG, receive=TARGET)
    standby.events[106.0] = lambda s: setattr(s, "receive", CKPT_RECORD + 0x100)
    result = waiter(standby, clock, restartpoint=True, stall_timeout=60).wait()
    assert result["redo_lsn"] == TARGET_TEXT and result["waited_seconds"] >= 6
    # One CHECKPOINT at the first look (redo stays behind), none while replay does not move, one once it moved.
    assert result["checkpoints_requested"] == 2


def test_a_restartpoint_whose_redo_is_one_byte_before_the_target_never_passes():
    clock = Clock()
    # Replay is past the target but short of the backup checkpoint's record, and the last restartpoint's redo point is
    # one byte before the target: a copy whose pg_control says so would start recovery too early.
    standby = Standby(clock, replay=TARGET + 0x10, receive=TARGET + 0x10)
    standby.checkpoint = (TARGET - 0x8, TARGET - 1)
    exc = fails(waiter(standby, clock, restartpoint=True, stall_timeout=5), "stalled")
    assert format_lsn(TARGET - 1) in exc.message or "redo" in exc.message


def test_restartpoint_already_past_the_target_needs_no_checkpoint():
    clock = Clock()
    standby = Standby(clock, replay=0x6000100)
    standby.checkpoint = (0x6000060, 0x6000028)
    result = waiter(standby, clock, restartpoint=True).wait()
    assert result["checkpoints_requested"] == 0 and CHECKPOINT_SQL not in standby.statements


def test_checkpoint_ahead_with_redo_before_the_target_is_not_this_primary():
    clock = Clock()
    standby = Standby(clock, replay=0x6000100)
    standby.checkpoint = (0x5800000, 0x4800000)  # a checkpoint record past the target whose redo is before it
    exc = fails(waiter(standby, clock, restartpoint=True), "checkpoint_ahead")
    assert "0/5800000" in exc.message and "0/4800000" in exc.message and "does not follow the primary" in exc.message
    assert clock.sleeps == [] and CHECKPOINT_SQL not in standby.statements


def test_checkpoint_ahead_is_only_judged_with_restartpoint():
    clock = Clock()
    standby = Standby(clock, replay=0x6000100)
    standby.checkpoint = (0x5800000, 0x4800000)  # an arbitrary target may fall inside an online checkpoint
    assert waiter(standby, clock).wait()["reached"]


def test_restartpoint_on_another_timeline_fails():
    clock = Clock()
    standby = Standby(clock, replay=0x6000100, checkpoint_timeline=1, received_tli=1, min_recovery_end_timeline=1)
    exc = fails(waiter(standby, clock, restartpoint=True, expect_timeline=2), "timeline")
    assert "timeline 1" in exc.message and "expected timeline 2" in exc.message


def test_restartpoint_checkpoint_not_permitted():
    clock = Clock()
    standby = Standby(clock, replay=0x6000100)
    standby.fail_checkpoint = PgBackupError("query failed: must be superuser", sqlstate="42501")
    exc = fails(waiter(standby, clock, restartpoint=True), "privilege")
    assert "pg_checkpoint" in exc.message


def test_a_failed_restartpoint_request_is_asked_again():
    clock = Clock()
    standby = Standby(clock, replay=0x6000100)
    standby.checkpoint_failures_left = 2
    result = waiter(standby, clock, restartpoint=True).wait()
    assert result["reached"] and result["redo_lsn"] == TARGET_TEXT and result["checkpoints_requested"] == 1
    assert standby.statements.count(CHECKPOINT_SQL) == 3


def test_a_restartpoint_that_keeps_failing_names_the_server_logs_reason():
    clock = Clock()
    standby = Standby(clock, replay=0x6000100)
    standby.checkpoint_failures_left = 99
    standby.log_tail = (
        "2026-12-02 01:00:00 UTC [77] LOG:  restartpoint starting: immediate\n"
        "2026-12-02 01:00:00 UTC [77] ERROR:  could not write to file: No space left on device\n"
    )
    exc = fails(waiter(standby, clock, restartpoint=True), "restartpoint_failed")
    assert "failed the restartpoint 5 times in a row (checkpoint request failed)" in exc.message
    assert "the server log says: 2026-12-02 01:00:00 UTC [77] ERROR: could not write to file: No space left on device" in exc.message
    assert standby.statements.count(CHECKPOINT_SQL) == 5
    standby = Standby(clock, replay=0x6000100)
    standby.checkpoint_failures_left = 99
    exc = fails(waiter(standby, clock, restartpoint=True), "restartpoint_failed")  # no permission to read the log
    assert "its reason is in the standby's server log" in exc.message


def test_restartpoint_stall_explains_the_missing_checkpoint_record():
    clock = Clock()
    standby = Standby(clock, replay=TARGET + 8, receive=TARGET + 8)  # the checkpoint record never arrives
    exc = fails(waiter(standby, clock, restartpoint=True, stall_timeout=10), "stalled")
    assert "checkpoint record was not replayed yet" in exc.message and standby.statements.count(CHECKPOINT_SQL) == 1


def test_paused_past_the_target_still_gets_one_checkpoint():
    clock = Clock()
    standby = Standby(clock, replay=CKPT_RECORD + 0x100, replay_paused=True)
    result = waiter(standby, clock, restartpoint=True).wait()
    assert result["redo_lsn"] == TARGET_TEXT and result["checkpoints_requested"] == 1


def test_paused_before_the_backup_checkpoint_record_fails_after_one_checkpoint():
    clock = Clock()
    standby = Standby(clock, replay=TARGET + 8, replay_paused=True)
    fails(waiter(standby, clock, restartpoint=True), "paused")
    assert standby.statements.count(CHECKPOINT_SQL) == 1


# --- consistent -----------------------------------------------------------------------------------

STARTING_13 = "cannot connect to PostgreSQL at host=db1: FATAL: the database system is starting up; the server is starting: retry"
STARTING_14 = (
    "cannot connect to PostgreSQL at host=db1: FATAL: the database system is not yet accepting connections "
    "DETAIL: Consistent recovery state has not been yet reached."
)
REFUSED = "cannot connect to PostgreSQL at host=db1: connection to server failed: Connection refused; check that the server runs"


class Restoring(Standby):
    """A copy being recovered: refuses connections with ``refusal`` until ``open_at``."""

    def __init__(self, clock: Clock, *, refusal: str = STARTING_14, open_at: float = 110.0, sqlstate: Optional[str] = None, **kw) -> None:
        super().__init__(clock, replay=0x7000100, **kw)
        self.refusal = refusal
        self.open_at = open_at
        self.sqlstate = sqlstate

    def __call__(self, sql: str) -> list:
        if self.clock.now < self.open_at:
            raise PgBackupError(self.refusal, connect_failed=True, sqlstate=self.sqlstate)
        return super().__call__(sql)


@pytest.mark.parametrize("refusal", [STARTING_13, STARTING_14])
def test_consistent_keeps_waiting_through_57p03_longer_than_the_stall_timeout(refusal):
    clock = Clock()
    server = Restoring(clock, refusal=refusal, open_at=160.0)
    result = waiter(server, clock, mode="consistent", target_lsn=None, stall_timeout=20).wait()
    assert result["reached"] and result["accepting_connections"] and result["refused_connections"] == 60
    assert result["consistent_lsn"] == "0/7000100" and result["backup_start_lsn"] == "0/0"


def test_consistent_sqlstate_alone_is_enough():
    assert not_yet_accepting(PgBackupError("FATAL: something localized", sqlstate="57P03"))
    assert not not_yet_accepting(PgBackupError("FATAL: the database system is shutting down", sqlstate="57P03"))
    assert not not_yet_accepting(PgBackupError(REFUSED))


def test_consistent_waits_for_the_backup_end_in_pg_control():
    clock = Clock()
    server = Restoring(clock, open_at=100.0, backup_start_lsn="0/5000028", end_of_backup_record_required=True)
    server.events[104.0] = lambda s: s.state.update(backup_start_lsn="0/0", end_of_backup_record_required=False)
    result = waiter(server, clock, mode="consistent", target_lsn=None).wait()
    assert result["waited_seconds"] == pytest.approx(4) and result["end_of_backup_record_required"] is False


def test_consistent_standby_backup_end_point_must_clear():
    clock = Clock()
    server = Restoring(clock, open_at=100.0, backup_end_lsn="0/7000000")
    exc = fails(waiter(server, clock, mode="consistent", target_lsn=None, timeout=5), "timeout")
    assert "consistency" in exc.message and "target none" in exc.message


def test_consistent_refused_connections_count_against_the_stall_timeout():
    clock = Clock()
    exc = fails(waiter(Restoring(clock, refusal=REFUSED, open_at=1e9), clock, mode="consistent", target_lsn=None, stall_timeout=15), "stalled")
    assert "still refuses connections" in exc.message and "Connection refused" in exc.message


def test_consistent_hot_standby_off_fails_at_once():
    clock = Clock()
    refusal = "cannot connect: FATAL: the database system is not accepting connections DETAIL: Hot standby mode is disabled."
    exc = fails(waiter(Restoring(clock, refusal=refusal), clock, mode="consistent", target_lsn=None), "hot_standby_off")
    assert "hot_standby=on" in exc.message and clock.sleeps == []


def test_consistent_accepts_a_promoted_copy():
    clock = Clock()
    server = Restoring(clock, open_at=100.0, in_recovery=False)
    result = waiter(server, clock, mode="consistent", target_lsn=None).wait()
    assert result["reached"] and result["in_recovery"] is False


def test_consistent_with_data_dir_sees_the_server_stop():
    clock = Clock()
    probes = iter([FileProbe(running=True, min_recovery_point=0x5000000)] * 3 + [FileProbe(running=False, min_recovery_point=0x5000000)])
    server = Restoring(clock, open_at=1e9)
    exc = fails(waiter(server, clock, mode="consistent", target_lsn=None, probe_files=lambda: next(probes)), "server_stopped")
    assert "its log says why" in exc.message and exc.details["waited_seconds"] == pytest.approx(3)


def test_consistent_with_data_dir_progress_resets_the_stall_timer_and_its_absence_stalls():
    clock = Clock()

    def probe():
        moving = clock.now < 160
        return FileProbe(running=True, min_recovery_point=0x5000000 + (int(clock.now) if moving else 160) * 0x1000, redo_lsn=0x4000000)

    server = Restoring(clock, open_at=1e9)
    exc = fails(waiter(server, clock, mode="consistent", target_lsn=None, probe_files=probe, stall_timeout=20), "stalled")
    assert exc.details["waited_seconds"] == pytest.approx(60 + 20, abs=1.01)


def test_consistent_with_data_dir_not_started_yet_is_not_a_stop():
    clock = Clock()
    probes = iter([FileProbe(running=False)] * 3 + [FileProbe(running=True, min_recovery_point=1)] * 100)
    server = Restoring(clock, open_at=106.0)
    result = waiter(server, clock, mode="consistent", target_lsn=None, probe_files=lambda: next(probes)).wait()
    assert result["reached"]


# --- streaming ------------------------------------------------------------------------------------


def test_streaming_waits_for_the_receiver_and_the_lag_bound():
    clock = Clock()
    standby = Standby(clock, replay=0x4000000, rate=SEG / 8, receive=0x6000000, receiver_status="startup")
    standby.events[103.0] = lambda s: s.state.update(receiver_status="streaming")
    result = waiter(standby, clock, mode="streaming", target_lsn=None, max_lag_bytes=SEG // 2, upstream_host="10.0.0.11", upstream_port=5432).wait()
    assert result["reached"] and result["lag_bytes"] <= SEG // 2 and result["receiver_status"] == "streaming"
    assert result["waited_seconds"] >= 12  # 32 MB behind at 2 MB/s, down to 8 MB


def test_streaming_from_the_wrong_upstream_fails_at_once():
    clock = Clock()
    exc = fails(waiter(Standby(clock), clock, mode="streaming", target_lsn=None, upstream_host="10.0.0.12", upstream_port=5433), "upstream")
    assert "host 10.0.0.11 (expected 10.0.0.12)" in exc.message and "port 5432 (expected 5433)" in exc.message


def test_streaming_not_streaming_stalls_with_a_hint():
    clock = Clock()
    standby = Standby(clock, receiver_status=None, received_tli=None)
    exc = fails(waiter(standby, clock, mode="streaming", target_lsn=None, stall_timeout=5), "stalled")
    assert "WAL receiver is not streaming (no WAL receiver)" in exc.message


# --- check mode -----------------------------------------------------------------------------------


def test_check_mode_looks_once_and_changes_nothing():
    clock = Clock()
    standby = Standby(clock, replay=0x6000100, replay_paused=True)
    result = waiter(standby, clock, restartpoint=True, resume_paused=True, check_mode=True).wait()
    assert result["reached"] is False and result["observations"] == 1 and clock.sleeps == []
    assert CHECKPOINT_SQL not in standby.statements and RESUME_SQL not in standby.statements
    assert result["replay_lsn"] == "0/6000100" and result["redo_lsn"] == "0/3000028"


def test_check_mode_still_fails_fast():
    clock = Clock()
    fails(waiter(Standby(clock, in_recovery=False), clock, check_mode=True), "promoted")


def test_check_mode_on_a_copy_that_refuses_connections():
    clock = Clock()
    result = waiter(Restoring(clock), clock, mode="consistent", target_lsn=None, check_mode=True).wait()
    assert result["accepting_connections"] is False and result["reached"] is False and result["replay_lsn"] is None


# --- errors around the loop ---------------------------------------------------------------------


def test_lost_connection_fails_with_the_position_so_far():
    clock = Clock()
    standby = Standby(clock, replay=0x4000000, rate=1 << 20, receive=0x6000000)
    standby.events[103.0] = lambda s: setattr(s, "observe_error", PgBackupError("server closed the connection unexpectedly", connection_lost=True))
    exc = fails(waiter(standby, clock), "connection_lost")
    assert "last replayed 0/4200000" in exc.message


def test_missing_privilege_says_what_to_grant():
    clock = Clock()
    standby = Standby(clock)
    standby.observe_error = PgBackupError("permission denied for function pg_control_system", sqlstate="42501")
    exc = fails(waiter(standby, clock), "privilege")
    assert "pg_monitor" in exc.message


def test_other_query_errors_pass_through():
    clock = Clock()
    standby = Standby(clock)
    standby.observe_error = PgBackupError("query failed: something else", sqlstate="XX000")
    with pytest.raises(PgBackupError, match="something else"):
        waiter(standby, clock).wait()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"target_lsn": None}, "needs target_lsn"),
        ({"target_lsn": "5000028"}, "not a valid LSN"),
        ({"mode": "consistent", "restartpoint": True}, "restartpoint=true only goes with mode=target_lsn"),
        ({"mode": "target_lsn", "upstream_host": "x"}, "only go with mode=streaming"),
        ({"mode": "sideways"}, "is not one of"),
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"stall_timeout": -1}, "stall_timeout must be a positive number"),
        ({"poll_interval": True}, "poll_interval must be a positive number"),
        ({"max_lag_bytes": -1}, "max_lag_bytes must be"),
        ({"expect_timeline": 0}, "expect_timeline must be"),
    ],
)
def test_arguments_are_checked(kw, message):
    clock = Clock()
    with pytest.raises(PgBackupError, match=message):
        waiter(Standby(clock), clock, **kw)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0 s"), (2.5, "2.5 s"), (45, "45 s"), (60, "1 min"), (90, "1 min 30 s"), (3600, "1 h"), (5400, "1 h 30 min"), (-3, "0 s")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_observation_of_a_primary_has_no_replay_position():
    obs = Observation.from_row({"in_recovery": False, "replay_lsn": None, "replay_paused": None, "system_identifier": "12", "checkpoint_timeline": 1})
    assert obs.replay_lsn is None and obs.replay_paused is False and obs.system_identifier == 12 and obs.newest_timeline == 1


# --- ServerQuery ----------------------------------------------------------------------------------


class _Cursor:
    def __init__(self, conn):
        self.conn = conn
        self.description = [("one",)]
        self.query = None

    def execute(self, sql, params=None):
        if self.conn.broken:
            self.conn.closed = 2
            raise RuntimeError("server closed the connection unexpectedly")
        self.query = sql.encode()

    def fetchall(self):
        return [(1,)]

    def close(self):
        pass


class _Conn:
    def __init__(self):
        self.closed = 0
        self.broken = False
        self.server_version = 160004
        self.autocommit = False

    def cursor(self):
        return _Cursor(self)

    def close(self):
        self.closed = 1


def test_server_query_reconnects_after_a_refusal_and_records_each_statement_once():
    attempts: list = []
    conns: list = []

    def connect_function(**kwargs):
        attempts.append(kwargs)
        if len(attempts) == 1:
            raise RuntimeError("FATAL:  the database system is starting up")
        conns.append(_Conn())
        return conns[-1]

    query = ServerQuery({"login_host": "db1", "login_password": "pw"}, application_name="t", connect_function=connect_function)
    with pytest.raises(PgBackupError) as caught:
        query("SELECT 1")
    assert caught.value.details["connect_failed"] is True and not_yet_accepting(caught.value)
    assert query("SELECT 1") == [{"one": 1}] and query("SELECT  1") == [{"one": 1}]
    assert query.queries == ["SELECT 1"] and len(attempts) == 2
    conns[0].broken = True
    with pytest.raises(PgBackupError) as caught:
        query("SELECT 2")
    assert caught.value.details["connection_lost"] is True and query.session is None
    query.close()


class _Conflict(RuntimeError):
    pgcode = "40001"


def _conflicting_connection(cancels: int, on_connect: int = 0):
    """A connect_function whose first ``on_connect`` connections are refused with a recovery conflict, then whose
    statements are cancelled ``cancels`` times with one, as a hot standby replaying old WAL does."""
    state = {"connects": 0, "cancels": cancels, "executed": []}

    class Cursor(_Cursor):
        def execute(self, sql, params=None):
            state["executed"].append(sql)
            if state["cancels"] > 0:
                state["cancels"] -= 1
                raise _Conflict("ERROR:  canceling statement due to conflict with recovery")
            super().execute(sql, params)

    class Conn(_Conn):
        def cursor(self):
            return Cursor(self)

    def connect_function(**kwargs):
        state["connects"] += 1
        if state["connects"] <= on_connect:
            raise _Conflict("FATAL:  canceling statement due to conflict with recovery")
        return Conn()

    return connect_function, state


def test_server_query_runs_a_statement_a_recovery_conflict_cancelled_again():
    connect_function, state = _conflicting_connection(cancels=3, on_connect=2)
    query = ServerQuery({"login_host": "db1"}, application_name="t", connect_function=connect_function)
    query.conflict_pause = 0
    assert query("SELECT pg_catalog.pg_wal_replay_resume()") == [{"one": 1}]
    assert state["connects"] == 3 and len(state["executed"]) == 4


def test_server_query_gives_up_on_endless_recovery_conflicts_and_says_what_to_do():
    connect_function, state = _conflicting_connection(cancels=10**6)
    query = ServerQuery({"login_host": "db1"}, application_name="t", connect_function=connect_function)
    query.conflict_pause = 0
    with pytest.raises(PgBackupError) as caught:
        query("SELECT 1")
    assert caught.value.details["sqlstate"] == "40001" and len(state["executed"]) == CONFLICT_ATTEMPTS
    assert f"{CONFLICT_ATTEMPTS} times in a row" in caught.value.message and "hot_standby_feedback = on" in caught.value.message


def test_server_query_does_not_repeat_other_errors():
    class Failing(RuntimeError):
        pgcode = "42501"

    executed = []

    class Cursor(_Cursor):
        def execute(self, sql, params=None):
            executed.append(sql)
            raise Failing("ERROR:  permission denied for function pg_wal_replay_resume")

    class Conn(_Conn):
        def cursor(self):
            return Cursor(self)

    query = ServerQuery({"login_host": "db1"}, application_name="t", connect_function=lambda **kwargs: Conn())
    with pytest.raises(PgBackupError) as caught:
        query("SELECT pg_catalog.pg_wal_replay_resume()")
    assert caught.value.details["sqlstate"] == "42501" and len(executed) == 1
