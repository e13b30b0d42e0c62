//! Turns the JSON lines of a run into `bench/RESULTS.md` and the hand-off SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::record::{BadLine, Record};
use crate::scenario::{self, Better, Scenario};
use crate::svg::{bar_chart, fmt_tick, Bar};

/// One speed target named in a backend issue, checked against the rows of a run.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The issue that states it.
    pub issue: u32,
    /// The target in words.
    pub text: &'static str,
    /// Scenario and system of the row being judged.
    pub ours: (&'static str, &'static str),
    /// Scenario and system of the row it is compared with; `None` for an absolute bound.
    pub peer: Option<(&'static str, &'static str)>,
    /// The peer's value is multiplied by this before comparing (unit changes, e.g. two
    /// round trips in ns to one round trip in µs).
    pub peer_scale: f64,
    /// Required speed factor: for a time, peer / ours ≥ need; for a rate, ours / peer ≥
    /// need. For an absolute bound (no peer): ours ≤ need (times) or ≥ need (rates).
    pub need: f64,
}

const fn t(
    issue: u32,
    text: &'static str,
    ours: (&'static str, &'static str),
    peer: Option<(&'static str, &'static str)>,
    peer_scale: f64,
    need: f64,
) -> Target {
    Target {
        issue,
        text,
        ours,
        peer,
        peer_scale,
        need,
    }
}

use scenario::UNCONTENDED as U;
use scenario::{ASYNC as A, CONTENTION as C, HANDOFF as H, NAMES as N, PINGPONG as P};
use scenario::{PYTHON as PY, RATIO};

/// A Python target (issue 13): a paired row's ratio ours / peer must be at most `most`.
const fn py(text: &'static str, row: &'static str, most: f64) -> Target {
    t(13, text, (PY, row), None, 1.0, most)
}

