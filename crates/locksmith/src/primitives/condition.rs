//! A condition variable with its own lock, or a caller's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{Mode, Op, PermitKind, Reply};
use crate::owner::{fresh_id, Owner};
use crate::primitives::guard::{unexpected, Guard};
use crate::primitives::handle::{deadline_after, forever, Handle, OnDrop, Step};
use crate::primitives::permit::{self, acquire_methods, Wait};
use crate::{Error, Lock, RLock, Result};

const KIND: PermitKind = PermitKind::Condition;

/// A condition variable: acquire the condition, check the state it guards, and
/// [`Condition::wait`] to release the lock and sleep until notified, so that no
/// notification between the check and the sleep is lost.
///
/// Its lock is its own, re-entrant as in `threading` and `multiprocessing` (the
/// holding thread may acquire it again; a wait releases every level and takes them
/// all back), or a caller's [`Lock`] or [`RLock`] of the same store under any name
/// ([`Condition::with_lock`], like `multiprocessing.Condition(lock)`). Notifying
/// requires holding the lock: without it, [`Condition::notify`] is
/// [`Error::NotHeld`].
///
/// The state itself lives wherever the processes keep it (a file, a table, an
/// [`crate::Averager`]); the condition only orders access and wakes sleepers.
///
/// ```
/// # fn main() -> locksmith::Result<()> {
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
/// let space = locksmith::Space::open("mem:")?;
/// let queue = space.condition("queue");
/// let ready = Arc::new(AtomicBool::new(false));
/// let consumer = std::thread::spawn({
///     let (queue, ready) = (queue.clone(), ready.clone());
///     move || -> locksmith::Result<()> {
///         let mut guard = queue.acquire()?;
///         queue.wait_while(&mut guard, || !ready.load(Ordering::SeqCst))
///     }
/// });
/// {
///     let _guard = queue.acquire()?;
///     ready.store(true, Ordering::SeqCst);
///     queue.notify_all()?;
/// }
/// consumer.join().unwrap()?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Condition {
    /// The lock: the condition's own name, or the caller's lock's.
    handle: Handle,
    /// The lock's kind: Condition (its own), Lock or RLock.
    lock_kind: PermitKind,
    /// The condition's own name, where sleepers wait and notifications go.
    sleepers: Handle,
}

/// A lock a [`Condition`] can use instead of its own: [`Lock`] and [`RLock`].
pub trait ConditionLock: sealed::Sealed {}

mod sealed {
    // The trait is sealed (unnameable outside the crate), so its method's private
    // types never reach users.
    #![allow(private_interfaces)]
    use crate::backend::PermitKind;
    use crate::primitives::handle::Handle;

    pub trait Sealed {
        fn parts(&self) -> (Handle, PermitKind);
    }

    impl Sealed for crate::Lock {
        fn parts(&self) -> (Handle, PermitKind) {
            (self.handle().clone(), PermitKind::Lock)
        }
    }

    impl Sealed for crate::RLock {
        fn parts(&self) -> (Handle, PermitKind) {
            (self.handle().clone(), PermitKind::RLock)
        }
    }
}

impl ConditionLock for Lock {}
impl ConditionLock for RLock {}

/// Whether two handles reach the same store: one `Space`, or two opens of one URL
/// that other opens share (every store but a private `mem:`).
pub(crate) fn same_store(a: &Handle, b: &Handle) -> bool {
    Arc::ptr_eq(&a.space, &b.space) || (a.space.url == b.space.url && a.space.url != "mem:")
}

impl Condition {
    pub(crate) fn new(handle: Handle) -> Condition {
        Condition {
            sleepers: handle.clone(),
            handle,
            lock_kind: KIND,
        }
    }

    fn kind(&self) -> Result<PermitKind> {
        Ok(self.lock_kind)
    }

