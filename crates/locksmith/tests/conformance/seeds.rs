//! What the seed systems' Python APIs need of every store (issue 19, items 2, 9, 10,
//! 11): semaphore values and `release(n)`, `is_locked` on every permit kind, an RLock's
//! owner and depth, a Lock owned by the acquisition, handle releases that never undercut
//! a live guard, and evictions that tell the next holder.

use std::time::Duration;

use locksmith::{Error, Ownership};

use crate::{eventually, threads, Store, Test};

pub fn tests() -> Vec<Test> {
    vec![
        (
            "seeds::semaphore_value_counts_holds_and_signalling_releases",
            semaphore_value,
        ),
        (
            "seeds::release_n_is_all_or_nothing_at_the_bound",
            release_n_all_or_nothing,
        ),
        (
            "seeds::is_locked_on_every_permit_kind",
            is_locked_everywhere,
        ),
        (
            "seeds::rlock_is_owned_and_recursion_count",
            rlock_owner_and_depth,
        ),
        (
            "seeds::lock_owned_by_acquisition_waits_and_any_thread_releases",
            owned_by_acquisition,
        ),
        (
            "seeds::handle_release_never_undercuts_a_live_guard",
            handle_release_spares_guards,
        ),
        (
            "seeds::evict_tag_tells_the_next_holder_the_owner_died",
            evict_tells_next_holder,
        ),
    ]
}

fn semaphore_value(store: &Store) {
    let space = store.open();
    let sem = space.semaphore("value", 1);
    assert_eq!(sem.value().unwrap(), 1, "idle: the initial value");
    // The issue's case: three extra releases raise a Semaphore(1) to 4, and it shows.
    for _ in 0..3 {
        sem.release().unwrap();
    }
    assert_eq!(sem.value().unwrap(), 4);
    let held: Vec<_> = (0..4).map(|_| sem.acquire().unwrap()).collect();
    assert_eq!(sem.value().unwrap(), 0);
    drop(held);
    assert_eq!(sem.value().unwrap(), 4);
    sem.release_n(2).unwrap();
    assert_eq!(sem.value().unwrap(), 6, "release_n(2) raises it by 2");
    assert!(matches!(sem.release_n(0), Err(Error::InvalidArgument(_))));
    assert_eq!(sem.value().unwrap(), 6, "a refused release changes nothing");
    let bounded = space.bounded_semaphore("bounded-value", 3);
    assert_eq!(bounded.value().unwrap(), 3);
    let _a = bounded.acquire().unwrap();
    assert_eq!(bounded.value().unwrap(), 2);
    assert!(matches!(
        space.semaphore("bounded-value", 3).value(),
        Err(Error::Mismatch { .. })
    ));
}

fn release_n_all_or_nothing(store: &Store) {
    let space = store.open();
    let sem = space.bounded_semaphore("pool", 3);
    // Two permits taken on another thread and kept without guards.
    threads(1, {
        let sem = sem.clone();
        move |_| {
            sem.acquire().unwrap().detach();
            sem.acquire().unwrap().detach();
        }
    });
    assert_eq!(sem.value().unwrap(), 1);
    let err = sem.release_n(3).unwrap_err();
    assert!(matches!(err, Error::TooManyReleases { .. }), "{err}");
    assert_eq!(
        sem.value().unwrap(),
        1,
        "a refused release_n changes nothing"
    );
    assert_eq!(space.holders("pool").unwrap().len(), 2);
    sem.release_n(2).unwrap();
    assert_eq!(sem.value().unwrap(), 3, "both held permits came back");
    assert!(space.holders("pool").unwrap().is_empty());
    assert!(matches!(
        sem.release_n(1),
        Err(Error::TooManyReleases { .. })
    ));
    assert_eq!(sem.value().unwrap(), 3);
}

fn is_locked_everywhere(store: &Store) {
    let space = store.open();
    let lock = space.lock("l");
    let g = lock.acquire().unwrap();
    assert!(lock.is_locked().unwrap());
    drop(g);
    assert!(!lock.is_locked().unwrap());

    let rlock = space.rlock("r");
    let g = rlock.acquire().unwrap();
    assert!(rlock.is_locked().unwrap());
    drop(g);
    assert!(!rlock.is_locked().unwrap());

    let sem = space.semaphore("s", 2);
    let a = sem.acquire().unwrap();
    assert!(!sem.is_locked().unwrap(), "one permit is still free");
    let b = sem.acquire().unwrap();
    assert!(sem.is_locked().unwrap(), "no permit free");
    drop((a, b));
    assert!(!sem.is_locked().unwrap());

    let bounded = space.bounded_semaphore("b", 1);
    let g = bounded.acquire().unwrap();
    assert!(bounded.is_locked().unwrap());
    drop(g);
    assert!(!bounded.is_locked().unwrap());

    let rw = space.rwlock("rw");
    let g = rw.read().unwrap();
    assert!(rw.is_locked().unwrap());
    drop(g);
    let g = rw.write().unwrap();
    assert!(rw.is_locked().unwrap());
    drop(g);
    assert!(!rw.is_locked().unwrap());

    let cond = space.condition("c");
    let g = cond.acquire().unwrap();
    assert!(cond.is_locked().unwrap());
    drop(g);
    assert!(!cond.is_locked().unwrap());
}

