"""Throughput of datadir_copy's engine against cp -a + sync, rsync -a and pg_basebackup, on one host and across two.

Not a test. Run as root from the checkout: ``.venv/bin/python bench/copy_bench.py [--scale 64] [--parallel 1 2 4]``.

It builds a PostgreSQL 15 primary with the integration test bed (tests/integration/harness) on namespace host db1,
loads it with ``pgbench -i -s SCALE``, shrinks pg_wal to a few segments (so every tool copies about the same bytes),
then times, dropping the page cache (``sync; echo 3 > /proc/sys/vm/drop_caches``) before each run:

- on db1: ``cp -a`` then ``sync``; ``rsync -a`` then ``sync``; ``pg_basebackup -X none`` over the socket (it fsyncs);
  the copy engine (copy_engine.execute, as datadir_copy runs it: rsync, SHA-256, fsync, chown) with each --parallel;
- on db2 pulling from db1: the copy engine over ssh with each --parallel; ``pg_basebackup -X none`` over TCP.

Prints a table (bytes, seconds, MB/s, ratio to ``cp -a + sync``) and writes it as JSON to build/bench/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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
print(json.dumps(execute(src, plan, a["dest"], parallel=a["parallel"], owner="postgres")))
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


class Bench:
    def __init__(self, bed, primary, scratch: Path) -> None:
        self.bed = bed
        self.primary = primary
        self.scratch = scratch
        self.rows: list = []

    def fresh_dest(self, name: str, owner: str = "postgres") -> Path:
        dest = self.scratch / name
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(mode=0o700)
        shutil.chown(dest, owner, owner)
        return dest

    def run(self, method: str, where: str, parallel, steps: list, dest: Path, extra_rows: tuple = ()) -> None:
        """Time ``steps`` (each (host, argv, user, env)) from a cold page cache; record rows; remove ``dest``."""
        drop_caches()
        marks = []
        start = time.monotonic()
        for host, argv, user, env in steps:
            proc = host.run(argv, user=user, check=False, env=env)
            marks.append(time.monotonic())
            if proc.returncode != 0:
                raise RuntimeError(f"{method}: {' '.join(map(str, argv))} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        nbytes, files = tree_bytes(dest)
        self.rows.append({"method": method, "where": where, "parallel": parallel, "bytes": nbytes, "files": files, "seconds": marks[-1] - start})
        for label, upto in extra_rows:  # the same run, timed up to an earlier step (cp -a without its sync)
            self.rows.append({"method": label, "where": where, "parallel": parallel, "bytes": nbytes, "files": files, "seconds": marks[upto] - start})
        print(f"  {method:<28} {where:<18} {marks[-1] - start:7.2f} s", flush=True)
        shutil.rmtree(dest)
        os.sync()


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=64, help="pgbench scale (64: about 1 GiB of tables and indexes)")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2, 4], help="copy engine streams to time")
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
        bench = Bench(bed, primary, scratch)
        ssh = {"host": db1.address, "user": "postgres", "key": str(bed.network.client_key), "ssh_options": bed.network.ssh_options()[2:]}
        passfile_env = dict(os.environ, PGPASSFILE=str(bed.passfile))

        # --- same host (db1) ---
        dest = bench.fresh_dest("cp", owner="root")
        dest.rmdir()
        bench.run("cp -a + sync", "db1", None, [(db1, ["cp", "-a", str(src), str(dest)], "root", None), (db1, ["sync"], "root", None)], dest, (("cp -a", 0),))
        dest = bench.fresh_dest("rsync", owner="root")
        steps = [(db1, ["rsync", "-a", f"{src}/", f"{dest}/"], "root", None), (db1, ["sync"], "root", None)]
        bench.run("rsync -a + sync", "db1", None, steps, dest, (("rsync -a", 0),))
        dest = bench.fresh_dest("basebackup")
        bb = [str(bin_dir / "pg_basebackup"), "-h", str(primary.socket_dir), "-p", str(primary.port), "-U", "postgres", "-D", str(dest)]
        bench.run("pg_basebackup -X none", "db1", None, [(db1, [*bb, "-Fp", "-X", "none", "-c", "fast"], "postgres", None)], dest)
        for n in args.parallel:
            dest = bench.fresh_dest(f"engine-{n}")
            dest.rmdir()
            spec = json.dumps({"path": str(src), "dest": str(dest), "parallel": n})
            bench.run("datadir_copy engine", "db1", n, [(db1, [sys.executable, "-c", ENGINE, spec], "root", engine_env)], dest)

        # --- across hosts: db2 pulls from db1 ---
        for n in args.parallel:
            dest = bench.fresh_dest(f"engine-ssh-{n}")
            dest.rmdir()
            spec = json.dumps({"path": str(src), "dest": str(dest), "parallel": n, **ssh})
            bench.run("datadir_copy engine, ssh", "db2 <- db1", n, [(db2, [sys.executable, "-c", ENGINE, spec], "root", engine_env)], dest)
        dest = bench.fresh_dest("basebackup-tcp")
        bb = [str(bin_dir / "pg_basebackup"), "-h", primary.host, "-p", str(primary.port), "-U", "postgres", "-w", "-D", str(dest)]
        bench.run("pg_basebackup -X none, TCP", "db2 <- db1", None, [(db2, [*bb, "-Fp", "-X", "none", "-c", "fast"], "postgres", passfile_env)], dest)

        base = next(r["seconds"] for r in bench.rows if r["method"] == "cp -a + sync")
        for row in bench.rows:
            row["mb_per_s"] = round(row["bytes"] / 1e6 / max(row["seconds"], 1e-6), 1)
            row["ratio_to_cp_sync"] = round(row["seconds"] / base, 2)
            row["seconds"] = round(row["seconds"], 2)
        report = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
            "postgres": primary.pg.version,
            "pgbench_scale": args.scale,
            "source": {"bytes": src_bytes, "files": src_files, "pg_wal_bytes": wal_bytes},
            "rows": bench.rows,
        }
        primary.stop()

    print()
    print(f"{'method':<28} {'where':<11} {'par':>3} {'MB':>7} {'files':>6} {'seconds':>8} {'MB/s':>7} {'x cp+sync':>9}")
    for r in report["rows"]:
        par = "" if r["parallel"] is None else str(r["parallel"])
        mb, ratio = r["bytes"] / 1e6, r["ratio_to_cp_sync"]
        print(f"{r['method']:<28} {r['where']:<11} {par:>3} {mb:7.0f} {r['files']:6d} {r['seconds']:8.2f} {r['mb_per_s']:7.1f} {ratio:9.2f}")
    args.output.mkdir(parents=True, exist_ok=True)
    out = args.output / f"copy_bench-{report['when'].replace(':', '')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
