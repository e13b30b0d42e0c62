//! The state machine of every primitive, written once as a pure function.
//!
//! [`apply`] takes the [`Record`] of one name and an [`Op`], changes the record and
//! says what to answer and whom to wake. A store that can read and write one record
//! atomically (a mutex around a map; one SQLite transaction) gets every primitive's
//! semantics by calling it. An op that fails leaves the record as it was, apart from
//! dropping holders whose lease already lapsed, which no caller can observe.
//!
//! # Records
//!
//! A record lives as long as its name has been used: `next_token` is the fencing
//! counter and must never go back, so a free primitive keeps a record with that counter
//! and its [`Kind`] (`state: None`). The kind is fixed by the first op that names one
//! and checked by every later op, busy or idle, until the name is removed on purpose
//! ([`Op::Remove`] of an idle name, or [`evict`]). Everything else is dropped the
//! moment the primitive is idle.
//!
//! # Waiter queue
//!
//! Permit kinds queue their waiters first-come first-served. A waiter's first failed
//! attempt puts its ticket at the back of `queue`; it is granted only once every waiter
//! ahead of it could be granted too, and a newcomer without a ticket is granted only if
//! the whole queue could. So nobody overtakes a queued waiter, and a change wakes just
//! the tickets that can now proceed.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::owner::Owner;
use crate::{BrokenCause, Error, Result};

/// Milliseconds since the Unix epoch, the time unit of records.
pub(crate) type Millis = u64;

/// Everything stored under one name.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The last fencing token handed out (also the generation of events and barriers).
    pub next_token: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
    /// The kind and parameters the name was first used with; `None` for a name never
    /// used or removed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
}

/// What a name is, fixed from its first use until it is removed on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    Permits(PermitKind),
    Event,
    Barrier { parties: u32 },
    Averager,
}

impl Kind {
    pub(crate) fn describe(self) -> String {
        match self {
            Kind::Permits(k) => k.describe(),
            Kind::Event => "an Event".into(),
            Kind::Barrier { parties } => format!("a Barrier of {parties} parties"),
            Kind::Averager => "an Averager".into(),
        }
    }

    /// The kind a live state belongs to (for records written before kinds were kept).
    fn of(state: &State) -> Kind {
        match state {
            State::Permits(p) => Kind::Permits(p.kind),
            State::Event(_) => Kind::Event,
            State::Barrier(b) => Kind::Barrier { parties: b.parties },
            State::Averager(_) => Kind::Averager,
        }
    }
}

/// The live state of a primitive.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum State {
    Permits(Permits),
    Event(EventState),
    Barrier(BarrierState),
    Averager(AveragerState),
}

/// What kind of permit-based primitive a name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PermitKind {
    Lock,
    RLock,
    Semaphore { initial: u32 },
    BoundedSemaphore { max: u32 },
    RwLock,
    Condition,
}

impl PermitKind {
    fn describe(self) -> String {
        match self {
            PermitKind::Lock => "a Lock".into(),
            PermitKind::RLock => "an RLock".into(),
            PermitKind::Semaphore { initial } => format!("a Semaphore of {initial}"),
            PermitKind::BoundedSemaphore { max } => format!("a BoundedSemaphore of {max}"),
            PermitKind::RwLock => "an RwLock".into(),
            PermitKind::Condition => "a Condition".into(),
        }
    }

    fn is_semaphore(self) -> bool {
        matches!(
            self,
            PermitKind::Semaphore { .. } | PermitKind::BoundedSemaphore { .. }
        )
    }

    fn initial(self) -> i64 {
        match self {
            PermitKind::Semaphore { initial } => initial.into(),
            PermitKind::BoundedSemaphore { max } => max.into(),
            _ => 1,
        }
    }
}

/// Shared (read) or exclusive access; only an RwLock grants shared access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Mode {
    Exclusive,
    Shared,
}

