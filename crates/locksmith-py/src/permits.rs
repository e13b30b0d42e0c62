//! What Lock, RLock, Semaphore, BoundedSemaphore and Condition objects share: blocking
//! acquisition with the GIL released and signals run, holds kept per thread, and the
//! context manager.

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyAny;

use crate::errors::Raise;
use crate::guard::{Guard, Holds};
use crate::space::Core;
use crate::wait::{queued, slice_for, timeout_arg};

/// The core primitives that hand out guards.
pub(crate) trait Acquire: Clone + Send + Sync + 'static {
    fn try_acquire(&self) -> locksmith::Result<Option<locksmith::Guard>>;
    fn acquire_timeout(&self, d: Duration) -> locksmith::Result<Option<locksmith::Guard>>;
    /// Acquires, waiting at most `timeout` (`None`: as long as it takes).
    fn acquire_for(
        &self,
        timeout: Option<Duration>,
    ) -> locksmith::Result<Option<locksmith::Guard>> {
        match timeout {
            Some(d) => self.acquire_timeout(d),
            None => self.acquire_forever().map(Some),
        }
    }
    /// Acquires, waiting as long as it takes.
    fn acquire_forever(&self) -> locksmith::Result<locksmith::Guard>;
    /// The core's `release()`: a guardless hold of this thread, or a signalling release.
    fn release_owned(&self) -> locksmith::Result<()>;
    /// After a step whose answer never came (it may have granted a hold nobody has a
    /// guard for): gives back such a hold of the calling thread, where the primitive
    /// can tell one apart (locks; a semaphore's lapses with its lease).
    fn give_back_orphan(&self) {}
    /// The async acquisition, waiting at most `timeout` (`None`: as long as it takes).
    fn acquire_owned_async(self, timeout: Option<Duration>) -> AcquireFuture;
}

/// What [`Acquire::acquire_owned_async`] returns.
pub(crate) type AcquireFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = locksmith::Result<Option<locksmith::Guard>>> + Send>,
>;

macro_rules! impl_acquire {
    ($($t:ty),*) => {$(
        impl Acquire for $t {
            fn try_acquire(&self) -> locksmith::Result<Option<locksmith::Guard>> {
                <$t>::try_acquire(self)
            }
            fn acquire_timeout(&self, d: Duration) -> locksmith::Result<Option<locksmith::Guard>> {
                <$t>::acquire_timeout(self, d)
            }
            fn acquire_forever(&self) -> locksmith::Result<locksmith::Guard> {
                <$t>::acquire(self)
            }
            fn release_owned(&self) -> locksmith::Result<()> {
                <$t>::release(self)
            }
            fn give_back_orphan(&self) {
                // Only a lock's own guardless hold can be told apart from a signal: the
                // caller waited, so it held nothing of it before.
                if <$t as Orphans>::LOCK {
                    let _ = <$t>::release(self);
                }
            }
            fn acquire_owned_async(self, timeout: Option<Duration>) -> AcquireFuture {
                Box::pin(async move {
                    match timeout {
                        None => self.acquire_async().await.map(Some),
                        Some(d) => self.acquire_timeout_async(d).await,
                    }
                })
            }
        }
    )*};
}
impl_acquire!(
    locksmith::Lock,
    locksmith::RLock,
    locksmith::Semaphore,
    locksmith::BoundedSemaphore
);

/// Which core primitives are locks (whose calling-thread hold `release()` gives back).
trait Orphans {
    const LOCK: bool;
}
impl Orphans for locksmith::Lock {
    const LOCK: bool = true;
}
impl Orphans for locksmith::RLock {
    const LOCK: bool = true;
}
impl Orphans for locksmith::Semaphore {
    const LOCK: bool = false;
}
impl Orphans for locksmith::BoundedSemaphore {
    const LOCK: bool = false;
}

/// Whether `e` is a step that got no answer in time: it may or may not have happened.
fn unanswered(e: &locksmith::Error) -> bool {
    matches!(e, locksmith::Error::Backend(_)) && e.to_string().contains("timed out")
}

impl Acquire for locksmith::Condition {
    fn try_acquire(&self) -> locksmith::Result<Option<locksmith::Guard>> {
        locksmith::Condition::try_acquire(self)
    }
    fn acquire_timeout(&self, d: Duration) -> locksmith::Result<Option<locksmith::Guard>> {
        locksmith::Condition::acquire_timeout(self, d)
    }
    fn acquire_forever(&self) -> locksmith::Result<locksmith::Guard> {
        locksmith::Condition::acquire(self)
    }
    fn release_owned(&self) -> locksmith::Result<()> {
        Err(locksmith::Error::NotHeld {
            name: self.name().to_owned(),
        })
    }
    fn acquire_owned_async(self, timeout: Option<Duration>) -> AcquireFuture {
        Box::pin(async move {
            match timeout {
                None => self.acquire_async().await.map(Some),
                Some(d) => self.acquire_timeout_async(d).await,
            }
        })
    }
}

/// The options a primitive was made with, kept to pickle it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Opts {
    pub lease: Option<f64>,
    pub keep_alive: bool,
    pub tag: Option<String>,
}

