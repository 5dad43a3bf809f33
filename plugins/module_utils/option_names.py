# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Option names the modules share, defined once, and the old names they replaced kept as deprecated aliases.

A backup's WAL range is ``start_lsn``, ``start_timeline``, ``stop_lsn``, ``stop_timeline``.
backup_start returns the start, backup_stop the stop, and every module that takes the range back (label_place,
wal_collect, backup_manifest, backup_verify) takes it under these names, so a play passes ``start.start_lsn`` and
``stopped.stop_lsn`` on without renaming. The names some modules used before (``wal_start_lsn``/``wal_end_lsn`` in
backup_manifest, ``expected_start_lsn`` in label_place) stay as deprecated aliases until ``REMOVED_IN``: Ansible warns
when a play uses one. Each module documents them itself: whether one is required, and its default, differ by module
(a doc fragment would have to be overridden whole in each).

A copy's data directory is ``data_dir`` in every module that writes or reads it (datadir_copy and backup_abort called it
``dest``), and the WAL directory a module fills or reads is ``wal_dir`` (wal_collect called it ``dest``).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional

REMOVED_IN = "0.3.0"
COLLECTION = "pgbackup.lowlevel"
RANGE_TYPES = {"start_lsn": "str", "start_timeline": "int", "stop_lsn": "str", "stop_timeline": "int"}


def backup_range_argument_spec(*names: str, required: Iterable[str] = (), old_names: Optional[Mapping[str, str]] = None) -> dict:
    """A fresh argument spec for some of the range's options; ``old_names`` maps an old name to the option it became."""
    required = set(required)
    outside = (required | set((old_names or {}).values()) | set(names)) - (set(names) & set(RANGE_TYPES))
    if outside:
        raise ValueError(f"not range options of this module: {sorted(outside)}")
    spec = {name: {"type": RANGE_TYPES[name], "required": name in required} for name in names}
    for old, new in (old_names or {}).items():
        renamed_from(spec[new], old)
    return spec


def renamed_from(option: dict, old: str) -> dict:
    """``option`` (an argument spec entry) also taken under its old name ``old`` until REMOVED_IN, with Ansible's warning."""
    option.setdefault("aliases", []).append(old)
    option.setdefault("deprecated_aliases", []).append({"name": old, "version": REMOVED_IN, "collection_name": COLLECTION})
    return option
