//! The placed semaphores (billiard's `Semaphore` and `BoundedSemaphore`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::sys::{self, Deadline, Liveness};
use super::{AtomicBlock, Header, Kind, Place, Placed, FLAG_BOUNDED, FLAG_SHARED, FLAG_TRACK};
use crate::os::futex;
use crate::{Error, Result};

const NAME: &str = "shm::Semaphore";

/// How many processes can hold permits of one semaphore at the same time while it
/// records its holders (the default). One more gets an [`Error::Backend`] explaining
/// that the holder table is full; [`SemaphoreOptions::track_holders`]`(false)` lifts the
/// limit at the price of not reclaiming the permits of dead processes. A process's
/// slot counts up to 65535 permits; permits beyond that are granted but not recorded.
pub const HOLDER_SLOTS: usize = 12;

/// The largest value of a semaphore (POSIX's `SEM_VALUE_MAX` on Linux).
const VALUE_MAX: u32 = i32::MAX as u32;

/// Holder-slot layout: `pid << 42 | (start time mod 2^26) << 16 | held`.
const HELD_BITS: u32 = 16;
const HELD_MASK: u64 = (1 << HELD_BITS) - 1;
const TAG_BITS: u32 = 26;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;

fn slot_key(me: sys::Me) -> u64 {
    let start = me.stamp & ((1 << sys::START_BITS) - 1);
    (u64::from(me.id) << sys::START_BITS) | ((start & TAG_MASK) << HELD_BITS)
}

/// The shared-memory block of a [`Semaphore`]: see its "Shared-memory layout" section.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct RawSemaphore {
    header: Header,
    count: AtomicU32,
    max: AtomicU32,
    waiters: AtomicU32,
    reserved: AtomicU32,
    slots: [AtomicU64; HOLDER_SLOTS],
}

// SAFETY: #[repr(C)], made only of atomics.
unsafe impl AtomicBlock for RawSemaphore {}

/// How to initialise a [`Semaphore`] or [`BoundedSemaphore`].
#[derive(Clone, Debug)]
pub struct SemaphoreOptions {
    shared: bool,
    track: bool,
    check_interval: Duration,
}

impl Default for SemaphoreOptions {
    fn default() -> Self {
        SemaphoreOptions {
            shared: true,
            track: true,
            check_interval: super::DEFAULT_CHECK_INTERVAL,
        }
    }
}

impl SemaphoreOptions {
    /// The defaults: shared between processes, holders tracked, 20 ms check interval.
    pub fn new() -> SemaphoreOptions {
        SemaphoreOptions::default()
    }

    /// Whether other processes use it (`true`); `false` uses process-private futexes.
    pub fn shared(mut self, shared: bool) -> SemaphoreOptions {
        self.shared = shared;
        self
    }

    /// Whether to record which processes hold permits (`true`), so the permits of a
    /// process that dies come back. Then at most [`HOLDER_SLOTS`] processes can hold
    /// permits at once. Say `false` for a semaphore used to count events between a
    /// producer and consumers, where an acquired permit is consumed, never given back.
    pub fn track_holders(mut self, track: bool) -> SemaphoreOptions {
        self.track = track;
        self
    }

    /// How often a waiter that finds no permit looks for permits held by dead
    /// processes (20 ms by default, at least 1 ms).
    pub fn check_interval(mut self, interval: Duration) -> SemaphoreOptions {
        self.check_interval = interval;
        self
    }
}

