//! The scenario runners, written once, and the context that records their rows.
//!
//! A system enters a scenario through one of three small traits:
//!
//! - [`ProcLock`]: something that can be held (a mutex, a file lock, a store lock);
//! - [`Signal`]: one direction of a ping-pong (a semaphore, an event);
//! - [`BarrierWait`]: one party of a barrier.
//!
//! and one call on [`Ctx`], e.g. `ctx.lock_handoff("pthread mutex", "Lock", "", open)`.
//! Cross-process runners take an `open` closure that is called in *each* process after the
//! fork, so a system that needs per-process handles (a file descriptor for `flock`, a
//! connection, a locksmith `Space`) gets its own.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::measure::{now_ns, ns_per_op, ns_per_op_batched, Budget, Stats};
use crate::record::{write_line, Record};
use crate::scenario;
use crate::shared::{fork_child, Control, Word};

/// Something that can be held by one holder at a time.
pub trait ProcLock {
    /// Acquires (waiting as long as it takes), runs `f`, releases; returns what `f` did.
    fn hold<R>(&mut self, f: impl FnOnce() -> R) -> Result<R>;
}

/// One direction of a ping-pong between two processes.
pub trait Signal {
    /// Tells the other side.
    fn post(&mut self) -> Result<()>;
    /// Waits until the other side posted, and consumes that post.
    fn wait(&mut self) -> Result<()>;
}

/// Which direction of a ping-pong an `open` call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Parent to child.
    Ping,
    /// Child to parent.
    Pong,
}

/// One party of a barrier.
pub trait BarrierWait {
    /// Waits until every party arrived.
    fn wait(&mut self) -> Result<()>;
}

/// How long a cross-process row may take before the harness gives up on it.
const ROW_LIMIT: Duration = Duration::from_secs(120);

/// Arms a SIGALRM watchdog for this process (default action: terminate), so that a
/// cross-process row whose partner died cannot hang the run for ever.
struct Watchdog;

impl Watchdog {
    fn arm() -> Watchdog {
        // SAFETY: alarm only schedules a signal for this process.
        unsafe { libc::alarm(ROW_LIMIT.as_secs() as libc::c_uint) };
        Watchdog
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // SAFETY: cancels the pending alarm of this process, nothing else.
        unsafe { libc::alarm(0) };
    }
}

/// The running context: budget, output, filter.
pub struct Ctx {
    /// How long to measure.
    pub budget: Budget,
    /// Whether this is the `--quick` smoke run.
    pub quick: bool,
    /// A directory for files the systems need (lock files, databases); created on demand.
    pub scratch: PathBuf,
    /// Redis URL, if one is configured.
    pub redis_url: Option<String>,
    filter: Vec<String>,
    out: Box<dyn Write>,
    failures: usize,
    rows: usize,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("budget", &self.budget)
            .field("quick", &self.quick)
            .field("scratch", &self.scratch)
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

impl Ctx {
    /// A context writing JSON lines to `out`. `filter`: substrings of `scenario/system`; a
    /// row runs if it matches any (or if the list is empty).
    pub fn new(
        quick: bool,
        scratch: PathBuf,
        redis_url: Option<String>,
        filter: Vec<String>,
        out: Box<dyn Write>,
    ) -> Ctx {
        Ctx {
            budget: if quick {
                Budget::quick()
            } else {
                Budget::full()
            },
            quick,
            scratch,
            redis_url,
            filter,
            out,
            failures: 0,
            rows: 0,
        }
    }

