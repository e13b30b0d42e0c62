//! The primitives, each written once over the backend trait.

mod acquirable;
mod averager;
mod barrier;
mod bounded_semaphore;
mod condition;
pub(crate) mod detached;
mod event;
mod guard;
pub(crate) mod handle;
mod lock;
mod permit;
mod rlock;
mod rwlock;
mod semaphore;

pub use acquirable::{Acquirable, RwLockReader, RwLockWriter};
pub use averager::Averager;
pub use barrier::Barrier;
pub use bounded_semaphore::BoundedSemaphore;
pub use condition::{Condition, ConditionLock, Sleeper};
pub use event::{Event, EventMark};
pub(crate) use guard::unexpected as guard_unexpected;
pub use guard::Guard;
pub use lock::{Lock, Ownership};
pub use rlock::RLock;
pub use rwlock::RwLock;
pub use semaphore::Semaphore;
