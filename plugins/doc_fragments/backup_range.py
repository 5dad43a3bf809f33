# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A backup's WAL range under the names backup_start and backup_stop return, for the modules that take all four."""

from __future__ import annotations


class ModuleDocFragment:
    # Defined in code by backup_range_argument_spec() in plugins/module_utils/backup_range.py; keep both in step. A module
    # that takes only some of them, or gives one a default of its own, documents those itself with the same names.
    DOCUMENTATION = r"""
options:
  start_lsn:
    description: The backup's start, RV(pgbackup.lowlevel.backup_start#module:start_lsn).
    type: str
  start_timeline:
    description: Timeline of O(start_lsn), RV(pgbackup.lowlevel.backup_start#module:start_timeline).
    type: int
  stop_lsn:
    description: The backup's end, RV(pgbackup.lowlevel.backup_stop#module:stop_lsn).
    type: str
  stop_timeline:
    description: Timeline of O(stop_lsn), RV(pgbackup.lowlevel.backup_stop#module:stop_timeline).
    type: int
"""
