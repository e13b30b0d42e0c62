//! Synchronization primitives that work the same across threads, async tasks,
//! processes on one host and machines.
//!
//! Open a [`Space`] from a URL, then take its primitives by name: [`Lock`],
//! [`RLock`], [`Semaphore`], [`BoundedSemaphore`], [`Event`], [`Condition`],
//! [`Barrier`], [`Averager`] and [`RwLock`]. Every acquisition returns a [`Guard`] that
//! releases on drop and carries a fencing token; every waiting operation has a
//! blocking, a `try_`, a `_timeout` and an `_async` form (a condition's wait has no
//! `try_` form: a wait that does not wait is a release and a re-acquisition).
//!
//! ```
//! # fn main() -> locksmith::Result<()> {
//! use std::time::Duration;
//! let space = locksmith::Space::open("mem:")?;
//! let lock = space.lock("deploy").lease(Duration::from_secs(30));
//! let guard = lock.acquire()?;
//! println!("deploying under fencing token {}", guard.token());
//! guard.release()?;
//! # Ok(()) }
//! ```
#![warn(missing_docs, missing_debug_implementations)]
#![deny(unsafe_op_in_unsafe_fn)]

mod backend;
mod error;
pub mod interrupt;
mod lease;
mod offload;
mod os;
mod owner;
mod primitives;
mod space;

pub use error::{BackendError, BrokenCause, Error, Result};
pub use primitives::handle::MAX_NAME_LEN;
pub use primitives::{
    Acquirable, Averager, Barrier, BoundedSemaphore, Condition, ConditionLock, Event, EventMark,
    Guard, Lock, Ownership, RLock, RwLock, RwLockReader, RwLockWriter, Semaphore, Sleeper,
};
pub use space::{Holder, Liveness, Space, Usage};

#[cfg(all(target_os = "linux", feature = "shm"))]
pub mod shm;
