//! One trait over everything that is acquired and held through a [`Guard`].

use std::future::Future;
use std::time::Duration;

use crate::{BoundedSemaphore, Condition, Guard, Lock, RLock, Result, RwLock, Semaphore};

/// Something acquired and held through a [`Guard`]: [`Lock`], [`RLock`], [`Semaphore`],
/// [`BoundedSemaphore`], [`Condition`] (its lock) and the two sides of an [`RwLock`]
/// ([`RwLock::reader`], [`RwLock::writer`]). Code generic over it takes any of them:
///
/// ```
/// # fn main() -> locksmith::Result<()> {
/// use locksmith::Acquirable;
/// fn exclusively<A: Acquirable>(a: &A, f: impl FnOnce()) -> locksmith::Result<()> {
///     let guard = a.acquire()?;
///     f();
///     guard.release()
/// }
/// let space = locksmith::Space::open("mem:")?;
/// exclusively(&space.lock("a"), || {})?;
/// exclusively(&space.semaphore("b", 2), || {})?;
/// exclusively(&space.rwlock("c").writer(), || {})?;
/// # Ok(()) }
/// ```
///
/// # Who owns a hold whose guard moves
/// A [`Guard`] is `Send`: it may move to another thread or task, and releasing it
/// (explicitly or by dropping it) works wherever it is. But the *owner* of the hold is
/// fixed when it is taken, and moving the guard does not change it: a blocking
/// acquisition of a Lock, RLock, Condition or RwLock is owned by the acquiring thread,
/// so after handing its guard to thread B, thread A still gets
/// [`crate::Error::WouldDeadlock`] if it takes the Lock again, and B gets
/// [`crate::Error::NotOwner`] from `lock.release()` (the handle's release of a
/// detached hold). Holds that travel between threads should be owned by the
/// acquisition instead: every async acquisition is, and so is a blocking one through
/// [`Lock::ownership`]`(`[`crate::Ownership::Acquisition`]`)`. Semaphore permits are
/// counted, not owned: any thread may release one.
pub trait Acquirable {
    /// The primitive's name.
    fn name(&self) -> &str;

    /// Acquires, waiting as long as it takes.
    fn acquire(&self) -> Result<Guard>;

    /// Acquires if that is possible now; never waits.
    fn try_acquire(&self) -> Result<Option<Guard>>;

    /// Acquires, waiting at most `timeout`; `Ok(None)` if it did not come free.
    fn acquire_timeout(&self, timeout: Duration) -> Result<Option<Guard>>;

    /// Acquires from async code, without blocking the executor thread.
    fn acquire_async(&self) -> impl Future<Output = Result<Guard>> + Send;

    /// Acquires from async code, waiting at most `timeout`.
    fn acquire_timeout_async(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<Guard>>> + Send;

    /// Whether anyone holds it now (for a semaphore: no permit is free).
    fn is_locked(&self) -> Result<bool>;
}

macro_rules! acquirable {
    ($t:ty, $name:ident, $acq:ident, $try_:ident, $timeout:ident, $async_:ident, $timeout_async:ident, $locked:ident) => {
        impl Acquirable for $t {
            fn name(&self) -> &str {
                self.$name()
            }

            fn acquire(&self) -> Result<Guard> {
                self.$acq()
            }

            fn try_acquire(&self) -> Result<Option<Guard>> {
                self.$try_()
            }

            fn acquire_timeout(&self, timeout: Duration) -> Result<Option<Guard>> {
                self.$timeout(timeout)
            }

            fn acquire_async(&self) -> impl Future<Output = Result<Guard>> + Send {
                self.$async_()
            }

            fn acquire_timeout_async(
                &self,
                timeout: Duration,
            ) -> impl Future<Output = Result<Option<Guard>>> + Send {
                self.$timeout_async(timeout)
            }

            fn is_locked(&self) -> Result<bool> {
                self.$locked()
            }
        }
    };
    ($t:ty) => {
        acquirable!(
            $t,
            name,
            acquire,
            try_acquire,
            acquire_timeout,
            acquire_async,
            acquire_timeout_async,
            is_locked
        );
    };
}

acquirable!(Lock);
acquirable!(RLock);
acquirable!(Semaphore);
acquirable!(BoundedSemaphore);
acquirable!(Condition);

/// The read side of an [`RwLock`], as an [`Acquirable`]: shared with other readers.
#[derive(Clone, Debug)]
pub struct RwLockReader(pub(crate) RwLock);

/// The write side of an [`RwLock`], as an [`Acquirable`]: exclusive.
#[derive(Clone, Debug)]
pub struct RwLockWriter(pub(crate) RwLock);

impl RwLockReader {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn read(&self) -> Result<Guard> {
        self.0.read()
    }
    fn try_read(&self) -> Result<Option<Guard>> {
        self.0.try_read()
    }
    fn read_timeout(&self, timeout: Duration) -> Result<Option<Guard>> {
        self.0.read_timeout(timeout)
    }
    async fn read_async(&self) -> Result<Guard> {
        self.0.read_async().await
    }
    async fn read_timeout_async(&self, timeout: Duration) -> Result<Option<Guard>> {
        self.0.read_timeout_async(timeout).await
    }
    fn is_locked(&self) -> Result<bool> {
        self.0.is_locked()
    }
}

impl RwLockWriter {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn write(&self) -> Result<Guard> {
        self.0.write()
    }
    fn try_write(&self) -> Result<Option<Guard>> {
        self.0.try_write()
    }
    fn write_timeout(&self, timeout: Duration) -> Result<Option<Guard>> {
        self.0.write_timeout(timeout)
    }
    async fn write_async(&self) -> Result<Guard> {
        self.0.write_async().await
    }
    async fn write_timeout_async(&self, timeout: Duration) -> Result<Option<Guard>> {
        self.0.write_timeout_async(timeout).await
    }
    fn is_locked(&self) -> Result<bool> {
        self.0.is_locked()
    }
}

acquirable!(
    RwLockReader,
    name,
    read,
    try_read,
    read_timeout,
    read_async,
    read_timeout_async,
    is_locked
);
acquirable!(
    RwLockWriter,
    name,
    write,
    try_write,
    write_timeout,
    write_async,
    write_timeout_async,
    is_locked
);
