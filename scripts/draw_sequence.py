"""Draw a sequence diagram from a small text source as SVG, with no dependencies and the same bytes every time.

python scripts/draw_sequence.py                  # every docs/diagrams/*.seq -> docs/images/<name>.svg
python scripts/draw_sequence.py --check          # exit 1 naming each SVG that is missing or differs from its source
python scripts/draw_sequence.py a.seq -o a.svg   # one file

The source, one statement per line ('#' starts a comment line; '\\n' in a text is a line break):

    title: Coordinated standby backup
    participant keeper: Backup host\\n(keeper)      # declared left to right; the id is used below
    section: 1. preflight                          # a band across the diagram
    keeper -> primary: pg_backup_start(label)      # a call (solid arrow); a -> a is a call to itself
    primary --> keeper: start LSN                  # a reply (dashed arrow)
    note primary: held session                     # a note on one lifeline, or
    note keeper, standby: spans two                # across from one lifeline to another
    activate primary / deactivate primary          # a bar on the lifeline (e.g. while in backup mode)
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "docs" / "diagrams"
IMAGES = ROOT / "docs" / "images"

FONT = 13  # px; text widths are estimated from the table below, never measured, so the output is the same everywhere
LINE = 16  # px between two lines of text
WRAP_MESSAGE = 46  # characters per line of a message, a note
WRAP_NOTE = 40
MARGIN = 24
BOX_PAD = 12
HEAD_MIN_WIDTH = 110
MIN_GAP = 150
SELF_LOOP = 28
BAR = 10  # width of an activation bar


class ParseError(ValueError):
    """A problem in a source, with the line it is on."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.line = line


@dataclass(frozen=True)
class Participant:
    ident: str
    label: str


@dataclass(frozen=True)
class Message:
    line: int
    sender: str
    receiver: str
    text: str
    reply: bool


@dataclass(frozen=True)
class Note:
    line: int
    first: str
    last: str
    text: str


@dataclass(frozen=True)
class Section:
    line: int
    text: str


@dataclass(frozen=True)
class Activation:
    line: int
    ident: str
    on: bool


Step = Union[Message, Note, Section, Activation]


@dataclass
class Diagram:
    title: str = ""
    participants: list[Participant] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)


_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_MESSAGE = re.compile(rf"^({_IDENT})\s*(-->|->)\s*({_IDENT})\s*:\s*(.+)$")
_PARTICIPANT = re.compile(rf"^participant\s+({_IDENT})\s*:\s*(.+)$")
_NOTE = re.compile(rf"^note\s+({_IDENT})(?:\s*,\s*({_IDENT}))?\s*:\s*(.+)$")
_ACTIVATION = re.compile(rf"^(activate|deactivate)\s+({_IDENT})$")
_KEYWORD = re.compile(r"^(title|section)\s*:\s*(.+)$")


def parse(text: str, source: str = "<source>") -> Diagram:
    """The diagram a source describes; a ParseError names the first line that is wrong and why."""
    diagram = Diagram()
    ids: dict[str, int] = {}
    active: dict[str, int] = {}

    def known(ident: str, number: int) -> str:
        if ident not in ids:
            declared = ", ".join(ids) or "none yet"
            raise ParseError(
                source, number, f"unknown participant {ident!r} (declared so far: {declared}); declare it with 'participant {ident}: <label>' first"
            )
        return ident

    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if match := _PARTICIPANT.match(line):
            ident, label = match.groups()
            if ident in ids:
                raise ParseError(source, number, f"participant {ident!r} is declared twice (first on line {ids[ident]})")
            if diagram.steps:
                raise ParseError(source, number, f"participant {ident!r} is declared after the first message; declare every participant first")
            ids[ident] = number
            diagram.participants.append(Participant(ident, label.strip()))
        elif match := _MESSAGE.match(line):
            sender, arrow, receiver, message = match.groups()
            diagram.steps.append(Message(number, known(sender, number), known(receiver, number), message.strip(), arrow == "-->"))
        elif match := _NOTE.match(line):
            first, last, note = match.groups()
            diagram.steps.append(Note(number, known(first, number), known(last or first, number), note.strip()))
        elif match := _ACTIVATION.match(line):
            verb, ident = match.groups()
            known(ident, number)
            if (verb == "activate") == (ident in active):
                state = f"active since line {active[ident]}" if ident in active else "not active"
                raise ParseError(source, number, f"{verb} {ident}: it is {state}")
            if verb == "activate":
                active[ident] = number
            else:
                del active[ident]
            diagram.steps.append(Activation(number, ident, verb == "activate"))
        elif match := _KEYWORD.match(line):
            keyword, value = match.groups()
            if keyword == "title":
                diagram.title = value.strip()
            else:
                diagram.steps.append(Section(number, value.strip()))
        else:
            raise ParseError(
                source,
                number,
                f"cannot read {line!r}: expected 'title: ...', 'participant ID: label', 'ID -> ID: text', 'ID --> ID: text', "
                "'note ID[, ID]: text', 'section: text', 'activate ID' or 'deactivate ID'",
            )
    if not diagram.participants:
        raise ParseError(source, 1, "no participants: declare at least one with 'participant ID: label'")
    if active:
        ident, number = next(iter(active.items()))
        raise ParseError(source, number, f"activate {ident} is never deactivated")
    return diagram


