"""standby_backup's names of the source (issue 15): standby_backup_source_* and their deprecated aliases
standby_backup_standby_* (removed in 0.3.0), resolved once in vars/main.yml and checked by tasks/source_names.yml
before anything else. The role's own tasks on localhost, no server: what each combination resolves to, which ones
are refused, and that an alias says it is deprecated. A whole backup through the aliases is in test_standby_backup_role.py."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from .harness.pgbins import ROOT

pytestmark = [pytest.mark.integration]

PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: pgbackup.lowlevel.standby_backup
        tasks_from: source_names
        public: true
    - ansible.builtin.debug:
        msg: "RESOLVED {{ [_standby_backup_source_host, _standby_backup_source_port, _standby_backup_source_data_dir,
          _standby_backup_source_ssh_host] | to_json }}"
"""
BOTH = ("standby_backup_source_host", "standby_backup_source_data_dir")


def _run(ansible_env, tmp_path, given: dict, required=BOTH) -> tuple:
    play = tmp_path / "play.yml"
    play.write_text(PLAY)
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({**given, "_standby_backup_source_required": list(required)}))
    argv = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(play), "-e", f"@{extra}"]
    proc = subprocess.run(argv, env=ansible_env, capture_output=True, text=True, timeout=120, check=False)
    resolved = re.search(r'"msg": "RESOLVED (.*)"$', proc.stdout, re.M)
    return proc.returncode, proc.stdout, json.loads(resolved.group(1).replace('\\"', '"')) if resolved else None


def _deprecations(output: str) -> list:
    return re.findall(r"(standby_backup_standby_\w+) is deprecated and removed in 0\.3\.0: use (standby_backup_source_\w+)", output)


@pytest.mark.parametrize(
    ("given", "resolved", "deprecated"),
    [
        # the new names alone, the defaults of the port and ssh host when neither name is set
        ({"standby_backup_source_host": "db2", "standby_backup_source_data_dir": "/d"}, ["db2", 5432, "/d", ""], []),
        (
            {
                "standby_backup_source_host": "db2",
                "standby_backup_source_port": 5433,
                "standby_backup_source_data_dir": "/d",
                "standby_backup_source_ssh_host": "s",
            },
            ["db2", 5433, "/d", "s"],
            [],
        ),
        # the aliases alone (the port as -e key=value gives it, a string), each one said to be deprecated
        (
            {
                "standby_backup_standby_host": "db2",
                "standby_backup_standby_port": "5433",
                "standby_backup_standby_data_dir": "/d",
                "standby_backup_standby_ssh_host": "s",
            },
            ["db2", 5433, "/d", "s"],
            ["host", "port", "data_dir", "ssh_host"],
        ),
        # a name and its alias with the same value (an int and its string too): taken, the alias still said deprecated
        (
            {
                "standby_backup_source_host": "db2",
                "standby_backup_standby_host": "db2",
                "standby_backup_source_port": 5433,
                "standby_backup_standby_port": "5433",
                "standby_backup_source_data_dir": "/d",
            },
            ["db2", 5433, "/d", ""],
            ["host", "port"],
        ),
    ],
)
def test_the_source_is_resolved_from_its_name_else_its_alias_else_the_default(ansible_env, tmp_path, given, resolved, deprecated):
    code, output, got = _run(ansible_env, tmp_path, given)
    assert code == 0, output[-3000:]
    # the port is compared as the modules get it (an int, or the string Ansible converts)
    assert [*got[:1], int(got[1]), *got[2:]] == resolved, output[-3000:]
    assert _deprecations(output) == [(f"standby_backup_standby_{s}", f"standby_backup_source_{s}") for s in deprecated], output[-3000:]


@pytest.mark.parametrize(
    ("given", "needles"),
    [
        (
            {"standby_backup_source_host": "db2", "standby_backup_standby_host": "db4", "standby_backup_source_data_dir": "/d"},
            ['standby_backup_source_host="db2" and its deprecated alias standby_backup_standby_host="db4"'],
        ),
        # "" is a value (the data directory on this host), not an unset name: it does not give way to the alias
        (
            {
                "standby_backup_source_host": "db2",
                "standby_backup_source_data_dir": "/d",
                "standby_backup_source_ssh_host": "",
                "standby_backup_standby_ssh_host": "s",
            },
            ['standby_backup_source_ssh_host="" and its deprecated alias standby_backup_standby_ssh_host="s"'],
        ),
        (
            {
                "standby_backup_source_host": "db2",
                "standby_backup_source_port": 5432,
                "standby_backup_standby_port": 5433,
                "standby_backup_source_data_dir": "/d",
            },
            ["standby_backup_source_port=5432 and its deprecated alias standby_backup_standby_port=5433"],
        ),
        ({"standby_backup_source_data_dir": "/d"}, ["standby_backup_source_host is not set"]),
        ({}, ["standby_backup_source_host and standby_backup_source_data_dir are not set"]),
    ],
)
def test_the_source_named_twice_differently_or_not_at_all_is_refused(ansible_env, tmp_path, given, needles):
    code, output, got = _run(ansible_env, tmp_path, given)
    assert code != 0 and got is None, output[-3000:]
    for needle in [*needles, "Nothing was started (no slot, no backup)"]:
        assert needle in output, (needle, output[-3000:])
    assert _deprecations(output) == [], "the refusal comes before anything else"


def test_the_abort_entry_point_needs_only_the_host(ansible_env, tmp_path):
    code, output, got = _run(ansible_env, tmp_path, {"standby_backup_source_host": "db2"}, required=["standby_backup_source_host"])
    assert code == 0 and got == ["db2", 5432, None, ""], output[-3000:]
    code, output, got = _run(ansible_env, tmp_path, {}, required=["standby_backup_source_host"])
    assert code != 0 and "standby_backup_source_host is not set" in output and "data_dir" not in output, output[-3000:]
