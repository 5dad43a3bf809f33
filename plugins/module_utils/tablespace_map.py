# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""tablespace_map: one ``<oid> <target path>\\n`` line per symlink in ``pg_tblspc``.

14 and later (``do_pg_backup_start`` / ``read_tablespace_map``): the writer puts a backslash before
``\\n``, ``\\r`` and ``\\`` in the path; the reader takes an unescaped ``\\n`` or ``\\r`` as the end of a
line, skips empty lines, treats a backslash as escaping the next character, splits at the first space
(so a path may start with spaces) and refuses an unterminated last line.

13 (checked on 13.23, the last release) still has the older pair: the writer escapes only ``\\n`` and
``\\r``; the reader turns backslash-newline (or -CR) into that character and keeps every other backslash
as it is, takes the OID and the path with ``sscanf("%s %n")`` (leading blanks of a path are lost) and
silently drops an unterminated last line. Pass ``major_version=13`` to read and write 13's form; a path
13 cannot carry (ending in a backslash, starting with a blank) is refused.

Paths are ``str``. A path that is not valid UTF-8 on disk is carried with ``surrogateescape``:
pass bytes to ``parse_tablespace_map`` and encode the result of ``format_tablespace_map`` with
``encode("utf-8", "surrogateescape")`` to get the very bytes back.
"""

from __future__ import annotations

import re
from typing import Optional, Union

from .errors import PgBackupError

_OID_RE = re.compile(r"\A[0-9]{1,10}\Z")
# sscanf(str, "%s %n"): a token after optional blanks, then every blank skipped; the path is the rest.
_LINE_13_RE = re.compile(r"\A[ \t\n\r\v\f]*([0-9]{1,10})[ \t\n\r\v\f]+([^ \t\n\r\v\f].*)\Z", re.DOTALL)


def _check_oid(oid: object, where: str) -> int:
    if isinstance(oid, bool) or not isinstance(oid, int) or not 0 < oid <= 0xFFFFFFFF:
        raise PgBackupError(f"{where}: tablespace OID {oid!r} is not valid: expected an integer from 1 to 4294967295")
    return oid


def escape_path(path: str) -> str:
    """A tablespace path as the map writes it: backslash before newline, carriage return and backslash."""
    return "".join("\\" + ch if ch in "\n\r\\" else ch for ch in path)


def escape_path_13(path: str) -> str:
    """A tablespace path as 13 writes it: backslash before newline and carriage return only."""
    return "".join("\\" + ch if ch in "\n\r" else ch for ch in path)


def format_tablespace_map(entries: list[tuple[int, str]], *, major_version: Optional[int] = None) -> str:
    """The text PostgreSQL writes for ``(oid, path)`` pairs, in the order given ('' for none).

    ``major_version=13`` writes 13's form (see the module documentation); any other value, or None, 14+'s.
    """
    legacy = major_version == 13
    out = []
    seen = set()
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise PgBackupError(f"tablespace_map entry {number} is {entry!r}: expected an (oid, path) pair")
        oid, path = entry
        _check_oid(oid, f"tablespace_map entry {number}")
        if not isinstance(path, str) or not path:
            raise PgBackupError(f"tablespace_map entry {number} (OID {oid}) has path {path!r}: expected the non-empty target of the pg_tblspc/{oid} link")
        if "\0" in path:
            raise PgBackupError(f"tablespace_map entry {number} (OID {oid}) has a NUL character in its path, which no file system path can hold")
        if oid in seen:
            raise PgBackupError(f"tablespace_map lists OID {oid} twice: pg_tblspc holds one link per tablespace")
        seen.add(oid)
        if legacy and (path.endswith("\\") or path[0] in " \t\n\r\v\f"):
            raise PgBackupError(
                f"tablespace_map entry {number} (OID {oid}) has path {path!r}, which PostgreSQL 13's reader cannot get back "
                "(a path must not end with a backslash or start with a blank): rename the tablespace directory"
            )
        out.append(f"{oid} {escape_path_13(path) if legacy else escape_path(path)}\n")
    return "".join(out)


def parse_tablespace_map(text: Union[str, bytes], *, major_version: Optional[int] = None) -> list[tuple[int, str]]:
    """The ``(oid, path)`` pairs of a tablespace_map, read as recovery would, refusing what it would refuse.

    ``major_version=13`` reads as 13 does; an unterminated last line, which 13 silently drops, is refused.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "surrogateescape")
    if not isinstance(text, str):
        raise PgBackupError(f"tablespace_map must be text, got {type(text).__name__}")
    if major_version == 13:
        return _parse_13(text)
    entries: list[tuple[int, str]] = []
    seen: dict[int, int] = {}
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
                oid, path = _entry("".join(buf), line_no)
                if oid in seen:
                    raise PgBackupError(f"tablespace_map lists OID {oid} twice (lines {seen[oid]} and {line_no}): it is damaged or was edited by hand")
                seen[oid] = line_no
                entries.append((oid, path))
            buf = []
            if ch == "\n":
                line_no += 1
        else:
            buf.append(ch)
    if escaped or buf:
        raise PgBackupError(
            f"tablespace_map line {line_no} is not terminated by a newline: the file is truncated (PostgreSQL refuses it); take it again from pg_backup_stop"
        )
    return entries


def _parse_13(text: str) -> list[tuple[int, str]]:
    entries: list[tuple[int, str]] = []
    seen: dict[int, int] = {}
    line_no = 1
    buf: list[str] = []
    prev = ""
    for ch in text:
        if ch in "\n\r" and prev != "\\":
            match = _LINE_13_RE.match("".join(buf))
            if match is None:
                raise PgBackupError(
                    f"invalid data in tablespace_map line {line_no}: {''.join(buf)!r}; expected '<tablespace OID> <path>'",
                    line=line_no,
                )
            oid = int(match.group(1))
            if not 0 < oid <= 0xFFFFFFFF or oid in seen:
                raise PgBackupError(f"invalid data in tablespace_map line {line_no}: OID {oid} is out of range or listed twice", line=line_no)
            seen[oid] = line_no
            entries.append((oid, match.group(2)))
            buf = []
        elif ch in "\n\r":
            buf[-1] = ch
        else:
            buf.append(ch)
        if ch == "\n":
            line_no += 1
        prev = ch
    if buf:
        raise PgBackupError(
            f"tablespace_map line {line_no} is not terminated by a newline: the file is truncated (PostgreSQL 13 would silently ignore that "
            "tablespace); take it again from pg_stop_backup"
        )
    return entries


def _entry(line: str, line_no: int) -> tuple[int, str]:
    oid, sep, path = line.partition(" ")
    if not sep or not path or not _OID_RE.match(oid) or not 0 < int(oid) <= 0xFFFFFFFF:
        raise PgBackupError(
            f"invalid data in tablespace_map line {line_no}: {line!r}; expected '<tablespace OID> <path>' with a single space after the OID",
            line=line_no,
        )
    return int(oid), path
