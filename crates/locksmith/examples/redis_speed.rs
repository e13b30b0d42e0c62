//! How fast the Redis backend is, next to the raw round trips it is made of.
//!
//! ```sh
//! cargo run --release -p locksmith --example redis_speed            # 127.0.0.1:6379
//! LOCKSMITH_REDIS_URL=redis://host:6379/0 cargo run --release -p locksmith --example redis_speed
//! ```
//!
//! Prints Lock acquire+release cycles per second (blocking and async) beside two raw
//! round trips (two PINGs, and a SET plus a DEL) measured in the same run, and the
//! hand-off latency between two processes (a holder releases, a queued waiter in
//! another process gets the lock), as a median and a 99th percentile.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use locksmith::Space;

const CYCLES: u32 = 10_000;
const ROUNDS: u32 = 20;
const HANDOFFS: usize = 300;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = std::env::var("LOCKSMITH_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379/0".to_owned());
    if let Ok(url) = std::env::var("REDIS_SPEED_CHILD") {
        return child(&url);
    }
    let sep = if server.contains('?') { '&' } else { '?' };
    let url = format!("{server}{sep}prefix=speed{}:", std::process::id());
    println!(
        "redis_speed: {server}, {CYCLES} cycles in {ROUNDS} interleaved rounds, {HANDOFFS} hand-offs"
    );

    let mut conn = redis::Client::open(server.as_str())?.get_connection()?;
    let space = Space::open(&url)?;
    let lock = space.lock("speed");
    let lock_async = space.lock("speed-async");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Interleaved rounds, so that a machine busy with other work slows the baseline
    // and the locks alike; each figure is the median over the rounds.
    let mut rounds: [Vec<Duration>; 4] = Default::default();
    for round in 0..=ROUNDS {
        let batch = [
            per_op(|| {
                redis::cmd("PING").query::<String>(&mut conn).unwrap();
                redis::cmd("PING").query::<String>(&mut conn).unwrap();
            }),
            per_op(|| {
                redis::cmd("SET")
                    .arg("speed:raw")
                    .arg("1")
                    .query::<()>(&mut conn)
                    .unwrap();
                redis::cmd("DEL")
                    .arg("speed:raw")
                    .query::<()>(&mut conn)
                    .unwrap();
            }),
            per_op(|| drop(lock.acquire().unwrap())),
            {
                let start = Instant::now();
                rt.block_on(async {
                    for _ in 0..CYCLES / ROUNDS {
                        lock_async.acquire_async().await.unwrap().release().unwrap();
                    }
                });
                start.elapsed() / (CYCLES / ROUNDS)
            },
        ];
        // Round 0 warms up.
        if round > 0 {
            for (all, one) in rounds.iter_mut().zip(batch) {
                all.push(one);
            }
        }
    }
    let [two_pings, set_del, sync, asynch] = rounds.map(|mut r| {
        r.sort();
        r[r.len() / 2]
    });
    report("two PINGs (raw round trips)", two_pings, None);
    report("SET + DEL (raw round trips)", set_del, None);
    report("Lock acquire+release", sync, Some(two_pings));
    report("Lock acquire_async+release", asynch, Some(two_pings));

    let ping = two_pings / 2;
    let mut latencies = handoffs(&space, &url)?;
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    println!(
        "{:<34} median {:>7.1} µs ({:.1} round trips), p99 {:>7.1} µs ({:.1} round trips)",
        "hand-off between two processes",
        micros(median),
        micros(median) / micros(ping),
        micros(p99),
        micros(p99) / micros(ping),
    );
    Ok(())
}

/// The mean time of one call of `f`, over one round's share of [`CYCLES`].
fn per_op(mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..CYCLES / ROUNDS {
        f();
    }
    start.elapsed() / (CYCLES / ROUNDS)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn report(what: &str, per: Duration, baseline: Option<Duration>) {
    let rate = 1.0 / per.as_secs_f64();
    match baseline {
        Some(b) => println!(
            "{what:<34} {:>7.1} µs  {rate:>8.0}/s  ({:.2}× two round trips)",
            micros(per),
            per.as_secs_f64() / b.as_secs_f64()
        ),
        None => println!("{what:<34} {:>7.1} µs  {rate:>8.0}/s", micros(per)),
    }
}

/// CLOCK_MONOTONIC in ns: the same clock in every process of this host.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// This process holds the lock; the child queues for it; this process notes the time
/// and releases; the child notes when it got the lock. Both clocks are this host's
/// monotonic clock.
fn handoffs(space: &Space, url: &str) -> Result<Vec<Duration>, Box<dyn std::error::Error>> {
    let lock = space.lock("handoff");
    let mut guard = lock.acquire()?;
    let mut child = Command::new(std::env::current_exe()?)
        .env("REDIS_SPEED_CHILD", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut go = child.stdin.take().ok_or("no child stdin")?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no child stdout")?).lines();
    let mut out = Vec::with_capacity(HANDOFFS);
    for _ in 0..HANDOFFS {
        // The child queues only once this process holds the lock again.
        writeln!(go, "go")?;
        go.flush()?;
        while space.waiting("handoff")? == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
        let released = mono_ns();
        drop(guard);
        let got: u64 = lines.next().ok_or("the child stopped")??.trim().parse()?;
        out.push(Duration::from_nanos(got.saturating_sub(released)));
        guard = lock.acquire()?;
    }
    drop(guard);
    drop(go);
    child.wait()?;
    Ok(out)
}

fn child(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let space = Space::open(url)?;
    let lock = space.lock("handoff");
    let mut stdout = std::io::stdout().lock();
    let mut go = std::io::stdin().lock().lines();
    for _ in 0..HANDOFFS {
        if go.next().is_none() {
            break;
        }
        let guard = lock.acquire()?;
        let now = mono_ns();
        writeln!(stdout, "{now}")?;
        stdout.flush()?;
        drop(guard);
    }
    Ok(())
}
