//! Who this process is, and whether another process is provably gone: the one verdict
//! every store, `status` and `break` use.
//!
//! # What "dead" means
//!
//! A holder is declared dead only when this process can prove it, which takes all of:
//!
//! 1. **the same host**: the holder recorded this kernel's boot id
//!    (`/proc/sys/kernel/random/boot_id`, random for every boot) and this machine's id
//!    (`/etc/machine-id`). The hostname is never evidence: cloned VMs, containers
//!    started with one `--hostname` and hosts all called `localhost` share it, and a
//!    holder with this hostname but another boot id may be another machine, not this
//!    one before a reboot;
//! 2. **the same PID namespace**: the holder recorded the inode of its
//!    `/proc/self/ns/pid`, and it is ours, so its pid means the same process here;
//! 3. **the process is gone or is another one**: `/proc/PID/stat` is missing and
//!    `kill(PID, 0)` answers `ESRCH`, or its start time is not the recorded one (the
//!    pid was reused), or it is a zombie with no live thread.
//!
//! Everything else is [`Verdict::Unknown`], which every caller treats as alive: the
//! hold's lease decides. In particular an owner recorded by an older build (without
//! the machine id or namespace) is unknown, and so is a process that `/proc` hides
//! (`hidepid`: the entry is unreadable but `kill` finds the pid).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::hash::stable_hash;

/// What this process can tell about another process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It runs: same host and namespace, and `/proc` shows it with its start time.
    Alive,
    /// Proven gone (see the module's documentation).
    Dead,
    /// Not provable either way; callers treat it as alive and let the lease decide.
    Unknown,
}

/// This process as a holder records itself.
#[derive(Debug)]
pub(crate) struct Process {
    /// The hostname, for people only: never compared to decide anything.
    pub host: Arc<str>,
    /// A hash of the kernel's boot id; 0 if unreadable.
    pub boot: u64,
    /// A hash of the machine id ([`NO_MACHINE_ID`] where the host has none); 0 if not
    /// recorded.
    pub machine: u64,
    /// The inode of this process's PID namespace; 0 if unknown (no `/proc`, or a
    /// `/proc` mounted for another namespace).
    pub pidns: u64,
    /// The process id, in its own PID namespace.
    pub pid: u32,
    /// The start time in clock ticks since boot; 0 if unreadable.
    pub start: u64,
}

/// The machine id recorded by a host without `/etc/machine-id` (minimal containers):
/// the boot id alone then names the host, which it does well (random per boot).
const NO_MACHINE_ID: u64 = 1;

impl Process {
    /// Whether an owner recorded as `(boot, machine, pidns)` provably shares this
    /// process's host and PID namespace. Any unrecorded (0) part makes it unprovable.
    pub(crate) fn same_host_and_namespace(&self, boot: u64, machine: u64, pidns: u64) -> bool {
        self.boot != 0
            && self.machine != 0
            && self.pidns != 0
            && boot == self.boot
            && machine == self.machine
            && pidns == self.pidns
    }
}

/// This process's identity, read once (and again in a forked child, whose pid tells).
pub(crate) fn this_process() -> Arc<Process> {
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
        .ok()
        .map(|b| b.trim().to_owned())
        .filter(|b| !b.is_empty())
        .map_or(0, |b| nonzero(stable_hash(b.as_bytes())));
    let machine = ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|path| {
            let id = std::fs::read_to_string(path).ok()?;
            let id = id.trim();
            (!id.is_empty()).then(|| nonzero(stable_hash(id.as_bytes())))
        })
        .unwrap_or(NO_MACHINE_ID);
    let pid = pid();
    Process {
        host: host.into(),
        boot,
        machine,
        pidns: pid_namespace(pid),
        pid,
        start: read_stat(&format!("/proc/{pid}/stat")).map_or(0, |s| s.start),
    }
}

/// Keeps 0 (and [`NO_MACHINE_ID`]) free to mean "not recorded" (and "none").
fn nonzero(h: u64) -> u64 {
    h.max(2)
}

/// The inode of this process's PID namespace, or 0 when `/proc` cannot tell: if
/// `/proc/self` is not `pid`, the `/proc` mounted here belongs to another namespace,
/// and its `/proc/PID` entries would name other processes than our pids do.
fn pid_namespace(pid: u32) -> u64 {
    let ours = std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str()?.parse::<u32>().ok())
        == Some(pid);
    if !ours {
        return 0;
    }
    std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| std::os::unix::fs::MetadataExt::ino(&m))
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

