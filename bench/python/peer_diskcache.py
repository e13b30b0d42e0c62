"""python-diskcache peers: Lock, RLock, BoundedSemaphore, Averager, and Lock hand-off.

diskcache's primitives are SQLite transactions on a Cache; a waiting acquire polls with
a 1 ms sleep, which is what the hand-off row shows.
"""

import os
import shutil
import tempfile

from common import handoff, main, per_op


def run(out, budget, scratch):
    import diskcache

    d = tempfile.mkdtemp(prefix="diskcache-", dir=scratch)
    note = "Cache on the scratch disk; default settings"
    try:
        cache = diskcache.Cache(d)
        lock = diskcache.Lock(cache, "lock")

        def lock_cycle():
            lock.acquire()
            lock.release()

        out.measure("uncontended", "python-diskcache Lock", "Lock", note,
                    lambda: per_op(budget, lock_cycle))

        rlock = diskcache.RLock(cache, "rlock")

        def rlock_cycle():
            rlock.acquire()
            rlock.release()

        out.measure("primitives", "python-diskcache RLock", "RLock", note,
                    lambda: per_op(budget, rlock_cycle))

        sem = diskcache.BoundedSemaphore(cache, "sem", value=2)

        def sem_cycle():
            sem.acquire()
            sem.release()

        out.measure("primitives", "python-diskcache BoundedSemaphore", "BoundedSemaphore",
                    note + "; value=2", lambda: per_op(budget, sem_cycle))

        avg = diskcache.Averager(cache, "avg")
        out.measure("primitives", "python-diskcache Averager", "Averager",
                    note + "; one add()", lambda: per_op(budget, lambda: avg.add(1.5)))

        def open_store():
            diskcache.Cache(d).close()

        out.measure("open", "python-diskcache Cache (store) open", "Lock",
                    "diskcache.Cache(existing dir) + close: what a process pays before "
                    "diskcache.Lock(cache, name), which itself does no I/O",
                    lambda: per_op(budget, open_store))

        def open_lock():
            return diskcache.Lock(diskcache.Cache(d), "handoff")

        out.measure("handoff", "python-diskcache Lock", "Lock",
                    "each process opens the Cache; waiter polls every 1 ms",
                    lambda: handoff(budget, open_lock, lambda l: l.acquire(),
                                    lambda l: l.release(),
                                    samples=max(10, budget.latency_samples // 4),
                                    poll=0.001))
        cache.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main(run)
