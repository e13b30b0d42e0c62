//! The in-process backend: threads and tasks of one process.
//!
//! Each name has a slot: its [`Record`] behind a mutex, applied to by the shared state
//! machine, and event-listener events to wake waiters. Queued waiters each listen on
//! their own ticket's event, so a release wakes exactly the waiters that can proceed
//! rather than every waiter of the name. `mem:` opens a private space; `mem:NAME` opens
//! the process-wide space of that name, shared by every `Space::open("mem:NAME")`.
//!
//! An uncontended plain Lock skips the record and the mutex altogether: see [`fast`].

mod atomic;
mod fast;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use event_listener::{Event, EventListener, Listener};

use self::fast::{FastLock, Folded};
use super::model::{self, Ctx, Millis, Op, Record, Reply};
use super::{Backend, BoxFuture, FastHold, Key, Watch};
use crate::os::clock::now_millis;
use crate::owner::Owner;
use crate::{Error, Result};

#[derive(Debug, Default)]
pub(crate) struct MemBackend {
    slots: Mutex<Slots>,
}

/// The names and what reclaiming them left behind.
#[derive(Debug, Default)]
struct Slots {
    map: HashMap<Arc<str>, Arc<Slot>>,
    /// The highest fencing counter of any reclaimed name: a name created (again)
    /// starts from it, so its tokens exceed every token it had before.
    token_floor: u64,
    /// Creating a name when the map holds this many sweeps idle names first.
    sweep_at: usize,
}

/// The fewest names at which creating one sweeps idle names away.
const SWEEP_FLOOR: usize = 1024;

#[derive(Debug, Default)]
struct Slot {
    inner: Mutex<SlotInner>,
    /// Wakes watchers without a ticket (event and barrier waiters).
    changed: Event,
    /// The lock's state while it is a plain uncontended Lock; see [`fast`].
    fast: FastLock,
}

#[derive(Debug, Default)]
struct SlotInner {
    record: Record,
    /// One event per queued ticket (permit waiters, condition sleepers).
    tickets: HashMap<u64, Arc<Event>>,
}

/// The kind the fast path's word stands for.
const LOCK: model::Kind = model::Kind::Permits(model::PermitKind::Lock);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state machine never panics midway through a change, so a poisoned slot
    // still holds a consistent record.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process-wide named backends (`mem:NAME`).
static NAMED: Mutex<Vec<(String, Weak<MemBackend>)>> = Mutex::new(Vec::new());

impl MemBackend {
    /// Whether a space `mem:NAME` is open in this process.
    pub(crate) fn exists(name: &str) -> bool {
        lock(&NAMED)
            .iter()
            .any(|(n, w)| n == name && w.strong_count() > 0)
    }

    /// The process-wide backend called `name`, created on first use.
    pub(crate) fn named(name: &str) -> Arc<MemBackend> {
        let mut named = lock(&NAMED);
        named.retain(|(_, w)| w.strong_count() > 0);
        if let Some(b) = named
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, w)| w.upgrade())
        {
            return b;
        }
        let b = Arc::new(MemBackend::default());
        named.push((name.to_owned(), Arc::downgrade(&b)));
        b
    }

    /// Forgets the process-wide backend called `name`: the next open of it starts
    /// empty (spaces open now keep the one they have).
    pub(crate) fn forget(name: &str) {
        lock(&NAMED).retain(|(n, _)| n != name);
    }

    /// Runs `f` on the slot of `key`, through the key's cache when it has one (no
    /// reference count to touch on the hot path).
    fn with_slot<R>(&self, key: &Key, f: impl FnOnce(&Slot) -> R) -> R {
        match key.cached_ref::<Slot>() {
            Some(slot) => f(slot),
            None => f(&self.slot(key)),
        }
    }

    fn slot(&self, key: &Key) -> Arc<Slot> {
        key.cached(|| {
            let mut slots = lock(&self.slots);
            if let Some(slot) = slots.map.get(key.name()) {
                return slot.clone();
            }
            if slots.map.len() >= slots.sweep_at.max(SWEEP_FLOOR) {
                sweep(&mut slots);
                slots.sweep_at = slots.map.len().saturating_mul(2);
            }
            let slot = Arc::new(Slot::default());
            // A new name's counter starts at the floor, in the record and in the
            // fast path's word alike.
            lock(&slot.inner).record.next_token = slots.token_floor;
            slot.fast.fold();
            slot.fast.unfold(slots.token_floor);
            slots.map.insert(key.name().into(), slot.clone());
            slot
        })
    }
}

