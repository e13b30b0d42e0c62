//! `demo`: every primitive across N real processes (the binary re-executing itself as
//! `locksmith __demo-worker`), checked, with a table of what held and how fast.
//!
//! Each worker appends one line per event to a log file opened with `O_APPEND` (a
//! single small write is atomic), so the parent can replay who was inside when and
//! check the invariants afterwards: the counter, at most k permit holders, writers
//! alone, every barrier phase entered only once all parties arrived.
//!
//! On `mem:`, which other processes cannot open, the workers are threads of this
//! process instead, and the crash case is a holder that vanishes without releasing.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use locksmith::Space;

use crate::args::{DemoArgs, DemoWorkerArgs};
use crate::error::{self, Failure, Outcome};

/// Hang guard for every wait of the demo.
const PATIENCE: Duration = Duration::from_secs(120);
/// Permits of the demo's semaphore.
const PERMITS: u32 = 2;
/// Sections per worker under the semaphore and the RwLock.
const ROUNDS: u32 = 8;
/// Barrier phases.
const PHASES: u32 = 3;
/// The prefix of the demo's names, and their tag.
const PREFIX: &str = "locksmith-demo";
/// The lock one demo holds while it runs.
const RUN_LOCK: &str = "locksmith-demo.run";
/// The lease of the victim's hold in the crash case.
const CRASH_LEASE: Duration = Duration::from_secs(1);

/// One worker's plan.
#[derive(Clone, Debug)]
struct Plan {
    dir: PathBuf,
    prefix: String,
    index: u32,
    processes: u32,
    iterations: u32,
}

impl Plan {
    fn name(&self, what: &str) -> String {
        format!("{}/{what}", self.prefix)
    }
}

fn store_error(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(error::STORE, format!("demo: {what}: {e}"))
}

fn timed_out(what: &str) -> Failure {
    Failure::new(
        error::CONFLICT,
        format!("demo: timed out waiting for {what}"),
    )
}

/// Appends `line` to `file` in one write.
fn log(file: &mut File, line: String) -> Result<(), Failure> {
    file.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| store_error("writing the log", e))
}

fn open_log(dir: &Path, name: &str) -> Result<File, Failure> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .map_err(|e| store_error("opening the log", e))
}

