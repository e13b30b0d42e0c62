//! The PostgreSQL backend: primitives shared by every process, on any machine, that
//! opens the same `postgres://` database and schema.
//!
//! # Storage
//!
//! The store lives in a schema of its own (`?schema=`, default `locksmith`), created
//! on first use: a `meta` table (the schema version, the token floor) and one row per
//! name in `prim`, like the sqlite store's (`name`, the fencing counter `token`, `tag`,
//! the live `state` as JSON, the `kind` fixed by first use). A schema that holds other
//! tables, or a newer version of the store, is refused and left as it is.
//!
//! # Steps
//!
//! Each [`Backend::step`] is one transaction on its name's row, in two round trips
//! (see [`step`]): the row is locked (`SELECT … FOR UPDATE`) and read with the server's
//! clock, the shared state machine ([`model::apply`](super::model)) runs here, and the
//! row is written back, with its notification, as the transaction commits. Lease times
//! come from `clock_timestamp()`, never this host's clock. Statements are unnamed and
//! nothing outlives a transaction, so the store works through a transaction-pooling
//! proxy. [`Backend::reclaim_idle`] raises the token floor to the counters of the rows
//! it deletes, in the same statement: a name used again never repeats a token.
//!
//! A step that fails before its COMMIT was sent changed nothing, and is tried again
//! (a connection ended by the server, a server restarting) until the step timeout
//! (`?timeout=MS`, 10 s) or, for a waiter, its deadline; one whose connection broke
//! while the COMMIT was on its way is reported as [`Error::Backend`]: it may or may not
//! have happened, and it is never reported as a grant.
//!
//! # Waking
//!
//! LISTEN/NOTIFY: see [`watch`]. Only one waiter per name and process queues in the
//! row (see [`Gates`]).
//!
//! # Holders that die
//!
//! As on Redis, every hold has a lease on the server's clock (the caller's, or
//! [`DEFAULT_LEASE`], renewed while the holder lives); a holder on this host whose
//! process is gone is dropped at once by the next step it blocks.

mod conn;
mod options;
mod schema;
mod step;
mod watch;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use self::conn::{block_on, runtime, Fault, Pool};
pub(crate) use self::options::Options;
use self::schema::Refusal;
use self::step::{Outcome, Sql};
use self::watch::{Hub, LocalWatch, PgWatch, Slot};
use super::gates::{Finished, Gates};
use super::model::{Millis, Op, Reply};
use super::{Backend, BoxFuture, Key, Watch};
use crate::{BrokenCause, Error, Result};

/// The lease of a hold taken without one: renewed while the holder lives, it bounds
/// how long a dead holder on another host blocks the others.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// A queued waiter that has not tried for this long is dropped from the queue; live
/// waiters look at least every [`watch::POLL`].
const WAITER_TTL: Millis = 30_000;

/// How long a waiter without a deadline keeps retrying while the server cannot be
/// reached, before it reports the error.
const OUTAGE: Duration = Duration::from_secs(30);

/// The shortest time an attempt is given, even when the caller's deadline is closer.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);

/// The `postgres://` backend.
pub(crate) struct PgBackend {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    schema: String,
    timeout: Duration,
    pool: Pool,
    sql: Sql,
    channel: String,
    hub: Arc<Hub>,
    gates: Arc<Gates>,
}

impl fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgBackend")
            .field("url", &self.inner.url)
            .finish()
    }
}

/// What a [`Key`] resolves to.
struct KeyInfo {
    name: Arc<str>,
    slot: Arc<Slot>,
    /// Whether this process's last acquisition of the name was refused: newcomers then
    /// peek before they lock (see `step::peek`).
    busy: AtomicBool,
}

impl PgBackend {
    /// Opens the store `url` names: checks (or creates) its schema and listens for its
    /// wake-ups before returning.
    pub(crate) fn open(url: &str) -> Result<PgBackend> {
        let opts = Options::parse(url)?;
        let deadline = Instant::now() + opts.timeout;
        let channel = watch::channel(&opts.schema);
        let hub = Hub::for_server(&opts.server_identity(), &opts.config)?;
        let inner = Arc::new(Inner {
            url: opts.display.clone(),
            schema: opts.schema.clone(),
            timeout: opts.timeout,
            pool: Pool::new(opts.config.clone()),
            sql: Sql::new(&opts.schema, channel.clone()),
            channel,
            hub,
            gates: Arc::default(),
        });
        let opened = block_on({
            let inner = inner.clone();
            let schema = opts.schema.clone();
            async move { inner.open(&schema, deadline).await }
        });
        let backend = PgBackend { inner };
        opened??;
        Ok(backend)
    }

