//! Rough timings of the `sqlite:` backend, measured against SQLite itself in the same
//! run. Not a benchmark suite (that is `locksmith-bench`); a quick look.
//!
//! ```text
//! cargo run --release -p locksmith --example sqlite_speed [-- NAMES]
//! ```
//!
//! Prints: Lock acquire+release cycles/s in one process and the floor of two
//! single-row WAL transactions (`BEGIN IMMEDIATE; upsert; COMMIT`) per cycle; the
//! hand-off latency from a release in one process to the acquire in another
//! (median, p99), blocking and async; the cost of a cycle in a store of 10 names and
//! in one of NAMES (default 1,000,000) used-then-freed names, and the file size that
//! leaves. Each rate is the best of several short windows, alternated with its
//! comparison: the steadiest estimate on a shared machine. Filling a million names
//! through the API takes a minute or two; pass a smaller NAMES for a quick look.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use locksmith::Space;

const ROLE: &str = "LOCKSMITH_SPEED_CHILD";
const HANDOFF_ROUNDS: usize = 2000;
/// Processes, and cycles each, of the contended run.
const CONTENDERS: usize = 4;
const CONTEND_CYCLES: usize = 1000;
/// Timed windows per measurement; the best one counts.
const ROUNDS: usize = 7;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(args) = std::env::var(ROLE) {
        let mut parts = args.split('\u{1f}');
        let (url, file, mode) = (
            parts.next().ok_or("bad child args")?,
            parts.next().ok_or("bad child args")?,
            parts.next().ok_or("bad child args")?,
        );
        let space = Space::open(url)?;
        if mode == "contend" {
            let lock = space.lock("contended");
            for _ in 0..CONTEND_CYCLES {
                lock.acquire()?.release()?;
            }
            return Ok(());
        }
        let lat = ping_pong(&space, Path::new(file), None, mode == "async")?;
        let mut out = std::io::stdout().lock();
        for l in lat {
            writeln!(out, "{l}")?;
        }
        return Ok(());
    }
    let names: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let dir = std::env::temp_dir().join(format!("locksmith-speed-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    // 1. One process: the floor, then the Lock, alternated to share the machine's mood.
    // On a shared machine the best of several short windows is the steadiest estimate.
    let window = Duration::from_millis(300);
    let (mut floor_best, mut lock_best) = ((0.0f64, f64::MAX), (0.0f64, f64::MAX));
    let floor_path = dir.join("floor.sqlite");
    let lock_path = dir.join("lock.sqlite");
    for _ in 0..ROUNDS {
        let f = floor(&floor_path, window)?;
        floor_best = (floor_best.0.max(f.0), floor_best.1.min(f.1));
        let l = lock_cycles(&lock_path, window)?;
        lock_best = (lock_best.0.max(l.0), lock_best.1.min(l.1));
    }
    let ((floor, floor_cpu), (lock, lock_cpu)) = (floor_best, lock_best);
    println!("floor: two WAL transactions (BEGIN IMMEDIATE; upsert; COMMIT): {floor:.0} pairs/s");
    println!("Lock acquire+release, one process:                  {lock:.0} cycles/s");
    println!(
        "ratio floor / lock:                                 {:.2}x (target <= 1.3x)",
        floor / lock
    );
    println!(
        "CPU time per cycle (all threads): floor {:.1} us, Lock {:.1} us ({:.2}x)",
        floor_cpu * 1e6,
        lock_cpu * 1e6,
        lock_cpu / floor_cpu
    );

    // 2. Hand-off between two processes.
    let url = format!("sqlite:{}", dir.join("handoff.sqlite").display());
    let stamp = dir.join("stamp");
    std::fs::write(&stamp, [0u8; 8])?;
    for asynchronous in [false, true] {
        let mut lat = handoff(&url, &stamp, asynchronous)?;
        lat.sort_unstable();
        let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
        println!(
            "hand-off release -> {} in another process: median {:.1} us, p99 {:.1} us ({} hand-offs)",
            if asynchronous { "acquire_async" } else { "acquire      " },
            pct(0.5),
            pct(0.99),
            lat.len()
        );
    }

    // 2b. Several processes taking turns on one lock.
    let url = format!("sqlite:{}", dir.join("contend.sqlite").display());
    drop(Space::open(&url)?);
    let t = Instant::now();
    let children = (0..CONTENDERS)
        .map(|_| {
            Command::new(std::env::current_exe()?)
                .env(ROLE, format!("{url}\u{1f}-\u{1f}contend"))
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    for mut c in children {
        if !c.wait()?.success() {
            return Err("a contending child failed".into());
        }
    }
    let total = (CONTENDERS * CONTEND_CYCLES) as f64;
    println!(
        "{CONTENDERS} processes x {CONTEND_CYCLES} cycles on one lock:           {:.0} cycles/s, {:.0} us per hand-over",
        total / t.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64() * 1e6 / total
    );

    // 3. Cost per cycle among few and many names, and the file many names leave.
    // A store of 10 names and one of NAMES names, measured alternately.
    let few_path = dir.join("few.sqlite");
    let few_space = Space::open(&format!("sqlite:{}", few_path.display()))?;
    let path = dir.join("names.sqlite");
    let space = Space::open(&format!("sqlite:{}", path.display()))?;
    let t = Instant::now();
    for i in 0..names {
        drop(space.lock(&format!("name-{i}")).acquire()?);
    }
    let fill = t.elapsed();
    let (mut few, mut many, mut raw_few, mut raw_many) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for _ in 0..ROUNDS {
        few = few.max(cycles_among(&few_space, 10, window)?);
        many = many.max(cycles_among(&space, names, window)?);
    }
    drop(space);
    drop(few_space);
    for _ in 0..ROUNDS {
        raw_few = raw_few.max(raw_among(&few_path, 10, window)?);
        raw_many = raw_many.max(raw_among(&path, names, window)?);
    }
    checkpoint(&path)?;
    let size = std::fs::metadata(&path)?.len();
    println!("cycles/s in a store of 10 names:                    {few:.0}");
    println!(
        "cycles/s among {names} used-then-freed names:        {many:.0} ({:.2}x the cost)",
        few / many
    );
    println!(
        "floor among 10 / {names} names (raw rusqlite):    {raw_few:.0} / {raw_many:.0} pairs/s ({:.2}x the cost)",
        raw_few / raw_many
    );
    println!(
        "file after {names} used-then-freed names:            {:.1} MB ({:.0} bytes/name; filled in {:.1} s)",
        size as f64 / 1e6,
        size as f64 / names as f64,
        fill.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Pairs of single-row transactions per second, straight through rusqlite, with the
/// backend's settings (WAL, synchronous=NORMAL).
fn floor(path: &Path, window: Duration) -> rusqlite::Result<(f64, f64)> {
    let conn = rusqlite::Connection::open(path)?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS t (name TEXT PRIMARY KEY NOT NULL, v BLOB) WITHOUT ROWID",
    )?;
    let value = [7u8; 120];
    let start = Instant::now();
    let cpu = cpu_seconds();
    let mut n = 0u64;
    while start.elapsed() < window {
        for v in [Some(&value[..]), None] {
            conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
            conn.prepare_cached(
                "INSERT INTO t (name, v) VALUES ('bench', ?1) \
                 ON CONFLICT (name) DO UPDATE SET v = excluded.v",
            )?
            .execute([v])?;
            conn.prepare_cached("COMMIT")?.execute([])?;
        }
        n += 1;
    }
    let cpu = (cpu_seconds() - cpu) / n as f64;
    Ok((n as f64 / start.elapsed().as_secs_f64(), cpu))
}

/// Cycles per second, and CPU seconds per cycle.
fn lock_cycles(path: &Path, window: Duration) -> locksmith::Result<(f64, f64)> {
    let space = Space::open(&format!("sqlite:{}", path.display()))?;
    let lock = space.lock("bench");
    let start = Instant::now();
    let cpu = cpu_seconds();
    let mut n = 0u64;
    while start.elapsed() < window {
        lock.acquire()?.release()?;
        n += 1;
    }
    let cpu = (cpu_seconds() - cpu) / n as f64;
    Ok((n as f64 / start.elapsed().as_secs_f64(), cpu))
}

/// The CPU time this process has used, all threads.
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writeable timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn cycles_among(space: &Space, names: usize, window: Duration) -> locksmith::Result<f64> {
    let locks: Vec<_> = (0..names.min(4096))
        .map(|i| space.lock(&format!("name-{}", (i * 7919) % names)))
        .collect();
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < window {
        locks[n % locks.len()].acquire()?.release()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// The floor among `names` existing rows of a locksmith file: two single-row
/// transactions per cycle, straight through rusqlite.
fn raw_among(path: &Path, names: usize, window: Duration) -> rusqlite::Result<f64> {
    let conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let value = [7u8; 120];
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < window {
        let name = format!("name-{}", ((n % 4096) * 7919) % names);
        for v in [Some(&value[..]), None] {
            conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
            conn.prepare_cached("UPDATE prim SET state = ?1 WHERE name = ?2")?
                .execute(rusqlite::params![v, name])?;
            conn.prepare_cached("COMMIT")?.execute([])?;
        }
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn checkpoint(path: &Path) -> rusqlite::Result<()> {
    let conn = rusqlite::Connection::open(path)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process of the host.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writeable timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn handoff(
    url: &str,
    stamp: &Path,
    asynchronous: bool,
) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    // The parent takes the lock before the child starts, so the two alternate.
    let space = Space::open(url)?;
    let first = space.lock("handoff").acquire()?;
    let mut child = Command::new(std::env::current_exe()?)
        .env(
            ROLE,
            format!(
                "{url}\u{1f}{}\u{1f}{}",
                stamp.display(),
                if asynchronous { "async" } else { "sync" }
            ),
        )
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lat = ping_pong(&space, stamp, Some(first), asynchronous)?;
    let out = child.stdout.take().ok_or("no child stdout")?;
    for line in BufReader::new(out).lines() {
        lat.push(line?.trim().parse()?);
    }
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("the child failed: {status}").into());
    }
    Ok(lat)
}

/// Both processes run this, taking turns: wait until the other is queued, stamp the
/// clock, release; acquire, read the stamp, record the latency.
fn ping_pong(
    space: &Space,
    stamp: &Path,
    mut guard: Option<locksmith::Guard>,
    asynchronous: bool,
) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    let lock = space.lock("handoff");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(stamp)?;
    let mut lat = Vec::with_capacity(HANDOFF_ROUNDS);
    for _ in 0..HANDOFF_ROUNDS / 2 {
        if let Some(g) = guard.take() {
            let deadline = Instant::now() + Duration::from_secs(60);
            while space.waiting("handoff")? == 0 {
                if Instant::now() > deadline {
                    return Err("the other process never queued".into());
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            file.write_all_at(&mono_ns().to_ne_bytes(), 0)?;
            g.release()?;
        }
        let g = if asynchronous {
            rt.block_on(lock.acquire_async())?
        } else {
            lock.acquire()?
        };
        let now = mono_ns();
        let mut buf = [0u8; 8];
        file.read_exact_at(&mut buf, 0)?;
        lat.push(now.saturating_sub(u64::from_ne_bytes(buf)));
        guard = Some(g);
    }
    Ok(lat)
}
