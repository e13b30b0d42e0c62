//! The conformance suite: every behaviour the README promises (its sections "The
//! primitives" and "Semantics, where the seed systems differ") that a store can show,
//! written once against the public API and run against every backend.
//!
//! Adding a backend is one line in [`stores`]. Each test gets a fresh store from the
//! backend's `fresh_url`. Tests marked cross-process run only on stores that other
//! processes can open; they re-execute this binary with `LOCKSMITH_CHILD` set, which
//! [`main`] dispatches to [`processes::child_main`] before the harness starts.

mod acquirables;
mod asyncs;
mod barriers;
mod conditions;
mod destroy;
#[cfg(feature = "etcd")]
mod etcd;
mod events;
mod forms;
mod inputs;
mod kinds;
mod lease_loss;
mod locks;
#[cfg(feature = "postgres")]
mod postgres;
mod processes;
mod reclaim;
#[cfg(feature = "redis")]
mod redis;
mod seeds;
mod semaphores;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use locksmith::Space;

/// A backend under test.
#[derive(Clone, Copy, Debug)]
pub struct Store {
    /// The backend's name, which prefixes its tests' names.
    pub name: &'static str,
    /// A URL naming a fresh, empty store, that every `Space::open` of it shares.
    pub fresh_url: fn() -> String,
    /// Whether other processes can open the URL (and see the same primitives).
    pub cross_process: bool,
    /// Runs only the async and cross-process tests: a variant of another store that
    /// differs only in how async waiters sleep.
    pub async_only: bool,
}

impl Store {
    /// A fresh store, opened.
    pub fn open(&self) -> Space {
        let url = (self.fresh_url)();
        Space::open(&url).unwrap_or_else(|e| panic!("cannot open {url}: {e}"))
    }
}

/// Every backend the suite runs against: one line each.
fn stores() -> Vec<Store> {
    vec![
        Store {
            name: "mem",
            fresh_url: || format!("mem:conformance-{}", unique()),
            cross_process: false,
            async_only: false,
        },
        Store {
            name: "sqlite",
            fresh_url: || {
                format!(
                    "sqlite:{}/conformance-{}.sqlite",
                    env!("CARGO_TARGET_TMPDIR"),
                    unique()
                )
            },
            cross_process: true,
            async_only: false,
        },
        Store {
            name: "sqlite-sharded",
            fresh_url: || {
                format!(
                    "sqlite:{}/conformance-{}?shards=4",
                    env!("CARGO_TARGET_TMPDIR"),
                    unique()
                )
            },
            cross_process: true,
            async_only: false,
        },
        #[cfg(feature = "redis")]
        Store {
            name: "redis",
            fresh_url: redis::fresh_url,
            cross_process: true,
            async_only: false,
        },
        #[cfg(feature = "redis-tls")]
        Store {
            name: "redis-tls",
            fresh_url: redis::fresh_tls_url,
            cross_process: true,
            async_only: false,
        },
        #[cfg(feature = "etcd")]
        Store {
            name: "etcd",
            fresh_url: etcd::fresh_url,
            cross_process: true,
            async_only: false,
        },
        #[cfg(feature = "postgres")]
        Store {
            name: "postgres",
            fresh_url: postgres::fresh_url,
            cross_process: true,
            async_only: false,
        },
        #[cfg(target_os = "linux")]
        Store {
            name: "shm",
            fresh_url: || {
                format!(
                    "shm:{SHM_PREFIX}{}-{}?capacity=256&arena=8M&queue=8",
                    std::process::id(),
                    unique()
                )
            },
            cross_process: true,
            async_only: false,
        },
        // Async waiters through helper threads rather than io_uring: the path taken
        // where io_uring is unavailable (old kernels, seccomp, LOCKSMITH_URING=off).
        Store {
            name: "sqlite-threads",
            fresh_url: || {
                format!(
                    "sqlite:{}/conformance-{}.sqlite?uring=off",
                    env!("CARGO_TARGET_TMPDIR"),
                    unique()
                )
            },
            cross_process: true,
            async_only: true,
        },
        #[cfg(target_os = "linux")]
        Store {
            name: "shm-threads",
            fresh_url: || {
                format!(
                    "shm:{SHM_PREFIX}{}-{}?capacity=256&arena=8M&queue=8&uring=off",
                    std::process::id(),
                    unique()
                )
            },
            cross_process: true,
            async_only: true,
        },
    ]
}

