//! What every primitive is made of: a space, a key, options; and the one waiting loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::model::Millis;
use crate::backend::{Key, Op, Reply};
use crate::os::clock::now_millis;
use crate::space::SpaceInner;
use crate::{Error, Result};

/// The longest name a primitive may have, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// A primitive's link to its store. Cloning it (as every guard does) touches one
/// reference count.
#[derive(Clone)]
pub(crate) struct Handle(Arc<Link>);

/// What a [`Handle`] shares.
#[derive(Clone)]
pub(crate) struct Link {
    pub space: Arc<SpaceInner>,
    pub key: Arc<Key>,
    pub opts: Options,
    /// Whether the name and options passed [`Handle::validate`]: they change only
    /// while the primitive is built, so the hot path need not look at them again.
    valid: bool,
}

impl std::ops::Deref for Handle {
    type Target = Link;

    fn deref(&self) -> &Link {
        &self.0
    }
}

/// The options every primitive may carry.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub lease: Option<Duration>,
    pub keep_alive: bool,
    pub tag: Option<String>,
    /// Who owns a blocking acquisition of a Lock.
    pub ownership: crate::Ownership,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            lease: None,
            keep_alive: true,
            tag: None,
            ownership: crate::Ownership::Thread,
        }
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("name", &self.key.name())
            .field("space", &self.space.url)
            .field("opts", &self.opts)
            .finish()
    }
}

/// What one attempt found: done, or not yet (retry by the given instant at the latest).
pub(crate) enum Step<T> {
    Done(T),
    Wait(Option<Instant>),
}

impl Handle {
    pub(crate) fn new(space: Arc<SpaceInner>, name: &str) -> Handle {
        let mut link = Link {
            space,
            key: Arc::new(Key::new(name)),
            opts: Options::default(),
            valid: false,
        };
        link.valid = Handle::validate(&link).is_ok();
        Handle(Arc::new(link))
    }

    /// Changes the options while the primitive is being built (a handle already shared
    /// with guards is copied first, so their holds keep the options they had).
    pub(crate) fn update_opts(&mut self, change: impl FnOnce(&mut Options)) {
        let link = Arc::make_mut(&mut self.0);
        change(&mut link.opts);
        link.valid = Handle::validate(link).is_ok();
    }

    pub(crate) fn name(&self) -> &str {
        self.key.name()
    }

    /// Checks the name and options; every operation calls it first, so bad input is
    /// refused before anything changes.
    pub(crate) fn check(&self) -> Result<()> {
        if self.valid {
            return Ok(());
        }
        Handle::validate(self)
    }

