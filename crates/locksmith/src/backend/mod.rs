//! The backend trait: the small atomic steps every store performs.
//!
//! A backend knows nothing of timeouts, guards, re-entrancy rules seen from the caller,
//! or async. It does one thing: apply an [`Op`] to the state of one named primitive,
//! atomically, and tell waiters when that state changed. Each `Op` is shaped so that
//! one SQLite transaction or one Redis Lua script can perform it in one round trip.
//!
//! The state machine behind the ops is written once, in [`model`], as a pure function
//! over a serializable [`model::Record`]; stores that can load and save a record
//! atomically (mem, sqlite, postgres) reuse it, stores that run their own code server-side
//! (redis) mirror it step for step.

#[cfg(any(feature = "redis", all(unix, feature = "sqlite")))]
pub(crate) mod done;
#[cfg(feature = "etcd")]
pub(crate) mod etcd;
#[cfg(all(target_os = "linux", any(feature = "shm", feature = "sqlite")))]
pub(crate) mod futex_async;
#[cfg(any(all(unix, feature = "sqlite"), feature = "postgres"))]
pub(crate) mod gates;
pub(crate) mod mem;
pub(crate) mod model;
#[cfg(test)]
pub(crate) mod model_props;
#[cfg_attr(
    not(any(feature = "shm", feature = "sqlite", feature = "redis")),
    allow(dead_code)
)]
pub(crate) mod options;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(all(target_os = "linux", feature = "shm"))]
pub(crate) mod shm;
#[cfg(all(unix, feature = "sqlite"))]
pub(crate) mod sqlite;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::Result;

pub(crate) use model::{Grant, Mode, Op, PermitKind, Reply};

/// A boxed future, as the trait's async steps return.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The name of one primitive, plus a slot where a backend may cache what it resolved
/// the name to (a map entry, a shared-memory slot), so that the hot path need not look
/// it up again.
pub(crate) struct Key {
    name: Arc<str>,
    cache: OnceLock<Arc<dyn std::any::Any + Send + Sync>>,
}

