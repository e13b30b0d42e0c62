//! How fast the etcd backend is, next to the raw transactions it is made of and etcd's
//! own lock.
//!
//! ```sh
//! LOCKSMITH_ETCD=127.0.0.1:2379 cargo run --release -p locksmith --features etcd --example etcd_speed
//! ```
//!
//! `LOCKSMITH_ETCD` is `host:port[,host:port…]` (default `127.0.0.1:2379`). Prints, per
//! cycle, in interleaved rounds of one run: a Lock acquire+release through a `Space`;
//! two raw single-key transactions (compare the mod revision, put) from one client;
//! and etcd's own lock service (`Lock` + `Unlock` under a lease, what `etcdctl lock`
//! does).

use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, LockOptions, Txn, TxnOp};
use locksmith::Space;

const CYCLES: u32 = 200;
const ROUNDS: u32 = 5;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let hosts = std::env::var("LOCKSMITH_ETCD").unwrap_or_else(|_| "127.0.0.1:2379".into());
    let prefix = format!("speed{}/", std::process::id());
    let space = Space::open(&format!("etcd://{hosts}?prefix={prefix}"))?;
    let lock = space.lock("speed");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let endpoints: Vec<String> = hosts.split(',').map(|h| format!("http://{h}")).collect();
    let mut client = rt.block_on(Client::connect(endpoints, None))?;
    let lease = rt.block_on(client.lease_grant(10, None))?.id();
    let raw_key = format!("{prefix}raw");
    let lock_key = format!("{prefix}etcd-lock");
    let (mut ours, mut raw, mut theirs) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..CYCLES {
            drop(lock.acquire()?);
        }
        ours += t.elapsed();
        let t = Instant::now();
        rt.block_on(async {
            let mut rev = 0;
            for _ in 0..CYCLES * 2 {
                let txn = Txn::new()
                    .when(vec![Compare::mod_revision(
                        raw_key.clone(),
                        CompareOp::Equal,
                        rev,
                    )])
                    .and_then(vec![TxnOp::put(raw_key.clone(), "v", None)]);
                let resp = client.txn(txn).await?;
                rev = resp.header().map_or(0, |h| h.revision());
            }
            Ok::<_, etcd_client::Error>(())
        })?;
        raw += t.elapsed();
        let t = Instant::now();
        rt.block_on(async {
            for _ in 0..CYCLES {
                let held = client
                    .lock(lock_key.clone(), Some(LockOptions::new().with_lease(lease)))
                    .await?;
                client.unlock(held.key()).await?;
            }
            Ok::<_, etcd_client::Error>(())
        })?;
        theirs += t.elapsed();
    }
    let n = f64::from(CYCLES * ROUNDS);
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n;
    println!("etcd_speed: {hosts}, {} cycles each", CYCLES * ROUNDS);
    println!("  locksmith Lock acquire+release   {:8.0} µs", per(ours));
    println!("  two raw CAS transactions         {:8.0} µs", per(raw));
    println!("  etcd Lock+Unlock (v3lock)        {:8.0} µs", per(theirs));
    println!(
        "  ratio locksmith / two raw txns   {:8.2}",
        per(ours) / per(raw)
    );
    let _ = space.reclaim_idle();
    rt.block_on(client.delete(
        prefix,
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    ))?;
    Ok(())
}
