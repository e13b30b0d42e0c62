//! One step as one transaction on one row, in two round trips: `BEGIN`, the row
//! `SELECT … FOR UPDATE` and the server's clock, pipelined; the shared state machine
//! run here; then the row's update, its notification and `COMMIT`, pipelined.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::conn::{within, Fault, Pool};
use super::watch::payload;
use crate::backend::model::{self, Ctx, Kind, Millis, Op, Record, Reply, State};
use crate::owner::Owner;
use crate::{Error, Result};

/// The statements of one schema.
pub(crate) struct Sql {
    pub select: String,
    pub peek: String,
    pub clock: String,
    pub insert: String,
    pub update: String,
    pub channel: String,
    pub names: String,
    pub reclaim: String,
    pub evict_select: String,
    pub evict_update: String,
}

impl Sql {
    pub(crate) fn new(schema: &str, channel: String) -> Sql {
        let s = format!("\"{schema}\"");
        Sql {
            select: format!(
                "SELECT token, tag, state, kind FROM {s}.prim WHERE name = $1 FOR UPDATE"
            ),
            // The row and the clock without a transaction or a lock: one snapshot.
            peek: format!(
                "SELECT p.token, p.tag, p.state, p.kind, \
                     (extract(epoch FROM clock_timestamp()) * 1000)::bigint, \
                     (SELECT value FROM {s}.meta WHERE key = 'token_floor') \
                 FROM (SELECT 1) one LEFT JOIN {s}.prim p ON p.name = $1"
            ),
            // Read after the row lock is taken (the statements run in order), so a
            // step that waited for the lock sees the time it got it.
            clock: format!(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint, \
                 (SELECT value FROM {s}.meta WHERE key = 'token_floor')"
            ),
            insert: format!(
                "INSERT INTO {s}.prim (name, token, tag, state, kind) VALUES ($1, $2, $3, $4, $5)"
            ),
            update: format!(
                "UPDATE {s}.prim SET token = $2, tag = $3, state = $4, kind = $5 WHERE name = $1"
            ),
            channel,
            names: format!("SELECT name FROM {s}.prim ORDER BY name"),
            // The floor is raised in the same statement as the rows go: a name created
            // again counts on from it. A row locked by a step in flight is waited for,
            // and kept if that step made it busy.
            reclaim: format!(
                "WITH gone AS (DELETE FROM {s}.prim WHERE state IS NULL AND tag IS NULL \
                     RETURNING token), \
                 raised AS (UPDATE {s}.meta SET value = greatest(value, \
                     (SELECT coalesce(max(token), 0) FROM gone)) WHERE key = 'token_floor') \
                 SELECT count(*) FROM gone"
            ),
            evict_select: format!(
                "SELECT name, state FROM {s}.prim WHERE tag = $1 AND state IS NOT NULL FOR UPDATE"
            ),
            evict_update: format!(
                "UPDATE {s}.prim SET state = $2, tag = NULL, kind = NULL WHERE name = $1"
            ),
        }
    }
}

/// What a step's transaction did.
pub(crate) struct Outcome {
    pub reply: Reply,
    /// Whether the change concerns every watcher of the name, and which tickets.
    pub all: bool,
    pub tickets: Vec<u64>,
}

/// One attempt at `op` on `name`, within `budget`. `Ok(Err(_))`: the state machine
/// refused the op (nothing changed); `Err(_)`: the server failed. With `peek`, the
/// row is first read without a lock: if the op changes nothing on it, that is the
/// answer (see [`peek`]).
pub(crate) async fn attempt(
    pool: &Pool,
    sql: &Sql,
    name: &str,
    op: &Op,
    waiter_ttl: Millis,
    budget: Duration,
    peek: bool,
) -> std::result::Result<Result<Outcome>, Fault> {
    let committing = Arc::new(AtomicBool::new(false));
    let late = {
        let committing = committing.clone();
        move || {
            let what = format!("no answer within {} ms", budget.as_millis());
            if committing.load(Ordering::Acquire) {
                Fault::Unknown(what)
            } else {
                Fault::NotApplied(what)
            }
        }
    };
    // Waiting for a connection of the pool is not the server's time: only the
    // transaction counts against the budget (ten thousand tasks of one process queue
    // for a few connections).
    let pooled = pool.get(urgent(op)).await?;
    let out = within(
        budget,
        async {
            if peek {
                if let Some(out) = self::peek(&pooled.client, sql, name, op, waiter_ttl).await? {
                    return Ok(out);
                }
            }
            transact(&pooled.client, sql, name, op, waiter_ttl, &committing).await
        },
        late,
    )
    .await;
    // A connection whose transaction ended (committed, or rolled back after a refusal)
    // serves the next step; after a failure it is closed, and the server rolls back
    // whatever was left open.
    if out.is_ok() {
        pool.put(pooled);
    }
    out
}