    fn info(&self, key: &Key) -> Arc<KeyInfo> {
        key.cached(|| {
            Arc::new(KeyInfo {
                name: key.name().into(),
                slot: self.inner.hub.slot(&self.inner.channel, key.name()),
                busy: AtomicBool::new(false),
            })
        })
    }

    /// A step from a blocking caller.
    fn step_blocking(&self, key: &Key, op: Op, deadline: Wait) -> Result<Reply> {
        let (inner, info) = (self.inner.clone(), self.info(key));
        block_on(async move { inner.step(&info, op, deadline).await })?
    }

    /// A step from an async caller, on any executor, safe to cancel: if the caller
    /// goes away before it took the reply (while the step is on the wire, or after the
    /// reply came but before the caller ran again), what the reply gave it is undone
    /// (see [`undo_of`]).
    fn step_detached(
        &self,
        key: &Key,
        op: Op,
        deadline: Wait,
    ) -> BoxFuture<'static, Result<Reply>> {
        let (inner, info) = (self.inner.clone(), self.info(key));
        Box::pin(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let runtime = runtime()?;
            let taker = Taker {
                rx,
                undo: Some(Undoer {
                    inner: inner.clone(),
                    info: info.clone(),
                    op: op.clone(),
                    runtime: runtime.clone(),
                }),
            };
            runtime.spawn(async move {
                let out = inner.step(&info, op.clone(), deadline).await;
                if let Err(out) = tx.send(out) {
                    Undoer::run(&inner, &info, &op, out).await;
                }
            });
            taker.await
        })
    }
}

/// The receiving end of a detached step. Dropped before it took the reply, it undoes
/// what a reply that arrived meanwhile gave; a reply still to come is undone by the
/// step's task, which then finds nobody to send it to.
struct Taker {
    rx: tokio::sync::oneshot::Receiver<Result<Reply>>,
    undo: Option<Undoer>,
}

/// What undoing a detached step's reply needs.
struct Undoer {
    inner: Arc<Inner>,
    info: Arc<KeyInfo>,
    op: Op,
    runtime: tokio::runtime::Handle,
}

impl Undoer {
    async fn run(inner: &Inner, info: &KeyInfo, op: &Op, out: Result<Reply>) {
        if let Some(undo) = undo_of(op, &out) {
            if let Err(e) = inner.step(info, undo, Wait::Once).await {
                tracing::warn!(error = %e, "could not undo a cancelled step");
            }
        }
    }
}

impl Future for Taker {
    type Output = Result<Reply>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Reply>> {
        let out = std::task::ready!(Pin::new(&mut self.rx).poll(cx));
        self.undo = None;
        Poll::Ready(out.map_err(|_| Error::backend("the postgres runtime stopped"))?)
    }
}

impl Drop for Taker {
    fn drop(&mut self) {
        let Some(Undoer {
            inner,
            info,
            op,
            runtime,
        }) = self.undo.take()
        else {
            return;
        };
        // Closed first: from here on the step's task cannot send, so exactly one of
        // the two undoes a reply.
        self.rx.close();
        if let Ok(out) = self.rx.try_recv() {
            runtime.spawn(async move { Undoer::run(&inner, &info, &op, out).await });
        }
    }
}

/// What undoes the reply `out` to `op` for a caller that went away without it: a grant
/// is given back, a queue place is left, and a barrier arrival breaks its generation
/// (as the caller would have on being dropped: the other parties must not wait for a
/// party that is gone).
fn undo_of(op: &Op, out: &Result<Reply>) -> Option<Op> {
    match (op, out) {
        (Op::Acquire(_), Ok(Reply::Granted(g))) => Some(Op::Release { token: g.token }),
        (Op::Acquire(a), Ok(Reply::Blocked { .. })) => {
            a.ticket.map(|ticket| Op::Dequeue { ticket })
        }
        (Op::BarrierArrive { parties, .. }, Ok(Reply::Arrived { generation, .. })) => {
            Some(Op::BarrierAbort {
                parties: *parties,
                generation: Some(*generation),
                cause: BrokenCause::Aborted,
            })
        }
        _ => None,
    }
}

