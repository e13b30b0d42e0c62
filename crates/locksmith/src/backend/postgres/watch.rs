//! Wake-ups: one connection per server and process LISTENs on the channel of every
//! open schema and fans notifications out to the local watchers; a watcher re-checks
//! on its own at least every [`POLL`], and every [`POLL_DOWN`] while that connection
//! is broken (when it comes back, every watcher re-checks: notifications sent while it
//! was away are lost).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use event_listener::{Event, EventListener, Listener};
use tokio_postgres::{AsyncMessage, Client, Config};

use super::conn::{describe, lock, runtime};
use crate::backend::gates::Gates;
use crate::backend::{BoxFuture, Watch};
use crate::{Error, Result};

/// The longest a watcher sleeps without re-checking while notifications flow.
pub(crate) const POLL: Duration = Duration::from_secs(2);
/// The longest it sleeps while the listening connection is broken.
pub(crate) const POLL_DOWN: Duration = Duration::from_millis(250);

/// The channel a schema's steps notify on: a hash of its name, so that any schema
/// name makes a valid channel (a collision only wakes a few watchers for nothing).
pub(crate) fn channel(schema: &str) -> String {
    let hash = schema.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("locksmith_{hash:016x}")
}

/// The payload of a notification: whom it concerns (`*`, or tickets separated by
/// commas), a space, the name.
pub(crate) fn payload(all: bool, tickets: &[u64], name: &str) -> String {
    let whom = if all {
        "*".to_owned()
    } else {
        tickets
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    format!("{whom} {name}")
}

/// The watchers of one name in this process.
#[derive(Default)]
pub(crate) struct Slot {
    changed: Event,
    tickets: Mutex<HashMap<u64, Arc<Event>>>,
}

impl Slot {
    fn ticket(&self, ticket: u64) -> Arc<Event> {
        lock(&self.tickets).entry(ticket).or_default().clone()
    }

    /// Wakes the watchers a step's change concerns.
    pub(crate) fn wake(&self, all: bool, tickets: &[u64]) {
        if all {
            self.wake_all();
        } else {
            for &t in tickets {
                self.wake_ticket(t);
            }
        }
    }

    fn wake_all(&self) {
        self.changed.notify(usize::MAX);
        for event in lock(&self.tickets).values() {
            event.notify(usize::MAX);
        }
    }

    fn wake_ticket(&self, ticket: u64) {
        if let Some(event) = lock(&self.tickets).get(&ticket) {
            event.notify(usize::MAX);
        }
    }
}

/// The listening connection of one server, shared by every space of this process
/// that opens it.
pub(crate) struct Hub {
    config: Config,
    state: Mutex<HubState>,
    up: AtomicBool,
    /// Notified whenever the listening connection comes up or goes down.
    moved: Event,
    /// Dropped with the hub: tells the listening task to end.
    _stop: tokio::sync::oneshot::Sender<()>,
}

#[derive(Default)]
struct HubState {
    /// Channels listened on, with how many spaces use each.
    channels: HashMap<String, usize>,
    slots: HashMap<(String, String), Weak<Slot>>,
    client: Option<Arc<Client>>,
}

impl Hub {
    /// The hub of the server `identity` names, started on first use.
    pub(crate) fn for_server(identity: &str, config: &Config) -> Result<Arc<Hub>> {
        type Hubs = HashMap<(u32, String), Weak<Hub>>;
        static HUBS: Mutex<Option<Hubs>> = Mutex::new(None);
        let mut hubs = lock(&HUBS);
        let hubs = hubs.get_or_insert_with(HashMap::new);
        hubs.retain(|_, hub| hub.strong_count() > 0);
        let key = (crate::owner::pid(), identity.to_owned());
        if let Some(hub) = hubs.get(&key).and_then(Weak::upgrade) {
            return Ok(hub);
        }
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let hub = Arc::new(Hub {
            config: config.clone(),
            state: Mutex::default(),
            up: AtomicBool::new(false),
            moved: Event::new(),
            _stop: stop,
        });
        runtime()?.spawn(listen(Arc::downgrade(&hub), stopped));
        hubs.insert(key, Arc::downgrade(&hub));
        Ok(hub)
    }

    /// Listens on `channel`; returns once the server confirmed it, or fails at
    /// `deadline`.
    pub(crate) async fn subscribe(&self, channel: &str, deadline: Instant) -> Result<()> {
        let client = {
            let mut state = lock(&self.state);
            *state.channels.entry(channel.to_owned()).or_default() += 1;
            state.client.clone()
        };
        if let Some(client) = client {
            if client
                .batch_execute(&format!("LISTEN \"{channel}\""))
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        // Not connected (yet), or the connection broke: the listening task listens on
        // every channel of the set once it connects.
        loop {
            let moved = self.moved.listen();
            if self.up.load(Ordering::Acquire) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline.into(), moved)
                .await
                .is_err()
            {
                return Err(Error::backend(
                    "timed out waiting for the PostgreSQL server to confirm LISTEN",
                ));
            }
        }
    }

    pub(crate) fn unsubscribe(&self, channel: &str) {
        let mut state = lock(&self.state);
        if let Some(n) = state.channels.get_mut(channel) {
            *n -= 1;
            if *n == 0 {
                state.channels.remove(channel);
                if let (Some(client), Ok(rt)) = (state.client.clone(), runtime()) {
                    let sql = format!("UNLISTEN \"{channel}\"");
                    rt.spawn(async move {
                        let _ = client.batch_execute(&sql).await;
                    });
                }
            }
        }
    }

    /// The watchers of `name` on `channel`.
    pub(crate) fn slot(&self, channel: &str, name: &str) -> Arc<Slot> {
        let mut state = lock(&self.state);
        let key = (channel.to_owned(), name.to_owned());
        if let Some(slot) = state.slots.get(&key).and_then(Weak::upgrade) {
            return slot;
        }
        if state.slots.len() > 1024 {
            state.slots.retain(|_, s| s.strong_count() > 0);
        }
        let slot = Arc::new(Slot::default());
        state.slots.insert(key, Arc::downgrade(&slot));
        slot
    }

    fn dispatch(&self, channel: &str, payload: &str) {
        let Some((whom, name)) = payload.split_once(' ') else {
            return;
        };
        let slot = {
            let state = lock(&self.state);
            state
                .slots
                .get(&(channel.to_owned(), name.to_owned()))
                .and_then(Weak::upgrade)
        };
        let Some(slot) = slot else { return };
        if whom == "*" {
            slot.wake_all();
        } else {
            for t in whom.split(',').filter_map(|t| t.parse::<u64>().ok()) {
                slot.wake_ticket(t);
            }
        }
    }

    /// Wakes every watcher: notifications may have been lost.
    fn wake_everyone(&self) {
        let slots: Vec<Arc<Slot>> = lock(&self.state)
            .slots
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for slot in slots {
            slot.wake_all();
        }
    }

    fn set_up(&self, up: bool, client: Option<Arc<Client>>) {
        lock(&self.state).client = client;
        self.up.store(up, Ordering::Release);
        self.moved.notify(usize::MAX);
        self.wake_everyone();
    }

    fn poll(&self) -> Duration {
        if self.up.load(Ordering::Acquire) {
            POLL
        } else {
            POLL_DOWN
        }
    }
}

/// The listening task: connects, listens on every channel, dispatches notifications;
/// reconnects (with backoff) when the connection breaks; ends with the hub.
async fn listen(hub: Weak<Hub>, mut stopped: tokio::sync::oneshot::Receiver<()>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(config) = hub.upgrade().map(|h| h.config.clone()) else {
            return;
        };
        let connected = config.connect(tokio_postgres::NoTls).await;
        let (client, mut connection) = match connected {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %describe(&e), "the postgres listener cannot connect");
                let nap = tokio::time::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
                let nap = std::pin::pin!(nap);
                if stop_or(&mut stopped, nap).await {
                    return;
                }
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let client = Arc::new(client);
        // Drive the connection (the client's requests need it), dispatching what the
        // server sends on its own.
        let driver = {
            let hub = hub.clone();
            async move {
                loop {
                    match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                        Some(Ok(AsyncMessage::Notification(n))) => {
                            if let Some(hub) = hub.upgrade() {
                                hub.dispatch(n.channel(), n.payload());
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            tracing::debug!(error = %describe(&e), "the postgres listener broke");
                            return;
                        }
                        None => return,
                    }
                }
            }
        };
        let session = {
            let (hub, client) = (hub.clone(), client.clone());
            async move {
                let channels: Vec<String> = match hub.upgrade() {
                    Some(h) => {
                        lock(&h.state).client = Some(client.clone());
                        lock(&h.state).channels.keys().cloned().collect()
                    }
                    None => return,
                };
                for c in channels {
                    if client
                        .batch_execute(&format!("LISTEN \"{c}\""))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if let Some(h) = hub.upgrade() {
                    h.set_up(true, Some(client));
                }
                std::future::pending::<()>().await
            }
        };
        let both = async {
            let session = std::pin::pin!(session);
            let driver = std::pin::pin!(driver);
            // The driver ends when the connection does; the session never ends first
            // unless LISTEN failed, which the connection's end follows.
            futures_util::future::select(driver, session).await;
        };
        let both = std::pin::pin!(both);
        let stop = stop_or(&mut stopped, both).await;
        if let Some(h) = hub.upgrade() {
            h.set_up(false, None);
        }
        if stop {
            return;
        }
    }
}

/// Runs `fut` unless the hub is dropped first; answers whether it was.
async fn stop_or(
    stopped: &mut tokio::sync::oneshot::Receiver<()>,
    fut: Pin<&mut impl Future<Output = ()>>,
) -> bool {
    match futures_util::future::select(stopped, fut).await {
        futures_util::future::Either::Left(_) => true,
        futures_util::future::Either::Right(_) => false,
    }
}

/// A queued waiter's link to its process-local gate.
pub(crate) struct LocalWatch {
    pub listener: EventListener,
    pub gates: Arc<Gates>,
    pub name: Arc<str>,
    pub ticket: u64,
}

/// A watch on one name (and ticket).
pub(crate) struct PgWatch {
    pub listener: EventListener,
    pub local: Option<LocalWatch>,
    pub hub: Arc<Hub>,
    pub slot: Arc<Slot>,
    pub ticket: Option<u64>,
}

impl PgWatch {
    pub(crate) fn new(
        hub: Arc<Hub>,
        slot: Arc<Slot>,
        ticket: Option<u64>,
        local: Option<LocalWatch>,
    ) -> PgWatch {
        let listener = match ticket {
            Some(t) => slot.ticket(t).listen(),
            None => slot.changed.listen(),
        };
        PgWatch {
            listener,
            local,
            hub,
            slot,
            ticket,
        }
    }

    /// What to wait on, and until when: the local gate alone while gated (only this
    /// process lets it through), else the notification, cut to the fallback poll.
    /// `None`: done already.
    fn plan(&mut self, deadline: Option<Instant>) -> Option<(bool, Option<Instant>)> {
        if let Some(local) = &self.local {
            if local.gates.is_gated(&local.name, local.ticket) {
                return Some((true, deadline));
            }
        }
        if let Some(local) = self.local.take() {
            if local.listener.discard() {
                // Let through since the watch began.
                return None;
            }
        }
        let poll = Instant::now() + self.hub.poll();
        Some((false, Some(deadline.map_or(poll, |d| d.min(poll)))))
    }
}

impl Drop for PgWatch {
    fn drop(&mut self) {
        if let Some(t) = self.ticket {
            let mut tickets = lock(&self.slot.tickets);
            // The map's reference and none other: nobody else watches this ticket.
            if tickets.get(&t).is_some_and(|e| Arc::strong_count(e) == 1) {
                tickets.remove(&t);
            }
        }
    }
}

impl Watch for PgWatch {
    fn wait(mut self: Box<Self>, deadline: Option<Instant>) -> Result<()> {
        match self.plan(deadline) {
            None => {}
            Some((true, until)) => {
                if let Some(local) = self.local.take() {
                    match until {
                        Some(d) => {
                            local.listener.wait_deadline(d);
                        }
                        None => local.listener.wait(),
                    }
                }
            }
            Some((false, until)) => {
                let listener = std::mem::replace(&mut self.listener, Event::new().listen());
                match until {
                    Some(d) => {
                        listener.wait_deadline(d);
                    }
                    None => listener.wait(),
                }
            }
        }
        Ok(())
    }

    fn wait_async(
        mut self: Box<Self>,
        deadline: Option<Instant>,
    ) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let (mut listener, until) = match self.plan(deadline) {
                None => return Ok(()),
                Some((true, until)) => match self.local.take() {
                    Some(local) => (local.listener, until),
                    None => return Ok(()),
                },
                Some((false, until)) => (
                    std::mem::replace(&mut self.listener, Event::new().listen()),
                    until,
                ),
            };
            let Some(until) = until else {
                listener.await;
                return Ok(());
            };
            // The timer runs on the postgres runtime, so any executor can wait (made
            // inside the task: a timer belongs to the runtime it is made in).
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
            drop(self);
            Ok(())
        })
    }
}
