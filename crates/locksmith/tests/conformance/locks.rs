//! Lock and RLock: exclusion, ownership, re-entry, fencing, leases, tags.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use locksmith::Error;

use crate::{eventually, threads, Store, Test};

pub fn tests() -> Vec<Test> {
    vec![
        (
            "lock::threads_times_increments_are_counted_exactly",
            threads_times_increments,
        ),
        ("lock::try_acquire_never_waits", try_acquire_never_waits),
        (
            "lock::reacquire_by_owner_would_deadlock",
            reacquire_would_deadlock,
        ),
        (
            "lock::release_unheld_or_by_other_is_eperm",
            release_unheld_or_by_other,
        ),
        ("lock::acquire_timeout_gives_up", acquire_timeout_gives_up),
        ("lock::release_wakes_a_blocked_waiter", release_wakes_waiter),
        (
            "lock::fencing_tokens_strictly_increase",
            fencing_tokens_increase,
        ),
        (
            "lock::lapsed_lease_frees_and_release_reports_lease_lost",
            lapsed_lease,
        ),
        (
            "lock::kept_alive_lease_outlives_its_length",
            kept_alive_lease,
        ),
        ("lock::holders_lists_owner_and_lease", holders_listing),
        ("lock::evict_tag_drops_tagged_state_only", evict_tag),
        ("lock::force_release_breaks_the_hold", force_release),
        ("lock::a_plain_hold_is_seen_by_everyone", plain_hold_seen),
        (
            "lock::a_broken_hold_cannot_release_a_later_one",
            broken_hold_is_stale,
        ),
        (
            "lock::holds_stay_exclusive_while_watched",
            exclusive_while_watched,
        ),
        ("lock::detach_then_release_by_owner", detach_then_release),
        ("lock::name_of_another_kind_is_a_mismatch", kind_mismatch),
        (
            "rlock::reenters_and_frees_after_last_release",
            rlock_reenters,
        ),
        (
            "rlock::release_unheld_or_by_other_is_eperm",
            rlock_release_errors,
        ),
        ("rlock::full_release_leaves_no_holder", rlock_no_leak),
        ("rwlock::readers_share_writers_exclude", rwlock_sharing),
        ("rwlock::writers_and_readers_count_exactly", rwlock_stress),
    ]
}

fn threads_times_increments(store: &Store) {
    const THREADS: usize = 4;
    const INCREMENTS: u64 = 300;
    let space = store.open();
    let counter = Arc::new(AtomicU64::new(0));
    let inside = Arc::new(AtomicUsize::new(0));
    let lock = space.lock("counter");
    threads(THREADS, {
        let (counter, inside) = (counter.clone(), inside.clone());
        move |_| {
            for _ in 0..INCREMENTS {
                let _guard = lock.acquire().unwrap();
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                // A read-modify-write that only the lock makes atomic.
                let v = counter.load(Ordering::Relaxed);
                std::thread::yield_now();
                counter.store(v + 1, Ordering::Relaxed);
                inside.fetch_sub(1, Ordering::SeqCst);
            }
        }
    });
    assert_eq!(counter.load(Ordering::SeqCst), THREADS as u64 * INCREMENTS);
}

fn try_acquire_never_waits(store: &Store) {
    let space = store.open();
    let lock = space.lock("busy");
    let guard = lock
        .try_acquire()
        .unwrap()
        .expect("a free lock is taken at once");
    let other = threads(1, {
        let lock = lock.clone();
        move |_| lock.try_acquire().unwrap().is_some()
    });
    assert_eq!(other, [false], "another thread must not get a held lock");
    assert!(lock.is_locked().unwrap());
    drop(guard);
    assert!(!lock.is_locked().unwrap());
    assert_eq!(
        threads(1, move |_| lock.try_acquire().unwrap().is_some()),
        [true]
    );
}

fn reacquire_would_deadlock(store: &Store) {
    let space = store.open();
    let lock = space.lock("mine");
    let _guard = lock.acquire().unwrap();
    for result in [
        lock.acquire().map(|_| ()),
        lock.try_acquire().map(|_| ()),
        lock.acquire_timeout(Duration::from_millis(10)).map(|_| ()),
    ] {
        let err = result.expect_err("re-acquiring a held Lock must not succeed");
        assert!(matches!(err, Error::WouldDeadlock { .. }), "{err}");
        assert_eq!(err.errno(), libc::EDEADLK);
    }
}

