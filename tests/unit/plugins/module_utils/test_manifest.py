from __future__ import annotations

import hashlib
import json
import os

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import copy_state
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.manifest import (
    check_algorithm,
    file_line,
    path_field,
    render,
    walk_copy,
)


def check_manifest_checksum(data: bytes) -> dict:
    assert data.endswith(b"\n")
    body, last = data[:-1].rsplit(b"\n", 1)
    want = json.loads(b"{" + last[:-1] + b"}")["Manifest-Checksum"]
    assert hashlib.sha256(body + b"\n").hexdigest() == want
    return json.loads(data)


@pytest.mark.parametrize("major", [13, 14, 15, 16, 17, 18])
def test_render_versions(major):
    lines = [file_line("PG_VERSION", 3, 0, "SHA256", "ab"), file_line("base/1/1", 8192, 86400, "NONE", None)]
    data = render(major, 7311234567890123456, lines, [(2, 0x3000000, 0x3000100), (1, 0x2000028, 0x3000000)])
    doc = check_manifest_checksum(data)
    assert doc["PostgreSQL-Backup-Manifest-Version"] == (1 if major < 17 else 2)
    assert ("System-Identifier" in doc) == (major >= 17)
    assert next(iter(doc)) == "PostgreSQL-Backup-Manifest-Version"
    assert doc["Files"][0] == {"Path": "PG_VERSION", "Size": 3, "Last-Modified": "1970-01-01 00:00:00 GMT", "Checksum-Algorithm": "SHA256", "Checksum": "ab"}
    assert doc["Files"][1] == {"Path": "base/1/1", "Size": 8192, "Last-Modified": "1970-01-02 00:00:00 GMT"}
    assert doc["WAL-Ranges"][0] == {"Timeline": 2, "Start-LSN": "0/3000000", "End-LSN": "0/3000100"}


def test_exact_layout():
    data = render(15, 1, [file_line("a", 1, 0, "SHA256", "00")], [(1, 1, 2)])
    expected_body = (
        '{ "PostgreSQL-Backup-Manifest-Version": 1,\n"Files": [\n'
        '{ "Path": "a", "Size": 1, "Last-Modified": "1970-01-01 00:00:00 GMT", "Checksum-Algorithm": "SHA256", "Checksum": "00" }\n'
        '],\n"WAL-Ranges": [\n{ "Timeline": 1, "Start-LSN": "0/1", "End-LSN": "0/2" }\n],\n'
    )
    assert data.decode().startswith(expected_body)
    assert data.decode()[len(expected_body) :] == f'"Manifest-Checksum": "{hashlib.sha256(expected_body.encode()).hexdigest()}"}}\n'


def test_paths():
    assert path_field('a "b"\\c\n\t\x01') == '"Path": "a \\"b\\"\\\\c\\n\\t\\u0001"'
    assert path_field("é") == '"Path": "é"'
    assert path_field(os.fsdecode(b"x\xe9")) == '"Encoded-Path": "78e9"'


def test_algorithms():
    assert check_algorithm("sha-256") == "SHA256"
    with pytest.raises(PgBackupError, match="not one of"):
        check_algorithm("md5")


def test_walk_copy_skips_own_files_and_pg_wal(tmp_path):
    (tmp_path / "pg_wal" / "archive_status").mkdir(parents=True)
    (tmp_path / "pg_wal" / "000000010000000000000001").write_bytes(b"w")
    (tmp_path / "backup_manifest").write_bytes(b"m")
    (tmp_path / copy_state.CHECKSUMS_FILE).write_bytes(b"{}")
    (tmp_path / "PG_VERSION").write_bytes(b"15\n")
    (tmp_path / "pg_tblspc").mkdir()
    ts = tmp_path.parent / (tmp_path.name + "-ts")
    (ts / "PG_15_1").mkdir(parents=True)
    (ts / "PG_15_1" / "f").write_bytes(b"f")
    (tmp_path / "pg_tblspc" / "16400").symlink_to(ts)
    assert [r for r, _p, _s in walk_copy(str(tmp_path))] == ["PG_VERSION", "pg_tblspc/16400/PG_15_1/f"]
