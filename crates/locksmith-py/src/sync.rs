//! runtime.sync's `Mutex`, placed in a caller's buffer: the core's
//! `locksmith::shm::Mutex` over any writable C-contiguous Python buffer, kept exported
//! while the object lives (runtime.sync kept a bare pointer and crashed when the buffer
//! went away first).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use locksmith::shm::{Mutex, MutexOptions, Place, Region, ALIGN};
use pyo3::prelude::*;
use pyo3::types::PyAny;

use crate::wait::SLICE;

/// The memory a placed primitive lives in: a caller's buffer (held exported) or one of
/// its own.
#[derive(Debug)]
enum Memory {
    /// The caller's buffer, as a ctypes array made `from_buffer`: holding it holds
    /// the buffer's export, which keeps its memory where it is. (The limited API has
    /// no buffer functions before 3.11, and the wheel is for 3.10 and later.)
    Buffer(#[allow(dead_code)] Py<PyAny>),
    /// Its own anonymous shared mapping (inherited by forked children).
    Own(#[allow(dead_code)] Region),
}

/// A writable, C-contiguous buffer of at least `size` bytes, aligned for the placed
/// primitives: its address and the export that keeps it there.
fn placed_memory(
    py: Python<'_>,
    buf: Option<&Bound<'_, PyAny>>,
    size: usize,
) -> PyResult<(usize, Memory)> {
    let Some(buf) = buf.filter(|b| !b.is_none()) else {
        let region =
            Region::anonymous(size).map_err(|e| sync_error(py, &e.to_string(), e.errno()))?;
        let ptr = region.whole().as_ptr() as usize;
        return Ok((ptr, Memory::Own(region)));
    };
    let einval = |msg: String| sync_error(py, &msg, libc::EINVAL);
    let view = py
        .import("builtins")?
        .getattr("memoryview")?
        .call1((buf,))
        .map_err(|e| einval(format!("not a buffer: {e}")))?;
    if view.getattr("readonly")?.is_truthy()? {
        return Err(einval(
            "the buffer is read-only: a Mutex needs a writable one".into(),
        ));
    }
    if !view.getattr("c_contiguous")?.is_truthy()? {
        return Err(einval("the buffer is not C-contiguous".into()));
    }
    let len: usize = view.getattr("nbytes")?.extract()?;
    if len < size {
        return Err(einval(format!(
            "the buffer has {len} bytes; a Mutex needs at least Mutex.SIZE = {size}"
        )));
    }
    let bytes = view.call_method1("cast", ("B",))?;
    let ctypes = py.import("ctypes")?;
    let array = ctypes
        .getattr("c_char")?
        .call_method1("__mul__", (len,))?
        .call_method1("from_buffer", (bytes,))?;
    let ptr: usize = ctypes.getattr("addressof")?.call1((&array,))?.extract()?;
    if !ptr.is_multiple_of(ALIGN) {
        return Err(einval(format!(
            "the buffer's address is not a multiple of {ALIGN}: place the Mutex at an aligned offset"
        )));
    }
    Ok((ptr, Memory::Buffer(array.unbind())))
}

/// `SyncError(message, errno, errno=..., **context)`.
pub(crate) fn sync_error(py: Python<'_>, message: &str, errno: i32) -> PyErr {
    let made = (|| -> PyResult<PyErr> {
        let cls = py.import("locksmith._locksmith")?.getattr("SyncError")?;
        Ok(PyErr::from_value(cls.call1((message, errno))?))
    })();
    made.unwrap_or_else(|e| e)
}

fn from_core(py: Python<'_>, e: locksmith::Error, trying: bool) -> PyErr {
    match e {
        locksmith::Error::Timeout if trying => {
            sync_error(py, "the mutex is held by another thread", libc::EBUSY)
        }
        e => sync_error(py, &e.to_string(), e.errno()),
    }
}

/// runtime.sync's mutex, placed in a buffer that threads and processes share.
#[pyclass(frozen, name = "Mutex", module = "locksmith.sync")]
#[derive(Debug)]
pub struct PlacedMutex {
    ptr: usize,
    shared: bool,
    recursive: bool,
    died: AtomicBool,
    _memory: Memory,
}

impl PlacedMutex {
    fn place(&self) -> Place<'_> {
        // SAFETY: `ptr` is the start of at least `Mutex::SIZE` writable bytes that
        // `_memory` keeps mapped and in place (a held buffer export, or our own
        // mapping) for as long as `self`, which the returned place borrows. Rust code
        // touches those bytes only through the placed primitive's atomics; other
        // processes (and Python code) writing them is the shared-memory contract every
        // placed primitive has.
        let place = unsafe { Place::from_raw(self.ptr as *mut u8, Mutex::SIZE) };
        place.unwrap_or_else(|_| Place::from(&mut [][..]))
    }

    fn mutex(&self, py: Python<'_>) -> PyResult<Mutex<'_>> {
        Mutex::attach(self.place()).map_err(|e| from_core(py, e, false))
    }

    fn acquire_impl(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let timeout = match timeout {
            None => None,
            Some(t) => {
                Some(locksmith::shm::timeout_from_secs(t).map_err(|e| from_core(py, e, false))?)
            }
        };
        let mutex = self.mutex(py)?;
        let first = match mutex.acquire(Some(Duration::ZERO)) {
            Err(locksmith::Error::Timeout) if timeout != Some(Duration::ZERO) => None,
            Err(e) => return Err(from_core(py, e, true)),
            Ok(got) => Some(got),
        };
        let got = match first {
            Some(got) => got,
            None => {
                let deadline = timeout.map(|t| Instant::now() + t);
                loop {
                    let slice = match deadline {
                        None => SLICE,
                        Some(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
                    };
                    match py.detach(|| mutex.acquire(Some(slice))) {
                        Ok(got) => break got,
                        Err(locksmith::Error::Timeout)
                            if deadline.is_none_or(|d| Instant::now() < d) => {}
                        Err(e) => return Err(from_core(py, e, false)),
                    }
                    // Nothing is held here: a signal handler that raises leaves cleanly.
                    py.check_signals()?;
                }
            }
        };
        self.died
            .store(got.previous_owner_died(), Ordering::Relaxed);
        Ok(())
    }
}

#[pymethods]
impl PlacedMutex {
    /// Bytes a Mutex occupies at the start of its buffer.
    #[classattr]
    const SIZE: usize = Mutex::SIZE;

    /// A mutex over `buf` (any writable C-contiguous buffer of at least `SIZE` bytes,
    /// 8-byte aligned), or over memory of its own if `buf` is None. Call
    /// `initialize()` once, in one process, before use.
    #[new]
    #[pyo3(signature = (buf=None, /, *, shared=true, recursive=true))]
    fn new(
        py: Python<'_>,
        buf: Option<&Bound<'_, PyAny>>,
        shared: bool,
        recursive: bool,
    ) -> PyResult<Self> {
        let (ptr, memory) = placed_memory(py, buf, Mutex::SIZE)?;
        Ok(PlacedMutex {
            ptr,
            shared,
            recursive,
            died: AtomicBool::new(false),
            _memory: memory,
        })
    }

    /// Initialises the mutex in its buffer (unlocked). Once, across all users.
    fn initialize(&self, py: Python<'_>) -> PyResult<()> {
        let options = MutexOptions::new()
            .shared(self.shared)
            .recursive(self.recursive);
        Mutex::init(self.place(), &options)
            .map(|_| ())
            .map_err(|e| from_core(py, e, false))
    }

    /// Destroys the mutex: it is unusable (EINVAL) until `initialize()` is called again.
    fn destroy(&self, py: Python<'_>) -> PyResult<()> {
        self.mutex(py)?
            .destroy()
            .map_err(|e| from_core(py, e, false))
    }

    /// Acquires: `timeout=None` waits for ever, `0` only tries (EBUSY if held), a
    /// positive number waits at most that many seconds (ETIMEDOUT).
    #[pyo3(signature = (*, timeout=Some(1.0)), text_signature = "($self, *, timeout=1.0)")]
    fn acquire(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        self.acquire_impl(py, timeout)
    }

    /// Releases one acquisition of the calling thread (EPERM if it holds none).
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        self.mutex(py)?
            .release()
            .map_err(|e| from_core(py, e, false))
    }

    /// Whether the calling thread's last acquisition took the mutex over from an owner
    /// that died holding it (EOWNERDEAD): what it protects may be half-updated.
    #[getter]
    fn previous_owner_died(&self) -> bool {
        self.died.load(Ordering::Relaxed)
    }

    #[getter]
    fn shared(&self) -> bool {
        self.shared
    }

    #[getter]
    fn recursive(&self) -> bool {
        self.recursive
    }

    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        slf.get().acquire_impl(slf.py(), Some(1.0))?;
        Ok(slf)
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        self.release(py)?;
        Ok(false)
    }
}
