//! `run` never lets the command's processes overlap the next holder (issue 12, items
//! 4 and 5), and a waiter ended by a signal leaves the queue at once (item 9), on
//! every store: sqlite, shm and a real redis-server started here.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use common::{locksmith, primitive, status_json, wait_guarded, TempDir, HANG_GUARD};

/// A store of each kind, fresh for one test, removed on drop.
struct Store {
    url: String,
    shm: Option<String>,
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(name) = &self.shm {
            if let Ok(dir) = std::fs::read_dir("/dev/shm") {
                for e in dir.flatten() {
                    if e.file_name().to_string_lossy().starts_with(name.as_str()) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
    }
}

fn unique() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The three stores every test runs on: sqlite (in `dir`), shm and redis.
fn stores(dir: &TempDir) -> Vec<Store> {
    let shm = format!("lsm-run-test-{}", unique());
    vec![
        Store {
            url: dir.sqlite(),
            shm: None,
        },
        Store {
            url: format!("shm:{shm}"),
            shm: Some(shm),
        },
        Store {
            url: format!("{}?prefix=run{}:", redis_url(), unique()),
            shm: None,
        },
    ]
}

/// `LOCKSMITH_REDIS_URL`, or a `redis-server` started once for this test process on a
/// free loopback port (it dies with the process).
fn redis_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Some(url) = std::env::var("LOCKSMITH_REDIS_URL")
            .ok()
            .filter(|u| !u.is_empty())
        {
            return url;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        // The server is told to die with the thread that started it: a thread that
        // lives as long as this process.
        let (started, wait) = mpsc::channel();
        std::thread::spawn(move || {
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: runs in the child between fork and exec; prctl is
            // async-signal-safe and touches no memory.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = cmd.spawn();
            let _ = started.send(child.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            loop {
                std::thread::park();
            }
        });
        if let Err(e) = wait.recv().expect("the server thread answers") {
            panic!("cannot start redis-server (install it, or set LOCKSMITH_REDIS_URL): {e}");
        }
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            let pong = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
                s.write_all(b"PING\r\n")?;
                let mut buf = [0u8; 7];
                s.read_exact(&mut buf)?;
                Ok(buf)
            });
            if matches!(pong, Ok(b) if &b == b"+PONG\r\n") {
                break;
            }
            assert!(Instant::now() < deadline, "redis-server never came up");
            std::thread::sleep(Duration::from_millis(20));
        }
        format!("redis://127.0.0.1:{port}/0")
    })
}

/// Waits (a hang guard, never a timed assertion) until `cond` holds.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG_GUARD;
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// `locksmith --store STORE run ARGS -- bash -c SCRIPT`, started in the background.
fn spawn_run(store: &str, args: &[&str], script: &str) -> Child {
    locksmith()
        .args(["--store", store, "run"])
        .args(args)
        .args(["--", "bash", "-c", script])
        .stdin(Stdio::null())
        .spawn()
        .expect("start locksmith run")
}

/// The successor's section: it notes whether the process `pid_file` names still
/// runs as it starts, then marks its section in `log` for a while.
fn successor(store: &str, name: &str, pid_file: &Path, log: &Path) {
    let script = format!(
        "if kill -0 \"$(cat {pids})\" 2>/dev/null; then echo overlap >> {log}; fi; \
         echo died=$LOCKSMITH_PREVIOUS_OWNER_DIED >> {log}; \
         echo second >> {log}; sleep 1; echo second-end >> {log}",
        pids = pid_file.display(),
        log = log.display()
    );
    let mut second = spawn_run(store, &["--lock", name, "--timeout", "60s"], &script);
    let status = wait_guarded(&mut second);
    assert!(status.success(), "the successor failed: {status:?}");
}

/// Lines of `log` written after the successor's `second`, that are not its own.
fn written_after_second(log: &str) -> Vec<&str> {
    log.lines()
        .skip_while(|l| *l != "second")
        .filter(|l| !l.starts_with("second"))
        .collect()
}

