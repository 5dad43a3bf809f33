# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Collect the WAL a backup copy needs into its pg_wal: plan, fetch, validate, install (wal_collect's core).

1. Plan: the stop timeline's history (from the source) gives, with the library's segment math, every segment
   from the start LSN to the stop LSN (``segments_between``) and the history files (``history_files_needed``).
2. What is already in the destination and valid is kept (idempotence).
3. Poll the source until every segment is there and valid, or the timeout. Each round lists the source,
   stages the files there (a copy here, rsync over ssh), validates them with ``validate_segment`` (the last
   one through the stop LSN) and installs the good ones: fsync, owner, mode, rename, fsync of the directory.
4. The last segment of a backup on an idle primary may never be complete: ``switch_wal`` (once) asks the
   primary to switch, ``partial_from`` takes it from a standby's pg_wal checked only through the stop LSN.
   A ``.partial`` file never stands in for a segment otherwise.
5. A timeline switch inside a segment (``old_timeline_files``): the manifest's WAL-Ranges entry of the old timeline
   ends at the switchpoint inside a segment recovery reads from the new timeline, and pg_verifybackup parses that
   range on the old timeline's file names. So the old timeline's file of that segment is collected too (the source's
   ``<old><seg>``, else ``<old><seg>.partial``, in the source and then in ``partial_from``), its records checked
   through the switchpoint, and placed as ``<old><seg>``: the WAL up to the switchpoint, zeros after it (what
   pg_basebackup's WAL streaming leaves for a timeline it left mid-segment). It never changes what a restore
   replays: see ``Collector._collect_old_timeline``.
6. Fails listing every missing or invalid segment and why.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from . import copy_state
from .connection import LazySession
from .durable import fsync_dir, fsync_file
from .errors import PgBackupError
from .lsn import format_lsn, parse_lsn
from .pg_control import ControlFile, read_control_file
from .postmaster import postmaster_status
from .ssh_source import ssh_settings
from .wal import (
    check_segment_size,
    check_timeline,
    history_file_name,
    history_files_needed,
    old_timeline_files,
    parse_history,
    segments_between,
    timeline_ranges,
)
from .wal_segment import check_records_through, validate_segment
from .wal_source import WalSource

STAGING_DIR = ".pgbackup-wal-staging"
TMP_SUFFIX = ".pgbackup-tmp"


@dataclass
class Target:
    """The copy the WAL is for, and where its WAL goes."""

    data_dir: str
    dest: str
    control: ControlFile
    uid: int
    gid: int
    mode: int

    @property
    def system_identifier(self) -> int:
        return self.control.system_identifier

    @property
    def major(self) -> int:
        return self.control.major_version


def open_target(data_dir: str, dest: Optional[str] = None) -> Target:
    """Check the copy (finished, not running), read its pg_control (pending name too), pick owner and file mode."""
    if not os.path.isdir(data_dir):
        raise PgBackupError(f"data directory {data_dir} does not exist: expected the copy made by datadir_copy", path=data_dir)
    copy_state.check_not_incomplete(data_dir)
    pm = postmaster_status(data_dir)
    if pm["running"]:
        raise PgBackupError(
            f"{data_dir} is a running cluster (postmaster PID {pm['pid']}): WAL is collected into a stopped copy only; stop it or point data_dir at the copy",
            path=data_dir,
        )
    control_path = os.path.join(data_dir, "global", "pg_control")
    if not os.path.exists(control_path):
        control_path = os.path.join(data_dir, copy_state.PENDING_CONTROL)
    if not os.path.exists(control_path):
        raise PgBackupError(f"{data_dir} has neither global/pg_control nor {copy_state.PENDING_CONTROL}: not a copy of a data directory", path=data_dir)
    control = read_control_file(control_path)
    dest = os.path.normpath(dest or os.path.join(data_dir, "pg_wal"))
    if not os.path.isdir(dest):
        raise PgBackupError(f"WAL destination {dest} is not a directory: expected the copy's pg_wal or an existing directory", path=dest)
    st = os.stat(data_dir)
    mode = 0o640 if stat.S_IMODE(st.st_mode) == 0o750 else 0o600
    return Target(data_dir, dest, control, st.st_uid, st.st_gid, mode)


@dataclass
class WalPlan:
    segments: list  # every segment, oldest first
    history_files: list  # every history file (ancestors too), oldest first
    required_history: list  # the stop timeline's own file (recovery reads it)
    stop_lsn: int
    seg_size: int
    # (file name, switchpoint): the old timeline's file of a segment holding a switch, needed through the switchpoint
    old_timeline: list = field(default_factory=list)

    @property
    def last(self) -> str:
        return self.segments[-1]


def plan_wal(start_lsn: int, start_tli: int, stop_lsn: int, stop_tli: int, seg_size: int, history_text: Optional[str]) -> WalPlan:
    """The segments and history files of a backup from ``start_lsn`` (``start_tli``) to ``stop_lsn`` (``stop_tli``)."""
    check_segment_size(seg_size)
    check_timeline(stop_tli, "stop timeline")
    check_timeline(start_tli, "start timeline")
    if start_tli > stop_tli:
        raise PgBackupError(f"start timeline {start_tli} is after stop timeline {stop_tli}: the timelines are swapped or from two backups")
    if stop_tli > 1 and history_text is None:
        raise PgBackupError(f"the history of timeline {stop_tli} is needed to plan the WAL of a backup that stopped on it")
    history = parse_history(history_text, stop_tli) if stop_tli > 1 else []
    timeline_ranges(start_lsn, start_tli, stop_lsn, stop_tli, history)
    segments = segments_between(start_lsn, stop_lsn, stop_tli, history, seg_size)
    old = old_timeline_files(start_lsn, start_tli, stop_lsn, stop_tli, history, seg_size)
    return WalPlan(segments, history_files_needed(stop_tli, history), history_files_needed(stop_tli, history, required_only=True), stop_lsn, seg_size, old)


def check_old_timeline_file(path: str, name: str, switchpoint: int, target_sysid: int, seg_size: int, major: Optional[int]) -> Optional[str]:
    """None if ``path`` holds valid WAL records of the old timeline's segment ``name`` up to exactly ``switchpoint``."""
    try:
        check_records_through(path, file_name=name, system_identifier=target_sysid, seg_size=seg_size, through_lsn=switchpoint, major_version=major)
    except PgBackupError as exc:
        return exc.message
    return None


def check_segment(path: str, name: str, target_sysid: int, plan: WalPlan, major: Optional[int], *, partial: bool = False) -> Optional[str]:
    """None if ``path`` is a valid segment ``name`` for the plan, else why not.

    Every segment must be complete; the last one must also hold WAL through the stop LSN. ``partial``
    (the last segment only, from ``partial_from``) checks the pages through the stop LSN alone.
    """
    through = plan.stop_lsn if name in (plan.last, plan.last + ".partial") else None
    if partial and through is None:
        return "only the last segment may be taken incomplete"
    try:
        validate_segment(path, file_name=name, system_identifier=target_sysid, seg_size=plan.seg_size, major_version=major,
                         through_lsn=through, complete=not partial)  # fmt: skip
    except PgBackupError as exc:
        return exc.message
    return None


@dataclass
class Outcome:
    segments: list = field(default_factory=list)  # installed (or would be, in check mode)
    history_files: list = field(default_factory=list)
    present: list = field(default_factory=list)  # already in place and valid
    partial_segment: Optional[str] = None
    old_timeline_segments: list = field(default_factory=list)  # old-timeline files of switch segments written
    wal_switched: bool = False
    bytes: int = 0
    warnings: list = field(default_factory=list)


class Collector:
    """One run of wal_collect. ``switch_wal`` and ``archiver_status`` are callables (None: not available).

    ``archiver_status`` returns pg_stat_archiver's row as a dict (``server`` naming host:port, ``archived_count``,
    ``last_archived_wal``, ``failed_count``, ``last_failed_wal``, ``last_failed_time``), or a string saying why it could
    not be read; a missing segment of an archive is explained with it."""

    def __init__(self, target: Target, source: WalSource, *, source_type: str = "archive", partial_from: Optional[WalSource] = None,
                 timeout: float = 0, poll_interval: float = 1.0, check_mode: bool = False,
                 switch_wal: Optional[Callable[[], str]] = None, archiver_status: Optional[Callable[[], Optional[str]]] = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:  # fmt: skip
        self.target = target
        self.source = source
        self.source_type = source_type
        self.partial_from = partial_from
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.check_mode = check_mode
        self.switch_wal = switch_wal
        self.archiver_status = archiver_status
        self.clock = clock
        self.sleep = sleep
        self.outcome = Outcome()
        self.staging: Optional[str] = None

    # --- the run ---------------------------------------------------------------------------------

    def run(self, start_lsn: int, start_tli: int, stop_lsn: int, stop_tli: int, seg_size: int) -> tuple:
        """Collect everything; returns ``(plan, outcome)`` or raises PgBackupError listing every problem."""
        try:
            self._make_staging()
            history_text = self._history(stop_tli) if stop_tli > 1 else None
            plan = plan_wal(start_lsn, start_tli, stop_lsn, stop_tli, seg_size, history_text)
            self._collect_history(plan, stop_tli)
            todo = [n for n in plan.segments if not self._in_place(n, plan)]
            self._deadline = self.clock() + self.timeout
            self._collect_segments(plan, todo)
            self._collect_old_timeline(plan)
        finally:
            if self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)
        if self.outcome.segments or self.outcome.history_files:
            if not self.check_mode:
                fsync_dir(self.target.dest)
        return plan, self.outcome

    def _make_staging(self) -> None:
        if self.check_mode:
            if self.source.remote or (self.partial_from is not None and self.partial_from.remote):
                self.staging = tempfile.mkdtemp(prefix="pgbackup-wal-")
            return
        self.staging = os.path.join(self.target.dest, STAGING_DIR)
        shutil.rmtree(self.staging, ignore_errors=True)  # left by a run that was killed
        for stale in os.listdir(self.target.dest):
            if stale.endswith(TMP_SUFFIX):
                os.unlink(os.path.join(self.target.dest, stale))
        os.mkdir(self.staging, 0o700)

    def _stage(self, source: WalSource, names: list) -> dict:
        into = None if (self.check_mode and not source.remote) else self.staging
        return source.stage(names, into)

    # --- history files ---------------------------------------------------------------------------

    def _history(self, stop_tli: int) -> str:
        name = history_file_name(stop_tli)
        dest_path = os.path.join(self.target.dest, name)
        staged = self._stage(self.source, [name]) if name in self.source.listing() else {}
        path = staged.get(name) or (dest_path if os.path.isfile(dest_path) else None)
        if path is None:
            raise PgBackupError(
                f"{name}, the history of the stop timeline {stop_tli}, is not in {self.source.describe()}: recovery needs it and the "
                "segments to collect depend on it; check that the promotion's history file was archived",
                problems=[{"file": name, "problem": "missing"}],
            )
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def _collect_history(self, plan: WalPlan, stop_tli: int) -> None:
        listing = self.source.listing()
        wanted = [n for n in plan.history_files if n in listing]
        staged = self._stage(self.source, wanted)
        for name in plan.history_files:
            dest_path = os.path.join(self.target.dest, name)
            if name not in staged:
                if name in plan.required_history and not os.path.isfile(dest_path):
                    raise PgBackupError(f"{name} vanished from {self.source.describe()} while it was read", problems=[{"file": name, "problem": "missing"}])
                if not os.path.isfile(dest_path):
                    self.outcome.warnings.append(f"{name} is not in {self.source.describe()}: recovery does not need it, but looks for it")
                continue
            with open(staged[name], "rb") as handle:
                data = handle.read()
            try:
                parse_history(data.decode("utf-8", "replace"), int(name[:8], 16))
            except PgBackupError as exc:
                raise PgBackupError(f"{name} in {self.source.describe()} is damaged: {exc.message}", problems=[{"file": name, "problem": exc.message}]) from exc
            if _same_content(dest_path, data):
                continue
            self._install(staged[name], name, pad_to=None)
            self.outcome.history_files.append(name)
            self.outcome.bytes += len(data)

    # --- segments --------------------------------------------------------------------------------

    def _in_place(self, name: str, plan: WalPlan) -> bool:
        path = os.path.join(self.target.dest, name)
        if not os.path.isfile(path):
            return False
        ok = self._check(path, name, plan) is None
        if not ok and name == plan.last and self.partial_from is not None:
            ok = self._check(path, name, plan, partial=True) is None
        if ok:
            self.outcome.present.append(name)
        return ok

    def _check(self, path: str, name: str, plan: WalPlan, partial: bool = False) -> Optional[str]:
        return check_segment(path, name, self.target.system_identifier, plan, self.target.major, partial=partial)

    def _collect_segments(self, plan: WalPlan, todo: list) -> None:
        deadline = self._deadline
        switched = False
        while True:
            listing = self.source.listing()
            problems, final = self._round(plan, todo, listing)
            todo = [n for n in todo if n in problems]
            if plan.last in problems and self.partial_from is not None:
                if self._take_partial(plan):
                    del problems[plan.last]
                    todo.remove(plan.last)
            if not todo:
                return
            if plan.last in problems and self.switch_wal is not None and not switched:
                switched = True
                self.outcome.wal_switched = True
                self.switch_wal()
                continue
            if final or self.clock() >= deadline:
                raise self._failure(plan, problems, waited=not final)
            self.sleep(min(self.poll_interval, max(0.0, deadline - self.clock())))

    def _round(self, plan: WalPlan, todo: list, listing: dict) -> tuple:
        """Fetch, check and install what the source has of ``todo``; returns (name -> problem, any final problem)."""
        problems: dict = {}
        final = False
        present = [n for n in todo if n in listing]
        for name in todo:
            if name not in listing:
                problems[name] = "missing"
                if name + ".partial" in listing:
                    problems[name] = (f"missing: only {name}.partial is there, which never stands in for a complete segment "
                                      "(use partial_from for the last segment of a backup)")  # fmt: skip
        staged = self._stage(self.source, present)
        for name in present:
            if name not in staged:
                problems[name] = "missing (vanished from the source while it was fetched)"
                continue
            why = self._check(staged[name], name, plan)
            if why is None:
                self.outcome.bytes += os.path.getsize(staged[name])
                self._install(staged[name], name, pad_to=None)
                self.outcome.segments.append(name)
                continue
            problems[name] = why
            # An archive's full-size file does not change: its problem is final. pg_wal recycles and writes files in place.
            if self.source_type == "archive" and listing[name] == plan.seg_size:
                final = True
            if staged[name].startswith(self.staging or "\0"):
                os.unlink(staged[name])
        return problems, final

    def _take_partial(self, plan: WalPlan) -> bool:
        name = plan.last
        listing = self.partial_from.listing()
        for candidate in (name, name + ".partial"):
            if candidate not in listing:
                continue
            staged = self._stage(self.partial_from, [candidate])
            if candidate not in staged:
                continue
            why = self._check(staged[candidate], candidate, plan, partial=True)
            if why is None:
                size = os.path.getsize(staged[candidate])
                self._install(staged[candidate], name, pad_to=plan.seg_size)
                self.outcome.segments.append(name)
                self.outcome.partial_segment = name
                self.outcome.bytes += size
                return True
            self.outcome.warnings.append(f"{candidate} in {self.partial_from.describe()} is not usable through the stop LSN: {why}")
        return False

    # --- the old timeline's file of a segment holding a switch --------------------------------------------------

    def _collect_old_timeline(self, plan: WalPlan) -> None:
        """Collect what WAL-Ranges promise beyond recovery's segments (``plan.old_timeline``), or fail naming it.

        Why the extra file does not change what a restore replays: recovery opens a segment with
        ``XLogFileReadAnyTLI`` (xlogrecovery.c; xlog.c before 15), which walks the expected timelines (the history of
        ``recoveryTargetTLI``) newest first, skips a timeline whose first segment is after the wanted one
        (``segno < beginseg``), and for each remaining one tries the archive (restore_command) and then pg_wal under
        that timeline's name, returning the first file it opens. For the switch segment the new timeline, which began
        inside it, comes first, and its file is in the copy (``plan.segments``, collected before this runs), so the
        old timeline's file is never opened. That holds for archive recovery (recovery.signal or standby.signal, as
        recovery_config and the restore test write them) with recovery_target_timeline ``latest`` (the default) or
        the stop timeline. Only a start that stays on the old timeline (no signal file: crash recovery from the label
        keeps pg_control's timeline; or recovery_target_timeline ``current``) opens it, and then it finds the WAL up to
        the switchpoint, byte for byte what the new timeline's file starts with (XLogInitNewTimeline copies it there),
        instead of no file; such a start never reaches a stop on the new timeline either way. pg_basebackup's own WAL
        streaming leaves the same file in its backups.
        """
        sources = [self.source]
        if self.partial_from is not None and self.partial_from.describe() != self.source.describe():
            sources.append(self.partial_from)  # the role's standby_pg_wal passes the same directory twice
        for name, switchpoint in plan.old_timeline:
            dest_path = os.path.join(self.target.dest, name)
            if os.path.isfile(dest_path) and self._check_old(dest_path, name, switchpoint, plan) is None:
                self.outcome.present.append(name)
                continue
            while True:
                tried = []
                if self._take_old(name, switchpoint, plan, sources, tried):
                    break
                if self.clock() >= self._deadline:
                    raise self._old_failure(name, switchpoint, plan, sources, tried)
                self.sleep(min(self.poll_interval, max(0.0, self._deadline - self.clock())))

    def _check_old(self, path: str, name: str, switchpoint: int, plan: WalPlan) -> Optional[str]:
        return check_old_timeline_file(path, name, switchpoint, self.target.system_identifier, plan.seg_size, self.target.major)

    def _take_old(self, name: str, switchpoint: int, plan: WalPlan, sources: list, tried: list) -> bool:
        for source in sources:
            listing = source.listing()
            for candidate in (name, name + ".partial"):
                if candidate not in listing:
                    continue
                staged = self._stage(source, [candidate])
                if candidate not in staged:
                    continue
                why = self._check_old(staged[candidate], candidate, switchpoint, plan)
                if why is not None:
                    tried.append(f"{candidate} in {source.describe()}: {why}")
                    if staged[candidate].startswith(self.staging or "\0"):
                        os.unlink(staged[candidate])
                    continue
                self._install_old(staged[candidate], name, switchpoint % plan.seg_size, plan.seg_size)
                self.outcome.old_timeline_segments.append(name)
                self.outcome.segments.append(name)
                self.outcome.bytes += switchpoint % plan.seg_size
                return True
        return False

    def _install_old(self, staged: str, name: str, keep: int, seg_size: int) -> None:
        """``name`` holding the first ``keep`` bytes of ``staged`` (the WAL up to the switchpoint), zeros after."""
        if self.check_mode:
            return
        tmp = os.path.join(self.staging or self.target.dest, name + ".old-timeline" + TMP_SUFFIX)
        with open(staged, "rb") as fin, open(tmp, "wb") as fout:
            fout.write(fin.read(keep))
        os.truncate(tmp, seg_size)
        self._install(tmp, name, pad_to=None)

    def _old_failure(self, name: str, switchpoint: int, plan: WalPlan, sources: list, tried: list) -> PgBackupError:
        where = " and ".join(s.describe() for s in sources)
        found = "; ".join(tried) if tried else "neither file is there"
        old_tli = int(name[:8], 16)
        message = (
            f"{name}, timeline {old_tli}'s file of the segment where the timeline switched at {format_lsn(switchpoint)}, is needed "
            f"through {format_lsn(switchpoint)}: backup_manifest's WAL-Ranges list timeline {old_tli} up to that switchpoint and "
            f"pg_verifybackup (parsing WAL) reads it from {name}, so without it the copy would be refused "
            f'(could not find file "{name}"); recovery itself does not read it. Looked for {name} and {name}.partial in {where} '
            f"for {self.timeout:g} s: {found}. Point partial_from (or source_path) at the WAL archive of the server that was "
            f"promoted, which archives {name}.partial at promotion, or at the pg_wal of a standby that streamed timeline {old_tli} "
            "up to the switch"
        )
        return PgBackupError(message, problems=[{"file": name, "problem": found}], segments_collected=self.outcome.segments)

    def _failure(self, plan: WalPlan, problems: dict, waited: bool) -> PgBackupError:
        items = [{"file": n, "problem": problems[n]} for n in plan.segments if n in problems]
        lines = "; ".join(f"{i['file']}: {i['problem']}" for i in items)
        # Said as it happened: a full-size file in an archive never changes, so an invalid one ends the wait at once.
        when = f"after {self.timeout:g} s" if waited else "(not waited on: an invalid full-size file in an archive never changes)"
        message = (
            f"{len(items)} of the {len(plan.segments)} WAL segments from {plan.segments[0]} to {plan.last} "
            f"(through {format_lsn(plan.stop_lsn)}) are missing or invalid in {self.source.describe()} {when}: {lines}"
        )
        missing = [n for n in plan.segments if str(problems.get(n, "")).startswith("missing")]
        if missing:
            message += "; " + (self._why_missing_from_pg_wal(missing) if self.source_type == "pg_wal" else self._why_missing_from_archive(missing))
        if plan.last in problems and self.switch_wal is None and self.partial_from is None:
            message += "; if the primary is idle, its last segment is not complete yet: use switch_wal or partial_from"
        return PgBackupError(message, problems=items, segments_collected=self.outcome.segments)

    def _why_missing_from_pg_wal(self, missing: list) -> str:
        """A server's pg_wal: a segment older than the oldest one there was removed or recycled (nothing held it); one
        after the newest was not received yet. The archiver's figures say nothing about a pg_wal, so they are left out."""
        try:
            present = sorted(n for n in self.source.listing() if _is_segment_name(n))
        except PgBackupError:
            present = []
        oldest = min(present, key=_segno) if present else None
        newest = max(present, key=_segno) if present else None
        gone = [n for n in missing if oldest is not None and _segno(n) < _segno(oldest)]
        ahead = [n for n in missing if newest is not None and _segno(n) > _segno(newest)]
        parts = []
        if gone:
            one = len(gone) == 1
            parts.append(
                f"{_names(gone)} {'is' if one else 'are'} older than the oldest segment in {self.source.describe()} ({oldest}): "
                f"the server removed or recycled {'it' if one else 'them'} at a checkpoint or restartpoint before {'it was' if one else 'they were'} "
                "collected, as it does with WAL "
                "that no replication slot and no wal_keep_size holds. Keep the WAL from before the backup's start with a "
                "replication slot (wal_retain), or collect it from the WAL archive (source_type: archive); take a new backup"
            )
        if ahead:
            parts.append(
                f"{_names(ahead)} {'is' if len(ahead) == 1 else 'are'} after the newest segment in {self.source.describe()} ({newest}): "
                "the server has not received or written that WAL yet (a standby lagging or not streaming); raise timeout or "
                "look at pg_stat_wal_receiver"
            )
        rest = [n for n in missing if n not in gone and n not in ahead]
        if rest:
            parts.append(
                f"{_names(rest)} {'is' if len(rest) == 1 else 'are'} not in {self.source.describe()}, though segments before and after "
                "are there: something other than the server removed it"
            )
        return "; ".join(parts)

    def _why_missing_from_archive(self, missing: list) -> str:
        """A WAL archive: the segment was not archived (yet); the archiver's figures (pg_stat_archiver) say why."""
        text = f"{_names(missing)} {'was' if len(missing) == 1 else 'were'} not archived into {self.source.describe()} (yet)"
        status = self.archiver_status() if self.archiver_status is not None else None
        if status is None:
            return text + ": check archive_command and pg_stat_archiver on the server that archives there"
        if isinstance(status, str):  # the figures could not be read: the reason is in the text
            return f"{text}: {status}"
        where = status.get("server", "the server")
        text += (
            f": pg_stat_archiver on {where}: {status['archived_count']} archived, the last {status['last_archived_wal'] or 'none'}; "
            f"{status['failed_count']} failed"
        )
        if status.get("last_failed_wal"):
            text += f", the last {status['last_failed_wal']} at {status['last_failed_time']}"
        if not status.get("failed_count") and _archived_past(status.get("last_archived_wal") or "", missing[-1]):
            return text + (
                f": {where} archived past {missing[-1]} without a failure, so its archive_command does not write into "
                f"{self.source.describe()}, or something removed the file: check archive_command on {where} against the archive directory"
            )
        if status.get("failed_count"):
            return text + f": check archive_command on {where} (its error is in that server's log)"
        slow = "or raise timeout if it is only slow"
        return text + f": {where} reports no failure: check that archive_command on {where} archives into {self.source.describe()}, {slow}"

    # --- writing ---------------------------------------------------------------------------------

    def _install(self, staged: str, name: str, pad_to: Optional[int]) -> None:
        """Put ``staged`` in place as ``name``: temporary name, padding, owner, mode, fsync, rename (the caller fsyncs the directory)."""
        if self.check_mode:
            return
        tmp = os.path.join(self.target.dest, name + TMP_SUFFIX)
        if self.staging is not None and os.path.dirname(staged) == self.staging:
            os.rename(staged, tmp)
        else:
            shutil.copyfile(staged, tmp)
        if pad_to is not None and os.path.getsize(tmp) < pad_to:
            os.truncate(tmp, pad_to)
        os.chown(tmp, self.target.uid, self.target.gid)
        os.chmod(tmp, self.target.mode)
        fsync_file(tmp)
        os.rename(tmp, os.path.join(self.target.dest, name))


def _is_segment_name(name: str) -> bool:
    return len(name) == 24 and all(c in "0123456789ABCDEF" for c in name)


def _segno(name: str) -> int:
    """A key that orders segment file names by position in the WAL (their log and segment parts), whatever the timeline."""
    return int(name[8:], 16)


def _archived_past(last: str, segment: str) -> bool:
    """Whether an archiver whose last archived file is ``last`` has archived ``segment``: a segment at or after it, or a
    backup history file (``<seg>.<offset>.backup``) of a later segment. The archiver takes ready files in name order, but
    ``<seg>.backup`` can be ready (and archived) before ``<seg>`` is complete, so it says nothing of ``<seg>`` itself."""
    if _is_segment_name(last):
        return _segno(last) >= _segno(segment)
    return last.endswith(".backup") and _is_segment_name(last[:24]) and _segno(last[:24]) > _segno(segment)


def _names(names: list) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} more up to {names[-1]}"