    /// Rows that failed so far.
    pub fn failures(&self) -> usize {
        self.failures
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether the filter selects this row.
    pub fn wants(&self, scenario: &str, system: &str) -> bool {
        let key = format!("{scenario}/{system}");
        self.filter.is_empty() || self.filter.iter().any(|f| key.contains(f.as_str()))
    }

    /// Writes a record and a human-readable line on stderr.
    pub fn emit(&mut self, rec: Record) {
        if rec.skipped {
            eprintln!(
                "  {:<12} {:<44} skipped: {}",
                rec.scenario, rec.system, rec.note
            );
        } else {
            eprintln!(
                "  {:<12} {:<44} {:>12.3} {} (p10 {:.3}, p90 {:.3}, n {})",
                rec.scenario,
                rec.system,
                rec.median,
                rec.unit,
                rec.p10.unwrap_or(f64::NAN),
                rec.p90.unwrap_or(f64::NAN),
                rec.n
            );
        }
        if let Err(e) = write_line(&mut self.out, &rec).and_then(|_| self.out.flush()) {
            eprintln!("cannot write a result line: {e}");
            self.failures += 1;
        }
        self.rows += 1;
    }

    /// Writes a row from statistics; the unit is the scenario's. `p99` is kept for latency
    /// scenarios only.
    pub fn row(&mut self, scenario_id: &str, system: &str, primitive: &str, s: Stats, note: &str) {
        let sc = scenario::find(scenario_id);
        let unit = sc.map(|s| s.unit).unwrap_or("?");
        let latency = matches!(
            scenario_id,
            scenario::HANDOFF | scenario::PINGPONG | scenario::BARRIER
        );
        self.emit(Record {
            scenario: scenario_id.into(),
            system: system.into(),
            primitive: primitive.into(),
            median: s.median,
            p10: Some(s.p10),
            p90: Some(s.p90),
            p99: latency.then_some(s.p99),
            unit: unit.into(),
            n: s.n,
            lang: "rust".into(),
            note: note.into(),
            skipped: false,
        });
    }

    /// Writes a skipped row that says why.
    pub fn skip(&mut self, scenario_id: &str, system: &str, primitive: &str, why: &str) {
        let unit = scenario::find(scenario_id).map(|s| s.unit).unwrap_or("?");
        self.emit(Record {
            scenario: scenario_id.into(),
            system: system.into(),
            primitive: primitive.into(),
            median: 0.0,
            p10: None,
            p90: None,
            p99: None,
            unit: unit.into(),
            n: 0,
            lang: "rust".into(),
            note: why.into(),
            skipped: true,
        });
    }

    /// Runs `measure` if the filter wants this row, and records its statistics, or a skipped
    /// row with the error (counted as a failure) if it failed.
    pub fn measure(
        &mut self,
        scenario_id: &str,
        system: &str,
        primitive: &str,
        note: &str,
        measure: impl FnOnce(&Budget) -> Result<Stats>,
    ) {
        if !self.wants(scenario_id, system) {
            return;
        }
        let budget = self.budget;
        match measure(&budget) {
            Ok(s) => self.row(scenario_id, system, primitive, s, note),
            Err(e) => {
                self.failures += 1;
                self.skip(scenario_id, system, primitive, &format!("failed: {e:#}"));
            }
        }
    }

    /// ns per call of `op` (any one-process scenario: uncontended, async, primitives, open).
    pub fn per_op(
        &mut self,
        scenario_id: &str,
        system: &str,
        primitive: &str,
        note: &str,
        op: impl FnMut() -> Result<()>,
    ) {
        self.measure(scenario_id, system, primitive, note, |b| {
            Ok(ns_per_op(b, b.samples, op)?.stats)
        });
    }

    /// ns per awaited `op()`, batches driven by a current-thread tokio runtime (entered once
    /// per batch, so the runtime's own cost is not in the number).
    pub fn async_per_op<F, Fut>(
        &mut self,
        scenario_id: &str,
        system: &str,
        primitive: &str,
        note: &str,
        mut op: F,
    ) where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        self.measure(scenario_id, system, primitive, note, |b| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()?;
            let per = ns_per_op_batched(b, b.samples, |k| {
                rt.block_on(async {
                    for _ in 0..k {
                        op().await?;
                    }
                    Ok::<(), anyhow::Error>(())
                })
            })?;
            Ok(per.stats)
        });
    }

    /// Uncontended acquire+release of the lock `open` gives.
    pub fn lock_uncontended<L: ProcLock>(
        &mut self,
        system: &str,
        primitive: &str,
        note: &str,
        open: impl FnOnce() -> Result<L>,
    ) {
        self.measure(scenario::UNCONTENDED, system, primitive, note, |b| {
            let mut l = open()?;
            Ok(ns_per_op(b, b.samples, || l.hold(|| ()))?.stats)
        });
    }

    /// Two processes contending; total cycles/s over `runs` timed runs. The note gets the
    /// share of the slower process (fairness) and, if the lock let two holders in, says so.
    pub fn lock_contention<L: ProcLock>(
        &mut self,
        system: &str,
        note: &str,
        open: impl Fn() -> Result<L>,
    ) {
        if !self.wants(scenario::CONTENTION, system) {
            return;
        }
        let budget = self.budget;
        match contention(&budget, &open) {
            Ok((s, violated, share)) => {
                let mut parts = Vec::new();
                if violated {
                    self.failures += 1;
                    parts.push(
                        "EXCLUSION VIOLATED: the counter under the lock lost updates".to_string(),
                    );
                }
                if !note.is_empty() {
                    parts.push(note.to_string());
                }
                if share.is_finite() {
                    parts.push(format!(
                        "the slower process did {:.0}% of the cycles",
                        share * 100.0
                    ));
                }
                self.row(scenario::CONTENTION, system, "Lock", s, &parts.join("; "));
            }
            Err(e) => {
                self.failures += 1;
                self.skip(
                    scenario::CONTENTION,
                    system,
                    "Lock",
                    &format!("failed: {e:#}"),
                );
            }
        }
    }

