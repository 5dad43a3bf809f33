"""Waiting for a condition with a deadline, retrying a query a standby cancels by a recovery conflict, and the query
that counts keeper sessions."""

from __future__ import annotations

import time

import psycopg2
import pytest
from psycopg2 import errors as pg_errors


def wait_for(predicate, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"{what} did not happen within {timeout}s")


KEEPERS = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgbackup.lowlevel keeper %'"


def recovery_conflict(exc: Exception) -> bool:
    """A statement, or a new connection's own start-up queries, cancelled by a recovery conflict on the standby: a
    SerializationFailure once connected, an OperationalError ("FATAL: canceling statement due to conflict with
    recovery") when the conflict lands while the connection starts."""
    return isinstance(exc, pg_errors.SerializationFailure) or (isinstance(exc, psycopg2.OperationalError) and "conflict with recovery" in str(exc))


def despite_conflicts(call, attempts: int = 40):
    """``call()``, again while a recovery conflict cancels it: a standby replaying a load's cleanup records under a
    short max_standby_streaming_delay (or catching up after an apply delay) cancels queries, even a new session's
    catalog reads at connection start."""
    for attempt in range(attempts):
        try:
            return call()
        except psycopg2.Error as exc:
            if attempt == attempts - 1 or not recovery_conflict(exc):
                raise
            time.sleep(0.5)
    return None
