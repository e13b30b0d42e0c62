//! The command's failures and their exit codes.

use std::fmt;
use std::process::ExitCode;

/// Success.
pub const OK: u8 = 0;
/// A wait ran out of time or met a conflict (the default of `run --conflict-exit-code`),
/// an event that is not set (`event status`), an empty averager, a broken barrier, a
/// failed demo check.
pub const CONFLICT: u8 = 1;
/// Usage or bad input: an unknown option, a bad duration, URL or name, a missing command,
/// an `avg add` that would overflow the sum.
pub const USAGE: u8 = 2;
/// The store failed, a hold was lost while it was held, or the name's record is damaged.
pub const STORE: u8 = 3;
/// `break` refused: a holder is alive, or cannot be checked (another host).
pub const REFUSED: u8 = 4;
/// `run`: the command was found but could not be executed.
pub const CANNOT_EXECUTE: u8 = 126;
/// `run`: the command was not found.
pub const NOT_FOUND: u8 = 127;

/// A failure of the command: one line for stderr and an exit code.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// What went wrong, in one line, without the `locksmith: ` prefix.
    pub message: String,
}

impl Failure {
    /// A failure with `code` and `message`.
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// Bad input (exit code 2).
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(USAGE, message)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl From<locksmith::Error> for Failure {
    fn from(e: locksmith::Error) -> Failure {
        use locksmith::Error as E;
        let code = match &e {
            E::InvalidArgument(_) | E::Unsupported(_) | E::Mismatch { .. } | E::Overflow { .. } => {
                USAGE
            }
            E::Timeout | E::BrokenBarrier { .. } | E::Busy { .. } => CONFLICT,
            _ => STORE,
        };
        Failure::new(code, e.to_string())
    }
}

/// What the subcommands return.
pub type Outcome = Result<ExitCode, Failure>;
