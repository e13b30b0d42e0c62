"""`async with locksmith.asyncio.Lock()` against `async with asyncio.Lock()`, uncontended,
in one loop: rounds alternate between the two, and each keeps its best round (the
machine's noise only ever adds time). Prints ns per `async with` and the ratio.

    python bench/python/asyncio_lock_ratio.py [rounds] [iterations per round]
"""

import asyncio
import sys
import time

from locksmith import asyncio as la


async def one_round(lock, n):
    start = time.perf_counter()
    for _ in range(n):
        async with lock:
            pass
    return (time.perf_counter() - start) / n * 1e9


async def main(rounds, n):
    best = {}
    for _ in range(rounds):
        for label, make in (("asyncio.Lock", asyncio.Lock),
                            ("locksmith.asyncio.Lock", la.Lock)):
            ns = await one_round(make(), n)
            best[label] = min(best.get(label, float("inf")), ns)
    for label, ns in best.items():
        print(f"{label}: {ns:.1f} ns per async with")
    ratio = best["locksmith.asyncio.Lock"] / best["asyncio.Lock"]
    print(f"ratio locksmith/asyncio: {ratio:.2f}")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    asyncio.run(main(args[0] if args else 15, args[1] if len(args) > 1 else 100_000))
