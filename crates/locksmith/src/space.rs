//! A space: one store of named primitives, opened from a URL.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::backend::mem::MemBackend;
use crate::backend::{Backend, Mode, Op, Reply};
use crate::lease::Keeper;
use crate::os::liveness::Verdict;
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
/// | `shm:NAME` | processes of this host, through the shared-memory region `/dev/shm/NAME` (Linux, feature `shm`) |
/// | `sqlite:PATH` | processes of this host, through an SQLite file that keeps state across restarts (feature `sqlite`; the default store) |
/// | `sqlite:DIR?shards=N` | as `sqlite:`, over N files in `DIR`, names hashed to one of them |
/// | `redis://[user:password@]host[:port][/db][?prefix=P]` | every process on any machine that opens the same server, database and key prefix (default prefix `locksmith:`); `rediss://` for TLS (feature `redis-tls`) |
/// | `etcd://[user:password@]host:port[,host:port…][?prefix=P]` | every process on any machine that opens the same cluster and key prefix (default `locksmith/`); feature `etcd` |
///
/// `shm:` takes options after a `?`, joined by `&`, used when the region is created:
/// `capacity=N` names (65536), `arena=BYTES` of state (64M; `K`/`M`/`G` suffixes),
/// `mode=OCTAL` (600), `queue=N` waiters per name queued first-come first-served (16;
/// later ones join as places free), `check_ms=MS`, how long a dead holder can go
/// unnoticed (50), and `uring=on|off` (per open: whether queued async waiters sleep
/// through io_uring where it works; on).
///
/// `sqlite:` takes `shards=N` (1–256), `timeout=MS` (how long a step waits for another
/// process's transaction; 5000), `poll=MS` (the longest a waiter sleeps before
/// re-checking on its own; 250), `sync=normal|full` (`full` fsyncs every step, so
/// fencing tokens survive power loss too), `bell=on|off` (the shared-memory doorbell
/// that wakes waiting processes at once) and `uring=on|off` (whether async waiters sleep
/// on the doorbell through io_uring where it works; on).
///
/// Async waits on `shm:` and `sqlite:` are fastest in a tokio runtime with its IO
/// driver (`enable_all`, as `#[tokio::main]` builds it): Linux 6.7+ then wakes the
/// waiting task directly. Elsewhere, or with `LOCKSMITH_URING=off` in the environment,
/// a helper thread sleeps for the waiting tasks and wakes them.
///
/// On Redis, a hold taken without a lease gets a 30 s one that renews itself while the
/// holder lives, so a holder that dies on another machine is recovered when it lapses.
///
/// `postgres://[user[:password]@]host[:port]/db[?schema=S&timeout=MS]` (feature
/// `postgres`) shares primitives with every process on any machine that opens the same
/// database and schema (default schema `locksmith`, created on first use); the `PG*`
/// environment variables fill in what the URL leaves out. As on Redis, a hold taken
/// without a lease gets a 30 s one that renews itself while the holder lives.
///
/// A `Space` is cheap to clone; clones share the store and the lease keeper. On
/// `sqlite:` and Redis, the async forms of whole-store work and the leaving of dropped
/// async waits run on a helper thread of the space (`locksmith-offload`), so that no
/// executor thread waits for the store; dropping the last clone waits for what was
/// handed to it, so that a process that drops its spaces before it exits leaves no
/// queue place behind.
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
    /// Holds detached from their guards here, for the handles' `release()`.
    pub detached: crate::primitives::detached::Detached,
    /// Told of every release on drop that failed ([`Space::on_drop_error`]).
    pub drop_hooks: std::sync::RwLock<Vec<DropHook>>,
    /// Runs what async callers and drops must not wait for (see [`Backend::steps_wait`]).
    pub offload: crate::offload::Offload,
}

/// A hook of [`Space::on_drop_error`].
pub(crate) type DropHook = Arc<dyn Fn(&str, &Error) + Send + Sync>;

impl SpaceInner {
    /// Tells the hooks that dropping the guard of `name` failed with `error`.
    pub(crate) fn dropped_with(&self, name: &str, error: &Error) {
        let hooks = self.drop_hooks.read().unwrap_or_else(|e| e.into_inner());
        for hook in hooks.iter() {
            hook(name, error);
        }
    }
}

