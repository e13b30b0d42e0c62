"""threading's synchronization primitives, as a drop-in module that can also span
processes and machines.

    from locksmith import threading            # instead of: import threading

    lock = threading.Lock()                    # anonymous: this process only, like threading's
    shared = threading.Lock(name="deploy", store="sqlite:/tmp/jobs.sqlite")  # every process

Every class takes threading's arguments and raises threading's errors (``acquire(False,
1)`` is a ``ValueError``, a timeout past ``TIMEOUT_MAX`` an ``OverflowError``, releasing
an unheld lock a ``RuntimeError``). Without ``name=`` and ``store=``, an object is an
anonymous primitive in a private ``mem:`` space; with a ``name``, every object of that
name in the ``store`` (default: ``mem:locksmith.threading``, shared by this process) is
the same primitive, across processes on ``shm:`` and ``sqlite:`` and across machines on
``redis://``.

- ``Lock``: owned by the acquisition, as threading's: any thread may release it, and the
  holding thread acquiring again waits.
- ``RLock``: owned by a thread, re-entrant, with threading's private protocol
  (``_is_owned``, ``_release_save``, ``_acquire_restore``, ``_recursion_count``), so
  ``threading.Condition(locksmith.threading.RLock())`` works.
- ``Condition(lock=None, *, name=None, store=None)``: threading's Condition over our
  RLock by default; with a ``name`` its waiters sleep in the store, so ``notify`` wakes
  waiters of other processes.
- ``Semaphore``, ``BoundedSemaphore`` (``release(n)``, ``get_value()``), ``Event`` and
  ``Barrier``.

Waits release the GIL, run signal handlers (Ctrl-C interrupts them), and leave nothing
held when a handler raises.
"""

from __future__ import annotations

import threading as _threading
from typing import Any, Callable, Optional

from locksmith import _locksmith

Lock = _locksmith._ThreadingLock
RLock = _locksmith._ThreadingRLock
Semaphore = _locksmith._ThreadingSemaphore
BoundedSemaphore = _locksmith._ThreadingBoundedSemaphore
Event = _locksmith._ThreadingEvent

TIMEOUT_MAX = _threading.TIMEOUT_MAX
BrokenBarrierError = _threading.BrokenBarrierError

__all__ = [
    "Barrier",
    "BoundedSemaphore",
    "BrokenBarrierError",
    "Condition",
    "Event",
    "Lock",
    "RLock",
    "Semaphore",
    "TIMEOUT_MAX",
]


class Condition(_threading.Condition):
    """threading's Condition. ``Condition()`` and ``Condition(lock)`` behave as
    threading's (the default lock is our re-entrant ``RLock``); ``Condition(name=...,
    store=...)`` is shared by name: its lock and its sleepers live in the store, so a
    ``notify`` in one process wakes waiters in another."""

    def __init__(self, lock: Any = None, *, name: Optional[str] = None,
                 store: Optional[str] = None) -> None:
        self._shared = None
        if lock is None:
            if name is None and store is None:
                lock = RLock()
            else:
                lock = self._shared = _locksmith._ThreadingConditionLock(
                    name=name, store=store)
        elif name is not None or store is not None:
            raise ValueError("a Condition shared by name brings its own lock: "
                             "give a lock or a name, not both")
        super().__init__(lock)

    def wait(self, timeout: Optional[float] = None) -> bool:
        if self._shared is None:
            return super().wait(timeout)
        return self._shared._wait(timeout)

    def notify(self, n: int = 1) -> None:
        if self._shared is None:
            super().notify(n)
        else:
            self._shared._notify(n)

    def notify_all(self) -> None:
        if self._shared is None:
            super().notify_all()
        else:
            self._shared._notify(1 << 40)

    def __repr__(self) -> str:
        return f"<locksmith.Condition({self._lock!r})>"


class Barrier(_threading.Barrier):
    """threading's Barrier, made of this module's Condition and Lock (so a wait runs
    signal handlers and releases the GIL). ``Barrier(parties, action=None,
    timeout=None, *, name=..., store=...)`` is shared by name: the parties may be
    threads of several processes, whose counts and generations live in the store.
    The ``action`` runs in the party that arrives last, in its own process."""

    def __init__(self, parties: int, action: Optional[Callable[[], Any]] = None,
                 timeout: Optional[float] = None, *, name: Optional[str] = None,
                 store: Optional[str] = None) -> None:
        super().__init__(parties, action, timeout)
        if name is None and store is None:
            self._cond = Condition(Lock())
            self._shared = None
        else:
            self._shared = _locksmith._ThreadingBarrier(
                parties, action, timeout, name=name, store=store)

    def wait(self, timeout: Optional[float] = None) -> int:
        if self._shared is None:
            return super().wait(timeout)
        return self._shared.wait(timeout)

    def reset(self) -> None:
        if self._shared is None:
            super().reset()
        else:
            self._shared.reset()

    def abort(self) -> None:
        if self._shared is None:
            super().abort()
        else:
            self._shared.abort()

    @property
    def parties(self) -> int:
        return self._parties

    @property
    def n_waiting(self) -> int:
        if self._shared is None:
            return super().n_waiting
        return self._shared.n_waiting

    @property
    def broken(self) -> bool:
        if self._shared is None:
            return super().broken
        return self._shared.broken

    def __repr__(self) -> str:
        if self.broken:
            return f"<locksmith.Barrier at {id(self):#x}: broken>"
        return (f"<locksmith.Barrier at {id(self):#x}: "
                f"waiters={self.n_waiting}/{self.parties}>")