    fn validate(link: &Link) -> Result<()> {
        let name = link.key.name();
        if name.is_empty() {
            return Err(Error::invalid("a name must not be empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(Error::invalid(format!(
                "a name may have at most {MAX_NAME_LEN} bytes, not {}",
                name.len()
            )));
        }
        if name.contains('\0') {
            return Err(Error::invalid("a name must not contain NUL"));
        }
        if let Some(lease) = link.opts.lease {
            if lease.as_millis() == 0 {
                return Err(Error::invalid("a lease must be at least 1 ms"));
            }
        }
        Ok(())
    }

    /// The lease holds taken through this handle get: the caller's, else the
    /// store's default (see [`crate::backend::Backend::default_lease`]).
    pub(crate) fn lease(&self) -> Option<Duration> {
        self.opts
            .lease
            .or_else(|| self.space.backend.default_lease())
    }

    pub(crate) fn lease_millis(&self) -> Option<Millis> {
        self.lease()
            .map(|d| d.as_millis().min(u128::from(u64::MAX)) as Millis)
    }

    /// [`Error::LeaseLost`] for a hold taken through this handle, saying what may
    /// have ended it.
    pub(crate) fn hold_lost(&self) -> Error {
        let why = if self.lease().is_some() {
            "its lease lapsed, or it was force-released or evicted"
        } else {
            "it was force-released or evicted"
        };
        Error::LeaseLost {
            name: self.name().to_owned(),
            why: why.to_owned(),
        }
    }

    pub(crate) fn step(&self, op: Op) -> Result<Reply> {
        self.space.backend.step(&self.key, op)
    }

    pub(crate) async fn step_async(&self, op: Op) -> Result<Reply> {
        self.space.backend.step_async(&self.key, op).await
    }

    /// A step of a waiter that waits until `deadline` (see [`crate::backend::Backend::wait_step`]).
    pub(crate) fn wait_step(&self, op: Op, deadline: Option<Instant>) -> Result<Reply> {
        self.space.backend.wait_step(&self.key, op, deadline)
    }

    pub(crate) async fn wait_step_async(&self, op: Op, deadline: Option<Instant>) -> Result<Reply> {
        self.space
            .backend
            .wait_step_async(&self.key, op, deadline)
            .await
    }

    /// Retries `attempt` until it is done or `deadline` passes (`Ok(None)`), sleeping
    /// on the store's change notifications in between. The watch is taken before each
    /// attempt, so a change between an attempt and the sleep is never missed.
    pub(crate) fn block_on<T>(
        &self,
        ticket: Option<u64>,
        deadline: Option<Instant>,
        op: &dyn Fn() -> Op,
        judge: &mut dyn FnMut(Reply) -> Result<Step<T>>,
    ) -> Result<Option<T>> {
        loop {
            let watch = self.space.backend.watch(&self.key, ticket)?;
            match judge(self.wait_step(op(), deadline)?)? {
                Step::Done(t) => return Ok(Some(t)),
                Step::Wait(retry_at) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(None);
                    }
                    // Under `interrupt::checked`, sleep in slices and ask the caller
                    // between them whether to give up (keeping the ticket meanwhile).
                    watch.wait(crate::interrupt::sleep_until(earliest(deadline, retry_at)))?;
                    if crate::interrupt::stop() {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// The async form of [`Handle::block_on`]; dropping the future stops waiting.
    pub(crate) async fn wait_on<T>(
        &self,
        ticket: Option<u64>,
        deadline: Option<Instant>,
        op: &(dyn Fn() -> Op + Sync),
        judge: &mut (dyn FnMut(Reply) -> Result<Step<T>> + Send),
    ) -> Result<Option<T>> {
        loop {
            let watch = self.space.backend.watch(&self.key, ticket)?;
            match judge(self.wait_step_async(op(), deadline).await?)? {
                Step::Done(t) => return Ok(Some(t)),
                Step::Wait(retry_at) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(None);
                    }
                    watch.wait_async(earliest(deadline, retry_at)).await?;
                }
            }
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The deadline `timeout` from now; `None` (wait for ever) if it is too far to represent.
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// The instant at which the store's clock reads `at`, as a retry hint.
pub(crate) fn instant_at(at: Millis) -> Instant {
    let now = now_millis();
    // One millisecond past, so that a lease ending at `at` has surely lapsed.
    Instant::now() + Duration::from_millis(at.saturating_sub(now) + 1)
}

/// Unwraps the result of a wait that had no deadline.
pub(crate) fn forever<T>(r: Result<Option<T>>) -> Result<T> {
    r?.ok_or(Error::Timeout)
}

/// Runs a step when dropped, unless disarmed: undoes a queued wait that ends by
/// timeout, error or cancellation.
pub(crate) struct OnDrop<'a> {
    handle: &'a Handle,
    op: Option<Op>,
    /// Whether the wait is async: its drop then never waits for the store.
    in_async: bool,
}

/// How long the helper thread keeps trying to undo a dropped async wait while the
/// store cannot be reached (a Redis server restarting). A place left behind after
/// that expires on its own (Redis), or is reaped with its dead owner.
const UNDO_PATIENCE: Duration = Duration::from_secs(30);

impl<'a> OnDrop<'a> {
    pub(crate) fn new(handle: &'a Handle, op: Op) -> OnDrop<'a> {
        OnDrop {
            handle,
            op: Some(op),
            in_async: false,
        }
    }

    /// [`OnDrop::new`] for an async wait: dropped while armed (the future was
    /// cancelled), it hands the step to the space's helper thread on a store whose
    /// steps wait on I/O, rather than blocking the executor thread for it. The place
    /// it undoes is kept meanwhile, and a grant that reaches it is passed on by the
    /// step, as if the waiter had left at once.
    pub(crate) fn new_async(handle: &'a Handle, op: Op) -> OnDrop<'a> {
        OnDrop {
            handle,
            op: Some(op),
            in_async: true,
        }
    }

    pub(crate) fn disarm(mut self) {
        self.op = None;
    }

    /// Runs the step now, from async code: a wait that ended (timed out or failed)
    /// rather than being dropped leaves before it returns.
    pub(crate) async fn run_async(mut self) {
        if let Some(op) = self.op.take() {
            if let Err(e) = self.handle.step_async(op).await {
                tracing::warn!(name = self.handle.name(), error = %e, "could not leave the wait queue");
            }
        }
    }
}

impl Drop for OnDrop<'_> {
    fn drop(&mut self) {
        let Some(op) = self.op.take() else {
            return;
        };
        if self.in_async && self.handle.space.backend.steps_wait() {
            // The store and the key, not the space: dropping the space then waits
            // for this (see `Offload`'s drop).
            let (backend, key) = (self.handle.space.backend.clone(), self.handle.key.clone());
            let undo = Box::new(move || {
                let deadline = Instant::now() + UNDO_PATIENCE;
                if let Err(e) = backend.wait_step(&key, op, Some(deadline)) {
                    tracing::warn!(name = key.name(), error = %e, "could not leave the wait queue");
                }
            });
            if let Err(e) = self.handle.space.offload.spawn(undo) {
                tracing::warn!(name = self.handle.name(), error = %e, "could not leave the wait queue");
            }
            return;
        }
        if let Err(e) = self.handle.step(op) {
            tracing::warn!(name = self.handle.name(), error = %e, "could not leave the wait queue");
        }
    }
}

/// The builder methods every option-carrying primitive offers.
macro_rules! lease_options {
    () => {
        /// Holds taken through this handle expire `lease` after they were taken or
        /// last renewed (diskcache's `expire`). While the holder's process lives, the
        /// lease renews itself in the background (see [`Self::keep_alive`]); a holder
        /// that dies loses the hold when the lease lapses, and the next holder is told
        /// [`crate::Guard::previous_owner_died`].
        pub fn lease(mut self, lease: std::time::Duration) -> Self {
            self.handle.update_opts(|o| o.lease = Some(lease));
            self
        }

        /// Whether leases renew themselves while the guard lives (default: yes). With
        /// `false`, a lease is a fixed expiry, as diskcache's `expire` is.
        pub fn keep_alive(mut self, keep_alive: bool) -> Self {
            self.handle.update_opts(|o| o.keep_alive = keep_alive);
            self
        }

        /// Tags the primitive, so that [`crate::Space::evict_tag`] can drop it.
        pub fn tag(mut self, tag: impl Into<String>) -> Self {
            self.handle.update_opts(|o| o.tag = Some(tag.into()));
            self
        }

        /// The primitive's name.
        pub fn name(&self) -> &str {
            self.handle.name()
        }
    };
}

pub(crate) use lease_options;
