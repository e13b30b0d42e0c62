//! `run`: a command under a lock or a semaphore permit, with signals forwarded.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use locksmith::{Guard, Lock, RwLock, Semaphore, Space};

use crate::args::RunArgs;
use crate::error::{self, Failure, Outcome};
use crate::progress::wait_with_spinner;

/// The signals forwarded to the command.
pub const FORWARDED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// What `run` holds while the command runs.
enum Target {
    Write(RwLock),
    Read(RwLock),
    Lock(Lock),
    Permit(Semaphore),
}

impl Target {
    fn try_take(&self) -> locksmith::Result<Option<Guard>> {
        match self {
            Target::Write(l) => l.try_write(),
            Target::Read(l) => l.try_read(),
            Target::Lock(l) => l.try_acquire(),
            Target::Permit(s) => s.try_acquire(),
        }
    }

    fn take_timeout(&self, d: Duration) -> locksmith::Result<Option<Guard>> {
        match self {
            Target::Write(l) => l.write_timeout(d),
            Target::Read(l) => l.read_timeout(d),
            Target::Lock(l) => l.acquire_timeout(d),
            Target::Permit(s) => s.acquire_timeout(d),
        }
    }

    fn take(&self) -> locksmith::Result<Guard> {
        match self {
            Target::Write(l) => l.write(),
            Target::Read(l) => l.read(),
            Target::Lock(l) => l.acquire(),
            Target::Permit(s) => s.acquire(),
        }
    }

    /// Waits for the hold as `timeout` says: `None` forever, zero not at all.
    fn wait(&self, timeout: Option<Duration>, what: &str) -> locksmith::Result<Option<Guard>> {
        let message = || format!("waiting for {what}");
        match timeout {
            Some(d) if d.is_zero() => self.try_take(),
            Some(d) => wait_with_spinner(message, || self.try_take(), || self.take_timeout(d)),
            None => wait_with_spinner(message, || self.try_take(), || self.take().map(Some)),
        }
    }
}

/// Runs `locksmith run`.
pub fn run(space: &Space, a: RunArgs) -> Outcome {
    let Some((program, rest)) = a.command.split_first() else {
        return Err(Failure::usage(
            "run needs a command: locksmith run --lock NAME -- CMD [ARGS...]",
        ));
    };
    let (what, guard) = hold(space, &a)?;
    let Some(guard) = guard else {
        if !a.quiet {
            let waited = a.timeout.unwrap_or_default();
            eprintln!(
                "locksmith: timed out after {} waiting for {what}",
                humantime::format_duration(waited)
            );
        }
        return Ok(ExitCode::from(a.conflict_exit_code));
    };
    if guard.previous_owner_died() {
        eprintln!("locksmith: note: the previous holder of {what} died holding it");
    }
    let status = spawn_and_wait(program, rest, &guard);
    let released = guard.release();
    let code = match status {
        Ok(status) => exit_code_of(status),
        Err(f) => return Err(f),
    };
    match released {
        Ok(()) => Ok(ExitCode::from(code)),
        Err(e) => {
            eprintln!("locksmith: {what} was not held to the end: {e}");
            Ok(ExitCode::from(if code == 0 { error::STORE } else { code }))
        }
    }
}

/// Takes what `a` asks for; `None` on timeout. Also returns a description for messages.
fn hold(space: &Space, a: &RunArgs) -> Result<(String, Option<Guard>), Failure> {
    let lease = a.lease;
    let tagged = |l: RwLock| match &a.tag {
        Some(t) => l.tag(t.clone()),
        None => l,
    };
    if let Some(name) = &a.semaphore {
        let permits = a.permits.unwrap_or(1);
        let mut s = space.semaphore(name, permits).lease(lease);
        if let Some(t) = &a.tag {
            s = s.tag(t.clone());
        }
        let what = format!("a permit of semaphore '{name}' ({permits} permits)");
        let guard = Target::Permit(s).wait(a.timeout, &what)?;
        return Ok((what, guard));
    }
    let name = a.lock.as_deref().unwrap_or_default();
    let rw = tagged(space.rwlock(name).lease(lease));
    if a.shared {
        let what = format!("a shared hold of lock '{name}'");
        let guard = Target::Read(rw).wait(a.timeout, &what)?;
        return Ok((what, guard));
    }
    let what = format!("lock '{name}'");
    match Target::Write(rw).wait(a.timeout, &what) {
        Ok(guard) => Ok((what, guard)),
        // A Lock made by the library (space.lock(NAME)): take it as such.
        Err(locksmith::Error::Mismatch { found, .. }) if found == "a Lock" => {
            let mut l = space.lock(name).lease(lease);
            if let Some(t) = &a.tag {
                l = l.tag(t.clone());
            }
            let guard = Target::Lock(l).wait(a.timeout, &what)?;
            Ok((what, guard))
        }
        Err(e) => Err(e.into()),
    }
}

