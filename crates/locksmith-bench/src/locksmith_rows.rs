//! **The hook where locksmith's own rows go.** Everything else in the harness is peers.
//!
//! A row is one call on [`Ctx`]; the system name must start with `locksmith` (e.g.
//! `"locksmith shm"`, `"locksmith sqlite"`, `"locksmith mem"`, `"locksmith redis"`) so that
//! RESULTS.md computes every peer's ratio against it and checks the issue targets
//! ([`crate::report::TARGETS`] names the exact system strings it looks for).
//!
//! To add a scenario for a backend, give its lock a [`ProcLock`] impl ([`Held`] below
//! does it for any [`locksmith::Lock`]) and call the runners with an `open` closure that
//! opens the backend's space: it runs in each process after the fork, so each process
//! gets its own `Space`. `mem` below is the worked example for the one-process scenarios;
//! a cross-process backend adds `ctx.lock_contention`, `ctx.lock_handoff`,
//! `ctx.ping_pong` (a [`crate::harness::Signal`] impl) and `ctx.barrier2`.
//!
//! Each backend's rows go in its own function below, called from [`run`].

use crate::harness::{Ctx, ProcLock};
use crate::scenario::{ASYNC, CONTENTION, HANDOFF, NAMES, OPEN, UNCONTENDED};

/// A locksmith lock as the harness holds locks: acquire, run, release (reporting errors).
#[derive(Debug)]
pub struct Held(pub locksmith::Lock);

impl ProcLock for Held {
    fn hold<R>(&mut self, f: impl FnOnce() -> R) -> anyhow::Result<R> {
        let guard = self.0.acquire()?;
        let out = f();
        guard.release()?;
        Ok(out)
    }
}

/// Adds locksmith's rows. Called by `locksmith-bench run` before the peers.
pub fn run(ctx: &mut Ctx) {
    mem(ctx);
    shm(ctx);
    sqlite(ctx);
    redis(ctx);
    names(ctx);
}

/// The in-process backend (`mem:`): uncontended, async, `run(f)`, opening.
fn mem(ctx: &mut Ctx) {
    let open = || Ok(Held(locksmith::Space::open("mem:")?.lock("bench")));
    ctx.lock_uncontended("locksmith mem", "Lock", "blocking acquire+release", open);
    let lock = match locksmith::Space::open("mem:") {
        Ok(space) => space.lock("bench"),
        Err(e) => return ctx.skip(ASYNC, "locksmith mem", "Lock", &e.to_string()),
    };
    ctx.async_per_op(
        ASYNC,
        "locksmith mem",
        "Lock",
        "acquire_async+release",
        || {
            let lock = lock.clone();
            async move {
                lock.acquire_async().await?.release()?;
                Ok(())
            }
        },
    );
    ctx.async_per_op(
        ASYNC,
        "locksmith mem run(f)",
        "Lock",
        "run(ready f)",
        || {
            let lock = lock.clone();
            async move { Ok(lock.run(|| async {}).await?) }
        },
    );
    let space = match locksmith::Space::open("mem:") {
        Ok(space) => space,
        Err(e) => return ctx.skip(OPEN, "locksmith mem", "Lock", &e.to_string()),
    };
    ctx.per_op(
        OPEN,
        "locksmith mem",
        "Lock",
        "space.lock(name) + first step",
        || {
            space.lock("bench-open").is_locked()?;
            Ok(())
        },
    );
}

/// The shared-memory backend (`shm:`): every cross-process scenario and opening by name.
fn shm(_ctx: &mut Ctx) {
    // Pending: the shm backend (issue 3).
}

/// The SQLite backend (`sqlite:`): uncontended vs the SQLite floor, hand-off.
fn sqlite(_ctx: &mut Ctx) {
    // Pending: the sqlite backend (issue 8).
}

/// The Redis backend (`redis://`): uncontended vs two round trips, hand-off.
fn redis(ctx: &mut Ctx) {
    const SYSTEM: &str = "locksmith redis";
    let Some(server) = ctx.redis_url.clone() else {
        for scenario in [UNCONTENDED, CONTENTION, HANDOFF] {
            ctx.skip(scenario, SYSTEM, "Lock", "no Redis server");
        }
        return;
    };
    // A key prefix of its own, so the run never meets another's keys.
    let url = format!("{server}?prefix=locksmith-bench-{}:", std::process::id());
    let open = || Ok(Held(locksmith::Space::open(&url)?.lock("bench")));
    ctx.lock_uncontended(SYSTEM, "Lock", "acquire+release, 1 step each", open);
    ctx.lock_contention(SYSTEM, "", open);
    ctx.lock_handoff(SYSTEM, "Lock", "push wake-up", open);
}

/// Cost per operation at 10 and at 1,000,000 names in one store (issue 8).
///
/// The placeholder hook: fill the store with `n` names (outside the timed part), then
/// `ctx.per_op(NAMES, &format!("locksmith sqlite @{n} names"), "Lock", "", op)`. Keep the
/// 1,000,000 fill out of `--quick` (use e.g. 10,000 there and say so in the note).
fn names(ctx: &mut Ctx) {
    let _ = (ctx, NAMES);
}