/// Drops every idle name nobody refers to (no handle has it cached, nobody waits on
/// it): only the map holds it, so nobody can step on it while it goes, and whoever
/// names it next gets a fresh slot counting on from the floor. Answers how many went.
///
/// Removed names (nothing but a counter) go first; only if there are none do idle
/// names that keep their kind go, forgetting it (as a crowded `shm:` table does).
fn sweep(slots: &mut Slots) -> usize {
    let removed = sweep_pass(slots, false);
    if removed > 0 {
        return removed;
    }
    let forgotten = sweep_pass(slots, true);
    if forgotten > 0 {
        tracing::debug!(
            forgotten,
            "mem: idle names reclaimed, their kinds forgotten"
        );
    }
    forgotten
}

fn sweep_pass(slots: &mut Slots, with_kind: bool) -> usize {
    let mut floor = slots.token_floor;
    let before = slots.map.len();
    let now = now_millis();
    slots.map.retain(|_, slot| {
        if Arc::strong_count(slot) > 1 {
            return true;
        }
        let mut inner = lock(&slot.inner);
        fold(slot, &mut inner, now);
        let record = &inner.record;
        let idle =
            record.state.is_none() && record.tag.is_none() && (with_kind || record.kind.is_none());
        if idle {
            floor = floor.max(inner.record.next_token);
        }
        !idle
    });
    slots.token_floor = floor;
    before - slots.map.len()
}

impl Backend for MemBackend {
    fn step(&self, key: &Key, op: Op) -> Result<Reply> {
        self.with_slot(key, |slot| step(slot, key, op))
    }

    fn lock_fast(&self, key: &Key, thread: u64) -> Option<FastHold> {
        self.with_slot(key, |slot| slot.fast.try_acquire(thread))
    }

    fn unlock_fast(&self, key: &Key, hold: FastHold) -> bool {
        self.with_slot(key, |slot| slot.fast.try_release(hold))
    }

    fn watch(&self, key: &Key, ticket: Option<u64>) -> Result<Box<dyn Watch>> {
        let slot = self.slot(key);
        let listener = match ticket {
            Some(ticket) => lock(&slot.inner)
                .tickets
                .entry(ticket)
                .or_default()
                .listen(),
            None => slot.changed.listen(),
        };
        Ok(Box::new(MemWatch(listener)))
    }

    fn names(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = lock(&self.slots)
            .map
            .keys()
            .map(|k| k.to_string())
            .collect();
        names.sort();
        Ok(names)
    }

    fn steps_wait(&self) -> bool {
        false
    }

    fn destroy(&self) -> Result<Vec<std::path::PathBuf>> {
        // (The space's name is forgotten by `Space::destroy`.)
        Ok(Vec::new())
    }

    fn reclaim_idle(&self) -> Result<usize> {
        // Asked for: every idle name goes, kind and all.
        Ok(sweep_pass(&mut lock(&self.slots), true))
    }

    fn evict_tag(&self, tag: &str) -> Result<usize> {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).map.values().cloned().collect();
        let mut evicted = 0;
        for slot in slots {
            let mut inner = lock(&slot.inner);
            if model::evict(&mut inner.record, tag) {
                evicted += 1;
                slot.changed.notify(usize::MAX);
                for event in inner.tickets.values() {
                    event.notify(usize::MAX);
                }
            }
        }
        Ok(evicted)
    }
}

/// Moves the fast path's word into the record (the slow path's turn).
fn fold(slot: &Slot, inner: &mut SlotInner, now: Millis) {
    let lock = Some(LOCK);
    match slot.fast.fold() {
        Folded::Slow => {}
        Folded::Free { last_token } => {
            // A token handed out through the word: a Lock used the name first.
            if last_token != inner.record.next_token && inner.record.kind.is_none() {
                inner.record.kind = lock;
            }
            inner.record.next_token = last_token
        }
        Folded::Held { token, holder } => {
            if inner.record.kind.is_none() {
                inner.record.kind = lock;
            }
            let owner = match holder {
                0 => Owner::some_task(),
                thread => Owner::with_thread(thread),
            };
            inner.record.next_token = token;
            // The hold's start was not recorded; it is at least this old.
            inner.record.state = Some(model::lock_held(token, owner, now));
        }
    }
}

