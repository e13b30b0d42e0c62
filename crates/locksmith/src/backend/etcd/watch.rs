//! Wake-ups: one watch stream per process and space carries every change to the
//! space's keys, and wakes the local watchers of the names it concerns.
//!
//! The stream starts at the revision after the one the space read when it opened and
//! resumes, after a break, after the last revision it delivered, so no change is
//! missed: a watcher that registers before it re-checks the state hears of every
//! change made after its registration. Should the stream fall behind a compaction, it
//! wakes everyone (they re-check) and starts again from the present. Watchers also
//! re-check at least every [`POLL`] on their own: the bounded fallback should the
//! stream break unnoticed.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use etcd_client::WatchOptions;
use event_listener::{Event, EventListener, Listener};

use super::client::{lock, runtime, Members};
use super::gate::Gate;
use super::Keys;
use crate::backend::{BoxFuture, Watch};
use crate::Result;

/// The longest a watcher sleeps without re-checking.
pub(crate) const POLL: Duration = Duration::from_secs(1);

/// The watch stream of one space (cluster and prefix) in this process, shared by
/// every `Space::open` of it.
pub(super) struct Hub {
    keys: Keys,
    /// Local watchers, by name.
    slots: Mutex<HashMap<String, Weak<Slot>>>,
    /// This process's waiters in line, by name: one line for every handle of a name
    /// (see [`Gate`]), alive while a handle of it is.
    gates: Mutex<HashMap<String, Weak<Gate>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Default)]
pub(super) struct Slot {
    changed: Event,
}

impl Slot {
    pub(super) fn wake(&self) {
        self.changed.notify(usize::MAX);
    }

    pub(super) fn listen(&self) -> EventListener {
        self.changed.listen()
    }
}

impl Hub {
    /// The hub of `identity` in this process, started (watching from `after + 1`) if
    /// there is none yet.
    pub(super) fn for_space(
        identity: &str,
        keys: &Keys,
        members: &Arc<Members>,
        after: i64,
    ) -> Result<Arc<Hub>> {
        // Keyed by pid too: a forked child must not use its parent's stream.
        static HUBS: Mutex<Vec<(u32, String, Weak<Hub>)>> = Mutex::new(Vec::new());
        let pid = crate::owner::pid();
        let mut hubs = lock(&HUBS);
        hubs.retain(|(p, _, w)| *p == pid && w.strong_count() > 0);
        if let Some(hub) = hubs
            .iter()
            .find(|(_, s, _)| s == identity)
            .and_then(|(_, _, w)| w.upgrade())
        {
            return Ok(hub);
        }
        let hub = Arc::new(Hub {
            keys: keys.clone(),
            slots: Mutex::default(),
            gates: Mutex::default(),
            task: Mutex::new(None),
        });
        let task = runtime()?.spawn(stream(Arc::downgrade(&hub), members.clone(), after + 1));
        *lock(&hub.task) = Some(task);
        hubs.push((pid, identity.to_owned(), Arc::downgrade(&hub)));
        Ok(hub)
    }

    pub(super) fn slot(&self, name: &str) -> Arc<Slot> {
        let mut slots = lock(&self.slots);
        if let Some(s) = slots.get(name).and_then(Weak::upgrade) {
            return s;
        }
        if slots.len() >= 1024 && slots.len().is_power_of_two() {
            slots.retain(|_, w| w.strong_count() > 0);
        }
        let s = Arc::new(Slot::default());
        slots.insert(name.to_owned(), Arc::downgrade(&s));
        s
    }

    /// The line of `name`'s waiters in this process.
    pub(super) fn gate(&self, name: &str) -> Arc<Gate> {
        let mut gates = lock(&self.gates);
        if let Some(g) = gates.get(name).and_then(Weak::upgrade) {
            return g;
        }
        if gates.len() >= 1024 && gates.len().is_power_of_two() {
            gates.retain(|_, w| w.strong_count() > 0);
        }
        let g = Arc::new(Gate::default());
        gates.insert(name.to_owned(), Arc::downgrade(&g));
        g
    }

    pub(super) fn wake(&self, name: &str) {
        let slot = lock(&self.slots).get(name).and_then(Weak::upgrade);
        if let Some(s) = slot {
            s.wake();
        }
    }

    fn wake_everyone(&self) {
        let slots: Vec<Arc<Slot>> = lock(&self.slots)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for s in slots {
            s.wake();
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

/// The stream: watches the prefix from `next`, dispatches each change to the
/// watchers of its name, and starts again where it stopped when it breaks.
async fn stream(hub: Weak<Hub>, members: Arc<Members>, mut next: i64) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(prefix) = hub.upgrade().map(|h| h.keys.prefix.clone()) else {
            return;
        };
        let mut opts = WatchOptions::new().with_prefix();
        if next > 0 {
            opts = opts.with_start_revision(next);
        }
        let (member, mut client) = members.pick();
        let mut watch = match client.watch(prefix.as_bytes(), Some(opts)).await {
            Ok(w) => w,
            Err(_) => {
                members.failed(member);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(POLL);
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        while let Ok(Some(resp)) = watch.message().await {
            let Some(h) = hub.upgrade() else { return };
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    // Fell behind a compaction: start from the present; what was
                    // missed is found by re-checking.
                    next = 0;
                }
                break;
            }
            for event in resp.events() {
                if let Some(kv) = event.kv() {
                    next = next.max(kv.mod_revision() + 1);
                    if let Some(name) = h.keys.name_of(kv.key()) {
                        h.wake(name);
                    }
                }
            }
        }
        // The stream broke (its member was killed or paused): another member next.
        members.failed(member);
        if let Some(h) = hub.upgrade() {
            h.wake_everyone();
        }
        tokio::time::sleep(backoff).await;
    }
}

/// A registration on a name's slot, taken before the caller re-checks.
pub(super) struct EtcdWatch {
    /// Whether it re-checks every [`POLL`] (all but waiters in line in this process).
    pub(super) poll: bool,
    pub(super) listener: EventListener,
    pub(super) _slot: Arc<Slot>,
}

fn capped(deadline: Option<Instant>, poll: bool) -> Option<Instant> {
    if !poll {
        return deadline;
    }
    let poll = Instant::now() + POLL;
    Some(deadline.map_or(poll, |d| d.min(poll)))
}

impl Watch for EtcdWatch {
    fn wait(self: Box<Self>, deadline: Option<Instant>) -> Result<()> {
        match capped(deadline, self.poll) {
            Some(until) => {
                self.listener.wait_deadline(until);
            }
            None => self.listener.wait(),
        }
        Ok(())
    }

    fn wait_async(self: Box<Self>, deadline: Option<Instant>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let EtcdWatch {
                mut listener,
                poll,
                _slot,
            } = *self;
            let Some(until) = capped(deadline, poll) else {
                listener.await;
                return Ok(());
            };
            // The timer runs on the etcd runtime, so any executor can wait.
            let mut timer = runtime()?.spawn(async move {
                tokio::time::sleep_until(until.into()).await;
            });
            std::future::poll_fn(|cx| {
                if Pin::new(&mut listener).poll(cx).is_ready()
                    || Pin::new(&mut timer).poll(cx).is_ready()
                {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
            timer.abort();
            Ok(())
        })
    }
}
