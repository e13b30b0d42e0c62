"""locksmith.threading: CPython's own lock tests (``test.lock_tests``, imported from the
interpreter that runs the suite, never copied), aimed at our classes, on anonymous
``mem:`` objects and on objects shared by name through a cross-process store (``shm:``
and ``sqlite:``); then what threading's tests do not cover: sharing by name, processes,
Ctrl-C during a wait, threading.Condition over our RLock.

Skipped peer tests, each because it reaches into CPython-private state:

- ``EventTests.test_at_fork_reinit``: reads ``Event._cond``, threading.Event's private
  Condition, which a store-backed Event does not have.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import unittest
import uuid
import weakref

import pytest

from locksmith import threading as lt

lock_tests = pytest.importorskip("test.lock_tests")

_names = itertools.count()


def _fresh() -> str:
    return f"peer-{os.getpid()}-{next(_names)}"


_SHM = f"shm:locksmith-pytest-threading-{uuid.uuid4().hex[:10]}?capacity=4096&arena=16M"
_SQLITE_DIR = f"/tmp/locksmith-pytest-threading-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module", autouse=True)
def _remove_stores():
    yield
    name = _SHM.split(":", 1)[1].split("?", 1)[0]
    try:
        os.unlink(f"/dev/shm/{name}")
    except FileNotFoundError:
        pass
    import shutil
    shutil.rmtree(_SQLITE_DIR, ignore_errors=True)


def _sqlite() -> str:
    os.makedirs(_SQLITE_DIR, exist_ok=True)
    return f"sqlite:{_SQLITE_DIR}/peer.sqlite"


def _named(cls, store):
    """A factory of objects of `cls` each shared under a new name in `store`."""
    def make(*args, **kwargs):
        return cls(*args, name=_fresh(), store=store(), **kwargs)
    return staticmethod(make)


def _named_condition(store):
    def make(lock=None):
        if lock is not None:  # a caller's lock: threading's Condition over it
            return lt.Condition(lock)
        return lt.Condition(name=_fresh(), store=store())
    return staticmethod(make)


_SKIP_EVENT_COND = unittest.skip(
    "reads threading.Event's private _cond, which a store-backed Event lacks")


def _skipped_event_cond(self):
    """Skipped: see _SKIP_EVENT_COND."""


# Anonymous objects: threading's drop-in replacements.

class TestLockMem(lock_tests.LockTests):
    locktype = staticmethod(lt.Lock)


class TestRLockMem(lock_tests.RLockTests):
    locktype = staticmethod(lt.RLock)


class TestEventMem(lock_tests.EventTests):
    eventtype = staticmethod(lt.Event)

    @_SKIP_EVENT_COND
    def test_at_fork_reinit(self):
        pass


class TestConditionMem(lock_tests.ConditionTests):
    condtype = staticmethod(lt.Condition)


class TestSemaphoreMem(lock_tests.SemaphoreTests):
    semtype = staticmethod(lt.Semaphore)


class TestBoundedSemaphoreMem(lock_tests.BoundedSemaphoreTests):
    semtype = staticmethod(lt.BoundedSemaphore)


class TestBarrierMem(lock_tests.BarrierTests):
    barriertype = staticmethod(lt.Barrier)


# Shared by name through cross-process stores.

for _label, _store in [("Shm", lambda: _SHM), ("Sqlite", _sqlite)]:
    for _base, _attr, _cls in [
        (lock_tests.LockTests, "locktype", lt.Lock),
        (lock_tests.RLockTests, "locktype", lt.RLock),
        (lock_tests.SemaphoreTests, "semtype", lt.Semaphore),
        (lock_tests.BoundedSemaphoreTests, "semtype", lt.BoundedSemaphore),
        (lock_tests.BarrierTests, "barriertype", lt.Barrier),
    ]:
        _n = f"Test{_cls.__name__}{_label}"
        globals()[_n] = type(_n, (_base,), {_attr: _named(_cls, _store)})
    _n = f"TestEvent{_label}"
    globals()[_n] = type(_n, (lock_tests.EventTests,), {
        "eventtype": _named(lt.Event, _store),
        "test_at_fork_reinit": _SKIP_EVENT_COND(_skipped_event_cond),
    })
    _n = f"TestCondition{_label}"
    globals()[_n] = type(_n, (lock_tests.ConditionTests,), {
        "condtype": _named_condition(_store)})
del _n, _base, _attr, _cls, _label, _store


# Beyond the peer suite.

def test_reprs_and_weakrefs_name_one_module():
    lock = lt.Lock()
    assert repr(lock).startswith("<unlocked locksmith.Lock object at 0x")
    lock.acquire()
    assert repr(lock).startswith("<locked locksmith.Lock object at 0x")
    ref = weakref.ref(lock)
    assert ref() is lock
    assert "locksmith.RLock object owner=0 count=0" in repr(lt.RLock())
    assert repr(lt.Semaphore(3)).endswith(": value=3>")
    assert repr(lt.BoundedSemaphore(3)).endswith(": value=3/3>")
    assert repr(lt.Event()).endswith(": unset>")


def test_argument_errors_are_threadings():
    lock = lt.Lock()
    with pytest.raises(ValueError):
        lock.acquire(False, 1)
    with pytest.raises(ValueError):
        lock.acquire(timeout=-2)
    with pytest.raises(OverflowError):
        lock.acquire(timeout=lt.TIMEOUT_MAX * 2)
    with pytest.raises(RuntimeError):
        lock.release()
    with pytest.raises(RuntimeError):
        lt.RLock().release()
    with pytest.raises(ValueError):
        lt.Semaphore(-1)
    sem = lt.BoundedSemaphore(2)
    sem.acquire()
    with pytest.raises(ValueError):
        sem.release(2)
    assert sem.get_value() == 1, "a refused release(n) changes nothing"
    sem.release()
    assert sem.get_value() == 2


def test_objects_of_one_name_are_one_primitive(tmp_path):
    url = f"sqlite:{tmp_path}/one.sqlite"
    a = lt.Lock(name="job", store=url)
    b = lt.Lock(name="job", store=url)
    assert a.acquire()
    assert not b.acquire(False)
    assert b.locked()
    b.release()  # one primitive: either object releases it, as threading's one lock
    assert not a.locked()
    ev1, ev2 = lt.Event(name="go", store=url), lt.Event(name="go", store=url)
    ev1.set()
    assert ev2.is_set()
    s1, s2 = lt.Semaphore(2, name="s", store=url), lt.Semaphore(2, name="s", store=url)
    s1.acquire()
    assert s2.get_value() == 1


def test_lock_released_by_another_thread_and_reacquire_waits():
    lock = lt.Lock()
    lock.acquire()
    assert not lock.acquire(timeout=0.01), "the holding thread waits like anyone"
    t = threading.Thread(target=lock.release)
    t.start()
    t.join()
    assert lock.acquire(False)
    lock.release()


def test_threading_condition_over_our_rlock():
    rlock = lt.RLock()
    cond = threading.Condition(rlock)
    items = []

    def consumer():
        with cond:
            cond.wait_for(lambda: items)
            items.append("seen")

    t = threading.Thread(target=consumer)
    t.start()
    with cond:
        with cond:  # re-entrant, as threading's default lock
            items.append(1)
            cond.notify()
    t.join(30)
    assert items == [1, "seen"]
    assert not rlock._is_owned()


_CHILD = textwrap.dedent("""
    import sys, time
    from locksmith import threading as lt
    url, role = sys.argv[1], sys.argv[2]
    lock = lt.Lock(name="x", store=url)
    cond = lt.Condition(name="c", store=url)
    done = lt.Event(name="done", store=url)
    if role == "holder":
        lock.acquire()
        with cond:
            cond.notify_all()
        done.wait(60)
        lock.release()
    else:
        print("ready", flush=True)
        try:
            lock.acquire()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(3)
