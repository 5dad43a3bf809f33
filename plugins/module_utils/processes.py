# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every external command the collection runs starts here, and only here.

``AnsibleModule.run_command`` is not used, and ansible-test's pylint (``ansible-bad-function``, ansible-core 2.20 on)
is told so on the two calls below, and nowhere else, because none of the callers can use it:

- the copy runner and the stream transport run in processes forked from the module that go on after the module has
  returned (datadir_copy starts them, copy_wait follows them): there is no AnsibleModule left to call;
- every command needs a bound: an ssh to a host that stopped answering, pg_verifybackup or ``pg_ctl`` on a stalled
  disk, a ``mount`` that hangs; ``run_command`` has no timeout;
- rsync and the stream transport are read while they run (progress lines, framed file data), while ``run_command``
  hands their output over only at the end;
- the logic lives in module_utils so that it runs, and is tested, without Ansible.

What ``run_command`` would add is done by the callers: argument vectors, never a shell (a remote command is quoted
word by word by copy_source), no secret in any argument (passwords go through the environment or a file).
"""

from __future__ import annotations

import subprocess
from typing import Optional

PIPE = subprocess.PIPE
CompletedProcess = subprocess.CompletedProcess
Popen = subprocess.Popen
SubprocessError = subprocess.SubprocessError
TimeoutExpired = subprocess.TimeoutExpired


def run(argv: list, *, timeout: Optional[float] = None, text: bool = False, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``argv`` to its end with its output captured (bytes, or str with ``text``)."""
    return subprocess.run(argv, capture_output=True, text=text, timeout=timeout, check=check)  # pylint: disable=ansible-bad-function


def start(argv: list, *, stdin=None) -> subprocess.Popen:
    """Start ``argv`` with stdout and stderr as pipes to read while it runs (and stdin too when ``stdin=PIPE``)."""
    return subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # pylint: disable=ansible-bad-function