/// The state of a Lock, RLock, Semaphore, BoundedSemaphore, RwLock or Condition.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Permits {
    pub kind: PermitKind,
    /// Free permits of a semaphore (a signalling release may raise it above the
    /// initial value); unused by the other kinds, which derive freedom from `holders`.
    pub available: i64,
    pub holders: Vec<Holder>,
    pub queue: VecDeque<Waiter>,
    /// Condition waiters, in the order they began waiting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sleepers: Vec<Sleeper>,
    /// A holder died or lapsed since the last grant: the next grant is told.
    #[serde(default)]
    pub owner_died: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Holder {
    pub token: u64,
    pub owner: Owner,
    pub mode: Mode,
    /// Re-entry depth (RLock); 1 otherwise.
    pub count: u32,
    pub since: Millis,
    pub until: Option<Millis>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Waiter {
    pub ticket: u64,
    pub owner: Owner,
    pub mode: Mode,
    /// When the waiter last tried; stores whose waiters may vanish unseen expire
    /// waiters that stop trying (see [`Ctx::waiter_ttl`]).
    pub seen: Millis,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Sleeper {
    pub ticket: u64,
    pub owner: Owner,
    pub notified: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct EventState {
    pub set: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct BarrierState {
    pub parties: u32,
    /// Who arrived in the current generation (the generation is `next_token`).
    pub arrived: Vec<Owner>,
    pub broken: bool,
    /// The last generation that ended broken (reset, abort, timeout, death) rather
    /// than by all parties arriving.
    pub last_broken: Option<u64>,
    /// Why the barrier (or `last_broken`) broke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<BrokenCause>,
    /// Whether this generation's parties have an action (set by its first arrival).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<bool>,
}

impl BarrierState {
    /// Breaks the barrier for `cause`, unless it is broken already.
    fn break_for(&mut self, cause: BrokenCause) {
        if !self.broken {
            self.broken = true;
            self.cause = Some(cause);
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct AveragerState {
    pub total: f64,
    pub count: u64,
    pub until: Option<Millis>,
}

/// One atomic step.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// Take a permit, or queue for one.
    Acquire(Acquire),
    /// Give back the hold granted with `token` (one level of an RLock).
    Release {
        token: u64,
    },
    /// Give back `owner`'s hold without its guard; for a semaphore whose owner holds
    /// nothing, raise the count (a signalling release). `n` times, all or nothing.
    ReleaseOwned {
        kind: PermitKind,
        owner: Owner,
        n: u32,
    },
    /// A semaphore's free permits (its initial value while idle).
    Value {
        kind: PermitKind,
    },
    /// Drop every holder (operators, `break`).
    ForceRelease,
    /// Leave the queue (timeout, cancellation).
    Dequeue {
        ticket: u64,
    },
    /// Extend the lease of the hold `token` to `lease` from now.
    Renew {
        token: u64,
        lease: Millis,
    },
    /// Whether the hold `token` still stands.
    Check {
        token: u64,
    },
    /// List the holders and count the waiters.
    Holders,
    /// Condition: release the hold `token` (every level of it) and start sleeping as
    /// `ticket`, at once; answers how many levels were released.
    CondWait {
        token: u64,
        ticket: u64,
        owner: Owner,
    },
    /// Condition with a caller's lock: start sleeping as `ticket` (the caller then
    /// releases its lock, under another name, with [`Op::ReleaseAll`]).
    CondSleep {
        ticket: u64,
        owner: Owner,
    },
    /// Give back every level of the hold `token`; answers how many there were.
    ReleaseAll {
        token: u64,
    },
    /// Condition: wake up to `n` sleepers.
    CondNotify {
        n: usize,
    },
    /// Condition: whether `ticket` was notified; a notified ticket is consumed.
    CondCheck {
        ticket: u64,
    },
    /// Condition: stop sleeping; answers whether a notification had arrived.
    CondCancel {
        ticket: u64,
    },
    EventSet {
        tag: Option<String>,
    },
    EventClear,
    EventRead,
    BarrierArrive {
        parties: u32,
        owner: Owner,
        tag: Option<String>,
        /// Whether this party has an action to run if it arrives last.
        action: bool,
        /// Arrive only if this arrival completes the generation (`try_wait`);
        /// otherwise answer [`Reply::NotLast`], changing nothing.
        only_last: bool,
    },
    BarrierAdvance {
        parties: u32,
        generation: u64,
    },
    /// Break the barrier; with a generation, only if that generation is still filling.
    BarrierAbort {
        parties: u32,
        generation: Option<u64>,
        cause: BrokenCause,
    },
    BarrierReset {
        parties: u32,
    },
    BarrierRead {
        parties: u32,
    },
    AvgAdd {
        value: f64,
        expire: Option<Millis>,
        tag: Option<String>,
    },
    AvgGet,
    AvgPop,
    /// Forget the kind of an idle name (its fencing counter stays); `Busy` if the name
    /// is held, waited for, set, filling or averaging. Answers whether it had a kind.
    Remove,
}

impl Op {
    /// The kind of primitive this op is for; `None` for ops that work on any kind.
    fn kind(&self) -> Option<Kind> {
        match self {
            Op::Acquire(a) => Some(Kind::Permits(a.kind)),
            Op::ReleaseOwned { kind, .. } | Op::Value { kind } => Some(Kind::Permits(*kind)),
            Op::CondWait { .. }
            | Op::CondSleep { .. }
            | Op::CondNotify { .. }
            | Op::CondCheck { .. }
            | Op::CondCancel { .. } => Some(Kind::Permits(PermitKind::Condition)),
            Op::EventSet { .. } | Op::EventClear | Op::EventRead => Some(Kind::Event),
            Op::BarrierArrive { parties, .. }
            | Op::BarrierAdvance { parties, .. }
            | Op::BarrierAbort { parties, .. }
            | Op::BarrierReset { parties }
            | Op::BarrierRead { parties } => Some(Kind::Barrier { parties: *parties }),
            Op::AvgAdd { .. } | Op::AvgGet | Op::AvgPop => Some(Kind::Averager),
            Op::Release { .. }
            | Op::ReleaseAll { .. }
            | Op::ForceRelease
            | Op::Dequeue { .. }
            | Op::Renew { .. }
            | Op::Check { .. }
            | Op::Holders
            | Op::Remove => None,
        }
    }
}

/// The arguments of [`Op::Acquire`].
#[derive(Clone, Debug)]
pub(crate) struct Acquire {
    pub kind: PermitKind,
    pub mode: Mode,
    pub owner: Owner,
    pub lease: Option<Millis>,
    pub tag: Option<String>,
    /// The caller's place in the queue, once it has decided to wait.
    pub ticket: Option<u64>,
}

/// What a step answers.
#[derive(Clone, Debug)]
pub(crate) enum Reply {
    Granted(Grant),
    /// Not granted; worth retrying by `retry_at` at the latest (a lease ends then).
    Blocked {
        retry_at: Option<Millis>,
    },
    Done,
    Count(u64),
    Flag(bool),
    Event {
        set: bool,
        generation: u64,
    },
    Arrived {
        generation: u64,
        index: u32,
    },
    /// The barrier is releasing a full generation: arrive again once it has.
    Busy,
    /// A barrier arrival with other parties than the filling generation's, which it
    /// broke (its waiters learn why); the caller's answer is [`Error::Mismatch`].
    PartiesMismatch {
        parties: u32,
    },
    /// The arrival broke the barrier (it found a dead party, or disagreed about the
    /// action); the caller's answer is [`Error::BrokenBarrier`].
    Broke(BrokenCause),
    /// A barrier arrival that would not have completed the generation, not made.
    NotLast,
    Barrier(BarrierView),
    Average(Option<f64>),
    Holders {
        holders: Vec<Holder>,
        /// Queued waiters and condition sleepers.
        waiting: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Grant {
    pub token: u64,
    pub previous_owner_died: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BarrierView {
    pub generation: u64,
    pub n_waiting: u32,
    pub broken: bool,
    pub last_broken: Option<u64>,
    pub cause: Option<BrokenCause>,
}

/// Whom a step's change concerns.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Wake {
    /// Everyone watching the name.
    pub all: bool,
    /// These queued tickets (permit waiters that may now be granted, notified sleepers).
    pub tickets: Vec<u64>,
}

/// What the store knows that the state machine cannot.
pub(crate) struct Ctx<'a> {
    pub now: Millis,
    /// Tells whether a holder's process is gone; `None` where every owner lives in
    /// this process (mem).
    pub is_dead: Option<&'a dyn Fn(&Owner) -> bool>,
    /// Expire queued waiters that have not tried for this long (stores whose waiters
    /// can vanish without a trace). They retry at least this often while alive.
    pub waiter_ttl: Option<Millis>,
}

/// Applies `op` to `record`.
pub(crate) fn apply(
    record: &mut Record,
    name: &str,
    op: Op,
    ctx: &Ctx<'_>,
) -> Result<(Reply, Wake)> {
    let out = apply_op(record, name, op, ctx);
    if out.is_err() {
        // A refused op may still have pruned lapsed holders or stale waiters; what that
        // left idle is dropped as after any other step.
        record.tidy();
    }
    out
}

fn apply_op(record: &mut Record, name: &str, op: Op, ctx: &Ctx<'_>) -> Result<(Reply, Wake)> {
    if record.kind.is_none() {
        record.kind = record.state.as_ref().map(Kind::of);
    }
    if let (Op::BarrierArrive { parties, .. }, Some(State::Barrier(b))) = (&op, &mut record.state) {
        if b.parties != *parties && !b.broken && !b.arrived.is_empty() {
            // A party that disagrees about the parties: the filling generation
            // would never pass, so it breaks, and its waiters learn why.
            b.break_for(BrokenCause::PartiesMismatch);
            let parties = b.parties;
            return Ok((Reply::PartiesMismatch { parties }, wake_all()));
        }
    }
    if let Some(wanted) = op.kind() {
        match record.kind {
            Some(fixed) if fixed != wanted => {
                return Err(Error::Mismatch {
                    name: name.into(),
                    wanted: wanted.describe(),
                    found: fixed.describe(),
                })
            }
            // Fixed by the op's success only: a failed op changes nothing.
            _ => {}
        }
    }
    let fixes = op.kind();
    let out = match op {
        Op::Acquire(a) => acquire(record, name, a, ctx),
        Op::Release { token } => {
            let p = permits_held(record, name)?;
            p.prune(ctx);
            let i = p.hold(token, name)?;
            p.release_at(i);
            Ok((Reply::Done, p.wake(None)))
        }
        Op::ReleaseOwned { kind, owner, n: 1 } => release_owned(record, name, kind, owner, ctx),
        Op::ReleaseOwned { kind, owner, n } => {
            // All or nothing: the releases are made on a copy, kept only if all pass.
            let mut copy = record.clone();
            for _ in 0..n {
                release_owned(&mut copy, name, kind, owner.clone(), ctx)?;
            }
            *record = copy;
            let wake = match &record.state {
                Some(State::Permits(p)) => p.wake(None),
                _ => Wake::default(),
            };
            Ok((Reply::Done, wake))
        }
        Op::Value { kind } => match permits_of(record, name, kind)? {
            Some(p) => {
                p.prune(ctx);
                Ok((Reply::Count(p.available.max(0) as u64), p.wake(None)))
            }
            None => Ok((Reply::Count(kind.initial() as u64), Wake::default())),
        },
        Op::ForceRelease => match permits_held(record, name) {
            Ok(p) => {
                let n = p.holders.len();
                while !p.holders.is_empty() {
                    p.release_at(0);
                }
                // A broken holder was cut off mid-section: the next one is told.
                p.owner_died |= n > 0;
                let mut wake = p.wake(None);
                // Everyone watching the name hears of a break, the broken holder too
                // (it may be listening for the loss of its hold).
                wake.all |= n > 0;
                Ok((Reply::Count(n as u64), wake))
            }
            Err(_) => Ok((Reply::Count(0), Wake::default())),
        },
        Op::Dequeue { ticket } => match permits_held(record, name) {
            Ok(p) => {
                p.queue.retain(|w| w.ticket != ticket);
                Ok((Reply::Done, p.wake(None)))
            }
            Err(_) => Ok((Reply::Done, Wake::default())),
        },
        Op::Renew { token, lease } => {
            let p = permits_held(record, name)?;
            p.prune(ctx);
            let i = p.hold(token, name)?;
            p.holders[i].until = Some(ctx.now.saturating_add(lease));
            Ok((Reply::Done, Wake::default()))
        }
        Op::Check { token } => match permits_held(record, name) {
            Ok(p) => {
                p.prune(ctx);
                let held = p.holders.iter().any(|h| h.token == token);
                Ok((Reply::Flag(held), p.wake(None)))
            }
            Err(_) => Ok((Reply::Flag(false), Wake::default())),
        },
        Op::Holders => match permits_held(record, name) {
            Ok(p) => {
                p.prune(ctx);
                let reply = Reply::Holders {
                    holders: p.holders.clone(),
                    waiting: (p.queue.len() + p.sleepers.len()) as u32,
                };
                Ok((reply, p.wake(None)))
            }
            Err(_) => Ok((
                Reply::Holders {
                    holders: Vec::new(),
                    waiting: 0,
                },
                Wake::default(),
            )),
        },
        Op::CondWait {
            token,
            ticket,
            owner,
        } => {
            let p =
                permits_of(record, name, PermitKind::Condition)?.ok_or_else(|| not_held(name))?;
            p.prune(ctx);
            let i = p.hold(token, name)?;
            let levels = single_level(p, i, name)?;
            p.release_at(i);
            p.sleepers.push(Sleeper {
                ticket,
                owner,
                notified: false,
            });
            Ok((Reply::Count(levels.into()), p.wake(None)))
        }
        Op::CondSleep { ticket, owner } => {
            permits_of(record, name, PermitKind::Condition)?;
            let p = permits_or_new(&mut record.state, PermitKind::Condition)?;
            p.sleepers.push(Sleeper {
                ticket,
                owner,
                notified: false,
            });
            Ok((Reply::Done, Wake::default()))
        }
        Op::ReleaseAll { token } => {
            let p = permits_held(record, name)?;
            p.prune(ctx);
            let i = p.hold(token, name)?;
            let levels = single_level(p, i, name)?;
            p.release_at(i);
            Ok((Reply::Count(levels.into()), p.wake(None)))
        }
        Op::CondNotify { n } => match permits_of(record, name, PermitKind::Condition)? {
            Some(p) => {
                if let Some(is_dead) = ctx.is_dead {
                    p.sleepers.retain(|s| !is_dead(&s.owner));
                }
                let mut wake = Wake::default();
                for s in p.sleepers.iter_mut().filter(|s| !s.notified).take(n) {
                    s.notified = true;
                    wake.tickets.push(s.ticket);
                }
                Ok((Reply::Count(wake.tickets.len() as u64), wake))
            }
            None => Ok((Reply::Count(0), Wake::default())),
        },
        Op::CondCheck { ticket } | Op::CondCancel { ticket } => {
            let cancel = matches!(op, Op::CondCancel { .. });
            match permits_of(record, name, PermitKind::Condition)? {
                Some(p) => match p.sleepers.iter().position(|s| s.ticket == ticket) {
                    Some(i) if p.sleepers[i].notified || cancel => {
                        let notified = p.sleepers.remove(i).notified;
                        Ok((Reply::Flag(notified), Wake::default()))
                    }
                    Some(_) => Ok((Reply::Flag(false), Wake::default())),
                    // Gone (evicted): nothing left to wait for.
                    None => Ok((Reply::Flag(true), Wake::default())),
                },
                None => Ok((Reply::Flag(true), Wake::default())),
            }
        }
        Op::EventSet { tag } => {
            let set = event_of(record, name)?.is_some_and(|e| e.set);
            if tag.is_some() {
                record.tag = tag;
            }
            if set {
                return Ok((Reply::Done, Wake::default()));
            }
            record.next_token += 1;
            record.state = Some(State::Event(EventState { set: true }));
            Ok((
                Reply::Done,
                Wake {
                    all: true,
                    tickets: Vec::new(),
                },
            ))
        }
        Op::EventClear => {
            if event_of(record, name)?.is_some() {
                record.state = None;
            }
            Ok((Reply::Done, Wake::default()))
        }
        Op::EventRead => {
            let set = event_of(record, name)?.is_some_and(|e| e.set);
            Ok((
                Reply::Event {
                    set,
                    generation: record.next_token,
                },
                Wake::default(),
            ))
        }
        Op::BarrierArrive {
            parties,
            owner,
            tag,
            action,
            only_last,
        } => barrier_arrive(record, name, parties, owner, tag, (action, only_last), ctx),
        Op::BarrierAdvance {
            parties,
            generation,
        } => {
            let generation_now = record.next_token;
            let b = barrier_of(record, name, parties)?;
            // (No early return: the step must end with `tidy`, so that a barrier
            // whose last generation completed leaves no state behind.)
            if generation_now == generation && b.arrived.len() == parties as usize {
                b.arrived.clear();
                b.action = None;
                record.next_token += 1;
                Ok((Reply::Done, wake_all()))
            } else {
                Ok((Reply::Done, Wake::default()))
            }
        }
        Op::BarrierAbort {
            parties,
            generation,
            cause,
        } => {
            let current = record.next_token;
            let b = barrier_of(record, name, parties)?;
            if generation.is_none_or(|g| g == current) {
                b.break_for(cause);
                return Ok((Reply::Done, wake_all()));
            }
            Ok((Reply::Done, Wake::default()))
        }
        Op::BarrierReset { parties } => {
            let generation = record.next_token;
            let b = barrier_of(record, name, parties)?;
            if b.broken || !b.arrived.is_empty() {
                if !b.broken {
                    b.cause = Some(BrokenCause::Reset);
                }
                b.last_broken = Some(generation);
                b.broken = false;
                b.arrived.clear();
                b.action = None;
                record.next_token += 1;
                return Ok((Reply::Done, wake_all()));
            }
            Ok((Reply::Done, Wake::default()))
        }
        Op::BarrierRead { parties } => {
            let generation = record.next_token;
            let b = barrier_of(record, name, parties)?;
            let mut wake = Wake::default();
            if let Some(is_dead) = ctx.is_dead {
                if !b.broken && b.arrived.iter().any(is_dead) {
                    b.break_for(BrokenCause::PartyDied);
                    wake = wake_all();
                }
            }
            Ok((
                Reply::Barrier(BarrierView {
                    generation,
                    n_waiting: b.arrived.len() as u32,
                    broken: b.broken,
                    last_broken: b.last_broken,
                    cause: b.cause,
                }),
                wake,
            ))
        }
        Op::AvgAdd { value, expire, tag } => {
            let fresh = AveragerState {
                total: 0.0,
                count: 0,
                until: None,
            };
            let mut a = averager_of(record, name, ctx)?.cloned().unwrap_or(fresh);
            let total = a.total + value;
            if !total.is_finite() {
                // An infinite sum would average to nothing useful for ever (and has
                // no JSON form): refuse the add, changing nothing.
                return Err(Error::Overflow { name: name.into() });
            }
            a.total = total;
            a.count += 1;
            a.until = expire.map(|e| ctx.now.saturating_add(e));
            record.state = Some(State::Averager(a));
            if tag.is_some() {
                record.tag = tag;
            }
            Ok((Reply::Done, Wake::default()))
        }
        Op::AvgGet => {
            let avg = averager_of(record, name, ctx)?.and_then(|a| a.mean());
            Ok((Reply::Average(avg), Wake::default()))
        }
        Op::AvgPop => {
            let avg = averager_of(record, name, ctx)?.and_then(|a| a.mean());
            record.state = None;
            Ok((Reply::Average(avg), Wake::default()))
        }
        Op::Remove => {
            record.tidy();
            if record.state.is_some() {
                return Err(Error::Busy { name: name.into() });
            }
            let had = record.kind.take().is_some();
            return Ok((Reply::Flag(had), Wake::default()));
        }
    };
    if out.is_ok() && record.kind.is_none() {
        record.kind = fixes;
    }
    record.tidy();
    out
}

fn wake_all() -> Wake {
    Wake {
        all: true,
        tickets: Vec::new(),
    }
}

/// The levels of hold `i` for a condition wait, which must be 1: a wait releases the
/// hold and takes a new one (with a new fencing token), so the guards of outer levels
/// would be left holding a token that no longer exists.
fn single_level(p: &Permits, i: usize, name: &str) -> Result<u32> {
    match p.holders[i].count {
        1 => Ok(1),
        n => Err(Error::invalid(format!(
            "'{name}' is held {n} levels deep by this owner: a condition wait takes the \
             lock again under a new fencing token, which the outer levels' guards do not \
             have; wait holding one level"
        ))),
    }
}

fn not_held(name: &str) -> Error {
    Error::NotHeld { name: name.into() }
}

fn mismatch(name: &str, wanted: String, found: &State) -> Error {
    let found = match found {
        State::Permits(p) => p.kind.describe(),
        State::Event(_) => "an Event".into(),
        State::Barrier(b) => format!("a Barrier of {} parties", b.parties),
        State::Averager(_) => "an Averager".into(),
    };
    Error::Mismatch {
        name: name.into(),
        wanted,
        found,
    }
}

/// The permit state of `name` if it is of `kind`; `None` if the name is free.
fn permits_of<'r>(
    record: &'r mut Record,
    name: &str,
    kind: PermitKind,
) -> Result<Option<&'r mut Permits>> {
    match &mut record.state {
        None => Ok(None),
        Some(State::Permits(p)) if p.kind != kind => {
            Err(mismatch(name, kind.describe(), &State::Permits(p.clone())))
        }
        Some(State::Permits(p)) => Ok(Some(p)),
        Some(other) => Err(mismatch(name, kind.describe(), other)),
    }
}

/// The permit state of a record whose kind was checked, created free if absent.
fn permits_or_new(state: &mut Option<State>, kind: PermitKind) -> Result<&mut Permits> {
    let state = state.get_or_insert_with(|| vacant(kind));
    match state {
        State::Permits(p) => Ok(p),
        // Callers checked the kind with `permits_of` first.
        _ => Err(Error::invalid("permit state vanished")),
    }
}

/// The state of a Lock that `owner` holds with `token` since `since`, for a store
/// that kept an uncontended hold outside the record (mem's fast path) and now writes
/// it back.
pub(crate) fn lock_held(token: u64, owner: Owner, since: Millis) -> State {
    let kind = PermitKind::Lock;
    State::Permits(Permits {
        kind,
        available: kind.initial(),
        holders: vec![Holder {
            token,
            owner,
            mode: Mode::Exclusive,
            count: 1,
            since,
            until: None,
        }],
        queue: VecDeque::new(),
        sleepers: Vec::new(),
        owner_died: false,
    })
}

/// Drops the state of a primitive tagged `tag` (`Space::evict_tag`), keeping the
/// fencing counter; says whether it was dropped. A lock or semaphore whose holds were
/// cut short keeps just that fact, so the next holder is told
/// [`Grant::previous_owner_died`], as after a force-release. Stores that keep waiters
/// outside the record drop those themselves.
pub(crate) fn evict(record: &mut Record, tag: &str) -> bool {
    if record.tag.as_deref() != Some(tag) || record.state.is_none() {
        return false;
    }
    record.tag = None;
    // Evicting is removing on purpose: the name may be used as any kind afterwards
    // (once a cut-short lock's next holder has been told).
    record.kind = None;
    record.state = match record.state.take() {
        Some(State::Permits(p)) if !p.holders.is_empty() || p.owner_died => {
            let mut cut = vacant(p.kind);
            if let State::Permits(c) = &mut cut {
                c.owner_died = true;
            }
            Some(cut)
        }
        _ => None,
    };
    true
}

fn vacant(kind: PermitKind) -> State {
    State::Permits(Permits {
        kind,
        available: kind.initial(),
        holders: Vec::new(),
        queue: VecDeque::new(),
        sleepers: Vec::new(),
        owner_died: false,
    })
}

/// The permit state of `name`, whatever its kind; `NotHeld` if it is free.
fn permits_held<'r>(record: &'r mut Record, name: &str) -> Result<&'r mut Permits> {
    match &mut record.state {
        Some(State::Permits(p)) => Ok(p),
        _ => Err(not_held(name)),
    }
}

fn event_of<'r>(record: &'r mut Record, name: &str) -> Result<Option<&'r mut EventState>> {
    match &mut record.state {
        None => Ok(None),
        Some(State::Event(e)) => Ok(Some(e)),
        Some(other) => Err(mismatch(name, "an Event".into(), other)),
    }
}

fn barrier_of<'r>(
    record: &'r mut Record,
    name: &str,
    parties: u32,
) -> Result<&'r mut BarrierState> {
    match &record.state {
        None => {}
        Some(State::Barrier(b)) if b.parties == parties => {}
        Some(other) => {
            return Err(mismatch(
                name,
                format!("a Barrier of {parties} parties"),
                other,
            ))
        }
    }
    let state = record.state.get_or_insert_with(|| {
        State::Barrier(BarrierState {
            parties,
            arrived: Vec::new(),
            broken: false,
            last_broken: None,
            cause: None,
            action: None,
        })
    });
    match state {
        State::Barrier(b) => Ok(b),
        // Checked just above.
        _ => Err(Error::invalid("barrier state vanished")),
    }
}

