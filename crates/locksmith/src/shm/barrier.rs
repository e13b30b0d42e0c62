//! The placed barrier (billiard's / CPython's `Barrier`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::sys::{self, Deadline, Liveness};
use super::{AtomicBlock, Header, Kind, Place, Placed, FLAG_SHARED};
use crate::os::futex;
use crate::{Error, Result};

const NAME: &str = "shm::Barrier";

/// How many processes a barrier watches for death (the first to wait on it).
pub const MEMBER_SLOTS: usize = 12;

const COUNT_MASK: u32 = 0xffff;
const GEN_SHIFT: u32 = 16;
const GEN_MASK: u32 = 0xff << GEN_SHIFT;
const EPOCH_SHIFT: u32 = 24;
const EPOCH_MASK: u32 = 0x7f << EPOCH_SHIFT;
const BROKEN: u32 = 1 << 31;

fn gen(w: u32) -> u32 {
    w & GEN_MASK
}
fn epoch(w: u32) -> u32 {
    w & EPOCH_MASK
}

/// The shared-memory block of a [`Barrier`]: see its "Shared-memory layout" section.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct RawBarrier {
    header: Header,
    state: AtomicU32,
    parties: AtomicU32,
    reserved: [AtomicU32; 2],
    members: [AtomicU64; MEMBER_SLOTS],
}

// SAFETY: #[repr(C)], made only of atomics.
unsafe impl AtomicBlock for RawBarrier {}

/// A cyclic barrier placed in shared memory: `parties` threads or processes call
/// [`Barrier::wait`], and all return once the last one arrives.
///
/// Like CPython's: each `wait` returns an arrival index in `0..parties` (the last
/// arrival gets `parties - 1`); a wait that times out breaks the barrier; once broken,
/// every `wait` answers [`Error::BrokenBarrier`] until [`Barrier::reset`].
///
/// # Dead members
///
/// The first [`MEMBER_SLOTS`] processes that wait on the barrier are its *members*. A
/// waiter that has waited a check interval looks for dead members; finding one, it
/// breaks the barrier, so nobody waits for ever for a party that will never come. A
/// process that is done with the barrier while others go on using it should call
/// [`Barrier::leave`]; `reset` forgets dead members.
///
/// ```
/// use locksmith::shm::{Barrier, Region};
/// let region = Region::anonymous(Barrier::SIZE)?;
/// let b = Barrier::init(region.place_at(0, Barrier::SIZE)?, 1, true)?;
/// assert_eq!(b.wait(None)?, 0);
/// b.abort()?;
/// assert!(b.is_broken());
/// assert_eq!(b.wait(None).unwrap_err().errno(), libc::EPIPE);
/// b.reset()?;
/// assert_eq!(b.wait(None)?, 0);
/// # Ok::<(), locksmith::Error>(())
/// ```
///
/// # Shared-memory layout
///
/// 128 bytes, aligned to 8; native-endian words (little-endian on x86_64 and aarch64); no pointers.
///
/// | offset | word | values |
/// | --- | --- | --- |
/// | 0 | header | flags: shared |
/// | 16 | `state` (futex) | `broken << 31 \| epoch << 24 \| generation << 16 \| arrived`; `arrived == parties` while the last arrival runs its action |
/// | 20 | `parties` | 1 ..= 65535 |
/// | 24, 28 | reserved | 0 |
/// | 32 | `members[12]` | `0` free · stamp (`pid << 42 \| start time`) of a process that waits on this barrier |
///
/// An arrival adds one to `arrived`; the last one sets `arrived` to 0 and adds one to
/// the generation (mod 256), which releases the waiters of that generation. `reset`
/// adds one to the epoch (mod 128), clears `broken` and `arrived`: waiters of the old
/// epoch whose generation did not change get `BrokenBarrier`. `abort`, a timeout or
/// a dead member sets `broken`.
#[derive(Clone, Copy, Debug)]
pub struct Barrier<'a> {
    raw: &'a RawBarrier,
}

impl Placed for Barrier<'_> {
    const SIZE: usize = Barrier::SIZE;
}

impl<'a> Barrier<'a> {
    /// Bytes a barrier occupies (128).
    pub const SIZE: usize = std::mem::size_of::<RawBarrier>();

