//! A space: one store of named primitives, opened from a URL.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::backend::mem::MemBackend;
use crate::backend::{Backend, Mode, Op, Reply};
use crate::lease::Keeper;
use crate::primitives::handle::Handle;
use crate::primitives::{
    Averager, Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, RwLock, Semaphore,
};
use crate::{Error, Result};

/// A store of named primitives: every process that opens the same URL sees the same
/// `Lock("deploy")`.
///
/// | URL | scope |
/// | --- | --- |
/// | `mem:` | a private space of this process's threads and tasks |
/// | `mem:NAME` | the space `NAME` shared by this process's `Space::open("mem:NAME")` calls |
/// | `shm:NAME[?capacity=N&arena=BYTES&mode=600&queue=16&check_ms=50]` | processes of this host: the region `/dev/shm/NAME`, created (mode 0600) on first open with room for `capacity` names (65536) and `arena` bytes of state (64M; `K`/`M`/`G` suffixes); at most `queue` waiters per name queue FIFO (16), later ones join as places free; `check_ms` bounds how long a dead holder goes unnoticed (50 ms) |
///
/// `sqlite:PATH` and `redis://…` are named by the design and refused with
/// [`Error::Unsupported`] until their backends land.
///
/// A `Space` is cheap to clone; clones share the store and the lease keeper.
///
/// ```
/// # fn main() -> locksmith::Result<()> {
/// let space = locksmith::Space::open("mem:")?;
/// let guard = space.lock("deploy").tag("jobs").acquire()?;
/// let holders = space.holders("deploy")?;
/// assert_eq!(holders[0].token, guard.token());
/// assert_eq!(holders[0].pid, std::process::id());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Space {
    inner: Arc<SpaceInner>,
}

pub(crate) struct SpaceInner {
    pub url: String,
    pub backend: Arc<dyn Backend>,
    pub keeper: Keeper,
}

impl fmt::Debug for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Space")
            .field("url", &self.inner.url)
            .finish()
    }
}

/// One hold of a primitive, as [`Space::holders`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// Who holds it, for people: host, pid and thread.
    pub owner: String,
    /// The host the holder runs on.
    pub host: String,
    /// The holder's process id on that host.
    pub pid: u32,
    /// The hold's fencing token.
    pub token: u64,
    /// When the hold was taken.
    pub since: SystemTime,
    /// When the lease ends unless renewed; `None` for a hold without a lease.
    pub until: Option<SystemTime>,
    /// Re-entry depth (RLock); 1 otherwise.
    pub count: u32,
    /// Whether this is a read (shared) hold of an RwLock.
    pub shared: bool,
}

impl Space {
    /// Opens the space at `url`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for an unknown scheme or a backend not built in;
    /// [`Error::InvalidArgument`] for a malformed URL.
    pub fn open(url: &str) -> Result<Space> {
        let backend: Arc<dyn Backend> = match url.split_once(':') {
            Some(("mem", "")) => Arc::new(MemBackend::default()),
            Some(("mem", name)) => MemBackend::named(name),
            #[cfg(all(target_os = "linux", feature = "shm"))]
            Some(("shm", spec)) => Arc::new(crate::backend::shm::ShmBackend::open(spec)?),
            #[cfg(not(all(target_os = "linux", feature = "shm")))]
            Some(("shm", _)) => {
                return Err(Error::Unsupported(format!(
                    "shm: needs Linux and the `shm` feature (in '{url}')"
                )))
            }
            Some((scheme @ ("sqlite" | "redis" | "rediss" | "postgres" | "postgresql"), _)) => {
                return Err(Error::Unsupported(format!(
                    "the {scheme} backend is not built yet (in '{url}')"
                )))
            }
            Some((scheme, _)) => {
                return Err(Error::Unsupported(format!(
                    "unknown scheme '{scheme}' in '{url}': use mem:"
                )))
            }
            None => {
                return Err(Error::invalid(format!(
                    "'{url}' is not a store URL: it needs a scheme, such as mem:"
                )))
            }
        };
        Ok(Space {
            inner: Arc::new(SpaceInner {
                url: url.to_owned(),
                backend,
                keeper: Keeper::new(),
            }),
        })
    }

