# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one error type of the collection.

Every module catches ``PgBackupError`` once and turns it into ``fail_json``; its message
must say what was found, what was expected and what to do, and must never carry a password.
"""

from __future__ import annotations


class PgBackupError(Exception):
    """A refusal or failure the user can act on.

    ``details`` are extra facts returned to the user next to ``msg`` (LSNs, paths, ...).
    """

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message
