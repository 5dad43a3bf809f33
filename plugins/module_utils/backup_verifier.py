# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Offline checks of a finished copy (backup_verify): every problem is collected, none stops the others.

A copy is restorable when its backup_label is there and parseable, pg_control is in place with a valid CRC, the WAL
from the label's start to the stop LSN is there and belongs to the cluster, the manifest (if any) matches the files,
nothing a base backup leaves out was copied, and the files belong to the data directory's owner with PostgreSQL's
modes. ``pg_verifybackup`` of the copy's major version is run too when it is on the host.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from typing import Optional

from . import copy_state, processes
from .backup_label import parse_backup_label
from .durable import read_if_exists
from .errors import PgBackupError
from .exclusions import Exclusions
from .lsn import format_lsn, parse_lsn
from .page_audit import audit, page_problems, relation_segment
from .page_checksum import BLCKSZ
from .pg_control import PG_CONTROL_FILE_SIZE, is_guarded, parse_control_file
from .system_identifier import expected_system_identifier
from .tablespace_map import parse_tablespace_map
from .wal import classify_wal_file, history_file_name, history_files_needed, old_timeline_files, parse_history, segments_between
from .wal_segment import check_records_through, validate_segment

# pg_verifybackup ignores these too: recovery_config may change them after the manifest was written.
MANIFEST_IGNORED = ("backup_manifest", "postgresql.auto.conf", "recovery.signal", "standby.signal")
TOP_EXPECTED = ("backup_label", "tablespace_map", "backup_manifest")
PG_TOP_FILES = ("PG_VERSION", "backup_label", "tablespace_map", "backup_manifest", "postmaster.pid", "postmaster.opts", "current_logfiles")
LISTED = 10  # offenders named per kind of problem


def _few(items: list) -> str:
    return ", ".join(items[:LISTED]) + (f" and {len(items) - LISTED} more" if len(items) > LISTED else "")