    /// Uses `lock` (a [`Lock`] or [`RLock`] of the same store, under any name) as this
    /// condition's lock instead of its own, like `multiprocessing.Condition(lock)`:
    /// [`Condition::acquire`] then acquires `lock`, and guards of `lock` may wait.
    /// Every user of the condition must pass the same lock.
    ///
    /// A wait registers the sleeper first and then releases the lock (two steps, as
    /// the two names may live apart), so a notification, which needs the lock, is
    /// never lost between them.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `lock` belongs to another store.
    pub fn with_lock(mut self, lock: &impl ConditionLock) -> Result<Condition> {
        let (handle, kind) = lock.parts();
        if !same_store(&handle, &self.sleepers) {
            return Err(Error::invalid(format!(
                "condition '{}' is in {}, but the lock '{}' given to it is in another \
                 store ({})",
                self.sleepers.name(),
                self.sleepers.space.url,
                handle.name(),
                handle.space.url
            )));
        }
        self.handle = handle;
        self.lock_kind = kind;
        Ok(self)
    }

    /// Whether the lock is the condition's own.
    fn own_lock(&self) -> bool {
        self.lock_kind == KIND
    }

    /// Holds of the condition's own lock expire `lease` after they were taken or last
    /// renewed, as [`Lock::lease`]. (A caller's lock keeps its own options: set them
    /// on it before [`Condition::with_lock`].)
    pub fn lease(mut self, lease: Duration) -> Self {
        self.handle.update_opts(|o| o.lease = Some(lease));
        self
    }

    /// Whether leases renew themselves while the guard lives (default: yes), as
    /// [`Lock::keep_alive`].
    pub fn keep_alive(mut self, keep_alive: bool) -> Self {
        self.handle.update_opts(|o| o.keep_alive = keep_alive);
        self
    }

