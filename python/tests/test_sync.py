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
