"""A job's private data directory laid out as AWX lays it out, and ansible-runner run over it (docs/awx.md).

AWX (awx/main/tasks/jobs.py, docs/collections.md) gives each job a directory with project/ (the SCM checkout),
requirements_collections/ (what the project update installed from project/collections/requirements.yml with
``ansible-galaxy collection install -r ... -p``), inventory/hosts (an executable script printing the inventory as
JSON), env/extravars (job template extra vars plus a custom credential's extra_vars injectors), env/envvars,
env/settings and env/ssh_key (a machine credential's key). The collection reaches the job only as the tarball the
project references: nothing here points at this checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from .harness.pgbins import ROOT

VENV_BIN = ROOT / ".venv" / "bin"
COLLECTION = "pgbackup.lowlevel"


def build_collection(out_dir: Path) -> Path:
    """The collection's release tarball, built from this checkout as `ansible-galaxy collection build` makes it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = [str(VENV_BIN / "ansible-galaxy"), "collection", "build", "--force", "--output-path", str(out_dir), str(ROOT)]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, env=_clean_env())
    tarballs = sorted(out_dir.glob("pgbackup-lowlevel-*.tar.gz"))
    assert run.returncode == 0 and len(tarballs) == 1, (
        f"ansible-galaxy collection build gave rc {run.returncode} and {tarballs}, expected rc 0 and one tarball; "
        f"fix galaxy.yml / build_ignore:\n{run.stdout[-2000:]}{run.stderr[-2000:]}"
    )
    return tarballs[0]


def _clean_env() -> dict[str, str]:
    """The process environment without ANSIBLE_* and PG* (a developer's ANSIBLE_COLLECTIONS_PATH must not leak in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "ANSIBLE_"))}
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def _write_private(path: Path, text: str) -> None:
    """A file made 0600 before anything is written to it (AWX writes env/ and credentials this way)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text)


class PrivateDataDir:
    """One AWX job's private data directory under ``root``; ``run(playbook)`` runs it with ansible-runner."""

    def __init__(self, root: Path, tarball: Path, inventory: dict[str, Any], extravars: dict[str, Any]) -> None:
        self.root = root
        self.project = root / "project"
        self.collections = root / "requirements_collections"
        self._project(tarball)
        self._install_requirements()
        self._inventory(inventory)
        _write_private(root / "env" / "extravars", yaml.safe_dump(extravars))
        # AWX passes the job's environment (credential env injectors, AWX_ANSIBLE_COLLECTIONS_PATHS...) as envvars;
        # the collections path is the project update's directory only, never a checkout.
        envvars = {
            "ANSIBLE_COLLECTIONS_PATH": str(self.collections),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_DEPRECATION_WARNINGS": "False",
            "ANSIBLE_LOCALHOST_WARNING": "False",
        }
        _write_private(root / "env" / "envvars", yaml.safe_dump(envvars))
        # AWX's settings: no idle/job timeout from runner itself, events kept in artifacts (job_events/).
        _write_private(root / "env" / "settings", yaml.safe_dump({"idle_timeout": 0, "job_timeout": 600, "pexpect_timeout": 5}))

    def _project(self, tarball: Path) -> None:
        """A user's project: the playbooks as they are in playbooks/, and collections/requirements.yml naming the tarball."""
        (self.project / "collections").mkdir(parents=True)
        for playbook in sorted((ROOT / "playbooks").glob("*.yml")):
            shutil.copy2(playbook, self.project / playbook.name)
        requirements = {"collections": [{"name": str(tarball), "type": "file"}]}
        (self.project / "collections" / "requirements.yml").write_text(yaml.safe_dump(requirements))

    def _install_requirements(self) -> None:
        """What AWX's project update does (awx/playbooks/project_update.yml): galaxy install -r into requirements_collections."""
        argv = [
            str(VENV_BIN / "ansible-galaxy"),
            "collection",
            "install",
            "-r",
            str(self.project / "collections" / "requirements.yml"),
            "-p",
            str(self.collections),
        ]
        run = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, env=_clean_env(), cwd=self.project)
        installed = self.collections / "ansible_collections" / "pgbackup" / "lowlevel" / "MANIFEST.json"
        assert run.returncode == 0 and installed.is_file(), (
            f"ansible-galaxy collection install -r gave rc {run.returncode}, {installed} exists: {installed.is_file()}; "
            f"expected the tarball installed there:\n{run.stdout[-2000:]}{run.stderr[-2000:]}"
        )

    def _inventory(self, inventory: dict[str, Any]) -> None:
        """inventory/hosts as AWX writes it: an executable script answering --list with the inventory as JSON."""
        script = (
            f"#!{sys.executable}\n"
            "# Written like AWX's inventory script: --list prints every group and host with its variables.\n"
            "import sys\n"
            f"INVENTORY = {json.dumps(inventory)!r}\n"
            "print(INVENTORY if '--list' in sys.argv else '{}')\n"
        )
        path = self.root / "inventory" / "hosts"
        path.parent.mkdir(parents=True)
        path.write_text(script)
        path.chmod(0o700)

    def run(self, playbook: str, ident: str, timeout: int = 600) -> Job:
        """`ansible-runner run` as AWX's worker runs the job: the project dir, inventory/ and env/ of this directory."""
        argv = [str(VENV_BIN / "ansible-runner"), "run", str(self.root), "-p", playbook, "--ident", ident]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=_clean_env(), cwd="/")
        return Job(self.root / "artifacts" / ident, proc)


def yaml_to_script_inventory(path: Path) -> dict[str, Any]:
    """The YAML inventory the test bed writes, as the JSON shape of an inventory script (_meta.hostvars)."""
    document = yaml.safe_load(path.read_text())["all"]
    hostvars = {name: values or {} for name, values in document.get("hosts", {}).items()}
    result: dict[str, Any] = {"_meta": {"hostvars": hostvars}, "all": {"vars": document.get("vars", {}), "hosts": sorted(hostvars)}}
    result["all"]["children"] = sorted(document.get("children", {}))
    for group, body in document.get("children", {}).items():
        result[group] = {"hosts": sorted((body or {}).get("hosts") or {})}
    return result


class Job:
    """What ansible-runner left in artifacts/<ident>: status, rc, stdout and the job events (AWX stores these)."""

    def __init__(self, artifacts: Path, proc: subprocess.CompletedProcess) -> None:
        self.artifacts = artifacts
        self.proc = proc
        self.status = _read(artifacts / "status")
        self.rc = _read(artifacts / "rc")
        self.stdout = _read(artifacts / "stdout")
        events_dir = artifacts / "job_events"
        paths = sorted(events_dir.glob("*.json"), key=lambda p: int(p.name.split("-", 1)[0])) if events_dir.is_dir() else []
        self.events = [json.loads(p.read_text()) for p in paths]

    def ok_events(self, task: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == "runner_on_ok" and e.get("event_data", {}).get("task") == task]

    def explain(self) -> str:
        return f"status {self.status!r}, rc {self.rc!r}; stdout tail:\n{self.stdout[-5000:]}\nrunner stderr:\n{self.proc.stderr[-2000:]}"


def _read(path: Path) -> str:
    return path.read_text().strip() if path.is_file() else ""


def files_containing(root: Path, secret: str) -> list[Path]:
    """Every regular file under ``root`` whose bytes contain ``secret``."""
    needle = secret.encode()
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes())
