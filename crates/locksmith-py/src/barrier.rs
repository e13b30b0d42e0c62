//! `Barrier`: a cyclic barrier shared through a store.

use std::sync::mpsc;

use pyo3::prelude::*;
use pyo3::types::{PyAny, PyTuple};

use crate::errors::Raise;
use crate::space::{space_arg, Core};
use crate::wait::{timeout_arg, SLICE};

/// threading's Barrier across processes: `wait()` returns each party's arrival index;
/// a timeout, `abort()`, `reset()` or a dead party breaks it (`BrokenBarrier`, also a
/// `threading.BrokenBarrierError`).
#[pyclass(frozen, module = "locksmith")]
#[derive(Debug)]
pub struct Barrier {
    name: String,
    parties: u32,
    core: Core<locksmith::Barrier>,
    tag: Option<String>,
}

#[pymethods]
impl Barrier {
    /// The barrier `name` for `parties` parties, in `space` (a Space or a URL).
    #[new]
    #[pyo3(signature = (name, parties, space, tag=None))]
    fn new(
        py: Python<'_>,
        name: String,
        parties: u32,
        space: &Bound<'_, PyAny>,
        tag: Option<String>,
    ) -> PyResult<Self> {
        let cell = space_arg(space)?;
        let (n, t) = (name.clone(), tag.clone());
        let core = Core::new(cell, move |s| match &t {
            Some(t) => s.barrier(&n, parties).tag(t.clone()),
            None => s.barrier(&n, parties),
        })
        .raise_py(py)?;
        Ok(Barrier {
            name,
            parties,
            core,
            tag,
        })
    }

    /// Waits for every party, at most `timeout` seconds; returns this caller's arrival
    /// index (0 to parties - 1). An arrival cannot be taken back: if a signal handler
    /// raises during the wait, the barrier is aborted (broken for every party) and the
    /// exception propagates.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<u32> {
        let timeout = timeout_arg(py, timeout)?;
        let core = self.core.get().raise_py(py)?.into_owned();
        // The wait runs on a helper thread, so that this one can run signal handlers
        // between slices (the core's timed wait would break the barrier each slice).
        let (tx, rx) = mpsc::channel();
        let waiter = core.clone();
        let helper = std::thread::Builder::new()
            .name("locksmith-barrier".into())
            .spawn(move || {
                let r = match timeout {
                    Some(t) => waiter.wait_timeout(t),
                    None => waiter.wait(),
                };
                let _ = tx.send(r);
            })
            .map_err(|e| crate::errors::new_err(py, "StoreError", e.to_string()))?;
        let mut rx = rx;
        loop {
            let (got, back) = py.detach(move || (rx.recv_timeout(SLICE), rx));
            rx = back;
            match got {
                Ok(r) => {
                    let _ = helper.join();
                    return r.raise_py(py);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = helper.join();
                    return Err(crate::errors::new_err(
                        py,
                        "StoreError",
                        "the barrier wait ended without an answer".into(),
                    ));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if let Err(e) = py.check_signals() {
                let _ = py.detach(|| {
                    let _ = core.abort();
                    helper.join()
                });
                return Err(e);
            }
        }
    }

    /// Waits from async code: an awaitable of this caller's arrival index. An arrival
    /// cannot be taken back: cancelling the awaiting task breaks the barrier for every
    /// party, as a timeout does.
    #[pyo3(signature = (timeout=None))]
    fn wait_async<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let timeout = timeout_arg(py, timeout)?;
        let core = self.core.get().raise_py(py)?.into_owned();
        let work = async move {
            match timeout {
                None => core.wait_async().await,
                Some(d) => core.wait_timeout_async(d).await,
            }
        };
        crate::aio::spawn(py, work, |py, index| {
            Ok(index.into_pyobject(py)?.into_any().unbind())
        })
    }

    /// Breaks the barrier: waiters now and later get `BrokenBarrier` until `reset()`.
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        let core = self.core.get().raise_py(py)?;
        py.detach(|| core.abort()).raise_py(py)
    }

    /// Returns the barrier to its initial state; parties waiting now get
    /// `BrokenBarrier`.
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        let core = self.core.get().raise_py(py)?;
        py.detach(|| core.reset()).raise_py(py)
    }

    /// How many parties each generation needs.
    #[getter]
    fn parties(&self) -> u32 {
        self.parties
    }

    /// How many parties wait in the current generation.
    #[getter]
    fn n_waiting(&self, py: Python<'_>) -> PyResult<u32> {
        let core = self.core.get().raise_py(py)?;
        py.detach(|| core.n_waiting()).raise_py(py)
    }

    /// Whether the barrier is broken.
    #[getter]
    fn broken(&self, py: Python<'_>) -> PyResult<bool> {
        let core = self.core.get().raise_py(py)?;
        py.detach(|| core.is_broken()).raise_py(py)
    }

    /// The barrier's name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let me = slf.get();
        let args = (
            me.name.as_str(),
            me.parties,
            me.core.cell.url(),
            me.tag.clone(),
        )
            .into_pyobject(slf.py())?;
        Ok((slf.get_type().into_any(), args))
    }
}
