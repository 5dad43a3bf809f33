# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Log sequence numbers: PostgreSQL's ``X/X`` text form and plain integers.

An LSN is a 64-bit byte position in the WAL. PostgreSQL prints it as two uppercase hex halves with
no padding (``0/2500028``, ``LSN_FORMAT_ARGS`` with ``%X/%X``); newer releases also print
``%X/%08X`` in places, which parses the same way. Lowercase hex is accepted on input (``pg_lsn``
accepts it too); output is always PostgreSQL's own form.
"""

from __future__ import annotations

import re

from .errors import PgBackupError

LSN_MAX = (1 << 64) - 1
INVALID_LSN = 0
_LSN_RE = re.compile(r"\A([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\Z")


def parse_lsn(text: object, *, what: str = "LSN") -> int:
    """Return the integer of an ``X/X`` LSN, or raise naming the malformed value.

    ``what`` names the value in the message (``"stop LSN"``, ``"backup_label CHECKPOINT LOCATION"``).
    No surrounding whitespace, sign, ``0x`` prefix or more than 8 hex digits per half is accepted.
    """
    if not isinstance(text, str):
        raise PgBackupError(
            f"{what} must be text like '0/2500028', got {type(text).__name__} {text!r}; pass the value as PostgreSQL prints it",
            value=repr(text),
        )
    match = _LSN_RE.match(text)
    if match is None:
        raise PgBackupError(
            f"{what} {text!r} is not a valid LSN: expected two hexadecimal numbers of 1 to 8 digits "
            "separated by '/', with no spaces, such as '0/2500028' (as pg_current_wal_lsn() prints it)",
            value=text,
        )
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(value: int) -> str:
    """Return PostgreSQL's text form of an LSN: uppercase hex halves, no padding (``0/0`` for zero)."""
    check_lsn(value)
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def lsn_add(lsn: int, delta: int) -> int:
    """Return ``lsn + delta`` (delta may be negative), refusing a result outside the 64-bit LSN space."""
    check_lsn(lsn)
    if isinstance(delta, bool) or not isinstance(delta, int):
        raise PgBackupError(f"LSN offset {delta!r} is not an integer number of bytes")
    result = lsn + delta
    if not 0 <= result <= LSN_MAX:
        raise PgBackupError(
            f"LSN arithmetic out of range: {format_lsn(lsn)} {'+' if delta >= 0 else '-'} {abs(delta)} bytes leaves the 64-bit WAL space "
            "(0/0 to FFFFFFFF/FFFFFFFF)"
        )
    return result


def lsn_diff(a: int, b: int) -> int:
    """Return the number of WAL bytes from ``b`` to ``a`` (negative when ``a`` is before ``b``), like ``pg_wal_lsn_diff(a, b)``."""
    check_lsn(a)
    check_lsn(b)
    return a - b


def check_lsn(value: object) -> int:
    """Return ``value`` if it is an integer LSN (0 to 2^64-1), else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= LSN_MAX:
        raise PgBackupError(f"LSN value {value!r} is not an integer between 0 and 2^64-1 (0/0 to FFFFFFFF/FFFFFFFF)")
    return value
