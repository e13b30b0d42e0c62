"""Redis peers: redis-py's Lock and python-redis-lock, acquire+release and hand-off.

Redis URL: $LOCKSMITH_REDIS_URL, else redis://127.0.0.1:6379/. If Redis cannot be
reached the rows are written as skipped with the reason."""

import os

from common import handoff, main, per_op

SYSTEMS = [("redis-py Lock", "Lock"), ("python-redis-lock", "Lock")]


def run(out, budget, scratch):
    url = os.environ.get("LOCKSMITH_REDIS_URL") or "redis://127.0.0.1:6379/"
    try:
        import redis
        import redis_lock
    except ImportError as e:
        for system, prim in SYSTEMS:
            out.skip("uncontended", system, prim, f"not installed: {e}")
        return

    def connect():
        return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=10)

    try:
        r = connect()
        r.ping()
    except Exception as e:  # noqa: BLE001 - unreachable Redis is a skip, not a failure
        print(f"note: Redis unreachable at {url} ({e}); skipping the Redis rows")
        for system, prim in SYSTEMS:
            for sc in ("uncontended", "handoff"):
                out.skip(sc, system, prim, f"Redis unreachable at {url}")
        return

    pid = os.getpid()
    note = f"one connection to {url}"
    lk = r.lock(f"locksmith-bench:redispy:{pid}", timeout=30)

    def redispy_cycle():
        lk.acquire()
        lk.release()

    out.measure("uncontended", "redis-py Lock", "Lock", note, lambda: per_op(budget, redispy_cycle))

    rl = redis_lock.Lock(r, f"locksmith-bench:rl:{pid}", expire=30)

    def rl_cycle():
        rl.acquire()
        rl.release()

    out.measure("uncontended", "python-redis-lock", "Lock", note, lambda: per_op(budget, rl_cycle))


    def open_redispy():
        return connect().lock(f"locksmith-bench:redispy-h:{pid}", timeout=60)

    out.measure("handoff", "redis-py Lock", "Lock",
                note + "; waiter polls every 100 ms (default sleep=0.1)",
                lambda: handoff(budget, open_redispy, lambda l: l.acquire(),
                                lambda l: l.release(), samples=budget.slow_latency_samples,
                                poll=0.1))

    def open_rl():
        return redis_lock.Lock(connect(), f"locksmith-bench:rl-h:{pid}", expire=60)

    out.measure("handoff", "python-redis-lock", "Lock",
                note + "; waiter blocks on BLPOP of a signal list",
                lambda: handoff(budget, open_rl, lambda l: l.acquire(), lambda l: l.release()))


if __name__ == "__main__":
    main(run)