fn averager_of<'r>(
    record: &'r mut Record,
    name: &str,
    ctx: &Ctx<'_>,
) -> Result<Option<&'r mut AveragerState>> {
    if let Some(State::Averager(a)) = &record.state {
        if a.until.is_some_and(|u| u <= ctx.now) {
            record.state = None;
        }
    }
    match &mut record.state {
        None => Ok(None),
        Some(State::Averager(a)) => Ok(Some(a)),
        Some(other) => Err(mismatch(name, "an Averager".into(), other)),
    }
}

impl AveragerState {
    fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.total / self.count as f64)
    }
}

fn acquire(record: &mut Record, name: &str, a: Acquire, ctx: &Ctx<'_>) -> Result<(Reply, Wake)> {
    if let Some(p) = permits_of(record, name, a.kind)? {
        p.prune(ctx);
        if let Some(i) = p.holders.iter().position(|h| h.owner == a.owner) {
            let held = p.holders[i].mode;
            match (a.kind, held, a.mode) {
                // Re-entry never waits, not even behind the queue. A Condition's own
                // lock is re-entrant, as in threading and multiprocessing.
                (PermitKind::RLock | PermitKind::Condition, _, _)
                | (PermitKind::RwLock, Mode::Shared, Mode::Shared) => {
                    let h = &mut p.holders[i];
                    h.count = h.count.saturating_add(1);
                    if let Some(lease) = a.lease {
                        h.until = Some(ctx.now.saturating_add(lease));
                    }
                    let grant = Grant {
                        token: h.token,
                        previous_owner_died: false,
                    };
                    return Ok((Reply::Granted(grant), Wake::default()));
                }
                (PermitKind::Lock | PermitKind::RwLock, _, _) => {
                    return Err(Error::WouldDeadlock { name: name.into() })
                }
                // A semaphore may hand several permits to one owner.
                _ => {}
            }
        }
    }
    let tag = a.tag.clone();
    let p = permits_or_new(&mut record.state, a.kind)?;
    if tag.is_some() {
        record.tag = tag;
    }
    let mut granted = p.may_grant(&a);
    if !granted {
        if let Some(is_dead) = ctx.is_dead {
            // Only a blocked acquire pays for liveness checks.
            if p.reap(is_dead) {
                granted = p.may_grant(&a);
            }
        }
    }
    if !granted {
        if let Some(ticket) = a.ticket {
            match p.queue.iter_mut().find(|w| w.ticket == ticket) {
                Some(w) => w.seen = ctx.now,
                None => p.queue.push_back(Waiter {
                    ticket,
                    owner: a.owner,
                    mode: a.mode,
                    seen: ctx.now,
                }),
            }
        }
        let retry_at = p.holders.iter().filter_map(|h| h.until).min();
        return Ok((Reply::Blocked { retry_at }, p.wake(a.ticket)));
    }
    if let Some(ticket) = a.ticket {
        p.queue.retain(|w| w.ticket != ticket);
    }
    record.next_token += 1;
    let token = record.next_token;
    p.holders.push(Holder {
        token,
        owner: a.owner,
        mode: a.mode,
        count: 1,
        since: ctx.now,
        until: a.lease.map(|l| ctx.now.saturating_add(l)),
    });
    if p.kind.is_semaphore() {
        p.available -= 1;
    }
    let grant = Grant {
        token,
        previous_owner_died: std::mem::take(&mut p.owner_died),
    };
    Ok((Reply::Granted(grant), p.wake(a.ticket)))
}

