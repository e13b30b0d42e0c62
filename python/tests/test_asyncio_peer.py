"""CPython's own asyncio lock tests (``test.test_asyncio.test_locks``, imported from the
interpreter at test time, never copied) aimed at ``locksmith.asyncio``: each class below
derives from CPython's and, for each test, points the name ``asyncio`` in CPython's test
module at a module whose ``Lock``, ``Event``, ``Condition``, ``Semaphore``,
``BoundedSemaphore`` and ``Barrier`` are ours (everything else is asyncio's).

All five classes run against the anonymous objects; ``LockTests``, ``EventTests`` and
``SemaphoreTests`` also run against named objects (each ``asyncio.Lock()``,
``Event()``, ``Semaphore(n)`` or ``BoundedSemaphore(n)`` of a test is one of a new name)
on ``mem:`` and on ``sqlite:``, a store shared by processes. Skipped tests (each reaches into
CPython-private state) would be listed in ``SKIPS`` with their reasons: none is.
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
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
    def _module(self) -> types.ModuleType:
        return _ours

    def setUp(self) -> None:
        name = self._testMethodName  # type: ignore[attr-defined]
        if name in SKIPS:
            raise unittest.SkipTest(SKIPS[name])
        saved = peer.asyncio
        peer.asyncio = self._module()
        self.addCleanup(setattr, peer, "asyncio", saved)  # type: ignore[attr-defined]
        super().setUp()  # type: ignore[misc]


_names = itertools.count()


class _NamedLocksIn(_AimedAtLocksmith):
    """Every ``asyncio.Lock()`` of a test is a named lock (of a new name) in ``store``."""

    store = ""

    def _module(self) -> types.ModuleType:
        store = self.store

        class Lock(la.Lock):
            def __new__(cls, *args: object, **kwargs: object) -> la.Lock:  # type: ignore[misc]
                if args or kwargs:  # CPython's argument checks meet ours
                    return la.Lock(*args, **kwargs)  # type: ignore[arg-type]
                return la.Lock(name=f"peer-{next(_names)}", store=store)

        class Event(la.Event):
            def __new__(cls, *args: object, **kwargs: object) -> la.Event:  # type: ignore[misc]
                if args or kwargs:
                    return la.Event(*args, **kwargs)  # type: ignore[arg-type]
                return la.Event(name=f"peer-{next(_names)}", store=store)

        class Semaphore(la.Semaphore):
            def __new__(cls, value: int = 1, *args: object,  # type: ignore[misc]
                        **kwargs: object) -> la.Semaphore:
                if args or kwargs or not isinstance(value, int) or value < 0:
                    return la.Semaphore(value, *args, **kwargs)  # type: ignore[arg-type]
                return la.Semaphore(value, name=f"peer-{next(_names)}", store=store)

        class BoundedSemaphore(la.BoundedSemaphore):
            def __new__(cls, value: int = 1, *args: object,  # type: ignore[misc]
                        **kwargs: object) -> la.BoundedSemaphore:
                if args or kwargs or not isinstance(value, int) or value < 0:
                    return la.BoundedSemaphore(value, *args, **kwargs)  # type: ignore[arg-type]
                return la.BoundedSemaphore(value, name=f"peer-{next(_names)}", store=store)

        module = _Ours("asyncio")
        for name in la.__all__:
            setattr(module, name, getattr(la, name))
        module.Lock = Lock  # type: ignore[attr-defined]
        module.Event = Event  # type: ignore[attr-defined]
        module.Semaphore = Semaphore  # type: ignore[attr-defined]
        module.BoundedSemaphore = BoundedSemaphore  # type: ignore[attr-defined]
        return module


class TestLockPeer(_AimedAtLocksmith, peer.LockTests):
    pass


class TestNamedLockPeerMem(_NamedLocksIn, peer.LockTests):
    store = "mem:asyncio-peer"


class TestNamedLockPeerSqlite(_NamedLocksIn, peer.LockTests):
    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        directory = tempfile.TemporaryDirectory()
        cls.addClassCleanup(directory.cleanup)
        cls.store = f"sqlite:{directory.name}/peer.sqlite"


class TestEventPeer(_AimedAtLocksmith, peer.EventTests):
    pass


class TestNamedEventPeerMem(_NamedLocksIn, peer.EventTests):
    store = "mem:asyncio-peer"


class TestNamedSemaphorePeerMem(_NamedLocksIn, peer.SemaphoreTests):
    store = "mem:asyncio-peer"


class _InSqlite:
    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()  # type: ignore[misc]
        directory = tempfile.TemporaryDirectory()
        cls.addClassCleanup(directory.cleanup)  # type: ignore[attr-defined]
        cls.store = f"sqlite:{directory.name}/peer.sqlite"


class TestNamedEventPeerSqlite(_InSqlite, _NamedLocksIn, peer.EventTests):
    pass


class TestNamedSemaphorePeerSqlite(_InSqlite, _NamedLocksIn, peer.SemaphoreTests):
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
    named = TestNamedLockPeerMem()._module().Lock()
    assert type(named) is not la.Lock and isinstance(named, la.Lock)
    assert named.name.startswith("peer-")
