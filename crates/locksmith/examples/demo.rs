//! Works through every primitive with real threads on the default store, checks the
//! results, and prints what held and how fast.
//!
//! ```text
//! cargo run --release -p locksmith --example demo -- [THREADS]
//! ```

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use locksmith::{Result, Space};

const ROUNDS: u64 = 2_000;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

struct Row {
    what: &'static str,
    check: String,
    ok: bool,
    ops: u64,
    took: Duration,
}

fn run() -> Result<bool> {
    let threads: usize = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 4,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            return Err(locksmith::Error::InvalidArgument(
                "THREADS must be a positive number".into(),
            ))
        }
    };
    let space = Space::open_default()?;
    println!("locksmith demo on {} with {threads} threads\n", space.url());
    let rows = vec![
        counter(&space, threads)?,
        semaphore(&space, threads)?,
        barrier(&space, threads)?,
        event(&space, threads)?,
        averager(&space, threads)?,
    ];
    println!(
        "{:<10} {:<44} {:>6} {:>12}",
        "primitive", "check", "result", "ops/s"
    );
    let mut all = true;
    for r in &rows {
        let rate = r.ops as f64 / r.took.as_secs_f64();
        println!(
            "{:<10} {:<44} {:>6} {:>12.0}",
            r.what,
            r.check,
            if r.ok { "ok" } else { "FAILED" },
            rate
        );
        all &= r.ok;
    }
    Ok(all)
}

fn spawn_all<T: Send + 'static>(
    n: usize,
    f: impl Fn(usize) -> Result<T> + Send + Sync + Clone + 'static,
) -> Result<Vec<T>> {
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let f = f.clone();
            std::thread::spawn(move || f(i))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("a demo thread panicked"))
        .collect()
}

fn counter(space: &Space, threads: usize) -> Result<Row> {
    let lock = space.lock("demo.counter");
    let value = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    spawn_all(threads, {
        let value = value.clone();
        move |_| {
            for _ in 0..ROUNDS {
                let _g = lock.acquire()?;
                let v = value.load(Ordering::Relaxed);
                value.store(v + 1, Ordering::Relaxed);
            }
            Ok(())
        }
    })?;
    let want = threads as u64 * ROUNDS;
    let got = value.load(Ordering::SeqCst);
    Ok(Row {
        what: "Lock",
        check: format!("counter = {got}, expected {want}"),
        ok: got == want,
        ops: want,
        took: start.elapsed(),
    })
}

fn semaphore(space: &Space, threads: usize) -> Result<Row> {
    let k = 2;
    let sem = space.semaphore("demo.pool", k);
    let (inside, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let start = Instant::now();
    spawn_all(threads, {
        let (inside, most) = (inside.clone(), most.clone());
        move |_| {
            for _ in 0..ROUNDS / 4 {
                let _p = sem.acquire()?;
                most.fetch_max(inside.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                inside.fetch_sub(1, Ordering::SeqCst);
            }
            Ok(())
        }
    })?;
    let most = most.load(Ordering::SeqCst);
    Ok(Row {
        what: "Semaphore",
        check: format!("most holders = {most}, limit {k}"),
        ok: most <= k as usize,
        ops: threads as u64 * ROUNDS / 4,
        took: start.elapsed(),
    })
}

fn barrier(space: &Space, threads: usize) -> Result<Row> {
    let phases = 20;
    let done = Arc::new(AtomicU64::new(0));
    let barrier = space.barrier("demo.phase", threads as u32).action({
        let done = done.clone();
        move || {
            done.fetch_add(1, Ordering::SeqCst);
        }
    });
    let start = Instant::now();
    let aligned = spawn_all(threads, {
        let done = done.clone();
        move |_| {
            let mut aligned = true;
            for phase in 0..phases {
                barrier.wait()?;
                aligned &= done.load(Ordering::SeqCst) == phase + 1;
            }
            Ok(aligned)
        }
    })?;
    let ok = aligned.iter().all(|a| *a);
    Ok(Row {
        what: "Barrier",
        check: format!("{phases} phases, every party aligned: {ok}"),
        ok,
        ops: phases * threads as u64,
        took: start.elapsed(),
    })
}

fn event(space: &Space, threads: usize) -> Result<Row> {
    let ev = space.event("demo.ready");
    ev.clear()?;
    let start = Instant::now();
    let waiters: Vec<_> = (0..threads)
        .map(|_| {
            let ev = ev.clone();
            std::thread::spawn(move || ev.wait_timeout(Duration::from_secs(30)))
        })
        .collect();
    ev.set()?;
    let woken = waiters
        .into_iter()
        .map(|w| w.join().expect("a waiter panicked"))
        .collect::<Result<Vec<bool>>>()?;
    let n = woken.iter().filter(|w| **w).count();
    ev.clear()?;
    Ok(Row {
        what: "Event",
        check: format!("{n} of {threads} waiters woken by set()"),
        ok: n == threads,
        ops: threads as u64,
        took: start.elapsed(),
    })
}

fn averager(space: &Space, threads: usize) -> Result<Row> {
    let avg = space.averager("demo.latency");
    avg.pop()?;
    let start = Instant::now();
    spawn_all(threads, {
        let avg = avg.clone();
        move |i| {
            for _ in 0..ROUNDS / 4 {
                avg.add(i as f64)?;
            }
            Ok(())
        }
    })?;
    let want = (threads - 1) as f64 / 2.0;
    let got = avg.pop()?.unwrap_or(f64::NAN);
    Ok(Row {
        what: "Averager",
        check: format!("average = {got}, expected {want}"),
        ok: (got - want).abs() < 1e-9,
        ops: threads as u64 * ROUNDS / 4,
        took: start.elapsed(),
    })
}
