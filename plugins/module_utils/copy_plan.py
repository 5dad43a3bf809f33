# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a copy takes (``make_plan``: the listing filtered with :mod:`exclusions` for the source's major, tablespaces
mapped, pg_control apart to be copied last) and the refusals about its destination before anything is written
(``check_destination``: not empty without delta, a running server there, nested paths, a tablespace onto its source, too
little free space, a delta onto what is not a copy of this cluster), with what a delta copy removes there.

``source_kind="finished_backup"`` plans the restore of a finished backup instead (its rules in finished_backup.py): the
whole backup but our working files, its tablespaces from its tablespace_map.

``snapshot_paths`` (a live copy from filesystem snapshots, see snapshot_paths.py): each tablespace is read from the
snapshot of its live location (``read_from``); its mapping, its link in the copy and ``source`` stay the live location."""

from __future__ import annotations

import os
from typing import Optional

from . import copy_state, finished_backup
from .copy_source import Entry, Source, list_local, list_tree
from .errors import PgBackupError
from .exclusions import Exclusions, wal_dirs_kept
from .postmaster import postmaster_status
from .snapshot_paths import OPTION as SNAPSHOT_OPTION
from .snapshot_paths import checked_snapshot_paths, snapshot_location


class Plan:
    """What will be copied: ``roots`` maps a destination root to (source root, entries)."""

    def __init__(self) -> None:
        self.major = 0
        self.roots: list = []  # (src_root, dest_root, [Entry])
        self.tablespaces: list = []  # dicts: oid, source, dest, in_place
        self.excluded: list = []
        self.control: Optional[Entry] = None
        self.system_identifier: Optional[int] = None
        self.source_kind = finished_backup.LIVE
        self.new_map: Optional[bytes] = None  # finished_backup: the tablespace_map written instead of the backup's

    @property
    def files(self) -> int:
        return sum(1 for _s, _d, es in self.roots for e in es if e.kind == "f") + (1 if self.control else 0)

    @property
    def bytes(self) -> int:
        return sum(e.size for _s, _d, es in self.roots for e in es if e.kind == "f") + (self.control.size if self.control else 0)


def _inside(a: str, b: str) -> bool:
    a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b.rstrip("/") + "/")


def _read_head(source: Source, path: str, size: int) -> bytes:
    if source.remote:
        return source.run(["head", "-c", str(size), path])
    with open(path, "rb") as f:
        return f.read(size)


def make_plan(source: Source, dest: str, tablespace_mapping: dict, excludes: list, *, source_kind: str = finished_backup.LIVE,
              snapshot_paths: Optional[dict] = None) -> Plan:  # fmt: skip
    """What to copy from ``source`` into ``dest``: the main tree, then each tablespace at its mapped place."""
    snapshots = checked_snapshot_paths(snapshot_paths)
    if snapshots and source_kind != finished_backup.LIVE:
        raise PgBackupError(f"{SNAPSHOT_OPTION} is for source_kind {finished_backup.LIVE} only (a copy made from snapshots of a live directory)")
    if source_kind == finished_backup.FINISHED_BACKUP:
        return _finished_backup_plan(source, dest, tablespace_mapping)
    if source_kind != finished_backup.LIVE:
        raise PgBackupError(f"source_kind must be one of {', '.join(finished_backup.SOURCE_KINDS)}, not {source_kind!r}")
    plan = Plan()
    entries = list_tree(source, source.path)
    names = {e.rel: e for e in entries}
    plan.major = _source_major(source, names)
    rules = Exclusions(plan.major, excludes)
    plan.system_identifier = copy_state.system_identifier_of(_read_head(source, os.path.join(source.path, "global", "pg_control"), 8))
    main = _main_entries(source, dest, entries, tablespace_mapping, plan, snapshots)
    main, inner = _skip_tablespaces_inside(main, plan.tablespaces, source)
    plan.excluded.extend(inner)
    kept, dropped = rules.filter([(e.rel, e.kind) for e in main])
    plan.excluded.extend(dropped)
    keep = {rel for rel, _k in kept}
    main_entries = [e for e in main if e.rel in keep and e.rel != "global/pg_control"]
    plan.control = names["global/pg_control"]
    # pg_wal as a directory, with archive_status (and summaries on 17+), even when the source's is a symlink
    have = {e.rel for e in main_entries}
    for d in ("pg_wal", *wal_dirs_kept(plan.major)):
        if d not in have:
            main_entries.append(Entry(d, "d", 0, names[""].mode))
    plan.roots.append((source.path, dest, main_entries))
    for ts in plan.tablespaces:
        if not ts["in_place"]:
            plan.roots.append(_tablespace_root(source, ts, rules, plan))
    return plan


def _finished_backup_plan(source: Source, dest: str, tablespace_mapping: dict) -> Plan:
    """A finished backup (see finished_backup): all of it but our working files, its tablespaces from its
    tablespace_map, each copied whole to its mapped place, the map rewritten when one moves."""
    plan = Plan()
    plan.source_kind = finished_backup.FINISHED_BACKUP
    entries = list_tree(source, source.path)
    names = {e.rel: e for e in entries}
    finished_backup.check_source(source, names)  # first: a pending pg_control is a backup whose label was not placed
    plan.major = _source_major(source, names)
    plan.system_identifier = copy_state.system_identifier_of(_read_head(source, os.path.join(source.path, "global", "pg_control"), 8))
    plan.control = names["global/pg_control"]
    map_text = source.run(["cat", os.path.join(source.path, finished_backup.MAP)]) if finished_backup.MAP in names else None
    for oid, path in finished_backup.listed_tablespaces(source, names, map_text, plan.major):
        plan.tablespaces.append({"oid": oid, "source": path, "dest": _mapped_place(source, oid, path, tablespace_mapping), "in_place": False})
    for rel, e in names.items():
        if rel.count("/") == 1 and rel.startswith("pg_tblspc/") and e.kind == "d":
            plan.tablespaces.append({"oid": rel.split("/")[1], "source": os.path.join(source.path, rel), "dest": os.path.join(dest, rel), "in_place": True})
    plan.new_map = finished_backup.rewritten_map(plan.tablespaces, plan.major)
    main, inner = _skip_tablespaces_inside(entries, plan.tablespaces, source)
    kept, dropped = finished_backup.kept_entries(main, plan.new_map is not None)
    plan.excluded.extend(inner + dropped)
    plan.roots.append((source.path, dest, kept))
    for ts in plan.tablespaces:
        if not ts["in_place"]:
            plan.roots.append((ts["source"], ts["dest"], list_tree(source, ts["source"])))
    return plan


def _source_major(source: Source, names: dict) -> int:
    """The source's major version from its PG_VERSION; refuses what is not a data directory of 13 to 18."""
    if "PG_VERSION" not in names or names["PG_VERSION"].kind != "f" or "global/pg_control" not in names:
        raise PgBackupError(f"{source.path} is not a PostgreSQL data directory (no PG_VERSION or global/pg_control)", source=source.path)
    version = source.run(["cat", os.path.join(source.path, "PG_VERSION")]).decode().strip()
    try:
        major = int(version.split(".")[0])
    except ValueError as exc:
        raise PgBackupError(f"{source.path}/PG_VERSION holds {version!r}, not a major version") from exc
    if not 13 <= major <= 18:
        raise PgBackupError(f"{source.path} is PostgreSQL {major}; this collection supports 13 to 18")
    return major


