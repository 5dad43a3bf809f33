"""Waiting for a condition with a deadline, and the query that counts keeper sessions."""

from __future__ import annotations

import time

import pytest


def wait_for(predicate, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"{what} did not happen within {timeout}s")


KEEPERS = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgbackup.lowlevel keeper %'"
