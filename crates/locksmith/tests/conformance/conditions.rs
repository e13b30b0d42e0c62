//! Condition: atomic release-and-sleep, notify(n), notify_all, timeouts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use locksmith::Error;

use crate::{eventually, Store, Test};

pub fn tests() -> Vec<Test> {
    vec![
        (
            "condition::notify_n_wakes_n_and_notify_all_the_rest",
            notify_counts,
        ),
        (
            "condition::no_lost_wakeups_producer_consumer",
            producer_consumer,
        ),
        (
            "condition::wait_timeout_returns_false_holding_the_lock",
            wait_timeout,
        ),
        (
            "condition::wait_with_a_foreign_guard_is_refused",
            foreign_guard,
        ),
        (
            "condition::notify_without_the_lock_is_not_held",
            notify_unheld,
        ),
        (
            "condition::default_lock_is_reentrant_and_wait_restores_levels",
            reentrant_default,
        ),
        (
            "condition::a_callers_lock_or_rlock_under_any_name",
            callers_lock,
        ),
        (
            "condition::a_guard_from_a_second_space_of_the_url_waits",
            second_space_guard,
        ),
    ]
}

fn notify_unheld(store: &Store) {
    let space = store.open();
    let cond = space.condition("cv");
    for r in [cond.notify(1), cond.notify_all()] {
        match r {
            Err(e @ Error::NotHeld { .. }) => assert_eq!(e.errno(), libc::EPERM),
            other => panic!("notify without the lock: expected NotHeld, got {other:?}"),
        }
    }
    // Held by another thread is not held by the caller.
    let (held, hold) = mpsc::channel();
    let (done, release) = mpsc::channel::<()>();
    let holder = std::thread::spawn({
        let cond = cond.clone();
        move || {
            let _g = cond.acquire().unwrap();
            held.send(()).unwrap();
            release.recv().unwrap();
        }
    });
    hold.recv().unwrap();
    assert!(matches!(cond.notify(1), Err(Error::NotHeld { .. })));
    done.send(()).unwrap();
    holder.join().unwrap();
    let _g = cond.acquire().unwrap();
    assert_eq!(cond.notify_all().unwrap(), 0, "held: nobody to wake");
}

fn reentrant_default(store: &Store) {
    let space = store.open();
    let cond = space.condition("cv");
    let outer = cond.acquire().unwrap();
    let mut inner = cond.acquire().expect("the default lock is re-entrant");
    assert_eq!(inner.token(), outer.token());
    // A wait two levels deep would leave the outer guard with a stale token: refused,
    // changing nothing.
    let err = cond
        .wait_timeout(&mut inner, Duration::from_millis(1))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(inner.is_held().unwrap() && outer.is_held().unwrap());
    drop(inner);
    assert!(cond.is_locked().unwrap(), "the outer level is still held");
    // One level deep, the wait releases it: another thread gets the lock meanwhile.
    let mut outer = outer;
    let other = std::thread::spawn({
        let cond = cond.clone();
        move || {
            let g = cond.acquire().unwrap();
            cond.notify(1).unwrap();
            drop(g);
        }
    });
    assert!(cond
        .wait_timeout(&mut outer, Duration::from_secs(60))
        .unwrap());
    other.join().unwrap();
    drop(outer);
    assert!(!cond.is_locked().unwrap());
}

