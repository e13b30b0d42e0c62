//! The `shm:` store's uncontended Lock: one word in the name's slot, shared by every
//! process that maps the region.
//!
//! A plain Lock (no lease, no tag) that nobody waits for needs none of the record's
//! machinery: whether it is held, by whom and with which fencing token fits in 64 bits,
//! and taking or giving it back is one compare-and-swap, as in the mem store's word
//! (`backend/mem/fast.rs`). Across processes the word must also say enough to judge a
//! dead holder: it names the holder's entry in the region's process table (written
//! once per process, before its first fast hold, with everything
//! [`crate::os::liveness`] needs) and its thread number.
//!
//! | bits | `SLOW` (0) | `FREE` (1) | `HELD` (2) / `CLOSED` (3) |
//! | --- | --- | --- | --- |
//! | 0–1 | mode | mode | mode |
//! | 2–23 | 0 | the slot's `state`, low 22 bits | 2–11: process entry; 12–23: thread number (0: a task) |
//! | 24–63 | 0 | the last fencing token handed out | the hold's fencing token |
//!
//! - `FREE` and `HELD` are the truth and the record is idle (no state, no tag): a
//!   `FREE` word carries its name's generation (the slot's `state`), so a process
//!   whose cached slot was reclaimed and given to another name never takes that
//!   name's lock; tokens only grow, so a `HELD` word never comes back once released.
//! - Every other step first closes the word under the slot's mutex ([`close`]): a
//!   `FREE` word goes `SLOW` at once; a `HELD` one goes `CLOSED` (no fast release can
//!   end it any more), the caller writes the hold into the record, publishes it, and
//!   only then stores `SLOW`. A process killed anywhere in between leaves a word
//!   that still says everything (`CLOSED` is folded again by the next step), so no
//!   hold is lost and no token handed out twice.
//! - A step that leaves the record idle opens the word again ([`open`]); while it is
//!   `SLOW` nobody takes the lock without the record, so nobody who queued is
//!   overtaken.

use std::num::NonZeroU64;
use std::sync::atomic::Ordering;

use crate::backend::FastHold;

const MODE: u64 = 0b11;
/// The record holds the truth; the fast path is closed.
pub(super) const SLOW: u64 = 0;
const FREE: u64 = 1;
const HELD: u64 = 2;
/// A hold being written into the record by a step that holds the slot's mutex.
const CLOSED: u64 = 3;

const PROC_SHIFT: u32 = 2;
const PROC_BITS: u32 = 10;
const THREAD_SHIFT: u32 = PROC_SHIFT + PROC_BITS;
const THREAD_BITS: u32 = 12;
const TOKEN_SHIFT: u32 = THREAD_SHIFT + THREAD_BITS;
/// Past this token the name stays on the general path (after 10¹² holds).
pub(super) const MAX_TOKEN: u64 = (1 << (64 - TOKEN_SHIFT)) - 1;
/// Threads numbered past this take the general path.
const MAX_THREAD: u64 = (1 << THREAD_BITS) - 1;
/// Entries in the region's process table.
pub(super) const PROCS: usize = 1 << PROC_BITS;
/// The bits of a slot's `state` that a `FREE` word carries.
const GENERATION: u64 = (1 << (PROC_BITS + THREAD_BITS)) - 1;

/// The atomic word: std's in the region, loom's in the model checks.
pub(super) trait Word {
    fn load(&self, order: Ordering) -> u64;
    fn store(&self, value: u64, order: Ordering);
    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;
}

macro_rules! word_impl {
    ($atomic:ty) => {
        impl Word for $atomic {
            fn load(&self, order: Ordering) -> u64 {
                <$atomic>::load(self, order)
            }
            fn store(&self, value: u64, order: Ordering) {
                <$atomic>::store(self, value, order)
            }
            fn compare_exchange(
                &self,
                current: u64,
                new: u64,
                success: Ordering,
                failure: Ordering,
            ) -> Result<u64, u64> {
                <$atomic>::compare_exchange(self, current, new, success, failure)
            }
        }
    };
}

word_impl!(std::sync::atomic::AtomicU64);
#[cfg(all(test, locksmith_loom))]
word_impl!(loom::sync::atomic::AtomicU64);

