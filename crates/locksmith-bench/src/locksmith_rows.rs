//! **The hook where locksmith's own rows go.** Everything else in the harness is peers.
//!
//! A row is one call on [`Ctx`]; the system name must start with `locksmith` (e.g.
//! `"locksmith shm"`, `"locksmith sqlite"`, `"locksmith mem"`, `"locksmith redis"`) so that
//! RESULTS.md computes every peer's ratio against it and checks the issue targets
//! ([`crate::report::TARGETS`] names the exact system strings it looks for).
//!
//! To add a scenario for a backend, give its lock a [`ProcLock`] impl ([`Held`] below
//! does it for any [`locksmith::Lock`]) and call the runners with an `open` closure that
//! opens the backend's space: it runs in each process after the fork, so each process
//! gets its own `Space`. `mem` below is the worked example for the one-process scenarios;
//! a cross-process backend adds `ctx.lock_contention`, `ctx.lock_handoff`,
//! `ctx.ping_pong` (a [`crate::harness::Signal`] impl) and `ctx.barrier2`.
//!
//! Each backend's rows go in its own function below, called from [`run`].

use crate::harness::{Channel, Ctx, ProcLock, Signal};
use crate::measure::keep;
use crate::scenario::{ASYNC, CONTENTION, HANDOFF, NAMES, OPEN, UNCONTENDED};

/// A locksmith lock as the harness holds locks: acquire, run, release (reporting errors).
#[derive(Debug)]
pub struct Held(pub locksmith::Lock);

impl ProcLock for Held {
    fn hold<R>(&mut self, f: impl FnOnce() -> R) -> anyhow::Result<R> {
        let guard = self.0.acquire()?;
        let out = f();
        guard.release()?;
        Ok(out)
    }
}

/// Adds locksmith's rows. Called by `locksmith-bench run` before the peers.
pub fn run(ctx: &mut Ctx) {
    mem(ctx);
    shm(ctx);
    sqlite(ctx);
    redis(ctx);
    names(ctx);
}

/// The in-process backend (`mem:`): uncontended, async, `run(f)`, opening.
fn mem(ctx: &mut Ctx) {
    let open = || Ok(Held(locksmith::Space::open("mem:")?.lock("bench")));
    ctx.lock_uncontended("locksmith mem", "Lock", "blocking acquire+release", open);
    let lock = match locksmith::Space::open("mem:") {
        Ok(space) => space.lock("bench"),
        Err(e) => return ctx.skip(ASYNC, "locksmith mem", "Lock", &e.to_string()),
    };
    ctx.async_per_op(
        ASYNC,
        "locksmith mem",
        "Lock",
        "acquire_async+release",
        || async {
            keep(&lock).acquire_async().await?.release()?;
            Ok(())
        },
    );
    ctx.async_per_op(
        ASYNC,
        "locksmith mem run(f)",
        "Lock",
        "run(ready f)",
        || async { Ok(keep(&lock).run(|| async {}).await?) },
    );
    let space = match locksmith::Space::open("mem:") {
        Ok(space) => space,
        Err(e) => return ctx.skip(OPEN, "locksmith mem", "Lock", &e.to_string()),
    };
    ctx.per_op(
        OPEN,
        "locksmith mem",
        "Lock",
        "space.lock(name) + first step",
        || {
            space.lock("bench-open").is_locked()?;
            Ok(())
        },
    );
}

