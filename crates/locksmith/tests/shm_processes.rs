//! Cross-process tests of the placed shared-memory primitives, with real processes
//! made by `fork`. Children run a closure, never return into the test harness, and
//! leave through `_exit` (no destructors of the parent's state run twice); their exit
//! code is the verdict. Every wait has a generous timeout that only guards against a
//! hang; nothing sleeps to synchronise.
#![cfg(all(target_os = "linux", feature = "shm"))]

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use locksmith::shm::{
    Barrier, BoundedSemaphore, Condition, Event, Layout, Mutex, MutexOptions, Place, Region,
    Semaphore, SemaphoreOptions,
};
use locksmith::Error;

/// Hang guard for every wait in these tests.
const GUARD: Duration = Duration::from_secs(60);

/// Forks a child that runs `f` and exits with its result (101 if it panicked).
fn fork(f: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the child only runs `f` (atomics, futexes, /proc reads) and then `_exit`s;
    // it never returns into the harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: _exit ends the child at once, running no destructors or atexit
        // handlers of the state it shares with the parent.
        unsafe { libc::_exit(code) }
    }
    pid
}

/// Waits for a child: its exit code, or 128 + signal.
fn reap(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: plain waitpid on our own child with a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

fn kill9(pid: libc::pid_t) {
    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
}

/// A u64 the tests keep in a region next to the primitives.
fn word(region: &Region, offset: usize) -> &AtomicU64 {
    let place: Place<'_> = region.place_at(offset, 8).unwrap();
    assert_eq!(place.as_ptr() as usize % 8, 0);
    // SAFETY: 8 aligned bytes of the live mapping, only used atomically.
    unsafe { &*place.as_ptr().cast::<AtomicU64>() }
}

#[test]
fn mutex_counter_n_processes_times_m_increments() {
    const N: usize = 4;
    const M: u64 = 2_000;
    let mut layout = Layout::new();
    let m_at = layout.add::<Mutex>();
    let counter_at = layout.add_bytes(8, 8);
    let region = Region::anonymous(layout.size()).unwrap();
    let m = Mutex::init(
        region.place(m_at).unwrap(),
        &MutexOptions::new().recursive(false),
    )
    .unwrap();
    let counter = word(&region, counter_at);
    let kids: Vec<_> = (0..N)
        .map(|k| {
            fork(|| {
                let m = Mutex::attach(region.place(m_at).unwrap()).unwrap();
                for i in 0..M {
                    // Alternate the runtime.sync style and the guard style.
                    if (i + k as u64).is_multiple_of(2) {
                        if m.acquire(Some(GUARD)).is_err() {
                            return 2;
                        }
                        // Two separate atomic steps: a lost update shows a broken lock.
                        let v = counter.load(Ordering::Relaxed);
                        counter.store(v + 1, Ordering::Relaxed);
                        if m.release().is_err() {
                            return 3;
                        }
                    } else {
                        let Ok(Some(g)) = m.lock_timeout(GUARD) else {
                            return 4;
                        };
                        let v = counter.load(Ordering::Relaxed);
                        counter.store(v + 1, Ordering::Relaxed);
                        drop(g);
                    }
                }
                0
            })
        })
        .collect();
    for pid in kids {
        assert_eq!(reap(pid), 0);
    }
    assert_eq!(counter.load(Ordering::SeqCst), N as u64 * M);
    assert_eq!(m.owner_tid(), None);
}

#[test]
fn named_region_is_found_by_unrelated_opens() {
    let name = format!("locksmith-test-named-{}", std::process::id());
    let _ = Region::unlink(&name);
    let mut layout = Layout::new();
    let m_at = layout.add::<Mutex>();
    let counter_at = layout.add_bytes(8, 8);
    let region = Region::create(&name, layout.size()).unwrap();
    Mutex::init(region.place(m_at).unwrap(), &MutexOptions::new()).unwrap();
    let kids: Vec<_> = (0..3)
        .map(|_| {
            let name = name.clone();
            fork(move || {
                // Map the region anew by name, as an unrelated process would.
                let Ok(r) = Region::open(&name) else { return 2 };
                let Ok(m) = Mutex::attach(r.place(m_at).unwrap()) else {
                    return 3;
                };
                let counter = word(&r, counter_at);
                for _ in 0..1_000 {
                    let Ok(g) = m.lock() else { return 4 };
                    let v = counter.load(Ordering::Relaxed);
                    counter.store(v + 1, Ordering::Relaxed);
                    drop(g);
                }
                0
            })
        })
        .collect();
    for pid in kids {
        assert_eq!(reap(pid), 0);
    }
    assert_eq!(word(&region, counter_at).load(Ordering::SeqCst), 3_000);
    Region::unlink(&name).unwrap();
}

#[test]
fn semaphore_of_k_never_has_more_than_k_holders() {
    const K: u32 = 2;
    let mut layout = Layout::new();
    let s_at = layout.add::<BoundedSemaphore>();
    let inside_at = layout.add_bytes(8, 8);
    let max_at = layout.add_bytes(8, 8);
    let region = Region::anonymous(layout.size()).unwrap();
    let sem = BoundedSemaphore::init(region.place(s_at).unwrap(), K).unwrap();
    let inside = word(&region, inside_at);
    let max = word(&region, max_at);
    let kids: Vec<_> = (0..5)
        .map(|_| {
            fork(|| {
                let s = BoundedSemaphore::attach(region.place(s_at).unwrap()).unwrap();
                for _ in 0..500 {
                    if !matches!(s.acquire(Some(GUARD)), Ok(true)) {
                        return 2;
                    }
                    let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(n, Ordering::SeqCst);
                    std::hint::spin_loop();
                    inside.fetch_sub(1, Ordering::SeqCst);
                    if s.release().is_err() {
                        return 3;
                    }
                }
                0
            })
        })
        .collect();
    for pid in kids {
        assert_eq!(reap(pid), 0);
    }
    assert!(max.load(Ordering::SeqCst) <= u64::from(K));
    assert!(max.load(Ordering::SeqCst) >= 1);
    assert_eq!(sem.value(), K);
}

#[test]
fn event_wakes_waiters_in_other_processes() {
    const N: u32 = 3;
    let mut layout = Layout::new();
    let ev_at = layout.add::<Event>();
    let ready_at = layout.add::<Semaphore>();
    let region = Region::anonymous(layout.size()).unwrap();
    let ev = Event::init(region.place(ev_at).unwrap(), true).unwrap();
    let ready = Semaphore::init_with(
        region.place(ready_at).unwrap(),
        0,
        &SemaphoreOptions::new().track_holders(false),
    )
    .unwrap();
    let kids: Vec<_> = (0..N)
        .map(|_| {
            fork(|| {
                let ev = Event::attach(region.place(ev_at).unwrap()).unwrap();
                let ready = Semaphore::attach(region.place(ready_at).unwrap()).unwrap();
                if ready.release().is_err() {
                    return 2;
                }
                match ev.wait(Some(GUARD)) {
                    Ok(true) => 0,
                    Ok(false) => 3,
                    Err(_) => 4,
                }
            })
        })
        .collect();
    for _ in 0..N {
        assert!(matches!(ready.acquire(Some(GUARD)), Ok(true)));
    }
    // Wait (spinning, with a hang guard) until every child is inside `wait`.
    let guard = Instant::now();
    while ev.waiters() < N {
        assert!(guard.elapsed() < GUARD, "children never started waiting");
        std::thread::yield_now();
    }
    ev.set().unwrap();
    // Clearing at once must not make any waiter answer false (gh-57711).
    ev.clear().unwrap();
    for pid in kids {
        assert_eq!(reap(pid), 0);
    }
}

#[test]
fn condition_wakes_waiters_in_other_processes() {
    const N: u64 = 3;
    let mut layout = Layout::new();
    let m_at = layout.add::<Mutex>();
    let go_at = layout.add::<Condition>();
    let arrived_at = layout.add::<Condition>();
    let ready_at = layout.add_bytes(8, 8);
    let flag_at = layout.add_bytes(8, 8);
    let region = Region::anonymous(layout.size()).unwrap();
    let m = Mutex::init(region.place(m_at).unwrap(), &MutexOptions::new()).unwrap();
    let go = Condition::init(region.place(go_at).unwrap(), true).unwrap();
    let arrived = Condition::init(region.place(arrived_at).unwrap(), true).unwrap();
    let (ready, flag) = (word(&region, ready_at), word(&region, flag_at));
    let kids: Vec<_> = (0..N)
        .map(|_| {
            fork(|| {
                let m = Mutex::attach(region.place(m_at).unwrap()).unwrap();
                let go = Condition::attach(region.place(go_at).unwrap()).unwrap();
                let arrived = Condition::attach(region.place(arrived_at).unwrap()).unwrap();
                let Ok(mut g) = m.lock() else { return 2 };
                ready.fetch_add(1, Ordering::SeqCst);
                if arrived.notify_all().is_err() {
                    return 3;
                }
                match go.wait_while(&mut g, Some(GUARD), || flag.load(Ordering::SeqCst) == 0) {
                    Ok(true) => 0,
                    Ok(false) => 4,
                    Err(_) => 5,
                }
            })
        })
        .collect();
    let mut g = m.lock().unwrap();
    // Once all have counted themselves in under the mutex, all are inside `wait`.
    assert!(matches!(
        arrived.wait_while(&mut g, Some(GUARD), || ready.load(Ordering::SeqCst) < N),
        Ok(true)
    ));
    flag.store(1, Ordering::SeqCst);
    go.notify_all().unwrap();
    drop(g);
    for pid in kids {
        assert_eq!(reap(pid), 0);
    }
}

#[test]
fn barrier_phases_across_processes() {
    const PARTIES: usize = 3;
    const PHASES: usize = 20;
    let mut layout = Layout::new();
    let b_at = layout.add::<Barrier>();
    let done_at = layout.add_bytes(8, 8);
    let actions_at = layout.add_bytes(8, 8);
    let idx_at = layout.add_bytes(8 * PARTIES * PHASES, 8);
    let region = Region::anonymous(layout.size()).unwrap();
    let region = &region;
    let b = Barrier::init(region.place(b_at).unwrap(), PARTIES as u32, true).unwrap();
    let done = word(region, done_at);
    let run = |b: Barrier<'_>, me: usize| -> i32 {
        for p in 0..PHASES {
            if done.load(Ordering::SeqCst) < (p * PARTIES) as u64 {
                return 2; // somebody left phase p-1 early
            }
            done.fetch_add(1, Ordering::SeqCst);
            let actions = word(region, actions_at);
            let Ok(i) = b.wait_with_action(Some(GUARD), || {
                actions.fetch_add(1, Ordering::SeqCst);
            }) else {
                return 3;
            };
            if done.load(Ordering::SeqCst) < ((p + 1) * PARTIES) as u64 {
                return 4; // released before everybody arrived
            }
            if actions.load(Ordering::SeqCst) < (p + 1) as u64 {
                return 5; // released before the last arrival's action ran
            }
            word(region, idx_at + 8 * (p * PARTIES + me)).store(u64::from(i), Ordering::SeqCst);
        }
        // Done with the barrier while others may still be in its last phase.
        let _ = b.leave();
        0
    };
    let kids: Vec<_> = (1..PARTIES)
        .map(|me| fork(move || run(Barrier::attach(region.place(b_at).unwrap()).unwrap(), me)))
        .collect();
    assert_eq!(run(b, 0), 0);
    for pid in kids {
        assert_eq!(reap(pid), 0);
    }
    assert_eq!(
        word(region, actions_at).load(Ordering::SeqCst),
        PHASES as u64
    );
    for p in 0..PHASES {
        let mut got: Vec<u64> = (0..PARTIES)
            .map(|k| word(region, idx_at + 8 * (p * PARTIES + k)).load(Ordering::SeqCst))
            .collect();
        got.sort();
        assert_eq!(got, vec![0, 1, 2], "phase {p}");
    }
}

