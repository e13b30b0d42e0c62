//! A running average kept in the store.

use std::time::Duration;

use crate::backend::model::Millis;
use crate::backend::{Op, Reply};
use crate::primitives::guard::unexpected;
use crate::primitives::handle::Handle;
use crate::{Error, Result};

/// diskcache's `Averager`: a total and a count, updated atomically, so that many
/// processes can feed one average (of latencies, say).
///
/// ```
/// # fn main() -> locksmith::Result<()> {
/// let space = locksmith::Space::open("mem:")?;
/// let latency = space.averager("latency");
/// assert_eq!(latency.get()?, None);
/// for v in [0.080, 0.120, 0.160] {
///     latency.add(v)?;
/// }
/// assert!((latency.pop()?.unwrap() - 0.12).abs() < 1e-12);
/// assert_eq!(latency.get()?, None);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Averager {
    handle: Handle,
    expire: Option<Duration>,
}

impl Averager {
    pub(crate) fn new(handle: Handle) -> Averager {
        Averager {
            handle,
            expire: None,
        }
    }

    /// The average is dropped `expire` after the last `add` (diskcache's `expire`).
    pub fn expire(mut self, expire: Duration) -> Self {
        self.expire = Some(expire);
        self
    }

    /// Tags the averager, so that [`crate::Space::evict_tag`] can drop it.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        let tag = tag.into();
        self.handle.update_opts(|o| o.tag = Some(tag));
        self
    }

    /// The averager's name.
    pub fn name(&self) -> &str {
        self.handle.name()
    }

    /// Adds a value.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a NaN or infinite value.
    pub fn add(&self, value: f64) -> Result<()> {
        self.handle.check()?;
        if !value.is_finite() {
            return Err(Error::invalid(format!("cannot average {value}")));
        }
        let expire = self
            .expire
            .map(|d| d.as_millis().clamp(1, u128::from(u64::MAX)) as Millis);
        let tag = self.handle.opts.tag.clone();
        self.handle.step(Op::AvgAdd { value, expire, tag })?;
        Ok(())
    }

    /// The average of the values added so far; `None` if there are none.
    pub fn get(&self) -> Result<Option<f64>> {
        self.average(Op::AvgGet)
    }

    /// The average, removing it; `None` if there are no values.
    pub fn pop(&self) -> Result<Option<f64>> {
        self.average(Op::AvgPop)
    }

    /// Async [`Averager::add`]: never blocks the executor thread on a network store.
    pub async fn add_async(&self, value: f64) -> Result<()> {
        self.handle.check()?;
        if !value.is_finite() {
            return Err(Error::invalid(format!("cannot average {value}")));
        }
        let expire = self
            .expire
            .map(|d| d.as_millis().clamp(1, u128::from(u64::MAX)) as Millis);
        let tag = self.handle.opts.tag.clone();
        self.handle
            .step_async(Op::AvgAdd { value, expire, tag })
            .await?;
        Ok(())
    }

    /// Async [`Averager::get`].
    pub async fn get_async(&self) -> Result<Option<f64>> {
        self.average_async(Op::AvgGet).await
    }

    /// Async [`Averager::pop`].
    pub async fn pop_async(&self) -> Result<Option<f64>> {
        self.average_async(Op::AvgPop).await
    }

    async fn average_async(&self, op: Op) -> Result<Option<f64>> {
        self.handle.check()?;
        match self.handle.step_async(op).await? {
            Reply::Average(avg) => Ok(avg),
            other => Err(unexpected(other)),
        }
    }

    fn average(&self, op: Op) -> Result<Option<f64>> {
        self.handle.check()?;
        match self.handle.step(op)? {
            Reply::Average(avg) => Ok(avg),
            other => Err(unexpected(other)),
        }
    }
}
