//! A counting semaphore.

use crate::backend::PermitKind;
use crate::primitives::handle::{lease_options, Handle};
use crate::primitives::permit::{self, acquire_methods, run_method};
use crate::Result;

/// A counter of permits: `acquire` takes one, waiting while there are none; `release`
/// gives one back, or raises the count when the caller holds none (a signalling
/// release, as billiard's and threading's semaphores do).
///
/// Each held permit has its own guard and fencing token. Waiters are served
/// first-come first-served.
///
/// ```
/// # fn main() -> locksmith::Result<()> {
/// let space = locksmith::Space::open("mem:")?;
/// let downloads = space.semaphore("downloads", 2);
/// let a = downloads.acquire()?;
/// let b = downloads.acquire()?;
/// assert!(downloads.try_acquire()?.is_none()); // both permits are out
/// drop(a);
/// assert!(downloads.try_acquire()?.is_some());
///
/// let ready = space.semaphore("ready", 0);     // a signal: nobody may pass yet
/// ready.release()?;                             // raise it to 1
/// assert!(ready.try_acquire()?.is_some());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Semaphore {
    handle: Handle,
    initial: u32,
}

impl Semaphore {
    pub(crate) fn new(handle: Handle, initial: u32) -> Semaphore {
        Semaphore { handle, initial }
    }

    fn kind(&self) -> Result<PermitKind> {
        Ok(PermitKind::Semaphore {
            initial: self.initial,
        })
    }

    lease_options!();
    acquire_methods!("a permit");
    run_method!();

    /// Gives back a permit the calling thread holds without a guard (see
    /// [`crate::Guard::detach`]), or, if it holds none, raises the count by one.
    ///
    /// # Errors
    /// [`crate::Error::TooManyReleases`] if the count would pass `u32::MAX`.
    pub fn release(&self) -> Result<()> {
        permit::release_owned(&self.handle, self.kind()?, 1)
    }

    /// `n` releases at once (threading's `release(n)`): all of them, or, if one would
    /// fail, none.
    ///
    /// # Errors
    /// As [`Self::release`], changing nothing; [`crate::Error::InvalidArgument`] for
    /// `n == 0`.
    pub fn release_n(&self, n: u32) -> Result<()> {
        permit::release_owned(&self.handle, self.kind()?, n)
    }

    /// The permits free now (billiard's `get_value`): the initial count while idle,
    /// less the permits held, plus the signalling releases.
    pub fn value(&self) -> Result<u32> {
        permit::value(&self.handle, self.kind()?)
    }

    /// Async [`Self::release`]: never blocks the executor thread on a network store.
    pub async fn release_async(&self) -> Result<()> {
        permit::release_owned_async(&self.handle, self.kind()?, 1).await
    }

    /// Async [`Self::release_n`].
    pub async fn release_n_async(&self, n: u32) -> Result<()> {
        permit::release_owned_async(&self.handle, self.kind()?, n).await
    }

    /// Async [`Self::value`].
    pub async fn value_async(&self) -> Result<u32> {
        permit::value_async(&self.handle, self.kind()?).await
    }

    /// Whether no permit is free now, so that an acquisition would wait.
    pub fn is_locked(&self) -> Result<bool> {
        Ok(self.value()? == 0)
    }

    /// Async [`Self::is_locked`]: never blocks the executor thread on a network store.
    pub async fn is_locked_async(&self) -> Result<bool> {
        Ok(permit::value_async(&self.handle, self.kind()?).await? == 0)
    }

    /// The number of permits the semaphore started with.
    pub fn initial(&self) -> u32 {
        self.initial
    }
}
