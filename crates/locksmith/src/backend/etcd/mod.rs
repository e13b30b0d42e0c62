//! The etcd backend: primitives on an etcd cluster (v3 API), shared by every process,
//! on any machine, that opens the same `etcd://` URL and key prefix.
//!
//! # Keys
//!
//! Under the prefix `P` (`?prefix=`, default `locksmith/`):
//!
//! | key | value |
//! | --- | --- |
//! | `P r/NAME` | the name's [`Record`], JSON: its fencing counter, kind, tag and live state |
//! | `P h/NAME \0 TOKEN` | a hold's liveness key, attached to its space's etcd lease; its value is the id of the step that granted it |
//! | `P floor` | the token floor: the highest counter of a name [`Backend::reclaim_idle`] deleted |
//!
//! A primitive nobody holds, waits for or has set keeps only `P r/NAME`, with its
//! counter and kind (`{"next_token":N,"kind":…}`).
//!
//! # Steps
//!
//! One etcd transaction each, compare-and-swap on the record's mod revision, the shared
//! state machine run by the client in between (see [`steps`]). Every step is therefore
//! linearizable, as etcd's transactions are, through leader changes, member restarts and
//! partitions; a step that cannot commit within its time fails with
//! [`Error::Backend`], and never grants on a stale record.
//!
//! # Fencing
//!
//! The token is the record's own counter (`next_token`), written in the same
//! transaction as the grant: it moves only forward, whichever member leads, and
//! compaction (which drops old revisions, not current values) cannot touch it. A name
//! reclaimed and used again counts on from the floor.
//!
//! # Leases and dead holders
//!
//! Each space grants one etcd lease (`?ttl=` seconds, default 10, at least 2), on its
//! first hold, and a task keeps it alive every third of its TTL. Every hold writes its
//! liveness key attached to that lease in the transaction that grants it, and deletes it
//! in the one that ends it. When the process dies or is cut off from the cluster for a
//! TTL, etcd deletes the keys (it counts the TTL on the leader's monotonic clock); the
//! next step blocked by such a hold sees its key missing, drops the hold, and tells the
//! next holder [`previous_owner_died`](crate::Guard::previous_owner_died). A keep-alive
//! answer that says the lease is gone is the lease-lost signal: its holds are gone, and
//! the guards learn it at their next renewal, which asks whether the hold's key still
//! exists.
//!
//! A hold's upper bound: a holder cut off keeps believing it holds until its renewal
//! fails, while etcd keeps its keys for the TTL after the last keep-alive it
//! answered, and a new leader restarts every lease's TTL in full when it takes over,
//! so a dead holder's hold can outlast its last keep-alive by up to two TTLs (more if
//! leaders keep changing). Leases asked for explicitly (`lease(d)`) keep their meaning
//! through the state machine, on the clients' clocks: keep those in sync. The default
//! lease is the space's etcd lease.
//!
//! # Wake-ups
//!
//! See [`watch`]: one watch stream per process and space; waiters re-check at least
//! every second.

mod client;
mod gate;
mod options;
mod steps;
mod watch;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};

use self::client::{block_on, runtime, Fault, Members, Session};
use self::options::{redact, Options};
use self::steps::{retryable, Allow, Seen, Track};
use self::watch::{EtcdWatch, Hub};
use super::model::{self, Op, Record, Reply};
use super::{Backend, BoxFuture, Key, Watch};
use crate::{Error, Result};

/// The key layout of one prefix.
#[derive(Clone, Debug)]
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    fn record(&self, name: &str) -> Vec<u8> {
        format!("{}r/{name}", self.prefix).into_bytes()
    }

    fn records(&self) -> Vec<u8> {
        format!("{}r/", self.prefix).into_bytes()
    }

    fn all_holds(&self) -> Vec<u8> {
        format!("{}h/", self.prefix).into_bytes()
    }

    fn holds(&self, name: &str) -> Vec<u8> {
        format!("{}h/{name}\0", self.prefix).into_bytes()
    }

    fn floor(&self) -> Vec<u8> {
        format!("{}floor", self.prefix).into_bytes()
    }

    /// The name a key of this prefix belongs to.
    fn name_of<'k>(&self, key: &'k [u8]) -> Option<&'k str> {
        let rest = std::str::from_utf8(key.strip_prefix(self.prefix.as_bytes())?).ok()?;
        if let Some(name) = rest.strip_prefix("r/") {
            return Some(name);
        }
        rest.strip_prefix("h/")?.split('\0').next()
    }
}

