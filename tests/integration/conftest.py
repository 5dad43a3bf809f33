"""Fixtures over the test bed (tests/integration/harness). Integration tests need root (namespaces, runuser)."""

from __future__ import annotations

import os

import pytest

from .harness.pgbins import ROOT, selected_majors
from .harness.testbed import Testbed


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("integration tests run PostgreSQL as the postgres user and create network namespaces: run them as root")


@pytest.fixture(params=selected_majors(), ids=lambda m: f"pg{m}")
def pg_major(request) -> int:
    return request.param


@pytest.fixture(scope="session")
def testbed():
    """Local mode: every 'host' is the controller, clusters on 127.0.0.1 with distinct ports."""
    _need_root()
    bed = Testbed("local")
    yield bed
    bed.teardown()


@pytest.fixture(scope="session")
def netns_testbed():
    """Three hosts as network namespaces on a bridge, each with its own address and sshd."""
    _need_root()
    bed = Testbed("netns", hosts=("db1", "db2", "db3"))
    yield bed
    bed.teardown()


@pytest.fixture(scope="session")
def _pairs():
    return {}


@pytest.fixture
def primary_standby(testbed, pg_major, _pairs):
    """A primary and a streaming standby of ``pg_major`` (local mode), made once and shared by the tests."""
    if pg_major not in _pairs:
        primary = testbed.new_primary(pg_major)
        _pairs[pg_major] = (primary, testbed.new_standby(primary))
    primary, standby = _pairs[pg_major]
    for cluster in (primary, standby):
        if not cluster.is_running():
            cluster.start()
    return primary, standby


@pytest.fixture(scope="session")
def ansible_env(testbed) -> dict:
    """Environment for ansible-playbook runs against this checkout of the collection."""
    env = dict(os.environ)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / "build" / "collections"),
        ANSIBLE_HOST_KEY_CHECKING="False",
        ANSIBLE_RETRY_FILES_ENABLED="False",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCAL_TEMP=str(testbed.run_dir / "ansible-local"),
        ANSIBLE_STDOUT_CALLBACK="default",
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
    )
    for key in ("PGPASSWORD", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE"):
        env.pop(key, None)
    return env
