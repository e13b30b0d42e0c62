//! Redis round trips with the `redis` crate (sync): the floor the redis backend is compared
//! with, as `redis-benchmark` would measure it: two round trips per acquire+release.

use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::harness::Ctx;
use crate::scenario::UNCONTENDED;

/// Two PINGs per operation.
pub const PINGS: &str = "redis: 2 round trips (PING, PING)";
/// SET NX PX then DEL per operation: what a naive Redis lock does.
pub const SETDEL: &str = "redis: 2 round trips (SET NX PX, DEL)";

fn connect(url: &str) -> Result<redis::Connection> {
    let client = redis::Client::open(url).with_context(|| format!("bad Redis URL {url}"))?;
    let con = client
        .get_connection_with_timeout(Duration::from_secs(1))
        .with_context(|| format!("Redis unreachable at {url}"))?;
    con.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(con)
}

/// Runs the Redis round-trip rows, or skips them with a note if Redis is unreachable.
pub fn run(ctx: &mut Ctx) {
    if !ctx.wants(UNCONTENDED, PINGS) && !ctx.wants(UNCONTENDED, SETDEL) {
        return;
    }
    let Some(url) = ctx.redis_url.clone() else {
        let why = "no Redis configured (set LOCKSMITH_REDIS_URL or run Redis on 127.0.0.1:6379)";
        ctx.skip(UNCONTENDED, PINGS, "Lock", why);
        ctx.skip(UNCONTENDED, SETDEL, "Lock", why);
        return;
    };
    let mut con = match connect(&url) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("note: {e:#}; skipping the Redis rows");
            let why = format!("{e:#}");
            ctx.skip(UNCONTENDED, PINGS, "Lock", &why);
            ctx.skip(UNCONTENDED, SETDEL, "Lock", &why);
            return;
        }
    };
    let note = format!("redis crate, sync, one connection to {url}");
    ctx.per_op(UNCONTENDED, PINGS, "Lock", &note, || {
        redis::cmd("PING").query::<String>(&mut con)?;
        redis::cmd("PING").query::<String>(&mut con)?;
        Ok(())
    });
    let key = format!("locksmith-bench:{}", std::process::id());
    ctx.per_op(UNCONTENDED, SETDEL, "Lock", &note, || {
        let ok: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg("1")
            .arg("NX")
            .arg("PX")
            .arg(30_000)
            .query(&mut con)?;
        if ok.is_none() {
            anyhow::bail!("SET NX found the key held");
        }
        redis::cmd("DEL").arg(&key).exec(&mut con)?;
        Ok(())
    });
}
