//! Synchronization primitives that work the same across threads, async tasks, processes
//! on one host and machines.
#![warn(missing_docs, missing_debug_implementations)]
#![deny(unsafe_op_in_unsafe_fn)]

mod error;

pub use error::{BackendError, Error, Result};

#[cfg(all(target_os = "linux", feature = "shm"))]
pub mod shm;
