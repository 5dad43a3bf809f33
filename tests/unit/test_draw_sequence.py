"""scripts/draw_sequence.py: the parser (every error names its line), deterministic SVG, and --check."""

from __future__ import annotations

import importlib.util
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("draw_sequence", ROOT / "scripts" / "draw_sequence.py")
draw = importlib.util.module_from_spec(_spec)
sys.modules["draw_sequence"] = draw  # dataclasses look their module up there
_spec.loader.exec_module(draw)

SVG = "{http://www.w3.org/2000/svg}"

GOOD = """\
# a comment
title: Start & stop <in one session>
participant keeper: Backup host\\n(keeper)
participant primary: Primary
participant standby: Standby

section: start
keeper -> primary: pg_backup_start(label, fast)
activate primary
primary --> keeper: start LSN
note keeper: the session stays open
keeper -> standby: replay_wait until the start is replayed and a restartpoint made there
standby -> standby: restartpoint
note keeper, standby: across three lifelines
keeper -> primary: pg_backup_stop()
deactivate primary
"""


def test_parse_reads_every_kind_of_statement():
    diagram = draw.parse(GOOD, "good.seq")
    assert diagram.title == "Start & stop <in one session>"
    assert [p.ident for p in diagram.participants] == ["keeper", "primary", "standby"]
    assert diagram.participants[0].label == "Backup host\\n(keeper)"
    kinds = [type(step).__name__ for step in diagram.steps]
    assert kinds == ["Section", "Message", "Activation", "Message", "Note", "Message", "Message", "Note", "Message", "Activation"]
    reply = diagram.steps[3]
    assert (reply.sender, reply.receiver, reply.reply, reply.line) == ("primary", "keeper", True, 10)
    assert diagram.steps[1].reply is False
    spanning = diagram.steps[7]
    assert (spanning.first, spanning.last) == ("keeper", "standby")


@pytest.mark.parametrize(
    ("source", "line", "words"),
    [
        ("participant a: A\na -> b: hello\n", 2, "unknown participant 'b' (declared so far: a)"),
        ("participant a: A\n\n# c\nparticipant a: again\n", 4, "declared twice (first on line 1)"),
        ("participant a: A\na -> a: x\nparticipant b: B\n", 3, "declared after the first message"),
        ("participant a: A\na => a: x\n", 2, "cannot read 'a => a: x'"),
        ("participant a: A\nnote a, z: x\n", 2, "unknown participant 'z'"),
        ("participant a: A\nactivate a\nactivate a\n", 3, "activate a: it is active since line 2"),
        ("participant a: A\ndeactivate a\n", 2, "deactivate a: it is not active"),
        ("participant a: A\n\nactivate a\na -> a: x\n", 3, "activate a is never deactivated"),
        ("# only a comment\n", 1, "no participants"),
    ],
)
def test_parse_errors_name_the_file_and_line(source, line, words):
    with pytest.raises(draw.ParseError) as caught:
        draw.parse(source, "docs/diagrams/x.seq")
    assert caught.value.line == line
    assert str(caught.value).startswith(f"docs/diagrams/x.seq:{line}: ")
    assert words in str(caught.value)


def test_render_is_deterministic_and_follows_its_source():
    first = draw.render(draw.parse(GOOD))
    assert first == draw.render(draw.parse(GOOD))
    changed = draw.render(draw.parse(GOOD.replace("start LSN", "the start LSN")))
    assert changed != first
    assert "the start LSN" in changed


def test_render_is_well_formed_svg_with_escaped_text():
    root = ET.fromstring(draw.render(draw.parse(GOOD)))  # noqa: S314 - our own output, not untrusted input
    assert root.tag == f"{SVG}svg"
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "Start & stop <in one session>" in texts
    assert "(keeper)" in texts  # \n in a label is a line break
    width, height = float(root.get("width")), float(root.get("height"))
    for element in root.iter():
        for attribute in ("x", "x1", "x2"):
            if element.get(attribute) is not None:
                assert 0 <= float(element.get(attribute)) <= width, (element.tag, element.attrib)
        for attribute in ("y", "y1", "y2"):
            if element.get(attribute) is not None:
                assert 0 <= float(element.get(attribute)) <= height, (element.tag, element.attrib)
    assert len(root.findall(f"{SVG}rect[@class='bar']")) == 1
    assert len(root.findall(f"{SVG}line[@class='reply']")) == 1


def test_lifelines_leave_room_for_the_text_between_them():
    long_text = "a message long enough that two lifelines at their minimum distance could not hold it on a line " * 2
    diagram = draw.parse(f"participant a: A\nparticipant b: B\na -> b: {long_text}\n")
    xs = draw._layout_columns(diagram)
    lines = draw.wrap(long_text, draw.WRAP_MESSAGE)
    assert len(lines) > 2
    assert xs[1] - xs[0] >= max(draw.text_width(t) for t in lines)


def _run(argv, capsys):
    code = draw.main(argv)
    return code, capsys.readouterr().err


def test_check_names_a_stale_or_missing_svg_and_write_fixes_it(tmp_path, capsys):
    source, target = tmp_path / "demo.seq", tmp_path / "demo.svg"
    source.write_text(GOOD)
    code, err = _run(["--check", str(source), "-o", str(target)], capsys)
    assert code == 1 and f"{target} is missing" in err
    assert draw.main([str(source), "-o", str(target)]) == 0
    assert _run(["--check", str(source), "-o", str(target)], capsys)[0] == 0
    source.write_text(GOOD.replace("pg_backup_stop()", "pg_backup_stop(true)"))
    code, err = _run(["--check", str(source), "-o", str(target)], capsys)
    assert code == 1 and f"{target} is stale" in err


def test_a_source_error_fails_with_its_line(tmp_path, capsys):
    source = tmp_path / "bad.seq"
    source.write_text("participant a: A\na -> nobody: hi\n")
    code, err = _run([str(source), "-o", str(tmp_path / "bad.svg")], capsys)
    assert code == 2
    assert re.search(r"bad\.seq:2: unknown participant 'nobody'", err)
    assert not (tmp_path / "bad.svg").exists()


def test_checked_in_images_are_current(capsys):
    sources = sorted((ROOT / "docs" / "diagrams").glob("*.seq"))
    assert sources, "docs/diagrams has no .seq sources"
    code, err = _run(["--check"], capsys)
    assert code == 0, err