def _main_entries(source: Source, dest: str, entries: list, tablespace_mapping: dict, plan: Plan, snapshots: dict) -> list:
    """The main tree's entries; each tablespace found in pg_tblspc goes into ``plan.tablespaces`` on the way."""
    main: list = []
    for e in entries:
        parts = e.rel.split("/")
        if len(parts) == 2 and parts[0] == "pg_tblspc" and e.kind == "l":
            # The link's target is the tablespace's live location, its identity (mapping, the copy's link) even when
            # it is read from a snapshot: a snapshot's links still point at the live locations.
            read_from = snapshot_location(parts[1], e.target, snapshots) if snapshots else None
            new = _mapped_place(source, parts[1], e.target, tablespace_mapping)
            ts = {"oid": parts[1], "source": e.target, "dest": new, "in_place": False}
            if read_from is not None:
                ts["read_from"] = read_from
            plan.tablespaces.append(ts)
            main.append(e)
            continue
        if len(parts) == 2 and parts[0] == "pg_tblspc" and e.kind == "d":
            plan.tablespaces.append({"oid": parts[1], "source": os.path.join(source.path, e.rel), "dest": os.path.join(dest, e.rel), "in_place": True})
        if e.rel == "pg_wal" and e.kind == "l":
            continue  # sent as a directory
        main.append(e)
    return main