impl fmt::Debug for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Space")
            .field("url", &self.inner.url)
            .finish()
    }
}

/// How full a store that holds a fixed number of names is (`shm:`), as
/// [`Space::usage`] answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Usage {
    /// Names that occupy a slot now (in use, or idle and not yet reclaimed).
    pub names: u64,
    /// The most names the store holds at once; idle ones are reclaimed to make room.
    pub limit: u64,
    /// Idle names reclaimed so far.
    pub reclaimed: u64,
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
    /// When the hold was taken. On `mem:`, a plain lock taken while free records no
    /// time (its fast path is one atomic instruction): there it is when the hold was
    /// first looked at, so it may be later than the acquisition.
    pub since: SystemTime,
    /// When the lease ends unless renewed; `None` for a hold without a lease.
    pub until: Option<SystemTime>,
    /// Re-entry depth (RLock); 1 otherwise.
    pub count: u32,
    /// Whether this is a read (shared) hold of an RwLock.
    pub shared: bool,
    /// Whether the holder's process lives, as far as this process can prove: the same
    /// verdict the stores use to reap dead holders.
    pub process: Liveness,
}

/// What this process can tell about a holder's process ([`Holder::process`]).
///
/// A holder is [`Dead`](Liveness::Dead) only when this process can prove it: the
/// holder recorded this host's boot id and machine id (never just its hostname) and
/// this process's PID namespace, and its process is gone, or its pid now names a
/// process started at another time, or it is a zombie with no live thread. Stores reap
/// exactly those holders at once; every other hold lasts until it is released or its
/// lease ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Liveness {
    /// Its process runs on this host, in this PID namespace.
    Alive,
    /// Its process is provably gone.
    Dead,
    /// Another host, another PID namespace, a holder recorded by an older build, or a
    /// process `/proc` hides (`hidepid`): only its lease can end its hold.
    Unknown,
}

impl Liveness {
    /// `alive`, `dead` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Dead => "dead",
            Liveness::Unknown => "unknown",
        }
    }
}

impl Liveness {
    fn of(v: Verdict) -> Liveness {
        match v {
            Verdict::Alive => Liveness::Alive,
            Verdict::Dead => Liveness::Dead,
            Verdict::Unknown => Liveness::Unknown,
        }
    }
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
            #[cfg(all(unix, feature = "sqlite"))]
            Some(("sqlite", rest)) => {
                let opts = crate::backend::sqlite::Options::parse(rest, url)?;
                Arc::new(crate::backend::sqlite::SqliteBackend::open(&opts)?)
            }
            #[cfg(not(all(unix, feature = "sqlite")))]
            Some(("sqlite", _)) => {
                return Err(Error::Unsupported(format!(
                    "this build of locksmith has no sqlite backend (feature `sqlite`), in '{url}'"
                )))
            }
            #[cfg(feature = "redis")]
            Some(("redis" | "rediss", _)) => {
                Arc::new(crate::backend::redis::RedisBackend::open(url)?)
            }
            #[cfg(not(feature = "redis"))]
            Some((scheme @ ("redis" | "rediss"), _)) => {
                return Err(Error::Unsupported(format!(
                    "the {scheme} backend is not built in (in '{url}'): enable the redis feature"
                )))
            }
            #[cfg(feature = "etcd")]
            Some(("etcd", _)) => Arc::new(crate::backend::etcd::EtcdBackend::open(url)?),
            #[cfg(not(feature = "etcd"))]
            Some(("etcd", _)) => {
                return Err(Error::Unsupported(format!(
                    "the etcd backend is not built in (in '{url}'): enable the etcd feature"
                )))
            }

            #[cfg(all(target_os = "linux", feature = "shm"))]
            Some(("shm", spec)) => Arc::new(crate::backend::shm::ShmBackend::open(spec)?),
            #[cfg(not(all(target_os = "linux", feature = "shm")))]
            Some(("shm", _)) => {
                return Err(Error::Unsupported(format!(
                    "shm: needs Linux and the `shm` feature (in '{url}')"
                )))
            }

