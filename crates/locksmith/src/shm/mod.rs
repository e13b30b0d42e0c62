//! Shared-memory primitives placed in any buffer (Linux).
//!
//! Each primitive is a fixed-size `#[repr(C)]` block of atomics with no pointers inside,
//! so it works wherever the same bytes are mapped: between threads, between processes
//! that `fork`, and between unrelated processes that map the same file in `/dev/shm`.
//! Waiting uses the Linux futex system call; taking and releasing an uncontended
//! primitive is one compare-and-swap each and makes no system call.
//!
//! | type | size | what |
//! | --- | --- | --- |
//! | [`Mutex`] | [`Mutex::SIZE`] | runtime.sync's mutex: `shared`/`recursive`, `acquire(timeout)`, `release`, `destroy` |
//! | [`Semaphore`] | [`Semaphore::SIZE`] | a counting semaphore whose permits held by dead processes come back |
//! | [`BoundedSemaphore`] | [`Semaphore::SIZE`] | a semaphore that refuses to go above its initial value |
//! | [`Event`] | [`Event::SIZE`] | set / clear / wait, a waiter sees every `set` made during its wait |
//! | [`Condition`] | [`Condition::SIZE`] | a condition variable used with a [`Mutex`] |
//! | [`Barrier`] | [`Barrier::SIZE`] | a cyclic barrier with `reset`, `abort` and broken state |
//!
//! Every block starts with a 16-byte header (magic number, format version, kind, flags,
//! liveness-check interval). One process *initialises* a block in place (`init`), the
//! others *attach* to it (`attach`), which checks size, alignment ([`ALIGN`]), magic,
//! version and kind and answers a typed error ([`Error::InvalidArgument`], `EINVAL`)
//! instead of undefined behaviour. After `destroy` every operation answers `EINVAL`.
//!
//! # Header
//!
//! | offset | word (u32) | values |
//! | --- | --- | --- |
//! | 0 | magic | `0x4C4B534D` initialised · `0x4C4B5349` being initialised · `0x4C4B5344` destroyed · anything else: not initialised |
//! | 4 | meta | `version << 16 \| kind << 8 \| flags` (kind: 1 Mutex, 2 Semaphore, 3 Event, 4 Condition, 5 Barrier; flags: 1 shared, 2 recursive, 4 bounded, 8 track holders) |
//! | 8 | check interval | microseconds between liveness checks of an unchanged holder |
//! | 12 | last check | monotonic milliseconds of the last liveness check made by a try |
//!
//! Buffers come from a [`Region`] (a named file in `/dev/shm`, or an anonymous
//! `MAP_SHARED` mapping inherited across `fork`), from a caller's `&mut [u8]`, or from a
//! raw pointer ([`Place::from_raw`]). A handle borrows its buffer, so safe code cannot
//! keep one after the buffer is gone (runtime.sync's dangling-pointer crash cannot
//! happen). [`Layout`] places several primitives in one region.
//!
//! # Dead holders
//!
//! A thread or process killed while holding a [`Mutex`] or semaphore permits, or while
//! taking part in a [`Barrier`], does not block the others for ever. Waiters sleep in
//! slices of the block's check interval (20 ms unless set at `init`); after a full
//! interval with the same holder they check whether it is still alive. A dead mutex
//! owner is replaced by the waiter, whose [`Acquired::previous_owner_died`] is then true
//! (`EOWNERDEAD`); permits held by a dead process return to the semaphore; a barrier
//! with a dead participant breaks.
//!
//! How: every holder leaves a stamp in the block, its thread id (mutex owner) or
//! process id (permits, barrier members) with that thread's or process's start time
//! (field 22 of `/proc/ID/stat`). The holder is dead when `/proc/ID` is gone (and
//! `kill(ID, 0)` says `ESRCH`), is a zombie, or belongs to something started at
//! another time (a reused id). The kernel's robust-futex list cannot be used: glibc owns
//! each thread's single list head for its own pthread mutexes. The check reads `/proc`
//! only on the slow path, never when taking or releasing an uncontended primitive.
//!
//! # Differences from runtime.sync and billiard
//!
//! - `acquire(timeout)` takes an `Option<Duration>` (`None` = block, zero = try); the
//!   float form [`Mutex::acquire_secs`] refuses negative, NaN and infinite timeouts
//!   with `EINVAL` (runtime.sync raises `ValueError`/`OverflowError`). A busy try
//!   answers [`Error::Timeout`] rather than `EBUSY` (the crate's error type has no
//!   busy variant); [`Mutex::try_lock`] answers `Ok(None)`.
//! - A zeroed, never-initialised buffer is refused by `attach` (runtime.sync accepts it,
//!   since all-zero is glibc's default mutex); initialising a live block twice is an
//!   error, not undefined behaviour.
//! - Handles borrow their buffer, so a temporary buffer cannot dangle.
//! - Dead owners are recovered (runtime.sync and billiard hold for ever): the next
//!   owner is told [`Acquired::previous_owner_died`].
//! - [`Event::wait`] answers `true` if the event was set at any moment during the wait
//!   (billiard may answer `false` when `set` is followed at once by `clear`).
//! - [`Condition::notify`] takes a count; there is no notify handshake, so wakeups may
//!   be spurious (use [`Condition::wait_while`]).
//! - Waiters are woken in the kernel's futex order, not FIFO.
//!
//! # Memory ordering
//!
//! Acquiring a [`Mutex`] (or a semaphore permit) is an `Acquire` operation and releasing
//! it a `Release` one, so everything written to shared memory before a release is
//! visible after the matching acquire, in any process. [`Event::set`] happens before
//! every `wait` that it makes return `true`; a `notify` happens before the wakeups it
//! causes; a barrier's releasing arrival happens after every arrival of that
//! generation.
//!
//! # Limits
//!
//! - Linux only; all users of a block must share a pid namespace (ids are compared as
//!   numbers) and, for `shared` blocks, map the same memory.
//! - A semaphore records the holders of permits for at most [`HOLDER_SLOTS`] processes
//!   at once; a barrier watches at most [`MEMBER_SLOTS`] processes.
//! - A killed `create_with` may leave a `/dev/shm/.locksmith-PID-N.tmp` file behind.
//!
//! # Example
//!
//! ```
//! use locksmith::shm::{Layout, Mutex, MutexOptions, Region, Semaphore};
//!
//! let mut layout = Layout::new();
//! let lock_at = layout.add::<Mutex>();
//! let sem_at = layout.add::<Semaphore>();
//! let region = Region::anonymous(layout.size())?;
//!
//! let lock = Mutex::init(region.place(lock_at)?, &MutexOptions::new())?;
//! let sem = Semaphore::init(region.place(sem_at)?, 2)?;
//! // … fork here: the child attaches with Mutex::attach(region.place(lock_at)?) …
//! {
//!     let guard = lock.lock()?;
//!     assert!(!guard.previous_owner_died());
//! }
//! assert!(sem.acquire(None)?);
//! sem.release()?;
//! # Ok::<(), locksmith::Error>(())
//! ```

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::{Error, Result};

