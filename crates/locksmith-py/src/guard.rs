//! `Guard`: one hold (of a lock, a permit, a side of an RwLock), and `Holds`, the holds
//! a primitive object took for each thread, so that `lock.acquire()` followed by
//! `lock.release()` works as it does with threading's locks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::ThreadId;

use pyo3::prelude::*;
use pyo3::types::PyAny;

use crate::errors::{new_err, Raise};
use crate::wait::generation;

/// A hold, shared by its `Guard` object and its primitive's [`Holds`].
#[derive(Debug)]
pub(crate) struct Slot {
    /// The core guard; taken out while a condition waits with it. The mutex is never
    /// held across a wait, nor while the GIL is being taken.
    guard: Mutex<Option<locksmith::Guard>>,
    /// Not yet released.
    live: AtomicBool,
    /// The fork generation that took it: a child's copy is inert.
    generation: u64,
}

impl Slot {
    pub(crate) fn new(guard: locksmith::Guard) -> Arc<Slot> {
        Arc::new(Slot {
            guard: Mutex::new(Some(guard)),
            live: AtomicBool::new(true),
            generation: generation(),
        })
    }

    /// The hold, if it is still this process's to use.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Option<locksmith::Guard>> {
        let mut g = self.guard.lock().unwrap_or_else(|p| p.into_inner());
        if self.generation != generation() {
            // Inherited through fork: the parent's hold, never ours to release.
            if let Some(inherited) = g.take() {
                std::mem::forget(inherited);
            }
        }
        g
    }

    /// Whether this slot still holds (as far as this process knows).
    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::Relaxed) && self.generation == generation()
    }

    /// Takes the core guard out, to wait with it (a condition); put it back with
    /// [`Slot::put_back`].
    pub(crate) fn take_for_wait(&self) -> Option<locksmith::Guard> {
        self.lock().take()
    }

    /// Puts back the guard [`Slot::take_for_wait`] took.
    pub(crate) fn put_back(&self, guard: locksmith::Guard) {
        *self.lock() = Some(guard);
    }

    /// Takes the hold out to release it elsewhere (an async release); `None` if it was
    /// released already.
    pub(crate) fn take_for_release(&self) -> Option<locksmith::Guard> {
        if !self.live.swap(false, Ordering::Relaxed) {
            return None;
        }
        self.lock().take()
    }

    /// Releases the hold (without the GIL: on a network store it is a round trip).
    /// Releasing twice, or in a forked child, does nothing.
    pub(crate) fn release(&self, py: Python<'_>) -> PyResult<()> {
        if !self.live.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let taken = self.lock().take();
        match taken {
            Some(guard) => py.detach(|| guard.release()).raise_py(py),
            None => Ok(()),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.generation != generation() {
            let inherited = self
                .guard
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            std::mem::forget(inherited);
        }
    }
}

/// The holds a primitive object took, newest last, with the thread that took each.
#[derive(Debug, Default)]
pub(crate) struct Holds(Mutex<Vec<(ThreadId, Arc<Slot>)>>);

impl Holds {
    fn list(&self) -> MutexGuard<'_, Vec<(ThreadId, Arc<Slot>)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a new hold of the calling thread and returns its `Guard` object.
    pub(crate) fn push(&self, guard: locksmith::Guard) -> Guard {
        let slot = Slot::new(guard);
        let g = Guard::new(&slot);
        let mut list = self.list();
        list.retain(|(_, s)| s.is_live());
        list.push((std::thread::current().id(), slot));
        g
    }

    /// Takes the calling thread's newest live hold, or, with `any_thread`, the newest
    /// live hold of any thread if the caller has none.
    pub(crate) fn pop(&self, any_thread: bool) -> Option<Arc<Slot>> {
        let me = std::thread::current().id();
        let mut list = self.list();
        list.retain(|(_, s)| s.is_live());
        let at = list
            .iter()
            .rposition(|(t, _)| *t == me)
            .or_else(|| any_thread.then(|| list.len().checked_sub(1)).flatten())?;
        Some(list.remove(at).1)
    }

    /// The calling thread's newest live hold, left in place.
    pub(crate) fn mine(&self) -> Option<Arc<Slot>> {
        let me = std::thread::current().id();
        let list = self.list();
        list.iter()
            .rev()
            .find(|(t, s)| *t == me && s.is_live())
            .map(|(_, s)| s.clone())
    }

    /// How many live holds the calling thread has.
    pub(crate) fn count_mine(&self) -> usize {
        let me = std::thread::current().id();
        self.list()
            .iter()
            .filter(|(t, s)| *t == me && s.is_live())
            .count()
    }
}

/// One hold: the fencing token, whether the previous holder died, and `release()`.
/// A context manager that releases on exit. Dropping the object does not release the
/// hold while the primitive object that took it lives (as with threading's locks);
/// release it, or use `with`.
#[pyclass(frozen, module = "locksmith")]
#[derive(Debug)]
pub struct Guard {
    pub(crate) slot: Arc<Slot>,
    token: u64,
    died: bool,
    name: String,
}

impl Guard {
    pub(crate) fn new(slot: &Arc<Slot>) -> Guard {
        let g = slot.lock();
        let (token, died, name) = match g.as_ref() {
            Some(g) => (g.token(), g.previous_owner_died(), g.name().to_owned()),
            None => (0, false, String::new()),
        };
        drop(g);
        Guard {
            slot: slot.clone(),
            token,
            died,
            name,
        }
    }
}

#[pymethods]
impl Guard {
    /// The fencing token: greater than every earlier hold's of the same name.
    #[getter]
    fn token(&self) -> u64 {
        self.token
    }

    /// Whether the previous holder died (or its lease lapsed) while holding.
    #[getter]
    fn previous_owner_died(&self) -> bool {
        self.died
    }

    /// The primitive's name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Whether this process still holds it (it has not been released here).
    #[getter]
    fn held(&self) -> bool {
        self.slot.is_live()
    }

    /// Asks the store whether the hold still stands (false once its lease lapsed or it
    /// was broken).
    fn is_held(&self, py: Python<'_>) -> PyResult<bool> {
        let g = self.slot.lock();
        match g.as_ref() {
            Some(guard) => guard.is_held().raise_py(py),
            None => Ok(false),
        }
    }

    /// Releases the hold. Raises `LeaseLost` if it had already ended. Releasing a
    /// released guard does nothing.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        self.slot.release(py)
    }

    /// Releases the hold from async code: an awaitable that resolves when the store
    /// answered (a round trip on a network store, which the event loop does not wait
    /// for).
    fn release_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.slot.take_for_release() {
            Some(guard) => crate::aio::spawn(py, guard.release_async(), |py, ()| Ok(py.None())),
            None => crate::aio::ready(py, py.None()),
        }
    }

    fn __aenter__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        crate::aio::ready(py, slf.into_any().unbind())
    }

    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        _exc_type: &Bound<'py, PyAny>,
        _exc: &Bound<'py, PyAny>,
        _tb: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.release_async(py)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        self.slot.release(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let state = if self.slot.is_live() {
            "held"
        } else {
            "released"
        };
        format!(
            "<locksmith.Guard {:?} token={} {state}{}>",
            self.name,
            self.token,
            if self.died {
                " previous_owner_died"
            } else {
                ""
            }
        )
    }
}

/// `NotHeld` for releasing a primitive the caller holds nothing of.
pub(crate) fn not_held(py: Python<'_>, name: &str) -> PyErr {
    new_err(
        py,
        "NotHeld",
        format!("'{name}' is not held by this thread"),
    )
}
