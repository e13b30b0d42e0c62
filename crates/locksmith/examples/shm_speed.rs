//! What the `shm:NAME` store costs: Space-level Lock cycles, opening named primitives,
//! opening a region that holds 100,000 names, and memory per idle name.
//!
//! ```sh
//! cargo run --release -p locksmith --example shm_speed
//! ```
//!
//! Regions are created under unique names in `/dev/shm` and removed at the end.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use locksmith::shm::{Mutex, MutexOptions, Region};
use locksmith::{Result, Space};

fn main() -> Result<()> {
    let tag = format!("locksmith-speed-{}", std::process::id());
    let small = format!("{tag}-small");
    let big = format!("{tag}-big");
    let result = run(&small, &big);
    for name in [&small, &big] {
        let _ = Region::unlink(name);
    }
    result
}

fn rate(n: u64, d: Duration) -> String {
    format!(
        "{:>12.0}/s  ({:>7.0} ns each)",
        n as f64 / d.as_secs_f64(),
        d.as_nanos() as f64 / n as f64
    )
}

fn run(small: &str, big: &str) -> Result<()> {
    let space = Space::open(&format!("shm:{small}?capacity=65536"))?;
    let mem = Space::open("mem:")?;

    // Space-level Lock acquire + release, uncontended.
    for (label, s) in [("shm", &space), ("mem", &mem)] {
        let lock = s.lock("cycle");
        for _ in 0..1_000 {
            drop(lock.acquire()?);
        }
        let n = 200_000;
        let t = Instant::now();
        for _ in 0..n {
            drop(lock.acquire()?);
        }
        println!(
            "{label:>4} Space Lock acquire+release:  {}",
            rate(n, t.elapsed())
        );
    }

    // The placed mutex underneath, for scale.
    let region = Region::anonymous(Mutex::SIZE)?;
    let m = Mutex::init(region.place_at(0, Mutex::SIZE)?, &MutexOptions::new())?;
    let n = 2_000_000;
    let t = Instant::now();
    for _ in 0..n {
        drop(m.lock()?);
    }
    println!(" placed shm::Mutex lock+unlock:   {}", rate(n, t.elapsed()));

    // Two threads contending on one Space Lock.
    let n = 50_000;
    let t = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let lock = space.lock("contended");
                scope.spawn(move || -> Result<()> {
                    for _ in 0..n {
                        drop(lock.acquire()?);
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker panicked")?;
        }
        Ok(())
    })?;
    println!(
        " shm Space Lock, 2 threads:       {}",
        rate(2 * n, t.elapsed())
    );

    // Async acquire + release, uncontended.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let lock = space.lock("async");
    let n = 100_000;
    let t = rt.block_on(async {
        let t = Instant::now();
        for _ in 0..n {
            drop(lock.acquire_async().await?);
        }
        Ok::<_, locksmith::Error>(t.elapsed())
    })?;
    println!(" shm Space Lock async:            {}", rate(n, t));

    // Opening named primitives: the first use of a name claims its slot; a new
    // handle to an existing name finds it by hashing and one comparison; a handle's
    // later steps use the slot it cached. Each sample is one step (holders()).
    let names: Vec<String> = (0..20_000).map(|i| format!("primitive-{i}")).collect();
    let t = Instant::now();
    for name in &names {
        space.holders(name)?;
    }
    println!(
        " first open of a name (+ 1 step): {}",
        rate(names.len() as u64, t.elapsed())
    );
    let t = Instant::now();
    for name in &names {
        space.holders(name)?;
    }
    println!(
        " repeated open     (+ 1 step):    {}",
        rate(names.len() as u64, t.elapsed())
    );
    let lock = space.lock("primitive-7");
    let n = 200_000;
    let t = Instant::now();
    for _ in 0..n {
        lock.is_locked()?;
    }
    println!(" cached handle, the same step:    {}", rate(n, t.elapsed()));

    // A region holding 100,000 names: opening it does no per-name work.
    let url = format!("shm:{big}?capacity=131072");
    let filler = Space::open(&url)?;
    let t = Instant::now();
    for i in 0..100_000 {
        filler.holders(&format!("name-{i:06}"))?;
    }
    let fill = t.elapsed();
    let mut opens: Vec<Duration> = (0..21)
        .map(|_| {
            let t = Instant::now();
            let s = Space::open(&url);
            let d = t.elapsed();
            drop(s);
            d
        })
        .collect();
    opens.sort();
    let names_now = filler.names()?.len();
    println!(
        " open a region with {names_now} names: median {:?}, max {:?} (filling it took {:?})",
        opens[opens.len() / 2],
        opens[opens.len() - 1],
        fill
    );
    let meta = std::fs::metadata(format!("/dev/shm/{big}"))
        .map_err(|e| locksmith::Error::backend(format!("stat: {e}")))?;
    println!(
        " bytes per idle name: 128 (one slot; names over 40 bytes add a block); memory the region really uses: {} bytes = {:.0} per name (the table's pages at {:.0}% load)",
        meta.blocks() * 512,
        (meta.blocks() * 512) as f64 / names_now as f64,
        names_now as f64 * 100.0 / 131_072.0
    );
    Ok(())
}