/// A counting semaphore placed in shared memory (billiard's `Semaphore`).
///
/// `release` raises the count, even above the initial value (up to `SEM_VALUE_MAX`);
/// anybody may release. `acquire` answers `Ok(true)` or, when its timeout passes,
/// `Ok(false)`.
///
/// # Dead holders
///
/// The semaphore records how many permits each process holds (at most
/// [`HOLDER_SLOTS`] processes at once). A waiter that finds no permit for a check
/// interval returns the permits of dead processes to the count. A release by a
/// process that holds no permit is counted as a new permit (it records nobody).
///
/// ```
/// use locksmith::shm::{Region, Semaphore};
/// let region = Region::anonymous(Semaphore::SIZE)?;
/// let sem = Semaphore::init(region.place_at(0, Semaphore::SIZE)?, 1)?;
/// assert!(sem.try_acquire()?);
/// assert!(!sem.try_acquire()?);
/// sem.release()?;
/// assert_eq!(sem.value(), 1);
/// # Ok::<(), locksmith::Error>(())
/// ```
///
/// # Shared-memory layout
///
/// 128 bytes, aligned to 8; native-endian words (little-endian on x86_64 and aarch64); no pointers.
///
/// | offset | word | values |
/// | --- | --- | --- |
/// | 0 | header | flags: shared, bounded, track holders |
/// | 16 | `count` (futex) | permits available, `0 ..= max` |
/// | 20 | `max` | the bound (initial value) of a bounded semaphore, else `SEM_VALUE_MAX` |
/// | 24 | `waiters` | threads in the slow path of `acquire` (so `release` can skip the wake) |
/// | 28 | `reserved` | 0 |
/// | 32 | `slots[12]` | `0` free · `pid << 42 \| (start time mod 2^26) << 16 \| held`: process `pid` holds `held` permits |
///
/// Acquire takes a permit (`count: c → c-1`) *then* records it in the caller's slot;
/// release removes it from the slot *then* returns it (`count: c → c+1`). A process
/// killed between the two steps leaks one permit; no order of events gives out more
/// permits than exist. Each slot changes by one compare-and-swap, so a reclaimer
/// (`slot → 0`, `count += held`) and the slot's live owner never both succeed.
#[derive(Clone, Copy, Debug)]
pub struct Semaphore<'a> {
    raw: &'a RawSemaphore,
}

impl Placed for Semaphore<'_> {
    const SIZE: usize = Semaphore::SIZE;
}

impl<'a> Semaphore<'a> {
    /// Bytes a semaphore occupies (128).
    pub const SIZE: usize = std::mem::size_of::<RawSemaphore>();

    /// Initialises a semaphore with `value` permits and the default options.
    pub fn init(place: impl Into<Place<'a>>, value: u32) -> Result<Semaphore<'a>> {
        Semaphore::init_with(place, value, &SemaphoreOptions::new())
    }

    /// Initialises a semaphore with `value` permits (at most `i32::MAX`).
    pub fn init_with(
        place: impl Into<Place<'a>>,
        value: u32,
        options: &SemaphoreOptions,
    ) -> Result<Semaphore<'a>> {
        init(place.into(), value, false, options)
    }

