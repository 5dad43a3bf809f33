"""docs/procedures.md's Mermaid sequence diagrams: the facts they state match the code, and the two mistakes that
break Mermaid's parser silently in review (a ``;`` or ``#`` in a text, unbalanced activations) are caught here, since
nothing in the lint renders them."""

from __future__ import annotations

import re
from pathlib import Path

from ansible_collections.pgbackup.lowlevel.plugins.modules import backup_manifest

DOC = Path(__file__).resolve().parents[2] / "docs" / "procedures.md"


def _diagrams() -> list[str]:
    return re.findall(r"^```mermaid\n(.*?)^```$", DOC.read_text(), re.S | re.M)


def test_both_procedures_have_a_sequence_diagram():
    titles = [re.search(r"^\s*title (.+)$", d, re.M).group(1) for d in _diagrams()]
    assert titles == ["Coordinated standby backup (standby_backup role)", "Replica clone from a standby (replica_clone role)"]
    assert all(d.startswith("sequenceDiagram\n") for d in _diagrams())


def test_the_manifest_checksum_is_the_modules_default():
    default = backup_manifest.ARGS["checksum_algorithm"]["default"]
    assert default == "SHA256"
    line = next(x for x in _diagrams()[0].splitlines() if "backup_manifest:" in x)
    assert "SHA-256 checksums (the default)" in line and "CRC32C" not in line


def test_no_text_mermaid_would_cut_and_activations_balance():
    for diagram in _diagrams():
        active: dict = {}
        for number, line in enumerate(diagram.splitlines(), 1):
            assert not re.search(r"[;#]", line), f"line {number}: Mermaid ends a statement at ';' and reads '#' as an entity: {line}"
            word = line.split()
            if word and word[0] in ("activate", "deactivate"):
                active[word[1]] = active.get(word[1], 0) + (1 if word[0] == "activate" else -1)
                assert active[word[1]] >= 0, f"line {number}: {word[1]} deactivated while inactive"
        assert not any(active.values()), f"left active: {active}"
