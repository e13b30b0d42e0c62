"""runtime.sync's Mutex in a SharedMemory: four processes add to one counter kept in
the same block, under the mutex placed at its start.

Run: python python/examples/sync_shared_memory.py
"""

import multiprocessing
from multiprocessing.shared_memory import SharedMemory

from locksmith.sync import Mutex

COUNTER = 64  # the counter's offset, after the mutex


def work(name, n):
    shm = SharedMemory(name=name)
    mutex = Mutex(shm.buf)  # attach: the creator initialised it
    for _ in range(n):
        with mutex:
            value = int.from_bytes(shm.buf[COUNTER : COUNTER + 8], "little")
            shm.buf[COUNTER : COUNTER + 8] = (value + 1).to_bytes(8, "little")
    del mutex  # releases the buffer's export, so the block can close
    shm.close()


def main():
    shm = SharedMemory(create=True, size=COUNTER + 8)
    try:
        mutex = Mutex(shm.buf)
        mutex.initialize()
        procs = [multiprocessing.Process(target=work, args=(shm.name, 500)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        total = int.from_bytes(shm.buf[COUNTER : COUNTER + 8], "little")
        assert total == 2000, total
        print("counter:", total)
        mutex.destroy()
        del mutex
    finally:
        shm.close()
        shm.unlink()


if __name__ == "__main__":
    main()
