# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Writable btrfs snapshots that become a new replica's files: ``volume_snapshot`` actions ``clone`` and ``unclone``.

``paths`` are the upstream's live tablespaces, then its data directory LAST (the same order rule as a read-only set:
pg_control's volume is snapshotted last); ``dests`` gives, for each path, where the clone has it. The snapshot of a
volume (a btrfs subvolume, root R) is made at the place P such that the clone's path is P + the source path below R:
with the data directory at R/data, a clone at /x/clone/data is the snapshot /x/clone. Nothing is copied.

Refused before anything is made: another provider than btrfs (a writable clone of an LVM or ZFS volume is the user's
own business), a destination that is not on the SAME btrfs filesystem as its source (a snapshot cannot cross
filesystems), a snapshot place that exists (re-seeding is not done from snapshots) or has no parent directory, a
destination that does not keep the source's place in its subvolume, a place inside or around a live path, and a
nested volume the snapshot would miss.

After the snapshots, the clone (never the live cluster) is trimmed as a base backup would be
(:mod:`exclusions`), its ``pg_tblspc`` links are pointed at the clone's tablespaces (they pointed at the live ones),
and a ``pg_wal`` that was a link to the upstream's is replaced by an empty directory: the role collects the WAL from
the start to the stop into it. A failure deletes every snapshot made so far: the clone does not exist afterwards.
"""

from __future__ import annotations

import os
import shutil

from .errors import PgBackupError
from .exclusions import Exclusions, wal_dirs_kept
from .snapshot_providers import _run
from .volume_snapshot import _check_complete, _group, check_name
from .volumes import BTRFS_SUBVOLUME_ROOT_INODE, mount_of, read_mounts


def _checked_inputs(params: dict) -> tuple:
    if (params.get("provider") or "btrfs") != "btrfs":
        raise PgBackupError(
            f"action={params['action']} makes writable btrfs snapshots only; provider={params['provider']} is not supported for "
            "a clone (a writable LVM or ZFS clone is made with your own tools); expected provider=btrfs",
            provider=params["provider"],
        )
    paths, dests = params.get("paths") or [], params.get("dests") or []
    if not paths or len(dests) != len(paths):
        raise PgBackupError(
            f"action={params['action']} needs one dest per path; got {len(paths)} path(s) and {len(dests)} dest(s): expected the "
            "tablespaces then the data directory in both, in the same order",
            paths=paths,
            dests=dests,
        )
    for dest in dests:
        if not os.path.isabs(dest):
            raise PgBackupError(f"dest {dest!r} is not absolute; expected the absolute path the clone has it at", dest=dest)
    return paths, [os.path.normpath(d) for d in dests]


def _place(target, dests_of: dict) -> str:
    """Where the snapshot of ``target``'s volume goes so that each of its paths lands at its dest. Its last path decides
    (on the data directory's volume, the data directory: replica_clone_data_dir is chosen first, the tablespaces follow)."""
    first = target.paths[-1]
    rel = os.path.relpath(os.path.realpath(first), target.volume.root)
    dest = dests_of[first]
    if rel == ".":
        place = dest
    elif dest.endswith("/" + rel) and len(dest) > len(rel) + 1:
        place = dest[: -len(rel) - 1]
    else:
        raise PgBackupError(
            f"{first} is {rel} below its btrfs subvolume {target.volume.root}, so its clone {dest} must end in /{rel} (the snapshot "
            f"of the subvolume is made one level up); expected a dest like <new directory>/{rel}, or make {first} a subvolume of its own",
            path=first,
            dest=dest,
        )
    for path in target.paths[:-1]:
        wanted = os.path.normpath(os.path.join(place, os.path.relpath(os.path.realpath(path), target.volume.root)))
        if dests_of[path] != wanted:
            raise PgBackupError(
                f"{path} is on the same subvolume {target.volume.root} as {first}, so one snapshot at {place} holds both: its clone is "
                f"{wanted}, not {dests_of[path]}; expected that dest (replica_clone_tablespace_mapping)",
                path=path,
                dest=dests_of[path],
            )
    return place


def _check_place(target, live: list, mounts: list) -> None:
    place, volume = target.snapshot, target.volume
    if os.path.lexists(place):
        raise PgBackupError(
            f"{place} exists; a clone from a snapshot is made where nothing is yet (a replica is not re-seeded from snapshots): "
            "expected a path that does not exist, with an existing parent directory",
            dest=place,
        )
    parent = os.path.dirname(place)
    if not os.path.isdir(parent):
        raise PgBackupError(f"the parent {parent} of {place} is not a directory; expected it to exist on the btrfs of {volume.root}", dest=place)
    there = mount_of(os.path.realpath(parent), mounts)
    if there.fstype != "btrfs" or there.source != volume.mount.source:
        raise PgBackupError(
            f"{place} is on {there.fstype} {there.source} (mounted at {there.mount_point}), not on the btrfs filesystem "
            f"{volume.mount.source} (mounted at {volume.mount.mount_point}) of {', '.join(target.paths)}: a snapshot stays on its "
            "filesystem; expected a dest below that mount point",
            dest=place,
            filesystem=there.source,
            expected_filesystem=volume.mount.source,
        )
    real = os.path.realpath(parent) + "/" + os.path.basename(place)
    for path in live:
        if real == path or real.startswith(path + "/") or path.startswith(real + "/"):
            raise PgBackupError(
                f"the clone's place {place} is inside or around the live path {path}; nothing is ever written into a live data "
                "directory or tablespace: expected a separate directory",
                dest=place,
                path=path,
            )


def plan(params: dict, *, mounts=None, check_places: bool = True) -> list:
    """The targets in snapshot order, each with its writable snapshot's place; raises before any side effect."""
    check_name(params["name"])
    paths, dests = _checked_inputs(params)
    mounts = read_mounts() if mounts is None else mounts
    targets = _group(paths, mounts)
    for target in targets:
        if target.volume.mount.fstype != "btrfs":
            raise PgBackupError(
                f"{', '.join(target.paths)} is on {target.volume.mount.fstype} ({target.volume.mount.source} at "
                f"{target.volume.mount.mount_point}), not btrfs; expected btrfs for a clone from a writable snapshot",
                path=target.paths[0],
            )
    dests_of = dict(zip(paths, dests))
    live = [os.path.realpath(p).rstrip("/") for p in paths]
    for target in targets:
        target.snapshot = _place(target, dests_of)
        if check_places:
            _check_place(target, live, mounts)
    _check_complete(targets)
    return targets


def result(targets: list, params: dict, *, changed: bool, **extra) -> dict:
    dests = dict(zip(params["paths"], [os.path.normpath(d) for d in params["dests"]]))
    return dict(
        changed=changed, volumes=[t.facts() for t in targets], paths=dests, order=[t.volume.root for t in targets], **extra
    )  # fmt: skip


def _snapshot(btrfs: str, target) -> None:
    _run([btrfs, "subvolume", "snapshot", target.volume.root, target.snapshot], f"btrfs writable snapshot of {target.volume.root}")


def _delete(btrfs: str, targets: list) -> str:
    notes = []
    for target in reversed(targets):
        try:
            _run([btrfs, "subvolume", "delete", target.snapshot], f"btrfs delete of {target.snapshot}")
            notes.append(target.snapshot)
        except PgBackupError as exc:
            notes.append(f"{target.snapshot} NOT deleted: {exc.message}")
    return "; ".join(notes) or "none"


def clone(params: dict, *, check_mode: bool, snapshot=_snapshot) -> dict:
    targets = plan(params)
    if check_mode:
        return result(targets, params, changed=True)
    btrfs, done = params.get("btrfs_command") or "btrfs", []
    try:
        for target in targets:
            snapshot(btrfs, target)
            target.exists = True
            done.append(target)
        prepare(params["paths"], [os.path.normpath(d) for d in params["dests"]])
    except (PgBackupError, OSError) as exc:
        why = exc.message if isinstance(exc, PgBackupError) else str(exc)
        failed = targets[len(done)].volume.root if len(done) < len(targets) else "the clone's preparation"
        deleted = _delete(btrfs, done)
        raise PgBackupError(
            f"the clone failed at {failed}: {why}. Deleted the {len(done)} writable snapshot(s) made before ({deleted}); the clone does not exist",
            failed=failed,
            deleted=[t.snapshot for t in done],
        ) from exc
    return result(targets, params, changed=True)


def unclone(params: dict, *, check_mode: bool) -> dict:
    """Delete the clone's snapshots (a failure after they were made): only places that are subvolume roots."""
    targets = plan(params, check_places=False)
    present = [t for t in targets if is_subvolume_root(t.snapshot)]
    if present and not check_mode:
        btrfs = params.get("btrfs_command") or "btrfs"
        for target in reversed(present):
            _run([btrfs, "subvolume", "delete", target.snapshot], f"btrfs delete of {target.snapshot}")
    return result(targets, params, changed=bool(present))


def is_subvolume_root(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path) and os.stat(path).st_ino == BTRFS_SUBVOLUME_ROOT_INODE


def prepare(paths: list, dests: list) -> None:
    """Make the snapshots a clone: links to the clone's tablespaces, a pg_wal of its own, what a base backup leaves out removed."""
    data_dir = dests[-1]
    with open(os.path.join(data_dir, "PG_VERSION"), encoding="ascii") as f:
        major = int(f.read().strip().split(".")[0])
    clone_of = {os.path.realpath(p): d for p, d in zip(paths[:-1], dests[:-1])}
    tablespaces = relink_tablespaces(data_dir, clone_of)
    own_wal_dir(data_dir, major)
    for name in ("standby.signal", "recovery.signal"):  # the role's recovery_config writes the clone's own
        if os.path.lexists(os.path.join(data_dir, name)):
            os.unlink(os.path.join(data_dir, name))
    excluded = Exclusions(major)
    trim(data_dir, "", excluded)
    for oid, location in tablespaces.items():
        trim(location, f"pg_tblspc/{oid}", excluded)


def relink_tablespaces(data_dir: str, clone_of: dict) -> dict:
    """Point each pg_tblspc link of the clone at the clone's copy of its tablespace; {oid: clone location}."""
    tblspc, found = os.path.join(data_dir, "pg_tblspc"), {}
    for oid in sorted(os.listdir(tblspc)):
        link = os.path.join(tblspc, oid)
        if not os.path.islink(link):
            continue  # an in-place tablespace is a directory of the data directory's snapshot
        target = os.path.realpath(link)
        if target not in clone_of:
            raise PgBackupError(
                f"tablespace {oid} is at {target}, which is not among the paths snapshotted for the clone ({', '.join(sorted(clone_of)) or 'none'}): "
                "the clone would use the live tablespace; expected every tablespace in paths with its dest",
                tablespace=oid,
                location=target,
            )
        owner = os.lstat(link)
        os.unlink(link)
        os.symlink(clone_of[target], link)
        if os.geteuid() == 0:
            os.lchown(link, owner.st_uid, owner.st_gid)
        found[oid] = clone_of[target]
    return found


def own_wal_dir(data_dir: str, major: int) -> None:
    """A pg_wal link (to the upstream's live pg_wal) becomes an empty directory owned as the data directory."""
    wal = os.path.join(data_dir, "pg_wal")
    if not os.path.islink(wal):
        return
    os.unlink(wal)
    owner = os.stat(data_dir)
    for rel in ("pg_wal", *wal_dirs_kept(major)):
        path = os.path.join(data_dir, rel)
        os.makedirs(path, mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(path, owner.st_uid, owner.st_gid)


def trim(root: str, prefix: str, excluded: Exclusions) -> None:
    """Remove below ``root`` (the clone) what a base backup leaves out; links are not followed."""
    for current, dirs, files in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(current, root)
        rel_dir = prefix if rel_dir == "." else os.path.join(prefix, rel_dir) if prefix else rel_dir
        siblings = set(dirs) | set(files)
        for name in list(dirs):
            rel = os.path.join(rel_dir, name) if rel_dir else name
            path = os.path.join(current, name)
            if os.path.islink(path):
                files.append(name)
                dirs.remove(name)
            elif excluded.reason(rel, True, siblings) is not None:
                shutil.rmtree(path)
                dirs.remove(name)
        for name in files:
            rel = os.path.join(rel_dir, name) if rel_dir else name
            if rel.startswith("pg_tblspc/") and rel.count("/") == 1:
                continue  # the tablespace links relinked above
            if excluded.reason(rel, False, siblings) is not None:
                os.unlink(os.path.join(current, name))
