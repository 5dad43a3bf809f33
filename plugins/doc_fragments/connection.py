# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The connection options shared by every module that talks to a PostgreSQL server."""

from __future__ import annotations


class ModuleDocFragment:
    # Defined in code by connection_argument_spec() in plugins/module_utils/connection.py; keep both in step.
    DOCUMENTATION = r"""
options:
  login_host:
    description:
      - Host name or IP address of the PostgreSQL server, or a directory holding its Unix socket
        (anything libpq accepts as C(host)).
      - If not set, the environment variable E(PGHOST) on the host the module runs on is used;
        without either, libpq connects over its default Unix socket.
      - O(login_unix_socket) takes precedence when both are set.
    type: str
    aliases: [host]
  login_port:
    description:
      - TCP port of the server, or the number in its Unix socket's name.
      - If not set, the environment variable E(PGPORT) is used, then V(5432).
    type: int
    default: 5432
    aliases: [port]
  login_user:
    description:
      - Role to connect as.
      - If not set, the environment variable E(PGUSER) is used, then V(postgres).
    type: str
    default: postgres
    aliases: [login]
  login_password:
    description:
      - Password of O(login_user).
      - If not set, the environment variable E(PGPASSWORD) is used; without either, libpq may still
        find one in C(~/.pgpass) (or the file named by E(PGPASSFILE)) of the user the module runs as.
      - The password never appears in messages or returned values.
    type: str
  login_unix_socket:
    description:
      - Directory of the server's Unix socket, for example C(/var/run/postgresql).
      - Takes precedence over O(login_host).
    type: path
    aliases: [unix_socket]
  login_db:
    description:
      - Database to connect to.
      - If not set, the environment variable E(PGDATABASE) is used; without either, libpq uses a
        database named like O(login_user).
    type: str
    aliases: [db, database]
  ssl_mode:
    description:
      - libpq's C(sslmode) for the connection.
      - If not set, libpq's default applies (E(PGSSLMODE), otherwise V(prefer)).
    type: str
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
  ca_cert:
    description:
      - File of certificate authorities the server's certificate is checked against (libpq's C(sslrootcert)).
      - Only used with O(ssl_mode=verify-ca) or O(ssl_mode=verify-full).
    type: path
    aliases: [ssl_rootcert]
  ssl_cert:
    description:
      - The client certificate presented to the server (libpq's C(sslcert)), for C(cert) authentication in C(pg_hba.conf).
    type: path
  ssl_key:
    description:
      - The client certificate's private key (libpq's C(sslkey)); libpq refuses a key file readable by others.
    type: path
  session_role:
    description:
      - A role to switch to with C(SET ROLE) right after connecting, as in community.postgresql - everything the
        module runs (for P(pgbackup.lowlevel.backup_start#module) the whole backup, in its keeper's session) then runs
        with that role's privileges, for example a role granted C(pg_monitor) and EXECUTE on the backup functions.
      - O(login_user) must be a member of it (with the C(SET) option on PostgreSQL 16 and later); otherwise the module
        fails before anything else, naming both.
      - C(pg_stat_activity.usename) still shows O(login_user), and O(login_user)'s own settings (C(ALTER ROLE ... SET))
        are the ones that apply.
    type: str
  connect_params:
    description:
      - Further libpq connection keywords, for example C(sslcrl), C(target_session_attrs),
        C(keepalives_idle), C(connect_timeout) or C(passfile).
      - C(connect_timeout) is V(10) seconds unless set here.
      - A C(sslpassword) given here is kept out of output and messages like O(login_password).
      - Keywords that have an option above (C(host), C(port), C(user), C(password), C(dbname), C(sslmode),
        C(sslrootcert), C(sslcert), C(sslkey)) are refused, and so are C(application_name), C(options) and C(replication), which the
        collection sets itself.
    type: dict
    default: {}
notes:
  - The aliases are community.postgresql's names (V(host), V(port), V(login), V(unix_socket), V(db), V(database),
    V(ssl_rootcert)), so tasks and C(module_defaults) written for it work here; community.postgresql 4 deprecates
    them in favour of the C(login_*) names, which are the ones to prefer.
  - Connection options can be set once per play for every module of the collection that connects to
    PostgreSQL with C(module_defaults) and the action group C(group/pgbackup.lowlevel.postgres).
  - The connection is made with psycopg2, or psycopg (3) where psycopg2 is not installed, directly to the server (not through a pooler in transaction
    mode), with C(application_name) set to C(pgbackup.lowlevel/<module>) and C(statement_timeout=0).
  - A password passed through the task keyword C(environment) (for example E(PGPASSWORD)) may show in
    the command lines Ansible logs at high verbosity; prefer O(login_password), which is C(no_log).
requirements:
  - psycopg2 (for example C(python3-psycopg2) or C(psycopg2-binary)) or psycopg 3 (C(python3-psycopg), C(psycopg[binary]))
    on the host the module runs on
"""
