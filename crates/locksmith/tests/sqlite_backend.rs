//! What only the `sqlite:` backend promises, beyond the conformance suite: state that
//! survives reopening, the files it creates, refusing foreign files, typed errors for
//! a locked or unwritable store, shards, and waking waiters in other processes through
//! the doorbell rather than by polling.
//!
//! Cross-process tests re-execute this binary with `SQLITE_TEST_CHILD` set, running the
//! `child` test alone; the child prints its answers on lines starting `CHILD `.
#![cfg(feature = "sqlite")]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use locksmith::{Error, Space};

const ROLE: &str = "SQLITE_TEST_CHILD";
const HANG_GUARD: Duration = Duration::from_secs(60);

fn fresh_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "sqlite-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn url_of(path: &Path) -> String {
    format!("sqlite:{}", path.display())
}

/// Polls `check` (a look at the store, not a sleep standing in for an event) until it
/// holds, failing after the hang guard.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG_GUARD;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn spawn_child(role: &[&str]) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(ROLE, role.join("\u{1f}"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

/// What the child said next (after `CHILD `).
fn child_says(out: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the child ended without answering"
        );
        // The harness may print "test child ... " on the same line first.
        if let Some(i) = line.find("CHILD ") {
            return line[i + 6..].trim_end().to_owned();
        }
    }
}

