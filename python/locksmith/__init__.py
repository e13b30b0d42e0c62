"""locksmith: locks, semaphores, events, conditions, barriers and averagers that work
the same across threads, processes (``shm:``, ``sqlite:``) and machines (``redis://``).

Open a :class:`Space` from a store URL and take its primitives by name::

    import locksmith
    space = locksmith.Space("sqlite:/tmp/jobs.sqlite")
    with locksmith.Lock("deploy", space) as guard:
        print("deploying under fencing token", guard.token)

The seed APIs have their own modules: :mod:`locksmith.sync` (runtime.sync's placed
``Mutex``) and :mod:`locksmith.diskcache` (python-diskcache's recipes).
:mod:`locksmith.twisted` has Twisted's ``DeferredLock`` and ``DeferredSemaphore``.
"""

from locksmith._locksmith import (
    Barrier,
    RwLock,
    Averager,
    Event,
    SyncError,
    BoundedSemaphore,
    BrokenBarrier,
    Condition,
    Guard,
    Holder,
    InvalidArgument,
    LeaseLost,
    Lock,
    LocksmithError,
    LockTimeout,
    Mismatch,
    NotHeld,
    NotOwner,
    RLock,
    Semaphore,
    Space,
    StoreError,
    TooManyReleases,
    Unsupported,
    WouldDeadlock,
)

__all__ = [
    "Barrier",
    "RwLock",
    "Averager",
    "Event",
    "SyncError",
    "BoundedSemaphore",
    "BrokenBarrier",
    "Condition",
    "Guard",
    "Holder",
    "InvalidArgument",
    "LeaseLost",
    "Lock",
    "LocksmithError",
    "LockTimeout",
    "Mismatch",
    "NotHeld",
    "NotOwner",
    "RLock",
    "Semaphore",
    "Space",
    "StoreError",
    "TooManyReleases",
    "Unsupported",
    "WouldDeadlock",
]
