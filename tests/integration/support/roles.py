"""The roles' variables for the test bed, and runs of the shipped playbooks (standby_backup, restore, clone,
check mode) as the role tests make them."""

from __future__ import annotations

import json
import subprocess

from ..harness.pgbins import ROOT
from .playbooks import ANSIBLE_PLAYBOOK
from .waiting import KEEPERS, wait_for

SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]


def backup_vars(hosts: str, primary, standby, dest, state_dir, **overrides) -> dict:
    """Extra vars of playbooks/standby_backup.yml for a backup of ``standby`` (coordinated with ``primary``) into ``dest``."""
    return {
        "standby_backup_hosts": hosts,
        "standby_backup_primary_host": primary.host,
        "standby_backup_primary_port": primary.port,
        "standby_backup_source_host": standby.host,
        "standby_backup_source_port": standby.port,
        "standby_backup_login_password": primary.password,
        "standby_backup_source_data_dir": str(standby.datadir),
        "standby_backup_dest": str(dest),
        "standby_backup_state_dir": str(state_dir),
        **overrides,
    }


def start_playbook(env: dict, inventory, extra: dict) -> subprocess.Popen:
    extra_file = inventory.parent / "extra-standby-backup.json"
    extra_file.write_text(json.dumps(extra))
    extra_file.chmod(0o600)
    argv = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(inventory), str(ROOT / "playbooks" / "standby_backup.yml"), "-e", f"@{extra_file}"]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def role_run(env, testbed, tmp_path, primary, standby, dest, **overrides):
    inventory = testbed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    extra = backup_vars(testbed.hosts[0].name, primary, standby, dest, tmp_path / "keepers", standby_backup_progress_interval=2, **overrides)
    proc = start_playbook(env, inventory, extra)
    stdout, stderr = proc.communicate(timeout=600)
    return proc.returncode, stdout + stderr


def clean_after_failure(primary, standby, tmp_path) -> None:
    keepers = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgbackup.lowlevel keeper %'"
    wait_for(lambda: primary.sql(keepers) == [(0,)] and standby.sql(keepers) == [(0,)], "every keeper's session ending")
    assert standby.sql("SELECT count(*) FROM pg_replication_slots") == [(0,)], "the slot is dropped whatever happened"
    for started in (tmp_path / "keepers").glob("*/started.json"):
        assert (started.parent / "aborted.json").exists() or (started.parent / "stopped.json").exists()


def check_mode_vars(primary, standby, dest, state_dir, **overrides) -> dict:
    return backup_vars("all", primary, standby, dest, state_dir, **overrides)


def check_run(env, testbed, tmp_path, playbook: str, extra: dict) -> subprocess.CompletedProcess:
    inventory = testbed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    extra_file = tmp_path / "extra.json"
    extra_file.write_text(json.dumps(extra))
    extra_file.chmod(0o600)
    argv = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "--check", "-i", str(inventory), str(ROOT / "playbooks" / playbook), "-e", f"@{extra_file}"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)


def nothing_happened(primary, standby, state_dir) -> None:
    for server in (primary, standby):
        assert server.sql("SELECT count(*) FROM pg_replication_slots") == [(0,)], "no slot was made"
        assert server.sql(KEEPERS) == [(0,)], "no backup session was opened"
    assert not state_dir.exists() or not any(state_dir.iterdir()), "no keeper was started"


def run_restore_playbook(env, testbed, tmp_path, playbook: str, extra: dict, *options: str) -> subprocess.CompletedProcess:
    inventory = testbed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    extra_file = tmp_path / f"extra-{playbook}.json"
    extra_file.write_text(json.dumps(extra))
    extra_file.chmod(0o600)
    argv = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), *options, "-i", str(inventory), str(ROOT / "playbooks" / playbook), "-e", f"@{extra_file}"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)


def restore_vars(testbed, backup, restored, primary, **overrides) -> dict:
    options = (
        f"-c listen_addresses={restored.host} -c port={restored.port} -c unix_socket_directories={restored.socket_dir} "
        f"-c cluster_name={restored.name} -c archive_mode=off"  # never into the primary's archive
    )
    return {
        "backup_restore_hosts": testbed.hosts[0].name,
        "backup_restore_source_dir": str(backup),
        "backup_restore_data_dir": str(restored.datadir),
        "backup_restore_pg_bindir": str(restored.pg.bindir),
        "backup_restore_pg_ctl_options": ["-o", options],
        "backup_restore_log_file": str(restored.log_file),
        "backup_restore_socket_dir": str(restored.socket_dir),
        "backup_restore_port": restored.port,
        "backup_restore_login_password": primary.password,
        "backup_restore_timeout": 120,
        **overrides,
    }


def run_to_end(env: dict, inventory, name: str, extra: dict, *args: str) -> tuple:
    proc = start_shipped_playbook(env, inventory, name, extra, *args)
    output, _err = proc.communicate(timeout=600)
    return proc.returncode, output


def start_shipped_playbook(env: dict, inventory, name: str, extra: dict, *args: str, **kwargs) -> subprocess.Popen:
    extra_file = inventory.parent / f"extra-{name}.json"
    extra_file.write_text(json.dumps(extra))
    extra_file.chmod(0o600)
    argv = [ANSIBLE_PLAYBOOK, "-i", str(inventory), str(ROOT / "playbooks" / name), "-e", f"@{extra_file}", *args]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def run_clone(env, inventory, extra: dict) -> subprocess.CompletedProcess:
    extra_file = inventory.parent / "extra-clone.json"
    extra_file.write_text(json.dumps(extra))
    extra_file.chmod(0o600)
    argv = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(inventory), str(ROOT / "playbooks" / "clone_replica.yml"), "-e", f"@{extra_file}"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900, check=False)
