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
        permit::release_owned(&self.handle, self.kind()?)
    }

    /// The number of permits the semaphore started with.
    pub fn initial(&self) -> u32 {
        self.initial
    }
}
