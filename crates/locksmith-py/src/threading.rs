//! The native classes of `locksmith.threading`: threading's `Lock`, `RLock`,
//! `Semaphore`, `BoundedSemaphore` and `Event` with threading's signatures, errors and
//! reprs, plus the lock of a `Condition` shared by name (`_ConditionLock`).
//!
//! Each object is an anonymous primitive in a private `mem:` space of its own unless a
//! `name` (and a `store`, default `mem:` shared by this process) is given, which shares
//! it with every object of that name in the store, across processes for `shm:`,
//! `sqlite:` and `redis://`.
//!
//! The hot paths (acquire and release of an uncontended Lock or RLock) keep the GIL and
//! touch the store once; an RLock re-entered by its owning thread only counts. Waits
//! release the GIL and run in slices, with signal handlers run between them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use pyo3::exceptions::{PyOverflowError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyAny;

use crate::errors::{new_err, to_py, Raise};
use crate::space::{open_shared, Core, SpaceCell};
use crate::wait::{generation, queued, sleep_sliced, sliced, SLICE};

/// `_thread.TIMEOUT_MAX`, read once.
fn timeout_max(py: Python<'_>) -> f64 {
    static MAX: OnceLock<f64> = OnceLock::new();
    *MAX.get_or_init(|| {
        py.import("_thread")
            .and_then(|m| m.getattr("TIMEOUT_MAX"))
            .and_then(|v| v.extract::<f64>())
            .unwrap_or(9_223_372_036.0)
    })
}

/// How an acquisition may wait, from threading's `(blocking, timeout)`.
enum Wait {
    Try,
    For(Option<Duration>),
}

/// threading's argument rules: `acquire(False, 1)` is a `ValueError`, `-1` waits for
/// ever, other negatives are a `ValueError`, past `TIMEOUT_MAX` an `OverflowError`.
fn lock_wait(py: Python<'_>, blocking: bool, timeout: f64) -> PyResult<Wait> {
    if !blocking {
        if timeout != -1.0 {
            return Err(PyValueError::new_err(
                "can't specify a timeout for a non-blocking call",
            ));
        }
        return Ok(Wait::Try);
    }
    if timeout == -1.0 {
        return Ok(Wait::For(None));
    }
    if timeout.is_nan() || timeout < 0.0 {
        return Err(PyValueError::new_err(
            "timeout value must be a non-negative number",
        ));
    }
    if timeout > timeout_max(py) {
        return Err(PyOverflowError::new_err("timeout value is too large"));
    }
    Ok(Wait::For(Some(Duration::from_secs_f64(timeout))))
}

/// Semaphores' and events' rule (threading's `timeout=None`): `None` waits for ever, a
/// negative timeout is 0.
fn none_or_seconds(py: Python<'_>, blocking: bool, timeout: Option<f64>) -> PyResult<Wait> {
    match (blocking, timeout) {
        (false, Some(_)) => Err(PyValueError::new_err(
            "can't specify timeout for non-blocking acquire",
        )),
        (false, None) => Ok(Wait::Try),
        (true, None) => Ok(Wait::For(None)),
        (true, Some(t)) if t.is_nan() => Err(PyValueError::new_err("timeout must not be NaN")),
        (true, Some(t)) if t > timeout_max(py) => {
            Err(PyOverflowError::new_err("timeout value is too large"))
        }
        (true, Some(t)) => Ok(Wait::For(Some(Duration::from_secs_f64(t.max(0.0))))),
    }
}

/// The store an object lives in: a private `mem:` space for an anonymous one, else the
/// given store (default: this process's shared `mem:locksmith.threading`).
fn cell_for(
    py: Python<'_>,
    name: &Option<String>,
    store: Option<&str>,
) -> PyResult<Arc<SpaceCell>> {
    let url = match (name, store) {
        (None, None) => "mem:",
        (Some(_), None) => "mem:locksmith.threading",
        (_, Some(url)) => url,
    };
    open_shared(url).raise_py(py)
}

/// A fresh name for an anonymous object (alone in its private space).
fn anonymous() -> String {
    "anonymous".to_owned()
}

