//! A mutual-exclusion lock.

use crate::backend::PermitKind;
use crate::primitives::handle::{lease_options, Handle};
use crate::primitives::permit::{self, acquire_methods, run_method};
use crate::Result;

const KIND: PermitKind = PermitKind::Lock;

/// A lock that one owner holds at a time.
///
/// Blocking acquisitions are owned by the calling thread: acquiring again from the same
/// thread while holding is [`crate::Error::WouldDeadlock`] (`EDEADLK`) rather than a
/// hang. Async acquisitions are each their own owner and queue first-come first-served,
/// as Twisted's `DeferredLock` does.
///
/// ```
/// # fn main() -> locksmith::Result<()> {
/// use std::time::Duration;
/// let space = locksmith::Space::open("mem:")?;
/// let lock = space.lock("deploy").lease(Duration::from_secs(30)).tag("jobs");
/// {
///     let guard = lock.acquire()?;          // waits as long as it takes
///     assert!(lock.try_acquire().is_err()); // this thread already holds it
///     println!("token {}", guard.token());
/// }                                         // released here
/// let guard = lock.acquire_timeout(Duration::from_millis(100))?;
/// assert!(guard.is_some());
/// # Ok(()) }
/// ```
///
/// Async, with Twisted's `run`:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> locksmith::Result<()> {
/// let space = locksmith::Space::open("mem:")?;
/// let lock = space.lock("counter");
/// let n = lock.run(|| async { 41 + 1 }).await?;
/// assert_eq!(n, 42);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Lock {
    handle: Handle,
}

impl Lock {
    pub(crate) fn new(handle: Handle) -> Lock {
        Lock { handle }
    }

    fn kind(&self) -> Result<PermitKind> {
        Ok(KIND)
    }

    lease_options!();
    acquire_methods!("the lock");
    run_method!();

    /// Releases the hold of the calling thread (one taken here and then
    /// [`crate::Guard::detach`]ed).
    ///
    /// # Errors
    /// [`crate::Error::NotHeld`] if nobody holds it, [`crate::Error::NotOwner`] if
    /// another owner does (both `EPERM`).
    pub fn release(&self) -> Result<()> {
        permit::release_owned(&self.handle, self.kind()?)
    }

    /// Whether anyone holds the lock now (diskcache's `locked()`).
    pub fn is_locked(&self) -> Result<bool> {
        permit::is_held(&self.handle)
    }
}
