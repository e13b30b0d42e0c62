//! The placed mutex (runtime.sync's `Mutex`).

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::sys::{self, Deadline, Liveness, Watch};
use super::{AtomicBlock, Header, Kind, Place, Placed, FLAG_RECURSIVE, FLAG_SHARED};
use crate::os::futex;
use crate::{Error, Result};

const NAME: &str = "shm::Mutex";

/// Bit 31 of the state word: somebody may be sleeping on it.
const WAITERS: u32 = 1 << 31;
/// Bits of the state word that hold the owner's thread id.
const TID_MASK: u32 = sys::ID_MASK;
/// The state word of a destroyed mutex: no thread id has all these bits.
const DESTROYED: u32 = u32::MAX;

/// The shared-memory block of a [`Mutex`]: see its "Shared-memory layout" section.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct RawMutex {
    header: Header,
    state: AtomicU32,
    count: AtomicU32,
    owner: AtomicU64,
}

// SAFETY: #[repr(C)], made only of atomics.
unsafe impl AtomicBlock for RawMutex {}

/// How to initialise a [`Mutex`].
///
/// The defaults are runtime.sync's: `shared` and `recursive` are both true.
///
/// ```
/// use locksmith::shm::MutexOptions;
/// use std::time::Duration;
/// let opts = MutexOptions::new().recursive(false).check_interval(Duration::from_millis(5));
/// # let _ = opts;
/// ```
#[derive(Clone, Debug)]
pub struct MutexOptions {
    shared: bool,
    recursive: bool,
    check_interval: Duration,
}

impl Default for MutexOptions {
    fn default() -> Self {
        MutexOptions {
            shared: true,
            recursive: true,
            check_interval: super::DEFAULT_CHECK_INTERVAL,
        }
    }
}

impl MutexOptions {
    /// The defaults: shared, recursive, a 20 ms check interval.
    pub fn new() -> MutexOptions {
        MutexOptions::default()
    }

    /// Whether other processes use the mutex (`true`, the default). A mutex used by
    /// the threads of one process only may say `false`, which makes its futex calls
    /// process-private (cheaper in the kernel).
    pub fn shared(mut self, shared: bool) -> MutexOptions {
        self.shared = shared;
        self
    }

    /// Whether the owner may acquire the mutex again (`true`, the default); every
    /// acquisition then needs its own release. A non-recursive mutex answers
    /// [`Error::WouldDeadlock`] (`EDEADLK`) to an owner that acquires it again.
    pub fn recursive(mut self, recursive: bool) -> MutexOptions {
        self.recursive = recursive;
        self
    }

    /// How long a waiter waits on an unchanged owner before checking whether it is
    /// still alive (20 ms by default, at least 1 ms). A dead owner is replaced within
    /// about this time after its death.
    pub fn check_interval(mut self, interval: Duration) -> MutexOptions {
        self.check_interval = interval;
        self
    }
}

/// What a successful [`Mutex::acquire`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "the mutex is now held and must be released"]
pub struct Acquired {
    died: bool,
}

impl Acquired {
    pub(crate) fn new(died: bool) -> Acquired {
        Acquired { died }
    }

    /// True when the previous owner died holding the mutex and this acquisition took
    /// it over (`EOWNERDEAD`): the data it protects may be half-updated.
    pub fn previous_owner_died(&self) -> bool {
        self.died
    }
}

