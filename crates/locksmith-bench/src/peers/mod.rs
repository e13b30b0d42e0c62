//! The systems users would pick instead of locksmith, measured by the same runners.
//!
//! Each submodule has one `run(ctx)` that adds its rows to every scenario it fits.

pub mod flock;
pub mod inproc;
pub mod posix;
#[cfg(feature = "peer-redis")]
pub mod redis;
#[cfg(feature = "peer-sqlite")]
pub mod sqlite;

use crate::harness::Ctx;

/// Runs every Rust peer.
pub fn run(ctx: &mut Ctx) {
    inproc::run(ctx);
    posix::run(ctx);
    flock::run(ctx);
    #[cfg(feature = "peer-sqlite")]
    sqlite::run(ctx);
    #[cfg(not(feature = "peer-sqlite"))]
    ctx.skip(
        crate::scenario::UNCONTENDED,
        "SQLite floor: 2 WAL transactions",
        "Lock",
        "built without the peer-sqlite feature",
    );
    #[cfg(feature = "peer-redis")]
    redis::run(ctx);
    #[cfg(not(feature = "peer-redis"))]
    ctx.skip(
        crate::scenario::UNCONTENDED,
        "redis: 2 round trips",
        "Lock",
        "built without the peer-redis feature",
    );
}
