//! Criterion benchmarks of the one-process scenarios (uncontended and async acquire+release),
//! for statistical detail beyond what `locksmith-bench run` reports. The cross-process
//! scenarios need two processes and live in `locksmith-bench run` only.
//!
//! `cargo bench -p locksmith-bench --bench in_process` (add `-- --quick` for a short run).
//! locksmith's rows: add a `group.bench_function("locksmith <backend>", ...)` next to the
//! peers below, holding the lock through its [`ProcLock`] impl from `src/locksmith_rows.rs`.
// criterion_group!/criterion_main! generate undocumented public functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use locksmith_bench::harness::ProcLock;
use locksmith_bench::peers::posix::PthreadMutex;

fn hold_loop<L: ProcLock>(c: &mut Criterion, group: &str, name: &str, mut lock: L) {
    let mut g = c.benchmark_group(group);
    g.bench_function(name, |b| {
        b.iter(|| {
            if let Err(e) = lock.hold(|| black_box(1)) {
                panic!("{name}: {e:#}");
            }
        })
    });
    g.finish();
}

fn uncontended(c: &mut Criterion) {
    hold_loop(
        c,
        "uncontended",
        "std::sync::Mutex",
        std::sync::Mutex::new(0u64),
    );
    hold_loop(
        c,
        "uncontended",
        "parking_lot::Mutex",
        parking_lot::Mutex::new(0u64),
    );
    match PthreadMutex::new() {
        Ok(m) => hold_loop(c, "uncontended", "pthread mutex (PROCESS_SHARED)", &m),
        Err(e) => eprintln!("pthread mutex skipped: {e:#}"),
    }
}

fn async_acquire(c: &mut Criterion) {
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("async benches skipped: {e}");
            return;
        }
    };
    let mut g = c.benchmark_group("async");
    let tm = tokio::sync::Mutex::new(0u64);
    g.bench_function("tokio::sync::Mutex", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    *black_box(&tm).lock().await += 1;
                }
                t.elapsed()
            })
        })
    });
    let am = async_lock::Mutex::new(0u64);
    g.bench_function("async-lock::Mutex", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    *black_box(&am).lock().await += 1;
                }
                t.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = uncontended, async_acquire
}
criterion_main!(benches);
