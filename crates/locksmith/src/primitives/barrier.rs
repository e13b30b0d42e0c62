//! A barrier: parties wait until all have arrived.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::model::BarrierView;
use crate::backend::{Op, Reply};
use crate::owner::Owner;
use crate::primitives::guard::unexpected;
use crate::primitives::handle::{deadline_after, Handle, Step};
use crate::{BrokenCause, Error, Result};

/// A barrier for a fixed number of parties: each [`Barrier::wait`] blocks until
/// `parties` callers have arrived, then all go on together and the barrier is ready
/// for the next generation.
///
/// `wait` returns the caller's arrival index, `0..parties`; the last to arrive
/// (index `parties - 1`) runs the [`Barrier::action`], once per generation, before the
/// others are released. A wait that times out, an action that panics, a party that
/// dies, [`Barrier::abort`], [`Barrier::reset`] and a party that disagrees about the
/// number of parties or about having an action break the generation: every waiter of
/// it gets [`Error::BrokenBarrier`], whose [`BrokenCause`] says why. A broken barrier
/// stays broken until `reset`.
///
/// # Actions
/// An action is a closure of the process that passes it, and it cannot travel to
/// other processes: it runs in whichever party arrives last, in that party's process.
/// So either every party of a barrier passes an action (the same one, in effect), or
/// none does; a generation whose parties disagree breaks
/// ([`BrokenCause::ActionMismatch`]) as soon as the disagreement shows, rather than
/// running the action in some generations only.
///
/// ```
/// # fn main() -> locksmith::Result<()> {
/// let space = locksmith::Space::open("mem:")?;
/// let phase = space.barrier("phase", 3);
/// let workers: Vec<_> = (0..3)
///     .map(|_| std::thread::spawn({
///         let phase = phase.clone();
///         move || phase.wait()
///     }))
///     .collect();
/// let mut indices: Vec<u32> = workers.into_iter().map(|w| w.join().unwrap()).collect::<Result<_, _>>()?;
/// indices.sort();
/// assert_eq!(indices, [0, 1, 2]);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Barrier {
    handle: Handle,
    parties: u32,
    action: Option<Arc<dyn Fn() + Send + Sync>>,
    /// How long [`Barrier::wait`] and [`Barrier::wait_async`] wait (multiprocessing's
    /// `Barrier(parties, action, timeout)`); `None`: for ever.
    timeout: Option<Duration>,
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("handle", &self.handle)
            .field("parties", &self.parties)
            .field("action", &self.action.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// How an arrival went: the generation it joined and its index, or not yet.
type Arrival = (u64, u32);

impl Barrier {
    pub(crate) fn new(handle: Handle, parties: u32) -> Barrier {
        Barrier {
            handle,
            parties,
            action: None,
            timeout: None,
        }
    }

    /// The default timeout of [`Barrier::wait`] and [`Barrier::wait_async`], as
    /// multiprocessing's `Barrier(parties, action, timeout)`: a wait that runs out
    /// breaks the barrier ([`BrokenCause::TimedOut`]). The `_timeout` forms use their
    /// own.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Runs `action` in the last party to arrive, before the others are released.
    /// If it panics, the barrier breaks ([`BrokenCause::ActionFailed`]). Every party
    /// must pass one, or none (see [Actions](Barrier#actions)).
    pub fn action(mut self, action: impl Fn() + Send + Sync + 'static) -> Self {
        self.action = Some(Arc::new(action));
        self
    }

    /// Tags the barrier, so that [`crate::Space::evict_tag`] can drop it.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        let tag = tag.into();
        self.handle.update_opts(|o| o.tag = Some(tag));
        self
    }

    /// The barrier's name.
    pub fn name(&self) -> &str {
        self.handle.name()
    }

    /// How many parties each generation needs.
    pub fn parties(&self) -> u32 {
        self.parties
    }

    fn check(&self) -> Result<()> {
        self.handle.check()?;
        if self.parties == 0 {
            return Err(Error::invalid("a barrier needs at least 1 party"));
        }
        Ok(())
    }

    fn read(&self) -> Result<BarrierView> {
        self.check()?;
        match self.handle.step(Op::BarrierRead {
            parties: self.parties,
        })? {
            Reply::Barrier(view) => Ok(view),
            other => Err(unexpected(other)),
        }
    }

    async fn read_async(&self) -> Result<BarrierView> {
        self.check()?;
        match self
            .handle
            .step_async(Op::BarrierRead {
                parties: self.parties,
            })
            .await?
        {
            Reply::Barrier(view) => Ok(view),
            other => Err(unexpected(other)),
        }
    }

    /// Async [`Barrier::n_waiting`]: never blocks the executor thread on a network
    /// store.
    pub async fn n_waiting_async(&self) -> Result<u32> {
        let view = self.read_async().await?;
        Ok(if view.broken { 0 } else { view.n_waiting })
    }

    /// Async [`Barrier::is_broken`].
    pub async fn is_broken_async(&self) -> Result<bool> {
        Ok(self.read_async().await?.broken)
    }

    /// Async [`Barrier::abort`].
    pub async fn abort_async(&self) -> Result<()> {
        self.check()?;
        self.handle
            .step_async(Op::BarrierAbort {
                parties: self.parties,
                generation: None,
                cause: BrokenCause::Aborted,
            })
            .await?;
        Ok(())
    }

    /// Async [`Barrier::reset`].
    pub async fn reset_async(&self) -> Result<()> {
        self.check()?;
        self.handle
            .step_async(Op::BarrierReset {
                parties: self.parties,
            })
            .await?;
        Ok(())
    }

    /// How many parties are waiting in the current generation.
    pub fn n_waiting(&self) -> Result<u32> {
        let view = self.read()?;
        Ok(if view.broken { 0 } else { view.n_waiting })
    }

    /// Whether the barrier is broken.
    pub fn is_broken(&self) -> Result<bool> {
        Ok(self.read()?.broken)
    }

    /// Breaks the barrier: current and future waiters get [`Error::BrokenBarrier`]
    /// until [`Barrier::reset`].
    pub fn abort(&self) -> Result<()> {
        self.check()?;
        self.handle.step(Op::BarrierAbort {
            parties: self.parties,
            generation: None,
            cause: BrokenCause::Aborted,
        })?;
        Ok(())
    }

    /// Returns the barrier to its initial state; parties waiting now get
    /// [`Error::BrokenBarrier`].
    pub fn reset(&self) -> Result<()> {
        self.check()?;
        self.handle.step(Op::BarrierReset {
            parties: self.parties,
        })?;
        Ok(())
    }

    /// Waits for all parties; returns this caller's arrival index.
    ///
    /// Waits at most the [`Barrier::timeout`] given at construction, if any.
    ///
    /// # Errors
    /// [`Error::BrokenBarrier`] if the generation broke; [`Error::InvalidArgument`] for
    /// zero parties or a bad name; [`Error::Mismatch`] if the barrier exists with
    /// another number of parties (a generation filling then breaks, so that its
    /// waiters learn of it: [`BrokenCause::PartiesMismatch`]).
    pub fn wait(&self) -> Result<u32> {
        self.wait_until(self.timeout.and_then(deadline_after))
    }

    /// [`Barrier::wait`], for at most `timeout`; if it runs out, the barrier breaks
    /// and this call returns [`Error::BrokenBarrier`], as every other waiter's does.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<u32> {
        self.wait_until(deadline_after(timeout))
    }

    fn arrive_op(&self, owner: &Owner) -> Op {
        Op::BarrierArrive {
            parties: self.parties,
            owner: owner.clone(),
            tag: self.handle.opts.tag.clone(),
            action: self.action.is_some(),
            only_last: false,
        }
    }

    /// The `try_` form of [`Barrier::wait`]: arrives only if this arrival completes
    /// the generation (every other party already waits), then runs the action and
    /// releases them all, answering `Some(index)`; otherwise `None`, without arriving
    /// (nothing changes). Never waits, except while the previous generation is still
    /// being released.
    ///
    /// # Errors
    /// As [`Barrier::wait`].
    pub fn try_wait(&self) -> Result<Option<u32>> {
        self.check()?;
        let owner = Owner::current_thread();
        let arrive = || match self.arrive_op(&owner) {
            Op::BarrierArrive {
                parties,
                owner,
                tag,
                action,
                ..
            } => Op::BarrierArrive {
                parties,
                owner,
                tag,
                action,
                only_last: true,
            },
            other => other,
        };
        let mut judge = |reply| match reply {
            Reply::NotLast => Ok(Step::Done(None)),
            other => self.judge_arrival(other).map(|step| match step {
                Step::Done(arrival) => Step::Done(Some(arrival)),
                Step::Wait(at) => Step::Wait(at),
            }),
        };
        match self.handle.block_on(None, None, &arrive, &mut judge)? {
            Some(Some((generation, index))) => self.release_all(generation, index).map(Some),
            _ => Ok(None),
        }
    }

    /// Judges an arrival step.
    fn judge_arrival(&self, reply: Reply) -> Result<Step<Arrival>> {
        match reply {
            Reply::Arrived { generation, index } => Ok(Step::Done((generation, index))),
            Reply::Busy => Ok(Step::Wait(None)),
            Reply::PartiesMismatch { parties } => Err(Error::Mismatch {
                name: self.name().to_owned(),
                wanted: format!("a Barrier of {} parties", self.parties),
                found: format!("a Barrier of {parties} parties"),
            }),
            Reply::Broke(cause) => Err(self.broken(Some(cause))),
            other => Err(unexpected(other)),
        }
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<u32> {
        self.check()?;
        let owner = Owner::current_thread();
        let arrive = || self.arrive_op(&owner);
        let mut judge_arrival = |reply| self.judge_arrival(reply);
        let Some((generation, index)) =
            self.handle
                .block_on(None, deadline, &arrive, &mut judge_arrival)?
        else {
            return self.time_out(None);
        };
        if index + 1 == self.parties {
            return self.release_all(generation, index);
        }
        let read = || Op::BarrierRead {
            parties: self.parties,
        };
        let mut judge = |reply| judge_passage(reply, generation);
        match self.handle.block_on(None, deadline, &read, &mut judge)? {
            Some(passed) => passed.map(|()| index).map_err(|c| self.broken(Some(c))),
            None => self.time_out(Some((generation, index))),
        }
    }

    /// Waits for all parties from async code; returns this caller's arrival index.
    /// Waits at most the [`Barrier::timeout`] given at construction, if any.
    ///
    /// # Cancel safety
    /// Not cancel safe: an arrival cannot be taken back, so dropping the future
    /// breaks the barrier, as a timeout would.
    pub async fn wait_async(&self) -> Result<u32> {
        self.wait_until_async(self.timeout.and_then(deadline_after))
            .await
    }

    /// [`Barrier::wait_async`], for at most `timeout`.
    ///
    /// # Cancel safety
    /// As [`Barrier::wait_async`].
    pub async fn wait_timeout_async(&self, timeout: Duration) -> Result<u32> {
        self.wait_until_async(deadline_after(timeout)).await
    }

    async fn wait_until_async(&self, deadline: Option<Instant>) -> Result<u32> {
        self.check()?;
        let owner = Owner::new_task();
        let arrive = || self.arrive_op(&owner);
        let mut judge_arrival = |reply| self.judge_arrival(reply);
        let Some((generation, index)) = self
            .handle
            .wait_on(None, deadline, &arrive, &mut judge_arrival)
            .await?
        else {
            return self.time_out(None);
        };
        if index + 1 == self.parties {
            return self.release_all(generation, index);
        }
        // Dropped before the generation passes: break it rather than leave the others
        // waiting for a party that is gone.
        let abort = crate::primitives::handle::OnDrop::new_async(
            &self.handle,
            Op::BarrierAbort {
                parties: self.parties,
                generation: Some(generation),
                cause: BrokenCause::Aborted,
            },
        );
        let read = || Op::BarrierRead {
            parties: self.parties,
        };
        let mut judge = |reply| judge_passage(reply, generation);
        let passed = self.handle.wait_on(None, deadline, &read, &mut judge).await;
        abort.disarm();
        match passed? {
            Some(passed) => passed.map(|()| index).map_err(|c| self.broken(Some(c))),
            None => self.time_out(Some((generation, index))),
        }
    }

    /// The last arrival: run the action, then release the generation.
    fn release_all(&self, generation: u64, index: u32) -> Result<u32> {
        if let Some(action) = &self.action {
            if catch_unwind(AssertUnwindSafe(|| action())).is_err() {
                self.handle.step(Op::BarrierAbort {
                    parties: self.parties,
                    generation: Some(generation),
                    cause: BrokenCause::ActionFailed,
                })?;
                return Err(self.broken(Some(BrokenCause::ActionFailed)));
            }
        }
        self.handle.step(Op::BarrierAdvance {
            parties: self.parties,
            generation,
        })?;
        Ok(index)
    }

    /// A wait ran out of time: break the generation unless it passed meanwhile.
    fn time_out(&self, arrival: Option<Arrival>) -> Result<u32> {
        let generation = arrival.map(|(g, _)| g);
        self.handle.step(Op::BarrierAbort {
            parties: self.parties,
            generation,
            cause: BrokenCause::TimedOut,
        })?;
        let view = self.read()?;
        if let Some((generation, index)) = arrival {
            if view.generation > generation && view.last_broken != Some(generation) {
                return Ok(index);
            }
        }
        // The first cause stands: another may have broken it before this timeout.
        Err(self.broken(view.cause.or(Some(BrokenCause::TimedOut))))
    }

    fn broken(&self, cause: Option<BrokenCause>) -> Error {
        Error::BrokenBarrier {
            name: self.name().to_owned(),
            cause: cause.unwrap_or(BrokenCause::Unknown),
        }
    }
}

/// Done once generation `generation` has passed (`Ok`) or broken (`Err`, why).
fn judge_passage(
    reply: Reply,
    generation: u64,
) -> Result<Step<std::result::Result<(), BrokenCause>>> {
    let why = |view: &BarrierView| view.cause.unwrap_or(BrokenCause::Unknown);
    match reply {
        Reply::Barrier(view) if view.generation > generation => {
            Ok(Step::Done(if view.last_broken == Some(generation) {
                Err(why(&view))
            } else {
                Ok(())
            }))
        }
        Reply::Barrier(view) if view.broken => Ok(Step::Done(Err(why(&view)))),
        Reply::Barrier(_) => Ok(Step::Wait(None)),
        other => Err(unexpected(other)),
    }
}
