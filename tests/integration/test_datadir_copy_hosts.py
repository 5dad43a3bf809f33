"""datadir_copy across two namespace hosts over ssh, through ansible-playbook (PostgreSQL 15): run on db2, it pulls
db1's data directory and tablespace (as the postgres user, with the test bed's key) under the low-level backup API.
The copy holds exactly the files `pg_basebackup -X none` of the same server holds: unlogged relations reduced to their
init forks, temporary relations and pgsql_tmp absent, the canary tablespace at its mapped path (a path with a space),
only the tablespace's own PG_15_* directory; names with spaces, quotes, a leading dash, a newline, a backslash and a
non-UTF-8 byte arrive as they are, byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import copy_state

from .harness.pgbins import ROOT, client_bindir
from .support.copies import start_backup, stop_backup, tree

pytestmark = [pytest.mark.integration, pytest.mark.netns]

MAJOR = 15
PLAYBOOKS = Path(__file__).resolve().parent / "playbooks"
ANSIBLE_PLAYBOOK = str(ROOT / ".venv" / "bin" / "ansible-playbook")
# Names that break shells, option parsing and naive line- or UTF-8-based listings.
ODD_NAMES = [
    b"with space",
    b"single'quote",
    b'double"quote',
    b"-leading-dash",
    b"--delete",
    b"back\\slash",
    b"new\nline",
    b"star*and?brackets[1]",
    b"latin1-\xe9",
]


def run_playbook(env: dict, inventory: Path, playbook: str, extra: dict, *args: str) -> subprocess.CompletedProcess:
    extra_file = inventory.parent / f"extra-{playbook}.json"
    extra_file.write_text(json.dumps(extra))
    extra_file.chmod(0o600)
    argv = [ANSIBLE_PLAYBOOK, "-i", str(inventory), str(PLAYBOOKS / playbook), "-e", f"@{extra_file}", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)


def ids(user: str) -> tuple:
    pw = pwd.getpwnam(user)
    return pw.pw_uid, pw.pw_gid


def place_odd_files(directory: Path, owner: str = "postgres") -> dict:
    """Files with odd names (and a directory with a leading dash holding one) in ``directory``; returns {name: sha256}."""
    directory.mkdir(mode=0o700, exist_ok=True)
    shutil.chown(directory, owner, owner)
    sums = {}
    sub = os.path.join(os.fsencode(directory), b"-dash dir 'q'")
    os.mkdir(sub, 0o700)
    os.chown(sub, *ids(owner))
    for i, name in enumerate(ODD_NAMES):
        for parent in (os.fsencode(directory), sub):
            path = os.path.join(parent, name)
            data = os.urandom(100 + i * 977)
            with open(path, "wb") as f:
                f.write(data)
            os.chmod(path, 0o600)
            os.chown(path, *ids(owner))
            sums[os.path.relpath(path, os.fsencode(directory))] = hashlib.sha256(data).hexdigest()
    return sums


def pg_basebackup(cluster, *args: str) -> subprocess.CompletedProcess:
    """Debian 15's pg_basebackup over the cluster's socket; its stderr may name non-UTF-8 files (decoded leniently)."""
    argv = [str(client_bindir() / "pg_basebackup"), "-h", str(cluster.socket_dir), "-p", str(cluster.port), "-U", "postgres", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    proc = subprocess.run(argv, capture_output=True, env=env, timeout=300, check=False)
    return subprocess.CompletedProcess(argv, proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))


def sums_of(directory: Path, names) -> dict:
    out = {}
    for rel in names:
        path = os.path.join(os.fsencode(directory), rel)
        with open(path, "rb") as f:
            out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_copy_across_hosts_matches_pg_basebackup(netns_testbed, ansible_env, tmp_path):
    bed = netns_testbed
    db1, db2 = bed.host("db1"), bed.host("db2")
    primary = bed.new_primary(MAJOR, host=db1, name=f"pg{MAJOR}-dch-primary")
    ts_src = bed.scratch_dir("dch-ts-src")
    ts_dst = bed.run_dir / "scratch" / "dch ts dst"  # mapped path with a space; created by the copy
    dest = bed.run_dir / "scratch" / "dch-copy"
    bb = bed.scratch_dir("dch-basebackup", owner="root")
    ts_bb = bed.scratch_dir("dch-ts-bb", owner="root")
    tmpfile = primary.datadir / "base" / "pgsql_tmp" / "pgsql_tmp99999.0"
    temp_conn = primary.connect()
    try:
        primary.sql(f"CREATE TABLESPACE dch_canary LOCATION '{ts_src}'")
        primary.sql("CREATE TABLE dch_canary_t TABLESPACE dch_canary AS SELECT g FROM generate_series(1, 1000) g")
        primary.sql("CREATE UNLOGGED TABLE dch_unlogged AS SELECT g FROM generate_series(1, 10000) g")
        primary.sql("CREATE UNLOGGED TABLE dch_unlogged_ts TABLESPACE dch_canary AS SELECT g FROM generate_series(1, 100) g")
        primary.sql("CHECKPOINT")
        with temp_conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE dch_temp AS SELECT g FROM generate_series(1, 1000) g")
            cur.execute("SELECT pg_relation_filepath('dch_temp')")
            (temp_rel,) = cur.fetchone()
        tmpfile.parent.mkdir(mode=0o700, exist_ok=True)
        tmpfile.write_bytes(b"temporary")
        for path in (tmpfile.parent, tmpfile):
            shutil.chown(path, "postgres", "postgres")
        (oid,) = primary.sql("SELECT oid::text FROM pg_tablespace WHERE spcname = 'dch_canary'")[0]
        unlogged = {r[0] for r in primary.sql("SELECT pg_relation_filepath(c) FROM unnest(ARRAY['dch_unlogged'::regclass, 'dch_unlogged_ts'::regclass]) c")}
        (version_dir,) = [p for p in os.listdir(ts_src) if p.startswith(f"PG_{MAJOR}_")]
        odd = {("extra", k): v for k, v in place_odd_files(primary.datadir / "extra").items()}
        odd |= {("ts", k): v for k, v in place_odd_files(ts_src / version_dir / "extra").items()}
        # Outside the tablespace's version directory: pg_basebackup leaves these out, and so must we.
        (ts_src / "stray at root").write_bytes(b"x")
        (ts_src / "PG_14_202107181" / "1").mkdir(parents=True)
        (ts_src / "PG_14_202107181" / "1" / "16384").write_bytes(b"old major")
        shutil.chown(ts_src / "stray at root", "postgres", "postgres")
        subprocess.run(["chown", "-R", "postgres:postgres", str(ts_src / "PG_14_202107181")], check=True)
        temp_rel_path = primary.datadir / temp_rel
        assert temp_rel_path.exists()

        inventory = bed.write_inventory(tmp_path / "inventory" / "hosts.yml")
        result_file = tmp_path / "result.json"
        progress = bed.run_dir / "scratch" / "dch-progress.json"
        extra = {
            "source_host": db1.address,
            "source_user": "postgres",
            "source_path": str(primary.datadir),
            "dest": str(dest),
            "copy_args": {"tablespace_mapping": {oid: str(ts_dst)}, "parallel": 2, "progress_file": str(progress)},
            "result_file": str(result_file),
        }
        # check mode: what would be copied, nothing written
        checked = run_playbook(ansible_env, inventory, "datadir_copy.yml", extra, "--limit", db2.name, "--check")
        assert checked.returncode == 0, checked.stdout[-8000:] + checked.stderr[-4000:]
        would = json.loads(result_file.read_text())
        assert would["changed"] is False and would["files"] > 100 and would["bytes"] > 1 << 20
        assert would["tablespaces"][0]["dest"] == str(ts_dst)
        assert not dest.exists() and not ts_dst.exists() and not progress.exists()

        conn = primary.connect()
        try:
            start_backup(conn, MAJOR)
            proc = run_playbook(ansible_env, inventory, "datadir_copy.yml", extra, "--limit", db2.name)
            stop_backup(conn, MAJOR)
        finally:
            conn.close()
        assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]
        result = json.loads(result_file.read_text())
        assert result["changed"] is True and result["major"] == MAJOR and result["files"] > 100
        assert result["bytes"] > 1 << 20 and result["vanished"] == []
        assert result["tablespaces"] == [{"oid": oid, "source": str(ts_src), "dest": str(ts_dst), "in_place": False}]
        done = json.loads(progress.read_text())
        assert done["phase"] == "done" and done["files_done"] == done["files_total"] == result["files"]

        # pg_basebackup of the same server, tablespace mapped as well
        bbp = pg_basebackup(primary, "-D", str(bb), "-Fp", "-X", "none", "--no-sync", "-c", "fast", "-T", f"{ts_src}={ts_bb}")
        assert bbp.returncode == 0, bbp.stderr
        got = tree(dest)
        ours = (got - {copy_state.CHECKSUMS_FILE, copy_state.PENDING_CONTROL}) | {"global/pg_control"}
        theirs = tree(bb) - {"backup_label", "backup_manifest"}
        assert ours == theirs, (sorted(ours - theirs), sorted(theirs - ours))
        assert "global/pg_control" not in got and copy_state.PENDING_CONTROL in got
        assert not copy_state.is_incomplete(str(dest))

        # the canary tablespace at its mapped path, only its PG_15_* directory
        assert os.readlink(dest / "pg_tblspc" / oid) == str(ts_dst)
        assert sorted(os.listdir(ts_dst)) == [version_dir]
        assert (ts_dst / version_dir / primary.sql("SELECT pg_relation_filepath('dch_canary_t')")[0][0].split("/", 3)[3]).is_file()
        for rel in unlogged:
            assert rel not in got, rel
            assert f"{rel}_init" in got, rel
        assert temp_rel_path.exists() and temp_rel not in got
        assert not [p for p in got if "pgsql_tmp" in p]

        # odd names, byte for byte
        copied = {("extra", k): v for k, v in sums_of(dest / "extra", [k for w, k in odd if w == "extra"]).items()}
        copied |= {("ts", k): v for k, v in sums_of(ts_dst / version_dir / "extra", [k for w, k in odd if w == "ts"]).items()}
        assert copied == odd
        st = os.stat(os.path.join(os.fsencode(dest / "extra"), b"latin1-\xe9"))
        assert (st.st_uid, oct(st.st_mode & 0o777)) == (ids("postgres")[0], "0o600")
    finally:
        temp_conn.close()
        bed.discard(primary)
