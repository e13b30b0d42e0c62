//! The mem store's uncontended Lock: one atomic word per name.
//!
//! A plain Lock (no lease, no tag) that nobody waits for needs none of the record's
//! machinery: whether it is held, by whom and with which fencing token fits in 64 bits,
//! and taking or giving it back is one compare-and-swap. While the word is `FREE` or
//! `HELD`, it is the truth and the slot's record is idle. Every other step first folds
//! the word back into the record under the slot's mutex ([`FastLock::fold`]), and the
//! word stays `SLOW` until the record is idle again ([`FastLock::unfold`]). So waiters,
//! leases, tags, other kinds and every query see one state, the one the state machine
//! defines, and a queued waiter is never overtaken: nobody queues unless the word is
//! `SLOW`, and then the fast path is closed.
//!
//! Layout: bits 0–1 the mode; bits 2–21 the holder (a thread number, or 0 for an async
//! acquisition); bits 22–63 the fencing token (the hold's, or the last one handed out
//! while free). Tokens only grow, so no `HELD` word ever comes back once released, and a
//! stale guard can never give back a later hold.

use super::atomic::{AtomicU64, Ordering};
use std::num::NonZeroU64;

use crate::backend::FastHold;

const MODE: u64 = 0b11;
/// The record holds the truth; the fast path is closed.
const SLOW: u64 = 0;
const FREE: u64 = 1;
const HELD: u64 = 2;

const HOLDER_SHIFT: u32 = 2;
const HOLDER_BITS: u32 = 20;
const TOKEN_SHIFT: u32 = HOLDER_SHIFT + HOLDER_BITS;
/// Past this token the name stays on the slow path (after 4.4 × 10¹² holds).
const MAX_TOKEN: u64 = (1 << (64 - TOKEN_SHIFT)) - 1;
/// Threads numbered past this take the slow path.
const MAX_HOLDER: u64 = (1 << HOLDER_BITS) - 1;

/// What a word held when it was folded into the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Folded {
    /// Already slow: the record is up to date.
    Slow,
    /// Free; `last_token` was the last fencing token handed out.
    Free { last_token: u64 },
    /// Held by `holder` (a thread number, 0 for a task) with `token`.
    Held { token: u64, holder: u64 },
}

#[derive(Debug)]
pub(crate) struct FastLock {
    word: AtomicU64,
}

impl Default for FastLock {
    /// A new name: free, no token handed out yet.
    fn default() -> FastLock {
        FastLock {
            word: AtomicU64::new(FREE),
        }
    }
}

impl FastLock {
    /// Takes the lock for `holder` if it is free and nobody needs the record.
    pub(crate) fn try_acquire(&self, holder: u64) -> Option<FastHold> {
        if holder > MAX_HOLDER {
            return None;
        }
        let free = self.word.load(Ordering::Relaxed);
        if free & MODE != FREE {
            return None;
        }
        let token = (free >> TOKEN_SHIFT) + 1;
        if token > MAX_TOKEN {
            return None;
        }
        // Never zero: the mode bits of a held word are not `SLOW`.
        let held = NonZeroU64::new((token << TOKEN_SHIFT) | (holder << HOLDER_SHIFT) | HELD)?;
        // Acquire: the previous holder's critical section happened before ours.
        self.word
            .compare_exchange(free, held.get(), Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| FastHold { token, word: held })
    }

    /// Gives back `hold`; `false` if the word was folded since (the record has it).
    pub(crate) fn try_release(&self, hold: FastHold) -> bool {
        let free = (hold.token << TOKEN_SHIFT) | FREE;
        self.word
            .compare_exchange(hold.word.get(), free, Ordering::Release, Ordering::Relaxed)
            .is_ok()
    }

    /// Closes the fast path and says what the word held, for the caller to write into
    /// the record. Call with the slot's mutex held.
    pub(crate) fn fold(&self) -> Folded {
        let mut word = self.word.load(Ordering::Relaxed);
        loop {
            if word & MODE == SLOW {
                return Folded::Slow;
            }
            // AcqRel: whoever is granted next from the record comes after the fast
            // holder's critical section.
            match self
                .word
                .compare_exchange_weak(word, SLOW, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => word = now,
            }
        }
        let token = word >> TOKEN_SHIFT;
        if word & MODE == HELD {
            Folded::Held {
                token,
                holder: (word >> HOLDER_SHIFT) & MAX_HOLDER,
            }
        } else {
            Folded::Free { last_token: token }
        }
    }