mod barrier;
mod condition;
mod event;
mod mutex;
mod region;
mod semaphore;
pub(crate) mod sys;

pub use barrier::{Barrier, MEMBER_SLOTS};
pub use condition::Condition;
pub use event::Event;
pub use mutex::{Acquired, Mutex, MutexGuard, MutexOptions};
pub use region::{Layout, Offset, Region, RegionOptions};
pub use semaphore::{BoundedSemaphore, Semaphore, SemaphoreOptions, HOLDER_SLOTS};

/// Alignment every placed primitive needs (its 64-bit words).
pub const ALIGN: usize = 8;

/// The version of the shared-memory format written into each header.
pub const FORMAT_VERSION: u16 = 1;

/// Default interval between liveness checks of an unchanged holder.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_millis(20);

const MAGIC: u32 = 0x4C4B_534D; // "LKSM"
const MAGIC_INITIALISING: u32 = 0x4C4B_5349;
const MAGIC_DESTROYED: u32 = 0x4C4B_5344;

/// What kind of primitive a header belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Mutex = 1,
    Semaphore = 2,
    Event = 3,
    Condition = 4,
    Barrier = 5,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Mutex => "Mutex",
            Kind::Semaphore => "Semaphore",
            Kind::Event => "Event",
            Kind::Condition => "Condition",
            Kind::Barrier => "Barrier",
        }
    }
}

/// Header flag: futex operations are process-shared (not `FUTEX_PRIVATE_FLAG`).
pub(crate) const FLAG_SHARED: u8 = 1;
/// Header flag: the mutex is recursive.
pub(crate) const FLAG_RECURSIVE: u8 = 2;
/// Header flag: the semaphore is bounded by its initial value.
pub(crate) const FLAG_BOUNDED: u8 = 4;
/// Header flag: the semaphore records which processes hold permits.
pub(crate) const FLAG_TRACK: u8 = 8;

/// The 16 bytes at the start of every placed primitive.
///
/// | offset | word | values |
/// | --- | --- | --- |
/// | 0 | `magic` | [`MAGIC`] usable · `MAGIC_INITIALISING` being set up · `MAGIC_DESTROYED` after destroy · anything else: not initialised |
/// | 4 | `meta` | `version << 16 \| kind << 8 \| flags` |
/// | 8 | `check_us` | liveness-check interval in microseconds (≥ 1000) |
/// | 12 | `last_check` | `CLOCK_MONOTONIC` milliseconds (mod 2^32, never 0) of the last liveness check made by a *try*; 0 never |
///
/// `magic` is written last with `Release` by `init` and read with `Acquire` by
/// `attach`, so an attacher that sees [`MAGIC`] sees the whole initialised block.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Header {
    magic: AtomicU32,
    meta: AtomicU32,
    check_us: AtomicU32,
    last_check: AtomicU32,
}

