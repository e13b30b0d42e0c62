//! Property tests of the state machine ([`super::model::apply`]) on random op
//! sequences over a few owners and names, and the op generator that the differential
//! test against `redis.lua` (`redis_diff.rs`) shares.
//!
//! A case picks a kind for each name, then a list of raw steps; a [`Driver`] turns each
//! raw step into a concrete [`Op`] for the name's kind (now and then one of another
//! kind, which must be refused), filling in tokens, tickets and generations from the
//! replies it has seen, so both implementations get the same ops.

use std::cell::RefCell;
use std::collections::HashMap;

use proptest::prelude::*;

use super::model::{
    apply, Acquire, Ctx, Kind, Millis, Mode, Op, PermitKind, Record, Reply, State, Wake,
};
use crate::owner::Owner;
use crate::{BrokenCause, Result};

/// The kinds a case's names are drawn from.
pub(crate) const KINDS: [Kind; 9] = [
    Kind::Permits(PermitKind::Lock),
    Kind::Permits(PermitKind::RLock),
    Kind::Permits(PermitKind::Semaphore { initial: 2 }),
    Kind::Permits(PermitKind::BoundedSemaphore { max: 2 }),
    Kind::Permits(PermitKind::RwLock),
    Kind::Permits(PermitKind::Condition),
    Kind::Event,
    Kind::Barrier { parties: 2 },
    Kind::Averager,
];

pub(crate) const OWNERS: usize = 3;
pub(crate) const NAMES: usize = 2;

/// One random step, read according to its name's kind by [`Driver::op`].
#[derive(Clone, Debug)]
pub(crate) struct RawStep {
    pub name: u8,
    /// Use another kind than the name's (the op must then be refused).
    pub foreign: bool,
    pub choice: u8,
    pub owner: u8,
    pub a: u8,
    pub flag: bool,
    /// Props only: advance the clock by this much first.
    pub tick: Option<u16>,
    /// Instead of an op: props kill the step's owner; the differential test reclaims
    /// the step's name.
    pub kill: bool,
}

pub(crate) fn raw_step() -> impl Strategy<Value = RawStep> {
    (
        (0..NAMES as u8, prop::bool::weighted(0.08), any::<u8>()),
        (0..OWNERS as u8, 0..4u8, any::<bool>()),
        (
            prop::option::weighted(0.1, 1..3000u16),
            prop::bool::weighted(0.04),
        ),
    )
        .prop_map(
            |((name, foreign, choice), (owner, a, flag), (tick, kill))| RawStep {
                name,
                foreign,
                choice,
                owner,
                a,
                flag,
                tick,
                kill,
            },
        )
}

/// A case: the kinds of the names (indexes into [`KINDS`]) and the steps.
pub(crate) fn case(steps: usize) -> impl Strategy<Value = (Vec<usize>, Vec<RawStep>)> {
    (
        prop::collection::vec(0..KINDS.len(), NAMES),
        prop::collection::vec(raw_step(), 1..steps),
    )
}

/// What the driver remembers of one name, from replies only.
#[derive(Default)]
struct Seen {
    /// Every token granted, oldest first.
    tokens: Vec<(u64, usize)>,
    /// The ticket each owner waits with (queued, not yet granted), and its mode: a
    /// waiter retries the acquisition it queued for, as the primitives do (the model
    /// takes a queued ticket's place as given, whatever mode the retry names).
    waiting: HashMap<usize, (u64, Mode)>,
    /// Condition sleepers by owner.
    sleeping: HashMap<usize, Vec<u64>>,
    /// The last barrier or event generation seen.
    generation: u64,
}

/// Turns raw steps into ops, and remembers what their replies said.
pub(crate) struct Driver {
    pub owners: Vec<Owner>,
    pub kinds: Vec<Kind>,
    /// The lease every acquisition asks for (`None`: no lease).
    pub lease: fn(&RawStep) -> Option<Millis>,
    seen: Vec<Seen>,
    next_ticket: u64,
}

impl Driver {
    pub(crate) fn new(kinds: &[usize], lease: fn(&RawStep) -> Option<Millis>) -> Driver {
        Driver {
            owners: (0..OWNERS).map(|_| Owner::new_task()).collect(),
            kinds: kinds.iter().map(|&k| KINDS[k]).collect(),
            lease,
            seen: (0..NAMES).map(|_| Seen::default()).collect(),
            next_ticket: 0,
        }
    }

    fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// A token of the name: mostly a recent one (likely held), sometimes an old one.
    fn token(&self, name: usize, a: u8) -> u64 {
        let t = &self.seen[name].tokens;
        if t.is_empty() {
            return 1 + u64::from(a);
        }
        t[t.len() - 1 - (usize::from(a) % t.len())].0
    }

    /// The op `s` stands for, and which owner it is for.
    pub(crate) fn op(&mut self, s: &RawStep) -> (usize, Op) {
        let name = usize::from(s.name);
        let o = usize::from(s.owner);
        let owner = self.owners[o].clone();
        let kind = if s.foreign {
            KINDS[usize::from(s.choice) % KINDS.len()]
        } else {
            self.kinds[name]
        };
        let c = s.choice / 9;
        let op = match kind {
            Kind::Permits(k) => {
                let n = if k == PermitKind::Condition { 16 } else { 10 };
                match c % n {
                    0..=3 => {
                        let waiting = self.seen[name].waiting.get(&o).copied();
                        let mut mode = if k == PermitKind::RwLock && s.a % 2 == 1 {
                            Mode::Shared
                        } else {
                            Mode::Exclusive
                        };
                        let ticket = match (waiting, s.flag) {
                            (Some((t, m)), _) => {
                                mode = m;
                                Some(t)
                            }
                            (None, true) => Some(self.ticket()),
                            (None, false) => None,
                        };
                        Op::Acquire(Acquire {
                            kind: k,
                            mode,
                            owner,
                            lease: (self.lease)(s),
                            tag: (s.a == 3).then(|| "t".to_owned()),
                            ticket,
                        })
                    }
                    4 => Op::Release {
                        token: self.token(name, s.a),
                    },
                    5 if s.flag => Op::ReleaseAll {
                        token: self.token(name, s.a),
                    },
                    5 => Op::ReleaseOwned {
                        kind: k,
                        owner,
                        n: u32::from(s.a % 3) + 1,
                    },
                    6 => match self.seen[name].waiting.remove(&o) {
                        Some((ticket, _)) => Op::Dequeue { ticket },
                        None => Op::Value { kind: k },
                    },
                    7 if s.flag => Op::Check {
                        token: self.token(name, s.a),
                    },
                    7 => Op::Renew {
                        token: self.token(name, s.a),
                        lease: (self.lease)(s).unwrap_or(1000),
                    },
                    8 if s.flag => Op::ForceRelease,
                    8 => Op::Holders,
                    9 => Op::Remove,
                    // Condition only.
                    10 | 11 => {
                        let ticket = self.ticket();
                        if s.flag {
                            Op::CondSleep { ticket, owner }
                        } else {
                            let (token, holder) = match self.seen[name].tokens.last() {
                                Some(&(t, h)) if s.a != 0 => (t, h),
                                _ => (self.token(name, s.a), o),
                            };
                            Op::CondWait {
                                token,
                                ticket,
                                owner: self.owners[holder].clone(),
                            }
                        }
                    }
                    12 | 13 => Op::CondNotify {
                        n: usize::from(s.a),
                    },
                    _ => {
                        let ticket = self.seen[name]
                            .sleeping
                            .get(&o)
                            .and_then(|v| v.first().copied())
                            .unwrap_or(1000 + u64::from(s.a));
                        if s.flag {
                            Op::CondCancel { ticket }
                        } else {
                            Op::CondCheck { ticket }
                        }
                    }
                }
            }
            Kind::Event => match c % 4 {
                0 => Op::EventSet {
                    tag: s.flag.then(|| "t".to_owned()),
                },
                1 => Op::EventClear,
                2 => Op::EventRead,
                _ => Op::Remove,
            },
            Kind::Barrier { parties } => {
                let parties = if s.a == 3 { parties + 1 } else { parties };
                let generation = self.seen[name].generation;
                match c % 7 {
                    0..=2 => Op::BarrierArrive {
                        parties,
                        owner,
                        tag: None,
                        action: s.a == 2,
                        only_last: s.flag,
                    },
                    3 => Op::BarrierAdvance {
                        parties,
                        generation: generation.saturating_sub(u64::from(s.flag)),
                    },
                    4 => Op::BarrierAbort {
                        parties,
                        generation: s.flag.then_some(generation),
                        cause: BrokenCause::Aborted,
                    },
                    5 if s.flag => Op::BarrierReset { parties },
                    5 => Op::Remove,
                    _ => Op::BarrierRead { parties },
                }
            }
            Kind::Averager => match c % 4 {
                0 | 1 => Op::AvgAdd {
                    // Now and then a value whose sum overflows, which is refused.
                    value: if s.a == 3 && s.flag {
                        f64::MAX
                    } else {
                        f64::from(s.a) * 1.5 - 2.0
                    },
                    expire: None,
                    tag: None,
                },
                2 if s.flag => Op::AvgGet,
                2 => Op::Remove,
                _ => Op::AvgPop,
            },
        };
        (name, op)
    }

