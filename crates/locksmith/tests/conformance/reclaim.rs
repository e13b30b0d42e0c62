//! Reclaiming idle names (issue 12, item 14): a store may forget a name that is idle,
//! but a fencing token never goes back, on every store.

use crate::{Store, Test};

pub fn tests() -> Vec<Test> {
    vec![(
        "reclaim::item14_idle_names_go_and_tokens_never_go_back",
        idle_names_go_and_tokens_never_go_back,
    )]
}

fn idle_names_go_and_tokens_never_go_back(store: &Store) {
    let space = store.open();
    let mut again = 0;
    for _ in 0..3 {
        let t = space.lock("again").acquire().unwrap().token();
        assert!(t > again);
        again = t;
    }
    let mut busy = 0;
    for _ in 0..7 {
        busy = space.lock("busy").acquire().unwrap().token();
    }
    // What is in use stays: a held lock, a set event, a tagged semaphore's permit.
    let held = space.lock("held").acquire().unwrap();
    let flag = space.event("flag");
    flag.set().unwrap();
    let reclaimed = space.reclaim_idle().unwrap();
    assert!(reclaimed >= 2, "reclaimed {reclaimed}");
    let names = space.names().unwrap();
    for gone in ["again", "busy"] {
        assert!(!names.iter().any(|n| n == gone), "{gone} in {names:?}");
    }
    for kept in ["held", "flag"] {
        assert!(names.iter().any(|n| n == kept), "{kept} not in {names:?}");
    }
    assert!(flag.is_set().unwrap());
    let holders = space.holders("held").unwrap();
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].token, held.token());
    // Used again, a reclaimed name counts on from above its own last token (from the
    // store's floor: the highest counter reclaimed, per shard of a sharded store).
    let t = space.lock("again").acquire().unwrap().token();
    assert!(t > again, "token {t} after {again}");
    let t2 = space.lock("busy").acquire().unwrap().token();
    assert!(t2 > busy, "token {t2} after {busy}");
    drop(held);
}
