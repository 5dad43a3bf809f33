"""The methods `make bench` times. Each is a ``Method``: untimed ``prep``, the timed ``command`` (argv on a host),
untimed ``post`` (backup-mode seconds, WAL, verification) and ``cleanup`` (the copy dropped)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from bench_peers import PG_BIN, as_postgres
from bench_procs import PeakRss
from bench_report import Run

ROOT = Path(__file__).resolve().parent.parent
SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]


def lsn_bytes(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


class Ctx:
    """What every method needs: the test bed, the clusters, where copies go, the Ansible environment."""

    def __init__(self, bed, primary, standby, ansible_env: dict, pgbackrest=None, barman=None) -> None:
        self.bed, self.primary, self.standby = bed, primary, standby
        self.db2, self.db3 = bed.host("db2"), bed.host("db3")
        self.scratch = bed.scratch_dir("bench", shared=True)
        self.dest = self.scratch / "copy"
        self.ansible_env = ansible_env
        self.pgbackrest, self.barman = pgbackrest, barman
        self.key = str(bed.network.client_key)
        self.inventory = bed.write_inventory(bed.run_dir / "inventory" / "hosts.yml")
        self.local_inventory = bed.run_dir / "inventory-local" / "hosts.ini"
        self.local_inventory.parent.mkdir(exist_ok=True)
        from tests.integration.harness.inventory import host_python

        self.local_inventory.write_text(f"[backup_host]\nbench-local ansible_connection=local ansible_python_interpreter={host_python()}\n")
        self.clone = None
        self.log_dir = ROOT / "build" / "bench" / time.strftime("logs-%Y%m%dT%H%M%SZ", time.gmtime())
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._logs = 0

    def save_log(self, name: str, output: str) -> None:
        """Each timed run's output, kept after the test bed is gone (build/bench/logs-<time>/NNN-<method>.log)."""
        self._logs += 1
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        (self.log_dir / f"{self._logs:03d}-{slug}.log").write_text(output)


