//! The placed shared-memory primitives side by side with their peers:
//!
//! - uncontended acquire + release: `parking_lot::Mutex`, a `PTHREAD_PROCESS_SHARED`
//!   pthread mutex, `locksmith::shm::Mutex`;
//! - ping-pong between two processes: POSIX `sem_post`/`sem_wait` on process-shared
//!   `sem_t`s, `locksmith::shm::Semaphore` (holders tracked, the default), and
//!   `locksmith::shm::Event`s;
//! - two processes contending on one lock: pthread process-shared vs `shm::Mutex`.
//!
//! Run with `cargo bench -p locksmith-bench --bench shm`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use locksmith::shm::{Event, Layout, Mutex, MutexOptions, Region, Semaphore, SemaphoreOptions};

/// Forks a child running `f` for ever (until killed); returns its pid.
fn spawn_child(f: impl FnOnce()) -> libc::pid_t {
    // SAFETY: the child runs `f` then `_exit`s; it never returns into criterion.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        f();
        // SAFETY: leave without running the parent's destructors.
        unsafe { libc::_exit(0) }
    }
    pid
}

fn stop_child(pid: libc::pid_t) {
    // SAFETY: our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// A process-shared pthread mutex in its own anonymous shared mapping.
struct PthreadShared {
    _region: Region,
    m: *mut libc::pthread_mutex_t,
}

impl PthreadShared {
    fn new() -> PthreadShared {
        let region = Region::anonymous(std::mem::size_of::<libc::pthread_mutex_t>()).unwrap();
        let m = region.whole().as_ptr().cast::<libc::pthread_mutex_t>();
        // SAFETY: `m` points at zeroed, aligned, shared memory that lives with `region`.
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            libc::pthread_mutexattr_init(&mut attr);
            libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
            libc::pthread_mutex_init(m, &attr);
            libc::pthread_mutexattr_destroy(&mut attr);
        }
        PthreadShared { _region: region, m }
    }
    fn lock(&self) {
        // SAFETY: initialised in `new`.
        unsafe { libc::pthread_mutex_lock(self.m) };
    }
    fn unlock(&self) {
        // SAFETY: initialised in `new`, held by this thread.
        unsafe { libc::pthread_mutex_unlock(self.m) };
    }
}

fn uncontended(c: &mut Criterion) {
    let mut g = c.benchmark_group("uncontended acquire+release");
    let pl = parking_lot::Mutex::new(());
    g.bench_function("parking_lot::Mutex", |b| {
        b.iter(|| drop(black_box(&pl).lock()))
    });
    let pt = PthreadShared::new();
    g.bench_function("pthread process-shared", |b| {
        b.iter(|| {
            black_box(&pt).lock();
            pt.unlock();
        })
    });
    let region = Region::anonymous(Mutex::SIZE).unwrap();
    let m = Mutex::init(
        region.place_at(0, Mutex::SIZE).unwrap(),
        &MutexOptions::new().recursive(false),
    )
    .unwrap();
    g.bench_function("shm::Mutex acquire/release", |b| {
        b.iter(|| {
            let _ = black_box(&m).acquire(None);
            let _ = m.release();
        })
    });
    g.bench_function("shm::Mutex lock guard", |b| {
        b.iter(|| drop(black_box(&m).lock()))
    });
    g.finish();
}

