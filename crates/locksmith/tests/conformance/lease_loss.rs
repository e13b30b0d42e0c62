//! The lease-lost signal (issue 12, item 5): a holder that listens learns of a break
//! or an eviction at once, not at the keeper's next renewal.

use std::sync::mpsc;
use std::time::Duration;

use crate::{Store, Test};

pub fn tests() -> Vec<Test> {
    vec![
        (
            "lease_loss::a_broken_hold_is_reported_at_once",
            broken_hold_reported,
        ),
        (
            "lease_loss::an_evicted_hold_is_reported_at_once",
            evicted_hold_reported,
        ),
        (
            "lease_loss::the_error_says_what_may_have_ended_the_hold",
            lost_message,
        ),
    ]
}

/// Issue 19 item 2: `LeaseLost` names what can have ended the hold, and claims no lease
/// the hold never had.
fn lost_message(store: &Store) {
    let space = store.open();
    // The stores shared by many hosts give every hold a lease (renewed while the
    // holder lives): Redis, etcd and PostgreSQL.
    let store_lease = ["redis", "etcd", "postgres"]
        .iter()
        .any(|s| store.name.starts_with(s));
    for (lease, tag) in [(None, "a"), (Some(LONG_LEASE), "b")] {
        let mut lock = space.lock(tag).tag(tag);
        if let Some(lease) = lease {
            lock = lock.lease(lease);
        }
        // A detached hold, force-released, then one evicted: `lock.release()`.
        for evict in [false, true] {
            lock.acquire().unwrap().detach();
            let broken = if evict {
                space.evict_tag(tag).unwrap()
            } else {
                space.force_release(tag).unwrap()
            };
            assert_eq!(broken, 1);
            check_lost(
                &lock.release().unwrap_err(),
                tag,
                lease.is_some() || store_lease,
            );
        }
        // Through a guard.
        let guard = lock.acquire().unwrap();
        space.force_release(tag).unwrap();
        let e = guard.release().unwrap_err();
        check_lost(&e, tag, lease.is_some() || store_lease);
    }
}

fn check_lost(e: &locksmith::Error, name: &str, leased: bool) {
    assert!(matches!(e, locksmith::Error::LeaseLost { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&format!("'{name}'")), "{msg}");
    assert!(msg.contains("force-released or evicted"), "{msg}");
    assert_eq!(msg.contains("its lease lapsed"), leased, "{msg}");
}

/// A lease so long that the keeper's first renewal (a third of it) comes long after
/// the hang guard: only the watcher can report the loss in time.
const LONG_LEASE: Duration = Duration::from_secs(3600);

/// How long a report may take before the test calls it lost (a hang guard).
const HANG_GUARD: Duration = Duration::from_secs(60);

/// Takes `name` (tagged `tag`) with a long lease, listens for its loss, lets `end`
/// end the hold, and checks the holder is told, by the callback and by the flag.
fn loss_is_reported(store: &Store, name: &str, end: impl FnOnce(&locksmith::Space)) {
    let space = store.open();
    let guard = space
        .lock(name)
        .lease(LONG_LEASE)
        .tag("leases")
        .acquire()
        .unwrap();
    let (tx, lost) = mpsc::channel();
    guard.on_lease_lost(move || {
        let _ = tx.send(());
    });
    assert!(!guard.is_lease_lost());
    end(&space);
    lost.recv_timeout(HANG_GUARD)
        .expect("the holder was told of the loss before the keeper's first renewal");
    assert!(guard.is_lease_lost());
    assert!(matches!(
        guard.release(),
        Err(locksmith::Error::LeaseLost { .. })
    ));
}

fn broken_hold_reported(store: &Store) {
    loss_is_reported(store, "broken", |space| {
        assert_eq!(space.force_release("broken").unwrap(), 1);
    });
}

fn evicted_hold_reported(store: &Store) {
    loss_is_reported(store, "evicted", |space| {
        assert_eq!(space.evict_tag("leases").unwrap(), 1);
    });
}
