//! The async half: Twisted's DeferredLock parity, FIFO, cancellation, timeouts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use locksmith::{Error, Space};

use crate::{eventually, Store, Test};

pub fn tests() -> Vec<Test> {
    vec![
        ("async::network_counter_yields_1_then_2", network_counter),
        ("async::waiters_are_served_first_come_first_served", fifo),
        (
            "async::cancelled_waiter_mid_queue_never_holds",
            cancel_mid_queue,
        ),
        (
            "async::ten_thousand_tasks_count_exactly",
            ten_thousand_tasks,
        ),
        ("async::timeouts_by_method_and_by_tokio_time", timeouts),
        ("async::run_releases_on_panic_and_cancel", run_releases),
        (
            "async::release_async_frees_and_is_cancel_safe",
            release_async,
        ),
        ("async::semaphore_run_limits_concurrency", semaphore_run),
        (
            "async::sync_and_async_holders_exclude_each_other",
            mixed_holders,
        ),
        ("async::event_condition_barrier_wait_async", other_waits),
        (
            "async::a_dropped_wait_leaves_and_passes_on_a_grant_on_a_current_thread_runtime",
            dropped_waits,
        ),
        (
            "async::a_blocking_wait_that_would_deadlock_its_runtime_is_refused",
            blocking_wait_in_runtime,
        ),
        (
            "async::a_space_dropped_after_a_cancelled_wait_leaves_no_place_behind",
            dropped_space,
        ),
    ]
}