/// One step on `slot`: the fast word folded into the record, the state machine
/// applied, the waiters it concerns woken, and the fast path opened again if the
/// record is left idle.
fn step(slot: &Slot, key: &Key, op: Op) -> Result<Reply> {
    let mut inner = lock(&slot.inner);
    let now = now_millis();
    fold(slot, &mut inner, now);
    let ctx = Ctx {
        now,
        is_dead: None,
        waiter_ttl: None,
    };
    // The ticket whose wait this step may end, and whether it ended it.
    let ends_wait = match &op {
        Op::Acquire(a) => a.ticket.map(|t| (t, false)),
        Op::Dequeue { ticket } | Op::CondCancel { ticket } => Some((*ticket, true)),
        Op::CondCheck { ticket } => Some((*ticket, false)),
        _ => None,
    };
    let result = model::apply(&mut inner.record, key.name(), op, &ctx);
    if let Ok((reply, wake)) = &result {
        if let Some((ticket, always)) = ends_wait {
            if always || matches!(reply, Reply::Granted(_) | Reply::Flag(true)) {
                inner.tickets.remove(&ticket);
            }
        }
        if wake.all {
            slot.changed.notify(usize::MAX);
            for event in inner.tickets.values() {
                event.notify(usize::MAX);
            }
        } else {
            for ticket in &wake.tickets {
                if let Some(event) = inner.tickets.get(ticket) {
                    event.notify(usize::MAX);
                }
            }
        }
    }
    // Also after a failed op: the record may be idle, and the path must not stay shut.
    // Only for a name that is a Lock or no kind yet: the word knows no other kind.
    if inner.record.state.is_none()
        && inner.record.tag.is_none()
        && (inner.record.kind.is_none() || inner.record.kind == Some(LOCK))
    {
        slot.fast.unfold(inner.record.next_token);
    }
    result.map(|(reply, _)| reply)
}

struct MemWatch(EventListener);

impl Watch for MemWatch {
    fn wait(self: Box<Self>, deadline: Option<Instant>) -> Result<()> {
        match deadline {
            Some(deadline) => {
                self.0.wait_deadline(deadline);
            }
            None => self.0.wait(),
        }
        Ok(())
    }

    fn wait_async(self: Box<Self>, deadline: Option<Instant>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            match deadline {
                Some(deadline) => {
                    if tokio::runtime::Handle::try_current().is_err() {
                        return Err(Error::Unsupported(
                            "async waits with a timeout need a tokio runtime".into(),
                        ));
                    }
                    let _ = tokio::time::timeout_at(deadline.into(), self.0).await;
                }
                None => self.0.await,
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::model::tests::acq as acquire;
    use crate::backend::PermitKind;

    #[test]
    fn every_way_a_wait_ends_drops_its_ticket_event() {
        let mem = MemBackend::default();
        let key = Key::new("c");
        let (a, b) = (Owner::new_task(), Owner::new_task());
        let kind = PermitKind::Condition;
        let token = match mem.step(&key, acquire(kind, &a, None)).unwrap() {
            Reply::Granted(g) => g.token,
            other => panic!("{other:?}"),
        };
        // A queued waiter that gives up.
        let _w = mem.watch(&key, Some(1)).unwrap();
        assert!(matches!(
            mem.step(&key, acquire(kind, &b, Some(1))).unwrap(),
            Reply::Blocked { .. }
        ));
        mem.step(&key, Op::Dequeue { ticket: 1 }).unwrap();
        // A sleeper that times out, and one that is notified.
        let _w = mem.watch(&key, Some(2)).unwrap();
        mem.step(
            &key,
            Op::CondWait {
                token,
                ticket: 2,
                owner: a.clone(),
            },
        )
        .unwrap();
        mem.step(&key, Op::CondCancel { ticket: 2 }).unwrap();
        let token = match mem.step(&key, acquire(kind, &a, None)).unwrap() {
            Reply::Granted(g) => g.token,
            other => panic!("{other:?}"),
        };
        let _w = mem.watch(&key, Some(3)).unwrap();
        mem.step(
            &key,
            Op::CondWait {
                token,
                ticket: 3,
                owner: a,
            },
        )
        .unwrap();
        mem.step(&key, Op::CondNotify { n: 1 }).unwrap();
        assert!(matches!(
            mem.step(&key, Op::CondCheck { ticket: 3 }).unwrap(),
            Reply::Flag(true)
        ));
        let slot = mem.slot(&key);
        assert!(lock(&slot.inner).tickets.is_empty(), "ticket events leaked");
    }
}
