"""Real processes: a SIGKILLed holder, Ctrl-C during a wait, holds inherited through
fork, and primitives pickled to spawned processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import locksmith


def _hold_and_die(url, started):
    lock = locksmith.Lock("victim", url)
    lock.acquire()
    started.set()
    os.kill(os.getpid(), signal.SIGKILL)


def test_sigkilled_holder_is_recovered(shared_store):
    ctx = mp.get_context("spawn")
    started = ctx.Event()
    p = ctx.Process(target=_hold_and_die, args=(shared_store, started))
    p.start()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL and started.is_set()
    # redis recovers when the dead holder's 30 s default lease lapses; the local stores
    # see the process gone.
    guard = locksmith.Lock("victim", shared_store).acquire(timeout=90)
    assert guard is not None
    assert guard.previous_owner_died
    guard.release()


WAITER = textwrap.dedent(
    """
    import sys, threading, locksmith
    kind, url = sys.argv[1], sys.argv[2]
    space = locksmith.Space(url)
    if kind == "lock":
        prim = locksmith.Lock("ctrl-c", space)
        if url.startswith("mem:"):
            # A mem: store is this process's own: another thread holds the lock.
            holder = threading.Thread(target=prim.acquire)
            holder.start()
            holder.join()
        wait = prim.acquire
    elif kind == "event":
        prim = locksmith.Event("ctrl-c-event", space)
        wait = prim.wait
    elif kind == "condition":
        prim = locksmith.Condition("ctrl-c-cond", space)
        prim.acquire()
        wait = prim.wait
    else:
        prim = locksmith.Barrier("ctrl-c-barrier", 2, space)
        wait = prim.wait
    try:
        print("waiting", flush=True)
        wait()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        if kind == "lock":
            print("holds", prim._count_mine(), flush=True)  # nothing may be held
        if kind == "condition":
            print("holds", prim._count_mine(), flush=True)  # the lock is held again
        sys.exit(0)
    print("returned", flush=True)
    sys.exit(1)
    """
)

# Blocking system calls a waiter sleeps in (x86-64 numbers): futex, poll, ppoll,
# epoll_wait, epoll_pwait, nanosleep, clock_nanosleep, select, pselect6, io_uring_enter.
SLEEPING = {202, 7, 271, 232, 281, 35, 230, 23, 270, 426}


def _wait_until_sleeping(pid: int) -> None:
    """Until the child's main thread sleeps in a system call (inside the wait: it has
    nothing else to sleep on after printing), so that the signal lands in the wait."""
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/task/{pid}/syscall") as f:
            first = f.read().split()[0]
        if first.isdigit() and int(first) in SLEEPING:
            return
        time.sleep(0.005)
    raise AssertionError("the child never slept in its wait")


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="system call numbers are x86-64's")
@pytest.mark.parametrize("kind", ["lock", "event", "condition", "barrier"])
def test_ctrl_c_interrupts_a_wait(store, kind):
    holder = None
    if kind == "lock" and not store.startswith("mem:"):
        holder = locksmith.Lock("ctrl-c", store).acquire()
    child = subprocess.Popen([sys.executable, "-c", WAITER, kind, store],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "waiting"
    _wait_until_sleeping(child.pid)
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0, out
    lines = out.splitlines()
    assert lines[0] == "interrupted"
    if kind == "lock":
        assert lines[1] == "holds 0"
    if kind == "condition":
        assert lines[1] == "holds 1"
    if holder is not None:
        assert locksmith.Space(store).holders("ctrl-c")[0].token == holder.token
        holder.release()


def _child_exits_with(lock_obj, q):
    # The hold inherited from the parent is inert here: leaving `with`-less scope,
    # garbage collection and release() never free the parent's hold.
    q.put(lock_obj.locked())
    del lock_obj


def test_fork_child_never_releases_parents_hold(shared_store):
    lock = locksmith.Lock("forked", shared_store)
    guard = lock.acquire()
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_exits_with, args=(lock, q))
    p.start()
    assert q.get(timeout=60) is True
    p.join(60)
    assert p.exitcode == 0
    assert lock.locked()
    assert locksmith.Space(shared_store).holders("forked")[0].token == guard.token
    guard.release()


def _inc(args):
    lock, path, n = args
    for _ in range(n):
        with lock:
            with open(path, "r+") as f:
                v = int(f.read() or 0)
                f.seek(0)
                f.write(str(v + 1))
                f.truncate()
    return True


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_lock_in_pool_tasks(shared_store, tmp_path, method):
    path = tmp_path / "n"
    path.write_text("0")
    lock = locksmith.Lock("pool", shared_store)
    with mp.get_context(method).Pool(3) as pool:
        assert all(pool.map(_inc, [(lock, str(path), 30)] * 3))
    assert path.read_text() == "90"
