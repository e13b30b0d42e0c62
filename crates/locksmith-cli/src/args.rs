//! The command line: subcommands, their options, durations and the store.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use locksmith::Space;

use crate::error::{self, Failure};

const EXAMPLES: &str = "\
Examples:
  locksmith run --lock deploy -- ./deploy.sh           # one deploy at a time
  locksmith run --lock deploy --timeout 10s -- make    # give up after 10 s (exit 1)
  locksmith run --lock cfg --shared -- cat cfg.json    # a read lock: readers share
  locksmith run --semaphore jobs --permits 4 -- gzip big.log   # like `sem -j 4`
  locksmith barrier phase1 --parties 3 --timeout 1m
  locksmith event set ready; locksmith event wait ready --timeout 30s
  locksmith avg add latency 0.12; locksmith avg pop latency
  locksmith status 'deploy*' --json
  locksmith break deploy                               # only if its holder is dead
  locksmith demo --processes 4

Store: --store URL, else $LOCKSMITH_STORE, else the embedded default.
Exit codes: 0 ok; 1 timeout or conflict; 2 usage or bad input; 3 store error;
4 break refused; run: the command's status (128+N if killed by signal N),
126 cannot execute, 127 not found.";

/// Locks, semaphores, barriers, events and averagers for shell scripts, on every scope.
#[derive(Debug, Parser)]
#[command(name = "locksmith", version, after_help = EXAMPLES)]
pub struct Cli {
    /// The store: mem:, sqlite:PATH, shm:NAME, redis://… (default: $LOCKSMITH_STORE,
    /// else the embedded default).
    #[arg(long, global = true, value_name = "URL", env = "LOCKSMITH_STORE")]
    pub store: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command while holding a lock or a semaphore permit (like flock(1), sem).
    #[command(after_help = "\
Examples:
  locksmith run --lock deploy -- ./deploy.sh
  locksmith run --lock deploy --timeout 0 -- ./deploy.sh || echo busy
  locksmith run --lock cfg --shared -- ./read-config
  locksmith run --semaphore jobs --permits 4 -- ./job.sh

Exit status: the command's own (128+N if it died of signal N); on timeout the
--conflict-exit-code (default 1); 126/127 if it cannot be run; 2 bad input; 3 store.")]
    Run(RunArgs),
    /// Wait at a barrier until PARTIES callers have arrived; prints the arrival index.
    Barrier(BarrierArgs),
    /// Set, clear, wait for or query an event.
    Event(EventArgs),
    /// Add to, read or pop a running average.
    Avg(AvgArgs),
    /// Show every primitive: holders (host, pid, since, lease end, token) and waiters.
    Status(StatusArgs),
    /// Force-release a lock whose holders are known dead (refuses a live one).
    Break(BreakArgs),
    /// Drop every primitive tagged TAG: holders lose their holds, waiters wake.
    Evict(EvictArgs),
    /// Remove a store: a shm: region, a sqlite: database with its -wal, -shm and
    /// -bell files, a Redis prefix's keys. Refused while a name is held or waited for,
    /// unless --force.
    #[command(after_help = "\
Examples:
  locksmith destroy shm:jobs
  locksmith destroy sqlite:/tmp/locks.sqlite --force

Exit status: 0 removed (or nothing there); 1 in use (without --force); 2 bad input;
3 store error.")]
    Destroy(DestroyArgs),
    /// Run every primitive across N real processes, check the results, print a table.
    Demo(DemoArgs),
    /// One process of the demo (internal).
    #[command(name = "__demo-worker", hide = true)]
    DemoWorker(DemoWorkerArgs),
}

/// `run`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["lock", "semaphore"]))]
pub struct RunArgs {
    /// Hold the lock NAME (the write side; with --shared the read side).
    #[arg(long, value_name = "NAME")]
    pub lock: Option<String>,
    /// Hold a permit of the semaphore NAME (needs --permits).
    #[arg(
        long,
        value_name = "NAME",
        requires = "permits",
        conflicts_with = "shared"
    )]
    pub semaphore: Option<String>,
    /// How many commands may hold the semaphore at once.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub permits: Option<u32>,
    /// Take the lock shared: commands with --shared run together, none with a writer.
    #[arg(long)]
    pub shared: bool,
    /// Give up after waiting this long (30s, 500ms, 2m; 0 = do not wait).
    #[arg(long, short = 'w', value_name = "D", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// The hold's lease, renewed while locksmith lives; it lapses this long after
    /// locksmith is killed.
    #[arg(long, value_name = "D", value_parser = parse_lease, default_value = "30s")]
    pub lease: Duration,
    /// Tag the hold, for `locksmith evict --tag`.
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// What to do to the command's processes the moment locksmith learns the hold was
    /// lost (its lease lapsed, or it was broken or evicted); `run` then exits 3.
    #[arg(long, value_name = "ACTION", value_enum, default_value_t = OnLost::Term)]
    pub on_lost: OnLost,
    /// The exit code when the wait times out.
    #[arg(long, short = 'E', value_name = "N", default_value_t = error::CONFLICT)]
    pub conflict_exit_code: u8,
    /// Say nothing on a timeout (the exit code still tells).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// The command and its arguments, after `--`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD",
        value_parser = clap::value_parser!(OsString)
    )]
    pub command: Vec<OsString>,
}

