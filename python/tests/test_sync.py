"""locksmith.sync: runtime.sync's Mutex placed in buffers, across threads and processes."""

from __future__ import annotations

import errno
import mmap
import multiprocessing as mp
import os
import signal
import threading
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import pytest

from locksmith.sync import Mutex, SyncError


def made(buf=None, **kw) -> Mutex:
    m = Mutex(buf, **kw)
    m.initialize()
    return m


@pytest.mark.parametrize(
    "make_buf",
    [
        lambda: bytearray(Mutex.SIZE),
        lambda: mmap.mmap(-1, 4096),
        lambda: memoryview(bytearray(Mutex.SIZE * 2))[Mutex.SIZE:],
        lambda: np.zeros(Mutex.SIZE, dtype=np.uint8),
        lambda: None,
    ],
    ids=["bytearray", "mmap", "memoryview-slice", "numpy", "own"],
)
def test_acquire_release_in_any_buffer(make_buf):
    m = made(make_buf())
    m.acquire()
    m.release()
    with m:
        pass


def test_errno_table():
    m = made(bytearray(Mutex.SIZE), recursive=False)
    with pytest.raises(SyncError) as info:
        m.release()
    assert info.value.context["errno"] == errno.EPERM == info.value.errno
    m.acquire(timeout=None)
    with pytest.raises(SyncError) as info:
        m.acquire(timeout=0)
    assert info.value.context["errno"] == errno.EDEADLK
    failures = []

    def other():
        for t in (0, 0.05):
            try:
                m.acquire(timeout=t)
            except SyncError as e:
                failures.append(e.context["errno"])
        try:
            m.release()
        except SyncError as e:
            failures.append(e.context["errno"])

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert failures == [errno.EBUSY, errno.ETIMEDOUT, errno.EPERM]
    m.release()
    m.destroy()
    with pytest.raises(SyncError) as info:
        m.acquire()
    assert info.value.context["errno"] == errno.EINVAL
    m.initialize()
    m.acquire()
    m.release()


def test_never_initialised_is_einval():
    with pytest.raises(SyncError) as info:
        Mutex(bytearray(Mutex.SIZE)).acquire()
    assert info.value.context["errno"] == errno.EINVAL


def test_recursive_counts():
    m = made(bytearray(Mutex.SIZE))
    m.acquire()
    m.acquire()
    m.release()
    m.release()
    with pytest.raises(SyncError):
        m.release()


@pytest.mark.parametrize(
    "buf, why",
    [
        (bytes(Mutex.SIZE), "read-only"),
        (bytearray(Mutex.SIZE - 1), "bytes"),
        (memoryview(bytearray(64))[1 : 1 + Mutex.SIZE], "multiple of 8"),
        (np.zeros((8, 8), dtype=np.uint8)[:, ::2], "contiguous"),
    ],
)
def test_bad_buffers_are_refused(buf, why):
    with pytest.raises(SyncError) as info:
        Mutex(buf)
    assert info.value.context["errno"] == errno.EINVAL
    assert why in str(info.value)


def test_buffer_stays_exported():
    buf = bytearray(Mutex.SIZE)
    m = made(buf)
    with pytest.raises(BufferError):
        buf.extend(b"x")  # resizing would move the memory under the mutex
    del m


def _hold_and_die(name):
    shm = SharedMemory(name=name)
    m = Mutex(shm.buf)
    m.acquire()
    os.kill(os.getpid(), signal.SIGKILL)


