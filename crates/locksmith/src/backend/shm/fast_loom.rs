//! Loom model checks of the shm fast word: every interleaving (loom's bounded
//! exploration) of fast holders, the general path's steps (close, write the record,
//! settle, open) and a step killed between closing the word and settling it, with
//! loom checking the memory orderings too: a holder's writes must be visible to the
//! next holder, whichever path (word or record) hands the lock on.
//!
//! Run: `RUSTFLAGS="--cfg locksmith_loom" cargo test -p locksmith --lib -- backend::shm::fast`.

use loom::cell::UnsafeCell;
use loom::sync::atomic::AtomicU64;
use loom::sync::atomic::Ordering::Relaxed;
use loom::sync::{Arc, Mutex};
use loom::thread;

use super::{close, fresh, open, settle, try_acquire, try_release, Closed};

/// The slot's generation in these models.
const STATE: u32 = 5;

/// The record as the general path keeps it under the slot's mutex.
#[derive(Default)]
struct Record {
    next_token: u64,
    /// The hold the record knows of: its token.
    held: Option<u64>,
}

struct Slot {
    word: AtomicU64,
    /// The slot's `next_token`, which a close raises before changing the word.
    counter: AtomicU64,
    record: Mutex<Record>,
    /// What the lock protects: loom reports two holders touching it unordered.
    count: UnsafeCell<u64>,
}

// SAFETY: `count` is only touched by whoever holds the lock (the tests check that);
// loom's UnsafeCell reports any access that is not ordered after the previous one.
unsafe impl Sync for Slot {}

impl Slot {
    fn new() -> Arc<Slot> {
        Arc::new(Slot {
            word: AtomicU64::new(fresh(STATE, 0)),
            counter: AtomicU64::new(0),
            record: Mutex::new(Record::default()),
            count: UnsafeCell::new(0),
        })
    }

    /// The general path's first move under the mutex: the word folded into the
    /// record, published (here: written) before the word lets go of a hold.
    fn fold(&self, record: &mut Record) {
        record.next_token = record.next_token.max(self.counter.load(Relaxed));
        match close(&self.word, |t| self.raise(t)) {
            Closed::Slow => {}
            Closed::Free { last_token } => record.next_token = record.next_token.max(last_token),
            Closed::Held { token, .. } => {
                assert!(record.held.is_none() || record.held == Some(token));
                record.next_token = record.next_token.max(token);
                record.held = Some(token);
                settle(&self.word);
            }
        }
    }

    fn raise(&self, token: u64) {
        if token > self.counter.load(Relaxed) {
            self.counter.store(token, Relaxed);
        }
    }

    /// The end of a general step: the word opened again if the record is idle.
    fn finish(&self, record: &Record) {
        if record.held.is_none() {
            open(&self.word, STATE, record.next_token);
        }
    }

    fn touch(&self) {
        // SAFETY: holding the lock; loom checks the access is ordered after the last.
        self.count.with_mut(|c| unsafe { *c += 1 });
    }

    /// One critical section through the fast path; its token, or `None` if the word
    /// was not free.
    fn fast_cycle(&self, thread: u64) -> Option<u64> {
        let hold = try_acquire(&self.word, STATE, 1, thread)?;
        self.touch();
        if !try_release(&self.word, STATE, hold) {
            // Closed meanwhile: the record has the hold; give it back there.
            let mut record = self.record.lock().unwrap();
            self.fold(&mut record);
            assert_eq!(record.held, Some(hold.token), "the fold kept the hold");
            record.held = None;
            self.finish(&record);
        }
        Some(hold.token)
    }

    /// One critical section through the general path (a try: `None` if held).
    fn slow_cycle(&self) -> Option<u64> {
        let token = {
            let mut record = self.record.lock().unwrap();
            self.fold(&mut record);
            if record.held.is_some() {
                self.finish(&record);
                return None;
            }
            record.next_token += 1;
            self.raise(record.next_token);
            record.held = Some(record.next_token);
            record.next_token
        };
        self.touch();
        let mut record = self.record.lock().unwrap();
        self.fold(&mut record);
        assert_eq!(record.held, Some(token));
        record.held = None;
        self.finish(&record);
        Some(token)
    }

    fn count(&self) -> u64 {
        // SAFETY: every other thread has been joined by the callers.
        self.count.with(|c| unsafe { *c })
    }
}

#[test]
fn fast_and_general_holders_exclude_each_other_and_tokens_differ() {
    loom::model(|| {
        let slot = Slot::new();
        let other = slot.clone();
        let slow = thread::spawn(move || other.slow_cycle());
        let fast = slot.fast_cycle(1);
        let slow = slow.join().unwrap();
        if let (Some(a), Some(b)) = (fast, slow) {
            assert_ne!(a, b, "a token handed out twice");
        }
        let n = u64::from(fast.is_some()) + u64::from(slow.is_some());
        assert_eq!(slot.count(), n);
        // The name ends open, and counts on from every token handed out.
        let next = slot.fast_cycle(1).expect("the word is free again");
        assert!(fast.into_iter().chain(slow).all(|t| next > t));
    });
}

#[test]
fn a_step_killed_after_closing_loses_no_hold() {
    loom::model(|| {
        let slot = Slot::new();
        let hold = try_acquire(&slot.word, STATE, 1, 1).expect("free");
        let other = slot.clone();
        let killed = thread::spawn(move || {
            // A step that closes the word, then dies before writing the record (its
            // mutex passes on, as the placed mutex's does after a death).
            let _record = other.record.lock().unwrap();
            let _ = close(&other.word, |t| other.raise(t));
        });
        let other = slot.clone();
        let next = thread::spawn(move || other.slow_cycle());
        slot.touch();
        let released_fast = try_release(&slot.word, STATE, hold);
        let next = next.join().unwrap();
        killed.join().unwrap();
        if !released_fast {
            // The hold is in the word or the record; give it back through the record.
            let mut record = slot.record.lock().unwrap();
            slot.fold(&mut record);
            assert_eq!(record.held, Some(hold.token), "the hold survived the death");
            record.held = None;
            slot.finish(&record);
        }
        if let Some(t) = next {
            assert!(t > hold.token, "tokens went back");
        }
        assert_eq!(slot.count(), 1 + u64::from(next.is_some()));
    });
}
