"""The NetworkCounter of Twisted's DeferredLock documentation, counting across processes:
its count lives in a file that three processes share, each running a reactor whose
``next()`` calls go through one named ``locksmith.twisted.DeferredLock``. The script
checks that every count was given out exactly once (no update was lost).

Run: python python/examples/twisted_network_counter.py [STORE_DIR]
"""

import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.internet import defer, task

from locksmith.twisted import DeferredLock

WORKERS = 3
CALLS = 20  # concurrent next() calls in each process


class NetworkCounter:
    """The documentation's counter, its ``_count`` kept in a file for every process."""

    def __init__(self, reactor, path, lock):
        self._reactor = reactor
        self._path = path
        self._lock = lock

    def next(self):
        return self._lock.run(self._next)

    def _next(self):
        count = int(self._path.read_text()) + 1
        recording = self._record(count)

        def recorded(ignored):
            self._path.write_text(str(count))
            return count

        recording.addCallback(recorded)
        return recording

    def _record(self, value):
        # Stands for http.get(b"http://example.com/record-count?value=%d" % (value,)):
        # the critical section waits on the network while other callers queue.
        return task.deferLater(self._reactor, 0.002, lambda: None)


async def work(reactor, path, store):
    lock = DeferredLock(name="network-counter", store=store, reactor=reactor)
    counter = NetworkCounter(reactor, Path(path), lock)
    counts = await defer.gatherResults([counter.next() for _ in range(CALLS)])
    print(" ".join(map(str, counts)), flush=True)


def main():
    base = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    path = base / "count"
    path.write_text("0")
    store = f"sqlite:{base}/locks.sqlite"
    workers = [subprocess.Popen([sys.executable, __file__, "--worker", str(path), store],
                                stdout=subprocess.PIPE, text=True)
               for _ in range(WORKERS)]
    given = []
    for w in workers:
        out, _ = w.communicate(timeout=120)
        assert w.returncode == 0, w.returncode
        counts = [int(c) for c in out.split()]
        assert counts == sorted(counts), "one process's calls are served in order"
        given += counts
    assert sorted(given) == list(range(1, WORKERS * CALLS + 1)), sorted(given)
    assert int(path.read_text()) == WORKERS * CALLS
    print(f"{WORKERS * CALLS} counts, each given once: ok")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        task.react(lambda reactor: defer.ensureDeferred(work(reactor, *sys.argv[2:4])))
    else:
        main()