fn release_owned(
    record: &mut Record,
    name: &str,
    kind: PermitKind,
    owner: Owner,
    ctx: &Ctx<'_>,
) -> Result<(Reply, Wake)> {
    if let Some(p) = permits_of(record, name, kind)? {
        p.prune(ctx);
        if let Some(i) = p.holders.iter().position(|h| h.owner == owner) {
            p.release_at(i);
            return Ok((Reply::Done, p.wake(None)));
        }
    }
    match kind {
        PermitKind::Semaphore { .. } | PermitKind::BoundedSemaphore { .. } => {
            let p = permits_or_new(&mut record.state, kind)?;
            let ceiling = match kind {
                PermitKind::BoundedSemaphore { max } => i64::from(max),
                _ => i64::from(u32::MAX),
            };
            if p.available + p.holders.len() as i64 >= ceiling {
                if p.holders.is_empty() || !matches!(kind, PermitKind::BoundedSemaphore { .. }) {
                    record.tidy();
                    return Err(Error::TooManyReleases { name: name.into() });
                }
                // Anyone may release a semaphore (billiard): at the bound, the permit
                // given back is the oldest holder's, whose guard will find it gone.
                p.release_at(0);
            } else {
                p.available += 1;
            }
            Ok((Reply::Done, p.wake(None)))
        }
        _ => match &record.state {
            Some(State::Permits(p)) if !p.holders.is_empty() => {
                Err(Error::NotOwner { name: name.into() })
            }
            _ => Err(not_held(name)),
        },
    }
}