/// The shared-memory backend: the placed `shm::Mutex` and `shm::Semaphore` (the
/// runtime.sync primitives, what the speed targets of issue 3 are about) and the
/// `shm:NAME` space's Lock, cross-process.
fn shm(ctx: &mut Ctx) {
    use locksmith::shm::{Layout, Mutex, MutexOptions, Region, Semaphore, SemaphoreOptions};
    let pid = std::process::id();
    let region_name = format!("locksmith-bench-placed-{pid}");
    let mut layout = Layout::new();
    let mutex_at = layout.add::<Mutex>();
    let ping_at = layout.add::<Semaphore>();
    let pong_at = layout.add::<Semaphore>();
    // Created before any fork; every process maps it by name and leaks the mapping
    // for the life of the run, so the placed handles can be 'static.
    let made = Region::create_with(&region_name, layout.size(), &Default::default(), |r| {
        Mutex::init(r.place(mutex_at)?, &MutexOptions::new().recursive(false))?;
        // Not tracking holders: in a ping-pong, the process that takes a permit is
        // never the one that gives it back.
        let untracked = SemaphoreOptions::new().track_holders(false);
        Semaphore::init_with(r.place(ping_at)?, 0, &untracked)?;
        Semaphore::init_with(r.place(pong_at)?, 0, &untracked)?;
        Ok(())
    });
    if let Err(e) = made {
        return ctx.skip(UNCONTENDED, "locksmith shm", "Lock", &e.to_string());
    }
    let region = || -> anyhow::Result<&'static Region> {
        Ok(Box::leak(Box::new(Region::open(&region_name)?)))
    };
    let open = || Ok(Placed(Mutex::attach(region()?.place(mutex_at)?)?));
    let note = "placed shm::Mutex";
    ctx.lock_uncontended("locksmith shm", "Lock", note, open);
    ctx.lock_contention("locksmith shm", note, open);
    ctx.lock_handoff("locksmith shm", "Lock", note, open);
    ctx.ping_pong(
        "locksmith shm",
        "Semaphore",
        "placed shm::Semaphore",
        |channel| {
            let at = match channel {
                Channel::Ping => ping_at,
                Channel::Pong => pong_at,
            };
            Ok(PlacedSignal(Semaphore::attach(region()?.place(at)?)?))
        },
    );
    let _ = Region::unlink(&region_name);

    let url = format!("shm:locksmith-bench-{pid}");
    let open = || Ok(Held(locksmith::Space::open(&url)?.lock("bench")));
    let note = "Space::open(\"shm:…\").lock()";
    ctx.lock_uncontended("locksmith shm Space", "Lock", note, open);
    ctx.lock_contention("locksmith shm Space", note, open);
    ctx.lock_handoff("locksmith shm Space", "Lock", note, open);
    let open_async = || HeldAsync::new(locksmith::Space::open(&url)?.lock("bench-async"));
    ctx.lock_handoff(
        "locksmith shm Space async",
        "Lock",
        "acquire_async waiter",
        open_async,
    );
    let _ = Region::unlink(&format!("locksmith-bench-{pid}"));
}

