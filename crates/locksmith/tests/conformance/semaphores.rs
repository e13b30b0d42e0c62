//! Semaphore and BoundedSemaphore: counts, signalling, bounds, averages.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use locksmith::Error;

use crate::{threads, Store, Test};

pub fn tests() -> Vec<Test> {
    vec![
        ("semaphore::never_more_than_k_holders", never_more_than_k),
        (
            "semaphore::release_without_permit_raises_the_count",
            signalling_release,
        ),
        ("semaphore::zero_permits_blocks_until_released", zero_blocks),
        (
            "semaphore::each_permit_has_its_own_increasing_token",
            permit_tokens,
        ),
        (
            "bounded_semaphore::release_at_full_is_refused_and_changes_nothing",
            bounded_refuses,
        ),
        (
            "bounded_semaphore::another_thread_may_release",
            bounded_cross_thread_release,
        ),
        (
            "bounded_semaphore::leased_permits_come_back",
            bounded_lease_lapse,
        ),
        ("averager::diskcache_examples", averager_examples),
        ("averager::expire_drops_the_average", averager_expire),
    ]
}

fn never_more_than_k(store: &Store) {
    const K: u32 = 3;
    let space = store.open();
    let sem = space.semaphore("pool", K);
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let passes = Arc::new(AtomicUsize::new(0));
    threads(8, {
        let (inside, most, passes) = (inside.clone(), most.clone(), passes.clone());
        move |_| {
            for _ in 0..50 {
                let _permit = sem.acquire().unwrap();
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::yield_now();
                inside.fetch_sub(1, Ordering::SeqCst);
                passes.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    assert!(
        most.load(Ordering::SeqCst) <= K as usize,
        "more than {K} holders at once"
    );
    assert_eq!(passes.load(Ordering::SeqCst), 400);
    let all: Vec<_> = (0..K)
        .map(|_| space.semaphore("pool", K).try_acquire().unwrap())
        .collect();
    assert!(all.iter().all(Option::is_some), "every permit came back");
}

fn signalling_release(store: &Store) {
    let space = store.open();
    let sem = space.semaphore("signal", 0);
    assert!(sem.try_acquire().unwrap().is_none());
    sem.release().unwrap();
    sem.release().unwrap();
    let a = sem.try_acquire().unwrap();
    let b = sem.try_acquire().unwrap();
    assert!(
        a.is_some() && b.is_some(),
        "two releases raised the count to two"
    );
    assert!(sem.try_acquire().unwrap().is_none());
}

fn zero_blocks(store: &Store) {
    let space = store.open();
    let sem = space.semaphore("gate", 0);
    let waiter = std::thread::spawn({
        let sem = sem.clone();
        move || {
            sem.acquire_timeout(Duration::from_secs(60))
                .map(|g| g.is_some())
        }
    });
    crate::eventually("the waiter queues", || space.waiting("gate").unwrap() == 1);
    sem.release().unwrap();
    assert!(waiter.join().unwrap().unwrap());
}

fn permit_tokens(store: &Store) {
    let space = store.open();
    let sem = space.semaphore("tokens", 3);
    let a = sem.acquire().unwrap();
    let b = sem.acquire().unwrap();
    let c = sem.acquire().unwrap();
    assert!(a.token() < b.token() && b.token() < c.token());
    assert_eq!(space.holders("tokens").unwrap().len(), 3);
}

fn bounded_refuses(store: &Store) {
    let space = store.open();
    let sem = space.bounded_semaphore("bounded", 2);
    let err = sem.release().unwrap_err();
    assert!(matches!(err, Error::TooManyReleases { .. }), "{err}");
    let a = sem.acquire().unwrap();
    drop(a);
    assert!(matches!(sem.release(), Err(Error::TooManyReleases { .. })));
    let held: Vec<_> = (0..3).map(|_| sem.try_acquire().unwrap()).collect();
    assert_eq!(
        held.iter().filter(|g| g.is_some()).count(),
        2,
        "still exactly 2 permits"
    );
}

fn bounded_cross_thread_release(store: &Store) {
    let space = store.open();
    let sem = space.bounded_semaphore("handover", 1);
    sem.acquire().unwrap().detach();
    assert!(sem.try_acquire().unwrap().is_none());
    threads(1, {
        let sem = sem.clone();
        move |_| sem.release().unwrap()
    });
    assert!(
        sem.try_acquire().unwrap().is_some(),
        "the permit released elsewhere is free"
    );
    assert!(matches!(sem.release(), Err(Error::TooManyReleases { .. })));
}

fn bounded_lease_lapse(store: &Store) {
    let space = store.open();
    let sem = space
        .bounded_semaphore("lapsing", 1)
        .lease(Duration::from_millis(100))
        .keep_alive(false);
    let old = sem.acquire().unwrap();
    let next = sem
        .acquire_timeout(Duration::from_secs(30))
        .unwrap()
        .expect("the lapsed permit returns");
    assert!(next.previous_owner_died());
    assert!(matches!(old.release(), Err(Error::LeaseLost { .. })));
    assert_eq!(space.holders("lapsing").unwrap().len(), 1);
}

fn averager_examples(store: &Store) {
    let space = store.open();
    let avg = space.averager("avg");
    assert_eq!(avg.get().unwrap(), None);
    assert_eq!(avg.pop().unwrap(), None);
    for v in 0..10 {
        avg.add(f64::from(v)).unwrap();
    }
    assert_eq!(avg.get().unwrap(), Some(4.5));
    assert_eq!(avg.pop().unwrap(), Some(4.5));
    assert_eq!(avg.get().unwrap(), None);
    for v in 0..20 {
        avg.add(f64::from(v)).unwrap();
    }
    assert_eq!(avg.get().unwrap(), Some(9.5));
    threads(4, {
        let avg = avg.clone();
        move |_| {
            for _ in 0..25 {
                avg.add(9.5).unwrap()
            }
        }
    });
    assert_eq!(avg.get().unwrap(), Some(9.5), "concurrent adds are atomic");
}

fn averager_expire(store: &Store) {
    let space = store.open();
    let avg = space.averager("fleeting").expire(Duration::from_millis(50));
    avg.add(1.0).unwrap();
    // Time must pass for an expiry to happen.
    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(avg.get().unwrap(), None);
}
