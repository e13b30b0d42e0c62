//! Steps: each one etcd transaction on the name's record, guarded by the revision it
//! read, with the shared state machine run in between.
//!
//! A step starts from the record this process last saw of the name (or reads it: one
//! round trip), runs [`apply`](crate::backend::model::apply) on it, and sends one `Txn`: *if* the record's
//! mod revision is still the one seen (for a name without a record: it still has none,
//! and the token floor is unchanged), *then* write the new record and the liveness keys
//! of the holds it granted or ended, *else* read the record and the floor afresh. A
//! conflict (another process wrote first) thus costs no extra round trip: the step runs
//! the model again on what the failed `Txn` returned, until it commits or the step's
//! time runs out. A step that changes nothing still sends its `Txn` (with no writes):
//! etcd answers it only once it is linearizable, so a reply never rests on a stale
//! record.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};

use super::client::{lock, Fault};
use super::{Inner, KeyState};
use crate::backend::model::{Ctx, Millis, Op, Record, Reply, State, Wake};
use crate::os::clock::now_millis;
use crate::owner::Owner;
use crate::{Error, Result};

/// A queued waiter that has not tried for this long is dropped from its queue (its
/// process is presumed gone); live waiters try at least every [`super::watch::POLL`].
const WAITER_TTL: Millis = 30_000;

/// The shortest time a step is given, even when the caller's deadline is closer.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);

/// How long a waiter without a deadline keeps trying while no member answers.
const OUTAGE: Duration = Duration::from_secs(30);

/// What this process last saw of a name: its record and the token floor.
#[derive(Clone, Debug)]
pub(super) struct Seen {
    /// The record's bytes; `None`: the name has no record (new, or reclaimed).
    value: Option<Vec<u8>>,
    /// The record's mod revision (0 without a record).
    rev: i64,
    /// The token floor, and its mod revision (0 if it was never set).
    floor: u64,
    floor_rev: i64,
}

/// What the caller allows a step.
#[derive(Clone, Copy, Debug)]
pub(super) struct Allow {
    /// Whether it may be sent again after an answer was lost (see [`retryable`]).
    pub retry: bool,
    /// A waiter's deadline: it keeps trying while no member answers, until then.
    pub deadline: Option<Instant>,
    pub patient: bool,
}

/// Whether `op` may be sent again after its answer was lost: it leaves the same state
/// whether it happened once or twice, or (an acquisition) this process can find out
/// whether it happened (see [`Inner::granted_by`]).
pub(super) fn retryable(op: &Op) -> bool {
    matches!(
        op,
        Op::Acquire(_)
            | Op::Renew { .. }
            | Op::Dequeue { .. }
            | Op::Check { .. }
            | Op::Holders
            | Op::Value { .. }
            | Op::EventSet { .. }
            | Op::EventClear
            | Op::EventRead
            | Op::BarrierAdvance { .. }
            | Op::BarrierAbort { .. }
            | Op::BarrierRead { .. }
            | Op::AvgGet
    )
}

/// A change to one record: an op of the state machine, or (evict) a function of it.
pub(super) type Change<'a> = dyn FnMut(&mut Record, &Ctx<'_>) -> Result<(Reply, Wake)> + Send + 'a;

fn parse_seen(resp: &etcd_client::TxnResponse) -> Option<Seen> {
    let mut out = Seen {
        value: None,
        rev: 0,
        floor: 0,
        floor_rev: 0,
    };
    let responses = resp.op_responses();
    let mut gets = responses.iter().filter_map(|r| match r {
        TxnOpResponse::Get(g) => Some(g),
        _ => None,
    });
    let record = gets.next()?;
    if let Some(kv) = record.kvs().first() {
        out.value = Some(kv.value().to_vec());
        out.rev = kv.mod_revision();
    }
    let floor = gets.next()?;
    if let Some(kv) = floor.kvs().first() {
        out.floor = std::str::from_utf8(kv.value())
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        out.floor_rev = kv.mod_revision();
    }
    Some(out)
}

/// The tokens of the holds `record` lists, with their owners.
fn holds(record: &Record) -> Vec<(Owner, u64)> {
    match &record.state {
        Some(State::Permits(p)) => p
            .holders
            .iter()
            .map(|h| (h.owner.clone(), h.token))
            .collect(),
        _ => Vec::new(),
    }
}

impl Inner {
    /// A transaction, on the member in use.
    async fn txn(&self, txn: Txn) -> std::result::Result<etcd_client::TxnResponse, Fault> {
        self.members
            .with(|mut c| async move { c.txn(txn).await })
            .await
    }

    /// A read, on the member in use.
    async fn get(
        &self,
        key: Vec<u8>,
        opts: GetOptions,
    ) -> std::result::Result<etcd_client::GetResponse, Fault> {
        self.members
            .with(|mut c| async move { c.get(key, Some(opts)).await })
            .await
    }

