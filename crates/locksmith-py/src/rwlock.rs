//! `RwLock`: many readers or one writer.

use pyo3::prelude::*;
use pyo3::types::{PyAny, PyTuple};

use crate::errors::Raise;
use crate::guard::{Guard, Holds};
use crate::lock::{parts, reduce_args, with_opts};
use crate::permits::Opts;
use crate::space::Core;
use crate::wait::{sliced, timeout_arg};

/// A reader-writer lock: `with rw.read():` shares, `with rw.write():` excludes. Each
/// side's guard releases on `release()` or on leaving its `with`.
#[pyclass(frozen, module = "locksmith")]
#[derive(Debug)]
pub struct RwLock {
    name: String,
    core: Core<locksmith::RwLock>,
    holds: Holds,
    opts: Opts,
}

#[pymethods]
impl RwLock {
    /// The RwLock `name` in `space` (a Space, a URL, or None for the default store).
    #[new]
    #[pyo3(signature = (name, space=None, lease=None, keep_alive=true, tag=None))]
    fn new(
        py: Python<'_>,
        name: String,
        space: Option<&Bound<'_, PyAny>>,
        lease: Option<f64>,
        keep_alive: bool,
        tag: Option<String>,
    ) -> PyResult<Self> {
        let (cell, opts, o) = parts(py, space, lease, keep_alive, tag)?;
        let n = name.clone();
        let core = Core::new(cell, move |s| with_opts!(s.rwlock(&n), o)).raise_py(py)?;
        Ok(RwLock {
            name,
            core,
            holds: Holds::default(),
            opts,
        })
    }

    /// Takes the read side, waiting at most `timeout` seconds (None: as long as it
    /// takes); the guard, or None if the time ran out.
    #[pyo3(signature = (timeout=None))]
    fn read(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Guard>> {
        let timeout = timeout_arg(py, timeout)?;
        let core = self.core.get().raise_py(py)?;
        let core: &locksmith::RwLock = &core;
        let got = sliced(py, timeout, || core.try_read(), |s| core.read_timeout(s))?;
        Ok(got.map(|g| self.holds.push(g)))
    }

    /// Takes the read side if that is possible now.
    fn try_read(&self, py: Python<'_>) -> PyResult<Option<Guard>> {
        let core = self.core.get().raise_py(py)?;
        Ok(core.try_read().raise_py(py)?.map(|g| self.holds.push(g)))
    }

    /// Takes the write side, waiting at most `timeout` seconds.
    #[pyo3(signature = (timeout=None))]
    fn write(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Guard>> {
        let timeout = timeout_arg(py, timeout)?;
        let core = self.core.get().raise_py(py)?;
        let core: &locksmith::RwLock = &core;
        let got = sliced(py, timeout, || core.try_write(), |s| core.write_timeout(s))?;
        Ok(got.map(|g| self.holds.push(g)))
    }

    /// Takes the write side if that is possible now.
    fn try_write(&self, py: Python<'_>) -> PyResult<Option<Guard>> {
        let core = self.core.get().raise_py(py)?;
        Ok(core.try_write().raise_py(py)?.map(|g| self.holds.push(g)))
    }

    /// Whether anyone holds either side.
    fn locked(&self, py: Python<'_>) -> PyResult<bool> {
        let core = self.core.get().raise_py(py)?;
        py.detach(|| core.is_locked()).raise_py(py)
    }

    /// The RwLock's name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let me = slf.get();
        let args = reduce_args(slf.py(), &me.name, None, me.core.cell.url(), &me.opts)?;
        Ok((slf.get_type().into_any(), args))
    }
}