    /// Initialises a barrier for `parties` (1 ..= 65535) with the default check
    /// interval. `shared`: whether other processes use it.
    pub fn init(place: impl Into<Place<'a>>, parties: u32, shared: bool) -> Result<Barrier<'a>> {
        Barrier::init_with(place, parties, shared, super::DEFAULT_CHECK_INTERVAL)
    }

    /// Initialises a barrier, choosing how often waiters look for dead members.
    pub fn init_with(
        place: impl Into<Place<'a>>,
        parties: u32,
        shared: bool,
        check_interval: Duration,
    ) -> Result<Barrier<'a>> {
        if parties == 0 || parties > COUNT_MASK {
            return Err(Error::invalid(format!(
                "a barrier needs 1 to {COUNT_MASK} parties, not {parties}"
            )));
        }
        let raw: &RawBarrier = place.into().view("a Barrier")?;
        raw.header.begin_init(Kind::Barrier)?;
        raw.state.store(0, Ordering::Relaxed);
        raw.parties.store(parties, Ordering::Relaxed);
        for r in &raw.reserved {
            r.store(0, Ordering::Relaxed);
        }
        for m in &raw.members {
            m.store(0, Ordering::Relaxed);
        }
        raw.header.finish_init(
            Kind::Barrier,
            if shared { FLAG_SHARED } else { 0 },
            check_interval,
        );
        Ok(Barrier { raw })
    }

    /// Attaches to a barrier initialised by somebody else.
    pub fn attach(place: impl Into<Place<'a>>) -> Result<Barrier<'a>> {
        let raw: &RawBarrier = place.into().view("a Barrier")?;
        raw.header.check(Kind::Barrier)?;
        Ok(Barrier { raw })
    }

    /// The number of parties.
    pub fn parties(&self) -> u32 {
        self.raw.parties.load(Ordering::Relaxed)
    }

    /// How many parties are waiting now (0 when broken).
    pub fn n_waiting(&self) -> u32 {
        let w = self.raw.state.load(Ordering::Acquire);
        if w & BROKEN != 0 {
            0
        } else {
            // While the last arrival runs its action the count is `parties`; the
            // others are the ones waiting.
            (w & COUNT_MASK).min(self.parties().saturating_sub(1))
        }
    }

    /// True when the barrier is broken.
    pub fn is_broken(&self) -> bool {
        self.raw.state.load(Ordering::Acquire) & BROKEN != 0
    }

    fn shared(&self) -> bool {
        self.raw.header.flags() & FLAG_SHARED != 0
    }

    fn wake_all(&self) {
        futex::wake(&self.raw.state, u32::MAX, self.shared());
    }

    fn broken() -> Error {
        Error::BrokenBarrier {
            name: NAME.into(),
            cause: crate::BrokenCause::Unknown,
        }
    }

    /// Waits until all parties have arrived (`None`: for ever; `Some(d)`: at most `d`,
    /// after which the barrier breaks) and answers this arrival's index.
    ///
    /// [`Error::BrokenBarrier`] (`EPIPE`) when the barrier is or becomes broken, is
    /// reset during the wait, the wait times out, or a member died.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<u32> {
        self.arrive(timeout, None::<fn()>)
    }

    /// [`Barrier::wait`], and if this call is the last arrival, runs `action` before
    /// anybody is released (CPython's `Barrier(action=…)`; the action is this
    /// caller's, not stored in shared memory).
    ///
    /// If `action` panics, the barrier breaks (the others get
    /// [`Error::BrokenBarrier`]) and the panic goes on in this caller. If the barrier is
    /// broken or reset while the action runs, this call answers `BrokenBarrier` too.
    ///
    /// ```
    /// use locksmith::shm::{Barrier, Region};
    /// let region = Region::anonymous(Barrier::SIZE)?;
    /// let b = Barrier::init(region.place_at(0, Barrier::SIZE)?, 1, false)?;
    /// let mut ran = false;
    /// assert_eq!(b.wait_with_action(None, || ran = true)?, 0);
    /// assert!(ran);
    /// # Ok::<(), locksmith::Error>(())
    /// ```
    pub fn wait_with_action(
        &self,
        timeout: Option<Duration>,
        action: impl FnOnce(),
    ) -> Result<u32> {
        self.arrive(timeout, Some(action))
    }

