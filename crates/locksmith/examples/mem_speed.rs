//! What an uncontended in-process Lock costs, blocking, async and through `run`, next
//! to `tokio::sync::Mutex`: a loop to read with a profiler. The comparison harness
//! (`bench/compare.sh`) gives the numbers that are reported.
//!
//! ```sh
//! cargo run --release -p locksmith --example mem_speed [SECONDS]
//! cargo run --release -p locksmith --example mem_speed -- --ops N   # N cycles each
//! ```
//!
//! With `--ops`, the work is fixed, so `valgrind --tool=callgrind` counts the same
//! instructions on every run however busy the machine is.

use std::time::{Duration, Instant};

use locksmith::{Result, Space};

/// How long each case runs.
#[derive(Clone, Copy)]
enum Work {
    Seconds(f64),
    Ops(u64),
}

fn per_op(what: &str, work: Work, mut cycle: impl FnMut(u64) -> Result<()>) -> Result<()> {
    let batch = 100_000;
    let (mut n, start) = (0u64, Instant::now());
    match work {
        Work::Seconds(s) => {
            while start.elapsed() < Duration::from_secs_f64(s) {
                cycle(batch)?;
                n += batch;
            }
        }
        Work::Ops(ops) => {
            cycle(ops)?;
            n = ops.max(1);
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!("{what:<36} {ns:>8.1} ns per acquire+release");
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds = match args.as_slice() {
        [flag, n] if flag == "--ops" => Work::Ops(n.parse().expect("--ops takes a count")),
        [s] => Work::Seconds(s.parse().expect("SECONDS is a number")),
        _ => Work::Seconds(1.0),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    let lock = Space::open("mem:")?.lock("speed");
    per_op("locksmith mem, blocking", seconds, |k| {
        for _ in 0..k {
            lock.acquire()?.release()?;
        }
        Ok(())
    })?;
    per_op("locksmith mem, acquire_async", seconds, |k| {
        rt.block_on(async {
            for _ in 0..k {
                lock.acquire_async().await?.release()?;
            }
            Ok(())
        })
    })?;
    per_op("locksmith mem, run(ready f)", seconds, |k| {
        rt.block_on(async {
            for _ in 0..k {
                lock.run(|| async {}).await?;
            }
            Ok(())
        })
    })?;
    let tokio_mutex = tokio::sync::Mutex::new(0u64);
    per_op("tokio::sync::Mutex", seconds, |k| {
        rt.block_on(async {
            for _ in 0..k {
                *tokio_mutex.lock().await += 1;
            }
            Ok(())
        })
    })
}