/// `op` on the row as one snapshot shows it, without a lock; `None` if the op would
/// change the row (the caller then takes the locked path). An answer that changes
/// nothing is as true at the snapshot as under the lock: a newcomer told the lock is
/// busy was told so of a moment the lock was busy. It spares a crowd of newcomers
/// queueing for the row's lock behind each other and the hand-offs they wait for.
async fn peek(
    client: &Client,
    sql: &Sql,
    name: &str,
    op: &Op,
    waiter_ttl: Millis,
) -> std::result::Result<Option<Result<Outcome>>, Fault> {
    let rows = client
        .query_typed(&sql.peek, &[(&name, Type::TEXT)])
        .await
        .map_err(|e| Fault::before_commit(&e))?;
    let Some(r) = rows.first() else {
        return Err(Fault::Refused("the server's clock gave no row".into()));
    };
    let (token, tag, state, kind): (Option<i64>, Option<String>, Option<String>, Option<String>) =
        (r.get(0), r.get(1), r.get(2), r.get(3));
    let (now, floor): (i64, Option<i64>) = (r.get(4), r.get(5));
    let token = token.unwrap_or(floor.unwrap_or(0));
    match compute(
        name,
        op,
        (token, &tag, &state, &kind),
        now.max(0) as Millis,
        waiter_ttl,
    ) {
        Ok((outcome, new)) => {
            let unchanged = new.token == token
                && new.tag == tag
                && new.state == state
                && new.kind == kind
                && !outcome.all
                && outcome.tickets.is_empty();
            Ok(unchanged.then_some(Ok(outcome)))
        }
        Err(e) => Ok(Some(Err(e))),
    }
}

