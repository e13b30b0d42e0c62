"""python-diskcache's synchronisation recipes (``Lock``, ``RLock``,
``BoundedSemaphore``, ``Averager``, ``throttle``, ``barrier``) on locksmith: waiters
sleep until woken instead of spinning on the cache, holds carry fencing tokens, and an
``expire`` that lapses never lets the old holder's ``release()`` remove the new
holder's lock.

``cache`` may be a diskcache ``Cache`` or ``FanoutCache`` (anything with a
``.directory``: the store is the SQLite file ``locksmith.sqlite`` inside that
directory, so removing the directory removes it), a directory path, a
:class:`locksmith.Space`, or a store URL (``sqlite:...``, ``shm:...``, ``redis://...``).
Keys of every type diskcache accepts name the same primitive in every process.

Return values and errors follow diskcache's source: ``acquire()`` returns None,
``__enter__`` returns None, releasing an RLock or BoundedSemaphore that is not held
raises ``AssertionError`` (here a :class:`locksmith.NotHeld` /
:class:`locksmith.TooManyReleases` that is also an ``AssertionError``).
"""

from __future__ import annotations

import errno as _errno
import functools
import hashlib
import os
import re
import time
from typing import Any, Callable, TypeVar

import locksmith as _ls
from locksmith._locksmith import MAX_NAME_LEN

__all__ = [
    "Averager",
    "BoundedSemaphore",
    "Lock",
    "RLock",
    "UnacquiredRelease",
    "UnacquiredSemaphoreRelease",
    "barrier",
    "store_url",
    "key_name",
    "throttle",
]

_F = TypeVar("_F", bound=Callable[..., Any])

_URL = re.compile(r"^(mem|shm|sqlite|redis|rediss|postgres|postgresql):")


class UnacquiredRelease(_ls.NotHeld, AssertionError):
    """Release of an RLock the caller does not hold (diskcache: AssertionError)."""

    errno = _errno.EPERM


class UnacquiredSemaphoreRelease(_ls.TooManyReleases, AssertionError):
    """Release of a BoundedSemaphore with every permit free (diskcache:
    AssertionError)."""

    errno = _errno.EOVERFLOW


def store_url(cache: Any) -> Any:
    """The store for `cache`: a Space is itself; a cache (anything with a
    ``.directory``) or a directory path is ``sqlite:DIR/locksmith.sqlite``; a string
    with a store scheme is that URL."""
    if isinstance(cache, _ls.Space):
        return cache
    directory = getattr(cache, "directory", None)
    if directory is None:
        if isinstance(cache, str) and _URL.match(cache):
            return cache
        if isinstance(cache, (str, os.PathLike)):
            directory = os.fspath(cache)
        else:
            raise TypeError(
                "cache must be a diskcache Cache/FanoutCache, a directory, a "
                f"locksmith.Space or a store URL, not {type(cache).__name__}"
            )
    directory = os.path.abspath(os.fspath(directory))
    os.makedirs(directory, exist_ok=True)
    return f"sqlite:{os.path.join(directory, 'locksmith.sqlite')}"


def _encode(key: Any) -> str:
    # Type-tagged, so that 1, 1.0, True, "1" and b"1" (distinct diskcache keys) stay
    # distinct; never hash(), which differs between processes.
    if key is None:
        return "n"
    if isinstance(key, bool):
        return "b" + ("1" if key else "0")
    if isinstance(key, str):
        return "s" + key
    if isinstance(key, bytes):
        return "y" + key.hex()
    if isinstance(key, int):
        return "i" + str(key)
    if isinstance(key, float):
        return "f" + key.hex()
    if isinstance(key, tuple):
        return "t(" + ",".join(_encode(k).replace("\\", "\\\\").replace(",", "\\,") for k in key) + ")"
    import pickle

    return "p" + hashlib.sha256(pickle.dumps(key, protocol=4)).hexdigest()


def key_name(key: Any) -> str:
    """The primitive name a diskcache key maps to (deterministic, injective up to
    SHA-256 for long keys)."""
    name = "diskcache:" + _encode(key)
    if len(name.encode()) > MAX_NAME_LEN:
        name = "diskcache#" + hashlib.sha256(name.encode()).hexdigest()
    return name


class _Recipe:
    _native: Any

    def __init__(self, cache: Any, key: Any, expire: float | None, tag: str | None):
        self._cache = cache
        self._key = key
        self._expire = expire
        self._tag = tag
        self._store = store_url(cache)

    def __reduce__(self) -> Any:
        url = self._store if isinstance(self._store, str) else self._store.url
        return (type(self), self._args(url))

    def _args(self, url: str) -> tuple[Any, ...]:
        return (url, self._key, self._expire, self._tag)

    def __repr__(self) -> str:
        return f"<locksmith.diskcache.{type(self).__name__} key={self._key!r}>"


