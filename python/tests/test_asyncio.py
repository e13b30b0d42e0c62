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


def test_named_lock_across_processes(tmp_path):
    url = f"sqlite:{tmp_path}/async.sqlite"

    async def main():
        child = subprocess.Popen([sys.executable, "-c", _CHILD, url])
        try:
            await asyncio.wait_for(la.Event(name="held", store=url).wait(), 60)
            lock = la.Lock(name="shared", store=url)
            assert lock.locked()
            la.Event(name="go", store=url).set()
            await asyncio.wait_for(lock.acquire(), 60)
            lock.release()
        finally:
            assert child.wait(60) == 0

    asyncio.run(main())