/// The child side of the cross-process tests.
#[test]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let args: Vec<&str> = role.split('\u{1f}').collect();
    let space = Space::open(args[1]).unwrap();
    match args[0] {
        // Wait for the lock, say how it went, release.
        "acquire" => {
            let t = Instant::now();
            let guard = space
                .lock(args[2])
                .acquire_timeout(HANG_GUARD)
                .unwrap()
                .expect("acquired");
            println!(
                "CHILD got {} died={} after_ms={}",
                guard.token(),
                guard.previous_owner_died(),
                t.elapsed().as_millis()
            );
        }
        "acquire_async" => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let guard = space
                    .lock(args[2])
                    .acquire_timeout_async(HANG_GUARD)
                    .await
                    .unwrap()
                    .expect("acquired");
                println!("CHILD got {}", guard.token());
            });
        }
        // Hold a lock, then write new names with the file size limited (as a full
        // disk would) until the store refuses; say what the error was.
        "fill" => {
            let held = space.lock("kept").acquire().unwrap();
            println!("CHILD held {}", held.token());
            // SAFETY: ignoring SIGXFSZ is always sound; writes past the limit then
            // fail with EFBIG instead of killing the process.
            unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
            let limit = libc::rlimit {
                rlim_cur: 256 * 1024,
                rlim_max: libc::RLIM_INFINITY,
            };
            // SAFETY: a valid rlimit for this process.
            assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) }, 0);
            let mut err = None;
            for i in 0..1_000_000 {
                let name = format!("{i:0>200}");
                if let Err(e) = space.lock(&name).acquire().map(drop) {
                    err = Some(e);
                    break;
                }
            }
            let e = err.expect("the size limit was hit");
            assert!(matches!(e, Error::Backend(_)), "{e:?}");
            println!("CHILD error {e}");
            std::mem::forget(held);
        }
        "set" => {
            space.event(args[2]).set().unwrap();
            println!("CHILD set");
        }
        // Take the lock, say so, and hold it until killed.
        "hold" => {
            let guard = space.lock(args[2]).acquire().unwrap();
            println!("CHILD held {}", guard.token());
            std::thread::sleep(Duration::from_secs(3600));
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn state_and_fencing_tokens_survive_reopening() {
    let dir = fresh_dir("reopen");
    let url = url_of(&dir.join("s.sqlite"));
    let mut last = 0;
    for round in 0..3 {
        let space = Space::open(&url).unwrap();
        let guard = space.lock("deploy").acquire().unwrap();
        assert!(
            guard.token() > last,
            "round {round}: tokens keep increasing"
        );
        last = guard.token();
        guard.release().unwrap();
        if round == 0 {
            space.event("ready").set().unwrap();
            space.averager("lat").add(2.0).unwrap();
            space.averager("lat").add(4.0).unwrap();
            let _ = space.semaphore("pool", 3).acquire().unwrap().detach();
        }
        assert!(space.event("ready").is_set().unwrap());
        assert_eq!(space.averager("lat").get().unwrap(), Some(3.0));
        assert_eq!(
            space.holders("pool").unwrap().len(),
            1,
            "a detached permit stays"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// One row of the store: name, token, tag, state.
type Row = (String, i64, Option<String>, Option<Vec<u8>>);

#[test]
fn a_free_primitive_leaves_one_small_row() {
    let dir = fresh_dir("row");
    let path = dir.join("s.sqlite");
    let space = Space::open(&url_of(&path)).unwrap();
    for name in ["a", "b"] {
        let guard = space.lock(name).tag("jobs").acquire().unwrap();
        guard.release().unwrap();
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let rows: Vec<Row> = conn
        .prepare("SELECT name, token, tag, state FROM prim ORDER BY name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows,
        [("a".into(), 1, None, None), ("b".into(), 1, None, None)]
    );
    assert_eq!(space.names().unwrap(), ["a", "b"]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_database_is_created_owner_only() {
    let dir = fresh_dir("modes");
    let path = dir.join("s.sqlite");
    let space = Space::open(&url_of(&path)).unwrap();
    drop(space.lock("x").acquire().unwrap());
    for file in [
        path.clone(),
        dir.join("s.sqlite-wal"),
        dir.join("s.sqlite-bell"),
    ] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn open_default_is_a_per_user_database() {
    let dir = fresh_dir("default");
    // In a child process, so that the environment is its own.
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "default_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, "default")
        .env_remove("LOCKSMITH_STORE")
        .env("XDG_STATE_HOME", &dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let db = dir.join("locksmith").join("locks.sqlite");
    assert!(
        text.contains(&format!("CHILD sqlite:{}", db.display())),
        "{text}"
    );
    let dir_mode = std::fs::metadata(dir.join("locksmith"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    let file_mode = std::fs::metadata(&db).unwrap().permissions().mode();
    assert_eq!(file_mode & 0o777, 0o600);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn default_child() {
    if std::env::var(ROLE).as_deref() != Ok("default") {
        return;
    }
    let space = Space::open_default().unwrap();
    drop(space.lock("x").acquire().unwrap());
    println!("CHILD {}", space.url());
}

fn assert_invalid(r: locksmith::Result<Space>, path: &Path, what: &str) {
    match r {
        Err(Error::InvalidArgument(msg)) => {
            assert!(
                msg.contains(&path.display().to_string()),
                "{what}: the message names the file: {msg}"
            )
        }
        other => panic!("{what}: {other:?}"),
    }
}

#[test]
fn foreign_corrupt_and_newer_files_are_refused_and_left_alone() {
    let dir = fresh_dir("foreign");
    // Not SQLite at all.
    let junk = dir.join("junk");
    let bytes: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&junk, &bytes).unwrap();
    assert_invalid(Space::open(&url_of(&junk)), &junk, "junk");
    assert_eq!(std::fs::read(&junk).unwrap(), bytes, "left alone");
    // Another program's database.
    let other = dir.join("other.sqlite");
    {
        let c = rusqlite::Connection::open(&other).unwrap();
        c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    assert_invalid(Space::open(&url_of(&other)), &other, "other program");
    let c = rusqlite::Connection::open(&other).unwrap();
    let x: i64 = c.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(x, 1);
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete", "not even switched to WAL");
    // A locksmith store of a newer schema.
    let newer = dir.join("newer.sqlite");
    drop(Space::open(&url_of(&newer)).unwrap());
    rusqlite::Connection::open(&newer)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    assert_invalid(Space::open(&url_of(&newer)), &newer, "newer schema");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_unwritable_location_is_a_clear_error() {
    // /proc refuses new files even to root.
    let path = Path::new("/proc/locksmith-test.sqlite");
    match Space::open(&url_of(path)) {
        Err(e @ Error::Backend(_)) => {
            assert!(e.to_string().contains("/proc/locksmith-test.sqlite"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // A read-only directory (meaningless for root, who may write anyway).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let dir = fresh_dir("readonly");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500)).unwrap();
        let path = dir.join("s.sqlite");
        let r = Space::open(&url_of(&path));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(r, Err(Error::Backend(_))), "{r:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn a_locked_database_is_a_typed_error_that_changes_nothing() {
    let dir = fresh_dir("locked");
    let path = dir.join("s.sqlite");
    let space = Space::open(&format!("{}?timeout=100", url_of(&path))).unwrap();
    let held = space.lock("a").acquire().unwrap();
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let t = Instant::now();
    match space.lock("b").try_acquire() {
        Err(e @ Error::Backend(_)) => {
            assert!(e.to_string().contains("locked"), "{e}");
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < HANG_GUARD);
    other.execute_batch("ROLLBACK").unwrap();
    assert_eq!(space.holders("a").unwrap()[0].token, held.token());
    assert!(space.lock("b").try_acquire().unwrap().is_some());
    held.release().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn shards_spread_names_and_must_agree() {
    let dir = fresh_dir("shards").join("store");
    let url = format!("{}?shards=4", url_of(&dir));
    let space = Space::open(&url).unwrap();
    let guards: Vec<_> = (0..64)
        .map(|i| space.lock(&format!("n{i}")).tag("jobs").acquire().unwrap())
        .collect();
    let mut used = 0;
    for i in 0..4 {
        let c = rusqlite::Connection::open(dir.join(format!("shard-{i:03}.sqlite"))).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM prim", [], |r| r.get(0))
            .unwrap();
        used += usize::from(n > 0);
    }
    assert!(used > 1, "names spread over the shards");
    assert_eq!(space.names().unwrap().len(), 64);
    assert_eq!(space.evict_tag("jobs").unwrap(), 64);
    for g in guards {
        assert!(matches!(g.release(), Err(Error::LeaseLost { .. })));
    }
    let shard0 = dir.join("shard-000.sqlite");
    assert_invalid(
        Space::open(&format!("{}?shards=2", url_of(&dir))),
        &shard0,
        "fewer shards",
    );
    assert_invalid(Space::open(&url_of(&shard0)), &shard0, "one shard alone");
    let _ = std::fs::remove_dir_all(dir);
}

/// A waiter in another process is woken by the doorbell: the fallback poll is ten
/// minutes, far beyond the hang guard, so only the doorbell can wake it in time.
fn doorbell_wakes(role: &str) {
    let dir = fresh_dir("bell");
    let url = format!("{}?poll=600000", url_of(&dir.join("s.sqlite")));
    let space = Space::open(&url).unwrap();
    for round in 0..3 {
        let guard = space.lock("handoff").acquire().unwrap();
        let (mut child, mut out) = spawn_child(&[role, &url, "handoff"]);
        eventually("the child is queued", || {
            space.waiting("handoff").unwrap() == 1
        });
        let t = Instant::now();
        guard.release().unwrap();
        let said = child_says(&mut out);
        assert!(said.starts_with("got "), "round {round}: {said}");
        assert!(
            t.elapsed() < HANG_GUARD,
            "round {round}: woken by the doorbell"
        );
        assert!(child.wait().unwrap().success());
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_doorbell_wakes_a_blocking_waiter_in_another_process() {
    doorbell_wakes("acquire");
}

#[test]
fn the_doorbell_wakes_an_async_waiter_in_another_process() {
    doorbell_wakes("acquire_async");
}

#[test]
fn without_the_doorbell_waiters_poll() {
    let dir = fresh_dir("nobell");
    let url = format!("{}?bell=off&poll=20", url_of(&dir.join("s.sqlite")));
    let space = Space::open(&url).unwrap();
    let guard = space.lock("x").acquire().unwrap();
    let (mut child, mut out) = spawn_child(&["acquire", &url, "x"]);
    eventually("the child is queued", || space.waiting("x").unwrap() == 1);
    guard.release().unwrap();
    assert!(child_says(&mut out).starts_with("got "));
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(dir);
}

/// A holder killed while another process waits: the waiter finds it dead on its next
/// look (one poll interval), without any lease.
#[test]
fn a_holder_killed_while_others_wait_is_recovered_without_a_lease() {
    let dir = fresh_dir("kill");
    let url = url_of(&dir.join("s.sqlite"));
    let (mut holder, mut out) = spawn_child(&["hold", &url, "deploy"]);
    let said = child_says(&mut out);
    let token: u64 = said.strip_prefix("held ").unwrap().parse().unwrap();
    let (mut waiter, mut wout) = spawn_child(&["acquire", &url, "deploy"]);
    let space = Space::open(&url).unwrap();
    eventually("the waiter is queued", || {
        space.waiting("deploy").unwrap() == 1
    });
    holder.kill().unwrap();
    holder.wait().unwrap();
    let said = child_says(&mut wout);
    let mut words = said.split_whitespace();
    assert_eq!(words.next(), Some("got"));
    let new_token: u64 = words.next().unwrap().parse().unwrap();
    assert!(new_token > token);
    assert_eq!(words.next(), Some("died=true"), "{said}");
    assert!(waiter.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(dir);
}

/// A waiter killed while queued first in line does not block those behind it.
#[test]
fn a_waiter_killed_in_the_queue_does_not_block_the_next() {
    let dir = fresh_dir("killwaiter");
    let url = url_of(&dir.join("s.sqlite"));
    let space = Space::open(&url).unwrap();
    let guard = space.lock("q").acquire().unwrap();
    let (mut first, _out) = spawn_child(&["acquire", &url, "q"]);
    eventually("the first waiter is queued", || {
        space.waiting("q").unwrap() == 1
    });
    let (mut second, mut out2) = spawn_child(&["acquire", &url, "q"]);
    eventually("the second waiter is queued", || {
        space.waiting("q").unwrap() == 2
    });
    first.kill().unwrap();
    first.wait().unwrap();
    guard.release().unwrap();
    assert!(child_says(&mut out2).starts_with("got "));
    assert!(second.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(dir);
}

/// Thousands of async waiters on one event share the doorbell's sleeping thread: a
/// blocking pool of two threads is plenty, and a set in another process wakes them all
/// (the fallback poll is ten minutes).
#[test]
fn thousands_of_async_event_waiters_share_one_sleeping_thread() {
    const TASKS: usize = 2000;
    let dir = fresh_dir("asyncevent");
    let url = format!("{}?poll=600000", url_of(&dir.join("s.sqlite")));
    let space = Space::open(&url).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = std::sync::Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (event, started) = (space.event("go"), started.clone());
            rt.spawn(async move {
                started.fetch_add(1, Ordering::SeqCst);
                event.wait_timeout_async(HANG_GUARD).await.unwrap()
            })
        })
        .collect();
    eventually("every task started", || {
        started.load(Ordering::SeqCst) == TASKS as u64
    });
    let (mut child, mut out) = spawn_child(&["set", &url, "go"]);
    assert_eq!(child_says(&mut out), "set");
    assert!(child.wait().unwrap().success());
    rt.block_on(async {
        for t in tasks {
            assert!(t.await.unwrap(), "woken with the event set");
        }
    });
    let _ = std::fs::remove_dir_all(dir);
}

/// A full disk (simulated by a file size limit in the child) is a typed error naming
/// the file, and the store stays intact: what was committed before is still there.
#[test]
fn a_full_disk_is_a_typed_error_and_loses_nothing() {
    let dir = fresh_dir("full");
    let path = dir.join("s.sqlite");
    let url = url_of(&path);
    let (mut child, mut out) = spawn_child(&["fill", &url]);
    let held: u64 = child_says(&mut out)
        .strip_prefix("held ")
        .unwrap()
        .parse()
        .unwrap();
    let said = child_says(&mut out);
    assert!(said.starts_with("error "), "{said}");
    assert!(said.contains(&path.display().to_string()), "{said}");
    assert!(child.wait().unwrap().success());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    drop(conn);
    // The dead child's lock is there (and recovered as a dead holder's).
    let space = Space::open(&url).unwrap();
    let guard = space
        .lock("kept")
        .try_acquire()
        .unwrap()
        .expect("recovered");
    assert!(guard.previous_owner_died());
    assert!(guard.token() > held);
    let _ = std::fs::remove_dir_all(dir);
}

/// A record damaged behind the store's back fails the steps on its own name only.
#[test]
fn a_corrupt_record_fails_its_own_name_only() {
    let dir = fresh_dir("corrupt");
    let path = dir.join("s.sqlite");
    let space = Space::open(&url_of(&path)).unwrap();
    let held = space.lock("fine").acquire().unwrap();
    let _ = space.lock("broken").acquire().unwrap().detach();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("UPDATE prim SET state = x'00ff' WHERE name = 'broken'", [])
        .unwrap();
    match space.lock("broken").try_acquire() {
        Err(e @ Error::Damaged { .. }) => {
            assert!(e.to_string().contains("'broken'"), "{e}");
            assert_eq!(e.errno(), libc::EBADMSG);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(space.holders("fine").unwrap()[0].token, held.token());
    assert!(space.names().unwrap().contains(&"broken".to_owned()));
    // A forced release resets it, keeping its fencing counter.
    space.force_release("broken").unwrap();
    let again = space.lock("broken").try_acquire().unwrap().unwrap();
    assert_eq!(again.token(), 2);
    held.release().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