class Verifier:
    def __init__(
        self,
        data_dir: str,
        *,
        stop_lsn: Optional[str] = None,
        stop_timeline: Optional[int] = None,
        wal_dir: Optional[str] = None,
        remapped_tablespace_map: bool = False,
        parallel: int = 1,
        copied_from: str = "auto",
        expect_system_identifier: Optional[str] = None,
    ) -> None:
        self.data_dir = os.path.abspath(data_dir)
        # A restore that moved tablespaces rewrote tablespace_map: its entries are still checked against pg_tblspc, but
        # not against the manifest's checksum of the backup's own map.
        self.remapped_tablespace_map = remapped_tablespace_map
        self.stop_lsn = None if stop_lsn is None else parse_lsn(stop_lsn, what="stop_lsn")
        self.stop_tli = stop_timeline
        # Whose files these are: a coordinated backup's label says BACKUP FROM primary although a standby gave the files,
        # so the role says so; "auto" trusts the label.
        if copied_from not in ("auto", "primary", "standby"):
            raise PgBackupError(f"copied_from must be auto, primary or standby, got {copied_from!r}")
        self.copied_from = copied_from
        self.expect_sysid = expected_system_identifier(expect_system_identifier)
        self.wal_dir = os.path.abspath(wal_dir) if wal_dir else os.path.join(self.data_dir, "pg_wal")
        self.problems: list = []
        self.notes: list = []
        self.report: dict = {"data_dir": self.data_dir, "wal_dir": self.wal_dir}
        self.control = None
        self.label = None
        self.manifest: Optional[dict] = None
        self.tablespaces: dict = {}  # oid (str) -> directory where the copy's tablespace is
        self.expected_digests: dict = {}  # rel -> (algorithm, hex digest) from backup_manifest
        self.parallel = max(1, parallel)

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def run(self) -> dict:
        # A copy killed mid-way has its marker but often no PG_VERSION yet (the copy goes largest first): say what it is.
        if os.path.isdir(self.data_dir) and not os.path.isfile(os.path.join(self.data_dir, "PG_VERSION")) and copy_state.is_incomplete(self.data_dir):
            raise PgBackupError(
                f"{self.data_dir} is an unfinished copy ({copy_state.INCOMPLETE_MARKER} is there, and PG_VERSION was not copied yet): "
                "its copy failed or was killed; it cannot be verified or restored: take the backup again",
                path=self.data_dir,
            )
        if not os.path.isdir(self.data_dir) or not os.path.isfile(os.path.join(self.data_dir, "PG_VERSION")):
            raise PgBackupError(f"{self.data_dir} is not a copy of a PostgreSQL data directory (no PG_VERSION)", path=self.data_dir)
        if copy_state.is_incomplete(self.data_dir):
            self.problem(f"the copy is incomplete ({copy_state.INCOMPLETE_MARKER} is there): its datadir_copy failed or was killed")
        self.check_control()
        self.check_label()
        self.check_control_source()
        self.check_tablespaces()
        self.check_manifest()
        self.check_wal()
        self.check_files()
        self.report["problems"] = self.problems
        self.report["notes"] = self.notes
        return self.report

    # --- pg_control and backup_label -------------------------------------------------------------------------
    def check_control(self) -> None:
        path = os.path.join(self.data_dir, "global", "pg_control")
        data = read_if_exists(path)
        if data is None:
            if os.path.exists(os.path.join(self.data_dir, copy_state.PENDING_CONTROL)):
                self.problem(f"global/pg_control is missing, only {copy_state.PENDING_CONTROL} is there: label_place was not run")
            else:
                self.problem("global/pg_control is missing: PostgreSQL cannot start this copy")
            return
        try:
            self.control = parse_control_file(data[: PG_CONTROL_FILE_SIZE + 1], source=path)
        except PgBackupError as exc:
            self.problem(f"global/pg_control is not valid: {exc.message}")
            return
        c = self.control
        self.report["control"] = {
            "system_identifier": str(c.system_identifier),
            "major_version": c.major_version,
            "guarded": is_guarded(c),
            "checkpoint_lsn": format_lsn(c.checkpoint_lsn),
            "timeline": c.timeline,
            "wal_segment_size": c.xlog_seg_size,
            "state": c.state_name,
        }
        self.report["major_version"] = c.major_version
        self.report["system_identifier"] = str(c.system_identifier)

    def check_control_source(self) -> None:
        """The copied pg_control against the server the files came from (after check_label: the label names it).

        A standby's files are only a backup while the standby stayed in recovery on the backup's timeline. A standby
        promoted during the copy leaves pg_control "in production" (or its minimum recovery point on the new timeline):
        PostgreSQL then refuses the copy (backup_label contains data inconsistent with control file, or could not locate
        required checkpoint record), and nothing else in the copy shows it.
        """
        c = self.control
        if c is None:
            return
        if self.expect_sysid is not None and str(c.system_identifier) != self.expect_sysid:
            self.problem(
                f"pg_control's system identifier is {c.system_identifier}, expected {self.expect_sysid} (the server the backup was "
                "started on): these files are another cluster's; discard this copy and check the data directory the copy was taken from"
            )
        from_standby = self.copied_from == "standby" or (self.copied_from == "auto" and self.label is not None and self.label.from_standby)
        self.report["copied_from"] = "standby" if from_standby else self.copied_from
        if not from_standby:
            return
        timeline = self.stop_tli or (self.label.start_timeline if self.label is not None else None)
        # Shut down in recovery is a standby stopped cleanly: PostgreSQL accepts both for a label BACKUP FROM standby.
        if not c.in_recovery:
            promoted = " (the standby was promoted during the copy)" if c.state_name == "in production" else ""
            self.problem(
                f'the copy\'s files come from a standby but its pg_control says "{c.state_name}", expected "in archive recovery" or '
                f'"shut down in recovery"{promoted}: PostgreSQL cannot start this copy; discard it and back up a standby that stays in recovery'
            )
        if timeline:
            tli = c.min_recovery_point_tli
            if tli == 0 or tli > timeline:
                self.problem(
                    f"the copy's pg_control has its minimum recovery point on timeline {tli}, expected timeline {timeline} (the backup's): "
                    "the standby left the backup's timeline during the copy (promoted or followed a new primary); discard this copy"
                )
            elif tli < timeline:
                self.notes.append(f"pg_control's minimum recovery point is on timeline {tli}, older than the backup's timeline {timeline}")

    def check_label(self) -> None:
        data = read_if_exists(os.path.join(self.data_dir, "backup_label"))
        if data is None:
            if self.control is not None and not is_guarded(self.control):
                self.problem(
                    "backup_label is missing and pg_control is not guarded: PostgreSQL would start crash recovery from the wrong "
                    "checkpoint (pg_control's, not the backup's) and silently corrupt the copy; place the label again (label_place)"
                )
            else:
                self.problem("backup_label is missing: the copy cannot be restored without it (its guarded pg_control makes PostgreSQL refuse to start)")
            return
        seg_size = self.control.xlog_seg_size if self.control is not None else None
        try:
            label = parse_backup_label(data, seg_size=seg_size, allow_incremental=True)
        except PgBackupError as exc:
            self.problem(f"backup_label is not valid: {exc.message}")
            return
        if label.is_incremental:
            self.problem("backup_label is an incremental backup's (INCREMENTAL FROM LSN): PostgreSQL cannot start from it; combine it first (pg_combinebackup)")
        if label.is_history_file:
            self.problem("backup_label has STOP lines: it is a .backup history file, not a label")
        self.label = label
        self.report["label"] = label.as_dict()

    def check_tablespaces(self) -> None:
        tblspc = os.path.join(self.data_dir, "pg_tblspc")
        links = {}
        if os.path.isdir(tblspc):
            for name in sorted(os.listdir(tblspc)):
                path = os.path.join(tblspc, name)
                links[name] = os.readlink(path) if os.path.islink(path) else None
        data = read_if_exists(os.path.join(self.data_dir, "tablespace_map"))
        entries = []
        if data:
            try:
                entries = parse_tablespace_map(data, major_version=self.control.major_version if self.control else None)
            except PgBackupError as exc:
                self.problem(f"tablespace_map is not valid: {exc.message}")
        mapped = {str(oid): path for oid, path in entries}
        for oid, path in mapped.items():
            if not os.path.isdir(path):
                self.problem(f"tablespace_map names {path} for tablespace {oid}, which is not a directory: recovery would link pg_tblspc/{oid} to nothing")
            elif oid not in links:
                self.problem(f"tablespace_map lists tablespace {oid}, which pg_tblspc of the copy does not have")
            elif links[oid] is not None and os.path.realpath(os.path.join(tblspc, oid)) != os.path.realpath(path):
                self.problem(f"pg_tblspc/{oid} links to {links[oid]} but tablespace_map says {path}: recovery will use the map's path")
            if os.path.isdir(path):
                self.tablespaces[oid] = path
        for oid, target in links.items():
            if oid in mapped:
                continue
            if entries:
                self.problem(f"pg_tblspc/{oid} is not in tablespace_map: recovery removes the links the map does not list")
            if target is not None and os.path.isdir(os.path.join(tblspc, oid)):
                self.tablespaces[oid] = os.path.join(tblspc, oid)
            elif target is not None:
                self.problem(f"pg_tblspc/{oid} links to {target}, which is not a directory")
        self.report["tablespaces"] = dict(self.tablespaces)

    # --- backup_manifest ---------------------------------------------------------------------------------------
    def check_manifest(self) -> None:
        data = read_if_exists(os.path.join(self.data_dir, "backup_manifest"))
        manifest = self._load_manifest(data)
        if manifest is None:
            self.read_pass()
            return
        self.manifest = manifest
        self._check_manifest_header(data, manifest)
        bad = {"missing": [], "size": [], "checksum": []}
        listed = self._check_listed_files(manifest["Files"], bad)
        digests = self.read_pass()
        for rel, (_algo, want) in sorted(self.expected_digests.items()):
            if digests.get(rel) != want:
                bad["checksum"].append(rel)
        extra = self._files_not_listed(listed)
        for kind, text in (
            ("missing", "in backup_manifest but not in the copy"),
            ("size", "of the wrong size"),
            ("checksum", "with a checksum not matching backup_manifest"),
        ):
            if bad[kind]:
                self.problem(f"{len(bad[kind])} file(s) {text}: {_few(bad[kind])}")
        if extra:
            self.problem(f"{len(extra)} file(s) in the copy but not in backup_manifest: {_few(extra)}")
        self.report["manifest"] = {
            "files": len(manifest["Files"]),
            "version": manifest.get("PostgreSQL-Backup-Manifest-Version"),
            "wal_ranges": manifest.get("WAL-Ranges"),
        }

    def _load_manifest(self, data: Optional[bytes]) -> Optional[dict]:
        """The parsed backup_manifest, or None (with a note when there is none, a problem when it does not parse)."""
        if data is None:
            self.report["manifest"] = None
            self.notes.append("no backup_manifest: file sizes and checksums not checked")
            return None
        try:
            manifest = json.loads(data.decode("utf-8", "surrogateescape"))
            files = manifest["Files"]
            if not isinstance(files, list):
                raise TypeError("Files is not a list")
        except (ValueError, KeyError, TypeError) as exc:
            self.problem(f"backup_manifest cannot be parsed: {exc}")
            return None
        return manifest

    def _check_manifest_header(self, data: bytes, manifest: dict) -> None:
        """The manifest's own checksum, and its System-Identifier (17 and later) against pg_control's."""
        where = data.rfind(b'"Manifest-Checksum"')
        recorded = manifest.get("Manifest-Checksum")
        if where < 0 or hashlib.sha256(data[:where]).hexdigest() != recorded:
            self.problem("backup_manifest's Manifest-Checksum does not match its contents: the manifest was changed or damaged")
        sysid = manifest.get("System-Identifier")
        if sysid is not None and self.control is not None and sysid != self.control.system_identifier:
            self.problem(f"backup_manifest's System-Identifier {sysid} is not pg_control's {self.control.system_identifier}")

    def _check_listed_files(self, files: list, bad: dict) -> set:
        """Each file the manifest lists: there, of its size; the digests to compare are kept for the read pass."""
        listed = set()
        for entry in files:
            rel = entry["Path"] if "Path" in entry else os.fsdecode(bytes.fromhex(entry.get("Encoded-Path", "")))
            listed.add(rel)
            if rel == "tablespace_map" and self.remapped_tablespace_map:
                continue
            try:
                info = os.stat(os.path.join(self.data_dir, rel))
            except OSError:
                bad["missing"].append(rel)
                continue
            if info.st_size != entry.get("Size"):
                bad["size"].append(f"{rel} ({info.st_size} bytes, manifest {entry.get('Size')})")
                continue
            algo = (entry.get("Checksum-Algorithm") or "NONE").upper().replace("-", "")
            if algo != "NONE":
                self.expected_digests[rel] = (algo, str(entry.get("Checksum", "")).lower())
        return listed

    def _files_not_listed(self, listed: set) -> list:
        """Files of the copy the manifest does not list (pg_wal, our own files and those recovery_config changes aside)."""
        extra = []
        for rel, kind, _info in self.walk():
            if kind == "f" and rel not in listed and rel not in MANIFEST_IGNORED and not rel.startswith(("pg_wal/", ".pgbackup-")):
                extra.append(rel)
        return extra

    # --- one read of every file: manifest digests, page LSNs and checksums ------------------------------------------
    def page_bound(self) -> tuple:
        """The copy's end point and what it is: no page may carry a later LSN (see page_audit)."""
        if self.label is not None and self.label.from_standby and self.control is not None:
            return self.control.min_recovery_point, "the minimum recovery point of the copied pg_control, this being a backup from a standby"
        if self.stop_lsn is not None:
            return self.stop_lsn, "the backup's stop LSN"
        ranges = (self.manifest or {}).get("WAL-Ranges") or []
        if ranges:
            return parse_lsn(ranges[-1]["End-LSN"]), "the end of backup_manifest's WAL-Ranges"
        return None, None

    def read_pass(self) -> dict:
        """Read each file once (in ``parallel`` processes): the digests the manifest asks for, every relation page audited."""
        c = self.control
        audit_pages = c is not None and c.blcksz == BLCKSZ
        files = []
        for rel, kind, _info in self.walk():
            if kind != "f" or rel.startswith(("pg_wal/", ".pgbackup-")):
                continue
            want = self.expected_digests.get(rel)
            if want is None and not (audit_pages and relation_segment(rel) is not None):
                continue
            files.append((os.path.join(self.data_dir, rel) if not rel.startswith("pg_tblspc/") else self.tablespace_path(rel), rel, want[0] if want else None))
        bound, bound_what = self.page_bound() if audit_pages else (None, None)
        start = self.label.start_lsn if self.label is not None else 0
        checksums = bool(audit_pages and c.data_checksums and self.label is not None)
        by_rel, summary = audit(
            files, parallel=self.parallel, checksums=checksums, start_lsn=start, bound=bound, relseg_size=c.relseg_size if c is not None else 131072
        )
        summary["bound_source"] = bound_what
        self.report["pages"] = summary
        if c is not None and not audit_pages:
            self.notes.append(f"pages not audited: the copy's block size is {c.blcksz}, not {BLCKSZ}")
        elif audit_pages and bound is None:
            self.notes.append("page LSNs not checked against the end point: give stop_lsn (or keep backup_manifest's WAL-Ranges)")
        if audit_pages and c.data_checksums and not summary["checksums"]:
            self.notes.append(
                "page checksums not verified: "
                + ("no valid backup_label (its start LSN decides which pages may be torn)" if self.label is None else "this host is big-endian")
            )
        for text in page_problems(by_rel, bound, bound_what):
            self.problem(text)
        return {rel: r["digest"] for rel, r in by_rel.items()}

    def tablespace_path(self, rel: str) -> str:
        """pg_tblspc/<oid>/... of the copy, where that tablespace's directory really is."""
        _top, oid, rest = rel.split("/", 2)
        return os.path.join(self.tablespaces.get(oid, os.path.join(self.data_dir, "pg_tblspc", oid)), rest)

    # --- WAL ----------------------------------------------------------------------------------------------------
    def check_wal(self) -> None:
        report: dict = {"checked": [], "missing": [], "invalid": []}
        self.report["wal"] = report
        if self.control is None:
            return
        names = sorted(os.listdir(self.wal_dir)) if os.path.isdir(self.wal_dir) else []
        self._check_wal_clusters(names)
        stop, stop_tli = self._wal_stop()
        if self.label is None:
            return
        if stop is None:
            self.notes.append("WAL range not checked: give stop_lsn (or a backup_manifest with WAL-Ranges)")
            return
        stop_tli = stop_tli or self.label.start_timeline
        report.update(start_lsn=format_lsn(self.label.start_lsn), stop_lsn=format_lsn(stop), stop_timeline=stop_tli)
        history = self._stop_history(stop_tli, names)
        if history is None:
            return
        try:
            needed = segments_between(self.label.start_lsn, stop, stop_tli, history, self.control.xlog_seg_size)
        except PgBackupError as exc:
            self.problem(f"the WAL range cannot be computed: {exc.message}")
            return
        for i, name in enumerate(needed):
            self._check_needed_segment(name, stop if i == len(needed) - 1 else None, report)
        if report["missing"]:
            self.problem(
                f"{len(report['missing'])} WAL segment(s) recovery needs from {format_lsn(self.label.start_lsn)} to {format_lsn(stop)} "
                f"are missing from {self.wal_dir}: {_few(report['missing'])}"
            )
        self.check_old_timeline_wal(stop, stop_tli, history, report)

    def _check_wal_clusters(self, names: list) -> None:
        """Every segment in the WAL directory must be this cluster's, needed or not."""
        sysid = self.control.system_identifier
        for name in names:
            if classify_wal_file(name) != "segment":
                continue
            with open(os.path.join(self.wal_dir, name), "rb") as handle:
                head = handle.read(40)
            if len(head) == 40 and int.from_bytes(head[24:32], "little") not in (0, sysid):
                self.problem(
                    f"WAL segment {name} belongs to another cluster: system identifier {int.from_bytes(head[24:32], 'little')}, pg_control says {sysid}"
                )

    def _wal_stop(self) -> tuple:
        """``(stop LSN, stop timeline)``: as given, else the manifest's first WAL-Ranges entry; either may be None."""
        stop, stop_tli = self.stop_lsn, self.stop_tli
        ranges = (self.manifest or {}).get("WAL-Ranges") or []
        if stop is None and ranges:
            stop = parse_lsn(ranges[0]["End-LSN"])
            stop_tli = stop_tli or ranges[0]["Timeline"]
        return stop, stop_tli

    def _stop_history(self, stop_tli: int, names: list) -> Optional[list]:
        """The stop timeline's history ([] on timeline 1), or None when it is missing or damaged (the range is unknown then).

        Every ancestor's history file must be there too (a problem, the range is still checked): recovery looks for
        them, and an archive without them does not describe itself.
        """
        if stop_tli <= 1:
            return []
        text = read_if_exists(os.path.join(self.wal_dir, history_file_name(stop_tli)))
        if text is None:
            self.problem(f"history file {history_file_name(stop_tli)} of the stop timeline is missing from {self.wal_dir}")
            return None
        try:
            history = parse_history(text.decode("utf-8", "replace"), stop_tli)
        except PgBackupError as exc:
            self.problem(f"{history_file_name(stop_tli)} is not valid: {exc.message}")
            return None
        absent = [n for n in history_files_needed(stop_tli, history) if n not in names]
        if absent:
            self.problem(f"history file(s) missing from {self.wal_dir}: {', '.join(absent)}")
        return history

    def _check_needed_segment(self, name: str, through_lsn: Optional[int], report: dict) -> None:
        """One segment recovery needs: there, whole, and valid (the last one, ``through_lsn`` given, up to the stop LSN)."""
        c = self.control
        path = os.path.join(self.wal_dir, name)
        if not os.path.isfile(path):
            report["missing"].append(name)
            return
        last = through_lsn is not None
        size = os.path.getsize(path)
        if last and size != c.xlog_seg_size:
            report["invalid"].append(name)
            self.problem(f"WAL segment {name} has {size} bytes, not {c.xlog_seg_size}: it is truncated (recovery reads past the stop LSN)")
            return
        try:
            validate_segment(path, file_name=name, system_identifier=c.system_identifier, seg_size=c.xlog_seg_size,
                             major_version=c.major_version, through_lsn=through_lsn, complete=not last)  # fmt: skip
            report["checked"].append(name)
        except PgBackupError as exc:
            report["invalid"].append(name)
            self.problem(exc.message if name in exc.message else f"WAL segment {name} is not valid: {exc.message}")

    def check_old_timeline_wal(self, stop: int, stop_tli: int, history: list, report: dict) -> None:
        """The old timeline's file of a segment holding a switch, which WAL-Ranges promise and pg_verifybackup reads."""
        c = self.control
        try:
            extra = old_timeline_files(self.label.start_lsn, self.label.start_timeline, stop, stop_tli, history, c.xlog_seg_size)
        except PgBackupError as exc:
            self.problem(f"the WAL ranges per timeline cannot be computed: {exc.message}")
            return
        for name, switchpoint in extra:
            path = os.path.join(self.wal_dir, name)
            if not os.path.isfile(path):
                report["missing"].append(name)
                self.problem(
                    f"WAL file {name} is missing from {self.wal_dir}: timeline {int(name[:8], 16)} switched at {format_lsn(switchpoint)} inside "
                    f"this segment, backup_manifest's WAL-Ranges list that timeline up to the switch, and pg_verifybackup (parsing WAL) reads "
                    f'it from {name} (could not find file "{name}"); recovery does not need it. Collect it again with wal_collect '
                    f"(it takes {name} or {name}.partial from the promoted server's archive or a standby's pg_wal)"
                )
                continue
            try:
                check_records_through(path, file_name=name, system_identifier=c.system_identifier, seg_size=c.xlog_seg_size,
                                      through_lsn=switchpoint, major_version=c.major_version)  # fmt: skip
                report["checked"].append(name)
            except PgBackupError as exc:
                report["invalid"].append(name)
                self.problem(f"{exc.message} (the old timeline's file of the switch segment, which pg_verifybackup reads)")

    # --- files: exclusions, owners, modes -----------------------------------------------------------------------
    def walk(self) -> list:
        """``(relpath, kind, lstat)`` of everything in the copy, tablespaces under ``pg_tblspc/<oid>``."""
        if hasattr(self, "_walked"):
            return self._walked
        out = []
        stack = [("", self.data_dir)]
        while stack:
            rel, path = stack.pop()
            try:
                entries = sorted(os.scandir(path), key=lambda d: d.name)
            except OSError as exc:
                self.problem(f"cannot read {path}: {exc.strerror}")
                continue
            for de in entries:
                r = f"{rel}/{de.name}" if rel else de.name
                info = de.stat(follow_symlinks=False)
                if rel == "pg_tblspc" and de.name in self.tablespaces:
                    target = self.tablespaces[de.name]
                    out.append((r, "d", os.stat(target)))
                    stack.append((r, target))
                elif stat.S_ISDIR(info.st_mode):
                    out.append((r, "d", info))
                    stack.append((r, de.path))
                elif stat.S_ISLNK(info.st_mode):
                    out.append((r, "l", info))
                else:
                    out.append((r, "f", info))
        out.sort(key=lambda t: t[0])
        self._walked = out
        return out

    def check_files(self) -> None:
        top = os.stat(self.data_dir)
        uid, group = top.st_uid, bool(top.st_mode & 0o070)
        dir_mode, file_mode = (0o750, 0o640) if group else (0o700, 0o600)
        wrong = {"owner": [], "mode": [], "excluded": []}
        if stat.S_IMODE(top.st_mode) not in (0o700, 0o750):
            wrong["mode"].append(f". ({stat.S_IMODE(top.st_mode):04o}, expected 0700 or 0750)")
        entries = self.walk()
        rules = Exclusions(self.control.major_version) if self.control is not None else None
        siblings: dict = {}
        for rel, _kind, _info in entries:
            head, _sep, tail = rel.rpartition("/")
            siblings.setdefault(head, set()).add(tail)
        for rel, kind, info in entries:
            if kind == "l":
                continue
            if info.st_uid != uid:
                wrong["owner"].append(f"{rel} (uid {info.st_uid})")
            mode = stat.S_IMODE(info.st_mode)
            want = dir_mode if kind == "d" else file_mode
            # Top-level files other than PostgreSQL's own are the user's (configuration, signal files): readable is fine.
            user_file = kind == "f" and "/" not in rel and rel not in PG_TOP_FILES and mode in (0o600, 0o640, 0o644)
            if mode != want and not (kind == "f" and mode == 0o600) and not user_file:
                wrong["mode"].append(f"{rel} ({mode:04o}, expected {want:04o})")
            if rules is None or rel in TOP_EXPECTED or rel.startswith(".pgbackup-") or rel.startswith("pg_wal/"):
                continue
            why = rules.reason(rel, kind == "d", siblings.get(rel.rpartition("/")[0], set()))
            if why is not None:
                wrong["excluded"].append(f"{rel} ({why})")
        if wrong["owner"]:
            self.problem(f"{len(wrong['owner'])} file(s) not owned by the data directory's owner (uid {uid}): {_few(wrong['owner'])}")
        if wrong["mode"]:
            self.problem(f"{len(wrong['mode'])} file(s) or directories with a wrong mode: {_few(wrong['mode'])}")
        if wrong["excluded"]:
            self.problem(f"{len(wrong['excluded'])} file(s) a base backup leaves out are in the copy: {_few(wrong['excluded'])}")
        self.report["files"] = sum(1 for e in entries if e[1] == "f")