/// What a word held when a step closed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Closed {
    /// Already slow: the record is up to date.
    Slow,
    /// Free; `last_token` was the last fencing token handed out. The word is `SLOW`.
    Free { last_token: u64 },
    /// Held by thread `thread` (0: a task) of the process in entry `proc`, with
    /// `token`. The word is `CLOSED`: the caller writes the hold into the record,
    /// publishes it, then calls [`settle`].
    Held {
        token: u64,
        proc: usize,
        thread: u64,
    },
}

/// The `FREE` word of a name in generation `state` whose last token is `last_token`.
fn free_word(state: u32, last_token: u64) -> u64 {
    (last_token << TOKEN_SHIFT) | ((u64::from(state) & GENERATION) << PROC_SHIFT) | FREE
}

/// The word of a name just claimed (generation `state`), counting on from `floor`.
pub(super) fn fresh(state: u32, floor: u64) -> u64 {
    if floor < MAX_TOKEN {
        free_word(state, floor)
    } else {
        SLOW
    }
}

/// Takes the lock of the name in generation `state` for thread `thread` (0: a task)
/// of the process in entry `proc`, if it is free and nobody needs the record.
pub(super) fn try_acquire(
    word: &impl Word,
    state: u32,
    proc: usize,
    thread: u64,
) -> Option<FastHold> {
    if thread > MAX_THREAD || proc >= PROCS {
        return None;
    }
    let free = word.load(Ordering::Relaxed);
    // Also refuses another name's word (its generation differs).
    if free & !(MAX_TOKEN << TOKEN_SHIFT) != free_word(state, 0) {
        return None;
    }
    let token = (free >> TOKEN_SHIFT) + 1;
    if token > MAX_TOKEN {
        return None;
    }
    let held =
        (token << TOKEN_SHIFT) | (thread << THREAD_SHIFT) | ((proc as u64) << PROC_SHIFT) | HELD;
    // Acquire: the previous holder's critical section happened before ours. Release:
    // a step that closes the word sees the process entry it names.
    word.compare_exchange(free, held, Ordering::AcqRel, Ordering::Relaxed)
        .ok()?;
    Some(FastHold {
        token,
        word: NonZeroU64::new(held)?,
    })
}

/// Gives back `hold` of the name in generation `state`; `false` if the word was
/// closed since (the record has the hold, or is about to).
pub(super) fn try_release(word: &impl Word, state: u32, hold: FastHold) -> bool {
    word.compare_exchange(
        hold.word.get(),
        free_word(state, hold.token),
        Ordering::Release,
        Ordering::Relaxed,
    )
    .is_ok()
}

/// Closes the fast path and says what the word held. Call with the slot's mutex held.
/// `raise(token)` is called before the word changes, with a token the caller must
/// record as handed out (the slot's counter) before anything else: a process killed
/// right after the change then still never hands out that token again.
pub(super) fn close(word: &impl Word, mut raise: impl FnMut(u64)) -> Closed {
    let mut now = word.load(Ordering::Acquire);
    loop {
        let token = now >> TOKEN_SHIFT;
        let (next, closed) = match now & MODE {
            SLOW => return Closed::Slow,
            FREE => (SLOW, Closed::Free { last_token: token }),
            mode => {
                let closed = Closed::Held {
                    token,
                    proc: ((now >> PROC_SHIFT) & (PROCS as u64 - 1)) as usize,
                    thread: (now >> THREAD_SHIFT) & MAX_THREAD,
                };
                if mode == CLOSED {
                    // A step that closed it died before settling: its hold is still
                    // to be written into the record.
                    return closed;
                }
                (now | CLOSED, closed)
            }
        };
        raise(token);
        // AcqRel: whoever is granted next from the record comes after the fast
        // holder's critical section.
        match word.compare_exchange(now, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return closed,
            Err(seen) => now = seen,
        }
    }
}

/// Closes the word if it is free or already slow (answering `true`), never a hold.
/// Call with the slot's mutex held; `raise` as for [`close`].
pub(super) fn close_if_free(word: &impl Word, mut raise: impl FnMut(u64)) -> bool {
    let mut now = word.load(Ordering::Acquire);
    loop {
        match now & MODE {
            SLOW => return true,
            FREE => {
                raise(now >> TOKEN_SHIFT);
                match word.compare_exchange(now, SLOW, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return true,
                    Err(seen) => now = seen,
                }
            }
            _ => return false,
        }
    }
}

