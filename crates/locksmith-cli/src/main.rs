//! The `locksmith` command: flock(1) and sem for every scope, observability, and a
//! demo that checks every primitive across real processes.
//!
//! The binary is thin: argument parsing here, one module per group of subcommands,
//! all the synchronization in the `locksmith` library. Exit codes are in
//! [`error`]; the manual is the section "The `locksmith` command" of the project's
//! README.
#![warn(missing_docs, missing_debug_implementations)]

mod args;
mod demo;
mod error;
mod inspect;
mod prims;
mod progress;
mod run;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::error::{Failure, Outcome};

fn main() -> ExitCode {
    let outcome = match Cli::try_parse() {
        Ok(cli) => dispatch(cli),
        Err(e) => Ok(args::report_clap_error(e)),
    };
    outcome.unwrap_or_else(|f| {
        eprintln!("locksmith: {}", f.message);
        ExitCode::from(f.code)
    })
}

fn dispatch(cli: Cli) -> Outcome {
    let store = cli.store.as_deref();
    // The demo explains a private store itself; everyone else is warned by `open`.
    let warn = !matches!(cli.command, Command::Demo(_) | Command::DemoWorker(_));
    // `run` splits into two processes before anything else starts a thread, and
    // opens the store itself (see run.rs).
    let command = match cli.command {
        Command::Run(a) => return run::run(store, a),
        // It opens (and removes) the store itself.
        Command::Destroy(a) => return inspect::destroy(store, a),
        other => other,
    };
    let space = args::open(store, warn)?;
    match command {
        Command::Run(_) => Err(Failure::usage("run was dispatched twice")),
        Command::Barrier(a) => prims::barrier(&space, a),
        Command::Event(a) => prims::event(&space, a),
        Command::Avg(a) => prims::avg(&space, a),
        Command::Status(a) => inspect::status(&space, a),
        Command::Break(a) => inspect::break_(&space, a),
        Command::Evict(a) => inspect::evict(&space, a),
        Command::Destroy(_) => Err(Failure::usage("destroy was dispatched twice")),
        Command::Demo(a) => demo::demo(&space, a),
        Command::DemoWorker(a) => demo::worker(&space, a),
    }
}
