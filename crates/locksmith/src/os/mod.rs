//! The operating-system layer every store shares, whatever store features are on.

pub(crate) mod clock;
// Without the shm and sqlite stores nothing sleeps on a futex word or maps memory.
#[cfg(target_os = "linux")]
#[cfg_attr(not(any(feature = "shm", feature = "sqlite")), allow(dead_code))]
pub(crate) mod futex;
pub(crate) mod hash;
pub(crate) mod liveness;
#[cfg_attr(not(any(feature = "shm", feature = "sqlite")), allow(dead_code))]
pub(crate) mod mmap;
