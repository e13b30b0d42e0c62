//! `run`: a command under a lock or a semaphore permit, with signals forwarded.
//!
//! `run` is two processes, so that no process of the command's tree ever runs on
//! after the hold is gone, even when the process the user started is SIGKILLed:
//!
//! - the *launcher*, the process the user started: it forwards signals to the
//!   holder, waits for it and exits with its status. It touches no store.
//! - the *holder*, the launcher's child: it takes the hold (it is the holder `status`
//!   shows), runs the command, and releases only once every process of the
//!   command's tree has ended. It is a child subreaper, so every orphan of the tree
//!   is reparented to it and it can see and kill the whole tree.
//!
//! When the launcher dies of anything (even SIGKILL), the holder sees the end of a
//! pipe whose only writer was the launcher, SIGKILLs the whole tree, waits until it
//! is gone, and only then exits, without releasing, so that the next holder is told
//! its previous owner died: the hold outlives the tree, so the next holder can never
//! overlap it. A waiter gives up its place in the queue the same
//! way, or when it gets SIGINT, SIGTERM, SIGHUP or SIGQUIT.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use locksmith::{Guard, Lock, RwLock, Semaphore, Space};
use tokio::sync::mpsc;

use crate::args::{self, OnLost, RunArgs};
use crate::error::{self, Failure, Outcome};
use crate::progress::wait_with_spinner;

/// The signals forwarded to the command (and that make a waiter give up).
pub const FORWARDED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// How often the holder looks again for stragglers while it kills the tree (each
/// reaped child makes it look again too; this is a backstop, not synchronization).
const RESCAN: Duration = Duration::from_millis(100);

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

    /// Waits for the hold, `timeout` at most (`None`: for ever). Cancel safe: a
    /// dropped future leaves the queue.
    async fn take(&self, timeout: Option<Duration>) -> locksmith::Result<Option<Guard>> {
        match (self, timeout) {
            (Target::Write(l), Some(d)) => l.write_timeout_async(d).await,
            (Target::Write(l), None) => l.write_async().await.map(Some),
            (Target::Read(l), Some(d)) => l.read_timeout_async(d).await,
            (Target::Read(l), None) => l.read_async().await.map(Some),
            (Target::Lock(l), Some(d)) => l.acquire_timeout_async(d).await,
            (Target::Lock(l), None) => l.acquire_async().await.map(Some),
            (Target::Permit(s), Some(d)) => s.acquire_timeout_async(d).await,
            (Target::Permit(s), None) => s.acquire_async().await.map(Some),
        }
    }

    /// Waits for the hold as `timeout` says: `None` forever, zero not at all. `None`
    /// also when a signal or the launcher's death stopped the wait (`events.stop`
    /// says which).
    fn wait(
        &self,
        timeout: Option<Duration>,
        what: &str,
        events: &mut Events,
    ) -> locksmith::Result<Option<Guard>> {
        if timeout.is_some_and(|d| d.is_zero()) {
            return self.try_take();
        }
        let message = || format!("waiting for {what}");
        wait_with_spinner(
            message,
            || self.try_take(),
            || events.unless_stopped(self.take(timeout)),
        )
    }
}