fn callers_lock(store: &Store) {
    let space = store.open();
    // A plain Lock under another name.
    let lock = space.lock("mutex");
    let cond = space.condition("cv").with_lock(&lock).unwrap();
    assert_eq!(cond.lock_name(), "mutex");
    let ready = Arc::new(AtomicUsize::new(0));
    let waiter = std::thread::spawn({
        let (cond, ready) = (cond.clone(), ready.clone());
        move || {
            let mut g = cond.acquire().unwrap();
            assert_eq!(g.name(), "mutex");
            ready.store(1, Ordering::SeqCst);
            cond.wait_while(&mut g, || ready.load(Ordering::SeqCst) != 2)
                .unwrap();
            assert!(g.is_held().unwrap());
        }
    });
    eventually("the waiter sleeps", || {
        space.waiting("cv").unwrap() == 1 && !lock.is_locked().unwrap()
    });
    {
        let _g = lock.acquire().unwrap();
        ready.store(2, Ordering::SeqCst);
        assert_eq!(cond.notify(1).unwrap(), 1);
    }
    waiter.join().unwrap();
    assert!(!lock.is_locked().unwrap());
    // Notifying needs the caller's lock, not the condition's name.
    assert!(matches!(cond.notify(1), Err(Error::NotHeld { .. })));

    // An RLock: refused two levels deep, waits one level deep.
    let rlock = space.rlock("rmutex");
    let rcond = space.condition("rcv").with_lock(&rlock).unwrap();
    let outer = rlock.acquire().unwrap();
    let mut inner = rcond.acquire().unwrap();
    assert_eq!(rlock.recursion_count().unwrap(), 2);
    assert!(matches!(
        rcond.wait_timeout(&mut inner, Duration::from_millis(1)),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(
        rlock.recursion_count().unwrap(),
        2,
        "a refused wait changes nothing"
    );
    assert_eq!(space.waiting("rcv").unwrap(), 0, "and leaves no sleeper");
    drop(outer);
    let other = std::thread::spawn({
        let (rcond, rlock) = (rcond.clone(), rlock.clone());
        move || {
            let _g = rlock.acquire().unwrap();
            rcond.notify_all().unwrap()
        }
    });
    assert!(rcond
        .wait_timeout(&mut inner, Duration::from_secs(60))
        .unwrap());
    assert_eq!(other.join().unwrap(), 1);
    assert_eq!(rlock.recursion_count().unwrap(), 1);
    drop(inner);
    assert!(!rlock.is_locked().unwrap());

    // A guard of another lock cannot wait, and the message names both.
    let mut wrong = space.lock("elsewhere").acquire().unwrap();
    let err = cond.wait(&mut wrong).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(
        msg.contains("'elsewhere'") && msg.contains("'cv'") && msg.contains("'mutex'"),
        "{msg}"
    );
    assert!(wrong.is_held().unwrap());
    // A lock of another store is refused at once.
    let foreign = locksmith::Space::open("mem:").unwrap().lock("mutex");
    assert!(matches!(
        space.condition("cv").with_lock(&foreign),
        Err(Error::InvalidArgument(_))
    ));
}

fn second_space_guard(store: &Store) {
    let space = store.open();
    let second = locksmith::Space::open(space.url()).unwrap();
    let cond = space.condition("cv");
    let ready = Arc::new(AtomicUsize::new(0));
    let waiter = std::thread::spawn({
        let (second, ready) = (second.clone(), ready.clone());
        let cond = cond.clone();
        move || {
            // The guard comes from the second Space; the condition from the first.
            let mut g = second.condition("cv").acquire().unwrap();
            ready.store(1, Ordering::SeqCst);
            cond.wait_while(&mut g, || ready.load(Ordering::SeqCst) != 2)
                .unwrap();
            assert!(g.is_held().unwrap());
        }
    });
    eventually("the waiter sleeps", || space.waiting("cv").unwrap() == 1);
    {
        let _g = cond.acquire().unwrap();
        ready.store(2, Ordering::SeqCst);
        cond.notify_all().unwrap();
    }
    waiter.join().unwrap();
    assert!(!cond.is_locked().unwrap());
}

fn notify_counts(store: &Store) {
    let space = store.open();
    let cond = space.condition("cv");
    let sleeping = Arc::new(AtomicUsize::new(0));
    let (woke, woken) = mpsc::channel();
    let sleepers: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn({
                let (cond, sleeping, woke) = (cond.clone(), sleeping.clone(), woke.clone());
                move || {
                    let mut guard = cond.acquire().unwrap();
                    sleeping.fetch_add(1, Ordering::SeqCst);
                    cond.wait(&mut guard).unwrap();
                    assert!(guard.is_held().unwrap(), "wait returns holding the lock");
                    woke.send(()).unwrap();
                }
            })
        })
        .collect();
    // A sleeper counts itself under the lock and releases it only by sleeping, so once
    // the lock is ours with all three counted, all three sleep.
    eventually("all three sleep", || {
        let _g = cond.acquire().unwrap();
        sleeping.load(Ordering::SeqCst) == 3
    });
    let notify = |n| {
        let _g = cond.acquire().unwrap();
        cond.notify(n).unwrap()
    };
    assert_eq!(notify(1), 1);
    woken.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(notify(5), 2, "only two were left sleeping");
    woken.recv_timeout(Duration::from_secs(60)).unwrap();
    woken.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(notify(usize::MAX), 0);
    for s in sleepers {
        s.join().unwrap();
    }
}

fn producer_consumer(store: &Store) {
    const ITEMS: usize = 200;
    let space = store.open();
    let cond = space.condition("queue");
    let queue = Arc::new(AtomicUsize::new(0));
    let consumed = Arc::new(AtomicUsize::new(0));
    let consumers: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn({
                let (cond, queue, consumed) = (cond.clone(), queue.clone(), consumed.clone());
                move || loop {
                    let mut guard = cond.acquire().unwrap();
                    cond.wait_while(&mut guard, || {
                        queue.load(Ordering::SeqCst) == 0 && consumed.load(Ordering::SeqCst) < ITEMS
                    })
                    .unwrap();
                    if consumed.load(Ordering::SeqCst) >= ITEMS {
                        cond.notify_all().unwrap();
                        return;
                    }
                    queue.fetch_sub(1, Ordering::SeqCst);
                    consumed.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for _ in 0..ITEMS {
        let _guard = cond.acquire().unwrap();
        queue.fetch_add(1, Ordering::SeqCst);
        cond.notify(1).unwrap();
    }
    for c in consumers {
        c.join().unwrap();
    }
    assert_eq!(consumed.load(Ordering::SeqCst), ITEMS);
    assert_eq!(queue.load(Ordering::SeqCst), 0);
}

fn wait_timeout(store: &Store) {
    let space = store.open();
    let cond = space.condition("quiet");
    let mut guard = cond.acquire().unwrap();
    let first = guard.token();
    assert!(!cond
        .wait_timeout(&mut guard, Duration::from_millis(30))
        .unwrap());
    assert!(guard.is_held().unwrap());
    assert!(
        guard.token() > first,
        "the lock was released and taken again"
    );
    assert_eq!(space.waiting("quiet").unwrap(), 0);
}

fn foreign_guard(store: &Store) {
    let space = store.open();
    let cond = space.condition("a");
    let mut other = space.condition("b").acquire().unwrap();
    let err = cond.wait(&mut other).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(other.is_held().unwrap(), "a refused wait changes nothing");
}
