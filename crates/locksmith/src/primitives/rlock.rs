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

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    fn kind(&self) -> Result<PermitKind> {
        Ok(KIND)
    }

    lease_options!();
    acquire_methods!("the lock (again, if this thread holds it)");

    /// Releases one level of the calling thread's hold that was taken here and
    /// [`crate::Guard::detach`]ed; never a level a live guard owns.
    ///
    /// # Errors
    /// [`crate::Error::NotHeld`] if nobody holds it, [`crate::Error::NotOwner`] if
    /// another owner or a live guard does (both `EPERM`); [`crate::Error::LeaseLost`]
    /// if the detached hold ended before this release.
    pub fn release(&self) -> Result<()> {
        permit::release_detached(&self.handle, self.kind()?)
    }

    /// Whether the calling thread holds the lock (threading's `_is_owned`).
    pub fn is_owned(&self) -> Result<bool> {
        Ok(permit::depth(&self.handle)? > 0)
    }

    /// How many levels of the lock the calling thread holds: 0 if it holds none
    /// (threading's `_recursion_count`).
    pub fn recursion_count(&self) -> Result<u32> {
        permit::depth(&self.handle)
    }

    /// Async [`Self::release`]: never blocks the executor thread on a network store.
    pub async fn release_async(&self) -> Result<()> {
        permit::release_detached_async(&self.handle, self.kind()?).await
    }

    /// Async [`Self::is_owned`].
    pub async fn is_owned_async(&self) -> Result<bool> {
        Ok(permit::depth_async(&self.handle).await? > 0)
    }

    /// Async [`Self::recursion_count`].
    pub async fn recursion_count_async(&self) -> Result<u32> {
        permit::depth_async(&self.handle).await
    }

    /// Whether anyone holds the lock now.
    pub fn is_locked(&self) -> Result<bool> {
        permit::is_held(&self.handle)
    }

    /// Async [`Self::is_locked`]: never blocks the executor thread on a network store.
    pub async fn is_locked_async(&self) -> Result<bool> {
        permit::is_held_async(&self.handle).await
    }
}