#[test]
fn sigkill_mutex_holder_next_waiter_takes_over() {
    let mut layout = Layout::new();
    let m_at = layout.add::<Mutex>();
    let inside_at = layout.add::<Event>();
    let never_at = layout.add::<Event>();
    let region = Region::anonymous(layout.size()).unwrap();
    let m = Mutex::init(
        region.place(m_at).unwrap(),
        &MutexOptions::new().recursive(false),
    )
    .unwrap();
    let inside = Event::init(region.place(inside_at).unwrap(), true).unwrap();
    let never = Event::init(region.place(never_at).unwrap(), true).unwrap();
    let holder = fork(|| {
        let Ok(_g) = m.lock() else { return 2 };
        if inside.set().is_err() {
            return 3;
        }
        // Hold it until killed.
        let _ = never.wait(None);
        4
    });
    assert!(matches!(inside.wait(Some(GUARD)), Ok(true)));
    // A second process queues up behind the holder, then is the one to take over.
    let taker = fork(|| {
        let started = Instant::now();
        match m.acquire(Some(GUARD)) {
            Ok(got) if got.previous_owner_died() && started.elapsed() < GUARD => {
                if m.release().is_ok() {
                    0
                } else {
                    5
                }
            }
            Ok(_) => 6,
            Err(_) => 7,
        }
    });
    let killed = Instant::now();
    kill9(holder);
    // The taker finds the holder dead while it is still an unreaped zombie.
    assert_eq!(reap(taker), 0);
    let took = killed.elapsed();
    assert_eq!(reap(holder), 128 + libc::SIGKILL);
    // Everything is normal afterwards.
    let got = m.acquire(Some(Duration::ZERO)).unwrap();
    assert!(!got.previous_owner_died());
    m.release().unwrap();
    eprintln!("dead holder replaced {took:?} after SIGKILL");
}

