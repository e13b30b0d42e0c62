//! Every waiting operation has a blocking, a `try_`, a `_timeout` and an `_async` form
//! (issue 19 item 6): the forms added for Condition::wait_while, run, Event and
//! Barrier.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use locksmith::Error;

use crate::{eventually, Store, Test};

pub fn tests() -> Vec<Test> {
    vec![
        (
            "forms::wait_while_with_timeout_async_and_a_fallible_predicate",
            wait_while_forms,
        ),
        ("forms::run_timeout_gives_up_without_running", run_timeout),
        ("forms::event_and_barrier_try_forms", try_forms),
        ("forms::store_steps_have_async_forms", store_steps_async),
    ]
}

fn store_steps_async(store: &Store) {
    let space = store.open();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let lock = space.lock("l");
        assert!(!lock.is_locked_async().await.unwrap());
        let g = lock.acquire_async().await.unwrap();
        assert!(lock.is_locked_async().await.unwrap());
        assert!(g.is_held_async().await.unwrap());
        assert_eq!(space.holders_async("l").await.unwrap().len(), 1);
        assert_eq!(space.waiting_async("l").await.unwrap(), 0);
        assert_eq!(space.force_release_async("l").await.unwrap(), 1);
        assert!(!g.is_held_async().await.unwrap());
        drop(g);
        // Busy until the next holder was told the last one was cut short.
        assert!(matches!(
            space.remove_async("l").await,
            Err(Error::Busy { .. })
        ));
        assert!(lock.acquire_async().await.unwrap().previous_owner_died());
        assert!(space.remove_async("l").await.unwrap());

        assert!(!space.rlock("r").is_locked_async().await.unwrap());
        assert!(!space.rwlock("w").is_locked_async().await.unwrap());
        assert!(!space.semaphore("s", 1).is_locked_async().await.unwrap());
        let b = space.bounded_semaphore("bs", 1);
        let p = b.acquire_async().await.unwrap();
        assert!(b.is_locked_async().await.unwrap());
        drop(p);

        let e = space.event("e");
        assert!(!e.is_set_async().await.unwrap());
        e.set_async().await.unwrap();
        assert!(e.is_set_async().await.unwrap());
        e.clear_async().await.unwrap();
        assert!(!e.is_set_async().await.unwrap());

        let c = space.condition("c");
        assert!(matches!(
            c.notify_async(1).await,
            Err(Error::NotHeld { .. })
        ));
        let g = c.acquire_async().await.unwrap();
        assert!(c.is_locked_async().await.unwrap());
        assert_eq!(c.notify_all_async().await.unwrap(), 0);
        drop(g);

        let a = space.averager("a");
        a.add_async(1.0).await.unwrap();
        a.add_async(3.0).await.unwrap();
        assert_eq!(a.get_async().await.unwrap(), Some(2.0));
        assert_eq!(a.pop_async().await.unwrap(), Some(2.0));
        assert_eq!(a.get_async().await.unwrap(), None);

        let bar = space.barrier("b", 2);
        assert_eq!(bar.n_waiting_async().await.unwrap(), 0);
        bar.abort_async().await.unwrap();
        assert!(bar.is_broken_async().await.unwrap());
        bar.reset_async().await.unwrap();
        assert!(!bar.is_broken_async().await.unwrap());

        // Releases through the handles, and the queries that go with them.
        let s = space.semaphore("sig", 0);
        s.release_async().await.unwrap();
        s.release_n_async(2).await.unwrap();
        assert_eq!(s.value_async().await.unwrap(), 3);
        assert_eq!(b.value_async().await.unwrap(), 1);
        assert!(matches!(
            b.release_async().await,
            Err(Error::TooManyReleases { .. })
        ));
        let l = space.lock("detached");
        l.acquire_async().await.unwrap().detach();
        assert!(
            matches!(l.release_async().await, Err(Error::NotOwner { .. })),
            "an async hold is its own owner, not the thread's"
        );
        // Owned by the acquisition, any thread of the process gives it back.
        let l = l.ownership(locksmith::Ownership::Acquisition);
        l.release_async().await.unwrap();
        assert!(matches!(
            l.release_async().await,
            Err(Error::NotHeld { .. })
        ));
        let r = space.rlock("rl");
        let outer = r.acquire().unwrap();
        let inner = r.acquire().unwrap();
        assert!(r.is_owned_async().await.unwrap());
        assert_eq!(r.recursion_count_async().await.unwrap(), 2);
        inner.detach();
        r.release_async().await.unwrap();
        assert_eq!(r.recursion_count_async().await.unwrap(), 1);
        drop(outer);
        assert!(!r.is_owned_async().await.unwrap());

        // Whole-store work.
        let names = space.names_async().await.unwrap();
        assert!(names.contains(&"sig".to_owned()), "{names:?}");
        let tagged = space.lock("tagged").tag("t");
        let g = tagged.acquire_async().await.unwrap();
        assert_eq!(space.evict_tag_async("t").await.unwrap(), 1);
        assert!(matches!(
            g.release_async().await,
            Err(Error::LeaseLost { .. })
        ));
        drop(tagged.acquire_async().await.unwrap());
        assert!(space.remove_async("tagged").await.unwrap());
        drop(tagged);
        assert!(space.reclaim_idle_async().await.unwrap() >= 1);
        assert!(!space
            .names_async()
            .await
            .unwrap()
            .contains(&"tagged".to_owned()));
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn wait_while_forms(store: &Store) {
    let space = store.open();
    let cond = space.condition("cv");
    let value = Arc::new(AtomicU32::new(0));
    let mut guard = cond.acquire().unwrap();
    // Nobody changes it: the time runs out, the lock is held again.
    let met = cond
        .wait_while_timeout(&mut guard, Duration::from_millis(20), || {
            Ok::<_, Error>(value.load(Ordering::SeqCst) == 0)
        })
        .unwrap();
    assert!(!met);
    assert!(guard.is_held().unwrap());
    // Already false: returns at once.
    value.store(1, Ordering::SeqCst);
    assert!(cond
        .wait_while_timeout(&mut guard, Duration::ZERO, || {
            Ok::<_, Error>(value.load(Ordering::SeqCst) == 0)
        })
        .unwrap());
    // A predicate that fails ends the wait with its error, holding the lock.
    #[derive(Debug)]
    #[allow(dead_code)] // the lock's error is read through Debug only
    enum AppError {
        Read,
        Lock(Error),
    }
    impl From<Error> for AppError {
        fn from(e: Error) -> Self {
            AppError::Lock(e)
        }
    }
    let r = cond.wait_while_fallible(&mut guard, || Err::<bool, _>(AppError::Read));
    assert!(matches!(r, Err(AppError::Read)), "{r:?}");
    assert!(guard.is_held().unwrap());
    drop(guard);
    // A notifier on another thread ends a timed wait in time.
    value.store(0, Ordering::SeqCst);
    let setter = std::thread::spawn({
        let (cond, value) = (cond.clone(), value.clone());
        move || {
            eventually("the waiter sleeps", || cond.is_locked().ok() == Some(false));
            let _g = cond.acquire().unwrap();
            value.store(2, Ordering::SeqCst);
            cond.notify_all().unwrap();
        }
    });
    let mut guard = cond.acquire().unwrap();
    let met = cond
        .wait_while_timeout(&mut guard, Duration::from_secs(120), || {
            Ok::<_, AppError>(value.load(Ordering::SeqCst) != 2)
        })
        .unwrap();
    assert!(met);
    drop(guard);
    setter.join().unwrap();
    // The async forms.
    runtime().block_on(async {
        let mut guard = cond.acquire_async().await.unwrap();
        let met = cond
            .wait_while_timeout_async(&mut guard, Duration::from_millis(20), || {
                Ok::<_, Error>(true)
            })
            .await
            .unwrap();
        assert!(!met);
        value.store(3, Ordering::SeqCst);
        cond.wait_while_async(&mut guard, || {
            Ok::<_, Error>(value.load(Ordering::SeqCst) != 3)
        })
        .await
        .unwrap();
        assert!(guard.is_held().unwrap());
    });
}

fn run_timeout(store: &Store) {
    let space = store.open();
    let lock = space.lock("busy");
    let held = lock.acquire().unwrap();
    let ran = Arc::new(AtomicU32::new(0));
    let rt = runtime();
    let out = rt
        // (A second: room for a network store's first connection of this runtime.)
        .block_on(lock.run_timeout(Duration::from_secs(1), {
            let ran = ran.clone();
            || async move { ran.fetch_add(1, Ordering::SeqCst) }
        }))
        .unwrap();
    assert_eq!(out, None, "the lock stayed busy");
    let out = rt
        .block_on(lock.try_run({
            let ran = ran.clone();
            || async move { ran.fetch_add(1, Ordering::SeqCst) }
        }))
        .unwrap();
    assert_eq!(out, None, "try_run does not wait");
    assert_eq!(ran.load(Ordering::SeqCst), 0, "f never ran");
    drop(held);
    let out = rt
        .block_on(lock.run_timeout(Duration::from_secs(60), || async { 42 }))
        .unwrap();
    assert_eq!(out, Some(42));
    assert_eq!(rt.block_on(lock.try_run(|| async { 7 })).unwrap(), Some(7));
    assert!(!lock.is_locked().unwrap(), "released after f");
}

fn try_forms(store: &Store) {
    let space = store.open();
    let event = space.event("e");
    assert!(!event.try_wait().unwrap());
    event.set().unwrap();
    assert!(event.try_wait().unwrap());

    let barrier = space.barrier("b", 2);
    // Alone: not the last party, so it does not arrive.
    assert_eq!(barrier.try_wait().unwrap(), None);
    assert_eq!(
        barrier.n_waiting().unwrap(),
        0,
        "a try that fails arrives not"
    );
    let waiter = std::thread::spawn({
        let b = barrier.clone();
        move || b.wait_timeout(Duration::from_secs(120))
    });
    eventually("one party waits", || barrier.n_waiting().unwrap() == 1);
    // Now it completes the generation, and releases the waiter.
    assert_eq!(barrier.try_wait().unwrap(), Some(1));
    assert_eq!(waiter.join().unwrap().unwrap(), 0);
}
