//! A re-entrant lock.

use crate::backend::PermitKind;
use crate::primitives::handle::{lease_options, Handle};
use crate::primitives::permit::{self, acquire_methods};
use crate::Result;

const KIND: PermitKind = PermitKind::RLock;

/// A lock its owning thread may acquire again while holding it; it is free once every
/// acquisition was released. Nothing of it is left in the store once it is free.
///
/// The owner is the process and thread (diskcache's `pid-tid`, billiard's owner). Each
/// async acquisition is its own owner, so an async RLock does not re-enter.
///
/// ```
/// # fn main() -> locksmith::Result<()> {
/// let space = locksmith::Space::open("mem:")?;
/// let rlock = space.rlock("config");
/// let outer = rlock.acquire()?;
/// let inner = rlock.acquire()?;            // same thread: enters again
/// assert_eq!(inner.token(), outer.token()); // one hold, one fencing token
/// drop(inner);
/// assert!(rlock.is_locked()?);
/// drop(outer);
/// assert!(!rlock.is_locked()?);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RLock {
    handle: Handle,
}

impl RLock {
    pub(crate) fn new(handle: Handle) -> RLock {
        RLock { handle }
    }

    fn kind(&self) -> Result<PermitKind> {
        Ok(KIND)
    }

    lease_options!();
    acquire_methods!("the lock (again, if this thread holds it)");

    /// Releases one level of the calling thread's hold (taken here and
    /// [`crate::Guard::detach`]ed).
    ///
    /// # Errors
    /// [`crate::Error::NotHeld`] if nobody holds it, [`crate::Error::NotOwner`] if
    /// another owner does (both `EPERM`).
    pub fn release(&self) -> Result<()> {
        permit::release_owned(&self.handle, self.kind()?)
    }

    /// Whether anyone holds the lock now.
    pub fn is_locked(&self) -> Result<bool> {
        permit::is_held(&self.handle)
    }
}
