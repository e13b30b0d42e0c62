//! A condition variable with its own lock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{Mode, Op, PermitKind, Reply};
use crate::owner::{fresh_id, Owner};
use crate::primitives::guard::{unexpected, Guard};
use crate::primitives::handle::{deadline_after, forever, lease_options, Handle, OnDrop, Step};
use crate::primitives::permit::{self, acquire_methods, Wait};
use crate::{Error, Result};

const KIND: PermitKind = PermitKind::Condition;

/// A condition variable that carries its own lock: acquire the condition, check the
/// state it guards, and [`Condition::wait`] to release the lock and sleep until
/// notified, atomically, so no notification between the check and the sleep is lost.
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
    handle: Handle,
}

impl Condition {
    pub(crate) fn new(handle: Handle) -> Condition {
        Condition { handle }
    }

    fn kind(&self) -> Result<PermitKind> {
        Ok(KIND)
    }

    lease_options!();
    acquire_methods!("the condition's lock");

    /// Releases the lock held by `guard`, sleeps until notified, and takes the lock
    /// again before returning. Spurious wake-ups do not happen, but other holders may
    /// have changed the state in between: check it again, or use
    /// [`Condition::wait_while`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `guard` is not this condition's;
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

    /// Wakes up to `n` sleepers, oldest first; returns how many were woken.
    pub fn notify(&self, n: usize) -> Result<usize> {
        self.handle.check()?;
        match self.handle.step(Op::CondNotify { n })? {
            Reply::Count(k) => Ok(k as usize),
            other => Err(unexpected(other)),
        }
    }

    /// Whether anyone holds the condition's lock now.
    pub fn is_locked(&self) -> Result<bool> {
        crate::primitives::permit::is_held(&self.handle)
    }

    /// Wakes every sleeper; returns how many were woken.
    pub fn notify_all(&self) -> Result<usize> {
        self.notify(usize::MAX)
    }

    fn start_sleeping(&self, guard: &mut Guard) -> Result<u64> {
        self.handle.check()?;
        if !Arc::ptr_eq(&guard.handle().space, &self.handle.space) || guard.name() != self.name() {
            return Err(Error::invalid(format!(
                "the guard of '{}' cannot wait on condition '{}'",
                guard.name(),
                self.name()
            )));
        }
        let ticket = fresh_id();
        let op = Op::CondWait {
            token: guard.token(),
            ticket,
            owner: Owner::current_thread(),
        };
        match self.handle.step(op) {
            Ok(_) => {
                guard.forget_hold();
                Ok(ticket)
            }
            Err(Error::NotHeld { name }) => Err(Error::LeaseLost { name }),
            Err(e) => Err(e),
        }
    }

    fn wait_until(&self, guard: &mut Guard, deadline: Option<Instant>) -> Result<bool> {
        let ticket = self.start_sleeping(guard)?;
        let stop = OnDrop::new(&self.handle, Op::CondCancel { ticket });
        let woken = self.handle.block_on(
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
                cancel(self.handle.step(Op::CondCancel { ticket })?)?
            }
        };
        let grant = forever(permit::acquire_grant(
            &self.handle,
            KIND,
            Mode::Exclusive,
            Wait::Until(None),
        ))?;
        guard.rebind(grant);
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
        let ticket = self.start_sleeping(&mut guard)?;
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
        let ticket = self.start_sleeping(guard)?;
        let stop = OnDrop::new(&self.handle, Op::CondCancel { ticket });
        let woken = self
            .handle
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
            None => cancel(self.handle.step_async(Op::CondCancel { ticket }).await?)?,
        };
        let wait = Wait::Until(None);
        let grant =
            forever(permit::acquire_grant_async(&self.handle, KIND, Mode::Exclusive, wait).await)?;
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
        let handle = &self.condition.handle;
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
            let reply = self.condition.handle.step(Op::CondCancel { ticket })?;
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
