# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection options of every module that talks to PostgreSQL, and the one way to connect.

The options are documented once in ``plugins/doc_fragments/connection.py`` and defined once here by
``connection_argument_spec()``; that function is the only part of this file that needs Ansible (for
``env_fallback``), so everything else is testable with plain Python.

The driver is psycopg2 where it is installed, else psycopg 3 (as community.postgresql, either works; psycopg2 is
taken first so a host that has both behaves as before psycopg 3 was supported). psycopg 3 runs with client-side
parameter binding (``ClientCursor``), so every statement reaches the server as psycopg2 would send it.

Connecting builds libpq keyword arguments (never a DSN string of our own), sets
``application_name`` and ``statement_timeout=0``, runs in autocommit, and turns every driver error
into a ``PgBackupError`` that says what was tried (host, port, user, database — never the password),
what failed (the server's message and SQLSTATE) and what to do. Every message is scrubbed of the
password, in case a server or a library echoes it.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Callable, Mapping, Optional
from urllib.parse import quote

from .errors import PgBackupError

try:
    import psycopg2
except ImportError:  # then psycopg 3; neither is reported by connect() with what to install
    psycopg2 = None
psycopg = None
if psycopg2 is None:
    try:
        import psycopg
    except ImportError:
        psycopg = None

HAS_PSYCOPG2 = psycopg2 is not None
DRIVER = "psycopg2" if psycopg2 is not None else "psycopg" if psycopg is not None else None

DEFAULT_PORT = 5432
DEFAULT_USER = "postgres"
DEFAULT_CONNECT_TIMEOUT = 10
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
MASK = "********"

# option name -> environment variable read when the option is not set
ENV_FALLBACKS = {
    "login_host": "PGHOST",
    "login_port": "PGPORT",
    "login_user": "PGUSER",
    "login_password": "PGPASSWORD",
    "login_db": "PGDATABASE",
}

# option name -> the aliases community.postgresql gives it, so a task written for c.p. runs unchanged
# (c.p. 4 marks them deprecated for its 5.0.0; here they stay plain aliases of the login_* names).
ALIASES = {
    "login_host": ["host"],
    "login_port": ["port"],
    "login_user": ["login"],
    "login_unix_socket": ["unix_socket"],
    "login_db": ["db", "database"],
    "ca_cert": ["ssl_rootcert"],
}

# libpq keywords whose values are secrets wherever they come from.
SECRET_KEYWORDS = ("password", "sslpassword")

# libpq keywords that connect_params may not set, and what to use instead.
_OWNED_KEYWORDS = {
    "password": "login_password (it is marked no_log; connect_params is not)",
    "user": "login_user",
    "host": "login_host or login_unix_socket",
    "hostaddr": "login_host",
    "port": "login_port",
    "dbname": "login_db",
    "sslmode": "ssl_mode",
    "sslrootcert": "ca_cert",
    "sslcert": "ssl_cert",
    "sslkey": "ssl_key",
    "application_name": "nothing: the collection sets it to name the module in pg_stat_activity",
    "fallback_application_name": "nothing: the collection sets application_name",
    "options": "nothing: the collection sets statement_timeout=0 through it, which long backups need",
    "replication": "nothing: the modules need a normal SQL session, not a replication connection",
}


def connection_argument_spec() -> dict:
    """A fresh argument spec of the connection options (the only function here that needs Ansible)."""
    from ansible.module_utils.basic import env_fallback

    spec = {
        "login_host": {"type": "str", "fallback": (env_fallback, [ENV_FALLBACKS["login_host"]])},
        "login_port": {"type": "int", "default": DEFAULT_PORT, "fallback": (env_fallback, [ENV_FALLBACKS["login_port"]])},
        "login_user": {"type": "str", "default": DEFAULT_USER, "fallback": (env_fallback, [ENV_FALLBACKS["login_user"]])},
        "login_password": {"type": "str", "no_log": True, "fallback": (env_fallback, [ENV_FALLBACKS["login_password"]])},
        "login_unix_socket": {"type": "path"},
        "login_db": {"type": "str", "fallback": (env_fallback, [ENV_FALLBACKS["login_db"]])},
        "ssl_mode": {"type": "str", "choices": list(SSL_MODES)},
        "ca_cert": {"type": "path"},
        "ssl_cert": {"type": "path"},
        "ssl_key": {"type": "path"},
        "session_role": {"type": "str"},
        "connect_params": {"type": "dict", "default": {}},
    }
    for name, aliases in ALIASES.items():
        spec[name]["aliases"] = list(aliases)
    return spec


CONNECTION_OPTIONS = (
    "login_host",
    "login_port",
    "login_user",
    "login_password",
    "login_unix_socket",
    "login_db",
    "ssl_mode",
    "ca_cert",
    "ssl_cert",
    "ssl_key",
    "session_role",
    "connect_params",
)


def with_connection_options(module_spec: Mapping[str, dict], connection_spec: Optional[Mapping[str, dict]] = None) -> dict:
    """A module's own argument spec plus the connection options, refusing an option defined twice.

    A name counts with its aliases on both sides: Ansible itself would accept a module option ``port`` next to the
    alias ``port`` of login_port and silently fill both from one value.
    """
    connection_spec = dict(connection_spec if connection_spec is not None else connection_argument_spec())
    clash = sorted(set(module_spec) & set(connection_spec))
    if clash:
        raise ValueError(f"module options {clash} are connection options already; take them from connection_argument_spec()")
    taken = {alias: name for name, option in connection_spec.items() for alias in [name, *option.get("aliases", ())]}
    for name, option in module_spec.items():
        for alias in [name, *option.get("aliases", ())]:
            if alias in taken:
                raise ValueError(f"module option {name!r} (or its alias {alias!r}) clashes with the connection option {taken[alias]!r} or its aliases")
    merged = dict(connection_spec)
    merged.update(module_spec)
    return merged


def connection_secrets(params: Mapping[str, Any]) -> set:
    """Every secret among the connection options: login_password and secret keywords in connect_params.

    A module adds these to ``module.no_log_values`` first thing, so Ansible masks them everywhere it prints
    (connect_params is not no_log as a whole: that would mask every value in it, like ``1``).
    """
    secrets = set()
    if params.get("login_password"):
        secrets.add(str(params["login_password"]))
    extra = params.get("connect_params")
    if isinstance(extra, Mapping):
        for key, value in extra.items():
            if str(key).lower() in SECRET_KEYWORDS and value not in (None, ""):
                secrets.add(str(value))
    return secrets


# --- building the connection ---------------------------------------------------------------------


def server_address(params: Mapping[str, Any]) -> str:
    """host:port of the server the connection options in ``params`` reach, for messages (the socket directory when
    ``login_unix_socket`` is set, as libpq uses it; libpq's defaults where an option is unset)."""
    host = params.get("login_unix_socket") or params.get("login_host") or "localhost"
    return f"{host}:{params.get('login_port') or 5432}"


def connect_kwargs(params: Mapping[str, Any], *, application_name: str, settings: Optional[Mapping[str, object]] = None) -> dict:
    """The psycopg2 keyword arguments for the connection options in ``params`` (a module's params).

    ``login_unix_socket`` wins over ``login_host``; options left unset are not passed, so libpq's own
    defaults and environment (``PGSSLMODE``, ``~/.pgpass``, ...) apply. ``settings`` become
    ``-c name=value`` server settings after ``statement_timeout=0``.
    """
    extra = params.get("connect_params") or {}
    if not isinstance(extra, Mapping):
        raise PgBackupError(f"connect_params must be a dictionary of libpq keywords, got {type(extra).__name__}")
    for key in extra:
        owned = _OWNED_KEYWORDS.get(str(key).lower())
        if owned is not None:
            raise PgBackupError(f"connect_params may not set {key!r}: use {owned}")
    kwargs: dict = {}
    host = params.get("login_unix_socket") or params.get("login_host")
    if host:
        kwargs["host"] = host
    keywords = (
        ("login_port", "port"),
        ("login_user", "user"),
        ("login_db", "dbname"),
        ("ssl_mode", "sslmode"),
        ("ca_cert", "sslrootcert"),
        ("ssl_cert", "sslcert"),
        ("ssl_key", "sslkey"),
    )
    for option, keyword in keywords:
        value = params.get(option)
        if value is not None and value != "":
            kwargs[keyword] = value
    password = params.get("login_password")
    if password:
        kwargs["password"] = password
    kwargs["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
    for key, value in extra.items():
        kwargs[str(key)] = _libpq_value(value)
    kwargs["application_name"] = application_name
    server_settings = {"statement_timeout": "0"}
    server_settings.update({str(k): _libpq_value(v) for k, v in (settings or {}).items()})
    kwargs["options"] = " ".join(f"-c {name}={_escape_option(value)}" for name, value in server_settings.items())
    return kwargs


def _libpq_value(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _escape_option(value: str) -> str:
    # libpq's options keyword splits on spaces; a backslash escapes the next character.
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def describe_target(kwargs: Mapping[str, Any]) -> str:
    """Where a connection goes, as a user would check it: host, port, user, database; never the password."""
    host = kwargs.get("host")
    if not host:
        where = "host=(libpq default Unix socket)"
    elif str(host).startswith("/"):
        where = f"socket directory={host}"
    else:
        where = f"host={host}"
    parts = [where, f"port={kwargs.get('port', DEFAULT_PORT)}", f"user={kwargs.get('user', DEFAULT_USER)}"]
    parts.append(f"database={kwargs.get('dbname') or kwargs.get('user', DEFAULT_USER)}")
    if kwargs.get("sslmode"):
        parts.append(f"sslmode={kwargs['sslmode']}")
    return ", ".join(parts)


# --- keeping the password out of every message ---------------------------------------------------

_PASSWORD_ASSIGNMENT = re.compile(r"""(password\s*=\s*)('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s'"]+)""", re.IGNORECASE)
_URI_CREDENTIALS = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)([^@\s]*)(@)", re.IGNORECASE)


def scrub(text: object, secrets: tuple = ()) -> str:
    """``text`` with every password it may carry replaced by a mask.

    Masks ``password=...`` assignments (conninfo strings, quoted or not), the password part of
    ``postgresql://user:password@`` URIs, and every literal occurrence of each secret in the forms a
    conninfo string or URI would spell it.
    """
    text = str(text)
    for secret in secrets:
        if not secret:
            continue
        secret = str(secret)
        forms = {secret, secret.replace("\\", "\\\\").replace("'", "\\'"), quote(secret, safe=""), quote(secret)}
        for form in sorted(forms, key=len, reverse=True):
            text = text.replace(form, MASK)
    text = _PASSWORD_ASSIGNMENT.sub(lambda m: m.group(1) + MASK, text)
    return _URI_CREDENTIALS.sub(lambda m: m.group(1) + MASK + m.group(3), text)


def _server_message(exc: BaseException, secrets: tuple) -> str:
    message = getattr(exc, "pgerror", None) or str(exc) or type(exc).__name__  # pgerror: psycopg2's full text
    message = " ".join(scrub(message, secrets).split())
    return message


def _sqlstate(exc: BaseException) -> Optional[str]:
    return getattr(exc, "pgcode", None) or getattr(exc, "sqlstate", None) or None  # psycopg2, psycopg 3


_CONNECT_HINTS = (
    ("password authentication failed", "check login_password (or PGPASSWORD, or ~/.pgpass) and that the role has that password"),
    ("no password supplied", "the server asks for a password: set login_password (no_log), PGPASSWORD or a ~/.pgpass entry"),
    ("no pg_hba.conf entry", "add a pg_hba.conf line for this client address, user and database on the server, then reload it"),
    ("peer authentication failed", "peer authentication needs the OS user to match login_user: become that user, or connect over TCP"),
    ("ident authentication failed", "ident authentication needs the OS user to match login_user, or a pg_ident.conf mapping"),
    ("role", "check login_user: the role does not exist on this server"),
    ("database", "check login_db: that database does not exist on this server"),
    ("could not translate host name", "check login_host: the name does not resolve from the host the module runs on"),
    ("timeout expired", "nothing answered in time: check login_host and login_port, firewalls and that the server runs"),
    ("connection refused", "check that the server runs and listens on this address and port (listen_addresses, port)"),
    ("no such file or directory", "check that the server runs and that login_unix_socket/login_port name its socket"),
    ("the database system is starting up", "the server is starting: retry when it accepts connections"),
    ("the database system is shutting down", "the server is shutting down"),
    ("the database system is not yet accepting connections", "the server is still recovering: retry later, or set hot_standby=on"),
    ("the database system is not accepting connections", "the server does not accept connections: on a standby set hot_standby=on"),
    ("too many connections", "the server is at max_connections (or the role's connection limit): free a connection and retry"),
    ("ssl", "check ssl_mode and ca_cert against the server's SSL setup"),
    ("certificate", "check ca_cert and ssl_mode against the server's certificate"),
    ("invalid connection option", "remove the unknown keyword from connect_params (see libpq's connection parameters)"),
    ("invalid", "check connect_params: libpq refused one of its values"),
)


def _connect_hint(message: str) -> str:
    lowered = message.lower()
    for needle, hint in _CONNECT_HINTS:
        if needle in ("role", "database"):
            if re.search(needle + r' "[^"]*" does not exist', lowered):
                return hint
            continue
        if needle in lowered:
            return hint
    return "check the connection options and the server's log"


def connect_error(exc: BaseException, kwargs: Mapping[str, Any]) -> PgBackupError:
    """The PgBackupError for a failed connection attempt with ``kwargs``."""
    secrets = tuple(kwargs.get(keyword) for keyword in SECRET_KEYWORDS)
    message = _server_message(exc, secrets)
    sqlstate = _sqlstate(exc)
    target = scrub(describe_target(kwargs), secrets)
    state = f" (SQLSTATE {sqlstate})" if sqlstate else ""
    return PgBackupError(
        f"cannot connect to PostgreSQL at {target}: {message}{state}; {_connect_hint(message)}",
        sqlstate=sqlstate,
    )


# --- the session ---------------------------------------------------------------------------------


class Session:
    """One autocommit connection and the statements run on it (returned by modules as ``queries``)."""

    def __init__(self, connection: Any, *, target: str) -> None:
        self.connection = connection
        self.target = target
        self.queries: list[str] = []
        self._notices: Optional[list] = None
        if hasattr(connection, "add_notice_handler"):  # psycopg 3 hands notices to a callback; psycopg2 keeps a list
            self._notices = []
            connection.add_notice_handler(self._notice)

    def _notice(self, diag: Any) -> None:
        self._notices.append(f"{diag.severity}:  {diag.message_primary}")

    @property
    def notices(self) -> list:
        """The server's notices on this session so far, as psycopg2 words them (``NOTICE:  text``)."""
        return self._notices if self._notices is not None else self.connection.notices

    def clear_notices(self) -> None:
        del self.notices[:]

    @property
    def server_version_num(self) -> int:
        info = getattr(self.connection, "info", None)  # psycopg 3: connection.info; psycopg2: connection.server_version
        return int(info.server_version if info is not None and hasattr(info, "server_version") else self.connection.server_version)

    def query(self, sql: str, params: Any = None, *, record: bool = True) -> list[dict]:
        return run_query(self, sql, params, record=record)

    def close(self) -> None:
        try:
            self.connection.close()
        except Exception:  # noqa: BLE001, S110 - closing a broken connection must not hide the real error
            pass

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LazySession:
    """A session opened by its first statement, and again by the next one after its connection was lost.

    For modules that may need no server at all (wal_collect connects only to switch WAL or to read pg_stat_archiver)
    and for waits that outlive a server restart (replay_wait). Each distinct statement is kept in ``queries`` once,
    after it ran. A failure to connect raises PgBackupError with ``connect_failed=True`` (and the SQLSTATE: 57P03
    while the server starts up); a statement whose connection broke raises with ``connection_lost=True``.
    """

    def __init__(self, params: Mapping[str, Any], *, application_name: str, connect_function: Optional[Callable[..., Any]] = None) -> None:
        self.params = params
        self.application_name = application_name
        self.connect_function = connect_function
        self.session: Optional[Session] = None
        self.queries: list = []

    def query(self, sql: str) -> list[dict]:
        if self.session is None:
            try:
                self.session = connect(self.params, application_name=self.application_name, connect_function=self.connect_function)
            except PgBackupError as exc:
                raise PgBackupError(exc.message, connect_failed=True, **exc.details) from None
        try:
            rows = run_query(self.session, sql, record=False)
        except PgBackupError as exc:
            if getattr(self.session.connection, "closed", 0):
                self.close()
                raise PgBackupError(exc.message, connection_lost=True, **exc.details) from None
            raise
        text = " ".join(sql.split())
        if text not in self.queries:
            self.queries.append(text)
        return rows

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None


def connect(
    params: Mapping[str, Any],
    *,
    application_name: str,
    settings: Optional[Mapping[str, object]] = None,
    connect_function: Optional[Callable[..., Any]] = None,
) -> Session:
    """Connect with the connection options in ``params``; raise PgBackupError saying what to fix.

    ``application_name`` names the module (e.g. ``pgbackup.lowlevel/cluster_info``); ``settings`` are
    extra server settings for the session. ``connect_function`` replaces the driver's connect in tests.
    """
    kwargs = connect_kwargs(params, application_name=application_name, settings=settings)
    if connect_function is None:
        connect_function = driver_connect()
    try:
        connection = connect_function(**kwargs)
        connection.autocommit = True
    except Exception as exc:  # noqa: BLE001 - every failure to connect becomes one clear message
        raise connect_error(exc, kwargs) from None
    session = Session(connection, target=describe_target(kwargs))
    role = params.get("session_role")
    if role:
        set_session_role(session, role)
    return session


def driver_connect() -> Callable[..., Any]:
    """The installed driver's connect function; a clear error naming the interpreter when there is none."""
    if psycopg2 is not None:
        return psycopg2.connect
    if psycopg is not None:
        return _psycopg3_connect
    raise PgBackupError(
        f"neither psycopg2 nor psycopg (3) is installed for the Python the module runs on ({sys.executable}); "
        "install one there (Debian/Ubuntu: python3-psycopg2 or python3-psycopg, RHEL: python3-psycopg2, or pip install "
        "psycopg2-binary) or point ansible_python_interpreter at a Python that has it"
    )


def _psycopg3_connect(**kwargs: Any) -> Any:
    # ClientCursor binds parameters on this side, as psycopg2 does: a statement with parameters is the same SQL text
    # on the server (utility statements cannot take server-side parameters), and mogrify() gives it for ``queries``.
    return psycopg.connect(**kwargs, cursor_factory=psycopg.ClientCursor)


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (any character allowed; a double quote doubled)."""
    return '"' + str(name).replace('"', '""') + '"'


def set_session_role(session: Session, role: str) -> None:
    """``SET ROLE`` on a new session (community.postgresql's session_role); closes the session when it fails."""
    try:
        session.query(f"SET ROLE {quote_ident(role)}")
    except PgBackupError as exc:
        session.close()
        raise PgBackupError(
            f"connected to {session.target} but cannot switch to session_role {role!r}: {exc.details.get('server_message') or exc.message}; "
            f"login_user must be a member of {role!r} (GRANT {quote_ident(role)} TO <login_user>, with SET on 16 and later)",
            sqlstate=exc.details.get("sqlstate"),
        ) from None


def run_query(session: Session, sql: str, params: Any = None, *, record: bool = True) -> list[dict]:
    """Run one statement; return its rows as dictionaries (an empty list when it returns none).

    The statement, with its parameters inlined, is appended to ``session.queries`` unless
    ``record`` is false (use that when a parameter is secret). A failure raises PgBackupError with
    the server's message and SQLSTATE (also in ``details['sqlstate']``).
    """
    try:
        cursor = session.connection.cursor()
        try:
            sent = _bound_statement(cursor, sql, params) if record else None
            cursor.execute(sql, params)
            if record:
                session.queries.append(_statement_text(cursor, sql, sent))
            if not cursor.description:
                return []
            names = [column[0] for column in cursor.description]
            if len(set(names)) != len(names):
                duplicates = sorted({name for name in names if names.count(name) > 1})
                raise ValueError(f"the query returns more than one column named {', '.join(duplicates)}: give each column its own name with AS")
            return [dict(zip(names, row)) for row in cursor.fetchall()]
        finally:
            cursor.close()
    except Exception as exc:  # noqa: BLE001 - one error type leaves this module
        sqlstate = _sqlstate(exc)
        state = f" (SQLSTATE {sqlstate})" if sqlstate else ""
        message = _server_message(exc, ())
        raise PgBackupError(
            f"query failed on {session.target}: {message}{state}; the query was: {' '.join(sql.split())}",
            sqlstate=sqlstate,
            server_message=message,
        ) from None


def _bound_statement(cursor: Any, sql: str, params: Any) -> Optional[str]:
    """psycopg 3's ClientCursor: the statement with its parameters, from mogrify() before execute() (called after
    it, mogrify() drops the cursor's result). psycopg2 keeps the statement it sent in ``cursor.query`` instead."""
    if params is None or hasattr(cursor, "query") or not hasattr(cursor, "mogrify"):
        return None
    return cursor.mogrify(sql, params)


def _statement_text(cursor: Any, sql: str, sent: Optional[str] = None) -> str:
    text = sent or getattr(cursor, "query", None)  # psycopg2: the statement as sent
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " ".join((text or sql).split())