/// Ends a [`Closed::Held`] close once the record holding the hold is published.
pub(super) fn settle(word: &impl Word) {
    word.store(SLOW, Ordering::Release);
}

/// Opens the fast path again for the idle record of the name in generation `state`,
/// whose last fencing token is `last_token`. Call with the slot's mutex held, after
/// publishing the record.
pub(super) fn open(word: &impl Word, state: u32, last_token: u64) {
    if last_token < MAX_TOKEN {
        // Release: the next fast holder comes after everything done under the record.
        word.store(free_word(state, last_token), Ordering::Release);
    }
}

/// The process entry a word's hold names, if it is `HELD` or `CLOSED`: entries that a
/// word names are never reused.
pub(super) fn holder_proc(word: &impl Word) -> Option<usize> {
    let w = word.load(Ordering::Acquire);
    (w & MODE >= HELD).then_some(((w >> PROC_SHIFT) & (PROCS as u64 - 1)) as usize)
}

/// The last token a `FREE` word handed out; `None` for any other word.
pub(super) fn free_token(word: &impl Word) -> Option<u64> {
    let w = word.load(Ordering::Acquire);
    (w & MODE == FREE).then_some(w >> TOKEN_SHIFT)
}

#[cfg(all(test, locksmith_loom))]
#[path = "fast_loom.rs"]
mod loom_tests;

#[cfg(all(test, not(locksmith_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn holds_round_trip_and_close_keeps_them() {
        let word = AtomicU64::new(fresh(7, 40));
        let a = try_acquire(&word, 7, 3, 5).unwrap();
        assert_eq!(a.token, 41);
        assert_eq!(try_acquire(&word, 7, 4, 1), None, "held");
        assert!(try_release(&word, 7, a));
        assert_eq!(try_acquire(&word, 9, 3, 5), None, "another name's word");
        let b = try_acquire(&word, 7, 1023, 0).unwrap();
        assert_eq!(b.token, 42);
        assert!(!try_release(&word, 7, a), "a stale hold frees nothing");
        assert_eq!(holder_proc(&word), Some(1023));
        let mut raised = Vec::new();
        let held = Closed::Held {
            token: 42,
            proc: 1023,
            thread: 0,
        };
        assert_eq!(close(&word, |t| raised.push(t)), held);
        assert_eq!(raised, [42]);
        assert!(!try_release(&word, 7, b), "closed: the record will have it");
        assert_eq!(try_acquire(&word, 7, 3, 5), None, "closed");
        // A step that died before settling: the next one finds the hold again.
        assert_eq!(close(&word, |_| {}), held);
        settle(&word);
        assert_eq!(close(&word, |_| {}), Closed::Slow);
        assert_eq!(holder_proc(&word), None);
        open(&word, 7, 42);
        assert_eq!(free_token(&word), Some(42));
        assert_eq!(close(&word, |_| {}), Closed::Free { last_token: 42 });
        assert_eq!(free_token(&word), None);
        open(&word, 7, 42);
        let c = try_acquire(&word, 7, 2, 2).unwrap();
        assert!(
            !close_if_free(&word, |_| {}),
            "a hold is never closed this way"
        );
        assert!(try_release(&word, 7, c));
        let mut raised = 0;
        assert!(close_if_free(&word, |t| raised = t));
        assert_eq!((raised, free_token(&word)), (43, None));
        assert!(close_if_free(&word, |_| {}), "slow already");
    }

    #[test]
    fn out_of_range_holders_and_tokens_take_the_general_path() {
        let word = AtomicU64::new(fresh(1, 0));
        assert_eq!(try_acquire(&word, 1, 0, MAX_THREAD + 1), None);
        assert_eq!(try_acquire(&word, 1, PROCS, 1), None);
        let word = AtomicU64::new(fresh(1, MAX_TOKEN - 1));
        let last = try_acquire(&word, 1, 0, MAX_THREAD).unwrap();
        assert_eq!(last.token, MAX_TOKEN);
        assert!(try_release(&word, 1, last));
        assert_eq!(try_acquire(&word, 1, 0, 1), None, "no token left to give");
        assert_eq!(fresh(1, MAX_TOKEN), SLOW);
        open(&word, 1, MAX_TOKEN);
        assert_eq!(free_token(&word), Some(MAX_TOKEN), "left as it was");
    }
}
