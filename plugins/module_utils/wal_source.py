# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A directory of WAL files (an archive, or a server's pg_wal) on this host or on another one over ssh.

Listing is ``os.scandir`` here and ``find -printf`` over ssh; fetching is a plain copy here and rsync
(``--protect-args``, argument lists only, through :func:`copy_engine.rsync_argv`) over ssh. Files are fetched
into a staging directory and fsynced there; nothing here decides whether a file is good.
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional

from . import processes
from .copy_source import Source
from .durable import fsync_file
from .errors import PgBackupError
from .rsync_transport import rsync_argv

CHUNK = 1024 * 1024


class WalSource:
    """The directory ``path``; ``host`` None means this host (then ``user``, ``port``, ``key``, ``ssh_options`` are unused)."""

    def __init__(self, path: str, host: Optional[str] = None, user: Optional[str] = None, port: Optional[int] = None,
                 key: Optional[str] = None, ssh_options: tuple = ()) -> None:  # fmt: skip
        self.ssh = Source(path, host, user, port, key, tuple(ssh_options))
        self.path = self.ssh.path

    @property
    def remote(self) -> bool:
        return self.ssh.remote

    def describe(self) -> str:
        return f"{self.ssh.host}:{self.path}" if self.remote else self.path

    def listing(self) -> dict:
        """Regular files directly in the directory: name -> size in bytes."""
        if not self.remote:
            try:
                with os.scandir(self.path) as entries:
                    return {e.name: e.stat().st_size for e in entries if e.is_file()}
            except FileNotFoundError as exc:
                raise PgBackupError(f"WAL source {self.path} does not exist: expected the WAL archive or pg_wal directory", path=self.path) from exc
            except NotADirectoryError as exc:
                raise PgBackupError(f"WAL source {self.path} is not a directory", path=self.path) from exc
        data = self.ssh.run(["find", self.path + "/", "-mindepth", "1", "-maxdepth", "1", "-type", "f", "-printf", "%f/%s\\0"])
        files = {}
        for item in data.split(b"\0"):
            if item:
                name, _sep, size = item.decode("utf-8", "surrogateescape").rpartition("/")
                files[name] = int(size)
        return files

    def stage(self, names: list, into: Optional[str]) -> dict:
        """Make ``names`` readable on this host: name -> path. Files missing meanwhile are left out.

        Locally with ``into`` None the source files themselves are returned (read-only use, check mode);
        otherwise each file is copied (rsync over ssh) into ``into`` and fsynced there.
        """
        if not names:
            return {}
        if not self.remote and into is None:
            return {n: os.path.join(self.path, n) for n in names if os.path.isfile(os.path.join(self.path, n))}
        if into is None:
            raise PgBackupError("internal error: a remote WAL source needs a staging directory")
        if self.remote:
            self._rsync(names, into)
        else:
            for name in names:
                _copy(os.path.join(self.path, name), os.path.join(into, name))
        staged = {}
        for name in names:
            path = os.path.join(into, name)
            if os.path.isfile(path):
                fsync_file(path)
                staged[name] = path
        return staged

    def _rsync(self, names: list, into: str) -> None:
        with tempfile.NamedTemporaryFile(prefix="pgbackup-wal-list-", delete=False) as handle:
            handle.write(b"".join(n.encode("utf-8", "surrogateescape") + b"\0" for n in names))
            list_file = handle.name
        try:
            argv = rsync_argv(self.ssh, self.path, into, list_file, delta=False)
            proc = processes.run(argv)
        finally:
            os.unlink(list_file)
        if proc.returncode not in (0, 24):  # 24: a file vanished meanwhile (the caller sees it missing)
            raise PgBackupError(
                f"rsync from {self.describe()} failed ({proc.returncode}): {proc.stderr.decode(errors='replace').strip()}",
                path=self.describe(),
            )


def _copy(src: str, dst: str) -> None:
    try:
        fin = open(src, "rb")  # closed by the with below; a vanished file is skipped
    except FileNotFoundError:
        return
    with fin, open(dst, "wb") as fout:
        while True:
            chunk = fin.read(CHUNK)
            if not chunk:
                break
            fout.write(chunk)