    /// Hand-off latency from release in this process to acquire in a waiting child.
    pub fn lock_handoff<L: ProcLock>(
        &mut self,
        system: &str,
        primitive: &str,
        note: &str,
        open: impl Fn() -> Result<L>,
    ) {
        self.measure(scenario::HANDOFF, system, primitive, note, |b| {
            handoff(b, &open)
        });
    }

    /// Ping-pong round trip between this process and a child.
    pub fn ping_pong<S: Signal>(
        &mut self,
        system: &str,
        primitive: &str,
        note: &str,
        open: impl Fn(Channel) -> Result<S>,
    ) {
        self.measure(scenario::PINGPONG, system, primitive, note, |b| {
            ping_pong(b, &open)
        });
    }

    /// One generation of a two-party barrier between this process and a child.
    pub fn barrier2<B: BarrierWait>(
        &mut self,
        system: &str,
        note: &str,
        open: impl Fn() -> Result<B>,
    ) {
        self.measure(scenario::BARRIER, system, "Barrier", note, |b| {
            barrier2(b, &open)
        });
    }
}

/// Runs the contention scenario; returns cycles/s over runs, whether exclusion broke, and
/// the median share of the cycles done by the process that did fewer (0.5 = fair).
fn contention<L: ProcLock>(
    b: &Budget,
    open: &impl Fn() -> Result<L>,
) -> Result<(Stats, bool, f64)> {
    let _dog = Watchdog::arm();
    let ctl = Control::new(0)?;
    let mut rates = Vec::new();
    let mut shares = Vec::new();
    let mut violated = false;
    for _ in 0..b.runs.max(1) {
        for w in [
            Word::Go,
            Word::Stop,
            Word::Ready,
            Word::Counter,
            Word::CountA,
            Word::CountB,
            Word::Failed,
        ] {
            ctl.w(w).store(0, Ordering::SeqCst);
        }
        let mut kids = Vec::new();
        for who in [Word::CountA, Word::CountB] {
            let ctl = &ctl;
            kids.push(fork_child(move || {
                let r = (|| -> Result<()> {
                    let mut l = open()?;
                    ctl.w(Word::Ready).fetch_add(1, Ordering::SeqCst);
                    if !ctl.wait_at_least(Word::Go, 1, ROW_LIMIT) {
                        bail!("never started");
                    }
                    let counter = ctl.w(Word::Counter);
                    let stop = ctl.w(Word::Stop);
                    let mut n = 0u64;
                    while stop.load(Ordering::Relaxed) == 0 {
                        l.hold(|| {
                            // Deliberately not a fetch_add: a lost update shows a broken lock.
                            let c = counter.load(Ordering::Relaxed);
                            counter.store(c + 1, Ordering::Relaxed);
                        })?;
                        n += 1;
                    }
                    ctl.w(who).store(n, Ordering::SeqCst);
                    Ok(())
                })();
                if r.is_err() {
                    ctl.w(Word::Failed).store(1, Ordering::SeqCst);
                }
                r
            })?);
        }
        // Start the clock once both children have opened their handles.
        if !ctl.wait_at_least(Word::Ready, 2, ROW_LIMIT) {
            bail!("a contending process did not start");
        }
        let t0 = Instant::now();
        ctl.w(Word::Go).store(1, Ordering::SeqCst);
        std::thread::sleep(b.run_time);
        ctl.w(Word::Stop).store(1, Ordering::SeqCst);
        let elapsed = t0.elapsed().as_secs_f64();
        let mut err = None;
        for k in kids {
            if let Err(e) = k.wait() {
                err = Some(e);
            }
        }
        if let Some(e) = err {
            return Err(e.context("a contending process failed"));
        }
        let (a, bb) = (
            ctl.w(Word::CountA).load(Ordering::SeqCst),
            ctl.w(Word::CountB).load(Ordering::SeqCst),
        );
        let total = a + bb;
        if total > 0 {
            shares.push(a.min(bb) as f64 / total as f64);
        }
        if ctl.w(Word::Counter).load(Ordering::SeqCst) != total {
            violated = true;
        }
        rates.push(total as f64 / elapsed);
    }
    let share = Stats::of(&shares).map(|s| s.median).unwrap_or(f64::NAN);
    Ok((Stats::of(&rates).context("no runs")?, violated, share))
}