    /// Tags the condition, so that [`crate::Space::evict_tag`] can drop it.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        let tag = tag.into();
        self.handle.update_opts(|o| o.tag = Some(tag.clone()));
        self.sleepers.update_opts(|o| o.tag = Some(tag));
        self
    }

    /// The condition's name (where its sleepers wait).
    pub fn name(&self) -> &str {
        self.sleepers.name()
    }

    /// The name of the condition's lock: its own name, or the caller's lock's.
    pub fn lock_name(&self) -> &str {
        self.handle.name()
    }

    acquire_methods!("the condition's lock");

    /// Releases the lock held by `guard`, sleeps until notified, and takes the lock
    /// again before returning. Spurious wake-ups do not happen, but other holders may
    /// have changed the state in between: check it again, or use
    /// [`Condition::wait_while`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `guard` is not of this condition's lock (a guard
    /// of the same lock from another `Space` of the same store is);
    /// [`Error::LeaseLost`] if the hold had ended before the wait.
    pub fn wait(&self, guard: &mut Guard) -> Result<()> {
        self.wait_until(guard, None).map(drop)
    }

    /// [`Condition::wait`], sleeping at most `timeout`; returns whether it was
    /// notified. The lock is held again on return either way.
    pub fn wait_timeout(&self, guard: &mut Guard, timeout: Duration) -> Result<bool> {
        self.wait_until(guard, deadline_after(timeout))
    }

    /// Waits while `condition` returns true, checking it under the lock.
    pub fn wait_while(&self, guard: &mut Guard, mut condition: impl FnMut() -> bool) -> Result<()> {
        while condition() {
            self.wait(guard)?;
        }
        Ok(())
    }

    /// [`Condition::wait_while`] with a predicate that can fail (shared state read
    /// from a file or a store): its error ends the wait, holding the lock.
    pub fn wait_while_fallible<E: From<Error>>(
        &self,
        guard: &mut Guard,
        mut condition: impl FnMut() -> std::result::Result<bool, E>,
    ) -> std::result::Result<(), E> {
        while condition()? {
            self.wait(guard)?;
        }
        Ok(())
    }

    /// [`Condition::wait_while_fallible`] for at most `timeout` in all: returns `true` once
    /// `condition` returned false, `false` if the time ran out first (holding the
    /// lock either way). The predicate is checked one last time when the time runs
    /// out, so a change made just then is not missed.
    pub fn wait_while_timeout<E: From<Error>>(
        &self,
        guard: &mut Guard,
        timeout: Duration,
        mut condition: impl FnMut() -> std::result::Result<bool, E>,
    ) -> std::result::Result<bool, E> {
        let deadline = deadline_after(timeout);
        while condition()? {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::MAX,
            };
            if left.is_zero() {
                return Ok(false);
            }
            if !self.wait_until(guard, deadline)? {
                return Ok(!condition()?);
            }
        }
        Ok(true)
    }

    /// Async [`Condition::wait_while_fallible`].
    ///
    /// # Cancel safety
    /// As [`Condition::wait_async`].
    pub async fn wait_while_async<E: From<Error>>(
        &self,
        guard: &mut Guard,
        mut condition: impl FnMut() -> std::result::Result<bool, E>,
    ) -> std::result::Result<(), E> {
        while condition()? {
            self.wait_async(guard).await?;
        }
        Ok(())
    }

    /// Async [`Condition::wait_while_timeout`].
    ///
    /// # Cancel safety
    /// As [`Condition::wait_async`].
    pub async fn wait_while_timeout_async<E: From<Error>>(
        &self,
        guard: &mut Guard,
        timeout: Duration,
        mut condition: impl FnMut() -> std::result::Result<bool, E>,
    ) -> std::result::Result<bool, E> {
        let deadline = deadline_after(timeout);
        while condition()? {
            if deadline.is_some_and(|d| d <= Instant::now()) {
                return Ok(false);
            }
            if !self.wait_until_async(guard, deadline).await? {
                return Ok(!condition()?);
            }
        }
        Ok(true)
    }

    /// Wakes up to `n` sleepers, oldest first; returns how many were woken.
    ///
    /// # Errors
    /// [`Error::NotHeld`] if the caller does not hold the condition's lock (the
    /// calling thread, or an async or acquisition-owned hold of this process), as
    /// Python raises.
    pub fn notify(&self, n: usize) -> Result<usize> {
        self.sleepers.check()?;
        self.handle.check()?;
        if !permit::held_here(&self.handle)? {
            return Err(Error::NotHeld {
                name: self.handle.name().to_owned(),
            });
        }
        match self.sleepers.step(Op::CondNotify { n })? {
            Reply::Count(k) => Ok(k as usize),
            other => Err(unexpected(other)),
        }
    }

    /// Async [`Condition::notify`]: never blocks the executor thread on a network
    /// store.
    pub async fn notify_async(&self, n: usize) -> Result<usize> {
        self.sleepers.check()?;
        self.handle.check()?;
        if !permit::held_here_async(&self.handle).await? {
            return Err(Error::NotHeld {
                name: self.handle.name().to_owned(),
            });
        }
        match self.sleepers.step_async(Op::CondNotify { n }).await? {
            Reply::Count(k) => Ok(k as usize),
            other => Err(unexpected(other)),
        }
    }

    /// Async [`Condition::notify_all`].
    pub async fn notify_all_async(&self) -> Result<usize> {
        self.notify_async(usize::MAX).await
    }

    /// Async [`Condition::is_locked`].
    pub async fn is_locked_async(&self) -> Result<bool> {
        permit::is_held_async(&self.handle).await
    }

    /// Whether anyone holds the condition's lock now.
    pub fn is_locked(&self) -> Result<bool> {
        crate::primitives::permit::is_held(&self.handle)
    }

    /// Wakes every sleeper; returns how many were woken.
    pub fn notify_all(&self) -> Result<usize> {
        self.notify(usize::MAX)
    }

    /// Registers a sleeper and releases every level of `guard`'s hold; answers the
    /// sleeper's ticket and the levels released.
    fn start_sleeping(&self, guard: &mut Guard) -> Result<(u64, u32)> {
        self.handle.check()?;
        self.sleepers.check()?;
        if guard.name() != self.handle.name() || !same_store(guard.handle(), &self.handle) {
            let lock = if self.own_lock() {
                "its own lock".to_owned()
            } else {
                format!("the lock '{}'", self.handle.name())
            };
            return Err(Error::invalid(format!(
                "a guard of '{}' (in {}) cannot wait on condition '{}' (in {}), whose lock \
                 is {lock}",
                guard.name(),
                guard.handle().space.url,
                self.sleepers.name(),
                self.sleepers.space.url,
            )));
        }
        let ticket = fresh_id();
        let owner = Owner::current_thread();
        let token = guard.token();
        let released = if self.own_lock() {
            // One step: release and sleep at once.
            self.handle.step(Op::CondWait {
                token,
                ticket,
                owner,
            })
        } else {
            // Sleep first, then release: a notifier needs the lock, so it cannot
            // come between the two unseen.
            self.sleepers.step(Op::CondSleep { ticket, owner })?;
            let released = self.handle.step(Op::ReleaseAll { token });
            if released.is_err() {
                let _ = self.sleepers.step(Op::CondCancel { ticket });
            }
            released
        };
        match released {
            Ok(Reply::Count(levels)) => {
                guard.forget_hold();
                Ok((ticket, levels.clamp(1, u64::from(u32::MAX)) as u32))
            }
            Ok(other) => Err(unexpected(other)),
            Err(Error::NotHeld { .. }) => Err(guard.handle().hold_lost()),
            Err(e) => Err(e),
        }
    }

    /// Takes the lock again after a wait, with the levels it had.
    fn retake(&self, guard: &mut Guard, levels: u32) -> Result<()> {
        let grant = forever(permit::acquire_grant(
            &self.handle,
            self.lock_kind,
            Mode::Exclusive,
            Wait::Until(None),
        ))?;
        guard.rebind(grant);
        for _ in 1..levels {
            // Re-entries by the same thread: granted at once.
            forever(permit::acquire_grant(
                &self.handle,
                self.lock_kind,
                Mode::Exclusive,
                Wait::Until(None),
            ))?;
        }
        Ok(())
    }

    fn wait_until(&self, guard: &mut Guard, deadline: Option<Instant>) -> Result<bool> {
        let (ticket, levels) = self.start_sleeping(guard)?;
        let stop = OnDrop::new(&self.sleepers, Op::CondCancel { ticket });
        let woken = self.sleepers.block_on(
            Some(ticket),
            deadline,
            &|| Op::CondCheck { ticket },
            &mut judge,
        )?;
        let notified = match woken {
            Some(()) => {
                stop.disarm();
                true
            }
            None => {
                stop.disarm();
                cancel(self.sleepers.step(Op::CondCancel { ticket })?)?
            }
        };
        self.retake(guard, levels)?;
        Ok(notified)
    }

    /// Starts [`Condition::wait`] in steps, for callers that must look up between
    /// slices of the wait (Python runs its signal handlers there): releases the lock
    /// `guard` holds and registers a sleeper, which stays registered across slices, so
    /// no notification is lost between them. End with [`Sleeper::leave`], then take the
    /// lock again.
    ///
    /// # Errors
    /// As [`Condition::wait`].
    pub fn sleep(&self, mut guard: Guard) -> Result<Sleeper> {
        let (ticket, _) = self.start_sleeping(&mut guard)?;
        Ok(Sleeper {
            condition: self.clone(),
            ticket: Some(ticket),
            notified: false,
        })
    }

    /// Registers a sleeper and releases nothing: for a caller that holds the lock given
    /// to [`Condition::with_lock`] without a [`Guard`] at hand (a language binding whose
    /// own lock object keeps the hold) and releases it itself right after. A notifier
    /// needs the lock, so a notification made after this call is not lost. End with
    /// [`Sleeper::leave`], then take the lock again.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a condition with its own lock (whose
    /// [`Condition::sleep`] releases it in the same step).
    pub fn sleeper(&self) -> Result<Sleeper> {
        self.handle.check()?;
        self.sleepers.check()?;
        if self.own_lock() {
            return Err(Error::invalid(format!(
                "condition '{}' has its own lock: wait with `sleep(guard)`",
                self.sleepers.name()
            )));
        }
        let ticket = fresh_id();
        let owner = Owner::current_thread();
        self.sleepers.step(Op::CondSleep { ticket, owner })?;
        Ok(Sleeper {
            condition: self.clone(),
            ticket: Some(ticket),
            notified: false,
        })
    }

    /// Async [`Condition::wait`].
    ///
    /// # Cancel safety
    /// If the future is dropped, the sleeper leaves at once (passing on nothing it was
    /// not given), and `guard` no longer holds the lock.
    pub async fn wait_async(&self, guard: &mut Guard) -> Result<()> {
        self.wait_until_async(guard, None).await.map(drop)
    }

    /// Async [`Condition::wait_timeout`].
    ///
    /// # Cancel safety
    /// As [`Condition::wait_async`].
    pub async fn wait_timeout_async(&self, guard: &mut Guard, timeout: Duration) -> Result<bool> {
        self.wait_until_async(guard, deadline_after(timeout)).await
    }

    async fn wait_until_async(&self, guard: &mut Guard, deadline: Option<Instant>) -> Result<bool> {
        // Async holds are each their own owner, so they have one level.
        let (ticket, _) = self.start_sleeping(guard)?;
        let stop = OnDrop::new_async(&self.sleepers, Op::CondCancel { ticket });
        let woken = self
            .sleepers
            .wait_on(
                Some(ticket),
                deadline,
                &|| Op::CondCheck { ticket },
                &mut judge,
            )
            .await?;
        stop.disarm();
        let notified = match woken {
            Some(()) => true,
            None => cancel(self.sleepers.step_async(Op::CondCancel { ticket }).await?)?,
        };
        let wait = Wait::Until(None);
        let grant = forever(
            permit::acquire_grant_async(&self.handle, self.lock_kind, Mode::Exclusive, wait).await,
        )?;
        guard.rebind(grant);
        Ok(notified)
    }
}

