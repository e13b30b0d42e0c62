//! A semaphore that cannot rise above its initial count.

use crate::backend::PermitKind;
use crate::primitives::handle::{lease_options, Handle};
use crate::primitives::permit::{self, acquire_methods, run_method};
use crate::{Error, Result};

/// A [`crate::Semaphore`] whose count never rises above its initial value: a release
/// that would is refused with [`crate::Error::TooManyReleases`] and changes nothing
/// (billiard's `ValueError`, diskcache's assertion).
///
/// ```
/// # fn main() -> locksmith::Result<()> {
/// let space = locksmith::Space::open("mem:")?;
/// let db = space.bounded_semaphore("db", 3);
/// let permit = db.acquire()?;
/// drop(permit);
/// assert!(matches!(db.release(), Err(locksmith::Error::TooManyReleases { .. })));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct BoundedSemaphore {
    handle: Handle,
    max: u32,
}

impl BoundedSemaphore {
    pub(crate) fn new(handle: Handle, max: u32) -> BoundedSemaphore {
        BoundedSemaphore { handle, max }
    }

    fn kind(&self) -> Result<PermitKind> {
        if self.max == 0 {
            return Err(Error::invalid("a BoundedSemaphore needs at least 1 permit"));
        }
        Ok(PermitKind::BoundedSemaphore { max: self.max })
    }

    lease_options!();
    acquire_methods!("a permit");
    run_method!();

    /// Gives back a permit: the calling thread's own guardless one if it holds one,
    /// otherwise the oldest holder's (anyone may release a semaphore), otherwise
    /// raises the count.
    ///
    /// # Errors
    /// [`crate::Error::TooManyReleases`] if every permit is already free.
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

    /// The most permits there can be.
    pub fn max(&self) -> u32 {
        self.max
    }
}
