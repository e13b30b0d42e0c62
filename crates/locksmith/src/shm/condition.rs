//! The placed condition variable, used with a placed [`Mutex`](super::Mutex).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::sys::Deadline;
use super::{Acquired, AtomicBlock, Header, Kind, Mutex, MutexGuard, Place, Placed, FLAG_SHARED};
use crate::os::futex::{self, Wake};
use crate::Result;

/// The shared-memory block of a [`Condition`]: see its "Shared-memory layout" section.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct RawCondition {
    header: Header,
    seq: AtomicU32,
    waiters: AtomicU32,
}

// SAFETY: #[repr(C)], made only of atomics.
unsafe impl AtomicBlock for RawCondition {}

/// A condition variable placed in shared memory, used with a placed
/// [`Mutex`](super::Mutex) through its [`MutexGuard`].
///
/// `wait` releases the mutex (every level of a recursive one), sleeps until notified,
/// then takes the mutex back. Wakeups may be spurious, and `notify(n)` may wake more
/// than `n` waiters when waiters are arriving at that moment: wait in a loop on your
/// predicate, or use [`Condition::wait_while`].
///
/// ```
/// use locksmith::shm::{Condition, Layout, Mutex, MutexOptions, Region};
/// use std::time::Duration;
/// let mut layout = Layout::new();
/// let (m_at, c_at) = (layout.add::<Mutex>(), layout.add::<Condition>());
/// let region = Region::anonymous(layout.size())?;
/// let m = Mutex::init(region.place(m_at)?, &MutexOptions::new())?;
/// let c = Condition::init(region.place(c_at)?, true)?;
/// let mut guard = m.lock()?;
/// assert!(!c.wait(&mut guard, Some(Duration::from_millis(1)))?); // nobody notifies
/// c.notify_all()?;
/// # Ok::<(), locksmith::Error>(())
/// ```
///
/// # Shared-memory layout
///
/// 24 bytes, aligned to 8; native-endian words (little-endian on x86_64 and aarch64); no pointers.
///
/// | offset | word | values |
/// | --- | --- | --- |
/// | 0 | header | flags: shared |
/// | 16 | `seq` (futex) | a counter every `notify`/`notify_all` adds one to (wrapping) |
/// | 20 | `waiters` | threads inside `wait` (so `notify` can skip the system call) |
///
/// A waiter reads `seq` and counts itself in *before* releasing the mutex, then sleeps
/// while `seq` is unchanged; a notify made after the release changes `seq`, so it
/// cannot be missed.
#[derive(Clone, Copy, Debug)]
pub struct Condition<'a> {
    raw: &'a RawCondition,
}

impl Placed for Condition<'_> {
    const SIZE: usize = Condition::SIZE;
}

impl<'a> Condition<'a> {
    /// Bytes a condition occupies (24).
    pub const SIZE: usize = std::mem::size_of::<RawCondition>();

