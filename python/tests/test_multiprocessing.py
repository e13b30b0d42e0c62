"""locksmith.multiprocessing: primitives that pickle anywhere (Process arguments under
fork and spawn, Pool task arguments, through queues), with the standard library's
Process, Pool and Queue; exact counts across processes; a SIGKILLed holder; the
anonymous region removed after its creator is SIGKILLed."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from locksmith import multiprocessing as lmp

METHODS = ["fork", "spawn"]


def _bump(path: str) -> None:
    """Read-modify-write of a counter file: only exact under mutual exclusion."""
    with open(path) as f:
        n = int(f.read() or 0)
    time.sleep(0.001)  # widen the race window a lost update would need
    with open(path, "w") as f:
        f.write(str(n + 1))


def _count_under(lock, path: str, times: int) -> None:
    for _ in range(times):
        with lock:
            _bump(path)


def _pool_task(args) -> int:
    lock, path = args
    with lock:
        _bump(path)
    return os.getpid()


def _release_from_queue(q) -> None:
    sem = q.get(timeout=60)
    sem.release()


def _die_holding(lock) -> None:
    lock.acquire()
    os.kill(os.getpid(), signal.SIGKILL)


def _wait_and_set(cond, flag, ev) -> None:
    with cond:
        while not flag.is_set():
            cond.wait(30)
    ev.set()


def _barrier_party(barrier, results) -> None:
    results.put(barrier.wait(60))


def test_pickling_round_trip_keeps_the_primitive():
    ctx = lmp.get_context()
    lock = ctx.Lock()
    assert lock.acquire()
    twin = pickle.loads(pickle.dumps(lock))
    assert (twin.name, twin.store) == (lock.name, lock.store)
    assert twin.locked()
    assert not twin.acquire(False)
    lock.release()
    assert twin.acquire(timeout=5)
    twin.release()
    sem = pickle.loads(pickle.dumps(ctx.BoundedSemaphore(3)))
    assert sem.get_value() == 3


@pytest.mark.parametrize("method", METHODS)
def test_lock_counts_exactly_across_processes(method, tmp_path):
    ctx = lmp.get_context(method)
    lock = ctx.Lock()
    path = str(tmp_path / "counter")
    open(path, "w").close()
    procs = [ctx.Process(target=_count_under, args=(lock, path, 20)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with open(path) as f:
        assert int(f.read()) == 80


@pytest.mark.parametrize("method", METHODS)
def test_pool_task_arguments_and_queues(method, tmp_path):
    ctx = lmp.get_context(method)
    lock = ctx.RLock()
    path = str(tmp_path / "counter")
    open(path, "w").close()
    with ctx.Pool(3) as pool:  # the standard library refuses its own Lock here
        pids = pool.map(_pool_task, [(lock, path)] * 12)
    assert len(pids) == 12
    with open(path) as f:
        assert int(f.read()) == 12
    sem = ctx.Semaphore(0)
    q = ctx.Queue()
    p = ctx.Process(target=_release_from_queue, args=(q,))
    p.start()
    q.put(sem)  # through a queue: the standard library's SemLock refuses
    assert sem.acquire(timeout=60), "the child's release reached this process"
    p.join(60)
    assert p.exitcode == 0


@pytest.mark.parametrize("method", METHODS)
def test_a_sigkilled_holder_never_deadlocks_the_others(method):
    ctx = lmp.get_context(method)
    lock = ctx.Lock()
    p = ctx.Process(target=_die_holding, args=(lock,))
    p.start()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL
    assert lock.acquire(timeout=60), "the dead holder's hold was freed"
    lock.release()


@pytest.mark.parametrize("method", METHODS)
def test_condition_event_and_barrier_across_processes(method):
    ctx = lmp.get_context(method)
    cond, flag, ev = ctx.Condition(), ctx.Event(), ctx.Event()
    p = ctx.Process(target=_wait_and_set, args=(cond, flag, ev))
    p.start()
    with cond:
        flag.set()
        cond.notify_all()
    assert ev.wait(60)
    p.join(60)
    assert p.exitcode == 0
    barrier = ctx.Barrier(3)
    results = ctx.Queue()
    procs = [ctx.Process(target=_barrier_party, args=(barrier, results)) for _ in range(2)]
    for q in procs:
        q.start()
    mine = barrier.wait(60)
    got = sorted([mine, results.get(timeout=60), results.get(timeout=60)])
    assert got == [0, 1, 2]
    for q in procs:
        q.join(60)


def test_semlock_arguments():
    ctx = lmp.get_context()
    sem = ctx.BoundedSemaphore(2)
    assert sem.acquire(True, -5), "a negative timeout is 0"
    assert sem.acquire(block=False)
    assert not sem.acquire(timeout=0.01)
    assert sem.locked() and sem.get_value() == 0
    sem.release(2)
    assert sem.get_value() == 2
    with pytest.raises(ValueError):
        sem.release()
    plain = ctx.Semaphore(0)
    plain.release(3)
    assert plain.get_value() == 3
    lock = ctx.Lock()
    with pytest.raises(RuntimeError):
        lock.release()


_CREATOR = textwrap.dedent("""
    import os, signal
    from locksmith import multiprocessing as lmp
    lock = lmp.get_context().Lock()
    lock.acquire()
    print(lock.store, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_the_anonymous_region_is_removed_after_its_creator_is_sigkilled():
    out = subprocess.run([sys.executable, "-c", _CREATOR], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == -signal.SIGKILL
    url = out.stdout.strip()
    name = url.split(":", 1)[1].split("?", 1)[0]
    deadline = time.monotonic() + 60
    # The resource tracker unlinks it once the creator is gone (a hang guard).
    while os.path.exists(f"/dev/shm/{name}"):
        assert time.monotonic() < deadline, f"/dev/shm/{name} was left behind"
        time.sleep(0.05)


def _answer_under(cond, lock, state, rounds) -> None:
    # Waits on `cond` for each odd count and answers with the next even one; `lock` is
    # the condition's lock (pickled on its own too: the same lock in the store).
    for i in range(rounds):
        with lock:
            assert cond.wait_for(lambda: state.get_value() == 2 * i + 1, 60)
            state.release()
            cond.notify()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_condition_over_a_callers_lock_across_processes(method, kind):
    ctx = lmp.get_context(method)
    lock = getattr(ctx, kind)()
    cond = ctx.Condition(lock)
    state = ctx.Semaphore(0)  # a counter both processes read under the lock
    p = ctx.Process(target=_answer_under, args=(cond, lock, state, 10))
    p.start()
    for i in range(10):
        with cond:  # the caller's lock
            assert lock.locked()
            state.release()
            cond.notify_all()
            assert cond.wait_for(lambda: state.get_value() == 2 * i + 2, 60)
    p.join(60)
    assert p.exitcode == 0


def test_condition_over_a_callers_lock_semantics():
    ctx = lmp.get_context()
    rlock = ctx.RLock()
    cond = ctx.Condition(rlock)
    with pytest.raises(RuntimeError):
        cond.wait(0.01)  # not held
    with pytest.raises(RuntimeError):
        cond.notify()
    with rlock, rlock:
        assert cond.wait(0.01) is False  # nobody notifies; both levels come back
        assert rlock._recursion_count() == 2
    assert not rlock.locked()
    twin = pickle.loads(pickle.dumps(cond))
    assert twin._lock.name == rlock.name and twin.name == cond.name
    with pytest.raises(TypeError):
        ctx.Condition(threading.Lock())
    woken, ready = [], threading.Event()

    def waiter():
        with cond:
            ready.set()
            woken.append(cond.wait(60))

    t = threading.Thread(target=waiter)
    t.start()
    ready.wait(60)
    with cond:  # free only once the waiter sleeps: it registered before releasing
        cond.notify()
    t.join(60)
    assert woken == [True]