/// Item 4: `run`'s launcher is SIGKILLed while a grandchild of the command (a
/// subshell) writes to a file; the next holder must not get the lock while any
/// process of that tree still runs.
#[test]
fn run_killed_tree_never_outlives_hold() {
    let dir = TempDir::new();
    for store in stores(&dir) {
        let log = dir.path().join(format!("tree-{}.log", unique()));
        let pid_file = dir.path().join(format!("tree-{}.pid", unique()));
        // The subshell ticks every 0.1 s for 4 s; `; true` keeps bash from exec'ing it.
        let script = format!(
            "( echo $BASHPID > {pids}; for i in $(seq 40); do echo orphan >> {log}; \
             sleep 0.1; done ); true",
            pids = pid_file.display(),
            log = log.display()
        );
        let mut first = spawn_run(&store.url, &["--lock", "tree"], &script);
        wait_until("the first command writes", || read(&log).contains("orphan"));
        first.kill().expect("SIGKILL locksmith");
        let _ = first.wait();
        successor(&store.url, "tree", &pid_file, &log);
        let log_text = read(&log);
        assert!(
            !log_text.contains("overlap"),
            "{}: a process of the killed run's tree still ran when the next holder got the \
             lock:\n{log_text}",
            store.url
        );
        let late = written_after_second(&log_text);
        assert!(
            late.is_empty(),
            "{}: the killed run's tree wrote {} line(s) inside the next holder's section",
            store.url,
            late.len()
        );
        assert!(
            log_text.contains("died=1"),
            "{}: the next holder is told the previous one died (its command was killed)",
            store.url
        );
        let orphan: i32 = read(&pid_file).trim().parse().expect("the subshell's pid");
        assert!(!pid_alive(orphan), "{}: the orphan survived", store.url);
    }
}

/// Item 5: a hold broken under a running command (`break --force`) stops the command
/// at once (`--on-lost term`, the default), `run` exits 3, and nothing of the tree runs
/// on into the next holder's section. The command would otherwise tick for 20 s.
#[test]
fn run_on_lost_stops_the_command() {
    let dir = TempDir::new();
    for store in stores(&dir) {
        let log = dir.path().join(format!("lost-{}.log", unique()));
        let pid_file = dir.path().join(format!("lost-{}.pid", unique()));
        // About 20 s of ticks, then `finished`: the hold's loss must stop it first.
        let script = format!(
            "( echo $BASHPID > {pids}; for i in $(seq 400); do echo tick >> {log}; \
             sleep 0.05; done; echo finished >> {log} ); true",
            pids = pid_file.display(),
            log = log.display()
        );
        let mut first = spawn_run(&store.url, &["--lock", "lost", "--lease", "1s"], &script);
        wait_until("the command writes", || read(&log).contains("tick"));
        let out = locksmith()
            .args(["--store", &store.url, "break", "lost", "--force"])
            .output()
            .expect("run break");
        assert!(out.status.success(), "break --force failed: {out:?}");
        let status = wait_guarded(&mut first);
        assert_eq!(
            status.code(),
            Some(3),
            "{}: run exits 3 when its hold is lost",
            store.url
        );
        successor(&store.url, "lost", &pid_file, &log);
        let log_text = read(&log);
        assert!(
            !log_text.contains("finished"),
            "{}: the command ran to its end",
            store.url
        );
        assert!(!log_text.contains("overlap"), "{}: {log_text}", store.url);
        assert!(
            written_after_second(&log_text).is_empty(),
            "{}: the lost holder's command wrote in the next holder's section",
            store.url
        );
    }
}

/// Item 5, by a pause: the whole `run` (launcher, holder and command) is stopped past
/// its lease, the next holder takes the lock, and once continued the holder learns of
/// the loss at its next renewal and stops the command (which would tick for 20 s):
/// `run` exits 3 before the command's loop finishes.
#[test]
fn run_paused_past_its_lease_stops_the_command() {
    let dir = TempDir::new();
    let store = dir.sqlite();
    let log = dir.path().join("paused.log");
    let script = format!(
        "for i in $(seq 400); do echo tick >> {log}; sleep 0.05; done; echo finished >> {log}",
        log = log.display()
    );
    let mut first = locksmith()
        .args(["--store", &store, "run", "--lock", "p", "--lease", "1s"])
        .args(["--", "bash", "-c", &script])
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start locksmith run");
    let group = i32::try_from(first.id()).unwrap();
    wait_until("the command writes", || read(&log).contains("tick"));
    // SAFETY: kill(2) on the run's own process group.
    unsafe { libc::kill(-group, libc::SIGSTOP) };
    let out = locksmith()
        .args([
            "--store",
            &store,
            "run",
            "--lock",
            "p",
            "--timeout",
            "60s",
            "--",
        ])
        .args(["sh", "-c", "echo $LOCKSMITH_TOKEN"])
        .output()
        .expect("run the next holder");
    assert!(out.status.success(), "{out:?}");
    // SAFETY: as above.
    unsafe { libc::kill(-group, libc::SIGCONT) };
    let status = wait_guarded(&mut first);
    assert_eq!(status.code(), Some(3), "run exits 3 when its hold is lost");
    assert!(
        !read(&log).contains("finished"),
        "the command ran to its end after its hold was lost"
    );
}

