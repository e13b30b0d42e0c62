//! Keeping leases alive: one background thread per space renews the leases of live
//! guards, and tells a guard when its lease was lost.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use event_listener::Event;

use crate::backend::model::Millis;
use crate::backend::{Backend, Key, Op, Reply};
use crate::Error;

/// What a holder asked to run when its lease is lost.
type LostCallback = Box<dyn FnOnce() + Send + 'static>;

/// The lease of one live hold.
pub(crate) struct Lease {
    pub key: Arc<Key>,
    pub token: u64,
    pub length: Duration,
    lost: AtomicBool,
    lost_event: Event,
    /// Run once, on the keeper's or the watcher's thread, when the lease is found
    /// lost.
    on_lost: Mutex<Vec<LostCallback>>,
    /// The store, for the watcher that looks for the loss between renewals.
    backend: Arc<dyn Backend>,
    /// The watcher was started (it starts when someone first asks to be told).
    watching: AtomicBool,
    /// The guard ended the hold (released, detached or re-bound): a refusal from the
    /// store is then no loss, and nobody is told.
    retired: AtomicBool,
    /// Until when the store surely still counts the hold: the moment the last
    /// successful renewal (or the registration) was sent, plus the lease's length
    /// (`None`: later than an `Instant` can say).
    valid_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("token", &self.token)
            .field("length", &self.length)
            .field("lost", &self.is_lost())
            .finish_non_exhaustive()
    }
}

impl Lease {
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Marks the hold ended by its guard. Call before the release step is sent, so
    /// that a check that sees the release finds this flag set.
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
    }

    fn mark_lost(&self) {
        if self.retired.load(Ordering::SeqCst) || self.lost.swap(true, Ordering::AcqRel) {
            return;
        }
        self.lost_event.notify(usize::MAX);
        // The flag is set before the list is taken: a callback added later sees it
        // and runs at once instead (see `on_lost`).
        let callbacks =
            std::mem::take(&mut *self.on_lost.lock().unwrap_or_else(|e| e.into_inner()));
        for callback in callbacks {
            callback();
        }
    }

    /// Runs `callback` once when the lease is lost: at once (on this thread) if it
    /// already is, else on the thread that finds out (the keeper's or the watcher's).
    pub(crate) fn on_lost(self: &Arc<Self>, callback: LostCallback) {
        self.watch();
        let mut callbacks = self.on_lost.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_lost() {
            drop(callbacks);
            callback();
        } else {
            callbacks.push(callback);
        }
    }

    /// Resolves once the lease is lost.
    pub(crate) async fn lost(self: &Arc<Self>) {
        self.watch();
        loop {
            let listener = self.lost_event.listen();
            if self.is_lost() {
                return;
            }
            listener.await;
        }
    }
}

impl Lease {
    /// Starts, once, a thread that watches the held name and checks the hold on
    /// every change to it: a break, an eviction or a successor's grant is then
    /// learned at once instead of at the next renewal. It ends when the loss is
    /// found or the guard let the lease go (at the latest a third of a lease later).
    fn watch(self: &Arc<Self>) {
        if self.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let lease = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("locksmith-lease-watch".into())
            .spawn(move || watch_loop(&lease));
        if let Err(e) = spawned {
            // The keeper still finds the loss at its next renewal.
            tracing::warn!(error = %e, "cannot start the lease watcher");
        }
    }
}

fn watch_loop(lease: &Weak<Lease>) {
    loop {
        let Some(l) = lease.upgrade() else {
            return;
        };
        if l.is_lost() || l.retired.load(Ordering::SeqCst) {
            return;
        }
        // Listen first, then check: a change made after the check wakes the wait.
        let watch = l.backend.watch(&l.key, None);
        match l.backend.step(&l.key, Op::Check { token: l.token }) {
            Ok(Reply::Flag(false)) | Err(Error::NotHeld { .. }) => {
                l.mark_lost();
                return;
            }
            // Held, or the store failed: the keeper judges failures.
            _ => {}
        }
        let pause = (l.length / 3).max(Duration::from_millis(10));
        let deadline = Instant::now().checked_add(pause);
        drop(l);
        let waited = match watch {
            Ok(watch) => watch.wait(deadline),
            Err(e) => Err(e),
        };
        if waited.is_err() {
            // No way to listen now: look again after the pause.
            std::thread::sleep(pause);
        }
    }
}

