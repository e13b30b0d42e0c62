"""locksmith.asyncio: asyncio's semantics, a loop that keeps running while tasks wait,
cancellation that never leaks a grant, and sharing by name across processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

from locksmith import asyncio as la


def test_lock_excludes_tasks_and_the_loop_keeps_running():
    async def main():
        lock = la.Lock()
        inside, most, ticks = 0, 0, 0
        stop = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        async def worker():
            nonlocal inside, most
            for _ in range(5):
                async with lock:
                    inside += 1
                    most = max(most, inside)
                    await asyncio.sleep(0.002)
                    inside -= 1

        t = asyncio.create_task(ticker())
        await asyncio.gather(*(worker() for _ in range(4)))
        stop.set()
        await t
        assert most == 1
        assert ticks > 10, "the loop ran other tasks while waiters waited"
        assert not lock.locked()
        with pytest.raises(RuntimeError):
            lock.release()

    asyncio.run(main())


def test_cancelled_waiter_never_leaks_a_grant():
    async def main():
        lock = la.Lock()
        await lock.acquire()
        for _ in range(20):
            waiter = asyncio.create_task(lock.acquire())
            await asyncio.sleep(0)
            lock.release()  # the grant may race the cancellation below
            waiter.cancel()
            try:
                await waiter
                lock.release()  # it won: give it back
            except asyncio.CancelledError:
                pass
            # Whatever happened, the lock comes free (a raced grant was released).
            await asyncio.wait_for(lock.acquire(), 30)
        lock.release()
        assert not lock.locked()

    asyncio.run(main())


def test_event_semaphores_and_bounds():
    async def main():
        ev = la.Event()
        waiters = [asyncio.create_task(ev.wait()) for _ in range(3)]
        await asyncio.sleep(0.01)
        ev.set()
        assert await asyncio.wait_for(asyncio.gather(*waiters), 30) == [True] * 3
        sem = la.BoundedSemaphore(2)
        async with sem:
            async with sem:
                assert sem.locked()
                blocked = asyncio.create_task(sem.acquire())
                await asyncio.sleep(0.01)
                assert not blocked.done()
            assert await asyncio.wait_for(blocked, 30)
            sem.release()
        with pytest.raises(ValueError):
            sem.release()
        with pytest.raises(ValueError):
            la.Semaphore(-1)

    asyncio.run(main())


_CHILD = textwrap.dedent("""
    import asyncio, sys
    from locksmith import asyncio as la
    async def main(url):
        lock = la.Lock(name="shared", store=url)
        await lock.acquire()
        la.Event(name="held", store=url).set()
        await la.Event(name="go", store=url).wait()
        lock.release()
    asyncio.run(main(sys.argv[1]))
