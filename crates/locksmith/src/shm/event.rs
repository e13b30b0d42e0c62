//! The placed event (billiard's `Event`, with `threading.Event`'s wait semantics).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::sys::Deadline;
use super::{AtomicBlock, Header, Kind, Place, Placed, FLAG_SHARED};
use crate::os::futex::{self, Wake};
use crate::{Error, Result};

const SET: u32 = 1;

/// The shared-memory block of a [`Event`]: see its "Shared-memory layout" section.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct RawEvent {
    header: Header,
    state: AtomicU32,
    waiters: AtomicU32,
}

// SAFETY: #[repr(C)], made only of atomics.
unsafe impl AtomicBlock for RawEvent {}

/// An event placed in shared memory: a flag that `set` raises, `clear` lowers and
/// `wait` waits for.
///
/// `wait` answers `true` when the event was set at any moment during the wait, even if
/// it was cleared again before the waiter woke (threading's semantics, not billiard's).
///
/// ```
/// use locksmith::shm::{Event, Region};
/// use std::time::Duration;
/// let region = Region::anonymous(Event::SIZE)?;
/// let ev = Event::init(region.place_at(0, Event::SIZE)?, true)?;
/// assert!(!ev.wait(Some(Duration::from_millis(1)))?);
/// ev.set()?;
/// assert!(ev.is_set() && ev.wait(None)?);
/// ev.clear()?;
/// assert!(!ev.is_set());
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
/// | 16 | `state` (futex) | `generation << 1 \| set`; `set()` on a clear event adds one to the generation and sets bit 0; `clear()` clears bit 0 only |
/// | 20 | `waiters` | threads inside `wait` (so `set` can skip the wake) |
///
/// A waiter remembers the generation it started in: if the generation has changed when
/// it looks again, the event was set at some moment during its wait, and it answers
/// `true` even if the event has been cleared since (gh-57711).
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    raw: &'a RawEvent,
}

impl Placed for Event<'_> {
    const SIZE: usize = Event::SIZE;
}

impl<'a> Event<'a> {
    /// Bytes an event occupies (24).
    pub const SIZE: usize = std::mem::size_of::<RawEvent>();

    /// Initialises a clear event. `shared`: whether other processes use it.
    pub fn init(place: impl Into<Place<'a>>, shared: bool) -> Result<Event<'a>> {
        let raw: &RawEvent = place.into().view("an Event")?;
        raw.header.begin_init(Kind::Event)?;
        raw.state.store(0, Ordering::Relaxed);
        raw.waiters.store(0, Ordering::Relaxed);
        raw.header.finish_init(
            Kind::Event,
            if shared { FLAG_SHARED } else { 0 },
            super::DEFAULT_CHECK_INTERVAL,
        );
        Ok(Event { raw })
    }

    /// Attaches to an event initialised by somebody else.
    pub fn attach(place: impl Into<Place<'a>>) -> Result<Event<'a>> {
        let raw: &RawEvent = place.into().view("an Event")?;
        raw.header.check(Kind::Event)?;
        Ok(Event { raw })
    }

    /// True when the event is set.
    pub fn is_set(&self) -> bool {
        self.raw.state.load(Ordering::Acquire) & SET != 0
    }

    /// How many threads are inside [`Event::wait`] now (for diagnostics and tests; it
    /// may change at any moment). A thread counted here has already taken note of the
    /// state it started waiting in, so a later `set` wakes it with `true`.
    pub fn waiters(&self) -> u32 {
        self.raw.waiters.load(Ordering::SeqCst)
    }

    /// Sets the event and wakes every waiter. Setting a set event does nothing.
    pub fn set(&self) -> Result<()> {
        let raw = self.raw;
        raw.header.check(Kind::Event)?;
        let mut s = raw.state.load(Ordering::Relaxed);
        loop {
            if s & SET != 0 {
                return Ok(());
            }
            let new = (s & !SET).wrapping_add(2) | SET;
            match raw
                .state
                .compare_exchange(s, new, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        if raw.waiters.load(Ordering::SeqCst) > 0 {
            futex::wake(&raw.state, u32::MAX, self.shared());
        }
        Ok(())
    }

    /// Clears the event.
    pub fn clear(&self) -> Result<()> {
        self.raw.header.check(Kind::Event)?;
        self.raw.state.fetch_and(!SET, Ordering::SeqCst);
        Ok(())
    }

    /// Waits until the event is set: `None` for ever, `Some(d)` at most `d`. `Ok(true)`
    /// when it was set at some moment during the wait, `Ok(false)` on timeout.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        let raw = self.raw;
        let start = raw.state.load(Ordering::Acquire);
        if start & SET != 0 {
            return Ok(true);
        }
        raw.header.check(Kind::Event)?;
        let shared = self.shared();
        let deadline = Deadline::after(timeout);
        raw.waiters.fetch_add(1, Ordering::SeqCst);
        let result = loop {
            let now = raw.state.load(Ordering::SeqCst);
            if !raw.header.is_live() {
                break Err(Error::invalid("the Event was destroyed"));
            }
            if now & SET != 0 || (now & !SET) != (start & !SET) {
                break Ok(true);
            }
            if deadline.passed() {
                break Ok(false);
            }
            // Wake up now and then to notice a destroy made through a private futex.
            let slice = deadline.slice(Duration::from_secs(1));
            if futex::wait(&raw.state, now, Some(slice), shared) == Wake::TimedOut
                && deadline.passed()
            {
                let last = raw.state.load(Ordering::SeqCst);
                break Ok(last & SET != 0 || (last & !SET) != (start & !SET));
            }
        };
        raw.waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Destroys the event; later operations answer `EINVAL`.
    pub fn destroy(&self) -> Result<()> {
        self.raw.header.destroy(Kind::Event)?;
        // Change the word so sleepers wake and see the header.
        self.raw.state.fetch_xor(1 << 31, Ordering::SeqCst);
        futex::wake(&self.raw.state, u32::MAX, self.shared());
        Ok(())
    }

    fn shared(&self) -> bool {
        self.raw.header.flags() & FLAG_SHARED != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(8))]
    struct Buf([u8; 32]);

    #[test]
    fn set_then_clear_still_wakes_waiters_with_true() {
        let mut buf = Buf([0; 32]);
        let ev = Event::init(&mut buf.0[..], false).unwrap();
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| ev.wait(Some(Duration::from_secs(60))).unwrap()))
                .collect();
            // Every waiter has read the state once it counts itself in.
            while ev.raw.waiters.load(Ordering::SeqCst) < 4 {
                std::thread::yield_now();
            }
            ev.set().unwrap();
            ev.clear().unwrap();
            for h in hs {
                assert!(h.join().unwrap());
            }
        });
    }
}