/// What a [`Key`] resolves to.
pub(super) struct KeyState {
    record: Vec<u8>,
    /// The prefix of the name's liveness keys.
    holds: Vec<u8>,
    seen: Mutex<Option<Seen>>,
    /// This process's steps on the name, one at a time: they never conflict with each
    /// other, and the record seen last is the one in the store unless another process
    /// wrote.
    turn: tokio::sync::Mutex<()>,
    /// Shared by every handle of the name in this process (and space), so that each
    /// sees the others' waiters in line.
    gate: Arc<gate::Gate>,
}

impl KeyState {
    fn hold(&self, token: u64) -> Vec<u8> {
        let mut k = self.holds.clone();
        k.extend_from_slice(token.to_string().as_bytes());
        k
    }
}

/// A record as [`EtcdBackend::scan`] finds it: name, value, mod revision.
type Stored = (String, Vec<u8>, i64);

/// A space on an etcd cluster.
pub(crate) struct EtcdBackend {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    url: String,
    /// The URL as given (credentials included), to open again in a forked child.
    given: String,
    /// The process that opened it.
    pid: u32,
    /// In a forked child, the space opened again for it (see [`EtcdBackend::here`]).
    forked: Mutex<Option<Arc<EtcdBackend>>>,
    keys: Keys,
    members: Arc<Members>,
    session: Arc<Session>,
    hub: Arc<Hub>,
    timeout: Duration,
    /// The space's etcd lease TTL, also the default lease of holds.
    ttl: Duration,
}

impl fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("url", &self.inner.url)
            .finish()
    }
}

impl EtcdBackend {
    /// Opens `url`: connects, and starts the space's watch stream.
    pub(crate) fn open(url: &str) -> Result<EtcdBackend> {
        let opts = Options::parse(url)?;
        let shown = redact(url);
        let keys = Keys {
            prefix: opts.prefix.clone(),
        };
        let (members, revision) = block_on({
            let (opts, floor) = (opts.clone(), keys.floor());
            async move {
                let members = client::connect(&opts).await?;
                // A first read: a cluster that is down is an error now, not later; its
                // revision is where the watch stream starts. Each member is tried.
                let mut tried = 0;
                let resp = loop {
                    let floor = floor.clone();
                    match members
                        .with(|mut c| async move { c.get(floor, None).await })
                        .await
                    {
                        Ok(resp) => break resp,
                        Err(Fault::Transient(_)) if tried + 1 < opts.endpoints.len() => tried += 1,
                        Err(f) => return Err(f),
                    }
                };
                let revision = resp.header().map_or(0, |h| h.revision());
                Ok::<_, Fault>((Arc::new(members), revision))
            }
        })?
        .map_err(|f| f.into_error(&shown))?;
        let hub = Hub::for_space(
            &format!("{} {}", opts.identity(), crate::owner::pid()),
            &keys,
            &members,
            revision,
        )?;
        Ok(EtcdBackend {
            inner: Arc::new(Inner {
                url: shown,
                given: url.to_owned(),
                pid: crate::owner::pid(),
                forked: Mutex::new(None),
                keys,
                session: Session::new(members.clone(), opts.ttl),
                members,
                hub,
                timeout: opts.timeout,
                ttl: opts.ttl,
            }),
        })
    }

    /// In a forked child, the space opened again for it, the first time it is
    /// needed: the parent's connections, watch stream and lease keeper live on the
    /// parent's etcd runtime thread, which the child does not have. `None` in the
    /// process that opened the space.
    fn here(&self) -> Result<Option<Arc<EtcdBackend>>> {
        let pid = crate::owner::pid();
        if pid == self.inner.pid {
            return Ok(None);
        }
        let mut forked = client::lock(&self.inner.forked);
        if let Some(b) = &*forked {
            if b.inner.pid == pid {
                return Ok(Some(b.clone()));
            }
        }
        let opened = Arc::new(EtcdBackend::open(&self.inner.given)?);
        // A grandchild's copy of its parent's: left alone, as the inherited space is.
        if let Some(stale) = forked.replace(opened.clone()) {
            std::mem::forget(stale);
        }
        Ok(Some(opened))
    }

    fn state(&self, key: &Key) -> Arc<KeyState> {
        key.cached(|| {
            Arc::new(KeyState {
                record: self.inner.keys.record(key.name()),
                holds: self.inner.keys.holds(key.name()),
                seen: Mutex::new(None),
                turn: tokio::sync::Mutex::new(()),
                gate: self.inner.hub.gate(key.name()),
            })
        })
    }

