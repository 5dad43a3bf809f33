"""The goals of replay_wait at their edges: one byte short of each bound is not reached, the bound itself is (each
comparison was broken on purpose once to see these fail)."""

from __future__ import annotations

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import format_lsn
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.replay_goals import (
    CHECKPOINT_SQL,
    GOALS,
    ConsistentGoal,
    RestartpointGoal,
    StreamingGoal,
    TargetLsnGoal,
)
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.replay_waiter import Observation, WaitOptions

from .test_replay_waiter import CKPT_RECORD, TARGET, TARGET_TEXT, Clock, Standby, fails, waiter

MAX_LAG = 1 << 20


def goal(**options):
    return GOALS[options.get("mode", "target_lsn")].build(WaitOptions(**options))


def test_the_table_picks_the_goal_of_each_mode():
    assert isinstance(goal(target_lsn=TARGET_TEXT), TargetLsnGoal) and not isinstance(goal(target_lsn=TARGET_TEXT), RestartpointGoal)
    assert isinstance(goal(target_lsn=TARGET_TEXT, restartpoint=True), RestartpointGoal)
    assert isinstance(goal(mode="consistent"), ConsistentGoal) and isinstance(goal(mode="streaming"), StreamingGoal)


# --- target_lsn -------------------------------------------------------------------------------------


def test_target_lsn_replay_one_byte_before_the_target_is_not_reached():
    assert goal(target_lsn=TARGET_TEXT).reached(Observation(replay_lsn=TARGET - 1)) is False


def test_target_lsn_replay_at_the_target_is_reached():
    assert goal(target_lsn=TARGET_TEXT).reached(Observation(replay_lsn=TARGET)) is True


def test_target_lsn_without_a_replay_position_is_not_reached():
    assert goal(target_lsn=TARGET_TEXT).reached(Observation(replay_lsn=None)) is False


# --- restartpoint ----------------------------------------------------------------------------------


def test_restartpoint_with_its_redo_one_byte_before_the_target_does_not_pass():
    obs = Observation(replay_lsn=CKPT_RECORD + 0x100, checkpoint_lsn=TARGET, redo_lsn=TARGET - 1)
    assert goal(target_lsn=TARGET_TEXT, restartpoint=True).reached(obs) is False


def test_restartpoint_with_its_redo_at_the_target_passes():
    obs = Observation(replay_lsn=CKPT_RECORD + 0x100, checkpoint_lsn=CKPT_RECORD, redo_lsn=TARGET)
    assert goal(target_lsn=TARGET_TEXT, restartpoint=True).reached(obs) is True


def test_restartpoint_redo_at_the_target_needs_replay_at_the_target_too():
    obs = Observation(replay_lsn=TARGET - 1, checkpoint_lsn=CKPT_RECORD, redo_lsn=TARGET)
    assert goal(target_lsn=TARGET_TEXT, restartpoint=True).reached(obs) is False


def test_restartpoint_whose_checkpoint_lands_one_byte_before_the_target_does_not_pass():
    # The look after CHECKPOINT: the only restartpoint the standby can make has its redo point one byte short.
    clock = Clock()
    standby = Standby(clock, replay=CKPT_RECORD + 0x100)
    standby.records = [(TARGET, TARGET - 1)]  # its record at the target: not a checkpoint ahead of the target
    exc = fails(waiter(standby, clock, restartpoint=True, stall_timeout=5), "stalled")
    assert f"redo point is still {format_lsn(TARGET - 1)}" in exc.message and standby.statements.count(CHECKPOINT_SQL) == 1


def test_restartpoint_whose_checkpoint_lands_at_the_target_passes_at_that_look():
    clock = Clock()
    standby = Standby(clock, replay=CKPT_RECORD + 0x100)
    result = waiter(standby, clock, restartpoint=True).wait()
    assert result["reached"] and result["redo_lsn"] == TARGET_TEXT and result["observations"] == 2 and clock.sleeps == []


# --- streaming -------------------------------------------------------------------------------------


def streaming_at(lag: int) -> Observation:
    return Observation(receiver_status="streaming", replay_lsn=TARGET, latest_end_lsn=TARGET + lag, flushed_lsn=TARGET + lag)


def test_streaming_lag_equal_to_max_lag_bytes_passes():
    assert goal(mode="streaming", max_lag_bytes=MAX_LAG).reached(streaming_at(MAX_LAG)) is True


def test_streaming_lag_one_byte_over_max_lag_bytes_does_not_pass():
    assert goal(mode="streaming", max_lag_bytes=MAX_LAG).reached(streaming_at(MAX_LAG + 1)) is False


def test_streaming_lag_bound_through_the_wait():
    clock = Clock()
    standby = Standby(clock, replay=TARGET, receive=TARGET + MAX_LAG)
    assert waiter(standby, clock, mode="streaming", target_lsn=None, max_lag_bytes=MAX_LAG).wait()["lag_bytes"] == MAX_LAG
    standby = Standby(clock, replay=TARGET, receive=TARGET + MAX_LAG + 1)
    fails(waiter(standby, clock, mode="streaming", target_lsn=None, max_lag_bytes=MAX_LAG, stall_timeout=5), "stalled")


def test_streaming_within_the_lag_but_not_streaming_does_not_pass():
    obs = streaming_at(0)
    obs.receiver_status = "startup"
    assert goal(mode="streaming", max_lag_bytes=MAX_LAG).reached(obs) is False


# --- consistent ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pending",
    [{"backup_end_lsn": 0x7000000}, {"end_of_backup_record_required": True}, {"backup_start_lsn": 0x5000028}],
    ids=["backup_end_lsn", "end_of_backup_record_required", "backup_start_lsn"],
)
def test_consistent_with_the_end_of_the_backup_still_pending_is_not_reached(pending):
    row = {"backup_start_lsn": "0/0", "backup_end_lsn": "0/0", "end_of_backup_record_required": False, "replay_lsn": "0/7000100"}
    obs = Observation.from_row({**row, **{name: format_lsn(v) if isinstance(v, int) and not isinstance(v, bool) else v for name, v in pending.items()}})
    assert goal(mode="consistent").reached(obs) is False
    assert goal(mode="consistent").reached(Observation.from_row(row)) is True