def _mapped_place(source: Source, oid: str, target: str, tablespace_mapping: dict) -> str:
    """Where tablespace ``oid`` (at ``target`` on the source) is copied: its mapping, keyed by OID or old path."""
    new = tablespace_mapping.get(oid) or tablespace_mapping.get(target) or tablespace_mapping.get(target.rstrip("/"))
    if new is None:
        if not source.remote:
            raise PgBackupError(
                f"tablespace {oid} ({target}) has no mapping and would land on its source's own path on this host; give tablespace_mapping",
                tablespace=oid,
            )
        new = target
    new = os.path.normpath(new)
    if not os.path.isabs(new):
        raise PgBackupError(f"tablespace mapping of {oid} to {new!r} must be an absolute path")
    if not source.remote and (_inside(new, target) or _inside(target, new)):
        raise PgBackupError(f"tablespace {oid} would be copied onto or into its own source {target} ({new})", tablespace=oid)
    return new


def _read_location(ts: dict) -> str:
    """Where a tablespace's files are read: its snapshot when the copy is made from snapshots, else its location."""
    return ts.get("read_from", ts["source"])


def _tablespace_root(source: Source, ts: dict, rules: Exclusions, plan: Plan) -> tuple:
    """(source dir, destination dir, entries) of a tablespace kept outside the data directory, with the exclusions."""
    read_from = _read_location(ts)
    tentries = list_tree(source, read_from)
    prefix = f"pg_tblspc/{ts['oid']}/"
    tk, td = rules.filter([(prefix + e.rel if e.rel else prefix.rstrip("/"), e.kind) for e in tentries])
    tkeep = {r for r, _k in tk}
    plan.excluded.extend(td)
    return (read_from, ts["dest"], [e for e in tentries if (prefix + e.rel if e.rel else prefix.rstrip("/")) in tkeep])


def _skip_tablespaces_inside(main: list, tablespaces: list, source: Source) -> tuple[list, list]:
    """A tablespace located inside the data directory (PostgreSQL warns, but allows it) is copied once, as the
    tablespace: the data directory's copy keeps its directory, empty, like pg_basebackup (basebackup.c sendDir skips a
    directory that is a tablespace's ``rpath``). Without this its files were copied twice, once as plain files.
    From snapshots the place read is compared: the live location is inside the live data directory, not the snapshot."""
    root = os.path.normpath(source.path)
    inner = {}
    for ts in tablespaces:
        if ts["in_place"]:
            continue
        read_from = _read_location(ts)
        target = os.path.normpath(read_from if os.path.isabs(read_from) else os.path.join(root, "pg_tblspc", read_from))
        if not source.remote:
            target, root_real = os.path.realpath(target), os.path.realpath(root)
        else:
            root_real = root
        if target.startswith(root_real.rstrip("/") + "/"):
            inner[os.path.relpath(target, root_real)] = ts["oid"]
    if not inner:
        return main, []
    kept, skipped = [], []
    for e in main:
        location = next((rel for rel in inner if e.rel.startswith(rel + "/")), None)
        if location is None:
            kept.append(e)
        else:
            skipped.append((e.rel, f"inside the location of tablespace {inner[location]}: copied once, as that tablespace"))
    return kept, skipped


def check_destination(source: Source, plan: Plan, dest: str, delta: bool) -> None:
    """Refusals about the destination, before anything is written."""
    if plan.source_kind == finished_backup.FINISHED_BACKUP:
        finished_backup.check_destinations_empty(source, [droot for _src, droot, _es in plan.roots])
    for _src, droot, _es in plan.roots:
        if os.path.lexists(droot) and not os.path.isdir(droot):
            raise PgBackupError(f"destination {droot} exists and is not a directory", dest=droot)
        if os.path.isdir(droot) and os.listdir(droot) and not delta:
            raise PgBackupError(f"destination {droot} is not empty; use delta: true to bring an existing copy in line", dest=droot)
    server = postmaster_status(dest)
    if server["running"]:
        pid = server["pid"]
        raise PgBackupError(f"destination {dest} holds the data directory of a running server (postmaster PID {pid}); stop it first", dest=dest, pid=pid)
    if not source.remote:
        for sroot, droot, _es in plan.roots:
            if _inside(droot, sroot) or _inside(sroot, droot):
                raise PgBackupError(f"destination {droot} and source {sroot} are nested on the same host", dest=droot, source=sroot)
    if delta:
        check_delta_destination(source, plan, dest)
    # free space, per destination filesystem
    need: dict = {}
    for _src, droot, es in plan.roots:
        probe = droot
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        dev = os.stat(probe).st_dev
        size = sum(e.size for e in es if e.kind == "f")
        if droot == dest and plan.control:
            size += plan.control.size
        if delta:
            size = 0  # rsync replaces files one at a time; only growth matters, which we cannot know cheaply
        entry = need.setdefault(dev, [probe, droot, 0])
        entry[2] += size
    for probe, droot, size in need.values():
        st = os.statvfs(probe)
        free = st.f_bavail * st.f_frsize
        if size > free:
            raise PgBackupError(
                f"too little free space at the destination {droot}: the copy needs {size} bytes, {free} are free",
                dest=droot,
                needed=size,
                free=free,
            )