    fn ttl_millis(&self) -> u64 {
        self.inner.ttl.as_millis() as u64
    }

    /// `op` as this store runs it: a hold with the default lease is carried by the
    /// space's etcd lease, not by a lease in the record.
    fn adapt(&self, mut op: Op) -> Op {
        if let Op::Acquire(a) = &mut op {
            if a.lease == Some(self.ttl_millis()) {
                a.lease = None;
            }
        }
        op
    }

    fn run(&self, key: &Key, op: Op, allow: Allow) -> BoxFuture<'static, Result<Reply>> {
        let op = self.adapt(op);
        let inner = self.inner.clone();
        let ks = self.state(key);
        let name: Arc<str> = key.name().into();
        let ttl = self.ttl_millis();
        Box::pin(async move {
            // Queued waiters behind another of this process wait here, not in the
            // store's queue (see `gate`).
            match &op {
                Op::Acquire(a) => {
                    let admitted = match a.ticket {
                        Some(ticket) => ks.gate.admit(ticket),
                        // A newcomer cannot overtake this process's queued waiters.
                        None => !ks.gate.busy(),
                    };
                    if !admitted {
                        return Ok(Reply::Blocked { retry_at: None });
                    }
                }
                Op::Dequeue { ticket } if ks.gate.finish(*ticket) => return Ok(Reply::Done),
                _ => {}
            }
            let ticket = match &op {
                Op::Acquire(a) => a.ticket,
                _ => None,
            };
            let _turn = ks.turn.lock().await;
            let reply = Self::run_op(&inner, &ks, &name, op, allow, ttl).await;
            if let Some(ticket) = ticket {
                if !matches!(reply, Ok(Reply::Blocked { .. })) {
                    ks.gate.finish(ticket);
                }
            }
            match reply {
                Ok(Reply::Holders { holders, waiting }) => Ok(Reply::Holders {
                    holders,
                    waiting: waiting.saturating_add(ks.gate.waiting() as u32),
                }),
                other => other,
            }
        })
    }

    async fn run_op(
        inner: &Inner,
        ks: &KeyState,
        name: &str,
        op: Op,
        allow: Allow,
        ttl: u64,
    ) -> Result<Reply> {
        {
            match op {
                // The default lease is renewed by the space's keeper: the hold stands
                // while its liveness key does.
                Op::Renew { token, lease } if lease == ttl => {
                    return match inner.hold_lives(ks, token).await? {
                        true => Ok(Reply::Done),
                        false => Err(Error::NotHeld {
                            name: name.to_string(),
                        }),
                    };
                }
                Op::Check { token } => {
                    let mut change = |r: &mut Record, ctx: &model::Ctx<'_>| {
                        model::apply(r, name, Op::Check { token }, ctx)
                    };
                    let reply = inner
                        .step(ks, name, &mut change, allow, Track::Plain)
                        .await?;
                    return match reply {
                        Reply::Flag(true) => Ok(Reply::Flag(inner.hold_lives(ks, token).await?)),
                        other => Ok(other),
                    };
                }
                _ => {}
            }
            let track = Track::of(&op);
            let mut change =
                |r: &mut Record, ctx: &model::Ctx<'_>| model::apply(r, name, op.clone(), ctx);
            inner.step(ks, name, &mut change, allow, track).await
        }
    }

    /// Runs a step on the etcd runtime for an async caller, safe to cancel: if the
    /// caller goes away while it is on the wire, a grant it would have received is
    /// given back and a queue place it would have kept is left.
    fn run_detached(&self, key: &Key, op: Op, allow: Allow) -> BoxFuture<'static, Result<Reply>> {
        if let Op::Acquire(a) = &op {
            // Waiting in line in this process: answered here, without a trip to the
            // etcd runtime's thread.
            let gate = &self.state(key).gate;
            let admitted = match a.ticket {
                Some(ticket) => gate.admit(ticket),
                None => !gate.busy(),
            };
            if !admitted {
                return Box::pin(std::future::ready(Ok(Reply::Blocked { retry_at: None })));
            }
        }
        let undo = match &op {
            Op::Acquire(a) => Some(a.ticket),
            _ => None,
        };
        let fut = self.run(key, op, allow);
        let backend = EtcdBackend {
            inner: self.inner.clone(),
        };
        let key = Key::new(key.name());
        Box::pin(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            runtime()?.spawn(async move {
                let out = fut.await;
                if let Err(Ok(reply)) = tx.send(out) {
                    let back = match (undo, reply) {
                        (Some(_), Reply::Granted(g)) => Some(Op::Release { token: g.token }),
                        (Some(Some(ticket)), Reply::Blocked { .. }) => Some(Op::Dequeue { ticket }),
                        _ => None,
                    };
                    if let Some(op) = back {
                        let allow = Allow {
                            retry: true,
                            deadline: None,
                            patient: false,
                        };
                        if let Err(e) = backend.run(&key, op, allow).await {
                            tracing::warn!(error = %e, "could not undo a cancelled acquisition");
                        }
                    }
                }
            });
            rx.await
                .map_err(|_| Error::backend("the etcd runtime stopped"))?
        })
    }

    fn allow(op: &Op, deadline: Option<Instant>, patient: bool) -> Allow {
        Allow {
            retry: retryable(op),
            deadline,
            patient,
        }
    }

    /// Every record of the prefix, and the floor with its mod revision.
    fn scan(&self) -> Result<(Vec<Stored>, (u64, i64))> {
        let inner = self.inner.clone();
        block_on(async move {
            let txn = Txn::new().and_then(vec![
                TxnOp::get(inner.keys.records(), Some(GetOptions::new().with_prefix())),
                TxnOp::get(inner.keys.floor(), None),
            ]);
            let resp = inner
                .members
                .with(|mut c| async move { c.txn(txn).await })
                .await
                .map_err(|f| f.into_error(&inner.url))?;
            let mut records = Vec::new();
            let mut floor = (0, 0);
            for (i, r) in resp.op_responses().into_iter().enumerate() {
                let etcd_client::TxnOpResponse::Get(g) = r else {
                    continue;
                };
                for kv in g.kvs() {
                    if i == 0 {
                        if let Some(name) = inner.keys.name_of(kv.key()) {
                            records.push((name.to_owned(), kv.value().to_vec(), kv.mod_revision()));
                        }
                    } else {
                        let v = std::str::from_utf8(kv.value())
                            .ok()
                            .and_then(|v| v.parse().ok());
                        floor = (v.unwrap_or(0), kv.mod_revision());
                    }
                }
            }
            Ok((records, floor))
        })?
    }
}

