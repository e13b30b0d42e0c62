"""The native module: every primitive on every store, with the Rust semantics."""

from __future__ import annotations

import errno
import pickle
import threading
import time

import pytest

import locksmith


def test_lock_fencing_tokens_grow(store):
    space = locksmith.Space(store)
    lock = locksmith.Lock("deploy", space)
    with lock as first:
        assert first.token > 0
        assert not first.previous_owner_died
        assert lock.locked()
    assert not lock.locked()
    second = lock.acquire()
    assert second is not None
    assert second.token > first.token
    second.release()
    assert not lock.locked()


def test_lock_acquire_release_like_threading(store):
    lock = locksmith.Lock("plain", store)
    lock.acquire()  # the hold outlives the guard object
    assert lock.locked()
    lock.release()
    assert not lock.locked()
    with pytest.raises(locksmith.NotHeld) as info:
        lock.release()
    assert isinstance(info.value, RuntimeError)
    assert info.value.errno == errno.EPERM


def test_lock_reacquire_from_holder_would_deadlock(store):
    lock = locksmith.Lock("self", store)
    with lock:
        with pytest.raises(locksmith.WouldDeadlock) as info:
            lock.acquire(timeout=0.1)
        assert info.value.errno == errno.EDEADLK
        assert isinstance(info.value, RuntimeError)


def test_try_acquire_and_timeout_from_another_thread(store):
    lock = locksmith.Lock("busy", store)
    held = lock.acquire()
    results = []

    def other():
        results.append(lock.try_acquire())
        results.append(lock.acquire(timeout=0.05))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert results == [None, None]
    held.release()


def test_waiter_gets_the_lock_when_released(store):
    lock = locksmith.Lock("handoff", store)
    first = lock.acquire()
    got = []
    started = threading.Event()

    def waiter():
        started.set()
        g = lock.acquire(timeout=30)
        got.append(g.token if g else None)
        if g:
            g.release()

    t = threading.Thread(target=waiter)
    t.start()
    started.wait()
    first.release()
    t.join(30)
    assert got and got[0] is not None and got[0] > first.token


def _until(predicate, what, limit=60.0):
    """Polls `predicate` (a hang guard of `limit` seconds, generous for a loaded machine)."""
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


@pytest.mark.parametrize("kind", ["lock", "semaphore"])
def test_waiters_keep_their_place_in_the_queue(store, kind):
    # Waiters queue one after another behind a holder and wait for many of their
    # signal-checking slices (50 ms; 500 ms on the network stores); they get the lock in the order
    # they came. (A waiter that left and rejoined the queue every slice came last.)
    space = locksmith.Space(store)
    if kind == "lock":
        prim = locksmith.Lock("fifo", space)
    else:
        prim = locksmith.Semaphore("fifo", 1, space)
    held = prim.acquire()
    order = []

    def waiter(i):
        with prim:
            order.append(i)

    threads = []
    for i in range(4):
        t = threading.Thread(target=waiter, args=(i,))
        t.start()
        threads.append(t)
        _until(lambda: space.waiting("fifo") == i + 1, f"waiter {i} never queued")
    # Not synchronization: the waiters stay queued across many slices meanwhile.
    slice_s = 0.5 if store.startswith(("redis", "postgres")) else 0.05
    time.sleep(8 * slice_s)
    assert space.waiting("fifo") == 4
    held.release()
    for t in threads:
        t.join(60)
    assert order == [0, 1, 2, 3]


def test_rlock_reenters(store):
    rlock = locksmith.RLock("config", store)
    with rlock as outer:
        with rlock as inner:
            assert inner.token == outer.token
            assert rlock._count_mine() == 2
        assert rlock.locked()
    assert not rlock.locked()


def test_semaphore_counts(store):
    sem = locksmith.Semaphore("downloads", 2, store)
    a = sem.acquire()
    b = sem.acquire()
    assert a and b
    assert sem.try_acquire() is None
    a.release()
    c = sem.try_acquire()
    assert c is not None
    b.release()
    c.release()


def test_bounded_semaphore_too_many_releases(store):
    sem = locksmith.BoundedSemaphore("bounded", 1, store)
    with pytest.raises(locksmith.TooManyReleases) as info:
        sem.release()
    assert isinstance(info.value, ValueError)
    assert info.value.errno == errno.EOVERFLOW


def test_holders_and_force_release(store):
    space = locksmith.Space(store)
    lock = locksmith.Lock("ops", space, tag="jobs")
    guard = lock.acquire()
    holders = space.holders("ops")
    assert [h.token for h in holders] == [guard.token]
    assert holders[0].pid == __import__("os").getpid()
    assert space.force_release("ops") == 1
    with pytest.raises(locksmith.LeaseLost):
        guard.release()
    again = lock.acquire(timeout=5)
    assert again is not None and again.previous_owner_died
    again.release()


