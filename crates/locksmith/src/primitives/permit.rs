//! Taking and giving back permits, written once for Lock, RLock, the semaphores,
//! RwLock and Condition: a lock is a semaphore of one with an owner, an RLock adds a
//! count, an RwLock a shared mode.

use std::future::Future;
use std::time::Instant;

use crate::backend::model::Acquire;
use crate::backend::{Grant, Mode, Op, PermitKind, Reply};
use crate::owner::{fresh_id, thread_number, Owner};
use crate::primitives::detached::Claim;
use crate::primitives::guard::{unexpected, Guard};
use crate::primitives::handle::{instant_at, Handle, OnDrop, Step};
use crate::{Error, Ownership, Result};

/// How long an acquisition may wait.
#[derive(Clone, Copy)]
pub(crate) enum Wait {
    /// Never.
    Try,
    /// Until the deadline, or for ever.
    Until(Option<Instant>),
}

fn acquire_op(
    handle: &Handle,
    kind: PermitKind,
    mode: Mode,
    owner: &Owner,
    ticket: Option<u64>,
) -> Op {
    Op::Acquire(Acquire {
        kind,
        mode,
        owner: owner.clone(),
        lease: handle.lease_millis(),
        tag: handle.opts.tag.clone(),
        ticket,
    })
}

fn judge(reply: Reply) -> Result<Step<Grant>> {
    match reply {
        Reply::Granted(grant) => Ok(Step::Done(grant)),
        Reply::Blocked { retry_at } => Ok(Step::Wait(retry_at.map(instant_at))),
        other => Err(unexpected(other)),
    }
}

/// Whether blocking acquisitions through `handle` are each their own owner (a Lock
/// owned by the acquisition) rather than the calling thread's.
#[inline]
fn by_acquisition(handle: &Handle, kind: PermitKind) -> bool {
    kind == PermitKind::Lock && handle.opts.ownership == Ownership::Acquisition
}

/// Who may give back a detached hold of `kind` through the handle.
fn claim(kind: PermitKind, thread: u64) -> Option<Claim> {
    match (kind, thread) {
        (PermitKind::Lock | PermitKind::RLock, 0) => Some(Claim::Process),
        (PermitKind::Lock | PermitKind::RLock, t) => Some(Claim::Thread(t)),
        _ => None,
    }
}

fn claimed(guard: Guard, kind: PermitKind, thread: u64) -> Guard {
    match claim(kind, thread) {
        Some(c) => guard.claimed(c),
        None => guard,
    }
}

/// Takes a permit for the calling thread (or, for a Lock owned by the acquisition, for
/// a new owner), waiting as `wait` allows.
pub(crate) fn acquire(
    handle: &Handle,
    kind: PermitKind,
    mode: Mode,
    wait: Wait,
) -> Result<Option<Guard>> {
    let thread = if by_acquisition(handle, kind) {
        0
    } else {
        thread_number()
    };
    if let Some(guard) = acquire_fast(handle, kind, mode, thread) {
        return Ok(Some(guard));
    }
    let grant = acquire_grant(handle, kind, mode, wait)?;
    Ok(grant.map(|g| claimed(Guard::new(handle, g), kind, thread)))
}

/// The store's fast path, for a plain Lock (no lease, no tag) that is free: `thread`
/// is the taker's thread number, 0 for an async acquisition. `None`: take the
/// general path (which also reports bad input).
#[inline]
pub(crate) fn acquire_fast(
    handle: &Handle,
    kind: PermitKind,
    mode: Mode,
    thread: u64,
) -> Option<Guard> {
    let plain = kind == PermitKind::Lock
        && mode == Mode::Exclusive
        && handle.opts.lease.is_none()
        && handle.opts.tag.is_none()
        && handle.check().is_ok();
    if !plain {
        return None;
    }
    let hold = handle.space.backend.lock_fast(&handle.key, thread)?;
    Some(claimed(Guard::fast(handle, hold), kind, thread))
}

