//! A flag that waiters can wait for.

use std::time::{Duration, Instant};

use crate::backend::{Op, Reply};
use crate::primitives::guard::unexpected;
use crate::primitives::handle::{deadline_after, Handle, Step};
use crate::Result;

/// A flag, set or clear, that waiters wait to see set.
///
/// A waiter returns `true` if the event was set at any moment during its wait, even if
/// it was cleared again before the waiter ran (threading's semantics, gh-57711).
///
/// ```
/// # fn main() -> locksmith::Result<()> {
/// use std::time::Duration;
/// let space = locksmith::Space::open("mem:")?;
/// let ready = space.event("ready");
/// let waiter = std::thread::spawn({
///     let ready = ready.clone();
///     move || ready.wait()
/// });
/// ready.set()?;
/// assert!(waiter.join().unwrap()?);
/// ready.clear()?;
/// assert!(!ready.wait_timeout(Duration::from_millis(10))?);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Event {
    handle: Handle,
}

impl Event {
    pub(crate) fn new(handle: Handle) -> Event {
        Event { handle }
    }

    /// Tags the event, so that [`crate::Space::evict_tag`] can drop it.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        let tag = tag.into();
        self.handle.update_opts(|o| o.tag = Some(tag));
        self
    }

    /// The event's name.
    pub fn name(&self) -> &str {
        self.handle.name()
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) -> Result<()> {
        self.handle.check()?;
        let tag = self.handle.opts.tag.clone();
        self.handle.step(Op::EventSet { tag })?;
        Ok(())
    }

    /// Clears the flag.
    pub fn clear(&self) -> Result<()> {
        self.handle.check()?;
        self.handle.step(Op::EventClear)?;
        Ok(())
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> Result<bool> {
        self.handle.check()?;
        Ok(self.read()?.0)
    }

    /// Async [`Event::set`]: never blocks the executor thread on a network store.
    pub async fn set_async(&self) -> Result<()> {
        self.handle.check()?;
        let tag = self.handle.opts.tag.clone();
        self.handle.step_async(Op::EventSet { tag }).await?;
        Ok(())
    }

    /// Async [`Event::clear`].
    pub async fn clear_async(&self) -> Result<()> {
        self.handle.check()?;
        self.handle.step_async(Op::EventClear).await?;
        Ok(())
    }

    /// Async [`Event::is_set`].
    pub async fn is_set_async(&self) -> Result<bool> {
        self.handle.check()?;
        match self.handle.step_async(Op::EventRead).await? {
            Reply::Event { set, .. } => Ok(set),
            other => Err(unexpected(other)),
        }
    }

    fn read(&self) -> Result<(bool, u64)> {
        match self.handle.step(Op::EventRead)? {
            Reply::Event { set, generation } => Ok((set, generation)),
            other => Err(unexpected(other)),
        }
    }

    /// Where a wait begins, for [`Event::wait_after`]: a wait split into slices (to run
    /// signal handlers between them) measures every slice from one mark, so that a
    /// `set()` followed at once by `clear()` between two slices is not missed.
    pub fn mark(&self) -> Result<EventMark> {
        self.handle.check()?;
        let (set, generation) = self.read()?;
        Ok(EventMark { set, generation })
    }

    /// Waits at most `timeout` until the flag is set, or was set at any moment since
    /// `mark` was taken; returns whether it was.
    pub fn wait_after(&self, mark: EventMark, timeout: Duration) -> Result<bool> {
        self.handle.check()?;
        if mark.set {
            return Ok(true);
        }
        let mut judge = |reply| judge(reply, mark.generation);
        let deadline = deadline_after(timeout);
        let seen = self
            .handle
            .block_on(None, deadline, &|| Op::EventRead, &mut judge)?;
        Ok(seen.is_some())
    }

    /// The `try_` form of [`Event::wait`]: whether the flag is set now, never waiting
    /// (the same as [`Event::is_set`]).
    pub fn try_wait(&self) -> Result<bool> {
        self.handle.check()?;
        Ok(self.read()?.0)
    }

    /// Waits until the flag is set; returns `true`.
    pub fn wait(&self) -> Result<bool> {
        self.wait_until(None)
    }

    /// Waits at most `timeout` for the flag; returns whether it was set.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        self.wait_until(deadline_after(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<bool> {
        self.handle.check()?;
        let (set, since) = self.read()?;
        if set {
            return Ok(true);
        }
        let mut judge = |reply| judge(reply, since);
        let seen = self
            .handle
            .block_on(None, deadline, &|| Op::EventRead, &mut judge)?;
        Ok(seen.is_some())
    }

    /// Waits from async code until the flag is set; returns `true`.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future changes nothing.
    pub async fn wait_async(&self) -> Result<bool> {
        self.wait_until_async(None).await
    }

    /// Waits from async code at most `timeout`; returns whether the flag was set.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future changes nothing.
    pub async fn wait_timeout_async(&self, timeout: Duration) -> Result<bool> {
        self.wait_until_async(deadline_after(timeout)).await
    }

    async fn wait_until_async(&self, deadline: Option<Instant>) -> Result<bool> {
        self.handle.check()?;
        let since = match self.handle.step_async(Op::EventRead).await? {
            Reply::Event { set: true, .. } => return Ok(true),
            Reply::Event { generation, .. } => generation,
            other => return Err(unexpected(other)),
        };
        let mut judge = |reply| judge(reply, since);
        let seen = self
            .handle
            .wait_on(None, deadline, &|| Op::EventRead, &mut judge)
            .await?;
        Ok(seen.is_some())
    }
}

/// Done once the flag is set, or was set since generation `since` (and maybe cleared).
/// The state an event was in when a wait began: see [`Event::mark`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventMark {
    set: bool,
    generation: u64,
}

fn judge(reply: Reply, since: u64) -> Result<Step<()>> {
    match reply {
        Reply::Event { set, generation } if set || generation != since => Ok(Step::Done(())),
        Reply::Event { .. } => Ok(Step::Wait(None)),
        other => Err(unexpected(other)),
    }
}
