# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of backup_stop: the wait for the keeper's answer in rounds of ``report_interval`` seconds.

A stop that waits for WAL archiving can wait for its whole ``timeout`` (an hour by default). The module is asked with
a round's timeout; when the keeper has not answered, the module says what the stop waits for (the keeper's look at the
stopping backend and pg_stat_archiver) and the next round asks again - it joins the running stop, which is never
cancelled. A line per round shows what it waits for; the total wait stays ``timeout``.
"""

from __future__ import annotations

import time

from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()
MODULE = "pgbackup.lowlevel.backup_stop"
NOT_ANSWERED = "did not answer within"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        timeout = float(args.get("timeout", 3600))
        interval = max(1, int(args.get("report_interval", 30)))
        host = task_vars.get("inventory_hostname", "?") if task_vars else "?"
        if self._play_context.check_mode or args.get("state", "stopped") != "stopped" or timeout <= 0:
            return self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)
        start = time.monotonic()
        rounds = 0
        while True:
            rounds += 1
            left = timeout - (time.monotonic() - start)
            args["timeout"] = max(1, int(min(interval, left)))
            answer = self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)
            answer["rounds"] = rounds
            waited = time.monotonic() - start
            if not (answer.get("failed") and NOT_ANSWERED in str(answer.get("msg", ""))):
                # A round that did not answer asked for the stop: that request, not the joined one, changed the server.
                answer["changed"] = bool(answer.get("changed")) or (rounds > 1 and not answer.get("failed"))
                return answer
            if waited >= timeout - 0.5:
                answer["msg"] = answer["msg"].replace(
                    f"within {args['timeout']} seconds", f"within {timeout:g} seconds (timeout; the role's standby_backup_stop_timeout)"
                )
                result.update(answer)
                return result
            what = str(answer.get("msg", "")).split("). ", 1)[-1].split(" Run backup_stop again")[0]
            display.display(f"{host}: the stop has not answered after {waited:.0f} s of at most {timeout:g} s: {what}")
