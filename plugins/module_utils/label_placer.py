# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Place backup_label (and tablespace_map) in a finished copy, then its pg_control, last.

datadir_copy leaves pg_control under a pending name so nobody can start the copy without its label. This step
writes the label and map byte for byte as backup_stop returned them (map paths remapped to where the tablespaces
were copied), each through a temporary file, fsync, rename and fsync of the directory, and only then moves
pg_control into place - optionally guarded: its checkpoint location set to 0/DEAD so that a copy whose label is
later deleted refuses to start instead of running crash recovery from the wrong checkpoint.
"""

from __future__ import annotations

import os
import stat
from typing import Mapping, Optional

from . import copy_state
from .backup_label import parse_backup_label
from .durable import fsync_dir, read_if_exists, write_atomically
from .errors import PgBackupError
from .lsn import format_lsn, parse_lsn
from .pg_control import PG_CONTROL_FILE_SIZE, guard_control_bytes, is_guarded, parse_control_file
from .tablespace_map import format_tablespace_map, parse_tablespace_map
from .wal import classify_wal_file, history_file_name, parse_history, segments_between

LABEL = "backup_label"
MAP = "tablespace_map"
CONTROL = os.path.join("global", "pg_control")


def file_mode(data_dir: str) -> int:
    """0640 where the data directory allows group access (0750), else 0600, as PostgreSQL does."""
    return 0o640 if stat.S_IMODE(os.stat(data_dir).st_mode) & 0o070 else 0o600


def remap_tablespace_map(text: bytes, mapping: Mapping[str, str], major: int) -> bytes:
    """The map with each tablespace's path replaced by its mapping (by OID or by old path)."""
    if not text:
        return b""
    entries = parse_tablespace_map(text, major_version=major)
    remapped = []
    for oid, path in entries:
        new = mapping.get(str(oid), mapping.get(path))
        remapped.append((oid, new if new is not None else path))
    if remapped == entries:
        return bytes(text)  # byte for byte as the server returned it
    return format_tablespace_map(remapped, major_version=major).encode("utf-8", "surrogateescape")


def check_data_dir(data_dir: str) -> None:
    """A copy, not a running cluster, and finished."""
    copy_state.check_stopped_copy(data_dir, writing="a label is placed", because="it would make its next start a backup recovery from the wrong point")


def missing_wal(data_dir: str, *, start_lsn: int, stop_lsn: int, stop_tli: int, seg_size: int) -> list:
    """Segments (and the history file) recovery needs from pg_wal that are not there - only when pg_wal holds WAL."""
    wal_dir = os.path.join(data_dir, "pg_wal")
    names = set(os.listdir(wal_dir)) if os.path.isdir(wal_dir) else set()
    if not any(classify_wal_file(n) == "segment" for n in names):
        return []  # WAL comes from restore_command or streaming, not from the copy
    history = []
    if stop_tli >= 2:
        text = read_if_exists(os.path.join(wal_dir, history_file_name(stop_tli)))
        if text is None:
            return [history_file_name(stop_tli)]
        history = parse_history(text.decode("utf-8", "replace"), stop_tli)
    return [name for name in segments_between(start_lsn, stop_lsn, stop_tli, history, seg_size) if name not in names]


def place(
    data_dir: str,
    *,
    label: bytes,
    tablespace_map: bytes = b"",
    tablespace_mapping: Optional[Mapping[str, str]] = None,
    expected_start_lsn: Optional[str] = None,
    stop_lsn: Optional[str] = None,
    stop_timeline: Optional[int] = None,
    guard_control: bool = True,
    force: bool = False,
    check_mode: bool = False,
) -> dict:
    """Place the label, the map and pg_control in ``data_dir``; return what was done and what the label says.

    Everything is checked, and what would change decided, before the first write (plan); then written (apply)."""
    data_dir = os.path.abspath(data_dir)
    check_data_dir(data_dir)
    pending, control_bytes, source = _control_of(data_dir)
    control = parse_control_file(control_bytes[: PG_CONTROL_FILE_SIZE + 1], source=source)
    parsed = parse_backup_label(label, seg_size=control.xlog_seg_size)
    _check_label_fits(data_dir, parsed, control.xlog_seg_size, expected_start_lsn, stop_lsn, stop_timeline)
    new_map = remap_tablespace_map(tablespace_map, tablespace_mapping or {}, control.major_version)
    existing, existing_map = read_if_exists(os.path.join(data_dir, LABEL)), read_if_exists(os.path.join(data_dir, MAP))
    _refuse_another_label(data_dir, existing, label, force)
    changes = _changes(existing, label, existing_map, new_map, pending)
    result = {
        "changed": bool(changes),
        "files": changes,
        **_label_facts(parsed, control),
        "guarded": is_guarded(control) if pending is None else guard_control,
        "tablespace_map": new_map.decode("utf-8", "replace"),
        "diff": _diff(data_dir, (existing, label), (existing_map, new_map)),
    }
    if not check_mode and changes:
        _apply(data_dir, label if existing != label else None, new_map, existing_map, pending, guard_control)
    return result


