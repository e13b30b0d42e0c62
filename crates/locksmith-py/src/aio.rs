//! The async forms: a core future runs on a runtime this module owns, and completes an
//! asyncio future through `loop.call_soon_threadsafe`, so the event loop never blocks
//! and needs no helper library. A cancelled asyncio future aborts the core future
//! (which leaves the queue); a grant that raced the cancel is released, never leaked.

use std::future::Future;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyAny;

use crate::errors::to_py;
use crate::wait::generation;

static RUNTIME: Mutex<Option<(u64, &'static tokio::runtime::Runtime)>> = Mutex::new(None);

/// The module's runtime in this process (made again in a forked child, whose copy has
/// no threads; the parent's copy is leaked there, never dropped or joined).
fn runtime() -> std::io::Result<&'static tokio::runtime::Runtime> {
    let mut rt = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((made, rt)) = *rt {
        if made == generation() {
            return Ok(rt);
        }
    }
    let made = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("locksmith-async")
        .enable_all()
        .build()?;
    let made: &'static tokio::runtime::Runtime = Box::leak(Box::new(made));
    *rt = Some((generation(), made));
    Ok(made)
}

/// The settlements running Python on the runtime's thread, and whether the interpreter
/// is closing (then none starts: the outcome is dropped in Rust, which releases a grant).
/// CPython ends a thread that takes the GIL back during finalization (`pthread_exit`,
/// which unwinds through Rust frames and crashes the process), and
/// `call_soon_threadsafe` gives the GIL up while it writes the loop's wake-up byte; so
/// an `atexit` hook closes the gate and waits, detached, for the settlements in flight.
struct Gate {
    generation: u64,
    closing: bool,
    in_flight: usize,
}

static GATE: Mutex<Gate> = Mutex::new(Gate {
    generation: 0,
    closing: false,
    in_flight: 0,
});
static GATE_LEFT: Condvar = Condvar::new();

/// The gate of this process (a forked child starts with an open, empty one).
fn gate() -> std::sync::MutexGuard<'static, Gate> {
    let mut gate = GATE.lock().unwrap_or_else(|p| p.into_inner());
    if gate.generation != generation() {
        *gate = Gate {
            generation: generation(),
            closing: false,
            in_flight: 0,
        };
    }
    gate
}

/// Runs `f` with the GIL unless the interpreter is closing.
fn through_gate(f: impl FnOnce(Python<'_>)) {
    {
        let mut gate = gate();
        if gate.closing {
            return;
        }
        gate.in_flight += 1;
    }
    Python::try_attach(f);
    gate().in_flight -= 1;
    GATE_LEFT.notify_all();
}

/// The `atexit` hook: closes the gate, then waits for the settlements in flight.
#[pyclass(frozen)]
struct CloseGate;

#[pymethods]
impl CloseGate {
    fn __call__(&self, py: Python<'_>) {
        py.detach(|| {
            let mut gate = gate();
            gate.closing = true;
            // Bounded: a settlement only waits for the GIL, which is free meanwhile.
            let _ = GATE_LEFT
                .wait_timeout_while(gate, Duration::from_secs(10), |g| g.in_flight > 0)
                .unwrap_or_else(|p| p.into_inner());
        });
    }
}

/// Registers the hook that keeps the runtime's thread out of a finalizing interpreter.
pub(crate) fn register(py: Python<'_>) -> PyResult<()> {
    py.import("atexit")?
        .call_method1("register", (Py::new(py, CloseGate)?,))?;
    Ok(())
}

/// Settles an asyncio future on its loop's thread: a result if the future still waits,
/// otherwise (cancelled meanwhile) the value is dropped, which releases a guard.
#[pyclass(frozen)]
struct Settle {
    future: Py<PyAny>,
    outcome: Mutex<Option<PyResult<Py<PyAny>>>>,
}

#[pymethods]
impl Settle {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let Some(outcome) = self
            .outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return Ok(());
        };
        let future = self.future.bind(py);
        if future.call_method0("done")?.is_truthy()? {
            // Cancelled while the grant was on its way: give it back now.
            if let Ok(value) = outcome {
                if let Ok(guard) = value.bind(py).cast::<crate::guard::Guard>() {
                    guard.get().slot.release(py)?;
                }
            }
            return Ok(());
        }
        match outcome {
            Ok(value) => future.call_method1("set_result", (value,))?,
            Err(e) => future.call_method1("set_exception", (e.into_value(py),))?,
        };
        Ok(())
    }
}

/// Aborts the core future when the asyncio future is cancelled.
#[pyclass(frozen)]
struct Abort(tokio::task::AbortHandle);

#[pymethods]
impl Abort {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future.call_method0("cancelled")?.is_truthy()? {
            self.0.abort();
        }
        Ok(())
    }
}

/// An asyncio future of the running loop, completed with `convert(output)` of `work`.
pub(crate) fn spawn<'py, T, W, C>(
    py: Python<'py>,
    work: W,
    convert: C,
) -> PyResult<Bound<'py, PyAny>>
where
    T: Send + 'static,
    W: Future<Output = locksmith::Result<T>> + Send + 'static,
    C: FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + Send + 'static,
{
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let future = event_loop.call_method0("create_future")?;
    let rt = runtime().map_err(|e| crate::errors::new_err(py, "StoreError", e.to_string()))?;
    let (loop_, fut) = (event_loop.clone().unbind(), future.clone().unbind());
    let task = rt.spawn(async move {
        let result = work.await;
        through_gate(|py| {
            let outcome = match result {
                Ok(t) => convert(py, t),
                Err(e) => Err(to_py(py, e)),
            };
            let settle = Settle {
                future: fut,
                outcome: Mutex::new(Some(outcome)),
            };
            // A closed loop cannot take the call: the outcome (a guard) is dropped,
            // which releases it.
            let _ = loop_
                .bind(py)
                .call_method1("call_soon_threadsafe", (settle,));
        });
    });
    future.call_method1("add_done_callback", (Abort(task.abort_handle()),))?;
    Ok(future)
}

/// An asyncio future of the running loop that is already done with `value`.
pub(crate) fn ready<'py>(py: Python<'py>, value: Py<PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let future = event_loop.call_method0("create_future")?;
    future.call_method1("set_result", (value,))?;
    Ok(future)
}
