//! In-process peers: `std::sync::Mutex`, `parking_lot::Mutex`, `tokio::sync::Mutex`,
//! `async_lock::Mutex`.

use anyhow::Result;

use crate::harness::{Ctx, ProcLock};
use crate::measure::keep;
use crate::scenario::ASYNC;

impl ProcLock for std::sync::Mutex<u64> {
    fn hold<R>(&mut self, f: impl FnOnce() -> R) -> Result<R> {
        // Through a shared reference, as users do; `get_mut` would skip the lock.
        let this: &std::sync::Mutex<u64> = keep(&*self);
        let mut g = this.lock().unwrap_or_else(|p| p.into_inner());
        *g += 1;
        Ok(f())
    }
}

impl ProcLock for parking_lot::Mutex<u64> {
    fn hold<R>(&mut self, f: impl FnOnce() -> R) -> Result<R> {
        let this: &parking_lot::Mutex<u64> = keep(&*self);
        let mut g = this.lock();
        *g += 1;
        Ok(f())
    }
}

/// Runs the in-process peers.
pub fn run(ctx: &mut Ctx) {
    ctx.lock_uncontended("std::sync::Mutex", "Lock", "threads only", || {
        Ok(std::sync::Mutex::new(0u64))
    });
    ctx.lock_uncontended("parking_lot::Mutex", "Lock", "threads only", || {
        Ok(parking_lot::Mutex::new(0u64))
    });
    let tokio_m = tokio::sync::Mutex::new(0u64);
    ctx.async_per_op(
        ASYNC,
        "tokio::sync::Mutex",
        "Lock",
        "lock().await + drop, current-thread runtime",
        || async {
            let mut g = keep(&tokio_m).lock().await;
            *g += 1;
            Ok(())
        },
    );
    let al = async_lock::Mutex::new(0u64);
    ctx.async_per_op(
        ASYNC,
        "async-lock::Mutex",
        "Lock",
        "lock().await + drop, current-thread tokio runtime",
        || async {
            let mut g = keep(&al).lock().await;
            *g += 1;
            Ok(())
        },
    );
}
