"""Stage 6, the methods: one module per pruning method, found by name through a registry.

Third-party packages add methods through the entry point group ``graphprune.methods``
(``name = "package.module:PassClass"``); the class must subclass :class:`MethodPass`.
"""

from __future__ import annotations

from . import custom, dhp, dsa, flap, hessian, lwdna, magnitude, nap, taylor, uniform  # noqa: F401  (built-in passes register themselves)
from .base import MethodPass, get, names, register

__all__ = ["MethodPass", "register", "get", "names"]
