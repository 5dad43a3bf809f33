"""Where the time of a copy across hosts goes: CPU seconds per process, and a py-spy profile of our receiver.

Not a test. Run as root from the checkout, after ``make bench`` once (it installs py-spy into .venv):
``.venv/bin/python bench/copy_profile.py [--scale 32] [--parallel 2]``.

It builds the same PostgreSQL 15 primary on namespace host db1 as bench/copy_bench.py, then, each from a cold page
cache, copies its data directory to db2 three ways: datadir_copy's engine over ssh with ``transport: stream`` and with
``rsync``, and ``pg_basebackup -X none`` over TCP. During each run a sampler reads every process's CPU time from
/proc (every 50 ms) and the machine's /proc/stat, so the report says how many CPU seconds ssh (decryption), sshd
(encryption), the sender, our receiver, rsync, the kernel's own threads and PostgreSQL spent, against the wall time
and the 2 cores' capacity. A last run of the stream copy under ``py-spy record`` (our receiver and its threads,
``--subprocesses``) gives the receiver's hottest Python functions. The report goes to stdout and to
build/bench/copy_profile-<time>.md; py-spy's raw (collapsed stack) output beside it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import copy_bench  # bench/ is not a package: the cluster and the engine snippet are shared

TICK = os.sysconf("SC_CLK_TCK")
PY_SPY = Path(sys.executable).parent / "py-spy"


def _proc_cpu() -> dict:
    """pid -> (name, CPU seconds so far) of every process; the sender is named apart from other python3."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        name = comm
        if b"pgbackup-stream-sender" in cmd:
            name = "python3 (stream sender, db1)"
        elif b"copy_engine import" in cmd:
            name = "python (our receiver, db2)"
        elif comm.startswith(("kworker", "ksoftirqd", "jbd2", "kswapd", "flush")):
            name = "kernel threads (" + comm.split("/")[0].rstrip("0123456789:-") + ")"
        elif comm.startswith("postgres") or comm.startswith("postmaster"):
            name = "postgres (walsender/backend)"
        out[pid] = (name, (int(fields[11]) + int(fields[12])) / TICK)
    return out


def _stat() -> list:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:8]]  # user nice system idle iowait irq softirq


