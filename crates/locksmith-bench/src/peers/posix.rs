//! POSIX process-shared peers placed in an anonymous `MAP_SHARED` mapping: a
//! `PTHREAD_PROCESS_SHARED` mutex, `sem_init(pshared = 1)` semaphores, a process-shared
//! `pthread_barrier_t`; and named semaphores (`sem_open`) for the "open" scenario.

use std::ffi::CString;
use std::mem::size_of;

use anyhow::{bail, Context as _, Result};

use crate::harness::{BarrierWait, Channel, Ctx, ProcLock, Signal};
use crate::scenario::{OPEN, UNCONTENDED};
use crate::shared::SharedRegion;

/// Turns a pthread return code into a Result.
fn check(what: &str, rc: libc::c_int) -> Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc)).with_context(|| what.to_string())
    }
}

/// A default-type `pthread_mutex_t` with `PTHREAD_PROCESS_SHARED`, in its own mapping.
#[derive(Debug)]
pub struct PthreadMutex {
    region: SharedRegion,
}

impl PthreadMutex {
    /// Maps and initialises the mutex.
    pub fn new() -> Result<Self> {
        let region = SharedRegion::new(size_of::<libc::pthread_mutex_t>())?;
        let m = region.as_ptr().cast::<libc::pthread_mutex_t>();
        // SAFETY: `attr` is initialised by pthread_mutexattr_init before use and destroyed
        // after; `m` points into a fresh, page-aligned mapping large enough for a
        // pthread_mutex_t that no one else uses yet.
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            check("mutexattr_init", libc::pthread_mutexattr_init(&mut attr))?;
            check(
                "mutexattr_setpshared",
                libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED),
            )?;
            let rc = libc::pthread_mutex_init(m, &attr);
            libc::pthread_mutexattr_destroy(&mut attr);
            check("mutex_init", rc)?;
        }
        Ok(PthreadMutex { region })
    }

    fn ptr(&self) -> *mut libc::pthread_mutex_t {
        self.region.as_ptr().cast()
    }
}

impl Drop for PthreadMutex {
    fn drop(&mut self) {
        // SAFETY: the mutex was initialised in `new` and no handle to it outlives `self`
        // (handles borrow it). Only the creating process drops it: children `_exit`.
        unsafe { libc::pthread_mutex_destroy(self.ptr()) };
    }
}

impl ProcLock for &PthreadMutex {
    fn hold<R>(&mut self, f: impl FnOnce() -> R) -> Result<R> {
        // SAFETY: the mutex is initialised and lives in a shared mapping that outlives
        // `self`; lock/unlock are paired in this thread.
        check("mutex_lock", unsafe {
            libc::pthread_mutex_lock(self.ptr())
        })?;
        let r = f();
        // SAFETY: this thread holds the mutex (locked just above).
        check("mutex_unlock", unsafe {
            libc::pthread_mutex_unlock(self.ptr())
        })?;
        Ok(r)
    }
}

/// Unnamed POSIX semaphores with `pshared = 1`, in one mapping.
#[derive(Debug)]
pub struct SharedSems {
    region: SharedRegion,
    count: usize,
}

impl SharedSems {
    /// `count` semaphores, each starting at `value`.
    pub fn new(count: usize, value: u32) -> Result<Self> {
        let region = SharedRegion::new(count * size_of::<libc::sem_t>())?;
        for i in 0..count {
            // SAFETY: semaphore `i` lies inside the fresh mapping, which is suitably
            // aligned (page start plus a multiple of sizeof(sem_t)).
            let rc =
                unsafe { libc::sem_init(region.as_ptr().cast::<libc::sem_t>().add(i), 1, value) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error()).context("sem_init");
            }
        }
        Ok(SharedSems { region, count })
    }

    /// A handle to semaphore `i` (`i < count`).
    pub fn get(&self, i: usize) -> Result<Sem<'_>> {
        if i >= self.count {
            bail!("no semaphore {i}");
        }
        Ok(Sem { sems: self, i })
    }
}

impl Drop for SharedSems {
    fn drop(&mut self) {
        for i in 0..self.count {
            // SAFETY: each semaphore was initialised in `new`; handles borrow `self`, so none
            // is in use any more.
            unsafe { libc::sem_destroy(self.region.as_ptr().cast::<libc::sem_t>().add(i)) };
        }
    }
}

/// One semaphore of a [`SharedSems`].
#[derive(Debug, Clone, Copy)]
pub struct Sem<'a> {
    sems: &'a SharedSems,
    i: usize,
}

impl Sem<'_> {
    fn ptr(&self) -> *mut libc::sem_t {
        // SAFETY: `i < count` was checked when the handle was made, so the pointer stays
        // inside the mapping.
        unsafe { self.sems.region.as_ptr().cast::<libc::sem_t>().add(self.i) }
    }

    fn sem_wait(&self) -> Result<()> {
        loop {
            // SAFETY: the semaphore is initialised and outlives this handle.
            if unsafe { libc::sem_wait(self.ptr()) } == 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).context("sem_wait");
            }
        }
    }

    fn sem_post(&self) -> Result<()> {
        // SAFETY: the semaphore is initialised and outlives this handle.
        if unsafe { libc::sem_post(self.ptr()) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error()).context("sem_post")
        }
    }
}

impl Signal for Sem<'_> {
    fn post(&mut self) -> Result<()> {
        self.sem_post()
    }
    fn wait(&mut self) -> Result<()> {
        self.sem_wait()
    }
}

impl ProcLock for Sem<'_> {
    fn hold<R>(&mut self, f: impl FnOnce() -> R) -> Result<R> {
        self.sem_wait()?;
        let r = f();
        self.sem_post()?;
        Ok(r)
    }
}

