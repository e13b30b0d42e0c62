"""Twisted's ``DeferredLock`` and ``DeferredSemaphore``, also shared by name across
processes and machines.

    from locksmith.twisted import DeferredLock, DeferredSemaphore

    lock = DeferredLock()                      # in-process, as Twisted's own
    jobs = DeferredLock(name="jobs", store="sqlite:/tmp/app.locks")  # every process
    d = jobs.run(fetch, url)                   # a Deferred of fetch's result

Both are subclasses of Twisted's classes and return real ``Deferred`` objects.

Unnamed, they behave as Twisted's: an acquire fires synchronously when the lock is
free, waiters are served first-come first-served, a waiting ``Deferred`` that is
cancelled leaves the queue, ``locked``/``tokens``/``limit`` are plain attributes and
``waiting`` is the list of waiting ``Deferred``s. Two differences, both deliberate:
a release made inside a waiter's callbacks hands the lock on after those callbacks
return (so thousands of quick waiters never hit Python's recursion limit, Twisted
#9304), and ``run`` with a function whose result is ready skips the intermediate
``Deferred``s (the same result, faster).

Named (``name=``, and ``store=`` a store URL or a ``locksmith.Space``; the default
store is ``mem:locksmith.threading``, this process only), the lock lives in the store:
``locked`` and ``tokens`` read the store. The reactor thread never blocks: an acquire
with no local waiter ahead is one try; otherwise the ``Deferred`` joins this object's
FIFO queue, and one helper thread per object waits in the store for its head and
fires it through ``reactor.callFromThread``. A grant that arrives after its waiters
were cancelled is released. Limits: FIFO order holds among the waiters of one object;
between processes the store's order applies. A grant that arrives while the reactor
has stopped is not released until this process exits (the stores free the holds of
processes that end).
"""

from __future__ import annotations

import threading as _threading
from types import CoroutineType
from collections.abc import Coroutine
from typing import Any, Callable, Optional, ParamSpec, TypeVar, overload

from twisted.internet import defer as _defer
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from locksmith import threading as _lt

__all__ = ["DeferredLock", "DeferredSemaphore"]

_T = TypeVar("_T")
_P = ParamSpec("_P")

# How long a helper thread's wait in the store lasts before it checks whether its
# waiters were all cancelled.
_SLICE = 0.25


def _chained(_: object, inner: Deferred[Any]) -> Deferred[Any]:
    return inner


def _store_url(store: Any) -> Optional[str]:
    if store is None or isinstance(store, str):
        return store
    url = getattr(store, "url", None)
    if isinstance(url, str):
        return url
    raise TypeError(f"store must be a store URL or a locksmith.Space, not {store!r}")


def _finish(prim: Any, result: Any) -> Deferred[Any]:
    """What ``run`` returns once ``f`` returned ``result`` while ``prim`` was held:
    maybeDeferred's cases, releasing when the result is complete."""
    if isinstance(result, Deferred):
        # A Deferred that has fired gives its result at once (consumed, as chaining
        # would); one still pending is chained into a fired Deferred, as Twisted's run
        # does, so that a cancel reaches it and callers never add callbacks to f's own.
        box: list[Any] = []
        deciding = True

        def take(r: Any) -> Any:
            if deciding:
                box.append(r)
                return None
            return r

        result.addBoth(take)
        deciding = False
        if box:
            prim.release()
            return fail(box[0]) if isinstance(box[0], Failure) else succeed(box[0])
        return succeed(None).addCallback(_chained, result.addBoth(prim._releaseAndReturn))
    if type(result) is CoroutineType:
        return Deferred.fromCoroutine(result).addBoth(prim._releaseAndReturn)
    prim.release()
    if isinstance(result, Failure):
        return fail(result)
    return succeed(result)


