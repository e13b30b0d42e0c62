"""locksmith's Python package against the modules it replaces, measured from Python as
paired rows (scenario `python`): ours and the peer run in alternating short batches of
the same length, and a row is the median of the per-pair ratios ours/peer (below 1:
ours is faster), so the load of a shared machine cancels out of it. The issue's targets
are checked against these rows (TARGETS in crates/locksmith-bench/src/report.rs).

Rows: ``locksmith.sync.Mutex``, ``locksmith.multiprocessing``'s Lock and a named
``shm:`` Lock against ``multiprocessing.Lock``; ``locksmith.threading.Lock`` against
``threading.Lock``; ``locksmith.asyncio.Lock`` against ``asyncio.Lock``;
``locksmith.twisted.DeferredLock.run`` against Twisted's; a ``sqlite:`` Lock (and
``locksmith.diskcache.Lock``) against ``diskcache.Lock``; a ``redis://`` Lock against
redis-py's; the placed ``locksmith.sync.Semaphore`` ping-pong against
``multiprocessing.Semaphore``'s. compare.sh builds the package (release) into the bench
venv first."""

import asyncio
import os
import tempfile
import time

from common import acquire_release, main, paired, paired_ping_pong, with_block

NS = "ns/op"


def async_with(lock):
    """n times `async with lock: pass` in one event loop, timed inside the loop."""
    loop = asyncio.new_event_loop()

    async def body(n):
        t = time.perf_counter_ns()
        for _ in range(n):
            async with lock:
                pass
        return time.perf_counter_ns() - t

    return lambda n: loop.run_until_complete(body(n))


def deferred_run(lock):
    """n times `lock.run(ready)` of a function that returns at once."""

    def ready():
        return 1

    def run(n):
        t = time.perf_counter_ns()
        for _ in range(n):
            lock.run(ready)
        return time.perf_counter_ns() - t

    return run


def run(out, budget, scratch):
    try:
        import locksmith
        from locksmith import asyncio as la
        from locksmith import multiprocessing as lmp
        from locksmith import threading as lt
        from locksmith import twisted as ltw
        from locksmith.sync import Mutex
        from locksmith.sync import Semaphore as PlacedSemaphore
    except ImportError as e:
        out.skip("python", "locksmith (Python)", "Lock", f"the locksmith package is not installed: {e}")
        out.failures += 1
        return
    import multiprocessing
    import threading

    mp = multiprocessing.get_context("fork")
    mp_lock = mp.Lock()
    mutex = Mutex(bytearray(Mutex.SIZE))
    mutex.initialize()
    out.pair("locksmith.sync.Mutex acquire()+release()", "Lock", "multiprocessing.Lock", NS,
             lambda: paired(budget, acquire_release(mutex), acquire_release(mp_lock)))
    out.pair("locksmith.sync.Mutex with", "Lock", "multiprocessing.Lock with", NS,
             lambda: paired(budget, with_block(mutex), with_block(mp_lock)))

    lmp_lock = lmp.get_context("fork").Lock()
    out.pair("locksmith.multiprocessing Lock acquire()+release()", "Lock", "multiprocessing.Lock",
             NS, lambda: paired(budget, acquire_release(lmp_lock), acquire_release(mp_lock)))
    out.pair("locksmith.multiprocessing Lock with", "Lock", "multiprocessing.Lock with", NS,
             lambda: paired(budget, with_block(lmp_lock), with_block(mp_lock)))

    shm_name = f"locksmith-bench-py-{os.getpid()}"
    try:
        shm_lock = locksmith.Lock("lock", locksmith.Space(f"shm:{shm_name}?capacity=64&arena=4M"))
        out.pair("locksmith shm: Lock (named) acquire()+release()", "Lock", "multiprocessing.Lock",
                 NS, lambda: paired(budget, acquire_release(shm_lock), acquire_release(mp_lock)))
    finally:
        try:
            os.unlink(f"/dev/shm/{shm_name}")
        except FileNotFoundError:
            pass

    t_lock, our_lock = threading.Lock(), lt.Lock()
    out.pair("locksmith.threading.Lock acquire()+release()", "Lock", "threading.Lock", NS,
             lambda: paired(budget, acquire_release(our_lock), acquire_release(t_lock)))
    out.pair("locksmith.threading.Lock with", "Lock", "threading.Lock with", NS,
             lambda: paired(budget, with_block(our_lock), with_block(t_lock)))

    out.pair("locksmith.asyncio.Lock async with", "Lock", "asyncio.Lock async with", NS,
             lambda: paired(budget, async_with(la.Lock()), async_with(asyncio.Lock())))

    try:
        from twisted.internet import defer
    except ImportError as e:
        out.skip("python", "locksmith.twisted.DeferredLock.run", "Lock", f"Twisted: {e}")
    else:
        out.pair("locksmith.twisted.DeferredLock.run", "Lock", "Twisted DeferredLock.run", NS,
                 lambda: paired(budget, deferred_run(ltw.DeferredLock()),
                                deferred_run(defer.DeferredLock())))

    sems = (PlacedSemaphore(None, 0), PlacedSemaphore(None, 0))  # own shared mappings
    for sem in sems:
        sem.initialize()
    mp_sems = (mp.Semaphore(0), mp.Semaphore(0))
    out.pair("locksmith.sync.Semaphore ping-pong", "Semaphore",
             "multiprocessing.Semaphore ping-pong", "µs",
             lambda: paired_ping_pong(
                 budget,
                 (lambda: sems, lambda s: s.release(), lambda s: s.acquire(timeout=None)),
                 (lambda: mp_sems, lambda s: s.release(), lambda s: s.acquire())))

    d = tempfile.mkdtemp(prefix="locksmith-py-", dir=scratch)
    try:
        import diskcache
    except ImportError as e:
        out.skip("python", "locksmith sqlite: Lock", "Lock", f"diskcache: {e}")
    else:
        dc_lock = diskcache.Lock(diskcache.Cache(os.path.join(d, "diskcache")), "lock")
        sq_lock = locksmith.Lock("lock", locksmith.Space(f"sqlite:{os.path.join(d, 'locks.sqlite')}"))
        out.pair("locksmith sqlite: Lock", "Lock", "diskcache.Lock", NS,
                 lambda: paired(budget, acquire_release(sq_lock), acquire_release(dc_lock)))
        from locksmith import diskcache as recipes

        rc_lock = recipes.Lock(os.path.join(d, "recipes"), "lock")
        out.pair("locksmith.diskcache.Lock", "Lock", "diskcache.Lock", NS,
                 lambda: paired(budget, acquire_release(rc_lock), acquire_release(dc_lock)))

    url = os.environ.get("LOCKSMITH_REDIS_URL") or "redis://127.0.0.1:6379/"
    try:
        import redis

        r = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=10)
        rp_lock = r.lock(f"locksmith-bench:py-pair:{os.getpid()}", timeout=30)
        space = locksmith.Space(f"{url.rstrip('/')}/0?prefix=lsbench{os.getpid()}:")
        rs_lock = locksmith.Lock("lock", space)
        rs_lock.acquire(timeout=5)
        rs_lock.release()
    except Exception as e:  # noqa: BLE001 - unreachable Redis is a skip, not a failure
        out.skip("python", "locksmith redis: Lock", "Lock", f"Redis at {url}: {e}")
        return
    out.pair("locksmith redis: Lock", "Lock", "redis-py Lock", NS,
             lambda: paired(budget, acquire_release(rs_lock), acquire_release(rp_lock)))


if __name__ == "__main__":
    main(run)