impl Drop for PgBackend {
    fn drop(&mut self) {
        self.inner.hub.unsubscribe(&self.inner.channel);
    }
}

/// How long a step may keep trying.
#[derive(Clone, Copy)]
enum Wait {
    /// A plain step: within the step timeout.
    Once,
    /// A waiter's step: until its deadline (`None`: for [`OUTAGE`]).
    Until(Option<Instant>),
}

impl Inner {
    async fn open(&self, schema: &str, deadline: Instant) -> Result<()> {
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .max(MIN_ATTEMPT);
        let checked = conn::within(
            budget,
            async {
                let pooled = self.pool.get(false).await?;
                match schema::ensure(&pooled.client, schema).await {
                    Ok(()) => {
                        self.pool.put(pooled);
                        Ok(Ok(()))
                    }
                    Err(Refusal::Foreign(e)) => {
                        self.pool.put(pooled);
                        Ok(Err(e))
                    }
                    Err(Refusal::Fault(f)) => Err(f),
                }
            },
            || Fault::NotApplied(format!("no answer within {} ms", budget.as_millis())),
        )
        .await;
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(f) => return Err(f.into_error(&self.url)),
        }
        self.hub
            .subscribe(&self.channel, deadline.max(Instant::now() + MIN_ATTEMPT))
            .await
            .map_err(|e| Error::backend(format!("{}: {e}", self.url)))
    }

    /// A step, with the process's gate in front of the row's queue.
    async fn step(&self, info: &KeyInfo, op: Op, wait: Wait) -> Result<Reply> {
        let name = &*info.name;
        match op {
            Op::Acquire(a) if a.ticket.is_some() => {
                let ticket = a.ticket.unwrap_or_default();
                if !self.gates.admit(name, ticket) {
                    // Behind another waiter of this process: no need to ask the server.
                    return Ok(Reply::Blocked { retry_at: None });
                }
                let reply = self.step_db(info, Op::Acquire(a), wait).await;
                if !matches!(reply, Ok(Reply::Blocked { .. })) {
                    self.finish_ticket(info, ticket);
                }
                reply
            }
            Op::Dequeue { ticket } => {
                if self.finish_ticket(info, ticket) == Finished::Gated {
                    // It never reached the row's queue.
                    return Ok(Reply::Done);
                }
                self.step_db(info, op, wait).await
            }
            Op::CondCheck { ticket } | Op::CondCancel { ticket } => {
                let cancel = matches!(op, Op::CondCancel { .. });
                let reply = self.step_db(info, op, wait).await?;
                if cancel || matches!(reply, Reply::Flag(true)) {
                    self.finish_ticket(info, ticket);
                }
                Ok(reply)
            }
            Op::Holders => match self.step_db(info, op, wait).await? {
                Reply::Holders { holders, waiting } => Ok(Reply::Holders {
                    holders,
                    waiting: waiting.saturating_add(self.gates.gated(name) as u32),
                }),
                other => Ok(other),
            },
            op => self.step_db(info, op, wait).await,
        }
    }

    fn finish_ticket(&self, info: &KeyInfo, ticket: u64) -> Finished {
        let (finished, _promoted) = self.gates.finish(&info.name, ticket);
        finished
    }

    /// One step as one transaction, tried again while it surely changed nothing and
    /// time allows.
    async fn step_db(&self, info: &KeyInfo, op: Op, wait: Wait) -> Result<Reply> {
        let started = Instant::now();
        let give_up = match wait {
            Wait::Once => started + self.timeout,
            Wait::Until(Some(d)) => d.max(started + MIN_ATTEMPT),
            Wait::Until(None) => started + OUTAGE,
        };
        let newcomer = matches!(&op, Op::Acquire(a) if a.ticket.is_none());
        let mut backoff = Duration::ZERO;
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            let budget = self.timeout.min(left.max(MIN_ATTEMPT));
            let peek = newcomer && info.busy.load(Ordering::Relaxed);
            let attempt = step::attempt(
                &self.pool, &self.sql, &info.name, &op, WAITER_TTL, budget, peek,
            );
            let fault = match attempt.await {
                Ok(Ok(Outcome {
                    reply,
                    all,
                    tickets,
                })) => {
                    // This process's watchers need not wait for the notification's
                    // trip through the server.
                    info.slot.wake(all, &tickets);
                    if let Op::Acquire(_) = op {
                        info.busy
                            .store(matches!(reply, Reply::Blocked { .. }), Ordering::Relaxed);
                    }
                    return Ok(reply);
                }
                Ok(Err(e)) => return Err(e),
                Err(f) => f,
            };
            let now = Instant::now();
            if !fault.retryable() || now + backoff >= give_up {
                return Err(fault.into_error(&self.url));
            }
            tracing::debug!(?fault, "retrying a postgres step");
            // The first retry at once: a pooled connection the server ended is the
            // usual cause, and a fresh one serves.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
        }
    }

    /// Runs `f` on a pooled connection with the step timeout, retrying as a plain step.
    async fn with_client<T>(
        &self,
        f: impl for<'c> Fn(&'c tokio_postgres::Client) -> BoxFuture<'c, std::result::Result<T, Fault>>,
    ) -> Result<T> {
        let give_up = Instant::now() + self.timeout;
        let mut backoff = Duration::ZERO;
        loop {
            let budget = self.timeout;
            let out = async {
                let pooled = self.pool.get(false).await?;
                let out = conn::within(budget, f(&pooled.client), || {
                    Fault::Unknown(format!("no answer within {} ms", budget.as_millis()))
                })
                .await;
                if out.is_ok() {
                    self.pool.put(pooled);
                }
                out
            }
            .await;
            let fault = match out {
                Ok(t) => return Ok(t),
                Err(f) => f,
            };
            if !fault.retryable() || Instant::now() + backoff >= give_up {
                return Err(fault.into_error(&self.url));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
        }
    }
}