#[test]
fn sigkill_mutex_holder_parent_sees_owner_died() {
    let mut layout = Layout::new();
    let m_at = layout.add::<Mutex>();
    let inside_at = layout.add::<Event>();
    let never_at = layout.add::<Event>();
    let region = Region::anonymous(layout.size()).unwrap();
    let m = Mutex::init(
        region.place(m_at).unwrap(),
        &MutexOptions::new().check_interval(Duration::from_millis(5)),
    )
    .unwrap();
    let inside = Event::init(region.place(inside_at).unwrap(), true).unwrap();
    let never = Event::init(region.place(never_at).unwrap(), true).unwrap();
    let holder = fork(|| {
        // Held twice (recursive) when killed.
        if m.acquire(None).is_err() || m.acquire(None).is_err() || inside.set().is_err() {
            return 2;
        }
        let _ = never.wait(None);
        3
    });
    assert!(matches!(inside.wait(Some(GUARD)), Ok(true)));
    assert!(m.try_lock().unwrap().is_none());
    kill9(holder);
    assert_eq!(reap(holder), 128 + libc::SIGKILL);
    let g = m.lock_timeout(GUARD).unwrap().expect("taken over");
    assert!(g.previous_owner_died());
    drop(g);
    // Taken over once, released once: free again.
    assert_eq!(m.owner_tid(), None);
}