    /// Reads a name's record and the floor, in one round trip.
    async fn read(&self, ks: &KeyState) -> std::result::Result<Seen, Fault> {
        let txn = Txn::new().and_then(self.reads(ks));
        let resp = self.txn(txn).await?;
        parse_seen(&resp).ok_or_else(|| Fault::Refused("a malformed answer".into()))
    }

    fn reads(&self, ks: &KeyState) -> Vec<TxnOp> {
        vec![
            TxnOp::get(ks.record.clone(), None),
            TxnOp::get(self.keys.floor(), None),
        ]
    }

    /// The tokens whose liveness keys exist: the holds of `ks` whose leases live.
    async fn live_tokens(&self, ks: &KeyState) -> std::result::Result<HashSet<u64>, Fault> {
        let resp = self
            .get(
                ks.holds.clone(),
                GetOptions::new().with_prefix().with_keys_only(),
            )
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                std::str::from_utf8(kv.key().strip_prefix(ks.holds.as_slice())?)
                    .ok()?
                    .parse()
                    .ok()
            })
            .collect())
    }

    /// The token of the hold that the step `id` was granted, if its answer was lost
    /// but it happened: its liveness key carries the step's id.
    async fn granted_by(&self, ks: &KeyState, id: u64) -> std::result::Result<Option<u64>, Fault> {
        let resp = self
            .get(ks.holds.clone(), GetOptions::new().with_prefix())
            .await?;
        let id = id.to_string();
        Ok(resp.kvs().iter().find_map(|kv| {
            if kv.value() != id.as_bytes() {
                return None;
            }
            std::str::from_utf8(kv.key().strip_prefix(ks.holds.as_slice())?)
                .ok()?
                .parse()
                .ok()
        }))
    }

    /// Whether the liveness key of hold `token` exists.
    pub(super) async fn hold_lives(&self, ks: &KeyState, token: u64) -> Result<bool> {
        let resp = self
            .get(ks.hold(token), GetOptions::new().with_count_only())
            .await
            .map_err(|f| f.into_error(&self.url))?;
        Ok(resp.count() > 0)
    }

    /// The time a step may take: the step timeout, or a waiter's deadline.
    fn give_up(&self, allow: Allow, started: Instant) -> Instant {
        let own = started + self.timeout;
        match (allow.patient, allow.deadline) {
            (true, Some(d)) => d.max(started + MIN_ATTEMPT),
            (true, None) => started + OUTAGE.max(self.timeout),
            (false, Some(d)) => own.min(d.max(started + MIN_ATTEMPT)),
            (false, None) => own,
        }
    }

    /// Runs `change` on the record of `ks` as one transaction (see the module's doc).
    pub(super) async fn step(
        &self,
        ks: &KeyState,
        name: &str,
        change: &mut Change<'_>,
        allow: Allow,
        track: Track,
    ) -> Result<Reply> {
        let started = Instant::now();
        let give_up = match track {
            // A release that gets no answer is not given up on for a while: a hold
            // left behind would last as long as this process.
            Track::Release(_) => started + OUTAGE.max(self.timeout),
            _ => self.give_up(allow, started),
        };
        let id = crate::owner::fresh_id();
        let mut seen = lock(&ks.seen).clone();
        // After a write whose answer was lost: what it wrote, what it answered, and
        // how many levels of the released hold there were before it.
        let mut lost: Option<Lost> = None;
        let mut backoff = Duration::from_millis(20);
        loop {
            let attempt = async {
                let s = match seen.take() {
                    Some(s) => s,
                    None => self.read(ks).await?,
                };
                if let Some(l) = lost.take() {
                    if s.value.as_deref() == Some(l.wrote.as_slice()) {
                        // It happened, and nobody wrote since.
                        return Ok(Ok((l.reply, s)));
                    }
                    match track {
                        Track::Acquire => {
                            if let Some(token) = self.granted_by(ks, id).await? {
                                let grant = crate::backend::Grant {
                                    token,
                                    previous_owner_died: false,
                                };
                                return Ok(Ok((Reply::Granted(grant), s)));
                            }
                        }
                        Track::Release(token) => {
                            let now = s.value.as_deref().and_then(|v| levels(v, token));
                            if now.unwrap_or(0) < l.levels.unwrap_or(0) {
                                // The hold is gone, or has a level less: it happened.
                                return Ok(Ok((l.reply, s)));
                            }
                        }
                        Track::Plain if !allow.retry => {
                            return Ok(Err(Error::backend(format!(
                                "{}: the etcd cluster did not answer a step on '{name}', \
                                 which may or may not have happened",
                                self.url
                            ))));
                        }
                        Track::Plain => {}
                    }
                }
                self.attempt(ks, name, change, s, id, track).await
            };
            let fault = match attempt.await {
                Ok(Ok((reply, s))) => {
                    *lock(&ks.seen) = Some(s);
                    return Ok(reply);
                }
                Ok(Err(e)) => return Err(e),
                Err(Attempt::Conflict(fresh)) => {
                    seen = Some(fresh);
                    if Instant::now() >= give_up {
                        return Err(Error::backend(format!(
                            "{}: '{name}' changed under every attempt for {:?} (too many \
                             processes at once)",
                            self.url, self.timeout
                        )));
                    }
                    continue;
                }
                Err(Attempt::Fault(fault, wrote)) => {
                    if let Some(w) = wrote {
                        lost = Some(w);
                    }
                    fault
                }
            };
            *lock(&ks.seen) = None;
            match fault {
                Fault::LeaseGone => {
                    self.session.lost_any().await;
                }
                Fault::Transient(_) if Instant::now() < give_up => {
                    tokio::time::sleep(backoff.min(give_up - Instant::now())).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                fault => return Err(fault.into_error(&self.url)),
            }
        }
    }

    /// One try: the model on `s`, and the transaction.
    async fn attempt(
        &self,
        ks: &KeyState,
        name: &str,
        change: &mut Change<'_>,
        s: Seen,
        id: u64,
        track: Track,
    ) -> std::result::Result<Result<(Reply, Seen)>, Attempt> {
        let decoded = match &s.value {
            None => Ok(Record {
                next_token: s.floor,
                ..Record::default()
            }),
            Some(v) => serde_json::from_slice::<Record>(v),
        };
        let original = match decoded {
            Ok(r) => r,
            Err(e) => {
                return Ok(Err(Error::Damaged {
                    name: name.into(),
                    reason: e.to_string(),
                }))
            }
        };
        let before = holds(&original);
        let mut live: Option<HashSet<u64>> = None;
        let (record, out) = loop {
            match judge(&original, &before, live.as_ref(), change) {
                Some(done) => break done,
                None => {
                    // A blocked step asked whether a holder lives: look at the liveness
                    // keys (read after the record, so a key missing now was deleted by
                    // its lease's expiry, or by a write that makes this transaction
                    // fail).
                    live = Some(self.live_tokens(ks).await?);
                }
            }
        };
        let reply = match out {
            Ok((reply, _)) => reply,
            Err(e) => {
                // Refused: nothing is written, but the caller learns it only once the
                // record it judged is confirmed current.
                return match self.confirm(ks, &s).await? {
                    true => Ok(Err(e)),
                    false => Err(Attempt::Conflict(self.read(ks).await?)),
                };
            }
        };
        let fresh = s.value.is_none()
            && record.state.is_none()
            && record.kind.is_none()
            && record.tag.is_none()
            && record.next_token == s.floor;
        let value = serde_json::to_vec(&record)
            .map_err(|e| Attempt::Fault(Fault::Refused(e.to_string()), None))?;
        let changed = !fresh && s.value.as_deref() != Some(value.as_slice());
        let after = holds(&record);
        let added: Vec<u64> = after
            .iter()
            .map(|(_, t)| *t)
            .filter(|t| !before.iter().any(|(_, b)| b == t))
            .collect();
        let removed: Vec<u64> = before
            .iter()
            .map(|(_, t)| *t)
            .filter(|t| !after.iter().any(|(_, a)| a == t))
            .collect();
        let mut ops = Vec::new();
        if changed {
            ops.push(TxnOp::put(ks.record.clone(), value.clone(), None));
        }
        if !added.is_empty() {
            let lease = self
                .session
                .lease()
                .await
                .map_err(|f| Attempt::Fault(f, None))?;
            for t in &added {
                let opts = PutOptions::new().with_lease(lease);
                ops.push(TxnOp::put(ks.hold(*t), id.to_string(), Some(opts)));
            }
        }
        for t in &removed {
            ops.push(TxnOp::delete(ks.hold(*t), None));
        }
        let wrote = !ops.is_empty();
        let txn = Txn::new()
            .when(self.unchanged(ks, &s))
            .and_then(ops)
            .or_else(self.reads(ks));
        match self.txn(txn).await {
            Ok(resp) if resp.succeeded() => {
                let seen = if changed {
                    let rev = resp.header().map_or(0, |h| h.revision());
                    // Waiters of this process need not wait for the watch stream.
                    self.hub.wake(name);
                    Seen {
                        value: Some(value),
                        rev,
                        ..s
                    }
                } else {
                    if wrote {
                        self.hub.wake(name);
                    }
                    s
                };
                Ok(Ok((reply, seen)))
            }
            Ok(resp) => Err(Attempt::Conflict(parse_seen(&resp).ok_or_else(|| {
                Attempt::Fault(Fault::Refused("a malformed answer".into()), None)
            })?)),
            Err(fault) => {
                // A lost answer to a write: it may have happened.
                let levels = match track {
                    Track::Release(token) => s.value.as_deref().and_then(|v| levels(v, token)),
                    _ => None,
                };
                let maybe = (wrote && matches!(fault, Fault::Transient(_))).then(|| Lost {
                    wrote: if changed { value } else { Vec::new() },
                    reply,
                    levels,
                });
                Err(Attempt::Fault(fault, maybe))
            }
        }
    }

    /// The comparisons that hold while the record is as `s` saw it.
    fn unchanged(&self, ks: &KeyState, s: &Seen) -> Vec<Compare> {
        if s.rev > 0 {
            vec![Compare::mod_revision(
                ks.record.clone(),
                CompareOp::Equal,
                s.rev,
            )]
        } else {
            vec![
                Compare::version(ks.record.clone(), CompareOp::Equal, 0),
                Compare::mod_revision(self.keys.floor(), CompareOp::Equal, s.floor_rev),
            ]
        }
    }

    /// Whether the record is still as `s` saw it (a transaction of comparisons only).
    async fn confirm(&self, ks: &KeyState, s: &Seen) -> std::result::Result<bool, Attempt> {
        let txn = Txn::new().when(self.unchanged(ks, s));
        let resp = self.txn(txn).await?;
        Ok(resp.succeeded())
    }
}

