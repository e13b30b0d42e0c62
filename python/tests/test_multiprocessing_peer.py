"""The synchronisation classes of CPython's ``test._test_multiprocessing`` (imported
from the interpreter that runs the suite, never copied) aimed at
``locksmith.multiprocessing``, under fork and spawn: the standard library's Process,
Queue and Value with our Lock, RLock, Semaphore, BoundedSemaphore, Condition, Event and
Barrier.

Skipped, each because it reaches into CPython-private state:

- ``_TestCondition`` tests that call ``check_invariant``: it reads the private
  ``_sleeping_count``, ``_woken_count`` and ``_wait_semaphore`` of
  ``multiprocessing.synchronize.Condition``, whose sleepers live in SemLocks; ours live
  in the store.
"""

from __future__ import annotations

import multiprocessing
import unittest

import pytest

from locksmith import multiprocessing as lmp

tm = pytest.importorskip("test._test_multiprocessing")

_PRIVATE = unittest.skip(
    "check_invariant reads multiprocessing.Condition's private SemLocks")


def _mixin(method):
    ctx = lmp.get_context(method)

    class Mixin(tm.ProcessesMixin):
        Process = ctx.Process
        Queue = staticmethod(ctx.Queue)
        Lock = staticmethod(ctx.Lock)
        RLock = staticmethod(ctx.RLock)
        Semaphore = staticmethod(ctx.Semaphore)
        BoundedSemaphore = staticmethod(ctx.BoundedSemaphore)
        Condition = staticmethod(ctx.Condition)
        Event = staticmethod(ctx.Event)
        Barrier = staticmethod(ctx.Barrier)

        # The suite's own helpers (its Value, its list of results) use the default
        # context, so it runs under the start method it tests, as CPython runs it.
        @classmethod
        def setUpClass(cls):
            cls._previous_method = multiprocessing.get_start_method(allow_none=True)
            multiprocessing.set_start_method(method, force=True)
            super().setUpClass()

        @classmethod
        def tearDownClass(cls):
            super().tearDownClass()
            multiprocessing.set_start_method(cls._previous_method, force=True)

    return Mixin


_CLASSES = ["_TestLock", "_TestSemaphore", "_TestCondition", "_TestEvent", "_TestBarrier"]
_CONDITION_PRIVATE = [name for name, f in vars(tm._TestCondition).items()
                      if name.startswith("test_") and "check_invariant" in
                      getattr(getattr(f, "__code__", None), "co_names", ())]

for _method in ["fork", "spawn"]:
    _m = _mixin(_method)
    for _base in _CLASSES:
        _name = f"Test{_method.capitalize()}{_base[5:]}"
        _attrs = {"__module__": __name__, "__qualname__": _name}
        if _base == "_TestCondition":
            for _t in _CONDITION_PRIVATE:
                _attrs[_t] = _PRIVATE(getattr(tm._TestCondition, _t))
        globals()[_name] = type(_name, (getattr(tm, _base), _m, unittest.TestCase), _attrs)
del _method, _m, _base, _name, _attrs
