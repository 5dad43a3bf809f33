"""Connection options and connecting: the argument spec, libpq keywords, and no password in any message."""

from __future__ import annotations

import socket
import struct
import threading
import traceback
from pathlib import Path
from urllib.parse import quote

import psycopg
import psycopg2
import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.pgbackup.lowlevel.plugins.doc_fragments.connection import ModuleDocFragment
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import connection as conn_mod
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.connection import (
    CONNECTION_OPTIONS,
    MASK,
    Session,
    connect,
    connect_kwargs,
    connection_argument_spec,
    describe_target,
    run_query,
    scrub,
    with_connection_options,
)
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError

APP = "pgbackup.lowlevel/test"
NASTY_PASSWORDS = [
    "s3cr3t-Pa55",
    "with space and 'quote' and \"dq\"",
    "back\\slash\\'mix",
    "pass=word;host=evil port=1",
    "p@ss:w/rd?#%&+",
    "{{ not_jinja }}$HOME`id`",
    "pässwörd-€-ключ",
]


def _params(**overrides) -> dict:
    params = {name: None for name in CONNECTION_OPTIONS}
    params.update(login_port=5432, login_user="postgres", connect_params={})
    params.update(overrides)
    return params


def _assert_clean(text: str, password: str) -> None:
    assert password not in text
    for form in (quote(password, safe=""), password.replace("\\", "\\\\").replace("'", "\\'")):
        assert form not in text


# --- the argument spec -------------------------------------------------------------------------------


def test_argument_spec_is_fresh_and_complete():
    first, second = connection_argument_spec(), connection_argument_spec()
    assert first == second and first is not second
    first["login_host"]["type"] = "int"
    assert connection_argument_spec()["login_host"]["type"] == "str"
    assert tuple(first) == CONNECTION_OPTIONS
    assert second["login_password"]["no_log"] is True
    assert second["login_port"]["default"] == 5432
    assert second["login_user"]["default"] == "postgres"


def test_doc_fragment_matches_the_argument_spec():
    documented = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"]
    spec = connection_argument_spec()
    assert set(documented) == set(spec)
    for name, option in spec.items():
        doc = documented[name]
        assert doc["type"] == option["type"], name
        assert doc.get("default") == option.get("default"), name
        assert doc.get("choices") == option.get("choices"), name
        assert bool(doc.get("no_log")) is False  # no_log is code, not documentation
        env = conn_mod.ENV_FALLBACKS.get(name)
        if env:
            assert f"E({env})" in " ".join(doc["description"]), f"{name} must document its fallback {env}"


def test_environment_fallbacks_fill_unset_options_and_mask_the_password(monkeypatch):
    monkeypatch.setenv("PGHOST", "db.example.com")
    monkeypatch.setenv("PGPORT", "6543")
    monkeypatch.setenv("PGUSER", "backup")
    monkeypatch.setenv("PGPASSWORD", "from-env")
    monkeypatch.setenv("PGDATABASE", "app")
    result = ArgumentSpecValidator(connection_argument_spec()).validate({"login_user": "explicit"})
    assert not result.error_messages
    params = result.validated_parameters
    assert params["login_host"] == "db.example.com"
    assert params["login_port"] == 6543
    assert params["login_user"] == "explicit"  # an explicit option wins over the environment
    assert params["login_password"] == "from-env"
    assert params["login_db"] == "app"
    assert "from-env" in result._no_log_values  # ansible masks it wherever it would be printed


def test_defaults_without_environment(monkeypatch):
    for name in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"):
        monkeypatch.delenv(name, raising=False)
    params = ArgumentSpecValidator(connection_argument_spec()).validate({}).validated_parameters
    assert params["login_port"] == 5432 and params["login_user"] == "postgres"
    assert params["login_host"] is None and params["login_password"] is None
    assert params["connect_params"] == {}


