//! The one error type of locksmith.

use std::fmt;

/// What can go wrong in locksmith.
///
/// Every variant can be matched, and each has an errno-like code ([`Error::errno`]) for
/// callers that speak POSIX, such as the `runtime.sync` style placed primitives.
///
/// An operation that returns an error changes nothing: the primitive's state is as it
/// was before the call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A wait ran out of time (`ETIMEDOUT`).
    ///
    /// Most timed waits return `Ok(None)` or `Ok(false)` instead; this variant is for
    /// the forms that report a timeout as an error, like the placed shared-memory mutex.
    #[error("timed out")]
    Timeout,

    /// The caller already holds this non-recursive lock; waiting would never end
    /// (`EDEADLK`).
    #[error("'{name}' is already held by this owner: acquiring it again would deadlock")]
    WouldDeadlock {
        /// The primitive's name.
        name: String,
    },

    /// A blocking wait on the thread of a current-thread async runtime, for a
    /// primitive that an async task (or an acquisition-owned hold) of this process
    /// holds: the task could give it back only on the thread the wait blocks, so the
    /// wait would never end (`EDEADLK`). Nothing changes; use the `_async` form.
    #[error(
        "'{name}' is held by an async task of this process, and a blocking wait on the \
         thread of a current-thread async runtime would stop the tasks that must release it: \
         use the _async form"
    )]
    RuntimeDeadlock {
        /// The primitive's name.
        name: String,
    },

    /// Release of something that is not held (`EPERM`).
    #[error("'{name}' is not held")]
    NotHeld {
        /// The primitive's name.
        name: String,
    },

    /// Release by someone who is not the holder (`EPERM`).
    #[error("'{name}' is held by another owner")]
    NotOwner {
        /// The primitive's name.
        name: String,
    },

    /// A bounded semaphore was released more often than it was acquired (`EOVERFLOW`).
    #[error("'{name}' was released too many times")]
    TooManyReleases {
        /// The primitive's name.
        name: String,
    },

    /// The barrier was reset, aborted, or a party timed out or died (`EPIPE`).
    #[error("barrier '{name}' is broken: {cause}")]
    BrokenBarrier {
        /// The barrier's name.
        name: String,
        /// Why it broke.
        cause: BrokenCause,
    },

    /// The hold ended before it was released: its lease lapsed, or it was
    /// force-released ([`Space::force_release`](crate::Space::force_release)) or evicted
    /// ([`Space::evict_tag`](crate::Space::evict_tag)); somebody else may have held it
    /// since (`ENOLCK`).
    #[error("the hold of '{name}' ended before its release ({why}): somebody else may have held it since")]
    LeaseLost {
        /// The primitive's name.
        name: String,
        /// What ended it, as far as this process can tell: a hold without a lease was
        /// force-released or evicted; one with a lease may also have lapsed.
        why: String,
    },

    /// A name is already used by a primitive of another kind or with other parameters
    /// (`EEXIST`). A name's kind and parameters are fixed by its first use, whether or
    /// not it is in use now, until it is removed on purpose
    /// ([`Space::remove`](crate::Space::remove), [`Space::evict_tag`](crate::Space::evict_tag)).
    #[error("'{name}' is {found}, not {wanted}")]
    Mismatch {
        /// The primitive's name.
        name: String,
        /// What the caller asked for, e.g. "a Lock".
        wanted: String,
        /// What the store holds under that name, e.g. "a Semaphore of 3".
        found: String,
    },

    /// [`Space::remove`](crate::Space::remove) of a name that is in use: held, waited
    /// for, set (an event), filling or broken (a barrier) or averaging (`EBUSY`).
    #[error("'{name}' is in use: it can be removed only while idle")]
    Busy {
        /// The primitive's name.
        name: String,
    },

    /// An [`Averager`](crate::Averager) add whose sum would overflow to infinity
    /// (`ERANGE`): the value was not added, and the average is as it was.
    #[error("adding that value to averager '{name}' would overflow its sum: nothing was added")]
    Overflow {
        /// The averager's name.
        name: String,
    },

    /// The store's record of `name` cannot be decoded (`EBADMSG`). Only that name is
    /// affected: every other name works, the record is listed by
    /// [`Space::names`](crate::Space::names), and
    /// [`Space::force_release`](crate::Space::force_release) resets it (keeping its
    /// fencing counter).
    #[error("the record of '{name}' is damaged ({reason}): force-release it to reset it")]
    Damaged {
        /// The primitive's name.
        name: String,
        /// Why it does not decode.
        reason: String,
    },

    /// Bad input: an empty or oversized name, zero parties, a negative timeout… (`EINVAL`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The URL names a backend that does not exist or is not built in (`ENOTSUP`).
    #[error("unsupported store: {0}")]
    Unsupported(String),

    /// The store failed: I/O, a corrupt or foreign file, a server that is down (`EIO`).
    #[error("backend error: {0}")]
    Backend(#[source] BackendError),
}

