//! `Semaphore` and `BoundedSemaphore`.

use pyo3::prelude::*;
use pyo3::types::{PyAny, PyTuple};

use crate::errors::Raise;
use crate::guard::Holds;
use crate::lock::{parts, reduce_args, with_opts};
use crate::permits::{permit_class, Opts};
use crate::space::Core;

/// A counter of permits: `acquire` takes one (waiting while there are none), `release`
/// gives one back, or raises the count when the caller holds none.
#[pyclass(frozen, module = "locksmith")]
#[derive(Debug)]
pub struct Semaphore {
    pub(crate) name: String,
    pub(crate) core: Core<locksmith::Semaphore>,
    pub(crate) holds: Holds,
    value: u32,
    opts: Opts,
}

permit_class!(Semaphore, "Semaphore", any_thread = false, {
    #[new]
    #[pyo3(signature = (name, value=1, space=None, lease=None, keep_alive=true, tag=None))]
    fn new(
        py: Python<'_>,
        name: String,
        value: u32,
        space: Option<&Bound<'_, PyAny>>,
        lease: Option<f64>,
        keep_alive: bool,
        tag: Option<String>,
    ) -> PyResult<Self> {
        let (cell, opts, o) = parts(py, space, lease, keep_alive, tag)?;
        let n = name.clone();
        let core = Core::new(cell, move |s| with_opts!(s.semaphore(&n, value), o)).raise_py(py)?;
        Ok(Semaphore {
            name,
            core,
            holds: Holds::default(),
            value,
            opts,
        })
    }

    /// The number of permits it starts with.
    #[getter]
    fn initial_value(&self) -> u32 {
        self.value
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let me = slf.get();
        let args = reduce_args(
            slf.py(),
            &me.name,
            Some(me.value),
            me.core.cell.url(),
            &me.opts,
        )?;
        Ok((slf.get_type().into_any(), args))
    }
});

/// A semaphore that refuses to be released above its initial value
/// (`TooManyReleases`, also a `ValueError`).
#[pyclass(frozen, module = "locksmith")]
#[derive(Debug)]
pub struct BoundedSemaphore {
    pub(crate) name: String,
    pub(crate) core: Core<locksmith::BoundedSemaphore>,
    pub(crate) holds: Holds,
    value: u32,
    opts: Opts,
}

permit_class!(BoundedSemaphore, "BoundedSemaphore", any_thread = false, {
    #[new]
    #[pyo3(signature = (name, value=1, space=None, lease=None, keep_alive=true, tag=None))]
    fn new(
        py: Python<'_>,
        name: String,
        value: u32,
        space: Option<&Bound<'_, PyAny>>,
        lease: Option<f64>,
        keep_alive: bool,
        tag: Option<String>,
    ) -> PyResult<Self> {
        let (cell, opts, o) = parts(py, space, lease, keep_alive, tag)?;
        let n = name.clone();
        let core =
            Core::new(cell, move |s| with_opts!(s.bounded_semaphore(&n, value), o)).raise_py(py)?;
        Ok(BoundedSemaphore {
            name,
            core,
            holds: Holds::default(),
            value,
            opts,
        })
    }

    /// The most permits there can be.
    #[getter]
    fn initial_value(&self) -> u32 {
        self.value
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let me = slf.get();
        let args = reduce_args(
            slf.py(),
            &me.name,
            Some(me.value),
            me.core.cell.url(),
            &me.opts,
        )?;
        Ok((slf.get_type().into_any(), args))
    }
});
