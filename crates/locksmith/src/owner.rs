//! Who holds a primitive: a process (host, boot, machine, PID namespace, pid, start
//! time) and a thread or task.

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub(crate) use crate::os::liveness::pid;
use crate::os::liveness::{self, Verdict};

/// The identity of a holder or waiter, as stored beside the state it holds.
///
/// The process part is `(boot, machine, pidns, pid, start)`: the pid alone is reused
/// by the kernel, but a pid with the tick it started at names one process for the life
/// of a boot, in one PID namespace of one host, which the boot id, the machine id and
/// the namespace's inode name (see [`crate::os::liveness`]). The hostname is for
/// people. `thread` is an id this process gives each thread (for blocking calls) or
/// each async acquisition, never an OS thread id, which the kernel reuses too.
///
/// `machine` and `pidns` are 0 in owners recorded by older builds: such an owner is
/// never judged dead (its lease decides).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Owner {
    pub host: Arc<str>,
    pub boot: u64,
    #[serde(default)]
    pub machine: u64,
    #[serde(default)]
    pub pidns: u64,
    pub pid: u32,
    pub start: u64,
    pub thread: u64,
}

/// A random 64-bit id, unique in practice across processes and hosts: a per-process
/// random base and a counter, through a bijective mix (so ids of one process never
/// collide).
pub(crate) fn fresh_id() -> u64 {
    // The base is per process, not per address space: a forked child inherits the
    // parent's counter, and without a base of its own would hand out the very tickets
    // its parent hands out next (two sleepers of one condition with one ticket).
    static BASE: AtomicU64 = AtomicU64::new(0);
    static BASE_PID: AtomicU32 = AtomicU32::new(0);
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let me = pid();
    let base = if BASE_PID.load(Ordering::Acquire) == me {
        BASE.load(Ordering::Relaxed)
    } else {
        let mut h = RandomState::new().build_hasher();
        h.write_u32(me);
        let base = h.finish();
        BASE.store(base, Ordering::Relaxed);
        BASE_PID.store(me, Ordering::Release);
        base
    };
    // splitmix64's finaliser: a bijection on u64.
    let mut z = base.wrapping_add(
        COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Set in the `thread` of async owners: threads are numbered 1, 2, 3… in the order
/// they first ask, and tasks get random ids with this bit, so the two never meet.
/// Small thread numbers let the mem store keep a lock's holder in one atomic word.
pub(crate) const TASK_BIT: u64 = 1 << 63;

/// The number the next thread to ask gets.
static NEXT_THREAD: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The calling thread's owner, made on first use.
    static THREAD: RefCell<Option<Owner>> = const { RefCell::new(None) };
}

/// The calling thread's number, as [`Owner::current_thread`] has it, without cloning
/// the owner.
pub(crate) fn thread_number() -> u64 {
    let cached = THREAD.with(|cell| match &*cell.borrow() {
        Some(owner) if owner.pid == pid() => Some(owner.thread),
        _ => None,
    });
    cached.unwrap_or_else(|| Owner::current_thread().thread)
}

impl Owner {
    pub(crate) fn with_thread(thread: u64) -> Owner {
        let p = liveness::this_process();
        Owner {
            host: p.host.clone(),
            boot: p.boot,
            machine: p.machine,
            pidns: p.pidns,
            pid: p.pid,
            start: p.start,
            thread,
        }
    }

    /// The calling thread, as the owner of its blocking acquisitions.
    pub(crate) fn current_thread() -> Owner {
        THREAD.with(|cell| {
            let mut cell = cell.borrow_mut();
            match &*cell {
                // After fork the thread-local is the parent's copy: the pid tells.
                Some(owner) if owner.pid == pid() => owner.clone(),
                _ => {
                    let owner = Owner::with_thread(NEXT_THREAD.fetch_add(1, Ordering::Relaxed));
                    *cell = Some(owner.clone());
                    owner
                }
            }
        })
    }

    /// A new owner for one async acquisition: tasks move between threads, so each
    /// acquisition is its own owner.
    pub(crate) fn new_task() -> Owner {
        Owner::with_thread(fresh_id() | TASK_BIT)
    }

    /// Whether this owner is a task (an async or acquisition-owned hold), not a
    /// thread.
    pub(crate) fn is_task(&self) -> bool {
        self.thread & TASK_BIT != 0
    }

    /// Whether both owners belong to one process.
    pub(crate) fn same_process(&self, other: &Owner) -> bool {
        (self.boot, self.machine, self.pidns, self.pid, self.start)
            == (
                other.boot,
                other.machine,
                other.pidns,
                other.pid,
                other.start,
            )
    }

    /// The owner the mem store records for an async hold it granted without asking
    /// who took it (its lock fast path): any one task of this process.
    pub(crate) fn some_task() -> Owner {
        Owner::with_thread(TASK_BIT)
    }

    /// What this process can tell about the owner's process: [`Verdict::Dead`] only
    /// when proven (same host and PID namespace, process gone or replaced).
    pub(crate) fn verdict(&self) -> Verdict {
        liveness::judge(self.boot, self.machine, self.pidns, self.pid, self.start)
    }

    /// Whether this owner's process is proven gone; any doubt counts as alive.
    pub(crate) fn is_dead(&self) -> bool {
        self.verdict() == Verdict::Dead
    }

    /// A short human description: `host pid 1234 (thread 3)` or
    /// `host pid 1234 (task 5f3a09c1)`.
    pub(crate) fn describe(&self) -> String {
        if self.thread & TASK_BIT == 0 {
            format!("{} pid {} (thread {})", self.host, self.pid, self.thread)
        } else {
            let task = (self.thread >> 31) as u32;
            format!("{} pid {} (task {task:08x})", self.host, self.pid)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forked_child_never_draws_the_ids_its_parent_draws_next() {
        let _ = fresh_id(); // the parent's base and counter are set before the fork
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child only computes ids (atomics, getpid, no locks), writes them
        // to the pipe and leaves with _exit, never returning into the test harness.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            let ids: Vec<u8> = (0..4).flat_map(|_| fresh_id().to_ne_bytes()).collect();
            // SAFETY: writes the buffer it owns to the pipe, then exits at once.
            unsafe {
                libc::write(fds[1], ids.as_ptr().cast(), ids.len());
                libc::_exit(0);
            }
        }
        let mine: Vec<u64> = (0..4).map(|_| fresh_id()).collect();
        let mut buf = [0u8; 32];
        // SAFETY: reads at most the buffer's length into the buffer it owns.
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
        let mut status = 0;
        // SAFETY: reaps the child forked above.
        unsafe { libc::waitpid(child, &mut status, 0) };
        assert_eq!(n, 32, "the child wrote its ids");
        let theirs: Vec<u64> = buf
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        assert!(
            mine.iter().all(|id| !theirs.contains(id)),
            "parent {mine:x?} and child {theirs:x?} drew the same ids"
        );
    }

    #[test]
    fn this_process_is_alive_and_a_bogus_pid_is_dead() {
        let me = Owner::current_thread();
        assert!(!me.is_dead());
        let mut other = me.clone();
        other.start += 1;
        assert!(
            other.is_dead(),
            "a reused pid with another start time is dead"
        );
        let mut remote = other.clone();
        remote.boot ^= 1;
        assert!(!remote.is_dead(), "another host's owner is presumed alive");
        let mut elsewhere = other.clone();
        elsewhere.pidns += 1;
        assert!(
            !elsewhere.is_dead(),
            "another namespace's owner is presumed alive"
        );
        let mut old = other.clone();
        (old.machine, old.pidns) = (0, 0);
        assert!(!old.is_dead(), "an older build's owner is presumed alive");
    }

    /// A record written by a build before machine ids and namespaces were recorded:
    /// it still decodes, and its owner is never judged dead (its lease decides), even
    /// with this host's boot id and a pid that is gone.
    #[cfg(any(feature = "sqlite", feature = "shm"))]
    #[test]
    fn an_older_builds_owner_decodes_and_is_never_dead() {
        let me = Owner::current_thread();
        let old = format!(
            r#"{{"host":"{}","boot":{},"pid":4000000,"start":7,"thread":1}}"#,
            me.host, me.boot
        );
        let owner: Owner = serde_json::from_str(&old).unwrap();
        assert_eq!((owner.machine, owner.pidns), (0, 0));
        assert_eq!(owner.verdict(), Verdict::Unknown);
        let mut new = owner.clone();
        (new.machine, new.pidns) = (me.machine, me.pidns);
        assert_eq!(
            new.verdict(),
            Verdict::Dead,
            "the same owner, fully recorded"
        );
    }

    #[test]
    fn threads_and_tasks_are_distinct_owners() {
        let a = Owner::current_thread();
        assert_eq!(a, Owner::current_thread());
        let b = std::thread::spawn(Owner::current_thread).join().unwrap();
        assert_ne!(a, b);
        assert_ne!(Owner::new_task(), Owner::new_task());
        assert_eq!(thread_number(), a.thread);
        assert!(a.describe().contains("thread"));
        assert!(Owner::new_task().describe().contains("task"));
    }
}
