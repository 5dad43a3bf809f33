"""Throughput of datadir_copy's engine against cp -a + sync, rsync -a and pg_basebackup, on one host and across two.

Not a test. Run as root from the checkout: ``.venv/bin/python bench/copy_bench.py [--scale 64] [--parallel 1 2 4]``.

It builds a PostgreSQL 15 primary with the integration test bed (tests/integration/harness) on namespace host db1,
loads it with ``pgbench -i -s SCALE``, shrinks pg_wal to a few segments (so every tool copies about the same bytes),
then times, in --repeat rounds over every method, dropping the page cache (``sync; echo 3 > /proc/sys/vm/drop_caches``)
before each run:

- on db1: ``cp -a`` then ``sync``; ``rsync -a`` then ``sync``; ``pg_basebackup -X none`` over the socket (it fsyncs);
  the copy engine (copy_engine.execute, as datadir_copy runs it: rsync, SHA-256, fsync, chown) with each --parallel;
- on db2 pulling from db1: the copy engine over ssh with each --parallel (rsync with ssh's default cipher, rsync with
  ``-c aes128-gcm@openssh.com``, then ``transport: stream``);
  ``pg_basebackup -X none`` over TCP. ``--ssh-only`` leaves out the cases on one host.

Prints a table (bytes, median and fastest seconds, MB/s and ratio to ``cp -a + sync`` of the medians) and writes it
as JSON to build/bench/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLLECTIONS = ROOT / "build" / "collections"
LINK = COLLECTIONS / "ansible_collections" / "pgbackup" / "lowlevel"
MAJOR = 15

ENGINE = """
import json, sys
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_engine import Source, check_destination, execute, make_plan
a = json.loads(sys.argv[1])
src = Source(a["path"], a.get("host"), a.get("user"), None, a.get("key"), tuple(a.get("ssh_options", ())))
plan = make_plan(src, a["dest"], {}, [])
check_destination(src, plan, a["dest"], False)
print(json.dumps(execute(src, plan, a["dest"], parallel=a["parallel"], owner="postgres", transport=a.get("transport", "rsync"))))
"""


def _setup_imports() -> None:
    if not LINK.exists():
        LINK.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(ROOT, LINK)
    for path in (str(ROOT), str(COLLECTIONS)):
        if path not in sys.path:
            sys.path.insert(0, path)


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def tree_bytes(root: Path) -> tuple:
    """(bytes, files) of the regular files under ``root`` (symlinks not followed)."""
    total = files = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if not os.path.islink(os.path.join(dirpath, name)):
                total += st.st_size
                files += 1
    return total, files


class Case:
    """One way of copying: ``steps`` (host, argv, user, env) run in order into ``dest`` (absent or empty when it starts).
    ``partial`` names rows timed up to an earlier step of the same run (cp -a without its sync)."""

    def __init__(self, method: str, where: str, parallel, dest: Path, steps: list, owner: str = "postgres", partial: tuple = ()) -> None:
        self.method, self.where, self.parallel, self.dest, self.steps = method, where, parallel, dest, steps
        self.owner = owner
        self.partial = partial
        self.runs: dict = {method: [], **{label: [] for label, _step in partial}}
        self.bytes = self.files = 0

    def run(self, create_dest: bool) -> None:
        if self.dest.exists():
            shutil.rmtree(self.dest)
        if create_dest:
            self.dest.mkdir(mode=0o700)
            shutil.chown(self.dest, self.owner, self.owner)
        drop_caches()
        marks = []
        start = time.monotonic()
        for host, argv, user, env in self.steps:
            proc = host.run(argv, user=user, check=False, env=env)
            marks.append(time.monotonic())
            if proc.returncode != 0:
                raise RuntimeError(f"{self.method}: {' '.join(map(str, argv))} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        self.bytes, self.files = tree_bytes(self.dest)
        self.runs[self.method].append(marks[-1] - start)
        for label, step in self.partial:
            self.runs[label].append(marks[step] - start)
        print(f"  {self.method:<28} {self.where:<11} {self.parallel or '':>2} {marks[-1] - start:7.2f} s", flush=True)
        shutil.rmtree(self.dest)
        os.sync()

    def rows(self) -> list:
        out = []
        for label, times in self.runs.items():
            row = {"method": label, "where": self.where, "parallel": self.parallel, "bytes": self.bytes, "files": self.files}
            row |= {"seconds": statistics.median(times), "min_seconds": min(times), "runs": [round(t, 3) for t in times]}
            out.append(row)
        return out


def build_cluster(bed, scale: int):
    db1 = bed.host("db1")
    primary = bed.new_primary(MAJOR, host=db1, name=f"pg{MAJOR}-bench")
    for setting in ("autovacuum = off", "wal_keep_size = 0", "max_wal_size = '64MB'", "min_wal_size = '32MB'"):
        primary.sql(f"ALTER SYSTEM SET {setting}")
    primary.sql("SELECT pg_reload_conf()")
    t = time.monotonic()
    primary.pgbench_init(scale)
    print(f"pgbench -i -s {scale}: {time.monotonic() - t:.1f} s", flush=True)
    for _round in range(3):  # recycle the WAL pgbench -i wrote, down to min_wal_size
        primary.sql("SELECT pg_switch_wal()")
        primary.sql("CHECKPOINT")
        time.sleep(1)
    return primary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--scale", type=int, default=64, help="pgbench scale (64: about 1 GiB of tables and indexes)")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2, 4], help="copy engine streams to time")
    parser.add_argument("--repeat", type=int, default=3, help="rounds over every method; the table shows the median")
    parser.add_argument("--ssh-only", action="store_true", help="only the cases across hosts (cp -a + sync still times the base)")
    parser.add_argument("--output", type=Path, default=ROOT / "build" / "bench", help="directory for the JSON results")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: the test bed runs PostgreSQL as postgres and creates network namespaces")
    _setup_imports()
    from tests.integration.harness.pgbins import client_bindir
    from tests.integration.harness.testbed import Testbed

    bin_dir = client_bindir()
    engine_env = dict(os.environ, PYTHONPATH=str(COLLECTIONS))
    with Testbed("netns", hosts=("db1", "db2")) as bed:
        db1, db2 = bed.host("db1"), bed.host("db2")
        primary = build_cluster(bed, args.scale)
        src = primary.datadir
        src_bytes, src_files = tree_bytes(src)
        wal_bytes, _wal_files = tree_bytes(src / "pg_wal")
        print(f"source {src}: {src_bytes / 1e6:.0f} MB in {src_files} files (pg_wal {wal_bytes / 1e6:.0f} MB)", flush=True)
        scratch = bed.scratch_dir("bench")  # postgres must reach pg_basebackup's destination
        ssh = {"host": db1.address, "user": "postgres", "key": str(bed.network.client_key), "ssh_options": bed.network.ssh_options()[2:]}
        passfile_env = dict(os.environ, PGPASSFILE=str(bed.passfile))
        cases = []
        # --- same host (db1) ---
        dest = scratch / "cp"
        steps = [(db1, ["cp", "-a", str(src), str(dest)], "root", None), (db1, ["sync"], "root", None)]
        cases.append(Case("cp -a + sync", "db1", None, dest, steps, owner="root", partial=(("cp -a", 0),)))
        dest = scratch / "rsync"
        steps = [(db1, ["rsync", "-a", f"{src}/", f"{dest}/"], "root", None), (db1, ["sync"], "root", None)]
        if not args.ssh_only:
            cases.append(Case("rsync -a + sync", "db1", None, dest, steps, owner="root", partial=(("rsync -a", 0),)))
        dest = scratch / "basebackup"
        bb = [str(bin_dir / "pg_basebackup"), "-h", str(primary.socket_dir), "-p", str(primary.port), "-U", "postgres", "-D", str(dest)]
        if not args.ssh_only:
            cases.append(Case("pg_basebackup -X none", "db1", None, dest, [(db1, [*bb, "-Fp", "-X", "none", "-c", "fast"], "postgres", None)]))
        for n in [] if args.ssh_only else args.parallel:
            dest = scratch / f"engine-{n}"
            spec = json.dumps({"path": str(src), "dest": str(dest), "parallel": n})
            cases.append(Case("datadir_copy engine", "db1", n, dest, [(db1, [sys.executable, "-c", ENGINE, spec], "root", engine_env)]))
        # --- across hosts: db2 pulls from db1 ---
        for n in args.parallel:
            dest = scratch / f"engine-ssh-{n}"
            spec = json.dumps({"path": str(src), "dest": str(dest), "parallel": n, **ssh})
            cases.append(Case("datadir_copy engine, ssh", "db2 <- db1", n, dest, [(db2, [sys.executable, "-c", ENGINE, spec], "root", engine_env)]))
        for n in args.parallel:  # rsync's ssh with the cipher the stream transport prefers (AES-NI)
            dest = scratch / f"engine-ssh-aes-{n}"
            aes = dict(ssh, ssh_options=[*ssh["ssh_options"], "-c", "aes128-gcm@openssh.com"])
            spec = json.dumps({"path": str(src), "dest": str(dest), "parallel": n, **aes})
            cases.append(Case("engine, ssh -c aes128-gcm", "db2 <- db1", n, dest, [(db2, [sys.executable, "-c", ENGINE, spec], "root", engine_env)]))
        for n in args.parallel:
            dest = scratch / f"engine-stream-{n}"
            spec = json.dumps({"path": str(src), "dest": str(dest), "parallel": n, "transport": "stream", **ssh})
            cases.append(Case("datadir_copy engine, stream", "db2 <- db1", n, dest, [(db2, [sys.executable, "-c", ENGINE, spec], "root", engine_env)]))
        dest = scratch / "basebackup-tcp"
        bb = [str(bin_dir / "pg_basebackup"), "-h", primary.host, "-p", str(primary.port), "-U", "postgres", "-w", "-D", str(dest)]
        steps = [(db2, [*bb, "-Fp", "-X", "none", "-c", "fast"], "postgres", passfile_env)]
        cases.append(Case("pg_basebackup -X none, TCP", "db2 <- db1", None, dest, steps))

        for round_no in range(args.repeat):  # rounds over every case, so a slow spell of the disk hits all of them
            print(f"round {round_no + 1} of {args.repeat}", flush=True)
            for case in cases:
                case.run(create_dest=case.method.startswith("pg_basebackup") or case.method.startswith("rsync"))
        rows = [row for case in cases for row in case.rows()]

        base = next(r["seconds"] for r in rows if r["method"] == "cp -a + sync")
        for row in rows:
            row["mb_per_s"] = round(row["bytes"] / 1e6 / max(row["seconds"], 1e-6), 1)
            row["ratio_to_cp_sync"] = round(row["seconds"] / base, 2)
            row["seconds"] = round(row["seconds"], 2)
            row["min_seconds"] = round(row["min_seconds"], 2)
        report = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
            "postgres": primary.pg.version,
            "pgbench_scale": args.scale,
            "source": {"bytes": src_bytes, "files": src_files, "pg_wal_bytes": wal_bytes},
            "repeat": args.repeat,
            "rows": rows,
        }
        primary.stop()

    print()
    print(f"{'method':<28} {'where':<11} {'par':>3} {'MB':>7} {'files':>6} {'median s':>8} {'min s':>6} {'MB/s':>7} {'x cp+sync':>9}")
    for r in report["rows"]:
        par = "" if r["parallel"] is None else str(r["parallel"])
        mb, secs, ratio = r["bytes"] / 1e6, f"{r['seconds']:8.2f} {r['min_seconds']:6.2f}", r["ratio_to_cp_sync"]
        print(f"{r['method']:<28} {r['where']:<11} {par:>3} {mb:7.0f} {r['files']:6d} {secs} {r['mb_per_s']:7.1f} {ratio:9.2f}")
    args.output.mkdir(parents=True, exist_ok=True)
    out = args.output / f"copy_bench-{report['when'].replace(':', '')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