def _execute(_: object, prim: Any, f: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Deferred[Any]:
    try:
        result = f(*args, **kwargs)
    except BaseException:
        failure = Failure(captureVars=Deferred.debug)
        prim.release()
        return fail(failure)
    return _finish(prim, result)


class DeferredLock(_defer.DeferredLock):
    """Twisted's ``DeferredLock``; ``DeferredLock(name=..., store=...)`` is shared by
    every process of the store (see the module's documentation)."""

    locked = False

    def __new__(cls, *, name: Optional[str] = None, store: Any = None,
                reactor: Any = None) -> Any:
        if name is None and store is None:
            return object.__new__(cls)
        return object.__new__(_NamedDeferredLock)

    def __init__(self, *, name: Optional[str] = None, store: Any = None,
                 reactor: Any = None) -> None:
        self.waiting: list[Deferred[Any]] = []
        self._handing = False
        self._owed = 0

    def acquire(self) -> Deferred[Any]:
        """A ``Deferred`` that fires with this lock once it is acquired: at once if it
        is free, else after the waiters ahead of it."""
        d: Deferred[Any] = Deferred(canceller=self._cancelAcquire)
        if self.locked:
            self.waiting.append(d)
        else:
            self.locked = True
            d.callback(self)
        return d

    def release(self) -> None:
        """Releases the lock, handing it to the first waiter if there is one."""
        if not self.locked:
            raise AssertionError("Tried to release an unlocked lock")
        if not self.waiting:
            self.locked = False
        elif self._handing:
            self._owed += 1  # the hand-off loop below, further up the stack, serves it
        else:
            self._hand_off()

    def _hand_off(self) -> None:
        # Fires waiters one after another; releases made by their callbacks are counted
        # in _owed instead of recursing.
        self._handing = True
        try:
            owed = 1
            while owed:
                owed -= 1
                if not self.waiting:
                    self.locked = False
                    break
                self._owed = 0
                self.waiting.pop(0).callback(self)
                owed += self._owed
        finally:
            self._handing = False
            self._owed = 0

    @overload  # type: ignore[override]  # f is positional-only here
    def run(self, f: Callable[_P, Deferred[_T]], /, *args: _P.args,
            **kwargs: _P.kwargs) -> Deferred[_T]: ...

    @overload
    def run(self, f: Callable[_P, Coroutine[Deferred[Any], Any, _T]], /, *args: _P.args,
            **kwargs: _P.kwargs) -> Deferred[_T]: ...

    @overload
    def run(self, f: Callable[_P, _T], /, *args: _P.args,
            **kwargs: _P.kwargs) -> Deferred[_T]: ...

    def run(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Acquires, calls ``f(*args, **kwargs)``, and releases when its result (a
        value, a ``Deferred`` or a coroutine) is complete; returns a ``Deferred`` of
        that result. Errors propagate through it."""
        if self.locked:
            return self.acquire().addCallback(_execute, self, f, args, kwargs)
        self.locked = True
        try:
            result = f(*args, **kwargs)
        except BaseException:
            failure = Failure(captureVars=Deferred.debug)
            self.release()
            return fail(failure)
        if (type(result) is CoroutineType or isinstance(result, (Deferred, Failure))
                or self.waiting or not self.locked):
            return _finish(self, result)
        self.locked = False
        return succeed(result)

    def __aenter__(self) -> Deferred[Any]:
        return self.acquire()

    def __aexit__(self, *exc: Any) -> Deferred[Any]:
        self.release()
        return succeed(False)


class DeferredSemaphore(_defer.DeferredSemaphore):
    """Twisted's ``DeferredSemaphore(tokens)``; with ``name=``/``store=`` shared by
    every process of the store (see the module's documentation)."""

    def __new__(cls, tokens: int, *, name: Optional[str] = None, store: Any = None,
                reactor: Any = None) -> Any:
        if name is None and store is None:
            return object.__new__(cls)
        return object.__new__(_NamedDeferredSemaphore)

    def __init__(self, tokens: int, *, name: Optional[str] = None, store: Any = None,
                 reactor: Any = None) -> None:
        if tokens < 1:
            raise ValueError("DeferredSemaphore requires tokens >= 1")
        self.waiting: list[Deferred[Any]] = []
        self.tokens = tokens
        self.limit = tokens
        self._handing = False
        self._owed = 0

    def acquire(self) -> Deferred[Any]:
        """A ``Deferred`` that fires with this semaphore once a token is taken."""
        d: Deferred[Any] = Deferred(canceller=self._cancelAcquire)
        if self.tokens:
            self.tokens -= 1
            d.callback(self)
        else:
            self.waiting.append(d)
        return d

    def release(self) -> None:
        """Gives a token back, to the first waiter if there is one."""
        if self.tokens >= self.limit:
            raise AssertionError("Someone released me too many times: too many tokens!")
        if not self.waiting:
            self.tokens += 1
        elif self._handing:
            self._owed += 1
        else:
            self._hand_off()

    def _hand_off(self) -> None:
        self._handing = True
        try:
            owed = 1
            while owed:
                owed -= 1
                if not self.waiting:
                    self.tokens += 1
                    continue
                self._owed = 0
                self.waiting.pop(0).callback(self)
                owed += self._owed
        finally:
            self._handing = False
            self._owed = 0

    @overload  # type: ignore[override]  # f is positional-only here
    def run(self, f: Callable[_P, Deferred[_T]], /, *args: _P.args,
            **kwargs: _P.kwargs) -> Deferred[_T]: ...

    @overload
    def run(self, f: Callable[_P, Coroutine[Deferred[Any], Any, _T]], /, *args: _P.args,
            **kwargs: _P.kwargs) -> Deferred[_T]: ...

    @overload
    def run(self, f: Callable[_P, _T], /, *args: _P.args,
            **kwargs: _P.kwargs) -> Deferred[_T]: ...

    def run(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Takes a token, calls ``f(*args, **kwargs)``, and gives the token back when
        its result is complete; returns a ``Deferred`` of that result."""
        if not self.tokens:
            return self.acquire().addCallback(_execute, self, f, args, kwargs)
        self.tokens -= 1
        try:
            result = f(*args, **kwargs)
        except BaseException:
            failure = Failure(captureVars=Deferred.debug)
            self.release()
            return fail(failure)
        if (type(result) is CoroutineType or isinstance(result, (Deferred, Failure))
                or self.waiting or self.tokens >= self.limit):
            return _finish(self, result)
        self.tokens += 1
        return succeed(result)

    def __aenter__(self) -> Deferred[Any]:
        return self.acquire()

    def __aexit__(self, *exc: Any) -> Deferred[Any]:
        self.release()
        return succeed(False)


class _Shared:
    """The named half: a FIFO of local waiters over a primitive of the store, served
    by tries on the reactor thread and by one helper thread that waits in the store."""

    _impl: Any
    _reactor: Any
    waiting: list[Deferred[Any]]

    def _setup(self, impl: Any, reactor: Any) -> None:
        self._impl = impl
        self._reactor = reactor
        self.waiting = []
        self._held = 0  # grants this object holds (its releases are checked against it)
        self._watcher: Optional[_threading.Event] = None  # the helper thread's stop flag
        self._handing = False
        self._owed = 0

    def _get_reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def acquire(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred(canceller=self._cancelAcquire)
        if not self.waiting and self._impl.acquire(False):
            self._held += 1
            d.callback(self)
        else:
            self.waiting.append(d)
            self._watch()
        return d

    def _cancelAcquire(self, d: Deferred[Any]) -> None:
        self.waiting.remove(d)
        if not self.waiting and self._watcher is not None:
            self._watcher.set()  # the helper stops; a grant it still gets is released
            self._watcher = None

    def release(self) -> None:
        if self._held <= 0:
            raise AssertionError("Tried to release what this object does not hold")
        self._held -= 1
        self._impl.release()
        if self.waiting:
            if self._handing:
                self._owed += 1
            else:
                self._owed = 1
                self._serve(False)

    def _serve(self, granted: bool) -> None:
        # Fires local waiters in order, iteratively: a grant from the helper thread,
        # then one try in the store for each release made meanwhile.
        self._handing = True
        try:
            while self.waiting:
                if granted:
                    granted = False
                elif self._owed:
                    self._owed -= 1
                    if not self._impl.acquire(False):
                        break
                else:
                    break
                self._held += 1
                self.waiting.pop(0).callback(self)
            if granted:  # every waiter was cancelled meanwhile
                self._impl.release()
        finally:
            self._handing = False
            self._owed = 0
        self._watch()

    def _watch(self) -> None:
        if self._watcher is not None or not self.waiting:
            return
        stop = _threading.Event()
        self._watcher = stop
        reactor = self._get_reactor()
        _threading.Thread(target=self._wait_in_store, args=(stop, reactor),
                          name="locksmith-twisted-wait", daemon=True).start()

    def _wait_in_store(self, stop: _threading.Event, reactor: Any) -> None:
        impl = self._impl
        try:
            while not stop.is_set():
                if impl.acquire(True, _SLICE):
                    break
            else:
                return
        except BaseException:
            reactor.callFromThread(self._failed, stop, Failure())
            return
        if stop.is_set():
            impl.release()  # nobody waits for it any more
            return
        reactor.callFromThread(self._granted, stop)

    def _granted(self, stop: _threading.Event) -> None:
        if self._watcher is stop:
            self._watcher = None
        self._serve(True)

    def _failed(self, stop: _threading.Event, failure: Failure) -> None:
        if self._watcher is stop:
            self._watcher = None
        if self.waiting:
            self.waiting.pop(0).errback(failure)
        self._watch()

    # Twisted's own run (acquire, then call f, release when its result completes) over
    # this class's acquire and release.
    run = _defer._ConcurrencyPrimitive.run


class _NamedDeferredLock(_Shared, DeferredLock):  # type: ignore[misc]
    """A ``DeferredLock`` made with a name: the lock of the store."""

    def __init__(self, *, name: Optional[str] = None, store: Any = None,
                 reactor: Any = None) -> None:
        self._setup(_lt.Lock(name=name, store=_store_url(store)), reactor)

    @property
    def locked(self) -> bool:  # type: ignore[override]  # read from the store
        """Whether anyone, in any process of the store, holds the lock."""
        return bool(self._impl.locked())


class _NamedDeferredSemaphore(_Shared, DeferredSemaphore):  # type: ignore[misc]
    """A ``DeferredSemaphore`` made with a name: the semaphore of the store."""

    def __init__(self, tokens: int, *, name: Optional[str] = None, store: Any = None,
                 reactor: Any = None) -> None:
        if tokens < 1:
            raise ValueError("DeferredSemaphore requires tokens >= 1")
        self.limit = tokens
        self._setup(_lt.BoundedSemaphore(tokens, name=name, store=_store_url(store)),
                    reactor)

    @property
    def tokens(self) -> int:  # type: ignore[override]  # read from the store
        """The tokens free in the store, for every process."""
        return int(self._impl.get_value())