def _count(name, n, counter_offset):
    shm = SharedMemory(name=name)
    m = Mutex(shm.buf)
    for _ in range(n):
        with m:
            v = int.from_bytes(shm.buf[counter_offset:counter_offset + 8], "little")
            shm.buf[counter_offset:counter_offset + 8] = (v + 1).to_bytes(8, "little")
    del m
    shm.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_mutex_in_shared_memory_across_processes(method):
    """runtime.sync's example: a Mutex in a SharedMemory guarding a counter."""
    ctx = mp.get_context(method)
    shm = SharedMemory(create=True, size=64)
    try:
        m = Mutex(shm.buf)
        m.initialize()
        procs = [ctx.Process(target=_count, args=(shm.name, 200, 32)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        assert int.from_bytes(shm.buf[32:40], "little") == 600
        del m
    finally:
        shm.close()
        shm.unlink()


def test_owner_killed_while_holding():
    shm = SharedMemory(create=True, size=Mutex.SIZE)
    try:
        m = Mutex(shm.buf)
        m.initialize()
        p = mp.get_context("fork").Process(target=_hold_and_die, args=(shm.name,))
        p.start()
        p.join(60)
        assert p.exitcode == -signal.SIGKILL
        m.acquire(timeout=30)
        assert m.previous_owner_died
        m.release()
        del m
    finally:
        shm.close()
        shm.unlink()


from locksmith.sync import Event as PlacedEvent  # noqa: E402
from locksmith.sync import Semaphore as PlacedSemaphore  # noqa: E402


def test_placed_semaphore():
    sem = PlacedSemaphore(bytearray(PlacedSemaphore.SIZE), 2, bounded=True)
    sem.initialize()
    sem.acquire()
    sem.acquire(timeout=None)
    assert sem.value == 0
    with pytest.raises(SyncError) as info:
        sem.acquire(timeout=0)
    assert info.value.context["errno"] == errno.EBUSY
    with pytest.raises(SyncError) as info:
        sem.acquire(timeout=0.02)
    assert info.value.context["errno"] == errno.ETIMEDOUT
    sem.release()
    sem.release()
    with pytest.raises(SyncError) as info:
        sem.release()
    assert info.value.context["errno"] == errno.EOVERFLOW
    with sem:
        assert sem.value == 1
    sem.destroy()
    with pytest.raises(SyncError) as info:
        sem.acquire()
    assert info.value.context["errno"] == errno.EINVAL


def test_placed_event():
    ev = PlacedEvent(bytearray(PlacedEvent.SIZE))
    ev.initialize()
    assert not ev.is_set()
    assert ev.wait(timeout=0.01) is False
    seen = []
    t = threading.Thread(target=lambda: seen.append(ev.wait(timeout=30)))
    t.start()
    ev.set()
    t.join(30)
    assert seen == [True] and ev.is_set()
    ev.clear()
    assert not ev.is_set()


def _pong(name, rounds):
    shm = SharedMemory(name=name)
    ping = PlacedSemaphore(shm.buf[:PlacedSemaphore.SIZE])
    pong = PlacedSemaphore(shm.buf[PlacedSemaphore.SIZE:2 * PlacedSemaphore.SIZE])
    for _ in range(rounds):
        ping.acquire(timeout=None)
        pong.release()
    del ping, pong
    shm.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_placed_semaphore_ping_pong_between_processes(method):
    size = PlacedSemaphore.SIZE
    shm = SharedMemory(create=True, size=2 * size)
    try:
        ping = PlacedSemaphore(shm.buf[:size], 0)
        pong = PlacedSemaphore(shm.buf[size:2 * size], 0)
        ping.initialize()
        pong.initialize()
        p = mp.get_context(method).Process(target=_pong, args=(shm.name, 100))
        p.start()
        for _ in range(100):
            ping.release()
            pong.acquire(timeout=60)
        p.join(60)
        assert p.exitcode == 0
        del ping, pong
    finally:
        shm.close()
        shm.unlink()


def _take_permit_and_die(name):
    shm = SharedMemory(name=name)
    sem = PlacedSemaphore(shm.buf)
    sem.acquire()
    os.kill(os.getpid(), signal.SIGKILL)


def test_placed_semaphore_permit_of_a_killed_process_comes_back():
    shm = SharedMemory(create=True, size=PlacedSemaphore.SIZE)
    try:
        sem = PlacedSemaphore(shm.buf, 1)
        sem.initialize()
        p = mp.get_context("fork").Process(target=_take_permit_and_die, args=(shm.name,))
        p.start()
        p.join(60)
        assert p.exitcode == -signal.SIGKILL
        sem.acquire(timeout=30)
        sem.release()
        del sem
    finally:
        shm.close()
        shm.unlink()


from locksmith.sync import Barrier as PlacedBarrier  # noqa: E402
from locksmith.sync import BrokenBarrierError  # noqa: E402
from locksmith.sync import Condition as PlacedCondition  # noqa: E402

# A Mutex, a Condition and a state byte in one buffer, each at an 8-byte aligned offset.
_M = Mutex.SIZE
_C = _M + PlacedCondition.SIZE
_STATE = _C + 8


def _placed_pair(buf):
    mutex = Mutex(buf[:_M])
    return mutex, PlacedCondition(buf[_M:_C], mutex)


def _answer(name, rounds):
    # Waits for each odd state and answers with the next even one.
    shm = SharedMemory(name=name)
    mutex, cond = _placed_pair(shm.buf)
    for i in range(rounds):
        with cond:
            assert cond.wait_for(lambda: shm.buf[_C] == 2 * i + 1, timeout=60)
            shm.buf[_C] = 2 * i + 2
            cond.notify_all()
    del mutex, cond
    shm.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_placed_condition_between_processes(method):
    shm = SharedMemory(create=True, size=_STATE)
    try:
        mutex, cond = _placed_pair(shm.buf)
        mutex.initialize()
        cond.initialize()
        assert cond.mutex is mutex
        p = mp.get_context(method).Process(target=_answer, args=(shm.name, 20))
        p.start()
        for i in range(20):
            with cond:
                shm.buf[_C] = 2 * i + 1
                cond.notify()
                assert cond.wait_for(lambda: shm.buf[_C] == 2 * i + 2, timeout=60)
        p.join(60)
        assert p.exitcode == 0
        del mutex, cond
    finally:
        shm.close()
        shm.unlink()


def test_placed_condition_semantics():
    cond = PlacedCondition(bytearray(PlacedCondition.SIZE))  # with a mutex of its own
    cond.initialize()
    with pytest.raises(SyncError) as info:
        cond.wait(timeout=0.01)  # the mutex is not held
    assert info.value.context["errno"] == errno.EPERM
    cond.acquire()
    cond.acquire()  # its own mutex is recursive: wait releases both levels
    assert cond.wait(timeout=0.01) is False
    other = []

    def probe():
        try:
            cond.mutex.acquire(timeout=0)
            other.append("took it")
        except SyncError as e:
            other.append(e.context["errno"])

    t = threading.Thread(target=probe)
    t.start()
    t.join(30)
    assert other == [errno.EBUSY]  # held again after the wait
    cond.release()
    cond.release()  # both levels came back
    with pytest.raises(SyncError) as info:
        cond.release()
    assert info.value.context["errno"] == errno.EPERM
    with cond:
        assert cond.wait_for(lambda: 0, timeout=0.01) == 0  # the predicate's last value
    cond.notify(0)
    cond.notify_all()
    cond.destroy()
    with pytest.raises(SyncError) as info:
        cond.notify()
    assert info.value.context["errno"] == errno.EINVAL
    with pytest.raises(SyncError) as info:
        PlacedCondition(bytes(PlacedCondition.SIZE))
    assert info.value.context["errno"] == errno.EINVAL
    with pytest.raises(SyncError) as info:
        PlacedCondition(bytearray(PlacedCondition.SIZE - 1))
    assert info.value.context["errno"] == errno.EINVAL


def test_placed_condition_wakes_a_waiting_thread():
    mutex = Mutex(bytearray(Mutex.SIZE), recursive=False)
    mutex.initialize()
    cond = PlacedCondition(bytearray(PlacedCondition.SIZE), mutex)
    cond.initialize()
    ready = []

    def waiter():
        with cond:
            ready.append(cond.wait_for(lambda: len(ready) == 1, timeout=60))

    with cond:
        t = threading.Thread(target=waiter)
        t.start()
        ready.append("set")
        cond.notify()
    t.join(60)
    assert ready == ["set", True]


def _arrive(name, q, rounds):
    shm = SharedMemory(name=name)
    barrier = PlacedBarrier(shm.buf)
    q.put([barrier.wait(timeout=60) for _ in range(rounds)])
    del barrier
    shm.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_placed_barrier_between_processes(method):
    shm = SharedMemory(create=True, size=PlacedBarrier.SIZE)
    try:
        barrier = PlacedBarrier(shm.buf, 3)
        barrier.initialize()
        assert barrier.parties == 3 and barrier.n_waiting == 0 and not barrier.broken
        ctx = mp.get_context(method)
        q = ctx.Queue()
        ps = [ctx.Process(target=_arrive, args=(shm.name, q, 5)) for _ in range(2)]
        for p in ps:
            p.start()
        mine = [barrier.wait(timeout=60) for _ in range(5)]
        theirs = [q.get(timeout=60) for _ in ps]
        for p in ps:
            p.join(60)
            assert p.exitcode == 0
        # Each round, the three parties got the three arrival indices.
        for r in range(5):
            assert sorted([mine[r], theirs[0][r], theirs[1][r]]) == [0, 1, 2]
        del barrier
    finally:
        shm.close()
        shm.unlink()


def test_placed_barrier_breaks_and_resets():
    barrier = PlacedBarrier(bytearray(PlacedBarrier.SIZE), 2)
    barrier.initialize()
    with pytest.raises(BrokenBarrierError) as info:
        barrier.wait(timeout=0.01)  # a timeout breaks it
    assert isinstance(info.value, threading.BrokenBarrierError)
    assert isinstance(info.value, SyncError)
    assert info.value.context["errno"] == errno.EPIPE
    assert barrier.broken
    with pytest.raises(BrokenBarrierError):
        barrier.wait()
    barrier.reset()
    assert not barrier.broken
    got = []
    t = threading.Thread(target=lambda: got.append(barrier.wait(timeout=60)))
    t.start()
    got.append(barrier.wait(timeout=60))
    t.join(60)
    assert sorted(got) == [0, 1]
    barrier.abort()
    with pytest.raises(BrokenBarrierError):
        barrier.wait()
    barrier.destroy()
    with pytest.raises(SyncError) as info:
        barrier.wait()
    assert info.value.context["errno"] == errno.EINVAL
    with pytest.raises(SyncError) as info:
        PlacedBarrier(bytearray(PlacedBarrier.SIZE), 0).initialize()
    assert info.value.context["errno"] == errno.EINVAL


PLACED_WAITER = """
import sys, locksmith.sync as s
kind = sys.argv[1]
if kind == "condition":
    cond = s.Condition()
    cond.initialize()
    cond.acquire()
    wait = cond.wait
else:
    barrier = s.Barrier(None, 2)
    barrier.initialize()
    wait = barrier.wait
try:
    print("waiting", flush=True)
    wait()
except KeyboardInterrupt:
    print("interrupted", flush=True)
    if kind == "condition":
        cond.release()  # held again after the wait: this would raise EPERM otherwise
        print("held", flush=True)
    else:
        print("broken" if barrier.broken else "whole", flush=True)
    sys.exit(0)
print("returned", flush=True)
sys.exit(1)
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="system call numbers are x86-64's")
@pytest.mark.parametrize("kind", ["condition", "barrier"])
def test_ctrl_c_interrupts_a_placed_wait(kind):
    import subprocess
    import sys

    from test_processes import _wait_until_sleeping

    child = subprocess.Popen([sys.executable, "-c", PLACED_WAITER, kind],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "waiting"
    _wait_until_sleeping(child.pid)
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0, out
    assert out.splitlines() == ["interrupted", "held" if kind == "condition" else "broken"]
