"""`make bench-snapshot`: how long the server is in backup mode for a snapshot backup (standby_backup_copy_method:
snapshot) at two data sizes, against the copy method and pg_basebackup, in the same run, with pgbench writing.

Not a test (no timing is asserted). Run as root from the checkout, after `make deps build`:

    SCALES="5 50" REPS=3 .venv/bin/python bench/snapshot_bench.py      # the defaults

Test bed (tests/integration/harness, local mode): a PostgreSQL 15 primary with a tablespace and its streaming standby
whose data directory and tablespace copy live on two btrfs filesystems on loop files (tests/integration/support/
snapshots.py). For each scale (pgbench -i -s), REPS rounds over the three methods, each under pgbench -c 2 -j 2 on the
primary: the standby_backup playbook coordinated on this machine with the copy method and with the snapshot method
(its `seconds_in_backup_mode`: backup_start to backup_stop on the primary), and pg_basebackup -X stream from the
standby (a backup is in progress on the standby for the whole run, so its time in backup mode is the run). Results:
bench/SNAPSHOT-RESULTS.md, newest section first.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT), str(ROOT / "build" / "collections")]

from bench_methods import ansible_env  # noqa: E402
from bench_peers import PG_BIN  # noqa: E402
from bench_report import prepend_section  # noqa: E402
from run_bench import link_collection, log, machine, same_start, tree_bytes  # noqa: E402

FS_SIZE = 8 << 30  # sparse loop files: room for scale 50 and its WAL on each volume
# ours as (copy method, standby_backup_mode); pg_basebackup is the peer
METHODS = {
    "copy": ("copy", "coordinated"),
    "snapshot": ("snapshot", "coordinated"),
    "snapshot standby_only": ("snapshot", "standby_only"),
    "pg_basebackup": None,
}


class Bench:
    def __init__(self, bed, primary, standby, ts_dir: Path) -> None:
        self.bed, self.primary, self.standby, self.ts_dir = bed, primary, standby, ts_dir
        self.dest = bed.scratch_dir("snapbench-copy", shared=True)
        self.ts_dest = bed.scratch_dir("snapbench-ts", shared=True)
        (self.oid,) = primary.sql("SELECT oid::text FROM pg_tablespace WHERE spcname = 'snap_ts'")[0]
        self.inventory = bed.write_inventory(bed.run_dir / "inventory" / "hosts.yml")
        self.env = ansible_env()

    def clear(self) -> None:
        for path in (self.dest, self.ts_dest):
            for child in path.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()

    def ours(self, method: str, mode: str) -> tuple:
        """(seconds, seconds in backup mode) of one standby_backup run."""
        from tests.integration.support.roles import backup_vars, start_playbook

        extra = backup_vars(
            self.bed.hosts[0].name, self.primary, self.standby, self.dest, self.bed.run_dir / "keepers",
            standby_backup_copy_method=method, standby_backup_mode=mode, standby_backup_tablespace_mapping={self.oid: str(self.ts_dest)},
            standby_backup_pg_bindir=str(PG_BIN), standby_backup_progress_interval=5,
        )  # fmt: skip
        started = time.monotonic()
        proc = start_playbook(self.env, self.inventory, extra)
        out, err = proc.communicate(timeout=3600)
        seconds = time.monotonic() - started
        if proc.returncode != 0:
            raise RuntimeError(f"standby_backup ({method}, {mode}) failed: {(out + err)[-2000:]}")
        in_backup = float(re.search(r'"server_seconds_in_backup_mode": "?([0-9.]+)', out).group(1))
        return seconds, in_backup

    def basebackup(self) -> tuple:
        s = self.standby
        argv = [str(PG_BIN / "pg_basebackup"), "-h", str(s.socket_dir), "-p", str(s.port), "-U", "postgres", "-w", "-D", str(self.dest)]
        argv += ["-Fp", "-X", "stream", "-c", "fast", "-T", f"{self.ts_dir}={self.ts_dest}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"PGPASSFILE": str(self.bed.passfile)}
        started = time.monotonic()
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], env=env, check=True, capture_output=True, text=True)
        seconds = time.monotonic() - started
        return seconds, seconds

    def run(self, method: str) -> tuple:
        self.clear()
        same_start(self)
        with self.bed.load(self.primary, 3600, clients=2, rate=0) as load:  # flat out, as in every earlier section
            time.sleep(2)
            result = self.ours(*METHODS[method]) if METHODS[method] else self.basebackup()
            load.stop()
        return result


def table(rows: dict, sizes: dict) -> str:
    lines = [
        "| scale | standby data | method | median run s | median s in backup mode | in backup mode / copy method's | runs |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for scale, by_method in rows.items():
        copy_mode = statistics.median(m for _s, m in by_method["copy"]) if by_method.get("copy") else None
        for method, runs in by_method.items():
            run_s, mode_s = statistics.median(s for s, _m in runs), statistics.median(m for _s, m in runs)
            ratio = f"{mode_s / copy_mode:.3f}" if copy_mode else "-"
            lines.append(f"| {scale} | {sizes[scale] / 1e6:.0f} MB | {method} | {run_s:.1f} | {mode_s:.2f} | {ratio} | {len(runs)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--scales", default=os.environ.get("SCALES", "5 50"))
    parser.add_argument("--reps", type=int, default=int(os.environ.get("REPS", 3)))
    parser.add_argument("--results", type=Path, default=HERE / "SNAPSHOT-RESULTS.md")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("mkfs.btrfs") is None:
        parser.error("run as root with btrfs-progs installed (scripts/install-system-deps.sh)")
    link_collection()
    from tests.integration.harness.testbed import Testbed
    from tests.integration.support.snapshots import snapshot_pair

    scales = [int(s) for s in args.scales.split()]
    before, started = machine(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows: dict = {}
    sizes: dict = {}
    with Testbed("local") as bed, snapshot_pair(bed, 15, bed.run_dir / "images", rows=20000, size=FS_SIZE) as (primary, standby, ts_dir):
        bench = Bench(bed, primary, standby, ts_dir)
        for scale in scales:
            primary.pgbench_init(scale)
            same_start(bench)
            sizes[scale] = tree_bytes(standby.datadir) + tree_bytes(ts_dir)
            rows[scale] = {m: [] for m in METHODS}
            for rep in range(args.reps):  # round-robin: a slow spell of the machine hits every method
                for method in METHODS:
                    result = bench.run(method)
                    rows[scale][method].append(result)
                    log(f"scale {scale} rep {rep + 1} {method}: {result[0]:.1f} s, {result[1]:.2f} s in backup mode")
            bench.clear()
    after = machine()
    text = "\n".join([
        f"## {started}: SCALES={args.scales} REPS={args.reps}",
        "",
        f"- command: `SCALES={args.scales!r} REPS={args.reps} .venv/bin/python bench/snapshot_bench.py`",
        f"- machine: {before['cores']} cores ({before['cpu']}), kernel {before['kernel']}; load average before "
        f"{' '.join(before['loadavg'])}, after {' '.join(after['loadavg'])}",
        "- PostgreSQL 15 primary and streaming standby on this machine; the standby's data directory and its tablespace (a "
        "20000-row table) on two btrfs filesystems on loop files; pgbench -c 2 -j 2 on the primary during every run",
        "- ours: playbooks/standby_backup.yml, local, coordinated (copy and snapshot methods) and standby_only (snapshot); in "
        "backup mode = the role's server_seconds_in_backup_mode (on the primary when coordinated, on the standby when "
        "standby_only): backup_start to backup_stop, with the replay wait and the snapshots between; pg_basebackup -X "
        "stream from the standby: a backup is in progress there the whole run",
        "",
        table(rows, sizes),
    ])  # fmt: skip
    print("\n" + text)
    prepend_section(args.results, text, "# bench/snapshot_bench.py results")
    log(f"written to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
