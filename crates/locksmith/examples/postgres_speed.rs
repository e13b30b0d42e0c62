//! Rough timings of the `postgres://` backend, measured against the same server in the
//! same run. Not a benchmark suite (that is `locksmith-bench`); a quick look.
//!
//! ```text
//! cargo run --release -p locksmith --example postgres_speed [-- URL]
//! ```
//!
//! URL defaults to `LOCKSMITH_POSTGRES_URL`, else `postgres://postgres@127.0.0.1:5432/test`;
//! the run uses a schema of its own and drops it. Prints, per cycle, with one client:
//! a Lock acquire+release through locksmith; the floor of two single-row transactions
//! (`UPDATE … SET n = n + 1`, autocommit); and `pg_advisory_lock` + `pg_advisory_unlock`
//! (what users pick today: no fencing token, no lease, bound to the session). Each
//! figure is the best of several windows, alternated: the steadiest estimate on a
//! shared machine.

use std::time::{Duration, Instant};

use locksmith::Space;
use tokio_postgres::NoTls;

const CYCLES: usize = 200;
const ROUNDS: usize = 7;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("LOCKSMITH_POSTGRES_URL").ok())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("speed_{}", std::process::id());
    let sep = if server.contains('?') { '&' } else { '?' };
    let space = Space::open(&format!("{server}{sep}schema={schema}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (client, conn) = rt.block_on(tokio_postgres::connect(&server, NoTls))?;
    rt.spawn(conn);
    rt.block_on(client.batch_execute(&format!(
        "CREATE TABLE {schema}.floor (id int PRIMARY KEY, n bigint NOT NULL);
         INSERT INTO {schema}.floor VALUES (1, 0);"
    )))?;
    let bump = format!("UPDATE {schema}.floor SET n = n + 1 WHERE id = 1");

    let lock = space.lock("speed");
    let mut best = [Duration::MAX; 3];
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..CYCLES {
            drop(lock.acquire()?);
        }
        best[0] = best[0].min(t.elapsed());
        let t = Instant::now();
        rt.block_on(async {
            for _ in 0..CYCLES {
                client.query_typed(&bump, &[]).await?;
                client.query_typed(&bump, &[]).await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        })?;
        best[1] = best[1].min(t.elapsed());
        let t = Instant::now();
        rt.block_on(async {
            for _ in 0..CYCLES {
                client
                    .query_typed("SELECT pg_advisory_lock(4242)", &[])
                    .await?;
                client
                    .query_typed("SELECT pg_advisory_unlock(4242)", &[])
                    .await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        })?;
        best[2] = best[2].min(t.elapsed());
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / CYCLES as f64;
    let (lock_us, floor_us, advisory_us) = (per(best[0]), per(best[1]), per(best[2]));
    println!("Lock acquire+release          {lock_us:8.0} µs/cycle");
    println!(
        "two single-row transactions   {floor_us:8.0} µs/cycle  (Lock / floor = {:.2})",
        lock_us / floor_us
    );
    println!(
        "pg_advisory_lock + unlock     {advisory_us:8.0} µs/cycle  (Lock / advisory = {:.2})",
        lock_us / advisory_us
    );
    drop(space);
    rt.block_on(client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")))?;
    Ok(())
}
