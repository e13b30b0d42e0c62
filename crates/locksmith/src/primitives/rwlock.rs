//! A readers-writer lock.

use std::time::Duration;

use crate::backend::{Mode, PermitKind};
use crate::primitives::guard::Guard;
use crate::primitives::handle::{deadline_after, forever, lease_options, Handle};
use crate::primitives::permit::{self, Wait};
use crate::Result;

const KIND: PermitKind = PermitKind::RwLock;

/// A lock held by many readers or one writer.
///
/// Waiters are served first-come first-served: a queued writer is not overtaken by
/// later readers, so writers do not starve, and the readers queued behind a writer
/// enter together once it leaves. A thread that holds a read side may take it again;
/// asking for the write side while holding either side is
/// [`crate::Error::WouldDeadlock`].
///
/// ```
/// # fn main() -> locksmith::Result<()> {
/// let space = locksmith::Space::open("mem:")?;
/// let config = space.rwlock("config");
/// let r1 = config.read()?;
/// let r2 = std::thread::spawn({
///     let config = config.clone();
///     move || config.try_read().map(|g| g.is_some())
/// }).join().unwrap()?;
/// assert!(r2, "readers share");
/// drop(r1);
/// let w = config.write()?;
/// # drop(w);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RwLock {
    handle: Handle,
}

macro_rules! side {
    ($mode:expr, $what:literal, $blocking:ident, $try_:ident, $timeout:ident, $async_:ident, $timeout_async:ident) => {
        #[doc = concat!("Takes the ", $what, " side, waiting as long as it takes.")]
        pub fn $blocking(&self) -> Result<Guard> {
            forever(permit::acquire(
                &self.handle,
                KIND,
                $mode,
                Wait::Until(None),
            ))
        }

        #[doc = concat!("Takes the ", $what, " side if that is possible now; never waits.")]
        pub fn $try_(&self) -> Result<Option<Guard>> {
            permit::acquire(&self.handle, KIND, $mode, Wait::Try)
        }

        #[doc = concat!("Takes the ", $what, " side, waiting at most `timeout`.")]
        pub fn $timeout(&self, timeout: Duration) -> Result<Option<Guard>> {
            let wait = Wait::Until(deadline_after(timeout));
            permit::acquire(&self.handle, KIND, $mode, wait)
        }

        #[doc = concat!("Takes the ", $what, " side from async code.")]
        ///
        /// # Cancel safety
        /// Cancel safe: a dropped future leaves the queue and never holds.
        pub async fn $async_(&self) -> Result<Guard> {
            forever(permit::acquire_async(&self.handle, KIND, $mode, Wait::Until(None)).await)
        }

        #[doc = concat!("Takes the ", $what, " side from async code, waiting at most `timeout`.")]
        ///
        /// # Cancel safety
        /// Cancel safe: a dropped future leaves the queue and never holds.
        pub async fn $timeout_async(&self, timeout: Duration) -> Result<Option<Guard>> {
            let wait = Wait::Until(deadline_after(timeout));
            permit::acquire_async(&self.handle, KIND, $mode, wait).await
        }
    };
}

impl RwLock {
    pub(crate) fn new(handle: Handle) -> RwLock {
        RwLock { handle }
    }

    /// The read side, as an [`crate::Acquirable`].
    pub fn reader(&self) -> crate::RwLockReader {
        crate::RwLockReader(self.clone())
    }

    /// The write side, as an [`crate::Acquirable`].
    pub fn writer(&self) -> crate::RwLockWriter {
        crate::RwLockWriter(self.clone())
    }

    lease_options!();
    side!(
        Mode::Shared,
        "read",
        read,
        try_read,
        read_timeout,
        read_async,
        read_timeout_async
    );
    side!(
        Mode::Exclusive,
        "write",
        write,
        try_write,
        write_timeout,
        write_async,
        write_timeout_async
    );

    /// Whether anyone holds either side now.
    pub fn is_locked(&self) -> Result<bool> {
        permit::is_held(&self.handle)
    }

    /// Async [`Self::is_locked`]: never blocks the executor thread on a network store.
    pub async fn is_locked_async(&self) -> Result<bool> {
        permit::is_held_async(&self.handle).await
    }
}