#[test]
fn sigkill_semaphore_holder_permits_come_back() {
    let mut layout = Layout::new();
    let s_at = layout.add::<BoundedSemaphore>();
    let inside_at = layout.add::<Event>();
    let never_at = layout.add::<Event>();
    let region = Region::anonymous(layout.size()).unwrap();
    let sem = BoundedSemaphore::init(region.place(s_at).unwrap(), 3).unwrap();
    let inside = Event::init(region.place(inside_at).unwrap(), true).unwrap();
    let never = Event::init(region.place(never_at).unwrap(), true).unwrap();
    let holder = fork(|| {
        for _ in 0..2 {
            if !matches!(sem.acquire(None), Ok(true)) {
                return 2;
            }
        }
        if sem.held_by_me() != 2 || inside.set().is_err() {
            return 3;
        }
        let _ = never.wait(None);
        4
    });
    assert!(matches!(inside.wait(Some(GUARD)), Ok(true)));
    assert!(sem.acquire(None).unwrap());
    assert_eq!(sem.value(), 0);
    kill9(holder);
    // Waits until a liveness check finds the dead holder and returns its 2 permits.
    assert!(sem.acquire(Some(GUARD)).unwrap());
    assert!(sem.acquire(Some(GUARD)).unwrap());
    assert_eq!(reap(holder), 128 + libc::SIGKILL);
    assert_eq!(sem.held_by_me(), 3);
    for _ in 0..3 {
        sem.release().unwrap();
    }
    assert_eq!(sem.value(), 3);
    assert!(sem.release().is_err());
}