def test_with_connection_options_merges_and_refuses_clashes():
    merged = with_connection_options({"data_dir": {"type": "path"}})
    assert set(merged) == set(CONNECTION_OPTIONS) | {"data_dir"}
    with pytest.raises(ValueError, match="login_port"):
        with_connection_options({"login_port": {"type": "int"}})


# --- libpq keywords ----------------------------------------------------------------------------------


def test_keywords_from_options():
    kwargs = connect_kwargs(_params(login_host="db1", login_password="pw", login_db="app", ssl_mode="verify-full", ca_cert="/ca.pem"), application_name=APP)
    assert kwargs == {
        "host": "db1",
        "port": 5432,
        "user": "postgres",
        "dbname": "app",
        "sslmode": "verify-full",
        "sslrootcert": "/ca.pem",
        "password": "pw",
        "connect_timeout": 10,
        "application_name": APP,
        "options": "-c statement_timeout=0",
    }


def test_unset_options_are_left_to_libpq():
    kwargs = connect_kwargs(_params(login_password=""), application_name=APP)
    assert set(kwargs) == {"port", "user", "connect_timeout", "application_name", "options"}


def test_unix_socket_wins_over_host():
    assert connect_kwargs(_params(login_host="db1", login_unix_socket="/run/pg"), application_name=APP)["host"] == "/run/pg"


def test_connect_params_pass_through_and_may_override_the_timeout():
    kwargs = connect_kwargs(_params(connect_params={"connect_timeout": 3, "keepalives": True, "target_session_attrs": "read-write"}), application_name=APP)
    assert kwargs["connect_timeout"] == "3" and kwargs["keepalives"] == "1" and kwargs["target_session_attrs"] == "read-write"


@pytest.mark.parametrize("keyword", ["password", "PASSWORD", "application_name", "options", "host", "port", "user", "dbname", "sslmode", "replication"])
def test_connect_params_refuse_keywords_we_own(keyword):
    with pytest.raises(PgBackupError, match=f"connect_params may not set '{keyword}': use ") as caught:
        connect_kwargs(_params(connect_params={keyword: "secret-value"}), application_name=APP)
    assert "secret-value" not in str(caught.value)


def test_connect_params_must_be_a_dict():
    with pytest.raises(PgBackupError, match="dictionary"):
        connect_kwargs(_params(connect_params="sslmode=disable"), application_name=APP)


def test_session_settings_are_escaped_into_options():
    kwargs = connect_kwargs(_params(), application_name=APP, settings={"idle_session_timeout": 0, "search_path": "a b\\c"})
    assert kwargs["options"] == "-c statement_timeout=0 -c idle_session_timeout=0 -c search_path=a\\ b\\\\c"


def test_target_description_never_has_the_password():
    kwargs = connect_kwargs(_params(login_host="db1", login_password="hunter2", login_db="app"), application_name=APP)
    assert describe_target(kwargs) == "host=db1, port=5432, user=postgres, database=app"
    assert "socket directory=/run/pg" in describe_target({"host": "/run/pg"})
    assert "libpq default Unix socket" in describe_target({})


# --- scrubbing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("password", NASTY_PASSWORDS)
def test_scrub_masks_every_spelling_of_the_password(password):
    dsn = psycopg2.extensions.make_dsn(host="h", password=password)
    text = f"raw {password} | dsn {dsn} | uri postgresql://u:{quote(password, safe='')}@h/db | end"
    cleaned = scrub(text, (password,))
    _assert_clean(cleaned, password)
    assert cleaned.startswith("raw ") and cleaned.endswith(" end")


def test_scrub_masks_assignments_of_unknown_passwords():
    text = "invalid dsn: password=abc host=x, password = 'q\\'uoted' and postgres://me:pw@db/x"
    cleaned = scrub(text)
    assert "abc" not in cleaned and "uoted" not in cleaned and ":pw@" not in cleaned
    assert cleaned.count(MASK) == 3


# --- connecting --------------------------------------------------------------------------------------


