# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""tablespace_map: one ``<oid> <target path>`` line per symlink in pg_tblspc.

Writing escapes ``\\n``, ``\\r`` and ``\\`` with a backslash (14+ and later 13 releases); reading treats
a backslash as escaping the next character, as read_tablespace_map does.
"""

from __future__ import annotations

from .errors import PgBackupError


def format_tablespace_map(entries: list[tuple[int, str]]) -> str:
    """The text PostgreSQL writes for ``(oid, path)`` pairs."""
    out = []
    for oid, path in entries:
        if isinstance(oid, bool) or not isinstance(oid, int) or not 0 < oid <= 0xFFFFFFFF:
            raise PgBackupError(f"tablespace OID {oid!r} is not valid: expected an integer from 1 to 4294967295")
        escaped = "".join("\\" + ch if ch in "\n\r\\" else ch for ch in path)
        out.append(f"{oid} {escaped}\n")
    return "".join(out)


def parse_tablespace_map(text: str) -> list[tuple[int, str]]:
    """The ``(oid, path)`` pairs of a tablespace_map, refusing what recovery would refuse."""
    entries = []
    line_no = 1
    buf: list[str] = []
    escaped = False
    for ch in text:
        if escaped:
            buf.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in "\n\r":
            if buf:
                entries.append(_entry("".join(buf), line_no))
            buf = []
            line_no += ch == "\n"
        else:
            buf.append(ch)
    if escaped or buf:
        raise PgBackupError(f"tablespace_map line {line_no} is not terminated by a newline: the file is truncated (PostgreSQL refuses it)")
    return entries


def _entry(line: str, line_no: int) -> tuple[int, str]:
    oid, sep, path = line.partition(" ")
    if not sep or not oid.isdigit() or not path or not 0 < int(oid) <= 0xFFFFFFFF:
        raise PgBackupError(f"tablespace_map line {line_no} is {line!r}: expected '<tablespace OID> <path>'")
    return int(oid), path