/// The calling thread's ident, as `threading.get_ident()` gives it.
fn ident() -> u64 {
    // SAFETY: pthread_self has no preconditions and cannot fail.
    unsafe { libc::pthread_self() as u64 }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A hold and the fork generation that took it. In a forked child, a hold of a
/// cross-process store is the parent's, never released by the child; a `mem:` hold is
/// the child's own copy, as threading's locks are.
#[derive(Debug)]
struct Held {
    generation: u64,
    guard: locksmith::Guard,
}

/// Where the hold of a Lock lives: shared by every object of one name and store in
/// this process, so that any of them may release it, as with one `threading.Lock`.
/// parking_lot's mutex: on the hot path, its lock and unlock are one inlined atomic
/// each, with no poisoning check (a thread-local look-up in std's).
type HoldCell = Arc<parking_lot::Mutex<Option<Held>>>;

fn hold_cell(url: &str, name: &Option<String>) -> HoldCell {
    let Some(name) = name else {
        return HoldCell::default();
    };
    /// Each (store URL, name)'s hold cell, while an object of it lives.
    type Cells = HashMap<(String, String), Weak<parking_lot::Mutex<Option<Held>>>>;
    static CELLS: Mutex<Option<Cells>> = Mutex::new(None);
    let mut cells = lock(&CELLS);
    let map = cells.get_or_insert_with(HashMap::new);
    map.retain(|_, w| w.strong_count() > 0);
    let key = (url.to_owned(), name.clone());
    if let Some(cell) = map.get(&key).and_then(Weak::upgrade) {
        return cell;
    }
    let cell = HoldCell::default();
    map.insert(key, Arc::downgrade(&cell));
    cell
}

/// Takes the hold out of `slot` if it is this process's.
fn take_held(slot: &mut Option<Held>, mem: bool) -> Option<locksmith::Guard> {
    let held = slot.take()?;
    if held.generation == generation() || mem {
        return Some(held.guard);
    }
    // Inherited through fork: the parent's hold.
    std::mem::forget(held.guard);
    None
}

/// Releases `guard`, without the GIL where that is a store round trip.
fn release_guard(py: Python<'_>, mem: bool, guard: locksmith::Guard) -> PyResult<()> {
    if mem {
        guard.release().raise_py(py)
    } else {
        py.detach(|| guard.release()).raise_py(py)
    }
}

/// Acquires through `try_now` and `attempt` as `wait` allows.
/// A wait is one store wait for the whole timeout (`attempt(timeout)`), so the waiter
/// keeps its place in the queue while signal handlers still run every [`SLICE`]; a
/// wait for ever is made of day-long ones.
fn acquire_with<T: Send>(
    py: Python<'_>,
    wait: Wait,
    try_now: impl FnOnce() -> locksmith::Result<Option<T>>,
    attempt: impl Fn(Duration) -> locksmith::Result<Option<T>> + Sync,
) -> PyResult<Option<T>> {
    const DAY: Duration = Duration::from_secs(24 * 60 * 60);
    match wait {
        Wait::Try => try_now().raise_py(py),
        Wait::For(timeout) => queued(py, timeout, SLICE, try_now, |left| {
            attempt(left.unwrap_or(DAY))
        }),
    }
}

fn repr_address(slf: &Bound<'_, PyAny>) -> String {
    format!("{:#x}", slf.as_ptr() as usize)
}

/// threading's `Lock`: any thread may release it, and the holding thread acquiring
/// again waits (the hold belongs to the acquisition, not the thread).
#[pyclass(frozen, weakref, name = "Lock", module = "locksmith.threading")]
#[derive(Debug)]
pub struct TLock {
    core: Core<locksmith::Lock>,
    held: HoldCell,
    name: Option<String>,
    mem: bool,
}

#[pymethods]
impl TLock {
    #[new]
    #[pyo3(signature = (*, name=None, store=None))]
    fn new(py: Python<'_>, name: Option<String>, store: Option<&str>) -> PyResult<Self> {
        let cell = cell_for(py, &name, store)?;
        let n = name.clone().unwrap_or_else(anonymous);
        let held = hold_cell(cell.url(), &name);
        let mem = cell.url().starts_with("mem:");
        let core = Core::new(cell, move |s| {
            s.lock(&n).ownership(locksmith::Ownership::Acquisition)
        })
        .raise_py(py)?;
        Ok(TLock {
            core,
            held,
            name,
            mem,
        })
    }

    /// Acquires the lock: waits while it is held (at most `timeout` seconds unless
    /// `-1`); returns whether it was acquired.
    #[pyo3(signature = (blocking=true, timeout=-1.0), text_signature = "(self, /, blocking=True, timeout=-1)")]
    fn acquire(&self, py: Python<'_>, blocking: bool, timeout: f64) -> PyResult<bool> {
        let wait = lock_wait(py, blocking, timeout)?;
        let core = self.core.get().raise_py(py)?;
        let core: &locksmith::Lock = &core;
        // The free lock: one try, with the GIL, before anything a wait needs.
        let got = match core.try_acquire().raise_py(py)? {
            Some(guard) => Some(guard),
            None => acquire_with(py, wait, || Ok(None), |left| core.acquire_timeout(left))?,
        };
        match got {
            Some(guard) => {
                let old = self.held.lock().replace(Held {
                    generation: generation(),
                    guard,
                });
                if let Some(old) = old {
                    // A hold this process no longer has (inherited, or ended).
                    std::mem::forget(old.guard);
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Releases the lock, from any thread. `RuntimeError` if it is not held here.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        let taken = take_held(&mut self.held.lock(), self.mem);
        match taken {
            Some(guard) => release_guard(py, self.mem, guard),
            None => Err(new_err(py, "NotHeld", "release unlocked lock".into())),
        }
    }

    /// Whether the lock is held (by anyone, in any process sharing it).
    fn locked(&self, py: Python<'_>) -> PyResult<bool> {
        if self.held.lock().is_some() {
            return Ok(true);
        }
        if self.name.is_none() {
            return Ok(false);
        }
        let core = self.core.get().raise_py(py)?;
        let core: &locksmith::Lock = &core;
        py.detach(|| core.is_locked()).raise_py(py)
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        self.acquire(py, true, -1.0)
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _t: &Bound<'_, PyAny>,
        _v: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.release(py)
    }

    /// Unlocks a lock this process holds through it (threading calls this in a child
    /// after fork); a hold inherited from the parent of a cross-process store stays the
    /// parent's.
    fn _at_fork_reinit(&self, py: Python<'_>) -> PyResult<()> {
        let taken = take_held(&mut self.held.lock(), self.mem);
        if let Some(guard) = taken {
            // Whatever the release finds, the lock is ours no more.
            let _ = release_guard(py, self.mem, guard);
        }
        Ok(())
    }

    /// The name it is shared by (`None`: anonymous).
    #[getter]
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The store's URL.
    #[getter]
    fn store(&self) -> &str {
        self.core.cell.url()
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let state = if slf.get().locked(slf.py())? {
            "locked"
        } else {
            "unlocked"
        };
        Ok(format!(
            "<{state} locksmith.Lock object at {}>",
            repr_address(slf.as_any())
        ))
    }
}

/// An RLock's state in one object: the owning thread and its depth, and the store hold.
#[derive(Debug, Default)]
struct Owned {
    owner: u64,
    count: u32,
    held: Option<Held>,
}

/// The core primitives a re-entrant object can be made of: an RLock, or a Condition's
/// lock (re-entrant here, as threading's default `Condition()` lock is).
pub(crate) trait Exclusive: Clone + Send + Sync + 'static {
    fn try_acquire(&self) -> locksmith::Result<Option<locksmith::Guard>>;
    fn acquire_timeout(&self, d: Duration) -> locksmith::Result<Option<locksmith::Guard>>;
    fn is_locked(&self) -> locksmith::Result<bool>;
}

macro_rules! exclusive {
    ($($t:ty),*) => {$(
        impl Exclusive for $t {
            fn try_acquire(&self) -> locksmith::Result<Option<locksmith::Guard>> {
                <$t>::try_acquire(self)
            }
            fn acquire_timeout(&self, d: Duration) -> locksmith::Result<Option<locksmith::Guard>> {
                <$t>::acquire_timeout(self, d)
            }
            fn is_locked(&self) -> locksmith::Result<bool> {
                <$t>::is_locked(self)
            }
        }
    )*};
}
exclusive!(locksmith::RLock, locksmith::Condition, locksmith::Lock);

/// An RLock's store primitive: an anonymous one is alone in its private space, where a
/// plain thread-owned Lock (the store's fastest path) serves for the first level; one
/// shared by name is an RLock in the store, as every other user of the name sees it.
#[derive(Clone, Debug)]
enum RCore {
    Private(locksmith::Lock),
    Named(locksmith::RLock),
}

impl Exclusive for RCore {
    fn try_acquire(&self) -> locksmith::Result<Option<locksmith::Guard>> {
        match self {
            RCore::Private(l) => l.try_acquire(),
            RCore::Named(l) => l.try_acquire(),
        }
    }
    fn acquire_timeout(&self, d: Duration) -> locksmith::Result<Option<locksmith::Guard>> {
        match self {
            RCore::Private(l) => l.acquire_timeout(d),
            RCore::Named(l) => l.acquire_timeout(d),
        }
    }
    fn is_locked(&self) -> locksmith::Result<bool> {
        match self {
            RCore::Private(l) => l.is_locked(),
            RCore::Named(l) => l.is_locked(),
        }
    }
}

/// A re-entrant hold kept per object: the store is asked only for the first level.
#[derive(Debug)]
struct Reentrant<T: Exclusive> {
    core: Core<T>,
    state: Mutex<Owned>,
    name: Option<String>,
    mem: bool,
}

impl<T: Exclusive> Reentrant<T> {
    fn new(
        py: Python<'_>,
        name: Option<String>,
        store: Option<&str>,
        make: impl Fn(&locksmith::Space, &str) -> T + Send + Sync + 'static,
    ) -> PyResult<Self> {
        let cell = cell_for(py, &name, store)?;
        let mem = cell.url().starts_with("mem:");
        let n = name.clone().unwrap_or_else(anonymous);
        let core = Core::new(cell, move |s| make(s, &n)).raise_py(py)?;
        Ok(Reentrant {
            core,
            state: Mutex::new(Owned::default()),
            name,
            mem,
        })
    }

    /// The state, with a hold inherited through fork (of a cross-process store)
    /// forgotten: the child owns none of it.
    fn state(&self) -> MutexGuard<'_, Owned> {
        let mut st = lock(&self.state);
        if !self.mem
            && st
                .held
                .as_ref()
                .is_some_and(|h| h.generation != generation())
        {
            if let Some(h) = st.held.take() {
                std::mem::forget(h.guard);
            }
            *st = Owned::default();
        }
        st
    }

    fn owned_count(&self) -> u32 {
        let st = self.state();
        if st.count > 0 && st.owner == ident() {
            st.count
        } else {
            0
        }
    }

    /// Takes the first level from the store, as `wait` allows; `count` levels.
    fn take(&self, py: Python<'_>, wait: Wait, count: u32) -> PyResult<bool> {
        let core = self.core.get().raise_py(py)?;
        let core: &T = &core;
        let got = acquire_with(
            py,
            wait,
            || core.try_acquire(),
            |left| core.acquire_timeout(left),
        )?;
        let Some(guard) = got else {
            return Ok(false);
        };
        let mut st = self.state();
        if let Some(old) = st.held.take() {
            std::mem::forget(old.guard);
        }
        *st = Owned {
            owner: ident(),
            count,
            held: Some(Held {
                generation: generation(),
                guard,
            }),
        };
        Ok(true)
    }

    fn acquire(&self, py: Python<'_>, wait: Wait) -> PyResult<bool> {
        {
            let mut st = self.state();
            if st.count > 0 && st.owner == ident() {
                st.count += 1;
                return Ok(true);
            }
        }
        self.take(py, wait, 1)
    }

    /// Gives back `all` levels or one; `RuntimeError` unless the caller owns it.
    fn release(&self, py: Python<'_>, all: bool) -> PyResult<u32> {
        let mut st = self.state();
        if st.count == 0 || st.owner != ident() {
            return Err(new_err(
                py,
                "NotHeld",
                "cannot release un-acquired lock".into(),
            ));
        }
        let levels = st.count;
        st.count = if all { 0 } else { levels - 1 };
        if st.count > 0 {
            return Ok(levels);
        }
        st.owner = 0;
        let held = st.held.take();
        drop(st);
        if let Some(h) = held {
            release_guard(py, self.mem, h.guard)?;
        }
        Ok(levels)
    }

    fn locked(&self, py: Python<'_>) -> PyResult<bool> {
        if self.state().count > 0 {
            return Ok(true);
        }
        if self.name.is_none() {
            return Ok(false);
        }
        let core = self.core.get().raise_py(py)?;
        let core: &T = &core;
        py.detach(|| core.is_locked()).raise_py(py)
    }

    fn describe(&self, py: Python<'_>) -> PyResult<(bool, u64, u32)> {
        let (owner, count) = {
            let st = self.state();
            (st.owner, st.count)
        };
        Ok((self.locked(py)?, owner, count))
    }
}

/// The `#[pymethods]` of a re-entrant lock over a [`Reentrant`] in `inner`: threading's
/// `acquire`/`release`/`locked`, the context manager, and the private protocol
/// `threading.Condition` uses (`_is_owned`, `_recursion_count`, `_release_save`,
/// `_acquire_restore`), plus the methods in `$extra`.
macro_rules! reentrant_class {
    ($ty:ident, { $($extra:tt)* }) => {
        #[pymethods]
        impl $ty {
            /// Acquires the lock, or one more level of it for its owning thread.
            #[pyo3(signature = (blocking=true, timeout=-1.0), text_signature = "(self, /, blocking=True, timeout=-1)")]
            fn acquire(&self, py: Python<'_>, blocking: bool, timeout: f64) -> PyResult<bool> {
                let wait = lock_wait(py, blocking, timeout)?;
                self.inner.acquire(py, wait)
            }

            /// Releases one level; `RuntimeError` unless the calling thread owns it.
            fn release(&self, py: Python<'_>) -> PyResult<()> {
                self.inner.release(py, false).map(drop)
            }

            /// Whether anyone holds it.
            fn locked(&self, py: Python<'_>) -> PyResult<bool> {
                self.inner.locked(py)
            }

            fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
                self.inner.acquire(py, Wait::For(None))
            }

            fn __exit__(
                &self,
                py: Python<'_>,
                _t: &Bound<'_, PyAny>,
                _v: &Bound<'_, PyAny>,
                _tb: &Bound<'_, PyAny>,
            ) -> PyResult<()> {
                self.release(py)
            }

            fn _is_owned(&self) -> bool {
                self.inner.owned_count() > 0
            }

            fn _recursion_count(&self) -> u32 {
                self.inner.owned_count()
            }

            /// Releases every level (threading.Condition's wait); returns what
            /// `_acquire_restore` needs.
            fn _release_save(&self, py: Python<'_>) -> PyResult<(u32, u64)> {
                let levels = self.inner.release(py, true)?;
                Ok((levels, ident()))
            }

            /// Takes the lock again with the levels `_release_save` gave back.
            fn _acquire_restore(&self, py: Python<'_>, state: (u32, u64)) -> PyResult<()> {
                self.inner
                    .take(py, Wait::For(None), state.0.max(1))
                    .map(drop)
            }

            $($extra)*
        }
    };
}

/// threading's `RLock`: the owning thread may acquire it again; only it may release.
#[pyclass(frozen, weakref, name = "RLock", module = "locksmith.threading")]
#[derive(Debug)]
pub struct TRLock {
    inner: Reentrant<RCore>,
}

reentrant_class!(TRLock, {
    #[new]
    #[pyo3(signature = (*, name=None, store=None))]
    fn new(py: Python<'_>, name: Option<String>, store: Option<&str>) -> PyResult<Self> {
        let private = name.is_none() && store.is_none();
        let make = move |s: &locksmith::Space, n: &str| {
            if private {
                RCore::Private(s.lock(n))
            } else {
                RCore::Named(s.rlock(n))
            }
        };
        Ok(TRLock {
            inner: Reentrant::new(py, name, store, make)?,
        })
    }

    /// Forgets holds (threading calls this in a child after fork).
    fn _at_fork_reinit(&self, py: Python<'_>) -> PyResult<()> {
        let held = {
            let mut st = self.inner.state();
            st.count = 0;
            st.owner = 0;
            st.held.take()
        };
        if let Some(h) = held {
            let _ = release_guard(py, self.inner.mem, h.guard);
        }
        Ok(())
    }

    #[getter]
    fn name(&self) -> Option<&str> {
        self.inner.name.as_deref()
    }

    #[getter]
    fn store(&self) -> &str {
        self.inner.core.cell.url()
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let (locked, owner, count) = slf.get().inner.describe(slf.py())?;
        let state = if locked { "locked" } else { "unlocked" };
        Ok(format!(
            "<{state} locksmith.RLock object owner={owner} count={count} at {}>",
            repr_address(slf.as_any())
        ))
    }
});

/// The lock of a `Condition` shared by name: re-entrant, with the condition's wait and
/// notify, which sleep in the store so that other processes can wake them.
#[pyclass(
    frozen,
    weakref,
    name = "_ConditionLock",
    module = "locksmith.threading"
)]
#[derive(Debug)]
pub struct CondLock {
    inner: Reentrant<locksmith::Condition>,
}