/// Runs `locksmith run`: splits into the launcher and the holder, and in the holder
/// opens `store` and does the work.
pub fn run(store: Option<&str>, a: RunArgs) -> Outcome {
    let Some((program, rest)) = a.command.split_first() else {
        return Err(Failure::usage(
            "run needs a command: locksmith run --lock NAME -- CMD [ARGS...]",
        ));
    };
    let launcher = split()?;
    let mut events = Events::start(launcher)?;
    let space = args::open(store, true)?;
    let (what, guard) = hold(&space, &a, &mut events)?;
    let Some(guard) = guard else {
        if let Some(stop) = events.stop {
            if !a.quiet && stop != Stop::Launcher {
                eprintln!("locksmith: gave up waiting for {what}: {}", stop.describe());
            }
            return Ok(ExitCode::from(stop.exit_code()));
        }
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
    let tx = events.tx.clone();
    guard.on_lease_lost(move || {
        let _ = tx.send(Event::Lost);
    });
    let ended = supervise(program, rest, &guard, &mut events, a.on_lost, &what);
    if matches!(&ended, Ok(e) if e.abandoned) {
        // The command was killed half-way: leave the hold to end with this process,
        // so that the next holder is told its previous owner died.
        let _ = guard.detach();
        return Ok(ExitCode::from(Stop::Launcher.exit_code()));
    }
    let released = guard.release();
    let ended = ended?;
    if ended.lost_acted {
        eprintln!("locksmith: {what} was lost while held; the command was stopped");
        return Ok(ExitCode::from(error::STORE));
    }
    let code = exit_code_of(ended.status);
    match released {
        Ok(()) => Ok(ExitCode::from(code)),
        Err(e) => {
            eprintln!("locksmith: {what} was not held to the end: {e}");
            Ok(ExitCode::from(if code == 0 { error::STORE } else { code }))
        }
    }
}

/// Takes what `a` asks for; `None` on timeout or a stop. Also returns a description
/// for messages.
fn hold(
    space: &Space,
    a: &RunArgs,
    events: &mut Events,
) -> Result<(String, Option<Guard>), Failure> {
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
        let guard = Target::Permit(s).wait(a.timeout, &what, events)?;
        return Ok((what, guard));
    }
    let name = a.lock.as_deref().unwrap_or_default();
    let rw = tagged(space.rwlock(name).lease(lease));
    if a.shared {
        let what = format!("a shared hold of lock '{name}'");
        let guard = Target::Read(rw).wait(a.timeout, &what, events)?;
        return Ok((what, guard));
    }
    let what = format!("lock '{name}'");
    match Target::Write(rw).wait(a.timeout, &what, events) {
        Ok(guard) => Ok((what, guard)),
        // A Lock made by the library (space.lock(NAME)): take it as such.
        Err(locksmith::Error::Mismatch { found, .. }) if found == "a Lock" => {
            let mut l = space.lock(name).lease(lease);
            if let Some(t) = &a.tag {
                l = l.tag(t.clone());
            }
            let guard = Target::Lock(l).wait(a.timeout, &what, events)?;
            Ok((what, guard))
        }
        Err(e) => Err(e.into()),
    }
}

/// Why a wait or a hold was cut short from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// This signal arrived.
    Signal(libc::c_int),
    /// The launcher died.
    Launcher,
}

impl Stop {
    fn describe(self) -> String {
        match self {
            Stop::Signal(sig) => format!("got signal {sig}"),
            Stop::Launcher => "locksmith was killed".to_owned(),
        }
    }

    /// The shell's convention for a process ended by a signal.
    fn exit_code(self) -> u8 {
        match self {
            Stop::Signal(sig) => u8::try_from(128 + sig).unwrap_or(255),
            Stop::Launcher => 128 + 9,
        }
    }
}

/// What the holder hears about while it waits and while it holds.
#[derive(Debug)]
enum Event {
    /// A forwarded signal; `terminal` if the kernel sent it (the terminal sends it to
    /// the whole foreground process group, the command included).
    Signal { sig: libc::c_int, terminal: bool },
    /// The launcher is gone.
    LauncherGone,
    /// The lease keeper found the hold lost.
    Lost,
    /// The command's own process ended, with this wait status.
    Exited(i32),
    /// Some other process of the tree was reaped.
    Reaped,
    /// The holder has no child left: the whole tree has ended.
    TreeDone,
}

/// The holder's events: signals and the launcher's end (from a watcher thread), the
/// loss of the hold (from the lease keeper), and children ending (from a reaper).
struct Events {
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    rt: tokio::runtime::Runtime,
    /// Set when a wait was stopped.
    stop: Option<Stop>,
}

/// The write end of the holder's self-pipe, for its signal handlers (-1 before).
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

