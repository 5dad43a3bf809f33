"""The copy's start gate (copy_gate): it opens only with this run's token, a cancel with the token ends the wait, and
nothing an earlier run left there opens or ends it."""

from __future__ import annotations

import os
import stat
import threading
import time

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import copy_gate
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError

TOKEN = "a" * 16 + "B3"
OTHER = "z" * 24


def _later(seconds, action):
    t = threading.Timer(seconds, action)
    t.start()
    return t


def test_the_gate_opens_with_this_runs_token_and_leaves_nothing(tmp_path):
    gate = str(tmp_path / ".copy.gate")
    seen = {}

    def open_it():
        seen["waiting"] = copy_gate.waiting_copy(gate)
        copy_gate.open_gate(gate, TOKEN)

    _later(0.3, open_it)
    waited = copy_gate.wait_for_gate(gate, TOKEN, 10, "/dest")
    assert 0.25 <= waited < 5
    assert seen["waiting"] == (os.getpid(), TOKEN), "while it waits the copy says so, with its pid and token"
    assert os.listdir(tmp_path) == [], "the gate and the waiting note are gone once it opened"


def test_a_gate_left_open_by_an_earlier_run_does_not_open_this_one(tmp_path):
    gate = str(tmp_path / ".copy.gate")
    copy_gate.open_gate(gate, OTHER)
    clock = iter([0.0, 0.0, 0.5, 1.0, 2.5])
    with pytest.raises(PgBackupError, match="waited 2 s for its go-ahead") as err:
        copy_gate.wait_for_gate(gate, TOKEN, 2, "/dest", clock=lambda: next(clock), sleep=lambda s: None)
    assert "nothing was written there" in err.value.message
    assert not os.path.exists(gate + copy_gate.WAITING_SUFFIX)


def test_a_cancel_with_the_token_ends_the_wait_and_one_without_it_does_not(tmp_path):
    gate = str(tmp_path / ".copy.gate")
    copy_gate.cancel_gate(gate, OTHER)  # an earlier run's cancel: ignored

    _later(0.3, lambda: copy_gate.cancel_gate(gate, TOKEN))
    started = time.monotonic()
    with pytest.raises(PgBackupError, match="cancelled before it began") as err:
        copy_gate.wait_for_gate(gate, TOKEN, 10, "/dest")
    assert 0.25 <= time.monotonic() - started < 5, "ended by this run's cancel (at 0.3 s), not by the earlier one's"
    assert err.value.details["cancelled"] is True
    assert os.listdir(tmp_path) == []


def test_gate_files_are_private_and_tokens_checked(tmp_path):
    gate = str(tmp_path / ".copy.gate")
    old = os.umask(0o022)
    try:
        copy_gate.open_gate(gate, TOKEN)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(gate).st_mode) == 0o600
    for bad in ("", "short", "has space in it 0123456789", "x" * 129):
        with pytest.raises(PgBackupError, match="token must be"):
            copy_gate.open_gate(gate, bad)


def test_a_waiting_note_of_a_dead_copy_is_not_a_waiting_copy(tmp_path):
    gate = str(tmp_path / ".copy.gate")
    (tmp_path / ".copy.gate.waiting").write_text(f"{2**22 + 12345} {TOKEN}\n")  # above pid_max: no such process
    assert copy_gate.waiting_copy(gate) is None
    (tmp_path / ".copy.gate.waiting").write_text("garbage\n")
    assert copy_gate.waiting_copy(gate) is None
    assert copy_gate.waiting_copy(str(tmp_path / "none")) is None
