"""The test bed: hosts, clusters on them, pgbench load, an Ansible inventory, and a teardown by PID.

with Testbed(mode="netns", hosts=("db1", "db2")) as bed:
    primary = bed.new_primary(16, host=bed.hosts[0])
    standby = primary.make_standby("replica1", host=bed.hosts[1])
"""

from __future__ import annotations

import atexit
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Optional

from . import inventory, ledger, procs
from .cluster import Cluster, chown_postgres, write_private
from .hosts import Host, Network, postgres_login_problem
from .pgbins import ROOT, client_bindir, postgres_install

# Run dirs must not be under /tmp: sshd's StrictModes rejects an authorized_keys file below a world-writable directory.
FALLBACK_BASE = Path("/var/lib/pgbt")  # short (unix socket paths), root's and 0755 on Debian


def _safe_for_sshd(path: Path) -> bool:
    """Every existing ancestor root's and not group/world-writable (what sshd's StrictModes asks of a key's parents)."""
    for parent in [path, *path.parents]:
        if parent.exists():
            st = parent.stat()
            if st.st_mode & 0o022 or st.st_uid != 0:
                return False
    return True


def default_run_base(root: Path = ROOT) -> Path:
    """build/testbed of the checkout when sshd would accept keys there; else a private place keyed by the checkout.

    A checkout under /tmp (or any world-writable or non-root parent) would otherwise fail every namespace test.
    """
    inside = root / "build" / "testbed"
    if _safe_for_sshd(inside):
        return inside
    import hashlib

    return FALLBACK_BASE / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]


RUN_BASE = Path(os.environ["PGBT_RUN_BASE"]) if os.environ.get("PGBT_RUN_BASE") else default_run_base()
PREFIX = "pgbt"  # + 4 hex digits: in run dir, namespace, link and cluster names, so leftovers are recognisable


# pgbench's rate in the tests (transactions per second over all clients; 0: as fast as it can). A fixed rate is the
# same load on a fast machine and a slow one, and it leaves the CPU to what the test checks: flat out, two clients
# took one of this 2-core machine's cores (~1100 tps) for each loaded test, and with two tests side by side the
# suite's time was the load's. 400 tps still writes every few milliseconds through the whole copy: pages change
# behind the copy, WAL flows, checkpoints and restartpoints find dirty buffers. The bench (bench/) runs flat out.
LOAD_RATE = int(os.environ.get("PGBT_LOAD_RATE", "400"))


