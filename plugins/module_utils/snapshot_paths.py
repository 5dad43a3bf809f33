# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a copy made from filesystem snapshots reads each tablespace.

A snapshot of the data directory keeps its ``pg_tblspc/<oid>`` symlinks as they were: they point at the LIVE
tablespace locations, not at the snapshots of them. Followed as they are, the copy would read the data directory from
the snapshot and the tablespaces live - a torn backup, silently corrupt. ``source_snapshot_paths`` (what volume_snapshot
returns as ``paths``: live path -> where the snapshot shows it) says where each live location is seen frozen; a
tablespace's live location T is read at ``value + T[len(K):]`` of its longest key K, and a tablespace no key covers is
refused. Paths only: nothing here looks at a filesystem (the source may be on another host)."""

from __future__ import annotations

import posixpath
from typing import Optional

from .errors import PgBackupError

OPTION = "source_snapshot_paths"


def _parts(path: str) -> tuple:
    """The components of a normalised absolute path (``/`` gives none), so that /srv/ts2 is not below /srv/ts."""
    return tuple(p for p in posixpath.normpath(path).split("/") if p)


def checked_snapshot_paths(snapshot_paths: Optional[dict]) -> dict:
    """The map with normalised paths, refused unless every key (a live path) and value (its snapshot) is absolute.
    None or empty: no snapshot, the tablespaces are read where their links point (a copy of a live directory)."""
    checked = {}
    for live, frozen in (snapshot_paths or {}).items():
        for role, path in (("key", live), ("value", frozen)):
            if not isinstance(path, str) or not posixpath.isabs(path):
                raise PgBackupError(
                    f"{OPTION}: every {role} must be an absolute path, not {path!r} (in {live!r}: {frozen!r}); give the paths volume_snapshot returned",
                    **{OPTION: dict(snapshot_paths)},
                )
        checked[posixpath.normpath(live)] = posixpath.normpath(frozen)
    return checked


def snapshot_location(oid: str, target: str, snapshot_paths: dict) -> str:
    """Where tablespace ``oid``, at ``target`` on the live system, is seen in the snapshots: the value of the longest
    key that is ``target`` or one of its parent directories, with the rest of ``target`` below it. ``snapshot_paths``
    comes from ``checked_snapshot_paths``. A tablespace no key covers would be read live: refused."""
    keys = sorted(snapshot_paths)
    if not posixpath.isabs(target):
        raise PgBackupError(
            f"tablespace {oid}'s link points to the relative path {target!r}: with {OPTION} a tablespace is found in "
            "the snapshots by its absolute live location (CREATE TABLESPACE makes it absolute); make the link absolute",
            tablespace=oid,
            location=target,
        )
    wanted = _parts(target)
    covering = [k for k in keys if wanted[: len(_parts(k))] == _parts(k)]
    if not covering:
        raise PgBackupError(
            f"tablespace {oid} is at {target}, which no {OPTION} key covers (keys: {', '.join(keys)}): the copy would read it "
            "live beside the snapshot of the data directory, a torn backup. Snapshot its volume too: add its path to the "
            "snapshot set (volume_snapshot paths) and pass the paths it returns",
            tablespace=oid,
            location=target,
            snapshot_keys=keys,
        )
    key = max(covering, key=lambda k: len(_parts(k)))
    return posixpath.join(snapshot_paths[key], *wanted[len(_parts(key)) :])