fn barrier_arrive(
    record: &mut Record,
    name: &str,
    parties: u32,
    owner: Owner,
    tag: Option<String>,
    (action, only_last): (bool, bool),
    ctx: &Ctx<'_>,
) -> Result<(Reply, Wake)> {
    let generation = record.next_token;
    let b = barrier_of(record, name, parties)?;
    if let Some(is_dead) = ctx.is_dead {
        if !b.broken && b.arrived.iter().any(is_dead) {
            b.break_for(BrokenCause::PartyDied);
            return Ok((Reply::Broke(BrokenCause::PartyDied), wake_all()));
        }
    }
    if b.broken {
        return Err(Error::BrokenBarrier {
            name: name.into(),
            cause: b.cause.unwrap_or(BrokenCause::Unknown),
        });
    }
    if b.arrived.len() >= parties as usize {
        return Ok((Reply::Busy, Wake::default()));
    }
    if only_last && b.arrived.len() + 1 < parties as usize {
        record.tidy();
        return Ok((Reply::NotLast, Wake::default()));
    }
    if b.action.is_some_and(|a| a != action) {
        // The action runs in whichever party arrives last: parties that disagree
        // about having one would run it in some generations only.
        b.break_for(BrokenCause::ActionMismatch);
        return Ok((Reply::Broke(BrokenCause::ActionMismatch), wake_all()));
    }
    b.action = Some(action);
    b.arrived.push(owner);
    let index = b.arrived.len() as u32 - 1;
    if tag.is_some() {
        record.tag = tag;
    }
    Ok((Reply::Arrived { generation, index }, Wake::default()))
}