class Load:
    """pgbench writing against a primary in the background, bounded by -T and stopped by PID."""

    def __init__(self, testbed: Testbed, cluster: Cluster, seconds: int, clients: int, rate: int = LOAD_RATE) -> None:
        argv = [str(client_bindir() / "pgbench"), "-h", str(cluster.socket_dir), "-p", str(cluster.port), "-U", "postgres"]
        argv += ["-n", "-T", str(seconds), "-c", str(clients), "-j", str(clients), "postgres"]
        if rate:
            argv[-1:-1] = ["-R", str(rate)]
        self.cluster = cluster
        self.output_file = testbed.run_dir / f"pgbench-{cluster.name}-{len(testbed.loads) + 1}.log"
        with open(self.output_file, "w") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self.marker = str(cluster.socket_dir)
        testbed.ledger.add("processes", {"pid": self.pid, "marker": self.marker, "what": "pgbench"})

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.poll()

    def stop(self) -> str:
        """Stop pgbench (SIGINT, then SIGKILL) if it still runs, and return what it printed."""
        if self.proc.poll() is None:
            procs.kill(self.pid, self.marker, sig=signal.SIGINT, timeout=30)
        self.proc.wait()
        return self.output_file.read_text(errors="replace") if self.output_file.exists() else ""

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Testbed:
    __test__ = False  # not a pytest test class

    def __init__(self, mode: str = "local", hosts: tuple = ("db1", "db2"), run_dir: Optional[Path] = None, ledger_path: Optional[Path] = None) -> None:
        if mode not in ("local", "netns"):
            raise ValueError(f"mode must be local or netns, not {mode!r}")
        if os.geteuid() != 0:
            raise RuntimeError("the test bed runs PostgreSQL as the postgres user (runuser) and creates namespaces: run it as root")
        if mode == "netns" and postgres_login_problem():
            raise RuntimeError(f"{postgres_login_problem()}: run scripts/install-system-deps.sh as root")
        self.mode = mode
        self.run_id, self.run_dir = _new_run_dir(run_dir, strict_modes=mode == "netns")
        self.prefix = f"{PREFIX}{self.run_id}"
        self.ledger = ledger.Ledger(ledger_path or self.run_dir / "state.json", run_id=self.run_id, run_dir=str(self.run_dir), mode=mode, prefix=self.prefix)
        self.password = secrets.token_urlsafe(18)  # never printed: not in argv, logs or the inventory file
        self.passfile = self.run_dir / "pgpass"
        self.clusters: list[Cluster] = []
        self.loads: list[Load] = []
        self.network: Optional[Network] = None
        self.shared_scratch: set[Path] = set()
        self._torn_down = False
        self._serial = 0  # default cluster names; never reused, even after a cluster is dropped from .clusters
        # Each pytest-xdist worker (PYTEST_XDIST_WORKER gw0, gw1, ...) has a band of its own 15000 ports wide: two
        # workers never pick the same free port at once. Within it, the run id spreads test beds of one worker.
        worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
        self._next_local_port = 20000 + worker % 3 * 15000 + int(self.run_id, 16) % 500 * 20
        atexit.register(self.teardown)
        try:
            write_private(self.passfile, f"*:*:*:postgres:{self.password}\n")
            if mode == "local":
                self.hosts = [Host(name, "127.0.0.1") for name in hosts]
            else:
                self.network = Network(self.prefix, self.run_dir / "ssh", self.ledger)
                self.hosts = []  # filled as they come up, so a failure half-way tears down what exists
                self.network.setup()
                for name in hosts:
                    self.hosts.append(self.network.add_host(name))
        except BaseException:
            self.teardown()
            raise

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def client_networks(self) -> list[str]:
        """Where TCP clients (the controller, other hosts) connect from; pg_hba allows them with scram-sha-256."""
        return ["127.0.0.1/32"] + ([str(self.network.subnet)] if self.network else [])

    # --- clusters -----------------------------------------------------------------------------------
    def _port(self, host: Host) -> int:
        if host.netns:
            host.next_port += 1
            return host.next_port - 1
        used = {c.port for c in self.clusters}
        while self._next_local_port < 65000:
            port, self._next_local_port = self._next_local_port, self._next_local_port + 1
            if port in used:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind((host.address, port))
                except OSError:
                    continue
            return port
        raise RuntimeError("no free TCP port")

    def _cluster(self, major: int, host: Optional[Host], name: str, role: str, upstream: Optional[Cluster] = None) -> Cluster:
        host = host or self.hosts[0]
        if any(c.name == name for c in self.clusters) or (self.run_dir / name).exists():
            raise ValueError(f"a cluster named {name!r} exists already")
        cluster = Cluster(self, name=name, pg=postgres_install(major), node=host, port=self._port(host), role=role, upstream=upstream)
        self.clusters.append(cluster)
        self.ledger.add("clusters", {"name": name, "pg_ctl": str(cluster.pg.bindir / "pg_ctl"), "datadir": str(cluster.datadir), "pid": None})
        return cluster

    def _next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def new_primary(self, major: int, host: Optional[Host] = None, wal_segsize: Optional[int] = None, name: Optional[str] = None) -> Cluster:
        """initdb (checksums on) and start a primary of ``major`` on ``host`` (default: the first host)."""
        cluster = self._cluster(major, host, name or f"pg{major}-primary{self._next_serial()}", "primary")
        cluster.initdb(wal_segsize=wal_segsize)
        cluster.start()
        return cluster

    def new_standby(self, upstream: Cluster, host: Optional[Host] = None, name: Optional[str] = None) -> Cluster:
        """A streaming standby of ``upstream`` (a primary or a standby): a cold copy of its stopped data directory."""
        name = name or f"pg{upstream.major}-standby{self._next_serial()}"
        standby = self._cluster(upstream.major, host or upstream.node, name, "standby", upstream=upstream)
        standby._make_dirs()
        was_running = upstream.is_running()
        if was_running:
            upstream.stop("fast")  # a clean shutdown: the copy needs no WAL beyond what it contains
        try:
            upstream.run(["cp", "-a", str(upstream.datadir), str(standby.datadir)])
        finally:
            if was_running:
                upstream.start()
        (standby.datadir / "postmaster.opts").unlink(missing_ok=True)  # the upstream's command line, not this server's
        standby.write_settings()
        (standby.datadir / "standby.signal").touch()
        chown_postgres(standby.datadir / "standby.signal")
        standby.start()
        standby.wait_streaming()
        return standby

    def empty_cluster(self, major: int, host: Optional[Host] = None, name: Optional[str] = None, upstream: Optional[Cluster] = None) -> Cluster:
        """A cluster whose data directory the code under test fills (a restore, a clone): directories made, not started.

        After filling ``cluster.datadir`` call ``cluster.write_settings()`` (its own port, socket, archive, and
        primary_conninfo when ``upstream`` is given) and ``cluster.start()``; teardown stops it like any other.
        """
        cluster = self._cluster(major, host, name or f"pg{major}-restored{self._next_serial()}", "standby" if upstream else "primary", upstream)
        cluster._make_dirs()
        return cluster

    def scratch_dir(self, name: str, owner: str = "postgres", shared: bool = False) -> Path:
        """An empty directory in the run dir, e.g. a backup destination.

        The integration conftest removes it after the test that made it; ``shared=True`` keeps it for later tests (a
        backup one test makes and the next verifies) until the test bed's teardown.
        """
        path = self.run_dir / "scratch" / name
        path.mkdir(mode=0o750, parents=True)
        path.parent.chmod(0o755)
        shutil.chown(path, owner, owner)
        if shared:
            self.shared_scratch.add(path)
        return path

    def discard(self, cluster: Cluster) -> None:
        """Stop ``cluster`` and remove its directory (data, WAL archive, log) now rather than at teardown.

        The suite makes hundreds of clusters; keeping each one's files to the end filled CI's disk half-way.
        """
        for load in self.loads:
            if load.cluster is cluster:
                load.stop()
        if cluster in self.clusters:
            self.clusters.remove(cluster)
        ledger.stop_cluster({"datadir": str(cluster.datadir), "pg_ctl": str(cluster.pg.bindir / "pg_ctl")})
        shutil.rmtree(cluster.base, ignore_errors=True)

    def scratch_entries(self) -> set[Path]:
        """The scratch directories that exist now, but those made with ``shared=True``."""
        scratch = self.run_dir / "scratch"
        return set(scratch.iterdir()) - self.shared_scratch if scratch.is_dir() else set()

    def remove_scratch(self, paths: set[Path]) -> None:
        """Remove scratch directories (stopping any server the code under test started in one, e.g. a restore).

        A directory that holds a tablespace of a cluster still in use (a test made one on the shared primary, and its
        standby replayed it) is kept: removing it broke that standby's restartpoints and its next start.
        """
        in_use = set()
        for cluster in self.clusters:
            links = cluster.datadir / "pg_tblspc"
            if links.is_dir():
                in_use.update(os.path.realpath(link) for link in links.iterdir())
        for path in paths:
            real = os.path.realpath(path)
            if any(target == real or target.startswith(real + os.sep) for target in in_use) or _maybe_tablespace(path):
                self.shared_scratch.add(path)
                continue
            for pid_file in path.rglob("postmaster.pid"):
                ledger.stop_cluster({"datadir": str(pid_file.parent), "pg_ctl": None})
            shutil.rmtree(path, ignore_errors=True)

    def load(self, cluster: Cluster, seconds: int, clients: int = 2, rate: int = LOAD_RATE) -> Load:
        """pgbench -T ``seconds`` at ``rate`` transactions a second (0: flat out) against ``cluster`` (run
        ``cluster.pgbench_init()`` first)."""
        load = Load(self, cluster, seconds, clients, rate)
        self.loads.append(load)
        return load

    # --- access -------------------------------------------------------------------------------------
    def write_inventory(self, path: Optional[Path] = None) -> Path:
        """A YAML inventory of the hosts (see inventory.py); the password goes to a 0600 group_vars file beside it."""
        return inventory.write(self, Path(path or self.run_dir / "inventory.yml"))

    def ssh(self, host: Host, argv: list[str], user: str = "root", timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a command on a namespace host through its sshd, as a remote user would."""
        if self.network is None:
            raise RuntimeError("ssh needs a netns test bed")
        remote = ["ssh", *self.network.ssh_options(), f"{user}@{host.address}", shlex.join(argv)]
        return subprocess.run(remote, capture_output=True, text=True, check=False, timeout=timeout)

    # --- teardown -----------------------------------------------------------------------------------
    def teardown(self) -> None:
        """Stop everything this test bed started, by PID, and remove its namespaces, links and files. Idempotent."""
        if self._torn_down:
            return
        self._torn_down = True
        atexit.unregister(self.teardown)
        for load in self.loads:
            load.stop()
        ledger.teardown(self.ledger.data, self.ledger.path)

    def leftovers(self) -> list[str]:
        return leftovers(self.run_dir, self.prefix)


def _maybe_tablespace(path: Path) -> bool:
    """A directory that is, or was, a tablespace's location: it holds a PG_<major>_<catversion> directory, or it is empty
    (what DROP TABLESPACE leaves). A standby that restarts replays CREATE TABLESPACE from its last restartpoint and
    refuses to start without the directory, so it stays until the test bed's teardown (an empty one costs nothing)."""
    try:
        entries = [entry.name for entry in path.iterdir()]
    except OSError:
        return False
    return not entries or any(re.fullmatch(r"PG_\d+_\d+", name) for name in entries)


def _new_run_dir(run_dir: Optional[Path], strict_modes: bool) -> tuple[str, Path]:
    """A run id no live namespace, link or directory uses, and its run dir (mode 0755: postgres must traverse it)."""
    taken = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False).stdout
    taken += subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    for _attempt in range(100):
        run_id = secrets.token_hex(2)
        path = Path(run_dir) if run_dir else RUN_BASE / f"{PREFIX}{run_id}"
        if f"{PREFIX}{run_id}" in taken or (path.exists() and any(path.iterdir())):
            if run_dir:
                raise RuntimeError(f"{run_dir} is not empty: tear the old test bed down first")
            continue
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o755)
        try:
            if subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(path)], check=False).returncode != 0:
                raise RuntimeError(f"the postgres user cannot enter {path}: choose a run dir whose parents are world-executable")
            if strict_modes:
                _check_strict_modes(path)
        except RuntimeError:
            path.rmdir()  # empty: nothing was made in it yet
            raise
        return run_id, path
    raise RuntimeError("no free run id")


def _check_strict_modes(path: Path) -> None:
    for parent in [path, *path.parents]:
        st = parent.stat()
        if st.st_mode & 0o022 or st.st_uid != 0:
            raise RuntimeError(f"{parent} is group/world-writable or not root's; sshd (StrictModes) would refuse keys below it: set PGBT_RUN_BASE")


def leftovers(run_dir: Path, prefix: str) -> list[str]:
    """What a torn-down test bed left behind: processes naming its run dir or prefix, namespaces and links with its prefix."""
    found = [f"process {pid}: {line}" for pid, line in procs.pids_mentioning(str(run_dir), prefix)]
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    found += [f"namespace {line.split()[0]}" for line in namespaces.splitlines() if line.startswith(prefix)]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False).stdout
    found += [f"link {line.split(':')[1].strip()}" for line in links.splitlines() if f" {prefix}" in line]
    if run_dir.exists():
        found.append(f"directory {run_dir}")
    return found


__all__ = ["ROOT", "RUN_BASE", "Load", "Testbed", "leftovers"]