fn release_unheld_or_by_other(store: &Store) {
    let space = store.open();
    let lock = space.lock("perm");
    let err = lock.release().unwrap_err();
    assert!(matches!(err, Error::NotHeld { .. }), "{err}");
    assert_eq!(err.errno(), libc::EPERM);
    let guard = lock.acquire().unwrap();
    let err = threads(1, {
        let lock = lock.clone();
        move |_| lock.release().unwrap_err()
    })
    .remove(0);
    assert!(matches!(err, Error::NotOwner { .. }), "{err}");
    assert_eq!(err.errno(), libc::EPERM);
    assert!(
        lock.is_locked().unwrap(),
        "a refused release changes nothing"
    );
    guard.release().unwrap();
}

fn acquire_timeout_gives_up(store: &Store) {
    let space = store.open();
    let lock = space.lock("slow");
    let _guard = lock.acquire().unwrap();
    let got = threads(1, {
        let lock = lock.clone();
        move |_| {
            lock.acquire_timeout(Duration::from_millis(50))
                .unwrap()
                .is_some()
        }
    });
    assert_eq!(got, [false]);
    assert_eq!(
        space.waiting("slow").unwrap(),
        0,
        "a timed-out waiter leaves the queue"
    );
}

fn release_wakes_waiter(store: &Store) {
    let space = store.open();
    let lock = space.lock("handoff");
    let guard = lock.acquire().unwrap();
    let waiter = std::thread::spawn({
        let lock = lock.clone();
        move || lock.acquire().map(|g| g.token())
    });
    eventually("the waiter queues", || {
        space.waiting("handoff").unwrap() == 1
    });
    let first = guard.token();
    guard.release().unwrap();
    let second = waiter.join().unwrap().unwrap();
    assert!(second > first);
}

fn fencing_tokens_increase(store: &Store) {
    let space = store.open();
    let lock = space.lock("fenced");
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    threads(3, {
        let tokens = tokens.clone();
        move |_| {
            for _ in 0..20 {
                let guard = lock.acquire().unwrap();
                // Recorded while held, so the order of the list is the order of holds.
                tokens.lock().unwrap().push(guard.token());
            }
        }
    });
    let tokens = tokens.lock().unwrap();
    assert_eq!(tokens.len(), 60);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens must strictly increase: {tokens:?}"
    );
}

fn lapsed_lease(store: &Store) {
    let space = store.open();
    let short = space
        .lock("leased")
        .lease(Duration::from_millis(100))
        .keep_alive(false);
    let old = short.acquire().unwrap();
    let new = threads(1, {
        let lock = space.lock("leased");
        move |_| {
            let g = lock
                .acquire_timeout(Duration::from_secs(30))
                .unwrap()
                .expect("the lease lapses");
            assert!(
                g.previous_owner_died(),
                "the next holder is told the last one lapsed"
            );
            g.detach()
        }
    })
    .remove(0);
    assert!(new > old.token());
    assert!(!old.is_held().unwrap());
    let err = old.release().unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
    let holders = space.holders("leased").unwrap();
    assert_eq!(
        holders.len(),
        1,
        "the late release must not touch the new holder"
    );
    assert_eq!(holders[0].token, new);
}

fn kept_alive_lease(store: &Store) {
    let space = store.open();
    // Long enough that a renewal delayed by a loaded machine or a network store's
    // round trip still comes in time; the keeper renews every third of it.
    let lock = space.lock("renewed").lease(Duration::from_millis(1500));
    let guard = lock.acquire().unwrap();
    // Time must pass for a lease to lapse: more than twice its length.
    std::thread::sleep(Duration::from_millis(3500));
    assert!(
        guard.is_held().unwrap(),
        "a kept-alive lease must not lapse while held"
    );
    let other = threads(1, move |_| lock.try_acquire().unwrap().is_some());
    assert_eq!(other, [false]);
    guard.release().unwrap();
}

fn holders_listing(store: &Store) {
    let space = store.open();
    assert!(space.holders("listed").unwrap().is_empty());
    let guard = space
        .lock("listed")
        .lease(Duration::from_secs(60))
        .acquire()
        .unwrap();
    let holders = space.holders("listed").unwrap();
    assert_eq!(holders.len(), 1);
    let h = &holders[0];
    assert_eq!(h.pid, std::process::id());
    assert_eq!(h.token, guard.token());
    assert!(h.until.expect("a leased hold has an end") > h.since);
    assert!(h.owner.contains(&std::process::id().to_string()));
    drop(guard);
    assert!(space.holders("listed").unwrap().is_empty());
}

