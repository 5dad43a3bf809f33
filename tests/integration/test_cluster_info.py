"""cluster_info against real PostgreSQL 13-18: through ansible-playbook on a primary, its standby and a stopped copy;
a wrong password over TCP at -vvv; two namespace hosts over ssh; and the SQL layer as a role without privileges."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.cluster_facts import data_dir_facts, server_facts
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.connection import connect, run_query
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import parse_lsn

from .support.playbooks import one_major, run_playbook

pytestmark = pytest.mark.integration

# Characters that break naive DSN building, shell quoting or URL encoding; no Jinja delimiters (Ansible would template them).
WRONG_PASSWORD = "Wr0ng pa$$ 'sq' \"dq\" back\\slash =;&@:/?#"


def _results(result_dir: Path, host: str) -> dict:
    data = json.loads((result_dir / f"{host}.json").read_text())
    servers = {r["item"]["name"]: r for r in data["servers"]}
    data_dirs = {r["item"]["data_dir"]: r for r in data["data_dirs"]}
    for result in [*servers.values(), *data_dirs.values()]:
        assert result.get("failed") is not True, result
        assert result["changed"] is False
    return {"servers": servers, "data_dirs": data_dirs}


def _truth(cluster) -> dict:
    """What the cluster says about itself in SQL, for comparison."""
    (row,) = cluster.sql(
        "SELECT s.system_identifier, pg_is_in_recovery(), c.timeline_id, current_setting('server_version_num')::int "
        "FROM pg_control_system() s, pg_control_checkpoint() c"
    )
    return {"system_identifier": row[0], "in_recovery": row[1], "checkpoint_timeline": row[2], "server_version_num": row[3]}


def _stopped_copy(standby, dest: Path) -> Path:
    """A cold copy of the standby's data directory (stopped cleanly, copied, started again)."""
    standby.stop()
    try:
        shutil.copytree(standby.datadir, dest, symlinks=True)
    finally:
        standby.start()
    standby.wait_streaming()
    return dest