reentrant_class!(CondLock, {
    #[new]
    #[pyo3(signature = (*, name=None, store=None))]
    fn new(py: Python<'_>, name: Option<String>, store: Option<&str>) -> PyResult<Self> {
        Ok(CondLock {
            inner: Reentrant::new(py, name, store, |s, n| s.condition(n))?,
        })
    }

    /// Releases the lock (every level), sleeps until notified or `timeout` seconds
    /// passed, and takes the lock again with its levels. Returns whether it was
    /// notified. Signal handlers run during the wait; if one raises, the lock is taken
    /// again before the exception propagates.
    #[pyo3(signature = (timeout=None))]
    fn _wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = match timeout {
            None => None,
            Some(t) if t.is_nan() => return Err(PyValueError::new_err("timeout must not be NaN")),
            Some(t) => Some(
                std::time::Instant::now() + Duration::from_secs_f64(t.clamp(0.0, timeout_max(py))),
            ),
        };
        let (levels, guard) = {
            let mut st = self.inner.state();
            if st.count == 0 || st.owner != ident() {
                return Err(PyRuntimeError::new_err("cannot wait on un-acquired lock"));
            }
            let levels = std::mem::take(&mut st.count);
            st.owner = 0;
            match st.held.take() {
                Some(h) => (levels, h.guard),
                None => return Err(PyRuntimeError::new_err("cannot wait on un-acquired lock")),
            }
        };
        let core = self.inner.core.get().raise_py(py)?;
        let core: &locksmith::Condition = &core;
        let sleeper = match py.detach(|| core.sleep(guard)) {
            Ok(s) => s,
            Err(e) => {
                // The hold had ended: take the lock again before reporting it.
                let _ = self.restore(py, levels);
                return Err(to_py(py, e));
            }
        };
        let outcome = sleep_sliced(py, sleeper, deadline);
        let restored = self.restore(py, levels);
        let notified = outcome?;
        restored?;
        Ok(notified)
    }

    /// Wakes up to `n` sleepers, oldest first, in every process.
    #[pyo3(signature = (n=1))]
    fn _notify(&self, py: Python<'_>, n: usize) -> PyResult<usize> {
        if self.inner.owned_count() == 0 {
            return Err(PyRuntimeError::new_err("cannot notify on un-acquired lock"));
        }
        let core = self.inner.core.get().raise_py(py)?;
        let core: &locksmith::Condition = &core;
        py.detach(|| core.notify(n)).raise_py(py)
    }

    #[getter]
    fn name(&self) -> Option<&str> {
        self.inner.name.as_deref()
    }

    #[getter]
    fn store(&self) -> &str {
        self.inner.core.cell.url()
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let (locked, owner, count) = slf.get().inner.describe(slf.py())?;
        let state = if locked { "locked" } else { "unlocked" };
        Ok(format!(
            "<{state} locksmith.Condition lock owner={owner} count={count} at {}>",
            repr_address(slf.as_any())
        ))
    }
});