impl Events {
    /// Installs the holder's signal handlers and starts its watcher thread.
    fn start(launcher: OwnedFd) -> Result<Events, Failure> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::new(error::STORE, format!("cannot start a runtime: {e}")))?;
        let (signals_in, signals_out) = pipe()?;
        SIGNAL_PIPE.store(signals_in.as_raw_fd(), Ordering::SeqCst);
        // The write end lives as long as the process: the handlers may run any time.
        std::mem::forget(signals_in);
        for sig in FORWARDED {
            // SAFETY: the action is async-signal-safe: it reads a field of the siginfo,
            // loads an atomic and calls write(2); it neither allocates, locks nor panics.
            let registered = unsafe {
                signal_hook_registry::register_sigaction(sig, move |info| note_signal(sig, info))
            };
            if let Err(e) = registered {
                return Err(Failure::new(
                    error::STORE,
                    format!("cannot install the handler for signal {sig}: {e}"),
                ));
            }
        }
        // Threads started from here on inherit the mask: unblock first, so that any
        // thread may run the (async-signal-safe) handlers.
        mask_forwarded(libc::SIG_UNBLOCK);
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher_tx = tx.clone();
        std::thread::Builder::new()
            .name("locksmith-watch".into())
            .spawn(move || watch(&signals_out, &launcher, &watcher_tx))
            .map_err(|e| Failure::new(error::STORE, format!("cannot start a thread: {e}")))?;
        Ok(Events {
            tx,
            rx,
            rt,
            stop: None,
        })
    }

    /// Runs `wait` until it ends, or until a forwarded signal arrives or the launcher
    /// dies: then drops it (which leaves the queue) and records why in `self.stop`.
    fn unless_stopped(
        &mut self,
        wait: impl std::future::Future<Output = locksmith::Result<Option<Guard>>>,
    ) -> locksmith::Result<Option<Guard>> {
        let rx = &mut self.rx;
        let (result, stop) = self.rt.block_on(async {
            let mut wait = std::pin::pin!(wait);
            loop {
                tokio::select! {
                    result = &mut wait => return (result, None),
                    event = rx.recv() => match event {
                        Some(Event::Signal { sig, .. }) => return (Ok(None), Some(Stop::Signal(sig))),
                        Some(Event::LauncherGone) | None => return (Ok(None), Some(Stop::Launcher)),
                        Some(_) => {}
                    },
                }
            }
        });
        self.stop = stop;
        result
    }
}

/// Records a forwarded signal for the watcher thread. Runs in a signal handler:
/// atomics and write(2) only.
fn note_signal(sig: libc::c_int, info: &libc::siginfo_t) {
    let fd = SIGNAL_PIPE.load(Ordering::SeqCst);
    if fd < 0 {
        return;
    }
    let terminal = if info.si_code == libc::SI_KERNEL {
        0x80
    } else {
        0
    };
    let byte = u8::try_from(sig).unwrap_or(0) | terminal;
    // SAFETY: write(2) is async-signal-safe; `byte` outlives the call. If the pipe is
    // full, signals are already waiting to be read, and one more adds nothing.
    unsafe { libc::write(fd, std::ptr::from_ref(&byte).cast(), 1) };
}

