"""standby_backup refuses bad inputs before its first change (issue 12, items 4-6), in --check and in a real run alike.

One ansible-playbook run holds every refusal: the play's hosts are aliases of db3 (the destination host, where the copy
runs and pulls from the standby on db2 over ssh), each with one planted fault in its host vars. The run is made twice,
with --check and for real; afterwards the primary and the standby show no backup, no slot, no checkpoint requested, and
every destination is as it was. A host with no fault (check mode only) is the negative control: the same checks let it
through to its plan. One major is enough (the checks are the role's, the same on every version)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import copy_state
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_engine import Source, check_destination, delta_removals, execute, make_plan
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError

from .conftest import role_majors
from .harness.pgbins import ROOT, selected_majors
from .support.roles import SSH_OPTIONS, backup_vars
from .support.waiting import KEEPERS

pytestmark = [pytest.mark.integration, pytest.mark.netns]


def _checkpoints_requested(cluster) -> int:
    if cluster.major >= 17:
        row = cluster.sql("SELECT num_requested + restartpoints_req FROM pg_stat_checkpointer")
    else:
        row = cluster.sql("SELECT checkpoints_req FROM pg_stat_bgwriter")
    return int(row[0][0])


def _listing(path) -> dict:
    out = {}
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, path)] = (st.st_size, st.st_mtime_ns)
    return out


def _results(output: str) -> dict:
    """host -> (task name, result) of each host's failure, from the default callback's output (JSON results)."""
    failures = {}
    task = None
    for line in output.splitlines():
        m = re.match(r"^TASK \[(.*)\] \*+$", line)
        if m:
            task = m.group(1)
            continue
        m = re.match(r"^fatal: \[([^\]]+)\]: FAILED! => (\{.*\})$", line)
        if m:
            failures[m.group(1)] = (task, json.loads(m.group(2)))
    return failures


def _run(env, inventory, check: bool) -> tuple:
    argv = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(inventory), str(ROOT / "playbooks" / "standby_backup.yml")]
    argv += ["-e", "standby_backup_hosts=refusals", "-f", "12"] + (["--check"] if check else [])
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def test_standby_backup_refuses_before_any_change(netns_testbed, netns_pair, ansible_env, tmp_path, pg_major):
    ours = [m for m in selected_majors() if m in role_majors()]
    if pg_major != max(ours):
        pytest.skip("the refusals are the role's, the same on every version: the newest selected major shows them")
    bed = netns_testbed
    primary, standby = netns_pair
    db3 = bed.host("db3")
    key = str(bed.run_dir / "ssh" / "id_ed25519")
    state_dir = tmp_path / "keepers"

    def dest(name):
        return bed.scratch_dir(f"refuse-{pg_major}-{name}")

    busy = dest("busy")
    (busy / "somebody_elses_file").write_text("keep me")
    foreign = dest("foreign")
    (foreign / "somebody_elses_file").write_text("keep me")
    small = dest("small")
    # in the mount namespace of db3's sshd (ip netns exec gave it its own), where the play's tasks on db3 run
    in_db3 = ["nsenter", "-t", str(db3.sshd_pid), "-m", "--"]
    subprocess.run([*in_db3, "mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(small)], check=True)
    # an earlier copy of this cluster (its pg_control) with a file the source does not have: delta may bring it in line
    earlier = dest("earlier")
    (earlier / "global").mkdir()
    shutil.copy(standby.datadir / "global" / "pg_control", earlier / "global" / "pg_control")
    (earlier / "stale_file").write_text("old")
    shutil.chown(earlier, "postgres", "postgres")
    known_hosts = tmp_path / "known_hosts_empty"
    known_hosts.write_text("")
    strict = ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}", "-o", "LogLevel=ERROR"]
    stranger = tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)

    cases = {
        "bad_id_rf": {"standby_backup_id": "--rf", "standby_backup_dest": str(dest("id-rf"))},
        "bad_id_dotdot": {"standby_backup_id": "../x", "standby_backup_dest": str(dest("id-dotdot"))},
        "bad_id_space": {"standby_backup_id": "a b", "standby_backup_dest": str(dest("id-space"))},
        # bytes that are not UTF-8, as a shell passes them on: Python's surrogate escapes (made by Jinja here)
        "bad_utf8": {"standby_backup_dest": "{{ '" + str(tmp_path) + "/dest-' ~ ('%c' | format(56575)) }}"},
        "not_empty": {"standby_backup_dest": str(busy)},
        "delta_foreign": {"standby_backup_dest": str(foreign), "standby_backup_delta": True},
        "too_small": {"standby_backup_dest": str(small)},
        "unknown_host_key": {"standby_backup_dest": str(dest("hostkey")), "standby_backup_ssh_options": strict},
        "key_refused": {"standby_backup_dest": str(dest("key")), "standby_backup_ssh_key": str(stranger), "standby_backup_ssh_options": SSH_OPTIONS},
        # the source under its name and, differently, under its deprecated alias; and under neither (null is unset)
        "source_twice": {"standby_backup_dest": str(dest("twice")), "standby_backup_standby_host": "192.0.2.1"},
        "source_missing": {"standby_backup_dest": str(dest("missing")), "standby_backup_source_host": None},
    }
    expected = {
        "bad_id_rf": ("Check the backup's id and paths", ['standby_backup_id "--rf" is not a valid backup id']),
        "bad_id_dotdot": ("Check the backup's id and paths", ['standby_backup_id "../x" is not a valid backup id']),
        "bad_id_space": ("Check the backup's id and paths", ['standby_backup_id "a b" is not a valid backup id']),
        "bad_utf8": ("Check the backup's id and paths", ["standby_backup_dest is not valid UTF-8", "/dest-?"]),
        "not_empty": ("Refuse the destination", [f"{busy} is not empty", "set standby_backup_delta: true"]),
        "delta_foreign": ("Refuse the destination", [f"standby_backup_delta refuses the destination {foreign}", "no global/pg_control", "somebody_elses_file"]),
        "too_small": ("Refuse the destination", [f"too little free space at the destination {small}"]),
        "unknown_host_key": (
            "Refuse ssh that does not work between the hosts",
            [
                f"ssh from refusals_unknown_host_key (where the copy runs) to postgres@{standby.node.address} port 22",
                "Host key verification failed",
                "known_hosts",
            ],
        ),
        "key_refused": (
            "Refuse ssh that does not work between the hosts",
            [f"to postgres@{standby.node.address} port 22", "Permission denied", "authorized_keys", "standby_backup_ssh_key"],
        ),
        "source_twice": (
            "Refuse the source named twice, by a name and its deprecated alias, with different values",
            [f'standby_backup_source_host="{standby.host}" and its deprecated alias standby_backup_standby_host="192.0.2.1"'],
        ),
        "source_missing": ("Refuse the source without its host or data directory", ["standby_backup_source_host is not set"]),
    }
    untouched = [busy, foreign, small, earlier]
    inventory = bed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    data = yaml.safe_load(inventory.read_text())
    common = backup_vars(db3.name, primary, standby, tmp_path / "unused", state_dir)
    common.pop("standby_backup_hosts")
    common.pop("standby_backup_dest")
    common.update(standby_backup_source_ssh_host=standby.node.address, standby_backup_ssh_key=key, standby_backup_ssh_options=SSH_OPTIONS)
    hosts = {f"refusals_{name}": {"ansible_host": db3.address, **case} for name, case in cases.items()}
    hosts["refusals_control"] = {"ansible_host": db3.address, "standby_backup_dest": str(earlier), "standby_backup_delta": True}
    data["all"].setdefault("children", {})["refusals"] = {"hosts": hosts, "vars": common}
    inventory.write_text(yaml.safe_dump(data))

    before = {d: _listing(d) for d in untouched}
    checkpoints = (_checkpoints_requested(primary), _checkpoints_requested(standby))
    try:
        for check in (True, False):
            if not check:
                del hosts["refusals_control"]  # for real it would take a backup
                inventory.write_text(yaml.safe_dump(data))
            code, output = _run(ansible_env, inventory, check)
            assert code != 0, output[-4000:]
            failures = _results(output)
            for name, (task, needles) in expected.items():
                host = f"refusals_{name}"
                assert host in failures, f"{host} was not refused (check={check}):\n{output[-6000:]}"
                got_task, result = failures[host]
                msg = result.get("msg", "")
                assert got_task.endswith(task), (host, got_task, msg)
                for needle in needles:
                    assert needle in msg, (host, needle, msg)
                assert "Nothing was started (no slot, no backup)" in msg, (host, msg)
                assert "marked incomplete" not in msg and "surrogates not allowed" not in msg, (host, msg)
            if check:
                assert "refusals_control" not in failures, failures.get("refusals_control")
                plan = re.search(r'"delta_would_remove": (\[[^\]]*\])', output)
                assert plan and "stale_file" in json.loads(plan.group(1)), output[-4000:]
            assert primary.password not in output
        assert primary.sql(KEEPERS) == [(0,)] and standby.sql(KEEPERS) == [(0,)], "no backup was started"
        assert primary.sql("SELECT count(*) FROM pg_replication_slots") == [(0,)]
        assert standby.sql("SELECT count(*) FROM pg_replication_slots") == [(0,)], "no slot was made"
        assert (_checkpoints_requested(primary), _checkpoints_requested(standby)) == checkpoints, "no checkpoint was requested"
        assert not state_dir.exists() or not any(state_dir.iterdir()), "no keeper was started"
        assert {d: _listing(d) for d in untouched} == before, "every destination is as it was"
        assert (earlier / "stale_file").exists(), "check mode lists what delta would remove, removes nothing"
    finally:
        subprocess.run([*in_db3, "umount", str(small)], check=False)


def test_replica_clone_refuses_before_it_stops_the_replica_it_would_reseed(netns_testbed, netns_pair, ansible_env, tmp_path, pg_major):
    """replica_clone_force stops a replica to re-seed it: standby_backup's refusals (here: the key is refused over ssh) and
    the refusal of a data directory of another cluster (a delta copy would not take it) come before that stop, with
    --check and for real, and the server there goes on running."""
    ours = [m for m in selected_majors() if m in role_majors()]
    if pg_major != max(ours):
        pytest.skip("the refusals are the role's, the same on every version: the newest selected major shows them")
    bed = netns_testbed
    primary, _standby = netns_pair
    db3 = bed.host("db3")
    replica = primary.make_standby(f"pg{pg_major}-refuse-replica", host=db3)
    other = bed.new_primary(pg_major, host=db3, name=f"pg{pg_major}-refuse-other")
    stranger = tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    inventory = bed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    cases = [
        (replica, str(stranger), "Refuse ssh that does not work between the hosts", ["Permission denied", "replica_clone_ssh_key"]),
        (other, str(bed.run_dir / "ssh" / "id_ed25519"), "Refuse to re-seed a data directory of another cluster", ["is a data directory of another cluster"]),
    ]
    try:
        for server, key, expected_task, needles in cases:
            extra = {
                "replica_clone_hosts": db3.name,
                "replica_clone_upstream_host": primary.host,
                "replica_clone_upstream_port": primary.port,
                "replica_clone_upstream_data_dir": str(primary.datadir),
                "replica_clone_login_password": primary.password,
                "replica_clone_upstream_ssh_host": primary.node.address,
                "replica_clone_ssh_key": key,
                "replica_clone_ssh_options": SSH_OPTIONS,
                "replica_clone_data_dir": str(server.datadir),
                "replica_clone_state_dir": str(tmp_path / "keepers"),
                "replica_clone_pg_bindir": str(server.pg.bindir),
                "replica_clone_address": server.host,
                "replica_clone_port": server.port,
                "replica_clone_force": True,
            }
            extra_file = tmp_path / "extra-clone.json"
            extra_file.write_text(json.dumps(extra))
            extra_file.chmod(0o600)
            pid = server.postmaster_pid()
            for check in (True, False):
                argv = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(inventory), str(ROOT / "playbooks" / "clone_replica.yml")]
                argv += ["-e", f"@{extra_file}"] + (["--check"] if check else [])
                proc = subprocess.run(argv, env=ansible_env, capture_output=True, text=True, timeout=600, check=False)
                output = proc.stdout + proc.stderr
                assert proc.returncode != 0, output[-4000:]
                task, result = _results(output)[db3.name]
                assert task.endswith(expected_task), (task, result)
                for needle in needles:
                    assert needle in result["msg"], (needle, result["msg"])
                assert "Stop the replica before re-seeding it" not in output.split(expected_task)[0], "refused before the stop"
                assert server.is_running() and server.postmaster_pid() == pid, f"{server.name} was not stopped (check={check})"
        replica.wait_streaming()
        assert primary.sql("SELECT count(*) FROM pg_replication_slots") == [(0,)] and primary.sql(KEEPERS) == [(0,)]
    finally:
        replica.stop("immediate")
        other.stop("immediate")


def test_delta_on_real_data_directories(primary_standby, testbed, pg_major):
    """delta on a real standby's data directory: an earlier copy of it is brought in line (the stale file listed first,
    then removed); a copy of another real cluster (its own initdb, its own system identifier) is refused untouched."""
    if pg_major != max(selected_majors()):
        pytest.skip("delta's identity check reads pg_control's first 8 bytes, the same on every version: the newest major shows it")
    _primary, standby = primary_standby
    src = Source(str(standby.datadir))
    sysid = int(standby.sql("SELECT system_identifier FROM pg_control_system()")[0][0])

    earlier = testbed.scratch_dir(f"delta-earlier-{pg_major}")
    plan = make_plan(src, str(earlier), {}, [])
    assert plan.system_identifier == sysid
    execute(src, plan, str(earlier), owner="postgres")
    (earlier / "base" / "stale_file").write_text("old")
    plan = make_plan(src, str(earlier), {}, [])
    check_destination(src, plan, str(earlier), True)
    assert "base/stale_file" in delta_removals(plan, str(earlier)) and (earlier / "base" / "stale_file").exists()
    res = execute(src, plan, str(earlier), delta=True, owner="postgres")
    assert "base/stale_file" in res["removed"] and not (earlier / "base" / "stale_file").exists()
    assert copy_state.copy_identity(str(earlier)) == (sysid, copy_state.PENDING_CONTROL)

    other = testbed.new_primary(pg_major, name=f"pg{pg_major}-delta-other")
    try:
        other_sysid = int(other.sql("SELECT system_identifier FROM pg_control_system()")[0][0])
        foreign = testbed.scratch_dir(f"delta-foreign-{pg_major}")
        execute(Source(str(other.datadir)), make_plan(Source(str(other.datadir)), str(foreign), {}, []), str(foreign), owner="postgres")
        before = _listing(foreign)
        plan = make_plan(src, str(foreign), {}, [])
        with pytest.raises(PgBackupError) as info:
            check_destination(src, plan, str(foreign), True)
        msg = info.value.message
        assert f"its {copy_state.PENDING_CONTROL} has system identifier {other_sysid}, the source's is {sysid}" in msg, msg
        assert _listing(foreign) == before, "refused before anything was removed"
    finally:
        other.stop("immediate")