def _same_content(path: str, data: bytes) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read() == data
    except OSError:
        return False


class ArchiveServer:
    """The server wal_collect may ask, connected only when it must: to switch WAL (switch_wal), or to say why a
    segment is not in the archive (pg_stat_archiver)."""

    def __init__(self, params: dict, *, application_name: str, connect_function: Optional[Callable] = None) -> None:
        self.params = params
        self.session = LazySession(params, application_name=application_name, connect_function=connect_function)

    @property
    def queries(self) -> list:
        return self.session.queries

    def switch_wal(self) -> str:
        return self.session.query("SELECT pg_switch_wal()::text AS lsn")[0]["lsn"]

    def archiver_status(self):
        """pg_stat_archiver's row and the server it is of (host:port), or why it could not be read."""
        p = self.params
        server = f"{p['login_unix_socket'] or p['login_host']}:{p['login_port']}"
        try:
            row = self.session.query(
                "SELECT archived_count, last_archived_wal, failed_count, last_failed_wal, last_failed_time::text AS last_failed_time FROM pg_stat_archiver"
            )[0]
        except PgBackupError as exc:
            return f"pg_stat_archiver on {server} could not be read: {exc.message}"
        return dict(row, server=server)

    def close(self) -> None:
        self.session.close()


def collect(p: dict, server: ArchiveServer, *, check_mode: bool, warn: Callable[[str], None]) -> dict:
    """wal_collect's run from its params: the segments from start to stop placed, or PgBackupError saying which are not."""
    began = time.monotonic()
    for name in ("timeout", "poll_interval"):
        if p[name] < 0:
            raise PgBackupError(f"{name} must not be negative, not {p[name]:g}")
    start_lsn = parse_lsn(p["start_lsn"], what="start_lsn")
    stop_lsn = parse_lsn(p["stop_lsn"], what="stop_lsn")
    target = open_target(p["data_dir"], p["wal_dir"])
    seg_size = target.control.xlog_seg_size
    if p["wal_segment_size"] is not None and p["wal_segment_size"] != seg_size:
        raise PgBackupError(f"wal_segment_size {p['wal_segment_size']} differs from the copy's pg_control ({seg_size}): the copy is not of the server meant")
    collector = _collector_for(p, server, target, check_mode)
    stop_tli = p["stop_timeline"]
    start_tli = p["start_timeline"] if p["start_timeline"] is not None else stop_tli
    try:
        plan, outcome = collector.run(start_lsn, start_tli, stop_lsn, stop_tli, seg_size)
    except PgBackupError as exc:
        exc.details.setdefault("queries", server.queries)
        exc.details.setdefault("seconds", round(time.monotonic() - began, 3))
        raise
    for warning in outcome.warnings:
        warn(warning)
    return {
        "changed": bool(outcome.segments or outcome.history_files),
        "segments": outcome.segments,
        "history_files": outcome.history_files,
        "present": outcome.present,
        "needed": plan.segments,
        "history_needed": plan.history_files,
        "partial_segment": outcome.partial_segment,
        "old_timeline_segments": outcome.old_timeline_segments,
        "old_timeline_needed": [{"file": name, "through": format_lsn(lsn)} for name, lsn in plan.old_timeline],
        "wal_switched": outcome.wal_switched,
        "bytes": outcome.bytes,
        "seconds": round(time.monotonic() - began, 3),
        "wal_dir": target.dest,
        "dest": target.dest,
        "queries": server.queries,
    }


def _collector_for(p: dict, server: ArchiveServer, target, check_mode: bool) -> Collector:
    """The Collector of wal_collect's params: where the WAL comes from, and what the server of the connection may do."""
    ssh = ssh_settings(p)
    source = WalSource(p["source_path"], *ssh)
    partial_from = WalSource(p["partial_from"], *ssh) if p["partial_from"] else None
    connected = p["switch_wal"] or bool(p["login_host"] or p["login_unix_socket"])
    return Collector(
        target,
        source,
        source_type=p["source_type"],
        partial_from=partial_from,
        timeout=p["timeout"],
        poll_interval=p["poll_interval"],
        check_mode=check_mode,
        switch_wal=server.switch_wal if p["switch_wal"] else None,
        archiver_status=server.archiver_status if connected else None,
    )
