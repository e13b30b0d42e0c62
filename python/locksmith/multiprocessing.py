"""multiprocessing's synchronization primitives (and billiard's), as objects that
pickle anywhere: as ``Process`` arguments under fork, spawn and forkserver, as ``Pool``
task arguments, and through queues, which the standard library refuses.

    from locksmith import multiprocessing as mp

    ctx = mp.get_context("spawn")              # or get_context(store="sqlite:/tmp/s.db")
    lock = ctx.Lock()
    with ctx.Pool(4) as pool:                  # the standard library's Pool
        pool.map(work, [(lock, i) for i in range(8)])

``get_context(method=None, store=None)`` gives the standard library's context of that
start method (``Process``, ``Pool``, ``Queue``, ``Manager`` and the rest are its own),
whose ``Lock``, ``RLock``, ``Semaphore``, ``BoundedSemaphore``, ``Event``, ``Condition``
and ``Barrier`` are locksmith's. Each is a primitive of ``store`` under a fresh name (or
the ``name=`` given); without a store, of a ``shm:`` region of the creating process that
the standard library's resource tracker removes even if the creator is SIGKILLed.

Arguments follow ``multiprocessing.synchronize``: ``acquire(block=True, timeout=None)``
(a negative timeout is 0), ``release()``, ``get_value()``, ``locked()``, and as
supersets ``release(n)`` and ``notify(n)``. A holder that dies (even SIGKILLed inside a
``Pool`` worker) never deadlocks the others: the store frees its holds.
"""

from __future__ import annotations

import atexit
import itertools
import multiprocessing as _mp
import os
import secrets
import threading as _threading
import time as _time
from typing import Any, Callable, Optional

from locksmith import _locksmith
from locksmith import threading as _lt

__all__ = [
    "Barrier",
    "BoundedSemaphore",
    "Condition",
    "Context",
    "Event",
    "Lock",
    "RLock",
    "Semaphore",
    "get_context",
]

_lock = _threading.Lock()
_region: Optional[tuple[int, str, str]] = None  # (creator pid, url, /dev/shm name)
_names = itertools.count()


def _unlink_region(pid: int, shm_name: str) -> None:
    if os.getpid() != pid:
        return  # a forked child leaves its parent's region alone
    try:
        os.unlink(f"/dev/shm/{shm_name}")
    except FileNotFoundError:
        pass
    try:
        from multiprocessing import resource_tracker
        resource_tracker.unregister("/" + shm_name, "shared_memory")
    except Exception:
        pass


def _default_store() -> str:
    """The ``shm:`` region of this process that anonymous primitives live in, made on
    first use and registered with the resource tracker, which unlinks it if this
    process dies without doing so."""
    global _region
    with _lock:
        if _region is None or _region[0] != os.getpid():
            shm_name = f"locksmith-mp-{os.getpid()}-{secrets.token_hex(4)}"
            url = f"shm:{shm_name}?capacity=4096&arena=16M"
            from multiprocessing import resource_tracker
            resource_tracker.register("/" + shm_name, "shared_memory")
            _region = (os.getpid(), url, shm_name)
            atexit.register(_unlink_region, os.getpid(), shm_name)
        return _region[1]


def _fresh() -> str:
    return f"mp-{os.getpid()}-{secrets.token_hex(3)}-{next(_names)}"


def _timeout(block: bool, timeout: Optional[float]) -> tuple[bool, float]:
    """multiprocessing's ``(block, timeout)`` as threading's ``(blocking, timeout)``."""
    if not block:
        return False, -1.0
    if timeout is None:
        return True, -1.0
    return True, max(float(timeout), 0.0)


def _rebuild(cls: type, state: dict[str, Any]) -> Any:
    obj = cls.__new__(cls)
    obj.__setstate__(state)
    return obj


class _Shared:
    """What every primitive here shares: a name in a store, and pickling by both."""

    _kind: Callable[..., Any]
    __slots__ = ("_impl", "_name", "_store", "_args", "__weakref__")

    def __init__(self, *args: Any, name: Optional[str] = None,
                 store: Optional[str] = None) -> None:
        self._name = name if name is not None else _fresh()
        self._store = store if store is not None else _default_store()
        self._args = args
        self._impl = type(self)._kind(*args, name=self._name, store=self._store)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.__getstate__()))

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self._name, "store": self._store, "args": self._args}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._name, self._store, self._args = state["name"], state["store"], state["args"]
        self._impl = type(self)._kind(*self._args, name=self._name, store=self._store)

    @property
    def name(self) -> str:
        """The primitive's name in its store."""
        return self._name

    @property
    def store(self) -> str:
        """The store's URL."""
        return self._store


