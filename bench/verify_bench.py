"""Cost of backup_verify's read pass (manifest SHA-256 + page LSN audit + page checksums in one read) against ``cat``.

Not a test. Run as root from the checkout: ``.venv/bin/python bench/verify_bench.py [--scales 10 50] [--repeat 3]``.

For each scale it makes a PostgreSQL 15 cluster with data checksums (the integration test bed, local mode), loads it
with ``pgbench -i -s SCALE``, checkpoints and stops it, then times over the relation files of its data directory, in
interleaved rounds, each from a cold page cache (``sync; echo 3 > /proc/sys/vm/drop_caches``) and again warm:
``cat`` of the same files to /dev/null; the audit (page_audit.audit, as backup_verify runs it) with SHA-256 and LSNs
only; with checksums too, in 1 and 2 processes. Prints pages/s, MB/s and the ratio to ``cat``; writes JSON to
build/bench/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLLECTIONS = ROOT / "build" / "collections"
LINK = COLLECTIONS / "ansible_collections" / "pgbackup" / "lowlevel"


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


def relation_files(datadir: Path) -> list:
    from ansible_collections.pgbackup.lowlevel.plugins.module_utils.page_audit import relation_segment

    out = []
    for path in sorted(datadir.rglob("*")):
        rel = str(path.relative_to(datadir))
        if path.is_file() and relation_segment(rel) is not None:
            out.append((str(path), rel, "SHA256"))
    return out


def timed(method: str, files: list, cold: bool) -> float:
    from ansible_collections.pgbackup.lowlevel.plugins.module_utils.page_audit import audit

    if cold:
        drop_caches()
    started = time.monotonic()
    if method == "cat":
        with open(os.devnull, "wb") as null:
            for chunk in range(0, len(files), 500):
                subprocess.run(["cat", *[p for p, _r, _a in files[chunk : chunk + 500]]], stdout=null, check=True)
    else:
        checksums, parallel = {"sha256+lsn": (False, 1), "sha256+lsn+checksum p1": (True, 1), "sha256+lsn+checksum p2": (True, 2)}[method]
        _by_rel, summary = audit(files, parallel=parallel, checksums=checksums, start_lsn=1 << 62, bound=None, relseg_size=131072)
        assert summary["read"] > 0
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    _setup_imports()
    from tests.integration.harness.testbed import Testbed

    methods = ["cat", "sha256+lsn", "sha256+lsn+checksum p1", "sha256+lsn+checksum p2"]
    rows = []
    bed = Testbed("local", hosts=("db1",))
    try:
        for scale in args.scales:
            cluster = bed.new_primary(15, name=f"vb{scale}")
            cluster.sql("ALTER SYSTEM SET autovacuum = off")
            cluster.sql("SELECT pg_reload_conf()")
            cluster.pgbench_init(scale=scale)
            cluster.sql("CHECKPOINT")
            cluster.stop()
            files = relation_files(cluster.datadir)
            size = sum(os.path.getsize(p) for p, _r, _a in files)
            pages = size // 8192
            for cold in (True, False):
                times: dict = {m: [] for m in methods}
                for _round in range(args.repeat):
                    for method in methods:
                        times[method].append(timed(method, files, cold))
                base = statistics.median(times["cat"])
                for method in methods:
                    median = statistics.median(times[method])
                    rows.append({"scale": scale, "cache": "cold" if cold else "warm", "method": method, "files": len(files), "MB": round(size / 1e6),
                                 "median_s": round(median, 2), "min_s": round(min(times[method]), 2), "pages_per_s": round(pages / median),
                                 "MB_per_s": round(size / 1e6 / median), "x_cat": round(median / base, 2)})  # fmt: skip
    finally:
        bed.teardown()
    load = os.getloadavg()
    print(f"load average before the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; cores: {os.cpu_count()}")
    print("| scale | cache | method | files | MB | median s | min s | pages/s | MB/s | x cat |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        cells = [r[k] for k in ("scale", "cache", "method", "files", "MB", "median_s", "min_s", "pages_per_s", "MB_per_s", "x_cat")]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    out = ROOT / "build" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    (out / f"verify_bench-{stamp}.json").write_text(json.dumps({"rows": rows, "load": load}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
