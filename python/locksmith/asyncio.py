"""asyncio's ``Lock``, ``Event``, ``Condition``, ``Semaphore``, ``BoundedSemaphore`` and
``Barrier``; the lock, the event and the semaphores also shared by name across
processes and machines.

    from locksmith import asyncio as la

    lock = la.Lock()                                     # anonymous: exactly asyncio.Lock()
    jobs = la.Lock(name="jobs", store="redis://host/0")  # every process of the store
    async with jobs:
        ...

An anonymous object (no ``name=``, no ``store=``) lives in one event loop anyway, so it
is asyncio's own primitive (this module's classes derive from asyncio's): the same
first-come first-served waiter queue, cancellation semantics, reprs and errors, and an
``async with Lock()`` that skips one coroutine on the free path.

A named object (``name=``; ``store=`` defaults to ``mem:locksmith.asyncio``, shared by
this process) is the store's primitive of that name. Its uncontended acquire is one
synchronous try inside the coroutine; a contended one awaits the native
``acquire_async``, a loop future completed thread-safely, so the loop never blocks.
Cancellation is safe: a grant that races the cancellation is released, never leaked.
On a network store (``redis://``) ``async with`` releases with the guard's async release
(a round trip never runs on the loop). The tasks of one loop pass that loop's gate for the name (an asyncio Lock
or Semaphore) before the store, so among themselves they keep asyncio's order and
hand-off timing; the gate's holders meet other processes in the store's order.

A named ``Condition`` (``Condition(name=..., store=...)``) keeps its lock and its
sleepers in the store, so ``notify`` wakes waiters of every process; its waits are the
native async waits (the loop never blocks), and a cancelled ``wait`` takes the lock
again before the cancellation propagates, as asyncio's. Its ``notify`` and ``release``
(like the named Lock's ``release``) are synchronous store steps. A named ``Barrier``
(CPython 3.11 and later) waits likewise; a cancelled wait breaks it for every party (an
arrival cannot be taken back), as a timeout does. An anonymous ``Condition`` may use a
named ``Lock`` (``Condition(Lock(name=...))``): mutual exclusion then spans processes,
but ``notify`` wakes only this loop's waiters.
"""

from __future__ import annotations

import asyncio as _asyncio
import weakref as _weakref
from collections import deque as _deque
from typing import Any, Deque, Optional

from locksmith import _locksmith

__all__ = ["Barrier", "BoundedSemaphore", "Condition", "Event", "Lock", "Semaphore"]

DEFAULT_STORE = "mem:locksmith.asyncio"

_spaces: dict[str, Any] = {}


def _space(store: Optional[str]) -> Any:
    url = DEFAULT_STORE if store is None else store
    space = _spaces.get(url)
    if space is None:
        space = _spaces[url] = _locksmith.Space(url)
    return space


def _remote(space: Any) -> bool:
    """Whether releasing in ``space`` is a network round trip (then ``async with`` exit
    awaits the async release; on a local store the synchronous one is far cheaper)."""
    return not str(space.url).startswith(("mem:", "shm:", "sqlite:"))


def _named(cls: type, name: Optional[str], store: Optional[str]) -> bool:
    if name is None and store is None:
        return False
    if name is None:
        raise TypeError(f"{cls.__name__}(store=...) needs a name= too")
    return True


async def _acquire_named(native: Any) -> Any:
    """A guard of ``native``: a synchronous try first, then the native async wait. A
    grant that completed the future just before a cancellation is released here (the
    native side releases one that arrives after it)."""
    try:
        guard = native.try_acquire()
    except _locksmith.WouldDeadlock:
        # The loop's thread holds it through another task's try: wait as our own owner.
        guard = None
    if guard is not None:
        return guard
    future = native.acquire_async()
    try:
        return await future
    except _asyncio.CancelledError:
        if future.done() and not future.cancelled() and future.exception() is None:
            raced = future.result()
            if raced is not None:
                raced.release()
        raise


# Per event loop, per named primitive: an asyncio Lock or Semaphore that the loop's
# tasks pass, first-come first-served, before they go to the store. Tasks of one loop
# then hand the primitive to each other within the loop's own iterations, in asyncio's
# order and with its cancellation semantics; only the gate's holders meet other
# processes in the store.
_gates: "_weakref.WeakKeyDictionary[Any, dict[Any, Any]]" = _weakref.WeakKeyDictionary()


