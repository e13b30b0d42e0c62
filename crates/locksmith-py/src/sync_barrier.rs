//! `locksmith.sync.Barrier`: the core's `locksmith::shm::Barrier` placed in a caller's
//! buffer.

use locksmith::shm::Barrier;
use pyo3::prelude::*;
use pyo3::types::PyAny;

use crate::sync::{from_core, place_at, placed_memory, sync_error_of, Memory};
use crate::wait::{detached_checked, SLICE};

/// A cyclic barrier placed in a buffer that threads and processes share.
#[pyclass(frozen, name = "PlacedBarrier", module = "locksmith.sync")]
#[derive(Debug)]
pub struct PlacedBarrier {
    ptr: usize,
    parties: u32,
    shared: bool,
    _memory: Memory,
}

impl PlacedBarrier {
    fn barrier(&self, py: Python<'_>) -> PyResult<Barrier<'_>> {
        Barrier::attach(place_at(self.ptr, Barrier::SIZE)).map_err(|e| barrier_error(py, e))
    }
}

/// A core error as `SyncError`; a broken barrier's is `BrokenBarrierError` (a
/// `SyncError` with EPIPE that is also `threading.BrokenBarrierError`).
fn barrier_error(py: Python<'_>, e: locksmith::Error) -> PyErr {
    match e {
        locksmith::Error::BrokenBarrier { .. } => sync_error_of(
            py,
            "SyncBrokenBarrier",
            "the barrier is broken",
            libc::EPIPE,
        ),
        e => from_core(py, e, false),
    }
}

#[pymethods]
impl PlacedBarrier {
    /// Bytes a Barrier occupies at the start of its buffer.
    #[classattr]
    const SIZE: usize = Barrier::SIZE;

    /// A barrier over `buf` (as Mutex's), or memory of its own; `parties` (1 to 65535)
    /// is what `initialize()` writes (the others read it from the buffer). Call
    /// `initialize()` once, in one process, before use.
    #[new]
    #[pyo3(signature = (buf=None, /, parties=1, *, shared=true))]
    fn new(
        py: Python<'_>,
        buf: Option<&Bound<'_, PyAny>>,
        parties: u32,
        shared: bool,
    ) -> PyResult<Self> {
        let (ptr, memory) = placed_memory(py, buf, Barrier::SIZE, "a Barrier")?;
        Ok(PlacedBarrier {
            ptr,
            parties,
            shared,
            _memory: memory,
        })
    }

    /// Initialises the barrier for its `parties`. Once, across all users.
    fn initialize(&self, py: Python<'_>) -> PyResult<()> {
        Barrier::init(place_at(self.ptr, Barrier::SIZE), self.parties, self.shared)
            .map(|_| ())
            .map_err(|e| from_core(py, e, false))
    }

    /// Destroys it: unusable (EINVAL) until `initialize()` is called again.
    fn destroy(&self, py: Python<'_>) -> PyResult<()> {
        self.barrier(py)?
            .destroy()
            .map_err(|e| from_core(py, e, false))
    }

    /// Waits until all parties have arrived, at most `timeout` seconds (None: for
    /// ever); returns this arrival's index (`parties - 1` for the last). A timeout, an
    /// `abort()`, a `reset()` during the wait, a member process that died or a signal
    /// handler that raised in a waiter breaks the barrier: `BrokenBarrierError`.
    #[pyo3(signature = (*, timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<u32> {
        let timeout = crate::sync::timeout_secs(py, timeout)?;
        let barrier = self.barrier(py)?;
        let (index, raised) = detached_checked(py, SLICE, || barrier.wait(timeout));
        if let Some(e) = raised {
            return Err(e);
        }
        index.map_err(|e| barrier_error(py, e))
    }

    /// Breaks the barrier: waiters and later `wait()`s get `BrokenBarrierError` until
    /// `reset()`.
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        self.barrier(py)?
            .abort()
            .map_err(|e| from_core(py, e, false))
    }

    /// Returns the barrier to its initial state (waiters get `BrokenBarrierError`).
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        self.barrier(py)?
            .reset()
            .map_err(|e| from_core(py, e, false))
    }

    /// Stops counting the calling process as a member: its exit no longer breaks the
    /// barrier for the others.
    fn leave(&self, py: Python<'_>) -> PyResult<()> {
        self.barrier(py)?
            .leave()
            .map_err(|e| from_core(py, e, false))
    }

    /// The number of parties.
    #[getter]
    fn parties(&self, py: Python<'_>) -> PyResult<u32> {
        Ok(self.barrier(py)?.parties())
    }

    /// How many parties wait now.
    #[getter]
    fn n_waiting(&self, py: Python<'_>) -> PyResult<u32> {
        Ok(self.barrier(py)?.n_waiting())
    }

    /// Whether the barrier is broken.
    #[getter]
    fn broken(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.barrier(py)?.is_broken())
    }
}
