//! Waiting from Python: the uncontended case keeps the GIL; a wait releases it and runs
//! in slices, so that Ctrl-C (and every other signal handler) runs between them, as it
//! does in CPython's own locks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::errors::{new_err, Raise};

/// The longest a waiter sleeps without looking at pending signals.
pub(crate) const SLICE: Duration = Duration::from_millis(50);

/// Python's `timeout` argument: `None` waits for ever; a number is seconds, and must be
/// finite and not negative.
pub(crate) fn timeout_arg(py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_finite() && t >= 0.0 => Duration::try_from_secs_f64(t)
            .map(Some)
            .map_err(|e| new_err(py, "InvalidArgument", format!("timeout {t}: {e}"))),
        Some(t) => Err(new_err(
            py,
            "InvalidArgument",
            format!("timeout must be a finite number of seconds, not below 0 (got {t})"),
        )),
    }
}

/// Waits for something with `attempt(slice)`, which tries for at most `slice` and
/// answers `Ok(None)` if it did not happen. The first attempt only tries (`try_now`),
/// holding the GIL; then attempts run without the GIL, each for at most [`SLICE`], with
/// signal handlers run between them. If a handler raises, its exception propagates and
/// nothing is held: an attempt that succeeded is returned before signals are looked at.
pub(crate) fn sliced<T, Try, Attempt>(
    py: Python<'_>,
    timeout: Option<Duration>,
    try_now: Try,
    attempt: Attempt,
) -> PyResult<Option<T>>
where
    T: Send,
    Try: FnOnce() -> locksmith::Result<Option<T>>,
    Attempt: Fn(Duration) -> locksmith::Result<Option<T>> + Sync,
{
    sliced_by(py, timeout, SLICE, try_now, attempt)
}

/// Sleeps on a condition's `sleeper` until notified or `deadline`, in slices between
/// which signal handlers run (one sleeper throughout, so no notification is lost between
/// slices), then stops sleeping. Whether it was notified; a notification that came as
/// the time ran out counts. The caller takes the lock again.
pub(crate) fn sleep_sliced(
    py: Python<'_>,
    mut sleeper: locksmith::Sleeper,
    deadline: Option<Instant>,
) -> PyResult<bool> {
    let mut outcome = Ok(false);
    loop {
        let slice = match deadline {
            None => SLICE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                left.min(SLICE)
            }
        };
        match py.detach(|| sleeper.wait_timeout(slice)) {
            Ok(true) => {
                outcome = Ok(true);
                break;
            }
            Ok(false) => {}
            Err(e) => {
                outcome = Err(crate::errors::to_py(py, e));
                break;
            }
        }
        if let Err(e) = py.check_signals() {
            outcome = Err(e);
            break;
        }
    }
    let left = py.detach(|| sleeper.leave());
    if let (Ok(false), Ok(true)) = (&outcome, &left) {
        outcome = Ok(true);
    }
    outcome
}

/// The slice for a store: a network store's steps are round trips, and a step cut
/// short may or may not have happened, so its waits take longer slices (Ctrl-C is then
/// seen within [`NETWORK_SLICE`]).
pub(crate) fn slice_for(url: &str) -> Duration {
    let network = [
        "redis://",
        "rediss://",
        "postgres://",
        "postgresql://",
        "etcd://",
    ];
    if network.iter().any(|scheme| url.starts_with(scheme)) {
        NETWORK_SLICE
    } else {
        SLICE
    }
}

/// The slice of a wait on a network store.
pub(crate) const NETWORK_SLICE: Duration = Duration::from_millis(500);

/// [`sliced`] with slices of at most `slice_len`.
pub(crate) fn sliced_by<T, Try, Attempt>(
    py: Python<'_>,
    timeout: Option<Duration>,
    slice_len: Duration,
    try_now: Try,
    attempt: Attempt,
) -> PyResult<Option<T>>
where
    T: Send,
    Try: FnOnce() -> locksmith::Result<Option<T>>,
    Attempt: Fn(Duration) -> locksmith::Result<Option<T>> + Sync,
{
    if let Some(got) = try_now().raise_py(py)? {
        return Ok(Some(got));
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let slice = match deadline {
            None => slice_len,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                left.min(slice_len)
            }
        };
        if let Some(got) = py.detach(|| attempt(slice)).raise_py(py)? {
            return Ok(Some(got));
        }
        py.check_signals()?;
    }
}

/// Waits for an acquisition that queues in the store (a Lock's, a semaphore's): `try_now`
/// first, holding the GIL; then `attempt(time left)` (`None`: for ever) without the
/// GIL, under [`locksmith::interrupt::checked`], so the waiter keeps its place in the
/// queue for the whole wait while signal handlers still run every `slice_len`. If a
/// handler raises, the wait gives up (leaving the queue, passing on a grant that raced
/// it) and the exception propagates, nothing held. An `attempt` that answers `Ok(None)`
/// early (a step it had to undo) is made again for the time left.
pub(crate) fn queued<T, Try, Attempt>(
    py: Python<'_>,
    timeout: Option<Duration>,
    slice_len: Duration,
    try_now: Try,
    attempt: Attempt,
) -> PyResult<Option<T>>
where
    T: Send,
    Try: FnOnce() -> locksmith::Result<Option<T>>,
    Attempt: Fn(Option<Duration>) -> locksmith::Result<Option<T>> + Sync,
{
    if let Some(got) = try_now().raise_py(py)? {
        return Ok(Some(got));
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let left = match deadline {
            None => None,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                Some(left)
            }
        };
        let (got, raised) = detached_checked(py, slice_len, || attempt(left));
        if let Some(e) = raised {
            // A grant that came all the same is given back (dropping it releases).
            drop(got);
            return Err(e);
        }
        if let Some(got) = got.raise_py(py)? {
            return Ok(Some(got));
        }
    }
}

/// Runs `f` without the GIL under [`locksmith::interrupt::checked`]: every `slice_len`
/// of a wait in `f`, signal handlers run; the exception of one that raised is the second
/// answer, and it made the wait give up (see `checked` for how each wait does).
pub(crate) fn detached_checked<R: Send>(
    py: Python<'_>,
    slice_len: Duration,
    f: impl FnOnce() -> R + Send,
) -> (R, Option<PyErr>) {
    let mut raised: Option<PyErr> = None;
    let (out, _) = py.detach(|| {
        let mut stop = || {
            Python::attach(|py| match py.check_signals() {
                Ok(()) => false,
                Err(e) => {
                    raised = Some(e);
                    true
                }
            })
        };
        locksmith::interrupt::checked(slice_len, &mut stop, f)
    });
    (out, raised)
}

static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn forked() {
    // Runs in the child right after fork: an atomic add is async-signal-safe.
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// Counts forks, so that holds a child inherited can tell they are not its own.
pub(crate) fn watch_forks() {
    // SAFETY: pthread_atfork only records the handler, which touches nothing but an
    // atomic. Registering twice (a second module init) only counts each fork twice,
    // which still tells a child from its parent.
    unsafe { libc::pthread_atfork(None, None, Some(forked)) };
}

/// This process's generation: it changes in a child at fork.
#[inline]
pub(crate) fn generation() -> u64 {
    FORKS.load(Ordering::Relaxed)
}