    /// Remembers what the reply to `op` (for the owner `o` on `name`) says.
    pub(crate) fn saw(&mut self, name: usize, o: usize, op: &Op, out: &Result<Reply>) {
        let seen = &mut self.seen[name];
        match (op, out) {
            (Op::Acquire(a), Ok(Reply::Granted(g))) => {
                seen.tokens.push((g.token, o));
                if a.ticket.is_some() {
                    seen.waiting.remove(&o);
                }
            }
            (Op::Acquire(a), Ok(Reply::Blocked { .. })) => {
                if let Some(t) = a.ticket {
                    seen.waiting.insert(o, (t, a.mode));
                }
            }
            (Op::CondWait { ticket, owner, .. }, Ok(_)) => {
                if let Some(h) = self.owners.iter().position(|x| x == owner) {
                    seen.sleeping.entry(h).or_default().push(*ticket);
                }
            }
            (Op::CondSleep { ticket, .. }, Ok(_)) => {
                seen.sleeping.entry(o).or_default().push(*ticket);
            }
            (Op::CondCheck { ticket } | Op::CondCancel { ticket }, Ok(Reply::Flag(true))) => {
                for v in seen.sleeping.values_mut() {
                    v.retain(|t| t != ticket);
                }
            }
            (_, Ok(Reply::Arrived { generation, .. } | Reply::Event { generation, .. })) => {
                seen.generation = *generation;
            }
            (_, Ok(Reply::Barrier(v))) => seen.generation = v.generation,
            _ => {}
        }
    }
}

/// The record as a refused op must leave it: what `apply` may change even then is
/// pruning lapsed leases and stale waiters, and dropping a lapsed averager.
fn settled(record: &Record, ctx: &Ctx<'_>) -> String {
    let mut r = record.clone();
    let _ = apply(&mut r, "n", Op::Holders, ctx);
    if let Some(State::Averager(_)) = r.state {
        let _ = apply(&mut r, "n", Op::AvgGet, ctx);
    }
    format!("{r:?}")
}

/// All permits of a semaphore, held or free (`None` for other kinds).
fn semaphore_total(record: &Record, kind: Kind) -> Option<i64> {
    let Kind::Permits(k @ (PermitKind::Semaphore { .. } | PermitKind::BoundedSemaphore { .. })) =
        kind
    else {
        return None;
    };
    let initial = match k {
        PermitKind::Semaphore { initial } => initial,
        PermitKind::BoundedSemaphore { max } => max,
        _ => 0,
    };
    match &record.state {
        Some(State::Permits(p)) if p.kind == k => Some(p.holders.len() as i64 + p.available),
        _ => Some(i64::from(initial)),
    }
}

/// Checks the invariants that hold after every step.
fn check_exclusion(record: &Record) {
    let Some(State::Permits(p)) = &record.state else {
        return;
    };
    match p.kind {
        PermitKind::Lock | PermitKind::RLock | PermitKind::Condition => {
            assert!(p.holders.len() <= 1, "two holders of a {:?}: {p:?}", p.kind)
        }
        PermitKind::RwLock => assert!(
            p.holders.len() <= 1 || p.holders.iter().all(|h| h.mode == Mode::Shared),
            "a writer alongside another holder: {p:?}"
        ),
        PermitKind::Semaphore { .. } => assert!(p.available >= 0, "{p:?}"),
        PermitKind::BoundedSemaphore { max } => assert!(
            p.available >= 0 && p.holders.len() as i64 + p.available == i64::from(max),
            "a bounded semaphore of {max} with more permits than that: {p:?}"
        ),
    }
}