fn evict_tag(store: &Store) {
    let space = store.open();
    let tagged = space.lock("tagged").tag("jobs").acquire().unwrap();
    let untagged = space.lock("untagged").acquire().unwrap();
    space.averager("avg").tag("jobs").add(1.0).unwrap();
    assert_eq!(space.evict_tag("jobs").unwrap(), 2);
    assert!(space.holders("tagged").unwrap().is_empty());
    assert_eq!(space.averager("avg").get().unwrap(), None);
    assert_eq!(space.holders("untagged").unwrap().len(), 1);
    let token = tagged.token();
    assert!(matches!(tagged.release(), Err(Error::LeaseLost { .. })));
    let again = space.lock("tagged").acquire().unwrap();
    assert!(again.token() > token, "fencing survives eviction");
    drop(untagged);
}

fn force_release(store: &Store) {
    let space = store.open();
    let guard = space.lock("stuck").acquire().unwrap();
    assert_eq!(space.force_release("stuck").unwrap(), 1);
    assert!(!guard.is_held().unwrap());
    assert!(matches!(guard.release(), Err(Error::LeaseLost { .. })));
    assert_eq!(space.force_release("stuck").unwrap(), 0);
    let next = space.lock("stuck").acquire().unwrap();
    assert!(
        next.previous_owner_died(),
        "the holder after a break is told"
    );
}

fn plain_hold_seen(store: &Store) {
    // A lock without lease or tag, the one stores may take on a fast path: every
    // query and every other owner still sees the hold.
    let space = store.open();
    let lock = space.lock("plain");
    let guard = lock.acquire().unwrap();
    assert!(lock.is_locked().unwrap());
    let holders = space.holders("plain").unwrap();
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].token, guard.token());
    assert_eq!(holders[0].pid, std::process::id());
    let other = lock.clone();
    let taken = std::thread::spawn(move || other.try_acquire().unwrap().is_some());
    assert!(!taken.join().unwrap(), "another thread took a held lock");
    assert!(matches!(
        lock.try_acquire(),
        Err(Error::WouldDeadlock { .. })
    ));
    guard.release().unwrap();
    assert!(!lock.is_locked().unwrap());
    assert!(space.holders("plain").unwrap().is_empty());
    // And an async hold, from a task.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let guard = rt.block_on(lock.acquire_async()).unwrap();
    assert_eq!(space.holders("plain").unwrap()[0].token, guard.token());
    assert!(lock.try_acquire().unwrap().is_none(), "a task holds it");
    drop(guard);
    assert!(lock.try_acquire().unwrap().is_some());
}

fn broken_hold_is_stale(store: &Store) {
    // The guard of a hold an operator broke must never release a later hold, even
    // one the same thread took again.
    let space = store.open();
    let lock = space.lock("stale");
    let broken = lock.acquire().unwrap();
    assert_eq!(space.force_release("stale").unwrap(), 1);
    let second = lock.acquire().unwrap();
    assert!(second.previous_owner_died());
    second.release().unwrap();
    let third = lock.acquire().unwrap();
    assert!(third.token() > broken.token());
    assert!(matches!(broken.release(), Err(Error::LeaseLost { .. })));
    assert!(
        third.is_held().unwrap(),
        "the stale guard released a later hold"
    );
    assert_eq!(space.holders("stale").unwrap()[0].token, third.token());
    third.release().unwrap();
}

fn exclusive_while_watched(store: &Store) {
    // Threads and tasks take a plain lock while another thread keeps asking who holds
    // it: queries must never let two owners in, lose a hold or repeat a token.
    const ROUNDS: usize = 200;
    let space = store.open();
    let lock = space.lock("watched");
    let inside = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (space, done) = (space.clone(), done.clone());
        std::thread::spawn(move || {
            let mut looks = 0u64;
            while !done.load(Ordering::SeqCst) || looks == 0 {
                assert!(space.holders("watched").unwrap().len() <= 1);
                looks += 1;
            }
        })
    };
    let tokens = threads(3, {
        let (lock, inside) = (lock.clone(), inside.clone());
        move |i| {
            let mut tokens = Vec::new();
            let mut enter = |guard: locksmith::Guard| {
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                tokens.push(guard.token());
                std::thread::yield_now();
                inside.fetch_sub(1, Ordering::SeqCst);
                guard.release().unwrap();
            };
            if i == 0 {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                for _ in 0..ROUNDS {
                    enter(rt.block_on(lock.acquire_async()).unwrap());
                }
            } else {
                for _ in 0..ROUNDS {
                    enter(lock.acquire().unwrap());
                }
            }
            tokens
        }
    });
    done.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    let mut all: Vec<u64> = tokens.into_iter().flatten().collect();
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), n, "a fencing token was handed out twice");
    assert_eq!(n, 3 * ROUNDS);
    assert!(!lock.is_locked().unwrap());
}

