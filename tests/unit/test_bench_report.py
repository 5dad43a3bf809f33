"""bench/bench_report.py, the table code of `make bench`: medians over the successful runs only, the ratio to cp -a + sync
under the same load, a peer that could not be set up kept as a "not available" row, failed runs named, and RESULTS.md
keeping earlier sections below the newest."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from bench_report import BASELINE, Row, Run, fixed_table, prepend_section, ratio, slow_tasks, table


def _rows() -> list:
    cp_idle = Row(BASELINE, False, [Run(2.0), Run(1.0), Run(3.0)])
    cp_load = Row(BASELINE, True, [Run(4.0)])
    first = Run(6.0, backup_mode_s=3.0, wal_bytes=16_000_000, rss_bytes=60_000_000)
    ours = Row("ours", False, [first, Run(99.0, ok=False, note="rc=2: boom"), Run(4.0, backup_mode_s=2.5)])
    ours_load = Row("ours", True, [Run(8.0)])
    barman = Row("Barman", False, unavailable="not available: barman is not installed")
    return [cp_idle, cp_load, ours, ours_load, barman]


def _line(text: str, method: str, load: str) -> list:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[:2] == [method, load]:
            return cells
    raise AssertionError(f"no row {method}/{load} in\n{text}")


def test_ratio_is_against_cp_under_the_same_load_and_failed_runs_do_not_count():
    text = table(_rows(), source_bytes=100_000_000)
    cp = _line(text, BASELINE, "none")
    assert cp[2:8] == ["3", "1.00", "2.00", "3.00", "50", "1.00"]  # n, min, median, max, MB/s, ratio
    ours = _line(text, "ours", "none")
    assert ours[2:8] == ["2", "4.00", "5.00", "6.00", "20", "2.50"], "median of 4 and 6 (the failed 99 s run left out), / 2.00"
    assert ours[8] == "2.5\u20133.0" and ours[9] == "16.0" and ours[10] == "60"
    assert ours[11] == "1 of 3 run(s) FAILED: rc=2: boom"
    assert _line(text, "ours", "pgbench")[7] == "2.00", "8 s under load against cp's 4 s under load, not its idle 2 s"


def test_a_peer_that_could_not_be_set_up_is_a_row_saying_why():
    text = table(_rows(), source_bytes=100_000_000)
    assert _line(text, "Barman", "none")[-1] == "not available: barman is not installed"
    assert "not available: barman is not installed" in fixed_table(_rows())


def test_ratio_without_a_baseline_is_unknown_not_zero():
    assert ratio(None, 2.0) is None and ratio(3.0, None) is None and ratio(3.0, 0) is None
    text = table([Row("only ours", False, [Run(5.0)])], source_bytes=10_000_000)
    assert _line(text, "only ours", "none")[7] == "\u2013"


def test_slow_tasks_lists_the_slowest_by_median():
    row = Row("ours", False, [Run(5.0, tasks={"Wait for the copy": 3.0, "Start": 1.0}), Run(6.0, tasks={"Wait for the copy": 4.0, "Start": 2.0})])
    out = slow_tasks([row])
    assert "2 tasks, 5.0 s in all" in out and out.index("Wait for the copy 3.5 s") < out.index("Start 1.5 s")


def test_results_file_keeps_earlier_sections_newest_first(tmp_path):
    path = tmp_path / "RESULTS.md"
    prepend_section(path, "## run 1\n\nold table", "# make bench results")
    prepend_section(path, "## run 2\n\nnew table", "# make bench results")
    text = path.read_text()
    assert text.count("# make bench results") == 1
    assert text.index("## run 2") < text.index("## run 1") and "old table" in text
