//! `Event`: a flag processes set, clear and wait for.

use pyo3::prelude::*;
use pyo3::types::{PyAny, PyTuple};

use crate::errors::Raise;
use crate::space::{space_arg, Core};
use crate::wait::{sliced, timeout_arg};

/// threading's Event, shared through a store.
#[pyclass(frozen, module = "locksmith")]
#[derive(Debug)]
pub struct Event {
    name: String,
    core: Core<locksmith::Event>,
    tag: Option<String>,
}

#[pymethods]
impl Event {
    /// The event `name` in `space` (a Space or a URL).
    #[new]
    #[pyo3(signature = (name, space, tag=None))]
    fn new(
        py: Python<'_>,
        name: String,
        space: &Bound<'_, PyAny>,
        tag: Option<String>,
    ) -> PyResult<Self> {
        let cell = space_arg(space)?;
        let (n, t) = (name.clone(), tag.clone());
        let core = Core::new(cell, move |s| match &t {
            Some(t) => s.event(&n).tag(t.clone()),
            None => s.event(&n),
        })
        .raise_py(py)?;
        Ok(Event { name, core, tag })
    }

    /// Sets the flag and wakes every waiter.
    fn set(&self, py: Python<'_>) -> PyResult<()> {
        let core = self.core.get().raise_py(py)?;
        py.detach(|| core.set()).raise_py(py)
    }

    /// Clears the flag.
    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        let core = self.core.get().raise_py(py)?;
        py.detach(|| core.clear()).raise_py(py)
    }

    /// Whether the flag is set.
    fn is_set(&self, py: Python<'_>) -> PyResult<bool> {
        let core = self.core.get().raise_py(py)?;
        core.is_set().raise_py(py)
    }

    /// Waits until the flag is set, at most `timeout` seconds; returns the flag.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let timeout = timeout_arg(py, timeout)?;
        let core = self.core.get().raise_py(py)?;
        let core: &locksmith::Event = &core;
        let set = sliced(
            py,
            timeout,
            || Ok(core.is_set()?.then_some(())),
            |slice| Ok(core.wait_timeout(slice)?.then_some(())),
        )?;
        Ok(set.is_some())
    }

    /// Waits from async code: an awaitable of the flag (False when `timeout` ran out).
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
        crate::aio::spawn(py, work, |py, set| {
            Ok(pyo3::types::PyBool::new(py, set)
                .to_owned()
                .into_any()
                .unbind())
        })
    }

    /// The event's name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let me = slf.get();
        let args =
            (me.name.as_str(), me.core.cell.url(), me.tag.clone()).into_pyobject(slf.py())?;
        Ok((slf.get_type().into_any(), args))
    }
}
