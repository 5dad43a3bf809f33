# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only snapshots of the volumes a backup's paths live on: the logic of ``volume_snapshot``.

A *set* is the snapshots of one backup, named after it. :func:`plan` decides everything before anything is made:
which volume each path is on (:mod:`volumes`), the order, where each snapshot goes, and every refusal — a name that
is not a plain name, a path not fully inside its volume (a nested subvolume or mount a snapshot would miss), a
snapshot place inside a live path, a set that already exists, a command placeholder we do not know.

The order is the one safety rule of a standby-only snapshot backup: the volume of the **last** path (the data
directory, whose ``global/pg_control`` carries the minimum recovery point that ends such a backup) is snapshotted
last, so every page a tablespace or ``pg_wal`` snapshot holds was written before the end point that pg_control
snapshot names. The other volumes go in the order of their first path.

:func:`create` makes the snapshots in that order and, when one fails, releases those it made (newest first) before
it raises, so a failure leaves nothing behind. :func:`release` is idempotent: it finds the set by its places, not
by a state file, so it also cleans up after a controller that died between create and release.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from .errors import PgBackupError
from .snapshot_providers import provider_for
from .volumes import Volume, nested_volumes, read_mounts, volume_of

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SNAPSHOT_DIR = ".pgbackup-snapshots"


@dataclass
class Target:
    """One volume of the set: its snapshot's place and the given paths on it."""

    index: int
    volume: Volume
    paths: list = field(default_factory=list)
    snapshot: str = ""  # btrfs: the snapshot subvolume; command: where mount_command mounts it
    exists: bool = False

    def inside(self, path: str) -> str:
        """Where ``path``'s files are in the snapshot."""
        rel = os.path.relpath(os.path.realpath(path), self.volume.root)
        return os.path.normpath(os.path.join(self.snapshot, rel))

    def facts(self) -> dict:
        mount = self.volume.mount
        return dict(
            index=self.index,
            volume=self.volume.root,
            mount_point=mount.mount_point,
            fstype=mount.fstype,
            device=mount.source,
            paths=list(self.paths),
            snapshot=self.snapshot,
            exists=self.exists,
        )


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name or ""):
        raise PgBackupError(
            f"name {name!r} is not a snapshot set name; expected 1 to 64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit (the backup's id is one)",
            name=name,
        )
    return name


def _group(paths: list, mounts: list) -> list:
    """Targets in snapshot order: first appearance, then the last path's volume moved to the end."""
    by_root: dict = {}
    for path in paths:
        if not os.path.isabs(path):
            raise PgBackupError(f"path {path!r} is not absolute; expected the absolute path of a data directory, tablespace or pg_wal")
        volume = volume_of(path, mounts)
        by_root.setdefault(volume.root, Target(index=0, volume=volume)).paths.append(path)
    last = by_root.pop(volume_of(paths[-1], mounts).root)
    targets = [*by_root.values(), last]
    for index, target in enumerate(targets):
        target.index = index
    return targets


def _check_complete(targets: list) -> None:
    """Refuse a path whose volume snapshot would miss a nested subvolume or mount that no other target covers."""
    covered = {t.volume.root for t in targets}
    for target in targets:
        for path in target.paths:
            missing = [n for n in nested_volumes(path) if os.path.realpath(n) not in covered and SNAPSHOT_DIR not in n.split(os.sep)]
            if missing:
                raise PgBackupError(
                    f"{path} holds {', '.join(missing)}, another volume (a btrfs subvolume or a mount): a snapshot of "
                    f"{target.volume.root} would show it empty. Expected every directory of the path on one volume; add that "
                    "directory to the paths (it gets its own snapshot) or move its files onto the path's volume",
                    path=path,
                    nested=missing,
                )


