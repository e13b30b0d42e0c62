//! The guard of a held lock or permit.

use std::fmt;
use std::num::NonZeroU64;
use std::sync::Arc;

use crate::backend::{FastHold, Grant, Op, Reply};
use crate::lease::Lease;
use crate::primitives::detached::Claim;
use crate::primitives::handle::Handle;
use crate::{Error, Result};

/// Proof of a hold on a lock, a semaphore permit, or a read or write side of an RwLock.
///
/// Dropping the guard releases the hold; [`Guard::release`] does the same and reports
/// what went wrong, if anything. A drop cannot report: a release on drop that fails
/// (above all [`Error::LeaseLost`], the sign that the section may not have been
/// exclusive) is logged as a `tracing` warning and passed to the hooks of
/// [`crate::Space::on_drop_error`]. To see every lost hold, call `release()`, add a
/// hook, or watch [`Guard::lease_lost`] while holding. A guard is `Send` and `'static`, so it can be kept
/// across `.await` points and moved between threads and tasks.
///
/// ```
/// # fn main() -> locksmith::Result<()> {
/// let space = locksmith::Space::open("mem:")?;
/// let guard = space.lock("deploy").acquire()?;
/// println!("holding deploy with fencing token {}", guard.token());
/// guard.release()?;
/// # Ok(()) }
/// ```
#[must_use = "the hold is released as soon as the guard is dropped"]
pub struct Guard {
    handle: Handle,
    grant: Grant,
    lease: Option<Arc<Lease>>,
    held: bool,
    /// Set for a hold the store took on its fast path, to give back the same way
    /// (the [`FastHold::word`]; the token is the grant's).
    fast: Option<NonZeroU64>,
    /// An async release was sent and may have been applied (its future was dropped).
    releasing: bool,
    /// Who may give the hold back through the handle once detached (Lock and RLock);
    /// `None`: the handle's `release()` does not look for detached holds.
    claim: Option<Claim>,
}

impl Guard {
    pub(crate) fn new(handle: &Handle, grant: Grant) -> Guard {
        let mut guard = Guard {
            handle: handle.clone(),
            grant,
            lease: None,
            held: true,
            fast: None,
            releasing: false,
            claim: None,
        };
        guard.keep_lease();
        guard
    }

    /// The guard of a hold taken by [`crate::backend::Backend::lock_fast`] (a plain
    /// lock: no lease to keep).
    pub(crate) fn fast(handle: &Handle, hold: FastHold) -> Guard {
        Guard {
            handle: handle.clone(),
            grant: Grant {
                token: hold.token,
                previous_owner_died: false,
            },
            lease: None,
            held: true,
            fast: Some(hold.word),
            releasing: false,
            claim: None,
        }
    }

    /// Says who may give the hold back through the handle once it is detached.
    pub(crate) fn claimed(mut self, claim: Claim) -> Guard {
        self.claim = Some(claim);
        self
    }

    fn keep_lease(&mut self) {
        let opts = &self.handle.opts;
        // A store's default lease (held without one asked for) always renews: it is
        // there to recover from dead holders, not to expire live ones.
        let length = match opts.lease {
            Some(length) if opts.keep_alive => Some(length),
            Some(_) => None,
            None => self.handle.space.backend.default_lease(),
        };
        self.lease = match length {
            Some(length) => Some(self.handle.space.keeper.register(
                &self.handle.space.backend,
                self.handle.key.clone(),
                self.grant.token,
                length,
            )),
            _ => None,
        };
    }

    /// The fencing token of this hold: strictly greater than the token of every earlier
    /// hold of the same name, so a resource can refuse a holder whose lease lapsed.
    /// Re-entrant holds of an RLock share their first hold's token.
    pub fn token(&self) -> u64 {
        self.grant.token
    }

    /// Whether the previous holder died (or its lease lapsed) while holding, so that
    /// what it protected may be half-done (`EOWNERDEAD`).
    pub fn previous_owner_died(&self) -> bool {
        self.grant.previous_owner_died
    }

    /// The name of the primitive held.
    pub fn name(&self) -> &str {
        self.handle.name()
    }

