//! `Space`: a store of named primitives, and what every primitive object shares: its
//! core object, rebuilt in a forked child (a child must not use its parent's database
//! connections, sockets and lease keeper).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use pyo3::prelude::*;
use pyo3::types::{PyAny, PyTuple};

use crate::errors::Raise;
use crate::wait::generation;

/// An opened core space, reopened in a forked child.
#[derive(Debug)]
pub(crate) struct SpaceCell {
    url: String,
    open: Mutex<(u64, locksmith::Space)>,
}

impl SpaceCell {
    fn open(url: &str) -> locksmith::Result<Arc<SpaceCell>> {
        let space = if url == "default" {
            locksmith::Space::open_default()?
        } else {
            locksmith::Space::open(url)?
        };
        Ok(Arc::new(SpaceCell {
            url: space.url().to_owned(),
            open: Mutex::new((generation(), space)),
        }))
    }

    /// The core space of this process.
    pub(crate) fn core(&self) -> locksmith::Result<locksmith::Space> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        // `mem:` lives in this process's memory: a child keeps its copy, as it keeps
        // copies of threading's locks.
        if open.0 != generation() && !self.url.starts_with("mem:") {
            *open = (generation(), locksmith::Space::open(&self.url)?);
        }
        Ok(open.1.clone())
    }

    /// The URL it was opened with.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

/// Spaces opened by URL, shared by every object of this process that names the same
/// URL (one database connection, one lease keeper). `mem:` is private to each opener.
static OPENED: Mutex<Option<Opened>> = Mutex::new(None);

/// Each URL's space and the fork generation that opened it.
type Opened = HashMap<String, (u64, Arc<SpaceCell>)>;

pub(crate) fn open_shared(url: &str) -> locksmith::Result<Arc<SpaceCell>> {
    if url == "mem:" {
        return SpaceCell::open(url);
    }
    let mut opened = OPENED.lock().unwrap_or_else(|p| p.into_inner());
    let map = opened.get_or_insert_with(HashMap::new);
    if let Some((made, cell)) = map.get(url) {
        if *made == generation() {
            return Ok(cell.clone());
        }
    }
    let cell = SpaceCell::open(url)?;
    map.insert(url.to_owned(), (generation(), cell.clone()));
    Ok(cell)
}

/// A primitive's core object, made again from its space in a forked child.
pub(crate) struct Core<T> {
    made: u64,
    first: T,
    again: Mutex<Option<(u64, T)>>,
    pub(crate) cell: Arc<SpaceCell>,
    make: Box<dyn Fn(&locksmith::Space) -> T + Send + Sync>,
}

impl<T> std::fmt::Debug for Core<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("url", &self.cell.url).finish()
    }
}

impl<T: Clone> Core<T> {
    pub(crate) fn new(
        cell: Arc<SpaceCell>,
        make: impl Fn(&locksmith::Space) -> T + Send + Sync + 'static,
    ) -> locksmith::Result<Core<T>> {
        let first = make(&cell.core()?);
        Ok(Core {
            made: generation(),
            first,
            again: Mutex::new(None),
            cell,
            make: Box::new(make),
        })
    }

    /// The core object of this process.
    #[inline]
    pub(crate) fn get(&self) -> locksmith::Result<std::borrow::Cow<'_, T>> {
        if self.made == generation() || self.cell.url.starts_with("mem:") {
            return Ok(std::borrow::Cow::Borrowed(&self.first));
        }
        let mut again = self.again.lock().unwrap_or_else(|p| p.into_inner());
        match &*again {
            Some((made, t)) if *made == generation() => Ok(std::borrow::Cow::Owned(t.clone())),
            _ => {
                let t = (self.make)(&self.cell.core()?);
                *again = Some((generation(), t.clone()));
                Ok(std::borrow::Cow::Owned(t))
            }
        }
    }
}

/// A `Space` argument: a `Space` object or a store URL.
pub(crate) fn space_arg(arg: &Bound<'_, PyAny>) -> PyResult<Arc<SpaceCell>> {
    if let Ok(space) = arg.cast::<Space>() {
        return Ok(space.get().cell.clone());
    }
    let url: String = arg.extract()?;
    open_shared(&url).raise_py(arg.py())
}

