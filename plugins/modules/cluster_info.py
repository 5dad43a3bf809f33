#!/usr/bin/python
# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cluster_info
short_description: Facts of a PostgreSQL server, or of a data directory from its pg_control
version_added: 0.1.0
description:
  - Reads the facts a physical backup or a replica clone depends on from a running PostgreSQL 13 to 18
    server - version, system identifier, recovery state, timeline, WAL positions, WAL segment size,
    full-page writes, checksums, archive settings, tablespaces, replication, WAL receiver and
    replication slots.
  - Or, with O(data_dir), reads the same kind of facts from a data directory's files
    (C(global/pg_control), C(PG_VERSION), C(postmaster.pid), C(backup_label) and the signal files)
    without connecting; the data directory may be running or stopped.
  - Never changes anything.
  - A value the connected role may not read (for example C(data_directory) without
    C(pg_read_all_settings), or most of C(pg_stat_replication) without C(pg_read_all_stats)) is returned
    as V(null) with a warning; connect as a superuser or a member of C(pg_monitor) to get everything.
author:
  - pgbackup.lowlevel developers (@pgbackup)
extends_documentation_fragment:
  - pgbackup.lowlevel.connection
options:
  data_dir:
    description:
      - Read the facts of this data directory from its files instead of connecting to a server.
      - The connection options are then ignored (so a play can still set them with C(module_defaults)).
      - The module must run on the host that has the data directory, as a user that can read it.
    type: path
attributes:
  check_mode:
    description: Fully supported; the module only reads.
    support: full
  diff_mode:
    description: Nothing changes, so there is no diff.
    support: none
notes:
  - On a running server, C(pg_control) on disk shows its last checkpoint or restartpoint, not its
    current position; use a connection for live facts and O(data_dir) for stopped copies.
seealso:
  - name: PostgreSQL system information functions (pg_control_*)
    description: Where the system identifier, checkpoint and recovery facts come from.
    link: https://www.postgresql.org/docs/current/functions-info.html#FUNCTIONS-PG-CONTROL-DATA