fn rlock_owner_and_depth(store: &Store) {
    let space = store.open();
    let rlock = space.rlock("depth");
    assert!(!rlock.is_owned().unwrap());
    assert_eq!(rlock.recursion_count().unwrap(), 0);
    let outer = rlock.acquire().unwrap();
    let inner = rlock.acquire().unwrap();
    assert!(rlock.is_owned().unwrap());
    assert_eq!(rlock.recursion_count().unwrap(), 2);
    let seen = threads(1, {
        let rlock = rlock.clone();
        move |_| (rlock.is_owned().unwrap(), rlock.recursion_count().unwrap())
    });
    assert_eq!(seen, [(false, 0)], "another thread owns none of it");
    drop(inner);
    assert_eq!(rlock.recursion_count().unwrap(), 1);
    drop(outer);
    assert!(!rlock.is_owned().unwrap());
    assert_eq!(rlock.recursion_count().unwrap(), 0);
}

fn owned_by_acquisition(store: &Store) {
    let space = store.open();
    let lock = space.lock("pool-lock").ownership(Ownership::Acquisition);
    let guard = lock.acquire().unwrap();
    // The holding thread is not the owner: trying again waits rather than refusing.
    assert!(lock.try_acquire().unwrap().is_none());
    assert!(lock
        .acquire_timeout(Duration::from_millis(20))
        .unwrap()
        .is_none());
    // The guard moves to another thread, which releases it.
    std::thread::spawn(move || guard.release().unwrap())
        .join()
        .unwrap();
    assert!(!lock.is_locked().unwrap());

    // Held without a guard: a waiter on another thread is freed by a third thread's
    // release through the handle.
    let token = lock.acquire().unwrap().detach();
    let waiter = std::thread::spawn({
        let lock = lock.clone();
        move || lock.acquire().unwrap().token()
    });
    eventually("the waiter queues", || {
        space.waiting("pool-lock").unwrap() == 1
    });
    threads(1, {
        let lock = lock.clone();
        move |_| lock.release().unwrap()
    });
    let next = waiter.join().unwrap();
    assert!(next > token, "the waiter got the lock after the release");
    assert!(
        matches!(lock.release(), Err(Error::NotHeld { .. })),
        "nothing left to release"
    );

    // The thread-owned mode stays the default.
    let strict = space.lock("strict");
    let _g = strict.acquire().unwrap();
    assert!(matches!(
        strict.try_acquire(),
        Err(Error::WouldDeadlock { .. })
    ));
}

fn handle_release_spares_guards(store: &Store) {
    let space = store.open();
    let lock = space.lock("guarded");
    let guard = lock.acquire().unwrap();
    let err = lock.release().unwrap_err();
    assert!(matches!(err, Error::NotOwner { .. }), "{err}");
    assert!(guard.is_held().unwrap(), "the live guard still holds");
    // Nobody could take it in between: the guard's own release succeeds.
    guard.release().unwrap();

    // An RLock: the handle releases the detached level, never the guard's.
    let rlock = space.rlock("guarded-r");
    let guard = rlock.acquire().unwrap();
    rlock.acquire().unwrap().detach();
    assert_eq!(rlock.recursion_count().unwrap(), 2);
    rlock.release().unwrap();
    assert_eq!(rlock.recursion_count().unwrap(), 1);
    assert!(matches!(rlock.release(), Err(Error::NotOwner { .. })));
    assert_eq!(rlock.recursion_count().unwrap(), 1);
    guard.release().unwrap();
    assert!(!rlock.is_locked().unwrap());

    // A detached hold that ended before the handle's release is reported lost.
    let leased = space.lock("lost").lease(Duration::from_millis(1));
    leased.acquire().unwrap().detach();
    let next = threads(1, {
        let lock = space.lock("lost");
        move |_| lock.acquire().unwrap().detach()
    });
    assert!(next[0] > 0);
    let err = leased.release().unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
    assert!(
        space.lock("lost").is_locked().unwrap(),
        "the new holder keeps its hold"
    );
}

fn evict_tells_next_holder(store: &Store) {
    let space = store.open();
    let lock = space.lock("evicted").tag("batch");
    let old = lock.acquire().unwrap();
    let sem = space.semaphore("evicted-sem", 1).tag("batch");
    let permit = sem.acquire().unwrap();
    assert_eq!(space.evict_tag("batch").unwrap(), 2);
    let next = threads(1, {
        let lock = space.lock("evicted");
        move |_| {
            let g = lock.acquire().unwrap();
            let died = g.previous_owner_died();
            g.release().unwrap();
            died
        }
    });
    assert_eq!(next, [true], "as after force_release");
    let next = sem.acquire().unwrap();
    assert!(next.previous_owner_died());
    drop(next);
    assert!(matches!(old.release(), Err(Error::LeaseLost { .. })));
    assert!(matches!(permit.release(), Err(Error::LeaseLost { .. })));
    // Told once: the holder after that is not.
    let again = space.lock("evicted").acquire().unwrap();
    assert!(!again.previous_owner_died());
}