/// The watcher thread: turns signals and the launcher's end into events.
fn watch(signals: &OwnedFd, launcher: &OwnedFd, tx: &mpsc::UnboundedSender<Event>) {
    let mut fds = [
        libc::pollfd {
            fd: signals.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: launcher.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let mut bytes = [0u8; 64];
            // SAFETY: reads at most 64 bytes into `bytes`, which is 64 bytes long.
            let got = unsafe { libc::read(fds[0].fd, bytes.as_mut_ptr().cast(), bytes.len()) };
            for &b in bytes.iter().take(usize::try_from(got).unwrap_or(0)) {
                let event = Event::Signal {
                    sig: libc::c_int::from(b & 0x7f),
                    terminal: b & 0x80 != 0,
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
        }
        // The launcher never writes: readable means its end closed, i.e. it is gone.
        if fds[1].revents != 0 {
            fds[1].fd = -1;
            if tx.send(Event::LauncherGone).is_err() {
                return;
            }
        }
    }
}

/// How the command's tree ended.
struct Ended {
    /// The wait status of the command's own process.
    status: ExitStatus,
    /// The hold was lost and `--on-lost` signalled the tree.
    lost_acted: bool,
    /// The launcher died, and the tree was killed for it.
    abandoned: bool,
}

/// Starts the command with the hold's token in its environment, forwards signals to
/// it, acts on the loss of the hold, and waits until every process of its tree has
/// ended.
fn supervise(
    program: &OsString,
    rest: &[OsString],
    guard: &Guard,
    events: &mut Events,
    on_lost: OnLost,
    what: &str,
) -> Result<Ended, Failure> {
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
    die_with_holder(&mut cmd);
    let child = cmd.spawn().map_err(|e| {
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
    // The reaper thread waits for every child from now on (std's handle is not used).
    drop(child);
    let reaper_tx = events.tx.clone();
    std::thread::Builder::new()
        .name("locksmith-reap".into())
        .spawn(move || reap(pid, &reaper_tx))
        .map_err(|e| {
            // Without a reaper nobody would wait for the command: end it now.
            signal_tree(libc::SIGKILL);
            Failure::new(error::STORE, format!("cannot start a thread: {e}"))
        })?;
    let rx = &mut events.rx;
    let mut status = None;
    let mut lost_acted = false;
    let mut abandoned = false;
    // Set once the whole tree must go: SIGKILL it until the holder has no child left.
    let mut killing = false;
    events.rt.block_on(async {
        loop {
            let event = if killing {
                match tokio::time::timeout(RESCAN, rx.recv()).await {
                    Ok(event) => event,
                    Err(_) => {
                        signal_tree(libc::SIGKILL);
                        continue;
                    }
                }
            } else {
                rx.recv().await
            };
            match event {
                // A signal from the terminal reached the command too.
                Some(Event::Signal { terminal: true, .. }) => {}
                Some(Event::Signal { sig, .. }) => {
                    // SAFETY: kill(2) has no memory-safety preconditions.
                    unsafe { libc::kill(pid, sig) };
                }
                Some(Event::LauncherGone) => {
                    abandoned = true;
                    killing = true;
                    signal_tree(libc::SIGKILL);
                }
                Some(Event::Lost) => {
                    let sig = match on_lost {
                        OnLost::Term => libc::SIGTERM,
                        OnLost::Kill => libc::SIGKILL,
                        OnLost::Ignore => {
                            eprintln!("locksmith: {what} was lost while held (--on-lost ignore: the command runs on)");
                            continue;
                        }
                    };
                    lost_acted = true;
                    killing |= sig == libc::SIGKILL;
                    signal_tree(sig);
                }
                Some(Event::Exited(s)) => {
                    status = Some(ExitStatus::from_raw(s));
                    if killing {
                        signal_tree(libc::SIGKILL);
                    }
                }
                Some(Event::Reaped) => {
                    if killing {
                        signal_tree(libc::SIGKILL);
                    }
                }
                Some(Event::TreeDone) | None => return,
            }
        }
    });
    Ok(Ended {
        status: status.unwrap_or_else(|| ExitStatus::from_raw(libc::SIGKILL)),
        lost_acted,
        abandoned,
    })
}

/// The reaper thread: waits for every child of the holder (a subreaper: the orphans
/// of the tree are its children too) until there is none left.
fn reap(command: i32, tx: &mpsc::UnboundedSender<Event>) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into `status`, a valid i32.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == -1 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            let _ = tx.send(Event::TreeDone);
            return;
        }
        let event = if pid == command {
            Event::Exited(status)
        } else {
            Event::Reaped
        };
        let _ = tx.send(event);
    }
}

/// Sends `sig` to every descendant of this process. Orphans of the tree are
/// reparented to this process (a subreaper), so the descendants are the whole tree.
fn signal_tree(sig: libc::c_int) {
    for pid in descendants(std::process::id()) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, sig) };
    }
}

/// The descendants of `root`, from `/proc` (each process's parent, field 4 of stat).
fn descendants(root: u32) -> Vec<i32> {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The command name (field 2) may hold spaces and parentheses.
            let after = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
            if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut found = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).into_iter().flatten() {
            found.extend(i32::try_from(c).ok());
            todo.push(c);
        }
    }
    found
}

/// A pipe, both ends close-on-exec: (write end, read end).
fn pipe() -> Result<(OwnedFd, OwnedFd), Failure> {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, an array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        let e = std::io::Error::last_os_error();
        return Err(Failure::new(
            error::STORE,
            format!("cannot make a pipe: {e}"),
        ));
    }
    // SAFETY: pipe2 succeeded: both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[1]), OwnedFd::from_raw_fd(fds[0])) })
}

/// Makes this process a child subreaper: orphaned descendants become its children.
fn become_subreaper() -> Result<(), Failure> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes plain integers and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) } == -1 {
        let e = std::io::Error::last_os_error();
        return Err(Failure::new(
            error::STORE,
            format!("cannot become a subreaper: {e}"),
        ));
    }
    Ok(())
}

/// The number of threads of this process (field 20 of `/proc/self/stat`).
fn threads() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(17)?.parse().ok()
}