/// Why a try did not settle the step.
pub(super) enum Attempt {
    /// Another process wrote first: here is what it left.
    Conflict(Seen),
    /// The cluster failed; with what the try wrote and answered, if the write may
    /// have happened.
    Fault(Fault, Option<Lost>),
}

/// A write whose answer was lost.
pub(super) struct Lost {
    wrote: Vec<u8>,
    reply: Reply,
    /// The levels of the hold a release gave back, before it.
    levels: Option<u32>,
}

/// What a step can find out about itself after its answer was lost.
#[derive(Clone, Copy, Debug)]
pub(super) enum Track {
    Plain,
    /// An acquisition: its grant's liveness key carries the step's id.
    Acquire,
    /// The release of (a level of) the hold with this token.
    Release(u64),
}

impl Track {
    pub(super) fn of(op: &Op) -> Track {
        match op {
            Op::Acquire(_) => Track::Acquire,
            Op::Release { token } | Op::ReleaseAll { token } | Op::CondWait { token, .. } => {
                Track::Release(*token)
            }
            _ => Track::Plain,
        }
    }
}

/// The levels of hold `token` in the record `value`.
fn levels(value: &[u8], token: u64) -> Option<u32> {
    let record: Record = serde_json::from_slice(value).ok()?;
    match record.state {
        Some(State::Permits(p)) => p.holders.iter().find(|h| h.token == token).map(|h| h.count),
        _ => None,
    }
}

