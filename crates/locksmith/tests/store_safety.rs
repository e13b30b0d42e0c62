//! Issue 12's promises of the `sqlite:` and `shm:` stores that the conformance suite
//! cannot see: what a store path creates (and what it must not), and names that are
//! reclaimed without a fencing token ever going back. Each test is named after the
//! item it pins.
#![cfg(all(target_os = "linux", feature = "sqlite", feature = "shm"))]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use locksmith::{Error, Space};

fn fresh_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "safety-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn url_of(path: &Path) -> String {
    format!("sqlite:{}", path.display())
}

/// The names in `dir`.
fn listing(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn item12_a_missing_directory_is_an_error_and_is_not_created() {
    let dir = fresh_dir("nodir");
    let path = dir.join("missing").join("deeper").join("x");
    match Space::open(&url_of(&path)) {
        Err(e @ Error::Backend(_)) => {
            let msg = e.to_string();
            assert!(msg.contains("does not exist"), "{msg}");
            assert!(
                msg.contains(&dir.join("missing").display().to_string()),
                "{msg}"
            );
        }
        other => panic!("a store in a missing directory: {other:?}"),
    }
    assert!(!dir.join("missing").exists(), "no directory was made");
    // Nor for a sharded store: its own directory is made, never its parents.
    let sharded = format!("{}?shards=2", url_of(&dir.join("missing").join("shards")));
    assert!(Space::open(&sharded).is_err());
    assert!(!dir.join("missing").exists(), "no directory was made");
    let ok = format!("{}?shards=2", url_of(&dir.join("shards")));
    drop(Space::open(&ok).unwrap());
    assert!(dir.join("shards").join("shard-000.sqlite").exists());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn item12_refused_targets_get_nothing_written_beside_them() {
    let dir = fresh_dir("refused");
    // A text file.
    let text = dir.join("notes.txt");
    std::fs::write(&text, "remember the milk\n").unwrap();
    // Another program's database (application_id 0, as most have).
    let other = dir.join("other.sqlite");
    {
        let c = rusqlite::Connection::open(&other).unwrap();
        c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    // Another program's database that says so (application_id set).
    let tagged = dir.join("tagged.sqlite");
    {
        let c = rusqlite::Connection::open(&tagged).unwrap();
        c.execute_batch("PRAGMA application_id = 1234; CREATE TABLE t (x);")
            .unwrap();
    }
    // A locksmith store whose first page was overwritten.
    let corrupt = dir.join("corrupt.sqlite");
    {
        let space = Space::open(&url_of(&corrupt)).unwrap();
        let _g = space.lock("a").acquire().unwrap();
    }
    let mut bytes = std::fs::read(&corrupt).unwrap();
    assert!(bytes.len() >= 4096, "the store was checkpointed on close");
    bytes[100..4096].fill(0xA5);
    std::fs::write(&corrupt, &bytes).unwrap();
    // Bells left behind by an older build are not the point: start without any.
    for name in listing(&dir) {
        if name.ends_with("-bell") {
            std::fs::remove_file(dir.join(name)).unwrap();
        }
    }
    let before = listing(&dir);
    let contents: Vec<Vec<u8>> = before
        .iter()
        .map(|n| std::fs::read(dir.join(n)).unwrap())
        .collect();
    for target in [&text, &other, &tagged, &corrupt] {
        let r = Space::open(&url_of(target));
        assert!(r.is_err(), "{} was refused", target.display());
        assert_eq!(
            listing(&dir),
            before,
            "nothing was created beside {}",
            target.display()
        );
    }
    let after: Vec<Vec<u8>> = before
        .iter()
        .map(|n| std::fs::read(dir.join(n)).unwrap())
        .collect();
    assert!(after == contents, "no refused file was changed");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn item12_the_bell_of_a_store_is_created_only_once_it_passed_its_checks() {
    let dir = fresh_dir("bell-after");
    let path = dir.join("s.sqlite");
    drop(Space::open(&url_of(&path)).unwrap());
    assert!(
        dir.join("s.sqlite-bell").exists(),
        "an accepted store rings a bell"
    );
}

#[test]
fn item12_a_symlinked_store_has_its_bell_beside_the_target_as_sqlite_its_wal() {
    let dir = fresh_dir("symlink");
    std::fs::create_dir(dir.join("real")).unwrap();
    std::fs::create_dir(dir.join("links")).unwrap();
    let target = dir.join("real").join("s.sqlite");
    let link = dir.join("links").join("s.sqlite");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let space = Space::open(&url_of(&link)).unwrap();
    let g = space.lock("a").acquire().unwrap();
    assert!(target.exists(), "the link's target is the database");
    assert!(dir.join("real").join("s.sqlite-bell").exists());
    assert!(dir.join("real").join("s.sqlite-wal").exists());
    assert_eq!(
        listing(&dir.join("links")),
        BTreeSet::from(["s.sqlite".to_owned()]),
        "nothing beside the link"
    );
    // Opened by its real path, the same store rings the same bell.
    let direct = Space::open(&url_of(&target)).unwrap();
    assert_eq!(direct.holders("a").unwrap().len(), 1);
    drop(g);
    let _ = std::fs::remove_dir_all(dir);
}

/// A `/dev/shm` region, removed on drop.
struct Region(String);

impl Region {
    fn new(tag: &str) -> Region {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "locksmith-test-safety-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let _ = std::fs::remove_file(format!("/dev/shm/{name}"));
        Region(name)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/dev/shm/{}", self.0));
    }
}

#[test]
fn item14_shm_reclaims_idle_names_and_tokens_never_go_back() {
    let region = Region::new("reclaim");
    let url = format!("shm:{}?capacity=16", region.0);
    let a = Space::open(&url).unwrap();
    let b = Space::open(&url).unwrap();
    // `x` is used through one handle, whose cached slot goes stale below.
    let x = a.lock("x");
    let mut last = 0;
    for _ in 0..3 {
        let t = x.acquire().unwrap().token();
        assert!(t > last);
        last = t;
    }
    // Ten times as many names as the table holds, each used and left idle (before:
    // the 17th failed with "the shm: store ... is full").
    let mut tokens = Vec::new();
    for i in 0..160 {
        let g = b.lock(&format!("job-{i}")).acquire().unwrap();
        tokens.push(g.token());
    }
    assert!(b.names().unwrap().len() <= 16);
    assert!(
        !b.names().unwrap().contains(&"x".to_owned()),
        "the idle `x` was reclaimed"
    );
    // Names that live are never reclaimed: hold a few while more come and go.
    let held: Vec<_> = (0..4)
        .map(|i| b.lock(&format!("held-{i}")).acquire().unwrap())
        .collect();
    for i in 160..320 {
        drop(b.lock(&format!("job-{i}")).acquire().unwrap());
    }
    for (i, g) in held.iter().enumerate() {
        let holders = b.holders(&format!("held-{i}")).unwrap();
        assert_eq!(holders.len(), 1, "held-{i} kept its holder");
        assert_eq!(holders[0].token, g.token());
    }
    // `x`, re-created through the stale handle: a larger token than it ever had, and
    // still one lock with the other space's view of `x`.
    let g = x.acquire().unwrap();
    assert!(g.token() > last, "token {} after {last}", g.token());
    let other = b.clone();
    let free = std::thread::spawn(move || other.lock("x").try_acquire().unwrap().is_some());
    assert!(!free.join().unwrap(), "x is held");
    assert_eq!(b.holders("x").unwrap()[0].token, g.token());
    drop(g);
    // A table full of live names refuses a new one, with a typed error.
    let mut more = Vec::new();
    for i in 0..16 {
        match b.lock(&format!("live-{i}")).acquire() {
            Ok(g) => more.push(g),
            Err(e) => {
                assert!(matches!(e, Error::Backend(_)), "{e}");
                assert!(e.to_string().contains("full"), "{e}");
                break;
            }
        }
    }
    assert!(more.len() < 16, "the table filled up");
}

#[test]
fn item14_shm_names_reclaimed_under_contention_stay_exclusive_and_tokens_increase() {
    use std::collections::HashMap;
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};
    let region = Region::new("churn");
    // 14 names fit at once; 40 are in play, so slots are reclaimed and re-created all
    // the time, under handles (one space per thread, as separate processes would map
    // the region) whose cached slots go stale.
    let url = format!("shm:{}?capacity=16", region.0);
    drop(Space::open(&url).unwrap());
    let inside: Arc<Vec<AtomicBool>> = Arc::new((0..40).map(|_| AtomicBool::new(false)).collect());
    let last: Arc<Mutex<HashMap<usize, u64>>> = Arc::default();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (url, inside, last) = (url.clone(), inside.clone(), last.clone());
            std::thread::spawn(move || {
                let space = Space::open(&url).unwrap();
                let locks: Vec<_> = (0..40).map(|i| space.lock(&format!("n{i}"))).collect();
                for k in 0..300usize {
                    let i = (k * 7 + w * 13) % 40;
                    let g = locks[i].acquire().unwrap();
                    assert!(!inside[i].swap(true, Ordering::SeqCst), "n{i} held twice");
                    let mut last = last.lock().unwrap();
                    let before = last.insert(i, g.token()).unwrap_or(0);
                    assert!(
                        g.token() > before,
                        "n{i}: token {} after {before}",
                        g.token()
                    );
                    drop(last);
                    std::thread::yield_now();
                    inside[i].store(false, Ordering::SeqCst);
                    drop(g);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let usage = Space::open(&url).unwrap().usage().unwrap();
    assert!(usage.reclaimed > 0, "{usage:?}");
    assert!(usage.names <= usage.limit, "{usage:?}");
}