impl Header {
    /// Claims the block for initialisation; refuses a block that is in use.
    pub(crate) fn begin_init(&self, kind: Kind) -> Result<()> {
        let cur = self.magic.load(Ordering::Acquire);
        if cur == MAGIC || cur == MAGIC_INITIALISING {
            return Err(Error::invalid(format!(
                "the buffer already holds an initialised primitive: attach to it, or destroy it before initialising a new {}",
                kind.name()
            )));
        }
        self.magic
            .compare_exchange(
                cur,
                MAGIC_INITIALISING,
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .map(drop)
            .map_err(|_| Error::invalid("the buffer is being initialised by somebody else"))
    }

    /// Publishes an initialised block.
    pub(crate) fn finish_init(&self, kind: Kind, flags: u8, check: Duration) {
        let meta = (u32::from(FORMAT_VERSION) << 16) | ((kind as u32) << 8) | u32::from(flags);
        self.meta.store(meta, Ordering::Relaxed);
        let us = check.as_micros().clamp(1_000, u128::from(u32::MAX)) as u32;
        self.check_us.store(us, Ordering::Relaxed);
        self.last_check.store(0, Ordering::Relaxed);
        self.magic.store(MAGIC, Ordering::Release);
    }

    /// Checks that the block is an initialised primitive of `kind` in this format.
    pub(crate) fn check(&self, kind: Kind) -> Result<()> {
        match self.magic.load(Ordering::Acquire) {
            MAGIC => {}
            MAGIC_DESTROYED => {
                return Err(Error::invalid(format!("the {} was destroyed", kind.name())))
            }
            MAGIC_INITIALISING => {
                return Err(Error::invalid(format!(
                    "the {} is still being initialised",
                    kind.name()
                )))
            }
            _ => {
                return Err(Error::invalid(format!(
                    "the buffer holds no initialised {} (bad magic number)",
                    kind.name()
                )))
            }
        }
        let meta = self.meta.load(Ordering::Relaxed);
        let version = (meta >> 16) as u16;
        if version != FORMAT_VERSION {
            return Err(Error::invalid(format!(
                "the buffer holds format version {version}, this library reads version {FORMAT_VERSION}"
            )));
        }
        let found = ((meta >> 8) & 0xff) as u8;
        if found != kind as u8 {
            return Err(Error::invalid(format!(
                "the buffer holds another kind of primitive (kind {found}), not a {}",
                kind.name()
            )));
        }
        Ok(())
    }

    /// Marks the block destroyed; later operations answer `EINVAL`.
    pub(crate) fn destroy(&self, kind: Kind) -> Result<()> {
        self.magic
            .compare_exchange(MAGIC, MAGIC_DESTROYED, Ordering::AcqRel, Ordering::Relaxed)
            .map(drop)
            .map_err(|_| Error::invalid(format!("the {} is not initialised", kind.name())))
    }

    pub(crate) fn is_live(&self) -> bool {
        self.magic.load(Ordering::Acquire) == MAGIC
    }

    pub(crate) fn flags(&self) -> u8 {
        self.meta.load(Ordering::Relaxed) as u8
    }

    /// Rate-limits the liveness checks made by tries (`acquire(Some(ZERO))`), shared
    /// by every process: true for at most one caller per check interval. Without it a
    /// loop of tries on a busy primitive would read `/proc` on every try.
    pub(crate) fn try_check_due(&self) -> bool {
        let interval = self.check_interval().as_millis().min(u128::from(u32::MAX)) as u32;
        let now = crate::os::clock::monotonic_ms().max(1);
        let last = self.last_check.load(Ordering::Relaxed);
        if last != 0 && now.wrapping_sub(last) < interval {
            return false;
        }
        self.last_check
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    pub(crate) fn check_interval(&self) -> Duration {
        Duration::from_micros(u64::from(self.check_us.load(Ordering::Relaxed).max(1_000)))
    }
}

/// A timeout given in seconds as a float (runtime.sync's and billiard's style), checked:
/// negative, NaN and infinite values are [`Error::InvalidArgument`].
///
/// ```
/// use locksmith::shm::timeout_from_secs;
/// assert_eq!(timeout_from_secs(0.25)?.as_millis(), 250);
/// assert_eq!(timeout_from_secs(-1.0).unwrap_err().errno(), libc::EINVAL);
/// assert!(timeout_from_secs(f64::NAN).is_err() && timeout_from_secs(f64::INFINITY).is_err());
/// # Ok::<(), locksmith::Error>(())
/// ```
pub fn timeout_from_secs(secs: f64) -> Result<Duration> {
    if secs.is_nan() || secs < 0.0 || secs.is_infinite() {
        return Err(Error::invalid(format!(
            "timeout must be a finite, non-negative number of seconds, not {secs}"
        )));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| Error::invalid(format!("timeout {secs} s: {e}")))
}

/// A primitive that can be placed in shared memory: its size and alignment.
pub trait Placed {
    /// Bytes the primitive occupies.
    const SIZE: usize;
    /// Alignment it needs.
    const ALIGN: usize = ALIGN;
}

/// A span of memory that other threads or processes may read and write at any time,
/// borrowed for `'a`. Primitives are initialised in, and attached to, a `Place`.
///
/// Made from a caller's `&mut [u8]` (`From`), from a [`Region`] ([`Region::place`],
/// [`Region::place_at`]), or from a raw pointer ([`Place::from_raw`]).
#[derive(Clone, Copy, Debug)]
pub struct Place<'a> {
    ptr: NonNull<u8>,
    len: usize,
    _borrow: PhantomData<&'a UnsafeCell<[u8]>>,
}

// SAFETY: a Place is a borrowed address range; the primitives only access it through
// atomics, which may be used from any thread.
unsafe impl Send for Place<'_> {}
// SAFETY: as above: shared use only ever performs atomic accesses.
unsafe impl Sync for Place<'_> {}

impl<'a> From<&'a mut [u8]> for Place<'a> {
    fn from(buf: &'a mut [u8]) -> Place<'a> {
        let len = buf.len();
        Place {
            // A slice pointer is never null (dangling but non-null when empty).
            ptr: NonNull::from(buf).cast(),
            len,
            _borrow: PhantomData,
        }
    }
}

impl<'a> Place<'a> {
    /// A place over `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// For all of `'a`, `ptr..ptr+len` must be mapped, readable and writeable memory
    /// that Rust code accesses only through atomics or through other `Place`s (no live
    /// `&`/`&mut` references to those bytes, other than `UnsafeCell`-based ones).
    /// Other processes may write it concurrently.
    pub unsafe fn from_raw(ptr: *mut u8, len: usize) -> Result<Place<'a>> {
        let ptr = NonNull::new(ptr).ok_or_else(|| Error::invalid("null pointer"))?;
        Ok(Place {
            ptr,
            len,
            _borrow: PhantomData,
        })
    }

