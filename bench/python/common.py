"""Shared timing helpers for the Python peers of the locksmith comparison.

Every script writes JSON lines in the format of crates/locksmith-bench/src/record.rs:
scenario, system, primitive, median, p10, p90, p99 (latencies), unit, n, lang, note,
skipped. Numbers are medians over samples, never means:

- ns/op rows: one sample is one timed batch of operations (Python loop overhead included);
- latency rows (hand-off, ping-pong, barrier): one sample is one event, in µs.
"""

import argparse
import json
import multiprocessing
import os
import random
import sys
import time
import traceback

MONO = time.CLOCK_MONOTONIC


def now_ns():
    """Nanoseconds on CLOCK_MONOTONIC: comparable between processes of one host."""
    return time.clock_gettime_ns(MONO)


class Budget:
    """How long to measure: the full run or the --quick smoke run."""

    def __init__(self, quick):
        self.quick = quick
        self.samples = 5 if quick else 31
        self.batch_time = 0.002 if quick else 0.02
        self.latency_samples = 30 if quick else 600
        self.slow_latency_samples = 4 if quick else 20
        self.pause = 0.002


def percentile(sorted_values, q):
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def stats(samples):
    v = sorted(x for x in samples if x == x)
    if not v:
        raise RuntimeError("no samples")
    return {
        "median": percentile(v, 0.5),
        "p10": percentile(v, 0.1),
        "p90": percentile(v, 0.9),
        "p99": percentile(v, 0.99),
        "n": len(v),
    }


UNITS = {
    "uncontended": "ns/op",
    "contention2": "cycles/s",
    "handoff": "µs",
    "pingpong": "µs",
    "barrier": "µs",
    "async": "ns/op",
    "primitives": "ns/op",
    "open": "ns/op",
    "names": "ns/op",
    "python": "×",
}
LATENCY = {"handoff", "pingpong", "barrier"}


class Out:
    """Writes records to a JSON-lines file and a readable line to stderr."""

    def __init__(self, path, only):
        self.f = open(path, "a", encoding="utf-8")
        self.only = only
        self.failures = 0

    def wants(self, scenario, system):
        key = f"{scenario}/{system}"
        return not self.only or any(o in key for o in self.only)

    def emit(self, scenario, system, primitive, st, note=""):
        rec = {
            "scenario": scenario,
            "system": system,
            "primitive": primitive,
            "median": st["median"],
            "p10": st["p10"],
            "p90": st["p90"],
            "p99": st["p99"] if scenario in LATENCY else None,
            "unit": UNITS[scenario],
            "n": st["n"],
            "lang": "python",
            "note": note,
            "skipped": False,
        }
        self.f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self.f.flush()
        print(
            f"  {scenario:<12} {system:<44} {st['median']:>12.3f} {UNITS[scenario]} "
            f"(p10 {st['p10']:.3f}, p90 {st['p90']:.3f}, n {st['n']})",
            file=sys.stderr,
        )

    def skip(self, scenario, system, primitive, why):
        if not self.wants(scenario, system):
            return
        rec = {
            "scenario": scenario,
            "system": system,
            "primitive": primitive,
            "median": 0.0,
            "unit": UNITS[scenario],
            "n": 0,
            "lang": "python",
            "note": why,
            "skipped": True,
        }
        self.f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self.f.flush()
        print(f"  {scenario:<12} {system:<44} skipped: {why}", file=sys.stderr)

    def pair(self, system, primitive, peer, unit, fn):
        """A paired row (scenario `python`): fn() -> paired()'s triple; the row's numbers
        are the per-pair ratios ours/peer, the note gives both sides' medians."""

        def ratio():
            r, ours, theirs = fn()
            r["note"] = (
                f"vs {peer}: {ours['median']:.4g} vs {theirs['median']:.4g} {unit} "
                f"(medians); {r['n']} pairs of interleaved batches"
            )
            return r

        if not self.wants("python", system):
            return
        try:
            st = ratio()
        except Exception as e:  # noqa: BLE001 - any failure becomes a visible row
            self.failures += 1
            traceback.print_exc()
            self.skip("python", system, primitive, f"failed: {type(e).__name__}: {e}")
            return
        self.emit("python", system, primitive, st, st["note"])

    def measure(self, scenario, system, primitive, note, fn):
        """Runs fn() -> stats if wanted; a failure becomes a skipped row with the error."""
        if not self.wants(scenario, system):
            return
        try:
            st = fn()
        except Exception as e:  # noqa: BLE001 - any failure becomes a visible row
            self.failures += 1
            traceback.print_exc()
            self.skip(scenario, system, primitive, f"failed: {type(e).__name__}: {e}")
            return
        self.emit(scenario, system, primitive, st, note)