    /// Initialises a condition. `shared`: whether other processes use it.
    pub fn init(place: impl Into<Place<'a>>, shared: bool) -> Result<Condition<'a>> {
        let raw: &RawCondition = place.into().view("a Condition")?;
        raw.header.begin_init(Kind::Condition)?;
        raw.seq.store(0, Ordering::Relaxed);
        raw.waiters.store(0, Ordering::Relaxed);
        raw.header.finish_init(
            Kind::Condition,
            if shared { FLAG_SHARED } else { 0 },
            super::DEFAULT_CHECK_INTERVAL,
        );
        Ok(Condition { raw })
    }

    /// Attaches to a condition initialised by somebody else.
    pub fn attach(place: impl Into<Place<'a>>) -> Result<Condition<'a>> {
        let raw: &RawCondition = place.into().view("a Condition")?;
        raw.header.check(Kind::Condition)?;
        Ok(Condition { raw })
    }

    /// Releases the guard's mutex, waits for a notify (`None`: for ever; `Some(d)`: at
    /// most `d`), and takes the mutex back before returning, even on error or timeout.
    ///
    /// `Ok(true)` when woken (by a notify, or spuriously), `Ok(false)` on timeout. If
    /// the mutex's owner died while this thread waited to take it back, the guard's
    /// [`MutexGuard::previous_owner_died`] becomes true.
    pub fn wait(&self, guard: &mut MutexGuard<'_>, timeout: Option<Duration>) -> Result<bool> {
        let mut died = false;
        let woken = self.wait_on(guard.mutex(), timeout, &mut died);
        guard.set_died(died);
        woken
    }

    /// [`Condition::wait`] for a caller that holds `mutex` without a guard (it took it
    /// with [`Mutex::acquire`](super::Mutex::acquire), as a language binding does):
    /// releases every level the calling thread holds, waits, and takes them back before
    /// returning, even on error or timeout. Answers whether it was woken, and the
    /// re-acquisition (whose `previous_owner_died` tells of an owner that died
    /// meanwhile). `NotHeld`/`NotOwner` (`EPERM`) if the calling thread does not hold
    /// `mutex`, and nothing changes.
    pub fn wait_held(
        &self,
        mutex: &Mutex<'_>,
        timeout: Option<Duration>,
    ) -> Result<(bool, Acquired)> {
        let mut died = false;
        let woken = self.wait_on(*mutex, timeout, &mut died)?;
        Ok((woken, Acquired::new(died)))
    }

    fn wait_on(
        &self,
        mutex: Mutex<'_>,
        timeout: Option<Duration>,
        died: &mut bool,
    ) -> Result<bool> {
        let raw = self.raw;
        raw.header.check(Kind::Condition)?;
        let shared = raw.header.flags() & FLAG_SHARED != 0;
        let seq = raw.seq.load(Ordering::SeqCst);
        raw.waiters.fetch_add(1, Ordering::SeqCst);
        let saved = match mutex.release_all() {
            Ok(saved) => saved,
            Err(e) => {
                raw.waiters.fetch_sub(1, Ordering::SeqCst);
                return Err(e);
            }
        };
        let deadline = Deadline::after(timeout);
        let woken = loop {
            if raw.seq.load(Ordering::SeqCst) != seq {
                break true;
            }
            if deadline.passed() || !raw.header.is_live() {
                break false;
            }
            // Slices of one second notice a destroy made through another futex flag
            // (shorter under `interrupt::checked`, whose caller may stop the wait).
            let slice = crate::interrupt::slice(deadline.slice(Duration::from_secs(1)));
            match futex::wait(&raw.seq, seq, Some(slice), shared) {
                Wake::Maybe => {
                    if raw.seq.load(Ordering::SeqCst) != seq {
                        break true;
                    }
                    // A signal or a stray wake: wait again for what is left.
                }
                Wake::TimedOut => {}
            }
            if crate::interrupt::stop() {
                break raw.seq.load(Ordering::SeqCst) != seq;
            }
        };
        raw.waiters.fetch_sub(1, Ordering::SeqCst);
        let got = mutex.reacquire(saved)?;
        *died = got.previous_owner_died();
        raw.header.check(Kind::Condition)?;
        Ok(woken)
    }

    /// Waits while `condition` holds, re-checking it after every wakeup; answers the
    /// last value of `condition` negated: `Ok(true)` when it stopped holding,
    /// `Ok(false)` when the timeout passed first.
    pub fn wait_while(
        &self,
        guard: &mut MutexGuard<'_>,
        timeout: Option<Duration>,
        mut condition: impl FnMut() -> bool,
    ) -> Result<bool> {
        let deadline = Deadline::after(timeout);
        while condition() {
            let left = deadline.remaining();
            if left == Some(Duration::ZERO) {
                return Ok(false);
            }
            self.wait(guard, left)?;
        }
        Ok(true)
    }

    /// Wakes at most `n` waiters (maybe more when waiters are just arriving).
    pub fn notify(&self, n: u32) -> Result<()> {
        let raw = self.raw;
        raw.header.check(Kind::Condition)?;
        if n == 0 {
            return Ok(());
        }
        raw.seq.fetch_add(1, Ordering::SeqCst);
        if raw.waiters.load(Ordering::SeqCst) > 0 {
            futex::wake(&raw.seq, n, raw.header.flags() & FLAG_SHARED != 0);
        }
        Ok(())
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) -> Result<()> {
        self.notify(u32::MAX)
    }

    /// Destroys the condition; later operations answer `EINVAL`.
    pub fn destroy(&self) -> Result<()> {
        self.raw.header.destroy(Kind::Condition)?;
        self.raw.seq.fetch_add(1, Ordering::SeqCst);
        futex::wake(&self.raw.seq, u32::MAX, true);
        futex::wake(&self.raw.seq, u32::MAX, false);
        Ok(())
    }
}