impl Drop for EtcdBackend {
    fn drop(&mut self) {
        if crate::owner::pid() != self.inner.pid {
            // A forked child's copy: what it holds belongs to the parent's runtime
            // thread and lease, which the child must not touch; it is left as is.
            std::mem::forget(self.inner.clone());
            return;
        }
        if Arc::strong_count(&self.inner) == 1 {
            self.inner.session.revoke();
        }
    }
}

impl Backend for EtcdBackend {
    fn step(&self, key: &Key, op: Op) -> Result<Reply> {
        if let Some(b) = self.here()? {
            return b.step(key, op);
        }
        let allow = Self::allow(&op, None, false);
        block_on(self.run(key, op, allow))?
    }

    fn step_async<'a>(&'a self, key: &'a Key, op: Op) -> BoxFuture<'a, Result<Reply>> {
        match self.here() {
            Ok(None) => {}
            Ok(Some(b)) => return Box::pin(async move { b.step_async(key, op).await }),
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        }
        let allow = Self::allow(&op, None, false);
        self.run_detached(key, op, allow)
    }

    fn wait_step(&self, key: &Key, op: Op, deadline: Option<Instant>) -> Result<Reply> {
        if let Some(b) = self.here()? {
            return b.wait_step(key, op, deadline);
        }
        let allow = Self::allow(&op, deadline, true);
        block_on(self.run(key, op, allow))?
    }

    fn wait_step_async<'a>(
        &'a self,
        key: &'a Key,
        op: Op,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Reply>> {
        match self.here() {
            Ok(None) => {}
            Ok(Some(b)) => {
                return Box::pin(async move { b.wait_step_async(key, op, deadline).await })
            }
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        }
        let allow = Self::allow(&op, deadline, true);
        self.run_detached(key, op, allow)
    }

    fn watch(&self, key: &Key, ticket: Option<u64>) -> Result<Box<dyn Watch>> {
        if let Some(b) = self.here()? {
            return b.watch(key, ticket);
        }
        let ks = self.state(key);
        // A waiter in line behind another of this process waits for its turn.
        let gated = ticket.and_then(|t| ks.gate.listen(t));
        // The slot of this process's stream (not cached with the key, which a forked
        // child inherits).
        let slot = self.inner.hub.slot(key.name());
        Ok(Box::new(EtcdWatch {
            // Only this process lets it through: no fallback check needed.
            poll: gated.is_none(),
            listener: gated.unwrap_or_else(|| slot.listen()),
            _slot: slot,
        }))
    }