# --- layout ------------------------------------------------------------------------------------------------------
_NARROW = set("fijlrt.,:;!|'()[] ")
_WIDE = set("mwMW@%")


def text_width(text: str, bold: bool = False) -> float:
    """An estimate of the rendered width of ``text`` in a sans-serif font of FONT px (a fixed table: deterministic)."""
    width = 0.0
    for char in text:
        if char in _NARROW:
            width += 0.34
        elif char in _WIDE:
            width += 0.92
        elif char.isupper() or char in "_=<>":
            width += 0.72
        else:
            width += 0.61
    return width * FONT * (1.1 if bold else 1.0)


def wrap(text: str, columns: int) -> list[str]:
    lines: list[str] = []
    for part in text.split("\\n"):
        lines += textwrap.wrap(part, columns, break_on_hyphens=False) or [""]
    return lines


def _layout_columns(diagram: Diagram) -> list[float]:
    """x of each lifeline: far enough apart for the header boxes and for every message's text between them."""
    count = len(diagram.participants)
    heads = [_head_width(p) for p in diagram.participants]
    gaps = [max(MIN_GAP, (heads[i] + heads[i + 1]) / 2 + 16) for i in range(count - 1)]
    index = {p.ident: i for i, p in enumerate(diagram.participants)}
    needs: list[tuple[int, int, float]] = []
    for step in diagram.steps:
        if isinstance(step, Message):
            left, right = sorted((index[step.sender], index[step.receiver]))
            width = max(text_width(t) for t in wrap(step.text, WRAP_MESSAGE)) + 24
            if left == right:  # a call to itself: the text stands right of the loop, up to the next lifeline
                right, width = min(left + 1, count - 1), width + SELF_LOOP
            if right > left:
                needs.append((left, right, width))
    for left, right, width in sorted(needs, key=lambda n: n[1] - n[0]):
        short = width - sum(gaps[left:right])
        if short > 0:
            for i in range(left, right):
                gaps[i] += short / (right - left)
    first = MARGIN + max(heads[0] / 2, _note_overhang(diagram, index, 0))
    xs = [first]
    for gap in gaps:
        xs.append(xs[-1] + gap)
    return xs


def _head_width(participant: Participant) -> float:
    return max(HEAD_MIN_WIDTH, max(text_width(t, bold=True) for t in wrap(participant.label, 30)) + 2 * BOX_PAD)


def fit(text: str, span: float, columns: int) -> list[str]:
    """``text`` wrapped at ``columns`` or, where ``span`` px leave room, at more columns (fewer lines)."""
    best = wrap(text, columns)
    for wider in range(columns + 4, 161, 4):
        lines = wrap(text, wider)
        if max(text_width(t) for t in lines) + 24 > span:
            break
        best = lines
    return best


def _note_overhang(diagram: Diagram, index: dict[str, int], column: int) -> float:
    """How far notes on the first or last lifeline alone reach beyond it."""
    widths = [_note_box(step.text)[0] / 2 for step in diagram.steps if isinstance(step, Note) and index[step.first] == index[step.last] == column]
    return max(widths, default=0.0)


