//! `Condition`: a condition variable with its own lock.

use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::PyAny;

use crate::errors::Raise;
use crate::guard::not_held;
use crate::lock::named_permit_class;
use crate::wait::{sleep_sliced, timeout_arg};

named_permit_class!(
    /// A condition variable carrying its own lock: acquire it (`with cond:`), check the
    /// shared state, `wait()` to release the lock and sleep until notified.
    Condition(locksmith::Condition, condition), "Condition", any_thread = false, {
    /// Releases the lock (which the calling thread must hold), sleeps until notified or
    /// `timeout` seconds passed, and takes the lock again. Returns whether it was
    /// notified. Signal handlers run during the wait; if one raises, the lock is held
    /// again when the exception propagates.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let timeout = timeout_arg(py, timeout)?;
        let slot = self.holds.mine().ok_or_else(|| not_held(py, &self.name))?;
        let core = self.core.get().raise_py(py)?;
        let Some(guard) = slot.take_for_wait() else {
            return Err(not_held(py, &self.name));
        };
        let deadline = timeout.map(|t| Instant::now() + t);
        // One sleeper for the whole wait, across the slices between signal checks: a
        // notification that comes between two slices is kept, never lost.
        let sleeper = match py.detach(|| core.sleep(guard)) {
            Ok(sleeper) => sleeper,
            Err(e) => {
                // The hold had ended: take the lock again before reporting it.
                if let Ok(guard) = py.detach(|| core.acquire()) {
                    slot.put_back(guard);
                }
                return Err(crate::errors::to_py(py, e));
            }
        };
        let result = sleep_sliced(py, sleeper, deadline);
        // The lock again, as threading's Condition takes it: waiting as long as it takes.
        match py.detach(|| core.acquire()) {
            Ok(guard) => slot.put_back(guard),
            Err(e) => return Err(crate::errors::to_py(py, e)),
        }
        result
    }

    /// Waits from async code with `guard` (an async acquisition of this condition's
    /// lock): an awaitable of whether it was notified, done when the lock is held
    /// again through `guard`. If the awaiting task is cancelled, the sleeper leaves and
    /// `guard` no longer holds the lock (take it again before going on).
    #[pyo3(signature = (guard, timeout=None))]
    fn wait_async<'py>(
        &self,
        py: Python<'py>,
        guard: &Bound<'py, crate::guard::Guard>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let timeout = timeout_arg(py, timeout)?;
        let core = self.core.get().raise_py(py)?.into_owned();
        let slot = guard.get().slot.clone();
        let Some(mut held) = slot.take_for_wait() else {
            return Err(not_held(py, &self.name));
        };
        let work = async move {
            let woken = match timeout {
                None => core.wait_async(&mut held).await.map(|()| true),
                Some(d) => core.wait_timeout_async(&mut held, d).await,
            };
            slot.put_back(held);
            woken
        };
        crate::aio::spawn(py, work, |py, woken| {
            Ok(pyo3::types::PyBool::new(py, woken)
                .to_owned()
                .into_any()
                .unbind())
        })
    }

    /// Wakes up to `n` sleepers, oldest first; returns how many were woken.
    #[pyo3(signature = (n=1))]
    fn notify(&self, py: Python<'_>, n: usize) -> PyResult<usize> {
        let core = self.core.get().raise_py(py)?;
        py.detach(|| core.notify(n)).raise_py(py)
    }

    /// Wakes every sleeper; returns how many were woken.
    fn notify_all(&self, py: Python<'_>) -> PyResult<usize> {
        let core = self.core.get().raise_py(py)?;
        py.detach(|| core.notify_all()).raise_py(py)
    }
});
