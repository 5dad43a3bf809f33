# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The providers of ``volume_snapshot``: btrfs, and the user's own commands.

``btrfs``: a read-only snapshot of the subvolume (``btrfs subvolume snapshot -r``), made on the same filesystem
under ``<mount point>/.pgbackup-snapshots/<set>/<n>-<slug>``; it is readable as a directory at once, so ``mount``
has nothing to do. ``command``: argv lists with named placeholders, run without a shell, for LVM, ZFS or a cloud
CLI; their snapshot is reached where ``mount_command`` mounts it, ``<mount_root>/<set>/<n>``. Every placeholder
is checked when the plan is made, so a typo fails before the first snapshot.
"""

from __future__ import annotations

import os
import re
import string

from . import processes
from .errors import PgBackupError

PLACEHOLDERS = ("name", "index", "volume", "mount_point", "device", "fstype", "snapshot_mount")
COMMAND_TIMEOUT = 600.0


def _run(argv: list, what: str) -> None:
    try:
        done = processes.run(argv, text=True, timeout=COMMAND_TIMEOUT)
    except (OSError, processes.SubprocessError) as exc:
        raise PgBackupError(f"{what}: {' '.join(argv)} could not run: {exc}") from exc
    if done.returncode != 0:
        said = (done.stderr or done.stdout or "").strip().splitlines()[-3:]
        raise PgBackupError(f"{what}: {' '.join(argv)} exited with {done.returncode}: {' / '.join(said) or 'no output'}")


def private_dirs(directories, owner_of: str) -> None:
    """Make ``directories`` mode 0700 and, run as root, owned by the owner of ``owner_of`` (the snapshotted path).

    A snapshot holds a copy of the data directory's files, so nobody else may enter; but the copy reads it as that
    owner (the data directory's owner, over ssh), who must be able to. Without the chown a snapshot made by root was
    unreadable by the copy's postgres user."""
    owner = os.stat(owner_of)
    for directory in directories:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        if os.geteuid() == 0:
            os.chown(directory, owner.st_uid, owner.st_gid)


def _slug(target) -> str:
    rel = os.path.relpath(target.volume.root, target.volume.mount.mount_point)
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", "root" if rel == "." else rel).strip("-.") or "root"
    return f"{target.index}-{text[:48]}"


class BtrfsProvider:
    def __init__(self, params: dict) -> None:
        self.btrfs = params.get("btrfs_command") or "btrfs"

    @staticmethod
    def check(targets: list) -> None:
        for target in targets:
            if target.volume.mount.fstype != "btrfs":
                raise PgBackupError(
                    f"{', '.join(target.paths)} is on {target.volume.mount.fstype} ({target.volume.mount.source} at "
                    f"{target.volume.mount.mount_point}), not btrfs; expected btrfs for provider=btrfs, or provider=command "
                    "with your volume manager's commands",
                    path=target.paths[0],
                )

    def place(self, target, name: str, snapshot_dir: str) -> str:
        return os.path.join(target.volume.mount.mount_point, snapshot_dir, name, _slug(target))

    def exists(self, target) -> bool:
        return os.path.lexists(target.snapshot)

    def create(self, target, name: str) -> None:
        set_dir = os.path.dirname(target.snapshot)
        private_dirs((os.path.dirname(set_dir), set_dir), target.paths[0])
        _run([self.btrfs, "subvolume", "snapshot", "-r", target.volume.root, target.snapshot], f"btrfs snapshot of {target.volume.root}")

    def release(self, target, name: str) -> None:
        if os.path.lexists(target.snapshot):
            _run([self.btrfs, "subvolume", "delete", target.snapshot], f"btrfs delete of {target.snapshot}")
        set_dir = os.path.dirname(target.snapshot)
        if os.path.isdir(set_dir) and not os.listdir(set_dir):
            os.rmdir(set_dir)

    def mount(self, target, name: str, *, check_mode: bool) -> bool:
        return False  # a btrfs snapshot is a directory already


def check_placeholders(option: str, argv: list) -> None:
    for arg in argv:
        try:
            fields = list(string.Formatter().parse(arg))
        except ValueError as exc:
            raise PgBackupError(f"{option} has a malformed placeholder in {arg!r}: {exc}; expected {{name}} style fields") from exc
        for _literal, field_name, spec, conversion in fields:
            if field_name is None:
                continue
            if field_name not in PLACEHOLDERS or spec or conversion:
                raise PgBackupError(
                    f"{option} has the placeholder {{{field_name}}} in {arg!r}; expected only "
                    f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)}, without format specs (write {{{{ for a brace)",
                    option=option,
                )


class CommandProvider:
    """The user's commands; ``create_command`` and ``release_command`` are required, so a failed set can be undone."""

    def __init__(self, params: dict) -> None:
        self.commands = {k: params.get(k) or [] for k in ("create_command", "mount_command", "unmount_command", "release_command")}
        self.mount_root = params.get("mount_root") or ""
        for option in ("create_command", "release_command", "mount_command"):
            if not self.commands[option]:
                raise PgBackupError(
                    f"provider=command needs {option}; expected an argv list, e.g. for LVM "
                    "['lvcreate', '-s', '-n', 'pgb-{name}-{index}', '-L', '10G', '{device}'] (docs/snapshots.md)",
                    option=option,
                )
        if not os.path.isabs(self.mount_root):
            raise PgBackupError(f"provider=command needs mount_root, an absolute directory to mount the snapshots below; got {self.mount_root!r}")
        for option, argv in self.commands.items():
            check_placeholders(option, argv)

    @staticmethod
    def check(targets: list) -> None:
        return None

    def place(self, target, name: str, snapshot_dir: str) -> str:
        return os.path.join(self.mount_root, name, str(target.index))

    @staticmethod
    def _marker(target) -> str:
        # The host's record that create_command succeeded: a command snapshot is not visible until it is mounted, and
        # release must find it after a controller that died in between. Beside the mount directory, never in a live path.
        return target.snapshot + ".created"

    def exists(self, target) -> bool:
        return os.path.exists(self._marker(target))

    def _argv(self, option: str, target, name: str) -> list:
        mount = target.volume.mount
        values = dict(
            name=name, index=target.index, volume=target.volume.root, mount_point=mount.mount_point,
            device=mount.source, fstype=mount.fstype, snapshot_mount=target.snapshot,
        )  # fmt: skip
        return [arg.format(**values) for arg in self.commands[option]]

    def create(self, target, name: str) -> None:
        _run(self._argv("create_command", target, name), f"create_command for {target.volume.root}")
        private_dirs((os.path.dirname(target.snapshot),), target.paths[0])
        fd = os.open(self._marker(target), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)

    def mount(self, target, name: str, *, check_mode: bool) -> bool:
        if os.path.ismount(target.snapshot):
            return False
        if not check_mode:
            private_dirs((os.path.dirname(target.snapshot), target.snapshot), target.paths[0])
            _run(self._argv("mount_command", target, name), f"mount_command for {target.volume.root}")
        return True

    def release(self, target, name: str) -> None:
        if os.path.ismount(target.snapshot) and self.commands["unmount_command"]:
            _run(self._argv("unmount_command", target, name), f"unmount_command for {target.snapshot}")
        _run(self._argv("release_command", target, name), f"release_command for {target.volume.root}")
        os.unlink(self._marker(target))
        if os.path.isdir(target.snapshot) and not os.path.ismount(target.snapshot):
            os.rmdir(target.snapshot)


PROVIDERS = {"btrfs": BtrfsProvider, "command": CommandProvider}


def provider_for(params: dict):
    return PROVIDERS[params.get("provider") or "btrfs"](params)
