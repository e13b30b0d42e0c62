//! `Averager`: a running average kept in the store (diskcache's recipe).

use pyo3::prelude::*;
use pyo3::types::{PyAny, PyTuple};

use crate::errors::Raise;
use crate::space::{seconds, space_arg, Core};

/// A total and a count updated atomically, so that many processes feed one average.
#[pyclass(frozen, module = "locksmith")]
#[derive(Debug)]
pub struct Averager {
    name: String,
    core: Core<locksmith::Averager>,
    expire: Option<f64>,
    tag: Option<String>,
}

#[pymethods]
impl Averager {
    /// The averager `name` in `space`; `expire` drops the average that many seconds
    /// after the last `add`.
    #[new]
    #[pyo3(signature = (name, space, expire=None, tag=None))]
    fn new(
        py: Python<'_>,
        name: String,
        space: &Bound<'_, PyAny>,
        expire: Option<f64>,
        tag: Option<String>,
    ) -> PyResult<Self> {
        let cell = space_arg(space)?;
        let d = expire.map(|e| seconds(py, "expire", e)).transpose()?;
        let (n, t) = (name.clone(), tag.clone());
        let core = Core::new(cell, move |s| {
            let mut a = s.averager(&n);
            if let Some(d) = d {
                a = a.expire(d);
            }
            if let Some(t) = &t {
                a = a.tag(t.clone());
            }
            a
        })
        .raise_py(py)?;
        Ok(Averager {
            name,
            core,
            expire,
            tag,
        })
    }

    /// Adds a value.
    fn add(&self, py: Python<'_>, value: f64) -> PyResult<()> {
        let core = self.core.get().raise_py(py)?;
        py.detach(|| core.add(value)).raise_py(py)
    }

    /// The average, or None if nothing was added.
    fn get(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        let core = self.core.get().raise_py(py)?;
        py.detach(|| core.get()).raise_py(py)
    }

    /// The average, removing it.
    fn pop(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        let core = self.core.get().raise_py(py)?;
        py.detach(|| core.pop()).raise_py(py)
    }

    /// The averager's name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let me = slf.get();
        let py = slf.py();
        let args = (
            me.name.as_str(),
            me.core.cell.url(),
            me.expire,
            me.tag.clone(),
        )
            .into_pyobject(py)?;
        Ok((slf.get_type().into_any(), args))
    }
}
