//! One trait over the acquirable primitives (issue 19 item 12), and who owns a hold
//! whose guard moved to another thread.

use std::time::Duration;

use locksmith::{Acquirable, Error, Ownership};

use crate::{Store, Test};

pub fn tests() -> Vec<Test> {
    vec![
        (
            "acquirable::one_trait_over_every_acquirable_primitive",
            one_trait,
        ),
        (
            "acquirable::a_moved_guard_releases_but_the_acquirer_stays_owner",
            moved_guard,
        ),
        (
            "guard::a_release_on_drop_that_fails_reaches_the_spaces_hooks",
            drop_hook,
        ),
    ]
}

fn drop_hook(store: &Store) {
    let space = store.open();
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    // Hooks are the space's: a clone adds to the same list.
    space.clone().on_drop_error({
        let heard = heard.clone();
        move |name, error| heard.lock().unwrap().push((name.to_owned(), error.errno()))
    });
    // A clean drop is not reported.
    drop(space.lock("fine").acquire().unwrap());
    drop(space.semaphore("sem", 2).acquire().unwrap());
    assert!(heard.lock().unwrap().is_empty());
    // An operator breaks the hold; the guard's drop then fails.
    let guard = space.lock("job").acquire().unwrap();
    assert_eq!(space.force_release("job").unwrap(), 1);
    drop(guard);
    let permit = space.semaphore("sem", 2).tag("t").acquire().unwrap();
    assert_eq!(space.evict_tag("t").unwrap(), 1);
    drop(permit);
    assert_eq!(
        *heard.lock().unwrap(),
        [
            ("job".to_owned(), libc::ENOLCK),
            ("sem".to_owned(), libc::ENOLCK)
        ],
        "each failed drop is told once, as LeaseLost"
    );
}

/// Exclusive use through the trait alone, in every form.
fn exercise<A: Acquirable + Clone + Send + 'static>(a: &A, rt: &tokio::runtime::Runtime) {
    let g = a.acquire().unwrap();
    assert!(a.is_locked().unwrap(), "{}", a.name());
    // Another thread cannot have it meanwhile.
    let other = a.clone();
    let refused = std::thread::spawn(move || other.try_acquire().unwrap().is_none())
        .join()
        .unwrap();
    assert!(refused, "{} was free while held", a.name());
    drop(g);
    assert!(!a.is_locked().unwrap(), "{}", a.name());
    drop(a.try_acquire().unwrap().expect("free"));
    drop(
        a.acquire_timeout(Duration::from_secs(60))
            .unwrap()
            .expect("free"),
    );
    rt.block_on(async {
        drop(a.acquire_async().await.unwrap());
        drop(
            a.acquire_timeout_async(Duration::from_secs(60))
                .await
                .unwrap()
                .expect("free"),
        );
    });
}

fn one_trait(store: &Store) {
    let space = store.open();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    exercise(&space.lock("lock"), &rt);
    exercise(&space.rlock("rlock"), &rt);
    exercise(&space.semaphore("sem", 1), &rt);
    exercise(&space.bounded_semaphore("bsem", 1), &rt);
    exercise(&space.condition("cond"), &rt);
    exercise(&space.rwlock("rw").writer(), &rt);
    // Readers share: a second thread's reader gets in while one reads.
    let rw = space.rwlock("rw2");
    let reader = rw.reader();
    assert_eq!(Acquirable::name(&reader), "rw2");
    let first = reader.acquire().unwrap();
    let second = std::thread::spawn({
        let reader = reader.clone();
        move || reader.try_acquire().unwrap().is_some()
    })
    .join()
    .unwrap();
    assert!(second, "readers share");
    let writer = rw.writer();
    let refused = std::thread::spawn(move || writer.try_acquire().unwrap().is_none())
        .join()
        .unwrap();
    assert!(refused, "no writer while reading");
    drop(first);
}

fn moved_guard(store: &Store) {
    let space = store.open();
    let lock = space.lock("x");
    let guard = lock.acquire().unwrap();
    let token = guard.token();
    // Thread B gets the guard; this thread (A) stays the owner.
    let (to_b, at_b) = std::sync::mpsc::channel();
    let (back, returned) = std::sync::mpsc::channel();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let b = std::thread::spawn({
        let lock = lock.clone();
        move || {
            let guard: locksmith::Guard = at_b.recv().unwrap();
            let refused = lock.release();
            back.send(()).unwrap();
            wait.recv().unwrap();
            guard.release().unwrap();
            refused
        }
    });
    to_b.send(guard).unwrap();
    returned.recv().unwrap();
    let again = lock.try_acquire();
    go.send(()).unwrap();
    assert!(
        matches!(again, Err(Error::WouldDeadlock { .. })),
        "{again:?}"
    );
    let refused = b.join().unwrap();
    assert!(
        matches!(refused, Err(Error::NotOwner { .. })),
        "{refused:?}"
    );
    assert!(
        !lock.is_locked().unwrap(),
        "B's release of the moved guard freed it"
    );
    // Owned by the acquisition, a hold travels freely: A just waits like anyone.
    let lock = space.lock("y").ownership(Ownership::Acquisition);
    let guard = lock.acquire().unwrap();
    assert!(guard.token() > 0 && token > 0);
    let b = std::thread::spawn(move || guard.release());
    assert!(lock
        .acquire_timeout(Duration::from_secs(60))
        .unwrap()
        .is_some());
    b.join().unwrap().unwrap();
}