/// A program that cancels a wait and then drops its space (as one that exits does)
/// leaves no queue place behind: dropping the space finishes the leaving it handed to
/// the space's helper thread.
fn dropped_space(store: &Store) {
    let url = (store.fresh_url)();
    let other = Space::open(&url).unwrap();
    let held = other.lock("x").acquire().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let space = Space::open(&url).unwrap();
    rt.block_on(async {
        let waiter = tokio::spawn({
            let lock = space.lock("x");
            async move { lock.acquire_async().await.map(drop) }
        });
        while space.waiting_async("x").await.unwrap() == 0 {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
    });
    drop(space);
    assert_eq!(
        other.waiting("x").unwrap(),
        0,
        "the dropped space left its place"
    );
    drop(held);
}

/// Issue 19 item 4: on a current-thread runtime, a blocking acquisition of what a task
/// of this process holds could never end (the task cannot run to release it): it is
/// `RuntimeDeadlock`, at once, changing nothing. Held by another thread, the same wait
/// is sound, and waits.
fn blocking_wait_in_runtime(store: &Store) {
    let space = store.open();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lock = space.lock("l");
    let sem = space.semaphore("s", 1);
    rt.block_on(async {
        let held = lock.acquire_async().await.unwrap();
        let permit = sem.acquire_async().await.unwrap();
        // From the block_on future and from a task of the runtime.
        assert!(matches!(lock.acquire(), Err(Error::RuntimeDeadlock { .. })));
        let timed = tokio::spawn({
            let lock = lock.clone();
            async move {
                lock.acquire_timeout(Duration::from_secs(120))
                    .map(|g| g.is_some())
            }
        });
        let e = timed.await.unwrap().unwrap_err();
        assert!(matches!(e, Error::RuntimeDeadlock { .. }), "{e}");
        assert_eq!(e.errno(), libc::EDEADLK);
        assert!(matches!(
            sem.acquire_timeout(Duration::from_secs(120)),
            Err(Error::RuntimeDeadlock { .. })
        ));
        // A try never waits, so it is answered as ever.
        assert!(lock.try_acquire().unwrap().is_none());
        assert_eq!(space.waiting_async("l").await.unwrap(), 0, "nothing queued");
        drop(held);
        drop(permit);
    });
    // Held by another thread: it can release while the runtime's thread blocks.
    let (took, token) = std::sync::mpsc::channel();
    let releaser = std::thread::spawn({
        let space = space.clone();
        move || {
            let guard = space.lock("l").acquire().unwrap();
            took.send(guard.token()).unwrap();
            eventually("the blocked runtime queues", || {
                space.waiting("l").unwrap() == 1
            });
            drop(guard);
        }
    });
    let token = token.recv().unwrap();
    let next = rt.block_on(async { lock.acquire().map(|g| g.token()) });
    assert!(next.unwrap() > token);
    releaser.join().unwrap();
}

/// Issue 19 item 5: dropped async waits on a current-thread runtime (whose one thread
/// a blocking drop would stall) leave their queue, and a wake-up that reached one
/// first is passed on to the next waiter.
fn dropped_waits(store: &Store) {
    let space = store.open();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for (name, lock) in [
            ("l", space.lock("l")),
            (
                "a",
                space.lock("a").ownership(locksmith::Ownership::Acquisition),
            ),
        ] {
            let held = lock.acquire().unwrap();
            let queue = |lock: &locksmith::Lock| {
                let lock = lock.clone();
                tokio::spawn(async move { lock.acquire_async().await.map(|g| g.token()) })
            };
            let first = queue(&lock);
            while space.waiting_async(name).await.unwrap() < 1 {
                tokio::task::yield_now().await;
            }
            let second = queue(&lock);
            while space.waiting_async(name).await.unwrap() < 2 {
                tokio::task::yield_now().await;
            }
            // The release wakes `first`, which is dropped before it runs: its
            // wake-up must reach `second`.
            let token = held.token();
            drop(held);
            first.abort();
            assert!(first.await.unwrap_err().is_cancelled());
            let next = second.await.unwrap().unwrap();
            assert!(next > token, "the second waiter got the lock");
            while space.waiting_async(name).await.unwrap() != 0
                || lock.is_locked_async().await.unwrap()
            {
                tokio::task::yield_now().await;
            }
        }
        // A semaphore's dropped waiter, and a condition's and a barrier's.
        let sem = space.semaphore("s", 1);
        let permit = sem.acquire_async().await.unwrap();
        let waiter = tokio::spawn({
            let sem = sem.clone();
            async move { sem.acquire_async().await.map(drop) }
        });
        while space.waiting_async("s").await.unwrap() == 0 {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        drop(permit);
        while space.waiting_async("s").await.unwrap() != 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(sem.value_async().await.unwrap(), 1, "the permit came back");

        let barrier = space.barrier("b", 2);
        let party = tokio::spawn({
            let barrier = barrier.clone();
            async move { barrier.wait_async().await }
        });
        while barrier.n_waiting_async().await.unwrap() == 0 {
            tokio::task::yield_now().await;
        }
        party.abort();
        assert!(party.await.unwrap_err().is_cancelled());
        // A party that went away breaks the generation, rather than leaving the
        // others waiting for it.
        while !barrier.is_broken_async().await.unwrap() {
            tokio::task::yield_now().await;
        }
    });
}

