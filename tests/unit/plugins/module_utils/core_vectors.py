"""Real-cluster test vectors (made by tests/integration/make_vectors.py) for the core library's tests."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

VECTOR_DIR = Path(__file__).resolve().parent / "vectors"
MAJORS = sorted(int(p.name[2:]) for p in VECTOR_DIR.glob("pg*") if (p / "expected.json").exists())


def expected(major: int) -> dict:
    return json.loads((VECTOR_DIR / f"pg{major}" / "expected.json").read_text())


def read(major: int, relative: str) -> bytes:
    with gzip.open(VECTOR_DIR / f"pg{major}" / relative) as handle:
        return handle.read()


def path(major: int, relative: str) -> Path:
    return VECTOR_DIR / f"pg{major}" / relative


def segments(kind: str = "all") -> list[tuple[int, dict]]:
    """(major, segment entry) for every kept segment; kind 'complete' leaves out .partial files."""
    out = []
    for major in MAJORS:
        for seg in expected(major)["segments"]:
            if kind == "complete" and seg.get("partial"):
                continue
            if kind == "partial" and not seg.get("partial"):
                continue
            out.append((major, seg))
    return out


def labels() -> list[tuple[int, dict]]:
    return [(major, label) for major in MAJORS for label in expected(major)["labels"]]


def controls() -> list[tuple[int, dict]]:
    return [(major, control) for major in MAJORS for control in expected(major)["controls"]]


def ids(items: list[tuple[int, dict]], key: str) -> list[str]:
    return [f"pg{major}-{entry[key]}" for major, entry in items]