impl Backend for PgBackend {
    fn step(&self, key: &Key, op: Op) -> Result<Reply> {
        self.step_blocking(key, op, Wait::Once)
    }

    fn step_async<'a>(&'a self, key: &'a Key, op: Op) -> BoxFuture<'a, Result<Reply>> {
        self.step_detached(key, op, Wait::Once)
    }

    fn wait_step(&self, key: &Key, op: Op, deadline: Option<Instant>) -> Result<Reply> {
        self.step_blocking(key, op, Wait::Until(deadline))
    }

    fn wait_step_async<'a>(
        &'a self,
        key: &'a Key,
        op: Op,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Reply>> {
        self.step_detached(key, op, Wait::Until(deadline))
    }

    fn watch(&self, key: &Key, ticket: Option<u64>) -> Result<Box<dyn Watch>> {
        let info = self.info(key);
        let local = ticket.map(|t| LocalWatch {
            listener: self.inner.gates.listen(key.name(), t),
            gates: self.inner.gates.clone(),
            name: info.name.clone(),
            ticket: t,
        });
        Ok(Box::new(PgWatch::new(
            self.inner.hub.clone(),
            info.slot.clone(),
            ticket,
            local,
        )))
    }

    fn names(&self) -> Result<Vec<String>> {
        let inner = self.inner.clone();
        block_on(async move {
            inner
                .with_client(|c| {
                    let sql = inner.sql.names.clone();
                    Box::pin(async move {
                        let rows = c
                            .query_typed(&sql, &[])
                            .await
                            .map_err(|e| Fault::before_commit(&e))?;
                        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
                    })
                })
                .await
        })?
    }

    fn evict_tag(&self, tag: &str) -> Result<usize> {
        let inner = self.inner.clone();
        let tag = tag.to_owned();
        block_on(async move {
            inner
                .with_client(|c| {
                    let (inner, tag) = (inner.clone(), tag.clone());
                    Box::pin(async move { step::evict(c, &inner.sql, &tag).await })
                })
                .await
                .map(|names| names.len())
        })?
    }

    fn reclaim_idle(&self) -> Result<usize> {
        let inner = self.inner.clone();
        block_on(async move {
            inner
                .with_client(|c| {
                    let sql = inner.sql.reclaim.clone();
                    Box::pin(async move {
                        let rows = c
                            .query_typed(&sql, &[])
                            .await
                            .map_err(|e| Fault::before_commit(&e))?;
                        Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0)) as usize)
                    })
                })
                .await
        })?
    }

    fn default_lease(&self) -> Option<Duration> {
        Some(DEFAULT_LEASE)
    }

    fn destroy(&self) -> Result<Vec<std::path::PathBuf>> {
        let inner = self.inner.clone();
        block_on(async move {
            inner
                .with_client(|c| {
                    let schema = inner.schema.clone();
                    Box::pin(async move { schema::remove(c, &schema).await })
                })
                .await
        })??;
        Ok(Vec::new())
    }
}