/// The command's pid once it runs (0 before).
static CHILD: AtomicI32 = AtomicI32::new(0);
/// A signal that arrived before the command had a pid (0 if none).
static PENDING: AtomicI32 = AtomicI32::new(0);

/// Forwards `sig` to the command. Runs in a signal handler: atomics and kill(2) only.
fn forward(sig: libc::c_int, info: &libc::siginfo_t) {
    // The terminal sends SIGINT, SIGQUIT and SIGHUP to the whole foreground process
    // group, which includes the command: forwarding them would deliver them twice.
    if info.si_code == libc::SI_KERNEL {
        return;
    }
    PENDING.store(sig, Ordering::SeqCst);
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        let sig = PENDING.swap(0, Ordering::SeqCst);
        if sig != 0 {
            // SAFETY: kill(2) is async-signal-safe and has no memory-safety preconditions.
            unsafe { libc::kill(pid, sig) };
        }
    }
}

fn install_forwarding() -> Result<(), Failure> {
    for sig in FORWARDED {
        // SAFETY: the action is async-signal-safe: it reads a field of the siginfo,
        // uses atomics and calls kill(2); it neither allocates, locks nor panics.
        let registered = unsafe {
            signal_hook_registry::register_sigaction(sig, move |info| forward(sig, info))
        };
        if let Err(e) = registered {
            return Err(Failure::new(
                error::STORE,
                format!("cannot install the handler for signal {sig}: {e}"),
            ));
        }
    }
    Ok(())
}

/// Starts the command with the hold's token in its environment, forwards signals to it
/// and waits for it.
fn spawn_and_wait(
    program: &OsString,
    rest: &[OsString],
    guard: &Guard,
) -> Result<ExitStatus, Failure> {
    install_forwarding()?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(rest)
        .env("LOCKSMITH_TOKEN", guard.token().to_string())
        .env(
            "LOCKSMITH_PREVIOUS_OWNER_DIED",
            if guard.previous_owner_died() {
                "1"
            } else {
                "0"
            },
        );
    die_with_locksmith(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| {
        let code = match e.kind() {
            std::io::ErrorKind::NotFound => error::NOT_FOUND,
            _ => error::CANNOT_EXECUTE,
        };
        Failure::new(
            code,
            format!("cannot run '{}': {e}", program.to_string_lossy()),
        )
    })?;
    let pid = i32::try_from(child.id()).unwrap_or(0);
    CHILD.store(pid, Ordering::SeqCst);
    let early = PENDING.swap(0, Ordering::SeqCst);
    if early != 0 && pid > 0 {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, early) };
    }
    let status = child
        .wait()
        .map_err(|e| Failure::new(error::STORE, format!("cannot wait for the command: {e}")));
    CHILD.store(0, Ordering::SeqCst);
    status
}

/// Makes the command die (SIGKILL) if locksmith dies first, e.g. of a SIGKILL that
/// cannot be forwarded: its hold then lapses, and the command must not run on
/// unprotected. Linux only (PR_SET_PDEATHSIG).
#[cfg(target_os = "linux")]
fn die_with_locksmith(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = i32::try_from(std::process::id()).unwrap_or(0);
    let arm = move || {
        // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers and touches no memory.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } == -1 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != parent {
            // locksmith died before the death signal was armed.
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: `arm` runs in the child between fork and exec and only makes the
    // async-signal-safe calls prctl and getppid; it allocates nothing and takes no lock
    // (the error values are plain integers).
    unsafe { cmd.pre_exec(arm) };
}

#[cfg(not(target_os = "linux"))]
fn die_with_locksmith(_cmd: &mut std::process::Command) {}

/// The shell's convention: the exit code, or 128 + the signal that killed it.
pub fn exit_code_of(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + (sig & 0x7f)).unwrap_or(255),
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code_of(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code_of(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code_of(ExitStatus::from_raw(libc::SIGKILL)), 128 + 9);
        assert_eq!(exit_code_of(ExitStatus::from_raw(libc::SIGTERM)), 128 + 15);
    }
}
