//! `locksmith-bench`: runs the Rust side of the comparison and writes the report.
//!
//! ```text
//! locksmith-bench run    [--quick] [--out DIR] [--only PATTERN]... [--redis URL]
//! locksmith-bench report [--quick] [--out DIR] [--results FILE] [--svg FILE]
//! locksmith-bench machine
//! ```

use std::fs;
use std::io::BufWriter;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};

use locksmith_bench::harness::Ctx;
use locksmith_bench::record;
use locksmith_bench::report::{self, Machine};

/// Runs the Rust side of the comparison and writes the report.
#[derive(Debug, Parser)]
#[command(name = "locksmith-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure locksmith's rows and the Rust peers; writes DIR/rust.jsonl.
    Run(RunArgs),
    /// Read DIR/*.jsonl; write the results file and the hand-off chart.
    Report(ReportArgs),
    /// Print the machine line the report uses.
    Machine,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Fewer, shorter samples.
    #[arg(long)]
    quick: bool,
    /// Where the results go.
    #[arg(long, value_name = "DIR", default_value = "bench/out")]
    out: PathBuf,
    /// Keep only rows whose `scenario/system` contains PATTERN (repeatable).
    #[arg(long, value_name = "PATTERN")]
    only: Vec<String>,
    /// The Redis URL (default: $LOCKSMITH_REDIS_URL, else redis://127.0.0.1:6379/).
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// The results came from a quick run.
    #[arg(long)]
    quick: bool,
    /// Where the results are.
    #[arg(long, value_name = "DIR", default_value = "bench/out")]
    out: PathBuf,
    /// The report to write.
    #[arg(long, value_name = "FILE", default_value = "bench/RESULTS.md")]
    results: PathBuf,
    /// The hand-off chart to write (default: handoff.svg beside the report).
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run(a) => cmd_run(a),
        Command::Report(a) => cmd_report(a),
        Command::Machine => {
            let m = Machine::here();
            println!("{} CPUs ({}), {}, {}", m.nproc, m.cpu, m.kernel, m.date);
            Ok(ExitCode::SUCCESS)
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("locksmith-bench: {e:#}");
        ExitCode::from(2)
    })
}

fn cmd_run(o: RunArgs) -> Result<ExitCode> {
    let out = o.out;
    let scratch = out.join("scratch");
    fs::create_dir_all(&scratch).with_context(|| format!("create {}", scratch.display()))?;
    // When and under what load the run started: the report quotes these, not its own time.
    let here = Machine::here();
    let meta = serde_json::json!({ "date": here.date, "load": here.load, "quick": o.quick });
    fs::write(out.join("run.json"), meta.to_string())
        .with_context(|| format!("write {}", out.join("run.json").display()))?;
    let path = out.join("rust.jsonl");
    let file = fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let redis = o
        .redis
        .or_else(|| std::env::var("LOCKSMITH_REDIS_URL").ok())
        .filter(|u| !u.is_empty())
        .or_else(|| Some("redis://127.0.0.1:6379/".into()));
    let mut ctx = Ctx::new(
        o.quick,
        scratch.clone(),
        redis,
        o.only,
        Box::new(BufWriter::new(file)),
    );
    eprintln!(
        "locksmith-bench run{}: writing {}",
        if o.quick { " --quick" } else { "" },
        path.display()
    );
    locksmith_bench::locksmith_rows::run(&mut ctx);
    locksmith_bench::peers::run(&mut ctx);
    let (rows, failures) = (ctx.rows(), ctx.failures());
    drop(ctx);
    let _ = fs::remove_dir_all(&scratch);
    eprintln!("{rows} rows, {failures} failed");
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn cmd_report(o: ReportArgs) -> Result<ExitCode> {
    let (out, results) = (o.out, o.results);
    let svg = o
        .svg
        .unwrap_or_else(|| results.with_file_name("handoff.svg"));
    let (recs, bad) =
        record::read_dir(&out).with_context(|| format!("read results in {}", out.display()))?;
    if recs.is_empty() {
        bail!(
            "no results in {}: run `locksmith-bench run` first",
            out.display()
        );
    }
    let mut machine = Machine::here();
    if let Some(meta) = fs::read_to_string(out.join("run.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    {
        if let Some(d) = meta.get("date").and_then(|v| v.as_str()) {
            machine.date = d.to_string();
        }
        if let Some(l) = meta.get("load").and_then(|v| v.as_str()) {
            machine.load = l.to_string();
        }
    }
    let svg_name = match (svg.parent(), results.parent()) {
        (Some(a), Some(b)) if a == b => svg
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| svg.display().to_string()),
        _ => svg.display().to_string(),
    };
    let md = report::results_md(&recs, &bad, &machine, o.quick, &svg_name);
    fs::write(&results, md).with_context(|| format!("write {}", results.display()))?;
    fs::write(&svg, report::handoff_svg(&recs, &machine))
        .with_context(|| format!("write {}", svg.display()))?;
    for b in &bad {
        eprintln!("warning: {}: {}", b.place, b.error);
    }
    eprintln!(
        "wrote {} and {}: {}",
        results.display(),
        svg.display(),
        report::summary(&recs)
    );
    Ok(ExitCode::SUCCESS)
}
