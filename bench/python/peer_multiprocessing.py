"""multiprocessing and billiard peers: Lock, Semaphore and Event ping-pong, Barrier, Lock
hand-off. Both use POSIX semaphores underneath; fork start method."""

from common import barrier2, handoff, main, per_op, ping_pong


def family(out, budget, name, ctx):
    note = "fork context"
    lock = ctx.Lock()

    def lock_cycle():
        lock.acquire()
        lock.release()

    out.measure("uncontended", f"{name} Lock", "Lock", note, lambda: per_op(budget, lock_cycle))

    sem = ctx.Semaphore(1)

    def sem_cycle():
        sem.acquire()
        sem.release()

    out.measure("primitives", f"{name} Semaphore", "Semaphore", note,
                lambda: per_op(budget, sem_cycle))

    hl = ctx.Lock()
    out.measure("handoff", f"{name} Lock", "Lock", note,
                lambda: handoff(budget, lambda: hl, lambda l: l.acquire(), lambda l: l.release()))

    sems = (ctx.Semaphore(0), ctx.Semaphore(0))
    out.measure("pingpong", f"{name} Semaphore", "Semaphore", note,
                lambda: ping_pong(budget, lambda: sems, lambda s: s.release(),
                                  lambda s: s.acquire()))

    events = (ctx.Event(), ctx.Event())

    def ev_wait(e):
        e.wait()
        e.clear()

    out.measure("pingpong", f"{name} Event", "Event", note + "; wait then clear",
                lambda: ping_pong(budget, lambda: events, lambda e: e.set(), ev_wait))

    bar = ctx.Barrier(2)
    out.measure("barrier", f"{name} Barrier", "Barrier", note,
                lambda: barrier2(budget, lambda: bar, lambda b: b.wait()))


def run(out, budget, scratch):
    import multiprocessing

    family(out, budget, "multiprocessing", multiprocessing.get_context("fork"))
    try:
        import billiard
    except ImportError as e:
        for sc, prim in [("uncontended", "Lock"), ("pingpong", "Semaphore")]:
            out.skip(sc, f"billiard {prim}", prim, f"billiard not installed: {e}")
        return
    family(out, budget, "billiard", billiard.get_context("fork"))


if __name__ == "__main__":
    main(run)
