//! The extension module `locksmith._locksmith`: the Python bindings of the locksmith
//! core. The public API is the `locksmith` Python package, which re-exports these.

mod aio;
mod averager;
mod barrier;
mod condition;
mod condition_lock;
mod errors;
mod event;
mod guard;
mod lock;
mod permits;
mod rwlock;
mod semaphore;
mod space;
mod sync;
mod sync_barrier;
mod sync_condition;
mod threading;
mod wait;

use pyo3::prelude::*;

/// The native half of the `locksmith` package.
#[pymodule]
fn _locksmith(m: &Bound<'_, PyModule>) -> PyResult<()> {
    wait::watch_forks();
    errors::register(m)?;
    m.add("MAX_NAME_LEN", locksmith::MAX_NAME_LEN)?;
    m.add_class::<space::Space>()?;
    m.add_class::<space::Holder>()?;
    m.add_class::<guard::Guard>()?;
    m.add_class::<lock::Lock>()?;
    m.add_class::<lock::RLock>()?;
    m.add_class::<semaphore::Semaphore>()?;
    m.add_class::<semaphore::BoundedSemaphore>()?;
    m.add_class::<condition::Condition>()?;
    m.add_class::<condition_lock::ConditionOverLock>()?;
    m.add_class::<sync::PlacedMutex>()?;
    m.add_class::<sync::PlacedSemaphore>()?;
    m.add_class::<sync::PlacedEvent>()?;
    m.add_class::<sync_condition::PlacedCondition>()?;
    m.add_class::<sync_barrier::PlacedBarrier>()?;
    m.add_class::<averager::Averager>()?;
    m.add_class::<event::Event>()?;
    m.add_class::<barrier::Barrier>()?;
    m.add_class::<rwlock::RwLock>()?;
    threading::register(m)?;
    aio::register(m.py())?;
    Ok(())
}