/// After a new grant to `ticket` (`None`: a newcomer, at the back), every waiter that
/// queued before it and is still queued must be grantable now, in order.
fn check_fifo(before: &Record, after: &Record, ticket: Option<u64>, ctx: &Ctx<'_>) {
    let (Some(State::Permits(b)), Some(State::Permits(a))) = (&before.state, &after.state) else {
        return;
    };
    let ahead: Vec<_> = match ticket.and_then(|t| b.queue.iter().position(|w| w.ticket == t)) {
        Some(i) => b.queue.iter().take(i).collect(),
        None => b.queue.iter().collect(),
    };
    let mut sim = after.clone();
    for w in ahead {
        if !a.queue.iter().any(|x| x.ticket == w.ticket) {
            continue;
        }
        let op = Op::Acquire(Acquire {
            kind: a.kind,
            mode: w.mode,
            owner: w.owner.clone(),
            lease: None,
            tag: None,
            ticket: Some(w.ticket),
        });
        let out = apply(&mut sim, "n", op, ctx);
        assert!(
            matches!(out, Ok((Reply::Granted(_), _))),
            "ticket {:?} was granted past waiter {} queued before it, who now gets {out:?}\n\
             before: {before:?}\nafter: {after:?}",
            ticket,
            w.ticket
        );
    }
}

/// Ends every use of the record (releases, dequeues, cancels, clears, pops, resets)
/// and checks that it then keeps only its counter and kind.
fn check_idle_after_drain(record: &mut Record, ctx: &Ctx<'_>) {
    let mut rounds = 0;
    while let Some(state) = record.state.clone() {
        rounds += 1;
        assert!(rounds < 20, "draining never ends: {record:?}");
        match state {
            State::Permits(p) => {
                if let PermitKind::Semaphore { initial } = p.kind {
                    if p.available + p.holders.len() as i64 > i64::from(initial) {
                        // Raised by signalling releases: the surplus is state.
                        return;
                    }
                }
                for h in &p.holders {
                    for _ in 0..h.count {
                        // NotHeld if its lease lapsed meanwhile (pruned).
                        let _ = apply(record, "n", Op::Release { token: h.token }, ctx);
                    }
                }
                for w in &p.queue {
                    apply(record, "n", Op::Dequeue { ticket: w.ticket }, ctx).unwrap();
                }
                for s in &p.sleepers {
                    apply(record, "n", Op::CondCancel { ticket: s.ticket }, ctx).unwrap();
                }
                if p.owner_died && p.holders.is_empty() {
                    // Told to the next holder: take and give back a hold.
                    let op = Op::Acquire(Acquire {
                        kind: p.kind,
                        mode: Mode::Exclusive,
                        owner: Owner::new_task(),
                        lease: None,
                        tag: None,
                        ticket: None,
                    });
                    if let (Reply::Granted(g), _) = apply(record, "n", op, ctx).unwrap() {
                        apply(record, "n", Op::Release { token: g.token }, ctx).unwrap();
                    }
                }
            }
            State::Event(_) => {
                apply(record, "n", Op::EventClear, ctx).unwrap();
            }
            State::Barrier(b) => {
                if b.arrived.is_empty() && !b.broken {
                    // Only `last_broken` is left, which later readers are told.
                    return;
                }
                let parties = b.parties;
                apply(record, "n", Op::BarrierReset { parties }, ctx).unwrap();
            }
            State::Averager(_) => {
                apply(record, "n", Op::AvgPop, ctx).unwrap();
            }
        }
    }
    assert!(
        record.tag.is_none(),
        "an idle record keeps a tag: {record:?}"
    );
}