impl CondLock {
    /// Takes the lock again after a wait, with `levels`; signals that arrive meanwhile
    /// run, and the first exception one raises is returned once the lock is held.
    fn restore(&self, py: Python<'_>, levels: u32) -> PyResult<()> {
        let mut pending = None;
        loop {
            match self.inner.take(py, Wait::For(Some(SLICE)), levels) {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) if e.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py) => {
                    pending.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        match pending {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// threading's `Semaphore` and `BoundedSemaphore`: permits any thread may give back.
#[pyclass(
    frozen,
    weakref,
    subclass,
    name = "Semaphore",
    module = "locksmith.threading"
)]
#[derive(Debug)]
pub struct TSemaphore {
    core: Core<Permits>,
    name: Option<String>,
    initial: u32,
    mem: bool,
}

/// The core semaphore of either kind.
#[derive(Clone, Debug)]
enum Permits {
    Plain(locksmith::Semaphore),
    Bounded(locksmith::BoundedSemaphore),
}

impl Permits {
    fn try_acquire(&self) -> locksmith::Result<Option<locksmith::Guard>> {
        match self {
            Permits::Plain(s) => s.try_acquire(),
            Permits::Bounded(s) => s.try_acquire(),
        }
    }
    fn acquire_timeout(&self, d: Duration) -> locksmith::Result<Option<locksmith::Guard>> {
        match self {
            Permits::Plain(s) => s.acquire_timeout(d),
            Permits::Bounded(s) => s.acquire_timeout(d),
        }
    }
    fn release_n(&self, n: u32) -> locksmith::Result<()> {
        match self {
            Permits::Plain(s) => s.release_n(n),
            Permits::Bounded(s) => s.release_n(n),
        }
    }
    fn value(&self) -> locksmith::Result<u32> {
        match self {
            Permits::Plain(s) => s.value(),
            Permits::Bounded(s) => s.value(),
        }
    }
}

impl TSemaphore {
    fn make(
        py: Python<'_>,
        value: i64,
        name: Option<String>,
        store: Option<&str>,
        bounded: bool,
    ) -> PyResult<Self> {
        if value < 0 {
            return Err(PyValueError::new_err(
                "semaphore initial value must be >= 0",
            ));
        }
        let initial = u32::try_from(value)
            .map_err(|_| PyOverflowError::new_err("semaphore initial value is too large"))?;
        if bounded && initial == 0 {
            return Err(PyValueError::new_err(
                "a BoundedSemaphore needs an initial value of at least 1",
            ));
        }
        let cell = cell_for(py, &name, store)?;
        let mem = cell.url().starts_with("mem:");
        let n = name.clone().unwrap_or_else(anonymous);
        let core = Core::new(cell, move |s| {
            if bounded {
                Permits::Bounded(s.bounded_semaphore(&n, initial))
            } else {
                Permits::Plain(s.semaphore(&n, initial))
            }
        })
        .raise_py(py)?;
        Ok(TSemaphore {
            core,
            name,
            initial,
            mem,
        })
    }
}

#[pymethods]
impl TSemaphore {
    #[new]
    #[pyo3(signature = (value=1, *, name=None, store=None))]
    fn new(
        py: Python<'_>,
        value: i64,
        name: Option<String>,
        store: Option<&str>,
    ) -> PyResult<Self> {
        TSemaphore::make(py, value, name, store, false)
    }

    /// Takes a permit, waiting while there is none (at most `timeout` seconds unless
    /// `None`); returns whether it got one.
    #[pyo3(signature = (blocking=true, timeout=None))]
    fn acquire(&self, py: Python<'_>, blocking: bool, timeout: Option<f64>) -> PyResult<bool> {
        let wait = none_or_seconds(py, blocking, timeout)?;
        let core = self.core.get().raise_py(py)?;
        let core: &Permits = &core;
        let got = acquire_with(
            py,
            wait,
            || core.try_acquire(),
            |left| core.acquire_timeout(left),
        )?;
        Ok(match got {
            Some(guard) => {
                // The permit belongs to nobody in particular: any thread releases it.
                guard.detach();
                true
            }
            None => false,
        })
    }

    /// Gives back `n` permits (any thread may). A BoundedSemaphore raises `ValueError`
    /// (`TooManyReleases`), changing nothing, if that would pass its initial value.
    #[pyo3(signature = (n=1))]
    fn release(&self, py: Python<'_>, n: i64) -> PyResult<()> {
        if n < 1 {
            return Err(PyValueError::new_err("n must be one or more"));
        }
        let n = u32::try_from(n).map_err(|_| PyOverflowError::new_err("n is too large"))?;
        let core = self.core.get().raise_py(py)?;
        let core: &Permits = &core;
        if self.mem {
            core.release_n(n).raise_py(py)
        } else {
            py.detach(|| core.release_n(n)).raise_py(py)
        }
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        self.acquire(py, true, None)
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _t: &Bound<'_, PyAny>,
        _v: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.release(py, 1)
    }

    /// The permits free now.
    #[getter]
    fn _value(&self, py: Python<'_>) -> PyResult<u32> {
        let core = self.core.get().raise_py(py)?;
        let core: &Permits = &core;
        py.detach(|| core.value()).raise_py(py)
    }

    /// The permits free now (billiard's `get_value`).
    fn get_value(&self, py: Python<'_>) -> PyResult<u32> {
        self._value(py)
    }

    #[getter]
    fn _initial_value(&self) -> u32 {
        self.initial
    }

    #[getter]
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    #[getter]
    fn store(&self) -> &str {
        self.core.cell.url()
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let me = slf.get();
        let value = me._value(slf.py())?;
        let class = slf.get_type().name()?;
        let bound = match &*me.core.get().raise_py(slf.py())? {
            Permits::Bounded(_) => format!("/{}", me.initial),
            Permits::Plain(_) => String::new(),
        };
        Ok(format!(
            "<locksmith.{class} at {}: value={value}{bound}>",
            repr_address(slf.as_any())
        ))
    }
}

/// threading's `BoundedSemaphore`: releases past the initial value are refused.
#[pyclass(frozen, extends = TSemaphore, name = "BoundedSemaphore", module = "locksmith.threading")]
#[derive(Debug)]
pub struct TBoundedSemaphore;

#[pymethods]
impl TBoundedSemaphore {
    #[new]
    #[pyo3(signature = (value=1, *, name=None, store=None))]
    fn new(
        py: Python<'_>,
        value: i64,
        name: Option<String>,
        store: Option<&str>,
    ) -> PyResult<PyClassInitializer<Self>> {
        let base = TSemaphore::make(py, value, name, store, true)?;
        Ok(PyClassInitializer::from(base).add_subclass(TBoundedSemaphore))
    }
}

/// threading's `Event`: a flag that threads (and, shared by name, processes) wait for.
#[pyclass(frozen, weakref, name = "Event", module = "locksmith.threading")]
#[derive(Debug)]
pub struct TEvent {
    core: Core<locksmith::Event>,
    name: Option<String>,
    mem: bool,
}

impl TEvent {
    fn run<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&locksmith::Event) -> locksmith::Result<R> + Send,
    ) -> PyResult<R> {
        let core = self.core.get().raise_py(py)?;
        let core: &locksmith::Event = &core;
        if self.mem {
            f(core).raise_py(py)
        } else {
            py.detach(|| f(core)).raise_py(py)
        }
    }
}

