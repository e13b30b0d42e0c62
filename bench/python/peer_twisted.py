"""Twisted peers: DeferredLock.run and DeferredSemaphore.run of an immediately ready
function (no reactor needed: the Deferred fires synchronously)."""

from common import main, per_op


def run(out, budget, scratch):
    from twisted.internet import defer

    def ready():
        return 1

    lock = defer.DeferredLock()
    out.measure("async", "Twisted DeferredLock.run", "Lock",
                "run(f) with f returning at once; the Deferred fires synchronously",
                lambda: per_op(budget, lambda: lock.run(ready)))
    sem = defer.DeferredSemaphore(1)
    out.measure("async", "Twisted DeferredSemaphore.run", "Semaphore",
                "tokens=1; run(f) with f returning at once",
                lambda: per_op(budget, lambda: sem.run(ready)))


if __name__ == "__main__":
    main(run)