/// A mutex placed in a buffer that several threads or processes share (runtime.sync's
/// `Mutex`), owned by a thread.
///
/// [`Mutex::SIZE`] bytes, aligned to [`super::ALIGN`]. One process initialises it with
/// [`Mutex::init`]; the others [`Mutex::attach`]. The handle borrows the buffer, is
/// `Copy`, and may be shared between threads.
///
/// Two styles of use:
///
/// - runtime.sync's: [`Mutex::acquire`]`(timeout)` then [`Mutex::release`];
/// - a guard: [`Mutex::lock`], [`Mutex::lock_timeout`], [`Mutex::try_lock`] return a
///   [`MutexGuard`] that releases on drop.
///
/// # Errors (runtime.sync's errno table)
///
/// | situation | error | errno |
/// | --- | --- | --- |
/// | non-recursive, the owner acquires again (any timeout) | [`Error::WouldDeadlock`] | `EDEADLK` |
/// | held by another thread, `acquire(Some(ZERO))` | [`Error::Timeout`] (this crate has no `EBUSY`; [`Mutex::try_lock`] gives `Ok(None)`) | `ETIMEDOUT` |
/// | held by another thread, `acquire(Some(d))` | [`Error::Timeout`] after `d` | `ETIMEDOUT` |
/// | release of an unlocked mutex | [`Error::NotHeld`] | `EPERM` |
/// | release by a thread that is not the owner | [`Error::NotOwner`] | `EPERM` |
/// | anything after [`Mutex::destroy`] | [`Error::InvalidArgument`] | `EINVAL` |
///
/// # Dead owners
///
/// When the owning thread dies (its process killed, or the thread ended) without
/// releasing, a waiter takes the mutex over within about the check interval and is
/// told so by [`Acquired::previous_owner_died`] / [`MutexGuard::previous_owner_died`].
/// A try (`Some(ZERO)`) on a busy mutex checks the owner too, but at most one try per
/// check interval among all processes does (so polling never hammers `/proc`).
/// A recursive mutex taken over this way is held once.
///
/// # Lifetime
///
/// A handle borrows its buffer, so it cannot outlive it (runtime.sync's temporary
/// buffer left a dangling pointer and crashed). This does not compile:
///
/// ```compile_fail
/// use locksmith::shm::{Mutex, MutexOptions, Region};
/// let m = {
///     let region = Region::anonymous(Mutex::SIZE).unwrap();
///     Mutex::init(region.place_at(0, Mutex::SIZE).unwrap(), &MutexOptions::new()).unwrap()
/// }; // the region is unmapped here…
/// let _ = m.lock(); // …so the mutex cannot be used here
/// ```
///
/// # Speed
///
/// Uncontended acquire is one compare-and-swap plus one store; release is one
/// compare-and-swap. Neither makes a system call nor reads `/proc`.
///
/// # Example
///
/// ```
/// use locksmith::shm::{Mutex, MutexOptions};
/// use std::time::Duration;
///
/// #[repr(C, align(8))]
/// struct Buf([u8; Mutex::SIZE]);
/// let mut buf = Buf([0; Mutex::SIZE]);
///
/// let m = Mutex::init(&mut buf.0[..], &MutexOptions::new().recursive(false))?;
/// let got = m.acquire(Some(Duration::from_secs(1)))?;
/// assert!(!got.previous_owner_died());
/// assert_eq!(m.acquire(None).unwrap_err().errno(), libc::EDEADLK);
/// m.release()?;
/// assert_eq!(m.release().unwrap_err().errno(), libc::EPERM);
/// # Ok::<(), locksmith::Error>(())
/// ```
///
/// # Shared-memory layout
///
/// 32 bytes, aligned to 8; native-endian words (little-endian on x86_64 and aarch64); no pointers.
///
/// | offset | word | values |
/// | --- | --- | --- |
/// | 0 | header | see the module docs, "Header" |
/// | 16 | `state` (futex) | `0` unlocked · `tid` locked by thread `tid`, nobody asleep · `tid \| WAITERS` (bit 31) locked, waiters may sleep · `u32::MAX` destroyed |
/// | 20 | `count` | extra acquisitions of a recursive mutex by its owner (0 when held once); written only by the owner |
/// | 24 | `owner` | stamp of the owner: `tid << 42 \| start time of tid`, written just after taking `state`; stale (another tid) until then |
///
/// Transitions: lock `0 → tid` (one CAS); contended lock `0 → tid|WAITERS`; a waiter
/// sets `WAITERS` before sleeping; unlock `tid → 0` (one CAS) or `tid|WAITERS → 0`
/// (swap, then wake one); takeover from a dead owner `dead|WAITERS → tid|WAITERS`.
#[derive(Clone, Copy, Debug)]
pub struct Mutex<'a> {
    raw: &'a RawMutex,
}