/// Prefix of the shm regions the suite creates (under `/dev/shm`); [`main`] removes
/// the ones this run made.
const SHM_PREFIX: &str = "locksmith-conformance-";

fn remove_shm_regions() {
    let mine = format!("{SHM_PREFIX}{}-", std::process::id());
    if let Ok(dir) = std::fs::read_dir("/dev/shm") {
        for entry in dir.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&mine) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// A number no other call in this process returns.
pub fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    u64::from(std::process::id()) << 32 | NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A test: its name and the function that runs it against a store.
pub type Test = (&'static str, fn(&Store));

/// How long one test may run before it is reported as hung.
const HANG_GUARD: Duration = Duration::from_secs(180);

fn main() {
    if let Ok(role) = std::env::var("LOCKSMITH_CHILD") {
        std::process::exit(processes::child_main(&role));
    }
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    for store in stores() {
        let mut tests: Vec<Test> = Vec::new();
        if !store.async_only {
            tests.extend(locks::tests());
            tests.extend(semaphores::tests());
            tests.extend(events::tests());
            tests.extend(conditions::tests());
            tests.extend(barriers::tests());
            tests.extend(inputs::tests());
            tests.extend(kinds::tests());
            tests.extend(forms::tests());
            tests.extend(acquirables::tests());
            tests.extend(seeds::tests());
            tests.extend(reclaim::tests());
            tests.extend(lease_loss::tests());
            tests.extend(destroy::tests());
        }
        tests.extend(asyncs::tests());
        if store.cross_process {
            tests.extend(processes::tests());
        }
        #[cfg(feature = "redis")]
        if store.name == "redis" {
            tests.extend(redis::tests());
        }
        #[cfg(feature = "etcd")]
        if store.name == "etcd" {
            tests.extend(etcd::tests());
        }
        #[cfg(feature = "redis-tls")]
        if store.name == "redis-tls" {
            tests.extend(redis::tls_tests());
        }
        #[cfg(feature = "postgres")]
        if store.name == "postgres" {
            tests.extend(postgres::tests());
        }
        for (name, test) in tests {
            trials.push(Trial::test(
                format!("{}::{}", store.name, name),
                move || run_guarded(store, test),
            ));
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    remove_shm_regions();
    #[cfg(feature = "etcd")]
    etcd::remove_data();
    #[cfg(feature = "postgres")]
    postgres::drop_schemas();
    #[cfg(feature = "redis-tls")]
    redis::remove_tls_files();
    conclusion.exit();
}

/// Runs a test on its own thread, failing it if it panics or hangs.
fn run_guarded(store: Store, test: fn(&Store)) -> Result<(), Failed> {
    let (done, outcome) = mpsc::channel();
    std::thread::spawn(move || {
        let result = catch_unwind(AssertUnwindSafe(|| test(&store)));
        let _ = done.send(result.map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into())
        }));
    });
    match outcome.recv_timeout(HANG_GUARD) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(msg)) => Err(msg.into()),
        Err(_) => Err(format!("no result after {HANG_GUARD:?}: hung").into()),
    }
}

/// Runs `n` threads of `f(i)` and returns their results in order.
pub fn threads<T: Send + 'static>(
    n: usize,
    f: impl Fn(usize) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let f = f.clone();
            std::thread::spawn(move || f(i))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
        .collect()
}

/// Polls `check` until it holds, failing after a generous hang guard. For waiting on
/// state another thread changes, where the API offers no event to wait on.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}