    /// Attaches to a semaphore (bounded or not) initialised by somebody else.
    pub fn attach(place: impl Into<Place<'a>>) -> Result<Semaphore<'a>> {
        let raw: &RawSemaphore = place.into().view("a Semaphore")?;
        raw.header.check(Kind::Semaphore)?;
        Ok(Semaphore { raw })
    }

    /// Takes a permit: `None` waits for ever, `Some(ZERO)` only tries, `Some(d)` waits
    /// at most `d`. `Ok(false)` when no permit came in time.
    ///
    /// An error ([`Error::Backend`]) when the holder table is full (see
    /// [`HOLDER_SLOTS`]); the permit is then given back.
    #[inline]
    pub fn acquire(&self, timeout: Option<Duration>) -> Result<bool> {
        let raw = self.raw;
        let c = raw.count.load(Ordering::Relaxed);
        if c > 0
            && c <= VALUE_MAX
            && raw
                .count
                .compare_exchange(c, c - 1, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
        {
            self.record()?;
            return Ok(true);
        }
        self.acquire_slow(timeout)
    }

    /// Takes a permit if one is available now.
    pub fn try_acquire(&self) -> Result<bool> {
        self.acquire(Some(Duration::ZERO))
    }

    #[cold]
    fn acquire_slow(&self, timeout: Option<Duration>) -> Result<bool> {
        let raw = self.raw;
        raw.header.check(Kind::Semaphore)?;
        let flags = raw.header.flags();
        let shared = flags & FLAG_SHARED != 0;
        let track = flags & FLAG_TRACK != 0;
        let interval = raw.header.check_interval();
        let deadline = Deadline::after(timeout);
        let try_only = timeout == Some(Duration::ZERO);
        let mut last_check = Instant::now();
        raw.waiters.fetch_add(1, Ordering::SeqCst);
        let got = loop {
            if !raw.header.is_live() {
                break Err(Error::invalid("the Semaphore was destroyed"));
            }
            let c = raw.count.load(Ordering::SeqCst);
            if c > 0 {
                if raw
                    .count
                    .compare_exchange(c, c - 1, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
                {
                    break Ok(true);
                }
                continue;
            }
            let due = track
                && if try_only {
                    raw.header.try_check_due()
                } else {
                    last_check.elapsed() >= interval
                };
            if due {
                last_check = Instant::now();
                if self.reclaim_dead() > 0 {
                    continue;
                }
            }
            if deadline.passed() {
                break Ok(false);
            }
            futex::wait(&raw.count, 0, Some(deadline.slice(interval)), shared);
        };
        raw.waiters.fetch_sub(1, Ordering::SeqCst);
        if got? {
            self.record()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Records one more permit held by the calling process.
    fn record(&self) -> Result<()> {
        let raw = self.raw;
        if raw.header.flags() & FLAG_TRACK == 0 {
            return Ok(());
        }
        let key = slot_key(sys::process());
        for attempt in 0..2 {
            if self.slot_add(key) {
                return Ok(());
            }
            if attempt == 0 {
                self.reclaim_dead();
            }
        }
        // No room: give the permit back so nothing changed.
        self.give_back(1);
        Err(Error::backend(format!(
            "the semaphore's holder table is full: at most {HOLDER_SLOTS} processes can hold permits at once (or initialise it with track_holders(false))"
        )))
    }

    fn slot_add(&self, key: u64) -> bool {
        // Our own slot first, then a free one.
        for slot in &self.raw.slots {
            let mut v = slot.load(Ordering::Relaxed);
            while v & !HELD_MASK == key {
                if v & HELD_MASK == HELD_MASK {
                    // 65535 permits recorded for this process already: more are granted
                    // but not recorded (they are not reclaimed if it dies), rather than
                    // filling the table with one process.
                    return true;
                }
                match slot.compare_exchange(v, v + 1, Ordering::SeqCst, Ordering::Relaxed) {
                    Ok(_) => return true,
                    Err(now) => v = now,
                }
            }
        }
        for slot in &self.raw.slots {
            if slot
                .compare_exchange(0, key | 1, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                return true;
            }
        }
        false
    }

    /// Removes one permit from the calling process's slot; false when it holds none.
    fn slot_remove(&self, key: u64) -> bool {
        for slot in &self.raw.slots {
            let mut v = slot.load(Ordering::Relaxed);
            while v & !HELD_MASK == key && v & HELD_MASK > 0 {
                // The last permit frees the slot.
                let new = if v & HELD_MASK == 1 { 0 } else { v - 1 };
                match slot.compare_exchange(v, new, Ordering::SeqCst, Ordering::Relaxed) {
                    Ok(_) => return true,
                    Err(now) => v = now,
                }
            }
        }
        false
    }

    /// Returns the permits of dead processes to the count; how many came back.
    fn reclaim_dead(&self) -> u32 {
        let me = slot_key(sys::process());
        let mut total = 0u32;
        for slot in &self.raw.slots {
            let v = slot.load(Ordering::SeqCst);
            if v == 0 || v & !HELD_MASK == me {
                continue;
            }
            let pid = (v >> sys::START_BITS) as u32;
            let tag = (v >> HELD_BITS) & TAG_MASK;
            if sys::alive(pid, tag, TAG_MASK, true) == Liveness::Dead
                && slot
                    .compare_exchange(v, 0, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            {
                let n = (v & HELD_MASK) as u32;
                total = total.saturating_add(n);
            }
        }
        if total > 0 {
            self.give_back(total);
        }
        total
    }

    /// `count += n` (capped at the bound), waking waiters.
    fn give_back(&self, n: u32) {
        let raw = self.raw;
        let cap = raw.max.load(Ordering::Relaxed);
        let mut c = raw.count.load(Ordering::Relaxed);
        loop {
            let new = c.saturating_add(n).min(cap);
            match raw
                .count
                .compare_exchange(c, new, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => c = now,
            }
        }
        if raw.waiters.load(Ordering::SeqCst) > 0 {
            futex::wake(&raw.count, n, raw.header.flags() & FLAG_SHARED != 0);
        }
    }

    /// Returns a permit (raises the count by one).
    ///
    /// [`Error::TooManyReleases`] (`EOVERFLOW`) when a bounded semaphore is already at
    /// its initial value or any semaphore at `SEM_VALUE_MAX`; nothing changes then.
    pub fn release(&self) -> Result<()> {
        let raw = self.raw;
        raw.header.check(Kind::Semaphore)?;
        let flags = raw.header.flags();
        let cap = raw.max.load(Ordering::Relaxed);
        if raw.count.load(Ordering::Relaxed) >= cap {
            return Err(Error::TooManyReleases { name: NAME.into() });
        }
        let key = slot_key(sys::process());
        let removed = flags & FLAG_TRACK != 0 && self.slot_remove(key);
        let mut c = raw.count.load(Ordering::Relaxed);
        loop {
            if c >= cap {
                if removed {
                    let _ = self.slot_add(key);
                }
                return Err(Error::TooManyReleases { name: NAME.into() });
            }
            match raw
                .count
                .compare_exchange(c, c + 1, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => c = now,
            }
        }
        if raw.waiters.load(Ordering::SeqCst) > 0 {
            futex::wake(&raw.count, 1, flags & FLAG_SHARED != 0);
        }
        Ok(())
    }

    /// Permits available now (billiard's `get_value`).
    pub fn value(&self) -> u32 {
        self.raw.count.load(Ordering::Relaxed)
    }

    /// True for a bounded semaphore.
    pub fn is_bounded(&self) -> bool {
        self.raw.header.flags() & FLAG_BOUNDED != 0
    }

    /// Permits recorded as held by the calling process (0 when holders are not tracked).
    pub fn held_by_me(&self) -> u32 {
        let key = slot_key(sys::process());
        self.raw
            .slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|v| *v != 0 && v & !HELD_MASK == key)
            .map(|v| (v & HELD_MASK) as u32)
            .sum()
    }

    /// Returns the permits of dead processes now, without waiting for a waiter to do
    /// it; how many came back.
    pub fn reclaim(&self) -> Result<u32> {
        self.raw.header.check(Kind::Semaphore)?;
        Ok(self.reclaim_dead())
    }

    /// Destroys the semaphore; later operations answer `EINVAL`, waiters wake with it.
    pub fn destroy(&self) -> Result<()> {
        self.raw.header.destroy(Kind::Semaphore)?;
        // No permits left: the fast path of `acquire` fails and finds the header.
        self.raw.count.store(0, Ordering::SeqCst);
        futex::wake(&self.raw.count, u32::MAX, true);
        futex::wake(&self.raw.count, u32::MAX, false);
        Ok(())
    }
}

fn init<'a>(
    place: Place<'a>,
    value: u32,
    bounded: bool,
    options: &SemaphoreOptions,
) -> Result<Semaphore<'a>> {
    if value > VALUE_MAX {
        return Err(Error::invalid(format!(
            "a semaphore's value must be at most {VALUE_MAX}, not {value}"
        )));
    }
    if bounded && value == 0 {
        return Err(Error::invalid(
            "a bounded semaphore needs an initial value of at least 1",
        ));
    }
    let raw: &RawSemaphore = place.view("a Semaphore")?;
    raw.header.begin_init(Kind::Semaphore)?;
    raw.count.store(value, Ordering::Relaxed);
    raw.max
        .store(if bounded { value } else { VALUE_MAX }, Ordering::Relaxed);
    raw.waiters.store(0, Ordering::Relaxed);
    raw.reserved.store(0, Ordering::Relaxed);
    for s in &raw.slots {
        s.store(0, Ordering::Relaxed);
    }
    let mut flags = 0;
    if options.shared {
        flags |= FLAG_SHARED;
    }
    if options.track {
        flags |= FLAG_TRACK;
    }
    if bounded {
        flags |= FLAG_BOUNDED;
    }
    raw.header
        .finish_init(Kind::Semaphore, flags, options.check_interval);
    Ok(Semaphore { raw })
}

/// A semaphore that refuses to go above its initial value (billiard's
/// `BoundedSemaphore`): a release at the bound is [`Error::TooManyReleases`].
///
/// The same block and behaviour as [`Semaphore`] otherwise.
///
/// ```
/// use locksmith::shm::{BoundedSemaphore, Region};
/// let region = Region::anonymous(BoundedSemaphore::SIZE)?;
/// let sem = BoundedSemaphore::init(region.place_at(0, BoundedSemaphore::SIZE)?, 2)?;
/// assert_eq!(sem.release().unwrap_err().errno(), libc::EOVERFLOW);
/// assert!(sem.acquire(None)?);
/// sem.release()?;
/// # Ok::<(), locksmith::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct BoundedSemaphore<'a> {
    inner: Semaphore<'a>,
}

impl Placed for BoundedSemaphore<'_> {
    const SIZE: usize = Semaphore::SIZE;
}

impl<'a> BoundedSemaphore<'a> {
    /// Bytes a bounded semaphore occupies (128).
    pub const SIZE: usize = Semaphore::SIZE;

