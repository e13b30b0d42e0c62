//! Helpers for the tests that drive the real `locksmith` binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long any one wait may take before a test calls it a hang.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// The built binary, with no store taken from the environment.
pub fn locksmith() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_locksmith"));
    cmd.env_remove("LOCKSMITH_STORE");
    cmd
}

/// A fresh directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Makes a fresh, empty directory.
    #[allow(clippy::new_without_default)]
    pub fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "locksmith-cli-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A sqlite store URL in this directory.
    pub fn sqlite(&self) -> String {
        format!("sqlite:{}", self.0.join("locks.db").display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits for `child` at most [`HANG_GUARD`]; kills it and panics past that.
pub fn wait_guarded(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a locksmith process hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `locksmith run` whose command says `inside` on stdout, then waits for a line on
/// stdin before it ends: the test knows exactly when it holds and lets it go.
#[derive(Debug)]
pub struct Holder {
    /// The `locksmith run` process.
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Holder {
    /// Starts `locksmith --store STORE run ARGS -- sh -c SCRIPT` and waits until the
    /// command is inside. `script` runs before `echo inside; read x`.
    pub fn start(store: &str, args: &[&str], script: &str) -> Holder {
        Holder::start_around(store, args, script, "")
    }

    /// As [`Holder::start`], with `after` run once the test lets the command go.
    pub fn start_around(store: &str, args: &[&str], script: &str, after: &str) -> Holder {
        let mut child = locksmith()
            .args(["--store", store, "run"])
            .args(args)
            .args([
                "--",
                "sh",
                "-c",
                &format!("{script} echo inside; read x; {after}"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start locksmith run");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read from the holder");
        assert_eq!(line.trim(), "inside", "the holder never got in");
        Holder {
            child,
            stdin,
            stdout,
        }
    }

    /// The pid of the process that holds the lock, as `status` shows it: the child
    /// of the `locksmith run` the test started (that one forwards signals and waits).
    pub fn pid(&self) -> u32 {
        holding_process(self.child.id())
    }

    /// Lets the command end and returns locksmith's status.
    pub fn finish(mut self) -> ExitStatus {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin);
        }
        let status = wait_guarded(&mut self.child);
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.stdout, &mut rest);
        status
    }
}

/// The holding process of the `locksmith run` whose pid is `launcher`: its only child.
pub fn holding_process(launcher: u32) -> u32 {
    let children = std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
            after.split_whitespace().nth(1) == Some(&launcher.to_string())
        })
        .collect::<Vec<_>>();
    assert_eq!(
        children.len(),
        1,
        "run {launcher} has one child: {children:?}"
    );
    children[0]
}

/// Runs `locksmith --store STORE status --json` and parses it.
pub fn status_json(store: &str) -> serde_json::Value {
    let out = locksmith()
        .args(["--store", store, "status", "--json"])
        .output()
        .expect("run status");
    assert!(out.status.success(), "status failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
}

/// The primitive `name` in a `status --json` document.
pub fn primitive<'a>(doc: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    doc["primitives"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
}

/// Polls `status --json` until `name` has `n` waiters (a hang guard, not a sleep for
/// synchronization: the test proceeds as soon as the store says so).
pub fn wait_for_waiters(store: &str, name: &str, n: u64) {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let doc = status_json(store);
        if primitive(&doc, name).and_then(|p| p["waiting"].as_u64()) >= Some(n) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never had {n} waiters");
        std::thread::sleep(Duration::from_millis(20));
    }
}
