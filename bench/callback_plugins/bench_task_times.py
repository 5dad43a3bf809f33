"""Ansible callback for `make bench`: the wall time of every task of a playbook run, appended as JSON lines to the file
named by BENCH_TASK_TIMES (nothing without it). Not shipped with the collection; bench/run_bench.py enables it."""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: bench_task_times
type: aggregate
short_description: task wall times for bench/run_bench.py
description: Appends {"task", "seconds"} per task to the file named by BENCH_TASK_TIMES.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_task_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.path = os.environ.get("BENCH_TASK_TIMES")
        self.current = None

    def _close(self) -> None:
        if self.current and self.path:
            name, started = self.current
            with open(self.path, "a") as out:
                out.write(json.dumps({"task": name, "seconds": round(time.monotonic() - started, 3)}) + "\n")
        self.current = None

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        self._close()
        self.current = (task.get_name(), time.monotonic())

    def v2_playbook_on_handler_task_start(self, task) -> None:
        self.v2_playbook_on_task_start(task, False)

    def v2_playbook_on_stats(self, stats) -> None:
        self._close()
