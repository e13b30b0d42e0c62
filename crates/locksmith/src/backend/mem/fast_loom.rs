//! Loom model checks of the fast word: every interleaving (loom's bounded
//! exploration) of acquirers, releasers and the slow path's fold/unfold, with loom
//! checking the memory orderings too: a holder's writes must be visible to the next
//! holder, whichever path (word or record) hands the lock on.
//!
//! Run: `RUSTFLAGS="--cfg locksmith_loom" cargo test -p locksmith --lib -- backend::mem::fast`.

use loom::cell::UnsafeCell;
use loom::sync::{Arc, Mutex};
use loom::thread;

use super::{FastLock, Folded};

/// What the lock protects: a plain (non-atomic) counter, which loom reports if two
/// holders touch it unordered.
struct Guarded {
    fast: FastLock,
    /// The record's last token, as the mem store keeps it under the slot's mutex.
    record: Mutex<u64>,
    count: UnsafeCell<u64>,
}

// SAFETY: `count` is only touched by whoever holds the lock (the tests check that);
// loom's UnsafeCell reports any access that is not ordered after the previous one.
unsafe impl Sync for Guarded {}

impl Guarded {
    fn new() -> Arc<Guarded> {
        Arc::new(Guarded {
            fast: FastLock::default(),
            record: Mutex::new(0),
            count: UnsafeCell::new(0),
        })
    }

    /// One critical section through the fast path; returns its token, or `None` if the
    /// word was not free.
    fn cycle(&self, holder: u64) -> Option<u64> {
        let hold = self.fast.try_acquire(holder)?;
        // SAFETY: holding the lock; loom checks the access is ordered after the last.
        self.count.with_mut(|c| unsafe { *c += 1 });
        if !self.fast.try_release(hold) {
            // Folded meanwhile: the record has the hold; give it back there.
            let mut last = self.record.lock().unwrap();
            *last = (*last).max(hold.token);
            self.fast.unfold(*last);
        }
        Some(hold.token)
    }

    /// The slow path closing the word and opening it again, as a fold for another
    /// op on the name does.
    fn fold_unfold(&self) {
        let mut last = self.record.lock().unwrap();
        match self.fast.fold() {
            Folded::Free { last_token } => {
                *last = last_token;
                self.fast.unfold(last_token);
            }
            // The holder's release finds the word folded and unfolds it.
            Folded::Held { token, .. } => *last = token,
            Folded::Slow => {}
        }
    }
}

#[test]
fn two_fast_holders_exclude_each_other_and_tokens_differ() {
    loom::model(|| {
        let g = Guarded::new();
        let g2 = g.clone();
        let other = thread::spawn(move || g2.cycle(2));
        let mine = g.cycle(1);
        let theirs = other.join().unwrap();
        if let (Some(a), Some(b)) = (mine, theirs) {
            assert_ne!(a, b, "a token handed out twice");
        }
        let n = u64::from(mine.is_some()) + u64::from(theirs.is_some());
        // SAFETY: every other thread has been joined.
        assert_eq!(g.count.with(|c| unsafe { *c }), n);
    });
}

#[test]
fn a_fold_racing_a_fast_holder_loses_no_hold() {
    loom::model(|| {
        let g = Guarded::new();
        let g2 = g.clone();
        let folder = thread::spawn(move || g2.fold_unfold());
        let first = g.cycle(1);
        folder.join().unwrap();
        // Whatever the interleaving, the name ends open (the holder's release or the
        // fold unfolded it), and the next hold's token is above every earlier one.
        let next = g.cycle(1).expect("the word is free again");
        assert!(first.is_none_or(|t| next > t));
        // SAFETY: every other thread has been joined.
        let count = g.count.with(|c| unsafe { *c });
        assert_eq!(count, 1 + u64::from(first.is_some()));
    });
}

#[test]
fn a_fold_sees_the_holders_writes() {
    loom::model(|| {
        let g = Guarded::new();
        let g2 = g.clone();
        let holder = thread::spawn(move || g2.cycle(1));
        // The slow path, once it has folded a free word, reads what the last fast
        // holder wrote: loom flags the read if the fold did not synchronize with it.
        let mut last = g.record.lock().unwrap();
        if let Folded::Free { last_token } = g.fast.fold() {
            // SAFETY: the word is folded (slow) and free: nobody holds the lock.
            let count = g.count.with(|c| unsafe { *c });
            assert_eq!(count, last_token, "each hold counted once, in token order");
            *last = last_token;
            g.fast.unfold(last_token);
        }
        drop(last);
        holder.join().unwrap();
    });
}