def _fail_with(message: str, *, pgcode=None, exc_type=psycopg2.OperationalError):
    def fake_connect(**kwargs):
        error = exc_type(message.format(**kwargs, dsn=psycopg2.extensions.make_dsn(**kwargs)))
        if pgcode:
            try:
                error.pgcode = pgcode
            except AttributeError:
                pass
        raise error

    return fake_connect


@pytest.mark.parametrize("password", NASTY_PASSWORDS)
def test_an_error_echoing_the_dsn_and_password_is_scrubbed(password):
    echo = _fail_with('FATAL:  password authentication failed for user "{user}" using "{password}" ({dsn})')
    with pytest.raises(PgBackupError) as caught:
        connect(_params(login_host="db1", login_password=password, login_db="app"), application_name=APP, connect_function=echo)
    error = caught.value
    everything = "\n".join([str(error), repr(error), repr(error.details), "".join(traceback.format_exception(error))])
    _assert_clean(everything, password)
    assert error.__cause__ is None and error.__suppress_context__
    assert "host=db1, port=5432, user=postgres, database=app" in str(error)
    assert "check login_password" in str(error)


@pytest.mark.parametrize(
    ("message", "hint"),
    [
        ('FATAL:  no pg_hba.conf entry for host "10.0.0.9", user "x", database "y", no encryption', "pg_hba.conf"),
        ("fe_sendauth: no password supplied", "set login_password"),
        ('FATAL:  role "nobody" does not exist', "check login_user"),
        ('FATAL:  database "nope" does not exist', "check login_db"),
        ('could not translate host name "nope.invalid" to address: Name or service not known', "does not resolve"),
        ('connection to server at "10.0.0.1", port 5432 failed: timeout expired', "nothing answered in time"),
        ('connection to server at "127.0.0.1", port 1 failed: Connection refused', "the server runs"),
        ('connection to server on socket "/tmp/.s.PGSQL.1" failed: No such file or directory', "name its socket"),
        ("FATAL:  the database system is starting up", "retry"),
        ("FATAL:  sorry, too many clients already", "check the connection options"),
        ('FATAL:  Peer authentication failed for user "postgres"', "OS user"),
        ('invalid dsn: invalid connection option "bogus"', "remove the unknown keyword"),
    ],
)
def test_connection_failures_say_what_to_do(message, hint):
    with pytest.raises(PgBackupError) as caught:
        connect(_params(login_host="db1"), application_name=APP, connect_function=_fail_with(message))
    assert hint in str(caught.value)
    assert str(caught.value).startswith("cannot connect to PostgreSQL at host=db1, port=5432, user=postgres, database=postgres: ")


def test_sqlstate_is_reported_when_the_error_has_one():
    class Coded(Exception):
        pgcode = "28P01"

    def fake_connect(**kwargs):
        raise Coded('FATAL:  password authentication failed for user "postgres"')

    with pytest.raises(PgBackupError) as caught:
        connect(_params(login_password="pw"), application_name=APP, connect_function=fake_connect)
    assert "(SQLSTATE 28P01)" in str(caught.value) and caught.value.details["sqlstate"] == "28P01"


@pytest.mark.parametrize("password", NASTY_PASSWORDS)
def test_real_libpq_refused_connection_with_a_nasty_password(password):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(PgBackupError) as caught:
        connect(_params(login_host="127.0.0.1", login_port=port, login_password=password), application_name=APP)
    _assert_clean(str(caught.value), password)
    assert "Connection refused" in str(caught.value) and "the server runs" in str(caught.value)


def test_real_libpq_unknown_host_and_unknown_keyword():
    with pytest.raises(PgBackupError, match="does not resolve"):
        connect(_params(login_host="nonexistent.invalid", login_password="pw"), application_name=APP)
    with pytest.raises(PgBackupError, match='invalid connection option "bogus"') as caught:
        connect(_params(login_host="127.0.0.1", login_password="pw-XYZ", connect_params={"bogus": "1"}), application_name=APP)
    assert "pw-XYZ" not in str(caught.value)


