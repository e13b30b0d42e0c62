//! `barrier`, `event` and `avg`.

use std::process::ExitCode;

use locksmith::Space;

use crate::args::{AvgAction, AvgArgs, BarrierArgs, EventAction, EventArgs};
use crate::error::{self, Failure, Outcome};
use crate::progress::Spinner;

/// `locksmith barrier NAME --parties N [--timeout D]`: prints the arrival index.
pub fn barrier(space: &Space, a: BarrierArgs) -> Outcome {
    let barrier = space.barrier(&a.name, a.parties);
    let spinner = Spinner::start(format!(
        "waiting at barrier '{}' for {} parties",
        a.name, a.parties
    ));
    let index = match a.timeout {
        Some(d) => barrier.wait_timeout(d),
        None => barrier.wait(),
    };
    drop(spinner);
    match index {
        Ok(i) => {
            println!("{i}");
            Ok(ExitCode::SUCCESS)
        }
        Err(locksmith::Error::BrokenBarrier { name, cause }) => Err(Failure::new(
            error::CONFLICT,
            format!("barrier '{name}' broke: {cause}"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// `locksmith event set|clear|wait|status NAME`.
pub fn event(space: &Space, a: EventArgs) -> Outcome {
    match a.action {
        EventAction::Set { name } => space.event(&name).set()?,
        EventAction::Clear { name } => space.event(&name).clear()?,
        EventAction::Wait { name, timeout } => {
            let event = space.event(&name);
            let set = if event.is_set()? {
                true
            } else {
                let _spinner = Spinner::start(format!("waiting for event '{name}'"));
                match timeout {
                    Some(d) => event.wait_timeout(d)?,
                    None => event.wait()?,
                }
            };
            if !set {
                return Err(Failure::new(
                    error::CONFLICT,
                    format!("timed out waiting for event '{name}'"),
                ));
            }
        }
        EventAction::Status { name } => {
            let set = space.event(&name).is_set()?;
            println!("{}", if set { "set" } else { "clear" });
            return Ok(ExitCode::from(if set {
                error::OK
            } else {
                error::CONFLICT
            }));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `locksmith avg add|get|pop NAME [VALUE]`.
pub fn avg(space: &Space, a: AvgArgs) -> Outcome {
    let mean = match a.action {
        AvgAction::Add { name, value } => {
            if !value.is_finite() {
                return Err(Failure::usage(format!("'{value}' is not a finite number")));
            }
            space.averager(&name).add(value)?;
            return Ok(ExitCode::SUCCESS);
        }
        AvgAction::Get { name } => space.averager(&name).get()?,
        AvgAction::Pop { name } => space.averager(&name).pop()?,
    };
    match mean {
        Some(m) => {
            println!("{m}");
            Ok(ExitCode::SUCCESS)
        }
        None => Ok(ExitCode::from(error::CONFLICT)),
    }
}
