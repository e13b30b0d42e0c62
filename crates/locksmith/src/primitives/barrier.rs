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
use crate::{Error, Result};

/// A barrier for a fixed number of parties: each [`Barrier::wait`] blocks until
/// `parties` callers have arrived, then all go on together and the barrier is ready
/// for the next generation.
///
/// `wait` returns the caller's arrival index, `0..parties`; the last to arrive
/// (index `parties - 1`) runs the [`Barrier::action`], once per generation, before the
/// others are released. A wait that times out, an action that panics, a party that
/// dies, [`Barrier::abort`] and [`Barrier::reset`] break the generation: its waiters
/// get [`Error::BrokenBarrier`]. A broken barrier stays broken until `reset`.
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
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("handle", &self.handle)
            .field("parties", &self.parties)
            .field("action", &self.action.is_some())
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
        }
    }

    /// Runs `action` in the last party to arrive, before the others are released.
    /// If it panics, the barrier breaks.
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
    /// # Errors
    /// [`Error::BrokenBarrier`] if the generation broke; [`Error::InvalidArgument`] for
    /// zero parties or a bad name; [`Error::Mismatch`] if the barrier exists with
    /// another number of parties.
    pub fn wait(&self) -> Result<u32> {
        self.wait_until(None)
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
        }
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<u32> {
        self.check()?;
        let owner = Owner::current_thread();
        let arrive = || self.arrive_op(&owner);
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
            Some(passed) => passed.map(|()| index).map_err(|()| self.broken()),
            None => self.time_out(Some((generation, index))),
        }
    }

    /// Waits for all parties from async code; returns this caller's arrival index.
    ///
    /// # Cancel safety
    /// Not cancel safe: an arrival cannot be taken back, so dropping the future
    /// breaks the barrier, as a timeout would.
    pub async fn wait_async(&self) -> Result<u32> {
        self.wait_until_async(None).await
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
        let abort = crate::primitives::handle::OnDrop::new(
            &self.handle,
            Op::BarrierAbort {
                parties: self.parties,
                generation: Some(generation),
            },
        );
        let read = || Op::BarrierRead {
            parties: self.parties,
        };
        let mut judge = |reply| judge_passage(reply, generation);
        let passed = self.handle.wait_on(None, deadline, &read, &mut judge).await;
        abort.disarm();
        match passed? {
            Some(passed) => passed.map(|()| index).map_err(|()| self.broken()),
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
                })?;
                return Err(self.broken());
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
        })?;
        if let Some((generation, index)) = arrival {
            let view = self.read()?;
            if view.generation > generation && view.last_broken != Some(generation) {
                return Ok(index);
            }
        }
        Err(self.broken())
    }

    fn broken(&self) -> Error {
        Error::BrokenBarrier {
            name: self.name().to_owned(),
        }
    }
}

fn judge_arrival(reply: Reply) -> Result<Step<Arrival>> {
    match reply {
        Reply::Arrived { generation, index } => Ok(Step::Done((generation, index))),
        Reply::Busy => Ok(Step::Wait(None)),
        other => Err(unexpected(other)),
    }
}

/// Done once generation `generation` has passed (`Ok`) or broken (`Err`).
fn judge_passage(reply: Reply, generation: u64) -> Result<Step<std::result::Result<(), ()>>> {
    match reply {
        Reply::Barrier(view) if view.generation > generation => {
            Ok(Step::Done(if view.last_broken == Some(generation) {
                Err(())
            } else {
                Ok(())
            }))
        }
        Reply::Barrier(view) if view.broken => Ok(Step::Done(Err(()))),
        Reply::Barrier(_) => Ok(Step::Wait(None)),
        other => Err(unexpected(other)),
    }
}