impl Permits {
    /// The index of the hold granted with `token`; `NotHeld` if it ended.
    fn hold(&self, token: u64, name: &str) -> Result<usize> {
        self.holders
            .iter()
            .position(|h| h.token == token)
            .ok_or_else(|| not_held(name))
    }

    fn holds_exclusive(&self) -> bool {
        self.holders.iter().any(|h| h.mode == Mode::Exclusive)
    }

    /// Whether a request of `mode` could be granted given `taken` permits already
    /// promised to waiters ahead of it (and `exclusive_ahead`/`shared_ahead`).
    fn fits(&self, mode: Mode, ahead: &Ahead) -> bool {
        if self.kind.is_semaphore() {
            return self.available - ahead.count > 0;
        }
        let busy_exclusive = self.holds_exclusive() || ahead.exclusive;
        let busy = !self.holders.is_empty() || ahead.count > 0;
        match mode {
            Mode::Exclusive => !busy,
            Mode::Shared => !busy_exclusive,
        }
    }

    /// How many queued waiters, from the front, could all be granted now.
    fn grantable_prefix(&self) -> (usize, Ahead) {
        let mut ahead = Ahead::default();
        for (i, w) in self.queue.iter().enumerate() {
            if !self.fits(w.mode, &ahead) {
                return (i, ahead);
            }
            ahead.count += 1;
            ahead.exclusive |= w.mode == Mode::Exclusive;
        }
        (self.queue.len(), ahead)
    }

