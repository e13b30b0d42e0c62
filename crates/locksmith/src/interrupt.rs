//! Waits a caller can stop from the waiting thread: a language binding that has to run
//! signal handlers every so often (Python's Ctrl-C) lets a blocking acquisition wait
//! for its whole timeout, keeping its place in the queue, instead of waiting in slices
//! that each leave and rejoin the queue.

use std::cell::RefCell;
use std::time::{Duration, Instant};

/// The check of the calling thread's [`checked`] call.
struct Check<'a> {
    every: Duration,
    stop: &'a mut dyn FnMut() -> bool,
    stopped: bool,
}

thread_local! {
    /// A pointer to the calling thread's [`Check`] while [`checked`] runs, else null.
    static CHECK: RefCell<*mut Check<'static>> = const { RefCell::new(std::ptr::null_mut()) };
}

/// Runs `f` so that the waits `f` makes on this thread call `stop` at least every
/// `every` while they wait; when `stop` answers `true`, the wait gives up as though its
/// time had run out. The waits that do: a blocking acquisition of a Lock, RLock,
/// Semaphore, BoundedSemaphore, RwLock side or Condition's lock (it leaves the queue,
/// and a grant that raced the stop is passed on), and the placed
/// [`shm::Condition`](crate::shm::Condition)'s wait (which takes its mutex back) and
/// [`shm::Barrier`](crate::shm::Barrier)'s (which breaks the barrier, as a timeout
/// does).
///
/// Whether `stop` stopped a wait is [`checked`]'s second answer. `stop` runs on the
/// calling thread, between a wait's sleeps, never while a store step is under way.
///
/// ```
/// use std::time::Duration;
/// let space = locksmith::Space::open("mem:")?;
/// let lock = space.lock("busy");
/// let held = std::thread::scope(|s| s.spawn(|| lock.acquire()).join().unwrap())?;
/// let mut checks = 0;
/// let (got, stopped) = locksmith::interrupt::checked(
///     Duration::from_millis(1),
///     &mut || { checks += 1; checks == 3 },
///     || lock.acquire_timeout(Duration::from_secs(60)),
/// );
/// assert!(got?.is_none() && stopped);
/// drop(held);
/// # Ok::<(), locksmith::Error>(())
/// ```
pub fn checked<R>(
    every: Duration,
    stop: &mut dyn FnMut() -> bool,
    f: impl FnOnce() -> R,
) -> (R, bool) {
    let mut check = Check {
        every: every.max(Duration::from_millis(1)),
        stop,
        stopped: false,
    };
    let me: *mut Check<'_> = &mut check;
    // The lifetime is erased while the pointer is published; it is withdrawn before
    // `check` goes out of scope (also on unwinding, through `Withdraw`).
    let previous = CHECK.with(|c| c.replace(me.cast()));
    struct Withdraw(*mut Check<'static>);
    impl Drop for Withdraw {
        fn drop(&mut self) {
            CHECK.with(|c| *c.borrow_mut() = self.0);
        }
    }
    let withdraw = Withdraw(previous);
    let out = f();
    drop(withdraw);
    (out, check.stopped)
}

/// How long a wait of this thread may sleep before it calls [`stop`]: `until`, or
/// sooner under [`checked`].
pub(crate) fn sleep_until(until: Option<Instant>) -> Option<Instant> {
    let every = CHECK.with(|c| {
        let p = *c.borrow();
        // SAFETY: a non-null pointer is the live `Check` of a `checked` call further up
        // this thread's stack (withdrawn before it ends); only this thread reads it.
        (!p.is_null()).then(|| unsafe { (*p).every })
    });
    match (every, until) {
        (None, until) => until,
        (Some(every), None) => Some(Instant::now() + every),
        (Some(every), Some(until)) => Some(until.min(Instant::now() + every)),
    }
}

/// How long a placed primitive's futex wait may sleep: `slice`, or less under
/// [`checked`].
pub(crate) fn slice(slice: Duration) -> Duration {
    let every = CHECK.with(|c| {
        let p = *c.borrow();
        // SAFETY: as in `sleep_until`.
        (!p.is_null()).then(|| unsafe { (*p).every })
    });
    every.map_or(slice, |every| slice.min(every))
}

/// Whether the wait of this thread should give up: asks the `stop` of the enclosing
/// [`checked`] call (once it said yes, the answer stays yes); `false` outside one.
pub(crate) fn stop() -> bool {
    // Withdrawn while `stop` runs: a wait that `stop` itself makes (a Python signal
    // handler that takes a lock) then runs unchecked instead of calling it again.
    let p = CHECK.with(|c| c.replace(std::ptr::null_mut()));
    if p.is_null() {
        return false;
    }
    // SAFETY: as in `sleep_until`; with the pointer withdrawn, nothing else reaches
    // the check while this reference lives.
    let check = unsafe { &mut *p };
    if !check.stopped {
        check.stopped = (check.stop)();
    }
    let stopped = check.stopped;
    CHECK.with(|c| *c.borrow_mut() = p);
    stopped
}