/// The two fields of `/proc/…/stat` a verdict needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    /// The state letter (field 3): `R`, `S`, `Z` (zombie), `X` (dead), …
    pub state: u8,
    /// The start time in clock ticks since boot (field 22).
    pub start: u64,
}

/// Reads a `/proc/…/stat` file; `None` if it is missing, unreadable or malformed.
pub(crate) fn read_stat(path: &str) -> Option<Stat> {
    let text = std::fs::read(path).ok()?;
    // The command name (field 2) is in parentheses and may itself contain ") ";
    // everything after the last ')' is space separated, starting with field 3.
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&text[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.as_bytes().first().copied()?;
    // Field 3 is the state; field 22 (start time) is 19 further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start })
}

/// Whether a process or a thread is being judged: a zombie thread is gone, but a
/// zombie process (its group leader exited) lives on while any other thread runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Task {
    /// A process id (thread group id).
    Process,
    /// A thread id.
    Thread,
}

/// The verdict on an owner recorded as `(boot, machine, pidns, pid, start)`.
pub(crate) fn judge(boot: u64, machine: u64, pidns: u64, pid: u32, start: u64) -> Verdict {
    let me = this_process();
    if !me.same_host_and_namespace(boot, machine, pidns) {
        return Verdict::Unknown;
    }
    if pid == me.pid && start == me.start {
        return Verdict::Alive;
    }
    judge_local(pid, start, u64::MAX, Task::Process)
}

/// The verdict on thread or process `id` of this host and PID namespace (the caller
/// knows it is), started at `start` as compared under `mask` (`0`: not recorded).
pub(crate) fn judge_local(id: u32, start: u64, mask: u64, task: Task) -> Verdict {
    if id == 0 || id > i32::MAX as u32 {
        return Verdict::Unknown;
    }
    match read_stat(&format!("/proc/{id}/stat")) {
        None => {
            // No readable entry: gone, or hidden (`hidepid`), or another user's.
            // kill(id, 0) decides; it accepts thread ids too, and only ESRCH proves
            // that no such id exists.
            let pid = i32::try_from(id)
                .ok()
                .and_then(rustix::process::Pid::from_raw);
            if pid.map(rustix::process::test_kill_process) == Some(Err(rustix::io::Errno::SRCH)) {
                Verdict::Dead
            } else {
                Verdict::Unknown
            }
        }
        Some(stat) => {
            if start != 0 && stat.start & mask != start & mask {
                // The id now names a thread or process started at another time.
                return Verdict::Dead;
            }
            if stat.state == b'Z' || stat.state == b'X' {
                if task == Task::Process {
                    // A zombie group leader whose other threads still run is a live
                    // process: its task directory lists them beside the leader.
                    return match std::fs::read_dir(format!("/proc/{id}/task")).map(Iterator::count)
                    {
                        Ok(tasks) if tasks > 1 => Verdict::Alive,
                        Ok(_) => Verdict::Dead,
                        Err(_) => Verdict::Unknown,
                    };
                }
                return Verdict::Dead;
            }
            Verdict::Alive
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_dead() {
        let me = this_process();
        assert_ne!(me.boot, 0);
        assert_ne!(me.pidns, 0);
        assert_eq!(
            judge(me.boot, me.machine, me.pidns, me.pid, me.start),
            Verdict::Alive
        );
        let other_start = judge(me.boot, me.machine, me.pidns, me.pid, me.start + 1);
        assert_eq!(
            other_start,
            Verdict::Dead,
            "a reused pid is another process"
        );
    }

    #[test]
    fn anything_not_proven_the_same_host_and_namespace_is_unknown() {
        let me = this_process();
        let gone = i32::MAX as u32 - 1;
        assert_eq!(judge(me.boot, me.machine, me.pidns, gone, 1), Verdict::Dead);
        for (boot, machine, pidns) in [
            (me.boot ^ 4, me.machine, me.pidns),
            (me.boot, me.machine ^ 4, me.pidns),
            (me.boot, me.machine, me.pidns + 1),
            (me.boot, 0, 0),
            (0, 0, 0),
        ] {
            assert_eq!(judge(boot, machine, pidns, gone, 1), Verdict::Unknown);
        }
    }

    #[test]
    fn stat_parses_a_command_with_spaces() {
        assert!(read_stat(&format!("/proc/{}/stat", std::process::id())).is_some());
        assert_eq!(read_stat("/proc/4294967295/stat"), None);
    }
}