def find_bindir(major: int, pg_bindir: Optional[str], tool: str) -> Optional[str]:
    """The directory holding ``tool`` of PostgreSQL ``major``: ``pg_bindir`` or Debian's /usr/lib/postgresql/<major>/bin."""
    for directory in [d for d in (pg_bindir, f"/usr/lib/postgresql/{major}/bin") if d]:
        path = os.path.join(directory, tool)
        if os.access(path, os.X_OK):
            try:
                out = processes.run([path, "--version"], text=True, timeout=30).stdout
            except OSError:
                continue
            found = re.search(r"\(PostgreSQL\) ([0-9]+)", out)
            if found and found.group(1) == str(major):
                return directory
    return None


def run_verifybackup(verifier: Verifier, pg_bindir: Optional[str]) -> dict:
    """``pg_verifybackup`` of the copy's major version, when there is one and a manifest to check against."""
    if verifier.control is None or verifier.manifest is None:
        return {"ran": False, "reason": "no valid pg_control" if verifier.control is None else "no backup_manifest"}
    major = verifier.control.major_version
    bindir = find_bindir(major, pg_bindir, "pg_verifybackup")
    if bindir is None:
        return {"ran": False, "reason": f"no pg_verifybackup of PostgreSQL {major} on this host"}
    # No -n: the WAL is parsed (pg_waldump over each WAL-Ranges entry, on its timeline's file names), from the
    # wal_dir given or the copy's own pg_wal, where a backup made by the roles keeps its WAL.
    argv = [os.path.join(bindir, "pg_verifybackup"), "-w", verifier.wal_dir]
    if verifier.remapped_tablespace_map:
        argv.append("--ignore=tablespace_map")
    argv.append(verifier.data_dir)
    proc = processes.run(argv, text=True, timeout=3600)
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        verifier.problem(f"pg_verifybackup failed ({proc.returncode}): {output[-2000:]}")
    return {"ran": True, "command": argv, "rc": proc.returncode, "output": output[-4000:]}


def verify(
    data_dir: str,
    *,
    stop_lsn: Optional[str] = None,
    stop_timeline: Optional[int] = None,
    wal_dir: Optional[str] = None,
    pg_bindir: Optional[str] = None,
    pg_verifybackup: bool = True,
    remapped_tablespace_map: bool = False,
    parallel: int = 2,
    copied_from: str = "auto",
    expect_system_identifier: Optional[str] = None,
) -> tuple:
    """Run every offline check; returns ``(verifier, report)`` (``report['problems']`` lists them all)."""
    verifier = Verifier(
        data_dir,
        stop_lsn=stop_lsn,
        stop_timeline=stop_timeline,
        wal_dir=wal_dir,
        remapped_tablespace_map=remapped_tablespace_map,
        copied_from=copied_from,
        expect_system_identifier=expect_system_identifier,
        parallel=parallel,
    )
    report = verifier.run()
    report["pg_verifybackup"] = run_verifybackup(verifier, pg_bindir) if pg_verifybackup else {"ran": False, "reason": "disabled"}
    return verifier, report
