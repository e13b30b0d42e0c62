"""locksmith.twisted: Twisted's DeferredLock and DeferredSemaphore, checked directly on
their Deferreds when unnamed (no reactor is needed: they fire synchronously), on a
reactor of each test's own when named, against a real second process; and Twisted's
own tests of the two classes (twisted.test.test_defer), aimed at ours."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.python.failure import Failure

from locksmith.twisted import DeferredLock, DeferredSemaphore


def _fired(d: Deferred[Any]) -> bool:
    """Whether ``d`` has its result (``d.called`` is also true while it waits on a
    Deferred it chained)."""
    box: list[Any] = []

    def look(r: Any) -> Any:
        box.append(r)
        return r

    d.addBoth(look)
    return bool(box)


def _result(d: Deferred[Any]) -> Any:
    """The result of a fired Deferred (its failure raised)."""
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


def _failure(d: Deferred[Any]) -> Failure:
    box: list[Any] = []
    d.addBoth(box.append)
    assert box and isinstance(box[0], Failure), box
    return box[0]


# -- unnamed: Twisted's behaviour --------------------------------------------------------


def test_they_are_twisteds_classes_and_fire_synchronously_when_free():
    lock = DeferredLock()
    assert isinstance(lock, defer.DeferredLock)
    d = lock.acquire()
    assert isinstance(d, Deferred) and d.called and _result(d) is lock
    assert lock.locked
    second = lock.acquire()
    assert not second.called and lock.waiting == [second]
    lock.release()
    assert _result(second) is lock and lock.locked and lock.waiting == []
    lock.release()
    assert not lock.locked
    with pytest.raises(AssertionError):
        lock.release()

    sem = DeferredSemaphore(2)
    assert isinstance(sem, defer.DeferredSemaphore)
    a, b, c = sem.acquire(), sem.acquire(), sem.acquire()
    assert a.called and b.called and not c.called and sem.tokens == 0 and sem.limit == 2
    sem.release()
    assert c.called and sem.tokens == 0
    sem.release()
    sem.release()
    assert sem.tokens == 2
    with pytest.raises(AssertionError):
        sem.release()
    with pytest.raises(ValueError):
        DeferredSemaphore(0)


@pytest.mark.parametrize("make", [DeferredLock, lambda: DeferredSemaphore(1)],
                         ids=["lock", "semaphore"])
def test_waiters_are_served_in_fifo_order(make):
    prim = make()
    first = prim.acquire()
    order: list[int] = []
    for i in range(50):
        prim.acquire().addCallback(lambda p, i=i: order.append(i))
    assert first.called and order == []
    for i in range(50):
        prim.release()
        assert order == list(range(i + 1))
    prim.release()
    assert prim.waiting == []


def test_a_cancelled_waiter_leaves_the_queue():
    lock = DeferredLock()
    lock.acquire()
    a, b, c = lock.acquire(), lock.acquire(), lock.acquire()
    b.cancel()
    assert _failure(b).check(CancelledError)
    assert lock.waiting == [a, c]
    lock.release()
    assert a.called and not c.called
    lock.release()
    assert c.called
    # Cancelling a Deferred that has the lock changes nothing.
    c.cancel()
    assert lock.locked
    lock.release()
    assert not lock.locked

    sem = DeferredSemaphore(1)
    sem.acquire()
    w = sem.acquire()
    w.cancel()
    assert _failure(w).check(CancelledError) and sem.waiting == []
    sem.release()
    assert sem.tokens == 1


@pytest.mark.parametrize("make", [DeferredLock, lambda: DeferredSemaphore(1)],
                         ids=["lock", "semaphore"])
def test_run_releases_when_the_result_completes(make):
    prim = make()

    def free():
        return not prim.waiting and (prim.tokens == 1 if hasattr(prim, "tokens")
                                     else not prim.locked)

    assert _result(prim.run(lambda x, *, y: x + y, 1, y=2)) == 3 and free()
    # A Deferred result: held until it fires, then released, its result passed on.
    later: Deferred[str] = Deferred()
    d = prim.run(lambda: later)
    queued = prim.run(lambda: "second")
    assert not _fired(d) and not free() and not _fired(queued)
    later.callback("first")
    assert _result(d) == "first" and _result(queued) == "second" and free()

    # Deferreds that have already fired, with a value or a failure.
    fired = defer.succeed("ready")
    assert _result(prim.run(lambda: fired)) == "ready" and free()
    assert _result(fired) is None  # consumed, as Twisted's chaining leaves it
    assert _failure(prim.run(lambda: defer.fail(OSError("now")))).check(OSError) and free()

    # A coroutine, which waits on a Deferred.
    gate: Deferred[int] = Deferred()

    async def coro(n):
        return n + await gate

    d = prim.run(coro, 40)
    assert not _fired(d) and not free()
    gate.callback(2)
    assert _result(d) == 42 and free()

    # Errors propagate and release: raised, a failing Deferred, a returned Failure.
    def boom():
        raise KeyError("boom")

    assert _failure(prim.run(boom)).check(KeyError) and free()
    failing: Deferred[None] = Deferred()
    d = prim.run(lambda: failing)
    failing.errback(ValueError("later"))
    assert _failure(d).check(ValueError) and free()
    assert _failure(prim.run(lambda: Failure(OSError("f")))).check(OSError) and free()

    # Cancelling run's Deferred while f's Deferred is pending cancels f's and releases.
    pending: Deferred[None] = Deferred()
    d = prim.run(lambda: pending)
    d.cancel()
    assert _failure(d).check(CancelledError) and pending.called and free()


@pytest.mark.parametrize("make", [DeferredLock, lambda: DeferredSemaphore(1)],
                         ids=["lock", "semaphore"])
def test_ten_thousand_quick_waiters_without_recursion_error(make):
    prim = make()
    first = prim.acquire()
    assert first.called
    done: list[int] = []
    results = [prim.run(done.append, i) for i in range(10_000)]
    # And as many waiters that release from their own callback.
    for i in range(10_000):
        prim.acquire().addCallback(lambda p: p.release())
    prim.release()
    assert done == list(range(10_000))
    assert all(r.called for r in results)
    for r in results:
        _result(r)
    assert prim.waiting == []
    assert (prim.tokens == 1) if hasattr(prim, "tokens") else not prim.locked


def test_async_with_releases_and_propagates():
    lock = DeferredLock()

    async def body():
        async with lock:
            assert lock.locked
        assert not lock.locked
        with pytest.raises(ZeroDivisionError):
            async with lock:
                1 / 0
        assert not lock.locked
        sem = DeferredSemaphore(2)
        async with sem:
            async with sem:
                assert sem.tokens == 0
        return sem.tokens

    assert _result(ensureDeferred(body())) == 2


class NetworkCounter:
    """The seed document's NetworkCounter: a counter whose ``next`` records the count on
    the network (here a request that a fake clock completes a second later) and returns
    it; with ``locked``, ``next`` runs under a DeferredLock."""

    def __init__(self, clock: task.Clock, locked: bool) -> None:
        self._count = 0
        self._clock = clock
        self._lock = DeferredLock() if locked else None
        self.recorded: list[int] = []

    def next(self) -> Deferred[int]:
        if self._lock is None:
            return self._next()
        return self._lock.run(self._next)

    def _next(self) -> Deferred[int]:
        self._count += 1
        recording = self._record(self._count)
        recording.addCallback(lambda ignored: self._count)
        return recording

    def _record(self, value: int) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._clock.callLater(1, lambda: (self.recorded.append(value), d.callback(None)))
        return d


@pytest.mark.parametrize("locked, expected", [(False, [2, 2]), (True, [1, 2])])
def test_the_docs_network_counter(locked, expected):
    clock = task.Clock()
    counter = NetworkCounter(clock, locked)
    printed: list[tuple[int, str]] = []
    d1, d2 = counter.next(), counter.next()
    d1.addCallback(lambda n: printed.append((n, "d1")))
    d2.addCallback(lambda n: printed.append((n, "d2")))
    clock.advance(1)
    clock.advance(1)
    assert [n for n, _ in printed] == expected
    assert [who for _, who in printed] == ["d1", "d2"]
    assert counter.recorded == [1, 2]


# -- Twisted's own tests, aimed at these classes -------------------------------------------

try:
    from twisted.test import test_defer as _twisted_tests
except ImportError as exc:  # it needs pyhamcrest and hypothesis
    _twisted_tests = None
    _why = f"twisted.test.test_defer cannot be imported: {exc}"


def _aimed_at_ours(base: type) -> type:
    """A subclass of one of Twisted's test classes whose tests see our classes under
    the names DeferredLock and DeferredSemaphore of their module."""

    class Aimed(base):  # type: ignore[misc, valid-type]
        def setUp(self) -> None:
            for name, ours in (("DeferredLock", DeferredLock),
                               ("DeferredSemaphore", DeferredSemaphore)):
                self.addCleanup(setattr, _twisted_tests, name,
                                getattr(_twisted_tests, name))
                setattr(_twisted_tests, name, ours)
            super().setUp()

    return Aimed


if _twisted_tests is not None:
    class TestTwistedOtherPrimitives(_aimed_at_ours(_twisted_tests.OtherPrimitivesTests)):
        # Not about locks: Twisted's DeferredQueue tests, left out (not skipped).
        testQueue = None
        test_cancelQueueAfterSynchronousGet = None
        test_cancelQueueAfterGet = None

    class TestTwistedAsyncWith(_aimed_at_ours(_twisted_tests.CoroutineContextVarsTests)):
        # Only the three `async with` tests are about locks; the class's context
        # variable tests are left out (not skipped).
        test_withInlineCallbacks = None
        test_resetWithInlineCallbacks = None
        test_contextvarsWithAsyncAwait = None
        test_asyncContextvarsWithAsyncAwait = None


def test_twisted_own_tests_were_aimed_at_ours():
    # The only skip of this file: without pyhamcrest and hypothesis (which
    # twisted.test.test_defer imports) Twisted's own tests cannot run.
    if _twisted_tests is None:
        pytest.skip(_why)
    # Every lock test of Twisted's classes above is one of ours to run.
    names = [n for n in dir(TestTwistedOtherPrimitives) if n.startswith("test")
             and callable(getattr(TestTwistedOtherPrimitives, n))]
    assert "testLock" in names and "testSemaphore" in names and len(names) >= 7
    names = [n for n in dir(TestTwistedAsyncWith) if n.startswith("test")
             and callable(getattr(TestTwistedAsyncWith, n))]
    assert sorted(names) == ["test_asyncWithLock", "test_asyncWithLockException",
                             "test_asyncWithSemaphore"], names


# -- named: across processes, never blocking the reactor ---------------------------------


def _run_on_a_reactor(main, timeout: float = 60.0) -> Any:
    """Runs ``main(reactor)`` (a coroutine function) on a new reactor of this test,
    stopped when it completes or, as a hang guard, after ``timeout`` seconds."""
    from twisted.internet.selectreactor import SelectReactor

    reactor = SelectReactor()
    box: list[Any] = []

    def start() -> None:
        d = ensureDeferred(main(reactor))
        d.addBoth(box.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    guard = reactor.callLater(timeout, reactor.stop)
    reactor.run(installSignalHandlers=False)
    assert box, f"hang: the test did not finish in {timeout} s"
    if guard.active():
        guard.cancel()
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


def _sleep(reactor, seconds: float) -> Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


async def _until(reactor, condition, timeout: float = 30.0) -> None:
    """Waits (without blocking the reactor) until ``condition()``; a hang guard."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await _sleep(reactor, 0.01)
    raise AssertionError("condition not reached in time")