def _gate(key: Any, make: Any) -> Any:
    loop = _asyncio.get_running_loop()
    per_loop = _gates.get(loop)
    if per_loop is None:
        per_loop = _gates[loop] = {}
    gate = per_loop.get(key)
    if gate is None:
        gate = per_loop[key] = make()
    return gate


async def _acquire_gated(native: Any, gate: Any) -> Any:
    """Passes the loop's gate, then takes a guard of ``native``; the gate is passed back
    if that fails or is cancelled."""
    await gate.acquire()
    try:
        return await _acquire_named(native)
    except BaseException:
        gate.release()
        raise


class Lock(_asyncio.Lock):
    """asyncio's ``Lock``: ``await acquire()``, ``release()``, ``locked()``,
    ``async with``. ``Lock(name=..., store=...)`` is the store's lock of that name."""

    def __new__(cls, *args: Any, name: Optional[str] = None, store: Optional[str] = None,
                **kwargs: Any) -> Any:
        # Other arguments are left to __init__, whose errors are asyncio's.
        if cls is Lock and _named(cls, name, store):
            return object.__new__(_NamedLock)
        return object.__new__(cls)

    def __init__(self, *, name: Optional[str] = None, store: Optional[str] = None) -> None:
        super().__init__()

    async def __aenter__(self) -> None:
        # The free path without the extra coroutine ``await self.acquire()`` costs; the
        # condition is asyncio's: free, and nobody (not cancelled) queued before us.
        waiters = self._waiters
        if not self._locked and (waiters is None or all(w.cancelled() for w in waiters)):
            self._locked = True
            return None
        await self.acquire()
        return None

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # Nobody to wake: the release is one store; otherwise asyncio's release.
        if self._locked and not self._waiters:
            self._locked = False
            return None
        self.release()
        return None


class _NamedLock(Lock):
    """A named ``Lock``: the store's lock, held through guards of this object."""

    def __init__(self, *, name: Optional[str] = None, store: Optional[str] = None) -> None:
        super().__init__()
        assert name is not None
        space = _space(store)
        self._native = _locksmith.Lock(name, space)
        self._key = ("Lock", space.url, name)
        self._remote = _remote(space)
        self._guards: Deque[Any] = _deque()  # (guard, the gate it passed)

    @property
    def name(self) -> str:
        return str(self._native.name)

    def locked(self) -> bool:
        return bool(self._native.locked())

    @property  # type: ignore[override]
    def _waiters(self) -> Any:
        # The queue of this loop's gate: asyncio's own, so code that reads it works.
        try:
            return _gate(self._key, _asyncio.Lock)._waiters
        except RuntimeError:  # no running loop
            return None

    @_waiters.setter
    def _waiters(self, value: Any) -> None:
        pass  # asyncio.Lock.__init__ sets it; the gate keeps the real one

    async def acquire(self) -> bool:
        gate = _gate(self._key, _asyncio.Lock)
        self._guards.append((await _acquire_gated(self._native, gate), gate))
        return True

    def release(self) -> None:
        if not self._guards:
            raise RuntimeError("Lock is not acquired.")
        guard, gate = self._guards.popleft()
        try:
            guard.release()
        finally:
            gate.release()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: Any) -> None:
        if not self._guards:
            raise RuntimeError("Lock is not acquired.")
        guard, gate = self._guards.popleft()
        try:
            if self._remote:
                await guard.release_async()
            else:
                guard.release()
        finally:
            gate.release()

    def __repr__(self) -> str:
        state = "locked" if self.locked() else "unlocked"
        return f"<locksmith.asyncio.Lock object at {id(self):#x} name={self.name!r} [{state}]>"


class Event(_asyncio.Event):
    """asyncio's ``Event``: ``await wait()``, ``set()``, ``clear()``, ``is_set()``.
    ``Event(name=..., store=...)`` is the store's event of that name."""

    def __new__(cls, *args: Any, name: Optional[str] = None, store: Optional[str] = None,
                **kwargs: Any) -> Any:
        # Other arguments are left to __init__, whose errors are asyncio's.
        if cls is Event and _named(cls, name, store):
            return object.__new__(_NamedEvent)
        return object.__new__(cls)

    def __init__(self, *, name: Optional[str] = None, store: Optional[str] = None) -> None:
        super().__init__()


