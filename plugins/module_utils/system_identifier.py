# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A system identifier as a user passes it (``expect_system_identifier``): one rule for every module that takes one.

Every module takes and returns it as a string of digits, as ``pg_controldata`` prints it: it is an unsigned 64-bit
number, and a play that hands it through Jinja or JSON as a number may lose digits or see it signed (SQL shows
``pg_control_system()``'s value as a signed bigint).
"""

from __future__ import annotations

import re
from typing import Any, Optional

from .errors import PgBackupError

SYSID_MODULUS = 1 << 64
SIGNED_LIMIT = 1 << 63  # pg_control_system() shows it as a signed bigint: -2**63 up to 2**63 - 1
_DIGITS = re.compile(r"-?[0-9]+")


def expected_system_identifier(value: Any, what: str = "expect_system_identifier") -> Optional[str]:
    """``value`` as a string of digits (unsigned), or None when it is not given; a clear error for anything else."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = str(value).strip()
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses. Out of range is refused, not wrapped: a
    # number beyond 64 bits is a typo or a lost digit, and wrapping it would compare against another identifier.
    if isinstance(value, (bool, float)) or not _DIGITS.fullmatch(text) or not -SIGNED_LIMIT <= int(text) < SYSID_MODULUS:
        raise PgBackupError(f"{what} must be a system identifier (digits, as pg_controldata prints it), got {value!r}")
    return str(int(text) % SYSID_MODULUS)
