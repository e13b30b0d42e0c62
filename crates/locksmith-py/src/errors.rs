//! One exception hierarchy for every module: `LocksmithError` and its subclasses, each
//! also deriving from the built-in type the seed APIs raise, each with `.errno`.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

/// The classes, written in Python because several have two bases (`NotHeld` is a
/// `LocksmithError` and a `RuntimeError`), which `create_exception!` cannot express.
const CLASSES: &std::ffi::CStr = c"
import errno as _errno
import threading as _threading

class LocksmithError(Exception):
    '''Base of every locksmith error; `.errno` is the POSIX code that best matches.'''
    errno = _errno.EIO

class LockTimeout(LocksmithError, TimeoutError):
    '''A wait that reports running out of time as an error ran out (ETIMEDOUT).'''
    errno = _errno.ETIMEDOUT

class WouldDeadlock(LocksmithError, RuntimeError):
    '''The caller already holds this non-recursive lock (EDEADLK).'''
    errno = _errno.EDEADLK

class NotHeld(LocksmithError, RuntimeError):
    '''Release of something that is not held (EPERM).'''
    errno = _errno.EPERM

class NotOwner(NotHeld):
    '''Release by someone who is not the holder (EPERM).'''
    errno = _errno.EPERM

class TooManyReleases(LocksmithError, ValueError):
    '''A bounded semaphore was released more often than acquired (EOVERFLOW).'''
    errno = _errno.EOVERFLOW

class BrokenBarrier(LocksmithError, _threading.BrokenBarrierError):
    '''The barrier was reset, aborted, or a party timed out or died (EPIPE).'''
    errno = _errno.EPIPE

class LeaseLost(LocksmithError, RuntimeError):
    '''The hold ended (lease lapsed, broken, evicted) before it was released (ENOLCK).'''
    errno = _errno.ENOLCK

class Mismatch(LocksmithError, ValueError):
    '''The name is used by a primitive of another kind or parameters (EEXIST).'''
    errno = _errno.EEXIST

class InvalidArgument(LocksmithError, ValueError):
    '''Bad input: a bad name, timeout, number or URL (EINVAL).'''
    errno = _errno.EINVAL

class Unsupported(InvalidArgument):
    '''The URL names a store that does not exist or is not built in (ENOTSUP).'''
    errno = _errno.ENOTSUP

class StoreError(LocksmithError, OSError):
    '''The store failed: I/O, a corrupt file, a server that is down (EIO).'''
    errno = _errno.EIO

class SyncError(LocksmithError):
    '''runtime.sync's error: `SyncError(message, errno, **context)`; the errno is also
    in `.context['errno']`.'''
    def __init__(self, message, errno, **context):
        super().__init__(message)
        self.errno = errno
        self.context = {'errno': errno, **context}

class SyncBrokenBarrier(SyncError, BrokenBarrier):
    '''A placed Barrier is broken: a SyncError (EPIPE) that is also
    `threading.BrokenBarrierError`.'''

for _c in (LocksmithError, SyncError, SyncBrokenBarrier, LockTimeout, WouldDeadlock, NotHeld, NotOwner,
           TooManyReleases, BrokenBarrier, LeaseLost, Mismatch, InvalidArgument,
           Unsupported, StoreError):
    _c.__module__ = 'locksmith'
";

/// The names of the classes, exported by the extension module.
pub(crate) const NAMES: &[&str] = &[
    "LocksmithError",
    "LockTimeout",
    "WouldDeadlock",
    "NotHeld",
    "NotOwner",
    "TooManyReleases",
    "BrokenBarrier",
    "LeaseLost",
    "Mismatch",
    "InvalidArgument",
    "Unsupported",
    "StoreError",
    "SyncError",
    "SyncBrokenBarrier",
];

static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn classes(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    let module = MODULE.get_or_try_init(py, || -> PyResult<Py<PyModule>> {
        let m = PyModule::from_code(py, CLASSES, c"locksmith/errors", c"locksmith._errors")?;
        Ok(m.unbind())
    })?;
    Ok(module.bind(py))
}

/// Adds the exception classes to the extension module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let classes = classes(m.py())?;
    for name in NAMES {
        m.add(*name, classes.getattr(*name)?)?;
    }
    Ok(())
}

/// The exception `class` (one of [`NAMES`]) with `message`.
pub(crate) fn new_err(py: Python<'_>, class: &str, message: String) -> PyErr {
    match classes(py).and_then(|m| m.getattr(class)) {
        Ok(cls) => match cls.call1((message,)) {
            Ok(value) => PyErr::from_value(value),
            Err(e) => e,
        },
        Err(e) => e,
    }
}

/// The Python exception for a core error.
pub(crate) fn to_py(py: Python<'_>, e: locksmith::Error) -> PyErr {
    use locksmith::Error as E;
    let class = match &e {
        E::Timeout => "LockTimeout",
        E::WouldDeadlock { .. } => "WouldDeadlock",
        E::NotHeld { .. } => "NotHeld",
        E::NotOwner { .. } => "NotOwner",
        E::TooManyReleases { .. } => "TooManyReleases",
        E::BrokenBarrier { .. } => "BrokenBarrier",
        E::LeaseLost { .. } => "LeaseLost",
        E::Mismatch { .. } => "Mismatch",
        E::InvalidArgument(_) => "InvalidArgument",
        E::Unsupported(_) => "Unsupported",
        _ => "StoreError",
    };
    new_err(py, class, e.to_string())
}

/// `.raise_py(py)?` turns a core result into a Python one.
pub(crate) trait Raise<T> {
    /// The result, with a core error turned into its Python exception.
    fn raise_py(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> Raise<T> for locksmith::Result<T> {
    fn raise_py(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}

/// Whether `err` is one of the classes above (not, say, a signal handler's exception).
pub(crate) fn is_locksmith(py: Python<'_>, err: &PyErr) -> bool {
    classes(py)
        .and_then(|m| m.getattr("LocksmithError"))
        .and_then(|cls| err.value(py).is_instance(&cls))
        .unwrap_or(false)
}