/// Blocking acquisition: `timeout=None` waits for ever; `Ok(None)` when it ran out.
pub(crate) fn acquire<T: Acquire>(
    py: Python<'_>,
    core: &Core<T>,
    holds: &Holds,
    timeout: Option<f64>,
) -> PyResult<Option<Guard>> {
    let timeout = timeout_arg(py, timeout)?;
    let slice_len = slice_for(core.cell.url());
    let space = core.cell.core().raise_py(py)?;
    let core = core.get().raise_py(py)?;
    let core: &T = &core;
    let orphaned = std::sync::atomic::AtomicBool::new(false);
    // One wait for the whole timeout, so the waiter keeps its place in the queue.
    let got = queued(
        py,
        timeout,
        slice_len,
        || core.try_acquire(),
        |left| match core.acquire_for(left) {
            // A step that got no answer in time (a loaded machine, a network
            // store): undo what it may have granted, and go on waiting.
            Err(e) if unanswered(&e) => {
                core.give_back_orphan();
                orphaned.store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(None)
            }
            // A grant of an unanswered step that could not be given back: the store
            // says this thread holds the lock it is waiting for. Nobody else can hold
            // it, so breaking the hold breaks only that orphan.
            Err(locksmith::Error::WouldDeadlock { name })
                if orphaned.swap(false, std::sync::atomic::Ordering::Relaxed) =>
            {
                space.force_release(&name)?;
                Ok(None)
            }
            other => other,
        },
    )?;
    Ok(got.map(|g| holds.push(g)))
}

/// The async acquisition: an asyncio future of a `Guard` (or `None` when `timeout`
/// ran out), completed from the module's runtime through the loop. The guard is the
/// awaiting task's own: it releases on `release()`, `async with`'s exit or when the
/// guard object is garbage.
pub(crate) fn acquire_async<'py, T: Acquire>(
    py: Python<'py>,
    core: &Core<T>,
    timeout: Option<f64>,
) -> PyResult<Bound<'py, PyAny>> {
    let timeout = timeout_arg(py, timeout)?;
    let core = core.get().raise_py(py)?.into_owned();
    // No synchronous try first: the core's `try_acquire` is owned by this thread, and
    // an async acquisition must be its own owner (a task may not inherit the thread's
    // blocking holds). The core's async path takes a free primitive without waiting.
    crate::aio::spawn(py, core.acquire_owned_async(timeout), |py, got| {
        Ok(match got {
            Some(g) => Py::new(py, Guard::new(&crate::guard::Slot::new(g)))?.into_any(),
            None => py.None(),
        })
    })
}

/// Acquisition that never waits.
pub(crate) fn try_acquire<T: Acquire>(
    py: Python<'_>,
    core: &Core<T>,
    holds: &Holds,
) -> PyResult<Option<Guard>> {
    let core = core.get().raise_py(py)?;
    Ok(core.try_acquire().raise_py(py)?.map(|g| holds.push(g)))
}

/// Releases the calling thread's newest hold taken through this object (or, with
/// `any_thread`, anyone's), else asks the core (a guardless hold, or a semaphore's
/// signalling release).
pub(crate) fn release<T: Acquire>(
    py: Python<'_>,
    core: &Core<T>,
    holds: &Holds,
    any_thread: bool,
) -> PyResult<()> {
    match holds.pop(any_thread) {
        Some(slot) => slot.release(py),
        None => {
            let core = core.get().raise_py(py)?;
            py.detach(|| core.release_owned()).raise_py(py)
        }
    }
}

/// The class body every guard-giving primitive shares, plus `$extra` methods.
macro_rules! permit_class {
    ($ty:ident, $pyname:literal, any_thread = $any:expr, { $($extra:tt)* }) => {
        #[pymethods]
        impl $ty {
            /// Acquires, waiting at most `timeout` seconds (`None`: as long as it takes).
            /// Returns the hold's `Guard`, or `None` if the time ran out. The hold
            /// lasts until `release()` (here or on the guard), not until the guard is
            /// garbage.
            #[pyo3(signature = (timeout=None))]
            fn acquire(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<$crate::guard::Guard>> {
                $crate::permits::acquire(py, &self.core, &self.holds, timeout)
            }

            /// Acquires from async code: an awaitable of the `Guard` (or `None` when
            /// `timeout` ran out). The guard is the task's own and releases on
            /// `release()`, `async with` exit, or when it is garbage.
            #[pyo3(signature = (timeout=None))]
            fn acquire_async<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
                $crate::permits::acquire_async(py, &self.core, timeout)
            }

            /// Acquires if that is possible now: the `Guard`, or `None`.
            fn try_acquire(&self, py: Python<'_>) -> PyResult<Option<$crate::guard::Guard>> {
                $crate::permits::try_acquire(py, &self.core, &self.holds)
            }

            /// Releases the calling thread's newest hold taken through this object.
            fn release(&self, py: Python<'_>) -> PyResult<()> {
                $crate::permits::release(py, &self.core, &self.holds, $any)
            }

            fn __enter__(&self, py: Python<'_>) -> PyResult<$crate::guard::Guard> {
                match $crate::permits::acquire(py, &self.core, &self.holds, None)? {
                    Some(g) => Ok(g),
                    None => Err($crate::errors::new_err(py, "LockTimeout", "no timeout, yet timed out".into())),
                }
            }

            fn __exit__(
                &self,
                py: Python<'_>,
                _exc_type: &Bound<'_, PyAny>,
                _exc: &Bound<'_, PyAny>,
                _tb: &Bound<'_, PyAny>,
            ) -> PyResult<bool> {
                match self.holds.pop(false) {
                    Some(slot) => slot.release(py)?,
                    None => return Err($crate::guard::not_held(py, &self.name)),
                }
                Ok(false)
            }

            /// The primitive's name.
            #[getter]
            fn name(&self) -> &str {
                &self.name
            }

            /// The store's URL.
            #[getter]
            fn url(&self) -> &str {
                self.core.cell.url()
            }

            /// How many holds the calling thread took through this object and has not
            /// released.
            fn _count_mine(&self) -> usize {
                self.holds.count_mine()
            }

            fn __repr__(&self) -> String {
                format!("<locksmith.{} {:?} at {}>", $pyname, self.name, self.core.cell.url())
            }

            $($extra)*
        }
    };
}
pub(crate) use permit_class;