def _refuse_another_label(data_dir: str, existing: Optional[bytes], label: bytes, force: bool) -> None:
    if existing is not None and existing != label and not force:
        raise PgBackupError(
            f"{os.path.join(data_dir, LABEL)} exists and differs from the label given: the copy belongs to another backup, or was labelled already; "
            "use force: true only if you are sure this label is the copy's",
        )


def _changes(existing: Optional[bytes], label: bytes, existing_map: Optional[bytes], new_map: bytes, pending: Optional[bytes]) -> list:
    """The files placing writes (or removes), in the order it does: label, map, pg_control."""
    changes = []
    if existing != label:
        changes.append(LABEL)
    if (existing_map or b"") != new_map:
        changes.append(MAP if new_map else f"{MAP} (removed)")
    if pending is not None:
        changes.append(CONTROL)
    return changes


def _label_facts(parsed, control) -> dict:
    """What the label and pg_control say about the backup, as the result reports it."""
    return {
        "start_lsn": format_lsn(parsed.start_lsn),
        "checkpoint_lsn": format_lsn(parsed.checkpoint_lsn),
        "start_timeline": parsed.start_timeline,
        "backup_from": parsed.backup_from,
        "system_identifier": str(control.system_identifier),
        "major_version": control.major_version,
    }


def _diff(data_dir: str, labels: tuple, maps: tuple) -> list:
    """The label and the map before and after, for diff mode (pg_control is binary: ``files`` says when it is placed)."""

    def text(data: Optional[bytes]) -> str:
        return "" if data is None else data.decode("utf-8", "replace")

    return [
        {"before_header": os.path.join(data_dir, name), "after_header": os.path.join(data_dir, name), "before": text(before), "after": text(after)}
        for name, (before, after) in ((LABEL, labels), (MAP, maps))
    ]


def _control_of(data_dir: str) -> tuple:
    """(pending pg_control bytes or None, the pg_control to read, its path): pending first, as datadir_copy leaves it."""
    pending_path = os.path.join(data_dir, copy_state.PENDING_CONTROL)
    control_path = os.path.join(data_dir, CONTROL)
    pending = read_if_exists(pending_path)
    control_bytes = pending if pending is not None else read_if_exists(control_path)
    if control_bytes is None:
        raise PgBackupError(f"{data_dir} has neither {copy_state.PENDING_CONTROL} nor {CONTROL}: the copy is not finished; run datadir_copy again")
    return pending, control_bytes, pending_path if pending is not None else control_path


def _check_label_fits(data_dir: str, parsed, seg_size: int, expected_start_lsn, stop_lsn, stop_timeline) -> None:
    """The label is this backup's (its start), and the copy's pg_wal, if it holds WAL, has what recovery reads."""
    if expected_start_lsn is not None and parsed.start_lsn != parse_lsn(expected_start_lsn, what="start_lsn"):
        raise PgBackupError(
            f"the label's START WAL LOCATION is {format_lsn(parsed.start_lsn)}, but the backup started at {expected_start_lsn}: "
            "this label belongs to another backup; pass the backup_label that backup_stop returned for this copy"
        )
    if stop_lsn is None:
        return
    tli = stop_timeline if stop_timeline is not None else parsed.start_timeline
    missing = missing_wal(data_dir, start_lsn=parsed.start_lsn, stop_lsn=parse_lsn(stop_lsn, what="stop_lsn"), stop_tli=tli, seg_size=seg_size)
    if missing:
        raise PgBackupError(
            f"pg_wal of {data_dir} holds WAL but lacks {len(missing)} file(s) recovery needs from {format_lsn(parsed.start_lsn)} to {stop_lsn}: "
            f"{', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}; run wal_collect into the copy first",
            missing=missing,
        )


def _apply(data_dir: str, label: Optional[bytes], new_map: bytes, existing_map: Optional[bytes], pending: Optional[bytes], guard_control: bool) -> None:
    """Write the label (when ``label`` is given), the map, then pg_control from its pending name: pg_control last, so
    the copy can start only once its label is in place."""
    info = os.stat(data_dir)
    owner, mode = (info.st_uid, info.st_gid), file_mode(data_dir)
    if label is not None:
        write_atomically(os.path.join(data_dir, LABEL), bytes(label), mode=mode, owner=owner)
    map_path = os.path.join(data_dir, MAP)
    if new_map:
        if existing_map != new_map:
            write_atomically(map_path, new_map, mode=mode, owner=owner)
    elif existing_map is not None:
        os.unlink(map_path)  # a stale map would make recovery recreate tablespace links that do not belong here
        fsync_dir(data_dir)
    if pending is not None:
        pending_path = os.path.join(data_dir, copy_state.PENDING_CONTROL)
        data = guard_control_bytes(pending, source=pending_path) if guard_control else pending
        write_atomically(os.path.join(data_dir, CONTROL), data, mode=mode, owner=owner)
        os.unlink(pending_path)
        fsync_dir(os.path.dirname(pending_path))
