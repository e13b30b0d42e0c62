//! Bad input gets a typed error and changes nothing.

use std::time::Duration;

use locksmith::{Error, Space};

use crate::{Store, Test};

pub fn tests() -> Vec<Test> {
    vec![
        ("input::bad_names_are_refused_by_every_primitive", bad_names),
        ("input::bad_parameters_are_refused", bad_parameters),
        ("input::bad_urls_are_refused", bad_urls),
        (
            "input::averager_add_that_would_overflow_is_refused",
            averager_overflow,
        ),
    ]
}

fn invalid<T: std::fmt::Debug>(what: &str, r: locksmith::Result<T>) {
    match r {
        Err(e @ Error::InvalidArgument(_)) => assert_eq!(e.errno(), libc::EINVAL),
        other => panic!("{what}: expected InvalidArgument, got {other:?}"),
    }
}

fn bad_names(store: &Store) {
    let space = store.open();
    let long = "n".repeat(locksmith::MAX_NAME_LEN + 1);
    let ok = "n".repeat(locksmith::MAX_NAME_LEN);
    for name in ["", long.as_str(), "nul\0name"] {
        invalid("lock", space.lock(name).acquire());
        invalid("rlock", space.rlock(name).try_acquire());
        invalid(
            "semaphore",
            space.semaphore(name, 1).acquire_timeout(Duration::ZERO),
        );
        invalid("bounded", space.bounded_semaphore(name, 1).release());
        invalid("event", space.event(name).set());
        invalid("condition", space.condition(name).notify(1));
        invalid("barrier", space.barrier(name, 1).wait());
        invalid("averager", space.averager(name).add(1.0));
        invalid("rwlock", space.rwlock(name).read());
        invalid("holders", space.holders(name));
    }
    assert!(
        space.names().unwrap().is_empty(),
        "refused calls leave nothing behind"
    );
    let guard = space
        .lock(&ok)
        .acquire()
        .expect("a name of exactly the limit is fine");
    drop(guard);
}

fn bad_parameters(store: &Store) {
    let space = store.open();
    invalid("zero parties", space.barrier("b", 0).wait());
    invalid("zero parties", space.barrier("b", 0).n_waiting());
    invalid("bounded of 0", space.bounded_semaphore("s", 0).acquire());
    invalid(
        "zero lease",
        space.lock("l").lease(Duration::ZERO).acquire(),
    );
    invalid("NaN", space.averager("a").add(f64::NAN));
    invalid("infinity", space.averager("a").add(f64::INFINITY));
    assert!(
        space.names().unwrap().is_empty(),
        "refused calls leave nothing behind"
    );
    assert_eq!(space.averager("a").get().unwrap(), None);
}

fn bad_urls(_store: &Store) {
    for url in ["", "nonsense", "ftp://x", "zzz:"] {
        let err = Space::open(url).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument(_) | Error::Unsupported(_)),
            "{url}: {err}"
        );
    }
}

/// Item 12.7: an add whose sum would be infinite is refused with a typed error and
/// changes nothing; the averager goes on working.
fn averager_overflow(store: &Store) {
    let space = store.open();
    let avg = space.averager("big");
    avg.add(1e308).unwrap();
    for value in [1e308, f64::MAX] {
        match avg.add(value) {
            Err(e @ Error::Overflow { .. }) => assert_eq!(e.errno(), libc::ERANGE),
            other => panic!("expected Overflow, got {other:?}"),
        }
    }
    assert_eq!(avg.get().unwrap(), Some(1e308));
    avg.add(-1e308).unwrap();
    assert_eq!(avg.get().unwrap(), Some(0.0));
    let low = space.averager("low");
    low.add(-1e308).unwrap();
    assert!(matches!(low.add(-1e308), Err(Error::Overflow { .. })));
    assert_eq!(low.pop().unwrap(), Some(-1e308));
    assert_eq!(low.get().unwrap(), None);
}