/// `run --on-lost`: what happens to the command when its hold is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnLost {
    /// Send SIGTERM to every process of the command's tree.
    Term,
    /// Send SIGKILL to every process of the command's tree.
    Kill,
    /// Let the command run on (it still learns of the loss through exit code 3).
    Ignore,
}

/// `barrier`.
#[derive(Debug, Args)]
pub struct BarrierArgs {
    /// The barrier's name.
    pub name: String,
    /// How many callers must arrive.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub parties: u32,
    /// Give up (and break the barrier) after waiting this long.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

/// `event`.
#[derive(Debug, Args)]
pub struct EventArgs {
    /// What to do with the event.
    #[command(subcommand)]
    pub action: EventAction,
}

/// `event` actions.
#[derive(Debug, Subcommand)]
pub enum EventAction {
    /// Set the flag and wake every waiter.
    Set {
        /// The event's name.
        name: String,
    },
    /// Clear the flag.
    Clear {
        /// The event's name.
        name: String,
    },
    /// Wait until the flag is set (exit 1 on timeout).
    Wait {
        /// The event's name.
        name: String,
        /// Give up after waiting this long.
        #[arg(long, value_name = "D", value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
    /// Print `set` (exit 0) or `clear` (exit 1).
    Status {
        /// The event's name.
        name: String,
    },
}

/// `avg`.
#[derive(Debug, Args)]
pub struct AvgArgs {
    /// What to do with the averager.
    #[command(subcommand)]
    pub action: AvgAction,
}

/// `avg` actions.
#[derive(Debug, Subcommand)]
pub enum AvgAction {
    /// Add VALUE to the average.
    Add {
        /// The averager's name.
        name: String,
        /// A finite number.
        #[arg(allow_negative_numbers = true)]
        value: f64,
    },
    /// Print the mean (exit 1, printing nothing, when there are no values).
    Get {
        /// The averager's name.
        name: String,
    },
    /// Print the mean and reset (exit 1, printing nothing, when there are no values).
    Pop {
        /// The averager's name.
        name: String,
    },
}

/// `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only names matching this pattern (`*` any run, `?` any one character).
    pub pattern: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `break`.
#[derive(Debug, Args)]
pub struct BreakArgs {
    /// The lock's name.
    pub name: String,
    /// Break it even if a holder is alive or cannot be checked.
    #[arg(long)]
    pub force: bool,
}

/// `destroy`.
#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// The store to remove (default: --store, or $LOCKSMITH_STORE; never the embedded
    /// default unless named).
    #[arg(value_name = "URL")]
    pub url: Option<String>,
    /// Remove it even while names are held or waited for: their holders lose them.
    #[arg(long)]
    pub force: bool,
}

/// `evict`.
#[derive(Debug, Args)]
pub struct EvictArgs {
    /// Drop the primitives with this tag.
    #[arg(
        long,
        value_name = "TAG",
        required_unless_present = "idle",
        conflicts_with = "idle"
    )]
    pub tag: Option<String>,
    /// Forget the idle names instead (nobody holds, waits for or has set them; no tag):
    /// their fencing tokens never go back.
    #[arg(long)]
    pub idle: bool,
}

/// `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many worker processes.
    #[arg(long, short = 'n', value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(2..=64))]
    pub processes: u32,
    /// Increments per process under the lock.
    #[arg(long, value_name = "M", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub iterations: u32,
}

/// `__demo-worker`.
#[derive(Debug, Args)]
pub struct DemoWorkerArgs {
    /// The demo's directory (logs and the counter file).
    #[arg(long)]
    pub dir: PathBuf,
    /// The run's prefix for primitive names.
    #[arg(long)]
    pub prefix: String,
    /// This worker's index.
    #[arg(long)]
    pub index: u32,
    /// How many workers.
    #[arg(long)]
    pub processes: u32,
    /// Increments under the lock.
    #[arg(long)]
    pub iterations: u32,
    /// Be the victim: take the crash lock, say so on stdout, and wait to be killed.
    #[arg(long)]
    pub victim: bool,
}

