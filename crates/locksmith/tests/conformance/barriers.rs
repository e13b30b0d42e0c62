//! Barrier: generations, indices, the action, breaking and resetting.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use locksmith::{BrokenCause, Error};

use crate::{eventually, threads, Store, Test};

pub fn tests() -> Vec<Test> {
    vec![
        ("barrier::generations_release_together", generations),
        (
            "barrier::timeout_breaks_for_everyone_until_reset",
            timeout_breaks,
        ),
        ("barrier::reset_breaks_current_waiters", reset_breaks),
        ("barrier::abort_breaks", abort_breaks),
        ("barrier::panicking_action_breaks", panicking_action),
        (
            "barrier::other_party_count_is_a_mismatch_told_to_every_waiter",
            parties_mismatch,
        ),
        (
            "barrier::default_timeout_given_at_construction",
            default_timeout,
        ),
        (
            "barrier::parties_that_disagree_about_an_action_break_it",
            action_mismatch,
        ),
    ]
}

fn cause<T: std::fmt::Debug>(r: locksmith::Result<T>) -> BrokenCause {
    match r {
        Err(Error::BrokenBarrier { cause, .. }) => cause,
        other => panic!("expected BrokenBarrier, got {other:?}"),
    }
}

fn default_timeout(store: &Store) {
    let space = store.open();
    let barrier = space
        .barrier("lonely", 2)
        .timeout(Duration::from_millis(30));
    assert_eq!(cause(barrier.wait()), BrokenCause::TimedOut);
    assert_eq!(
        cause(barrier.wait()),
        BrokenCause::TimedOut,
        "broken until reset, for the same reason"
    );
    barrier.reset().unwrap();
    // The async form too (with room for a network store's first connection of this
    // runtime: a Redis step's own deadline follows the wait's).
    let barrier = barrier.timeout(Duration::from_secs(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(
        cause(rt.block_on(barrier.wait_async())),
        BrokenCause::TimedOut
    );
}

fn action_mismatch(store: &Store) {
    let space = store.open();
    let with = space.barrier("phase", 3).action(|| {});
    let without = space.barrier("phase", 3);
    let waiter = std::thread::spawn({
        let b = with.clone();
        move || b.wait_timeout(Duration::from_secs(120))
    });
    eventually("one party waits", || with.n_waiting().unwrap() == 1);
    // The second party has no action: the generation breaks for both at once.
    assert_eq!(cause(without.wait()), BrokenCause::ActionMismatch);
    assert_eq!(cause(waiter.join().unwrap()), BrokenCause::ActionMismatch);
    assert!(with.is_broken().unwrap());
    // Once all agree, it works.
    with.reset().unwrap();
    let others: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn({
                let b = with.clone();
                move || b.wait()
            })
        })
        .collect();
    with.wait().unwrap();
    for o in others {
        o.join().unwrap().unwrap();
    }
}

fn generations(store: &Store) {
    const PARTIES: u32 = 3;
    const ROUNDS: u32 = 5;
    let space = store.open();
    let actions = Arc::new(AtomicU32::new(0));
    let barrier = space.barrier("phase", PARTIES).action({
        let actions = actions.clone();
        move || {
            actions.fetch_add(1, Ordering::SeqCst);
        }
    });
    let indices = threads(PARTIES as usize, {
        let actions = actions.clone();
        move |_| {
            let mut mine = Vec::new();
            for round in 0..ROUNDS {
                mine.push(barrier.wait().unwrap());
                // The action of this round ran before anyone was released, and the
                // next round's cannot have: this party has not arrived there yet.
                assert_eq!(actions.load(Ordering::SeqCst), round + 1);
            }
            mine
        }
    });
    for round in 0..ROUNDS as usize {
        let mut got: Vec<u32> = indices.iter().map(|m| m[round]).collect();
        got.sort();
        assert_eq!(got, [0, 1, 2], "each generation hands out every index once");
    }
    assert_eq!(actions.load(Ordering::SeqCst), ROUNDS);
}

fn timeout_breaks(store: &Store) {
    let space = store.open();
    let barrier = space.barrier("lonely", 2);
    let err = barrier.wait_timeout(Duration::from_millis(30));
    assert_eq!(cause(err), BrokenCause::TimedOut);
    assert!(barrier.is_broken().unwrap());
    assert!(matches!(barrier.wait(), Err(Error::BrokenBarrier { .. })));
    barrier.reset().unwrap();
    assert!(!barrier.is_broken().unwrap());
    let other = std::thread::spawn({
        let b = barrier.clone();
        move || b.wait()
    });
    let mine = barrier.wait().unwrap();
    let theirs = other.join().unwrap().unwrap();
    assert_eq!(mine + theirs, 1, "indices 0 and 1 after the reset");
}

fn reset_breaks(store: &Store) {
    let space = store.open();
    let barrier = space.barrier("resettable", 3);
    let waiter = std::thread::spawn({
        let b = barrier.clone();
        move || b.wait()
    });
    eventually("one party waits", || barrier.n_waiting().unwrap() == 1);
    barrier.reset().unwrap();
    assert_eq!(cause(waiter.join().unwrap()), BrokenCause::Reset);
    assert_eq!(barrier.n_waiting().unwrap(), 0);
    assert!(
        !barrier.is_broken().unwrap(),
        "reset leaves the barrier usable"
    );
}

fn abort_breaks(store: &Store) {
    let space = store.open();
    let barrier = space.barrier("aborted", 2);
    let waiter = std::thread::spawn({
        let b = barrier.clone();
        move || b.wait()
    });
    eventually("one party waits", || barrier.n_waiting().unwrap() == 1);
    barrier.abort().unwrap();
    assert_eq!(cause(waiter.join().unwrap()), BrokenCause::Aborted);
    assert!(barrier.is_broken().unwrap());
}

fn panicking_action(store: &Store) {
    let space = store.open();
    let barrier = space
        .barrier("bad-action", 1)
        .action(|| panic!("the action fails"));
    assert_eq!(cause(barrier.wait()), BrokenCause::ActionFailed);
    assert!(barrier.is_broken().unwrap());
}

fn parties_mismatch(store: &Store) {
    let space = store.open();
    let three = space.barrier("b", 3);
    let waiter = std::thread::spawn({
        let b = three.clone();
        move || b.wait_timeout(Duration::from_secs(60))
    });
    eventually("one party waits", || three.n_waiting().unwrap() == 1);
    let err = space.barrier("b", 4).wait().unwrap_err();
    assert!(matches!(err, Error::Mismatch { .. }), "{err}");
    // The waiter learns at once why its generation can never pass.
    assert_eq!(cause(waiter.join().unwrap()), BrokenCause::PartiesMismatch);
    assert!(three.is_broken().unwrap());
    // An idle barrier's parties are fixed too, and a refusal there breaks nothing.
    three.reset().unwrap();
    assert!(matches!(
        space.barrier("b", 4).wait(),
        Err(Error::Mismatch { .. })
    ));
    assert!(!three.is_broken().unwrap());
}
