//! Queued waiters of this process, per name: only one of them (the *active* one) takes
//! a place in the record's queue; the others wait here, in order, each on an event of
//! its own, and take its place when it is granted or leaves. Ten thousand waiters of
//! one process thus put one entry, not ten thousand, in the record every step reads
//! and writes. Across processes the record's queue stays first-come first-served;
//! within a process, so does this one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use event_listener::{Event, EventListener};

use super::client::lock;

#[derive(Default)]
pub(super) struct Gate(Mutex<Line>);

#[derive(Default)]
struct Line {
    active: Option<u64>,
    waiting: VecDeque<u64>,
    /// The event of each waiting ticket.
    events: HashMap<u64, Arc<Event>>,
}

impl Gate {
    /// Whether `ticket` may go to the store now; if not, it waits in line here.
    pub(super) fn admit(&self, ticket: u64) -> bool {
        let mut line = lock(&self.0);
        match line.active {
            Some(t) if t == ticket => true,
            None => {
                line.waiting.retain(|&t| t != ticket);
                line.events.remove(&ticket);
                line.active = Some(ticket);
                true
            }
            Some(_) => {
                if !line.events.contains_key(&ticket) {
                    line.waiting.push_back(ticket);
                    line.events.insert(ticket, Arc::default());
                }
                false
            }
        }
    }

    /// A listener for `ticket`'s turn, if it waits in line here.
    pub(super) fn listen(&self, ticket: u64) -> Option<EventListener> {
        lock(&self.0).events.get(&ticket).map(|e| e.listen())
    }

    /// Whether a waiter of this process is queued for the name.
    pub(super) fn busy(&self) -> bool {
        lock(&self.0).active.is_some()
    }

    /// How many waiters wait in line here.
    pub(super) fn waiting(&self) -> usize {
        lock(&self.0).waiting.len()
    }

    /// Forgets `ticket` (granted, gone, or failed); answers whether it waited in line
    /// here (it has no place in the store's queue). If it was the active one, the next
    /// in line becomes active and is told.
    pub(super) fn finish(&self, ticket: u64) -> bool {
        let mut line = lock(&self.0);
        if line.events.remove(&ticket).is_some() {
            line.waiting.retain(|&t| t != ticket);
            return true;
        }
        if line.active == Some(ticket) {
            line.active = line.waiting.pop_front();
            if let Some(next) = line.active {
                if let Some(event) = line.events.remove(&next) {
                    event.notify(usize::MAX);
                }
            }
        }
        false
    }
}