/// Item 9: a queued `run` given SIGTERM, SIGINT, SIGHUP (or SIGKILL) leaves the queue
/// before it is gone, so the next waiter gets the lock as soon as it is released.
#[test]
fn run_waiter_ended_by_a_signal_leaves_the_queue() {
    let dir = TempDir::new();
    for store in stores(&dir) {
        let holder = common::Holder::start(&store.url, &["--lock", "q"], "");
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGKILL] {
            let mut waiter = locksmith()
                .args(["--store", &store.url, "run", "--lock", "q", "--", "true"])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start a waiter");
            common::wait_for_waiters(&store.url, "q", 1);
            // SAFETY: kill(2) on a child of this test.
            unsafe { libc::kill(i32::try_from(waiter.id()).unwrap(), sig) };
            let status = wait_guarded(&mut waiter);
            if sig == libc::SIGKILL {
                // The waiting part of run learns of it from the launcher's end: wait
                // until it has left (a hang guard).
                wait_until("the killed waiter leaves the queue", || {
                    waiting(&store.url) == 0
                });
            } else {
                assert_eq!(
                    waiting(&store.url),
                    0,
                    "{}: the waiter ended by signal {sig} is still queued after it exited",
                    store.url
                );
                assert_eq!(
                    status.code(),
                    Some(128 + sig),
                    "{}: a waiter ended by signal {sig} exits 128+{sig}",
                    store.url
                );
            }
        }
        // The next waiter gets the lock once it is released.
        let mut next = locksmith()
            .args(["--store", &store.url, "run", "--lock", "q", "--"])
            .args(["sh", "-c", "echo next"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the next waiter");
        common::wait_for_waiters(&store.url, "q", 1);
        assert!(holder.finish().success());
        let status = wait_guarded(&mut next);
        assert!(status.success());
        let mut line = String::new();
        BufReader::new(next.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "next");
    }
}

/// How many wait for `q` in `store`, by `status --json`.
fn waiting(store: &str) -> u64 {
    let doc = status_json(store);
    primitive(&doc, "q")
        .and_then(|p| p["waiting"].as_u64())
        .unwrap_or(0)
}

/// Item 5: `--on-lost kill` ends even a command that ignores SIGTERM, and
/// `--on-lost ignore` lets the command finish; `run` exits 3 either way.
#[test]
fn run_on_lost_kill_and_ignore() {
    let dir = TempDir::new();
    let store = dir.sqlite();
    for (action, rounds, finishes) in [("kill", 400, false), ("ignore", 60, true)] {
        let log = dir.path().join(format!("{action}.log"));
        let script = format!(
            "trap '' TERM; echo started >> {log}; for i in $(seq {rounds}); do sleep 0.05; \
             done; echo finished >> {log}",
            log = log.display()
        );
        let name = format!("on-lost-{action}");
        let mut first = spawn_run(
            &store,
            &["--lock", &name, "--lease", "1s", "--on-lost", action],
            &script,
        );
        wait_until("the command starts", || read(&log).contains("started"));
        let out = locksmith()
            .args(["--store", &store, "break", &name, "--force"])
            .output()
            .expect("run break");
        assert!(out.status.success(), "break --force failed: {out:?}");
        let status = wait_guarded(&mut first);
        assert_eq!(status.code(), Some(3), "--on-lost {action}: run exits 3");
        assert_eq!(
            read(&log).contains("finished"),
            finishes,
            "--on-lost {action}: the command {} finish",
            if finishes { "should" } else { "should not" }
        );
    }
}
