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
    ]
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
    assert_eq!(cond.notify(1).unwrap(), 1);
    woken.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(cond.notify(5).unwrap(), 2, "only two were left sleeping");
    woken.recv_timeout(Duration::from_secs(60)).unwrap();
    woken.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(cond.notify_all().unwrap(), 0);
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
