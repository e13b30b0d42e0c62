//! Queued waiters of one process, per name: only one of them at a time takes a place
//! in a store's queue (see [`Gates`]). Shared by the stores that keep their queue in a
//! record every step reads and writes (sqlite, postgres).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use event_listener::EventListener;

/// How a ticket left its gate.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Finished {
    /// It was waiting behind another waiter of this process.
    Gated,
    /// It was this process's waiter in the store's queue, or unknown here.
    Store,
}

/// Queued waiters of this process, per name.
///
/// Only one waiter per name and process (the *active* one) takes a place in the
/// store's queue; the others wait here, in order, on a local event, and take its place
/// when it is granted or leaves. So a process with ten thousand waiters on one lock
/// puts one entry, not ten thousand, in the record every step reads and writes, and
/// only one of them sleeps on the doorbell. Across processes the store's queue stays
/// first-come first-served; within a process, so does this one.
#[derive(Debug, Default)]
pub(crate) struct Gates(Mutex<HashMap<Arc<str>, Gate>>);

#[derive(Debug, Default)]
struct Gate {
    active: Option<u64>,
    waiting: VecDeque<u64>,
    /// Every ticket of this name with a watch or a place here: its event, and whether
    /// it is waiting (not active).
    tickets: HashMap<u64, (Arc<event_listener::Event>, bool)>,
}

impl Gates {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Gate>> {
        // The gate's invariants hold between statements that cannot panic.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn listen(&self, name: &str, ticket: u64) -> EventListener {
        let mut gates = self.lock();
        let gate = match gates.get_mut(name) {
            Some(g) => g,
            None => gates.entry(name.into()).or_default(),
        };
        gate.tickets
            .entry(ticket)
            .or_insert_with(|| (Arc::default(), false))
            .0
            .listen()
    }

    /// Whether `ticket` may go to the store now; if not, it waits in line here.
    pub(crate) fn admit(&self, name: &str, ticket: u64) -> bool {
        let mut gates = self.lock();
        let gate = match gates.get_mut(name) {
            Some(g) => g,
            None => gates.entry(name.into()).or_default(),
        };
        if gate.active == Some(ticket) {
            return true;
        }
        if gate.active.is_none() {
            gate.waiting.retain(|&t| t != ticket);
            gate.active = Some(ticket);
            gate.tickets.entry(ticket).or_default().1 = false;
            return true;
        }
        let entry = gate.tickets.entry(ticket).or_default();
        if !entry.1 {
            entry.1 = true;
            gate.waiting.push_back(ticket);
        }
        false
    }

    pub(crate) fn is_gated(&self, name: &str, ticket: u64) -> bool {
        self.lock()
            .get(name)
            .and_then(|g| g.tickets.get(&ticket))
            .is_some_and(|t| t.1)
    }

    /// How many waiters of `name` wait here.
    pub(crate) fn gated(&self, name: &str) -> usize {
        self.lock().get(name).map_or(0, |g| g.waiting.len())
    }

    /// Removes `ticket`; answers how it left and which ticket became active.
    pub(crate) fn finish(&self, name: &str, ticket: u64) -> (Finished, Option<u64>) {
        let mut gates = self.lock();
        let Some(gate) = gates.get_mut(name) else {
            return (Finished::Store, None);
        };
        let was = gate.tickets.remove(&ticket);
        let mut promoted = None;
        let finished = if was.is_some_and(|t| t.1) {
            gate.waiting.retain(|&t| t != ticket);
            Finished::Gated
        } else {
            if gate.active == Some(ticket) {
                gate.active = gate.waiting.pop_front();
                if let Some(next) = gate.active {
                    if let Some((event, gated)) = gate.tickets.get_mut(&next) {
                        *gated = false;
                        event.notify(usize::MAX);
                    }
                    promoted = Some(next);
                }
            }
            Finished::Store
        };
        if gate.active.is_none() && gate.waiting.is_empty() && gate.tickets.is_empty() {
            gates.remove(name);
        }
        (finished, promoted)
    }
}