async fn transact(
    client: &Client,
    sql: &Sql,
    name: &str,
    op: &Op,
    waiter_ttl: Millis,
    committing: &AtomicBool,
) -> std::result::Result<Result<Outcome>, Fault> {
    let (begun, row, clock) = futures_util::future::join3(
        client.batch_execute("BEGIN"),
        client.query_typed(&sql.select, &[(&name, Type::TEXT)]),
        client.query_typed(&sql.clock, &[]),
    )
    .await;
    let fail = |e: tokio_postgres::Error| Fault::before_commit(&e);
    begun.map_err(fail)?;
    let row = row.map_err(fail)?;
    let clock = clock.map_err(fail)?;
    let (now, floor): (i64, Option<i64>) = match clock.first() {
        Some(r) => (r.get(0), r.get(1)),
        None => return Err(Fault::Refused("the server's clock gave no row".into())),
    };
    let existed = !row.is_empty();
    let (old_token, old_tag, old_state, old_kind): (
        i64,
        Option<String>,
        Option<String>,
        Option<String>,
    ) = match row.first() {
        Some(r) => (r.get(0), r.get(1), r.get(2), r.get(3)),
        // A new name, or one reclaimed: its counter starts at the floor.
        None => (floor.unwrap_or(0), None, None, None),
    };
    let computed = compute(
        name,
        op,
        (old_token, &old_tag, &old_state, &old_kind),
        now.max(0) as Millis,
        waiter_ttl,
    );
    let (outcome, new) = match computed {
        Ok(c) => c,
        Err(e) => {
            end_unchanged(client);
            return Ok(Err(e));
        }
    };
    let changed = new.token != old_token
        || new.tag != old_tag
        || new.state != old_state
        || new.kind != old_kind;
    let notify = (outcome.all || !outcome.tickets.is_empty())
        .then(|| payload(outcome.all, &outcome.tickets, name))
        // A payload past the server's limit (8000 bytes) wakes nobody; watchers re-check
        // by the fallback poll.
        .filter(|p| p.len() < 7900);
    if !changed && notify.is_none() {
        end_unchanged(client);
        return Ok(Ok(outcome));
    }
    let write = async {
        if !changed {
            return Ok(());
        }
        let statement = if existed { &sql.update } else { &sql.insert };
        client
            .query_typed(
                statement,
                &[
                    (&name, Type::TEXT),
                    (&new.token, Type::INT8),
                    (&new.tag, Type::TEXT),
                    (&new.state, Type::TEXT),
                    (&new.kind, Type::TEXT),
                ],
            )
            .await
            .map(drop)
    };
    let notified = async {
        match &notify {
            Some(p) => client
                .query_typed(
                    "SELECT pg_notify($1, $2)",
                    &[(&sql.channel, Type::TEXT), (p, Type::TEXT)],
                )
                .await
                .map(drop),
            None => Ok(()),
        }
    };
    let relaxed = relaxed(op, &outcome.reply) && new.token == old_token;
    let relax = async {
        if relaxed {
            client
                .batch_execute("SET LOCAL synchronous_commit = off")
                .await
        } else {
            Ok(())
        }
    };
    let commit = async {
        committing.store(true, Ordering::Release);
        client.batch_execute("COMMIT").await
    };
    let (written, notified, relaxed, committed) =
        futures_util::future::join4(write, notified, relax, commit).await;
    // A failed statement aborted the transaction, which COMMIT then rolled back.
    written.map_err(fail)?;
    notified.map_err(fail)?;
    relaxed.map_err(fail)?;
    committed.map_err(|e| Fault::at_commit(&e))?;
    Ok(Ok(outcome))
}

/// Whether the commit of `op`, answered `reply`, may skip waiting for the server's
/// WAL flush: steps whose loss in a server crash gives nothing away. A release lost
/// that way comes back as a hold that lapses with its lease (every hold here has one),
/// and a queue place lost is taken again by the waiter's next look; any later commit
/// that waits for the flush (every grant does) makes them durable too. Grants, token
/// changes, renewals and semaphore counts always wait.
fn relaxed(op: &Op, reply: &Reply) -> bool {
    match op {
        Op::Release { .. } | Op::ReleaseAll { .. } | Op::Dequeue { .. } => true,
        Op::Acquire(a) => a.ticket.is_some() && matches!(reply, Reply::Blocked { .. }),
        _ => false,
    }
}

/// Ends a transaction that changed nothing without waiting for the server's answer: the
/// step's answer is already known (the row as read under its lock), the server
/// releases the lock as soon as the COMMIT arrives, and whatever is sent next on this
/// connection follows it. So a step that changes nothing costs one round trip.
fn end_unchanged(client: &Client) {
    // The first poll sends the request; the answer is left unread.
    let _ = futures_util::FutureExt::now_or_never(client.batch_execute("COMMIT"));
}

/// A row as the step writes it back.
struct Row {
    token: i64,
    tag: Option<String>,
    state: Option<String>,
    kind: Option<String>,
}

/// Whether `op` is a step of someone already in line: a queued waiter's retry, a
/// release, a renewal, leaving the queue. Such steps have connections of their own, so
/// that a crowd of newcomers queued for the pool never delays the hand-offs they wait
/// for (nor lets leases lapse).
fn urgent(op: &Op) -> bool {
    matches!(
        op,
        Op::Acquire(crate::backend::model::Acquire {
            ticket: Some(_),
            ..
        }) | Op::Release { .. }
            | Op::ReleaseAll { .. }
            | Op::ReleaseOwned { .. }
            | Op::Renew { .. }
            | Op::Dequeue { .. }
            | Op::CondCancel { .. }
            | Op::ForceRelease
    )
}

