//! Item 12.7: an average that would overflow is refused, and a record that cannot be
//! decoded (a disk fault, an older build's bug) is its own name's problem only: `status`
//! lists it as damaged, `break --force` (and, on sqlite, `evict`) resets it, and every
//! other name and command keeps working. On `sqlite:` and `shm:`, through the binary.

mod common;

use std::process::Output;

use common::{locksmith, primitive, status_json, TempDir};

fn run(store: &str, args: &[&str]) -> Output {
    locksmith()
        .args(["--store", store])
        .args(args)
        .output()
        .expect("run locksmith")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The token the next `run --lock NAME` gets.
fn next_token(store: &str, name: &str) -> u64 {
    let out = run(
        store,
        &[
            "run",
            "--lock",
            name,
            "--",
            "sh",
            "-c",
            "echo $LOCKSMITH_TOKEN",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    stdout(&out).trim().parse().unwrap()
}

/// `avg add big 1e308` twice: the second is refused (exit 2, one line) and changes
/// nothing; the store keeps working.
fn overflowing_add_is_refused(store: &str) {
    assert!(run(store, &["avg", "add", "big", "1e308"]).status.success());
    let out = run(store, &["avg", "add", "big", "1e308"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("overflow") && err.lines().count() == 1,
        "{err}"
    );
    let out = run(store, &["avg", "get", "big"]);
    assert_eq!(
        stdout(&out).trim().parse::<f64>().unwrap(),
        1e308,
        "{out:?}"
    );
    assert!(run(store, &["status"]).status.success());
    assert!(run(store, &["status", "--json"]).status.success());
    let out = run(store, &["avg", "pop", "big"]);
    assert!(out.status.success(), "{out:?}");
}

/// With `big`'s record damaged (by `damage`), only `big` fails; `break --force` resets
/// it, keeping every fencing counter.
fn damaged_record_is_its_own_names_problem(store: &str, damage: impl Fn()) {
    let before = next_token(store, "other");
    assert!(run(store, &["avg", "add", "big", "1e308"]).status.success());
    damage();

    let out = run(store, &["status"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.lines()
            .any(|l| l.starts_with("big ") && l.contains("damaged")),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("other ")), "{text}");
    let doc = status_json(store);
    assert!(
        primitive(&doc, "big").unwrap()["damaged"].is_string(),
        "{doc}"
    );
    assert!(primitive(&doc, "other").unwrap()["damaged"].is_null());

    let out = run(store, &["avg", "get", "big"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(stderr(&out).contains("damaged"), "{out:?}");
    assert_eq!(next_token(store, "other"), before + 1, "other names work");
    assert!(run(store, &["evict", "--tag", "nothing"]).status.success());

    let out = run(store, &["break", "big"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "refused without --force: {out:?}"
    );
    let out = run(store, &["break", "big", "--force"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(store, &["avg", "get", "big"]);
    assert_eq!(out.status.code(), Some(1), "reset to empty: {out:?}");
    assert!(run(store, &["avg", "add", "big", "2"]).status.success());
    assert_eq!(stdout(&run(store, &["avg", "get", "big"])).trim(), "2");
    assert!(!stdout(&run(store, &["status"])).contains("damaged"));
    assert_eq!(next_token(store, "other"), before + 2);
}

#[test]
fn sqlite_avg_overflow_is_refused() {
    let dir = TempDir::new();
    overflowing_add_is_refused(&dir.sqlite());
}

#[test]
fn shm_avg_overflow_is_refused() {
    let region = Region::new("overflow");
    overflowing_add_is_refused(&region.url());
}

fn sqlite_exec(dir: &TempDir, sql: &str) {
    let conn = rusqlite::Connection::open(dir.path().join("locks.db")).unwrap();
    assert_eq!(conn.execute(sql, []).unwrap(), 1, "{sql}");
}

#[test]
fn sqlite_damaged_record_is_listed_and_reset() {
    let dir = TempDir::new();
    let store = dir.sqlite();
    // What an older build wrote for an infinite sum: `null`.
    damaged_record_is_its_own_names_problem(&store, || {
        sqlite_exec(
            &dir,
            "UPDATE prim SET state = CAST(replace(CAST(state AS TEXT), '1e+308', 'null') AS BLOB) \
             WHERE name = 'big'",
        )
    });
    // `evict` resets a damaged record by its tag (a column of its own on sqlite).
    sqlite_exec(
        &dir,
        "UPDATE prim SET state = X'7B', tag = 'job' WHERE name = 'big'",
    );
    assert!(stdout(&run(&store, &["status"])).contains("damaged"));
    let out = run(&store, &["evict", "--tag", "job"]);
    assert!(stdout(&out).contains("evicted 1"), "{out:?}");
    assert!(!stdout(&run(&store, &["status"])).contains("damaged"));
}

/// A `shm:` region of this test, removed on drop.
struct Region(String);

impl Region {
    fn new(what: &str) -> Region {
        Region(format!("locksmith-cli-{what}-{}", std::process::id()))
    }

    fn url(&self) -> String {
        format!("shm:{}", self.0)
    }

    fn path(&self) -> String {
        format!("/dev/shm/{}", self.0)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.path());
    }
}

#[test]
fn shm_damaged_record_is_listed_and_reset() {
    let region = Region::new("reset");
    damaged_record_is_its_own_names_problem(&region.url(), || {
        // What an older build wrote for an infinite sum, in place: `null  ` for `1e+308`.
        let mut bytes = std::fs::read(region.path()).unwrap();
        let at = bytes
            .windows(6)
            .position(|w| w == b"1e+308")
            .expect("the record is in the region");
        bytes[at..at + 6].copy_from_slice(b"null  ");
        std::fs::write(region.path(), bytes).unwrap();
    });
}