class _EchoServer:
    """Speaks just enough of the PostgreSQL protocol to ask for a cleartext password and echo it back in an error."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        client, _addr = self.sock.accept()
        with client:
            while True:  # SSL/GSS encryption requests are declined with 'N'; then comes the startup packet
                length, code = struct.unpack("!II", self._read(client, 8))
                if code in (80877103, 80877104):
                    client.sendall(b"N")
                    continue
                self._read(client, length - 8)
                break
            client.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
            length = struct.unpack("!xI", self._read(client, 5))[0]
            password = self._read(client, length - 4).rstrip(b"\0")
            self.received.append(password)
            uri = quote(password.decode(), safe="").encode()
            message = b'password authentication failed for user "postgres": got "' + password + b'" (password=' + password
            message += b" postgresql://postgres:" + uri + b"@here)"
            fields = b"SFATAL\0VFATAL\0C28P01\0M" + message + b"\0\0"
            client.sendall(b"E" + struct.pack("!I", len(fields) + 4) + fields)

    @staticmethod
    def _read(client: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = client.recv(size - len(data))
            if not chunk:
                raise ConnectionError("client went away")
            data += chunk
        return data

    def close(self) -> None:
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.mark.parametrize("password", NASTY_PASSWORDS)
def test_a_server_echoing_the_password_is_scrubbed(password):
    server = _EchoServer()
    try:
        with pytest.raises(PgBackupError) as caught:
            connect(
                _params(login_host="127.0.0.1", login_port=server.port, login_password=password, connect_params={"gssencmode": "disable"}),
                application_name=APP,
            )
    finally:
        server.close()
    assert server.received == [password.encode()], "the fake server must have seen the real password"
    error = caught.value
    everything = "\n".join([str(error), repr(error), repr(error.details), "".join(traceback.format_exception(error))])
    _assert_clean(everything, password)
    assert "password authentication failed" in str(error) and "check login_password" in str(error)


def test_missing_drivers_say_what_to_install(monkeypatch):
    monkeypatch.setattr(conn_mod, "psycopg2", None)
    monkeypatch.setattr(conn_mod, "psycopg", None)
    with pytest.raises(PgBackupError, match=r"neither psycopg2 nor psycopg \(3\) is installed for the Python .* install one there"):
        connect(_params(), application_name=APP)


def test_psycopg2_is_taken_first_then_psycopg3(monkeypatch):
    assert conn_mod.driver_connect() is psycopg2.connect
    monkeypatch.setattr(conn_mod, "psycopg2", None)
    monkeypatch.setattr(conn_mod, "psycopg", psycopg)
    assert conn_mod.driver_connect() is conn_mod._psycopg3_connect


@pytest.mark.parametrize("password", NASTY_PASSWORDS[:3])
def test_psycopg3_real_libpq_refused_connection(monkeypatch, password):
    monkeypatch.setattr(conn_mod, "psycopg2", None)
    monkeypatch.setattr(conn_mod, "psycopg", psycopg)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(PgBackupError) as caught:
        connect(_params(login_host="127.0.0.1", login_port=port, login_password=password), application_name=APP)
    _assert_clean(str(caught.value), password)
    assert "Connection refused" in str(caught.value) and "the server runs" in str(caught.value)
    with pytest.raises(PgBackupError, match='invalid connection option "bogus"'):
        connect(_params(login_host="127.0.0.1", login_password="pw", connect_params={"bogus": "1"}), application_name=APP)


class _Psycopg3Connection:
    """What Session uses of a psycopg 3 connection: info.server_version, add_notice_handler, ClientCursor.mogrify."""

    class info:  # the attribute psycopg 3 has
        server_version = 170002

    def __init__(self, cursor) -> None:
        self._cursor = cursor
        self.handlers: list = []

    def add_notice_handler(self, handler) -> None:
        self.handlers.append(handler)

    def cursor(self):
        return self._cursor


class _Psycopg3Cursor:
    """As psycopg 3.2's ClientCursor behaves: mogrify() after execute() drops the result ("result not set")."""

    def __init__(self) -> None:
        self.result = None

    @property
    def description(self):
        if self.result is None:
            raise RuntimeError("result not set")
        return [("ok",)]

    def execute(self, sql, params=None) -> None:
        self.result = [(1,)]

    def fetchall(self):
        return self.result

    def mogrify(self, sql, params):
        self.result = None
        return sql % tuple(f"'{p}'" for p in params)

    def close(self) -> None:
        pass