/// [`acquire`], answering with the grant rather than a guard.
pub(crate) fn acquire_grant(
    handle: &Handle,
    kind: PermitKind,
    mode: Mode,
    wait: Wait,
) -> Result<Option<Grant>> {
    handle.check()?;
    let owner = if by_acquisition(handle, kind) {
        Owner::new_task()
    } else {
        Owner::current_thread()
    };
    // The fast path: one step, no queueing, no watch.
    let op = acquire_op(handle, kind, mode, &owner, None);
    let first = match wait {
        Wait::Try => handle.step(op)?,
        Wait::Until(deadline) => handle.wait_step(op, deadline)?,
    };
    if let Step::Done(grant) = judge(first)? {
        return Ok(Some(grant));
    }
    let Wait::Until(deadline) = wait else {
        return Ok(None);
    };
    if on_current_thread_runtime() && held_by_a_task_here(handle)? {
        return Err(Error::RuntimeDeadlock {
            name: handle.name().to_owned(),
        });
    }
    let ticket = fresh_id();
    let leave = OnDrop::new(handle, Op::Dequeue { ticket });
    let op = || acquire_op(handle, kind, mode, &owner, Some(ticket));
    let grant = handle.block_on(Some(ticket), deadline, &op, &mut judge)?;
    if grant.is_some() {
        leave.disarm();
    }
    Ok(grant)
}

/// Whether the calling thread is in the context of a current-thread tokio runtime:
/// while it blocks, none of that runtime's tasks run. (Tokio does not tell the
/// runtime's own thread from the threads of its `spawn_blocking` pool, so those count
/// too.)
fn on_current_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|rt| rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
}

/// Whether an async task's or an acquisition's hold of this process holds the
/// primitive: one that a task of the caller's runtime may be the one to give back.
fn held_by_a_task_here(handle: &Handle) -> Result<bool> {
    match handle.step(Op::Holders)? {
        Reply::Holders { holders, .. } => {
            let me = Owner::current_thread();
            Ok(holders
                .iter()
                .any(|h| h.owner.is_task() && h.owner.same_process(&me)))
        }
        other => Err(unexpected(other)),
    }
}

/// Takes a permit for a new async owner, waiting as `wait` allows.
///
/// Cancel safe: a dropped future leaves the queue (through the space's helper thread
/// on stores whose steps wait on I/O) and holds nothing.
pub(crate) async fn acquire_async(
    handle: &Handle,
    kind: PermitKind,
    mode: Mode,
    wait: Wait,
) -> Result<Option<Guard>> {
    if let Some(guard) = acquire_fast(handle, kind, mode, 0) {
        return Ok(Some(guard));
    }
    // Boxed: the general path's future is large, and callers that took the fast path
    // above should not pay for moving it around.
    let grant = Box::pin(acquire_grant_async(handle, kind, mode, wait)).await?;
    Ok(grant.map(|g| claimed(Guard::new(handle, g), kind, 0)))
}

/// [`acquire_async`], answering with the grant rather than a guard.
pub(crate) async fn acquire_grant_async(
    handle: &Handle,
    kind: PermitKind,
    mode: Mode,
    wait: Wait,
) -> Result<Option<Grant>> {
    handle.check()?;
    let owner = Owner::new_task();
    let op = acquire_op(handle, kind, mode, &owner, None);
    let first = match wait {
        Wait::Try => handle.step_async(op).await?,
        Wait::Until(deadline) => handle.wait_step_async(op, deadline).await?,
    };
    if let Step::Done(grant) = judge(first)? {
        return Ok(Some(grant));
    }
    let Wait::Until(deadline) = wait else {
        return Ok(None);
    };
    let ticket = fresh_id();
    let leave = OnDrop::new_async(handle, Op::Dequeue { ticket });
    let op = || acquire_op(handle, kind, mode, &owner, Some(ticket));
    let grant = handle
        .wait_on(Some(ticket), deadline, &op, &mut judge)
        .await;
    match grant {
        Ok(Some(_)) => leave.disarm(),
        _ => leave.run_async().await,
    }
    grant
}

/// Gives back `n` permits of a semaphore, all or nothing: each the calling thread's
/// guardless permit if it holds one, else (bounded, at the bound) the oldest
/// holder's, else a rise of the count.
pub(crate) fn release_owned(handle: &Handle, kind: PermitKind, n: u32) -> Result<()> {
    handle.check()?;
    if n == 0 {
        return Err(Error::invalid("a release gives back at least 1 permit"));
    }
    handle.step(Op::ReleaseOwned {
        kind,
        owner: Owner::current_thread(),
        n,
    })?;
    Ok(())
}

