import asyncio, time
from locksmith import asyncio as la
N = 200_000
async def run(lock):
    t = time.perf_counter()
    for _ in range(N):
        async with lock:
            pass
    return (time.perf_counter() - t) / N * 1e9
async def main():
    best = {}
    for _ in range(5):
        for name, make in (("asyncio.Lock", asyncio.Lock), ("locksmith.asyncio.Lock", la.Lock)):
            ns = await run(make())
            best[name] = min(best.get(name, 1e18), ns)
    for k, v in best.items(): print(f"{k}: {v:.1f} ns per async with")
    print(f"ratio locksmith/asyncio: {best['locksmith.asyncio.Lock']/best['asyncio.Lock']:.2f}")
asyncio.run(main())