impl Key {
    pub(crate) fn new(name: &str) -> Key {
        Key {
            name: name.into(),
            cache: OnceLock::new(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The backend's cached resolution of this key, computed once by `resolve`.
    pub(crate) fn cached<T, F>(&self, resolve: F) -> Arc<T>
    where
        T: Send + Sync + 'static,
        F: FnOnce() -> Arc<T>,
    {
        if let Some(Ok(t)) = self.cache.get().map(|any| any.clone().downcast::<T>()) {
            return t;
        }
        // Two threads may both resolve; both results name the same entry, and the
        // first one stored is kept.
        let t = resolve();
        let _ = self.cache.set(t.clone());
        t
    }

    /// The backend's cached resolution of this key, if `cached` already made it.
    pub(crate) fn cached_ref<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.cache.get()?.downcast_ref::<T>()
    }

    /// [`Key::cached`] for a resolution that may fail; a failure is not cached.
    #[allow(dead_code)] // used by the shm backend only
    pub(crate) fn try_cached<T, F>(&self, resolve: F) -> Result<Arc<T>>
    where
        T: Send + Sync + 'static,
        F: FnOnce() -> Result<Arc<T>>,
    {
        if let Some(Ok(t)) = self.cache.get().map(|any| any.clone().downcast::<T>()) {
            return Ok(t);
        }
        let t = resolve()?;
        let _ = self.cache.set(t.clone());
        Ok(t)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Key").field(&self.name).finish()
    }
}

/// A store of named primitives.
pub(crate) trait Backend: Send + Sync + fmt::Debug + 'static {
    /// Applies `op` to the state of `key`, atomically, and wakes the waiters the change
    /// concerns.
    fn step(&self, key: &Key, op: Op) -> Result<Reply>;

    /// [`Backend::step`] for async callers. Stores whose steps never block for long
    /// keep this default; network stores override it.
    fn step_async<'a>(&'a self, key: &'a Key, op: Op) -> BoxFuture<'a, Result<Reply>> {
        Box::pin(std::future::ready(self.step(key, op)))
    }

    /// [`Backend::step`] for a waiter that waits until `deadline` (`None`: for ever):
    /// a store whose steps can fail for a while (a server restarting) may keep trying
    /// within it instead of failing at once, and no attempt outlasts it by much.
    fn wait_step(&self, key: &Key, op: Op, _deadline: Option<Instant>) -> Result<Reply> {
        self.step(key, op)
    }

    /// [`Backend::wait_step`] for async callers.
    fn wait_step_async<'a>(
        &'a self,
        key: &'a Key,
        op: Op,
        _deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Reply>> {
        self.step_async(key, op)
    }

    /// Starts listening for changes to `key`: with a `ticket`, for the changes that
    /// concern that queued waiter; without, for any change. A change made after this
    /// call returns is never missed by the returned [`Watch`].
    fn watch(&self, key: &Key, ticket: Option<u64>) -> Result<Box<dyn Watch>>;

    /// The names the store holds state or fencing counters for.
    fn names(&self) -> Result<Vec<String>>;

    /// Drops the state of every primitive tagged `tag`, keeping fencing counters;
    /// returns how many were dropped.
    fn evict_tag(&self, tag: &str) -> Result<usize>;

    /// Takes a free plain Lock (no lease, no tag, nobody waiting) in a few atomic
    /// instructions, for stores that can; `None`: take the general path through
    /// [`Backend::step`]. `thread` is the taker's thread number
    /// ([`crate::owner::thread_number`]), or 0 for an async acquisition.
    fn lock_fast(&self, _key: &Key, _thread: u64) -> Option<FastHold> {
        None
    }

    /// Gives back a hold [`Backend::lock_fast`] took; `false` if the store has since
    /// moved the hold into its record (someone looked or queued), and the release must
    /// go through [`Backend::step`].
    fn unlock_fast(&self, _key: &Key, _hold: FastHold) -> bool {
        false
    }

    /// The lease given to holds taken without one, for stores that cannot tell
    /// whether a holder's process still lives (a server shared by many hosts): the
    /// primitive layer renews it while the guard lives, so only a dead holder's hold
    /// lapses. `None`: holds without a lease last until released.
    fn default_lease(&self) -> Option<Duration> {
        None
    }

    /// Forgets every idle name (no state, no tag: only its fencing counter left) that
    /// nobody is using, first raising the store's token floor to its counter, so that
    /// a name created again still gets larger tokens; answers how many went.
    fn reclaim_idle(&self) -> Result<usize>;

    /// Whether a step may wait on I/O or on another process for long: a round trip to
    /// a server, a transaction another process holds up. On such a store, the async
    /// forms of whole-store work (names, eviction, reclaiming) run on the space's
    /// helper thread, and so does the step that undoes a dropped async wait (leaving a
    /// queue), so that neither blocks an executor thread. `false`: steps only touch
    /// memory, and run in place.
    fn steps_wait(&self) -> bool {
        true
    }

    /// Removes the store ([`crate::Space::destroy`]): deletes what lives on a server
    /// (Redis keys) and answers the files to delete once this process's handles of
    /// the store are closed (a directory last, removed if empty).
    fn destroy(&self) -> Result<Vec<std::path::PathBuf>> {
        Err(crate::Error::Unsupported(
            "this store cannot be removed through locksmith".into(),
        ))
    }

    /// How full the store is, if it holds a fixed number of names.
    fn usage(&self) -> Option<crate::Usage> {
        None
    }

    /// What the store found wrong but worked around when it was opened (a doorbell it
    /// cannot use, say), one line each, for the caller to pass on to its user.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A hold taken by [`Backend::lock_fast`]: its fencing token, and what the store needs
/// to give it back just as fast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FastHold {
    pub token: u64,
    /// Never zero, so that an `Option<FastHold>` fits in two registers.
    pub word: std::num::NonZeroU64,
}

/// A registration for change notifications, made before re-checking the state.
pub(crate) trait Watch: Send {
    /// Blocks until notified or until `deadline`. Spurious returns are allowed: the
    /// caller re-checks the state either way.
    fn wait(self: Box<Self>, deadline: Option<Instant>) -> Result<()>;

    /// The async form of [`Watch::wait`]; it never blocks the executor thread.
    fn wait_async(self: Box<Self>, deadline: Option<Instant>) -> BoxFuture<'static, Result<()>>;
}