def _note_box(text: str) -> tuple[float, list[str]]:
    lines = wrap(text, WRAP_NOTE)
    return max(text_width(t) for t in lines) + 2 * BOX_PAD, lines


class _Svg:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, element: str) -> None:
        self.parts.append(element)

    def text(self, x: float, y: float, lines: list[str], anchor: str = "middle", css: str = "") -> None:
        for i, line in enumerate(lines):
            cls = f' class="{css}"' if css else ""
            self.add(f'<text x="{x:.0f}" y="{y + i * LINE:.0f}" text-anchor="{anchor}"{cls}>{escape(line)}</text>')


STYLE = (
    "text{font-family:'DejaVu Sans',Verdana,Helvetica,Arial,sans-serif;font-size:13px;fill:#1b1f23}"
    ".msg{paint-order:stroke;stroke:#ffffff;stroke-width:4px;stroke-linejoin:round}"
    ".title{font-size:17px;font-weight:bold}.head{font-weight:bold}.section{font-weight:bold;fill:#24476b}"
    ".box{fill:#e8eef6;stroke:#24476b;stroke-width:1.2}.life{stroke:#8a9bb0;stroke-dasharray:4 4}"
    ".call{stroke:#1b1f23;stroke-width:1.3;fill:none}.reply{stroke:#1b1f23;stroke-width:1.1;fill:none;stroke-dasharray:6 4}"
    ".note{fill:#fff7d6;stroke:#c9a227}.band{fill:#eef2f7}.bar{fill:#f4d9a8;stroke:#b7791f}"
)


def render(diagram: Diagram) -> str:
    """The diagram as an SVG document (str); the same diagram always gives the same text."""
    xs = _layout_columns(diagram)
    index = {p.ident: i for i, p in enumerate(diagram.participants)}
    right_edge = xs[-1] + max(_head_width(diagram.participants[-1]) / 2, _note_overhang(diagram, index, len(xs) - 1))
    for step in diagram.steps:  # a call to itself on the last lifeline writes right of it
        if isinstance(step, Message) and step.sender == step.receiver and index[step.sender] == len(xs) - 1:
            right_edge = max(right_edge, xs[-1] + SELF_LOOP + 8 + max(text_width(t) for t in wrap(step.text, WRAP_MESSAGE)))
    width = right_edge + MARGIN
    body = _Svg()
    y = MARGIN
    if diagram.title:
        body.text(MARGIN, y + 14, [diagram.title], anchor="start", css="title")
        y += 36
    head_lines = [wrap(p.label, 30) for p in diagram.participants]
    head_height = max(len(lines) for lines in head_lines) * LINE + 2 * 8
    top = y
    for x, p, lines in zip(xs, diagram.participants, head_lines):
        w = _head_width(p)
        body.add(f'<rect class="box" x="{x - w / 2:.0f}" y="{top:.0f}" width="{w:.0f}" height="{head_height:.0f}" rx="4"/>')
        first = top + (head_height - len(lines) * LINE) / 2 + 12
        body.text(x, first, lines, css="head")
    y = top + head_height + 16
    bands = _Svg()  # under the lifelines and bars
    steps = _Svg()  # over them
    bars: list[str] = []
    opened: dict[str, float] = {}
    for step in diagram.steps:
        if isinstance(step, Section):
            bands.add(f'<rect class="band" x="{MARGIN / 2:.0f}" y="{y + 4:.0f}" width="{width - MARGIN:.0f}" height="22"/>')
            bands.text(MARGIN, y + 20, [step.text], anchor="start", css="section")
            y += 34
        elif isinstance(step, Activation):
            if step.on:
                opened[step.ident] = y - 4
            else:
                x, since = xs[index[step.ident]], opened.pop(step.ident)
                bars.append(f'<rect class="bar" x="{x - BAR / 2:.0f}" y="{since:.0f}" width="{BAR}" height="{y - since + 4:.0f}"/>')
        elif isinstance(step, Note):
            box_width, lines = _note_box(step.text)
            left, right = sorted((xs[index[step.first]], xs[index[step.last]]))
            if right - left + 40 > box_width:  # a note across lifelines uses their whole width
                box_width = right - left + 40
                lines = fit(step.text, box_width, WRAP_NOTE)
            height = len(lines) * LINE + 10
            steps.add(f'<rect class="note" x="{(left + right - box_width) / 2:.0f}" y="{y:.0f}" width="{box_width:.0f}" height="{height:.0f}"/>')
            steps.text((left + right) / 2, y + 17, lines)
            y += height + 12
        else:
            y = _message(steps, step, xs[index[step.sender]], xs[index[step.receiver]], y)
    bottom = y + 8
    for ident in list(opened):  # parse() refuses this; a Diagram built in code may still leave one open
        bars.append(f'<rect class="bar" x="{xs[index[ident]] - BAR / 2:.0f}" y="{opened[ident]:.0f}" width="{BAR}" height="{bottom - opened[ident]:.0f}"/>')
    lifelines = [f'<line class="life" x1="{x:.0f}" y1="{top + head_height:.0f}" x2="{x:.0f}" y2="{bottom:.0f}"/>' for x in xs]
    height = bottom + MARGIN
    marker = (
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="9" markerHeight="9" orient="auto-start-reverse">'
        '<path d="M0,0 L10,5 L0,10 z" fill="#1b1f23"/></marker></defs>'
    )
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'role="img" aria-label="{escape(diagram.title or "sequence diagram", {chr(34): "&quot;"})}">'
    )
    lines = [head, f"<style>{STYLE}</style>", marker, f'<rect x="0" y="0" width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>']
    return "\n".join(lines + body.parts + bands.parts + lifelines + bars + steps.parts + ["</svg>"]) + "\n"