""")


def test_named_lock_condition_and_event_across_processes(tmp_path):
    url = f"sqlite:{tmp_path}/procs.sqlite"
    cond = lt.Condition(name="c", store=url)
    lock = lt.Lock(name="x", store=url)
    done = lt.Event(name="done", store=url)
    with cond:
        child = subprocess.Popen([sys.executable, "-c", _CHILD, url, "holder"])
        assert cond.wait(60), "the child's notify_all woke this process"
    assert not lock.acquire(False), "the child holds it"
    done.set()
    assert lock.acquire(timeout=60), "the child released it"
    lock.release()
    assert child.wait(60) == 0


def test_ctrl_c_interrupts_a_wait_and_leaves_nothing_held(tmp_path):
    url = f"sqlite:{tmp_path}/sigint.sqlite"
    lock = lt.Lock(name="x", store=url)
    lock.acquire()
    child = subprocess.Popen([sys.executable, "-c", _CHILD, url, "waiter"],
                             stdout=subprocess.PIPE, text=True)
    try:
        _interrupt_waiter(child, url)
    finally:
        child.stdout.close()
        child.kill()
        child.wait()
    lock.release()
    assert lock.acquire(False), "the interrupted waiter took nothing"
    lock.release()


def _interrupt_waiter(child, url):
    import locksmith
    assert child.stdout.readline().strip() == "ready"
    space = locksmith.Space(url)
    deadline = time.monotonic() + 60
    # The waiter shows in the store once it waits (a hang guard, not a sleep).
    while space.waiting("x") < 1:
        assert time.monotonic() < deadline, "the child never waited"
        time.sleep(0.01)
    child.send_signal(signal.SIGINT)
    assert child.wait(60) == 3
    assert child.stdout.readline().strip() == "interrupted"
