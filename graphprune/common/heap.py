"""Giving the memory that freed tensors leave in the C heap back to the system.

Tracing runs the model's code and builds thousands of small objects and tensors; once they are
freed, glibc keeps most of that memory in its heap, where a model that barely fits (the reason to
prune with ``inplace=True``) needs it. ``malloc_trim`` returns it. Elsewhere (macOS, musl) there
is nothing to call and nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Return the C heap's free memory to the system (glibc), so that the resident set is what is alive."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