impl Error {
    /// The errno that best matches this error, as the POSIX functions it mirrors
    /// would report it.
    ///
    /// ```
    /// use locksmith::Error;
    /// let e = Error::NotHeld { name: "deploy".into() };
    /// assert_eq!(e.errno(), libc::EPERM);
    /// ```
    pub fn errno(&self) -> i32 {
        match self {
            Error::Timeout => libc::ETIMEDOUT,
            Error::WouldDeadlock { .. } | Error::RuntimeDeadlock { .. } => libc::EDEADLK,
            Error::NotHeld { .. } | Error::NotOwner { .. } => libc::EPERM,
            Error::TooManyReleases { .. } => libc::EOVERFLOW,
            Error::BrokenBarrier { .. } => libc::EPIPE,
            Error::LeaseLost { .. } => libc::ENOLCK,
            Error::Mismatch { .. } => libc::EEXIST,
            Error::Busy { .. } => libc::EBUSY,
            Error::Overflow { .. } => libc::ERANGE,
            Error::Damaged { .. } => libc::EBADMSG,
            Error::InvalidArgument(_) => libc::EINVAL,
            Error::Unsupported(_) => libc::ENOTSUP,
            Error::Backend(_) => libc::EIO,
        }
    }

    /// A [`Error::Backend`] from anything that explains itself.
    pub fn backend(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        Error::Backend(BackendError(err.into()))
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Error {
        Error::InvalidArgument(msg.into())
    }
}

/// Why a barrier broke ([`Error::BrokenBarrier`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum BrokenCause {
    /// [`Barrier::abort`](crate::Barrier::abort), or an async wait dropped before
    /// its generation passed.
    Aborted,
    /// [`Barrier::reset`](crate::Barrier::reset) while parties waited.
    Reset,
    /// A party's wait ran out of time.
    TimedOut,
    /// A party arrived with another number of parties (its own call is
    /// [`Error::Mismatch`]).
    PartiesMismatch,
    /// Some parties of the generation passed an action and others did not (the
    /// action runs in whichever process arrives last, so all or none must have one).
    ActionMismatch,
    /// The action panicked.
    ActionFailed,
    /// A party's process died while it waited.
    PartyDied,
    /// Not recorded (a placed barrier, or a store written by an older build).
    Unknown,
}

impl fmt::Display for BrokenCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BrokenCause::Aborted => "it was aborted",
            BrokenCause::Reset => "it was reset",
            BrokenCause::TimedOut => "a party's wait timed out",
            BrokenCause::PartiesMismatch => "a party arrived with another number of parties",
            BrokenCause::ActionMismatch => "some parties passed an action and others did not",
            BrokenCause::ActionFailed => "the action panicked",
            BrokenCause::PartyDied => "a party's process died",
            BrokenCause::Unknown => "the cause was not recorded",
        })
    }
}

impl BrokenCause {
    /// The short name the Redis script stores.
    pub(crate) fn code(self) -> &'static str {
        match self {
            BrokenCause::Aborted => "abort",
            BrokenCause::Reset => "reset",
            BrokenCause::TimedOut => "timeout",
            BrokenCause::PartiesMismatch => "parties",
            BrokenCause::ActionMismatch => "action",
            BrokenCause::ActionFailed => "panic",
            BrokenCause::PartyDied => "died",
            BrokenCause::Unknown => "unknown",
        }
    }

    /// The cause [`BrokenCause::code`] names; `Unknown` for anything else.
    pub(crate) fn from_code(code: &str) -> BrokenCause {
        [
            BrokenCause::Aborted,
            BrokenCause::Reset,
            BrokenCause::TimedOut,
            BrokenCause::PartiesMismatch,
            BrokenCause::ActionMismatch,
            BrokenCause::ActionFailed,
            BrokenCause::PartyDied,
        ]
        .into_iter()
        .find(|c| c.code() == code)
        .unwrap_or(BrokenCause::Unknown)
    }
}

/// The cause of an [`Error::Backend`]: the store's own error, kept for its message and
/// source chain.
pub struct BackendError(Box<dyn std::error::Error + Send + Sync>);

impl BackendError {
    /// The store's own error.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Debug for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// `Result<T, locksmith::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
