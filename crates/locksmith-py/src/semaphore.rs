//! `Semaphore` and `BoundedSemaphore`.

use pyo3::prelude::*;
use pyo3::types::{PyAny, PyTuple};

use crate::errors::Raise;
use crate::guard::Holds;
use crate::lock::{parts, reduce_args, with_opts};
use crate::permits::{permit_class, Opts};
use crate::space::Core;

/// A semaphore pyclass over the core primitive `$open` makes: its struct, its
/// constructor (`name, value=1, space=None, lease=None, keep_alive=True, tag=None`),
/// `initial_value`, pickling, and the acquire/release surface of `permit_class!`.
macro_rules! semaphore_class {
    ($(#[$doc:meta])* $ty:ident($core:ty, $open:ident), $pyname:literal) => {
        $(#[$doc])*
        #[pyclass(frozen, module = "locksmith")]
        #[derive(Debug)]
        pub struct $ty {
            pub(crate) name: String,
            pub(crate) core: Core<$core>,
            pub(crate) holds: Holds,
            value: u32,
            opts: Opts,
        }

        permit_class!($ty, $pyname, any_thread = false, {
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
                    Core::new(cell, move |s| with_opts!(s.$open(&n, value), o)).raise_py(py)?;
                Ok($ty {
                    name,
                    core,
                    holds: Holds::default(),
                    value,
                    opts,
                })
            }

            /// The number of permits it starts with (for a bounded one, the most
            /// there can be).
            #[getter]
            fn initial_value(&self) -> u32 {
                self.value
            }

            /// The permits free now.
            fn value(&self, py: Python<'_>) -> PyResult<u32> {
                let core = self.core.get().raise_py(py)?;
                py.detach(|| core.value()).raise_py(py)
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
    };
}

semaphore_class!(
    /// A counter of permits: `acquire` takes one (waiting while there are none),
    /// `release` gives one back, or raises the count when the caller holds none.
    Semaphore(locksmith::Semaphore, semaphore),
    "Semaphore"
);

semaphore_class!(
    /// A semaphore that refuses to be released above its initial value
    /// (`TooManyReleases`, also a `ValueError`).
    BoundedSemaphore(locksmith::BoundedSemaphore, bounded_semaphore),
    "BoundedSemaphore"
);