    fn may_grant(&self, a: &Acquire) -> bool {
        let (prefix, ahead) = self.grantable_prefix();
        match a
            .ticket
            .and_then(|t| self.queue.iter().position(|w| w.ticket == t))
        {
            Some(i) => i < prefix,
            None => prefix == self.queue.len() && self.fits(a.mode, &ahead),
        }
    }

    fn release_at(&mut self, i: usize) {
        let h = &mut self.holders[i];
        if h.count > 1 {
            h.count -= 1;
            return;
        }
        self.holders.remove(i);
        if self.kind.is_semaphore() {
            self.available += 1;
        }
    }

    /// Drops holders whose lease lapsed, and waiters that stopped trying.
    fn prune(&mut self, ctx: &Ctx<'_>) {
        let before = self.holders.len();
        let kind = self.kind;
        let mut freed = 0;
        self.holders.retain(|h| {
            let live = h.until.is_none_or(|u| u > ctx.now);
            freed += usize::from(!live);
            live
        });
        if self.holders.len() != before {
            self.owner_died = true;
            if kind.is_semaphore() {
                self.available += freed as i64;
            }
        }
        if let Some(ttl) = ctx.waiter_ttl {
            self.queue.retain(|w| ctx.now.saturating_sub(w.seen) <= ttl);
        }
    }

