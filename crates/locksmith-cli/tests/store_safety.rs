//! Issue 12's promises of the `sqlite:` and `shm:` stores, through the real binary: a
//! full disk or `/dev/shm` is an error (exit 3) and never a `SIGBUS`, and the store
//! works again once space is freed; messages that say the real cause. Each test is
//! named after the item it pins.
//!
//! The full filesystems are small tmpfs mounts made inside a private mount namespace
//! (`unshare --mount`, as root, which CI is), so they vanish with the test's shell even
//! if the test fails half-way.

mod common;

use std::process::{Command, Output};

use common::TempDir;

/// Runs `script` with `sh -e` in a private mount namespace, with `$LS` the locksmith
/// binary, and answers its output (stdout and stderr together, in order).
fn in_mount_namespace(script: &str) -> String {
    let out: Output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-ec"])
        .arg(format!("exec 2>&1\n{script}"))
        .env("LS", env!("CARGO_BIN_EXE_locksmith"))
        .env_remove("LOCKSMITH_STORE")
        .output()
        .expect("run unshare (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "the script failed: {text}");
    text
}

/// The value the script printed as `KEY=value`.
fn said<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in: {out}"))
}

#[test]
fn item6_a_full_filesystem_is_an_error_for_sqlite_not_sigbus() {
    let dir = TempDir::new();
    let out = in_mount_namespace(&format!(
        r#"
mount -t tmpfs -o size=1M tmpfs {dir}
cd {dir}
# At most 4 MiB, whatever happens to the mount: only ever fills the 1 MiB tmpfs.
fill() {{ dd if=/dev/zero of=filler bs=16k count=256 2>/dev/null || true; }}
# A new store on a full filesystem.
fill
rc=0; "$LS" --store sqlite:{dir}/new.db run --lock a -- true || rc=$?
echo NEW=$rc
echo BELL_ON_FULL=$(ls -a | grep -c -- '-bell$' || true)
rm filler
rc=0; "$LS" --store sqlite:{dir}/new.db run --lock a -- true || rc=$?
echo NEW_FREED=$rc
# A store whose doorbell went missing, on a full filesystem.
rm new.db-bell
fill
rc=0; "$LS" --store sqlite:{dir}/new.db run --lock a -- true || rc=$?
echo REBELL=$rc
rm filler
rc=0; "$LS" --store sqlite:{dir}/new.db run --lock a -- true || rc=$?
echo REBELL_FREED=$rc
test -s new.db-bell && echo BELL_BACK=1
"#,
        dir = dir.path().display()
    ));
    // Before: 135 (SIGBUS) for both, on the first write to the doorbell's page.
    assert_eq!(said(&out, "NEW"), "3", "{out}");
    assert!(out.contains("is full"), "the message says why: {out}");
    assert_eq!(said(&out, "BELL_ON_FULL"), "0", "{out}");
    assert_eq!(said(&out, "NEW_FREED"), "0", "{out}");
    assert_eq!(said(&out, "REBELL"), "3", "{out}");
    let rebell = out.split("NEW_FREED=").nth(1).unwrap_or_default();
    assert!(rebell.contains("full"), "the message says why: {out}");
    assert_eq!(said(&out, "REBELL_FREED"), "0", "{out}");
    assert_eq!(said(&out, "BELL_BACK"), "1", "{out}");
}

#[test]
fn item6_a_full_dev_shm_is_an_error_for_shm_not_sigbus() {
    let out = in_mount_namespace(
        r#"
# /dev/shm too small for a new region: its slot table is reserved at creation.
mount -t tmpfs -o size=1M tmpfs /dev/shm
rc=0; "$LS" --store shm:s run --lock a -- true || rc=$?
echo CREATE=$rc
echo LEFT=$(ls -A /dev/shm | wc -l)
umount /dev/shm
# Room for the region, then /dev/shm filled: new names that need arena pages.
mount -t tmpfs -o size=2M tmpfs /dev/shm
"$LS" --store 'shm:s?capacity=1024&arena=4M' run --lock a -- true
dd if=/dev/zero of=/dev/shm/filler bs=16k count=256 2>/dev/null || true
long=$(printf 'n%.0s' $(seq 1 240))
rc=0
for i in $(seq 1 400); do
  "$LS" --store shm:s run --lock "$long$i" -- true || { rc=$?; break; }
done
echo NAMES=$rc
rm /dev/shm/filler
rc=0; "$LS" --store shm:s run --lock "${long}again" -- true || rc=$?
echo FREED=$rc
"#,
    );
    // Before: CREATE succeeded (a sparse region), and the first new name on the full
    // /dev/shm died with 135 (SIGBUS).
    assert_eq!(said(&out, "CREATE"), "3", "{out}");
    assert!(out.contains("No space left on device"), "{out}");
    assert_eq!(said(&out, "LEFT"), "0", "nothing left behind: {out}");
    assert_eq!(said(&out, "NAMES"), "3", "{out}");
    assert_eq!(said(&out, "FREED"), "0", "{out}");
}

