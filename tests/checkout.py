"""Importing graphprune from another checkout of this repository (a worktree of an earlier commit).

``PYTHONPATH=/tmp/base`` makes ``import graphprune`` resolve there. Checkouts before the stage
layout kept graphprune.passes and graphprune.models in the top-level folders passes/ and models/,
which an editable install of such a checkout maps wherever PYTHONPATH points, and which one of a
later checkout does not know. :func:`pin_checkout` points them at the checkout's own folders, so
that code measured or snapshotted "before" is that checkout's throughout. Call it before
importing graphprune.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def pin_checkout() -> Path:
    """The checkout ``import graphprune`` resolves to (PYTHONPATH first, else the editable install),
    with graphprune.passes and graphprune.models pinned to its top-level folders where it has them."""
    spec = importlib.util.find_spec("graphprune")
    assert spec is not None and spec.origin is not None, "graphprune is not importable"
    root = Path(spec.origin).resolve().parents[1]
    if not (root / "passes").is_dir():
        return root
    for finder in sys.meta_path:
        mapping = getattr(sys.modules.get(getattr(finder, "__module__", ""), None), "MAPPING", None)
        if isinstance(mapping, dict) and "graphprune" in mapping:
            mapping.update({"graphprune.passes": str(root / "passes"), "graphprune.models": str(root / "models")})
    return root