impl From<Fault> for Attempt {
    fn from(f: Fault) -> Attempt {
        Attempt::Fault(f, None)
    }
}

/// Runs `change` on a copy of `original`; `None` if it asked whether a holder lives and
/// `live` (the tokens whose liveness keys exist) has not been read yet.
fn judge(
    original: &Record,
    before: &[(Owner, u64)],
    live: Option<&HashSet<u64>>,
    change: &mut Change<'_>,
) -> Option<(Record, Result<(Reply, Wake)>)> {
    let asked = Cell::new(false);
    let proven: RefCell<Vec<(Owner, bool)>> = RefCell::new(Vec::new());
    let is_dead = |o: &Owner| {
        let lapsed = match live {
            Some(l) => before.iter().any(|(h, t)| h == o && !l.contains(t)),
            None => {
                asked.set(asked.get() || before.iter().any(|(h, _)| h == o));
                false
            }
        };
        lapsed || same_host_dead(o, &proven)
    };
    let ctx = Ctx {
        now: now_millis(),
        is_dead: Some(&is_dead),
        waiter_ttl: Some(WAITER_TTL),
    };
    let mut record = original.clone();
    let out = change(&mut record, &ctx);
    if asked.get() && live.is_none() {
        return None;
    }
    Some((record, out))
}

/// Whether `o`'s process is proven gone (same host), each process looked up once per
/// step; this process's own owners live.
fn same_host_dead(o: &Owner, memo: &RefCell<Vec<(Owner, bool)>>) -> bool {
    let me = Owner::current_thread();
    if o.same_process(&me) {
        return false;
    }
    if let Some((_, dead)) = memo.borrow().iter().find(|(p, _)| p.same_process(o)) {
        return *dead;
    }
    let dead = o.is_dead();
    memo.borrow_mut().push((o.clone(), dead));
    dead
}
