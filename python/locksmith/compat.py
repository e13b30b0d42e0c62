"""Switching unchanged code to locksmith: ``install("diskcache")`` replaces
diskcache's recipes (``diskcache.Lock``, ``RLock``, ``BoundedSemaphore``,
``Averager``, ``throttle``, ``barrier``, also in ``diskcache.recipes``) with
:mod:`locksmith.diskcache`'s, so that code importing them afterwards gets ours.
``uninstall`` puts the originals back."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["install", "uninstall"]

_RECIPES = ("Lock", "RLock", "BoundedSemaphore", "Averager", "throttle", "barrier")
_saved: dict[str, dict[str, Any]] = {}


def install(seed: str) -> None:
    """Replaces `seed`'s primitives with locksmith's (seeds: ``"diskcache"``)."""
    if seed != "diskcache":
        raise ValueError(f"locksmith.compat knows 'diskcache', not {seed!r}")
    ours = importlib.import_module("locksmith.diskcache")
    for modname in ("diskcache", "diskcache.recipes"):
        module = importlib.import_module(modname)
        saved = _saved.setdefault(modname, {})
        for name in _RECIPES:
            if hasattr(module, name):
                saved.setdefault(name, getattr(module, name))
                setattr(module, name, getattr(ours, name))


def uninstall(seed: str) -> None:
    """Puts back what :func:`install` replaced."""
    if seed != "diskcache":
        raise ValueError(f"locksmith.compat knows 'diskcache', not {seed!r}")
    for modname, saved in _saved.items():
        module = importlib.import_module(modname)
        for name, original in saved.items():
            setattr(module, name, original)
    _saved.clear()