class Lock(_Shared):
    """multiprocessing's ``Lock``: one holder at a time, in any process."""

    _kind = _lt.Lock
    __slots__ = ()

    def acquire(self, block: bool = True, timeout: Optional[float] = None) -> bool:
        return self._impl.acquire(*_timeout(block, timeout))

    def release(self) -> None:
        self._impl.release()

    def locked(self) -> bool:
        return self._impl.locked()

    def __enter__(self) -> bool:
        return self._impl.acquire()

    def __exit__(self, *exc: Any) -> None:
        self._impl.release()

    def __repr__(self) -> str:
        state = "locked" if self.locked() else "unlocked"
        return f"<locksmith.Lock({state}) {self._name!r} in {self._store!r}>"


class RLock(Lock):
    """multiprocessing's ``RLock``: its owning thread may acquire it again."""

    _kind = _lt.RLock
    __slots__ = ()

    def _is_owned(self) -> bool:
        return self._impl._is_owned()

    def _recursion_count(self) -> int:
        return self._impl._recursion_count()


class Semaphore(_Shared):
    """multiprocessing's ``Semaphore(value=1)``; ``release(n)`` gives back n at once."""

    _kind = _lt.Semaphore
    __slots__ = ()

    def __init__(self, value: int = 1, *, name: Optional[str] = None,
                 store: Optional[str] = None) -> None:
        super().__init__(value, name=name, store=store)

    def acquire(self, block: bool = True, timeout: Optional[float] = None) -> bool:
        if not block:
            return self._impl.acquire(False)
        return self._impl.acquire(True, None if timeout is None else max(timeout, 0.0))

    def release(self, n: int = 1) -> None:
        self._impl.release(n)

    def get_value(self) -> int:
        return self._impl.get_value()

    def locked(self) -> bool:
        return self._impl.get_value() == 0

    def __enter__(self) -> bool:
        return self._impl.acquire()

    def __exit__(self, *exc: Any) -> None:
        self._impl.release()

    def __repr__(self) -> str:
        return (f"<locksmith.{type(self).__name__}(value={self.get_value()}) "
                f"{self._name!r} in {self._store!r}>")


class BoundedSemaphore(Semaphore):
    """multiprocessing's ``BoundedSemaphore``: a release past the initial value raises
    ``ValueError`` and changes nothing."""

    _kind = _lt.BoundedSemaphore
    __slots__ = ()


class Event(_Shared):
    """multiprocessing's ``Event``."""

    _kind = _lt.Event
    __slots__ = ()

    def is_set(self) -> bool:
        return self._impl.is_set()

    def set(self) -> None:
        self._impl.set()

    def clear(self) -> None:
        self._impl.clear()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._impl.wait(timeout)

    def __repr__(self) -> str:
        state = "set" if self.is_set() else "unset"
        return f"<Event at {id(self):#x} {state}>"