#[test]
fn sigkill_barrier_member_breaks_the_barrier() {
    let mut layout = Layout::new();
    let b_at = layout.add::<Barrier>();
    let inside_at = layout.add::<Event>();
    let never_at = layout.add::<Event>();
    let region = Region::anonymous(layout.size()).unwrap();
    let b = Barrier::init(region.place(b_at).unwrap(), 2, true).unwrap();
    let inside = Event::init(region.place(inside_at).unwrap(), true).unwrap();
    let never = Event::init(region.place(never_at).unwrap(), true).unwrap();
    let member = fork(|| {
        // One phase together makes this process a member.
        if b.wait(Some(GUARD)).is_err() || inside.set().is_err() {
            return 2;
        }
        let _ = never.wait(None);
        3
    });
    b.wait(Some(GUARD)).unwrap();
    assert!(matches!(inside.wait(Some(GUARD)), Ok(true)));
    kill9(member);
    // The second phase can never complete: the waiter finds the dead member.
    let err = b.wait(Some(GUARD)).unwrap_err();
    assert_eq!(err.errno(), libc::EPIPE);
    assert!(b.is_broken());
    assert_eq!(reap(member), 128 + libc::SIGKILL);
    // reset forgets the dead member; the barrier works again.
    b.reset().unwrap();
    let b2 = Barrier::attach(region.place(b_at).unwrap()).unwrap();
    let other = fork(move || match b2.wait(Some(GUARD)) {
        Ok(_) => 0,
        Err(_) => 2,
    });
    b.wait(Some(GUARD)).unwrap();
    assert_eq!(reap(other), 0);
}

#[test]
fn runtime_sync_checks_across_processes() {
    let mut layout = Layout::new();
    let m_at = layout.add::<Mutex>();
    let region = Region::anonymous(layout.size()).unwrap();
    let m = Mutex::init(
        region.place(m_at).unwrap(),
        &MutexOptions::new().recursive(false),
    )
    .unwrap();
    let got = m.acquire(None).unwrap();
    assert!(!got.previous_owner_died());
    // The owner acquiring again: EDEADLK, with every strategy.
    for t in [None, Some(0.0), Some(0.2)] {
        assert_eq!(m.acquire_secs(t).unwrap_err().errno(), libc::EDEADLK);
    }
    // Negative, NaN, infinite timeouts: EINVAL, and nothing changes.
    for t in [-1.0, f64::NAN, f64::INFINITY] {
        assert_eq!(m.acquire_secs(Some(t)).unwrap_err().errno(), libc::EINVAL);
    }
    let child = fork(|| {
        let m = Mutex::attach(region.place(m_at).unwrap()).unwrap();
        // Held by another process: trylock fails, a timed lock times out, release is
        // refused.
        let busy = matches!(m.try_lock(), Ok(None));
        let timed = matches!(m.acquire_secs(Some(0.05)), Err(Error::Timeout));
        let eperm = m.release().map_err(|e| e.errno()) == Err(libc::EPERM);
        if busy && timed && eperm {
            0
        } else {
            2
        }
    });
    assert_eq!(reap(child), 0);
    m.release().unwrap();
    assert_eq!(m.release().unwrap_err().errno(), libc::EPERM);
    // An uninitialised buffer is refused by attach, in another process too.
    let fresh = Region::anonymous(Mutex::SIZE).unwrap();
    let child = fork(
        || match Mutex::attach(fresh.place_at(0, Mutex::SIZE).unwrap()) {
            Err(e) if e.errno() == libc::EINVAL => 0,
            _ => 2,
        },
    );
    assert_eq!(reap(child), 0);
    m.destroy().unwrap();
    assert_eq!(m.acquire(None).unwrap_err().errno(), libc::EINVAL);
    assert!(Mutex::attach(region.place(m_at).unwrap()).is_err());
}

