"""asyncio's ``Lock``, ``Event``, ``Semaphore`` and ``BoundedSemaphore``, also shared by
name across processes and machines.

    from locksmith import asyncio as la

    lock = la.Lock()                                   # anonymous, like asyncio.Lock()
    jobs = la.Lock(name="jobs", store="redis://host/0")  # every process of the store
    async with jobs:
        ...

The event loop is never blocked: an uncontended acquire is one synchronous try inside
the coroutine; a contended one waits on a helper thread (its own, so many waiters never
starve a shared executor) and is completed on the loop with ``call_soon_threadsafe``.
Cancellation is safe: a grant that races the cancellation is released at once, never
leaked. Unlike asyncio's, waiters are not served strictly first-come first-served (they
retry every 50 ms while they wait); ``Condition`` and ``Barrier`` are not here yet.
"""

from __future__ import annotations

import asyncio as _asyncio
import threading as _threading
from typing import Any, Callable, Optional

from locksmith import threading as _lt

__all__ = ["BoundedSemaphore", "Event", "Lock", "Semaphore"]

_SLICE = 0.05


async def _wait_on_thread(attempt: Callable[[float], bool],
                          undo: Optional[Callable[[], None]]) -> bool:
    """Runs ``attempt(slice)`` on a helper thread until it succeeds; the coroutine
    resumes on the loop then. If the coroutine is cancelled, the thread stops at its
    next slice, and a success that raced the cancellation is undone with ``undo``."""
    loop = _asyncio.get_running_loop()
    done: _asyncio.Future[bool] = loop.create_future()
    stop = _threading.Event()

    def deliver() -> None:
        if done.cancelled():
            if undo is not None:
                undo()
        else:
            done.set_result(True)

    def fail(exc: BaseException) -> None:
        if not done.cancelled():
            done.set_exception(exc)

    def run() -> None:
        try:
            while not stop.is_set():
                if attempt(_SLICE):
                    break
            else:
                return
        except BaseException as exc:  # handed to the waiting coroutine
            try:
                loop.call_soon_threadsafe(fail, exc)
            except RuntimeError:
                pass
            return
        try:
            loop.call_soon_threadsafe(deliver)
        except RuntimeError:  # the loop closed meanwhile: nobody will use it
            if undo is not None:
                undo()

    _threading.Thread(target=run, name="locksmith-asyncio-wait", daemon=True).start()
    try:
        return await done
    except _asyncio.CancelledError:
        stop.set()
        raise


class Lock:
    """asyncio's ``Lock``: ``await acquire()``, ``release()``, ``locked()``,
    ``async with``. Owned by the acquisition (no task identity is needed to release)."""

    __slots__ = ("_impl", "__weakref__")

    def __init__(self, *, name: Optional[str] = None, store: Optional[str] = None) -> None:
        self._impl = _lt.Lock(name=name, store=store)

    def locked(self) -> bool:
        return self._impl.locked()

    async def acquire(self) -> bool:
        if self._impl.acquire(False):
            return True
        impl = self._impl
        return await _wait_on_thread(lambda t: impl.acquire(True, t), impl.release)

    def release(self) -> None:
        self._impl.release()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "locked" if self.locked() else "unlocked"
        return f"<locksmith.asyncio.Lock object at {id(self):#x} [{state}]>"


class Event:
    """asyncio's ``Event``: ``await wait()``, ``set()``, ``clear()``, ``is_set()``."""

    __slots__ = ("_impl", "__weakref__")

    def __init__(self, *, name: Optional[str] = None, store: Optional[str] = None) -> None:
        self._impl = _lt.Event(name=name, store=store)

    def is_set(self) -> bool:
        return self._impl.is_set()

    def set(self) -> None:
        self._impl.set()

    def clear(self) -> None:
        self._impl.clear()

    async def wait(self) -> bool:
        if self._impl.is_set():
            return True
        impl = self._impl
        return await _wait_on_thread(lambda t: impl.wait(t), None)

    def __repr__(self) -> str:
        state = "set" if self.is_set() else "unset"
        return f"<locksmith.asyncio.Event object at {id(self):#x} [{state}]>"


class Semaphore:
    """asyncio's ``Semaphore(value=1)``: ``await acquire()``, ``release()``,
    ``locked()``, ``async with``."""

    _kind: Callable[..., Any] = _lt.Semaphore
    __slots__ = ("_impl", "__weakref__")

    def __init__(self, value: int = 1, *, name: Optional[str] = None,
                 store: Optional[str] = None) -> None:
        if value < 0:
            raise ValueError("Semaphore initial value must be >= 0")
        self._impl = type(self)._kind(value, name=name, store=store)

    def locked(self) -> bool:
        return self._impl.get_value() == 0

    async def acquire(self) -> bool:
        if self._impl.acquire(False):
            return True
        impl = self._impl
        return await _wait_on_thread(lambda t: impl.acquire(True, t), impl.release)

    def release(self) -> None:
        self._impl.release()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        return (f"<locksmith.asyncio.{type(self).__name__} object at {id(self):#x} "
                f"[value={self._impl.get_value()}]>")


class BoundedSemaphore(Semaphore):
    """asyncio's ``BoundedSemaphore``: a release past the initial value raises
    ``ValueError``."""

    _kind = _lt.BoundedSemaphore
    __slots__ = ()