fn detach_then_release(store: &Store) {
    let space = store.open();
    let lock = space.lock("detached");
    let token = lock.acquire().unwrap().detach();
    assert_eq!(space.holders("detached").unwrap()[0].token, token);
    lock.release().unwrap();
    assert!(!lock.is_locked().unwrap());
}

fn kind_mismatch(store: &Store) {
    let space = store.open();
    let _guard = space.lock("x").acquire().unwrap();
    let err = space.semaphore("x", 2).try_acquire().unwrap_err();
    assert!(matches!(err, Error::Mismatch { .. }), "{err}");
    assert_eq!(
        space.holders("x").unwrap().len(),
        1,
        "a refused call changes nothing"
    );
}

fn rlock_reenters(store: &Store) {
    let space = store.open();
    let rlock = space.rlock("re");
    let outer = rlock.acquire().unwrap();
    let inner = rlock.acquire().unwrap();
    let third = rlock
        .try_acquire()
        .unwrap()
        .expect("the owner re-enters without waiting");
    assert_eq!(outer.token(), inner.token());
    assert_eq!(space.holders("re").unwrap()[0].count, 3);
    let blocked = threads(1, {
        let rlock = rlock.clone();
        move |_| rlock.try_acquire().unwrap().is_some()
    });
    assert_eq!(blocked, [false]);
    drop(third);
    drop(inner);
    assert_eq!(
        threads(1, {
            let r = rlock.clone();
            move |_| r.try_acquire().unwrap().is_some()
        }),
        [false]
    );
    drop(outer);
    assert_eq!(
        threads(1, move |_| rlock.try_acquire().unwrap().is_some()),
        [true]
    );
}

fn rlock_release_errors(store: &Store) {
    let space = store.open();
    let rlock = space.rlock("re-perm");
    assert!(matches!(rlock.release(), Err(Error::NotHeld { .. })));
    rlock.acquire().unwrap().detach();
    rlock.acquire().unwrap().detach();
    let err = threads(1, {
        let r = rlock.clone();
        move |_| r.release().unwrap_err()
    })
    .remove(0);
    assert!(matches!(err, Error::NotOwner { .. }), "{err}");
    rlock.release().unwrap();
    rlock.release().unwrap();
    assert!(
        matches!(rlock.release(), Err(Error::NotHeld { .. })),
        "an extra release is refused"
    );
}

fn rlock_no_leak(store: &Store) {
    let space = store.open();
    let rlock = space.rlock("leakless");
    for _ in 0..3 {
        let a = rlock.acquire().unwrap();
        let b = rlock.acquire().unwrap();
        drop(b);
        drop(a);
    }
    assert!(space.holders("leakless").unwrap().is_empty());
    assert_eq!(
        threads(1, move |_| rlock.try_acquire().unwrap().is_some()),
        [true]
    );
}

fn rwlock_sharing(store: &Store) {
    let space = store.open();
    let rw = space.rwlock("config");
    let r1 = rw.read().unwrap();
    let (read, write) = threads(1, {
        let rw = rw.clone();
        move |_| {
            let read = rw.try_read().unwrap().is_some();
            (read, rw.try_write().unwrap().is_some())
        }
    })
    .remove(0);
    assert!(read, "readers share");
    assert!(!write, "a writer waits for readers");
    assert!(
        matches!(rw.write(), Err(Error::WouldDeadlock { .. })),
        "upgrading would deadlock"
    );
    drop(r1);
    let w = rw.write().unwrap();
    let read = threads(1, {
        let rw = rw.clone();
        move |_| rw.try_read().unwrap().is_some()
    });
    assert_eq!(read, [false], "a writer excludes readers");
    drop(w);
    assert!(!rw.is_locked().unwrap());
}

fn rwlock_stress(store: &Store) {
    let space = store.open();
    let rw = space.rwlock("stress");
    let value = Arc::new(AtomicU64::new(0));
    let readers_inside = Arc::new(AtomicUsize::new(0));
    threads(4, {
        let (value, readers_inside) = (value.clone(), readers_inside.clone());
        move |i| {
            for _ in 0..100 {
                if i % 2 == 0 {
                    let _w = rw.write().unwrap();
                    assert_eq!(
                        readers_inside.load(Ordering::SeqCst),
                        0,
                        "a reader inside a write"
                    );
                    let v = value.load(Ordering::Relaxed);
                    std::thread::yield_now();
                    value.store(v + 1, Ordering::Relaxed);
                } else {
                    let _r = rw.read().unwrap();
                    readers_inside.fetch_add(1, Ordering::SeqCst);
                    let _ = value.load(Ordering::Relaxed);
                    readers_inside.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
    });
    assert_eq!(value.load(Ordering::SeqCst), 200);
}