/// Gives back a Lock's or RLock's hold (one level) that was detached from its guard in
/// this process: the calling thread's, or any thread's for a Lock owned by the
/// acquisition. A hold that a live guard owns is never touched.
pub(crate) fn release_detached(handle: &Handle, kind: PermitKind) -> Result<()> {
    handle.check()?;
    let any_thread = by_acquisition(handle, kind);
    let detached = &handle.space.detached;
    if let Some(token) = detached.take(handle.name(), thread_number(), any_thread) {
        return match handle.step(Op::Release { token }) {
            Ok(_) => Ok(()),
            // It ended while detached: lapsed, force-released or evicted.
            Err(Error::NotHeld { .. }) => Err(handle.hold_lost()),
            Err(e) => Err(e),
        };
    }
    // Nothing this caller may give back: say why, changing nothing.
    let name = handle.name().to_owned();
    match handle.step(Op::Holders)? {
        Reply::Holders { holders, .. } if holders.is_empty() => Err(Error::NotHeld { name }),
        // Another owner's, or the caller's own hold that a live guard owns.
        Reply::Holders { .. } => Err(Error::NotOwner { name }),
        other => Err(unexpected(other)),
    }
}

/// Async [`release_owned`].
pub(crate) async fn release_owned_async(handle: &Handle, kind: PermitKind, n: u32) -> Result<()> {
    handle.check()?;
    if n == 0 {
        return Err(Error::invalid("a release gives back at least 1 permit"));
    }
    let op = Op::ReleaseOwned {
        kind,
        owner: Owner::current_thread(),
        n,
    };
    handle.step_async(op).await?;
    Ok(())
}

/// Async [`release_detached`].
pub(crate) async fn release_detached_async(handle: &Handle, kind: PermitKind) -> Result<()> {
    handle.check()?;
    let any_thread = by_acquisition(handle, kind);
    let detached = &handle.space.detached;
    if let Some(token) = detached.take(handle.name(), thread_number(), any_thread) {
        return match handle.step_async(Op::Release { token }).await {
            Ok(_) => Ok(()),
            Err(Error::NotHeld { .. }) => Err(handle.hold_lost()),
            Err(e) => Err(e),
        };
    }
    let name = handle.name().to_owned();
    match handle.step_async(Op::Holders).await? {
        Reply::Holders { holders, .. } if holders.is_empty() => Err(Error::NotHeld { name }),
        Reply::Holders { .. } => Err(Error::NotOwner { name }),
        other => Err(unexpected(other)),
    }
}

/// Whether anyone holds the primitive.
pub(crate) fn is_held(handle: &Handle) -> Result<bool> {
    handle.check()?;
    match handle.step(Op::Holders)? {
        Reply::Holders { holders, .. } => Ok(!holders.is_empty()),
        other => Err(unexpected(other)),
    }
}

/// Whether the caller holds the primitive: the calling thread, or a hold of this
/// process that no thread owns (an async acquisition, a Lock owned by the
/// acquisition), which may have moved to the caller.
pub(crate) fn held_here(handle: &Handle) -> Result<bool> {
    handle.check()?;
    match handle.step(Op::Holders)? {
        Reply::Holders { holders, .. } => {
            let me = Owner::current_thread();
            Ok(holders
                .iter()
                .any(|h| h.owner == me || (h.owner.is_task() && h.owner.same_process(&me))))
        }
        other => Err(unexpected(other)),
    }
}

/// Async [`is_held`].
pub(crate) async fn is_held_async(handle: &Handle) -> Result<bool> {
    handle.check()?;
    match handle.step_async(Op::Holders).await? {
        Reply::Holders { holders, .. } => Ok(!holders.is_empty()),
        other => Err(unexpected(other)),
    }
}

/// Async [`held_here`].
pub(crate) async fn held_here_async(handle: &Handle) -> Result<bool> {
    handle.check()?;
    match handle.step_async(Op::Holders).await? {
        Reply::Holders { holders, .. } => {
            let me = Owner::current_thread();
            Ok(holders
                .iter()
                .any(|h| h.owner == me || (h.owner.is_task() && h.owner.same_process(&me))))
        }
        other => Err(unexpected(other)),
    }
}