class _NamedEvent(Event):
    """A named ``Event``: the store's flag. This loop's waiters also wait in a local
    queue that ``set()`` here completes at once (asyncio's timing); a ``set()`` from
    another process reaches them through the native wait."""

    def __init__(self, *, name: Optional[str] = None, store: Optional[str] = None) -> None:
        super().__init__()
        assert name is not None
        space = _space(store)
        self._native = _locksmith.Event(name, space)
        self._key = ("Event", space.url, name)

    @property
    def name(self) -> str:
        return str(self._native.name)

    @property  # type: ignore[override]
    def _waiters(self) -> Any:
        try:
            return _gate(self._key, _deque)
        except RuntimeError:  # no running loop: nobody waits, but code may look
            return self.__dict__.setdefault("_idle_waiters", _deque())

    @_waiters.setter
    def _waiters(self, value: Any) -> None:
        pass  # asyncio.Event.__init__ sets it; each loop has its own

    def is_set(self) -> bool:
        return bool(self._native.is_set())

    def set(self) -> None:
        self._native.set()
        try:
            waiters = _gate(self._key, _deque)
        except RuntimeError:
            return
        for fut in waiters:
            if not fut.done():
                fut.set_result(True)

    def clear(self) -> None:
        self._native.clear()

    async def wait(self) -> bool:
        if self._native.is_set():
            return True
        waiters = _gate(self._key, _deque)
        fut = _asyncio.get_running_loop().create_future()
        waiters.append(fut)
        native = self._native.wait_async()

        def woken(done: Any) -> None:
            if not fut.done() and not done.cancelled() and done.exception() is None:
                fut.set_result(True)

        native.add_done_callback(woken)
        try:
            return bool(await fut)
        finally:
            waiters.remove(fut)
            native.cancel()

    def __repr__(self) -> str:
        extra = "set" if self.is_set() else "unset"
        if self._waiters:
            extra = f"{extra}, waiters:{len(self._waiters)}"
        return f"<locksmith.asyncio.Event object at {id(self):#x} name={self.name!r} [{extra}]>"


class Semaphore(_asyncio.Semaphore):
    """asyncio's ``Semaphore(value=1)``: ``await acquire()``, ``release()``,
    ``locked()``, ``async with``. With ``name=``, the store's semaphore of that name
    (whose value is fixed by its first user): ``release()`` gives back an acquisition
    made through this object, or when there is none raises the count, as asyncio's."""

    def __new__(cls, *args: Any, name: Optional[str] = None, store: Optional[str] = None,
                **kwargs: Any) -> Any:
        if cls in (Semaphore, BoundedSemaphore) and _named(cls, name, store):
            named = _NamedSemaphore if cls is Semaphore else _NamedBoundedSemaphore
            return object.__new__(named)
        return object.__new__(cls)

    def __init__(self, value: int = 1, *, name: Optional[str] = None,
                 store: Optional[str] = None) -> None:
        super().__init__(value)


class BoundedSemaphore(Semaphore, _asyncio.BoundedSemaphore):
    """asyncio's ``BoundedSemaphore``: a release past the initial value raises
    ``ValueError`` (a named one: the store's bounded semaphore, which refuses it in
    every process)."""

    def __init__(self, value: int = 1, *, name: Optional[str] = None,
                 store: Optional[str] = None) -> None:
        _asyncio.BoundedSemaphore.__init__(self, value)