def _non_empty(path: str) -> bool:
    return os.path.isdir(path) and bool(os.listdir(path))


def check_delta_destination(source: Source, plan: Plan, dest: str) -> None:
    """Delta removes what the source does not have: refuse a destination that is not a copy of the source's cluster
    (see ``copy_state.copy_identity``), naming what would have been removed."""
    src = f"{source.host}:{source.path}" if source.remote else source.path
    if not _non_empty(dest):
        for _src, droot, _es in plan.roots[1:]:
            if _non_empty(droot):
                raise PgBackupError(
                    f"delta refuses the tablespace destination {droot}: it is not empty, and {dest} (empty) is no copy of {src} that "
                    f"it could belong to, so what it holds is not ours to remove; empty it or map the tablespace to an empty directory",
                    dest=droot,
                )
        return
    sysid, evidence = copy_state.copy_identity(dest)
    if sysid is not None and sysid == plan.system_identifier:
        return
    doomed = delta_remove(plan, dest, dry_run=True)
    shown = ", ".join(doomed[:5]) + (f" and {len(doomed) - 5} more" if len(doomed) > 5 else "")
    n = len(doomed)
    would = f"; delta would remove {n} {'entry' if n == 1 else 'entries'} there that the source does not have ({shown})" if doomed else ""
    if sysid is None:
        found = f"it has no global/pg_control, no {copy_state.PENDING_CONTROL} and no {copy_state.INCOMPLETE_MARKER} naming a system identifier"
    else:
        found = f"its {evidence} has system identifier {sysid}, the source's is {plan.system_identifier}"
    raise PgBackupError(
        f"delta refuses the destination {dest}: it is not a copy of the cluster at {src} ({found}){would}. delta only brings an earlier "
        "copy of the same cluster in line; choose an empty destination, or empty this one yourself if nothing in it is needed",
        dest=dest,
        dest_system_identifier=sysid,
        source_system_identifier=plan.system_identifier,
        would_remove=doomed,
    )


def delta_removals(plan: Plan, dest: str) -> list:
    """What a delta copy into ``dest`` would remove (check mode); nothing is touched."""
    return delta_remove(plan, dest, dry_run=True)


def delta_remove(plan: Plan, dest: str, dry_run: bool = False) -> list:
    """Remove what the destination has beyond the plan (delta mode); returns the removed relative paths (those it
    would remove with ``dry_run``). At a tablespace's destination only the directories the plan copies there
    (``PG_<major>_<catversion>``) are touched: another major's directory or a file beside them is not ours."""
    removed = []
    for _src, droot, es in plan.roots:
        wanted = {e.rel for e in es}
        ours = None if droot == dest else {e.rel.split("/")[0] for e in es if e.rel}
        prefix = "" if droot == dest else f"{droot}/"
        if droot == dest:
            wanted |= set(copy_state.OWN_FILES) | {copy_state.PENDING_CONTROL}
        if not os.path.isdir(droot):
            continue
        for e in sorted(list_local(droot), key=lambda x: x.rel, reverse=True):
            if not e.rel or e.rel in wanted:
                continue
            if droot == dest and e.rel.split("/")[0] == "pg_tblspc" and len(e.rel.split("/")) > 1:
                continue  # tablespace roots are handled by their own plan
            if ours is not None and e.rel.split("/")[0] not in ours:
                continue
            path = os.path.join(droot, e.rel)
            if dry_run:
                removed.append(prefix + e.rel)
                continue
            if e.kind == "d" and not os.path.islink(path):
                if not os.listdir(path):
                    os.rmdir(path)
            else:
                os.unlink(path)
            removed.append(prefix + e.rel)
    return removed


def oid_of(plan: Plan, droot: str) -> str:
    """The tablespace whose copy goes to ``droot``."""
    for ts in plan.tablespaces:
        if ts["dest"] == droot:
            return ts["oid"]
    raise PgBackupError(f"no tablespace copies to {droot}")
