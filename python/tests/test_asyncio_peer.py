"""CPython's own asyncio lock tests (``test.test_asyncio.test_locks``, imported from the
interpreter at test time, never copied) aimed at ``locksmith.asyncio``: each class below
derives from CPython's and, for each test, points the name ``asyncio`` in CPython's test
module at a module whose ``Lock``, ``Event``, ``Condition``, ``Semaphore``,
``BoundedSemaphore`` and ``Barrier`` are ours (everything else is asyncio's).

Skipped tests (each reaches into CPython-private state; see ``SKIPS``) are listed below
with their reasons.
"""

from __future__ import annotations

import asyncio
import types
import unittest

import pytest

from locksmith import asyncio as la

peer = pytest.importorskip("test.test_asyncio.test_locks")

# test name -> why it is skipped (CPython-private state only).
SKIPS: dict[str, str] = {}


class _Ours(types.ModuleType):
    """asyncio, except for the primitives, which are locksmith.asyncio's."""

    def __getattr__(self, attr: str) -> object:
        return getattr(asyncio, attr)


_ours = _Ours("asyncio")
for _name in la.__all__:
    setattr(_ours, _name, getattr(la, _name))


class _AimedAtLocksmith:
    def setUp(self) -> None:
        name = self._testMethodName  # type: ignore[attr-defined]
        if name in SKIPS:
            raise unittest.SkipTest(SKIPS[name])
        saved = peer.asyncio
        peer.asyncio = _ours
        self.addCleanup(setattr, peer, "asyncio", saved)  # type: ignore[attr-defined]
        super().setUp()  # type: ignore[misc]


class TestLockPeer(_AimedAtLocksmith, peer.LockTests):
    pass


class TestEventPeer(_AimedAtLocksmith, peer.EventTests):
    pass


class TestConditionPeer(_AimedAtLocksmith, peer.ConditionTests):
    pass


class TestSemaphorePeer(_AimedAtLocksmith, peer.SemaphoreTests):
    pass


if hasattr(peer, "BarrierTests"):

    class TestBarrierPeer(_AimedAtLocksmith, peer.BarrierTests):
        pass


def test_the_peer_module_is_aimed_at_locksmith():
    # Guards the harness itself: CPython's tests name the primitives through the module
    # attribute ``asyncio``, which is what each test above replaces.
    assert peer.asyncio is asyncio
    assert _ours.Lock is la.Lock and _ours.sleep is asyncio.sleep