class Condition(_Shared):
    """multiprocessing's ``Condition(lock=None)``, in the store, so ``notify(n)`` wakes
    waiters of any process. Without a lock it brings its own re-entrant one; with a
    caller's ``Lock`` or ``RLock`` of this module (of the same store) it uses that one:
    a wait registers its sleeper in the store, then releases the lock (every level of an
    RLock), so no notification is lost."""

    _kind = _lt.Condition
    __slots__ = ("_lock",)

    def __init__(self, lock: Any = None, *, name: Optional[str] = None,
                 store: Optional[str] = None) -> None:
        self._lock = None
        if lock is None:
            super().__init__(name=name, store=store)
            return
        if not isinstance(lock, Lock):
            raise TypeError("Condition(lock) takes a Lock or RLock of "
                            f"locksmith.multiprocessing, not {type(lock).__name__}")
        if store is not None and store != lock.store:
            raise ValueError("a Condition and its lock live in one store")
        self._name = name if name is not None else _fresh()
        self._store = lock.store
        self._args = ()
        self._lock = lock
        self._impl = self._over(lock)

    def _over(self, lock: Lock) -> Any:
        return _locksmith._ConditionOverLock(self._name, lock.name,
                                             isinstance(lock, RLock), self._store)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["lock"] = self._lock
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._lock = state.get("lock")
        if self._lock is None:
            super().__setstate__(state)
            return
        self._name, self._store, self._args = state["name"], state["store"], state["args"]
        self._impl = self._over(self._lock)

    def acquire(self, block: bool = True, timeout: Optional[float] = None) -> bool:
        if self._lock is not None:
            return self._lock.acquire(block, timeout)
        return self._impl.acquire(*_timeout(block, timeout))

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
        else:
            self._impl.release()

    def __enter__(self) -> bool:
        if self._lock is not None:
            return self._lock.__enter__()
        return self._impl.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _owned(self) -> bool:
        lock = self._lock
        assert lock is not None
        if isinstance(lock, RLock):
            return lock._is_owned()
        return lock.locked()

    def wait(self, timeout: Optional[float] = None) -> bool:
        lock = self._lock
        if lock is None:
            return self._impl.wait(timeout)
        if not self._owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        if timeout is not None:
            timeout = max(float(timeout), 0.0)
        if isinstance(lock, RLock):
            return self._impl._wait(lock._impl._release_save, lock._impl._acquire_restore,
                                    timeout)
        return self._impl._wait(lock._impl.release, lambda _state: lock._impl.acquire(),
                                timeout)

    def wait_for(self, predicate: Callable[[], Any],
                 timeout: Optional[float] = None) -> Any:
        if self._lock is None:
            return self._impl.wait_for(predicate, timeout)
        deadline = None if timeout is None else _time.monotonic() + timeout
        result = predicate()
        while not result:
            left = None
            if deadline is not None:
                left = deadline - _time.monotonic()
                if left <= 0:
                    break
            self.wait(left)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        if self._lock is None:
            self._impl.notify(n)
        elif n > 0:
            self._impl._notify(n)

    def notify_all(self) -> None:
        if self._lock is None:
            self._impl.notify_all()
        else:
            self._impl._notify(1 << 40)

    def __repr__(self) -> str:
        return f"<locksmith.Condition({self._lock or self._impl!r}) {self._name!r}>"


class Barrier(_Shared):
    """multiprocessing's ``Barrier(parties, action=None, timeout=None)``; the action
    runs in the process whose party arrives last."""

    _kind = _lt.Barrier
    __slots__ = ()

    def __init__(self, parties: int, action: Optional[Callable[[], Any]] = None,
                 timeout: Optional[float] = None, *, name: Optional[str] = None,
                 store: Optional[str] = None) -> None:
        super().__init__(parties, action, timeout, name=name, store=store)

    def wait(self, timeout: Optional[float] = None) -> int:
        return self._impl.wait(timeout)

    def abort(self) -> None:
        self._impl.abort()

    def reset(self) -> None:
        self._impl.reset()

    @property
    def parties(self) -> int:
        return self._impl.parties

    @property
    def n_waiting(self) -> int:
        return self._impl.n_waiting

    @property
    def broken(self) -> bool:
        return self._impl.broken


class Context:
    """The standard library's context of one start method, whose synchronization
    primitives are locksmith's (in ``store``, or the creator's ``shm:`` region)."""

    def __init__(self, method: Optional[str] = None, store: Optional[str] = None) -> None:
        self._ctx = _mp.get_context(method)
        self._store = store

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._ctx, attr)

    def get_start_method(self, allow_none: bool = False) -> str:
        return self._ctx.get_start_method(allow_none)

    def Lock(self) -> Lock:
        return Lock(store=self._store)

    def RLock(self) -> RLock:
        return RLock(store=self._store)

    def Semaphore(self, value: int = 1) -> Semaphore:
        return Semaphore(value, store=self._store)

    def BoundedSemaphore(self, value: int = 1) -> BoundedSemaphore:
        return BoundedSemaphore(value, store=self._store)

    def Event(self) -> Event:
        return Event(store=self._store)

    def Condition(self, lock: Any = None) -> Condition:
        return Condition(lock, store=self._store)

    def Barrier(self, parties: int, action: Optional[Callable[[], Any]] = None,
                timeout: Optional[float] = None) -> Barrier:
        return Barrier(parties, action, timeout, store=self._store)

    def __repr__(self) -> str:
        return f"<locksmith.multiprocessing.Context {self._ctx.get_start_method()!r}>"


def get_context(method: Optional[str] = None, store: Optional[str] = None) -> Context:
    """The standard library's context for `method` (``"fork"``, ``"spawn"``,
    ``"forkserver"``; ``None``: the default) with locksmith's primitives, kept in
    ``store`` (default: a ``shm:`` region of the creating process)."""
    return Context(method, store)
