"""The async forms: acquire_async / Guard.release_async / async with, Event.wait_async;
the event loop keeps running while a task waits, and cancellation never leaks a hold."""

from __future__ import annotations

import asyncio
import threading

import locksmith


def test_acquire_async_and_async_with(store):
    lock = locksmith.Lock("aio", store)

    async def main():
        guard = await lock.acquire_async()
        assert guard is not None and guard.token > 0
        assert lock.locked()
        await guard.release_async()
        assert not lock.locked()
        async with await lock.acquire_async() as g:
            assert g.held
        assert not lock.locked()

    asyncio.run(main())


def test_contended_waiter_does_not_block_the_loop(store):
    lock = locksmith.Lock("aio-busy", store)
    held = lock.acquire()  # this thread's blocking hold

    async def main():
        waiter = asyncio.ensure_future(lock.acquire_async())
        ticks = 0
        while not waiter.done():
            await asyncio.sleep(0)  # the loop runs while the waiter waits
            ticks += 1
            if ticks == 50:
                # Release from another thread, as another process would.
                threading.Thread(target=held.release).start()
        guard = await waiter
        assert guard is not None and guard.token > held.token
        await guard.release_async()
        return ticks

    assert asyncio.run(main()) >= 50


def test_timeout_and_cancel_never_leak(store):
    lock = locksmith.Lock("aio-cancel", store)
    held = lock.acquire()

    async def main():
        assert await lock.acquire_async(timeout=0.05) is None
        task = asyncio.ensure_future(lock.acquire_async())
        await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        held.release()
        # Nobody holds it after the cancelled waiter: a fresh acquire succeeds at once.
        g = await lock.acquire_async(timeout=30)
        assert g is not None
        await g.release_async()

    asyncio.run(main())
    assert not lock.locked()


def test_event_wait_async(store):
    ev = locksmith.Event("aio-ev", store)

    async def main():
        assert await ev.wait_async(timeout=0.01) is False
        waiter = asyncio.ensure_future(ev.wait_async(timeout=30))
        await asyncio.sleep(0)
        ev.set()
        assert await waiter is True

    asyncio.run(main())