            #[cfg(feature = "postgres")]
            Some(("postgres" | "postgresql", _)) => {
                Arc::new(crate::backend::postgres::PgBackend::open(url)?)
            }
            #[cfg(not(feature = "postgres"))]
            Some((scheme @ ("postgres" | "postgresql"), _)) => {
                return Err(Error::Unsupported(format!(
                    "the {scheme} backend is not built in (in '{url}'): enable the postgres feature"
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
                detached: Default::default(),
                drop_hooks: Default::default(),
                offload: Default::default(),
            }),
        })
    }

    /// Opens the embedded default store: the URL in `LOCKSMITH_STORE` if it is set,
    /// otherwise the per-user SQLite database
    /// `$XDG_STATE_HOME/locksmith/locks.sqlite` (`~/.local/state/locksmith/locks.sqlite`
    /// when `XDG_STATE_HOME` is unset or not absolute). The directory is created 0700
    /// and the file 0600. Without the `sqlite` feature the default is `mem:`.
    ///
    /// # Errors
    /// As [`Space::open`]; [`Error::InvalidArgument`] if neither `XDG_STATE_HOME` nor
    /// `HOME` names a directory.
    pub fn open_default() -> Result<Space> {
        match std::env::var("LOCKSMITH_STORE") {
            Ok(url) if !url.is_empty() => Space::open(&url),
            _ => Space::open(&default_url()?),
        }
    }

    /// The URL [`Space::open_default`] opens when `LOCKSMITH_STORE` is not set,
    /// creating the per-user state directory (0700) if needed.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if there is no home directory to put it in;
    /// [`Error::Backend`] if the directory cannot be created.
    pub fn default_url() -> Result<String> {
        default_url()
    }
    /// What the store found wrong when it was opened but worked around, one line each
    /// (for example a `sqlite:` doorbell owned by another user: waiters then poll, and
    /// hand-offs take up to the poll interval). Empty when all is well.
    pub fn warnings(&self) -> Vec<String> {
        self.inner.backend.warnings()
    }

    /// Forgets the names that are idle (nobody holds, waits for or has set them, and
    /// they carry no tag), so that a store does not keep a counter for every name it
    /// ever saw; answers how many it forgot. Fencing tokens never go back: the store
    /// keeps the highest counter of the names it forgot, and a name used again counts
    /// on from there. A forgotten name forgets its kind too (see [`Space::remove`]).
    /// `shm:` also does this by itself when its table fills up, `mem:` as its map
    /// grows, taking removed names first and idle names that keep a kind only if there
    /// are none; `sqlite:` and Redis only when asked.
    pub fn reclaim_idle(&self) -> Result<usize> {
        self.inner.backend.reclaim_idle()
    }

    /// Async [`Space::reclaim_idle`]: on a store whose steps wait on I/O (`sqlite:`,
    /// Redis) the work runs on the space's helper thread, never on the executor's.
    pub async fn reclaim_idle_async(&self) -> Result<usize> {
        self.off_executor(|backend| backend.reclaim_idle()).await
    }

    /// Runs whole-store work `f` for an async caller: in place on a store whose steps
    /// only touch memory, else on the space's helper thread.
    async fn off_executor<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Backend) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let backend = self.inner.backend.clone();
        if !backend.steps_wait() {
            return f(&*backend);
        }
        self.inner.offload.call(move || f(&*backend)).await
    }

    /// How full the store is, for stores that hold a fixed number of names (`shm:`);
    /// `None` for the others, which have no such limit.
    pub fn usage(&self) -> Option<Usage> {
        self.inner.backend.usage()
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

    /// Async [`Space::holders`]: never blocks the executor thread on a network store.
    pub async fn holders_async(&self, name: &str) -> Result<Vec<Holder>> {
        Ok(self.inspect_async(name).await?.0)
    }

    /// Async [`Space::waiting`].
    pub async fn waiting_async(&self, name: &str) -> Result<usize> {
        Ok(self.inspect_async(name).await?.1)
    }

    /// Async [`Space::force_release`].
    pub async fn force_release_async(&self, name: &str) -> Result<usize> {
        let handle = self.handle(name);
        handle.check()?;
        tracing::warn!(name, "force-releasing every hold");
        match handle.step_async(Op::ForceRelease).await? {
            Reply::Count(n) => Ok(n as usize),
            other => Err(crate::primitives::guard_unexpected(other)),
        }
    }

    /// Async [`Space::remove`].
    pub async fn remove_async(&self, name: &str) -> Result<bool> {
        let handle = self.handle(name);
        handle.check()?;
        match handle.step_async(Op::Remove).await? {
            Reply::Flag(had) => Ok(had),
            other => Err(crate::primitives::guard_unexpected(other)),
        }
    }

    async fn inspect_async(&self, name: &str) -> Result<(Vec<Holder>, usize)> {
        let handle = self.handle(name);
        handle.check()?;
        let reply = handle.step_async(Op::Holders).await?;
        Self::holders_of(reply)
    }

    fn inspect(&self, name: &str) -> Result<(Vec<Holder>, usize)> {
        let handle = self.handle(name);
        handle.check()?;
        Self::holders_of(handle.step(Op::Holders)?)
    }

    fn holders_of(reply: Reply) -> Result<(Vec<Holder>, usize)> {
        match reply {
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
                        process: Liveness::of(h.owner.verdict()),
                    })
                    .collect(),
                waiting as usize,
            )),
            other => Err(crate::primitives::guard_unexpected(other)),
        }
    }

    /// Releases every hold of `name`, whoever holds it: for operators, when a holder is
    /// known to be stuck or gone. The holders' guards find [`Error::LeaseLost`] when
    /// they release, and the next holder is told
    /// [`previous_owner_died`](crate::Guard::previous_owner_died). Returns how many
    /// holds were broken.
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

    /// Async [`Space::evict_tag`], run as [`Space::reclaim_idle_async`] is.
    pub async fn evict_tag_async(&self, tag: &str) -> Result<usize> {
        let tag = tag.to_owned();
        self.off_executor(move |backend| backend.evict_tag(&tag))
            .await
    }

    /// Calls `hook(name, error)` whenever dropping a guard of this space fails to
    /// release its hold: most often [`Error::LeaseLost`] (the lease lapsed, or the hold
    /// was force-released or evicted, so the section may not have been exclusive), or a
    /// store error. A drop cannot return an error, so without a hook such failures
    /// reach only a `tracing` warning (target `locksmith`); [`crate::Guard::release`]
    /// returns them instead. Hooks run on the dropping thread, in the order they were
    /// added, and are kept for the life of the space (every clone shares them); a hook
    /// must not panic, and should be quick.
    ///
    /// ```
    /// # fn main() -> locksmith::Result<()> {
    /// use std::sync::{Arc, Mutex};
    /// let space = locksmith::Space::open("mem:")?;
    /// let lost = Arc::new(Mutex::new(Vec::new()));
    /// space.on_drop_error({
    ///     let lost = lost.clone();
    ///     move |name, error| lost.lock().unwrap().push(format!("{name}: {error}"))
    /// });
    /// let guard = space.lock("job").acquire()?;
    /// space.force_release("job")?;     // an operator breaks the hold
    /// drop(guard);                     // the release fails: the hook hears of it
    /// assert_eq!(lost.lock().unwrap().len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn on_drop_error(&self, hook: impl Fn(&str, &Error) + Send + Sync + 'static) {
        self.inner
            .drop_hooks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(hook));
    }

    /// Removes the name `name` on purpose: forgets the kind and parameters it was
    /// first used with, so that it may be used as any primitive afterwards. Its
    /// fencing counter stays (tokens keep counting up). Refused with [`Error::Busy`]
    /// while the name is in use (held, waited for, a set event, a filling or broken
    /// barrier, an averager with values, or a lock whose hold was cut short and whose
    /// next holder has not been told yet); answers whether the name had a kind.
    ///
    /// Until removed (or evicted, [`Space::evict_tag`], or forgotten with every idle
    /// name, [`Space::reclaim_idle`]), every use of a name with
    /// another kind or other parameters is [`Error::Mismatch`], whether or not the
    /// name is in use at the time.
    pub fn remove(&self, name: &str) -> Result<bool> {
        let handle = self.handle(name);
        handle.check()?;
        match handle.step(Op::Remove)? {
            Reply::Flag(had) => Ok(had),
            other => Err(crate::primitives::guard_unexpected(other)),
        }
    }

    /// Removes the store at `url` (`locksmith destroy URL`): a `shm:` region, a
    /// `sqlite:` database with its `-wal`, `-shm` and `-bell` files (every shard's,
    /// and the shard directory if that leaves it empty), a Redis prefix's keys, a
    /// `mem:NAME` space. Answers whether there was a store to remove; a store that
    /// does not exist is not created for it.
    ///
    /// Refused with [`Error::Busy`], changing nothing, while a name of the store is
    /// held by a process that is not provably dead, or waited for, unless `force`.
    /// Fencing counters go with the store: a store created again at the URL counts
    /// tokens from 1. Processes that still have the store open keep using what they
    /// opened (on `shm:` and `sqlite:`, the removed files; `mem:NAME`, its old
    /// space), unseen by those that open the URL afterwards: remove a store only
    /// when its users are done with it.
    ///
    /// # Errors
    /// [`Error::Busy`] as above; [`Error::Unsupported`] for a store that cannot be
    /// removed this way; store errors.
    pub fn destroy(url: &str, force: bool) -> Result<bool> {
        if !store_exists(url)? {
            return Ok(false);
        }
        let space = Space::open(url)?;
        if !force {
            for name in space.names()? {
                let (holders, waiting) = space.inspect(&name)?;
                if waiting > 0 || holders.iter().any(|h| h.process != Liveness::Dead) {
                    return Err(Error::Busy { name });
                }
            }
        }
        let files = space.inner.backend.destroy()?;
        if let Some(("mem", name)) = url.split_once(':') {
            MemBackend::forget(name);
        }
        drop(space);
        for file in files {
            let removed = if file.is_dir() {
                // Only if empty: a directory holds only what the store put there.
                std::fs::remove_dir(&file)
            } else {
                std::fs::remove_file(&file)
            };
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) if file.is_dir() => {}
                Err(e) => {
                    return Err(Error::backend(format!(
                        "cannot remove {}: {e}",
                        file.display()
                    )))
                }
            }
        }
        Ok(true)
    }

    /// The names this space has state or fencing counters for, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        self.inner.backend.names()
    }

    /// Async [`Space::names`], run as [`Space::reclaim_idle_async`] is.
    pub async fn names_async(&self) -> Result<Vec<String>> {
        self.off_executor(|backend| backend.names()).await
    }
}