impl Placed for Mutex<'_> {
    const SIZE: usize = Mutex::SIZE;
}

impl<'a> Mutex<'a> {
    /// What an error is about: this mutex, by the address it is placed at in this
    /// process (a placed mutex has no name), so that messages tell mutexes apart.
    fn what(&self) -> String {
        format!("{NAME} placed at {:p}", self.raw)
    }

    /// Bytes a mutex occupies in its buffer (32).
    pub const SIZE: usize = std::mem::size_of::<RawMutex>();

    /// Initialises a mutex at the start of `place` (unlocked).
    ///
    /// Only one process initialises a given buffer; the others attach. A buffer that
    /// is too small or misaligned, or that already holds an initialised primitive
    /// (destroy it first), is refused with [`Error::InvalidArgument`].
    pub fn init(place: impl Into<Place<'a>>, options: &MutexOptions) -> Result<Mutex<'a>> {
        let raw: &RawMutex = place.into().view("a Mutex")?;
        raw.header.begin_init(Kind::Mutex)?;
        raw.state.store(0, Ordering::Relaxed);
        raw.count.store(0, Ordering::Relaxed);
        raw.owner.store(0, Ordering::Relaxed);
        let mut flags = 0;
        if options.shared {
            flags |= FLAG_SHARED;
        }
        if options.recursive {
            flags |= FLAG_RECURSIVE;
        }
        raw.header
            .finish_init(Kind::Mutex, flags, options.check_interval);
        Ok(Mutex { raw })
    }

    /// Attaches to a mutex another thread or process initialised at the start of
    /// `place`, after checking its size, alignment, magic number, version and kind.
    pub fn attach(place: impl Into<Place<'a>>) -> Result<Mutex<'a>> {
        let raw: &RawMutex = place.into().view("a Mutex")?;
        raw.header.check(Kind::Mutex)?;
        Ok(Mutex { raw })
    }

    /// True for a recursive mutex.
    pub fn is_recursive(&self) -> bool {
        self.raw.header.flags() & FLAG_RECURSIVE != 0
    }

    /// Acquires the mutex: `None` waits for ever, `Some(ZERO)` only tries, `Some(d)`
    /// waits at most `d` (measured on the monotonic clock).
    ///
    /// Errors as in the table on [`Mutex`]: `WouldDeadlock`, `Timeout`,
    /// `InvalidArgument` after destroy.
    #[inline]
    pub fn acquire(&self, timeout: Option<Duration>) -> Result<Acquired> {
        let me = sys::thread();
        let raw = self.raw;
        if raw
            .state
            .compare_exchange(0, me.id, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            raw.owner.store(me.stamp, Ordering::Relaxed);
            return Ok(Acquired { died: false });
        }
        self.acquire_slow(me, timeout)
    }

    /// [`Mutex::acquire`] with runtime.sync's float timeout in seconds: `None` waits
    /// for ever, `0.0` only tries, a positive number waits at most that long. A
    /// negative, NaN or infinite timeout is [`Error::InvalidArgument`] and changes
    /// nothing.
    pub fn acquire_secs(&self, timeout: Option<f64>) -> Result<Acquired> {
        let timeout = timeout.map(super::timeout_from_secs).transpose()?;
        self.acquire(timeout)
    }

    #[cold]
    fn acquire_slow(&self, me: sys::Me, timeout: Option<Duration>) -> Result<Acquired> {
        let raw = self.raw;
        raw.header.check(Kind::Mutex)?;
        let flags = raw.header.flags();
        let shared = flags & FLAG_SHARED != 0;
        let w = raw.state.load(Ordering::Relaxed);
        if w != DESTROYED && w & TID_MASK == me.id {
            if flags & FLAG_RECURSIVE == 0 {
                return Err(Error::WouldDeadlock { name: self.what() });
            }
            let c = raw.count.load(Ordering::Relaxed);
            if c == u32::MAX {
                return Err(Error::invalid("recursive mutex acquired too many times"));
            }
            raw.count.store(c + 1, Ordering::Relaxed);
            return Ok(Acquired { died: false });
        }
        let try_only = timeout == Some(Duration::ZERO);
        let deadline = Deadline::after(timeout);
        let interval = raw.header.check_interval();
        let mut watch = Watch::new();
        loop {
            let w = raw.state.load(Ordering::Relaxed);
            if w == DESTROYED {
                raw.header.check(Kind::Mutex)?;
                return Err(Error::invalid("the Mutex was destroyed"));
            }
            if w == 0 {
                // Taken on the slow path: others may sleep, so keep WAITERS set.
                let new = if try_only { me.id } else { me.id | WAITERS };
                if raw
                    .state
                    .compare_exchange(0, new, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    raw.owner.store(me.stamp, Ordering::Relaxed);
                    return Ok(Acquired { died: false });
                }
                continue;
            }
            let holder = w & TID_MASK;
            let due = if try_only {
                raw.header.try_check_due()
            } else {
                watch.due(u64::from(holder), interval)
            };
            if due && self.owner_is_dead(holder) {
                if raw
                    .state
                    .compare_exchange(w, me.id | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    raw.count.store(0, Ordering::Relaxed);
                    raw.owner.store(me.stamp, Ordering::Relaxed);
                    return Ok(Acquired { died: true });
                }
                continue;
            }
            if try_only {
                return Err(Error::Timeout);
            }
            if deadline.passed() {
                return Err(Error::Timeout);
            }
            if w & WAITERS == 0
                && raw
                    .state
                    .compare_exchange(w, w | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            futex::wait(
                &raw.state,
                w | WAITERS,
                Some(deadline.slice(interval)),
                shared,
            );
        }
    }

    fn owner_is_dead(&self, holder: u32) -> bool {
        let s = self.raw.owner.load(Ordering::Relaxed);
        let s = if sys::stamp_id(s) == holder {
            s
        } else {
            // The owner has not written its stamp yet (or died before it could): check
            // only that the thread exists.
            sys::stamp(holder, 0)
        };
        sys::liveness(s, false) == Liveness::Dead
    }

    /// Releases one acquisition by the calling thread.
    ///
    /// [`Error::NotHeld`] when the mutex is unlocked, [`Error::NotOwner`] when another
    /// thread holds it (both `EPERM`), `InvalidArgument` after destroy. A failed release
    /// changes nothing.
    #[inline]
    pub fn release(&self) -> Result<()> {
        let me = sys::thread();
        let raw = self.raw;
        if raw.count.load(Ordering::Relaxed) == 0
            && raw
                .state
                .compare_exchange(me.id, 0, Ordering::Release, Ordering::Relaxed)
                .is_ok()
        {
            return Ok(());
        }
        self.release_slow(me)
    }

    #[cold]
    fn release_slow(&self, me: sys::Me) -> Result<()> {
        let raw = self.raw;
        raw.header.check(Kind::Mutex)?;
        let w = raw.state.load(Ordering::Relaxed);
        if w == 0 {
            return Err(Error::NotHeld { name: self.what() });
        }
        if w == DESTROYED {
            return Err(Error::invalid("the Mutex was destroyed"));
        }
        if w & TID_MASK != me.id {
            return Err(Error::NotOwner { name: self.what() });
        }
        let c = raw.count.load(Ordering::Relaxed);
        if c > 0 {
            raw.count.store(c - 1, Ordering::Relaxed);
            return Ok(());
        }
        let prev = raw.state.swap(0, Ordering::Release);
        if prev & WAITERS != 0 {
            futex::wake(&raw.state, 1, raw.header.flags() & FLAG_SHARED != 0);
        }
        Ok(())
    }

    /// Acquires the mutex, waiting as long as it takes, and returns a guard that
    /// releases it when dropped.
    #[inline]
    pub fn lock(&self) -> Result<MutexGuard<'a>> {
        let got = self.acquire(None)?;
        Ok(self.guard(got))
    }

    /// Acquires the mutex, waiting at most `timeout`: `Ok(None)` when it is still held
    /// by another thread then.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<Option<MutexGuard<'a>>> {
        match self.acquire(Some(timeout)) {
            Ok(got) => Ok(Some(self.guard(got))),
            Err(Error::Timeout) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Acquires the mutex if that needs no waiting: `Ok(None)` when another thread
    /// holds it (runtime.sync's `EBUSY`).
    pub fn try_lock(&self) -> Result<Option<MutexGuard<'a>>> {
        self.lock_timeout(Duration::ZERO)
    }

    #[inline]
    fn guard(&self, got: Acquired) -> MutexGuard<'a> {
        MutexGuard {
            mutex: *self,
            died: got.died,
            _not_send: PhantomData,
        }
    }

    /// Destroys the mutex: every later operation, through any handle in any process,
    /// answers [`Error::InvalidArgument`] (`EINVAL`) until the buffer is initialised
    /// again. Waiters are woken and get the same error.
    pub fn destroy(&self) -> Result<()> {
        let raw = self.raw;
        raw.header.destroy(Kind::Mutex)?;
        raw.state.store(DESTROYED, Ordering::Release);
        futex::wake(&raw.state, u32::MAX, true);
        futex::wake(&raw.state, u32::MAX, false);
        Ok(())
    }

    /// The thread id of the current owner, if the mutex is held (for diagnostics; it
    /// may change at any moment).
    pub fn owner_tid(&self) -> Option<u32> {
        let w = self.raw.state.load(Ordering::Relaxed);
        if w == 0 || w == DESTROYED {
            None
        } else {
            Some(w & TID_MASK)
        }
    }

    /// Releases every level held by the calling thread (for a condition wait); returns
    /// the saved recursion count.
    pub(crate) fn release_all(&self) -> Result<u32> {
        let me = sys::thread();
        let w = self.raw.state.load(Ordering::Relaxed);
        if w == 0 {
            return Err(Error::NotHeld { name: self.what() });
        }
        if w == DESTROYED || w & TID_MASK != me.id {
            self.raw.header.check(Kind::Mutex)?;
            return Err(Error::NotOwner { name: self.what() });
        }
        let saved = self.raw.count.swap(0, Ordering::Relaxed);
        self.release_slow(me)?;
        Ok(saved)
    }

    /// Acquires again after [`Mutex::release_all`], restoring the recursion count.
    pub(crate) fn reacquire(&self, saved: u32) -> Result<Acquired> {
        let got = self.acquire(None)?;
        self.raw.count.store(saved, Ordering::Relaxed);
        Ok(got)
    }
}

/// Holds a [`Mutex`] for the calling thread; releases it when dropped.
///
/// Not `Send`: the owner of a mutex is a thread, and only that thread may release it.
#[derive(Debug)]
#[must_use = "the mutex is released as soon as the guard is dropped"]
pub struct MutexGuard<'a> {
    mutex: Mutex<'a>,
    died: bool,
    _not_send: PhantomData<*const ()>,
}

