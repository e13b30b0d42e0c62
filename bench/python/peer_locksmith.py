"""locksmith's Python package, measured from Python, beside the peers it replaces:
runtime.sync-style ``locksmith.sync.Mutex`` and ``multiprocessing.Lock`` (acquire +
release, and ``with``), a ``sqlite:`` Lock and ``diskcache.Lock``, a ``redis://`` Lock
and redis-py's Lock. compare.sh builds the package (release) into the bench venv."""

import os
import tempfile

from common import main, per_op, ping_pong


def run(out, budget, scratch):
    try:
        import locksmith
        from locksmith.sync import Mutex
    except ImportError as e:
        for system in ("locksmith.sync Mutex (Python)", "locksmith sqlite: Lock (Python)"):
            out.skip("uncontended", system, "Lock", f"the locksmith package is not installed: {e}")
        return
    import multiprocessing

    note = "Python call overhead included; one process"
    mutex = Mutex(bytearray(Mutex.SIZE))
    mutex.initialize()

    def mutex_cycle():
        mutex.acquire()
        mutex.release()

    def mutex_with():
        with mutex:
            pass

    out.measure("uncontended", "locksmith.sync Mutex (Python)", "Lock", note,
                lambda: per_op(budget, mutex_cycle))
    out.measure("uncontended", "locksmith.sync Mutex with (Python)", "Lock", note,
                lambda: per_op(budget, mutex_with))

    from locksmith.sync import Semaphore as PlacedSemaphore

    sems = (PlacedSemaphore(None, 0), PlacedSemaphore(None, 0))  # own shared mappings
    for sem in sems:
        sem.initialize()
    out.measure("pingpong", "locksmith.sync Semaphore (Python)", "Semaphore",
                "placed in an anonymous shared mapping; fork",
                lambda: ping_pong(budget, lambda: sems, lambda s: s.release(),
                                  lambda s: s.acquire(timeout=None)))

    mp_lock = multiprocessing.get_context("fork").Lock()

    def mp_with():
        with mp_lock:
            pass

    out.measure("uncontended", "multiprocessing Lock with", "Lock", "fork context",
                lambda: per_op(budget, mp_with))

    d = tempfile.mkdtemp(prefix="locksmith-py-", dir=scratch)
    space = locksmith.Space(f"sqlite:{os.path.join(d, 'locks.sqlite')}")
    lock = locksmith.Lock("lock", space)

    def lock_cycle():
        lock.acquire()
        lock.release()

    out.measure("uncontended", "locksmith sqlite: Lock (Python)", "Lock",
                "acquire() + release(); file on the scratch disk",
                lambda: per_op(budget, lock_cycle))

    from locksmith import diskcache as recipes

    dlock = recipes.Lock(d, "lock")

    def dlock_cycle():
        dlock.acquire()
        dlock.release()

    out.measure("uncontended", "locksmith.diskcache Lock (Python)", "Lock",
                "diskcache's recipe API on sqlite: in the directory",
                lambda: per_op(budget, dlock_cycle))

    url = os.environ.get("LOCKSMITH_REDIS_URL") or "redis://127.0.0.1:6379/"
    try:
        rlock = locksmith.Lock("lock", locksmith.Space(f"{url.rstrip('/')}/0?prefix=lsbench{os.getpid()}:"))
        rlock.acquire(timeout=5)
        rlock.release()
    except Exception as e:  # noqa: BLE001 - unreachable Redis is a skip, not a failure
        out.skip("uncontended", "locksmith redis: Lock (Python)", "Lock", f"Redis at {url}: {e}")
        return

    def rlock_cycle():
        rlock.acquire()
        rlock.release()

    out.measure("uncontended", "locksmith redis: Lock (Python)", "Lock", f"one space on {url}",
                lambda: per_op(budget, rlock_cycle))


if __name__ == "__main__":
    main(run)