fn release_async(store: &Store) {
    let space = store.open();
    runtime().block_on(async {
        let lock = space.lock("released");
        for lease in [None, Some(Duration::from_secs(60))] {
            let lock = match lease {
                Some(lease) => lock.clone().lease(lease),
                None => lock.clone(),
            };
            // Awaited: free at once, and a waiter gets it.
            let guard = lock.acquire_async().await.unwrap();
            let waiter = tokio::spawn({
                let lock = lock.clone();
                async move { lock.acquire_async().await.unwrap().token() }
            });
            eventually("the waiter queued", || {
                space.waiting("released").unwrap() == 1
            });
            let token = guard.token();
            guard.release_async().await.unwrap();
            assert!(waiter.await.unwrap() > token);
            assert!(!lock.is_locked().unwrap());
            // Dropped before it ran: the guard inside releases on drop.
            let release = lock.acquire_async().await.unwrap().release_async();
            assert!(lock.is_locked().unwrap());
            drop(release);
            assert!(
                !lock.is_locked().unwrap(),
                "a cancelled release left a holder"
            );
            // Dropped after its first poll (mid-flight on a network store).
            let release = lock.acquire_async().await.unwrap().release_async();
            let _ = tokio::time::timeout(Duration::ZERO, release).await;
            assert!(
                !lock.is_locked().unwrap(),
                "a cancelled release left a holder"
            );
            // Broken meanwhile: reported, as by release().
            let guard = lock.acquire_async().await.unwrap();
            assert_eq!(space.force_release("released").unwrap(), 1);
            assert!(matches!(
                guard.release_async().await,
                Err(locksmith::Error::LeaseLost { .. })
            ));
            drop(lock.acquire_async().await.unwrap());
        }
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn network_counter(store: &Store) {
    // The seed's example: two concurrent next() calls must yield 1 and 2.
    let space = store.open();
    runtime().block_on(async {
        let lock = space.lock("counter");
        let value = Arc::new(AtomicU64::new(0));
        let next = |lock: locksmith::Lock, value: Arc<AtomicU64>| async move {
            lock.run(|| async {
                let v = value.load(Ordering::SeqCst);
                tokio::task::yield_now().await;
                value.store(v + 1, Ordering::SeqCst);
                v + 1
            })
            .await
            .unwrap()
        };
        let (a, b) = tokio::join!(
            next(lock.clone(), value.clone()),
            next(lock.clone(), value.clone())
        );
        let mut got = [a, b];
        got.sort();
        assert_eq!(got, [1, 2]);
    });
}

/// Spawns waiter `i` and waits until it is queued, so queue order is spawn order.
async fn spawn_queued(
    space: &locksmith::Space,
    name: &str,
    i: usize,
    order: &Arc<Mutex<Vec<usize>>>,
) -> tokio::task::JoinHandle<()> {
    let before = space.waiting(name).unwrap();
    let task = tokio::spawn({
        let (lock, order) = (space.lock(name), order.clone());
        async move {
            let guard = lock.acquire_async().await.unwrap();
            order.lock().unwrap().push(i);
            drop(guard);
        }
    });
    while space.waiting(name).unwrap() == before {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    task
}

fn fifo(store: &Store) {
    let space = store.open();
    runtime().block_on(async {
        let holder = space.lock("fifo").acquire_async().await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            tasks.push(spawn_queued(&space, "fifo", i, &order).await);
        }
        drop(holder);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
    });
}

fn cancel_mid_queue(store: &Store) {
    let space = store.open();
    runtime().block_on(async {
        let holder = space.lock("cancel").acquire_async().await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = spawn_queued(&space, "cancel", 0, &order).await;
        let middle = spawn_queued(&space, "cancel", 1, &order).await;
        let last = spawn_queued(&space, "cancel", 2, &order).await;
        middle.abort();
        assert!(middle.await.unwrap_err().is_cancelled());
        // (On stores whose steps wait on I/O the space's helper thread leaves for it.)
        eventually("the cancelled waiter left the queue", || {
            space.waiting("cancel").unwrap() == 2
        });
        drop(holder);
        first.await.unwrap();
        last.await.unwrap();
        assert_eq!(
            *order.lock().unwrap(),
            [0, 2],
            "order kept, the cancelled one never held"
        );
        assert!(space.holders("cancel").unwrap().is_empty());
        assert_eq!(space.waiting("cancel").unwrap(), 0);
    });
}

fn ten_thousand_tasks(store: &Store) {
    const TASKS: u64 = 10_000;
    // On Redis every task's steps share one pipelined connection, and a step's timeout
    // counts from when it is queued: ten thousand enqueues at once take seconds to go
    // through on a loaded machine, so the default 5 s is too short for them (README,
    // Redis: "many tasks, one connection").
    let url = (store.fresh_url)();
    let url = if url.starts_with("redis") {
        format!("{url}&timeout=120s")
    } else {
        url
    };
    let space = Space::open(&url).unwrap();
    runtime().block_on(async {
        let lock = space.lock("many");
        let value = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let (lock, value) = (lock.clone(), value.clone());
                tokio::spawn(async move {
                    lock.run(|| async {
                        let v = value.load(Ordering::Relaxed);
                        value.store(v + 1, Ordering::Relaxed);
                    })
                    .await
                    .unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(value.load(Ordering::SeqCst), TASKS);
    });
}

fn timeouts(store: &Store) {
    let space = store.open();
    runtime().block_on(async {
        let lock = space.lock("t");
        let holder = lock.acquire_async().await.unwrap();
        assert!(lock
            .acquire_timeout_async(Duration::from_millis(20))
            .await
            .unwrap()
            .is_none());
        assert_eq!(space.waiting("t").unwrap(), 0, "a timed-out waiter left");
        let composed = tokio::time::timeout(Duration::from_millis(20), lock.acquire_async()).await;
        assert!(composed.is_err(), "tokio's timeout cancels the acquisition");
        eventually("the cancelled waiter left the queue", || {
            space.waiting("t").unwrap() == 0
        });
        drop(holder);
        let again = lock
            .acquire_timeout_async(Duration::from_secs(60))
            .await
            .unwrap();
        assert!(again.is_some(), "no waiter kept the wake-up");
    });
}

fn run_releases(store: &Store) {
    let space = store.open();
    runtime().block_on(async {
        let lock = space.lock("run");
        let panicking = tokio::spawn({
            let lock = lock.clone();
            async move { lock.run(|| async { panic!("inside run") }).await }
        });
        assert!(panicking.await.unwrap_err().is_panic());
        assert!(!lock.is_locked().unwrap(), "released after a panic");
        let (entered, inside) = tokio::sync::oneshot::channel();
        let pending = tokio::spawn({
            let lock = lock.clone();
            async move {
                lock.run(|| async move {
                    entered.send(()).unwrap();
                    std::future::pending::<()>().await
                })
                .await
            }
        });
        inside.await.unwrap();
        assert!(lock.is_locked().unwrap());
        pending.abort();
        assert!(pending.await.unwrap_err().is_cancelled());
        assert!(!lock.is_locked().unwrap(), "released after cancellation");
    });
}

fn semaphore_run(store: &Store) {
    let space = store.open();
    runtime().block_on(async {
        let sem = space.semaphore("jobs", 2);
        let inside = Arc::new(AtomicU64::new(0));
        let most = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (sem, inside, most) = (sem.clone(), inside.clone(), most.clone());
                tokio::spawn(async move {
                    sem.run(|| async {
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        inside.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                    .unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 2);
    });
}

fn mixed_holders(store: &Store) {
    let space = store.open();
    let lock = space.lock("mixed");
    let sync_guard = lock.acquire().unwrap();
    let rt = runtime();
    let task = rt.spawn({
        let lock = lock.clone();
        async move { lock.acquire_async().await.map(|g| g.token()) }
    });
    eventually("the async waiter queues", || {
        space.waiting("mixed").unwrap() == 1
    });
    let first = sync_guard.token();
    drop(sync_guard);
    let second = rt.block_on(task).unwrap().unwrap();
    assert!(second > first);
}

fn other_waits(store: &Store) {
    let space = store.open();
    runtime().block_on(async {
        let ev = space.event("ready");
        let waiter = tokio::spawn({
            let ev = ev.clone();
            async move { ev.wait_async().await }
        });
        ev.set().unwrap();
        assert!(waiter.await.unwrap().unwrap());
        assert!(!space
            .event("other")
            .wait_timeout_async(Duration::from_millis(10))
            .await
            .unwrap());

        let barrier = space.barrier("b", 2);
        let other = tokio::spawn({
            let b = barrier.clone();
            async move { b.wait_async().await }
        });
        let mine = barrier.wait_async().await.unwrap();
        assert_eq!(mine + other.await.unwrap().unwrap(), 1);

        let cond = space.condition("c");
        let mut guard = cond.acquire_async().await.unwrap();
        assert!(!cond
            .wait_timeout_async(&mut guard, Duration::from_millis(10))
            .await
            .unwrap());
        let sleeper = tokio::spawn({
            let cond = cond.clone();
            async move {
                let mut g = cond.acquire_async().await.unwrap();
                cond.wait_async(&mut g).await.map(|_| g.token())
            }
        });
        drop(guard);
        // Notify until the sleeper was there to be woken: a notify with no sleeper
        // wakes nobody and changes nothing.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let notify = || async {
            let _g = cond.acquire_async().await.unwrap();
            cond.notify(1).unwrap()
        };
        while notify().await == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the sleeper never slept"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(sleeper.await.unwrap().is_ok());
    });
}