/// Python's seconds, for a lease or expiry.
pub(crate) fn seconds(py: Python<'_>, what: &str, secs: f64) -> PyResult<Duration> {
    if secs.is_finite() && secs > 0.0 {
        if let Ok(d) = Duration::try_from_secs_f64(secs) {
            return Ok(d);
        }
    }
    Err(crate::errors::new_err(
        py,
        "InvalidArgument",
        format!("{what} must be a positive number of seconds (got {secs})"),
    ))
}

/// A store of named primitives: every process that opens the same URL sees the same
/// `Lock("deploy")`. `mem:` (this process), `shm:NAME`, `sqlite:PATH`, `redis://...`.
#[pyclass(frozen, module = "locksmith")]
#[derive(Debug)]
pub struct Space {
    pub(crate) cell: Arc<SpaceCell>,
}

/// One hold, as `Space.holders()` lists it.
#[pyclass(frozen, get_all, module = "locksmith")]
#[derive(Debug)]
pub struct Holder {
    owner: String,
    host: String,
    pid: u32,
    token: u64,
    since: f64,
    until: Option<f64>,
    count: u32,
    shared: bool,
}

#[pymethods]
impl Holder {
    fn __repr__(&self) -> String {
        format!(
            "<locksmith.Holder {} token={} count={}{}>",
            self.owner,
            self.token,
            self.count,
            if self.shared { " shared" } else { "" }
        )
    }
}

fn epoch(t: std::time::SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[pymethods]
impl Space {
    /// Opens the store at `url`. Opening the same URL again in this process shares the
    /// connection (except `mem:`, which is a new private space each time).
    #[new]
    fn new(py: Python<'_>, url: &str) -> PyResult<Space> {
        Ok(Space {
            cell: open_shared(url).raise_py(py)?,
        })
    }

    /// The default store: `$LOCKSMITH_STORE`, or the per-user SQLite database.
    #[staticmethod]
    fn default(py: Python<'_>) -> PyResult<Space> {
        let url = match std::env::var("LOCKSMITH_STORE") {
            Ok(url) if !url.is_empty() => url,
            _ => locksmith::Space::default_url().raise_py(py)?,
        };
        Space::new(py, &url)
    }

    /// The URL it was opened with.
    #[getter]
    fn url(&self) -> &str {
        self.cell.url()
    }

    /// Who holds `name` now, oldest first.
    fn holders(&self, py: Python<'_>, name: &str) -> PyResult<Vec<Holder>> {
        let space = self.cell.core().raise_py(py)?;
        let list = py.detach(|| space.holders(name)).raise_py(py)?;
        Ok(list
            .into_iter()
            .map(|h| Holder {
                owner: h.owner,
                host: h.host,
                pid: h.pid,
                token: h.token,
                since: epoch(h.since),
                until: h.until.map(epoch),
                count: h.count,
                shared: h.shared,
            })
            .collect())
    }

    /// How many callers wait for `name`.
    fn waiting(&self, py: Python<'_>, name: &str) -> PyResult<usize> {
        let space = self.cell.core().raise_py(py)?;
        py.detach(|| space.waiting(name)).raise_py(py)
    }

    /// Breaks every hold of `name` (for operators); returns how many were broken.
    fn force_release(&self, py: Python<'_>, name: &str) -> PyResult<usize> {
        let space = self.cell.core().raise_py(py)?;
        py.detach(|| space.force_release(name)).raise_py(py)
    }

    /// Drops every primitive tagged `tag` (diskcache's `evict`); returns how many.
    fn evict_tag(&self, py: Python<'_>, tag: &str) -> PyResult<usize> {
        let space = self.cell.core().raise_py(py)?;
        py.detach(|| space.evict_tag(tag)).raise_py(py)
    }

    /// The names the store has state for, sorted.
    fn names(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let space = self.cell.core().raise_py(py)?;
        py.detach(|| space.names()).raise_py(py)
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        let args = PyTuple::new(py, [slf.get().cell.url()])?;
        Ok((slf.get_type().into_any(), args))
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<Space>()
            .is_ok_and(|o| Arc::ptr_eq(&o.get().cell, &self.cell))
    }

    fn __hash__(&self) -> u64 {
        Arc::as_ptr(&self.cell) as usize as u64
    }

    fn __repr__(&self) -> String {
        format!("locksmith.Space({:?})", self.cell.url())
    }
}