def test_primary_standby_and_stopped_copy_through_ansible(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    primary, standby = primary_standby
    copy = _stopped_copy(standby, tmp_path / "copy")
    # A postmaster.pid copied along with the files names a live postgres process, but not one serving the copy.
    shutil.copy(primary.datadir / "postmaster.pid", copy / "postmaster.pid")
    inventory = testbed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    result_dir = tmp_path / "results"
    result_dir.mkdir()
    extra = {"cluster_names": [primary.name, standby.name], "extra_data_dirs": [{"data_dir": str(copy)}], "result_dir": str(result_dir)}
    proc = run_playbook(ansible_env, inventory, "cluster_info.yml", extra, "--limit", primary.node.name)
    results = _results(result_dir, primary.node.name)
    primary_truth, standby_truth = _truth(primary), _truth(standby)
    # the insert position: the write position (pg_current_wal_lsn) may still be behind an insert LSN read before it
    primary_lsn_after = parse_lsn(primary.sql("SELECT pg_current_wal_insert_lsn()::text")[0][0])
    sysid = primary_truth["system_identifier"]
    assert standby_truth["system_identifier"] == sysid

    # --- the primary ---
    p = results["servers"][primary.name]["cluster"]
    assert p["source"] == "server" and p["major"] == pg_major and p["server_version_num"] == primary_truth["server_version_num"]
    assert p["system_identifier"] == sysid
    assert p["in_recovery"] is False
    assert parse_lsn(p["current_lsn"]) <= parse_lsn(p["insert_lsn"]) <= primary_lsn_after
    assert parse_lsn(p["flush_lsn"]) <= primary_lsn_after
    assert p["receive_lsn"] is None and p["replay_lsn"] is None and p["replay_paused"] is None and p["wal_receiver"] is None
    assert p["timeline"] == p["insert_timeline"] == p["checkpoint_timeline"] == primary_truth["checkpoint_timeline"] == 1
    assert p["wal_segment_size"] == 16 << 20 and p["block_size"] == 8192
    assert p["data_checksums"] is True and p["full_page_writes"] is True and p["wal_level"] == "replica"
    assert p["archive_mode"] == "on" and str(primary.archive_dir) in p["archive_command"] and p["hot_standby"] is True
    assert p["archive_library"] == ("" if pg_major >= 15 else None)
    assert os.path.realpath(p["data_directory"]) == os.path.realpath(primary.datadir)
    assert [t["name"] for t in p["tablespaces"]] == ["pg_default", "pg_global"] and all(t["location"] is None for t in p["tablespaces"])
    (replica,) = p["replication"]
    assert replica["application_name"] == standby.name and replica["state"] == "streaming" and parse_lsn(replica["replay_lsn"]) <= primary_lsn_after
    assert p["role"]["superuser"] is True
    assert results["servers"][primary.name]["queries"], "the statements run are returned"

    # --- the standby ---
    s = results["servers"][standby.name]["cluster"]
    assert s["system_identifier"] == sysid and s["in_recovery"] is True
    assert s["current_lsn"] is None and s["insert_timeline"] is None
    assert parse_lsn(s["replay_lsn"]) <= primary_lsn_after and parse_lsn(s["receive_lsn"]) <= primary_lsn_after
    assert s["replay_paused"] is False
    assert s["replay_pause_state"] == ("not paused" if pg_major >= 14 else None)
    received_tli = standby.sql("SELECT received_tli FROM pg_stat_wal_receiver")[0][0]
    assert s["timeline"] == s["received_timeline"] == received_tli == 1
    assert s["wal_receiver"]["status"] == "streaming" and s["wal_receiver"]["sender_port"] == primary.port
    assert "password=" not in s["wal_receiver"]["conninfo"] or "password=********" in s["wal_receiver"]["conninfo"]
    assert s["recovery"]["min_recovery_end_timeline"] == 1 and s["replication"] == []
    assert os.path.realpath(s["data_directory"]) == os.path.realpath(standby.datadir)

    # --- data directories: the live primary's, and the stopped copy with a stale postmaster.pid ---
    live = results["data_dirs"][str(primary.datadir)]
    assert live["cluster"]["source"] == "data_dir" and live["cluster"]["system_identifier"] == sysid
    assert live["cluster"]["running"] is True and live["cluster"]["postmaster"]["pid"] == primary.postmaster_pid()
    # Ansible shows module warnings (and drops them from registered loop results).
    assert f"a postmaster (PID {primary.postmaster_pid()}) runs on {primary.datadir}: pg_control on disk shows its last checkpoint" in proc.stdout + proc.stderr
    c = results["data_dirs"][str(copy)]["cluster"]
    assert c["system_identifier"] == sysid and c["major"] == pg_major and c["pg_version"] == str(pg_major)
    assert c["running"] is False and c["postmaster"]["pid_file"] is True and c["postmaster"]["pid"] == primary.postmaster_pid()
    assert c["state"] == "shut down in recovery" and c["standby_signal"] is True and c["backup_label"] is None
    assert c["timeline"] == 1 and c["wal_segment_size"] == 16 << 20 and c["data_checksums"] is True
    assert parse_lsn(c["control"]["checkpoint_lsn"]) <= primary_lsn_after
    assert "mock_authentication_nonce" not in c["control"]
    assert results["data_dirs"][str(copy)]["queries"] == []


@pytest.mark.parametrize("pg_major", [one_major()], indirect=True, ids=lambda m: f"pg{m}")
def test_wrong_password_fails_clearly_and_never_shows_it(primary_standby, testbed, ansible_env, tmp_path):
    primary = primary_standby[0]
    inventory = testbed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    proc = run_playbook(
        ansible_env,
        inventory,
        "cluster_info_bad_password.yml",
        {"cluster_name": primary.name, "wrong_password": WRONG_PASSWORD},
        "--limit",
        primary.node.name,
        "-vvv",
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]  # both failures were expected (ignore_errors + assert)
    for secret in (WRONG_PASSWORD, testbed.password):
        assert secret not in output
        assert json.dumps(secret)[1:-1] not in output  # as a JSON string
        assert yaml.safe_dump(secret).strip() not in output
    assert f"cannot connect to PostgreSQL at host={primary.host}, port={primary.port}, user=postgres, database=postgres" in output
    assert "password authentication failed" in output and "check login_password" in output
    assert "connect_params may not set 'password': use login_password" in output


@pytest.mark.netns
def test_two_namespace_hosts_over_ssh(netns_testbed, ansible_env, tmp_path):
    bed = netns_testbed
    major = one_major()
    primary = bed.new_primary(major, host=bed.host("db1"), name=f"pg{major}-ci-primary")
    standby = bed.new_standby(primary, host=bed.host("db2"), name=f"pg{major}-ci-standby")
    try:
        inventory = bed.write_inventory(tmp_path / "inventory" / "hosts.yml")
        result_dir = tmp_path / "results"
        result_dir.mkdir()
        extra = {"cluster_names": [primary.name, standby.name], "result_dir": str(result_dir)}
        # --check: cluster_info runs in check mode like any read-only module.
        run_playbook(ansible_env, inventory, "cluster_info.yml", extra, "--limit", "db1,db2", "--check")
        sysid = _truth(primary)["system_identifier"]
        on_db1, on_db2 = _results(result_dir, "db1"), _results(result_dir, "db2")
        assert set(on_db1["servers"]) == {primary.name} and set(on_db2["servers"]) == {standby.name}
        p, s = on_db1["servers"][primary.name]["cluster"], on_db2["servers"][standby.name]["cluster"]
        assert p["system_identifier"] == s["system_identifier"] == sysid and p["major"] == s["major"] == major
        assert p["in_recovery"] is False and s["in_recovery"] is True
        assert s["wal_receiver"]["sender_host"] == primary.host and s["wal_receiver"]["status"] == "streaming"
        (replica,) = p["replication"]
        assert replica["client_addr"] == standby.host and replica["application_name"] == standby.name
        assert parse_lsn(s["replay_lsn"]) <= parse_lsn(primary.sql("SELECT pg_current_wal_lsn()::text")[0][0])
        for results, cluster in ((on_db1, primary), (on_db2, standby)):
            facts = results["data_dirs"][str(cluster.datadir)]["cluster"]
            assert facts["system_identifier"] == sysid and facts["running"] is True
    finally:
        for cluster in (standby, primary):
            bed.discard(cluster)


def test_a_role_without_privileges_gets_warnings_not_failures(primary_standby):
    primary, standby = primary_standby
    primary.sql("DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ci_plain') THEN CREATE ROLE ci_plain LOGIN; END IF; END$$")
    standby.wait_replayed()
    sysid = _truth(primary)["system_identifier"]
    for cluster in (primary, standby):
        params = {"login_unix_socket": str(cluster.socket_dir), "login_port": cluster.port, "login_user": "ci_plain", "login_db": "postgres"}
        warnings: list[str] = []
        with connect(params, application_name="pgbackup.lowlevel/test") as session:
            ((timeout, name),) = (
                tuple(r.values()) for r in run_query(session, "SELECT current_setting('statement_timeout') AS t, current_setting('application_name') AS a")
            )
            facts = server_facts(session, warn=warnings.append)
        assert (timeout, name) == ("0", "pgbackup.lowlevel/test")
        assert facts["system_identifier"] == sysid and facts["role"]["superuser"] is False and facts["role"]["pg_monitor"] is False
        assert facts["data_directory"] is None and facts["wal_segment_size"] == 16 << 20
        assert any("data_directory" in w and "pg_read_all_settings" in w for w in warnings), warnings
        if cluster is primary:
            assert facts["replication"][0]["state"] is None and any("pg_stat_replication" in w for w in warnings)
        else:
            assert facts["wal_receiver"]["status"] is None and any("pg_stat_wal_receiver" in w for w in warnings)
            assert facts["timeline"] == 1, "without the WAL receiver's row the timeline still comes from pg_control"


@pytest.mark.parametrize("pg_major", [one_major()], indirect=True, ids=lambda m: f"pg{m}")
def test_timeline_right_after_a_promotion(primary_standby, testbed, pg_major):
    primary = primary_standby[0]
    promoted = testbed.new_standby(primary, name=f"pg{pg_major}-ci-promoted")
    try:
        promoted.sql("SELECT pg_promote(true, 60)")
        params = {"login_unix_socket": str(promoted.socket_dir), "login_port": promoted.port, "login_user": "postgres", "login_db": "postgres"}
        with connect(params, application_name="pgbackup.lowlevel/test") as session:
            facts = server_facts(session, warn=pytest.fail)
        # WAL goes to timeline 2 at once; the checkpoint in pg_control may still be the one from before the promotion.
        assert facts["in_recovery"] is False and facts["timeline"] == facts["insert_timeline"] == 2
        assert facts["current_wal_file"].startswith("00000002") and facts["checkpoint_timeline"] in (1, 2)
        promoted.stop()
        stopped = data_dir_facts(str(promoted.datadir), warn=pytest.fail)
        assert stopped["timeline"] == 2 and stopped["state"] == "shut down" and stopped["running"] is False
        assert stopped["system_identifier"] == _truth(primary)["system_identifier"]
    finally:
        testbed.discard(promoted)  # out of later inventories, and off the disk