def test_evict_tag(store):
    space = locksmith.Space(store)
    lock = locksmith.Lock("tagged", space, tag="batch")
    g = lock.acquire()
    assert space.evict_tag("batch") >= 1
    assert not lock.locked()
    with pytest.raises(locksmith.LeaseLost):
        g.release()


def test_bad_arguments_are_typed_errors(store):
    lock = locksmith.Lock("args", store)
    with pytest.raises(locksmith.InvalidArgument):
        lock.acquire(timeout=-1)
    with pytest.raises(locksmith.InvalidArgument):
        locksmith.Lock("", store).acquire()
    with pytest.raises(locksmith.Unsupported):
        locksmith.Space("nosuch:thing")
    assert issubclass(locksmith.Unsupported, ValueError)


def test_mismatch(store):
    sem = locksmith.Semaphore("kind", 3, store)
    assert sem.acquire() is not None  # held: the store keeps it as a Semaphore of 3
    with pytest.raises(locksmith.Mismatch):
        locksmith.Semaphore("kind", 4, store).acquire()


def test_pickle_round_trip(shared_store):
    lock = locksmith.Lock("pickled", shared_store, lease=30.0, tag="t")
    again = pickle.loads(pickle.dumps(lock))
    assert again.name == "pickled" and again.url == lock.url
    with lock:
        assert again.locked()
    sem = pickle.loads(pickle.dumps(locksmith.BoundedSemaphore("s", 3, shared_store)))
    assert sem.initial_value == 3
    space = pickle.loads(pickle.dumps(locksmith.Space(shared_store)))
    assert space.url == shared_store


def test_exception_hierarchy():
    import threading as t

    assert issubclass(locksmith.BrokenBarrier, t.BrokenBarrierError)
    assert issubclass(locksmith.LockTimeout, TimeoutError)
    assert issubclass(locksmith.StoreError, OSError)
    for cls in (locksmith.NotHeld, locksmith.TooManyReleases, locksmith.LockTimeout,
                locksmith.StoreError):
        assert issubclass(cls, locksmith.LocksmithError)
        assert isinstance(cls("x").errno, int)


def test_condition_wait_notify(store):
    cond = locksmith.Condition("queue", store)
    items: list[int] = []
    woke = []

    def consumer():
        with cond:
            while not items:
                cond.wait(timeout=30)
            woke.append(items.pop())

    t = threading.Thread(target=consumer)
    t.start()
    # Wait until the consumer sleeps in the condition, then notify under the lock.
    space = locksmith.Space(store)
    while space.waiting("queue") == 0 and t.is_alive():
        t.join(0.01)
    with cond:
        items.append(7)
        cond.notify()
    t.join(30)
    assert woke == [7]


def test_condition_wait_times_out_holding_the_lock(store):
    cond = locksmith.Condition("lonely", store)
    with cond:
        assert cond.wait(timeout=0.05) is False
        assert cond._count_mine() == 1
    with pytest.raises(locksmith.NotHeld):
        cond.wait(timeout=0)


def test_averager(store):
    avg = locksmith.Averager("latency", store)
    assert avg.get() is None
    for v in (0.08, 0.12, 0.16):
        avg.add(v)
    assert abs(pickle.loads(pickle.dumps(avg)).get() - 0.12) < 1e-9
    assert abs(avg.pop() - 0.12) < 1e-9
    assert avg.get() is None


def test_event(store):
    ev = locksmith.Event("ready", store)
    assert not ev.is_set()
    assert ev.wait(timeout=0.01) is False
    seen = []
    t = threading.Thread(target=lambda: seen.append(ev.wait(timeout=30)))
    t.start()
    ev.set()
    t.join(30)
    assert seen == [True]
    ev.clear()
    assert not ev.is_set()


def test_barrier(store):
    bar = locksmith.Barrier("meet", 3, store)
    assert bar.parties == 3 and not bar.broken
    indices = []
    threads = [threading.Thread(target=lambda: indices.append(bar.wait(timeout=30)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(indices) == [0, 1, 2]
    with pytest.raises(locksmith.BrokenBarrier) as info:
        bar.wait(timeout=0.05)  # one party alone times out and breaks it
    assert isinstance(info.value, threading.BrokenBarrierError)
    assert bar.broken
    bar.reset()
    assert not bar.broken


def test_rwlock(store):
    rw = locksmith.RwLock("table", store)
    r1 = rw.read()
    other = []
    for attempt in (rw.try_read, rw.try_write):  # each from a thread holding nothing
        t = threading.Thread(target=lambda: other.append(attempt()))
        t.start()
        t.join()
    assert other[0] is not None and other[1] is None
    other[0].release()
    r1.release()
    with rw.write() as w:
        assert w.token > 0
        assert rw.locked()
    assert not rw.locked()