#[pymethods]
impl TEvent {
    #[new]
    #[pyo3(signature = (*, name=None, store=None))]
    fn new(py: Python<'_>, name: Option<String>, store: Option<&str>) -> PyResult<Self> {
        let cell = cell_for(py, &name, store)?;
        let mem = cell.url().starts_with("mem:");
        let n = name.clone().unwrap_or_else(anonymous);
        let core = Core::new(cell, move |s| s.event(&n)).raise_py(py)?;
        Ok(TEvent { core, name, mem })
    }

    fn is_set(&self, py: Python<'_>) -> PyResult<bool> {
        self.run(py, |e| e.is_set())
    }

    fn set(&self, py: Python<'_>) -> PyResult<()> {
        self.run(py, |e| e.set())
    }

    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        self.run(py, |e| e.clear())
    }

    /// Waits until the flag is set (at most `timeout` seconds unless `None`); returns
    /// whether it was, even if it was cleared again at once.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let timeout = match timeout {
            None => None,
            Some(t) if t.is_nan() => return Err(PyValueError::new_err("timeout must not be NaN")),
            Some(t) => Some(Duration::from_secs_f64(t.clamp(0.0, timeout_max(py)))),
        };
        let core = self.core.get().raise_py(py)?;
        let core: &locksmith::Event = &core;
        let mark = core.mark().raise_py(py)?;
        let seen = sliced(
            py,
            timeout,
            || Ok(core.wait_after(mark, Duration::ZERO)?.then_some(())),
            |slice| Ok(core.wait_after(mark, slice)?.then_some(())),
        )?;
        Ok(seen.is_some())
    }

    #[getter]
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    #[getter]
    fn store(&self) -> &str {
        self.core.cell.url()
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let set = slf.get().is_set(slf.py())?;
        Ok(format!(
            "<locksmith.Event at {}: {}>",
            repr_address(slf.as_any()),
            if set { "set" } else { "unset" }
        ))
    }
}