#[test]
fn semaphore_wakes_across_processes_and_counts_events() {
    // A producer/consumer semaphore (holders not tracked): permits are consumed.
    let mut layout = Layout::new();
    let s_at = layout.add::<Semaphore>();
    let got_at = layout.add_bytes(4, 4);
    let region = Region::anonymous(layout.size()).unwrap();
    let sem = Semaphore::init_with(
        region.place(s_at).unwrap(),
        0,
        &SemaphoreOptions::new().track_holders(false),
    )
    .unwrap();
    let got: &AtomicU32 = {
        let p = region.place_at(got_at, 4).unwrap();
        // SAFETY: 4 aligned bytes of the live mapping, only used atomically.
        unsafe { &*p.as_ptr().cast::<AtomicU32>() }
    };
    let consumer = fork(|| {
        for _ in 0..200 {
            if !matches!(sem.acquire(Some(GUARD)), Ok(true)) {
                return 2;
            }
            got.fetch_add(1, Ordering::SeqCst);
        }
        0
    });
    for _ in 0..200 {
        sem.release().unwrap();
    }
    assert_eq!(reap(consumer), 0);
    assert_eq!(got.load(Ordering::SeqCst), 200);
    assert_eq!(sem.value(), 0);
}

#[test]
fn racing_open_or_create_initialises_once() {
    const N: usize = 4;
    let name = format!("locksmith-test-race-{}", std::process::id());
    let _ = Region::unlink(&name);
    let mut layout = Layout::new();
    let m_at = layout.add::<Mutex>();
    let counter_at = layout.add_bytes(8, 8);
    let created_at = layout.add_bytes(8, 8);
    let size = layout.size();
    let kids: Vec<_> = (0..N)
        .map(|_| {
            let name = name.clone();
            fork(move || {
                let opened = Region::open_or_create(&name, size, |r| {
                    Mutex::init(r.place(m_at)?, &MutexOptions::new()).map(drop)
                });
                let Ok((r, created)) = opened else { return 2 };
                // Whoever opened it finds the mutex initialised: never half-made.
                let Ok(m) = Mutex::attach(r.place(m_at).unwrap()) else {
                    return 3;
                };
                if created {
                    word(&r, created_at).fetch_add(1, Ordering::SeqCst);
                }
                for _ in 0..500 {
                    let Ok(g) = m.lock() else { return 4 };
                    let c = word(&r, counter_at);
                    let v = c.load(Ordering::Relaxed);
                    c.store(v + 1, Ordering::Relaxed);
                    drop(g);
                }
                0
            })
        })
        .collect();
    for pid in kids {
        assert_eq!(reap(pid), 0);
    }
    let r = Region::open(&name).unwrap();
    assert_eq!(word(&r, created_at).load(Ordering::SeqCst), 1);
    assert_eq!(word(&r, counter_at).load(Ordering::SeqCst), N as u64 * 500);
    Region::unlink(&name).unwrap();
}