HOLDER = textwrap.dedent(
    """
    import sys
    from locksmith import threading as lt
    lock = lt.Lock(name=sys.argv[1], store=sys.argv[2])
    assert lock.acquire(True, 60)
    print("held", flush=True)
    sys.stdin.readline()
    lock.release()
    print("released", flush=True)
    """
)


@pytest.fixture(params=["sqlite", "shm", "redis", "postgres"])
def process_store(request, tmp_path) -> str:
    from conftest import make_url

    return make_url(request.param, tmp_path, request)


def test_a_named_lock_excludes_another_process(process_store):
    name = f"tw-{uuid.uuid4().hex[:8]}"
    child = subprocess.Popen([sys.executable, "-c", HOLDER, name, process_store],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"

        async def main(reactor):
            lock = DeferredLock(name=name, store=process_store, reactor=reactor)
            assert lock.locked  # held by the other process
            got = lock.acquire()
            assert not got.called and lock.waiting == [got]
            ticks = 0

            def tick():
                nonlocal ticks
                ticks += 1

            ticker = task.LoopingCall(tick)
            ticker.clock = reactor
            ticker.start(0.01)
            await _sleep(reactor, 0.3)
            assert not got.called, "acquired while another process held the lock"
            assert ticks >= 5, "the reactor kept running while the acquire waited"
            child.stdin.write("go\n")
            child.stdin.flush()
            assert await got is lock
            ticker.stop()
            assert lock.locked and lock.waiting == []
            # run() on the named lock releases on success and on failure.
            lock.release()
            assert await lock.run(lambda: 7) == 7
            with pytest.raises(KeyError):
                await lock.run(lambda: {}["x"])
            return lock.locked

        assert _run_on_a_reactor(main) is False
        assert child.stdout.readline().strip() == "released"
        assert child.wait(60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdin.close()
        child.stdout.close()


def test_named_waiters_fifo_and_a_cancel_that_races_a_grant(tmp_path):
    url = f"sqlite:{tmp_path}/tw.sqlite"

    async def main(reactor):
        holder = DeferredLock(name="job", store=url, reactor=reactor)
        others = DeferredLock(name="job", store=url, reactor=reactor)
        assert (await holder.acquire()) is holder
        order: list[int] = []
        waiters = [others.acquire() for _ in range(5)]
        for i, w in enumerate(waiters):
            w.addCallback(lambda lk, i=i: (order.append(i), lk.release()))
        waiters[2].cancel()
        assert len(others.waiting) == 4
        holder.release()
        await _until(reactor, lambda: len(order) == 4)
        assert order == [0, 1, 3, 4]

        # A waiter cancelled just as the lock is released: whichever wins, the grant
        # never leaks, and the lock can be taken again.
        for _ in range(10):
            await holder.acquire()
            w = others.acquire()
            holder.release()
            w.cancel()
            won = []
            w.addBoth(won.append)
            if not isinstance(won[0], Failure):
                others.release()
            got = holder.acquire()
            await _until(reactor, lambda: got.called)
            holder.release()
        await _until(reactor, lambda: not holder.locked)
        return True

    assert _run_on_a_reactor(main)


def test_a_named_semaphore_counts_in_the_store(tmp_path):
    url = f"sqlite:{tmp_path}/tw.sqlite"

    async def main(reactor):
        a = DeferredSemaphore(2, name="pool", store=url, reactor=reactor)
        b = DeferredSemaphore(2, name="pool", store=url, reactor=reactor)
        await a.acquire()
        await b.acquire()
        assert a.tokens == 0 and b.tokens == 0 and a.limit == 2
        w = b.acquire()
        assert not w.called
        a.release()
        await w
        assert b.tokens == 0
        b.release()
        assert a.tokens == 1
        b.release()
        with pytest.raises(AssertionError):
            b.release()  # b holds nothing any more
        with pytest.raises(AssertionError):
            a.release()  # nor does a
        return a.tokens

    assert _run_on_a_reactor(main) == 2


SEMAPHORE_HOLDER = textwrap.dedent(
    """
    import sys
    from locksmith import threading as lt
    sem = lt.BoundedSemaphore(2, name=sys.argv[1], store=sys.argv[2])
    assert sem.acquire(True, 60) and sem.acquire(True, 60)
    print("held", flush=True)
    sys.stdin.readline()
    sem.release()
    sys.stdin.readline()
    sem.release()
    print("released", flush=True)
    """
)


def test_a_named_semaphore_shares_its_tokens_with_another_process(process_store):
    name = f"tw-{uuid.uuid4().hex[:8]}"
    child = subprocess.Popen([sys.executable, "-c", SEMAPHORE_HOLDER, name, process_store],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"

        async def main(reactor):
            sem = DeferredSemaphore(2, name=name, store=process_store, reactor=reactor)
            assert sem.tokens == 0
            first, second = sem.acquire(), sem.acquire()
            await _sleep(reactor, 0.2)
            assert not first.called and not second.called
            child.stdin.write("one\n")
            child.stdin.flush()
            await first  # the first waiter gets the first token given back
            assert not _fired(second)
            child.stdin.write("two\n")
            child.stdin.flush()
            await second
            sem.release()
            sem.release()
            return sem.tokens

        assert _run_on_a_reactor(main) == 2
        assert child.stdout.readline().strip() == "released"
        assert child.wait(60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdin.close()
        child.stdout.close()


def test_the_network_counter_example_counts_across_processes(tmp_path):
    """python/examples/twisted_network_counter.py: three processes, each with a reactor
    and 20 concurrent ``next()`` calls on one named lock; every count is given once."""
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "examples" / "twisted_network_counter.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "60 counts, each given once: ok"