/// A process-shared `pthread_barrier_t` of two parties.
#[derive(Debug)]
pub struct PthreadBarrier {
    region: SharedRegion,
}

impl PthreadBarrier {
    /// Maps and initialises a barrier of `parties`.
    pub fn new(parties: u32) -> Result<Self> {
        let region = SharedRegion::new(size_of::<libc::pthread_barrier_t>())?;
        // SAFETY: as for the mutex: attr initialised before use, the barrier placed in a
        // fresh mapping large enough for it.
        unsafe {
            let mut attr: libc::pthread_barrierattr_t = std::mem::zeroed();
            check(
                "barrierattr_init",
                libc::pthread_barrierattr_init(&mut attr),
            )?;
            check(
                "barrierattr_setpshared",
                libc::pthread_barrierattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED),
            )?;
            let rc = libc::pthread_barrier_init(region.as_ptr().cast(), &attr, parties.max(1));
            libc::pthread_barrierattr_destroy(&mut attr);
            check("barrier_init", rc)?;
        }
        Ok(PthreadBarrier { region })
    }
}

impl Drop for PthreadBarrier {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`; handles borrow `self`.
        unsafe { libc::pthread_barrier_destroy(self.region.as_ptr().cast()) };
    }
}

impl BarrierWait for &PthreadBarrier {
    fn wait(&mut self) -> Result<()> {
        // SAFETY: the barrier is initialised and lives in a shared mapping.
        let rc = unsafe { libc::pthread_barrier_wait(self.region.as_ptr().cast()) };
        if rc == 0 || rc == libc::PTHREAD_BARRIER_SERIAL_THREAD {
            Ok(())
        } else {
            check("barrier_wait", rc)
        }
    }
}

/// A named POSIX semaphore created for the "open" scenario and unlinked on drop.
struct NamedSem {
    name: CString,
}

impl NamedSem {
    fn create() -> Result<Self> {
        let name = CString::new(format!("/locksmith-bench-{}", std::process::id()))?;
        // SAFETY: name is a valid C string; the variadic mode and value have the types
        // sem_open expects for O_CREAT.
        let s = unsafe {
            libc::sem_open(
                name.as_ptr(),
                libc::O_CREAT,
                0o600 as libc::c_uint,
                1 as libc::c_uint,
            )
        };
        if s == libc::SEM_FAILED {
            return Err(std::io::Error::last_os_error()).context("sem_open(O_CREAT)");
        }
        // SAFETY: `s` is a semaphore sem_open just returned.
        unsafe { libc::sem_close(s) };
        Ok(NamedSem { name })
    }

    fn open_close(&self) -> Result<()> {
        // SAFETY: name is a valid C string naming an existing semaphore.
        let s = unsafe { libc::sem_open(self.name.as_ptr(), 0) };
        if s == libc::SEM_FAILED {
            return Err(std::io::Error::last_os_error()).context("sem_open");
        }
        // SAFETY: `s` is a semaphore sem_open just returned, closed once.
        unsafe { libc::sem_close(s) };
        Ok(())
    }
}

impl Drop for NamedSem {
    fn drop(&mut self) {
        // SAFETY: name is a valid C string; unlinking our own semaphore name.
        unsafe { libc::sem_unlink(self.name.as_ptr()) };
    }
}

const PTHREAD: &str = "pthread mutex (PROCESS_SHARED)";
const PTHREAD_NOTE: &str = "default type, not robust, in a MAP_SHARED mapping";

/// Runs the POSIX peers.
pub fn run(ctx: &mut Ctx) {
    match PthreadMutex::new() {
        Ok(m) => {
            ctx.lock_uncontended(PTHREAD, "Lock", PTHREAD_NOTE, || Ok(&m));
            ctx.lock_contention(PTHREAD, PTHREAD_NOTE, || Ok(&m));
            ctx.lock_handoff(PTHREAD, "Lock", PTHREAD_NOTE, || Ok(&m));
        }
        Err(e) => ctx.skip(UNCONTENDED, PTHREAD, "Lock", &format!("{e:#}")),
    }
    match SharedSems::new(3, 0) {
        Ok(s) => {
            ctx.ping_pong(
                "POSIX sem_init(pshared=1)",
                "Semaphore",
                "sem_post/sem_wait",
                |c| {
                    s.get(match c {
                        Channel::Ping => 0,
                        Channel::Pong => 1,
                    })
                },
            );
            if let Ok(lock) = s.get(2) {
                // A binary semaphore used as a lock: starts at 0, so post once first.
                let _ = lock.sem_post();
                ctx.lock_uncontended(
                    "POSIX sem_init(pshared=1)",
                    "Semaphore",
                    "sem_wait + sem_post",
                    || Ok(lock),
                );
            }
        }
        Err(e) => ctx.skip(
            crate::scenario::PINGPONG,
            "POSIX sem_init(pshared=1)",
            "Semaphore",
            &format!("{e:#}"),
        ),
    }
    match PthreadBarrier::new(2) {
        Ok(b) => ctx.barrier2("pthread barrier (PROCESS_SHARED)", "", || Ok(&b)),
        Err(e) => ctx.skip(
            crate::scenario::BARRIER,
            "pthread barrier (PROCESS_SHARED)",
            "Barrier",
            &format!("{e:#}"),
        ),
    }
    if ctx.wants(OPEN, "POSIX sem_open") {
        match NamedSem::create() {
            Ok(n) => ctx.per_op(
                OPEN,
                "POSIX sem_open (named)",
                "Semaphore",
                "sem_open of an existing name + sem_close",
                || n.open_close(),
            ),
            Err(e) => ctx.skip(
                OPEN,
                "POSIX sem_open (named)",
                "Semaphore",
                &format!("{e:#}"),
            ),
        }
    }
}
