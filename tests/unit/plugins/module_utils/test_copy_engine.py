from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import threading

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import copy_source, copy_state
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_engine import (
    OUT_PREFIX,
    Progress,
    Source,
    balance,
    check_destination,
    execute,
    make_plan,
    rsync_argv,
    rsync_logged_name,
    run_rsync,
    stream_rate_limit,
)
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError

from .fake_postmaster import fake_postmaster

ODD = ["with space", "quo'te\"d", "-leading-dash", "new\nline"]


def write(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def datadir(tmp_path):
    d = tmp_path / "src"
    write(d / "PG_VERSION", b"15\n")
    write(d / "global" / "pg_control", b"c" * 8192)
    write(d / "global" / "1262", b"g" * 100)
    write(d / "base" / "5" / "16384", b"u" * 8192)
    write(d / "base" / "5" / "16384_init", b"i" * 10)
    write(d / "base" / "5" / "16390", b"l" * 20000)
    write(d / "base" / "5" / "t3_16400", b"t")
    write(d / "base" / "pgsql_tmp" / "pgsql_tmp1.0", b"t")
    write(d / "pg_wal" / "000000010000000000000001", b"w" * 100)
    (d / "pg_wal" / "archive_status").mkdir()
    write(d / "pg_stat_tmp" / "global.stat")
    write(d / "postmaster.pid", b"999999999\n")
    write(d / "postmaster.opts")
    for name in ODD:
        write(d / "odd" / name, name.encode())
    write(d / "odd" / os.fsdecode(b"latin1-\xe9"), b"e")
    (d / "pg_tblspc").mkdir()
    ts = tmp_path / "ts_src"
    write(ts / "PG_15_202209061" / "5" / "16500", b"s" * 300)
    write(ts / "PG_15_202209061" / "5" / "16501", b"s")
    write(ts / "PG_15_202209061" / "5" / "16501_init", b"s")
    (d / "pg_tblspc" / "16499").symlink_to(ts)
    write(d / "pg_tblspc" / "16498" / "PG_15_202209061" / "5" / "16600", b"p")
    os.chmod(d, 0o700)
    return d


def tree(root):
    out = set()
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            out.add(os.path.relpath(os.path.join(dirpath, n), root))
    return out


def test_rsync_argv_protects_args(monkeypatch):
    monkeypatch.setattr(copy_source, "has_aes_instructions", lambda: False)
    argv = rsync_argv(Source("/d", "db1", "postgres", 2222, "/k", ("-o", "A=b c")), "/d", "/x", "/l", False)
    assert "--protect-args" in argv
    assert argv[-3:] == ["--", "db1:/d/", "/x/"]
    assert argv[argv.index("-e") + 1] == "ssh -o BatchMode=yes -p 2222 -i /k -l postgres -o 'A=b c'"
    assert "--checksum" in rsync_argv(Source("/d"), "/d", "/x", "/l", True)


def test_balance():
    class E:
        def __init__(self, size):
            self.size = size

    buckets = balance([E(s) for s in (10, 9, 1, 1, 1)], 2)
    assert sorted(sum(e.size for e in b) for b in buckets) == [11, 11]


@pytest.mark.parametrize("parallel", [1, 3])
def test_local_copy(datadir, tmp_path, parallel):
    dest = tmp_path / "dst"
    mapping = {"16499": str(tmp_path / "ts_dst")}
    plan = make_plan(Source(str(datadir)), str(dest), mapping, [])
    check_destination(Source(str(datadir)), plan, str(dest), False)
    progress = tmp_path / "progress.json"
    res = execute(Source(str(datadir)), plan, str(dest), parallel=parallel, owner=None, progress_file=str(progress))
    got = tree(dest)
    assert "base/5/16384_init" in got and "base/5/16384" not in got and "base/5/16390" in got
    assert "base/5/t3_16400" not in got and "base/pgsql_tmp" not in got
    assert "pg_wal" in got and "pg_wal/archive_status" in got and "pg_wal/000000010000000000000001" not in got
    assert "pg_stat_tmp" in got and "pg_stat_tmp/global.stat" not in got
    assert "postmaster.pid" not in got and "postmaster.opts" not in got
    assert "global/pg_control" not in got and copy_state.PENDING_CONTROL in got
    assert copy_state.INCOMPLETE_MARKER not in got
    for name in ODD:
        assert (dest / "odd" / name).read_bytes() == name.encode()
    assert (dest / "odd" / os.fsdecode(b"latin1-\xe9")).read_bytes() == b"e"
    assert os.readlink(dest / "pg_tblspc" / "16499") == str(tmp_path / "ts_dst")
    assert (tmp_path / "ts_dst" / "PG_15_202209061" / "5" / "16500").read_bytes() == b"s" * 300
    assert not (tmp_path / "ts_dst" / "PG_15_202209061" / "5" / "16501").exists()
    assert (dest / "pg_tblspc" / "16498" / "PG_15_202209061" / "5" / "16600").is_file()
    _algo, sums = copy_state.read_checksums(str(dest))
    assert sums["base/5/16390"][2] == hashlib.sha256(b"l" * 20000).hexdigest()
    assert sums["global/pg_control"][0] == 8192
    assert "pg_tblspc/16499/PG_15_202209061/5/16500" in sums
    assert res["files"] == len(sums)
    assert json.loads(progress.read_text())["phase"] == "done"
    assert (dest.stat().st_mode & 0o777) == 0o700


def test_refusals(datadir, tmp_path):
    src = Source(str(datadir))
    with pytest.raises(PgBackupError, match="not a PostgreSQL data directory"):
        make_plan(Source(str(tmp_path)), str(tmp_path / "x"), {}, [])
    with pytest.raises(PgBackupError, match="no mapping"):
        make_plan(src, str(tmp_path / "x"), {}, [])
    mapping = {"16499": str(tmp_path / "ts_dst")}
    with pytest.raises(PgBackupError, match="nested"):
        check_destination(src, make_plan(src, str(datadir / "sub"), mapping, []), str(datadir / "sub"), False)
    busy = tmp_path / "busy"
    write(busy / "x")
    with pytest.raises(PgBackupError, match="not empty"):
        check_destination(src, make_plan(src, str(busy), mapping, []), str(busy), False)
    # a pid file naming a live process that is not a postgres working there (a reused PID, a copied file) is a leftover
    write(busy / "postmaster.pid", f"{os.getpid()}\n{busy}\n".encode())
    with pytest.raises(PgBackupError, match="delta refuses the destination"):  # past the server check, refused as no copy
        check_destination(src, make_plan(src, str(busy), mapping, []), str(busy), True)
    with fake_postmaster(busy, tmp_path):  # a live process named postgres working in the destination: a server
        with pytest.raises(PgBackupError, match=r"data directory of a running server \(postmaster PID \d+\)"):
            check_destination(src, make_plan(src, str(busy), mapping, []), str(busy), True)
    with pytest.raises(PgBackupError, match="own source"):
        make_plan(src, str(tmp_path / "x"), {"16499": str(tmp_path / "ts_src")}, [])


def test_delta_detects_same_size_same_mtime_change(datadir, tmp_path):
    dest = tmp_path / "dst"
    mapping = {"16499": str(tmp_path / "ts_dst")}
    src = Source(str(datadir))
    execute(src, make_plan(src, str(dest), mapping, []), str(dest), owner=None)
    f = dest / "base" / "5" / "16390"
    st = f.stat()
    f.write_bytes(b"X" * 20000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    write(dest / "stale-file")
    write(dest / "pg_wal" / "000000010000000000000009")
    plan = make_plan(src, str(dest), mapping, [])
    check_destination(src, plan, str(dest), True)
    res = execute(src, plan, str(dest), delta=True, owner=None)
    assert f.read_bytes() == b"l" * 20000
    assert not (dest / "stale-file").exists()
    assert not (dest / "pg_wal" / "000000010000000000000009").exists()
    assert "stale-file" in res["removed"]


def test_incomplete_marker_left_on_failure(datadir, tmp_path, monkeypatch):
    dest = tmp_path / "dst"
    src = Source(str(datadir))
    plan = make_plan(src, str(dest), {"16499": str(tmp_path / "ts_dst")}, [])
    monkeypatch.setattr("ansible_collections.pgbackup.lowlevel.plugins.module_utils.rsync_transport.rsync_argv", lambda *a: ["false"])
    with pytest.raises(PgBackupError, match="rsync failed"):
        execute(src, plan, str(dest), owner=None, delta=True)  # delta mode runs rsync also on one host
    assert copy_state.is_incomplete(str(dest))
    with pytest.raises(PgBackupError, match="unfinished copy"):
        copy_state.check_not_incomplete(str(dest))


def test_local_copy_failure_keeps_marker(datadir, tmp_path):
    """The copy on one host (no rsync) fails on a file it cannot write: the marker stays, pg_control is not copied."""
    dest = tmp_path / "dst"
    src = Source(str(datadir))
    plan = make_plan(src, str(dest), {"16499": str(tmp_path / "ts_dst")}, [])
    (dest / "base" / "5" / "16390" / "in the way").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        execute(src, plan, str(dest), owner=None, parallel=2)
    assert copy_state.is_incomplete(str(dest))
    assert not (dest / copy_state.PENDING_CONTROL).exists() and not (dest / copy_state.CHECKSUMS_FILE).exists()


def test_rsync_logged_names_decode_back(tmp_path):
    """rsync (the real one) escapes odd bytes in --out-format's %n; the names decode back to the files' names."""
    names = [b"plain", b"with space", b"new\nline", b"back\\slash", b"back\\#123hash", b"tab\there", b"latin1-\xe9", b"-dash"]
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for name in names:
        with open(os.path.join(os.fsencode(src), name), "wb") as f:
            f.write(b"x")
    listing = tmp_path / "list"
    listing.write_bytes(b"".join(n + b"\0" for n in names))
    argv = rsync_argv(Source(str(src)), str(src), str(dst), str(listing), False)
    proc = subprocess.run(argv, capture_output=True, check=True)
    lines = re.split(rb"[\r\n]", proc.stdout)
    logged = [rsync_logged_name(line[len(OUT_PREFIX) :].partition(b" ")[2]) for line in lines if line.startswith(OUT_PREFIX)]
    assert sorted(logged) == sorted(os.fsdecode(n) for n in names)


def test_rsync_progress_within_a_file(tmp_path):
    """Through rsync (here on one host; over ssh it is the same code), the progress file counts bytes within a file:
    rsync is slowed to 8 MB/s on a 24 MiB file, so the file is seen part-way (files_done 0, bytes_done > 0)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(24 << 20))
    listing = tmp_path / "list"
    listing.write_bytes(b"big\0")
    progress_file = tmp_path / "progress.json"
    progress = Progress(str(progress_file), 24 << 20, 1)
    seen = []
    stop = threading.Event()

    def watch():  # what a role polling the progress file would see
        while not stop.wait(0.05):
            if progress_file.exists():
                seen.append(json.loads(progress_file.read_text()))

    watcher = threading.Thread(target=watch)
    watcher.start()
    argv = rsync_argv(Source(str(src)), str(src), str(dst), str(listing), False, progress=True)
    assert "--progress" not in rsync_argv(Source(str(src)), str(src), str(dst), str(listing), False)
    argv.insert(1, "--bwlimit=8M")
    done = []
    try:
        run_rsync(argv, progress, done.append)
    finally:
        stop.set()
        watcher.join()
    progress.write(force=True)
    seen.append(json.loads(progress_file.read_text()))
    assert done == ["big"]
    assert any(0 < s["bytes_done"] < 24 << 20 and s["files_done"] == 0 for s in seen), seen
    assert seen[-1]["bytes_done"] == 24 << 20 and seen[-1]["files_done"] == 1


def test_a_tablespace_inside_the_data_directory_is_copied_once(datadir, tmp_path):
    """CREATE TABLESPACE ... LOCATION '<PGDATA>/inner' (PostgreSQL warns, but allows it): its files are copied as the
    tablespace only; the data directory's copy keeps the directory, empty, as pg_basebackup does."""
    inner = datadir / "inner"
    write(inner / "PG_15_202209061" / "5" / "16700", b"n" * 500)
    (datadir / "pg_tblspc" / "16699").symlink_to(inner)
    dest = tmp_path / "dst"
    mapping = {"16499": str(tmp_path / "ts_dst"), "16699": str(tmp_path / "inner_dst")}
    plan = make_plan(Source(str(datadir)), str(dest), mapping, [])
    assert ("inner/PG_15_202209061/5/16700", "inside the location of tablespace 16699: copied once, as that tablespace") in plan.excluded
    execute(Source(str(datadir)), plan, str(dest), parallel=2, owner=None, progress_file=str(tmp_path / "progress.json"))
    assert (dest / "inner").is_dir() and not any((dest / "inner").iterdir()), "the directory stays, empty"
    assert (tmp_path / "inner_dst" / "PG_15_202209061" / "5" / "16700").read_bytes() == b"n" * 500
    assert os.readlink(dest / "pg_tblspc" / "16699") == str(tmp_path / "inner_dst")
    _algo, sums = copy_state.read_checksums(str(dest))
    assert "pg_tblspc/16699/PG_15_202209061/5/16700" in sums and not any(k.startswith("inner/") for k in sums)


def test_max_rate_is_shared_by_the_streams():
    assert stream_rate_limit(0, 4) is None, "0 is no limit"
    assert stream_rate_limit(8 * 1024 * 1024, 4) == 2048, "8 MiB/s over four streams: 2 MiB/s (2048 KiB/s) each"
    assert stream_rate_limit(3000, 2) == 1, "never below rsync's 1 KiB/s"
    argv = rsync_argv(Source("/d", "db1"), "/d", "/x", "/l", False, bwlimit=2048)
    assert "--bwlimit=2048" in argv and argv.index("--bwlimit=2048") < argv.index("--")
    assert not any(a.startswith("--bwlimit") for a in rsync_argv(Source("/d", "db1"), "/d", "/x", "/l", False))


def test_a_limited_copy_on_one_host_goes_through_rsync_with_the_limit(datadir, tmp_path, monkeypatch):
    seen = []
    real = run_rsync

    def spy(argv, *args, **kwargs):
        seen.append(argv)
        return real(argv, *args, **kwargs)

    monkeypatch.setattr("ansible_collections.pgbackup.lowlevel.plugins.module_utils.rsync_transport.run_rsync", spy)
    dest = tmp_path / "dst"
    plan = make_plan(Source(str(datadir)), str(dest), {"16499": str(tmp_path / "ts_dst")}, [])
    execute(Source(str(datadir)), plan, str(dest), parallel=2, owner=None, progress_file=str(tmp_path / "p.json"), max_rate=4 * 1024 * 1024)
    streams = [a for a in seen if "--files-from" in " ".join(a)]
    assert streams and all("--bwlimit=2048" in a for a in streams), seen
    assert (dest / "base" / "5" / "16390").read_bytes() == b"l" * 20000