    /// Initialises a bounded semaphore of `value` (1 ..= `i32::MAX`) permits.
    pub fn init(place: impl Into<Place<'a>>, value: u32) -> Result<BoundedSemaphore<'a>> {
        BoundedSemaphore::init_with(place, value, &SemaphoreOptions::new())
    }

    /// Initialises a bounded semaphore with options.
    pub fn init_with(
        place: impl Into<Place<'a>>,
        value: u32,
        options: &SemaphoreOptions,
    ) -> Result<BoundedSemaphore<'a>> {
        Ok(BoundedSemaphore {
            inner: init(place.into(), value, true, options)?,
        })
    }

    /// Attaches to a bounded semaphore; an unbounded one is refused.
    pub fn attach(place: impl Into<Place<'a>>) -> Result<BoundedSemaphore<'a>> {
        let inner = Semaphore::attach(place)?;
        if !inner.is_bounded() {
            return Err(Error::invalid(
                "the buffer holds a Semaphore, not a BoundedSemaphore",
            ));
        }
        Ok(BoundedSemaphore { inner })
    }

    /// See [`Semaphore::acquire`].
    pub fn acquire(&self, timeout: Option<Duration>) -> Result<bool> {
        self.inner.acquire(timeout)
    }

    /// See [`Semaphore::try_acquire`].
    pub fn try_acquire(&self) -> Result<bool> {
        self.inner.try_acquire()
    }

    /// Returns a permit; [`Error::TooManyReleases`] at the bound.
    pub fn release(&self) -> Result<()> {
        self.inner.release()
    }

    /// Permits available now.
    pub fn value(&self) -> u32 {
        self.inner.value()
    }

    /// The bound (the initial value).
    pub fn max_value(&self) -> u32 {
        self.inner.raw.max.load(Ordering::Relaxed)
    }

    /// See [`Semaphore::held_by_me`].
    pub fn held_by_me(&self) -> u32 {
        self.inner.held_by_me()
    }

    /// See [`Semaphore::reclaim`].
    pub fn reclaim(&self) -> Result<u32> {
        self.inner.reclaim()
    }

    /// See [`Semaphore::destroy`].
    pub fn destroy(&self) -> Result<()> {
        self.inner.destroy()
    }

    /// The unbounded view of the same block.
    pub fn as_semaphore(&self) -> Semaphore<'a> {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(8))]
    struct Buf([u8; 128]);

    #[test]
    fn size_is_128() {
        assert_eq!(Semaphore::SIZE, 128);
    }

    #[test]
    fn counts_and_bounds() {
        let mut buf = Buf([0; 128]);
        let s = Semaphore::init(&mut buf.0[..], 0).unwrap();
        assert!(!s.try_acquire().unwrap());
        assert!(!s.acquire(Some(Duration::from_millis(5))).unwrap());
        s.release().unwrap();
        s.release().unwrap();
        assert_eq!(s.value(), 2);
        assert!(s.acquire(None).unwrap());
        assert_eq!(s.held_by_me(), 1);
        s.release().unwrap();
        s.destroy().unwrap();
        assert_eq!(s.acquire(None).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(s.release().unwrap_err().errno(), libc::EINVAL);

        let mut buf = Buf([0; 128]);
        assert!(BoundedSemaphore::init(&mut buf.0[..], 0).is_err());
        assert!(Semaphore::init(&mut buf.0[..], u32::MAX).is_err());
        let b = BoundedSemaphore::init(&mut buf.0[..], 2).unwrap();
        assert_eq!(b.release().unwrap_err().errno(), libc::EOVERFLOW);
        assert!(b.acquire(None).unwrap());
        assert!(b.acquire(None).unwrap());
        assert!(!b.try_acquire().unwrap());
        assert_eq!(b.held_by_me(), 2);
        b.release().unwrap();
        b.release().unwrap();
        assert_eq!(b.held_by_me(), 0);
        assert!(b.release().is_err());
        assert_eq!(b.value(), 2);
    }

    #[test]
    fn dead_slots_are_reclaimed() {
        let mut buf = Buf([0; 128]);
        let s = BoundedSemaphore::init(&mut buf.0[..], 3).unwrap();
        // Forge a slot for a process that does not exist (pid 0x3FFFFF is above
        // any pid_max in use), holding 2 permits.
        assert!(s.acquire(None).unwrap());
        assert!(s.acquire(None).unwrap());
        let raw = s.inner.raw;
        let mine = raw
            .slots
            .iter()
            .position(|x| x.load(Ordering::Relaxed) != 0)
            .unwrap();
        let forged = (u64::from(sys::ID_MASK) << sys::START_BITS) | (5 << HELD_BITS) | 2;
        raw.slots[mine].store(forged, Ordering::Relaxed);
        assert_eq!(s.value(), 1);
        assert_eq!(s.reclaim().unwrap(), 2);
        assert_eq!(s.value(), 3);
    }

    #[test]
    fn full_holder_table_is_a_clear_error_that_changes_nothing() {
        let mut buf = Buf([0; 128]);
        let s = Semaphore::init(&mut buf.0[..], 5).unwrap();
        // Fill every slot with a live process (the parent of this test process,
        // stamped with its real start time), as if 12 other processes held permits.
        // SAFETY: getppid has no preconditions.
        let ppid = unsafe { libc::getppid() } as u32;
        let start = crate::os::liveness::read_stat(&format!("/proc/{ppid}/stat"))
            .unwrap()
            .start;
        let key = slot_key(sys::Me {
            id: ppid,
            stamp: sys::stamp(ppid, start),
        });
        for slot in &s.raw.slots {
            slot.store(key | 1, Ordering::Relaxed);
        }
        let err = s.acquire(None).unwrap_err();
        assert!(err.to_string().contains("holder table is full"), "{err}");
        assert_eq!(s.value(), 5, "the permit was given back");
        // Untracked semaphores have no such limit.
        let mut buf = Buf([0; 128]);
        let u = Semaphore::init_with(
            &mut buf.0[..],
            5,
            &SemaphoreOptions::new().track_holders(false),
        )
        .unwrap();
        assert!(u.acquire(None).unwrap());
        assert_eq!(u.held_by_me(), 0);
    }

    #[test]
    fn threads_never_exceed_k() {
        let mut buf = Buf([0; 128]);
        let s = Semaphore::init_with(&mut buf.0[..], 3, &SemaphoreOptions::new().shared(false))
            .unwrap();
        let inside = AtomicU32::new(0);
        let max = AtomicU32::new(0);
        std::thread::scope(|sc| {
            for _ in 0..6 {
                sc.spawn(|| {
                    for _ in 0..2_000 {
                        assert!(s.acquire(None).unwrap());
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(n, Ordering::SeqCst);
                        inside.fetch_sub(1, Ordering::SeqCst);
                        s.release().unwrap();
                    }
                });
            }
        });
        assert!(max.load(Ordering::SeqCst) <= 3);
        assert_eq!(s.value(), 3);
        assert_eq!(s.held_by_me(), 0);
    }
}
