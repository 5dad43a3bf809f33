# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rules of datadir_copy with ``source_kind: finished_backup``: copying a backup that is already taken (a copy made
by the standby_backup role) into a new data directory, which is what a restore does.

Why a kind of its own: a live copy leaves out exactly what makes a finished backup restorable. A base backup of a
running server must not take ``backup_label``, ``tablespace_map`` or the WAL in ``pg_wal`` (they would belong to another
backup, or be recycled under it), and it copies ``pg_control`` last under a pending name because its label does not exist
yet. A finished backup already has its label, its map and the WAL from its start to its end in ``pg_wal``: all of it
must come along, and ``pg_control`` can go straight to its place. What does not come along are this collection's own
working files (``.pgbackup-*``: the checksum record, staging directories, a temporary file a crash left), which describe
the backup's copy, not the restore.

So this module says:

- whether a source is a finished backup at all (``check_source``): a backup_label, a placed ``global/pg_control``, no
  ``.pgbackup-incomplete`` (its backup failed), no ``postmaster.pid`` (a server runs or ran on it: a data directory, not
  a backup); every refusal names the host, its ssh port and the path, and the option to set;
- which options make no sense for it (``check_options``: delta, excludes, a start gate);
- its tablespaces as its ``tablespace_map`` lists them (``listed_tablespaces``), not as the symlinks of ``pg_tblspc``
  point: on a backup those links point wherever the backup's copy put them, while recovery rebuilds the links from the
  map; the map is rewritten with the new places when a tablespace moves (``rewritten_map``);
- which entries of the backup are copied (``kept_entries``);
- that every destination is absent or empty (``check_destinations_empty``): a restore never writes over anything;
- and, once the bytes are in, puts pg_control and the rewritten map in place (``place_control_and_map``).
"""

from __future__ import annotations

import hashlib
import os
from typing import Optional

from . import copy_state
from .copy_source import Source
from .durable import fsync_dir, write_atomically
from .errors import PgBackupError
from .tablespace_map import format_tablespace_map, parse_tablespace_map

LIVE = "live"
FINISHED_BACKUP = "finished_backup"
SOURCE_KINDS = (LIVE, FINISHED_BACKUP)
LABEL = "backup_label"
MAP = "tablespace_map"
CONTROL = "global/pg_control"
# Any name holding this is a working file of this collection (.pgbackup-checksums.json, .pgbackup-wal-staging,
# .<name>.pgbackup-tmp of an interrupted durable write), never part of what the backup restores.
OWN_NAME_PART = ".pgbackup-"


def describe(source: Source) -> str:
    """Where the backup is, as every refusal names it: path, and the host and ssh port when it is on another host."""
    if source.remote:
        return f"{source.path} on {source.host} (ssh port {source.port or 22})"
    return f"{source.path} on this host"


def check_options(*, delta: bool, excludes: list, gate: Optional[str]) -> None:
    """A restore copies the whole backup into an empty place, at once: delta, excludes and a start gate do not apply."""
    if delta:
        raise PgBackupError("source_kind finished_backup copies into an empty or absent data_dir only: delta does not apply (set delta: false)")
    if excludes:
        raise PgBackupError(
            f"source_kind finished_backup copies the whole backup: excludes ({', '.join(excludes)}) would leave out what the restore may need; "
            "drop excludes, or copy a live data directory with source_kind: live"
        )
    if gate:
        raise PgBackupError("source_kind finished_backup copies a backup that is already taken: a start gate does not apply (drop gate)")


def check_source(source: Source, names: dict) -> None:
    """Refuse what is not a finished backup; ``names`` maps each relative path of the source's listing to its Entry."""
    where = describe(source)
    fix = "point source_path at a backup the standby_backup role finished, or copy a live data directory with source_kind: live"
    if copy_state.INCOMPLETE_MARKER in names:
        raise PgBackupError(
            f"{where} is not a finished backup: it carries {copy_state.INCOMPLETE_MARKER}, so its backup failed or was interrupted; take a new backup ({fix})",
            source=source.path,
            source_host=source.host,
        )
    if copy_state.PENDING_CONTROL in names:
        raise PgBackupError(
            f"{where} is not a finished backup: it has {copy_state.PENDING_CONTROL}, so its label was never placed (label_place did not run); {fix}",
            source=source.path,
            source_host=source.host,
        )
    if LABEL not in names or names[LABEL].kind != "f":
        raise PgBackupError(
            f"{where} is not a finished backup: it has no {LABEL}, without which recovery would start from the wrong checkpoint; {fix}",
            source=source.path,
            source_host=source.host,
        )
    if "postmaster.pid" in names:
        raise PgBackupError(
            f"{where} is not a finished backup: it has postmaster.pid, so a server runs or ran on it (a data directory, not a backup); {fix}",
            source=source.path,
            source_host=source.host,
        )