/// Renews registered leases at a third of their length.
#[derive(Debug)]
pub(crate) struct Keeper {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    due: BinaryHeap<Reverse<(Instant, u64)>>,
    leases: std::collections::HashMap<u64, Weak<Lease>>,
    next_id: u64,
    running: bool,
    stop: bool,
    /// When `due` grows to this many entries, those of released holds are swept out
    /// (they would otherwise stay until their renewal falls due).
    sweep_at: usize,
}

/// The smallest `State::sweep_at`.
const SWEEP_MIN: usize = 1024;

impl State {
    /// Drops the entries of leases whose guards are gone; doubling the threshold
    /// keeps the cost per registration constant.
    fn sweep(&mut self) {
        self.leases.retain(|_, lease| lease.strong_count() > 0);
        let leases = &self.leases;
        self.due.retain(|Reverse((_, id))| leases.contains_key(id));
        self.sweep_at = SWEEP_MIN.max(2 * self.due.len());
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Keeper {
    pub(crate) fn new() -> Keeper {
        Keeper {
            shared: Arc::default(),
        }
    }

    /// Starts renewing a hold's lease; the renewals stop when the returned lease is
    /// dropped.
    pub(crate) fn register(
        &self,
        backend: &Arc<dyn Backend>,
        key: Arc<Key>,
        token: u64,
        length: Duration,
    ) -> Arc<Lease> {
        let lease = Arc::new(Lease {
            key,
            token,
            length,
            lost: AtomicBool::new(false),
            lost_event: Event::new(),
            on_lost: Mutex::new(Vec::new()),
            backend: backend.clone(),
            watching: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            valid_until: Mutex::new(Instant::now().checked_add(length)),
        });
        let mut state = lock(&self.shared);
        let id = state.next_id;
        state.next_id += 1;
        state.leases.insert(id, Arc::downgrade(&lease));
        if state.due.len() >= state.sweep_at.max(SWEEP_MIN) {
            state.sweep();
        }
        let at = Instant::now() + length / 3;
        // The keeper sleeps until the earliest renewal: only an earlier one (or the
        // first) needs it to wake up and look again.
        let sooner = state
            .due
            .peek()
            .is_none_or(|Reverse((first, _))| at < *first);
        state.due.push(Reverse((at, id)));
        if !state.running {
            state.running = true;
            let shared = self.shared.clone();
            let backend = backend.clone();
            let spawned = std::thread::Builder::new()
                .name("locksmith-lease".into())
                .spawn(move || renew_loop(&shared, &*backend));
            if let Err(e) = spawned {
                state.running = false;
                tracing::error!(error = %e, "cannot start the lease keeper: leases will not renew");
            }
        }
        drop(state);
        if sooner {
            self.shared.changed.notify_one();
        }
        lease
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        lock(&self.shared).stop = true;
        self.shared.changed.notify_one();
    }
}

fn renew_loop(shared: &Shared, backend: &dyn Backend) {
    let mut state = lock(shared);
    loop {
        if state.stop {
            return;
        }
        let now = Instant::now();
        let next = state.due.peek().map(|Reverse((at, id))| (*at, *id));
        match next {
            None => {
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
            Some((at, _)) if at > now => {
                state = shared
                    .changed
                    .wait_timeout(state, at - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            Some((_, id)) => {
                state.due.pop();
                let Some(lease) = state.leases.get(&id).and_then(Weak::upgrade) else {
                    state.leases.remove(&id);
                    continue;
                };
                drop(state);
                let length = lease.length.as_millis().min(u128::from(u64::MAX)) as Millis;
                let op = Op::Renew {
                    token: lease.token,
                    lease: length,
                };
                let sent = Instant::now();
                let again = match backend.step(&lease.key, op) {
                    Ok(_) => {
                        *lease.valid_until.lock().unwrap_or_else(|e| e.into_inner()) =
                            sent.checked_add(lease.length);
                        Some(lease.length / 3)
                    }
                    Err(Error::NotHeld { .. }) => {
                        lease.mark_lost();
                        None
                    }
                    Err(e) => {
                        let valid_until =
                            *lease.valid_until.lock().unwrap_or_else(|e| e.into_inner());
                        let now = Instant::now();
                        if valid_until.is_some_and(|end| now >= end) {
                            // No renewal got through within a lease's length: the store
                            // may have let the hold go and granted it to another.
                            tracing::warn!(name = lease.key.name(), error = %e, "lease renewal failed until the lease ran out: the hold is presumed lost");
                            lease.mark_lost();
                            None
                        } else {
                            // The store may come back before the lease ends: try again
                            // soon, and at the latest when it ends.
                            tracing::warn!(name = lease.key.name(), error = %e, "lease renewal failed");
                            let left = valid_until.map_or(Duration::MAX, |end| end - now);
                            Some((lease.length / 10).min(left))
                        }
                    }
                };
                state = lock(shared);
                match again {
                    Some(after) => state.due.push(Reverse((Instant::now() + after, id))),
                    None => {
                        state.leases.remove(&id);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::mem::MemBackend;

    /// A store that refuses every renewal as if the hold were gone, or that cannot
    /// be reached at all.
    #[derive(Debug)]
    struct Refusing {
        inner: MemBackend,
        unreachable: bool,
    }

    impl Backend for Refusing {
        fn step(&self, key: &Key, op: Op) -> crate::Result<crate::backend::Reply> {
            match op {
                Op::Renew { .. } if self.unreachable => Err(Error::backend("unreachable")),
                _ => self.inner.step(key, op),
            }
        }
        fn watch(
            &self,
            key: &Key,
            ticket: Option<u64>,
        ) -> crate::Result<Box<dyn crate::backend::Watch>> {
            self.inner.watch(key, ticket)
        }
        fn names(&self) -> crate::Result<Vec<String>> {
            self.inner.names()
        }
        fn evict_tag(&self, tag: &str) -> crate::Result<usize> {
            self.inner.evict_tag(tag)
        }
        fn reclaim_idle(&self) -> crate::Result<usize> {
            self.inner.reclaim_idle()
        }
    }

    /// Registers a 60 ms lease of a hold `backend` does not have, and waits (with a
    /// generous hang guard) for its loss callback.
    fn lost_callback_runs(unreachable: bool) {
        let keeper = Keeper::new();
        let backend: Arc<dyn Backend> = Arc::new(Refusing {
            inner: MemBackend::default(),
            unreachable,
        });
        let lease = keeper.register(
            &backend,
            Arc::new(Key::new("gone")),
            7,
            Duration::from_millis(60),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        lease.on_lost(Box::new(move || {
            let _ = tx.send(());
        }));
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the loss callback ran");
        assert!(lease.is_lost());
        // A callback added once the loss is known runs at once.
        let (tx, rx) = std::sync::mpsc::channel();
        lease.on_lost(Box::new(move || {
            let _ = tx.send(());
        }));
        rx.try_recv().expect("a late callback runs at once");
    }

    #[test]
    fn a_refused_renewal_runs_the_loss_callbacks() {
        lost_callback_runs(false);
    }

    #[test]
    fn a_store_unreachable_for_a_whole_lease_means_the_hold_is_lost() {
        lost_callback_runs(true);
    }

    #[test]
    fn released_leases_do_not_pile_up() {
        let keeper = Keeper::new();
        let backend: Arc<dyn Backend> = Arc::new(MemBackend::default());
        let key = Arc::new(Key::new("lease"));
        let live = keeper.register(&backend, key.clone(), 0, Duration::from_secs(600));
        for token in 1..=10 * SWEEP_MIN as u64 {
            drop(keeper.register(&backend, key.clone(), token, Duration::from_secs(600)));
        }
        let state = lock(&keeper.shared);
        assert!(
            state.due.len() <= 2 * SWEEP_MIN,
            "{} entries",
            state.due.len()
        );
        assert!(state.leases.values().any(|l| l.upgrade().is_some()));
        drop(state);
        drop(live);
    }
}