def per_op(budget, op):
    """ns per call of op(): calibrated batches, median over samples."""
    batch = 1
    while True:
        t = time.perf_counter_ns()
        for _ in range(batch):
            op()
        el = time.perf_counter_ns() - t
        if el >= budget.batch_time * 1e9 / 10 or batch >= 1 << 24:
            per = max(el, 1) / batch
            batch = max(1, int(budget.batch_time * 1e9 / per))
            break
        batch *= 4
    v = []
    for _ in range(budget.samples):
        t = time.perf_counter_ns()
        for _ in range(batch):
            op()
        v.append((time.perf_counter_ns() - t) / batch)
    return stats(v)


def _spin_until(value, target, limit=60.0):
    start = time.monotonic()
    while value.value < target:
        if time.monotonic() - start > limit:
            raise TimeoutError("partner process stalled")
        time.sleep(0.00002)


def handoff(budget, open_lock, acquire, release, samples=None, poll=0.0):
    """Hand-off latency in µs: this process holds, a forked child waits in acquire, this
    process releases; the child notes when its acquire returned. open_lock() runs in each
    process after the fork. For a lock whose waiters poll every `poll` seconds, the
    release comes at a random phase of the poll (a fixed pause would always hit the same
    phase and show the worst or the best case)."""
    n = samples or budget.latency_samples
    rng = random.Random(6)
    ctx = multiprocessing.get_context("fork")
    held, ready, done, t0 = (ctx.RawValue("q", 0) for _ in range(4))
    lat = ctx.RawArray("q", n)

    def child():
        lock = open_lock()
        for i in range(1, n + 1):
            _spin_until(held, i)
            ready.value = i
            acquire(lock)
            t1 = now_ns()
            lat[i - 1] = t1 - t0.value
            release(lock)
            done.value = i

    p = ctx.Process(target=child, daemon=True)
    p.start()
    try:
        lock = open_lock()
        for i in range(1, n + 1):
            acquire(lock)
            held.value = i
            _spin_until(ready, i)
            # Let the child get into its blocking or polling acquire.
            time.sleep(budget.pause + rng.uniform(0.0, poll))
            t0.value = now_ns()
            release(lock)
            _spin_until(done, i)
    finally:
        p.join(60)
        if p.is_alive():
            p.kill()
    if p.exitcode != 0:
        raise RuntimeError(f"waiting process exited with {p.exitcode}")
    return stats([x / 1000.0 for x in lat])


def ping_pong(budget, open_pair, post, wait):
    """Round trip in µs between this process and a forked child. open_pair() -> (ping,
    pong) runs in each process after the fork."""
    n = budget.latency_samples
    warm = 10
    ctx = multiprocessing.get_context("fork")

    def child():
        ping, pong = open_pair()
        for _ in range(n + warm):
            wait(ping)
            post(pong)

    p = ctx.Process(target=child, daemon=True)
    p.start()
    v = []
    try:
        ping, pong = open_pair()
        for i in range(n + warm):
            t = now_ns()
            post(ping)
            wait(pong)
            if i >= warm:
                v.append((now_ns() - t) / 1000.0)
    finally:
        p.join(60)
        if p.is_alive():
            p.kill()
    return stats(v)


def barrier2(budget, open_barrier, wait):
    """One generation of a two-party barrier, in µs, timed in this process."""
    n = budget.latency_samples
    warm = 10
    ctx = multiprocessing.get_context("fork")

    def child():
        b = open_barrier()
        for _ in range(n + warm + 1):
            wait(b)

    p = ctx.Process(target=child, daemon=True)
    p.start()
    v = []
    try:
        b = open_barrier()
        wait(b)
        for i in range(n + warm):
            t = now_ns()
            wait(b)
            if i >= warm:
                v.append((now_ns() - t) / 1000.0)
    finally:
        p.join(60)
        if p.is_alive():
            p.kill()
    return stats(v)