/// Parses `30s`, `500ms`, `2m`, `1h 30m` (humantime) or a bare number of seconds
/// (`0.5`); refuses negative, NaN, infinite and unitless garbage.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("'{s}' is negative: a duration must be 0 or more"));
    }
    if let Ok(secs) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("'{s}' is not a duration: use e.g. 30s, 500ms, 2m"));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("'{s}' is not a duration ({e}): use e.g. 30s, 500ms, 2m"))
}

/// The longest lease `--lease` accepts: ten years (of 365.25 days, as `10y` reads), no
/// less than the Redis store keeps; a longer one would outlive any use a lease has.
pub const MAX_LEASE: Duration = Duration::from_secs(10 * 31_557_600);

/// Parses a lease as [`parse_duration`] does, refusing one longer than [`MAX_LEASE`].
pub fn parse_lease(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > MAX_LEASE {
        return Err(format!(
            "'{s}' is too long a lease: at most 10 years (the lease is renewed while \
             locksmith runs, so a short one is enough)"
        ));
    }
    Ok(d)
}

/// Opens the store: `url` (from --store or $LOCKSMITH_STORE) or the embedded default.
/// With `warn`, says so on stderr when the default turns out to be `mem:`, which no
/// other process can see (a build of the library without a shared default store).
pub fn open(url: Option<&str>, warn: bool) -> Result<Space, Failure> {
    let opened = match url {
        Some(u) => Space::open(u),
        None => Space::open_default(),
    };
    let space = opened.map_err(|e| {
        let f = Failure::from(e);
        let what = url.unwrap_or("the default store");
        Failure::new(f.code, format!("cannot open store '{what}': {}", f.message))
    })?;
    for w in space.warnings() {
        eprintln!("locksmith: warning: {}", one_line(&w));
    }
    if warn && url.is_none() && space.url().starts_with("mem:") {
        eprintln!(
            "locksmith: warning: the default store is {}, private to this process: other \
             processes will not see it (pass --store sqlite:PATH)",
            space.url()
        );
    }
    Ok(space)
}

/// Prints a clap error as one `locksmith: …` line (help and version as clap does) and
/// returns the exit code.
pub fn report_clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(
                if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    error::USAGE
                } else {
                    error::OK
                },
            )
        }
        _ => {
            eprintln!("locksmith: {}", one_line(&e.render().to_string()));
            ExitCode::from(error::USAGE)
        }
    }
}

/// Clap's message up to its usage block, on one line, without the `error: ` prefix.
fn one_line(rendered: &str) -> String {
    let mut parts = Vec::new();
    for line in rendered.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            parts.push(line.strip_prefix("error: ").unwrap_or(line));
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0.25"), Ok(Duration::from_millis(250)));
        for bad in [
            "-1s",
            "-0.5",
            "NaN",
            "nan",
            "inf",
            "soon",
            "",
            "10 parsecs",
            "1e400",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
            assert!(parse_lease(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn clap_errors_become_one_line() {
        let e = Cli::try_parse_from(["locksmith", "run", "--lock", "x", "--timeout", "-1s"])
            .unwrap_err();
        let line = one_line(&e.render().to_string());
        assert!(!line.contains('\n'));
        assert!(line.contains("negative"), "{line}");
    }

    #[test]
    fn run_needs_lock_or_semaphore() {
        assert!(Cli::try_parse_from(["locksmith", "run", "--", "true"]).is_err());
        assert!(
            Cli::try_parse_from(["locksmith", "run", "--semaphore", "s", "--", "true"]).is_err()
        );
        assert!(Cli::try_parse_from([
            "locksmith",
            "run",
            "--lock",
            "a",
            "--semaphore",
            "b",
            "--permits",
            "2",
            "--",
            "true"
        ])
        .is_err());
        let cli =
            Cli::try_parse_from(["locksmith", "run", "--lock", "a", "--", "ls", "-l"]).unwrap();
        match cli.command {
            Command::Run(r) => {
                assert_eq!(r.command, vec![OsString::from("ls"), OsString::from("-l")])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn negative_average_values_parse() {
        let cli = Cli::try_parse_from(["locksmith", "avg", "add", "x", "-1.5"]).unwrap();
        assert!(
            matches!(cli.command, Command::Avg(AvgArgs { action: AvgAction::Add { value, .. } }) if value == -1.5)
        );
    }
}
