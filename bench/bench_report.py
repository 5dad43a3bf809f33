"""The numbers of `make bench` as tables: min/median/max, MB/s, the ratio to ``cp -a`` + sync, and bench/RESULTS.md.

Pure functions over the runs bench/run_bench.py records (no PostgreSQL here), so tests/unit/test_bench_report.py can
check them on made-up runs.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

BASELINE = "cp -a + sync"
DASH = "\u2013"  # an en dash: "not known / not applicable"
HEADER = "| method | load | n | min s | median s | max s | MB/s | \u00d7 cp -a + sync | primary in backup mode s | WAL generated MB | peak RSS MB | notes |"


@dataclass
class Run:
    """One timed repetition of one method."""

    seconds: float
    ok: bool = True
    backup_mode_s: Optional[float] = None  # the primary between pg_backup_start and pg_backup_stop; None: not known
    wal_bytes: Optional[int] = None  # pg_current_wal_lsn() on the primary after minus before
    rss_bytes: Optional[int] = None  # peak RSS of one of our processes (ours only)
    note: str = ""
    tasks: dict = field(default_factory=dict)  # task name -> seconds (ours: the bench_task_times callback)


@dataclass
class Row:
    method: str
    load: bool
    runs: list = field(default_factory=list)
    unavailable: str = ""  # why the method could not run at all ("not available: ...")
    notes: list = field(default_factory=list)  # verification outcomes and the like, once each

    def ok_seconds(self) -> list:
        return [r.seconds for r in self.runs if r.ok]

    def median(self) -> Optional[float]:
        times = self.ok_seconds()
        return statistics.median(times) if times else None


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def _span(values: list, digits: int = 2, scale: float = 1.0) -> str:
    """One figure, or "low-high" (en dash) when the repetitions differ."""
    values = [v / scale for v in values if v is not None]
    if not values:
        return DASH
    low, high = min(values), max(values)
    if f"{low:.{digits}f}" == f"{high:.{digits}f}":
        return f"{low:.{digits}f}"
    return f"{low:.{digits}f}{DASH}{high:.{digits}f}"


def ratio(median: Optional[float], base: Optional[float]) -> Optional[float]:
    """median / the median of cp -a + sync (>1: slower); None when either is missing."""
    if median is None or not base:
        return None
    return median / base


def baseline_median(rows: list, load: bool) -> Optional[float]:
    for row in rows:
        if row.method == BASELINE and row.load == load:
            return row.median()
    return None


def table(rows: list, source_bytes: int) -> str:
    """The markdown table: one line per method and load, ratios against cp -a + sync under the same load."""
    lines = [HEADER, "|" + "---|" * 12]
    for row in rows:
        load = "pgbench" if row.load else "none"
        if row.unavailable:
            lines.append(f"| {row.method} | {load} | 0 | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} | {row.unavailable} |")
            continue
        times = row.ok_seconds()
        failed = len(row.runs) - len(times)
        median = row.median()
        mbps = source_bytes / 1e6 / median if median else None
        good = [r for r in row.runs if r.ok]
        first_failure = next((r.note for r in row.runs if not r.ok), "")
        notes = list(row.notes) + ([f"{failed} of {len(row.runs)} run(s) FAILED: {first_failure}"] if failed else [])
        cells = [
            row.method,
            load,
            str(len(times)),
            _fmt(min(times) if times else None),
            _fmt(median),
            _fmt(max(times) if times else None),
            _fmt(mbps, 0),
            _fmt(ratio(median, baseline_median(rows, row.load))),
            _span([r.backup_mode_s for r in good], 1),
            _span([r.wal_bytes for r in good], 1, 1e6),
            _span([r.rss_bytes for r in good], 0, 1e6),
            "; ".join(notes),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fixed_table(rows: list) -> str:
    """The fixed cost: every method once or more on a scale-1 cluster (about 23 MB), medians only."""
    lines = ["| method | n | median s | \u00d7 cp -a + sync | notes |", "|---|---|---|---|---|"]
    base = baseline_median(rows, False)
    for row in rows:
        if row.unavailable:
            lines.append(f"| {row.method} | 0 | {DASH} | {DASH} | {row.unavailable} |")
            continue
        median = row.median()
        notes = "; ".join(row.notes + [r.note for r in row.runs if not r.ok])
        lines.append(f"| {row.method} | {len(row.ok_seconds())} | {_fmt(median)} | {_fmt(ratio(median, base))} | {notes} |")
    return "\n".join(lines) + "\n"


def slow_tasks(rows: list, top: int = 6) -> str:
    """Ours, without load: how many tasks ran, their total, and the slowest ones (medians over the repetitions)."""
    lines = []
    for row in rows:
        runs = [r for r in row.runs if r.ok and r.tasks]
        if row.load or not runs:
            continue
        names = {name for r in runs for name in r.tasks}  # "role : task" as Ansible names them
        medians = {name: statistics.median([r.tasks.get(name, 0.0) for r in runs]) for name in names}
        total = statistics.median([sum(r.tasks.values()) for r in runs])
        slowest = sorted(medians.items(), key=lambda item: -item[1])[:top]
        listed = ", ".join(f"{name.split(' : ', 1)[-1]} {seconds:.1f} s" for name, seconds in slowest)
        lines.append(f"- {row.method}: {len(names)} tasks, {total:.1f} s in all; slowest: {listed}")
    return "\n".join(lines) + ("\n" if lines else "")


def prepend_section(path: Path, section: str, title: str) -> None:
    """Write ``section`` at the top of ``path`` under its title, earlier sections kept below it (newest first)."""
    old = path.read_text() if path.exists() else ""
    if old.startswith(title):
        old = old[len(title) :].lstrip("\n")
    path.write_text(f"{title}\n\n{section.rstrip()}\n\n{old}".rstrip() + "\n")