""")


def test_named_lock_across_processes(shared_store):
    url = shared_store

    async def main():
        child = subprocess.Popen([sys.executable, "-c", _CHILD, url])
        try:
            await asyncio.wait_for(la.Event(name="held", store=url).wait(), 60)
            lock = la.Lock(name="shared", store=url)
            assert lock.locked()
            # A wait in the store (the other process holds it) that is cancelled
            # leaves the store's queue: the acquisition below still gets the lock.
            waiter = asyncio.create_task(lock.acquire())
            await asyncio.sleep(0.05)
            assert not waiter.done()
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            la.Event(name="go", store=url).set()
            await asyncio.wait_for(lock.acquire(), 60)
            lock.release()
        finally:
            assert child.wait(60) == 0

    asyncio.run(main())


def test_anonymous_objects_are_asyncios_own():
    # Same queue, reprs and errors as asyncio's (CPython's own suite runs against them in
    # test_asyncio_peer.py); a named keyword needs a name.
    assert isinstance(la.Lock(), asyncio.Lock)
    assert isinstance(la.BoundedSemaphore(), asyncio.BoundedSemaphore)
    assert isinstance(la.Condition(), asyncio.Condition)
    assert isinstance(la.Condition()._lock, la.Lock)
    assert isinstance(la.Barrier(2), asyncio.Barrier)
    assert repr(la.Lock()).startswith("<locksmith.asyncio.Lock object at ")
    with pytest.raises(TypeError):
        la.Lock(store="mem:x")


def test_condition_and_barrier():
    async def main():
        cond = la.Condition()
        ready = []

        async def consumer():
            async with cond:
                await cond.wait_for(lambda: ready)
                return ready.pop()

        task = asyncio.create_task(consumer())
        await asyncio.sleep(0)
        async with cond:
            ready.append("item")
            cond.notify()
        assert await asyncio.wait_for(task, 30) == "item"

        barrier = la.Barrier(3)
        results = await asyncio.wait_for(
            asyncio.gather(*(barrier.wait() for _ in range(3))), 30)
        assert sorted(results) == [0, 1, 2]

    asyncio.run(main())


def test_named_lock_fifo_and_cancellation_in_one_loop(store):
    async def main():
        url = store
        lock = la.Lock(name="cancel", store=url)
        other = la.Lock(name="cancel", store=url)  # the same lock through another object
        await lock.acquire()
        assert other.locked()
        assert "locked" in repr(other) and "cancel" in repr(other)
        for _ in range(20):
            waiter = asyncio.create_task(other.acquire())
            await asyncio.sleep(0)
            lock.release()  # the grant may race the cancellation below
            waiter.cancel()
            try:
                await waiter
                other.release()  # it won: give it back
            except asyncio.CancelledError:
                pass
            # A raced grant was released: the lock comes free.
            await asyncio.wait_for(lock.acquire(), 30)
        lock.release()
        assert not other.locked()
        with pytest.raises(RuntimeError):
            other.release()

        # Tasks waiting on a named lock exclude each other and all get it.
        order = []

        async def worker(i):
            async with la.Lock(name="cancel", store=url):
                order.append(i)
                await asyncio.sleep(0)

        await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(5))), 30)
        assert sorted(order) == list(range(5))

    asyncio.run(main())


def test_named_semaphore_and_event(store):
    async def main():
        url = store
        sem = la.BoundedSemaphore(2, name="slots", store=url)
        assert isinstance(sem, la.BoundedSemaphore)
        twin = la.BoundedSemaphore(2, name="slots", store=url)
        async with sem:
            await twin.acquire()
            assert sem.locked() and twin.locked()
            blocked = asyncio.create_task(sem.acquire())
            await asyncio.sleep(0.01)
            assert not blocked.done()
            twin.release()
            assert await asyncio.wait_for(blocked, 30)
            sem.release()
        assert not sem.locked()
        with pytest.raises(ValueError):
            twin.release()  # nothing acquired through it, and the bound is reached
        assert twin._native.value() == 2
        plain = la.Semaphore(0, name="signals", store=url)
        plain.release()  # asyncio's signalling release: one more permit
        assert not plain.locked() and plain._native.value() == 1
        other = la.Semaphore(0, name="signals", store=url)
        await other.acquire()
        assert plain.locked()
        other.release()

        ev = la.Event(name="go", store=url)
        waiter = asyncio.create_task(la.Event(name="go", store=url).wait())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        ev.set()
        assert await asyncio.wait_for(waiter, 30) is True
        ev.clear()
        assert not la.Event(name="go", store=url).is_set()

    asyncio.run(main())


_EXIT_AFTER_ASYNC = textwrap.dedent("""
    import asyncio, sys
    from locksmith import asyncio as la
    async def main(url):
        lock = la.Lock(name="exit", store=url)
        held = await lock.acquire()
        waiter = asyncio.create_task(la.Lock(name="exit", store=url).acquire())
        await asyncio.sleep(0)
        lock.release()
        await waiter
    asyncio.run(main(sys.argv[1]))