/// A throwaway user, made with `useradd` (we are root) and removed on drop.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TestUser {
    fn new(tag: &str) -> TestUser {
        let name = format!("lsm{tag}{}", std::process::id() % 100_000);
        let _ = Command::new("userdel").arg(&name).output();
        let made = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/usr/sbin/nologin", &name])
            .output()
            .expect("run useradd");
        assert!(made.status.success(), "useradd: {made:?}");
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").args([flag, &name]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        TestUser { name, uid, gid }
    }

    /// The locksmith binary, run as this user.
    fn locksmith(&self) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .arg(env!("CARGO_BIN_EXE_locksmith"))
            .env_remove("LOCKSMITH_STORE");
        cmd
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// A `/dev/shm` file, removed on drop.
struct ShmFile(String);

impl ShmFile {
    fn new(tag: &str) -> ShmFile {
        let name = format!("locksmith-test-{tag}-{}", std::process::id());
        let _ = std::fs::remove_file(format!("/dev/shm/{name}"));
        ShmFile(name)
    }
}

impl Drop for ShmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/dev/shm/{}", self.0));
    }
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn item13_another_users_region_says_permission_denied() {
    let user = TestUser::new("rg");
    let region = ShmFile::new("theirs");
    let store = format!("shm:{}", region.0);
    let made = common::locksmith()
        .args(["--store", &store, "run", "--lock", "a", "--", "true"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let out = user
        .locksmith()
        .args(["--store", &store, "status"])
        .output()
        .unwrap();
    let err = stderr_of(&out);
    // Before: "cannot create /dev/shm/NAME: it exists".
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(!err.contains("it exists"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[test]
fn item13_an_empty_dev_shm_file_is_not_taken_for_a_region() {
    let region = ShmFile::new("empty");
    std::fs::write(format!("/dev/shm/{}", region.0), b"").unwrap();
    let out = common::locksmith()
        .args(["--store", &format!("shm:{}", region.0), "status"])
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not a locksmith shm: store"), "{err}");
    assert!(!err.contains("it exists"), "{err}");
    let len = std::fs::metadata(format!("/dev/shm/{}", region.0))
        .unwrap()
        .len();
    assert_eq!(len, 0, "left as it was");
}

#[test]
fn item13_a_doorbell_of_another_user_is_warned_about_once() {
    let user = TestUser::new("bl");
    let dir = TempDir::new();
    let store = dir.sqlite();
    let run = |name: &str| {
        common::locksmith()
            .args(["--store", &store, "run", "--lock", name, "--", "true"])
            .output()
            .unwrap()
    };
    let first = run("a");
    assert!(first.status.success(), "{first:?}");
    assert!(!stderr_of(&first).contains("doorbell"), "{first:?}");
    let bell = dir.path().join("locks.db-bell");
    std::os::unix::fs::chown(&bell, Some(user.uid), Some(user.gid)).unwrap();
    let out = run("a");
    let err = stderr_of(&out);
    // Before: nothing said, and every hand-off waited for the 250 ms poll.
    assert!(out.status.success(), "{err}");
    let warnings = err.lines().filter(|l| l.contains("doorbell")).count();
    assert_eq!(warnings, 1, "warned once: {err}");
    assert!(err.contains("poll"), "says what it costs: {err}");
}

#[test]
fn item13_status_escapes_control_characters_in_names() {
    let dir = TempDir::new();
    let store = dir.sqlite();
    let forged = "evil\nforged                 9        9\u{1b}[2K";
    for name in [forged, "plain"] {
        let out = common::locksmith()
            .args(["--store", &store, "run", "--lock", name, "--", "true"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let out = common::locksmith()
        .args(["--store", &store, "status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    // A header, a line per name, nothing else: no forged row, no escape sequence.
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines.iter().all(|l| !l.starts_with("forged")), "{text}");
    assert!(!text.contains('\u{1b}'), "{text}");
    assert!(text.contains("evil\\nforged"), "{text}");
    assert!(text.contains("\\u{1b}[2K"), "{text}");
}

#[test]
fn item14_status_says_how_full_a_region_is() {
    let region = ShmFile::new("usage");
    let store = format!("shm:{}?capacity=64", region.0);
    for name in ["a", "b", "c"] {
        let out = common::locksmith()
            .args(["--store", &store, "run", "--lock", name, "--", "true"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let out = common::locksmith()
        .args(["--store", &store, "status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("names 3 of 56 (5% full"), "{text}");
    let doc = common::status_json(&store);
    assert_eq!(doc["usage"]["names"], 3, "{doc}");
    assert_eq!(doc["usage"]["limit"], 56, "{doc}");
}

#[test]
fn item14_evict_idle_forgets_idle_names_and_tokens_go_on() {
    let dir = TempDir::new();
    let store = dir.sqlite();
    let token = |name: &str| -> u64 {
        let out = common::locksmith()
            .args(["--store", &store, "run", "--lock", name, "--", "sh", "-c"])
            .arg("echo $LOCKSMITH_TOKEN")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let mut last = 0;
    for _ in 0..3 {
        last = token("job");
    }
    let out = common::locksmith()
        .args(["--store", &store, "evict", "--idle"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("forgot 1 idle name"), "{text}");
    let doc = common::status_json(&store);
    assert_eq!(doc["primitives"].as_array().map(Vec::len), Some(0), "{doc}");
    assert!(token("job") > last, "the token went on past {last}");
}
