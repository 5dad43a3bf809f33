"""stream_transport: the work splitting (pieces of big files, last piece to the end, big files first), the cipher
choice, and the framing spoken by the real sender program (run here with python3 -c, as ssh runs it on the source):
ranges, a whole file, a vanished file, a read past the end of a shrunk file, an odd name, an error, the end; and
check_transport's refusals (delta, a copy on one host, max_rate, an unknown transport)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import copy_source, rsync_transport
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import stream_transport as st
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_engine import Progress, Source, check_transport
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError

MIB = 1 << 20


def test_pieces_cover_the_file_and_the_last_reads_to_the_end():
    assert st.pieces(0, 8) == [(0, -1)]
    assert st.pieces(8, 8) == [(0, -1)]
    assert st.pieces(9, 8) == [(0, 8), (8, -1)]
    assert st.pieces(24, 8) == [(0, 8), (8, 8), (16, -1)]
    assert st.pieces(25, 8) == [(0, 8), (8, 8), (16, 8), (24, -1)]


def test_work_items_big_files_first_largest_first_then_listing_order():
    files = [("a", "A", 3, 0o600), ("big", "BIG", 20, 0o600), ("b", "B", 0, 0o600), ("mid", "MID", 9, 0o600)]
    items = st.work_items(files, piece=8)
    assert [(i[0], i[2], i[3]) for i in items] == [
        ("big", 0, 8), ("big", 8, 8), ("big", 16, -1), ("mid", 0, 8), ("mid", 8, -1), ("a", 0, -1), ("b", 0, -1)
    ]  # fmt: skip


def test_cipher_offered_unless_the_user_chose(monkeypatch):
    monkeypatch.setattr(copy_source, "has_aes_instructions", lambda: True)
    argv = st.ssh_command(copy_source.Source("/d", "db2").ssh_argv(), "db2")
    assert argv[argv.index("-c") + 1] == copy_source.FAST_CIPHERS
    assert copy_source.FAST_CIPHERS.startswith("aes128-gcm@openssh.com,")
    assert argv[-3:-1] == ["db2", "--"] and argv[-1].startswith("python3 -c ")
    rsync = rsync_transport.rsync_argv(copy_source.Source("/d", "db2"), "/d", "/x", "/l", False)
    assert "-c " + copy_source.FAST_CIPHERS in rsync[rsync.index("-e") + 1]  # rsync's ssh gets it as well
    for own in (["-c", "aes256-ctr"], ["-o", "Ciphers=aes256-ctr"], ["-oCiphers=aes256-ctr"], ["-caes256-ctr"]):
        argv = copy_source.Source("/d", "db2", ssh_options=tuple(own)).ssh_argv()
        assert argv.count("-c") == own.count("-c") and "aes128-gcm" not in " ".join(argv)


def test_no_cipher_preference_without_aes_instructions(monkeypatch, tmp_path):
    check = copy_source.has_aes_instructions.__wrapped__  # uncached: it reads the file it is given
    monkeypatch.setattr(copy_source, "has_aes_instructions", lambda: False)
    assert "-c" not in copy_source.Source("/d", "db2").ssh_argv()
    x86, arm, none = tmp_path / "x86", tmp_path / "arm", tmp_path / "none"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse2 aes avx\n")
    arm.write_text("Features\t: fp asimd aes pmull sha1\n")
    none.write_text("flags\t\t: fpu sse2 avx vaes_like\n")
    assert check(str(x86)) and check(str(arm))
    assert not check(str(none)) and not check(str(tmp_path / "absent"))


def _read(f, n):
    data = f.read(n)
    assert len(data) == n, "the sender's answer ended early"
    return data


def _answer(f):
    head = json.loads(_read(f, st._LEN.unpack(_read(f, 4))[0]))
    body = b""
    if head["s"] == "ok":
        while True:
            (k,) = st._LEN.unpack(_read(f, 4))
            if not k:
                break
            body += _read(f, k)
    return head, body


def test_sender_framing(tmp_path):
    data = os.urandom(3 * MIB + 123)
    src = tmp_path / "seg"
    src.write_bytes(data)
    odd = os.path.join(os.fsencode(tmp_path), b"latin1-\xe9 new\nline")
    with open(odd, "wb") as f:
        f.write(b"odd")
    proc = subprocess.Popen([sys.executable, "-c", st.SENDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    requests = [
        (str(src), 0, MIB),
        (str(src), MIB, 2 * MIB),
        (str(src), 3 * MIB, -1),
        (str(src), 0, -1),
        (str(tmp_path / "gone"), 0, -1),
        (str(src), len(data) + 10, 100),  # past the end (the file shrank since it was listed)
        (os.fsdecode(odd), 0, -1),
        (str(tmp_path), 0, -1),  # a directory: an error, named
    ]
    proc.stdin.write(b"".join(st.encode_request(*r) for r in requests) + st._LEN.pack(0))
    proc.stdin.close()
    answers = [_answer(proc.stdout) for _r in requests]
    assert proc.stdout.read() == b"" and proc.wait() == 0
    mtime = os.stat(src).st_mtime_ns
    assert answers[0] == ({"s": "ok", "m": mtime}, data[:MIB])
    assert answers[1][1] == data[MIB : 3 * MIB]
    assert answers[2][1] == data[3 * MIB :]
    assert answers[3][1] == data
    assert answers[4] == ({"s": "vanished"}, b"")
    assert answers[5] == ({"s": "ok", "m": mtime}, b"")
    assert answers[6][1] == b"odd"
    assert answers[7][0]["s"] == "error" and answers[7][0]["e"] == "not a regular file"


def test_sender_exits_nonzero_when_the_receiver_goes_away_mid_request():
    proc = subprocess.run([sys.executable, "-c", st.SENDER], input=st._LEN.pack(50) + b"{", capture_output=True, check=False)
    assert proc.returncode == 3 and proc.stdout == b""


def test_stream_is_refused_where_it_cannot_do_what_was_asked():
    remote, local = Source("/srv/pg", host="db2"), Source("/srv/pg")
    check_transport(remote, "stream", False, 0)
    check_transport(local, "rsync", True, 1 << 20)
    refusals = {
        "transport stream makes full copies only: delta copies go through rsync (transport: rsync)": (remote, "stream", True, 0),
        "transport stream copies from another host (source_host); a copy on one host is made in-process": (local, "stream", False, 0),
        "transport stream has no bandwidth limit: max_rate needs transport rsync (or max_rate 0)": (remote, "stream", False, 1 << 20),
        "transport must be rsync or stream, not 'scp'": (remote, "scp", False, 0),
    }
    for message, args in refusals.items():
        with pytest.raises(PgBackupError) as err:
            check_transport(*args)
        assert err.value.message == message


def test_a_refused_ssh_login_is_named_as_such(tmp_path):
    """Real ssh to a port nothing listens on: the message is copy_engine's ssh failure, with the hint, not a cut stream."""
    source = Source("/srv/pg", host="127.0.0.1", port=1, ssh_options=("-o", "ConnectTimeout=5", "-o", "StrictHostKeyChecking=no"))
    rx = st.Receiver(source, Progress(None, 0, 0))
    rx.add("/srv/pg/PG_VERSION", str(tmp_path / "PG_VERSION"), 3, 0o600)
    with pytest.raises(PgBackupError) as err:
        rx.run(1)
    assert err.value.message.startswith("stream transport: ssh from this host"), err.value.message
    assert "to 127.0.0.1 port 1 failed" in err.value.message and "check that sshd listens on 127.0.0.1 port 1" in err.value.message
    assert not (tmp_path / "PG_VERSION").exists()