class Sampler(threading.Thread):
    """CPU seconds each process spent while the run lasted (those already running: only what they added)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.before = _proc_cpu()
        self.last: dict = {}
        self.stat0 = _stat()

    def run(self) -> None:
        while not self.stop.is_set():
            self.last.update(_proc_cpu())
            time.sleep(0.05)

    def finish(self) -> tuple:
        self.stop.set()
        self.join()
        self.last.update(_proc_cpu())
        stat = [b - a for a, b in zip(self.stat0, _stat())]
        by_name: collections.Counter = collections.Counter()
        for pid, (name, secs) in self.last.items():
            prev = self.before.get(pid)
            added = secs - prev[1] if prev and prev[0] == name else secs
            if added > 0.005:
                by_name[name] += added
        total = sum(stat)
        shares = dict(zip(("user", "nice", "system", "idle", "iowait", "irq", "softirq"), (x / total for x in stat)))
        return by_name, shares


def timed(host, argv, user, env) -> tuple:
    copy_bench.drop_caches()
    sampler = Sampler()
    sampler.start()
    start = time.monotonic()
    proc = host.run(argv, user=user, check=False, env=env)
    wall = time.monotonic() - start
    by_name, shares = sampler.finish()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall, by_name, shares


def report_run(label: str, wall: float, by_name, shares) -> list:
    lines = [f"### {label}: {wall:.2f} s wall, {sum(by_name.values()):.2f} CPU s (2 cores: {2 * wall:.2f} s available)", ""]
    idle = shares["idle"] + shares["iowait"]
    lines.append(
        f"/proc/stat over the run: user {shares['user']:.0%}, system {shares['system']:.0%}, softirq {shares['softirq']:.0%}, "
        f"idle {shares['idle']:.0%}, iowait {shares['iowait']:.0%} (idle + iowait {idle:.0%})"
    )
    lines += ["", "| process | CPU s | x wall |", "|---|---:|---:|"]
    for name, secs in by_name.most_common(10):
        lines.append(f"| {name} | {secs:.2f} | {secs / wall:.2f} |")
    return [*lines, ""]


def hottest(raw: Path, top: int = 15) -> list:
    """The functions with the most samples of their own (self) and in all (inclusive), from py-spy's raw format."""
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _space, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1] if " (" in f else f for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"py-spy samples (100 Hz, active threads only): {total}", "", "| function (file:line) | self | inclusive |", "|---|---:|---:|"]
    for frame, n in own.most_common(top):
        lines.append(f"| `{frame}` | {n / total:.0%} | {inclusive[frame] / total:.0%} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--scale", type=int, default=32, help="pgbench scale (32: about 590 MB)")
    parser.add_argument("--parallel", type=int, default=2, help="streams of the engine")
    parser.add_argument("--output", type=Path, default=copy_bench.ROOT / "build" / "bench")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: the test bed runs PostgreSQL as postgres and creates network namespaces")
    if not PY_SPY.exists():
        parser.error(f"{PY_SPY} is missing: run `make bench` once (scripts/install-bench-deps.sh installs bench/requirements.txt)")
    copy_bench._setup_imports()
    from tests.integration.harness.pgbins import client_bindir
    from tests.integration.harness.testbed import Testbed

    when = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    args.output.mkdir(parents=True, exist_ok=True)
    raw = args.output / f"copy_profile-{when}.pyspy.txt"
    engine_env = dict(os.environ, PYTHONPATH=str(copy_bench.COLLECTIONS))
    lines = [f"# Copy profile {when}", "", f"`{' '.join(sys.argv)}`, load average before: {os.getloadavg()}", ""]
    with Testbed("netns", hosts=("db1", "db2")) as bed:
        db1, db2 = bed.host("db1"), bed.host("db2")
        primary = copy_bench.build_cluster(bed, args.scale)
        src = primary.datadir
        size, files = copy_bench.tree_bytes(src)
        lines += [f"source: {size / 1e6:.0f} MB in {files} files, parallel {args.parallel}", ""]
        ssh = {"host": db1.address, "user": "postgres", "key": str(bed.network.client_key), "ssh_options": bed.network.ssh_options()[2:]}
        scratch = bed.scratch_dir("profile")
        dest = scratch / "copy"

        def engine(transport: str) -> list:
            spec = json.dumps({"path": str(src), "dest": str(dest), "parallel": args.parallel, "transport": transport, **ssh})
            return [sys.executable, "-c", copy_bench.ENGINE, spec]

        bb = [str(client_bindir() / "pg_basebackup"), "-h", primary.host, "-p", str(primary.port), "-U", "postgres", "-w"]
        bb += ["-D", str(dest), "-Fp", "-X", "none", "-c", "fast"]
        runs = [
            ("datadir_copy engine, transport stream", engine("stream"), "root", engine_env),
            ("datadir_copy engine, transport rsync", engine("rsync"), "root", engine_env),
            ("pg_basebackup -X none over TCP", bb, "postgres", dict(os.environ, PGPASSFILE=str(bed.passfile))),
        ]
        for label, argv, user, env in runs:
            if label.startswith("pg_basebackup"):
                dest.mkdir(mode=0o700)
                shutil.chown(dest, "postgres", "postgres")
            lines += report_run(label, *timed(db2, argv, user, env))
            print("\n".join(lines[-16:]), flush=True)
            shutil.rmtree(dest)
        copy_bench.drop_caches()
        spy = [str(PY_SPY), "record", "--subprocesses", "--threads", "--format", "raw", "--rate", "100", "-o", str(raw), "--"]
        proc = db2.run([*spy, *engine("stream")], user="root", check=False, env=engine_env)
        if proc.returncode != 0:
            raise RuntimeError(f"py-spy record failed ({proc.returncode}): {proc.stderr[-2000:]}")
        shutil.rmtree(dest)
        lines += ["### py-spy of the stream copy's receiver (db2)", "", *hottest(raw), "", f"raw stacks: {raw}", ""]
        primary.stop()
    out = args.output / f"copy_profile-{when}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-22:]))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
