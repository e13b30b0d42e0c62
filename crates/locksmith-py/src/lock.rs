//! `Lock` and `RLock`.

use pyo3::prelude::*;
use pyo3::types::{PyAny, PyTuple};

use crate::errors::Raise;
use crate::permits::Opts;
use crate::space::{seconds, space_arg};

/// Applies a primitive's lease options to its core handle.
macro_rules! with_opts {
    ($core:expr, $opts:expr) => {{
        let mut core = $core;
        if let Some(lease) = $opts.0 {
            core = core.lease(lease).keep_alive($opts.1);
        }
        if let Some(tag) = &$opts.2 {
            core = core.tag(tag.clone());
        }
        core
    }};
}
pub(crate) use with_opts;

/// A primitive's lease, keep-alive and tag, as the core takes them.
pub(crate) type CoreOpts = (Option<std::time::Duration>, bool, Option<String>);

/// The pieces every guard-giving primitive is made of.
pub(crate) fn parts(
    py: Python<'_>,
    space: Option<&Bound<'_, PyAny>>,
    lease: Option<f64>,
    keep_alive: bool,
    tag: Option<String>,
) -> PyResult<(std::sync::Arc<crate::space::SpaceCell>, Opts, CoreOpts)> {
    let cell = match space {
        Some(s) if !s.is_none() => space_arg(s)?,
        _ => {
            let url = match std::env::var("LOCKSMITH_STORE") {
                Ok(url) if !url.is_empty() => url,
                _ => locksmith::Space::default_url().raise_py(py)?,
            };
            crate::space::open_shared(&url).raise_py(py)?
        }
    };
    let lease_d = lease.map(|l| seconds(py, "lease", l)).transpose()?;
    Ok((
        cell,
        Opts {
            lease,
            keep_alive,
            tag: tag.clone(),
        },
        (lease_d, keep_alive, tag),
    ))
}

/// The `__reduce__` arguments shared by the primitives: (name, [extra,] url, lease,
/// keep_alive, tag).
pub(crate) fn reduce_args<'py>(
    py: Python<'py>,
    name: &str,
    extra: Option<u32>,
    url: &str,
    opts: &Opts,
) -> PyResult<Bound<'py, PyTuple>> {
    let mut items: Vec<Bound<'py, PyAny>> = vec![name.into_pyobject(py)?.into_any()];
    if let Some(v) = extra {
        items.push(v.into_pyobject(py)?.into_any());
    }
    items.push(url.into_pyobject(py)?.into_any());
    items.push(opts.lease.into_pyobject(py)?.into_any());
    items.push(
        pyo3::types::PyBool::new(py, opts.keep_alive)
            .to_owned()
            .into_any(),
    );
    items.push(opts.tag.clone().into_pyobject(py)?.into_any());
    PyTuple::new(py, items)
}

/// A guard-giving pyclass over one core primitive opened by name: its struct, its
/// constructor (`name, space=None, lease=None, keep_alive=True, tag=None`), pickling,
/// the acquire/release surface of `permit_class!`, and the methods in `$extra`.
macro_rules! named_permit_class {
    (
        $(#[$doc:meta])*
        $ty:ident($core:ty, $open:ident), $pyname:literal, any_thread = $any:expr, { $($extra:tt)* }
    ) => {
        $(#[$doc])*
        #[pyclass(frozen, module = "locksmith")]
        #[derive(Debug)]
        pub struct $ty {
            pub(crate) name: String,
            pub(crate) core: $crate::space::Core<$core>,
            pub(crate) holds: $crate::guard::Holds,
            opts: $crate::permits::Opts,
        }

        $crate::permits::permit_class!($ty, $pyname, any_thread = $any, {
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
                use $crate::errors::Raise;
                let (cell, opts, o) = $crate::lock::parts(py, space, lease, keep_alive, tag)?;
                let n = name.clone();
                let core = $crate::space::Core::new(cell, move |s| {
                    $crate::lock::with_opts!(s.$open(&n), o)
                })
                .raise_py(py)?;
                Ok($ty {
                    name,
                    core,
                    holds: $crate::guard::Holds::default(),
                    opts,
                })
            }

            fn __reduce__<'py>(
                slf: &Bound<'py, Self>,
            ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, pyo3::types::PyTuple>)> {
                let me = slf.get();
                let args = $crate::lock::reduce_args(
                    slf.py(),
                    &me.name,
                    None,
                    me.core.cell.url(),
                    &me.opts,
                )?;
                Ok((slf.get_type().into_any(), args))
            }

            $($extra)*
        });
    };
}
pub(crate) use named_permit_class;

named_permit_class!(
    /// A lock one owner holds at a time, shared by everyone who opens the same store and
    /// name. Acquiring it again from the holding thread raises `WouldDeadlock`.
    Lock(locksmith::Lock, lock), "Lock", any_thread = true, {
    /// Whether anyone holds it now.
    fn locked(&self, py: Python<'_>) -> PyResult<bool> {
        let core = self.core.get().raise_py(py)?;
        py.detach(|| core.is_locked()).raise_py(py)
    }
});

named_permit_class!(
    /// A lock its holding thread may acquire again; free once every acquisition was
    /// released.
    RLock(locksmith::RLock, rlock), "RLock", any_thread = false, {
    /// Whether anyone holds it now.
    fn locked(&self, py: Python<'_>) -> PyResult<bool> {
        let core = self.core.get().raise_py(py)?;
        py.detach(|| core.is_locked()).raise_py(py)
    }
});