class Lock(_Recipe):
    """diskcache's ``Lock``: any thread or process may release it."""

    def __init__(self, cache: Any, key: Any, expire: float | None = None, tag: str | None = None):
        super().__init__(cache, key, expire, tag)
        self._native = _ls.Lock(key_name(key), self._store, expire, False, tag)

    def acquire(self) -> None:
        """Waits until the lock is free and takes it."""
        self._native.acquire()

    def release(self) -> None:
        """Releases the lock, whoever holds it (as diskcache's delete of the key does);
        does nothing if it is free or if this holder's ``expire`` lapsed (its lock may
        belong to someone else now)."""
        native = self._native
        try:
            native.release()
        except _ls.LeaseLost:
            pass
        except _ls.NotHeld:
            # Held through another object (another process): diskcache deletes the key.
            native_space = _ls.Space(native.url)
            native_space.force_release(native.name)

    def locked(self) -> bool:
        """Whether anyone holds the lock."""
        return bool(self._native.locked())

    def __enter__(self) -> None:
        self._native.acquire()

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


class RLock(_Recipe):
    """diskcache's ``RLock``, owned by a process and thread."""

    def __init__(self, cache: Any, key: Any, expire: float | None = None, tag: str | None = None):
        super().__init__(cache, key, expire, tag)
        self._native = _ls.RLock(key_name(key), self._store, expire, False, tag)

    def acquire(self) -> None:
        """Takes the lock, again if this thread holds it."""
        self._native.acquire()

    def release(self) -> None:
        """Releases one level; ``AssertionError`` if this thread does not hold it."""
        if self._native._count_mine() == 0:
            raise UnacquiredRelease("cannot release un-acquired lock")
        try:
            self._native.release()
        except _ls.LeaseLost:
            pass

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


class BoundedSemaphore(_Recipe):
    """diskcache's ``BoundedSemaphore``: anyone may release a permit."""

    def __init__(
        self,
        cache: Any,
        key: Any,
        value: int = 1,
        expire: float | None = None,
        tag: str | None = None,
    ):
        super().__init__(cache, key, expire, tag)
        self._value = value
        self._native = _ls.BoundedSemaphore(key_name(key), value, self._store, expire, False, tag)

    def _args(self, url: str) -> tuple[Any, ...]:
        return (url, self._key, self._value, self._expire, self._tag)

    def acquire(self) -> None:
        """Waits for a permit and takes it."""
        self._native.acquire()

    def release(self) -> None:
        """Gives a permit back; ``AssertionError`` if every permit is free."""
        try:
            self._native.release()
        except _ls.LeaseLost:
            pass
        except _ls.TooManyReleases:
            raise UnacquiredSemaphoreRelease("cannot release un-acquired semaphore") from None

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


class Averager(_Recipe):
    """diskcache's ``Averager``: a running average many processes feed."""

    def __init__(self, cache: Any, key: Any, expire: float | None = None, tag: str | None = None):
        super().__init__(cache, key, expire, tag)
        self._native = _ls.Averager(key_name(key), self._store, expire, tag)

    def add(self, value: float) -> None:
        """Adds a value."""
        self._native.add(value)

    def get(self) -> float | None:
        """The average, or None if nothing was added."""
        return self._native.get()  # type: ignore[no-any-return]

    def pop(self) -> float | None:
        """The average, removing it."""
        return self._native.pop()  # type: ignore[no-any-return]


def _full_name(func: Callable[..., Any]) -> str:
    return f"{func.__module__}.{func.__qualname__}"


def throttle(
    cache: Any,
    count: int,
    seconds: float,
    name: str | None = None,
    expire: float | None = None,
    tag: str | None = None,
    time_func: Callable[[], float] = time.time,
    sleep_func: Callable[[float], Any] = time.sleep,
) -> Callable[[_F], _F]:
    """diskcache's ``throttle``: lets `count` calls through per `seconds`, across
    processes. The bucket's state lives in the diskcache cache (a ``Cache`` passed in,
    or one opened on the directory), read and written under a locksmith Lock instead
    of a cache transaction."""
    import diskcache as _dc  # the bucket's state is kept in a diskcache Cache

    store = cache if hasattr(cache, "get") and hasattr(cache, "set") else None
    if store is None:
        if isinstance(cache, (str, os.PathLike)) and not (isinstance(cache, str) and _URL.match(cache)):
            store = _dc.Cache(os.fspath(cache))
        else:
            raise TypeError("throttle keeps its state in a diskcache Cache: pass one, or a directory")

    def decorator(func: _F) -> _F:
        rate = count / float(seconds)
        key = _full_name(func) if name is None else name
        store.set(key, (time_func(), count), expire=expire, tag=tag, retry=True)
        guard = Lock(cache, ("locksmith.throttle", key))

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            while True:
                with guard:
                    last, tally = store.get(key)
                    now = time_func()
                    tally += (now - last) * rate
                    delay = 0.0
                    if tally > count:
                        store.set(key, (now, count - 1), expire)
                    elif tally >= 1:
                        store.set(key, (now, tally - 1), expire)
                    else:
                        delay = (1 - tally) / rate
                if not delay:
                    return func(*args, **kwargs)
                sleep_func(delay)

        return wrapper  # type: ignore[return-value]

    return decorator


def barrier(
    cache: Any,
    lock_factory: Callable[..., Any],
    name: str | None = None,
    expire: float | None = None,
    tag: str | None = None,
) -> Callable[[_F], _F]:
    """diskcache's ``barrier``: runs the decorated function under
    ``lock_factory(cache, key, expire=expire, tag=tag)``, one call at a time across
    processes."""

    def decorator(func: _F) -> _F:
        key = _full_name(func) if name is None else name
        lock = lock_factory(cache, key, expire=expire, tag=tag)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator
