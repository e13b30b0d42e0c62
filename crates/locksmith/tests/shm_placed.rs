//! The placed primitives' API within one process: conditions with `notify(n)` and
//! recursive mutexes, barrier abort, destroy waking waiters, dead thread owners found
//! by a try, bad buffers. Threads synchronise through the primitives' own observable
//! state (waiter counts), never by sleeping.
#![cfg(all(target_os = "linux", feature = "shm"))]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use locksmith::shm::{
    Barrier, Condition, Event, Layout, Mutex, MutexOptions, Place, Region, Semaphore,
};

const GUARD: Duration = Duration::from_secs(60);

fn spin_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < GUARD, "hang guard: {what}");
        std::thread::yield_now();
    }
}

struct Fixture {
    region: Region,
    m: locksmith::shm::Offset<Mutex<'static>>,
    c: locksmith::shm::Offset<Condition<'static>>,
}

fn fixture() -> Fixture {
    let mut layout = Layout::new();
    let m = layout.add::<Mutex>();
    let c = layout.add::<Condition>();
    let region = Region::anonymous(layout.size()).unwrap();
    Fixture { region, m, c }
}

#[test]
fn condition_notify_n_wakes_that_many_and_notify_all_the_rest() {
    let f = fixture();
    let m = Mutex::init(f.region.place(f.m).unwrap(), &MutexOptions::new()).unwrap();
    let c = Condition::init(f.region.place(f.c).unwrap(), false).unwrap();
    let tickets = AtomicU32::new(0);
    let waiting = AtomicU32::new(0);
    let woken = AtomicU32::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let mut g = m.lock().unwrap();
                waiting.fetch_add(1, Ordering::SeqCst);
                // Wait until a ticket is handed out (spurious wakeups re-wait).
                let ok = c
                    .wait_while(&mut g, Some(GUARD), || {
                        let t = tickets.load(Ordering::SeqCst);
                        t == 0
                            || tickets
                                .compare_exchange(t, t - 1, Ordering::SeqCst, Ordering::SeqCst)
                                .is_err()
                    })
                    .unwrap();
                assert!(ok);
                woken.fetch_add(1, Ordering::SeqCst);
            });
        }
        // All four are inside `wait` once each has counted itself in and released
        // the mutex (taking it here proves the last one did).
        spin_until("waiters", || waiting.load(Ordering::SeqCst) == 4);
        drop(m.lock().unwrap());
        {
            let _g = m.lock().unwrap();
            tickets.store(2, Ordering::SeqCst);
            c.notify(2).unwrap();
        }
        spin_until("two woken", || woken.load(Ordering::SeqCst) == 2);
        {
            let _g = m.lock().unwrap();
            tickets.store(2, Ordering::SeqCst);
            c.notify_all().unwrap();
        }
    });
    assert_eq!(woken.load(Ordering::SeqCst), 4);
}

#[test]
fn condition_wait_releases_every_level_of_a_recursive_mutex() {
    let f = fixture();
    let m = Mutex::init(f.region.place(f.m).unwrap(), &MutexOptions::new()).unwrap();
    let c = Condition::init(f.region.place(f.c).unwrap(), false).unwrap();
    let flag = AtomicU32::new(0);
    let mut g = m.lock().unwrap();
    let _ = m.acquire(None).unwrap(); // held twice
    std::thread::scope(|s| {
        s.spawn(|| {
            // Can only get in if the waiter dropped both levels.
            let g = m.lock().unwrap();
            flag.store(1, Ordering::SeqCst);
            c.notify_all().unwrap();
            drop(g);
        });
        assert!(c
            .wait_while(&mut g, Some(GUARD), || flag.load(Ordering::SeqCst) == 0)
            .unwrap());
    });
    // Both levels are back: two releases, then the mutex is free.
    m.release().unwrap();
    drop(g);
    assert_eq!(m.owner_tid(), None);
    // A wait that times out answers false and still holds the mutex.
    let mut g = m.lock().unwrap();
    assert!(!c.wait(&mut g, Some(Duration::from_millis(1))).unwrap());
    assert!(m.owner_tid().is_some());
    drop(g);
}

#[test]
fn barrier_abort_wakes_waiters_with_broken() {
    let region = Region::anonymous(Barrier::SIZE).unwrap();
    let b = Barrier::init(region.place_at(0, Barrier::SIZE).unwrap(), 3, false).unwrap();
    assert_eq!(b.parties(), 3);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..2).map(|_| s.spawn(|| b.wait(Some(GUARD)))).collect();
        spin_until("two waiting", || b.n_waiting() == 2);
        b.abort().unwrap();
        for h in hs {
            assert_eq!(h.join().unwrap().unwrap_err().errno(), libc::EPIPE);
        }
    });
    assert!(b.is_broken());
    b.reset().unwrap();
    assert_eq!(b.n_waiting(), 0);
}

#[test]
fn destroy_wakes_waiters_with_einval() {
    let mut layout = Layout::new();
    let (m_at, e_at, s_at) = (
        layout.add::<Mutex>(),
        layout.add::<Event>(),
        layout.add::<Semaphore>(),
    );
    let region = Region::anonymous(layout.size()).unwrap();
    let m = Mutex::init(region.place(m_at).unwrap(), &MutexOptions::new()).unwrap();
    let e = Event::init(region.place(e_at).unwrap(), true).unwrap();
    let s = Semaphore::init(region.place(s_at).unwrap(), 0).unwrap();
    let held = m.lock().unwrap();
    std::thread::scope(|sc| {
        let mw = sc.spawn(|| m.acquire(Some(GUARD)).map(drop));
        let ew = sc.spawn(|| e.wait(Some(GUARD)));
        let sw = sc.spawn(|| s.acquire(Some(GUARD)));
        spin_until("event waiter", || e.waiters() == 1);
        spin_until("mutex waiter", || m.owner_tid().is_some());
        e.destroy().unwrap();
        s.destroy().unwrap();
        m.destroy().unwrap();
        assert_eq!(mw.join().unwrap().unwrap_err().errno(), libc::EINVAL);
        assert_eq!(ew.join().unwrap().unwrap_err().errno(), libc::EINVAL);
        assert_eq!(sw.join().unwrap().unwrap_err().errno(), libc::EINVAL);
    });
    assert_eq!(held.release().unwrap_err().errno(), libc::EINVAL);
    assert_eq!(e.set().unwrap_err().errno(), libc::EINVAL);
    assert!(Mutex::attach(region.place(m_at).unwrap()).is_err());
}

#[test]
fn try_lock_takes_over_from_a_dead_thread() {
    let region = Region::anonymous(Mutex::SIZE).unwrap();
    let m = Mutex::init(
        region.place_at(0, Mutex::SIZE).unwrap(),
        &MutexOptions::new()
            .recursive(false)
            .check_interval(Duration::from_millis(1)),
    )
    .unwrap();
    std::thread::scope(|s| {
        s.spawn(|| m.acquire(None).unwrap());
    });
    // The owner thread has ended (join returns a moment before the kernel removes
    // it, so the first try may still see it): tries find it dead.
    let mut taken = None;
    spin_until("try takes over", || {
        taken = m.try_lock().unwrap();
        taken.is_some()
    });
    let g = taken.unwrap();
    assert!(g.previous_owner_died());
    g.release().unwrap();
}

#[test]
fn bad_places_are_typed_errors() {
    let region = Region::anonymous(4096).unwrap();
    let errno = |r: Result<(), locksmith::Error>| r.unwrap_err().errno();
    // Too small, misaligned, uninitialised, another kind.
    assert_eq!(
        errno(Mutex::init(region.place_at(0, 8).unwrap(), &MutexOptions::new()).map(drop)),
        libc::EINVAL
    );
    assert_eq!(
        errno(Semaphore::init(region.place_at(4, 128).unwrap(), 1).map(drop)),
        libc::EINVAL
    );
    assert_eq!(
        errno(Barrier::attach(region.place_at(0, 128).unwrap()).map(drop)),
        libc::EINVAL
    );
    Event::init(region.place_at(256, Event::SIZE).unwrap(), true).unwrap();
    assert_eq!(
        errno(Condition::attach(region.place_at(256, 64).unwrap()).map(drop)),
        libc::EINVAL
    );
    // A raw pointer place.
    // SAFETY: null is refused before anything is dereferenced.
    assert!(unsafe { Place::from_raw(std::ptr::null_mut(), 64) }.is_err());
}

#[test]
fn barrier_action_runs_once_before_release_and_a_panic_breaks_it() {
    let region = Region::anonymous(Barrier::SIZE).unwrap();
    let b = Barrier::init(region.place_at(0, Barrier::SIZE).unwrap(), 3, false).unwrap();
    let actions = AtomicU32::new(0);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                for p in 0..30 {
                    b.wait_with_action(Some(GUARD), || {
                        actions.fetch_add(1, Ordering::SeqCst);
                    })
                    .unwrap();
                    // Nobody is released before the action of this phase ran.
                    assert!(actions.load(Ordering::SeqCst) > p);
                }
            });
        }
    });
    assert_eq!(actions.load(Ordering::SeqCst), 30);

    std::thread::scope(|s| {
        let other = s.spawn(|| b.wait(Some(GUARD)));
        let other2 = s.spawn(|| b.wait(Some(GUARD)));
        spin_until("two waiting", || b.n_waiting() == 2);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            b.wait_with_action(Some(GUARD), || panic!("action failed"))
        }));
        assert!(panicked.is_err());
        assert_eq!(other.join().unwrap().unwrap_err().errno(), libc::EPIPE);
        assert_eq!(other2.join().unwrap().unwrap_err().errno(), libc::EPIPE);
    });
    assert!(b.is_broken());
}

#[test]
fn mutex_errors_name_the_mutex_they_are_about() {
    let mut layout = Layout::new();
    let a = layout.add::<Mutex>();
    let b = layout.add::<Mutex>();
    let region = Region::anonymous(layout.size()).unwrap();
    let opts = MutexOptions::new().recursive(false);
    let a = Mutex::init(region.place(a).unwrap(), &opts).unwrap();
    let b = Mutex::init(region.place(b).unwrap(), &opts).unwrap();
    let (ea, eb) = (a.release().unwrap_err(), b.release().unwrap_err());
    assert!(matches!(ea, locksmith::Error::NotHeld { .. }), "{ea}");
    let (ma, mb) = (ea.to_string(), eb.to_string());
    assert!(ma.contains("shm::Mutex placed at 0x"), "{ma}");
    assert_ne!(ma, mb, "two mutexes, two messages");
    let _g = a.lock().unwrap();
    let again = a.try_lock().unwrap_err().to_string();
    assert!(
        again.contains("placed at") && again.contains("deadlock"),
        "{again}"
    );
}
