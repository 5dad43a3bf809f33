"""Make the collection importable as ansible_collections.pgbackup.lowlevel from this checkout.

The checkout is not under an ``ansible_collections/<ns>/<name>`` path, so we point a symlink at it
from a git-ignored build directory and put that directory first on sys.path.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_COLLECTIONS = ROOT / "build" / "collections"
_LINK = _COLLECTIONS / "ansible_collections" / "pgbackup" / "lowlevel"

if not _LINK.exists():
    _LINK.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(ROOT, _LINK)
    except FileExistsError:
        pass
if str(_COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(_COLLECTIONS))