/// Runs the hand-off scenario: this process holds, a child waits, this process releases.
fn handoff<L: ProcLock>(b: &Budget, open: &impl Fn() -> Result<L>) -> Result<Stats> {
    let _dog = Watchdog::arm();
    let n = b.latency_samples.max(1);
    let ctl = Control::new(n)?;
    let pause = Duration::from_micros(200);
    let c = &ctl;
    let kid = fork_child(move || {
        let _dog = Watchdog::arm();
        let r = (|| -> Result<()> {
            let mut l = open()?;
            for i in 1..=n as u64 {
                if !c.wait_at_least(Word::Held, i, ROW_LIMIT) {
                    bail!("holder never held round {i}");
                }
                c.w(Word::Ready).store(i, Ordering::SeqCst);
                l.hold(|| {
                    let t1 = now_ns();
                    let t0 = c.w(Word::T0).load(Ordering::SeqCst);
                    if let Some(slot) = c.sample(i as usize - 1) {
                        slot.store(t1.saturating_sub(t0), Ordering::Relaxed);
                    }
                })?;
                c.w(Word::Done).store(i, Ordering::SeqCst);
            }
            Ok(())
        })();
        if r.is_err() {
            c.w(Word::Failed).store(1, Ordering::SeqCst);
        }
        r
    })?;
    let mut l = open()?;
    for i in 1..=n as u64 {
        let ok = l.hold(|| {
            ctl.w(Word::Held).store(i, Ordering::SeqCst);
            let ok = ctl.wait_at_least(Word::Ready, i, ROW_LIMIT);
            // Let the waiter get into its blocking (or polling) acquire.
            std::thread::sleep(pause);
            ctl.w(Word::T0).store(now_ns(), Ordering::SeqCst);
            ok
        })?;
        if !ok || !ctl.wait_at_least(Word::Done, i, ROW_LIMIT) {
            break;
        }
    }
    kid.wait()?;
    let v: Vec<f64> = (0..n)
        .filter_map(|i| ctl.sample(i))
        .map(|s| s.load(Ordering::Relaxed) as f64 / 1000.0)
        .collect();
    Stats::of(&v).context("no samples")
}

/// Runs the ping-pong scenario; the parent times each round trip.
fn ping_pong<S: Signal>(b: &Budget, open: &impl Fn(Channel) -> Result<S>) -> Result<Stats> {
    let _dog = Watchdog::arm();
    let n = b.latency_samples.max(1);
    let warm = 20;
    let kid = fork_child(move || {
        let _dog = Watchdog::arm();
        let mut ping = open(Channel::Ping)?;
        let mut pong = open(Channel::Pong)?;
        for _ in 0..n + warm {
            ping.wait()?;
            pong.post()?;
        }
        Ok(())
    })?;
    let mut ping = open(Channel::Ping)?;
    let mut pong = open(Channel::Pong)?;
    let mut v = Vec::with_capacity(n);
    for i in 0..n + warm {
        let t = now_ns();
        ping.post()?;
        pong.wait()?;
        if i >= warm {
            v.push((now_ns() - t) as f64 / 1000.0);
        }
    }
    kid.wait()?;
    Stats::of(&v).context("no samples")
}

/// Runs the two-party barrier scenario; the parent times each generation.
fn barrier2<B: BarrierWait>(b: &Budget, open: &impl Fn() -> Result<B>) -> Result<Stats> {
    let _dog = Watchdog::arm();
    let n = b.latency_samples.max(1);
    let warm = 20;
    let kid = fork_child(move || {
        let _dog = Watchdog::arm();
        let mut w = open()?;
        for _ in 0..n + warm + 1 {
            w.wait()?;
        }
        Ok(())
    })?;
    let mut w = open()?;
    w.wait()?;
    let mut v = Vec::with_capacity(n);
    for i in 0..n + warm {
        let t = now_ns();
        w.wait()?;
        if i >= warm {
            v.push((now_ns() - t) as f64 / 1000.0);
        }
    }
    kid.wait()?;
    Stats::of(&v).context("no samples")
}