class _Diagnostic:
    severity, message_primary = "NOTICE", "all required WAL segments have been archived"


def test_session_on_psycopg3_reads_version_notices_and_statements():
    connection = _Psycopg3Connection(_Psycopg3Cursor())
    session = Session(connection, target="host=db1")
    assert session.server_version_num == 170002
    (handler,) = connection.handlers
    handler(_Diagnostic())
    assert session.notices == ["NOTICE:  all required WAL segments have been archived"]  # as psycopg2 words it
    session.clear_notices()
    assert session.notices == []
    assert session.query("SELECT pg_backup_start(%s, %s)", ("b1", True)) == [{"ok": 1}]  # the result survives mogrify
    assert session.queries == ["SELECT pg_backup_start('b1', 'True')"]  # the statement with its parameters, as sent


def test_psycopg3_errors_give_their_sqlstate():
    class Denied(Exception):
        sqlstate = "42501"

    assert conn_mod._sqlstate(Denied("permission denied")) == "42501"
    assert conn_mod._sqlstate(Exception("no state")) is None


# --- queries -----------------------------------------------------------------------------------------


class _Cursor:
    def __init__(self, rows, description, error=None) -> None:
        self.rows, self.description, self.error, self.query = rows, description, error, None
        self.closed = False

    def execute(self, sql, params=None) -> None:
        if self.error:
            raise self.error
        self.query = (sql % tuple(repr(p) for p in params) if params else sql).encode()

    def fetchall(self):
        return self.rows

    def close(self) -> None:
        self.closed = True


class _Connection:
    def __init__(self, cursor) -> None:
        self._cursor = cursor
        self.closed = False

    def cursor(self):
        return self._cursor

    def close(self) -> None:
        raise RuntimeError("already broken")


def test_run_query_returns_dicts_and_records_the_statement():
    cursor = _Cursor([(1, "a"), (2, "b")], [("n",), ("s",)])
    session = Session(_Connection(cursor), target="host=db1")
    assert run_query(session, "SELECT n, s FROM t WHERE n > %s", (0,)) == [{"n": 1, "s": "a"}, {"n": 2, "s": "b"}]
    assert session.queries == ["SELECT n, s FROM t WHERE n > 0"]
    assert cursor.closed
    assert session.query("SET x = %s", ("secret",), record=False) == [{"n": 1, "s": "a"}, {"n": 2, "s": "b"}]
    assert session.queries == ["SELECT n, s FROM t WHERE n > 0"]


def test_run_query_refuses_columns_with_the_same_name():
    session = Session(_Connection(_Cursor([(1, 2)], [("current_setting",), ("current_setting",)])), target="host=db1")
    with pytest.raises(PgBackupError, match="more than one column named current_setting: give each column its own name with AS"):
        run_query(session, "SELECT current_setting('a'), current_setting('b')")


def test_run_query_without_result_rows():
    session = Session(_Connection(_Cursor([], None)), target="host=db1")
    assert run_query(session, "CHECKPOINT") == []
    assert session.queries == ["CHECKPOINT"]