/// A placed mutex as the harness holds locks.
struct Placed(locksmith::shm::Mutex<'static>);

impl ProcLock for Placed {
    fn hold<R>(&mut self, f: impl FnOnce() -> R) -> anyhow::Result<R> {
        let guard = self.0.lock()?;
        let out = f();
        guard.release()?;
        Ok(out)
    }
}

/// One direction of a ping-pong over a placed semaphore.
struct PlacedSignal(locksmith::shm::Semaphore<'static>);

impl Signal for PlacedSignal {
    fn post(&mut self) -> anyhow::Result<()> {
        Ok(self.0.release()?)
    }

    fn wait(&mut self) -> anyhow::Result<()> {
        self.0.acquire(None)?;
        Ok(())
    }
}

/// The SQLite backend (`sqlite:`): uncontended vs the SQLite floor, contention, hand-off
/// to a blocking and to an async waiter.
fn sqlite(ctx: &mut Ctx) {
    let dir = std::env::temp_dir().join(format!("locksmith-bench-sqlite-{}", std::process::id()));
    // Only the default store makes its own directory.
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {e}", dir.display());
    }
    // A file per row: SQLite's per-process lock bookkeeping is copied into a forked
    // child, so a child must not open a file its parent still has open (the
    // uncontended row opens its file in this process).
    let url = |row: &str| format!("sqlite:{}/{row}.sqlite", dir.display());
    let (u, c, h, a) = (
        url("uncontended"),
        url("contention"),
        url("handoff"),
        url("async"),
    );
    let open = || Ok(Held(locksmith::Space::open(&u)?.lock("bench")));
    ctx.lock_uncontended("locksmith sqlite", "Lock", "one transaction per step", open);
    let open = || Ok(Held(locksmith::Space::open(&c)?.lock("bench")));
    ctx.lock_contention("locksmith sqlite", "", open);
    let open = || Ok(Held(locksmith::Space::open(&h)?.lock("bench")));
    ctx.lock_handoff("locksmith sqlite", "Lock", "doorbell wake-up", open);
    let open_async = || HeldAsync::new(locksmith::Space::open(&a)?.lock("bench"));
    ctx.lock_handoff(
        "locksmith sqlite async",
        "Lock",
        "acquire_async waiter",
        open_async,
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A locksmith lock taken with `acquire_async` on a current-thread runtime with its IO
/// driver on, as `#[tokio::main]` builds it (shm and sqlite waiters sleep through
/// io_uring there; without the IO driver they fall back to a helper thread).
struct HeldAsync {
    lock: locksmith::Lock,
    rt: tokio::runtime::Runtime,
}

impl HeldAsync {
    fn new(lock: locksmith::Lock) -> anyhow::Result<HeldAsync> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(HeldAsync { lock, rt })
    }
}

impl ProcLock for HeldAsync {
    fn hold<R>(&mut self, f: impl FnOnce() -> R) -> anyhow::Result<R> {
        let guard = self.rt.block_on(self.lock.acquire_async())?;
        let out = f();
        guard.release()?;
        Ok(out)
    }
}

/// The Redis backend (`redis://`): uncontended vs two round trips, hand-off.
fn redis(ctx: &mut Ctx) {
    const SYSTEM: &str = "locksmith redis";
    let Some(server) = ctx.redis_url.clone() else {
        for scenario in [UNCONTENDED, CONTENTION, HANDOFF] {
            ctx.skip(scenario, SYSTEM, "Lock", "no Redis server");
        }
        return;
    };
    // A key prefix of its own, so the run never meets another's keys.
    let url = format!("{server}?prefix=locksmith-bench-{}:", std::process::id());
    let open = || Ok(Held(locksmith::Space::open(&url)?.lock("bench")));
    ctx.lock_uncontended(SYSTEM, "Lock", "acquire+release, 1 step each", open);
    ctx.lock_contention(SYSTEM, "", open);
    ctx.lock_handoff(SYSTEM, "Lock", "push wake-up", open);
}

/// Cost per operation at 10 and at 1,000,000 names in one sqlite store (issue 8): the
/// store is filled with set events (one row each) outside the timed part. `--quick`
/// fills 10,000 instead of 1,000,000, and says so in the system name.
fn names(ctx: &mut Ctx) {
    let many: u32 = if ctx.quick { 10_000 } else { 1_000_000 };
    let dir = std::env::temp_dir().join(format!("locksmith-bench-names-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {e}", dir.display());
    }
    for n in [10, many] {
        let system = format!("locksmith sqlite @{n} names");
        let url = format!("sqlite:{}/names-{n}.sqlite", dir.display());
        let filled = locksmith::Space::open(&url).and_then(|space| {
            for i in 0..n {
                space.event(&format!("filler-{i}")).set()?;
            }
            Ok(space)
        });
        let lock = match filled {
            Ok(space) => space.lock("bench"),
            Err(e) => {
                ctx.skip(NAMES, &system, "Lock", &e.to_string());
                continue;
            }
        };
        ctx.per_op(
            NAMES,
            &system,
            "Lock",
            "acquire+release among n named rows",
            || {
                lock.acquire()?.release()?;
                Ok(())
            },
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