fn ping_pong(c: &mut Criterion) {
    let mut g = c.benchmark_group("ping-pong between two processes (round trip)");
    g.measurement_time(Duration::from_secs(3));

    // POSIX semaphores, process-shared.
    let region = Region::anonymous(2 * std::mem::size_of::<libc::sem_t>()).unwrap();
    let a = region.whole().as_ptr().cast::<libc::sem_t>();
    // SAFETY: both sem_t fit in the zeroed, aligned shared mapping.
    let b_ = unsafe { a.add(1) };
    // SAFETY: as above; pshared = 1.
    unsafe {
        libc::sem_init(a, 1, 0);
        libc::sem_init(b_, 1, 0);
    }
    let (pa, pb) = (a as usize, b_ as usize);
    let child = spawn_child(move || loop {
        // SAFETY: initialised above, mapped in the child too.
        unsafe {
            libc::sem_wait(pa as *mut libc::sem_t);
            libc::sem_post(pb as *mut libc::sem_t);
        }
    });
    g.bench_function("POSIX sem_post/sem_wait", |b| {
        b.iter(|| {
            // SAFETY: as above.
            unsafe {
                libc::sem_post(pa as *mut libc::sem_t);
                libc::sem_wait(pb as *mut libc::sem_t);
            }
        })
    });
    stop_child(child);

    for track in [false, true] {
        let mut layout = Layout::new();
        let (sa, sb) = (layout.add::<Semaphore>(), layout.add::<Semaphore>());
        let region = Region::anonymous(layout.size()).unwrap();
        let opts = SemaphoreOptions::new().track_holders(track);
        let s1 = Semaphore::init_with(region.place(sa).unwrap(), 0, &opts).unwrap();
        let s2 = Semaphore::init_with(region.place(sb).unwrap(), 0, &opts).unwrap();
        let child = spawn_child(|| loop {
            let _ = s1.acquire(None);
            let _ = s2.release();
        });
        let name = if track {
            "shm::Semaphore (holders tracked)"
        } else {
            "shm::Semaphore (untracked)"
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                let _ = s1.release();
                let _ = s2.acquire(None);
            })
        });
        stop_child(child);
    }

    let mut layout = Layout::new();
    let (ea, eb) = (layout.add::<Event>(), layout.add::<Event>());
    let region = Region::anonymous(layout.size()).unwrap();
    let e1 = Event::init(region.place(ea).unwrap(), true).unwrap();
    let e2 = Event::init(region.place(eb).unwrap(), true).unwrap();
    let child = spawn_child(|| loop {
        let _ = e1.wait(None);
        let _ = e1.clear();
        let _ = e2.set();
    });
    g.bench_function("shm::Event", |b| {
        b.iter(|| {
            let _ = e1.set();
            let _ = e2.wait(None);
            let _ = e2.clear();
        })
    });
    stop_child(child);
    g.finish();
}

fn contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("two processes contending (this side's acquire+release)");
    g.measurement_time(Duration::from_secs(3));
    let flag_region = Region::anonymous(8).unwrap();
    // SAFETY: 4 aligned bytes of the live mapping, used atomically.
    let stop = unsafe { &*flag_region.whole().as_ptr().cast::<AtomicU32>() };

    let pt = PthreadShared::new();
    let child = spawn_child(|| {
        while stop.load(Ordering::Relaxed) == 0 {
            pt.lock();
            pt.unlock();
        }
    });
    g.bench_function("pthread process-shared", |b| {
        b.iter_custom(|n| {
            let t = Instant::now();
            for _ in 0..n {
                pt.lock();
                pt.unlock();
            }
            t.elapsed()
        })
    });
    stop_child(child);

    let region = Region::anonymous(Mutex::SIZE).unwrap();
    let m = Mutex::init(
        region.place_at(0, Mutex::SIZE).unwrap(),
        &MutexOptions::new().recursive(false),
    )
    .unwrap();
    let child = spawn_child(|| {
        while stop.load(Ordering::Relaxed) == 0 {
            let _ = m.acquire(None);
            let _ = m.release();
        }
    });
    g.bench_function("shm::Mutex", |b| {
        b.iter_custom(|n| {
            let t = Instant::now();
            for _ in 0..n {
                let _ = m.acquire(None);
                let _ = m.release();
            }
            t.elapsed()
        })
    });
    stop_child(child);
    g.finish();
}

criterion_group!(benches, uncontended, ping_pong, contended);
criterion_main!(benches);