/// Async [`value`].
pub(crate) async fn value_async(handle: &Handle, kind: PermitKind) -> Result<u32> {
    handle.check()?;
    match handle.step_async(Op::Value { kind }).await? {
        Reply::Count(n) => Ok(n.min(u64::from(u32::MAX)) as u32),
        other => Err(unexpected(other)),
    }
}

/// A semaphore's free permits.
pub(crate) fn value(handle: &Handle, kind: PermitKind) -> Result<u32> {
    handle.check()?;
    match handle.step(Op::Value { kind })? {
        Reply::Count(n) => Ok(n.min(u64::from(u32::MAX)) as u32),
        other => Err(unexpected(other)),
    }
}

/// How many levels of an RLock the calling thread holds (0: none).
pub(crate) fn depth(handle: &Handle) -> Result<u32> {
    handle.check()?;
    match handle.step(Op::Holders)? {
        Reply::Holders { holders, .. } => {
            let me = Owner::current_thread();
            Ok(holders
                .iter()
                .find(|h| h.owner == me)
                .map_or(0, |h| h.count))
        }
        other => Err(unexpected(other)),
    }
}

/// Async [`depth`].
pub(crate) async fn depth_async(handle: &Handle) -> Result<u32> {
    handle.check()?;
    match handle.step_async(Op::Holders).await? {
        Reply::Holders { holders, .. } => {
            let me = Owner::current_thread();
            Ok(holders
                .iter()
                .find(|h| h.owner == me)
                .map_or(0, |h| h.count))
        }
        other => Err(unexpected(other)),
    }
}

/// Acquires (waiting until `deadline`), runs the future `f` returns, and releases
/// whatever happens to it; `None` if the permit did not come by the deadline (`f`
/// then never runs).
pub(crate) async fn run<F, Fut, T>(
    handle: &Handle,
    kind: PermitKind,
    deadline: Option<Instant>,
    f: F,
) -> Result<Option<T>>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    let guard = match acquire_fast(handle, kind, Mode::Exclusive, 0) {
        Some(guard) => guard,
        None => match Box::pin(acquire_async(
            handle,
            kind,
            Mode::Exclusive,
            Wait::Until(deadline),
        ))
        .await?
        {
            Some(guard) => guard,
            None => return Ok(None),
        },
    };
    // The guard is dropped, and so released, if `f` panics or this future is dropped.
    let out = f().await;
    guard.release_async().await?;
    Ok(Some(out))
}

