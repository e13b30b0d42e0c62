//! Event: set, clear, wait, and the set-then-clear race.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::{Store, Test};

pub fn tests() -> Vec<Test> {
    vec![
        ("event::set_clear_is_set", set_clear),
        ("event::set_wakes_every_waiter", set_wakes_all),
        ("event::wait_timeout_on_unset_is_false", wait_timeout_false),
        (
            "event::set_then_clear_at_once_still_wakes_with_true",
            set_then_clear,
        ),
    ]
}

fn set_clear(store: &Store) {
    let space = store.open();
    let ev = space.event("flag");
    assert!(!ev.is_set().unwrap());
    ev.set().unwrap();
    ev.set().unwrap();
    assert!(ev.is_set().unwrap());
    assert!(ev.wait().unwrap(), "a set event returns at once");
    ev.clear().unwrap();
    assert!(!ev.is_set().unwrap());
}

fn set_wakes_all(store: &Store) {
    let space = store.open();
    let ev = space.event("go");
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn({
                let ev = ev.clone();
                move || ev.wait_timeout(Duration::from_secs(60))
            })
        })
        .collect();
    ev.set().unwrap();
    for w in waiters {
        assert!(w.join().unwrap().unwrap());
    }
}

fn wait_timeout_false(store: &Store) {
    let space = store.open();
    assert!(!space
        .event("never")
        .wait_timeout(Duration::from_millis(30))
        .unwrap());
}

fn set_then_clear(store: &Store) {
    // threading's semantics (gh-57711): a waiter woken by a set returns true even if
    // the event was cleared before it ran. Set and clear until the waiter returns: a
    // waiter that re-checks the flag instead would keep waiting and time out false.
    let space = store.open();
    let ev = space.event("blink");
    let done = Arc::new(AtomicBool::new(false));
    let waiter = std::thread::spawn({
        let (ev, done) = (ev.clone(), done.clone());
        move || {
            let r = ev.wait_timeout(Duration::from_secs(60));
            done.store(true, Ordering::SeqCst);
            r
        }
    });
    while !done.load(Ordering::SeqCst) {
        ev.set().unwrap();
        ev.clear().unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(waiter.join().unwrap().unwrap(), "woken by a set: true");
}