    fn names(&self) -> Result<Vec<String>> {
        if let Some(b) = self.here()? {
            return b.names();
        }
        let (records, _) = self.scan()?;
        let mut names: Vec<String> = records.into_iter().map(|(n, _, _)| n).collect();
        names.sort();
        Ok(names)
    }

    fn evict_tag(&self, tag: &str) -> Result<usize> {
        if let Some(b) = self.here()? {
            return b.evict_tag(tag);
        }
        let (records, _) = self.scan()?;
        let mut evicted = 0;
        for (name, value, _) in records {
            let tagged = serde_json::from_slice::<Record>(&value)
                .is_ok_and(|r| r.tag.as_deref() == Some(tag) && r.state.is_some());
            if !tagged {
                continue;
            }
            let key = Key::new(&name);
            let ks = self.state(&key);
            let inner = self.inner.clone();
            let tag = tag.to_owned();
            let reply = block_on(async move {
                let mut change = |r: &mut Record, _: &model::Ctx<'_>| {
                    let dropped = model::evict(r, &tag);
                    Ok((Reply::Flag(dropped), model::Wake::default()))
                };
                let allow = Allow {
                    retry: true,
                    deadline: None,
                    patient: false,
                };
                inner
                    .step(&ks, &name, &mut change, allow, Track::Plain)
                    .await
            })??;
            if matches!(reply, Reply::Flag(true)) {
                evicted += 1;
            }
        }
        Ok(evicted)
    }

    fn reclaim_idle(&self) -> Result<usize> {
        if let Some(b) = self.here()? {
            return b.reclaim_idle();
        }
        let (records, (mut floor, mut floor_rev)) = self.scan()?;
        let mut reclaimed = 0;
        for (name, value, rev) in records {
            let Ok(record) = serde_json::from_slice::<Record>(&value) else {
                continue;
            };
            if record.state.is_some() || record.tag.is_some() {
                continue;
            }
            let inner = self.inner.clone();
            let highest = floor.max(record.next_token);
            let (rec_key, floor_key) = (inner.keys.record(&name), inner.keys.floor());
            // The floor first, in the same transaction as the deletion; a record or
            // floor changed meanwhile leaves the name for the next time.
            let txn = Txn::new()
                .when(vec![
                    Compare::mod_revision(rec_key.clone(), CompareOp::Equal, rev),
                    Compare::mod_revision(floor_key.clone(), CompareOp::Equal, floor_rev),
                ])
                .and_then(vec![
                    TxnOp::put(floor_key.clone(), highest.to_string(), None),
                    TxnOp::delete(rec_key, None),
                ]);
            let resp = block_on(async move {
                inner
                    .members
                    .with(|mut c| async move { c.txn(txn).await })
                    .await
            })?
            .map_err(|f| f.into_error(&self.inner.url))?;
            if resp.succeeded() {
                reclaimed += 1;
                floor = highest;
                floor_rev = resp.header().map_or(floor_rev, |h| h.revision());
            } else {
                // Someone else moved the floor: read it again before the next name.
                let (_, f) = self.scan()?;
                (floor, floor_rev) = f;
            }
        }
        Ok(reclaimed)
    }

    fn default_lease(&self) -> Option<Duration> {
        Some(self.inner.ttl)
    }

    fn destroy(&self) -> Result<Vec<std::path::PathBuf>> {
        if let Some(b) = self.here()? {
            return b.destroy();
        }
        // The records, the liveness keys and the floor, in one transaction; only
        // these, so that a longer prefix nested in this one (another space) stays.
        let inner = self.inner.clone();
        let keys = &inner.keys;
        let txn = Txn::new().and_then(vec![
            TxnOp::delete(keys.records(), Some(DeleteOptions::new().with_prefix())),
            TxnOp::delete(keys.all_holds(), Some(DeleteOptions::new().with_prefix())),
            TxnOp::delete(keys.floor(), None),
        ]);
        block_on(async move {
            inner
                .members
                .with(|mut c| async move { c.txn(txn).await })
                .await
        })?
        .map_err(|f| f.into_error(&self.inner.url))?;
        Ok(Vec::new())
    }
}
