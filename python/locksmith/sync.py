"""runtime.sync's API: a :class:`Mutex` placed in any writable buffer (``bytearray``,
``mmap.mmap``, ``SharedMemory(...).buf`` or a slice of it, ``memoryview``, a NumPy
array), shared by the threads and processes that map it, and :class:`SyncError`.

    from multiprocessing.shared_memory import SharedMemory
    from locksmith.sync import Mutex

    shm = SharedMemory(create=True, size=Mutex.SIZE)
    mutex = Mutex(shm.buf)
    mutex.initialize()          # once, in one process
    with mutex:                 # acquire(timeout=1) ... release()
        ...

Differences from runtime.sync, all in the direction of safety: the buffer is checked
(writable, C-contiguous, at least ``Mutex.SIZE`` bytes, 8-byte aligned; ``EINVAL``
otherwise) and held exported while the Mutex lives, so it cannot be freed under it; a
mutex whose owner died is taken over by the next acquirer, which finds
``mutex.previous_owner_died`` true.

The placed :class:`Semaphore` (``Semaphore(buf=None, /, value=1, *, shared=True,
bounded=False)``: ``acquire(*, timeout=1)``, ``release()``, ``value``; permits a dead
process held come back) and :class:`Event` (``set``, ``clear``, ``is_set``,
``wait(*, timeout=None)``), :class:`Condition` (``Condition(buf=None, /, mutex=None, *,
shared=True)`` over a placed ``Mutex``: ``wait(*, timeout=None)``,
``wait_for(predicate, *, timeout=None)``, ``notify(n=1)``, ``notify_all()``, and the
mutex's ``acquire``/``release``/``with``) and :class:`Barrier` (``Barrier(buf=None, /,
parties=1, *, shared=True)``: ``wait(*, timeout=None)`` returns the arrival index,
``abort()``, ``reset()``, ``leave()``, ``parties``, ``n_waiting``, ``broken``;
:class:`BrokenBarrierError` is a ``SyncError`` with ``EPIPE`` and a
``threading.BrokenBarrierError``) have the same shape: ``SIZE``, ``initialize()``,
``destroy()``, ``SyncError`` with an errno.
"""

from locksmith._locksmith import Mutex, SyncError
from locksmith._locksmith import PlacedBarrier as Barrier
from locksmith._locksmith import PlacedCondition as Condition
from locksmith._locksmith import PlacedEvent as Event
from locksmith._locksmith import PlacedSemaphore as Semaphore
from locksmith._locksmith import SyncBrokenBarrier as BrokenBarrierError

__all__ = [
    "Barrier",
    "BrokenBarrierError",
    "Condition",
    "Event",
    "Mutex",
    "Semaphore",
    "SyncError",
]