/// Runs the state machine on the row `(token, tag, state, kind)`.
fn compute(
    name: &str,
    op: &Op,
    (token, tag, state, kind): (i64, &Option<String>, &Option<String>, &Option<String>),
    now: Millis,
    waiter_ttl: Millis,
) -> Result<(Outcome, Row)> {
    let force = matches!(op, Op::ForceRelease);
    let decoded = state
        .as_deref()
        .map(serde_json::from_str::<State>)
        .transpose()
        .and_then(|state| {
            let kind = kind.as_deref().map(serde_json::from_str::<Kind>);
            Ok((state, kind.transpose()?))
        });
    let (state, kind, damaged) = match decoded {
        Ok((state, kind)) => (state, kind, false),
        // A record that does not decode is this name's problem only; a forced release
        // resets it (its fencing counter is a column of its own).
        Err(_) if force => (None, None, true),
        Err(e) => {
            return Err(Error::Damaged {
                name: name.into(),
                reason: e.to_string(),
            })
        }
    };
    let mut record = Record {
        next_token: token.max(0) as u64,
        tag: if damaged { None } else { tag.clone() },
        state,
        kind,
    };
    let is_dead = |o: &Owner| !o.same_process(&Owner::current_thread()) && o.is_dead();
    let ctx = Ctx {
        now,
        is_dead: Some(&is_dead),
        waiter_ttl: Some(waiter_ttl),
    };
    let (reply, mut wake) = model::apply(&mut record, name, op.clone(), &ctx)?;
    if damaged {
        tracing::warn!(name, "reset a damaged record");
        wake.all = true;
    }
    let json =
        |e: serde_json::Error| Error::backend(format!("cannot encode the record of '{name}': {e}"));
    let row = Row {
        token: i64::try_from(record.next_token)
            .map_err(|_| Error::backend(format!("the fencing counter of '{name}' overflowed")))?,
        tag: record.tag.clone(),
        state: record
            .state
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(json)?,
        kind: record
            .kind
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(json)?,
    };
    let mut tickets = wake.tickets;
    if wake.all {
        // Everyone watching includes every queued ticket.
        if let Some(State::Permits(p)) = &record.state {
            tickets.extend(p.queue.iter().map(|w| w.ticket));
            tickets.extend(p.sleepers.iter().map(|s| s.ticket));
        }
    }
    Ok((
        Outcome {
            reply,
            all: wake.all,
            tickets,
        },
        row,
    ))
}

/// Drops the state of every primitive tagged `tag`, in one transaction; answers the
/// names evicted.
pub(crate) async fn evict(
    client: &Client,
    sql: &Sql,
    tag: &str,
) -> std::result::Result<Vec<String>, Fault> {
    let fail = |e: tokio_postgres::Error| Fault::before_commit(&e);
    client.batch_execute("BEGIN").await.map_err(fail)?;
    let out = async {
        let rows = client
            .query_typed(&sql.evict_select, &[(&tag, Type::TEXT)])
            .await
            .map_err(fail)?;
        let mut evicted = Vec::new();
        for row in rows {
            let name: String = row.get(0);
            let state: Option<String> = row.get(1);
            // A record that does not parse is evicted all the same.
            let mut record = Record {
                next_token: 0,
                tag: Some(tag.to_owned()),
                state: state.as_deref().and_then(|s| serde_json::from_str(s).ok()),
                kind: None,
            };
            model::evict(&mut record, tag);
            let kept = record
                .state
                .as_ref()
                .and_then(|s| serde_json::to_string(s).ok());
            client
                .query_typed(
                    &sql.evict_update,
                    &[(&name, Type::TEXT), (&kept, Type::TEXT)],
                )
                .await
                .map_err(fail)?;
            let p = payload(true, &[], &name);
            if p.len() < 7900 {
                client
                    .query_typed(
                        "SELECT pg_notify($1, $2)",
                        &[(&sql.channel, Type::TEXT), (&p, Type::TEXT)],
                    )
                    .await
                    .map_err(fail)?;
            }
            evicted.push(name);
        }
        Ok(evicted)
    }
    .await;
    match out {
        Ok(evicted) => {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| Fault::at_commit(&e))?;
            Ok(evicted)
        }
        Err(f) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(f)
        }
    }
}