    /// Asks the store whether this hold still stands: `false` once its lease lapsed or
    /// an operator broke it.
    pub fn is_held(&self) -> Result<bool> {
        if !self.held || self.is_lease_lost() {
            return Ok(false);
        }
        match self.handle.step(Op::Check {
            token: self.grant.token,
        })? {
            Reply::Flag(held) => Ok(held),
            other => Err(unexpected(other)),
        }
    }

    /// Async [`Guard::is_held`]: never blocks the executor thread on a network store.
    pub async fn is_held_async(&self) -> Result<bool> {
        if !self.held || self.lease.as_ref().is_some_and(|l| l.is_lost()) {
            return Ok(false);
        }
        match self
            .handle
            .step_async(Op::Check {
                token: self.grant.token,
            })
            .await?
        {
            Reply::Flag(held) => Ok(held),
            other => Err(unexpected(other)),
        }
    }

    /// Resolves when the lease keeper finds the hold gone: a renewal was refused (the
    /// lease lapsed, e.g. while this process was paused, or an operator broke or
    /// evicted the hold), or no renewal got through for a whole lease (the store
    /// is unreachable, so another holder may already have it). Never resolves for a
    /// hold without a kept-alive lease.
    ///
    /// It resolves the moment locksmith learns of the loss: once a holder listens
    /// (this future, [`Guard::on_lease_lost`]), a watcher thread checks the hold on
    /// every change to its name, so a break, an eviction or a successor's grant is
    /// learned within milliseconds; the keeper also finds it at its next renewal
    /// (every third of the lease) or at once after a pause. Another holder may have
    /// been granted the hold that long before. Stop writing when it
    /// resolves, and let the resource check the fencing token ([`Guard::token`]) for
    /// a guarantee.
    ///
    /// ```
    /// # async fn work() {}
    /// # async fn f(guard: locksmith::Guard) {
    /// tokio::select! {
    ///     _ = work() => {}
    ///     _ = guard.lease_lost() => eprintln!("hold lost: stopped writing"),
    /// }
    /// # }
    /// ```
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future changes nothing.
    pub async fn lease_lost(&self) {
        match &self.lease {
            Some(lease) => lease.lost().await,
            None => std::future::pending().await,
        }
    }

    /// Whether the lease keeper found this hold lost (as [`Guard::lease_lost`]
    /// resolves), without asking the store.
    pub fn is_lease_lost(&self) -> bool {
        self.lease.as_ref().is_some_and(|l| l.is_lost())
    }

    /// Calls `callback` once when the lease keeper finds this hold lost (as
    /// [`Guard::lease_lost`] resolves): for threads that cannot await. It runs on a
    /// locksmith thread (the keeper's, which renews every lease of the space, or the
    /// hold's watcher), so it should only signal, e.g. send on a channel, set a flag
    /// or kill a child process, and never block. If the hold is already known lost, it runs at once on this thread.
    /// It never runs for a hold without a kept-alive lease, nor after the guard is
    /// released or dropped.
    ///
    /// ```
    /// # fn main() -> locksmith::Result<()> {
    /// let space = locksmith::Space::open("mem:")?;
    /// let lock = space.lock("deploy").lease(std::time::Duration::from_secs(10));
    /// let guard = lock.acquire()?;
    /// let (lost, when_lost) = std::sync::mpsc::channel();
    /// guard.on_lease_lost(move || {
    ///     let _ = lost.send(());
    /// });
    /// // ... between steps of the work:
    /// if when_lost.try_recv().is_ok() {
    ///     return Ok(()); // stop writing: another holder may be in
    /// }
    /// guard.release()?;
    /// # Ok(()) }
    /// ```
    pub fn on_lease_lost(&self, callback: impl FnOnce() + Send + 'static) {
        if let Some(lease) = &self.lease {
            lease.on_lost(Box::new(callback));
        }
    }

    /// Releases the hold.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] if the hold had already ended (its lease lapsed, or it was
    /// broken or evicted): the critical section may not have been exclusive. The
    /// store's errors as [`Error::Backend`].
    pub fn release(mut self) -> Result<()> {
        self.release_now()
    }

