//! The operating-system layer of the placed primitives (futex waits are
//! [`crate::os::futex`]'s): who the caller is (thread and process identities) and whether somebody
//! else is still alive.
//!
//! # How death is detected, and why this way
//!
//! Every holder leaves a *stamp* in shared memory: its thread id (for a [`Mutex`] owner)
//! or process id (for semaphore permits and barrier participants) together with the
//! start time of that thread or process, field 22 of `/proc/ID/stat` (clock ticks since
//! boot). A waiter that has seen the same holder for a whole check interval asks
//! [`crate::os::liveness`], the verdict every store uses: the holder is dead only when
//! its entry is gone and `kill(id, 0)` answers `ESRCH`, or its start time differs from
//! the stamp (the id was reused), or it is a zombie (a zombie group leader whose other
//! threads still run is a live process). Anything else, an entry `hidepid` hides
//! included, counts as alive.
//!
//! Alternatives considered:
//!
//! - *The kernel's robust futex list*: glibc registers one list head per thread
//!   (`set_robust_list`) for its own robust pthread mutexes, and a thread has only one;
//!   a hand-made futex cannot join that list without corrupting glibc's.
//! - *Robust `pthread_mutex_t`*: gives `EOWNERDEAD` for a mutex, but nothing for
//!   semaphore permits or barrier parties, its size and layout are libc's (not a fixed
//!   `#[repr(C)]` format shared by every build), and it does not fit the futex-word
//!   design the other primitives use.
//! - *A per-process liveness `flock`*: needs a file per process and a file descriptor
//!   for every check.
//!
//! All processes sharing a placed primitive must be in the same pid namespace (ids
//! are compared as numbers, and a stamp has no room for the namespace), which is the
//! case for processes of one container or host.
//!
//! The pid+start-time check costs one small `/proc` read, made only on the slow path (a
//! waiter that has waited a full check interval on an unchanged holder), never when
//! taking or releasing an uncontended primitive. Its only blind spot is a holder
//! killed in the few instructions between taking a lock word and writing its start
//! time *and* whose thread id is reused by a new thread before anybody looks; such a
//! holder is taken for alive, never a live holder for dead.
//!
//! [`Mutex`]: super::Mutex

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::os::liveness;

/// Bits of a stamp that hold the start time; the id sits above them.
pub(crate) const START_BITS: u32 = 42;
const START_MASK: u64 = (1 << START_BITS) - 1;
/// Linux ids fit in 22 bits (`PID_MAX_LIMIT` is 2^22).
pub(crate) const ID_MASK: u32 = (1 << 22) - 1;

/// `id << 42 | start time`: who holds something, unambiguous across id reuse.
pub(crate) fn stamp(id: u32, start: u64) -> u64 {
    (u64::from(id & ID_MASK) << START_BITS) | (start & START_MASK)
}

/// The id part of a stamp.
pub(crate) fn stamp_id(stamp: u64) -> u32 {
    (stamp >> START_BITS) as u32
}

/// The identity of the calling thread, as stored in shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Me {
    /// Kernel thread id (or process id for [`process`]), never 0.
    pub(crate) id: u32,
    /// `stamp(id, start time)`.
    pub(crate) stamp: u64,
}

thread_local! {
    // (0, 0) until first used; reset in a forked child by `after_fork_child`.
    static THREAD_ME: Cell<(u32, u64)> = const { Cell::new((0, 0)) };
}
static PROCESS_STAMP: AtomicU64 = AtomicU64::new(0);
/// 0: fork handler not registered · 1: being registered · 2: registered.
static ATFORK: AtomicU32 = AtomicU32::new(0);

extern "C" fn after_fork_child() {
    // The child is a new process and its only thread is a new thread: forget the
    // parent's identities. Only const-initialised thread-locals and atomics are touched,
    // which is async-signal-safe enough for an atfork child handler.
    THREAD_ME.with(|c| c.set((0, 0)));
    PROCESS_STAMP.store(0, Ordering::Relaxed);
}

/// Registers the fork handler once; true when it is registered, so identities may be
/// cached (a forked child then forgets them).
///
/// Not a `std::sync::Once`: a child forked while another thread is inside `call_once`
/// would wait for ever on a `Once` that nobody in the child will complete. Here such a
/// child sees state 1, never caches, and reads its identity afresh each time: slower,
/// never wrong, never stuck.
fn atfork_registered() -> bool {
    match ATFORK.load(Ordering::Acquire) {
        2 => true,
        0 if ATFORK
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok() =>
        {
            // SAFETY: registering a plain `extern "C"` function with no captured state;
            // the handler only resets atomics and a const thread-local.
            let r = unsafe { libc::pthread_atfork(None, None, Some(after_fork_child)) };
            if r == 0 {
                ATFORK.store(2, Ordering::Release);
                true
            } else {
                ATFORK.store(0, Ordering::Release);
                false
            }
        }
        _ => false,
    }
}