def main(run):
    """Command line shared by the peer scripts: --quick, --out FILE, --only PATTERN."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--scratch", default=os.environ.get("TMPDIR", "/tmp"))
    a = ap.parse_args()
    os.makedirs(a.scratch, exist_ok=True)
    out = Out(a.out, a.only)
    run(out, Budget(a.quick), a.scratch)
    sys.exit(1 if out.failures else 0)


# --- Paired ratios ----------------------------------------------------------------------
# A loaded machine moves a row's nanoseconds by more than the differences the issue's
# targets ask about, and it moves them slowly (another build starts, a core gets busy).
# A paired measurement times ours and the peer in alternating short batches of the same
# length, takes the ratio of each adjacent pair, and reports the median of those ratios:
# both halves of a pair saw the same machine, so the load cancels out of the ratio.


class Pairs:
    """How many interleaved pairs, and how long each batch is: far shorter than a
    scheduler time slice, so that on a busy machine most pairs run undisturbed and a
    preempted one is an outlier the median ignores."""

    def __init__(self, budget):
        self.pairs = 51 if budget.quick else 1001
        self.batch_time = 0.0002


def _calibrate(run, batch_time):
    """A batch size that takes about batch_time seconds with run(n) -> elapsed ns."""
    n = 1
    while True:
        el = run(n)
        if el >= batch_time * 1e9 / 4 or n >= 1 << 22:
            return max(1, int(n * batch_time * 1e9 / max(el, 1)))
        n *= 4


def paired(budget, ours, peer):
    """ours(n) and peer(n) each run n operations and return the elapsed ns. Returns
    (ratio stats of ours/peer per pair, ns per op of ours, ns per op of peer)."""
    p = Pairs(budget)
    n = _calibrate(peer, p.batch_time)
    ours(n)  # warm both
    peer(n)
    ratios, ns_ours, ns_peer = [], [], []
    for i in range(p.pairs):
        # Alternate which goes first, so a drift in the load does not favour either.
        if i % 2:
            a = ours(n)
            b = peer(n)
        else:
            b = peer(n)
            a = ours(n)
        ratios.append(a / max(b, 1))
        ns_ours.append(a / n)
        ns_peer.append(b / n)
    return stats(ratios), stats(ns_ours), stats(ns_peer)


def acquire_release(lock):
    """n times `lock.acquire(); lock.release()`, timed: the batch of a paired row."""

    def run(n):
        t = time.perf_counter_ns()
        for _ in range(n):
            lock.acquire()
            lock.release()
        return time.perf_counter_ns() - t

    return run


def with_block(lock):
    """n times `with lock: pass`, timed."""

    def run(n):
        t = time.perf_counter_ns()
        for _ in range(n):
            with lock:
                pass
        return time.perf_counter_ns() - t

    return run


def paired_ping_pong(budget, ours, peer):
    """Ping-pong round trips between this process and a forked child, ours and the
    peer's in alternating batches (one child each, alive throughout). ours and peer are
    (open_pair, post, wait) as for ping_pong. Returns paired()'s triple, per round trip
    in µs instead of ns per op."""
    p = Pairs(budget)
    per_batch = 20
    warm = 10
    total = warm + p.pairs * per_batch
    ctx = multiprocessing.get_context("fork")
    children = []

    def child(open_pair, post, wait):
        ping, pong = open_pair()
        for _ in range(total):
            wait(ping)
            post(pong)

    sides = []
    try:
        for open_pair, post, wait in (ours, peer):
            c = ctx.Process(target=child, args=(open_pair, post, wait), daemon=True)
            c.start()
            children.append(c)
            ping, pong = open_pair()
            for _ in range(warm):
                post(ping)
                wait(pong)

            def batch(ping=ping, pong=pong, post=post, wait=wait):
                t = now_ns()
                for _ in range(per_batch):
                    post(ping)
                    wait(pong)
                return now_ns() - t

            sides.append(batch)
        ratios, a_us, b_us = [], [], []
        for i in range(p.pairs):
            if i % 2:
                a = sides[0]()
                b = sides[1]()
            else:
                b = sides[1]()
                a = sides[0]()
            ratios.append(a / max(b, 1))
            a_us.append(a / per_batch / 1000.0)
            b_us.append(b / per_batch / 1000.0)
    finally:
        for c in children:
            c.join(60)
            if c.is_alive():
                c.kill()
    for c in children:
        if c.exitcode != 0:
            raise RuntimeError(f"ping-pong partner exited with {c.exitcode}")
    return stats(ratios), stats(a_us), stats(b_us)