/// Whether there is a store at `url` to remove (without creating one).
fn store_exists(url: &str) -> Result<bool> {
    match url.split_once(':') {
        Some(("mem", name)) => Ok(!name.is_empty() && MemBackend::exists(name)),
        #[cfg(all(unix, feature = "sqlite"))]
        Some(("sqlite", rest)) => {
            let opts = crate::backend::sqlite::Options::parse(rest, url)?;
            Ok(opts.path.exists())
        }
        Some(("shm", spec)) => {
            let name = spec.split_once('?').map_or(spec, |(n, _)| n);
            Ok(std::path::Path::new("/dev/shm").join(name).exists())
        }
        // A server store: its keys are looked for when it is opened.
        _ => Ok(true),
    }
}

fn at(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

#[cfg(all(unix, feature = "sqlite"))]
fn default_url() -> Result<String> {
    use std::os::unix::fs::DirBuilderExt;
    use std::path::PathBuf;
    let absolute = |v: std::ffi::OsString| {
        let p = PathBuf::from(v);
        p.is_absolute().then_some(p)
    };
    let state = std::env::var_os("XDG_STATE_HOME")
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(absolute)
                .map(|h| h.join(".local").join("state"))
        })
        .ok_or_else(|| {
            Error::invalid(
                "neither XDG_STATE_HOME nor HOME names a directory for the default store: \
                 set LOCKSMITH_STORE",
            )
        })?;
    let dir = state.join("locksmith");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::backend(format!("cannot create '{}': {e}", dir.display())))?;
    let file = dir.join("locks.sqlite");
    let file = file
        .to_str()
        .ok_or_else(|| Error::invalid(format!("'{}' is not valid UTF-8", file.display())))?;
    Ok(format!("sqlite:{file}"))
}

#[cfg(not(all(unix, feature = "sqlite")))]
fn default_url() -> Result<String> {
    Ok("mem:".to_owned())
}
