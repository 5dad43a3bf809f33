"""delta takes only an earlier copy of the same cluster (issue 12 item 6), and check mode lists what it would remove."""

from __future__ import annotations

import os
import sys

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import copy_state
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_engine import Source, check_destination, delta_removals, execute, make_plan, ssh_hint
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError

from .test_copy_engine import datadir, write  # noqa: F401  # pylint: disable=unused-import  # datadir is the fixture

SYSID = int.from_bytes(b"cccccccc", sys.byteorder)  # the fixture's pg_control is b"c" * 8192


def _plan(datadir, tmp_path, dest):  # noqa: F811
    src = Source(str(datadir))
    return src, make_plan(src, str(dest), {"16499": str(tmp_path / "ts_dst")}, [])


def test_plan_knows_the_source_system_identifier(datadir, tmp_path):  # noqa: F811
    _src, plan = _plan(datadir, tmp_path, tmp_path / "dst")
    assert plan.system_identifier == SYSID


def test_delta_refuses_a_directory_that_is_no_copy_and_removes_nothing(datadir, tmp_path):  # noqa: F811
    dest = tmp_path / "dst"
    write(dest / "somebody_elses_file", b"keep me")
    src, plan = _plan(datadir, tmp_path, dest)
    with pytest.raises(PgBackupError) as info:
        check_destination(src, plan, str(dest), True)
    msg = info.value.message
    assert "is not a copy of the cluster" in msg and "no global/pg_control" in msg and "somebody_elses_file" in msg, msg
    assert info.value.details["would_remove"] == ["somebody_elses_file"]
    assert (dest / "somebody_elses_file").read_bytes() == b"keep me"
    # negative control: without delta the same destination is refused as not empty, with delta an empty one is taken
    with pytest.raises(PgBackupError, match="not empty"):
        check_destination(src, plan, str(dest), False)
    check_destination(src, plan, str(tmp_path / "empty"), True)


def test_delta_refuses_a_copy_of_another_cluster(datadir, tmp_path):  # noqa: F811
    dest = tmp_path / "dst"
    write(dest / "global" / "pg_control", b"d" * 8192)
    write(dest / "base" / "1" / "1259")
    src, plan = _plan(datadir, tmp_path, dest)
    other = int.from_bytes(b"dddddddd", sys.byteorder)
    with pytest.raises(PgBackupError) as info:
        check_destination(src, plan, str(dest), True)
    assert f"its global/pg_control has system identifier {other}, the source's is {SYSID}" in info.value.message, info.value.message
    assert "base/1/1259" in info.value.details["would_remove"]
    assert (dest / "base" / "1" / "1259").exists()


@pytest.mark.parametrize("evidence", ["global/pg_control", copy_state.PENDING_CONTROL, copy_state.INCOMPLETE_MARKER])
def test_delta_takes_an_earlier_copy_of_the_same_cluster(datadir, tmp_path, evidence):  # noqa: F811
    dest = tmp_path / "dst"
    if evidence == copy_state.INCOMPLETE_MARKER:
        write(dest / evidence, copy_state.marker_text("db2:/x", SYSID, 0).encode())
    else:
        write(dest / evidence, b"c" * 8192)
    write(dest / "stale-file")
    src, plan = _plan(datadir, tmp_path, dest)
    check_destination(src, plan, str(dest), True)
    assert copy_state.copy_identity(str(dest)) == (SYSID, evidence)
    assert "stale-file" in delta_removals(plan, str(dest))
    assert (dest / "stale-file").exists(), "check mode lists, removes nothing"


def test_a_marker_without_system_identifier_names_no_cluster(tmp_path):
    write(tmp_path / copy_state.INCOMPLETE_MARKER, b"standby_backup x failed in: Start the backup\n")
    assert copy_state.copy_identity(str(tmp_path)) == (None, None)
    assert copy_state.system_identifier_of(b"short") is None


def test_the_copy_marker_names_the_source_cluster(datadir, tmp_path, monkeypatch):  # noqa: F811
    """A copy interrupted before pg_control can be resumed with delta: its marker names the cluster."""
    dest = tmp_path / "dst"
    src, plan = _plan(datadir, tmp_path, dest)
    monkeypatch.setattr("ansible_collections.pgbackup.lowlevel.plugins.module_utils.rsync_transport.rsync_argv", lambda *a: ["false"])
    with pytest.raises(PgBackupError, match="rsync failed"):
        execute(src, plan, str(dest), owner=None, delta=True)
    assert not (dest / copy_state.PENDING_CONTROL).exists()
    assert copy_state.copy_identity(str(dest)) == (SYSID, copy_state.INCOMPLETE_MARKER)


def test_delta_keeps_what_is_not_ours_at_a_tablespace_destination(datadir, tmp_path):  # noqa: F811
    dest = tmp_path / "dst"
    src, plan = _plan(datadir, tmp_path, dest)
    execute(src, plan, str(dest), owner=None)
    ts_dst = tmp_path / "ts_dst"
    write(ts_dst / "PG_14_202107181" / "5" / "1", b"pg_upgrade left me")
    write(ts_dst / "README", b"not ours")
    write(ts_dst / "PG_15_202209061" / "5" / "99999", b"stale")
    src, plan = _plan(datadir, tmp_path, dest)
    check_destination(src, plan, str(dest), True)
    would = delta_removals(plan, str(dest))
    assert f"{ts_dst}/PG_15_202209061/5/99999" in would
    assert not any("PG_14" in w or "README" in w for w in would), would
    res = execute(src, plan, str(dest), owner=None, delta=True)
    assert not (ts_dst / "PG_15_202209061" / "5" / "99999").exists() and f"{ts_dst}/PG_15_202209061/5/99999" in res["removed"]
    assert (ts_dst / "README").exists() and (ts_dst / "PG_14_202107181" / "5" / "1").exists()


def test_delta_refuses_a_busy_tablespace_destination_of_an_empty_copy(datadir, tmp_path):  # noqa: F811
    dest = tmp_path / "dst"
    write(tmp_path / "ts_dst" / "other", b"x")
    src, plan = _plan(datadir, tmp_path, dest)
    with pytest.raises(PgBackupError, match="refuses the tablespace destination"):
        check_destination(src, plan, str(dest), True)


def test_ssh_failures_say_what_to_do():
    assert "known_hosts" in ssh_hint("Host key verification failed.", "db2", 22, "postgres")
    assert "authorized_keys" in ssh_hint("postgres@db2: Permission denied (publickey).", "db2", 22, "postgres")
    assert "port 2222" in ssh_hint("ssh: connect to host db2 port 2222: Connection refused", "db2", 2222, None)
    msg = Source("/x", "db2", "postgres", 2222).ssh_failure("Host key verification failed.")
    assert msg.startswith(f"ssh from this host ({os.uname().nodename}) to postgres@db2 port 2222 failed: Host key verification failed.")


def test_remote_source_ssh_failure_is_named(tmp_path):
    """A real ssh to a port nothing listens on: the error names both hosts and the port, not only ssh's text."""
    src = Source(str(tmp_path), "127.0.0.1", "postgres", 1, ssh_options=("-o", "ConnectTimeout=3"))
    with pytest.raises(PgBackupError) as info:
        make_plan(src, str(tmp_path / "dst"), {}, [])
    assert "ssh from this host" in info.value.message and "postgres@127.0.0.1 port 1" in info.value.message, info.value.message