    /// Drops holders, waiters and sleepers whose process is gone; says whether a holder
    /// was among them.
    fn reap(&mut self, is_dead: &dyn Fn(&Owner) -> bool) -> bool {
        let before = self.holders.len();
        self.holders.retain(|h| !is_dead(&h.owner));
        let freed = before - self.holders.len();
        if freed > 0 {
            self.owner_died = true;
            if self.kind.is_semaphore() {
                self.available += freed as i64;
            }
        }
        self.queue.retain(|w| !is_dead(&w.owner));
        self.sleepers.retain(|s| !is_dead(&s.owner));
        freed > 0
    }

    /// The queued tickets that may proceed now, other than `caller`'s.
    fn wake(&self, caller: Option<u64>) -> Wake {
        let (prefix, _) = self.grantable_prefix();
        Wake {
            all: false,
            tickets: self
                .queue
                .iter()
                .take(prefix)
                .map(|w| w.ticket)
                .filter(|&t| Some(t) != caller)
                .collect(),
        }
    }

    fn is_idle(&self) -> bool {
        self.holders.is_empty()
            && self.queue.is_empty()
            && self.sleepers.is_empty()
            && !self.owner_died
            && self.available == self.kind.initial()
    }
}

#[derive(Default)]
struct Ahead {
    count: i64,
    exclusive: bool,
}

impl Record {
    /// Drops the state of an idle primitive, keeping the fencing counter.
    fn tidy(&mut self) {
        let idle = match &self.state {
            None => true,
            Some(State::Permits(p)) => p.is_idle(),
            Some(State::Event(e)) => !e.set,
            Some(State::Barrier(b)) => b.arrived.is_empty() && !b.broken && b.last_broken.is_none(),
            Some(State::Averager(a)) => a.count == 0,
        };
        if idle {
            self.state = None;
            self.tag = None;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn ctx(now: Millis) -> Ctx<'static> {
        Ctx {
            now,
            is_dead: None,
            waiter_ttl: None,
        }
    }

    /// An exclusive acquisition without lease or tag (also for the stores' own tests).
    pub(crate) fn acq(kind: PermitKind, owner: &Owner, ticket: Option<u64>) -> Op {
        Op::Acquire(Acquire {
            kind,
            mode: Mode::Exclusive,
            owner: owner.clone(),
            lease: None,
            tag: None,
            ticket,
        })
    }

    fn token(r: Reply) -> u64 {
        match r {
            Reply::Granted(g) => g.token,
            other => panic!("not granted: {other:?}"),
        }
    }

    #[test]
    fn queued_waiters_are_served_in_order_and_newcomers_do_not_overtake() {
        let mut r = Record::default();
        let (a, b, c) = (Owner::new_task(), Owner::new_task(), Owner::new_task());
        let k = PermitKind::Lock;
        let t = token(apply(&mut r, "n", acq(k, &a, None), &ctx(0)).unwrap().0);
        assert!(matches!(
            apply(&mut r, "n", acq(k, &b, Some(1)), &ctx(0)).unwrap().0,
            Reply::Blocked { .. }
        ));
        let (_, wake) = apply(&mut r, "n", Op::Release { token: t }, &ctx(0)).unwrap();
        assert_eq!(wake.tickets, vec![1], "the head of the queue is woken");
        // A newcomer without a ticket must not take it from the woken waiter.
        assert!(matches!(
            apply(&mut r, "n", acq(k, &c, None), &ctx(0)).unwrap().0,
            Reply::Blocked { .. }
        ));
        let t2 = token(apply(&mut r, "n", acq(k, &b, Some(1)), &ctx(0)).unwrap().0);
        assert!(t2 > t, "fencing tokens increase");
        apply(&mut r, "n", Op::Release { token: t2 }, &ctx(0)).unwrap();
        assert!(
            r.state.is_none() && r.next_token == t2,
            "a free lock keeps only its counter"
        );
    }

    #[test]
    fn force_release_tells_the_next_holder() {
        let mut r = Record::default();
        let (a, b) = (Owner::new_task(), Owner::new_task());
        token(
            apply(&mut r, "n", acq(PermitKind::Lock, &a, None), &ctx(0))
                .unwrap()
                .0,
        );
        match apply(&mut r, "n", Op::ForceRelease, &ctx(1)).unwrap().0 {
            Reply::Count(1) => {}
            other => panic!("{other:?}"),
        }
        match apply(&mut r, "n", acq(PermitKind::Lock, &b, None), &ctx(2))
            .unwrap()
            .0
        {
            Reply::Granted(g) => assert!(g.previous_owner_died),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lapsed_lease_frees_the_lock_and_tells_the_next_holder() {
        let mut r = Record::default();
        let (a, b) = (Owner::new_task(), Owner::new_task());
        let mut op = acq(PermitKind::Lock, &a, None);
        if let Op::Acquire(x) = &mut op {
            x.lease = Some(100);
        }
        let t = token(apply(&mut r, "n", op, &ctx(1000)).unwrap().0);
        match apply(&mut r, "n", acq(PermitKind::Lock, &b, None), &ctx(1050))
            .unwrap()
            .0
        {
            Reply::Blocked { retry_at } => assert_eq!(retry_at, Some(1100)),
            other => panic!("{other:?}"),
        }
        match apply(&mut r, "n", acq(PermitKind::Lock, &b, None), &ctx(1100))
            .unwrap()
            .0
        {
            Reply::Granted(g) => assert!(g.previous_owner_died),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            apply(&mut r, "n", Op::Release { token: t }, &ctx(1200)),
            Err(Error::NotHeld { .. })
        ));
    }
}