class _NamedSemaphore(Semaphore):
    def __init__(self, value: int = 1, *, name: Optional[str] = None,
                 store: Optional[str] = None) -> None:
        super().__init__(value)
        assert name is not None
        self._space = _space(store)
        native = (_locksmith.BoundedSemaphore if isinstance(self, BoundedSemaphore)
                  else _locksmith.Semaphore)
        self._native = native(name, value, self._space)
        self._key = ("Semaphore", self._space.url, name)
        self._remote = _remote(self._space)
        self._guards: Deque[Any] = _deque()  # (guard, the gate it passed)

    @property
    def name(self) -> str:
        return str(self._native.name)

    def _gate(self) -> Any:
        value = self._native.initial_value
        return _gate(self._key, lambda: _asyncio.Semaphore(value))

    @property  # type: ignore[override]
    def _waiters(self) -> Any:
        # The queue of this loop's gate: asyncio's own, so code that reads it works.
        try:
            return self._gate()._waiters
        except RuntimeError:  # no running loop
            return None

    @_waiters.setter
    def _waiters(self, value: Any) -> None:
        if "_native" not in self.__dict__:
            return  # asyncio.Semaphore.__init__ sets it; each loop's gate has its own
        try:
            self._gate()._waiters = value
        except RuntimeError:
            pass

    @property  # type: ignore[override]
    def _value(self) -> Any:
        try:
            return self._gate()._value
        except RuntimeError:  # no running loop
            return self._native.value()

    @_value.setter
    def _value(self, value: Any) -> None:
        pass  # asyncio.Semaphore.__init__ sets it; each loop's gate has its own

    def locked(self) -> bool:
        return bool(self._native.value() == 0)

    async def acquire(self) -> bool:
        gate = self._gate()
        self._guards.append((await _acquire_gated(self._native, gate), gate))
        return True

    def release(self) -> None:
        if not self._guards:
            # asyncio's signalling release: one more permit in the store (a bounded
            # semaphore refuses past its initial value: ValueError, nothing changed),
            # and one more at this loop's gate.
            self._native.release()
            try:
                self._gate().release()
            except RuntimeError:  # no running loop: no gate to open
                pass
            return
        guard, gate = self._guards.popleft()
        try:
            guard.release()
        finally:
            gate.release()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: Any) -> None:
        if not self._guards:
            self.release()
            return
        guard, gate = self._guards.popleft()
        try:
            if self._remote:
                await guard.release_async()
            else:
                guard.release()
        finally:
            gate.release()

    def __repr__(self) -> str:
        value = self._native.value()
        kind = "BoundedSemaphore" if isinstance(self, BoundedSemaphore) else "Semaphore"
        extra = "locked" if value == 0 else f"unlocked, value:{value}"
        if self._waiters:
            extra = f"{extra}, waiters:{len(self._waiters)}"
        return (f"<locksmith.asyncio.{kind} object at {id(self):#x} name={self.name!r} "
                f"[{extra}]>")


class _NamedBoundedSemaphore(_NamedSemaphore, BoundedSemaphore):
    pass


# The named classes answer to their public names (in reprs and errors).
for _cls, _public in ((_NamedLock, "Lock"), (_NamedEvent, "Event"),
                      (_NamedSemaphore, "Semaphore"),
                      (_NamedBoundedSemaphore, "BoundedSemaphore")):
    _cls.__name__ = _cls.__qualname__ = _public


class Condition(_asyncio.Condition):
    """asyncio's ``Condition(lock=None)`` over this module's ``Lock`` by default.
    ``Condition(name=..., store=...)`` is the store's condition of that name: its lock
    and its sleepers live in the store, so ``notify`` wakes waiters of every process."""

    def __new__(cls, *args: Any, name: Optional[str] = None, store: Optional[str] = None,
                **kwargs: Any) -> Any:
        if cls is Condition and _named(cls, name, store):
            return object.__new__(_NamedCondition)
        return object.__new__(cls)

    def __init__(self, lock: Any = None, *, name: Optional[str] = None,
                 store: Optional[str] = None) -> None:
        super().__init__(Lock() if lock is None else lock)


async def _take_back(acquire: Any) -> None:
    """Takes a condition's lock again after a wait ended by cancellation, as asyncio's
    does: cancellations meanwhile are held back until the lock is held."""
    cancelled = False
    while True:
        try:
            await acquire()
            break
        except _asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise _asyncio.CancelledError