thread_local! {
    /// The exception a barrier's action raised in this thread, to raise from `wait`.
    static ACTION_ERROR: std::cell::RefCell<Option<PyErr>> = const { std::cell::RefCell::new(None) };
}

/// The store half of a `Barrier` shared by name (`locksmith.threading.Barrier` with a
/// `name`): counts and generations live in the store.
#[pyclass(frozen, name = "_SharedBarrier", module = "locksmith.threading")]
#[derive(Debug)]
pub struct TBarrier {
    core: Core<locksmith::Barrier>,
    timeout: Option<f64>,
    mem: bool,
}

impl TBarrier {
    fn run<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&locksmith::Barrier) -> locksmith::Result<R> + Send,
    ) -> PyResult<R> {
        let core = self.core.get().raise_py(py)?;
        let core: &locksmith::Barrier = &core;
        if self.mem {
            f(core).raise_py(py)
        } else {
            py.detach(|| f(core)).raise_py(py)
        }
    }
}

#[pymethods]
impl TBarrier {
    #[new]
    #[pyo3(signature = (parties, action=None, timeout=None, *, name=None, store=None))]
    fn new(
        py: Python<'_>,
        parties: u32,
        action: Option<Py<PyAny>>,
        timeout: Option<f64>,
        name: Option<String>,
        store: Option<&str>,
    ) -> PyResult<Self> {
        if parties == 0 {
            return Err(PyValueError::new_err("parties must be >= 1"));
        }
        let cell = cell_for(py, &name, store)?;
        let mem = cell.url().starts_with("mem:");
        let n = name.unwrap_or_else(anonymous);
        let action = action.map(Arc::new);
        let core = Core::new(cell, move |s| {
            let barrier = s.barrier(&n, parties);
            match action.clone() {
                Some(action) => barrier.action(move || {
                    let failed = Python::attach(|py| action.call0(py).err());
                    if let Some(e) = failed {
                        ACTION_ERROR.with(|slot| *slot.borrow_mut() = Some(e));
                        // The core breaks the barrier when its action panics.
                        std::panic::resume_unwind(Box::new("the barrier's action raised"));
                    }
                }),
                None => barrier,
            }
        })
        .raise_py(py)?;
        Ok(TBarrier { core, timeout, mem })
    }

