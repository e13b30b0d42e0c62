//! `locksmith.sync.Condition`: the core's `locksmith::shm::Condition` placed in a
//! caller's buffer, used with a placed `Mutex` (the caller's, or one of its own).

use std::sync::atomic::Ordering;
use std::time::Instant;

use locksmith::shm::Condition;
use pyo3::prelude::*;
use pyo3::types::{PyAny, PyDict};

use crate::sync::{from_core, place_at, placed_memory, Memory, PlacedMutex};
use crate::wait::{detached_checked, SLICE};

/// A condition variable placed in a buffer that threads and processes share.
#[pyclass(frozen, name = "PlacedCondition", module = "locksmith.sync")]
#[derive(Debug)]
pub struct PlacedCondition {
    ptr: usize,
    shared: bool,
    mutex: Py<PlacedMutex>,
    _memory: Memory,
}

impl PlacedCondition {
    fn condition(&self, py: Python<'_>) -> PyResult<Condition<'_>> {
        Condition::attach(place_at(self.ptr, Condition::SIZE)).map_err(|e| from_core(py, e, false))
    }

    /// One wait of at most `timeout` seconds; whether it was notified.
    fn wait_once(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let timeout = crate::sync::timeout_secs(py, timeout)?;
        let cond = self.condition(py)?;
        let mutex_obj = self.mutex.get();
        let mutex = mutex_obj.mutex(py)?;
        // The wait keeps one futex sequence throughout (no notify is lost between
        // signal checks); a handler that raises ends it with the mutex taken back.
        let (woken, raised) = detached_checked(py, SLICE, || cond.wait_held(&mutex, timeout));
        let woken = woken.map(|(woken, got)| {
            mutex_obj
                .died
                .store(got.previous_owner_died(), Ordering::Relaxed);
            woken
        });
        if let Some(e) = raised {
            return Err(e);
        }
        woken.map_err(|e| from_core(py, e, false))
    }
}

#[pymethods]
impl PlacedCondition {
    /// Bytes a Condition occupies at the start of its buffer (its mutex is elsewhere).
    #[classattr]
    const SIZE: usize = Condition::SIZE;

    /// A condition over `buf` (as Mutex's), or memory of its own, used with `mutex` (a
    /// placed `Mutex`; `None`: a recursive one of its own memory, for threads and
    /// forked children). Call `initialize()` once, in one process, before use.
    #[new]
    #[pyo3(signature = (buf=None, /, mutex=None, *, shared=true))]
    fn new(
        py: Python<'_>,
        buf: Option<&Bound<'_, PyAny>>,
        mutex: Option<Py<PlacedMutex>>,
        shared: bool,
    ) -> PyResult<Self> {
        let (ptr, memory) = placed_memory(py, buf, Condition::SIZE, "a Condition")?;
        let mutex = match mutex {
            Some(m) => m,
            None => {
                let kwargs = PyDict::new(py);
                kwargs.set_item("shared", shared)?;
                let m = py
                    .get_type::<PlacedMutex>()
                    .call((), Some(&kwargs))?
                    .cast_into::<PlacedMutex>()?;
                m.call_method0("initialize")?;
                m.unbind()
            }
        };
        Ok(PlacedCondition {
            ptr,
            shared,
            mutex,
            _memory: memory,
        })
    }

    /// Initialises the condition in its buffer (not its mutex). Once, across all users.
    fn initialize(&self, py: Python<'_>) -> PyResult<()> {
        Condition::init(place_at(self.ptr, Condition::SIZE), self.shared)
            .map(|_| ())
            .map_err(|e| from_core(py, e, false))
    }

    /// Destroys it: unusable (EINVAL) until `initialize()` is called again; waiters
    /// wake and get EINVAL.
    fn destroy(&self, py: Python<'_>) -> PyResult<()> {
        self.condition(py)?
            .destroy()
            .map_err(|e| from_core(py, e, false))
    }

    /// The mutex it is used with.
    #[getter]
    fn mutex(&self, py: Python<'_>) -> Py<PlacedMutex> {
        self.mutex.clone_ref(py)
    }

    /// Acquires the mutex (as `Mutex.acquire`).
    #[pyo3(signature = (*, timeout=Some(1.0)), text_signature = "($self, *, timeout=1.0)")]
    fn acquire(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let kwargs = PyDict::new(py);
        kwargs.set_item("timeout", timeout)?;
        self.mutex
            .bind(py)
            .call_method("acquire", (), Some(&kwargs))?;
        Ok(())
    }

    /// Releases the mutex (as `Mutex.release`).
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        self.mutex.bind(py).call_method0("release")?;
        Ok(())
    }

    /// Releases the mutex (every level the calling thread holds; EPERM if it holds
    /// none), waits until notified or `timeout` seconds pass (None: for ever), and
    /// takes the mutex back. Whether it was notified. Wake-ups may be spurious: wait
    /// in a loop on a predicate, or use `wait_for`.
    #[pyo3(signature = (*, timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        self.wait_once(py, timeout)
    }

    /// Waits until `predicate()` is true or `timeout` seconds pass (None: for ever),
    /// holding the mutex when it calls it; returns its last value.
    #[pyo3(signature = (predicate, *, timeout=None))]
    fn wait_for<'py>(
        &self,
        py: Python<'py>,
        predicate: &Bound<'py, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let limit = crate::sync::timeout_secs(py, timeout)?;
        let deadline = limit.map(|t| Instant::now() + t);
        loop {
            let value = predicate.call0()?;
            if value.is_truthy()? {
                return Ok(value);
            }
            let left = match deadline {
                None => None,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(value);
                    }
                    Some(left.as_secs_f64())
                }
            };
            self.wait_once(py, left)?;
        }
    }

    /// Wakes at most `n` waiters (maybe more when waiters are just arriving).
    #[pyo3(signature = (n=1))]
    fn notify(&self, py: Python<'_>, n: u32) -> PyResult<()> {
        self.condition(py)?
            .notify(n)
            .map_err(|e| from_core(py, e, false))
    }

    /// Wakes every waiter.
    fn notify_all(&self, py: Python<'_>) -> PyResult<()> {
        self.condition(py)?
            .notify_all()
            .map_err(|e| from_core(py, e, false))
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