class _NamedCondition(Condition):
    """A named ``Condition``: the store's condition, whose lock is held through guards
    of this object (one task at a time: async holds are each their own owner)."""

    def __init__(self, lock: Any = None, *, name: Optional[str] = None,
                 store: Optional[str] = None) -> None:
        if lock is not None:
            raise ValueError("a Condition shared by name brings its own lock: "
                             "give a lock or a name, not both")
        assert name is not None
        space = _space(store)
        self._native = _locksmith.Condition(name, space)
        self._remote = _remote(space)
        self._guards: Deque[Any] = _deque()
        self._waiters = _deque()  # asyncio's attribute; the sleepers are in the store

    @property
    def name(self) -> str:
        return str(self._native.name)

    def locked(self) -> bool:
        return bool(self._guards)

    async def acquire(self) -> bool:
        future = self._native.acquire_async()
        try:
            guard = await future
        except _asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                raced = future.result()
                if raced is not None:
                    raced.release()
            raise
        self._guards.append(guard)
        return True

    def release(self) -> None:
        if not self._guards:
            raise RuntimeError("Lock is not acquired.")
        self._guards.popleft().release()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: Any) -> None:
        if not self._guards:
            raise RuntimeError("Lock is not acquired.")
        guard = self._guards.popleft()
        if self._remote:
            await guard.release_async()
        else:
            guard.release()

    async def wait(self) -> bool:
        """Releases the lock, sleeps until notified (by any process), and takes the lock
        again, also when cancelled (as asyncio's)."""
        if not self._guards:
            raise RuntimeError("cannot wait on un-acquired lock")
        # Out of the holds while it sleeps: another task may take the lock meanwhile.
        guard = self._guards.popleft()
        future = self._native.wait_async(guard)
        try:
            await future
        except BaseException:
            # Cancelled (or failed): the lock again, unless the wait took it back just
            # before the cancel.
            if guard.is_held():
                self._guards.append(guard)
            else:
                guard.release()  # ended: this only marks the guard released
                await _take_back(self.acquire)
            raise
        self._guards.append(guard)
        return True

    async def wait_for(self, predicate: Any) -> Any:
        result = predicate()
        while not result:
            await self.wait()
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        if not self._guards:
            raise RuntimeError("cannot notify on un-acquired lock")
        if n > 0:
            self._native.notify(n)

    def notify_all(self) -> None:
        if not self._guards:
            raise RuntimeError("cannot notify on un-acquired lock")
        self._native.notify_all()

    def __repr__(self) -> str:
        state = "locked" if self.locked() else "unlocked"
        return (f"<locksmith.asyncio.Condition object at {id(self):#x} "
                f"name={self.name!r} [{state}]>")


_NamedCondition.__name__ = _NamedCondition.__qualname__ = "Condition"


if hasattr(_asyncio, "Barrier"):  # CPython 3.11 and later

    class Barrier(_asyncio.Barrier):
        """asyncio's ``Barrier(parties)``: ``await wait()``, ``reset()``, ``abort()``,
        ``parties``, ``n_waiting``, ``broken`` (CPython 3.11 and later, as asyncio's).
        ``Barrier(parties, name=..., store=...)`` is the store's barrier of that name,
        whose parties may be tasks of several processes."""

        def __new__(cls, *args: Any, name: Optional[str] = None,
                    store: Optional[str] = None, **kwargs: Any) -> Any:
            if cls is Barrier and _named(cls, name, store):
                return object.__new__(_NamedBarrier)
            return object.__new__(cls)

        def __init__(self, parties: int, *, name: Optional[str] = None,
                     store: Optional[str] = None) -> None:
            super().__init__(parties)

    class _NamedBarrier(Barrier):
        """A named ``Barrier``. A wait's arrival cannot be taken back: cancelling it
        breaks the barrier for every party, as a timeout does."""

        def __init__(self, parties: int, *, name: Optional[str] = None,
                     store: Optional[str] = None) -> None:
            if parties < 1:
                raise ValueError("parties must be > 0")
            assert name is not None
            self._native = _locksmith.Barrier(name, parties, _space(store))

        @property
        def name(self) -> str:
            return str(self._native.name)

        async def wait(self) -> int:
            try:
                return int(await self._native.wait_async())
            except _locksmith.BrokenBarrier as e:
                raise _asyncio.BrokenBarrierError(str(e)) from e
            except _asyncio.CancelledError:
                # The core breaks the barrier when a wait is dropped after its arrival
                # step answered; an arrival whose answer was still on its way (a
                # network store) is broken here.
                if not self._native.broken:
                    self._native.abort()
                raise

        async def reset(self) -> None:
            self._native.reset()

        async def abort(self) -> None:
            self._native.abort()

        @property
        def parties(self) -> int:
            return int(self._native.parties)

        @property
        def n_waiting(self) -> int:
            return int(self._native.n_waiting)

        @property
        def broken(self) -> bool:
            return bool(self._native.broken)

        def __repr__(self) -> str:
            state = "broken" if self.broken else "filling"
            return (f"<locksmith.asyncio.Barrier object at {id(self):#x} "
                    f"name={self.name!r} [{state}, waiters:{self.n_waiting}/"
                    f"{self.parties}]>")

    _NamedBarrier.__name__ = _NamedBarrier.__qualname__ = "Barrier"