/// What one worker does; returns (section, microseconds) timings.
fn work(space: &Space, plan: &Plan) -> Result<Vec<(String, u128)>, Failure> {
    let lease = Duration::from_secs(30);
    let tag = plan.prefix.clone();
    let mut times = Vec::new();
    let phase = space
        .barrier(&plan.name("phase"), plan.processes)
        .tag(tag.clone());
    let align = |what: &str| -> Result<u32, Failure> {
        phase
            .wait_timeout(PATIENCE)
            .map_err(|e| store_error(what, e))
    };

    // Event: everyone starts when the parent says go.
    let go = space.event(&plan.name("go")).tag(tag.clone());
    if !go.wait_timeout(PATIENCE)? {
        return Err(timed_out("the go event"));
    }

    // Lock: a read-modify-write of a file counter.
    let lock = space
        .lock(&plan.name("counter"))
        .lease(lease)
        .tag(tag.clone());
    let counter = plan.dir.join("counter");
    let mut waited = Duration::ZERO;
    let start = Instant::now();
    for _ in 0..plan.iterations {
        let asked = Instant::now();
        let guard = lock
            .acquire_timeout(PATIENCE)?
            .ok_or_else(|| timed_out("the lock"))?;
        waited += asked.elapsed();
        let n: u64 = fs::read_to_string(&counter)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        fs::write(&counter, (n + 1).to_string()).map_err(|e| store_error("counter", e))?;
        guard.release()?;
    }
    times.push(("lock".to_owned(), start.elapsed().as_micros()));
    let mean_wait_ms = waited.as_secs_f64() * 1000.0 / f64::from(plan.iterations);
    space
        .averager(&plan.name("lock-wait"))
        .tag(tag.clone())
        .add(mean_wait_ms)?;
    align("the barrier after the lock")?;

    // Semaphore: at most PERMITS inside at once.
    let sem = space
        .semaphore(&plan.name("sem"), PERMITS)
        .lease(lease)
        .tag(tag.clone());
    let mut sem_log = open_log(&plan.dir, "semaphore.log")?;
    let start = Instant::now();
    for _ in 0..ROUNDS {
        let permit = sem
            .acquire_timeout(PATIENCE)?
            .ok_or_else(|| timed_out("a permit"))?;
        log(&mut sem_log, format!("+ {}", plan.index))?;
        std::thread::sleep(Duration::from_millis(2)); // the work, not synchronization
        log(&mut sem_log, format!("- {}", plan.index))?;
        permit.release()?;
    }
    times.push(("semaphore".to_owned(), start.elapsed().as_micros()));
    align("the barrier after the semaphore")?;

    // RwLock: readers together, writers alone.
    let rw = space.rwlock(&plan.name("rw")).lease(lease).tag(tag.clone());
    let mut rw_log = open_log(&plan.dir, "rwlock.log")?;
    let start = Instant::now();
    for round in 0..ROUNDS {
        let write = (round + plan.index).is_multiple_of(4);
        let (guard, side) = if write {
            (rw.write_timeout(PATIENCE)?, "W")
        } else {
            (rw.read_timeout(PATIENCE)?, "R")
        };
        let guard = guard.ok_or_else(|| timed_out("the rwlock"))?;
        log(&mut rw_log, format!("{side}+ {}", plan.index))?;
        std::thread::sleep(Duration::from_millis(1));
        log(&mut rw_log, format!("{side}- {}", plan.index))?;
        guard.release()?;
    }
    times.push(("rwlock".to_owned(), start.elapsed().as_micros()));
    align("the barrier after the rwlock")?;

    // RLock: re-entry by the same owner.
    let rlock = space
        .rlock(&plan.name("rlock"))
        .lease(lease)
        .tag(tag.clone());
    let start = Instant::now();
    let outer = rlock
        .acquire_timeout(PATIENCE)?
        .ok_or_else(|| timed_out("the rlock"))?;
    let inner = rlock
        .try_acquire()?
        .ok_or_else(|| Failure::new(error::CONFLICT, "demo: the rlock refused its own holder"))?;
    inner.release()?;
    outer.release()?;
    times.push(("rlock".to_owned(), start.elapsed().as_micros()));

    // Barrier: PHASES phases, arrivals logged before waiting, passes after.
    let mut bar_log = open_log(&plan.dir, "barrier.log")?;
    let start = Instant::now();
    for p in 0..PHASES {
        log(&mut bar_log, format!("A {p} {}", plan.index))?;
        align("a barrier phase")?;
        log(&mut bar_log, format!("P {p} {}", plan.index))?;
    }
    times.push(("barrier".to_owned(), start.elapsed().as_micros()));
    Ok(times)
}

