"""locksmith.diskcache: diskcache's recipes on every store, with diskcache's return
values and errors, keys of every type, pickling, expiry, and real processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import diskcache
import pytest

import locksmith
from locksmith import diskcache as dc

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(params=["cache", "fanout", "path", "url"])
def cache(request, tmp_path, store):
    """A cache argument of every kind diskcache users pass, and store URLs."""
    if request.param == "cache":
        c = diskcache.Cache(str(tmp_path / "c"))
        yield c
        c.close()
    elif request.param == "fanout":
        c = diskcache.FanoutCache(str(tmp_path / "f"), shards=2)
        yield c
        c.close()
    elif request.param == "path":
        yield str(tmp_path / "p")
    else:
        yield store


def test_lock_follows_diskcache(cache):
    lock = dc.Lock(cache, "shared_resource")
    assert lock.locked() is False
    assert lock.acquire() is None
    assert lock.locked() is True
    assert lock.release() is None
    assert lock.locked() is False
    lock.release()  # diskcache deletes a missing key: nothing happens
    with lock as entered:
        assert entered is None
        assert lock.locked()


def test_lock_released_by_another_thread_and_object(cache):
    lock = dc.Lock(cache, "handoff")
    lock.acquire()
    t = threading.Thread(target=lock.release)
    t.start()
    t.join()
    assert not lock.locked()
    lock.acquire()
    dc.Lock(cache, "handoff").release()  # anyone may delete the key
    assert not lock.locked()


def test_rlock_follows_diskcache(cache):
    rlock = dc.RLock(cache, "re")
    rlock.acquire()
    rlock.acquire()
    rlock.release()
    rlock.release()
    with pytest.raises(AssertionError, match="cannot release un-acquired lock") as info:
        rlock.release()
    assert isinstance(info.value, locksmith.NotHeld)


def test_bounded_semaphore_follows_diskcache(cache):
    sem = dc.BoundedSemaphore(cache, "pool", value=2)
    sem.acquire()
    sem.acquire()
    got = []
    t = threading.Thread(target=lambda: got.append(sem._native.try_acquire()))
    t.start()
    t.join()
    assert got == [None]
    sem.release()
    sem.release()
    with pytest.raises(AssertionError, match="cannot release un-acquired semaphore") as info:
        sem.release()
    assert isinstance(info.value, locksmith.TooManyReleases)


def test_averager_follows_diskcache(cache):
    avg = dc.Averager(cache, "latency")
    assert avg.get() is None
    avg.add(1)
    avg.add(2)
    assert avg.get() == 1.5
    assert avg.pop() == 1.5
    assert avg.get() is None


@pytest.mark.parametrize(
    "key",
    ["k", b"k", 1, 1.0, True, None, ("a", 1, b"x"), ("a", ("b", 2.5)), "x" * 1000,
     frozenset({1})],
)
def test_keys_map_deterministically(tmp_path, key):
    name = dc.key_name(key)
    assert len(name.encode()) <= locksmith._locksmith.MAX_NAME_LEN
    code = "import sys, locksmith.diskcache as d, ast; print(d.key_name(eval(sys.argv[1])))"
    other = subprocess.run(
        [sys.executable, "-c", code, repr(key)], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert other.stdout.strip() == name
    lock = dc.Lock(str(tmp_path), key)
    with lock:
        assert lock.locked()


def test_distinct_keys_stay_distinct():
    keys = ["1", b"1", 1, 1.0, True, ("1",), ("1", ""), "a,b", ("a", "b"), ("a,b",)]
    assert len({dc.key_name(k) for k in keys}) == len(keys)


def test_objects_pickle(tmp_path):
    cache = diskcache.Cache(str(tmp_path))
    objs = [dc.Lock(cache, "l", expire=5, tag="t"), dc.RLock(cache, ("r", 1)),
            dc.BoundedSemaphore(cache, "s", value=3), dc.Averager(cache, "a")]
    for obj in objs:
        again = pickle.loads(pickle.dumps(obj))
        assert type(again) is type(obj)
        assert again._key == obj._key
    lock = objs[0]
    with lock:
        assert pickle.loads(pickle.dumps(lock)).locked()
    cache.close()


def test_store_lives_in_the_cache_directory(tmp_path):
    cache = diskcache.Cache(str(tmp_path / "c"))
    with dc.Lock(cache, "x"):
        pass
    assert (tmp_path / "c" / "locksmith.sqlite").exists()
    cache.close()
    shutil.rmtree(cache.directory)
    assert not (tmp_path / "c").exists()


def test_expired_holder_cannot_release_the_new_holders_lock(tmp_path):
    cache = diskcache.Cache(str(tmp_path))
    first = dc.Lock(cache, "lease", expire=0.2)
    first.acquire()
    second = dc.Lock(cache, "lease", expire=30)
    got = []
    t = threading.Thread(target=lambda: (second.acquire(), got.append(True)))
    t.start()
    t.join(30)  # the first hold lapses after 0.2 s and the second takes over
    assert got == [True]
    first.release()  # the lapsed holder's release: must not remove the new hold
    assert second.locked()
    second.release()
    cache.close()


def _count_under_lock(cache_dir, counter, n):
    lock = dc.Lock(diskcache.Cache(cache_dir), "counter-lock")
    for _ in range(n):
        with lock:  # an unguarded read-modify-write would lose increments
            value = int(Path(counter).read_text() or "0")
            Path(counter).write_text(str(value + 1))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_lock_excludes_across_processes(tmp_path, method):
    ctx = mp.get_context(method)
    counter = tmp_path / "counter"
    counter.write_text("0")
    procs = [ctx.Process(target=_count_under_lock, args=(str(tmp_path / "c"), str(counter), 50))
             for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert counter.read_text() == "150"


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_lock_pickled_to_processes(tmp_path, method):
    ctx = mp.get_context(method)
    cache = diskcache.Cache(str(tmp_path))
    lock = dc.Lock(cache, "pickled-lock")
    with ctx.Pool(2) as pool:
        # The lock travels as a Pool task argument.
        assert pool.map(_locked, [lock, lock]) == [False, False]
        with lock:
            assert pool.map(_locked, [lock]) == [True]
    cache.close()


def _locked(lock):
    return lock.locked()


def test_throttle_and_barrier(tmp_path):
    cache = diskcache.Cache(str(tmp_path))
    now = [0.0]
    slept = []

    @dc.throttle(cache, 2, 1, time_func=lambda: now[0], sleep_func=lambda d: (slept.append(d), now.__setitem__(0, now[0] + d)))
    def tick():
        return "tick"

    assert [tick() for _ in range(4)] == ["tick"] * 4
    assert slept and all(d > 0 for d in slept)

    calls = []

    @dc.barrier(cache, dc.Lock)
    def work(n):
        calls.append(n)
        return n * 2

    assert work(3) == 6 and calls == [3]
    cache.close()


def test_compat_install(tmp_path):
    from locksmith import compat

    compat.install("diskcache")
    try:
        assert diskcache.Lock is dc.Lock
        from diskcache import RLock

        assert RLock is dc.RLock
    finally:
        compat.uninstall("diskcache")
    assert diskcache.Lock is not dc.Lock


def test_cross_process_example(tmp_path):
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "diskcache_cross_process.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")
    assert out.stdout.count("has exclusive access") == 6


def test_sync_shared_memory_example():
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "sync_shared_memory.py")],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "counter: 2000" in out.stdout