    /// Opens the embedded default store: `LOCKSMITH_STORE` if set, otherwise `mem:`
    /// (the per-user SQLite store becomes the default when that backend lands).
    pub fn open_default() -> Result<Space> {
        match std::env::var("LOCKSMITH_STORE") {
            Ok(url) if !url.is_empty() => Space::open(&url),
            _ => Space::open("mem:"),
        }
    }

    /// The URL this space was opened with.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    fn handle(&self, name: &str) -> Handle {
        Handle::new(self.inner.clone(), name)
    }

    /// The [`Lock`] called `name`.
    pub fn lock(&self, name: &str) -> Lock {
        Lock::new(self.handle(name))
    }

    /// The [`RLock`] called `name`.
    pub fn rlock(&self, name: &str) -> RLock {
        RLock::new(self.handle(name))
    }

    /// The [`Semaphore`] called `name`, which starts with `permits` permits.
    pub fn semaphore(&self, name: &str, permits: u32) -> Semaphore {
        Semaphore::new(self.handle(name), permits)
    }

    /// The [`BoundedSemaphore`] called `name`, with at most `permits` permits.
    pub fn bounded_semaphore(&self, name: &str, permits: u32) -> BoundedSemaphore {
        BoundedSemaphore::new(self.handle(name), permits)
    }

    /// The [`Event`] called `name`.
    pub fn event(&self, name: &str) -> Event {
        Event::new(self.handle(name))
    }

    /// The [`Condition`] called `name`.
    pub fn condition(&self, name: &str) -> Condition {
        Condition::new(self.handle(name))
    }

    /// The [`Barrier`] called `name`, for `parties` parties.
    pub fn barrier(&self, name: &str, parties: u32) -> Barrier {
        Barrier::new(self.handle(name), parties)
    }

    /// The [`Averager`] called `name`.
    pub fn averager(&self, name: &str) -> Averager {
        Averager::new(self.handle(name))
    }

    /// The [`RwLock`] called `name`.
    pub fn rwlock(&self, name: &str) -> RwLock {
        RwLock::new(self.handle(name))
    }

    /// Who holds the primitive `name` now, oldest hold first.
    pub fn holders(&self, name: &str) -> Result<Vec<Holder>> {
        Ok(self.inspect(name)?.0)
    }

    /// How many callers are queued for the primitive `name` (lock and permit waiters,
    /// condition sleepers).
    pub fn waiting(&self, name: &str) -> Result<usize> {
        Ok(self.inspect(name)?.1)
    }

    fn inspect(&self, name: &str) -> Result<(Vec<Holder>, usize)> {
        let handle = self.handle(name);
        handle.check()?;
        match handle.step(Op::Holders)? {
            Reply::Holders { holders, waiting } => Ok((
                holders
                    .into_iter()
                    .map(|h| Holder {
                        owner: h.owner.describe(),
                        host: h.owner.host.to_string(),
                        pid: h.owner.pid,
                        token: h.token,
                        since: at(h.since),
                        until: h.until.map(at),
                        count: h.count,
                        shared: h.mode == Mode::Shared,
                    })
                    .collect(),
                waiting as usize,
            )),
            other => Err(crate::primitives::guard_unexpected(other)),
        }
    }

    /// Releases every hold of `name`, whoever holds it: for operators, when a holder is
    /// known to be stuck or gone. The holders' guards find [`Error::LeaseLost`] when
    /// they release. Returns how many holds were broken.
    pub fn force_release(&self, name: &str) -> Result<usize> {
        let handle = self.handle(name);
        handle.check()?;
        tracing::warn!(name, "force-releasing every hold");
        match handle.step(Op::ForceRelease)? {
            Reply::Count(n) => Ok(n as usize),
            other => Err(crate::primitives::guard_unexpected(other)),
        }
    }

    /// Drops every primitive tagged `tag` (diskcache's `evict`): holders lose their
    /// holds, waiters wake. Fencing tokens keep counting up. Returns how many
    /// primitives were dropped.
    pub fn evict_tag(&self, tag: &str) -> Result<usize> {
        self.inner.backend.evict_tag(tag)
    }

    /// The names this space has state or fencing counters for, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        self.inner.backend.names()
    }
}

fn at(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}
