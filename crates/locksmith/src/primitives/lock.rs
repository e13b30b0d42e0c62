//! A mutual-exclusion lock.

use crate::backend::PermitKind;
use crate::primitives::handle::{lease_options, Handle};
use crate::primitives::permit::{self, acquire_methods, run_method};
use crate::Result;

const KIND: PermitKind = PermitKind::Lock;

/// Who owns a Lock's blocking acquisition: the calling thread (the default), or the
/// acquisition itself. Set with [`Lock::ownership`].
///
/// | | `Thread` | `Acquisition` |
/// | --- | --- | --- |
/// | the holding thread acquires again | [`crate::Error::WouldDeadlock`] (`EDEADLK`) | waits, like any other taker |
/// | the guard moved to another thread and released there | released | released |
/// | [`Lock::release`] of a detached hold | from the acquiring thread only | from any thread of this process |
///
/// `Thread` is POSIX's error-checking mutex (runtime.sync's `Mutex`); `Acquisition` is
/// `threading.Lock`, multiprocessing's `Lock` and a thread pool's lock, and how async
/// acquisitions always behave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ownership {
    /// The calling thread owns the hold.
    #[default]
    Thread,
    /// Each acquisition is its own owner.
    Acquisition,
}

/// A lock that one owner holds at a time.
///
/// Blocking acquisitions are owned by the calling thread: acquiring again from the same
/// thread while holding is [`crate::Error::WouldDeadlock`] (`EDEADLK`) rather than a
/// hang; with [`Lock::ownership`] set to [`Ownership::Acquisition`] each acquisition
/// is its own owner instead, as in Python's `threading.Lock`. Async acquisitions are each
/// their own owner and queue first-come first-served, as Twisted's `DeferredLock` does.
///
/// ```
/// # fn main() -> locksmith::Result<()> {
/// use locksmith::Ownership;
/// let space = locksmith::Space::open("mem:")?;
/// let lock = space.lock("job").ownership(Ownership::Acquisition);
/// lock.acquire()?.detach();                 // held, by nobody in particular
/// assert!(lock.try_acquire()?.is_none());   // this thread too would wait
/// std::thread::spawn(move || lock.release()).join().unwrap()?; // any thread frees it
/// # Ok(()) }
/// ```
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

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    fn kind(&self) -> Result<PermitKind> {
        Ok(KIND)
    }

    lease_options!();
    acquire_methods!("the lock");
    run_method!();

    /// Who owns the blocking acquisitions made through this handle (default:
    /// [`Ownership::Thread`]).
    pub fn ownership(mut self, ownership: Ownership) -> Self {
        self.handle.update_opts(|o| o.ownership = ownership);
        self
    }

    /// Releases a hold taken and then [`crate::Guard::detach`]ed in this process: by
    /// the calling thread, or by any thread with [`Ownership::Acquisition`]. Never a
    /// hold that a live guard owns: release that through its guard.
    ///
    /// # Errors
    /// [`crate::Error::NotHeld`] if nobody holds it, [`crate::Error::NotOwner`] if
    /// another owner or a live guard does (both `EPERM`); [`crate::Error::LeaseLost`]
    /// if the detached hold ended before this release (its lease lapsed, or it was
    /// force-released or evicted).
    pub fn release(&self) -> Result<()> {
        permit::release_detached(&self.handle, self.kind()?)
    }

    /// Async [`Self::release`]: never blocks the executor thread on a network store.
    pub async fn release_async(&self) -> Result<()> {
        permit::release_detached_async(&self.handle, self.kind()?).await
    }

    /// Whether anyone holds the lock now (diskcache's `locked()`).
    pub fn is_locked(&self) -> Result<bool> {
        permit::is_held(&self.handle)
    }

    /// Async [`Self::is_locked`]: never blocks the executor thread on a network store.
    pub async fn is_locked_async(&self) -> Result<bool> {
        permit::is_held_async(&self.handle).await
    }
}