    /// Waits for every party (at most `timeout` seconds, else the default given at
    /// construction); returns this party's arrival index. The wait does not run signal
    /// handlers until it ends.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<u32> {
        let timeout = timeout.or(self.timeout);
        let core = self.core.get().raise_py(py)?;
        let core: &locksmith::Barrier = &core;
        let result = match timeout {
            None => py.detach(|| core.wait()),
            Some(t) => {
                let d = Duration::from_secs_f64(t.clamp(0.0, timeout_max(py)));
                py.detach(|| core.wait_timeout(d))
            }
        };
        if let Some(e) = ACTION_ERROR.with(|slot| slot.borrow_mut().take()) {
            return Err(e);
        }
        result.raise_py(py)
    }

    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        self.run(py, |b| b.abort())
    }

    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        self.run(py, |b| b.reset())
    }

    #[getter]
    fn n_waiting(&self, py: Python<'_>) -> PyResult<u32> {
        self.run(py, |b| b.n_waiting())
    }

    #[getter]
    fn broken(&self, py: Python<'_>) -> PyResult<bool> {
        self.run(py, |b| b.is_broken())
    }
}

/// Registers the classes in the extension module, under private names that
/// `locksmith.threading` re-exports.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("_ThreadingLock", py.get_type::<TLock>())?;
    m.add("_ThreadingRLock", py.get_type::<TRLock>())?;
    m.add("_ThreadingConditionLock", py.get_type::<CondLock>())?;
    m.add("_ThreadingSemaphore", py.get_type::<TSemaphore>())?;
    m.add(
        "_ThreadingBoundedSemaphore",
        py.get_type::<TBoundedSemaphore>(),
    )?;
    m.add("_ThreadingEvent", py.get_type::<TEvent>())?;
    m.add("_ThreadingBarrier", py.get_type::<TBarrier>())?;
    Ok(())
}