    /// Releases the hold from async code: on a network store the release is a round
    /// trip, which this awaits instead of blocking the executor thread as
    /// [`Guard::release`] (and dropping the guard) would.
    ///
    /// # Errors
    /// As [`Guard::release`].
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped before the store answered, the guard it
    /// owns releases on drop as usual, so the hold never outlives both.
    pub async fn release_async(mut self) -> Result<()> {
        if let Some(released) = self.release_fast() {
            return released;
        }
        self.releasing = true;
        if let Some(lease) = &self.lease {
            lease.retire();
        }
        let result = self
            .handle
            .step_async(Op::Release {
                token: self.grant.token,
            })
            .await;
        (self.held, self.releasing) = (false, false);
        let lost = self.take_lease();
        self.judge_release(result, lost)
    }

    /// Keeps holding without a guard: nothing is released on drop and the lease is
    /// no longer renewed. Release later with the handle's `release()` (of a Lock or
    /// RLock: from the thread that acquired, or from any thread of this process for a
    /// Lock owned by the acquisition, see [`crate::Ownership`]), or let the lease
    /// lapse. Returns the fencing token.
    ///
    /// A handle's `release()` gives back only holds detached this way in this process
    /// (through a `Space` it shares), never one a live guard owns.
    pub fn detach(mut self) -> u64 {
        if self.held {
            if let Some(claim) = self.claim {
                let space = &self.handle.space;
                space
                    .detached
                    .add(self.handle.name(), self.grant.token, claim);
            }
        }
        self.forget_hold();
        self.grant.token
    }

    fn release_now(&mut self) -> Result<()> {
        if let Some(released) = self.release_fast() {
            return released;
        }
        self.held = false;
        let lost = self.take_lease();
        let result = self.handle.step(Op::Release {
            token: self.grant.token,
        });
        self.judge_release(result, lost)
    }

    /// The release that needs no step: nothing held, or a fast hold given back the
    /// way it was taken. `None`: a release step is needed.
    fn release_fast(&mut self) -> Option<Result<()>> {
        if !self.held {
            return Some(Ok(()));
        }
        let word = self.fast.take()?;
        let hold = FastHold {
            token: self.grant.token,
            word,
        };
        let backend = &self.handle.space.backend;
        if backend.unlock_fast(&self.handle.key, hold) {
            self.held = false;
            return Some(Ok(()));
        }
        None
    }

    /// What a release step's `result` means for the caller.
    fn judge_release(&self, result: Result<Reply>, lost: bool) -> Result<()> {
        match result {
            Ok(_) if lost => Err(self.lease_lost_error()),
            Ok(_) => Ok(()),
            // A release cancelled mid-way may have been applied: finding nothing to
            // release on drop after it is no loss.
            Err(Error::NotHeld { .. }) if self.releasing => Ok(()),
            Err(Error::NotHeld { .. }) => Err(self.lease_lost_error()),
            Err(e) => Err(e),
        }
    }

    fn lease_lost_error(&self) -> Error {
        self.handle.hold_lost()
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Ends this guard's hold without a release step (the store already ended it).
    pub(crate) fn forget_hold(&mut self) {
        self.held = false;
        self.take_lease();
        self.fast = None;
    }

    /// Stops keeping the lease (retired first, so that nobody is told of a loss the
    /// guard caused itself); returns whether it had been lost.
    fn take_lease(&mut self) -> bool {
        self.lease.take().is_some_and(|l| {
            l.retire();
            l.is_lost()
        })
    }

    /// Takes up a new hold of the same primitive (a condition re-acquiring its lock).
    pub(crate) fn rebind(&mut self, grant: Grant) {
        self.grant = grant;
        self.held = true;
        self.fast = None;
        self.take_lease();
        self.keep_lease();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = self.release_now() {
            tracing::warn!(name = self.handle.name(), error = %e, "release on drop failed");
            self.handle.space.dropped_with(self.handle.name(), &e);
        }
    }
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("name", &self.handle.name())
            .field("token", &self.grant.token)
            .field("previous_owner_died", &self.grant.previous_owner_died)
            .field("held", &self.held)
            .finish()
    }
}

pub(crate) fn unexpected(reply: Reply) -> Error {
    Error::backend(format!("unexpected reply from the store: {reply:?}"))
}