/// The five ways to acquire, for a primitive with a `handle` field and a
/// `fn kind(&self) -> Result<PermitKind>` that checks its parameters.
macro_rules! acquire_methods {
    ($what:literal) => {
        #[doc = concat!("Acquires ", $what, ", waiting as long as it takes.")]
        ///
        /// # Errors
        /// [`crate::Error::WouldDeadlock`] if the calling thread already holds a
        /// non-recursive lock; [`crate::Error::InvalidArgument`] for a bad name or
        /// option; [`crate::Error::Mismatch`] if the name is another kind of primitive;
        /// [`crate::Error::RuntimeDeadlock`] if it would wait on the thread of a
        /// current-thread async runtime (tokio's, or a thread of its `spawn_blocking`
        /// pool) while an async task or an acquisition-owned hold of this process
        /// holds it (the same for the `_timeout` form); store errors.
        pub fn acquire(&self) -> crate::Result<crate::Guard> {
            let wait = crate::primitives::permit::Wait::Until(None);
            crate::primitives::handle::forever(crate::primitives::permit::acquire(
                &self.handle,
                self.kind()?,
                crate::backend::Mode::Exclusive,
                wait,
            ))
        }

        #[doc = concat!("Acquires ", $what, " if that is possible now; never waits.")]
        pub fn try_acquire(&self) -> crate::Result<Option<crate::Guard>> {
            let wait = crate::primitives::permit::Wait::Try;
            crate::primitives::permit::acquire(
                &self.handle,
                self.kind()?,
                crate::backend::Mode::Exclusive,
                wait,
            )
        }

        #[doc = concat!("Acquires ", $what, ", waiting at most `timeout`; `Ok(None)` if it did not come free.")]
        pub fn acquire_timeout(
            &self,
            timeout: std::time::Duration,
        ) -> crate::Result<Option<crate::Guard>> {
            let deadline = crate::primitives::handle::deadline_after(timeout);
            crate::primitives::permit::acquire(
                &self.handle,
                self.kind()?,
                crate::backend::Mode::Exclusive,
                crate::primitives::permit::Wait::Until(deadline),
            )
        }

        #[doc = concat!("Acquires ", $what, " from async code, without blocking the executor thread.")]
        ///
        /// Each async acquisition is its own owner; waiters are served first-come
        /// first-served.
        ///
        /// # Cancel safety
        /// Cancel safe: a dropped future leaves the queue, never holds, and passes on
        /// any wake-up or grant it was given. The drop never waits for the store: on
        /// `sqlite:` and Redis the space's helper thread leaves the queue for it
        /// moments later (until then `waiting()` still counts it).
        pub async fn acquire_async(&self) -> crate::Result<crate::Guard> {
            let (kind, mode) = (self.kind()?, crate::backend::Mode::Exclusive);
            if let Some(guard) = crate::primitives::permit::acquire_fast(&self.handle, kind, mode, 0) {
                return Ok(guard);
            }
            let wait = crate::primitives::permit::Wait::Until(None);
            crate::primitives::handle::forever(
                crate::primitives::permit::acquire_async(&self.handle, kind, mode, wait).await,
            )
        }

        #[doc = concat!("Acquires ", $what, " from async code, waiting at most `timeout`.")]
        ///
        /// # Cancel safety
        /// Cancel safe, as `acquire_async`.
        pub async fn acquire_timeout_async(
            &self,
            timeout: std::time::Duration,
        ) -> crate::Result<Option<crate::Guard>> {
            let deadline = crate::primitives::handle::deadline_after(timeout);
            crate::primitives::permit::acquire_async(
                &self.handle,
                self.kind()?,
                crate::backend::Mode::Exclusive,
                crate::primitives::permit::Wait::Until(deadline),
            )
            .await
        }
    };
}

/// Twisted's `run`, for a primitive with a `handle` field and a
/// `fn kind(&self) -> Result<PermitKind>` that checks its parameters.
macro_rules! run_method {
    () => {
        /// Twisted's `run`: acquires, awaits the future `f` returns, and releases
        /// whether it completes, panics or is cancelled. Callers are served first-come
        /// first-served.
        ///
        /// # Errors
        /// [`crate::Error::LeaseLost`] if the hold ended before `f` finished (its
        /// output is then dropped: the section was not exclusive); store errors.
        pub async fn run<F, Fut, T>(&self, f: F) -> crate::Result<T>
        where
            F: FnOnce() -> Fut,
            Fut: std::future::Future<Output = T>,
        {
            let kind = self.kind()?;
            crate::primitives::permit::run(&self.handle, kind, None, f)
                .await?
                .ok_or(crate::Error::Timeout)
        }

        /// The `try_` form of [`Self::run`]: runs `f` only if the permit is free now;
        /// `Ok(None)` otherwise (`f` is then never called).
        ///
        /// # Errors
        /// As [`Self::run`].
        pub async fn try_run<F, Fut, T>(&self, f: F) -> crate::Result<Option<T>>
        where
            F: FnOnce() -> Fut,
            Fut: std::future::Future<Output = T>,
        {
            self.run_timeout(std::time::Duration::ZERO, f).await
        }

        /// [`Self::run`], waiting at most `timeout` for the permit: `Ok(None)` if it
        /// did not come free in time (`f` is then never called).
        ///
        /// # Errors
        /// As [`Self::run`].
        pub async fn run_timeout<F, Fut, T>(
            &self,
            timeout: std::time::Duration,
            f: F,
        ) -> crate::Result<Option<T>>
        where
            F: FnOnce() -> Fut,
            Fut: std::future::Future<Output = T>,
        {
            let deadline = crate::primitives::handle::deadline_after(timeout);
            crate::primitives::permit::run(&self.handle, self.kind()?, deadline, f).await
        }
    };
}

pub(crate) use {acquire_methods, run_method};