/// Every speed target of issues 3, 4, 7, 8 and 13, by the exact system names rows must
/// use.
pub const TARGETS: &[Target] = &[
    t(
        3,
        "shm Lock uncontended within 1.5× of parking_lot::Mutex",
        (U, "locksmith shm"),
        Some((U, "parking_lot::Mutex")),
        1.0,
        1.0 / 1.5,
    ),
    t(
        3,
        "shm Lock uncontended no slower than a process-shared pthread mutex",
        (U, "locksmith shm"),
        Some((U, "pthread mutex (PROCESS_SHARED)")),
        1.0,
        1.0,
    ),
    t(
        3,
        "shm two-process contention at least the pthread mutex's cycles/s",
        (C, "locksmith shm"),
        Some((C, "pthread mutex (PROCESS_SHARED)")),
        1.0,
        1.0,
    ),
    t(
        3,
        "shm Event/Semaphore ping-pong within 1.2× of sem_post/sem_wait",
        (P, "locksmith shm"),
        Some((P, "POSIX sem_init(pshared=1)")),
        1.0,
        1.0 / 1.2,
    ),
    t(
        4,
        "mem async acquire+release within 1.5× of tokio::sync::Mutex",
        (A, "locksmith mem"),
        Some((A, "tokio::sync::Mutex")),
        1.0,
        1.0 / 1.5,
    ),
    t(
        4,
        "mem run(f) at least 20× Twisted DeferredLock.run",
        (A, "locksmith mem run(f)"),
        Some((A, "Twisted DeferredLock.run")),
        1.0,
        20.0,
    ),
    t(
        4,
        "shm: space async hand-off within 1.5× of its blocking hand-off",
        (H, "locksmith shm Space async"),
        Some((H, "locksmith shm Space")),
        1.0,
        1.0 / 1.5,
    ),
    t(
        4,
        "sqlite async hand-off within 1.5× of sqlite blocking hand-off",
        (H, "locksmith sqlite async"),
        Some((H, "locksmith sqlite")),
        1.0,
        1.0 / 1.5,
    ),
    t(
        7,
        "redis Lock at least 3× redis-py Lock",
        (U, "locksmith redis"),
        Some((U, "redis-py Lock")),
        1.0,
        3.0,
    ),
    t(
        7,
        "redis Lock at least 3× python-redis-lock",
        (U, "locksmith redis"),
        Some((U, "python-redis-lock")),
        1.0,
        3.0,
    ),
    t(
        7,
        "redis Lock within 1.3× of two redis-benchmark round trips",
        (U, "locksmith redis"),
        Some((U, "redis: 2 round trips (PING, PING)")),
        1.0,
        1.0 / 1.3,
    ),
    t(
        7,
        "redis hand-off median within 3 Redis round trips",
        (H, "locksmith redis"),
        Some((U, "redis: 2 round trips (PING, PING)")),
        0.5 / 1000.0,
        1.0 / 3.0,
    ),
    t(
        8,
        "sqlite Lock within 1.3× of the floor of two WAL transactions",
        (U, "locksmith sqlite"),
        Some((U, "SQLite floor: 2 WAL transactions")),
        1.0,
        1.0 / 1.3,
    ),
    t(
        8,
        "the SQLite floor is at least 4.5× python-diskcache Lock",
        (U, "SQLite floor: 2 WAL transactions"),
        Some((U, "python-diskcache Lock")),
        1.0,
        4.5,
    ),
    t(
        8,
        "sqlite hand-off median under 100 µs",
        (H, "locksmith sqlite"),
        None,
        1.0,
        100.0,
    ),
    t(
        8,
        "sqlite cost per op flat from 10 to 1,000,000 names (read: within 1.25×)",
        (N, "locksmith sqlite @1000000 names"),
        Some((N, "locksmith sqlite @10 names")),
        1.0,
        1.0 / 1.25,
    ),
    py(
        "locksmith.sync.Mutex acquire()+release() at most multiprocessing.Lock's",
        "locksmith.sync.Mutex acquire()+release()",
        1.0,
    ),
    py(
        "locksmith.sync.Mutex `with` at most 0.6× multiprocessing.Lock's `with`",
        "locksmith.sync.Mutex with",
        0.6,
    ),
    py(
        "the multiprocessing Lock's acquire()+release() at most multiprocessing.Lock's",
        "locksmith.multiprocessing Lock acquire()+release()",
        1.0,
    ),
    py(
        "the multiprocessing Lock's `with` at most 0.6× multiprocessing.Lock's `with`",
        "locksmith.multiprocessing Lock with",
        0.6,
    ),
    py(
        "locksmith.threading.Lock acquire()+release() within 1.5× of threading.Lock",
        "locksmith.threading.Lock acquire()+release()",
        1.5,
    ),
    py(
        "locksmith.threading.Lock `with` within 1.5× of threading.Lock",
        "locksmith.threading.Lock with",
        1.5,
    ),
    py(
        "`async with locksmith.asyncio.Lock()` at most asyncio.Lock's",
        "locksmith.asyncio.Lock async with",
        1.0,
    ),
    py(
        "a named shm: Lock within 2× of multiprocessing.Lock",
        "locksmith shm: Lock (named) acquire()+release()",
        2.0,
    ),
    py(
        "a sqlite: Lock at least 5× faster than diskcache.Lock",
        "locksmith sqlite: Lock",
        1.0 / 5.0,
    ),
    py(
        "a redis: Lock at least 1.5× faster than redis-py's Lock",
        "locksmith redis: Lock",
        1.0 / 1.5,
    ),
    py(
        "DeferredLock.run at least 3× faster than Twisted's",
        "locksmith.twisted.DeferredLock.run",
        1.0 / 3.0,
    ),
    py(
        "placed Semaphore ping-pong within 1.2× of multiprocessing.Semaphore's",
        "locksmith.sync.Semaphore ping-pong",
        1.2,
    ),
];

