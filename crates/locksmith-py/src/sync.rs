//! runtime.sync's `Mutex`, placed in a caller's buffer: the core's
//! `locksmith::shm::Mutex` over any writable C-contiguous Python buffer, kept exported
//! while the object lives (runtime.sync kept a bare pointer and crashed when the buffer
//! went away first).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use locksmith::shm::{
    BoundedSemaphore, Event, Mutex, MutexOptions, Place, Region, Semaphore, SemaphoreOptions, ALIGN,
};
use pyo3::prelude::*;
use pyo3::types::PyAny;

use crate::wait::SLICE;

/// The memory a placed primitive lives in: a caller's buffer (held exported) or one of
/// its own.
#[derive(Debug)]
pub(crate) enum Memory {
    /// The caller's buffer, as a ctypes array made `from_buffer`: holding it holds
    /// the buffer's export, which keeps its memory where it is. (The limited API has
    /// no buffer functions before 3.11, and the wheel is for 3.10 and later.)
    Buffer(#[allow(dead_code)] Py<PyAny>),
    /// Its own anonymous shared mapping (inherited by forked children).
    Own(#[allow(dead_code)] Region),
}

/// A writable, C-contiguous buffer of at least `size` bytes, aligned for the placed
/// primitives: its address and the export that keeps it there.
pub(crate) fn placed_memory(
    py: Python<'_>,
    buf: Option<&Bound<'_, PyAny>>,
    size: usize,
    what: &str,
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
        return Err(einval(format!(
            "the buffer is read-only: {what} needs a writable one"
        )));
    }
    if !view.getattr("c_contiguous")?.is_truthy()? {
        return Err(einval("the buffer is not C-contiguous".into()));
    }
    let len: usize = view.getattr("nbytes")?.extract()?;
    if len < size {
        return Err(einval(format!(
            "the buffer has {len} bytes; {what} needs at least SIZE = {size}"
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
            "the buffer's address is not a multiple of {ALIGN}: place {what} at an aligned offset"
        )));
    }
    Ok((ptr, Memory::Buffer(array.unbind())))
}

/// `SyncError(message, errno, errno=..., **context)`.
pub(crate) fn sync_error(py: Python<'_>, message: &str, errno: i32) -> PyErr {
    sync_error_of(py, "SyncError", message, errno)
}

/// [`sync_error`] of `SyncError` or one of its subclasses.
pub(crate) fn sync_error_of(py: Python<'_>, class: &str, message: &str, errno: i32) -> PyErr {
    let made = (|| -> PyResult<PyErr> {
        let cls = py.import("locksmith._locksmith")?.getattr(class)?;
        Ok(PyErr::from_value(cls.call1((message, errno))?))
    })();
    made.unwrap_or_else(|e| e)
}

pub(crate) fn from_core(py: Python<'_>, e: locksmith::Error, trying: bool) -> PyErr {
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
    pub(crate) died: AtomicBool,
    /// The mutex, once a call found it initialised: later calls skip the header check,
    /// since the core's fast paths fail on a destroyed mutex and its slow paths check
    /// the header again (so `destroy()` still makes every call EINVAL).
    attached: OnceLock<Mutex<'static>>,
    _memory: Memory,
}

impl PlacedMutex {
    /// The mutex's bytes, for as long as the caller chooses: every caller keeps the
    /// place (and what it makes of it) inside `self`, which keeps the memory.
    fn place<'a>(&self) -> Place<'a> {
        // SAFETY: `ptr` is the start of at least `Mutex::SIZE` writable bytes that
        // `_memory` keeps mapped and in place (a held buffer export, or our own
        // mapping) for as long as `self`; the place and the mutex made of it stay in
        // `self` (or in a borrow of it). Rust code touches those bytes only through the
        // placed primitive's atomics; other processes (and Python code) writing them is
        // the shared-memory contract every placed primitive has.
        let place = unsafe { Place::from_raw(self.ptr as *mut u8, Mutex::SIZE) };
        place.unwrap_or_else(|_| Place::from(&mut [][..]))
    }

