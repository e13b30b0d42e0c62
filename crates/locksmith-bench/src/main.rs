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

use locksmith_bench::harness::Ctx;
use locksmith_bench::record;
use locksmith_bench::report::{self, Machine};

const USAGE: &str = "usage:
  locksmith-bench run    [--quick] [--out DIR] [--only PATTERN]... [--redis URL]
      measure locksmith's rows and the Rust peers; writes DIR/rust.jsonl (DIR: bench/out)
      --only: keep rows whose `scenario/system` contains PATTERN (repeatable)
      --redis: Redis URL (default: $LOCKSMITH_REDIS_URL, else redis://127.0.0.1:6379/)
  locksmith-bench report [--quick] [--out DIR] [--results FILE] [--svg FILE]
      read DIR/*.jsonl; write FILE (bench/RESULTS.md) and the hand-off chart
      (default: handoff.svg beside FILE)
  locksmith-bench machine
      print the machine line the report uses";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("locksmith-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Parsed command-line options shared by the subcommands.
#[derive(Debug, Default)]
struct Opts {
    quick: bool,
    out: Option<PathBuf>,
    only: Vec<String>,
    redis: Option<String>,
    results: Option<PathBuf>,
    svg: Option<PathBuf>,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<String> {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--quick" => o.quick = true,
            "--out" => o.out = Some(value("--out")?.into()),
            "--only" => o.only.push(value("--only")?),
            "--redis" => o.redis = Some(value("--redis")?),
            "--results" => o.results = Some(value("--results")?.into()),
            "--svg" => o.svg = Some(value("--svg")?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(o)
}

fn run() -> Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return Ok(ExitCode::from(2));
    };
    match cmd.as_str() {
        "run" => cmd_run(parse(rest)?),
        "report" => cmd_report(parse(rest)?),
        "machine" => {
            let m = Machine::here();
            println!("{} CPUs ({}), {}, {}", m.nproc, m.cpu, m.kernel, m.date);
            Ok(ExitCode::SUCCESS)
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown subcommand {other:?}\n{USAGE}"),
    }
}

fn cmd_run(o: Opts) -> Result<ExitCode> {
    let out = o.out.unwrap_or_else(|| "bench/out".into());
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

fn cmd_report(o: Opts) -> Result<ExitCode> {
    let out = o.out.unwrap_or_else(|| "bench/out".into());
    let results = o.results.unwrap_or_else(|| "bench/RESULTS.md".into());
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