def test_run_query_failure_carries_the_sqlstate():
    error = psycopg2.errors.InsufficientPrivilege if hasattr(psycopg2, "errors") else Exception

    class Denied(error):
        pgcode = "42501"
        pgerror = "ERROR:  permission denied for function pg_control_system\n"

    session = Session(_Connection(_Cursor([], None, error=Denied())), target="host=db1, port=5432")
    with pytest.raises(PgBackupError) as caught:
        run_query(session, "SELECT * FROM pg_control_system()")
    assert caught.value.details["sqlstate"] == "42501"
    assert caught.value.details["server_message"] == "ERROR: permission denied for function pg_control_system"
    assert str(caught.value) == (
        "query failed on host=db1, port=5432: ERROR: permission denied for function pg_control_system (SQLSTATE 42501); "
        "the query was: SELECT * FROM pg_control_system()"
    )
    assert session.queries == []


def test_session_close_swallows_a_broken_connection():
    with Session(_Connection(_Cursor([], None)), target="x") as session:
        assert session.target == "x"


def test_this_file_is_where_the_argspec_lives():
    source = Path(conn_mod.__file__).read_text()
    assert source.count("from ansible") == 1, "only connection_argument_spec() may import Ansible"


def test_client_certificate_options():
    kwargs = connect_kwargs(_params(login_host="db1", ssl_mode="verify-full", ssl_cert="/c/client.crt", ssl_key="/c/client.key"), application_name=APP)
    assert kwargs["sslcert"] == "/c/client.crt" and kwargs["sslkey"] == "/c/client.key" and kwargs["sslmode"] == "verify-full"
    for keyword, option in (("sslcert", "ssl_cert"), ("sslkey", "ssl_key")):
        with pytest.raises(PgBackupError, match=f"may not set '{keyword}': use {option}"):
            connect_kwargs(_params(connect_params={keyword: "/x"}), application_name=APP)


# --- community.postgresql's aliases and session_role ----------------------------------------------------


def test_community_postgresql_aliases_map_to_the_login_options(monkeypatch):
    for name in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"):
        monkeypatch.delenv(name, raising=False)
    given = {"host": "db1", "port": "6543", "login": "backup", "unix_socket": "/run/pg", "db": "app", "ssl_rootcert": "/ca.pem"}
    result = ArgumentSpecValidator(connection_argument_spec()).validate(given)
    assert not result.error_messages
    params = result.validated_parameters
    assert (params["login_host"], params["login_port"], params["login_user"]) == ("db1", 6543, "backup")
    assert (params["login_unix_socket"], params["login_db"], params["ca_cert"]) == ("/run/pg", "app", "/ca.pem")
    kwargs = connect_kwargs(params, application_name=APP)
    assert (kwargs["host"], kwargs["port"], kwargs["user"], kwargs["dbname"], kwargs["sslrootcert"]) == ("/run/pg", 6543, "backup", "app", "/ca.pem")
    database = ArgumentSpecValidator(connection_argument_spec()).validate({"database": "other"}).validated_parameters
    assert database["login_db"] == "other"


def test_the_aliases_are_community_postgresqls_and_documented():
    spec = connection_argument_spec()
    aliases = {name: option.get("aliases") for name, option in spec.items() if option.get("aliases")}
    assert aliases == {
        "login_host": ["host"],
        "login_port": ["port"],
        "login_user": ["login"],
        "login_unix_socket": ["unix_socket"],
        "login_db": ["db", "database"],
        "ca_cert": ["ssl_rootcert"],
    }
    documented = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"]
    assert {name: doc.get("aliases") for name, doc in documented.items() if doc.get("aliases")} == aliases


@pytest.mark.parametrize(
    ("module_spec", "clash"),
    [
        ({"port": {"type": "int"}}, "'port'"),  # a module option named like an alias
        ({"database": {"type": "str"}}, "'database'"),
        ({"target_db": {"type": "str", "aliases": ["db"]}}, "'db'"),  # a module alias named like an alias
        ({"socket": {"type": "path", "aliases": ["login_unix_socket"]}}, "'login_unix_socket'"),  # ... or like a connection option
    ],
)
def test_with_connection_options_refuses_a_clash_with_an_alias(module_spec, clash):
    with pytest.raises(ValueError, match=f"its alias {clash}\\) clashes with the connection option"):
        with_connection_options(module_spec)