fn judge(reply: Reply) -> Result<Step<()>> {
    match reply {
        Reply::Flag(true) => Ok(Step::Done(())),
        Reply::Flag(false) => Ok(Step::Wait(None)),
        other => Err(unexpected(other)),
    }
}

fn cancel(reply: Reply) -> Result<bool> {
    match reply {
        Reply::Flag(notified) => Ok(notified),
        other => Err(unexpected(other)),
    }
}

/// A registered sleeper of a [`Condition`], made by [`Condition::sleep`]. Dropping it
/// leaves the sleepers.
#[derive(Debug)]
pub struct Sleeper {
    condition: Condition,
    /// `None` once it left.
    ticket: Option<u64>,
    notified: bool,
}

impl Sleeper {
    /// Waits at most `timeout` for a notification; returns whether one came (now or
    /// earlier). Without one, it stays a sleeper.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<bool> {
        let Some(ticket) = self.ticket.filter(|_| !self.notified) else {
            return Ok(self.notified);
        };
        let handle = &self.condition.sleepers;
        let woken = handle.block_on(
            Some(ticket),
            deadline_after(timeout),
            &|| Op::CondCheck { ticket },
            &mut judge,
        )?;
        if woken.is_some() {
            // The check consumed the notification: nothing left to cancel.
            self.notified = true;
            self.ticket = None;
        }
        Ok(self.notified)
    }

    /// Stops sleeping; returns whether a notification had arrived (it is consumed).
    pub fn leave(mut self) -> Result<bool> {
        self.leave_now()
    }

    fn leave_now(&mut self) -> Result<bool> {
        if let Some(ticket) = self.ticket.take() {
            let reply = self.condition.sleepers.step(Op::CondCancel { ticket })?;
            self.notified |= cancel(reply)?;
        }
        Ok(self.notified)
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        if let Err(e) = self.leave_now() {
            tracing::warn!(name = self.condition.name(), error = %e, "could not stop sleeping");
        }
    }
}