/// Runs one case through the model, checking every property at every step.
fn run_case(kinds: &[usize], steps: &[RawStep]) {
    let mut driver = Driver::new(kinds, |s| (s.a != 0).then(|| u64::from(s.a) * 700));
    let mut records: Vec<Record> = (0..NAMES).map(|_| Record::default()).collect();
    let mut max_token = [0u64; NAMES];
    let dead: RefCell<Vec<Owner>> = RefCell::new(Vec::new());
    let is_dead = |o: &Owner| dead.borrow().contains(o);
    let mut now: Millis = 1_000_000;
    let mut log = Vec::new();
    for s in steps {
        if let Some(t) = s.tick {
            now += Millis::from(t);
        }
        let owner = driver.owners[usize::from(s.owner)].clone();
        if dead.borrow().contains(&owner) {
            continue;
        }
        if s.kill {
            log.push(format!("kill owner {}", s.owner));
            dead.borrow_mut().push(owner);
            continue;
        }
        let ctx = Ctx {
            now,
            is_dead: Some(&is_dead),
            waiter_ttl: Some(5_000),
        };
        let (name, op) = driver.op(s);
        log.push(format!("{now} name {name} owner {}: {op:?}", s.owner));
        let record = &mut records[name];
        let before = record.clone();
        let kind = driver.kinds[name];
        let out = apply(record, "n", op.clone(), &ctx);
        let ctx_note = || format!("\nsteps:\n{}\nreply: {out:?}", log.join("\n"));
        match &out {
            Err(_) => assert_eq!(
                settled(record, &ctx),
                settled(&before, &ctx),
                "a refused op changed the record{}",
                ctx_note()
            ),
            Ok((Reply::Granted(g), _)) if g.token > before.next_token => {
                assert!(
                    g.token > max_token[name],
                    "a token that does not rise{}",
                    ctx_note()
                );
                max_token[name] = g.token;
                let ticket = match &op {
                    Op::Acquire(a) => a.ticket,
                    _ => None,
                };
                check_fifo(&before, record, ticket, &ctx);
            }
            Ok(_) => {}
        }
        assert!(
            record.next_token >= before.next_token,
            "the fencing counter went back{}",
            ctx_note()
        );
        check_exclusion(record);
        if let (Some(b), Some(a)) = (
            semaphore_total(&before, kind),
            semaphore_total(record, kind),
        ) {
            let signalling = matches!((&op, &out), (Op::ReleaseOwned { .. }, Ok(_)));
            assert!(
                a == b || (signalling && a > b),
                "a semaphore's permits changed from {b} to {a}{}",
                ctx_note()
            );
        }
        if let Ok((_, Wake { tickets, .. })) = &out {
            let queued: Vec<u64> = match &record.state {
                Some(State::Permits(p)) => p
                    .queue
                    .iter()
                    .map(|w| w.ticket)
                    .chain(p.sleepers.iter().map(|s| s.ticket))
                    .collect(),
                _ => Vec::new(),
            };
            assert!(
                tickets.iter().all(|t| queued.contains(t)),
                "woke a ticket that is not waiting{}",
                ctx_note()
            );
        }
        driver.saw(name, usize::from(s.owner), &op, &out.map(|(r, _)| r));
    }
    let ctx = Ctx {
        now,
        is_dead: None,
        waiter_ttl: None,
    };
    for (name, record) in records.iter_mut().enumerate() {
        let counter = record.next_token;
        check_idle_after_drain(record, &ctx);
        assert!(
            record.next_token >= counter && record.next_token >= max_token[name],
            "draining lowered the counter"
        );
    }
}

/// `PROPTEST_CASES` if set (for a longer hunt), else `default`.
pub(crate) fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(400),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Mutual exclusion, FIFO grants, rising tokens, refused ops changing nothing, and
    /// idle names keeping only their counter and kind, on random op sequences.
    #[test]
    fn the_model_keeps_its_promises((kinds, steps) in case(60)) {
        run_case(&kinds, &steps);
    }
}

/// Found by the property test: a refused op that pruned the last stale waiter left
/// the record's idle state behind (a Release of an old token, after the only waiter
/// stopped trying), where every other step drops it.
#[test]
fn a_refused_op_that_prunes_leaves_an_idle_record_tidy() {
    let (a, b) = (Owner::new_task(), Owner::new_task());
    let at = |now| Ctx {
        now,
        is_dead: None,
        waiter_ttl: Some(5_000),
    };
    let acquire = |owner: &Owner, ticket| {
        Op::Acquire(Acquire {
            kind: PermitKind::RLock,
            mode: Mode::Exclusive,
            owner: owner.clone(),
            lease: None,
            tag: None,
            ticket,
        })
    };
    let mut r = Record::default();
    let (reply, _) = apply(&mut r, "n", acquire(&a, None), &at(0)).unwrap();
    let Reply::Granted(g) = reply else {
        panic!("{reply:?}")
    };
    apply(&mut r, "n", acquire(&b, Some(9)), &at(0)).unwrap();
    apply(&mut r, "n", Op::Release { token: g.token }, &at(0)).unwrap();
    // The waiter never comes back; later, an old guard releases again.
    let refused = apply(&mut r, "n", Op::Release { token: g.token }, &at(6_000));
    assert!(matches!(refused, Err(crate::Error::NotHeld { .. })));
    assert!(r.state.is_none(), "an idle state was kept: {r:?}");
    assert_eq!(r.next_token, g.token);
}
