"""Method passes: one module per pruning method, found by name through a registry.

Third-party packages add methods through the entry point group ``graphprune.methods``
(``name = "package.module:PassClass"``); the class must subclass :class:`MethodPass`.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from graphprune.errors import GraphPruneError

from .base import MethodPass

_REGISTRY: dict[str, type[MethodPass]] = {}


def register(cls: type[MethodPass]) -> type[MethodPass]:
    """Class decorator: make a pass available under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def _load_entry_points() -> None:
    for ep in entry_points(group="graphprune.methods"):
        if ep.name not in _REGISTRY:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, MethodPass)):
                raise GraphPruneError(f"entry point graphprune.methods:{ep.name} is not a MethodPass subclass")
            _REGISTRY[ep.name] = cls


def get(name: str) -> type[MethodPass]:
    if name not in _REGISTRY:
        _load_entry_points()
    if name not in _REGISTRY:
        raise GraphPruneError(f"unknown pruning method {name!r}; available: {', '.join(names())}")
    return _REGISTRY[name]


def names() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)


from . import dhp, dsa, lwdna, magnitude, nap, uniform  # noqa: E402,F401  (built-in passes register themselves)

__all__ = ["MethodPass", "register", "get", "names"]
