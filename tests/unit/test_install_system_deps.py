"""scripts/install-system-deps.sh on both kinds of machine: one that ships /usr/sbin/policy-rc.d (most Debian container
images) and one without it. The script runs for real, in a private mount namespace whose /usr/sbin is an overlay of
the real one: there pgbouncer is made missing (so the install path runs) and policy-rc.d present or absent. apt-get and
systemctl are stand-ins that record what they were asked; nothing is installed and the real /usr/sbin is untouched."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "install-system-deps.sh"
THEIRS = "#!/bin/sh\n# the image's own policy\nexit 101\n"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare (a mount namespace)")


def _run(tmp_path: Path, image_has_policy: bool) -> tuple:
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "apt.log"
    # apt-get notes its arguments and whether a policy forbidding service starts was in place while it installed
    (fake / "apt-get").write_text(
        f'#!/bin/sh\necho "$*" >> {log}\n'
        f'case "$*" in *install*) if [ -x /usr/sbin/policy-rc.d ]; then /usr/sbin/policy-rc.d; echo "policy $?" >> {log}; fi;; esac\n'
    )
    (fake / "systemctl").write_text("#!/bin/sh\nexit 0\n")
    for tool in fake.iterdir():
        tool.chmod(0o755)
    upper, work, after = tmp_path / "upper", tmp_path / "work", tmp_path / "policy-after"
    upper.mkdir()
    work.mkdir()
    theirs = tmp_path / "theirs"
    theirs.write_text(THEIRS)
    plant = f"cp {theirs} /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d" if image_has_policy else "rm -f /usr/sbin/policy-rc.d"
    inner = (
        f"set -e; mount -t overlay overlay -o lowerdir=/usr/sbin,upperdir={upper},workdir={work} /usr/sbin; "
        f"rm -f /usr/sbin/pgbouncer; {plant}; "
        f"set +e; PATH={fake}:$PATH bash {SCRIPT}; rc=$?; "
        f"if [ -e /usr/sbin/policy-rc.d ]; then cat /usr/sbin/policy-rc.d > {after}; fi; exit $rc"
    )
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", inner], capture_output=True, text=True, timeout=120, check=False)
    policy_after = after.read_text() if after.exists() else None
    return proc, log.read_text() if log.exists() else "", policy_after


@pytest.mark.parametrize("image_has_policy", [True, False], ids=["image-ships-policy-rc.d", "no-policy-rc.d"])
def test_installs_what_is_missing_with_services_held_and_exits_0(tmp_path, image_has_policy):
    proc, apt_log, policy_after = _run(tmp_path, image_has_policy)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "installing pgbouncer" in proc.stdout and "install -y -qq --no-install-recommends pgbouncer" in apt_log
    assert "policy 101" in apt_log, "while packages install, no service may start"
    if image_has_policy:
        assert policy_after == THEIRS, "the image's own policy-rc.d is left as it was"
    else:
        assert policy_after is None, "the policy-rc.d the script made for the install is removed after it"
    assert Path("/usr/sbin/pgbouncer").exists() or not shutil.which("pgbouncer"), "the real /usr/sbin is untouched"
