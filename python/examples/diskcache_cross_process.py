"""diskcache's "Cross-Process Coordination" example, switched to locksmith by one
import. Six processes share a pool of two permits and one exclusive lock; the script
checks that no two were ever inside the lock together and at most two in the pool.

Run: python python/examples/diskcache_cross_process.py [CACHE_DIR]
"""

import multiprocessing
import os
import sys
import tempfile
import time

import diskcache

from locksmith import diskcache as recipes  # instead of diskcache's own recipes


def worker_process(process_id, cache_dir):
    # Each process creates its own cache connection
    cache = diskcache.Cache(cache_dir)
    lock = recipes.Lock(cache, "shared_resource")
    semaphore = recipes.BoundedSemaphore(cache, "resource_pool", value=2)
    pool = recipes.Averager(cache, ("inside", "pool"))
    inside = recipes.Averager(cache, ("inside", "lock"))
    with semaphore:
        print(f"Process {process_id} acquired semaphore", flush=True)
        pool.add(1)
        with lock:
            print(f"Process {process_id} has exclusive access", flush=True)
            inside.add(1)
            time.sleep(0.05)
            print(f"Process {process_id} releasing exclusive access", flush=True)
    print(f"Process {process_id} released semaphore", flush=True)


def main(cache_dir):
    processes = [
        multiprocessing.Process(target=worker_process, args=(i, cache_dir)) for i in range(6)
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join()
    assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]
    cache = diskcache.Cache(cache_dir)
    assert recipes.Averager(cache, ("inside", "lock")).pop() == 1.0
    assert os.path.exists(os.path.join(cache_dir, "locksmith.sqlite"))
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="multiprocess_sync-"))