/// A value with its unit (a ratio as `0.52×`).
fn with_unit(v: f64, unit: &str) -> String {
    if unit == RATIO {
        format!("{}×", num(v))
    } else {
        format!("{} {unit}", num(v))
    }
}

/// The machine and moment a report describes.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Logical CPUs available.
    pub nproc: usize,
    /// CPU model name.
    pub cpu: String,
    /// Kernel name and release.
    pub kernel: String,
    /// UTC date and time.
    pub date: String,
    /// Load averages (1, 5, 15 min) from /proc/loadavg when the run started: other work
    /// sharing the machine.
    pub load: String,
}

impl Machine {
    /// Reads the machine this process runs on.
    pub fn here() -> Machine {
        let nproc = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        Machine {
            nproc,
            cpu,
            kernel: kernel(),
            date: utc_now(),
            load: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|| "unknown".into()),
        }
    }
}

fn kernel() -> String {
    // SAFETY: utsname is plain old data; uname fills it and NUL-terminates each field.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown kernel".into();
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!("{} {}", field(&u.sysname), field(&u.release))
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    utc(std::time::SystemTime::now())
}

/// `t` as `YYYY-MM-DD HH:MM UTC`.
fn utc(t: std::time::SystemTime) -> String {
    // RFC 3339 is `YYYY-MM-DDTHH:MM:SSZ`.
    let rfc = humantime::format_rfc3339_seconds(t).to_string();
    format!("{} {} UTC", &rfc[..10], &rfc[11..16])
}

/// Number with about three significant digits.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(num).unwrap_or_else(|| "—".into())
}

/// Speed factor of `ours` over `peer` for a scenario: > 1 means `ours` is faster.
fn speed(better: Better, ours: f64, peer: f64) -> f64 {
    match better {
        Better::Lower => peer / ours,
        Better::Higher => ours / peer,
    }
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Finds the row of a scenario with an exact system name (the last one wins).
fn find<'a>(recs: &'a [Record], scenario_id: &str, system: &str) -> Option<&'a Record> {
    recs.iter()
        .rev()
        .find(|r| !r.skipped && r.scenario == scenario_id && r.system == system)
}