def _check_places(targets: list, paths: list) -> None:
    live = [os.path.realpath(p) for p in paths]
    for target in targets:
        for path in live:
            if target.snapshot == path or target.snapshot.startswith(path.rstrip("/") + "/"):
                raise PgBackupError(
                    f"the snapshot of {target.volume.root} would be made at {target.snapshot}, inside the live path {path}; "
                    "nothing is ever written into a live data directory or tablespace. Expected the path below its "
                    "volume's mount point: make it a btrfs subvolume below the mount point (btrfs subvolume create), or "
                    "mount the filesystem one level up",
                    path=path,
                    snapshot=target.snapshot,
                )


def plan(params: dict, *, mounts: Optional[list] = None) -> tuple:
    """(provider, targets) for ``params`` (the module's options); raises before any side effect."""
    name = check_name(params["name"])
    paths = params.get("paths") or []
    if not paths:
        raise PgBackupError("paths is empty; expected the data directory last, after every tablespace and a separate pg_wal")
    provider = provider_for(params)
    targets = _group(paths, read_mounts() if mounts is None else mounts)
    provider.check(targets)
    for target in targets:
        target.snapshot = provider.place(target, name, SNAPSHOT_DIR)
        target.exists = provider.exists(target)
    _check_places(targets, paths)
    _check_complete(targets)
    return provider, targets


def result(targets: list, *, changed: bool, **extra) -> dict:
    paths = {p: t.inside(p) for t in targets for p in t.paths}
    return dict(changed=changed, volumes=[t.facts() for t in targets], paths=paths, order=[t.volume.root for t in targets], **extra)


def create(params: dict, *, check_mode: bool, clock: Callable[[], float] = time.monotonic) -> dict:
    provider, targets = plan(params)
    made = [t.volume.root for t in targets if t.exists]
    if made:
        raise PgBackupError(
            f"the snapshot set {params['name']!r} already exists for {', '.join(made)}; expected none. Release it first "
            "(action=release) or choose another name",
            existing=made,
        )
    if check_mode:
        return result(targets, changed=True)
    started, done = clock(), []
    for target in targets:
        try:
            provider.create(target, params["name"])
        except PgBackupError as exc:
            released = _release_quietly(provider, done, params["name"])
            raise PgBackupError(
                f"the snapshot of {target.volume.root} (for {', '.join(target.paths)}) failed: {exc.message}. "
                f"Released the {len(done)} snapshot(s) made before it ({released or 'none'}); nothing of the set is left",
                volume=target.volume.root,
                released=[t.volume.root for t in done],
            ) from exc
        target.exists = True
        done.append(target)
    return result(targets, changed=True, seconds=round(clock() - started, 3))


def _release_quietly(provider, targets: list, name: str) -> str:
    notes = []
    for target in reversed(targets):
        try:
            provider.release(target, name)
            notes.append(target.volume.root)
        except PgBackupError as exc:
            notes.append(f"{target.volume.root} NOT released: {exc.message}")
    return "; ".join(notes)


def release(params: dict, *, check_mode: bool) -> dict:
    provider, targets = plan(params)
    present = [t for t in targets if t.exists]
    if not check_mode:
        for target in reversed(present):
            provider.release(target, params["name"])
            target.exists = False
    return result(targets, changed=bool(present))


def mount(params: dict, *, check_mode: bool) -> dict:
    provider, targets = plan(params)
    absent = [t.volume.root for t in targets if not t.exists]
    if absent:
        raise PgBackupError(
            f"the snapshot set {params['name']!r} has no snapshot of {', '.join(absent)}; expected one per volume (action=create)",
            missing=absent,
        )
    changed = False
    for target in targets:
        changed = provider.mount(target, params["name"], check_mode=check_mode) or changed
    return result(targets, changed=changed)


def listing(params: dict) -> dict:
    _provider, targets = plan(params)
    return result(targets, changed=False)


ACTIONS = {"create": create, "release": release, "mount": mount}


def run(params: dict, *, check_mode: bool) -> dict:
    if params["action"] in ("clone", "unclone"):
        from . import snapshot_clone  # it builds on this module's grouping and checks

        return getattr(snapshot_clone, params["action"])(params, check_mode=check_mode)
    if params["action"] == "list":
        return listing(params)
    return ACTIONS[params["action"]](params, check_mode=check_mode)
