//! **The hook where locksmith's own rows go.** Everything else in the harness is peers.
//!
//! A row is one call on [`Ctx`]; the system name must start with `locksmith` (e.g.
//! `"locksmith shm"`, `"locksmith sqlite"`, `"locksmith mem"`, `"locksmith redis"`) so that
//! RESULTS.md computes every peer's ratio against it and checks the issue targets
//! ([`crate::report::TARGETS`] names the exact system strings it looks for).
//!
//! To add a scenario for a backend, give its lock a [`ProcLock`] impl (three lines: acquire,
//! run `f`, drop the guard) and call the runner, e.g. once the library lands:
//!
//! ```ignore
//! struct Lk(locksmith::Lock);
//! impl ProcLock for Lk {
//!     fn hold<R>(&mut self, f: impl FnOnce() -> R) -> anyhow::Result<R> {
//!         let g = self.0.acquire()?;
//!         let r = f();
//!         g.release()?;
//!         Ok(r)
//!     }
//! }
//! fn shm(ctx: &mut Ctx) {
//!     let url = format!("shm:locksmith-bench-{}", std::process::id());
//!     // `open` runs in each process after the fork, so each gets its own Space.
//!     let open = || Ok(Lk(locksmith::Space::open(&url)?.lock("bench")));
//!     ctx.lock_uncontended("locksmith shm", "Lock", "", open);
//!     ctx.lock_contention("locksmith shm", "", open);
//!     ctx.lock_handoff("locksmith shm", "Lock", "", open);
//!     // Event/Semaphore ping-pong: a `Signal` impl (post = set/release,
//!     // wait = wait+clear/acquire) and `ctx.ping_pong("locksmith shm", "Event", "", open)`.
//!     // Async: ctx.async_per_op(ASYNC, "locksmith mem", "Lock", "", || async { ... }).
//!     // Opening: ctx.per_op(OPEN, "locksmith shm", "Lock", "", || { space.lock("x"); Ok(()) }).
//! }
//! ```
//!
//! Each backend's rows go in its own function below, called from [`run`].

use crate::harness::Ctx;
#[allow(unused_imports)]
use crate::harness::ProcLock;
use crate::scenario::NAMES;

/// Adds locksmith's rows. Called by `locksmith-bench run` before the peers.
pub fn run(ctx: &mut Ctx) {
    mem(ctx);
    shm(ctx);
    sqlite(ctx);
    redis(ctx);
    names(ctx);
}

/// The in-process backend (`mem:`): uncontended, async, `run(f)`.
fn mem(_ctx: &mut Ctx) {
    // Pending: the library API (issue 4).
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
fn redis(_ctx: &mut Ctx) {
    // Pending: the redis backend (issue 7). Use `ctx.redis_url`.
}

/// Cost per operation at 10 and at 1,000,000 names in one store (issue 8).
///
/// The placeholder hook: fill the store with `n` names (outside the timed part), then
/// `ctx.per_op(NAMES, &format!("locksmith sqlite @{n} names"), "Lock", "", op)`. Keep the
/// 1,000,000 fill out of `--quick` (use e.g. 10,000 there and say so in the note).
fn names(ctx: &mut Ctx) {
    let _ = (ctx, NAMES);
}
