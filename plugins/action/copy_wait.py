# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of copy_wait: a plain Python loop over rounds (no include recursion), bounded by ``timeout``.

Each round runs the copy_wait module on the target, which waits up to ``interval`` seconds for the job to finish or
the keeper's backup to be lost (and then kills the job). A progress line is shown after each round.
"""

from __future__ import annotations

import time

from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_watch import progress_line

display = Display()
MODULE = "pgbackup.lowlevel.copy_wait"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        interval = max(0.1, float(args.get("interval", 30)))
        timeout = float(args["timeout"])
        start = time.monotonic()
        rounds = 0
        args["round_wait"] = interval
        host = task_vars.get("inventory_hostname", "?") if task_vars else "?"
        while True:
            rounds += 1
            left = timeout - (time.monotonic() - start)
            args["round_wait"] = max(0.0, min(interval, left))
            answer = self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)
            if answer.get("failed"):
                answer["rounds"] = rounds
                return answer
            progress = answer.get("progress") or {}
            elapsed = time.monotonic() - start
            if answer.get("lost"):
                where = f" on {args['primary']}" if args.get("primary") else ""
                result.update(
                    failed=True,
                    rounds=rounds,
                    lost=answer["lost"],
                    progress=progress,
                    msg=f"the backup{where} was lost during the copy: {answer['lost']}. The copy on {host} was stopped "
                    f"after {elapsed:.0f} s (processes {answer.get('killed')}); its destination keeps .pgbackup-incomplete. "
                    "See the keeper's keeper.log in its state_dir, then run the backup again",
                )
                return result
            if answer.get("finished"):
                # The last line too: a copy that ends within the first interval still shows what it copied and how fast.
                display.display(f"{host}: {progress_line(progress, elapsed)}")
                return self._finished(result, answer, rounds, progress, host)
            display.display(f"{host}: {progress_line(progress, elapsed)}")
            if time.monotonic() - start >= timeout:
                msg = f"the copy on {host} did not finish within {timeout:g} s (the timeout option; the role's standby_backup_copy_timeout)"
                result.update(failed=True, finished=False, rounds=rounds, progress=progress, msg=msg)
                return result

    @staticmethod
    def _finished(result: dict, answer: dict, rounds: int, progress: dict, host: str) -> dict:
        """The job's own result, as async_status would have read it: a failed copy fails this task with its message."""
        copy = answer.get("copy_result")
        result.update(changed=False, finished=True, rounds=rounds, progress=progress, copy_result=copy or {})
        if copy is None:
            result.update(failed=True, msg=f"the copy's async job file {answer.get('missing_job_file')} on {host} is gone, so nothing shows how the copy "
                          "ended: something removed it (a cleanup of ~/.ansible_async?); treat the copy as failed and run the backup again")  # fmt: skip
        elif copy.get("failed"):
            result.update(failed=True, msg=copy.get("msg") or f"the copy on {host} failed without a message (see copy_result in the result)")
        return result