/// Renders RESULTS.md. `svg_name` is the chart's file name relative to RESULTS.md.
pub fn results_md(
    recs: &[Record],
    bad: &[BadLine],
    machine: &Machine,
    quick: bool,
    svg_name: &str,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# locksmith benchmark results\n");
    let _ = writeln!(
        s,
        "Written by `bench/compare.sh{}` on **{}**. Machine: **{} CPUs ({})**, {}; load \
         average (1/5/15 min) when the run started: {} (the machine is shared, so \
         compare rows of one run, not numbers across runs).{}\n",
        if quick { " --quick" } else { "" },
        machine.date,
        machine.nproc,
        machine.cpu,
        machine.kernel,
        machine.load,
        if quick {
            " **Quick smoke run: few samples, numbers are indicative only.**"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "How to read: every number is a **median** over `n` samples, with the 10th and 90th \
         percentiles as its spread (and the 99th for latencies). For ns/op rows one sample \
         is one timed batch of operations; for latencies one sample is one hand-off or round \
         trip; for cycles/s one sample is one timed run. `×` columns give how many times \
         faster the named locksmith row is than this row (above 1: locksmith is faster), \
         computed per scenario. Rust peers are timed by `locksmith-bench`, Python peers by \
         the scripts in `bench/python/`, in the same run on the same machine.\n"
    );

    // Targets.
    let _ = writeln!(s, "## Targets from the backend issues\n");
    let _ = writeln!(
        s,
        "| issue | target | measured | at p10 | needed | verdict |\n| --- | --- | --- | --- | --- | --- |"
    );
    for tg in TARGETS {
        let sc = scenario::find(tg.ours.0);
        let better = sc.map(|s| s.better).unwrap_or(Better::Lower);
        let ours = find(recs, tg.ours.0, tg.ours.1);
        let (measured, at_p10, need, verdict) = match (ours, tg.peer) {
            (None, _) => (
                "—".to_string(),
                "—".to_string(),
                need_text(tg, better),
                format!("pending: no `{}` row yet", tg.ours.1),
            ),
            (Some(o), None) => {
                let ok = match better {
                    Better::Lower => o.median <= tg.need,
                    Better::Higher => o.median >= tg.need,
                };
                (
                    with_unit(o.median, &o.unit),
                    o.p10
                        .map(|v| with_unit(v, &o.unit))
                        .unwrap_or_else(|| "—".into()),
                    need_text(tg, better),
                    verdict(ok),
                )
            }
            (Some(o), Some(p)) => match find(recs, p.0, p.1) {
                None => (
                    "—".to_string(),
                    "—".to_string(),
                    need_text(tg, better),
                    format!("pending: no `{}` row in this run", p.1),
                ),
                Some(pr) => {
                    let f = speed(better, o.median, pr.median * tg.peer_scale);
                    let f10 = match (o.p10, pr.p10) {
                        (Some(a), Some(b)) => {
                            format!("{:.2}×", speed(better, a, b * tg.peer_scale))
                        }
                        _ => "—".into(),
                    };
                    (
                        format!("{:.2}×", f),
                        f10,
                        need_text(tg, better),
                        verdict(f >= tg.need),
                    )
                }
            },
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            tg.issue,
            md_cell(tg.text),
            measured,
            at_p10,
            need,
            verdict
        );
    }
    let _ = writeln!(
        s,
        "\n`measured` is the speed factor of the first row over the second (above 1: faster), \
         from medians; the verdict uses it. `at p10` is the same factor from the 10th \
         percentiles (for a rate, the slower runs), the least disturbed samples on a busy \
         machine: where the two disagree, the machine's load decided, not the systems. \
         Issue 13's rows are Python's paired ratios instead (table {}): `measured` is ours / \
         the peer's time (below 1: ours is faster), the median of the per-pair ratios, and \
         `at p10` their 10th percentile.\n",
        scenario::ALL
            .iter()
            .position(|s| s.id == PY)
            .map_or(0, |i| i + 1)
    );

    // Scenario tables.
    let mut by: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in recs {
        by.entry(r.scenario.as_str()).or_default().push(r);
    }
    for (i, sc) in scenario::ALL.iter().enumerate() {
        let rows = by.remove(sc.id).unwrap_or_default();
        table(&mut s, i + 1, sc, &rows);
        if sc.id == scenario::HANDOFF {
            let _ = writeln!(s, "![hand-off latency per system]({svg_name})\n");
        }
    }
    for (id, rows) in by {
        let _ = writeln!(
            s,
            "## Unknown scenario `{}` ({} rows ignored)\n",
            md_cell(id),
            rows.len()
        );
    }
    if !bad.is_empty() {
        let _ = writeln!(s, "## Lines that could not be read\n");
        for b in bad {
            let _ = writeln!(s, "- {}: {}", md_cell(&b.place), md_cell(&b.error));
        }
        s.push('\n');
    }
    s
}

fn verdict(ok: bool) -> String {
    if ok { "met" } else { "**not met**" }.to_string()
}

fn need_text(tg: &Target, better: Better) -> String {
    match (tg.peer, better) {
        (None, Better::Lower) if tg.ours.0 == PY => format!("≤ {:.2}×", tg.need),
        (None, Better::Lower) => format!("≤ {}", num(tg.need)),
        (None, Better::Higher) => format!("≥ {}", num(tg.need)),
        (Some(_), _) => format!("≥ {:.2}×", tg.need),
    }
}

fn table(s: &mut String, idx: usize, sc: &Scenario, rows: &[&Record]) {
    let dir = match sc.better {
        Better::Lower => "lower is better",
        Better::Higher => "higher is better",
    };
    let _ = writeln!(s, "## {idx}. {} ({}, {dir})\n", sc.title, sc.unit);
    let _ = writeln!(s, "{}.\n", sc.what);
    // Ratio rows are each their own comparison: no cross columns.
    let ratios = sc.unit == RATIO;
    let ours: Vec<&Record> = rows
        .iter()
        .copied()
        .filter(|r| r.is_locksmith() && !r.skipped && !ratios)
        .collect();
    if ours.is_empty() && !ratios {
        let _ = writeln!(
            s,
            "_locksmith rows pending: no locksmith backend reports this scenario yet; peers only._\n"
        );
    }
    if rows.is_empty() {
        let _ = writeln!(s, "_No rows in this run._\n");
        return;
    }
    let latency = rows.iter().any(|r| r.p99.is_some());
    let per_s = sc.unit == "ns/op";
    let mut head = String::from("| system | primitive | median | p10 | p90 |");
    let mut rule = String::from("| --- | --- | ---: | ---: | ---: |");
    if latency {
        head.push_str(" p99 |");
        rule.push_str(" ---: |");
    }
    if per_s {
        head.push_str(" ops/s (median) |");
        rule.push_str(" ---: |");
    }
    head.push_str(" n |");
    rule.push_str(" ---: |");
    for o in &ours {
        let _ = write!(head, " × {} |", md_cell(&o.system));
        rule.push_str(" ---: |");
    }
    head.push_str(" note |");
    rule.push_str(" --- |");
    let _ = writeln!(s, "{head}\n{rule}");
    let mut sorted: Vec<&Record> = rows.to_vec();
    sorted.sort_by(|a, b| {
        b.is_locksmith()
            .cmp(&a.is_locksmith())
            .then(a.skipped.cmp(&b.skipped))
            .then(match sc.better {
                Better::Lower => a.median.total_cmp(&b.median),
                Better::Higher => b.median.total_cmp(&a.median),
            })
    });
    for r in sorted {
        let name = if r.is_locksmith() {
            format!("**{}**", md_cell(&r.system))
        } else {
            md_cell(&r.system)
        };
        if r.skipped {
            let _ = write!(s, "| {name} | {} | skipped | | |", md_cell(&r.primitive));
            if latency {
                s.push_str(" |");
            }
            if per_s {
                s.push_str(" |");
            }
            s.push_str(" |");
            for _ in &ours {
                s.push_str(" |");
            }
            let _ = writeln!(s, " {} |", md_cell(&r.note));
            continue;
        }
        let _ = write!(
            s,
            "| {name} | {} | {} | {} | {} |",
            md_cell(&r.primitive),
            num(r.median),
            opt(r.p10),
            opt(r.p90)
        );
        if latency {
            let _ = write!(s, " {} |", opt(r.p99));
        }
        if per_s {
            let _ = write!(s, " {} |", num(1e9 / r.median));
        }
        let _ = write!(s, " {} |", r.n);
        for o in &ours {
            if std::ptr::eq(*o, r) {
                s.push_str(" 1 |");
            } else {
                let _ = write!(s, " {:.2}× |", speed(sc.better, o.median, r.median));
            }
        }
        let _ = writeln!(s, " {} |", md_cell(&r.note));
    }
    s.push('\n');
}

/// Renders the hand-off latency chart.
pub fn handoff_svg(recs: &[Record], machine: &Machine) -> String {
    let mut rows: Vec<&Record> = recs
        .iter()
        .filter(|r| r.scenario == scenario::HANDOFF && !r.skipped)
        .collect();
    rows.sort_by(|a, b| a.median.total_cmp(&b.median));
    let bars: Vec<Bar> = rows
        .iter()
        .map(|r| Bar {
            label: r.system.clone(),
            value: r.median,
            lo: r.p10,
            hi: r.p99.or(r.p90),
            ours: r.is_locksmith(),
        })
        .collect();
    bar_chart(
        &format!(
            "Hand-off latency between two processes ({} CPUs, {}, {})",
            machine.nproc, machine.cpu, machine.date
        ),
        "µs",
        &bars,
    )
}

/// One-line summary of a run for the terminal.
pub fn summary(recs: &[Record]) -> String {
    let measured = recs.iter().filter(|r| !r.skipped).count();
    let skipped = recs.len() - measured;
    let ours = recs
        .iter()
        .filter(|r| r.is_locksmith() && !r.skipped)
        .count();
    format!(
        "{measured} rows measured ({ours} locksmith), {skipped} skipped; fastest hand-off {}",
        recs.iter()
            .filter(|r| r.scenario == scenario::HANDOFF && !r.skipped)
            .min_by(|a, b| a.median.total_cmp(&b.median))
            .map(|r| format!("{} µs ({})", fmt_tick(r.median), r.system))
            .unwrap_or_else(|| "—".into())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(scenario: &str, system: &str, median: f64) -> Record {
        Record {
            scenario: scenario.into(),
            system: system.into(),
            primitive: "Lock".into(),
            median,
            p10: Some(median * 0.9),
            p90: Some(median * 1.1),
            p99: None,
            unit: "ns/op".into(),
            n: 5,
            lang: "rust".into(),
            note: "a|b".into(),
            skipped: false,
        }
    }

    #[test]
    fn dates() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01 00:00 UTC");
        let t = UNIX_EPOCH + Duration::from_secs(19_723 * 86_400 + 13 * 3600 + 5 * 60 + 59);
        assert_eq!(utc(t), "2024-01-01 13:05 UTC");
    }

    #[test]
    fn pending_and_ratios() {
        let m = Machine {
            nproc: 2,
            cpu: "cpu".into(),
            kernel: "Linux".into(),
            date: "d".into(),
            load: "0 0 0".into(),
        };
        let peers = vec![rec(U, "parking_lot::Mutex", 20.0)];
        let md = results_md(&peers, &[], &m, true, "h.svg");
        assert!(md.contains("locksmith rows pending"));
        assert!(md.contains("a\\|b"));
        assert!(md.contains("pending: no `locksmith shm` row yet"));
        let mut all = peers.clone();
        all.push(rec(U, "locksmith shm", 10.0));
        let md = results_md(&all, &[], &m, false, "h.svg");
        assert!(md.contains("2.00×"), "{md}");
        assert!(md.contains(
            "| 3 | shm Lock uncontended within 1.5× of parking_lot::Mutex | 2.00× | 2.00× | ≥ 0.67× | met |"
        ));
    }

    #[test]
    fn python_ratio_targets() {
        let m = Machine {
            nproc: 2,
            cpu: "cpu".into(),
            kernel: "Linux".into(),
            date: "d".into(),
            load: "0 0 0".into(),
        };
        let ratio = |system: &str, median: f64| Record {
            unit: RATIO.into(),
            lang: "python".into(),
            ..rec(PY, system, median)
        };
        let recs = vec![
            ratio("locksmith.threading.Lock acquire()+release()", 1.4),
            ratio("locksmith.twisted.DeferredLock.run", 0.5),
            ratio("locksmith.sync.Mutex with", 0.5),
        ];
        let md = results_md(&recs, &[], &m, true, "h.svg");
        assert!(md.contains(
            "| 13 | locksmith.threading.Lock acquire()+release() within 1.5× of threading.Lock | 1.40× | 1.26× | ≤ 1.50× | met |"
        ), "{md}");
        assert!(md.contains(
            "| 13 | DeferredLock.run at least 3× faster than Twisted's | 0.50× | 0.45× | ≤ 0.33× | **not met** |"
        ), "{md}");
        assert!(md.contains("pending: no `locksmith redis: Lock` row yet"));
        // A ratio table has no cross columns: each row is its own comparison.
        assert!(!md.contains("× locksmith.sync.Mutex with"), "{md}");
    }
}
