//! Connections: the process's PostgreSQL runtime thread, a small pool of connections
//! per space, and how a failed attempt is classified.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, Config, NoTls};

use crate::{Error, Result};

/// The most connections one space's steps use at once: steps beyond that wait for one.
pub(crate) const MAX_CONNECTIONS: usize = 4;
/// And its releases and renewals, besides (see `step::urgent`).
pub(crate) const MAX_URGENT: usize = 2;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process's PostgreSQL runtime: two threads driving every connection and running
/// the state machine, whatever executor (if any) the callers use (two, so that one
/// space's crowd of steps does not hold up another's lease renewals). A forked child
/// starts its own (keyed by pid).
pub(crate) fn runtime() -> Result<tokio::runtime::Handle> {
    static RT: Mutex<Option<(u32, tokio::runtime::Handle)>> = Mutex::new(None);
    let mut rt = lock(&RT);
    let pid = crate::owner::pid();
    if let Some((owner, handle)) = &*rt {
        if *owner == pid {
            return Ok(handle.clone());
        }
    }
    let fail =
        |e: std::io::Error| Error::backend(format!("cannot start the postgres runtime: {e}"));
    let started = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("locksmith-postgres")
        .enable_all()
        .build()
        .map_err(fail)?;
    let handle = started.handle().clone();
    // The runtime lives as long as the process: its threads are never shut down.
    std::mem::forget(started);
    *rt = Some((pid, handle.clone()));
    Ok(handle)
}

/// Runs `fut` on the runtime and blocks the calling thread until it is done.
pub(crate) fn block_on<T: Send + 'static>(
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    runtime()?.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| Error::backend("the postgres runtime stopped"))
}

/// How one attempt at a step failed.
#[derive(Debug)]
pub(crate) enum Fault {
    /// Nothing was committed (no connection, or the transaction failed or broke before
    /// its COMMIT was sent): the step may be tried again.
    NotApplied(String),
    /// The connection broke or went silent while the COMMIT was on its way: the step
    /// may or may not have happened.
    Unknown(String),
    /// The server refused the step (a missing privilege, a broken schema): trying again
    /// would not help.
    Refused(String),
}

impl Fault {
    /// A failure of a statement sent before the COMMIT.
    pub(crate) fn before_commit(e: &tokio_postgres::Error) -> Fault {
        match e.code().map(|c| c.code()) {
            // Not retried: a server that refuses the statement will refuse it again.
            Some(code) if !retryable(code) => Fault::Refused(describe(e)),
            _ => Fault::NotApplied(describe(e)),
        }
    }

    /// A failure of the COMMIT itself: an error the server answered means it rolled
    /// back; a connection that broke leaves it unknown.
    pub(crate) fn at_commit(e: &tokio_postgres::Error) -> Fault {
        match e.as_db_error() {
            Some(_) if !e.is_closed() => Fault::before_commit(e),
            _ => Fault::Unknown(describe(e)),
        }
    }

    pub(crate) fn retryable(&self) -> bool {
        matches!(self, Fault::NotApplied(_))
    }

    pub(crate) fn into_error(self, url: &str) -> Error {
        match self {
            Fault::NotApplied(m) => Error::backend(format!("{url}: {m}")),
            Fault::Unknown(m) => Error::backend(format!(
                "{url}: {m} (the connection ended while the step was being committed: \
                 it may or may not have taken effect)"
            )),
            Fault::Refused(m) => Error::backend(format!("{url}: {m}")),
        }
    }
}

/// Whether a failure with SQLSTATE `code` may pass if tried again: the server going
/// away or shutting down, a connection ended by an administrator, a serialization
/// failure or deadlock, a duplicate key of a name created at the same moment.
fn retryable(code: &str) -> bool {
    // (40003, statement completion unknown, is not among them.)
    (matches!(&code[..2], "08" | "57" | "53" | "40") && code != "40003") || code == "23505"
}

/// An error on one line, with the server's message when there is one.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    let text = match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The connections of one space.
pub(crate) struct Pool {
    config: Config,
    /// Idle connections, and the process they belong to (a forked child must not use
    /// its parent's).
    idle: Mutex<(u32, Vec<Client>)>,
    permits: Arc<Semaphore>,
    urgent: Arc<Semaphore>,
}

/// A connection taken from the pool; give it back with [`Pool::put`] if it is sound.
pub(crate) struct Pooled {
    pub client: Client,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    pub(crate) fn new(config: Config) -> Pool {
        Pool {
            config,
            idle: Mutex::new((crate::owner::pid(), Vec::new())),
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            urgent: Arc::new(Semaphore::new(MAX_URGENT)),
        }
    }

    /// A connection: an idle one, or a new one; `urgent`, from the lane of releases and
    /// renewals. Runs on the runtime.
    pub(crate) async fn get(&self, urgent: bool) -> std::result::Result<Pooled, Fault> {
        let lane = if urgent { &self.urgent } else { &self.permits };
        let permit = lane
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Fault::Refused("the connection pool closed".into()))?;
        let pooled = {
            let mut idle = lock(&self.idle);
            let pid = crate::owner::pid();
            if idle.0 != pid {
                *idle = (pid, Vec::new());
            }
            let mut found = None;
            while let Some(c) = idle.1.pop() {
                if !c.is_closed() {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        let client = match pooled {
            Some(c) => c,
            None => connect(&self.config).await?,
        };
        Ok(Pooled {
            client,
            _permit: permit,
        })
    }

    /// Gives back a connection whose last transaction ended (committed or rolled back).
    pub(crate) fn put(&self, pooled: Pooled) {
        let mut idle = lock(&self.idle);
        if idle.0 == crate::owner::pid() && !pooled.client.is_closed() {
            idle.1.push(pooled.client);
        }
    }
}

/// A new connection, driven by a task of the runtime.
pub(crate) async fn connect(config: &Config) -> std::result::Result<Client, Fault> {
    let (client, connection) = config.connect(NoTls).await.map_err(|e| match e.code() {
        // Wrong password, unknown database or role: no retry will fix that.
        Some(c) if c.code().starts_with("28") || c.code() == "3D000" => {
            Fault::Refused(describe(&e))
        }
        _ => Fault::NotApplied(format!("cannot connect: {}", describe(&e))),
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "a postgres connection ended");
        }
    });
    Ok(client)
}

/// Runs `fut` with a time limit; past it, `late` says what the attempt left behind.
pub(crate) async fn within<T>(
    budget: Duration,
    fut: impl Future<Output = std::result::Result<T, Fault>>,
    late: impl FnOnce() -> Fault,
) -> std::result::Result<T, Fault> {
    match tokio::time::timeout(budget, fut).await {
        Ok(out) => out,
        Err(_) => Err(late()),
    }
}
