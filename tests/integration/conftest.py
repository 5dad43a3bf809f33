"""Fixtures over the test bed (tests/integration/harness, API in its README). Integration tests need root."""

from __future__ import annotations

import os
import signal

import pytest

from .harness import ledger
from .harness.pgbins import ROOT, selected_majors
from .harness.testbed import RUN_BASE, Testbed

NOT_ROOT = "integration tests run PostgreSQL as the postgres user (runuser) and create network namespaces: run them as root"


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session", autouse=True)
def _teardown_on_sigterm():
    """A CI timeout sends SIGTERM, which would skip finalizers and atexit; as an interrupt, pytest tears down."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    yield
    if signal.getsignal(signal.SIGTERM) is _interrupt:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="session", autouse=True)
def _reap_stale_test_beds():
    """Tear down test beds of earlier runs that were killed before their own teardown (their pytest is gone)."""
    if os.geteuid() == 0 and RUN_BASE.is_dir():
        ledger.reap(RUN_BASE)


# The test beds of this session, and the caches of clusters made once per major (cleared when the major's tests end).
_BEDS: list[Testbed] = []
_PER_MAJOR_CACHES: list[dict] = []


def per_major_cache() -> dict:
    """A dict major -> clusters that a fixture makes once per major; emptied when pytest moves on to the next major."""
    cache: dict = {}
    _PER_MAJOR_CACHES.append(cache)
    return cache


# Session scope makes pytest run all tests of one major together, so each major's clusters are made once. When the
# major's tests are done, its clusters are discarded: disk and memory hold one major's servers, not six.
@pytest.fixture(scope="session", params=selected_majors(), ids=lambda m: f"pg{m}")
def pg_major(request) -> int:
    yield request.param
    for cache in _PER_MAJOR_CACHES:
        cache.pop(request.param, None)
    for bed in _BEDS:
        for cluster in [c for c in bed.clusters if c.major == request.param]:
            bed.discard(cluster)


def _group(item) -> str:
    """The xdist group of a test: its major, and apart from it the same major's tests on the namespace hosts (another
    fixture, other clusters: they can run beside the local ones on another worker); "hosts" for tests without a major.
    Tests of one group share that group's clusters; tests of two groups never share a cluster (a fault planted in one
    must not land in another's run: the stream tests' sender freezing did, while the groups were not applied)."""
    major = getattr(getattr(item, "callspec", None), "params", {}).get("pg_major")
    if not major:
        return "hosts"
    # Only where the role tests run: elsewhere they skip, and a group of its own would build namespace hosts for nothing.
    return f"pg{major}-netns" if "netns_testbed" in item.fixturenames and major in role_majors() else f"pg{major}"


def _group_rank(group: str) -> tuple:
    """The order the groups are handed out in: the oldest and newest majors first (they run the role and fault tests,
    most of the suite's time), then their namespace-host tests, then the tests without a major, then the other majors."""
    majors = selected_majors()
    major = int(group[2:].split("-")[0]) if group.startswith("pg") else None
    if major in (majors[0], majors[-1]):
        return (1 if group.endswith("-netns") else 0, majors.index(major))
    return (2, -1) if group == "hosts" else (3, majors.index(major))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the marker into the group (a plain one ran after it)
def pytest_collection_modifyitems(items):
    """Under pytest-xdist (`make integration` runs its workers with --dist loadgroup), all tests of one group go to one
    worker, so that worker makes that group's clusters once."""
    for item in items:
        item.stash[_GROUP] = _group(item)
        item.add_marker(pytest.mark.xdist_group(item.stash[_GROUP]))
        _skip_outside_its_majors(item)


def _skip_outside_its_majors(item) -> None:
    """``pytest.mark.majors(13, 15, 18)`` in a test module's pytestmark or on one test (a comment says why those): its tests run
    on those majors only (as spot_check, when PG_VERSIONS selects none of them: the newest selected), skipped at
    collection so no cluster is made for them. ROLE_MAJORS=all runs them on every major. For module tests whose
    version-dependent parts the listed majors cover; test_backup_procedure, test_wal_collect and others run everywhere."""
    mark = item.get_closest_marker("majors")
    major = getattr(getattr(item, "callspec", None), "params", {}).get("pg_major")
    if mark is None or major is None or os.environ.get("ROLE_MAJORS") == "all":
        return
    wanted = set(mark.args) & set(selected_majors()) or {selected_majors()[-1]}
    if major not in wanted:
        item.add_marker(pytest.mark.skip(reason=f"{item.module.__name__.rsplit('.', 1)[-1]} runs on {sorted(wanted)} only (its pytestmark says why)"))


@pytest.hookimpl(tryfirst=True)  # after pytest's reordering by the session-scoped pg_major, before xdist sends the list
def pytest_collection_finish(session):
    """Hand the heavy groups out first. xdist hands groups out in collection order (the Makefile turns off its reordering by
    test count: every major has the same count, skipped tests included), so the slowest start at once on separate workers."""
    session.items.sort(key=lambda item: _group_rank(item.stash[_GROUP]))  # stable: each group keeps its own order


_GROUP = pytest.StashKey[str]()
_MADE_BY_TEST = pytest.StashKey[list]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Note what the test body itself made (clusters, scratch directories), for pytest_runtest_teardown to remove."""
    clusters_before = {id(c) for bed in _BEDS for c in bed.clusters}
    scratch_before = {id(bed): bed.scratch_entries() for bed in _BEDS}
    yield
    made = []
    for bed in _BEDS:
        new_clusters = [c for c in bed.clusters if id(c) not in clusters_before]
        made.append((bed, new_clusters, bed.scratch_entries() - scratch_before.get(id(bed), set())))
    item.stash[_MADE_BY_TEST] = made


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    """After the test's own fixtures are torn down, remove what its body made: the suite's disk use stays bounded.

    A full run makes hundreds of clusters and copies; kept to the end they filled CI's disk in the fourth major.
    """
    yield
    for bed, clusters, scratch in item.stash.get(_MADE_BY_TEST, []):
        if bed._torn_down:
            continue
        for cluster in clusters:
            bed.discard(cluster)
        bed.remove_scratch(scratch)


def _bed(*args, **kwargs):
    _need_root()
    bed = Testbed(*args, **kwargs)
    _BEDS.append(bed)
    yield bed
    _BEDS.remove(bed)
    bed.teardown()


@pytest.fixture(scope="session")
def testbed():
    """Local mode: every 'host' is the controller, clusters on 127.0.0.1 with distinct ports."""
    yield from _bed("local")


@pytest.fixture(scope="session")
def netns_testbed():
    """Three hosts (db1, db2, db3) as network namespaces on a bridge, each with its own address and sshd."""
    yield from _bed("netns", hosts=("db1", "db2", "db3"))


@pytest.fixture(scope="session")
def _pairs(testbed):
    return per_major_cache()


def _healthy(primary, standby) -> bool:
    try:
        if not (primary.is_running() and standby.is_running()):
            return False
        if primary.sql("SELECT pg_is_in_recovery()") != [(False,)] or standby.sql("SELECT pg_is_in_recovery()") != [(True,)]:
            return False
        standby.wait_streaming(timeout=30)
        return True
    except Exception:  # noqa: BLE001 - any failure means "make a new pair", never a test error here
        return False


@pytest.fixture
def primary_standby(testbed, pg_major, _pairs):
    """(primary, standby) of ``pg_major`` in local mode, streaming; made once per major and shared by the tests.

    A test may stop, restart or load them; afterwards they are started again, and a pair a test broke for good
    (promoted standby, stopped replication) is replaced by a new one for the next test.
    """
    if pg_major not in _pairs:
        generation = sum(1 for path in testbed.run_dir.glob(f"pg{pg_major}-primary*"))
        suffix = f"-{generation + 1}" if generation else ""
        primary = testbed.new_primary(pg_major, name=f"pg{pg_major}-primary{suffix}")
        _pairs[pg_major] = (primary, primary.make_standby(f"pg{pg_major}-standby{suffix}"))
    primary, standby = _pairs[pg_major]
    yield primary, standby
    for cluster in (primary, standby):
        if not cluster.is_running():
            try:
                cluster.start()
            except RuntimeError:
                pass
    if not _healthy(primary, standby):
        del _pairs[pg_major]
        for cluster in (standby, primary):
            testbed.discard(cluster)


@pytest.fixture(scope="session")
def _lone_primaries(testbed):
    return per_major_cache()


@pytest.fixture
def lone_primary(testbed, pg_major, _lone_primaries):
    """A primary of ``pg_major`` without a standby, made once per major, for the tests that create tablespaces.

    A standby on the same host replays CREATE TABLESPACE into the same directory: the two servers share the files, and
    once the primary dropped them the standby's restartpoints fail for good (its pending fsync of a file it did not
    remove). On the shared pair that broke every later test of the major (seen on 18).
    """
    primary = _lone_primaries.get(pg_major)
    if primary is None or not primary.is_running():
        primary = _lone_primaries[pg_major] = testbed.new_primary(pg_major, name=f"pg{pg_major}-lone-primary{len(testbed.clusters)}")
    return primary


@pytest.fixture(scope="session")
def _netns_pairs():
    return per_major_cache()


@pytest.fixture
def netns_pair(netns_testbed, pg_major, _netns_pairs):
    """A primary on db1 and its standby on db2, made once per major (the test bed stops them at its teardown)."""
    if pg_major not in role_majors():
        pytest.skip(f"role tests across hosts run on ROLE_MAJORS={os.environ.get('ROLE_MAJORS')!r} only")
    if pg_major not in _netns_pairs:
        bed = netns_testbed
        primary = bed.new_primary(pg_major, host=bed.host("db1"), name=f"pg{pg_major}-sb-primary")
        _netns_pairs[pg_major] = (primary, primary.make_standby(f"pg{pg_major}-sb-standby", host=bed.host("db2")))
    primary, standby = _netns_pairs[pg_major]
    standby.wait_streaming()
    return primary, standby


def spot_check(pg_major: int, preferred: tuple, why: str) -> None:
    """Skip unless ``pg_major`` is one of ``preferred`` (or, when PG_VERSIONS selects none of them, the newest selected).

    For tests of code that does not depend on the server version beyond what the preferred majors cover; ``why``
    says which behaviour they cover, for the skip reason.
    """
    wanted = set(preferred) & set(selected_majors()) or {selected_majors()[-1]}
    if pg_major not in wanted:
        pytest.skip(f"{why}: runs on {sorted(wanted)} only")


def role_majors() -> set:
    """Majors the role tests across namespace hosts run on: the oldest and newest selected, or those ROLE_MAJORS names.

    The roles drive modules whose integration tests run on every major; end to end, one role run takes a minute or
    two per major, so by default the oldest and newest show the roles work (ROLE_MAJORS=all runs every major).
    """
    wanted = os.environ.get("ROLE_MAJORS") or "ends"
    majors = selected_majors()
    if wanted == "all":
        return set(majors)
    if wanted == "ends":
        return {majors[0], majors[-1]}
    return {int(m) for m in wanted.replace(",", " ").split()}


def one_end(pg_major: int, end: str) -> None:
    """Skip unless ``pg_major`` is the ``end`` ("oldest" or "newest") of role_majors(): the case runs once.

    For fault cases, and for variants of a role test (a clone from the primary or from the standby): they meet our
    procedure (the keeper, the copy, the wait, the contract's checks), not a version's SQL, and the cases alternate
    between the ends so both backup APIs (pg_start_backup and pg_backup_start) meet them. The main role tests still run
    on both ends, and the modules on every major. ROLE_MAJORS set (all, or a list) runs every case on each of those.
    """
    majors = sorted(role_majors())
    wanted = set(majors) if os.environ.get("ROLE_MAJORS") else {majors[0] if end == "oldest" else majors[-1]}
    if pg_major not in wanted:
        pytest.skip(f"this case runs on {sorted(wanted)} (the cases alternate between the oldest and newest; ROLE_MAJORS=all runs each on every major)")


@pytest.fixture(scope="session")
def ansible_env() -> dict:
    """Environment for ansible-playbook runs against this checkout of the collection."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "ANSIBLE_"))}
    venv_bin = str(ROOT / ".venv" / "bin")
    env.update(
        PATH=f"{venv_bin}:{env.get('PATH', '/usr/bin:/bin')}",
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / "build" / "collections"),  # tests/conftest.py links the checkout there
        ANSIBLE_HOST_KEY_CHECKING="False",
        ANSIBLE_RETRY_FILES_ENABLED="False",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_STDOUT_CALLBACK="default",
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
        ANSIBLE_DEPRECATION_WARNINGS="False",
        ANSIBLE_LOCALHOST_WARNING="False",
        ANSIBLE_SSH_RETRIES="2",
        ANSIBLE_PIPELINING="True",  # one ssh round trip per task instead of four: the netns tests run many tasks
    )
    return env
