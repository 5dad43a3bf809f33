#!/usr/bin/python
# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: volume_snapshot
short_description: Read-only snapshots (or writable btrfs clones) of the volumes a backup's paths are on, the data directory's volume last
version_added: 0.2.0
description:
  - Finds the volume of every path in O(paths) (a btrfs subvolume, or the mounted device) and snapshots each volume
    once, read-only, as one set named O(name) - for a backup taken with the low-level API around snapshots, the bytes
    copied later from the snapshot while the server is long out of backup mode.
  - The volume of the B(last) path is snapshotted last; the others in the order of their first path. Give the data
    directory last - its C(global/pg_control) ends a backup taken on a standby, so it must not be older than any
    page in a tablespace or C(pg_wal) snapshot.
  - Refuses, before anything is made, a path that holds another volume below it (a nested btrfs subvolume or a
    mount) no other path covers, a snapshot place inside a live path, and a set that already exists.
  - O(action=create) that fails on one volume releases the snapshots it made before it fails. O(action=release) finds
    the set by its places, so it also cleans up after a controller that died; it is idempotent.
  - Only C(btrfs) and the C(command) provider (driven by btrfs commands) are exercised by this collection's tests;
    docs/snapshots.md has LVM and ZFS recipes for the command provider.
author:
  - pgbackup.lowlevel developers (@pgbackup)
options:
  action:
    description:
      - C(create) makes the set, C(list) shows it, C(mount) makes it readable (mount_command; nothing to do on btrfs),
        C(release) unmounts and deletes it.
      - C(clone) makes B(writable) btrfs snapshots that become a new cluster's files at O(dests) (the data directory's
        volume last), then makes them a clone - C(pg_tblspc) links to the clone's tablespaces, a C(pg_wal) of its own,
        what a base backup leaves out removed - and deletes every snapshot it made when any step fails. C(unclone)
        deletes such a clone (the subvolume roots at the places C(clone) used). Both take O(provider=btrfs) only.
    type: str
    choices: [create, list, mount, release, clone, unclone]
    default: create
  name:
    description: The set's name (the backup's id), 1 to 64 letters, digits, C(.), C(_), C(-).
    type: str
    required: true
  paths:
    description: Absolute paths (symlinks resolved) - every tablespace, a separate C(pg_wal), then the data directory B(last).
    type: list
    elements: path
    required: true
  dests:
    description:
      - With O(action=clone) or O(action=unclone), where the clone has each of O(paths), in the same order. Each must be on
        the same btrfs filesystem as its path and not exist; a path below its subvolume's root (R/data) needs a dest
        ending the same way (with /new/data the snapshot of R is made at /new).
    type: list
    elements: path
  provider:
    description:
      - C(btrfs) snapshots each path's subvolume into C(<mount point>/.pgbackup-snapshots/<name>/) (mode 0700).
      - C(command) runs O(create_command), O(mount_command), O(unmount_command) and O(release_command).
    type: str
    choices: [btrfs, command]
    default: btrfs
  btrfs_command:
    description: The C(btrfs) program.
    type: path
    default: btrfs
  mount_root:
    description: With O(provider=command), the directory the snapshots are mounted below, as C(<mount_root>/<name>/<index>).
    type: path
  create_command:
    description:
      - With O(provider=command), the argv (no shell) that snapshots one volume, run once per volume in order.
      - 'Placeholders: C({name}), C({index}), C({volume}), C({mount_point}), C({device}), C({fstype}), C({snapshot_mount}).'
    type: list
    elements: str
  mount_command:
    description: With O(provider=command), the argv that mounts one volume's snapshot read-only at C({snapshot_mount}).
    type: list
    elements: str
  unmount_command:
    description: With O(provider=command), the argv that unmounts C({snapshot_mount}) before O(release_command).
    type: list
    elements: str
  release_command:
    description: With O(provider=command), the argv that deletes one volume's snapshot (required, so a failed set is undone).
    type: list
    elements: str
attributes:
  check_mode:
    description: Plans and checks everything, makes or deletes nothing.
    support: full
  diff_mode:
    description: Nothing to diff.
    support: none
seealso:
  - module: pgbackup.lowlevel.backup_start
  - module: pgbackup.lowlevel.datadir_copy
"""

EXAMPLES = r"""
- name: Snapshot the tablespace's volume, then the data directory's
  pgbackup.lowlevel.volume_snapshot:
    name: "{{ backup_id }}"
    paths: [/srv/ts1/PG_15_202209061, /var/lib/postgresql/15/main]
  register: snap

- name: Release the set, also on failure
  pgbackup.lowlevel.volume_snapshot:
    action: release
    name: "{{ backup_id }}"
    paths: [/srv/ts1/PG_15_202209061, /var/lib/postgresql/15/main]
"""

RETURN = r"""
volumes:
  description: One entry per volume, in snapshot order.
  returned: always
  type: list
  elements: dict
  contains:
    index:
      description: Place in the order, from 0.
      type: int
    volume:
      description: The btrfs subvolume's root, or the mount point.
      type: str
    mount_point:
      description: Where the volume's filesystem is mounted.
      type: str
    fstype:
      description: The filesystem type.
      type: str
    device:
      description: The mounted device.
      type: str
    paths:
      description: The given paths on this volume.
      type: list
      elements: str
    snapshot:
      description: The snapshot (btrfs) or where it is mounted (command).
      type: str
    exists:
      description: Whether the snapshot exists after this task.
      type: bool
paths:
  description: Each given path and where its files are in the snapshot.
  returned: always
  type: dict
order:
  description: The volumes in the order they were (or would be) snapshotted.
  returned: always
  type: list
  elements: str
seconds:
  description: Seconds from the first snapshot to the last (what a backup spends in backup mode for them).
  returned: when the set was created
  type: float
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.volume_snapshot import run

ARGS = dict(
    action=dict(type="str", choices=["create", "list", "mount", "release", "clone", "unclone"], default="create"),
    dests=dict(type="list", elements="path"),
    name=dict(type="str", required=True),
    paths=dict(type="list", elements="path", required=True),
    provider=dict(type="str", choices=["btrfs", "command"], default="btrfs"),
    btrfs_command=dict(type="path", default="btrfs"),
    mount_root=dict(type="path"),
    create_command=dict(type="list", elements="str"),
    mount_command=dict(type="list", elements="str"),
    unmount_command=dict(type="list", elements="str"),
    release_command=dict(type="list", elements="str"),
)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGS, supports_check_mode=True)
    try:
        result = run(module.params, check_mode=module.check_mode)
    except PgBackupError as exc:
        module.fail_json(msg=exc.message, **exc.details)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
