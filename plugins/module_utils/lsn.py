# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Log sequence numbers: PostgreSQL's ``X/X`` text form and plain integers.

An LSN is a 64-bit byte position in the WAL. PostgreSQL prints it as two uppercase hex halves with
no padding (``0/2500028``); 18 also prints ``%X/%08X`` in places, which parses the same way.
"""

from __future__ import annotations

import re

from .errors import PgBackupError

LSN_MAX = (1 << 64) - 1
_LSN_RE = re.compile(r"\A([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\Z")


def parse_lsn(text: object, *, what: str = "LSN") -> int:
    """Return the integer of an ``X/X`` LSN, or raise naming the malformed value."""
    if not isinstance(text, str):
        raise PgBackupError(f"{what} must be text like '0/2500028', got {type(text).__name__} {text!r}")
    match = _LSN_RE.match(text)
    if match is None:
        raise PgBackupError(
            f"{what} {text!r} is not a valid LSN: expected two hexadecimal numbers of at most 8 digits "
            "separated by '/', such as '0/2500028' (as pg_current_wal_lsn() prints it)"
        )
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(value: int) -> str:
    """Return PostgreSQL's text form of an LSN: uppercase hex halves, no padding."""
    _check_range(value)
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def lsn_add(lsn: int, delta: int) -> int:
    """Return ``lsn + delta``, refusing a result outside the 64-bit LSN space."""
    _check_range(lsn)
    result = lsn + delta
    if not 0 <= result <= LSN_MAX:
        raise PgBackupError(f"LSN arithmetic out of range: {format_lsn(lsn)} + {delta} leaves the 64-bit WAL space")
    return result


def lsn_diff(a: int, b: int) -> int:
    """Return the number of WAL bytes from ``b`` to ``a`` (negative when ``a`` is before ``b``)."""
    _check_range(a)
    _check_range(b)
    return a - b


def _check_range(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= LSN_MAX:
        raise PgBackupError(f"LSN value {value!r} is not an integer between 0 and 2^64-1")
