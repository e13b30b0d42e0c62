//! Stress tests of the lock-free state machines of the placed primitives: every way to
//! acquire (blocking, trying, timing out) mixed at random between threads, and several
//! processes racing to take over from a killed owner. Counting, never timing.
#![cfg(all(target_os = "linux", feature = "shm"))]

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use locksmith::shm::{Event, Layout, Mutex, MutexOptions, Region, Semaphore, SemaphoreOptions};

const GUARD: Duration = Duration::from_secs(60);

/// A small xorshift generator, seeded per thread, so runs vary without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn fork(f: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the child runs `f` and `_exit`s without returning into the harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) }
    }
    pid
}

fn reap(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waitpid on our own child with a valid out-pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

fn word(region: &Region, offset: usize) -> &AtomicU64 {
    let p = region.place_at(offset, 8).unwrap();
    // SAFETY: 8 aligned bytes of the live mapping, only used atomically.
    unsafe { &*p.as_ptr().cast::<AtomicU64>() }
}

#[test]
fn mutex_mixed_strategies_keep_exclusion() {
    for recursive in [false, true] {
        let region = Region::anonymous(Mutex::SIZE).unwrap();
        let m = Mutex::init(
            region.place_at(0, Mutex::SIZE).unwrap(),
            &MutexOptions::new().recursive(recursive).shared(false),
        )
        .unwrap();
        let inside = AtomicU32::new(0);
        let acquired = AtomicU64::new(0);
        let counter = AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (m, inside, acquired, counter) = (&m, &inside, &acquired, &counter);
                s.spawn(move || {
                    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t + 1));
                    for _ in 0..3_000 {
                        let r = rng.next();
                        let got = match r % 4 {
                            0 => m.acquire(None).is_ok(),
                            1 => m.acquire(Some(Duration::ZERO)).is_ok(),
                            2 => m.acquire(Some(Duration::from_micros(r % 50))).is_ok(),
                            _ => m.acquire(Some(Duration::from_millis(5))).is_ok(),
                        };
                        if !got {
                            continue;
                        }
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        // Re-enter sometimes when recursive.
                        let nested = recursive && r & 16 != 0;
                        if nested {
                            assert!(m.acquire(Some(Duration::ZERO)).is_ok());
                        }
                        let v = counter.load(Ordering::Relaxed);
                        counter.store(v + 1, Ordering::Relaxed);
                        acquired.fetch_add(1, Ordering::Relaxed);
                        inside.fetch_sub(1, Ordering::SeqCst);
                        if nested {
                            m.release().unwrap();
                        }
                        m.release().unwrap();
                    }
                });
            }
        });
        assert_eq!(
            counter.load(Ordering::SeqCst),
            acquired.load(Ordering::SeqCst)
        );
        assert_eq!(m.owner_tid(), None);
        assert!(m.try_lock().unwrap().is_some());
    }
}

#[test]
fn semaphore_mixed_strategies_keep_the_bound() {
    let region = Region::anonymous(Semaphore::SIZE).unwrap();
    let sem = Semaphore::init_with(
        region.place_at(0, Semaphore::SIZE).unwrap(),
        2,
        &SemaphoreOptions::new().shared(false),
    )
    .unwrap();
    let inside = AtomicU32::new(0);
    let max = AtomicU32::new(0);
    std::thread::scope(|s| {
        for t in 0..5u64 {
            let (sem, inside, max) = (&sem, &inside, &max);
            s.spawn(move || {
                let mut rng = Rng(0xD1B5_4A32_D192_ED03 ^ (t + 1));
                for _ in 0..3_000 {
                    let r = rng.next();
                    let timeout = match r % 3 {
                        0 => None,
                        1 => Some(Duration::ZERO),
                        _ => Some(Duration::from_micros(r % 100)),
                    };
                    if !sem.acquire(timeout).unwrap() {
                        continue;
                    }
                    let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(n, Ordering::SeqCst);
                    inside.fetch_sub(1, Ordering::SeqCst);
                    sem.release().unwrap();
                }
            });
        }
    });
    assert!(max.load(Ordering::SeqCst) <= 2);
    assert_eq!(sem.value(), 2);
    assert_eq!(sem.held_by_me(), 0);
}

#[test]
fn killed_owner_is_taken_over_exactly_once() {
    const WAITERS: usize = 3;
    let mut layout = Layout::new();
    let m_at = layout.add::<Mutex>();
    let inside_at = layout.add::<Event>();
    let never_at = layout.add::<Event>();
    let died_at = layout.add_bytes(8, 8);
    let busy_at = layout.add_bytes(8, 8);
    let region = Region::anonymous(layout.size()).unwrap();
    let m = Mutex::init(
        region.place(m_at).unwrap(),
        &MutexOptions::new().check_interval(Duration::from_millis(2)),
    )
    .unwrap();
    let inside = Event::init(region.place(inside_at).unwrap(), true).unwrap();
    let never = Event::init(region.place(never_at).unwrap(), true).unwrap();
    let (died, busy) = (word(&region, died_at), word(&region, busy_at));
    for round in 0..3 {
        inside.clear().unwrap();
        died.store(0, Ordering::SeqCst);
        let holder = fork(|| {
            if m.acquire(None).is_err() || inside.set().is_err() {
                return 2;
            }
            let _ = never.wait(None);
            3
        });
        assert!(inside.wait(Some(GUARD)).unwrap());
        let waiters: Vec<_> = (0..WAITERS)
            .map(|_| {
                fork(|| {
                    let Ok(got) = m.acquire(Some(GUARD)) else {
                        return 2;
                    };
                    if busy.fetch_add(1, Ordering::SeqCst) != 0 {
                        return 3;
                    }
                    if got.previous_owner_died() {
                        died.fetch_add(1, Ordering::SeqCst);
                    }
                    busy.fetch_sub(1, Ordering::SeqCst);
                    if m.release().is_err() {
                        return 4;
                    }
                    0
                })
            })
            .collect();
        // SAFETY: our own child.
        assert_eq!(unsafe { libc::kill(holder, libc::SIGKILL) }, 0);
        for pid in waiters {
            assert_eq!(reap(pid), 0, "round {round}");
        }
        assert_eq!(reap(holder), 128 + libc::SIGKILL);
        assert_eq!(died.load(Ordering::SeqCst), 1, "round {round}");
        assert_eq!(m.owner_tid(), None);
    }
}