"""

EXAMPLES = r"""
- name: Facts of the server, with the connection options set once (a play's module_defaults works the same way)
  module_defaults:
    group/pgbackup.lowlevel.postgres:
      login_host: "{{ ansible_host }}"
      login_password: "{{ vault_postgres_password }}"
  block:
    - name: Read the facts
      pgbackup.lowlevel.cluster_info:
      register: pg

    - name: Refuse a standby that belongs to another cluster than the primary
      ansible.builtin.assert:
        that:
          - pg.cluster.in_recovery
          - pg.cluster.system_identifier == hostvars[groups['primary'][0]].pg.cluster.system_identifier
        fail_msg: "{{ inventory_hostname }} is not a standby of the primary"

- name: Over the local Unix socket as the postgres OS user
  become: true
  become_user: postgres
  pgbackup.lowlevel.cluster_info:
    login_unix_socket: /var/run/postgresql
  register: local_pg

- name: Facts of a stopped copy, from its pg_control
  pgbackup.lowlevel.cluster_info:
    data_dir: /srv/restore/pgdata
  register: copy

- name: Make sure nothing runs on the copy and that it belongs to the same cluster
  ansible.builtin.assert:
    that:
      - not copy.cluster.running
      - copy.cluster.system_identifier == pg.cluster.system_identifier
"""

RETURN = r"""
queries:
  description: The SQL statements run, in order (empty with O(data_dir)).
  returned: always
  type: list
  elements: str
  sample: ["SELECT pg_current_wal_lsn()::text AS current_lsn, ..."]
cluster:
  description:
    - The facts. Keys marked "server" are returned when connected, keys marked "data_dir" with O(data_dir);
      the keys both share mean the same thing.
    - LSNs are text as PostgreSQL prints them (V(0/3000148)); times are ISO 8601 text; sizes are bytes.
    - A value the connected role may not read is V(null) (with a warning).
  returned: always
  type: dict
  contains:
    source:
      description: Where the facts come from.
      returned: always
      type: str
      choices: [server, data_dir]
      sample: server
    major:
      description: PostgreSQL major version (server; data_dir from the catalog version in pg_control).
      returned: always
      type: int
      sample: 16
    system_identifier:
      description:
        - The cluster's system identifier, shared by a primary, its standbys and every backup of it
          (server from C(pg_control_system()); data_dir from pg_control).
      returned: always
      type: int
      sample: 7311234567890123456
    pg_control_version:
      description: pg_control layout version (1300 for 13-16, 1700 for 17, 1800 for 18).
      returned: always
      type: int
      sample: 1300
    catalog_version_no:
      description: Catalog version number.
      returned: always
      type: int
      sample: 202307071
    timeline:
      description:
        - The timeline the cluster is on.
        - Server, primary - the timeline WAL is being written on.
        - Server, standby - the newest of RV(cluster.received_timeline), the minimum recovery point's timeline and
          RV(cluster.checkpoint_timeline).
        - data_dir - the latest checkpoint's timeline in pg_control.
      returned: always
      type: int
      sample: 1
    checkpoint_timeline:
      description: Timeline of the latest checkpoint (or restartpoint, on a standby) in pg_control.
      returned: always
      type: int
      sample: 1
    wal_segment_size:
      description: WAL segment size in bytes.
      returned: always
      type: int
      sample: 16777216
    block_size:
      description: Data block size in bytes.
      returned: always
      type: int
      sample: 8192
    wal_block_size:
      description: WAL block size in bytes.
      returned: always
      type: int
      sample: 8192
    full_page_writes:
      description: Whether C(full_page_writes) is on (data_dir - as of the latest checkpoint).
      returned: always
      type: bool
      sample: true
    data_checksums:
      description: Whether data checksums are enabled.
      returned: always
      type: bool
      sample: true
    wal_log_hints:
      description: Whether C(wal_log_hints) is on.
      returned: always
      type: bool
      sample: false
    wal_level:
      description: C(wal_level) (V(minimal), V(replica) or V(logical)).
      returned: always
      type: str
      sample: replica
    data_directory:
      description:
        - The data directory (server - the C(data_directory) setting, which needs C(pg_read_all_settings);
          data_dir - the resolved path given).
      returned: always
      type: str
      sample: /var/lib/postgresql/16/main
    server_version:
      description: "Server: the server's version text."
      returned: when connected
      type: str
      sample: "16.4 (Debian 16.4-1.pgdg120+1)"
    server_version_num:
      description: "Server: the version as a number."
      returned: when connected
      type: int
      sample: 160004
    pg_control_last_modified:
      description: "Server: when pg_control was last written."
      returned: when connected
      type: str
      sample: "2024-05-01T10:00:00+00:00"
    in_recovery:
      description: "Server: whether the server is in recovery (a standby, or a copy still recovering)."
      returned: when connected
      type: bool
      sample: false
    role:
      description: "Server: the connected role and the privileges that decide which facts it may read."
      returned: when connected
      type: dict
      contains:
        name:
          description: Role name.
          type: str
          returned: always
        superuser:
          description: Whether it is a superuser.
          type: bool
          returned: always
        replication:
          description: Whether it has the REPLICATION attribute.
          type: bool
          returned: always
        pg_monitor:
          description: Whether it has the privileges of C(pg_monitor).
          type: bool
          returned: always
        pg_read_all_settings:
          description: Whether it has the privileges of C(pg_read_all_settings).
          type: bool
          returned: always
        pg_read_all_stats:
          description: Whether it has the privileges of C(pg_read_all_stats).
          type: bool
          returned: always
    current_lsn:
      description: "Server, primary: C(pg_current_wal_lsn()), the WAL write position; V(null) on a standby."
      returned: when connected
      type: str
      sample: 0/3000148
    insert_lsn:
      description: "Server, primary: C(pg_current_wal_insert_lsn()); V(null) on a standby."
      returned: when connected
      type: str
      sample: 0/3000148
    flush_lsn:
      description: "Server, primary: C(pg_current_wal_flush_lsn()); V(null) on a standby."
      returned: when connected
      type: str
      sample: 0/3000148
    current_wal_file:
      description: "Server, primary: the WAL file holding RV(cluster.current_lsn); V(null) on a standby."
      returned: when connected
      type: str
      sample: "000000010000000000000003"
    insert_timeline:
      description: "Server, primary: the timeline WAL is written on (from RV(cluster.current_wal_file)); V(null) on a standby."
      returned: when connected
      type: int
      sample: 1
    receive_lsn:
      description:
        - "Server, standby: C(pg_last_wal_receive_lsn()), the last WAL position received and flushed by streaming
          replication; V(null) on a primary, or when nothing was streamed (WAL from an archive only)."
      returned: when connected
      type: str
      sample: 0/3000148
    replay_lsn:
      description: "Server, standby: C(pg_last_wal_replay_lsn()); V(null) on a primary."
      returned: when connected
      type: str
      sample: 0/3000148
    last_replay_timestamp:
      description: "Server, standby: C(pg_last_xact_replay_timestamp()), commit time of the last replayed transaction."
      returned: when connected
      type: str
      sample: "2024-05-01T10:00:00.123456+00:00"
    replay_paused:
      description: "Server, standby: C(pg_is_wal_replay_paused()), whether a pause was requested; V(null) on a primary."
      returned: when connected
      type: bool
      sample: false
    replay_pause_state:
      description:
        - "Server, standby, PostgreSQL 14 and later: C(pg_get_wal_replay_pause_state()) - V(not paused),
          V(pause requested) or V(paused); V(null) on a primary and on 13."
      returned: when connected
      type: str
      sample: not paused
    received_timeline:
      description: "Server, standby: the timeline the WAL receiver streams (C(received_tli)); V(null) without a WAL receiver."
      returned: when connected
      type: int
      sample: 1
    checkpoint:
      description: "Server: C(pg_control_checkpoint()), the latest checkpoint (on a standby, restartpoint)."
      returned: when connected
      type: dict
      contains:
        checkpoint_lsn:
          description: Location of the checkpoint record.
          type: str
          returned: always
        redo_lsn:
          description: Redo location of the checkpoint.
          type: str
          returned: always
        redo_wal_file:
          description: WAL file holding the redo location.
          type: str
          returned: always
        timeline_id:
          description: Timeline of the checkpoint.
          type: int
          returned: always
        prev_timeline_id:
          description: Previous timeline.
          type: int
          returned: always
        full_page_writes:
          description: Whether full-page writes were on at the checkpoint.
          type: bool
          returned: always
        checkpoint_time:
          description: Time of the checkpoint.
          type: str
          returned: always
    recovery:
      description: "Server: C(pg_control_recovery())."
      returned: when connected
      type: dict
      contains:
        min_recovery_end_lsn:
          description: Minimum recovery ending location (V(0/0) on a primary).
          type: str
          returned: always
        min_recovery_end_timeline:
          description: Timeline of the minimum recovery ending location.
          type: int
          returned: always
        backup_start_lsn:
          description: Backup start location (non-zero while recovering from a backup).
          type: str
          returned: always
        backup_end_lsn:
          description: Backup end location.
          type: str
          returned: always
        end_of_backup_record_required:
          description: Whether recovery must reach an end-of-backup record.
          type: bool
          returned: always
    archive_mode:
      description: "Server: C(archive_mode) (V(off), V(on) or V(always))."
      returned: when connected
      type: str
      sample: "on"
    archive_command:
      description:
        - "Server: C(archive_command) as PostgreSQL shows it (V((disabled)) when C(archive_mode) is off)."
      returned: when connected
      type: str
      sample: "test ! -f /archive/%f && cp %p /archive/%f"
    archive_library:
      description: "Server, PostgreSQL 15 and later: C(archive_library); V(null) on 13 and 14."
      returned: when connected
      type: str
      sample: ""
    archive_timeout:
      description: "Server: C(archive_timeout) in seconds (V(0) - disabled)."
      returned: when connected
      type: int
      sample: 60
    restore_command:
      description: "Server: C(restore_command)."
      returned: when connected
      type: str
      sample: ""
    hot_standby:
      description: "Server: whether C(hot_standby) is on."
      returned: when connected
      type: bool
      sample: true
    cluster_name:
      description: "Server: C(cluster_name)."
      returned: when connected
      type: str
      sample: "16/main"
    max_wal_senders:
      description: "Server: C(max_wal_senders)."
      returned: when connected
      type: int
      sample: 10
    max_replication_slots:
      description: "Server: C(max_replication_slots)."
      returned: when connected
      type: int
      sample: 10
    wal_keep_size:
      description: "Server: C(wal_keep_size) in bytes."
      returned: when connected
      type: int
      sample: 134217728
    max_slot_wal_keep_size:
      description: "Server: C(max_slot_wal_keep_size) in bytes, V(-1) for unlimited."
      returned: when connected
      type: int
      sample: -1
    primary_slot_name:
      description: "Server: C(primary_slot_name) (a standby streams through this slot)."
      returned: when connected
      type: str
      sample: ""
    summarize_wal:
      description: "Server, PostgreSQL 17 and later: whether C(summarize_wal) is on; V(null) before 17."
      returned: when connected
      type: bool
      sample: false
    tablespaces:
      description:
        - Tablespaces. Server - from C(pg_tablespace), with V(pg_default) and V(pg_global) without location.
          data_dir - the entries of C(pg_tblspc) (no names; an in-place tablespace shows C(pg_tblspc/<oid>)).
      returned: always
      type: list
      elements: dict
      contains:
        name:
          description: Tablespace name (V(null) with O(data_dir)).
          type: str
          returned: always
        oid:
          description: Tablespace OID.
          type: int
          returned: always
        location:
          description: Directory of the tablespace; V(null) for V(pg_default) and V(pg_global).
          type: str
          returned: always
      sample: [{"name": "pg_default", "oid": 1663, "location": null}, {"name": "fast", "oid": 16390, "location": "/srv/fast"}]
    replication:
      description:
        - "Server: the rows of C(pg_stat_replication) (the standbys and clients streaming from this server, also on a
          cascading standby), with every column PostgreSQL has; lags in seconds."
        - Without C(pg_read_all_stats) only C(pid), C(usesysid), C(usename) and C(application_name) are filled.
      returned: when connected
      type: list
      elements: dict
      sample:
        - {"pid": 4242, "usesysid": 10, "usename": "postgres", "application_name": "standby1", "client_addr": "10.0.0.2",
           "client_hostname": null, "client_port": 50432, "backend_start": "2024-05-01T10:00:00+00:00", "backend_xmin": null,
           "state": "streaming", "sent_lsn": "0/3000148", "write_lsn": "0/3000148", "flush_lsn": "0/3000148",
           "replay_lsn": "0/3000148", "write_lag": null, "flush_lag": null, "replay_lag": null, "sync_priority": 0,
           "sync_state": "async", "reply_time": "2024-05-01T10:00:01+00:00"}
    wal_receiver:
      description:
        - "Server, standby: the row of C(pg_stat_wal_receiver), or V(null) on a primary or when no WAL receiver runs.
          Its C(conninfo) is obfuscated by PostgreSQL (no password)."
        - Without C(pg_read_all_stats) only C(pid) is filled.
      returned: when connected
      type: dict
      sample: {"pid": 4243, "status": "streaming", "receive_start_lsn": "0/3000000", "receive_start_tli": 1,
               "written_lsn": "0/3000148", "flushed_lsn": "0/3000148", "received_tli": 1,
               "last_msg_send_time": "2024-05-01T10:00:01+00:00", "last_msg_receipt_time": "2024-05-01T10:00:01+00:00",
               "latest_end_lsn": "0/3000148", "latest_end_time": "2024-05-01T10:00:01+00:00", "slot_name": null,
               "sender_host": "10.0.0.1", "sender_port": 5432, "conninfo": "user=replicator password=******** host=10.0.0.1 ..."}
    replication_slots:
      description:
        - "Server: the rows of C(pg_replication_slots). Every key is present on every version, V(null) where the server
          does not have the column: C(two_phase) (14+), C(conflicting) (16+), C(inactive_since), C(invalidation_reason),
          C(failover), C(synced) (17+), C(two_phase_at) (18+)."
        - C(safe_wal_size) is in bytes; C(xmin) and C(catalog_xmin) are numbers.
      returned: when connected
      type: list
      elements: dict
      sample:
        - {"slot_name": "backup", "plugin": null, "slot_type": "physical", "datoid": null, "database": null, "temporary": false,
           "active": false, "active_pid": null, "xmin": null, "catalog_xmin": null, "restart_lsn": "0/3000000",
           "confirmed_flush_lsn": null, "wal_status": "reserved", "safe_wal_size": null, "two_phase": false,
           "two_phase_at": null, "inactive_since": null, "conflicting": null, "invalidation_reason": null,
           "failover": false, "synced": false}
    pg_version:
      description: "data_dir: the content of C(PG_VERSION)."
      returned: with data_dir
      type: str
      sample: "16"
    state:
      description: "data_dir: the cluster state in pg_control, as pg_controldata prints it."
      returned: with data_dir
      type: str
      sample: shut down in recovery
    control:
      description:
        - "data_dir: every field of pg_control, LSNs as text, with derived C(state_name), C(wal_level_name),
          C(data_checksums), C(next_xid) and C(redo_wal_file)."
        - The most used ones are C(checkpoint_lsn), C(redo_lsn), C(timeline), C(prev_timeline), C(min_recovery_point),
          C(min_recovery_point_tli), C(backup_start_point), C(backup_end_point), C(backup_end_required), C(xlog_seg_size),
          C(blcksz), C(data_checksum_version), C(catalog_version_no) and C(major_version).
      returned: with data_dir
      type: dict
      sample: {"system_identifier": 7311234567890123456, "checkpoint_lsn": "0/3000060", "redo_lsn": "0/3000028",
               "timeline": 1, "state": 2, "state_name": "shut down in recovery", "min_recovery_point": "0/3000148",
               "backup_start_point": "0/0", "backup_end_point": "0/0", "backup_end_required": false}
    running:
      description:
        - "data_dir: whether a postmaster runs on this data directory: C(postmaster.pid) names a live process called
          postgres whose working directory is this data directory. A stale or copied C(postmaster.pid) does not count."
      returned: with data_dir
      type: bool
      sample: false
    postmaster:
      description: "data_dir: what C(postmaster.pid) says."
      returned: with data_dir
      type: dict
      contains:
        pid_file:
          description: Whether C(postmaster.pid) exists.
          type: bool
          returned: always
        pid:
          description: The PID it names.
          type: int
          returned: always
        running:
          description: Same as RV(cluster.running).
          type: bool
          returned: always
        recorded_data_directory:
          description: The data directory recorded in the file (a copied file still names the original).
          type: str
          returned: always
        port:
          description: The port recorded in the file.
          type: int
          returned: always
        socket_directory:
          description: The first Unix socket directory recorded in the file.
          type: str
          returned: always
        listen_addresses:
          description: The first listen address recorded in the file.
          type: str
          returned: always
        status:
          description: The postmaster's status recorded in the file (V(starting), V(ready), V(standby), V(stopping)).
          type: str
          returned: always
    backup_label:
      description:
        - "data_dir: the C(backup_label) of the data directory (a backup that has not been recovered yet), or V(null)
          when there is none. Keys are V(null) when the file cannot be parsed (with a warning)."
      returned: with data_dir
      type: dict
      contains:
        start_lsn:
          description: START WAL LOCATION.
          type: str
          returned: always
        start_wal_file:
          description: The WAL file of START WAL LOCATION.
          type: str
          returned: always
        checkpoint_lsn:
          description: CHECKPOINT LOCATION.
          type: str
          returned: always
        start_timeline:
          description: START TIMELINE.
          type: int
          returned: always
        backup_from:
          description: BACKUP FROM (V(primary) or V(standby)).
          type: str
          returned: always
        label:
          description: LABEL.
          type: str
          returned: always
    tablespace_map:
      description: "data_dir: whether a C(tablespace_map) file exists."
      returned: with data_dir
      type: bool
      sample: false
    standby_signal:
      description: "data_dir: whether C(standby.signal) exists (the cluster starts as a standby)."
      returned: with data_dir
      type: bool
      sample: true
    recovery_signal:
      description: "data_dir: whether C(recovery.signal) exists (the cluster starts in targeted recovery)."
      returned: with data_dir
      type: bool
      sample: false
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.cluster_facts import data_dir_facts, server_facts
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.connection import connect, connection_secrets, with_connection_options
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError

APPLICATION_NAME = "pgbackup.lowlevel/cluster_info"


def run_module(module: AnsibleModule) -> dict:
    """The module's result; raises PgBackupError."""
    if module.params["data_dir"]:
        return {"changed": False, "cluster": data_dir_facts(module.params["data_dir"], warn=module.warn), "queries": []}
    with connect(module.params, application_name=APPLICATION_NAME) as session:
        facts = server_facts(session, warn=module.warn)
        return {"changed": False, "cluster": facts, "queries": session.queries}


def main() -> None:
    module = AnsibleModule(argument_spec=with_connection_options({"data_dir": {"type": "path"}}), supports_check_mode=True)
    module.no_log_values.update(connection_secrets(module.params))
    try:
        result = run_module(module)
    except PgBackupError as exc:
        module.fail_json(msg=exc.message, **exc.details)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