    fn arrive<F: FnOnce()>(&self, timeout: Option<Duration>, action: Option<F>) -> Result<u32> {
        let raw = self.raw;
        raw.header.check(Kind::Barrier)?;
        self.join();
        let parties = self.parties();
        if parties == 0 || parties > COUNT_MASK {
            return Err(Error::invalid(format!(
                "the barrier's block is corrupt: {parties} parties"
            )));
        }
        let deadline = Deadline::after(timeout);
        let mut action = action;
        let mut w = raw.state.load(Ordering::Acquire);
        let index = loop {
            if w & BROKEN != 0 {
                return Err(Barrier::broken());
            }
            let arrived = w & COUNT_MASK;
            if arrived >= parties {
                // The last arrival of this generation is running its action: wait for
                // the generation to end before arriving in the next one.
                if deadline.passed() {
                    return Err(Barrier::broken());
                }
                let slice = deadline.slice(Duration::from_millis(50));
                futex::wait(&raw.state, w, Some(slice), self.shared());
                w = raw.state.load(Ordering::Acquire);
                continue;
            }
            if arrived + 1 == parties {
                let released = epoch(w) | (gen(w).wrapping_add(1 << GEN_SHIFT) & GEN_MASK);
                let Some(act) = action.take() else {
                    match raw.state.compare_exchange(
                        w,
                        released,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => {
                            self.wake_all();
                            return Ok(parties - 1);
                        }
                        Err(now) => {
                            w = now;
                            continue;
                        }
                    }
                };
                // Arrive as "acting" (count == parties), run the action, then release.
                if let Err(now) =
                    raw.state
                        .compare_exchange(w, w + 1, Ordering::AcqRel, Ordering::Acquire)
                {
                    action = Some(act);
                    w = now;
                    continue;
                }
                let acting = w + 1;
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(act));
                if let Err(panic) = ran {
                    let _ = raw.state.compare_exchange(
                        acting,
                        acting | BROKEN,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                    self.wake_all();
                    std::panic::resume_unwind(panic);
                }
                let done = raw.state.compare_exchange(
                    acting,
                    released,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                self.wake_all();
                return match done {
                    Ok(_) => Ok(parties - 1),
                    // Broken (a timeout, abort, dead member) or reset meanwhile.
                    Err(_) => Err(Barrier::broken()),
                };
            }
            match raw
                .state
                .compare_exchange(w, w + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break arrived,
                Err(now) => w = now,
            }
        };
        let (my_gen, my_epoch) = (gen(w), epoch(w));
        let interval = raw.header.check_interval();
        let mut last_check = Instant::now();
        loop {
            let w = raw.state.load(Ordering::Acquire);
            if gen(w) != my_gen {
                return Ok(index);
            }
            if w & BROKEN != 0 || epoch(w) != my_epoch {
                return Err(Barrier::broken());
            }
            if !raw.header.is_live() {
                return Err(Error::invalid("the Barrier was destroyed"));
            }
            let dead = if last_check.elapsed() >= interval {
                last_check = Instant::now();
                self.has_dead_member()
            } else {
                false
            };
            // A caller that stops the wait (`interrupt::checked`) leaves as a timeout
            // does: the party will not come, so the barrier breaks.
            if dead || deadline.passed() || crate::interrupt::stop() {
                // Break this generation, unless it was released meanwhile.
                if raw
                    .state
                    .compare_exchange(w, w | BROKEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.wake_all();
                    return Err(Barrier::broken());
                }
                continue;
            }
            let slice = crate::interrupt::slice(deadline.slice(interval));
            futex::wait(&raw.state, w, Some(slice), self.shared());
        }
    }

    /// Registers the calling process as a member, if it is not one and a slot is free.
    fn join(&self) {
        let me = sys::process().stamp;
        let members = &self.raw.members;
        if members.iter().any(|m| m.load(Ordering::Relaxed) == me) {
            return;
        }
        for m in members {
            if m.compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }

    fn has_dead_member(&self) -> bool {
        self.raw.members.iter().any(|m| {
            let s = m.load(Ordering::Acquire);
            s != 0 && sys::liveness(s, true) == Liveness::Dead
        })
    }

    /// Stops watching the calling process: its death or exit no longer breaks the
    /// barrier. Its next `wait` makes it a member again.
    pub fn leave(&self) -> Result<()> {
        self.raw.header.check(Kind::Barrier)?;
        let me = sys::process().stamp;
        for m in &self.raw.members {
            let _ = m.compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Breaks the barrier: current and future waiters get [`Error::BrokenBarrier`]
    /// until [`Barrier::reset`].
    pub fn abort(&self) -> Result<()> {
        self.raw.header.check(Kind::Barrier)?;
        self.raw.state.fetch_or(BROKEN, Ordering::AcqRel);
        self.wake_all();
        Ok(())
    }

    /// Returns the barrier to its initial state: waiters get
    /// [`Error::BrokenBarrier`], the barrier is no longer broken, and dead members
    /// are forgotten.
    pub fn reset(&self) -> Result<()> {
        let raw = self.raw;
        raw.header.check(Kind::Barrier)?;
        for m in &raw.members {
            let s = m.load(Ordering::Acquire);
            if s != 0 && sys::liveness(s, true) == Liveness::Dead {
                let _ = m.compare_exchange(s, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
        let mut w = raw.state.load(Ordering::Acquire);
        loop {
            let new = (epoch(w).wrapping_add(1 << EPOCH_SHIFT) & EPOCH_MASK) | gen(w);
            match raw
                .state
                .compare_exchange(w, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => w = now,
            }
        }
        self.wake_all();
        Ok(())
    }

    /// Destroys the barrier; later operations answer `EINVAL`.
    pub fn destroy(&self) -> Result<()> {
        self.raw.header.destroy(Kind::Barrier)?;
        self.raw.state.fetch_or(BROKEN, Ordering::AcqRel);
        futex::wake(&self.raw.state, u32::MAX, true);
        futex::wake(&self.raw.state, u32::MAX, false);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(8))]
    struct Buf([u8; 128]);

    #[test]
    fn threads_pass_phases_with_distinct_indices() {
        let mut buf = Buf([0; 128]);
        let b = Barrier::init(&mut buf.0[..], 3, false).unwrap();
        assert!(Barrier::init(&mut Buf([0; 128]).0[..], 0, false).is_err());
        let phase = AtomicU32::new(0);
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|_| {
                    s.spawn(|| {
                        let mut idx = Vec::new();
                        for p in 0..50 {
                            // Nobody may start phase p+1 before all finished phase p.
                            assert!(phase.load(Ordering::SeqCst) >= p * 3);
                            phase.fetch_add(1, Ordering::SeqCst);
                            idx.push(b.wait(Some(Duration::from_secs(60))).unwrap());
                            assert!(phase.load(Ordering::SeqCst) >= (p + 1) * 3);
                        }
                        idx
                    })
                })
                .collect();
            let all: Vec<Vec<u32>> = hs.into_iter().map(|h| h.join().unwrap()).collect();
            for p in 0..50 {
                let mut got: Vec<u32> = all.iter().map(|v| v[p]).collect();
                got.sort();
                assert_eq!(got, vec![0, 1, 2]);
            }
        });
    }

    #[test]
    fn timeout_breaks_and_reset_repairs() {
        let mut buf = Buf([0; 128]);
        let b = Barrier::init(&mut buf.0[..], 2, false).unwrap();
        assert_eq!(
            b.wait(Some(Duration::from_millis(5))).unwrap_err().errno(),
            libc::EPIPE
        );
        assert!(b.is_broken());
        assert_eq!(b.n_waiting(), 0);
        b.reset().unwrap();
        assert!(!b.is_broken());
        std::thread::scope(|s| {
            let h = s.spawn(|| b.wait(None));
            while b.n_waiting() < 1 {
                std::thread::yield_now();
            }
            b.reset().unwrap();
            assert_eq!(h.join().unwrap().unwrap_err().errno(), libc::EPIPE);
        });
        assert!(!b.is_broken());
    }
}
