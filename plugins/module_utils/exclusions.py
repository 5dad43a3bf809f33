# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What PostgreSQL's base backup leaves out (``sendDir`` in basebackup.c), by major version.

Pure logic over relative paths (``base/5/16384``, tablespace files as ``pg_tblspc/<oid>/...``),
so the same rules apply to a local walk and to a listing taken over ssh.

- Contents dropped, directory kept (``excludeDirContents``, matched by name at any depth):
  pg_stat_tmp, pg_replslot, pg_dynshmem, pg_notify, pg_serial, pg_snapshots, pg_subtrans.
- Files skipped (``excludeFiles``, by name at any depth): postgresql.auto.conf.tmp,
  current_logfiles.tmp, pg_internal.init* (prefix), backup_label, tablespace_map, backup_manifest,
  postmaster.pid, postmaster.opts; ``.DS_Store`` on 17+ (it was back-patched to 15.15 and 16.x minors
  later, which pg_control cannot tell apart, so 13-16 keep it).
- ``pgsql_tmp*`` at any depth.
- In database directories (``base/<oid>``, ``pg_tblspc/<oid>/PG_<major>_<catver>/<oid>`` and, 17+,
  ``global``): temporary relations (``t<backend>_<relfilenode>...``) and every fork of an unlogged
  relation except its ``_init`` fork (a fork is dropped when ``<relfilenode>_init`` exists beside it).
- ``pg_wal`` is sent empty, with ``pg_wal/archive_status`` (and ``pg_wal/summaries`` on 17+).
"""

from __future__ import annotations

import fnmatch
import re
from typing import Iterable, Optional

EXCLUDE_DIR_CONTENTS = ("pg_stat_tmp", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots", "pg_subtrans")
EXCLUDE_FILES = ("postgresql.auto.conf.tmp", "current_logfiles.tmp", "backup_label", "tablespace_map", "backup_manifest", "postmaster.pid", "postmaster.opts")
EXCLUDE_FILE_PREFIXES = ("pg_internal.init",)
TEMP_PREFIX = "pgsql_tmp"

_REL_RE = re.compile(r"^([0-9]{1,10})(?:_(fsm|vm|init))?(?:\.([0-9]+))?$")
_TEMP_REL_RE = re.compile(r"^t[0-9]+_[0-9]+(?:_(?:fsm|vm|init))?(?:\.[0-9]+)?$")
_DB_OID_RE = re.compile(r"^[0-9]+$")
_TBLSPC_OID_RE = re.compile(r"^[0-9]+$")


def wal_dirs_kept(major: int) -> tuple[str, ...]:
    """Directories under pg_wal that a base backup sends (empty)."""
    return ("pg_wal/archive_status", "pg_wal/summaries") if major >= 17 else ("pg_wal/archive_status",)


def parse_relation_file_name(name: str) -> Optional[tuple[str, str]]:
    """``(relfilenode, fork)`` of a non-temporary relation file name, else None (fork ``main`` when absent)."""
    m = _REL_RE.match(name)
    if not m:
        return None
    return m.group(1), m.group(2) or "main"


def is_temp_relation_name(name: str) -> bool:
    """``looks_like_temp_rel_name``: ``t<backend>_<relfilenode>[_fork][.segno]``."""
    return bool(_TEMP_REL_RE.match(name))


def is_database_dir(reldir: str, major: int) -> bool:
    """Whether files directly in ``reldir`` are relation files basebackup checks for unlogged/temp relations."""
    parts = reldir.split("/")
    if major >= 17 and reldir == "global":
        return True
    if len(parts) == 2 and parts[0] == "base" and _DB_OID_RE.match(parts[1]):
        return True
    return (
        len(parts) == 4
        and parts[0] == "pg_tblspc"
        and bool(_TBLSPC_OID_RE.match(parts[1]))
        and parts[2].startswith(f"PG_{major}_")
        and bool(_DB_OID_RE.match(parts[3]))
    )


class Exclusions:
    """The rules for one major version plus user patterns (``fnmatch`` on the relative path)."""

    def __init__(self, major: int, extra: Iterable[str] = ()) -> None:
        self.major = major
        self.extra = list(extra)

    def reason(self, relpath: str, is_dir: bool, siblings: Optional[set] = None) -> Optional[str]:
        """Why ``relpath`` is left out, or None when it is copied.

        ``siblings`` holds the names in the same directory (needed for the unlogged-relation rule);
        when None, that rule is not applied.
        """
        parts = relpath.split("/")
        name = parts[-1]
        parent = "/".join(parts[:-1])
        for pattern in self.extra:
            for i, part in enumerate(parts):
                if fnmatch.fnmatchcase("/".join(parts[: i + 1]), pattern) or fnmatch.fnmatchcase(part, pattern):
                    return f"user exclude {pattern}"
        for part in parts:
            if part.startswith(TEMP_PREFIX):
                return "temporary files (pgsql_tmp)"
        if len(parts) >= 3 and parts[0] == "pg_tblspc" and not parts[2].startswith(f"PG_{self.major}_"):
            # sendTablespace sends only the tablespace's version directory (PG_<major>_<catversion>)
            return f"outside the tablespace's PG_{self.major}_* directory"
        for part in parts[:-1]:
            if part in EXCLUDE_DIR_CONTENTS:
                return f"contents of {part}"
        if parts[0] == "pg_wal" and len(parts) > 1:
            if is_dir and relpath in wal_dirs_kept(self.major):
                return None
            return "pg_wal is sent empty"
        if is_dir:
            return None
        if name in EXCLUDE_FILES or any(name.startswith(p) for p in EXCLUDE_FILE_PREFIXES):
            return f"{name} is never copied"
        if self.major >= 17 and name == ".DS_Store":
            return ".DS_Store"
        if is_database_dir(parent, self.major):
            if is_temp_relation_name(name):
                return "temporary relation"
            rel = parse_relation_file_name(name)
            if rel is not None and rel[1] != "init" and siblings is not None and f"{rel[0]}_init" in siblings:
                return "unlogged relation (only its init fork is copied)"
        return None

    def filter(self, entries: Iterable[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """Split ``(relpath, kind)`` entries (kind ``f`` file, ``d`` directory, ``l`` symlink) into kept and dropped.

        Dropped entries come back as ``(relpath, reason)``.
        """
        entries = list(entries)
        by_dir: dict = {}
        for relpath, _kind in entries:
            head, _sep, tail = relpath.rpartition("/")
            by_dir.setdefault(head, set()).add(tail)
        kept, dropped = [], []
        for relpath, kind in entries:
            head = relpath.rpartition("/")[0]
            why = self.reason(relpath, kind == "d", by_dir.get(head, set()))
            if why is None:
                kept.append((relpath, kind))
            else:
                dropped.append((relpath, why))
        return kept, dropped