def listed_tablespaces(source: Source, names: dict, map_text: Optional[bytes], major: int) -> list:
    """``(oid, path)`` of each tablespace the backup's tablespace_map lists (``map_text`` None: the backup has none).
    Every symlink in the backup's pg_tblspc must be listed: recovery makes the links from the map alone, so a tablespace
    missing there would be lost."""
    entries = [] if map_text is None else parse_tablespace_map(map_text, major_version=major)
    listed = [(str(oid), path) for oid, path in entries]
    oids = {oid for oid, _path in listed}
    linked = sorted(rel.split("/")[1] for rel, e in names.items() if rel.count("/") == 1 and rel.startswith("pg_tblspc/") and e.kind == "l")
    unlisted = [oid for oid in linked if oid not in oids]
    if unlisted:
        raise PgBackupError(
            f"{describe(source)} cannot be restored: pg_tblspc links {', '.join(unlisted)} but its {MAP} lists "
            f"{', '.join(sorted(oids)) or 'no tablespace'}; the backup is damaged: take a new one",
            source=source.path,
        )
    for oid, path in listed:
        if not os.path.isabs(path):
            raise PgBackupError(f"{describe(source)}: its {MAP} lists tablespace {oid} at {path!r}, not an absolute path; the backup is damaged")
    return listed


def is_own_file(rel: str) -> bool:
    """A working file of this collection, at any depth (never pg_control's pending name: check_source refused it)."""
    return any(OWN_NAME_PART in part for part in rel.split("/"))


def kept_entries(entries: list, rewrites_map: bool) -> tuple:
    """``(kept, dropped)`` of the backup's main tree: everything but the collection's own files, pg_control (it travels
    alone, see copy_engine) and, when it is rewritten, the map. ``dropped`` holds ``(rel, reason)``."""
    kept, dropped = [], []
    for e in entries:
        if is_own_file(e.rel):
            dropped.append((e.rel, "a working file of pgbackup.lowlevel, not part of the backup"))
        elif e.rel == MAP and rewrites_map:
            dropped.append((e.rel, "rewritten with the tablespaces' new places"))
        elif e.rel != CONTROL:
            kept.append(e)
    return kept, dropped


def rewritten_map(tablespaces: list, major: int) -> Optional[bytes]:
    """The tablespace_map that points at the tablespaces' new places, or None when none moves (the backup's map is then
    copied byte for byte, as its backup_manifest lists it)."""
    moved = [ts for ts in tablespaces if not ts["in_place"] and ts["dest"] != ts["source"]]
    if not moved:
        return None
    pairs = [(int(ts["oid"]), ts["dest"]) for ts in tablespaces if not ts["in_place"]]
    return format_tablespace_map(pairs, major_version=major).encode("utf-8", "surrogateescape")


def check_destinations_empty(source: Source, roots: list) -> None:
    """A restore writes into absent or empty directories only: the data directory and every tablespace's new place."""
    for droot in roots:
        if os.path.lexists(droot) and not os.path.isdir(droot):
            raise PgBackupError(f"the restore of {describe(source)} cannot go to {droot}: it exists and is not a directory", dest=droot)
        if os.path.isdir(droot) and os.listdir(droot):
            shown = ", ".join(sorted(os.listdir(droot))[:5])
            raise PgBackupError(
                f"the restore of {describe(source)} refuses {droot}: it is not empty ({shown}...); a finished backup is copied into an empty "
                "or absent directory only, never over a data directory: choose another data_dir (or tablespace_mapping for a tablespace), "
                "or empty it",
                dest=droot,
            )


def place_control_and_map(dest: str, new_map: Optional[bytes], uid: int, gid: int, sums: dict) -> None:
    """After the transfer: pg_control from its pending name to its place (the backup's label is there already, so the
    copy needs no guard against starting without it), and the rewritten map, recorded in ``sums`` like a copied file."""
    os.rename(os.path.join(dest, copy_state.PENDING_CONTROL), os.path.join(dest, CONTROL))
    fsync_dir(os.path.join(dest, "global"))
    if new_map is None:
        return
    path = os.path.join(dest, MAP)
    write_atomically(path, new_map, mode=0o600, owner=(uid, gid) if uid >= 0 else None)
    sums[MAP] = [len(new_map), os.stat(path).st_mtime_ns, hashlib.sha256(new_map).hexdigest()]
