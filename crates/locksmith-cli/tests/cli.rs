//! The `locksmith` binary, driven as users drive it. Cases that need a store other
//! processes can open are in `cross_process.rs`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use assert_cmd::Command;
use common::{locksmith, primitive, status_json, wait_guarded, TempDir};

fn cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_locksmith"));
    c.env_remove("LOCKSMITH_STORE").timeout(common::HANG_GUARD);
    c
}

/// Exactly one line on stderr, starting `locksmith: `.
fn one_error_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr).into_owned();
    assert_eq!(text.lines().count(), 1, "not one line: {text:?}");
    assert!(text.starts_with("locksmith: "), "{text:?}");
    text
}

#[test]
fn bad_store_url_is_exit_2_with_one_line() {
    for url in ["bogus", "nosuch://x"] {
        let out = cmd().args(["--store", url, "status"]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{url}");
        let line = one_error_line(&out.stderr);
        assert!(line.contains(url), "{line}");
    }
}

#[test]
fn bad_durations_are_exit_2_with_one_line() {
    for d in ["-1s", "NaN", "soon", "10 parsecs", "-0.5", "inf"] {
        let out = cmd()
            .args([
                "--store",
                "mem:",
                "run",
                "--lock",
                "x",
                "--timeout",
                d,
                "--",
                "true",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{d}");
        let line = one_error_line(&out.stderr);
        assert!(
            line.contains("duration") || line.contains("negative"),
            "{line}"
        );
    }
    let out = cmd()
        .args(["barrier", "b", "--parties", "2", "--timeout", "-2m"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    one_error_line(&out.stderr);
}

#[test]
fn missing_command_is_exit_2() {
    let out = cmd()
        .args(["--store", "mem:", "run", "--lock", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let line = one_error_line(&out.stderr);
    assert!(line.contains("needs a command"), "{line}");
    let out = cmd()
        .args(["--store", "mem:", "run", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "neither --lock nor --semaphore");
    one_error_line(&out.stderr);
}

#[test]
fn bad_input_is_exit_2() {
    for args in [
        &["frobnicate"][..],
        &["barrier", "b", "--parties", "0"],
        &["run", "--semaphore", "s", "--", "true"],
        &["run", "--semaphore", "s", "--permits", "0", "--", "true"],
        &["avg", "add", "a", "lots"],
        &["avg", "add", "a", "NaN"],
        &["event", "set", ""],
    ] {
        let out = cmd()
            .arg("--store")
            .arg("mem:")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        one_error_line(&out.stderr);
    }
}

#[test]
fn help_has_examples_and_exit_codes() {
    let out = cmd().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Examples:") && text.contains("Exit codes:"),
        "{text}"
    );
    let out = cmd().args(["run", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--conflict-exit-code"));
}

#[test]
fn run_exits_with_the_commands_status_and_passes_the_token() {
    let out = cmd()
        .args(["--store", "mem:", "run", "--lock", "x", "--"])
        .args(["sh", "-c", "echo token=$LOCKSMITH_TOKEN; exit 7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "token=1");
    cmd()
        .args([
            "--store",
            "mem:",
            "run",
            "--semaphore",
            "s",
            "--permits",
            "3",
            "--",
            "true",
        ])
        .assert()
        .success();
    cmd()
        .args([
            "--store", "mem:", "run", "--lock", "x", "--shared", "--", "true",
        ])
        .assert()
        .success();
}

#[test]
fn a_command_killed_by_a_signal_gives_128_plus_n() {
    cmd()
        .args([
            "--store",
            "mem:",
            "run",
            "--lock",
            "x",
            "--",
            "sh",
            "-c",
            "kill -KILL $$",
        ])
        .assert()
        .code(128 + 9);
}

#[test]
fn a_missing_command_gives_127() {
    let out = cmd()
        .args([
            "--store",
            "mem:",
            "run",
            "--lock",
            "x",
            "--",
            "/nonexistent/locksmith-test",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    one_error_line(&out.stderr);
}

#[test]
fn signals_to_locksmith_reach_the_command() {
    for (sig, name) in [
        (libc::SIGTERM, "TERM"),
        (libc::SIGINT, "INT"),
        (libc::SIGHUP, "HUP"),
        (libc::SIGQUIT, "QUIT"),
    ] {
        let script = format!(
            "trap 'echo got-{name}; exit 42' {name}; echo ready; while :; do sleep 0.05; done"
        );
        let mut child = locksmith()
            .args([
                "--store", "mem:", "run", "--lock", "x", "--", "sh", "-c", &script,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        let pid = i32::try_from(child.id()).unwrap();
        // SAFETY: kill(2) has no memory-safety preconditions; pid is our own child.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        let status = wait_guarded(&mut child);
        line.clear();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), format!("got-{name}"));
        assert_eq!(status.code(), Some(42), "{name}");
    }
}

#[test]
fn event_status_and_empty_average_exit_1() {
    let out = cmd()
        .args(["--store", "mem:", "event", "status", "e"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "clear");
    cmd()
        .args(["--store", "mem:", "avg", "pop", "a"])
        .assert()
        .code(1)
        .stdout("");
    cmd()
        .args(["--store", "mem:", "avg", "add", "a", "-1.5"])
        .assert()
        .success();
    cmd()
        .args(["--store", "mem:", "barrier", "b", "--parties", "1"])
        .assert()
        .success()
        .stdout("0\n");
    cmd()
        .args(["--store", "mem:", "event", "wait", "e", "--timeout", "10ms"])
        .assert()
        .code(1);
}

#[test]
fn status_and_break_on_an_empty_store() {
    cmd().args(["--store", "mem:", "status"]).assert().success();
    let out = cmd()
        .args(["--store", "mem:", "status", "--json"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["store"], "mem:");
    assert_eq!(doc["primitives"], serde_json::json!([]));
    cmd()
        .args(["--store", "mem:", "break", "x"])
        .assert()
        .success();
    cmd()
        .args(["--store", "mem:", "evict", "--tag", "t"])
        .assert()
        .success();
}

#[test]
fn demo_on_mem_runs_threads_and_passes() {
    let out = cmd()
        .args([
            "--store",
            "mem:",
            "demo",
            "--processes",
            "3",
            "--iterations",
            "20",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("threads") && text.contains("every check passed"),
        "{text}"
    );
}

#[test]
fn the_command_dies_with_a_sigkilled_locksmith() {
    let mut child = locksmith()
        .args(["--store", "mem:", "run", "--lock", "x", "--"])
        .args(["sh", "-c", "echo inside; read x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let _stdin = child.stdin.take();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "inside");
    child.kill().unwrap();
    let _ = child.wait();
    // The command held the only other copy of its stdout: EOF means it died.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut rest);
        let _ = tx.send(rest);
    });
    let rest = rx
        .recv_timeout(common::HANG_GUARD)
        .expect("the command outlived its locksmith");
    assert_eq!(rest, "");
}

/// Item 12.8: `--lease` is bounded with a clear usage error, and `status` prints any
/// lease end, even one past year 9999 that a program took through the library.
#[test]
fn status_never_panics_on_a_lease_past_year_9999() {
    let dir = TempDir::new();
    let store = dir.sqlite();
    let out = locksmith()
        .args([
            "--store", &store, "run", "--lock", "l", "--lease", "8000y", "--", "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at most 10 years"), "{err}");
    let out = locksmith()
        .args([
            "--store", &store, "run", "--lock", "l", "--lease", "10y", "--", "true",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "ten years is accepted: {out:?}");

    let space = locksmith::Space::open(&store).unwrap();
    let _held = space
        .lock("forever")
        .lease(std::time::Duration::MAX)
        .acquire()
        .unwrap();
    let out = locksmith()
        .args(["--store", &store, "status"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("lease until after 9999-12-31"), "{text}");
    let doc = status_json(&store);
    let holder = &primitive(&doc, "forever").unwrap()["holders"][0];
    assert_eq!(holder["lease_until"], "after 9999-12-31T23:59:59.999Z");
    assert!(holder["lease_until_ms"].as_u64().unwrap() > 253_402_300_799_999);
}

/// Issue 19 item 14: `locksmith destroy` removes a sqlite store and its side files,
/// refusing (exit 1) while a lock of it is held unless `--force`.
#[test]
fn destroy_removes_a_store_unless_in_use() {
    let dir = TempDir::new();
    let db = dir.path().join("locks.sqlite");
    let url = format!("sqlite:{}", db.display());
    let space = locksmith::Space::open(&url).unwrap();
    let held = space.lock("deploy").acquire().unwrap();
    let out = cmd().args(["destroy", &url]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(one_error_line(&out.stderr).contains("'deploy' is in use"));
    assert!(db.exists(), "refused: nothing removed");
    drop(held);
    // Through --store (or $LOCKSMITH_STORE), as every other command names its store.
    cmd()
        .args(["--store", &url, "destroy"])
        .assert()
        .success()
        .stdout(format!("removed {url}\n"));
    for suffix in ["", "-wal", "-shm", "-bell"] {
        let f = format!("{}{suffix}", db.display());
        assert!(!std::path::Path::new(&f).exists(), "{f} is left");
    }
    cmd()
        .args(["destroy", &url])
        .assert()
        .success()
        .stdout(format!("no store at {url}\n"));
    // Held, but forced.
    let space = locksmith::Space::open(&url).unwrap();
    let _held = space.lock("deploy").acquire().unwrap();
    cmd().args(["destroy", &url, "--force"]).assert().success();
    assert!(!db.exists());
    // Naming no store is bad input: the default store is never removed by accident.
    let out = cmd().arg("destroy").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
