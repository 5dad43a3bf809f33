#!/usr/bin/python
# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: replay_wait
short_description: Wait until a PostgreSQL standby or restored copy has replayed far enough for a backup
version_added: 0.1.0
description:
  - Connects to a PostgreSQL 13 to 18 standby (or a copy being recovered) and waits until it is where a backup
    needs it, failing fast when it never will be.
  - O(mode=target_lsn) waits until C(pg_last_wal_replay_lsn()) reaches O(target_lsn). With O(restartpoint=true)
    it then runs C(CHECKPOINT) on the standby and waits until C(pg_control_checkpoint()) shows a restartpoint whose
    redo point is at or past O(target_lsn), so every page changed before the backup started is on the standby's
    disk before files are copied from it (the hybrid backup - start and stop on the primary, files from a standby).
    C(CHECKPOINT) is issued again each time replay advanced, until the backup's own checkpoint record is replayed.
  - O(mode=consistent) waits until the server accepts connections and C(pg_control_recovery()) shows the end of
    the backup reached (no backup start point, no backup end point, no end-of-backup record required). Refusals
    with SQLSTATE 57P03 (V(the database system is starting up) in 13, V(...is not yet accepting connections) in
    14 and later) mean "keep waiting". Returns the LSN where the copy is consistent.
  - O(mode=streaming) waits until the WAL receiver streams (from O(upstream_host)/O(upstream_port) when given)
    and replay is at most O(max_lag_bytes) behind the end of WAL the upstream reported.
  - Two timeouts - O(stall_timeout) counts from the last progress seen (replay advancing; with O(data_dir) also the
    copy's C(pg_control)), O(timeout) from the start. Every failure names the target, the last replayed LSN and how
    long the module waited.
  - Fails at once, without waiting out a timeout, when the server is not in recovery (promoted); when WAL replay is
    paused (unless O(resume_paused=true)); when its system identifier or timeline is not O(expect_system_identifier)
    or O(expect_timeline); when C(recovery_min_apply_delay) holds replay back longer than the time left (the
    message names the delay); and, with O(restartpoint=true), when the standby has a checkpoint past the target
    whose redo point is before it, which a standby of the primary that started the backup cannot have.
  - In check mode it looks once and reports where the server is, without waiting, issuing C(CHECKPOINT) or resuming replay.
author:
  - pgbackup.lowlevel developers (@pgbackup)
extends_documentation_fragment:
  - pgbackup.lowlevel.connection
options:
  mode:
    description:
      - What to wait for, see the description.
    type: str
    choices: [target_lsn, consistent, streaming]
    default: target_lsn
  target_lsn:
    description:
      - The LSN the server must replay, as PostgreSQL prints it (V(0/2500028)). Required with O(mode=target_lsn).
      - With O(restartpoint=true) it must be a backup's start LSN (what P(pgbackup.lowlevel.backup_start#module)
        returns), which is the redo point of the backup's checkpoint.
    type: str
  restartpoint:
    description:
      - With O(mode=target_lsn), also wait for a restartpoint on the standby whose redo point is at or past O(target_lsn),
        running C(CHECKPOINT) there to make it (needs a superuser, or C(pg_checkpoint) on 15 and later).
      - Use it before copying files from a standby for a backup started on the primary.
    type: bool
    default: false
  expect_system_identifier:
    description:
      - The system identifier of the cluster the backup belongs to (C(pg_control_system()) on the primary, or
        RV(system_identifier) of P(pgbackup.lowlevel.cluster_info#module)). A server with another one fails at once,
        naming both.
      - A string of digits, as every module of this collection takes and returns it.
    type: str
  expect_timeline:
    description:
      - The timeline the backup started on (the primary's). A server on a newer timeline fails at once; with
        O(restartpoint=true) the restartpoint must be on exactly this timeline.
    type: int
  resume_paused:
    description:
      - When WAL replay is paused, resume it with C(pg_wal_replay_resume()) (once, with a warning) instead of failing.
      - Never done when a recovery target is set - replay probably paused at the target, where resuming promotes.
    type: bool
    default: false
  upstream_host:
    description:
      - O(mode=streaming) only - the host the WAL receiver must stream from, as C(pg_stat_wal_receiver.sender_host) shows it
        (the host of C(primary_conninfo)).
    type: str
  upstream_port:
    description:
      - O(mode=streaming) only - the port the WAL receiver must stream from.
    type: int
  max_lag_bytes:
    description:
      - O(mode=streaming) - the most WAL, in bytes, replay may be behind the end of WAL the upstream last reported.
    type: int
    default: 16777216
  data_dir:
    description:
      - O(mode=consistent) only - the data directory of the server being recovered, on the host the module runs on.
      - While the server refuses connections, its C(global/pg_control) shows recovery progress (which resets
        O(stall_timeout)) and its C(postmaster.pid) whether it is still running; a server that stops fails at once.
      - Without it, a refusal with 57P03 counts as a sign of life and only O(timeout) bounds the wait until the
        first connection.
    type: path
  timeout:
    description:
      - Seconds the whole wait may take.
    type: float
    default: 3600
  stall_timeout:
    description:
      - Seconds the wait may go on without progress; every advance of replay starts it again.
    type: float
    default: 300
  poll_interval:
    description:
      - Seconds between two looks at the server.
    type: float
    default: 1
  open_gate:
    description:
      - Once the wait succeeded, open this start gate of an async P(pgbackup.lowlevel.datadir_copy#module) launched
        with O(pgbackup.lowlevel.datadir_copy#module:gate) (the same path) and O(gate_token), so the copy begins at
        once. Nothing is written there when the wait fails or in check mode.
    type: path
  gate_token:
    description: The copy's O(pgbackup.lowlevel.datadir_copy#module:gate_token). Required with O(open_gate).
    type: str
attributes:
  check_mode:
    description: Looks at the server once and returns where it is, with RV(reached) saying whether the goal is met already.
    support: partial
    details:
      - It does not wait, run C(CHECKPOINT) or resume paused replay, so the only statements it runs read.
      - C(changed) stays V(false) even where a real run would resume paused replay (O(resume_paused=true)).
  diff_mode:
    description: Nothing to diff.
    support: none
notes:
  - pgBackRest does the same for its standby backups (C(dbReplayWait) - replay past the start LSN, C(CHECKPOINT),
    checkpoint past the start LSN); this module waits for the restartpoint's redo point rather than its checkpoint
    record, and treats a checkpoint past the target as wrong only when its redo point is before the target.
  - Needs read access to C(pg_control_system()), C(pg_control_checkpoint()), C(pg_control_recovery()) and, for the full
    picture, C(pg_monitor) (the WAL receiver's columns and the startup process' wait event).
"""

EXAMPLES = r"""
- name: Wait until the standby made a restartpoint past the backup's start
  pgbackup.lowlevel.replay_wait:
    login_host: standby1.example.com
    login_user: postgres
    login_password: "{{ vault_pg_password }}"
    target_lsn: "{{ started.start_lsn }}"
    restartpoint: true
    expect_system_identifier: "{{ primary_facts.cluster.system_identifier }}"
    expect_timeline: "{{ started.timeline }}"
    stall_timeout: 120
    timeout: 1800
  register: replayed

- name: Wait until a restored copy is consistent
  pgbackup.lowlevel.replay_wait:
    login_unix_socket: /var/run/postgresql
    login_port: 5433
    mode: consistent
    data_dir: /srv/pg/restore/data
    timeout: 7200

- name: Wait until a new replica streams from its primary and has caught up
  pgbackup.lowlevel.replay_wait:
    login_unix_socket: /var/run/postgresql
    mode: streaming
    upstream_host: 10.0.0.11
    upstream_port: 5432
    max_lag_bytes: 1048576
"""

RETURN = r"""
gate_opened:
  description: Whether O(open_gate) was opened (the wait succeeded, not in check mode).
  returned: with O(open_gate)
  type: bool
mode:
  description: The mode waited in.
  returned: always
  type: str
  sample: target_lsn
reached:
  description: Whether the goal was reached (always V(true) unless in check mode).
  returned: always
  type: bool
  sample: true
target_lsn:
  description: O(target_lsn) as given.
  returned: always
  type: str
  sample: 0/5000028
replay_lsn:
  description: C(pg_last_wal_replay_lsn()) when the wait ended.
  returned: always
  type: str
  sample: 0/5000148
receive_lsn:
  description: C(pg_last_wal_receive_lsn()) when the wait ended.
  returned: always
  type: str
  sample: 0/5000148
checkpoint_lsn:
  description: The checkpoint (restartpoint) location in C(pg_control_checkpoint()) when the wait ended.
  returned: always
  type: str
  sample: 0/5000060
redo_lsn:
  description: Its redo point; with O(restartpoint=true) at or past O(target_lsn).
  returned: always
  type: str
  sample: 0/5000028
checkpoint_timeline:
  description: The timeline of that checkpoint.
  returned: always
  type: int
  sample: 1
timeline:
  description: The newest timeline the server shows (WAL receiver, minimum recovery point, checkpoint).
  returned: always
  type: int
  sample: 1
system_identifier:
  description:
    - The server's system identifier, as a string of digits (unsigned, as C(pg_controldata) prints it), as
      P(pgbackup.lowlevel.backup_start#module) returns it and O(expect_system_identifier) takes it.
    - Null when the server did not accept connections (O(mode=consistent)).
    - Before 0.2.0 it was an integer.
  returned: always
  type: str
  sample: "7311234567890123456"
in_recovery:
  description: Whether the server is in recovery.
  returned: always
  type: bool
  sample: true
replay_paused:
  description: Whether WAL replay was paused when the wait ended.
  returned: always
  type: bool
  sample: false
waited_seconds:
  description: How long the module waited.
  returned: always
  type: float
  sample: 2.31
replay_progress_bytes:
  description: Bytes of WAL replayed while the module watched (last replay position minus the first one seen).
  returned: always
  type: int
  sample: 16777216
observations:
  description: How many times the module looked at the server.
  returned: always
  type: int
  sample: 4
checkpoints_requested:
  description: How many C(CHECKPOINT) commands the module ran on the server (O(restartpoint=true)).
  returned: always
  type: int
  sample: 1
resumed_replay:
  description: Whether the module resumed paused replay (O(resume_paused=true)).
  returned: always
  type: bool
  sample: false
accepting_connections:
  description: Whether the server accepted the module's connection when the wait ended.
  returned: always
  type: bool
  sample: true
refused_connections:
  description: O(mode=consistent) - how many connection attempts the server refused while it was recovering.
  returned: always
  type: int
  sample: 3
consistent_lsn:
  description:
    - O(mode=consistent) - an LSN at which the copy is consistent - the minimum recovery point C(pg_control_recovery())
      showed when the wait ended (recovery may have become consistent slightly earlier); V(null) in other modes.
  returned: always
  type: str
  sample: 0/7000100
min_recovery_end_lsn:
  description: C(pg_control_recovery().min_recovery_end_lsn) when the wait ended.
  returned: when connected
  type: str
  sample: 0/7000100
backup_start_lsn:
  description: C(pg_control_recovery().backup_start_lsn) when the wait ended (V(0/0) once the backup end is reached).
  returned: when connected
  type: str
  sample: 0/0
backup_end_lsn:
  description: C(pg_control_recovery().backup_end_lsn) when the wait ended.
  returned: when connected
  type: str
  sample: 0/0
end_of_backup_record_required:
  description: C(pg_control_recovery().end_of_backup_record_required) when the wait ended.
  returned: when connected
  type: bool
  sample: false
lag_bytes:
  description: Bytes replay is behind the end of WAL the upstream last reported (V(null) without a WAL receiver).
  returned: always
  type: int
  sample: 0
receiver_status:
  description: C(pg_stat_wal_receiver.status), V(null) without a WAL receiver.
  returned: always
  type: str
  sample: streaming
sender_host:
  description: C(pg_stat_wal_receiver.sender_host).
  returned: when connected
  type: str
  sample: 10.0.0.11
sender_port:
  description: C(pg_stat_wal_receiver.sender_port).
  returned: when connected
  type: int
  sample: 5432
apply_delay_ms:
  description: C(recovery_min_apply_delay) in milliseconds.
  returned: when connected
  type: int
  sample: 0
server_version_num:
  description: The server's C(server_version_num).
  returned: always
  type: int
  sample: 160004
queries:
  description: The distinct statements the module ran.
  returned: always
  type: list
  elements: str
  sample: ["CHECKPOINT"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.connection import connection_secrets, server_address, with_connection_options
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_gate import check_token, open_gate
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.replay_waiter import (
    DEFAULT_MAX_LAG_BYTES,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_STALL_TIMEOUT,
    DEFAULT_TIMEOUT,
    MODES,
    ReplayWaiter,
    ServerQuery,
    data_dir_probe,
)
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.system_identifier import expected_system_identifier

APPLICATION_NAME = "pgbackup.lowlevel/replay_wait"

ARGS = {
    "mode": {"type": "str", "choices": list(MODES), "default": "target_lsn"},
    "target_lsn": {"type": "str"},
    "restartpoint": {"type": "bool", "default": False},
    "expect_system_identifier": {"type": "str"},
    "expect_timeline": {"type": "int"},
    "resume_paused": {"type": "bool", "default": False},
    "upstream_host": {"type": "str"},
    "upstream_port": {"type": "int"},
    "max_lag_bytes": {"type": "int", "default": DEFAULT_MAX_LAG_BYTES},
    "data_dir": {"type": "path"},
    "timeout": {"type": "float", "default": DEFAULT_TIMEOUT},
    "stall_timeout": {"type": "float", "default": DEFAULT_STALL_TIMEOUT},
    "poll_interval": {"type": "float", "default": DEFAULT_POLL_INTERVAL},
    "open_gate": {"type": "path"},
    "gate_token": {"type": "str", "no_log": True},
}


def run_module(module: AnsibleModule) -> dict:
    """The module's result; raises PgBackupError."""
    p = module.params
    if p["data_dir"] and p["mode"] != "consistent":
        raise PgBackupError(f"data_dir only goes with mode=consistent (it watches a copy that does not accept connections yet), not mode={p['mode']}")
    if p["open_gate"]:
        check_token(p["gate_token"])  # before the wait: a bad token found after it would leave the copy waiting
    query = ServerQuery(p, application_name=APPLICATION_NAME)
    waiter = ReplayWaiter(
        query,
        mode=p["mode"],
        target_lsn=p["target_lsn"],
        restartpoint=p["restartpoint"],
        expect_system_identifier=expected_system_identifier(p["expect_system_identifier"]),
        expect_timeline=p["expect_timeline"],
        resume_paused=p["resume_paused"],
        upstream_host=p["upstream_host"],
        upstream_port=p["upstream_port"],
        max_lag_bytes=p["max_lag_bytes"],
        timeout=p["timeout"],
        stall_timeout=p["stall_timeout"],
        poll_interval=p["poll_interval"],
        check_mode=module.check_mode,
        probe_files=data_dir_probe(p["data_dir"]) if p["data_dir"] else None,
        warn=module.warn,
        server=server_address(p),
    )
    try:
        result = waiter.wait()
    except PgBackupError as exc:
        exc.details.setdefault("queries", list(query.queries))
        raise
    finally:
        query.close()
    result["changed"] = bool(result["resumed_replay"])
    result["queries"] = list(query.queries)
    if p["open_gate"]:
        result["gate_opened"] = not module.check_mode and result.get("reached") is True
        if result["gate_opened"]:
            open_gate(p["open_gate"], p["gate_token"])
            result["changed"] = True
    return result


def main() -> None:
    module = AnsibleModule(argument_spec=with_connection_options(ARGS), supports_check_mode=True)
    module.no_log_values.update(connection_secrets(module.params))
    try:
        result = run_module(module)
    except PgBackupError as exc:
        module.fail_json(msg=exc.message, **exc.details)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