impl<'a> MutexGuard<'a> {
    /// True when the previous owner died holding the mutex (`EOWNERDEAD`).
    pub fn previous_owner_died(&self) -> bool {
        self.died
    }

    /// The mutex this guard holds.
    pub fn mutex(&self) -> Mutex<'a> {
        self.mutex
    }

    /// Releases now, reporting errors that dropping the guard would ignore (such as a
    /// mutex destroyed while held).
    pub fn release(self) -> Result<()> {
        let m = self.mutex;
        std::mem::forget(self);
        m.release()
    }

    pub(crate) fn set_died(&mut self, died: bool) {
        self.died |= died;
    }
}

impl Drop for MutexGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        let _ = self.mutex.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(8))]
    struct Buf([u8; 64]);

    #[test]
    fn layout_is_fixed() {
        assert_eq!(Mutex::SIZE, 32);
        assert_eq!(std::mem::align_of::<RawMutex>(), 8);
    }

    #[test]
    fn errno_table() {
        let mut buf = Buf([0; 64]);
        let m = Mutex::init(&mut buf.0[..], &MutexOptions::new().recursive(false)).unwrap();
        assert_eq!(m.release().unwrap_err().errno(), libc::EPERM);
        let _got = m.acquire(None).unwrap();
        for t in [None, Some(Duration::ZERO), Some(Duration::from_millis(10))] {
            assert_eq!(m.acquire(t).unwrap_err().errno(), libc::EDEADLK);
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(
                    m.acquire(Some(Duration::ZERO)).unwrap_err().errno(),
                    libc::ETIMEDOUT
                );
                assert!(m.try_lock().unwrap().is_none());
                assert_eq!(
                    m.acquire(Some(Duration::from_millis(20)))
                        .unwrap_err()
                        .errno(),
                    libc::ETIMEDOUT
                );
                assert_eq!(m.release().unwrap_err().errno(), libc::EPERM);
            });
        });
        m.release().unwrap();
        m.destroy().unwrap();
        assert_eq!(m.acquire(None).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(m.release().unwrap_err().errno(), libc::EINVAL);
        // Initialising again after destroy works.
        let m = Mutex::init(&mut buf.0[..], &MutexOptions::new()).unwrap();
        m.lock().unwrap().release().unwrap();
    }

    #[test]
    fn recursive_counts() {
        let mut buf = Buf([0; 64]);
        let m = Mutex::init(&mut buf.0[..], &MutexOptions::new()).unwrap();
        for _ in 0..3 {
            let _ = m.acquire(Some(Duration::ZERO)).unwrap();
        }
        std::thread::scope(|s| {
            s.spawn(|| assert!(m.try_lock().unwrap().is_none()));
        });
        for _ in 0..3 {
            m.release().unwrap();
        }
        assert_eq!(m.release().unwrap_err().errno(), libc::EPERM);
        std::thread::scope(|s| {
            s.spawn(|| assert!(m.try_lock().unwrap().is_some()));
        });
    }

    #[test]
    fn attach_checks() {
        let mut buf = Buf([0; 64]);
        assert!(Mutex::attach(&mut buf.0[..]).is_err(), "zeroed buffer");
        assert!(
            Mutex::init(&mut buf.0[..16], &MutexOptions::new()).is_err(),
            "too small"
        );
        assert!(
            Mutex::init(&mut buf.0[1..40], &MutexOptions::new()).is_err(),
            "misaligned"
        );
        Mutex::init(&mut buf.0[..], &MutexOptions::new()).unwrap();
        assert!(
            Mutex::init(&mut buf.0[..], &MutexOptions::new()).is_err(),
            "twice"
        );
        assert!(
            super::super::Event::attach(&mut buf.0[..]).is_err(),
            "other kind"
        );
        buf.0[6] = 99; // version byte
        assert!(Mutex::attach(&mut buf.0[..]).is_err(), "other version");
    }

    #[test]
    fn dead_thread_owner_is_replaced() {
        let mut buf = Buf([0; 64]);
        let m = Mutex::init(
            &mut buf.0[..],
            &MutexOptions::new().check_interval(Duration::from_millis(2)),
        )
        .unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                let g = m.lock().unwrap();
                std::mem::forget(g); // the thread ends holding it
            });
        });
        let g = m.lock().unwrap();
        assert!(g.previous_owner_died());
        drop(g);
        assert!(!m.lock().unwrap().previous_owner_died());
    }

    #[test]
    fn threads_count_exactly() {
        let mut buf = Buf([0; 64]);
        let m = Mutex::init(&mut buf.0[..], &MutexOptions::new().shared(false)).unwrap();
        let counter = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for i in 0..5_000 {
                        let g = if i % 3 == 0 {
                            loop {
                                if let Some(g) = m.try_lock().unwrap() {
                                    break g;
                                }
                            }
                        } else {
                            m.lock().unwrap()
                        };
                        // A non-atomic read-modify-write made of two atomic steps.
                        let v = counter.load(Ordering::Relaxed);
                        counter.store(v + 1, Ordering::Relaxed);
                        drop(g);
                    }
                });
            }
        });
        assert_eq!(counter.load(Ordering::Relaxed), 20_000);
    }
}