def _message(svg: _Svg, step: Message, x1: float, x2: float, y: float) -> float:
    """Draw one arrow with its text above it; returns the y below it."""
    lines = fit(step.text, abs(x2 - x1), WRAP_MESSAGE)
    css = "reply" if step.reply else "call"
    if x1 == x2:
        lines = wrap(step.text, WRAP_MESSAGE)
        svg.text(x1 + SELF_LOOP + 8, y + 12, lines, anchor="start", css="msg")
        top = y + 4
        bottom = y + max(len(lines) * LINE, 22) + 4
        svg.add(f'<path class="{css}" d="M{x1 + BAR / 2:.0f},{top:.0f} H{x1 + SELF_LOOP:.0f} V{bottom:.0f} H{x1 + BAR / 2:.0f}" marker-end="url(#arrow)"/>')
        return bottom + 14
    text_y = y + 12
    svg.text((x1 + x2) / 2, text_y, lines, css="msg")
    arrow_y = text_y + (len(lines) - 1) * LINE + 8
    direction = 1 if x2 > x1 else -1
    start, end = x1 + direction * BAR / 2, x2 - direction * BAR / 2
    svg.add(f'<line class="{css}" x1="{start:.0f}" y1="{arrow_y:.0f}" x2="{end:.0f}" y2="{arrow_y:.0f}" marker-end="url(#arrow)"/>')
    return arrow_y + 14


# --- command line ------------------------------------------------------------------------------------------------
def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="draw sequence diagrams (.seq) as SVG")
    parser.add_argument("sources", nargs="*", type=Path, help=f"default: every {_relative(SOURCES)}/*.seq")
    parser.add_argument("-o", "--output", type=Path, help="the SVG for a single source (default docs/images/<name>.svg)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if an SVG is missing or stale")
    args = parser.parse_args(argv)
    sources = args.sources or sorted(SOURCES.glob("*.seq"))
    if not sources:
        parser.error(f"no .seq sources in {_relative(SOURCES)}")
    if args.output and len(sources) != 1:
        parser.error("--output needs exactly one source")
    stale = []
    for source in sources:
        target = args.output or IMAGES / f"{source.stem}.svg"
        try:
            svg = render(parse(source.read_text(encoding="utf-8"), _relative(source)))
        except (ParseError, OSError) as exc:
            print(f"draw_sequence: {exc}", file=sys.stderr)
            return 2
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if args.check:
            if current != svg:
                stale.append(f"{_relative(target)} is {'missing' if current is None else 'stale'} (its source is {_relative(source)})")
        elif current != svg:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(svg, encoding="utf-8")
            print(f"wrote {_relative(target)}")
    for line in stale:
        print(f"draw_sequence: {line}; run: python scripts/draw_sequence.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
