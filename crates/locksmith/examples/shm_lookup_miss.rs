//! What a name the `shm:` table does not hold costs when the table is full of names
//! in use (issue 12, item 13): fills a region with held locks, then times lookups of
//! names it does not hold.
//!
//! `cargo run --release --example shm_lookup_miss [CAPACITY]` (65536 by default).

use std::time::Instant;

fn main() -> locksmith::Result<()> {
    let capacity: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(65_536);
    let region = format!("locksmith-lookup-miss-{}", std::process::id());
    let space = locksmith::Space::open(&format!("shm:{region}?capacity={capacity}"))?;
    let mut held = Vec::new();
    for i in 0.. {
        match space.lock(&format!("held-{i}")).acquire() {
            Ok(g) => held.push(g),
            Err(_) => break,
        }
    }
    let misses = 2_000;
    let started = Instant::now();
    let mut failed = 0;
    for i in 0..misses {
        if space.holders(&format!("missing-{i}")).is_err() {
            failed += 1;
        }
    }
    let each = started.elapsed() / misses;
    println!(
        "{} names held in a table of {capacity}; {failed} of {misses} lookups of other names failed; {:.1} us per lookup",
        held.len(),
        each.as_secs_f64() * 1e6
    );
    drop(held);
    let _ = std::fs::remove_file(format!("/dev/shm/{region}"));
    Ok(())
}
