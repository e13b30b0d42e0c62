//! Removing a store through the API (issue 19 item 14): refused while in use unless
//! forced, and afterwards the URL names a new, empty store.

use std::path::PathBuf;

use locksmith::{Error, Space};

use crate::{Store, Test};

pub fn tests() -> Vec<Test> {
    vec![(
        "destroy::a_store_is_removed_unless_in_use_and_starts_afresh",
        destroy,
    )]
}

/// The files a store at `url` keeps, for the stores that keep files.
fn files(url: &str) -> Vec<PathBuf> {
    let (scheme, rest) = url.split_once(':').unwrap();
    let path = rest.split_once('?').map_or(rest, |(p, _)| p);
    match scheme {
        "sqlite" => {
            let p = PathBuf::from(path);
            ["", "-wal", "-shm", "-bell"]
                .iter()
                .map(|s| PathBuf::from(format!("{}{s}", p.display())))
                .collect()
        }
        "shm" => vec![PathBuf::from("/dev/shm").join(path)],
        _ => Vec::new(),
    }
}

fn destroy(store: &Store) {
    let url = (store.fresh_url)();
    let space = Space::open(&url).unwrap();
    let lock = space.lock("x");
    let first = lock.acquire().unwrap();
    let token = first.token();
    drop(first);
    let held = lock.acquire().unwrap();
    space.semaphore("s", 2).acquire().unwrap().detach();
    let on_disk = files(&url);
    // In use: refused, and nothing changes.
    match Space::destroy(&url, false) {
        Err(Error::Busy { name }) => assert!(name == "x" || name == "s", "{name}"),
        other => panic!("destroying a store in use: {other:?}"),
    }
    assert!(lock.is_locked().unwrap());
    drop(held);
    assert!(matches!(
        Space::destroy(&url, false),
        Err(Error::Busy { name }) if name == "s"
    ));
    // Forced: removed, whoever holds.
    assert!(Space::destroy(&url, true).unwrap());
    for f in &on_disk {
        assert!(!f.exists(), "{} is left behind", f.display());
    }
    if url.starts_with("sqlite") && url.contains("shards=") {
        let dir = url["sqlite:".len()..].split('?').next().unwrap();
        assert!(
            !std::path::Path::new(dir).exists(),
            "the shard directory is left"
        );
    }
    if !on_disk.is_empty() {
        assert!(
            !Space::destroy(&url, false).unwrap(),
            "nothing left to remove"
        );
        assert!(
            on_disk.iter().all(|f| !f.exists()),
            "and nothing was created"
        );
    }
    // The URL names a new, empty store: no names, tokens from 1 again.
    let fresh = Space::open(&url).unwrap();
    assert!(fresh.names().unwrap().is_empty(), "{:?}", fresh.names());
    let again = fresh.lock("x").acquire().unwrap();
    assert_eq!(again.token(), 1, "the old store counted to {token}");
    drop(again);
    // An idle store goes without force.
    assert!(Space::destroy(&url, false).unwrap());
}
