"""`make bench`: the standby_backup and replica_clone playbooks against cp -a + sync, pg_basebackup, pgBackRest and
Barman on one PostgreSQL 15 primary and streaming standby, round-robin over REPS, with and without pgbench load.

Not a test (no timing is asserted). Run as root from the checkout (`make bench` installs pgBackRest and Barman first):

    SCALE=50 REPS=3 LOAD=both .venv/bin/python bench/run_bench.py        # the defaults
    SCALE=5 REPS=1 LOAD=0 METHODS="cp pgbb ours2" .venv/bin/python bench/run_bench.py

Knobs (env or flags): SCALE (pgbench -s), REPS, LOAD (0, 1 or both), METHODS (short names, see --help),
SCALE_FIXED (the fixed-cost pass, default 1; 0 skips it). Test bed: network namespaces db1 (primary), db2 (standby),
db3 (the other host), tests/integration/harness; everything it made (clusters, namespaces, pgBackRest and Barman
state, all in its run dir) is removed at the end, also on Ctrl-C. Results: bench/RESULTS.md, a dated section on top.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT), str(ROOT / "build" / "collections")]

from bench_methods import Ctx, all_methods, ansible_env  # noqa: E402
from bench_peers import Barman, PgBackRest, Unavailable  # noqa: E402
from bench_report import Row, fixed_table, prepend_section, slow_tasks, table  # noqa: E402

PEERS = {"pgbr1": "pgbackrest", "pgbr2": "pgbackrest", "barman": "barman"}
LOAD_WARMUP = 2.0
METHOD_NAMES = "cp pgbb pgbb_hosts pgbr1 pgbr2 barman ours1 ours2 ours4 ours_hosts1 ours_hosts2 ours_hosts4 clone (default: all)"


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def link_collection() -> None:
    link = ROOT / "build" / "collections" / "ansible_collections" / "pgbackup" / "lowlevel"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(ROOT, link)


def tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                try:
                    total += os.lstat(path).st_size
                except FileNotFoundError:
                    pass
    return total


def same_start(ctx: Ctx) -> None:
    """Every run starts alike: primary checkpointed, the standby caught up and restartpointed, dirty pages written."""
    ctx.primary.sql("CHECKPOINT")
    ctx.standby.wait_replayed(timeout=300)
    ctx.standby.sql("CHECKPOINT")
    os.sync()


def one_pass(ctx: Ctx, methods: dict, names: list, reps: int, loads: list, unavailable: dict, out: list) -> list:
    """Time every method REPS times per load; ``out`` gets the rows at once, so an interrupted run still reports."""
    rows = {(n, load): Row(methods[n].name, load) for load in loads for n in names}
    out.extend(rows.values())
    for (name, _load), row in rows.items():
        if name in unavailable:
            row.unavailable = unavailable[name]
    for load in loads:
        for rep in range(reps):  # round-robin: a slow spell of the shared disk or CPU hits every method
            for name in names:
                row = rows[(name, load)]
                if row.unavailable:
                    continue
                method = methods[name]
                method.prep()
                same_start(ctx)
                pgbench = ctx.bed.load(ctx.primary, 86400, clients=2, rate=0) if load else None  # flat out
                if pgbench:
                    time.sleep(LOAD_WARMUP)
                lsn0 = ctx.primary.current_lsn()
                run = method.time_it(last=rep == reps - 1)
                if pgbench:
                    pgbench.stop()
                run.wal_bytes = _lsn(ctx.primary.current_lsn()) - _lsn(lsn0)
                method.cleanup()
                row.runs.append(run)
                state = "ok" if run.ok else "FAILED"
                log(f"  [{'load' if load else 'idle'} {rep + 1}/{reps}] {method.name}: {run.seconds:.2f} s {state} {run.note}")
                if run.ok and run.note and rep == reps - 1:
                    row.notes.append(run.note)
    return list(rows.values())


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def machine() -> dict:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cores": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "loadavg": Path("/proc/loadavg").read_text().split()[:3]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--scale", type=int, default=int(os.environ.get("SCALE", 50)))
    parser.add_argument("--reps", type=int, default=int(os.environ.get("REPS", 3)))
    parser.add_argument("--load", choices=["0", "1", "both"], default=os.environ.get("LOAD", "both"))
    parser.add_argument("--methods", default=os.environ.get("METHODS", ""), help="a subset of: " + METHOD_NAMES)
    parser.add_argument("--scale-fixed", type=int, default=int(os.environ.get("SCALE_FIXED", 1)))
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: the test bed runs PostgreSQL as postgres and creates network namespaces")
    link_collection()
    from tests.integration.harness.testbed import Testbed

    # SIGTERM as Ctrl-C: the with-block below then tears everything down
    def on_term(*_args) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the teardown that follows must not be cut short
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    loads = {"0": [False], "1": [True], "both": [False, True]}[args.load]
    knobs = {"SCALE": args.scale, "REPS": args.reps, "LOAD": args.load, "METHODS": args.methods, "SCALE_FIXED": args.scale_fixed}
    command = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in knobs.items())
    command += " " + " ".join(["bench/run_bench.py", *sys.argv[1:]])
    before = machine()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    setup_seconds: dict = {}
    with Testbed("netns", hosts=("db1", "db2", "db3")) as bed:
        t = time.monotonic()
        primary = bed.new_primary(15, host=bed.host("db1"), name="pg15-bench-primary")
        # shared_buffers as the baseline (the test bed's 32 MB is for many small clusters); wal_keep_size 0 (the test bed
        # keeps 256 MB): pg_wal would otherwise be most of a small standby, and cp -a copies it where the others do not
        settings = ("shared_buffers = '256MB'", "wal_keep_size = 0", "min_wal_size = '32MB'")
        for setting in settings:
            primary.sql(f"ALTER SYSTEM SET {setting}")
        primary.restart()
        standby = primary.make_standby("pg15-bench-standby", host=bed.host("db2"))
        for setting in settings:
            standby.sql(f"ALTER SYSTEM SET {setting}")
        standby.restart()
        standby.wait_streaming()
        setup_seconds["primary + standby (test bed, netns)"] = time.monotonic() - t
        methods_ctx = Ctx(bed, primary, standby, ansible_env())
        methods = all_methods(methods_ctx)
        names = args.methods.split() or list(methods)
        unknown = [n for n in names if n not in methods]
        if unknown:
            parser.error(f"unknown METHODS {unknown}: choose from {' '.join(methods)}")
        unavailable = {}
        peers = []
        for short, peer_cls in (("pgbackrest", PgBackRest), ("barman", Barman)):
            if not any(PEERS.get(n) == short for n in names):
                continue
            t = time.monotonic()
            peer = peer_cls(bed.run_dir, primary, standby) if short == "pgbackrest" else peer_cls(bed, primary, standby)
            peers.append(peer)
            try:
                peer.setup()
                setattr(methods_ctx, short, peer)
            except (Unavailable, subprocess.SubprocessError, OSError) as exc:
                for n in names:
                    if PEERS.get(n) == short:
                        unavailable[n] = f"not available: {exc}"
                log(f"{short}: not available: {exc}")
            setup_seconds[short] = time.monotonic() - t
        fixed_rows, rows, source, source_wal = [], [], 0, 0
        interrupted = False
        try:
            if args.scale_fixed:
                primary.pgbench_init(args.scale_fixed)
                log(f"fixed-cost pass: scale {args.scale_fixed}, {tree_bytes(standby.datadir) / 1e6:.0f} MB, once each, no load")
                one_pass(methods_ctx, methods, names, 1, [False], unavailable, fixed_rows)
            t = time.monotonic()
            primary.pgbench_init(args.scale)
            setup_seconds[f"pgbench -i -s {args.scale}"] = time.monotonic() - t
            same_start(methods_ctx)
            source, source_wal = tree_bytes(standby.datadir), tree_bytes(standby.datadir / "pg_wal")
            log(f"main pass: scale {args.scale}, standby data directory {source / 1e6:.0f} MB, reps {args.reps}, load {args.load}")
            one_pass(methods_ctx, methods, names, args.reps, loads, unavailable, rows)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: tear down, then write what was measured, marked as partial
            interrupted = True
            log("interrupted: tearing down, then writing the runs measured so far")
        finally:
            for peer in peers:
                peer.teardown()
    leftovers = bed.leftovers()
    after = machine()
    section = [
        f"## {started}: SCALE={args.scale} REPS={args.reps} LOAD={args.load}" + (" (INTERRUPTED: partial)" if interrupted else ""),
        "",
        f"- command: `{command}`",
        f"- machine: {before['cores']} cores ({before['cpu']}), kernel {before['kernel']}",
        f"- load average (1, 5, 15 min) before: {' '.join(before['loadavg'])}, after: {' '.join(after['loadavg'])}",
        f"- standby data directory: {source / 1e6:.0f} MB, pg_wal {source_wal / 1e6:.0f} MB of it (MB/s = the whole / median)",
        "- PostgreSQL 15, checksums, archiving on, shared_buffers 256MB, wal_keep_size 0; "
        "primary on db1, standby on db2, db3 the other host (network namespaces of this machine)",
        f"- load: pgbench -n -c 2 -j 2 (unthrottled) on the primary from {LOAD_WARMUP:.0f} s before each timed run to its end",
        "- set-up: " + ", ".join(f"{k} {v:.1f} s" for k, v in setup_seconds.items()),
        "- ratio: median / median of cp -a + sync under the same load; backup mode: ours from the role's summary, pgBackRest from "
        "its backup info (whole seconds), 0 where the backup is taken on the standby alone; WAL: pg_current_wal_lsn() after - before; "
        "peak RSS: the largest of our processes (ansible-playbook, its workers and the modules, on db2/db3 too)",
        f"- each run's output: {methods_ctx.log_dir.relative_to(ROOT)}/",
        f"- left behind after teardown: {', '.join(leftovers) or 'nothing'}",
        "",
        table(rows, source),
    ]
    tasks = slow_tasks(rows)
    if tasks:
        section += ["Where our playbooks' time goes (task wall times, medians, no load):", "", tasks]
    if fixed_rows:
        section += [f"Fixed cost (SCALE_FIXED={args.scale_fixed}, once each, no load):", "", fixed_table(fixed_rows)]
    text = "\n".join(section)
    print("\n" + text)
    prepend_section(args.results, text, "# make bench results")
    log(f"written to {args.results}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
