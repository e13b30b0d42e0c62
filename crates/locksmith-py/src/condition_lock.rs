//! The sleepers of a condition whose lock is a caller's named `Lock` or `RLock`
//! (`locksmith.multiprocessing.Condition(lock)`): the lock object keeps its hold, and
//! this object registers a sleeper in the store before the caller's lock is released,
//! so `notify` in any process wakes it and no notification is lost.

use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::PyAny;

use crate::errors::{new_err, Raise};
use crate::space::{open_shared, Core};
use crate::wait::{sleep_sliced, timeout_arg};

/// A condition's sleepers, over a caller's lock of the same store.
#[pyclass(frozen, name = "_ConditionOverLock", module = "locksmith")]
#[derive(Debug)]
pub struct ConditionOverLock {
    core: Core<locksmith::Condition>,
}

#[pymethods]
impl ConditionOverLock {
    /// The condition `name` of `store`, whose lock is the `Lock` (`rlock=False`) or
    /// `RLock` named `lock_name` of the same store.
    #[new]
    #[pyo3(signature = (name, lock_name, rlock, store))]
    fn new(
        py: Python<'_>,
        name: String,
        lock_name: String,
        rlock: bool,
        store: &str,
    ) -> PyResult<Self> {
        let cell = open_shared(store).raise_py(py)?;
        let make = move |s: &locksmith::Space| {
            let cond = s.condition(&name);
            let with = if rlock {
                cond.clone().with_lock(&s.rlock(&lock_name))
            } else {
                cond.clone().with_lock(
                    &s.lock(&lock_name)
                        .ownership(locksmith::Ownership::Acquisition),
                )
            };
            // One space for both: `with_lock` refuses only a lock of another store.
            with.unwrap_or(cond)
        };
        let core = Core::new(cell, make).raise_py(py)?;
        Ok(ConditionOverLock { core })
    }

    /// A wait: registers a sleeper, calls `release()` (which releases the caller's
    /// lock and returns what `restore` needs), sleeps until notified or `timeout`
    /// seconds pass (signal handlers run meanwhile), then calls `restore(state)` to take
    /// the lock again, also when a handler raised. Whether it was notified.
    #[pyo3(signature = (release, restore, timeout=None))]
    fn _wait(
        &self,
        py: Python<'_>,
        release: &Bound<'_, PyAny>,
        restore: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<bool> {
        let timeout = timeout_arg(py, timeout)?;
        let core = self.core.get().raise_py(py)?;
        let sleeper = py.detach(|| core.sleeper()).raise_py(py)?;
        // On an error here the sleeper is dropped, which leaves the sleepers.
        let state = release.call0()?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let result = sleep_sliced(py, sleeper, deadline);
        restore.call1((state,))?;
        result
    }

    /// Wakes up to `n` sleepers, oldest first (the caller holds the lock); returns how
    /// many were woken.
    fn _notify(&self, py: Python<'_>, n: usize) -> PyResult<usize> {
        let core = self.core.get().raise_py(py)?;
        match py.detach(|| core.notify(n)) {
            Err(locksmith::Error::NotHeld { .. }) => Err(new_err(
                py,
                "NotHeld",
                "cannot notify on un-acquired lock".into(),
            )),
            other => other.raise_py(py),
        }
    }
}
