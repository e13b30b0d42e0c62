//! The atomics of mem's fast word: std's, or loom's in its unit tests built with
//! `--cfg locksmith_loom`, so that loom can check every interleaving of the word's
//! compare-and-swaps (see `fast_loom.rs`). A cfg of our own: `--cfg loom` would also
//! switch tokio and event-listener to their loom modes, which do not build here.

#[cfg(all(test, locksmith_loom))]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(all(test, locksmith_loom)))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
