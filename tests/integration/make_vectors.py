"""Make the real-cluster test vectors of the core library (tests/unit/plugins/module_utils/vectors/pg<major>/).

    .venv/bin/python tests/integration/make_vectors.py            # every major 13-18 (or PG_VERSIONS="13 15")
    .venv/bin/python tests/integration/make_vectors.py 15 18

For each major, on a test bed (run as root; servers run as postgres), with 1 MB WAL segments so the files stay
small, a primary and a streaming standby made by the harness, then:

* one WAL record of 1.5 MB (a logical message) so a segment is filled by a record continued from the one before;
* a non-exclusive backup on the standby: its backup_label (BACKUP FROM: standby);
* 13 and 14: an exclusive backup on the primary (BACKUP METHOD: pg_start_backup), label read back from PGDATA;
* pg_control of the primary (in production) and of the standby (in archive recovery), each read in the same
  statement as pg_control_system/checkpoint/recovery/init(), repeated until two reads agree;
* the standby promoted: the new timeline's history file and its first segment (pages of both timelines);
* a tablespace whose path holds a space, a backslash and a newline, and a non-exclusive backup on the primary:
  its backup_label, tablespace_map, .backup history file and every WAL segment from start to stop;
* pg_control after a clean shutdown of the primary, and on 15 pg_controldata's view of every pg_control kept.

Everything is written gzip-compressed (mtime 0) with expected.json: what the server said about each file.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.integration.harness.pgbins import client_bindir, selected_majors  # noqa: E402
from tests.integration.harness.testbed import Testbed  # noqa: E402

VECTORS = ROOT / "tests" / "unit" / "plugins" / "module_utils" / "vectors"
SEG_SIZE = 1 << 20
PARTIAL_KEEP = 4 * 8192
CONTROL_QUERY = (
    "SELECT encode(pg_read_binary_file('global/pg_control'), 'hex'), row_to_json(s)::text, row_to_json(c)::text, "
    "row_to_json(r)::text, row_to_json(i)::text "
    "FROM pg_control_system() s, pg_control_checkpoint() c, pg_control_recovery() r, pg_control_init() i"
)


def gz_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0, filename="") as out:
        out.write(data)


def control_snapshot(cluster) -> dict:
    """pg_control's bytes and the SQL functions' view of it, from one statement, repeated until stable."""
    previous = None
    for _attempt in range(50):
        row = cluster.sql(CONTROL_QUERY)[0]
        if row == previous:
            data = bytes.fromhex(row[0])
            return {"bytes": data, "sql": {name: json.loads(text) for name, text in zip(("system", "checkpoint", "recovery", "init"), row[1:])}}
        previous = row
        time.sleep(0.05)
    raise RuntimeError(f"pg_control of {cluster} kept changing")


def pg_controldata(data: bytes) -> dict:
    """Debian 15's pg_controldata on a copy of the file: 'label: value' lines as a dict."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "global").mkdir()
        (Path(tmp) / "global" / "pg_control").write_bytes(data)
        out = subprocess.run([str(client_bindir() / "pg_controldata"), tmp], check=True, capture_output=True, text=True).stdout
    facts = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            facts[key.strip()] = value.strip()
    return facts


