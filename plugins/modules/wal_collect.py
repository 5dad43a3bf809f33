#!/usr/bin/python
# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: wal_collect
short_description: Collect and validate the WAL segments a backup copy needs into its pg_wal
version_added: 0.1.0
description:
  - Runs on the destination host, next to a copy made by P(pgbackup.lowlevel.datadir_copy#module).
  - Computes every WAL segment from O(start_lsn) to O(stop_lsn) with the collection's segment arithmetic (never
    C(pg_walfile_name), which fails on a standby), across timeline switches, using the stop timeline's C(.history)
    file from the source; that history file and those of its ancestors are collected too.
  - Fetches the segments from a WAL archive directory or a server's C(pg_wal) (O(source_type)), on this host or over
    ssh with rsync (O(source_host)), waiting up to O(timeout) seconds for segments not there yet.
  - Validates every segment before it is used - page magic of the copy's major version, system identifier equal to the
    copy's pg_control (read from C(global/pg_control.pgbackup-pending) while the label is not placed), segment size,
    the page address of every page (a recycled file renamed to a later name is refused), timelines; the last segment
    must hold valid WAL through O(stop_lsn). A C(.partial) file never stands in for a complete segment, except through
    O(partial_from).
  - Across a timeline switch inside a segment, also collects the old timeline's file of that segment, which recovery
    never reads (it takes the new timeline's) but C(backup_manifest)'s WAL-Ranges promise and C(pg_verifybackup) with
    WAL parsing reads (it fails with C(could not find file) otherwise) - from the source under its own name, else as
    C(.partial) (what a server archives at promotion), then the same from O(partial_from); its page headers and WAL
    records are checked through the switchpoint, and it is written under the segment's name holding the WAL up to the
    switchpoint and zeros after it. Fails naming the file and where it looked when neither has it.
  - Writes each segment into O(wal_dir) through a temporary name, fsync, rename and fsync of the directory, owned like
    O(data_dir) and with mode C(0600) (C(0640) when O(data_dir) is C(0750)).
  - Fails listing every missing or invalid segment and why, not only the first one; with a connection to the
    server that archives (O(login_host) or O(login_unix_socket)), the message includes C(pg_stat_archiver)'s last failure.
  - Refuses a copy marked incomplete and a data directory with a live postmaster.
author:
  - pgbackup.lowlevel developers (@pgbackup)
extends_documentation_fragment:
  - pgbackup.lowlevel.connection
  - pgbackup.lowlevel.ssh_source
options:
  data_dir:
    description: The copy's data directory on this host; its pg_control gives the system identifier, major version and segment size.
    type: path
    required: true
  wal_dir:
    description:
      - Directory the segments are written to. Default is C(pg_wal) of O(data_dir).
      - The alias O(dest) is deprecated and goes in 0.3.0.
    type: path
    aliases: [dest]
  start_lsn:
    description: The backup's start LSN (RV(pgbackup.lowlevel.backup_start#module:start_lsn)).
    type: str
    required: true
  start_timeline:
    description: Timeline of O(start_lsn). Default is O(stop_timeline).
    type: int
  stop_lsn:
    description: The backup's stop LSN (RV(pgbackup.lowlevel.backup_stop#module:stop_lsn)).
    type: str
    required: true
  stop_timeline:
    description: Timeline of O(stop_lsn) (RV(pgbackup.lowlevel.backup_stop#module:stop_timeline)).
    type: int
    required: true
  wal_segment_size:
    description: WAL segment size in bytes; must equal the copy's pg_control, which gives it when not set.
    type: int
  source_path:
    description: The directory the WAL is fetched from (absolute), on O(source_host) or this host.
    type: path
    required: true
  source_type:
    description:
      - V(archive) - a WAL archive; a full-size segment there that is invalid is refused at once.
      - V(pg_wal) - a server's C(pg_wal) (a retention slot keeps the files); a file there may be recycled or still
        written, so an invalid one is fetched again until O(timeout).
    type: str
    choices: [archive, pg_wal]
    default: archive
  source_host:
    description: Host holding O(source_path) and O(partial_from), reached over ssh; omit for this host.
    type: str
  timeout:
    description: Seconds to wait for segments not in the source yet (still being archived). V(0) checks once.
    type: float
    default: 60
  poll_interval:
    description: Seconds between two looks at the source while waiting.
    type: float
    default: 1.0
  switch_wal:
    description:
      - When the last needed segment is missing, run C(SELECT pg_switch_wal()) once on the server of the connection
        options (the primary), so that an idle primary completes and archives it.
    type: bool
    default: false
  partial_from:
    description:
      - A standby's C(pg_wal) directory (on O(source_host) or this host). When the last needed segment is missing from
        the source, it is taken from there (named as the segment or with C(.partial)) and checked only through
        O(stop_lsn); it is written padded to the full segment size under the segment's name.
      - Also searched, after the source, for the old timeline's file of a segment holding a timeline switch (the
        promoted server's WAL archive holds it as C(.partial)).
    type: path
attributes:
  check_mode:
    description: Fetches and validates, writes nothing; reports what would be collected.
    support: full
  diff_mode:
    description: Not supported.
    support: none
notes:
  - Needs C(rsync) on both hosts and GNU C(find) on O(source_host) when it is set.
  - The connection options are used only with O(switch_wal), or when O(login_host) or O(login_unix_socket) is set.
"""

EXAMPLES = r"""
- name: Collect the backup's WAL from the archive on the backup server into the copy
  pgbackup.lowlevel.wal_collect:
    data_dir: /srv/restore/pgdata
    source_host: archive.example.com
    source_user: postgres
    source_path: /srv/wal-archive/main
    start_lsn: "{{ started.start_lsn }}"
    stop_lsn: "{{ stopped.stop_lsn }}"
    stop_timeline: "{{ stopped.stop_timeline }}"
    timeout: 300
    switch_wal: true
    login_host: db1.example.com
    login_password: "{{ vault_postgres_password }}"
  register: wal
"""

RETURN = r"""
segments:
  description: Segments written (that would be written in check mode), oldest first.
  returned: always
  type: list
  elements: str
  sample: ["000000010000000000000025", "000000010000000000000026"]
history_files:
  description: History files written (that would be written in check mode).
  returned: always
  type: list
  elements: str
  sample: ["00000002.history"]
present:
  description: Segments already in O(wal_dir) and valid, not fetched again.
  returned: always
  type: list
  elements: str
old_timeline_segments:
  description:
    - The old timeline's files of segments holding a timeline switch that were written (also in RV(segments)), each
      holding that timeline's WAL up to the switchpoint, for C(pg_verifybackup); recovery does not read them.
  returned: always
  type: list
  elements: str
old_timeline_needed:
  description: The old timeline's files the WAL-Ranges of the copy's manifest promise, each with C(file) and C(through) (the switchpoint).
  returned: always
  type: list
  elements: dict
needed:
  description: Every segment the copy needs, oldest first.
  returned: always
  type: list
  elements: str
history_needed:
  description: Every history file of the stop timeline's history.
  returned: always
  type: list
  elements: str
partial_segment:
  description: The last segment when it was taken from O(partial_from), checked only through O(stop_lsn); else V(null).
  returned: always
  type: str
wal_switched:
  description: Whether C(pg_switch_wal()) was run (O(switch_wal)).
  returned: always
  type: bool
bytes:
  description: Bytes of the segments and history files written.
  returned: always
  type: int
seconds:
  description: Wall time of the run (on failure too).
  returned: always
  type: float
wal_dir:
  description: The directory written to.
  returned: always
  type: str
dest:
  description: The same as RV(wal_dir), its name before 0.2.0; deprecated, it goes in 0.3.0.
  returned: always
  type: str
queries:
  description: The SQL statements run.
  returned: always
  type: list
  elements: str
problems:
  description: On failure, each missing or invalid segment as C(file) and C(problem).
  returned: failure
  type: list
  elements: dict
segments_collected:
  description: On a failure listing missing or invalid segments, the segments written before it.
  returned: failure
  type: list
  elements: str
"""


from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.connection import connection_secrets, with_connection_options
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.option_names import backup_range_argument_spec, renamed_from
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.ssh_source import ssh_argument_spec
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.wal_collector import ArchiveServer, collect

APPLICATION_NAME = "pgbackup.lowlevel/wal_collect"

ARGS = {
    "data_dir": {"type": "path", "required": True},
    "wal_dir": renamed_from({"type": "path"}, "dest"),
    **backup_range_argument_spec("start_lsn", "start_timeline", "stop_lsn", "stop_timeline", required=("start_lsn", "stop_lsn", "stop_timeline")),
    "wal_segment_size": {"type": "int"},
    "source_path": {"type": "path", "required": True},
    "source_type": {"type": "str", "choices": ["archive", "pg_wal"], "default": "archive"},
    "source_host": {"type": "str"},
    **ssh_argument_spec(),
    "timeout": {"type": "float", "default": 60},
    "poll_interval": {"type": "float", "default": 1.0},
    "switch_wal": {"type": "bool", "default": False},
    "partial_from": {"type": "path"},
}


def run_module(module: AnsibleModule, server: ArchiveServer) -> dict:
    return collect(module.params, server, check_mode=module.check_mode, warn=module.warn)


def main() -> None:
    module = AnsibleModule(argument_spec=with_connection_options(ARGS), supports_check_mode=True)
    module.no_log_values.update(connection_secrets(module.params))
    server = ArchiveServer(module.params, application_name=APPLICATION_NAME)
    try:
        result = run_module(module, server)
    except PgBackupError as exc:
        module.fail_json(msg=exc.message, **exc.details)
    except OSError as exc:
        module.fail_json(msg=f"wal_collect failed: {exc}", path=getattr(exc, "filename", None))
    finally:
        server.close()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