    #[inline]
    pub(crate) fn mutex(&self, py: Python<'_>) -> PyResult<Mutex<'_>> {
        if let Some(m) = self.attached.get() {
            return Ok(*m);
        }
        let m = Mutex::attach(self.place()).map_err(|e| from_core(py, e, false))?;
        Ok(*self.attached.get_or_init(|| m))
    }

    /// Acquires with runtime.sync's `timeout` (seconds; `None`: for ever; `0`: try).
    /// The free mutex is taken before the timeout is converted: only a wait needs it.
    #[inline]
    fn acquire_impl(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        if let Some(t) = timeout {
            if t.is_nan() || t < 0.0 || t.is_infinite() {
                // The core's message for a bad timeout; nothing is tried.
                let e = locksmith::shm::timeout_from_secs(t).err();
                return Err(from_core(py, e.unwrap_or(locksmith::Error::Timeout), false));
            }
        }
        let mutex = self.mutex(py)?;
        match mutex.acquire(Some(Duration::ZERO)) {
            Ok(got) => {
                self.died
                    .store(got.previous_owner_died(), Ordering::Relaxed);
                Ok(())
            }
            Err(locksmith::Error::Timeout) if timeout != Some(0.0) => {
                self.acquire_wait(py, mutex, timeout)
            }
            Err(e) => Err(from_core(py, e, true)),
        }
    }

    /// The contended acquisition: waits in slices without the GIL, running signal
    /// handlers between them.
    #[cold]
    fn acquire_wait(&self, py: Python<'_>, mutex: Mutex<'_>, timeout: Option<f64>) -> PyResult<()> {
        let timeout = match timeout {
            None => None,
            Some(t) => {
                Some(locksmith::shm::timeout_from_secs(t).map_err(|e| from_core(py, e, false))?)
            }
        };
        if timeout == Some(Duration::ZERO) {
            // Below a nanosecond: only a try, which found it held.
            return Err(from_core(py, locksmith::Error::Timeout, true));
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let got = loop {
            let slice = match deadline {
                None => SLICE,
                Some(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
            };
            match py.detach(|| mutex.acquire(Some(slice))) {
                Ok(got) => break got,
                Err(locksmith::Error::Timeout) if deadline.is_none_or(|d| Instant::now() < d) => {}
                Err(e) => return Err(from_core(py, e, false)),
            }
            // Nothing is held here: a signal handler that raises leaves cleanly.
            py.check_signals()?;
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
        let (ptr, memory) = placed_memory(py, buf, Mutex::SIZE, "a Mutex")?;
        Ok(PlacedMutex {
            ptr,
            shared,
            recursive,
            died: AtomicBool::new(false),
            attached: OnceLock::new(),
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

/// A placed primitive's `timeout` in seconds (`None`: for ever); EINVAL if negative or
/// not finite.
pub(crate) fn timeout_secs(py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Duration>> {
    timeout
        .map(|t| locksmith::shm::timeout_from_secs(t).map_err(|e| from_core(py, e, false)))
        .transpose()
}

/// A place over `len` bytes at `ptr`, kept mapped by the object that owns `ptr`.
pub(crate) fn place_at<'a>(ptr: usize, len: usize) -> Place<'a> {
    // SAFETY: every caller passes the address of at least `len` writable bytes that its
    // `Memory` (a held buffer export, or an own mapping) keeps mapped and in place for
    // as long as the caller, which the place's lifetime is tied to by the caller's
    // borrow. The bytes are touched only through the placed primitive's atomics.
    let place = unsafe { Place::from_raw(ptr as *mut u8, len) };
    place.unwrap_or_else(|_| Place::from(&mut [][..]))
}

/// A counting semaphore placed in a buffer (`bounded=True`: releases above the
/// initial value are refused). Permits a dead process held come back.
#[pyclass(frozen, name = "PlacedSemaphore", module = "locksmith.sync")]
#[derive(Debug)]
pub struct PlacedSemaphore {
    ptr: usize,
    value: u32,
    shared: bool,
    bounded: bool,
    _memory: Memory,
}

impl PlacedSemaphore {
    fn semaphore(&self, py: Python<'_>) -> PyResult<Semaphore<'_>> {
        Semaphore::attach(place_at(self.ptr, Semaphore::SIZE)).map_err(|e| from_core(py, e, false))
    }
}

#[pymethods]
impl PlacedSemaphore {
    /// Bytes a Semaphore occupies at the start of its buffer.
    #[classattr]
    const SIZE: usize = Semaphore::SIZE;

    /// A semaphore of `value` permits over `buf` (as Mutex's), or memory of its own.
    /// Call `initialize()` once, in one process, before use.
    #[new]
    #[pyo3(signature = (buf=None, /, value=1, *, shared=true, bounded=false))]
    fn new(
        py: Python<'_>,
        buf: Option<&Bound<'_, PyAny>>,
        value: u32,
        shared: bool,
        bounded: bool,
    ) -> PyResult<Self> {
        let (ptr, memory) = placed_memory(py, buf, Semaphore::SIZE, "a Semaphore")?;
        Ok(PlacedSemaphore {
            ptr,
            value,
            shared,
            bounded,
            _memory: memory,
        })
    }

    /// Initialises the semaphore with its `value` permits. Once, across all users.
    fn initialize(&self, py: Python<'_>) -> PyResult<()> {
        let place = place_at(self.ptr, Semaphore::SIZE);
        let options = SemaphoreOptions::new().shared(self.shared);
        let made = if self.bounded {
            BoundedSemaphore::init_with(place, self.value, &options).map(|_| ())
        } else {
            Semaphore::init_with(place, self.value, &options).map(|_| ())
        };
        made.map_err(|e| from_core(py, e, false))
    }

    /// Destroys it: unusable (EINVAL) until `initialize()` is called again.
    fn destroy(&self, py: Python<'_>) -> PyResult<()> {
        self.semaphore(py)?
            .destroy()
            .map_err(|e| from_core(py, e, false))
    }

    /// Takes a permit: `timeout=None` waits for ever, `0` only tries (EBUSY), a
    /// positive number waits at most that many seconds (ETIMEDOUT).
    #[pyo3(signature = (*, timeout=Some(1.0)), text_signature = "($self, *, timeout=1.0)")]
    fn acquire(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let timeout = match timeout {
            None => None,
            Some(t) => {
                Some(locksmith::shm::timeout_from_secs(t).map_err(|e| from_core(py, e, false))?)
            }
        };
        let sem = self.semaphore(py)?;
        let got = crate::wait::sliced(
            py,
            timeout,
            || Ok(sem.try_acquire()?.then_some(())),
            |slice| Ok(sem.acquire(Some(slice))?.then_some(())),
        )
        .map_err(|e| {
            // Re-type the core's errors as SyncError.
            let errno = e
                .value(py)
                .getattr("errno")
                .ok()
                .and_then(|v| v.extract::<i32>().ok());
            if crate::errors::is_locksmith(py, &e) {
                sync_error(py, &e.to_string(), errno.unwrap_or(libc::EIO))
            } else {
                e // a signal handler's exception
            }
        })?;
        match got {
            Some(()) => Ok(()),
            None if timeout == Some(Duration::ZERO) => {
                Err(sync_error(py, "no permit is free", libc::EBUSY))
            }
            None => Err(sync_error(py, "timed out", libc::ETIMEDOUT)),
        }
    }

    /// Returns a permit (EOVERFLOW past a bounded semaphore's initial value).
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        self.semaphore(py)?
            .release()
            .map_err(|e| from_core(py, e, false))
    }

    /// The free permits now.
    #[getter]
    fn value(&self, py: Python<'_>) -> PyResult<u32> {
        Ok(self.semaphore(py)?.value())
    }

    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        slf.get().acquire(slf.py(), Some(1.0))?;
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

/// An event placed in a buffer: a waiter sees every `set()` made during its wait.
#[pyclass(frozen, name = "PlacedEvent", module = "locksmith.sync")]
#[derive(Debug)]
pub struct PlacedEvent {
    ptr: usize,
    shared: bool,
    _memory: Memory,
}

impl PlacedEvent {
    fn event(&self, py: Python<'_>) -> PyResult<Event<'_>> {
        Event::attach(place_at(self.ptr, Event::SIZE)).map_err(|e| from_core(py, e, false))
    }
}

#[pymethods]
impl PlacedEvent {
    /// Bytes an Event occupies at the start of its buffer.
    #[classattr]
    const SIZE: usize = Event::SIZE;

    /// An event over `buf` (as Mutex's), or memory of its own. Call `initialize()`
    /// once, in one process, before use.
    #[new]
    #[pyo3(signature = (buf=None, /, *, shared=true))]
    fn new(py: Python<'_>, buf: Option<&Bound<'_, PyAny>>, shared: bool) -> PyResult<Self> {
        let (ptr, memory) = placed_memory(py, buf, Event::SIZE, "an Event")?;
        Ok(PlacedEvent {
            ptr,
            shared,
            _memory: memory,
        })
    }

    /// Initialises the event (clear). Once, across all users.
    fn initialize(&self, py: Python<'_>) -> PyResult<()> {
        Event::init(place_at(self.ptr, Event::SIZE), self.shared)
            .map(|_| ())
            .map_err(|e| from_core(py, e, false))
    }

    /// Destroys it: unusable (EINVAL) until `initialize()` is called again.
    fn destroy(&self, py: Python<'_>) -> PyResult<()> {
        self.event(py)?
            .destroy()
            .map_err(|e| from_core(py, e, false))
    }

    /// Sets the flag and wakes every waiter.
    fn set(&self, py: Python<'_>) -> PyResult<()> {
        self.event(py)?.set().map_err(|e| from_core(py, e, false))
    }

    /// Clears the flag.
    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        self.event(py)?.clear().map_err(|e| from_core(py, e, false))
    }

    /// Whether the flag is set.
    fn is_set(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.event(py)?.is_set())
    }

    /// Waits until the flag is set, at most `timeout` seconds (None: for ever);
    /// returns whether it was set.
    #[pyo3(signature = (*, timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let timeout = match timeout {
            None => None,
            Some(t) => {
                Some(locksmith::shm::timeout_from_secs(t).map_err(|e| from_core(py, e, false))?)
            }
        };
        let event = self.event(py)?;
        if event.is_set() {
            return Ok(true);
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let slice = match deadline {
                None => SLICE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    left.min(SLICE)
                }
            };
            if py
                .detach(|| event.wait(Some(slice)))
                .map_err(|e| from_core(py, e, false))?
            {
                return Ok(true);
            }
            py.check_signals()?;
        }
    }
}