def wait_archived(cluster, names: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all((cluster.archive_dir / name).exists() for name in names):
            return
        time.sleep(0.2)
    missing = [n for n in names if not (cluster.archive_dir / n).exists()]
    raise RuntimeError(f"{cluster}: {missing} not archived after {timeout}s")


def seg_name(tli: int, lsn: int) -> str:
    segno = lsn // SEG_SIZE
    per_id = (1 << 32) // SEG_SIZE
    return f"{tli:08X}{segno // per_id:08X}{segno % per_id:08X}"


def lsn_int(text: str) -> int:
    hi, lo = text.split("/")
    return int(hi, 16) << 32 | int(lo, 16)


def switch(cluster) -> str:
    return cluster.sql("SELECT pg_switch_wal()::text")[0][0]


def start_backup(conn, major: int, label: str, exclusive: bool = False) -> str:
    with conn.cursor() as cur:
        if major >= 15:
            cur.execute("SELECT pg_backup_start(%s, true)::text", (label,))
        else:
            cur.execute("SELECT pg_start_backup(%s, true, %s)::text", (label, exclusive))
        return cur.fetchone()[0]


def stop_backup(conn, major: int) -> tuple[str, str, str]:
    with conn.cursor() as cur:
        if major >= 15:
            cur.execute("SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)")
        else:
            cur.execute("SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)")
        return cur.fetchone()


def make(bed: Testbed, major: int) -> None:
    out = VECTORS / f"pg{major}"
    shutil.rmtree(out, ignore_errors=True)
    (out / "wal").mkdir(parents=True)
    primary = bed.new_primary(major, wal_segsize=1, name=f"vec{major}-primary")
    standby = bed.new_standby(primary, name=f"vec{major}-standby")
    version = primary.sql("SHOW server_version")[0][0]
    sysid = int(primary.sql("SELECT system_identifier::text FROM pg_control_system()")[0][0])
    expected: dict = {"major": major, "server_version": version, "system_identifier": str(sysid), "seg_size": SEG_SIZE}
    expected.update(controls=[], segments=[], labels=[])
    switches: dict[str, str] = {}  # segment name -> the end LSN pg_switch_wal() returned for it

    def note_switch(cluster, tli: int) -> None:
        end = switch(cluster)
        if lsn_int(end) % SEG_SIZE:
            switches[seg_name(tli, lsn_int(end) - 1)] = end

    def keep_segment(cluster, name: str, why: str) -> None:
        wait_archived(cluster, [name])
        data = (cluster.archive_dir / name).read_bytes()
        gz_write(out / "wal" / f"{name}.gz", data)
        expected["segments"].append({"file": f"wal/{name}.gz", "name": name, "why": why, "switch_end_lsn": switches.get(name)})

    # 1. A segment filled by one record continued from the segment before, then a switch.
    primary.sql("CREATE TABLE vec (id int, t text)")
    note_switch(primary, 1)
    first = lsn_int(primary.sql("SELECT pg_current_wal_insert_lsn()::text")[0][0])
    primary.sql("SELECT pg_logical_emit_message(false, 'vec', repeat('v', 1572864))")
    primary.sql("INSERT INTO vec SELECT g, 'row ' || g FROM generate_series(1, 100) g")
    note_switch(primary, 1)
    last = lsn_int(primary.sql("SELECT pg_current_wal_insert_lsn()::text")[0][0])
    for segno in range(first // SEG_SIZE, last // SEG_SIZE):
        keep_segment(primary, seg_name(1, segno * SEG_SIZE), "a 1.5 MB record spanning segments, then a switch")
    standby.wait_replayed()

    # 2. A backup on the standby (and, 13-14, an exclusive one on the primary).
    conn = standby.connect()
    try:
        start = start_backup(conn, major, f"vec{major} standby backup")
        primary.sql("INSERT INTO vec VALUES (1, 'during the standby backup')")
        standby.wait_replayed()
        stop, label, spcmap = stop_backup(conn, major)
    finally:
        conn.close()
    expected["labels"].append({"kind": "standby", "start_lsn": start, "stop_lsn": stop, "backup_label": label, "tablespace_map": spcmap})
    if major <= 14:
        start = primary.sql("SELECT pg_start_backup('vec exclusive', true)::text")[0][0]
        label = primary.sql("SELECT pg_read_file('backup_label')")[0][0]
        stop = primary.sql("SELECT pg_stop_backup()::text")[0][0]
        expected["labels"].append({"kind": "exclusive", "start_lsn": start, "stop_lsn": stop, "backup_label": label, "tablespace_map": None})

    # 3. pg_control of a primary in production and of a standby in archive recovery.
    primary.sql("CHECKPOINT")
    standby.wait_replayed()
    standby.sql("CHECKPOINT")
    for role, cluster in (("primary", primary), ("standby", standby)):
        snap = control_snapshot(cluster)
        gz_write(out / f"pg_control_{role}.gz", snap["bytes"])
        expected["controls"].append({"file": f"pg_control_{role}.gz", "role": role, "sql": snap["sql"]})

    # 4. The standby promoted: timeline 2, its history file and its first segment.
    primary.sql("INSERT INTO vec VALUES (2, 'before the promotion')")
    note_switch(primary, 1)
    primary.sql("INSERT INTO vec VALUES (3, 'a little WAL after the switch')")
    standby.wait_replayed()
    standby.sql("SELECT pg_promote(true, 60)")
    standby.sql("INSERT INTO vec VALUES (4, 'on timeline 2')")
    note_switch(standby, 2)
    wait_archived(standby, ["00000002.history"])
    history = (standby.archive_dir / "00000002.history").read_text()
    switchpoint = history.split("\t")[1]
    expected["history"] = {"name": "00000002.history", "text": history}
    keep_segment(standby, seg_name(2, lsn_int(switchpoint)), "first segment of timeline 2: timeline 1's WAL up to the switchpoint, then timeline 2's")
    partial = sorted(p.name for p in standby.archive_dir.iterdir() if p.name.endswith(".partial"))
    for name in partial:
        # Only the first pages: the rest of a .partial is whatever the recycled file held (stale, incompressible).
        gz_write(out / "wal" / f"{name}.gz", (standby.archive_dir / name).read_bytes()[:PARTIAL_KEEP])
        expected["segments"].append(
            {
                "file": f"wal/{name}.gz",
                "name": name,
                "why": f"the old timeline's last segment, archived at promotion (first {PARTIAL_KEEP} bytes kept)",
                "partial": True,
                "through_lsn": switchpoint,
            }
        )
    standby.stop()

    # 5. A tablespace with an awkward path, and a backup on the primary.
    ts_dir = bed.scratch_dir(f"vec{major}-ts") / "ts dir\\with\nnewline"
    ts_dir.mkdir()
    shutil.chown(ts_dir, "postgres", "postgres")
    primary.sql(f"CREATE TABLESPACE vects LOCATION '{ts_dir}'")
    primary.sql("CREATE TABLE vec_in_ts (id int) TABLESPACE vects")
    conn = primary.connect()
    try:
        start = start_backup(conn, major, f"vec{major} primary: ünïcode label")
        primary.sql("INSERT INTO vec_in_ts SELECT generate_series(1, 50)")
        stop, label, spcmap = stop_backup(conn, major)
    finally:
        conn.close()
    start_seg = lsn_int(start) // SEG_SIZE
    backup_file = f"{seg_name(1, lsn_int(start))}.{lsn_int(start) % SEG_SIZE:08X}.backup"
    wait_archived(primary, [backup_file])
    expected["labels"].append(
        {
            "kind": "primary",
            "start_lsn": start,
            "stop_lsn": stop,
            "backup_label": label,
            "tablespace_map": spcmap,
            "tablespace_oid": int(primary.sql("SELECT oid FROM pg_tablespace WHERE spcname = 'vects'")[0][0]),
            "tablespace_path": str(ts_dir),
            "backup_history_name": backup_file,
            "backup_history": (primary.archive_dir / backup_file).read_text(),
        }
    )
    for segno in range(start_seg, (lsn_int(stop) - 1) // SEG_SIZE + 1):
        keep_segment(primary, seg_name(1, segno * SEG_SIZE), "WAL of the primary backup")

    # 6. pg_control after a clean shutdown.
    primary.stop()
    data = (primary.datadir / "global" / "pg_control").read_bytes()
    gz_write(out / "pg_control_shutdown.gz", data)
    expected["controls"].append({"file": "pg_control_shutdown.gz", "role": "shutdown", "sql": None})
    if major == 15:
        for entry in expected["controls"]:
            with gzip.open(out / entry["file"]) as handle:
                entry["pg_controldata"] = pg_controldata(handle.read())
    (out / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"pg{major} ({version}): {len(expected['segments'])} segments, {len(expected['controls'])} pg_control files, {size} bytes in {out}")


def main(argv: list[str]) -> int:
    if os.geteuid() != 0:
        print("run as root: the servers run as the postgres user", file=sys.stderr)
        return 2
    majors = [int(a) for a in argv] or selected_majors()
    with Testbed("local") as bed:
        for major in majors:
            make(bed, major)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
