"""Where a benchmark's numbers come from: the commit they were measured at."""

from __future__ import annotations

import subprocess
from pathlib import Path


def commit() -> str:
    """The checked-out commit, with ' dirty' where tracked files differ from it."""
    root = Path(__file__).resolve().parent.parent
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                           capture_output=True, text=True).stdout.strip()
    return head + (" dirty" if dirty else "")