class Method:
    name = ""
    uses_ours = False  # peak RSS sampled, the role's own figures read from its output

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx

    def prep(self) -> None:
        if self.ctx.dest.exists():
            shutil.rmtree(self.ctx.dest)

    def command(self) -> tuple:
        """(host, argv, user, env) of the timed run."""
        raise NotImplementedError

    def ok(self, rc: int) -> bool:
        return rc == 0

    def post(self, run: Run, output: str, last: bool) -> None:
        pass

    def cleanup(self) -> None:
        if self.ctx.dest.exists():
            shutil.rmtree(self.ctx.dest)

    def time_it(self, last: bool) -> Run:
        host, argv, user, env = self.command()
        wrapped = host.wrap(argv, user) if host else argv
        if env is not None:  # the given variables over this process's environment, less PG* (libpq must not see ours)
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("PG")}, **env}
        times_file = self.ctx.bed.run_dir / "task-times.jsonl"
        times_file.unlink(missing_ok=True)
        if self.uses_ours:
            env = {**(env or os.environ), "BENCH_TASK_TIMES": str(times_file)}
        roots, exclude = [], set()
        start = time.monotonic()
        try:
            proc = subprocess.Popen(wrapped, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        except OSError as exc:  # a method that cannot even start is a failed run, not the end of the bench
            return Run(seconds=0.0, ok=False, note=f"could not start {wrapped[0]}: {exc}")
        if self.uses_ours:  # the playbook and, across hosts, what db2's and db3's sshd run for it
            roots = [proc.pid] + [h.sshd_pid for h in (self.ctx.db2, self.ctx.db3) if h.sshd_pid]
            exclude = {h.sshd_pid for h in (self.ctx.db2, self.ctx.db3) if h.sshd_pid}
        with PeakRss(roots, exclude) as rss:
            try:
                output = proc.communicate()[0]
            except BaseException:  # interrupted (SIGTERM reaches only us; Ctrl-C the whole group): end the run first
                proc.terminate()
                proc.wait(60)
                raise
        seconds = time.monotonic() - start
        run = Run(seconds=seconds, ok=self.ok(proc.returncode), rss_bytes=rss.peak if self.uses_ours else None)
        if not run.ok:
            run.note = f"rc={proc.returncode}: " + " ".join(output.strip().splitlines()[-3:])[-300:]
        else:
            try:
                self.post(run, output, last)
            except (OSError, ValueError, KeyError, IndexError, subprocess.SubprocessError) as exc:  # a figure missing, not a failed copy
                run.note = f"post-run figures unavailable: {exc}"
        if self.uses_ours and times_file.exists():
            for line in times_file.read_text().splitlines():
                entry = json.loads(line)
                run.tasks[entry["task"]] = run.tasks.get(entry["task"], 0.0) + entry["seconds"]
        self.ctx.save_log(self.name, output)
        return run


class CpSync(Method):
    name = "cp -a + sync"

    def command(self):
        script = f"cp -a {self.ctx.standby.datadir} {self.ctx.dest}; rc=$?; sync; exit $rc"
        return self.ctx.db2, ["bash", "-c", script], "root", None

    def ok(self, rc):
        return rc in (0, 1)  # cp: a file of the live standby vanished or changed while read


class BaseBackup(Method):
    def __init__(self, ctx, across: bool) -> None:
        super().__init__(ctx)
        self.across = across
        self.name = "pg_basebackup from the standby" + (", db3 ← db2 over TCP" if across else ", on db2")

    def command(self):
        s = self.ctx.standby
        where = ["-h", s.host] if self.across else ["-h", str(s.socket_dir)]
        argv = [str(PG_BIN / "pg_basebackup"), *where, "-p", str(s.port), "-U", "postgres", "-w", "-D", str(self.ctx.dest), "-Fp", "-X", "stream", "-c", "fast"]
        env = {"PGPASSFILE": str(self.ctx.bed.passfile)}
        return (self.ctx.db3 if self.across else self.ctx.db2), argv, "postgres", env

    def post(self, run, output, last):
        run.backup_mode_s = 0.0  # taken on the standby: the primary is never in backup mode
        if last:
            res = as_postgres([str(PG_BIN / "pg_verifybackup"), "-q", str(self.ctx.dest)])
            run.note = "pg_verifybackup OK" if res.returncode == 0 else f"pg_verifybackup FAILED: {res.stderr.strip()[-200:]}"


class PgBackRestBackup(Method):
    def __init__(self, ctx, process_max: int) -> None:
        super().__init__(ctx)
        self.process_max = process_max
        self.name = f"pgBackRest backup-standby, process-max {process_max}"

    def command(self):
        return None, ["runuser", "-u", "postgres", "--", *self.ctx.pgbackrest.backup(self.process_max)], None, None

    def post(self, run, output, last):
        run.backup_mode_s, _range = self.ctx.pgbackrest.last_backup()
        if last:
            run.note = self.ctx.pgbackrest.verify()


class BarmanBackup(Method):
    name = "Barman (postgres method, no --wait)"

    def command(self):
        variables = [f"HOME={self.ctx.barman.dir}", f"PATH={PG_BIN}:/usr/bin:/bin"]
        return None, ["runuser", "-u", "postgres", "--", "env", *variables, *self.ctx.barman.backup()], None, None

    def post(self, run, output, last):
        run.backup_mode_s = 0.0  # pg_basebackup against the standby
        if last:
            run.note = self.ctx.barman.verify()

    def cleanup(self):
        self.ctx.barman.prune()


class Playbook(Method):
    uses_ours = True
    playbook = "standby_backup.yml"

    def playbook_argv(self, inventory: Path, extra: dict) -> list:
        extra_file = self.ctx.bed.run_dir / f"extra-{self.playbook}.json"
        extra_file.write_text(json.dumps(extra))
        extra_file.chmod(0o600)
        return [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(inventory), str(ROOT / "playbooks" / self.playbook), "-e", f"@{extra_file}"]


class StandbyBackup(Playbook):
    """The standby_backup playbook, coordinated (the primary in backup mode, files from the standby), the role's
    defaults otherwise: verify on (its own check of the copy, inside the timed run), WAL from the standby's pg_wal."""

    def __init__(self, ctx, across: bool, parallel: int) -> None:
        super().__init__(ctx)
        self.across, self.parallel = across, parallel
        self.name = f"standby_backup playbook, parallel {parallel}, " + ("db3 ← db2 over ssh" if across else "local")

    def command(self):
        c, p, s = self.ctx, self.ctx.primary, self.ctx.standby
        extra = {
            "standby_backup_mode": "coordinated",
            "standby_backup_parallel": self.parallel,
            "standby_backup_login_password": p.password,
            "standby_backup_source_data_dir": str(s.datadir),
            "standby_backup_dest": str(c.dest),
            "standby_backup_state_dir": str(c.bed.run_dir / "keepers"),
            "standby_backup_pg_bindir": str(PG_BIN),
        }
        if self.across:
            extra |= {"standby_backup_hosts": "db3", "standby_backup_primary_host": p.host, "standby_backup_source_host": s.host}
            extra |= {"standby_backup_source_ssh_host": s.node.address, "standby_backup_ssh_key": c.key, "standby_backup_ssh_options": SSH_OPTIONS}
            inventory = c.inventory
        else:  # over the servers' sockets, the copy on this machine
            extra |= {"standby_backup_primary_host": str(p.socket_dir), "standby_backup_source_host": str(s.socket_dir)}
            inventory = c.local_inventory
        extra |= {"standby_backup_primary_port": p.port, "standby_backup_source_port": s.port}
        return None, self.playbook_argv(inventory, extra), None, c.ansible_env

    def post(self, run, output, last):
        mode = re.search(r'"server_seconds_in_backup_mode": "?([0-9.]+)', output)
        run.backup_mode_s = float(mode.group(1)) if mode else None
        verified = re.search(r'"verified": "?(\w+)', output)
        copy = re.search(r'"copy_seconds": "?([0-9.]+)', output)
        run.note = f"role: verified {verified.group(1) if verified else '?'}, copy {float(copy.group(1)):.2f} s" if copy else ""


class ReplicaClone(Playbook):
    """The clone_replica playbook on db3 from the standby on db2 over ssh, timed until the role returns (the clone
    streaming); the clone is stopped and removed afterwards."""

    playbook = "clone_replica.yml"
    name = "replica_clone playbook, db3 ← db2 (standby) over ssh"

    def prep(self):
        c = self.ctx
        if c.clone is None:
            c.clone = c.bed.empty_cluster(15, host=c.db3, name="pg15-bench-clone")
        self._drop_clone()

    def _drop_clone(self):
        clone = self.ctx.clone
        if (clone.datadir / "postmaster.pid").exists():
            clone.run([str(clone.pg.bindir / "pg_ctl"), "-D", str(clone.datadir), "-m", "immediate", "-w", "stop"], check=False)
        shutil.rmtree(clone.datadir, ignore_errors=True)

    def command(self):
        c, p, s, clone = self.ctx, self.ctx.primary, self.ctx.standby, self.ctx.clone
        settings = f"-c listen_addresses={clone.host} -c port={clone.port} -c unix_socket_directories={clone.socket_dir}"
        extra = {
            "replica_clone_hosts": "db3",
            "replica_clone_upstream_host": s.host,
            "replica_clone_upstream_port": s.port,
            "replica_clone_upstream_data_dir": str(s.datadir),
            "replica_clone_primary_host": p.host,
            "replica_clone_primary_port": p.port,
            "replica_clone_login_password": p.password,
            "replica_clone_upstream_ssh_host": s.node.address,
            "replica_clone_ssh_key": c.key,
            "replica_clone_ssh_options": SSH_OPTIONS,
            "replica_clone_data_dir": str(clone.datadir),
            "replica_clone_state_dir": str(c.bed.run_dir / "keepers"),
            "replica_clone_application_name": clone.name,
            "replica_clone_pg_bindir": str(clone.pg.bindir),
            "replica_clone_pg_ctl_options": ["-o", settings],
            "replica_clone_log_file": str(clone.log_file),
            "replica_clone_address": clone.host,
            "replica_clone_port": clone.port,
            "replica_clone_timeout": 600,
        }
        return None, self.playbook_argv(c.inventory, extra), None, c.ansible_env

    def post(self, run, output, last):
        run.backup_mode_s = 0.0  # cloned from the standby: the primary is never put in backup mode
        if last:
            query = "SELECT count(*) FROM pg_stat_replication WHERE application_name = %s AND state = 'streaming'"
            streaming = self.ctx.standby.sql(query, (self.ctx.clone.name,))
            run.note = "clone streaming" if streaming == [(1,)] else "clone NOT streaming"

    def cleanup(self):
        self._drop_clone()


def all_methods(ctx: Ctx) -> dict:
    """Every method by its short name (METHODS picks some)."""
    methods = {
        "cp": CpSync(ctx),
        "pgbb": BaseBackup(ctx, across=False),
        "pgbb_hosts": BaseBackup(ctx, across=True),
        "pgbr1": PgBackRestBackup(ctx, 1),
        "pgbr2": PgBackRestBackup(ctx, 2),
        "barman": BarmanBackup(ctx),
    }
    for n in (1, 2, 4):
        methods[f"ours{n}"] = StandbyBackup(ctx, across=False, parallel=n)
    for n in (1, 2, 4):
        methods[f"ours_hosts{n}"] = StandbyBackup(ctx, across=True, parallel=n)
    methods["clone"] = ReplicaClone(ctx)
    return methods


def ansible_env() -> dict:
    """As the integration tests' ansible_env: this checkout as pgbackup.lowlevel, no host-key prompts, no PG* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "ANSIBLE_"))}
    env |= {
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "build" / "collections"),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_STDOUT_CALLBACK": "default",
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_PIPELINING": "True",  # as the integration tests run it; issue 13: 26 s a run without
        "ANSIBLE_CALLBACK_PLUGINS": str(Path(__file__).resolve().parent / "callback_plugins"),
        "ANSIBLE_CALLBACKS_ENABLED": "bench_task_times",  # every task's wall time, for "where our time goes"
        "PATH": f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
    }
    return env