    /// Opens the fast path again for an idle record whose last fencing token is
    /// `last_token`. Call with the slot's mutex held, after [`FastLock::fold`].
    pub(crate) fn unfold(&self, last_token: u64) {
        if last_token < MAX_TOKEN {
            // Release: the next fast holder comes after everything done under the record.
            self.word
                .store((last_token << TOKEN_SHIFT) | FREE, Ordering::Release);
        }
    }
}

#[cfg(all(test, locksmith_loom))]
#[path = "fast_loom.rs"]
mod loom_tests;

#[cfg(all(test, not(locksmith_loom)))]
mod tests {
    use super::*;

    #[test]
    fn holds_round_trip_through_the_word() {
        let fast = FastLock::default();
        let a = fast.try_acquire(7).unwrap();
        assert_eq!(a.token, 1);
        assert_eq!(fast.try_acquire(8), None, "held");
        assert!(fast.try_release(a));
        let b = fast.try_acquire(0).unwrap();
        assert_eq!(b.token, 2);
        assert!(!fast.try_release(a), "a stale hold frees nothing");
        assert_eq!(
            fast.fold(),
            Folded::Held {
                token: 2,
                holder: 0
            }
        );
        assert_eq!(fast.fold(), Folded::Slow);
        assert_eq!(fast.try_acquire(7), None, "slow: closed");
        assert!(!fast.try_release(b), "folded: the record has it");
        fast.unfold(5);
        assert_eq!(fast.try_acquire(7).unwrap().token, 6);
    }

    #[test]
    fn out_of_range_holders_and_tokens_take_the_slow_path() {
        let fast = FastLock::default();
        assert_eq!(fast.try_acquire(MAX_HOLDER + 1), None);
        fast.fold();
        fast.unfold(MAX_TOKEN - 1);
        let last = fast.try_acquire(MAX_HOLDER).unwrap();
        assert_eq!(last.token, MAX_TOKEN);
        assert!(fast.try_release(last));
        assert_eq!(fast.try_acquire(1), None, "no token left to give");
        assert_eq!(
            fast.fold(),
            Folded::Free {
                last_token: MAX_TOKEN
            }
        );
        fast.unfold(MAX_TOKEN);
        assert_eq!(fast.fold(), Folded::Slow, "stays slow for good");
    }

    #[test]
    fn racing_threads_each_get_their_own_token() {
        // Four threads take and give back the lock through the word, a fifth folds
        // and unfolds it now and then as the slow path would: every grant is
        // exclusive and tokens never repeat.
        use std::sync::atomic::AtomicBool;
        use std::sync::Mutex;
        let fast = FastLock::default();
        let record = Mutex::new(0u64); // the last token, as the record would keep it
        let inside = AtomicBool::new(false);
        let tokens = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for t in 1..=4u64 {
                let (fast, inside, tokens, record) = (&fast, &inside, &tokens, &record);
                s.spawn(move || {
                    let mut mine = Vec::new();
                    while mine.len() < 20_000 {
                        if let Some(hold) = fast.try_acquire(t) {
                            assert!(!inside.swap(true, Ordering::Relaxed), "two holders");
                            mine.push(hold.token);
                            inside.store(false, Ordering::Relaxed);
                            if !fast.try_release(hold) {
                                // Folded meanwhile: release "through the record".
                                let mut last = record.lock().unwrap();
                                *last = (*last).max(hold.token);
                                fast.unfold(*last);
                            }
                        }
                    }
                    tokens.lock().unwrap().extend(mine);
                });
            }
            s.spawn(|| {
                for _ in 0..2_000 {
                    let mut last = record.lock().unwrap();
                    match fast.fold() {
                        Folded::Free { last_token } => {
                            *last = last_token;
                            fast.unfold(last_token);
                        }
                        // Held: the holder's failed release unfolds it.
                        Folded::Held { token, .. } => *last = token,
                        Folded::Slow => {}
                    }
                    drop(last);
                    std::thread::yield_now();
                }
            });
        });
        let mut tokens = tokens.into_inner().unwrap();
        let n = tokens.len();
        tokens.sort_unstable();
        tokens.dedup();
        assert_eq!(tokens.len(), n, "a token was handed out twice");
    }
}