def test_no_module_clashes_with_the_connection_options_or_their_aliases():
    # each module that connects documents its own options next to the fragment's; none may take a connection name
    import importlib

    taken = {alias for name, option in connection_argument_spec().items() for alias in [name, *option.get("aliases", ())]}
    connecting = []
    for path in sorted((Path(conn_mod.__file__).parent.parent / "modules").glob("*.py")):
        module = importlib.import_module(f"ansible_collections.pgbackup.lowlevel.plugins.modules.{path.stem}")
        doc = yaml.safe_load(module.DOCUMENTATION)
        if "pgbackup.lowlevel.connection" not in doc.get("extends_documentation_fragment", []):
            continue
        connecting.append(path.stem)
        names = {alias for name, option in (doc.get("options") or {}).items() for alias in [name, *(option.get("aliases") or [])]}
        assert not names & taken, path.stem
        if hasattr(module, "ARGS"):
            with_connection_options(module.ARGS)  # raises on a clash
    assert connecting == ["backup_start", "cluster_info", "replay_wait", "wal_collect", "wal_retain"]


class _RoleConnection:
    """A connection whose SET ROLE fails when the role is not in ``grantable``."""

    def __init__(self, grantable) -> None:
        self.grantable, self.statements, self.closed = grantable, [], False

    def cursor(self):
        return _RoleCursor(self)

    def close(self) -> None:
        self.closed = True


class _RoleCursor(_Cursor):
    def __init__(self, connection) -> None:
        super().__init__([], None)
        self.connection = connection

    def execute(self, sql, params=None) -> None:
        self.connection.statements.append(sql)
        if sql.startswith("SET ROLE") and sql not in {f"SET ROLE {conn_mod.quote_ident(r)}" for r in self.connection.grantable}:

            class Denied(Exception):
                pgcode = "42501"
                pgerror = 'ERROR:  permission denied to set role "x"\n'

            raise Denied()
        super().execute(sql, params)


def test_session_role_is_set_after_connecting_and_recorded():
    connection = _RoleConnection({'pg "backup"'})
    session = connect(_params(login_host="db1", session_role='pg "backup"'), application_name=APP, connect_function=lambda **kw: connection)
    assert connection.statements == ['SET ROLE "pg ""backup"""']  # quoted as an identifier: no injection through the name
    assert session.queries == ['SET ROLE "pg ""backup"""']
    without = _RoleConnection(set())
    connect(_params(login_host="db1"), application_name=APP, connect_function=lambda **kw: without)
    assert without.statements == []


def test_session_role_that_cannot_be_set_fails_naming_both_roles_and_closes():
    connection = _RoleConnection(set())
    with pytest.raises(PgBackupError) as caught:
        connect(_params(login_host="db1", login_user="backup", session_role="monitor"), application_name=APP, connect_function=lambda **kw: connection)
    message = str(caught.value)
    assert message.startswith("connected to host=db1, port=5432, user=backup, database=backup but cannot switch to session_role 'monitor'")
    assert "login_user must be a member of 'monitor'" in message and caught.value.details["sqlstate"] == "42501"
    assert connection.closed


def test_an_sslpassword_in_connect_params_is_a_secret_and_masked_where_libpq_echoes_it():
    # docs: "A sslpassword given here is kept out of output and messages like login_password"
    params = _params(login_password="pw-1", connect_params={"sslpassword": "key-pass-2", "sslcrl": "/x.crl", "connect_timeout": 1})
    assert conn_mod.connection_secrets(params) == {"pw-1", "key-pass-2"}, "the module's no_log_values get both, nothing else"
    kwargs = connect_kwargs(params, application_name=APP)
    assert kwargs["sslpassword"] == "key-pass-2"
    echoed = RuntimeError("could not load private key file: bad decrypt (sslpassword=key-pass-2) for key-pass-2")
    message = conn_mod.connect_error(echoed, kwargs).message
    assert "key-pass-2" not in message and conn_mod.MASK in message