""")


def test_process_exits_cleanly_right_after_an_async_wait(store):
    # The runtime's thread used to resume inside call_soon_threadsafe while the
    # interpreter finalized, and the process died of SIGSEGV or SIGABRT most times.
    url = store
    for _ in range(10):
        run = subprocess.run([sys.executable, "-c", _EXIT_AFTER_ASYNC, url],
                             capture_output=True, timeout=60)
        assert run.returncode == 0, run.stderr.decode()


def test_named_condition_in_one_loop(store):
    async def main():
        cond = la.Condition(name="cond", store=store)
        assert isinstance(cond, la.Condition) and cond.name == "cond"
        with pytest.raises(RuntimeError):
            await cond.wait()  # not held
        with pytest.raises(RuntimeError):
            cond.notify()
        items = []

        async def consumer():
            async with cond:
                await cond.wait_for(lambda: items)
                return items.pop()

        task = asyncio.create_task(consumer())
        await asyncio.sleep(0)
        async with cond:
            items.append("x")
            cond.notify()
        assert await asyncio.wait_for(task, 60) == "x"

        # A cancelled wait holds the lock again before the cancellation propagates.
        async def sleeper(state):
            async with cond:
                state.append("waiting")
                try:
                    await cond.wait()
                except asyncio.CancelledError:
                    state.append(cond.locked())
                    raise

        state = []
        task = asyncio.create_task(sleeper(state))
        while not state:
            await asyncio.sleep(0)
        async with cond:  # free only once the sleeper sleeps
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 60)
        assert state == ["waiting", True]
        assert not cond.locked()
        with pytest.raises(ValueError):
            la.Condition(la.Lock(), name="x", store=store)

    asyncio.run(main())


_COND_CHILD = textwrap.dedent("""
    import asyncio, sys
    from locksmith import asyncio as la
    async def main(url):
        cond = la.Condition(name="shared-cond", store=url)
        barrier = la.Barrier(3, name="shared-barrier", store=url)
        async with cond:
            la.Event(name="sleeping", store=url).set()  # set while holding the lock
            await cond.wait()
        print(await barrier.wait(), flush=True)
    asyncio.run(main(sys.argv[1]))
""")


def test_named_condition_and_barrier_across_processes(shared_store):
    url = shared_store

    async def main():
        child = subprocess.Popen([sys.executable, "-c", _COND_CHILD, url],
                                 stdout=subprocess.PIPE, text=True)
        try:
            await asyncio.wait_for(la.Event(name="sleeping", store=url).wait(), 60)
            cond = la.Condition(name="shared-cond", store=url)
            async with cond:  # free only once the child sleeps in its wait
                cond.notify()
            barrier = la.Barrier(3, name="shared-barrier", store=url)
            assert barrier.parties == 3
            mine = await asyncio.wait_for(
                asyncio.gather(barrier.wait(), barrier.wait()), 60)
            theirs = int(await asyncio.to_thread(child.stdout.readline))
            assert sorted([*mine, theirs]) == [0, 1, 2]
        finally:
            child.stdout.close()
            assert child.wait(60) == 0

    asyncio.run(main())


def test_named_barrier_cancel_and_abort(store):
    async def main():
        barrier = la.Barrier(2, name="b", store=store)
        assert isinstance(barrier, la.Barrier)
        waiter = asyncio.create_task(barrier.wait())
        while barrier.n_waiting == 0:
            await asyncio.sleep(0)
        waiter.cancel()  # an arrival cannot be taken back: the barrier breaks
        with pytest.raises(asyncio.CancelledError):
            await waiter
        while not barrier.broken:  # the break is a store step on its way
            await asyncio.sleep(0)
        with pytest.raises(asyncio.BrokenBarrierError):
            await barrier.wait()
        await barrier.reset()
        assert not barrier.broken
        got = await asyncio.wait_for(asyncio.gather(barrier.wait(), barrier.wait()), 60)
        assert sorted(got) == [0, 1]
        await barrier.abort()
        with pytest.raises(asyncio.BrokenBarrierError):
            await barrier.wait()
        with pytest.raises(ValueError):
            la.Barrier(0, name="zero", store=store)

    asyncio.run(main())