/// The calling thread's identity (cached per thread; the cache is dropped on fork).
#[inline]
pub(crate) fn thread() -> Me {
    let (id, stamp) = THREAD_ME.with(Cell::get);
    if id != 0 {
        return Me { id, stamp };
    }
    thread_slow()
}

#[cold]
fn thread_slow() -> Me {
    let tid = rustix::thread::gettid().as_raw_pid() as u32;
    let start = start_of(&format!("/proc/self/task/{tid}/stat")).unwrap_or(0);
    let me = Me {
        id: tid,
        stamp: stamp(tid, start),
    };
    if atfork_registered() {
        THREAD_ME.with(|c| c.set((me.id, me.stamp)));
    }
    me
}

/// The calling process's identity (cached; the cache is dropped on fork).
pub(crate) fn process() -> Me {
    let s = PROCESS_STAMP.load(Ordering::Relaxed);
    if s != 0 {
        return Me {
            id: stamp_id(s),
            stamp: s,
        };
    }
    let pid = std::process::id();
    let start = start_of("/proc/self/stat").unwrap_or(0);
    let s = stamp(pid, start);
    if atfork_registered() {
        PROCESS_STAMP.store(s, Ordering::Relaxed);
    }
    Me { id: pid, stamp: s }
}

/// The start time of the thread or process whose `/proc/…/stat` is at `path`.
fn start_of(path: &str) -> Option<u64> {
    liveness::read_stat(path).map(|s| s.start)
}

/// What a liveness check found: the one verdict of [`crate::os::liveness`].
pub(crate) use crate::os::liveness::Verdict as Liveness;

/// Is the thread (`process == false`) or process (`true`) behind `stamp` alive?
///
/// Slow (reads `/proc`); only for waiters that have waited a check interval.
pub(crate) fn liveness(stamp_value: u64, process: bool) -> Liveness {
    alive(
        stamp_id(stamp_value),
        stamp_value & START_MASK,
        START_MASK,
        process,
    )
}

/// Is thread or process `id`, started at `start` (compared under `mask`; `0` = unknown,
/// not compared), alive? Only [`Liveness::Dead`] is proof; the caller treats
/// [`Liveness::Unknown`] as alive.
pub(crate) fn alive(id: u32, start: u64, mask: u64, process: bool) -> Liveness {
    let task = if process {
        liveness::Task::Process
    } else {
        liveness::Task::Thread
    };
    liveness::judge_local(id, start, mask, task)
}

/// A deadline on the monotonic clock; `None` waits for ever.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline(Option<Instant>);

impl Deadline {
    pub(crate) fn after(timeout: Option<Duration>) -> Deadline {
        // An unrepresentable deadline (centuries away) is the same as none.
        Deadline(timeout.and_then(|d| Instant::now().checked_add(d)))
    }

    /// Time left: `None` for ever, `Some(ZERO)` when passed.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.0.map(|t| t.saturating_duration_since(Instant::now()))
    }

    /// The next futex wait: until the deadline, but no longer than `slice`.
    pub(crate) fn slice(&self, slice: Duration) -> Duration {
        match self.remaining() {
            None => slice,
            Some(r) => r.min(slice),
        }
    }

    pub(crate) fn passed(&self) -> bool {
        self.remaining() == Some(Duration::ZERO)
    }
}

/// Tracks how long a waiter has seen the same holder, to decide when to check it.
#[derive(Debug)]
pub(crate) struct Watch {
    seen: u64,
    since: Instant,
}

impl Watch {
    pub(crate) fn new() -> Watch {
        Watch {
            seen: 0,
            since: Instant::now(),
        }
    }

    /// True when `holder` has been the holder for at least `interval`; restarts the
    /// clock when it says so or when the holder changed.
    pub(crate) fn due(&mut self, holder: u64, interval: Duration) -> bool {
        let now = Instant::now();
        if holder != self.seen {
            self.seen = holder;
            self.since = now;
            return false;
        }
        if now.duration_since(self.since) >= interval {
            self.since = now;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_identity_is_alive_and_stable() {
        let me = thread();
        assert_eq!(thread(), me);
        assert_eq!(liveness(me.stamp, false), Liveness::Alive);
        let p = process();
        assert_eq!(p.id, std::process::id());
        assert_eq!(liveness(p.stamp, true), Liveness::Alive);
        // A stamp with our id but another start time is a reused id: dead.
        let other = stamp(p.id, (p.stamp & START_MASK) + 1);
        assert_eq!(liveness(other, true), Liveness::Dead);
    }

    #[test]
    fn finished_thread_is_dead() {
        let s = std::thread::spawn(|| thread().stamp).join().unwrap_or(0);
        // join returns a moment before the kernel removes the thread: look again until
        // it is gone (the hang guard is generous).
        let start = Instant::now();
        while liveness(s, false) == Liveness::Alive {
            assert!(start.elapsed() < Duration::from_secs(60));
            std::thread::yield_now();
        }
    }
}