/// Splits into the launcher and the holder. Returns in the holder, with the read end
/// of a pipe that only the launcher can write to (it never does): its end tells the
/// holder the launcher is gone. The launcher never returns from here: it exits with
/// the holder's status.
fn split() -> Result<OwnedFd, Failure> {
    // fork(2) copies only the calling thread: the child may run any code only if the
    // process has no other thread. Nothing starts one before the store is opened.
    if threads().is_some_and(|n| n != 1) {
        return Err(Failure::new(
            error::STORE,
            "cannot split into launcher and holder: threads already run",
        ));
    }
    let (launcher_end, holder_end) = pipe()?;
    become_subreaper()?;
    // Held back until each side has its handlers: a signal that comes between the
    // fork and then would otherwise kill the holder before it can leave cleanly.
    mask_forwarded(libc::SIG_BLOCK);
    // SAFETY: this process is single-threaded (checked above), so the child is a
    // complete copy that may run any code.
    match unsafe { libc::fork() } {
        -1 => {
            let e = std::io::Error::last_os_error();
            Err(Failure::new(error::STORE, format!("cannot fork: {e}")))
        }
        0 => {
            drop(launcher_end);
            become_subreaper()?;
            Ok(holder_end)
        }
        holder => {
            drop(holder_end);
            let code = launch(holder);
            drop(launcher_end);
            std::process::exit(i32::from(code));
        }
    }
}

/// Blocks (`SIG_BLOCK`) or unblocks (`SIG_UNBLOCK`) the forwarded signals for the
/// calling thread; a blocked signal waits, pending, until it is unblocked.
fn mask_forwarded(how: libc::c_int) {
    // SAFETY: the set is initialised by sigemptyset before use; sigaddset and
    // pthread_sigmask only read and write the set we pass; a null old-set is allowed.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in FORWARDED {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// The holder's pid, for the launcher's signal handlers (0 once it has ended).
static HOLDER: AtomicI32 = AtomicI32::new(0);

/// Forwards `sig` to the holder. Runs in a signal handler: atomics and kill(2) only.
fn forward_to_holder(info: &libc::siginfo_t, sig: libc::c_int) {
    // The terminal sends its signals to the whole foreground process group, the
    // holder and the command included: forwarding them would deliver them twice.
    if info.si_code == libc::SI_KERNEL {
        return;
    }
    let pid = HOLDER.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe and has no memory-safety preconditions.
        unsafe { libc::kill(pid, sig) };
    }
}

/// The launcher: forwards signals to the holder, waits for it and returns its exit
/// code. If the holder was killed, kills what is left of the tree (reparented to
/// the launcher, a subreaper) first.
fn launch(holder: i32) -> u8 {
    HOLDER.store(holder, Ordering::SeqCst);
    for sig in FORWARDED {
        // SAFETY: the action is async-signal-safe: it reads a field of the siginfo,
        // loads an atomic and calls kill(2); it neither allocates, locks nor panics.
        let registered = unsafe {
            signal_hook_registry::register_sigaction(sig, move |info| forward_to_holder(info, sig))
        };
        if let Err(e) = registered {
            eprintln!("locksmith: cannot forward signal {sig}: {e}");
        }
    }
    mask_forwarded(libc::SIG_UNBLOCK);
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into `status`, a valid i32.
        let pid = unsafe { libc::waitpid(holder, &mut status, 0) };
        if pid == holder {
            break;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            eprintln!("locksmith: lost track of the holding process {holder}");
            return error::STORE;
        }
    }
    HOLDER.store(0, Ordering::SeqCst);
    let status = ExitStatus::from_raw(status);
    if let Some(sig) = status.signal() {
        eprintln!(
            "locksmith: the holding process {holder} died of signal {sig}; killing what is \
             left of the command"
        );
        kill_orphans();
    }
    exit_code_of(status)
}

/// SIGKILLs every descendant of this process and reaps them until none is left.
fn kill_orphans() {
    loop {
        signal_tree(libc::SIGKILL);
        let mut status = 0;
        // SAFETY: waitpid writes the status into `status`, a valid i32.
        if unsafe { libc::waitpid(-1, &mut status, 0) } == -1
            && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
        {
            // No child left, hence no descendant: every one has a child as ancestor.
            return;
        }
    }
}

/// Makes the command die (SIGKILL) if the holder dies first (it cannot act on its
/// own SIGKILL): the launcher then kills the rest of the tree. Linux only
/// (PR_SET_PDEATHSIG).
#[cfg(target_os = "linux")]
fn die_with_holder(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = i32::try_from(std::process::id()).unwrap_or(0);
    let arm = move || {
        // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers and touches no memory.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } == -1 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != parent {
            // The holder died before the death signal was armed.
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
fn die_with_holder(_cmd: &mut std::process::Command) {}

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
