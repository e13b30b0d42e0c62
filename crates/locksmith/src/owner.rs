//! Who holds a primitive: a process (host, boot, pid, start time) and a thread or task.

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

/// The identity of a holder or waiter, as stored beside the state it holds.
///
/// The process part is `(host, boot, pid, start)`: the pid alone is reused by the
/// kernel, but a pid with the tick it started at names one process for the life of a
/// boot, and the boot id tells one boot from the next. `thread` is an id this process
/// gives each thread (for blocking calls) or each async acquisition, never an OS
/// thread id, which the kernel reuses too.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Owner {
    pub host: Arc<str>,
    pub boot: u64,
    pub pid: u32,
    pub start: u64,
    pub thread: u64,
}

struct Process {
    host: Arc<str>,
    boot: u64,
    pid: u32,
    start: u64,
}

fn process() -> Arc<Process> {
    static PROCESS: Mutex<Option<Arc<Process>>> = Mutex::new(None);
    let mut cached = PROCESS.lock().unwrap_or_else(|e| e.into_inner());
    match &*cached {
        // A forked child inherits this cache: re-reading when the pid changed keeps
        // a child from posing as its parent.
        Some(p) if p.pid == pid() => p.clone(),
        _ => {
            let p = Arc::new(read_process());
            *cached = Some(p.clone());
            p
        }
    }
}

fn read_process() -> Process {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|b| hash_str(b.trim()))
        .unwrap_or(0);
    let pid = pid();
    Process {
        host: host.into(),
        boot,
        pid,
        start: start_time(pid).unwrap_or(0),
    }
}

fn hash_str(s: &str) -> u64 {
    // FNV-1a: stable across processes, unlike std's randomly keyed hasher.
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The start time of process `pid` in clock ticks since boot (field 22 of
/// `/proc/PID/stat`), or `None` if there is no such process, or only its corpse (a
/// zombie that its parent has not reaped yet, which can hold nothing any more).
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past its
    // closing parenthesis, after which field 3 (the state) starts.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if matches!(fields.next(), Some("Z" | "X" | "x")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// This process's id, cached: `getpid` is a system call, and the acquire path asks
/// for it every time (to tell a forked child from its parent).
pub(crate) fn pid() -> u32 {
    static PID: AtomicU32 = AtomicU32::new(0);
    // Not a `Once`: a child forked while another thread is inside `call_once` would
    // wait for ever. Two threads racing here both register, which is harmless.
    static AT_FORK: AtomicBool = AtomicBool::new(false);
    extern "C" fn forget_pid() {
        // Runs in the child right after fork: an atomic store is async-signal-safe.
        PID.store(0, Ordering::Relaxed);
    }
    if !AT_FORK.load(Ordering::Acquire) {
        // SAFETY: pthread_atfork only records the handler; `forget_pid` is a plain
        // `extern "C"` function that stores to an atomic, which is allowed in a child
        // of a multithreaded fork. If registration fails, the cache is never used.
        let registered = unsafe { libc::pthread_atfork(None, None, Some(forget_pid)) } == 0;
        if !registered {
            PID.store(u32::MAX, Ordering::Relaxed);
        }
        AT_FORK.store(true, Ordering::Release);
    }
    match PID.load(Ordering::Relaxed) {
        0 => {
            let pid = std::process::id();
            PID.store(pid, Ordering::Relaxed);
            pid
        }
        u32::MAX => std::process::id(),
        pid => pid,
    }
}

/// A random 64-bit id, unique in practice across processes and hosts: a per-process
/// random base and a counter, through a bijective mix (so ids of one process never
/// collide).
pub(crate) fn fresh_id() -> u64 {
    static BASE: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| {
        let mut h = RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    });
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
const TASK_BIT: u64 = 1 << 63;

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
        let p = process();
        Owner {
            host: p.host.clone(),
            boot: p.boot,
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

    /// The owner the mem store records for an async hold it granted without asking
    /// who took it (its lock fast path): any one task of this process.
    pub(crate) fn some_task() -> Owner {
        Owner::with_thread(TASK_BIT)
    }

    /// Whether this owner's process is known to be gone. Only processes of this host
    /// and boot can be checked; any other owner is presumed alive (its lease decides).
    #[allow(dead_code)] // for the store backends' liveness checks
    pub(crate) fn is_dead(&self) -> bool {
        let p = process();
        if *self.host != *p.host {
            return false;
        }
        if self.boot != p.boot {
            return true;
        }
        start_time(self.pid) != Some(self.start)
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
        remote.host = "elsewhere".into();
        assert!(!remote.is_dead(), "another host's owner is presumed alive");
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

    #[test]
    fn start_time_parses_a_command_with_spaces() {
        assert!(start_time(std::process::id()).is_some());
        assert_eq!(start_time(u32::MAX), None);
    }
}