    /// Bytes in the place.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the place has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The sub-place `offset..offset+len`.
    pub fn sub(&self, offset: usize, len: usize) -> Result<Place<'a>> {
        offset
            .checked_add(len)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{len} bytes at offset {offset} do not fit in {} bytes",
                    self.len
                ))
            })?;
        // SAFETY: offset + len <= self.len, so the result stays inside this place.
        let ptr = unsafe { self.ptr.add(offset) };
        Ok(Place {
            ptr,
            len,
            _borrow: PhantomData,
        })
    }

    /// Views the start of the place as a `T` after checking size and alignment.
    ///
    /// `T` must be one of this module's `#[repr(C)]` blocks made only of atomics, for
    /// which every bit pattern is valid.
    pub(crate) fn view<T: AtomicBlock>(&self, what: &str) -> Result<&'a T> {
        if self.len < std::mem::size_of::<T>() {
            return Err(Error::invalid(format!(
                "the buffer is too small to fit {what}: {} bytes, {} needed",
                self.len,
                std::mem::size_of::<T>()
            )));
        }
        if self.ptr.as_ptr().align_offset(std::mem::align_of::<T>()) != 0 {
            return Err(Error::invalid(format!(
                "the buffer is not aligned for {what}: it must start at a multiple of {} bytes",
                std::mem::align_of::<T>()
            )));
        }
        // SAFETY: size and alignment were checked above; `T: AtomicBlock` is made only of
        // atomics (valid for every bit pattern, usable through a shared reference while
        // others write them); the place's contract gives the memory for `'a`.
        Ok(unsafe { &*self.ptr.as_ptr().cast::<T>() })
    }
}

/// A `#[repr(C)]` block made only of atomic integers: every bit pattern is a valid
/// value and shared references may be used while other processes write it.
///
/// # Safety
///
/// Implementors must be `#[repr(C)]` structs whose fields are all `AtomicU32`,
/// `AtomicU64` or arrays or structs of those.
pub(crate) unsafe trait AtomicBlock: Sync {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn place_checks_bounds() {
        let mut buf = [0u64; 4];
        // SAFETY: the array is live for the test and only used through the place.
        let place = unsafe { Place::from_raw(buf.as_mut_ptr().cast(), 32) }.unwrap();
        assert!(place.sub(16, 16).is_ok());
        assert!(place.sub(17, 16).is_err());
        assert!(place.sub(usize::MAX, 2).is_err());
    }
}