/// `locksmith __demo-worker`: one process of the demo; prints `time SECTION MICROS`.
pub fn worker(space: &Space, a: DemoWorkerArgs) -> Outcome {
    let plan = Plan {
        dir: a.dir,
        prefix: a.prefix,
        index: a.index,
        processes: a.processes,
        iterations: a.iterations,
    };
    if a.victim {
        let lock = space
            .lock(&plan.name("crash"))
            .lease(CRASH_LEASE)
            .tag(plan.prefix.clone());
        let guard = lock
            .acquire_timeout(PATIENCE)?
            .ok_or_else(|| timed_out("the crash lock"))?;
        println!("held {}", guard.token());
        std::io::stdout()
            .flush()
            .map_err(|e| store_error("stdout", e))?;
        // Hold until killed (the parent SIGKILLs this process).
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    for (section, micros) in work(space, &plan)? {
        println!("time {section} {micros}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the workers as processes; returns each one's timings.
fn run_processes(space: &Space, plans: &[Plan]) -> Result<Vec<Vec<(String, u128)>>, Failure> {
    let exe = std::env::current_exe().map_err(|e| store_error("finding this program", e))?;
    let mut children: Vec<Child> = Vec::new();
    for plan in plans {
        let spawned = Command::new(&exe)
            .arg("--store")
            .arg(space.url())
            .arg("__demo-worker")
            .arg("--dir")
            .arg(&plan.dir)
            .args(["--prefix", &plan.prefix])
            .args(["--index", &plan.index.to_string()])
            .args(["--processes", &plan.processes.to_string()])
            .args(["--iterations", &plan.iterations.to_string()])
            .stdout(Stdio::piped())
            .spawn();
        match spawned {
            Ok(child) => children.push(child),
            Err(e) => {
                kill_all(&mut children);
                return Err(store_error("starting a worker", e));
            }
        }
    }
    let go = space
        .event(&plans[0].name("go"))
        .tag(plans[0].prefix.clone());
    if let Err(e) = go.set() {
        kill_all(&mut children);
        return Err(e.into());
    }
    // Supervise: the first worker to fail ends the others, which would otherwise wait
    // at the barrier for it until their hang guard. (The workers' output is a few
    // lines, well within a pipe's buffer, so it is read once they are done.)
    let mut statuses: Vec<Option<ExitStatus>> = vec![None; children.len()];
    while statuses.iter().any(Option::is_none) {
        for (child, status) in children.iter_mut().zip(statuses.iter_mut()) {
            if status.is_none() {
                *status = child
                    .try_wait()
                    .map_err(|e| store_error("waiting for a worker", e))?;
            }
        }
        if let Some((i, failed)) = statuses
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.filter(|s| !s.success()).map(|s| (i, s)))
        {
            kill_all(&mut children);
            return Err(Failure::new(
                error::CONFLICT,
                format!("demo: worker {i} failed ({failed})"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut all = Vec::new();
    for child in &mut children {
        let mut text = String::new();
        if let Some(mut out) = child.stdout.take() {
            out.read_to_string(&mut text)
                .map_err(|e| store_error("reading a worker", e))?;
        }
        all.push(parse_times(&text));
    }
    Ok(all)
}

fn kill_all(children: &mut [Child]) {
    for child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn parse_times(text: &str) -> Vec<(String, u128)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            match (it.next(), it.next(), it.next().and_then(|m| m.parse().ok())) {
                (Some("time"), Some(section), Some(micros)) => Some((section.to_owned(), micros)),
                _ => None,
            }
        })
        .collect()
}

/// Runs the workers as threads of this process (for `mem:`).
fn run_threads(space: &Space, plans: &[Plan]) -> Result<Vec<Vec<(String, u128)>>, Failure> {
    std::thread::scope(|s| {
        let handles: Vec<_> = plans
            .iter()
            .map(|plan| s.spawn(move || work(space, plan)))
            .collect();
        space
            .event(&plans[0].name("go"))
            .tag(plans[0].prefix.clone())
            .set()?;
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| Failure::new(error::STORE, "demo: a worker thread panicked"))?
            })
            .collect()
    })
}

/// The crash case with a real process: a victim takes a lock, is SIGKILLed, and the
/// lock must come back with `previous_owner_died`. Returns (ok, recovery time).
fn crash_process(space: &Space, plan: &Plan) -> Result<(bool, Duration), Failure> {
    let exe = std::env::current_exe().map_err(|e| store_error("finding this program", e))?;
    let mut victim = Command::new(&exe)
        .arg("--store")
        .arg(space.url())
        .arg("__demo-worker")
        .arg("--dir")
        .arg(&plan.dir)
        .args(["--prefix", &plan.prefix, "--index", "0", "--processes", "1"])
        .args(["--iterations", "1", "--victim"])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| store_error("starting the victim", e))?;
    let mut line = String::new();
    if let Some(out) = victim.stdout.take() {
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| store_error("reading the victim", e))?;
    }
    if !line.starts_with("held") {
        let _ = victim.kill();
        let _ = victim.wait();
        return Err(Failure::new(
            error::CONFLICT,
            "demo: the victim never took its lock",
        ));
    }
    victim
        .kill()
        .map_err(|e| store_error("killing the victim", e))?;
    let _ = victim.wait();
    let killed = Instant::now();
    let lock = space
        .lock(&plan.name("crash"))
        .lease(Duration::from_secs(30))
        .tag(plan.prefix.clone());
    let guard = lock
        .acquire_timeout(PATIENCE)?
        .ok_or_else(|| timed_out("the crash lock"))?;
    let recovered = killed.elapsed();
    let ok = guard.previous_owner_died();
    guard.release()?;
    Ok((ok, recovered))
}

/// The crash case on `mem:`: a holder that vanishes without releasing (its lease is
/// not renewed), then the lock must come back with `previous_owner_died`.
fn crash_thread(space: &Space, plan: &Plan) -> Result<(bool, Duration), Failure> {
    let name = plan.name("crash");
    std::thread::scope(|s| {
        s.spawn(|| -> Result<(), Failure> {
            let lock = space
                .lock(&name)
                .lease(CRASH_LEASE)
                .keep_alive(false)
                .tag(plan.prefix.clone());
            let guard = lock
                .acquire_timeout(PATIENCE)?
                .ok_or_else(|| timed_out("the crash lock"))?;
            guard.detach();
            Ok(())
        })
        .join()
        .map_err(|_| Failure::new(error::STORE, "demo: the victim thread panicked"))?
    })?;
    let gone = Instant::now();
    let guard = space
        .lock(&name)
        .acquire_timeout(PATIENCE)?
        .ok_or_else(|| timed_out("the crash lock"))?;
    let ok = guard.previous_owner_died();
    guard.release()?;
    Ok((ok, gone.elapsed()))
}

/// The largest number of holders inside at once, replaying `+`/`-` lines of `kind`.
fn max_inside(lines: &[String], enter: &str, leave: &str) -> (u32, bool) {
    let (mut inside, mut max, mut sane) = (0i64, 0i64, true);
    for l in lines {
        if l.starts_with(enter) {
            inside += 1;
            max = max.max(inside);
        } else if l.starts_with(leave) {
            inside -= 1;
            sane &= inside >= 0;
        }
    }
    (u32::try_from(max).unwrap_or(u32::MAX), sane && inside == 0)
}

/// Replays the RwLock log: (most readers at once, writers always alone).
fn check_rwlock(lines: &[String]) -> (u32, bool) {
    let (mut readers, mut writers, mut max_readers, mut alone) = (0i64, 0i64, 0i64, true);
    for l in lines {
        match l.split_whitespace().next() {
            Some("R+") => readers += 1,
            Some("R-") => readers -= 1,
            Some("W+") => writers += 1,
            Some("W-") => writers -= 1,
            _ => alone = false,
        }
        max_readers = max_readers.max(readers);
        alone &= writers <= 1 && (writers == 0 || readers == 0) && readers >= 0 && writers >= 0;
    }
    (u32::try_from(max_readers).unwrap_or(u32::MAX), alone)
}

/// Replays the barrier log: every phase's passes come after all its arrivals.
fn check_barrier(lines: &[String], parties: u32) -> bool {
    let mut arrived: BTreeMap<u32, u32> = BTreeMap::new();
    let mut passed: BTreeMap<u32, u32> = BTreeMap::new();
    for l in lines {
        let mut it = l.split_whitespace();
        let (kind, p) = (it.next(), it.next().and_then(|p| p.parse::<u32>().ok()));
        match (kind, p) {
            (Some("A"), Some(p)) => *arrived.entry(p).or_default() += 1,
            (Some("P"), Some(p)) => {
                if arrived.get(&p).copied().unwrap_or(0) < parties {
                    return false;
                }
                *passed.entry(p).or_default() += 1;
            }
            _ => return false,
        }
    }
    (0..PHASES).all(|p| arrived.get(&p) == Some(&parties) && passed.get(&p) == Some(&parties))
}

fn read_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn fmt_time(micros: u128) -> String {
    if micros >= 1_000_000 {
        format!("{:.2} s", micros as f64 / 1e6)
    } else {
        format!("{:.1} ms", micros as f64 / 1e3)
    }
}

fn rate(ops: u64, micros: u128) -> String {
    if micros == 0 {
        return "-".to_owned();
    }
    format!("{:.0}/s", ops as f64 * 1e6 / micros as f64)
}

/// `locksmith demo [--processes N]`.
pub fn demo(space: &Space, a: DemoArgs) -> Outcome {
    let threads = space.url().starts_with("mem:");
    // One demo at a time per store: the names are fixed, so runs leave nothing behind.
    let run_lock = space.lock(RUN_LOCK).lease(Duration::from_secs(30));
    let _running = match run_lock.try_acquire()? {
        Some(g) => g,
        None => {
            println!("another demo is running on {}; waiting for it", space.url());
            run_lock
                .acquire_timeout(PATIENCE)?
                .ok_or_else(|| timed_out("the other demo"))?
        }
    };
    let prefix = PREFIX.to_owned();
    space.evict_tag(PREFIX)?; // what an interrupted run left
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("locksmith-demo-{}-{stamp}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|e| store_error("creating the demo directory", e))?;
    let plans: Vec<Plan> = (0..a.processes)
        .map(|index| Plan {
            dir: dir.clone(),
            prefix: prefix.clone(),
            index,
            processes: a.processes,
            iterations: a.iterations,
        })
        .collect();
    let who = if threads { "threads" } else { "processes" };
    println!("locksmith demo: {} {who} on {}", a.processes, space.url());
    if threads {
        println!(
            "  note: {} cannot be opened by other processes, so the workers are threads; \
             pass --store sqlite:PATH (or set LOCKSMITH_STORE) for real processes",
            space.url()
        );
    }
    let started = Instant::now();
    let outcome = if threads {
        run_threads(space, &plans)
    } else {
        run_processes(space, &plans)
    };
    let result = outcome.and_then(|times| {
        let crash = if threads {
            crash_thread(space, &plans[0])?
        } else {
            crash_process(space, &plans[0])?
        };
        let lock_wait = space.averager(&plans[0].name("lock-wait")).pop()?;
        Ok((times, crash, lock_wait))
    });
    let (times, crash, lock_wait) = match result {
        Ok(r) => r,
        Err(f) => {
            let _ = space.evict_tag(&prefix);
            let _ = fs::remove_dir_all(&dir);
            return Err(f);
        }
    };
    let slowest = |section: &str| -> u128 {
        times
            .iter()
            .flat_map(|t| t.iter().filter(|(s, _)| s == section).map(|(_, m)| *m))
            .max()
            .unwrap_or(0)
    };

    let n = u64::from(a.processes);
    let want = n * u64::from(a.iterations);
    let got: u64 = fs::read_to_string(dir.join("counter"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let (sem_max, sem_sane) = max_inside(&read_lines(&dir.join("semaphore.log")), "+", "-");
    let (readers, writers_alone) = check_rwlock(&read_lines(&dir.join("rwlock.log")));
    let phases_ok = check_barrier(&read_lines(&dir.join("barrier.log")), a.processes);
    let (crash_ok, recovered) = crash;
    let rounds = n * u64::from(ROUNDS);

    let rows: Vec<(String, String, String, bool, String, String)> = vec![
        (
            "Event".into(),
            format!("{} {who} started together", a.processes),
            "all released by one set()".into(),
            true,
            "-".into(),
            "-".into(),
        ),
        (
            "Lock".into(),
            format!("{} x {} file-counter increments", a.processes, a.iterations),
            format!("counter = {got} (want {want})"),
            got == want,
            fmt_time(slowest("lock")),
            rate(want, slowest("lock")),
        ),
        (
            format!("Semaphore({PERMITS})"),
            format!("{rounds} sections"),
            format!("at most {sem_max} inside (limit {PERMITS})"),
            sem_sane && (1..=PERMITS).contains(&sem_max),
            fmt_time(slowest("semaphore")),
            rate(rounds, slowest("semaphore")),
        ),
        (
            "RwLock".into(),
            format!("{rounds} reads and writes"),
            format!("writers alone, up to {readers} readers together"),
            writers_alone,
            fmt_time(slowest("rwlock")),
            rate(rounds, slowest("rwlock")),
        ),
        (
            "RLock".into(),
            format!("re-entered by each of {n}"),
            "the holder entered twice".into(),
            true,
            fmt_time(slowest("rlock")),
            "-".into(),
        ),
        (
            format!("Barrier({})", a.processes),
            format!("{PHASES} phases (and between sections)"),
            "every phase aligned".into(),
            phases_ok,
            fmt_time(slowest("barrier")),
            rate(u64::from(PHASES), slowest("barrier")),
        ),
        (
            "Averager".into(),
            "mean wait for the Lock".into(),
            match lock_wait {
                Some(ms) => format!("{ms:.3} ms over {n} {who}"),
                None => "no values".into(),
            },
            lock_wait.is_some(),
            "-".into(),
            "-".into(),
        ),
        (
            "crash".into(),
            if threads {
                format!(
                    "a holder vanished (lease {})",
                    humantime::format_duration(CRASH_LEASE)
                )
            } else {
                format!(
                    "a holder SIGKILLed (lease {})",
                    humantime::format_duration(CRASH_LEASE)
                )
            },
            "next holder told previous_owner_died".into(),
            crash_ok,
            fmt_time(recovered.as_micros()),
            "-".into(),
        ),
    ];
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(9).max(9);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(8);
    let w2 = rows.iter().map(|r| r.2.len()).max().unwrap_or(5);
    println!();
    println!(
        "{:w0$}  {:w1$}  {:w2$}  {:4}  {:>9}  {:>9}",
        "primitive", "what ran", "check", "ok", "time", "rate"
    );
    let mut all_ok = true;
    for (p, what, check, ok, time, rate) in &rows {
        all_ok &= ok;
        let mark = if *ok { "ok" } else { "FAIL" };
        println!("{p:w0$}  {what:w1$}  {check:w2$}  {mark:4}  {time:>9}  {rate:>9}");
    }
    println!();
    println!(
        "{} in {:.2} s",
        if all_ok {
            "every check passed"
        } else {
            "SOME CHECKS FAILED"
        },
        started.elapsed().as_secs_f64()
    );
    let _ = space.evict_tag(&prefix);
    let _ = fs::remove_dir_all(&dir);
    Ok(ExitCode::from(if all_ok {
        error::OK
    } else {
        error::CONFLICT
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &[&str]) -> Vec<String> {
        s.iter().map(|l| (*l).to_owned()).collect()
    }

    #[test]
    fn replays() {
        assert_eq!(
            max_inside(
                &lines(&["+ 0", "+ 1", "- 0", "+ 2", "- 1", "- 2"]),
                "+",
                "-"
            ),
            (2, true)
        );
        assert_eq!(
            check_rwlock(&lines(&["R+ 0", "R+ 1", "R- 0", "R- 1", "W+ 2", "W- 2"])),
            (2, true)
        );
        assert!(!check_rwlock(&lines(&["R+ 0", "W+ 1", "W- 1", "R- 0"])).1);
        let ok = lines(&[
            "A 0 0", "A 0 1", "P 0 1", "P 0 0", "A 1 0", "A 1 1", "P 1 0", "P 1 1", "A 2 1",
            "A 2 0", "P 2 0", "P 2 1",
        ]);
        assert!(check_barrier(&ok, 2));
        let early = lines(&["A 0 0", "P 0 0", "A 0 1", "P 0 1"]);
        assert!(!check_barrier(&early, 2));
    }

    #[test]
    fn demo_on_mem_runs_on_threads() {
        let space = Space::open("mem:").unwrap();
        let code = demo(
            &space,
            DemoArgs {
                processes: 3,
                iterations: 20,
            },
        )
        .unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
    }
}
