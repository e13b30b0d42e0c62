//! A name's kind and parameters are fixed from its first use until it is removed on
//! purpose (`Space::remove` of an idle name, `Space::evict_tag`), whether or not the
//! name is in use when another kind asks for it.

use locksmith::{Error, Space};

use crate::{Store, Test};

pub fn tests() -> Vec<Test> {
    vec![
        (
            "kinds::kind_and_parameters_stay_fixed_while_idle",
            fixed_while_idle,
        ),
        (
            "kinds::remove_refuses_a_busy_name_and_frees_an_idle_one",
            remove,
        ),
        ("kinds::evict_tag_frees_the_kind", evict_frees),
    ]
}

fn mismatch<T: std::fmt::Debug>(what: &str, found: &str, r: locksmith::Result<T>) {
    match r {
        Err(Error::Mismatch {
            found: f, wanted, ..
        }) => assert_eq!(f, found, "{what}: wanted {wanted}"),
        other => panic!("{what}: expected Mismatch (found {found}), got {other:?}"),
    }
}

fn fixed_while_idle(store: &Store) {
    let space = store.open();
    // Another handle on the same store: the kind lives in the store, not the handle.
    let other = Space::open(space.url()).unwrap();

    drop(space.lock("x").acquire().unwrap());
    assert!(!space.lock("x").is_locked().unwrap(), "the lock is idle");
    mismatch(
        "semaphore on an idle lock",
        "a Lock",
        other.semaphore("x", 2).try_acquire(),
    );
    mismatch(
        "rlock on an idle lock",
        "a Lock",
        other.rlock("x").try_acquire(),
    );
    mismatch("event on an idle lock", "a Lock", other.event("x").is_set());
    // The refused calls left the name a Lock that works.
    drop(other.lock("x").acquire().unwrap());

    drop(space.semaphore("s", 2).acquire().unwrap());
    mismatch(
        "another N on an idle semaphore",
        "a Semaphore of 2",
        other.semaphore("s", 3).try_acquire(),
    );
    mismatch(
        "value with another N",
        "a Semaphore of 2",
        other.semaphore("s", 3).value(),
    );
    mismatch(
        "bounded on a plain semaphore",
        "a Semaphore of 2",
        other.bounded_semaphore("s", 2).release(),
    );
    assert_eq!(other.semaphore("s", 2).value().unwrap(), 2);

    space.barrier("b", 1).wait().unwrap();
    mismatch(
        "other parties on an idle barrier",
        "a Barrier of 1 parties",
        other.barrier("b", 2).n_waiting(),
    );

    let event = space.event("e");
    event.set().unwrap();
    event.clear().unwrap();
    mismatch(
        "lock on a cleared event",
        "an Event",
        other.lock("e").try_acquire(),
    );

    let avg = space.averager("a");
    avg.add(1.0).unwrap();
    assert_eq!(avg.pop().unwrap(), Some(1.0));
    mismatch(
        "event on a popped averager",
        "an Averager",
        other.event("a").set(),
    );

    // A query is a use too: it fixes the kind of a new name.
    assert!(!space.event("q").is_set().unwrap());
    mismatch(
        "lock on a queried event",
        "an Event",
        other.lock("q").try_acquire(),
    );

    // A refused call on a new name fixes nothing.
    assert!(matches!(
        space.bounded_semaphore("z", 1).release(),
        Err(Error::TooManyReleases { .. })
    ));
    drop(other.lock("z").acquire().unwrap());
}

fn remove(store: &Store) {
    let space = store.open();
    let lock = space.lock("x");
    let guard = lock.acquire().unwrap();
    let first = guard.token();
    match space.remove("x") {
        Err(e @ Error::Busy { .. }) => assert_eq!(e.errno(), libc::EBUSY),
        other => panic!("remove of a held lock: expected Busy, got {other:?}"),
    }
    assert_eq!(
        space.holders("x").unwrap().len(),
        1,
        "a refused remove changes nothing"
    );
    drop(guard);
    assert!(space.remove("x").unwrap(), "an idle Lock is removed");
    assert!(!space.remove("x").unwrap(), "nothing left to remove");
    assert!(!space.remove("never-used").unwrap());
    // Now any kind may have it, and fencing tokens keep counting up.
    let sem = space.semaphore("x", 2);
    let g = sem.acquire().unwrap();
    assert!(
        g.token() > first,
        "tokens never go back: {} after {first}",
        g.token()
    );
    drop(g);
    mismatch(
        "lock on the new semaphore",
        "a Semaphore of 2",
        lock.try_acquire(),
    );

    let event = space.event("e");
    event.set().unwrap();
    assert!(matches!(space.remove("e"), Err(Error::Busy { .. })));
    assert!(event.is_set().unwrap());
    event.clear().unwrap();
    assert!(space.remove("e").unwrap());

    let barrier = space.barrier("b", 2);
    let waiter = std::thread::spawn({
        let b = barrier.clone();
        move || b.wait()
    });
    crate::eventually("one party waits", || barrier.n_waiting().unwrap() == 1);
    assert!(matches!(space.remove("b"), Err(Error::Busy { .. })));
    barrier.wait().unwrap();
    waiter.join().unwrap().unwrap();
    assert!(space.remove("b").unwrap());
    space.barrier("b", 3).n_waiting().unwrap();

    for bad in ["", "nul\0name"] {
        assert!(matches!(space.remove(bad), Err(Error::InvalidArgument(_))));
    }
}

fn evict_frees(store: &Store) {
    let space = store.open();
    let event = space.event("e").tag("job-1");
    event.set().unwrap();
    assert_eq!(space.evict_tag("job-1").unwrap(), 1);
    // Evicted on purpose: the name is free for any kind.
    let other = Space::open(space.url()).unwrap();
    let guard = other
        .lock("e")
        .acquire()
        .expect("an evicted event's name may become a Lock");
    drop(guard);
    mismatch("event on the new lock", "a Lock", space.event("e").is_set());
}
