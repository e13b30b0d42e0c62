//! The embedded, persistent backend: one SQLite file (or a directory of shards) that
//! every process on the host opens for itself.
//!
//! # Storage
//!
//! One row per name that was ever used, in a `WITHOUT ROWID` table:
//!
//! | column | meaning |
//! | --- | --- |
//! | `name` | the primitive's name (primary key) |
//! | `token` | the fencing counter ([`Record::next_token`]); never goes back |
//! | `tag` | the tag, for [`Backend::evict_tag`]; NULL when untagged or free |
//! | `state` | the live state as JSON; NULL when the primitive is free |
//! | `kind` | the kind and parameters fixed by the name's first use, as JSON; NULL once removed |
//!
//! A free primitive leaves just `(name, token, NULL, NULL, kind)`, until
//! [`Backend::reclaim_idle`] deletes such rows; it first raises `token_floor` in the
//! `meta` table to the highest `token` it deletes, and a name without a row starts from
//! that floor, so a name used again never repeats a token. Version 1 files (without
//! `kind`) gain the column when first opened by this build. The file carries
//! `PRAGMA application_id` = `LKSM` and `PRAGMA user_version` = the schema version, so
//! a foreign or newer file is refused rather than misread.
//!
//! # Steps
//!
//! Each [`Backend::step`] is one short transaction: `BEGIN IMMEDIATE`, read the row,
//! run the shared state machine ([`model::apply`]), write the row back only if it
//! changed, `COMMIT`. An error from the state machine rolls the transaction back, so
//! a refused operation changes nothing. Statements are prepared once per connection.
//! One connection per shard serves all the threads of a space, behind a mutex.
//!
//! The database runs in WAL mode. `synchronous=NORMAL` (the default here) makes a
//! commit durable against the crash of any process, but the last commits before a
//! power loss or kernel crash may be lost, and with them fencing tokens may repeat;
//! `?sync=full` syncs every commit and keeps tokens strictly increasing across power
//! loss too, at the price of an fsync per step.
//!
//! # Waking
//!
//! A step whose change concerns waiters rings the [`bell::Bell`] of its file after the
//! commit: a futex word per (name, ticket) slot in a small file mapped shared beside
//! the database (`PATH-bell`), so the waiting processes on this host that the change
//! concerns wake at once, and only they. Waiters also re-check at least every `poll`
//! interval (250 ms unless `?poll=MS`): that is what finds holders that died while
//! others waited, and it serves waiters that cannot map the doorbell. A waiter killed
//! in the queue is reaped by the liveness check below; any queued waiter that stopped
//! retrying for `max(3 × poll, 30 s)` is dropped too (a dequeue that failed).
//!
//! The same doorbell carries a word bumped whenever a transaction ends: a step that
//! finds the database locked by another process sleeps on it (after a few yields)
//! instead of SQLite's fixed one-millisecond naps.
//!
//! Only one waiter per name and process queues in the store (see [`Gates`]); async
//! waiters sleep on the doorbell through io_uring where it works (see
//! [`super::futex_async`]), else those of one slot share one sleeping thread of
//! tokio's blocking pool (see [`Sleepers`]). WAL checkpoints run on a background thread (see [`Checkpointer`]).
//!
//! # Liveness
//!
//! A holder, waiter or barrier party whose process is gone (same host: pid, start time
//! and boot id) is reaped by the next step that is blocked by it: no need to wait for
//! a lease. Owners on other hosts (a file on a network filesystem is not supported by
//! SQLite's locking anyway) are presumed alive until their lease lapses.

pub(crate) mod bell;

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use event_listener::{EventListener, Listener};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension};

use self::bell::{slot, Bell};
use super::done::Done;
use super::gates::{Finished, Gates};
use super::model::{self, Ctx, Kind, Millis, Op, Record, Reply, State};
use super::options;
use super::{Backend, BoxFuture, Key, Watch};
use crate::os::clock::now_millis;
use crate::os::hash::stable_hash;
use crate::owner::Owner;
use crate::{Error, Result};

/// `PRAGMA application_id` of a locksmith database: "LKSM".
const APPLICATION_ID: i32 = 0x4C4B_534D;
/// `PRAGMA user_version`: the schema version this build reads and writes.
const SCHEMA_VERSION: i32 = 2;
/// Write steps between two background checkpoints.
const CHECKPOINT_EVERY: u32 = 512;
/// The WAL size, in pages, at which a step checkpoints by itself.
const AUTOCHECKPOINT_BACKSTOP: i64 = 4000;
/// The shortest time-to-live of a queued waiter that stopped retrying, in ms.
const WAITER_TTL_FLOOR: Millis = 30_000;
/// The most shards a sharded store may have.
pub(crate) const MAX_SHARDS: usize = 256;

const SELECT: &str = "SELECT token, tag, state, kind FROM prim WHERE name = ?1";
const UPSERT: &str =
    "INSERT INTO prim (name, token, tag, state, kind) VALUES (?1, ?2, ?3, ?4, ?5) \
     ON CONFLICT (name) DO UPDATE SET token = excluded.token, tag = excluded.tag, \
     state = excluded.state, kind = excluded.kind";

/// How a `sqlite:` URL asked the store to behave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Options {
    /// The database file, or with `shards`, the directory of shard files.
    pub path: PathBuf,
    /// `?shards=N`: spread names over N files in the directory `path`.
    pub shards: Option<usize>,
    /// `?timeout=MS`: how long a step waits for another process's transaction.
    pub busy_timeout: Duration,
    /// `?sync=normal|full`.
    pub sync_full: bool,
    /// `?poll=MS`: the longest a waiter sleeps before re-checking on its own.
    pub poll: Duration,
    /// `?bell=0`: never use the doorbell (poll only); for tests and odd hosts.
    pub bell: bool,
    /// `?uring=off`: async waiters sleep on the doorbell through a helper thread
    /// rather than an io_uring futex wait.
    pub uring: bool,
}

impl Options {
    /// Parses what follows `sqlite:` in a URL: `PATH[?key=value&…]`, where `PATH` may
    /// also be written `//PATH` (so `sqlite:///tmp/x.db` is `/tmp/x.db`).
    pub(crate) fn parse(rest: &str, url: &str) -> Result<Options> {
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(Error::invalid(format!(
                "'{url}' names no file: write sqlite:PATH, e.g. sqlite:/var/tmp/app.locks"
            )));
        }
        let mut opts = Options {
            path: PathBuf::from(path),
            shards: None,
            busy_timeout: Duration::from_secs(5),
            sync_full: false,
            poll: Duration::from_millis(250),
            bell: true,
            uring: true,
        };
        for opt in options::parse(query.unwrap_or("")) {
            let (k, v) = (opt.key, opt.value()?);
            let v = v.as_str();
            let number = |max: u64| -> Result<u64> {
                match v.parse::<u64>() {
                    Ok(n) if n >= 1 && n <= max => Ok(n),
                    _ => Err(Error::invalid(format!(
                        "'{k}={v}' in '{url}': {k} must be a whole number from 1 to {max}"
                    ))),
                }
            };
            match k {
                "shards" => opts.shards = Some(number(MAX_SHARDS as u64)? as usize),
                "timeout" => opts.busy_timeout = Duration::from_millis(number(3_600_000)?),
                "poll" => opts.poll = Duration::from_millis(number(3_600_000)?),
                "sync" => {
                    opts.sync_full = match v {
                        "normal" => false,
                        "full" => true,
                        _ => {
                            return Err(Error::invalid(format!(
                                "'sync={v}' in '{url}': use sync=normal or sync=full"
                            )))
                        }
                    }
                }
                "bell" | "uring" => {
                    let on = options::on_off(v).ok_or_else(|| {
                        Error::invalid(format!("'{k}={v}' in '{url}': use {k}=on or {k}=off"))
                    })?;
                    if k == "bell" {
                        opts.bell = on;
                    } else {
                        opts.uring = on;
                    }
                }
                _ => {
                    return Err(Error::invalid(format!(
                        "unknown option '{k}' in '{url}': sqlite: takes shards, timeout, \
                         poll, sync, bell and uring"
                    )))
                }
            }
        }
        Ok(opts)
    }
}

/// The `sqlite:` backend.
#[derive(Debug)]
pub(crate) struct SqliteBackend {
    shards: Vec<Shard>,
    poll: Duration,
    waiter_ttl: Millis,
    gates: Arc<Gates>,
    sleepers: Sleepers,
    /// Whether async waiters may sleep on the doorbell through io_uring.
    uring: bool,
    checkpointer: Checkpointer,
    /// The directory of a sharded store (`?shards=N`).
    dir: Option<PathBuf>,
}

#[derive(Debug)]
struct Shard {
    path: PathBuf,
    /// Steps that wrote, for the checkpointer.
    writes: AtomicU32,
    busy_timeout: Duration,
    conn: Mutex<Conn>,
    bell: Option<Arc<Bell>>,
    /// Why there is no doorbell, if one was wanted.
    warning: Option<String>,
}

struct Conn(Connection);

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Conn")
    }
}

/// What a key resolves to: its shard and the hash its doorbell slots derive from.
struct KeyInfo {
    shard: usize,
    hash: u64,
}

fn lock(m: &Mutex<Conn>) -> MutexGuard<'_, Conn> {
    // A panic cannot leave a transaction half-done in a way the next step would
    // trust: every step first rolls back any transaction left open.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A store failure, naming the file.
fn store_error(path: &Path, e: rusqlite::Error) -> Error {
    let file = path.display();
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => Error::invalid(format!(
            "'{file}' is not a locksmith database (not an SQLite file, or encrypted): {e}"
        )),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::backend(format!(
            "the database '{file}' stayed locked by another connection beyond the busy \
             timeout: {e}"
        )),
        Some(ErrorCode::DatabaseCorrupt) => {
            Error::backend(format!("the database '{file}' is corrupt: {e}"))
        }
        Some(ErrorCode::DiskFull) => Error::backend(format!(
            "the disk holding '{file}' is full; nothing was changed: {e}"
        )),
        Some(ErrorCode::SystemIoFailure) => Error::backend(format!(
            "an I/O error on '{file}' (a full disk, a file size limit or a failing \
             device); the step was rolled back: {e}"
        )),
        Some(ErrorCode::ReadOnly) => {
            Error::backend(format!("the database '{file}' is read-only: {e}"))
        }
        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            Error::backend(format!("cannot open the database '{file}': {e}"))
        }
        _ => Error::backend(format!("the database '{file}' failed: {e}")),
    }
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::backend(format!("cannot {what} '{}': {e}", path.display()))
}

impl SqliteBackend {
    /// Opens (creating if needed) the store `opts` describe.
    pub(crate) fn open(opts: &Options) -> Result<SqliteBackend> {
        let shards = match opts.shards {
            None => vec![Shard::open(&opts.path, opts, None)?],
            Some(n) => {
                // The directory itself, not its parents: a mistyped path must not
                // grow a tree.
                match DirBuilder::new().mode(0o700).create(&opts.path) {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                        return Err(io_error(&opts.path, "create the shard directory", e))
                    }
                    _ => {}
                }
                (0..n)
                    .map(|i| {
                        let file = opts.path.join(format!("shard-{i:03}.sqlite"));
                        Shard::open(&file, opts, Some((i, n)))
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        };
        let poll = opts.poll;
        let checkpointer = Checkpointer::start(
            shards.iter().map(|s| s.path.clone()).collect(),
            opts.busy_timeout,
        );
        Ok(SqliteBackend {
            shards,
            poll,
            // Same-host waiters that die are reaped at once by the liveness check; the
            // time-to-live is for waiters lost in other ways (a dequeue that failed).
            waiter_ttl: (poll.as_millis() as Millis)
                .saturating_mul(3)
                .max(WAITER_TTL_FLOOR),
            gates: Arc::default(),
            sleepers: Sleepers::default(),
            uring: opts.uring,
            checkpointer,
            dir: opts.shards.map(|_| opts.path.clone()),
        })
    }

    fn info(&self, key: &Key) -> Arc<KeyInfo> {
        key.cached(|| {
            let hash = stable_hash(key.name().as_bytes());
            Arc::new(KeyInfo {
                shard: (hash % self.shards.len() as u64) as usize,
                hash,
            })
        })
    }
}

impl Shard {
    fn open(path: &Path, opts: &Options, shard: Option<(usize, usize)>) -> Result<Shard> {
        // Create the file ourselves, so that it is 0600 whatever SQLite's defaults;
        // SQLite gives its -wal and -shm files the same mode. A missing directory is an
        // error (only the default store's directory is created, by `default_url`): a
        // mistyped path must not grow a directory tree.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(
                |e| match path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    Some(dir) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => {
                        Error::backend(format!(
                            "cannot open the database '{}': the directory '{}' does not exist \
                         (create it first; only the default store makes its directory)",
                            path.display(),
                            dir.display()
                        ))
                    }
                    _ => io_error(path, "open the database", e),
                },
            )?;
        let canonical = path
            .canonicalize()
            .map_err(|e| io_error(path, "resolve the database path", e))?;
        // Refuse what is plainly not a locksmith store from its first bytes, before
        // SQLite opens it: nothing is written beside a file that is refused.
        precheck(&file, &canonical)?;
        drop(file);
        let err = |e| store_error(&canonical, e);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(&canonical, flags).map_err(err)?;
        let timeout = opts.busy_timeout;
        // No doorbell until the file passed its checks: a refused file gets none.
        conn.busy_handler(Some(busy_handler(timeout, None)))
            .map_err(err)?;
        // Some lock waits bypass the busy handler (switching to WAL, WAL recovery by
        // another process that opens the file at the same moment): retry those here,
        // within the same busy timeout.
        let started = Instant::now();
        let retry = |e: &rusqlite::Error| is_busy(e) && started.elapsed() < timeout;
        // Look before changing anything: a foreign file must be left as it is (not
        // even switched to WAL mode).
        // One read transaction, so that the header and the table count are one
        // snapshot (another process may be creating the store at this moment).
        with_retry(retry, || conn.execute_batch("BEGIN")).map_err(err)?;
        let header = check_header(&conn, &canonical);
        let _ = conn.execute_batch("COMMIT");
        header?;
        let mode: String = with_retry(retry, || {
            let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
            if mode.eq_ignore_ascii_case("wal") {
                return Ok(mode);
            }
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        })
        .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::backend(format!(
                "the database '{}' cannot use WAL mode (it is in {mode} mode)",
                canonical.display()
            )));
        }
        let sync = if opts.sync_full { "FULL" } else { "NORMAL" };
        conn.pragma_update(None, "synchronous", sync).map_err(err)?;
        // Up to 64 MiB of page cache: a million names stay hot. (No memory-mapped I/O:
        // an I/O error on a mapped file arrives as SIGBUS, not as an error.)
        conn.pragma_update(None, "cache_size", -65536)
            .map_err(err)?;
        // Checkpoints are the checkpointer thread's job (see `Checkpointer`); a step
        // checkpoints itself only if the WAL grew past this many pages regardless.
        conn.pragma_update(None, "wal_autocheckpoint", AUTOCHECKPOINT_BACKSTOP)
            .map_err(err)?;
        // After a checkpoint empties it, a WAL file that grew past 16 MiB (the backstop
        // above) shrinks back to that; below, it is reused as it is, which is cheaper
        // than truncating and growing it again.
        conn.pragma_update(None, "journal_size_limit", 16i64 << 20)
            .map_err(err)?;
        init_schema(&conn, &canonical, shard, &retry)?;
        conn.set_prepared_statement_cache_capacity(16);
        // The doorbell, now that the file is known to be a locksmith store. It lives
        // beside the database's canonical path (a symlink's target), as SQLite's own
        // -wal and -shm files do, so every path to one file rings one doorbell.
        let mut warning = None;
        let bell = if opts.bell {
            let bell_path = Bell::path_for(&canonical);
            match Bell::open(&bell_path) {
                Ok(bell) => Some(Arc::new(bell)),
                Err(e) => {
                    warning = Some(bell::warn_once(&bell_path, &e));
                    None
                }
            }
        } else {
            None
        };
        if bell.is_some() {
            conn.busy_handler(Some(busy_handler(timeout, bell.clone())))
                .map_err(err)?;
        }
        Ok(Shard {
            path: canonical,
            writes: AtomicU32::new(0),
            busy_timeout: timeout,
            conn: Mutex::new(Conn(conn)),
            bell,
            warning,
        })
    }

    /// Runs `f` inside one `BEGIN IMMEDIATE` transaction: committed if `f` succeeds,
    /// rolled back if it fails.
    fn transact<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = lock(&self.conn);
        let conn = &conn.0;
        let err = |e| store_error(&self.path, e);
        if !conn.is_autocommit() {
            // A transaction left open by an earlier failure.
            let _ = conn.execute_batch("ROLLBACK");
        }
        let started = Instant::now();
        with_retry(
            |e| is_busy(e) && started.elapsed() < self.busy_timeout,
            || conn.prepare_cached("BEGIN IMMEDIATE")?.execute([]),
        )
        .map_err(err)?;
        let out = f(conn).and_then(|t| {
            conn.prepare_cached("COMMIT")
                .and_then(|mut s| s.execute([]))
                .map_err(err)?;
            Ok(t)
        });
        if out.is_err() && !conn.is_autocommit() {
            let _ = conn
                .prepare_cached("ROLLBACK")
                .and_then(|mut s| s.execute([]));
        }
        if let Some(bell) = &self.bell {
            bell.ring_tx();
        }
        out
    }

    fn ring(&self, hash: u64, ticket: Option<u64>) {
        if let Some(bell) = &self.bell {
            bell.ring(slot(hash, ticket));
        }
    }
}

/// SQLite's busy handler for a connection: SQLite's own sleeps a whole millisecond at
/// once, while locks here are held for microseconds. Yield first; then sleep until the
/// doorbell says a transaction ended (with a growing timeout, for a release missed just
/// before the wait began), or back off gently without a doorbell.
fn busy_handler(timeout: Duration, bell: Option<Arc<Bell>>) -> impl FnMut(i32) -> bool + Send {
    let mut started = Instant::now();
    move |count: i32| {
        if count == 0 {
            started = Instant::now();
        }
        let waited = started.elapsed();
        if waited >= timeout {
            return false;
        }
        let left = timeout - waited;
        if count < 4 {
            std::thread::yield_now();
        } else if let Some(bell) = &bell {
            let nap = Duration::from_micros(100u64 << (count - 4).min(5) as u32);
            bell.wait_tx(nap.min(left));
        } else {
            let nap = Duration::from_micros(20u64 << (count - 4).min(6) as u32);
            std::thread::sleep(nap.min(left));
        }
        true
    }
}

/// Refuses, from its first 100 bytes (the SQLite header), a file that cannot be a
/// locksmith store: not empty and not an SQLite database, or one whose
/// `application_id` names another program. What passes is checked again by SQLite
/// ([`check_header`]), which also sees commits not yet copied from the WAL.
fn precheck(file: &std::fs::File, path: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut header = [0u8; 100];
    let mut got = 0;
    while got < header.len() {
        match file.read_at(&mut header[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(path, "read", e)),
        }
    }
    let file = path.display();
    if got == 0 {
        return Ok(());
    }
    if got < 16 || &header[..16] != b"SQLite format 3\0" {
        return Err(Error::invalid(format!(
            "'{file}' is not a locksmith database (not an SQLite file); it was left as it is"
        )));
    }
    if got == header.len() {
        let app = i32::from_be_bytes([header[68], header[69], header[70], header[71]]);
        if app != 0 && app != APPLICATION_ID {
            return Err(Error::invalid(format!(
                "'{file}' is an SQLite database of another program, not a locksmith store; \
                 it was left as it is"
            )));
        }
    }
    Ok(())
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Runs `f` again, after a short nap, for as long as it fails and `retry` says so.
fn with_retry<T>(
    retry: impl Fn(&rusqlite::Error) -> bool,
    mut f: impl FnMut() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let mut nap = Duration::from_micros(50);
    loop {
        match f() {
            Err(e) if retry(&e) => {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// Refuses a file that is not a locksmith store of this schema version; answers
/// whether it is empty (a store still to be created).
fn check_header(conn: &Connection, path: &Path) -> Result<bool> {
    let err = |e| store_error(path, e);
    let file = path.display();
    let app: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(err)?;
    let version: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(err)?;
    if app == 0 && version == 0 && tables == 0 {
        Ok(true)
    } else if app != APPLICATION_ID {
        Err(Error::invalid(format!(
            "'{file}' is an SQLite database of another program, not a locksmith store"
        )))
    } else if version != SCHEMA_VERSION && version != 1 {
        Err(Error::invalid(format!(
            "'{file}' is a locksmith store of schema version {version}; this build \
             reads version {SCHEMA_VERSION} only"
        )))
    } else {
        Ok(false)
    }
}

fn init_schema(
    conn: &Connection,
    path: &Path,
    shard: Option<(usize, usize)>,
    retry: &dyn Fn(&rusqlite::Error) -> bool,
) -> Result<()> {
    let err = |e| store_error(path, e);
    let file = path.display();
    with_retry(retry, || conn.execute_batch("BEGIN IMMEDIATE")).map_err(err)?;
    let out = (|| {
        if check_header(conn, path)? {
            conn.execute_batch(&format!(
                "CREATE TABLE prim (name TEXT PRIMARY KEY NOT NULL, token INTEGER NOT NULL, \
                     tag TEXT, state BLOB, kind TEXT) WITHOUT ROWID;
                 CREATE INDEX prim_tag ON prim (tag) WHERE tag IS NOT NULL;
                 CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value) WITHOUT ROWID;
                 PRAGMA application_id = {APPLICATION_ID};
                 PRAGMA user_version = {SCHEMA_VERSION};"
            ))
            .map_err(err)?;
            if let Some((i, n)) = shard {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('shard', ?1), ('shards', ?2)",
                    [i as i64, n as i64],
                )
                .map_err(err)?;
            }
        }
        let version: i32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        if version == 1 {
            // Version 1 kept no kinds: idle names of such a file start without one.
            conn.execute_batch(&format!(
                "ALTER TABLE prim ADD COLUMN kind TEXT;
                 PRAGMA user_version = {SCHEMA_VERSION};"
            ))
            .map_err(err)?;
        }
        let meta = |k: &str| -> Result<Option<i64>> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
                .optional()
                .map_err(err)
        };
        let found = match (meta("shard")?, meta("shards")?) {
            (Some(i), Some(n)) => Some((i as usize, n as usize)),
            _ => None,
        };
        if found != shard {
            let describe = |s: Option<(usize, usize)>| match s {
                None => "an unsharded store".to_owned(),
                Some((i, n)) => format!("shard {i} of {n}"),
            };
            return Err(Error::invalid(format!(
                "'{file}' is {}, but was opened as {}: every process must open a store \
                 with the same shards",
                describe(found),
                describe(shard)
            )));
        }
        Ok(())
    })();
    match out {
        Ok(()) => conn.execute_batch("COMMIT").map_err(err),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn corrupt(path: &Path, name: &str, e: impl std::fmt::Display) -> Error {
    Error::backend(format!(
        "the record of '{name}' in '{}' is corrupt: {e}",
        path.display()
    ))
}

/// The store's token floor: the highest counter of any name reclaimed from this file
/// (0 if none was); a name without a row counts on from it.
fn token_floor(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = 'token_floor'")?
        .query_row([], |r| r.get::<_, i64>(0))
        .optional()
        .map(|v| v.unwrap_or(0))
}

/// The tickets queued or sleeping on `record`: whom a change to every watcher concerns.
fn queued_tickets(record: &Record) -> Vec<u64> {
    match &record.state {
        Some(State::Permits(p)) => p
            .queue
            .iter()
            .map(|w| w.ticket)
            .chain(p.sleepers.iter().map(|s| s.ticket))
            .collect(),
        _ => Vec::new(),
    }
}

/// Liveness checks for one step: owners in this process are alive without a look at
/// `/proc`, and each other process is looked up once per step.
fn liveness() -> impl Fn(&Owner) -> bool {
    type Process = (u64, u64, u64, u32, u64);
    let memo: RefCell<Vec<(Process, bool)>> = RefCell::new(Vec::new());
    move |o: &Owner| {
        let process = (o.boot, o.machine, o.pidns, o.pid, o.start);
        if o.pid == std::process::id() {
            let me = Owner::current_thread();
            if process == (me.boot, me.machine, me.pidns, me.pid, me.start) {
                return false;
            }
        }
        if let Some(&(_, dead)) = memo.borrow().iter().find(|(p, _)| *p == process) {
            return dead;
        }
        let dead = o.is_dead();
        memo.borrow_mut().push((process, dead));
        dead
    }
}

impl SqliteBackend {
    /// One step as one transaction, and the doorbell rung after the commit.
    fn step_db(&self, key: &Key, info: &KeyInfo, op: Op) -> Result<Reply> {
        let shard = &self.shards[info.shard];
        let name = key.name();
        let is_dead = liveness();
        let ctx = Ctx {
            now: now_millis(),
            is_dead: Some(&is_dead),
            waiter_ttl: Some(self.waiter_ttl),
        };
        let force = matches!(op, Op::ForceRelease);
        let (reply, wake, all_tickets, wrote) = shard.transact(|conn| {
            let err = |e| store_error(&shard.path, e);
            let mut select = conn.prepare_cached(SELECT).map_err(err)?;
            let row = select
                .query_row([name], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, Option<Vec<u8>>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                })
                .optional()
                .map_err(err)?;
            let (old_token, old_tag, old_state, old_kind) = match row {
                Some(row) => row,
                // A new name, or one reclaimed: its counter starts at the floor.
                None => (token_floor(conn).map_err(err)?, None, None, None),
            };
            let decoded = old_state
                .as_deref()
                .map(serde_json::from_slice::<State>)
                .transpose()
                .and_then(|state| {
                    let kind = old_kind.as_deref().map(serde_json::from_str::<Kind>);
                    Ok((state, kind.transpose()?))
                });
            let (state, kind, damaged) = match decoded {
                Ok((state, kind)) => (state, kind, false),
                // A record that does not decode is this name's problem only; a forced
                // release resets it (its fencing counter is a column of its own).
                Err(_) if force => (None, None, true),
                Err(e) => {
                    return Err(Error::Damaged {
                        name: name.into(),
                        reason: e.to_string(),
                    })
                }
            };
            let mut record = Record {
                next_token: old_token as u64,
                tag: if damaged { None } else { old_tag.clone() },
                state,
                kind,
            };
            let (reply, mut wake) = model::apply(&mut record, name, op, &ctx)?;
            if damaged {
                tracing::warn!(name, "reset a damaged record");
                // Whoever waited on the damaged record looks again.
                wake.all = true;
            }
            let new_state = match &record.state {
                Some(s) => Some(serde_json::to_vec(s).map_err(|e| corrupt(&shard.path, name, e))?),
                None => None,
            };
            let new_kind = match &record.kind {
                Some(k) => {
                    Some(serde_json::to_string(k).map_err(|e| corrupt(&shard.path, name, e))?)
                }
                None => None,
            };
            let token = i64::try_from(record.next_token).map_err(|_| {
                Error::backend(format!("the fencing counter of '{name}' overflowed"))
            })?;
            let wrote = token != old_token
                || record.tag != old_tag
                || new_state != old_state
                || new_kind != old_kind;
            if wrote {
                conn.prepare_cached(UPSERT)
                    .and_then(|mut s| {
                        s.execute(rusqlite::params![
                            name, token, record.tag, new_state, new_kind
                        ])
                    })
                    .map_err(err)?;
            }
            let all_tickets = if wake.all {
                queued_tickets(&record)
            } else {
                Vec::new()
            };
            Ok((reply, wake, all_tickets, wrote))
        })?;
        if wrote {
            self.checkpointer.wrote(info.shard, &shard.writes);
        }
        for &t in wake.tickets.iter().chain(&all_tickets) {
            shard.ring(info.hash, Some(t));
        }
        if wake.all {
            shard.ring(info.hash, None);
        }
        Ok(reply)
    }
}

impl Backend for SqliteBackend {
    fn step(&self, key: &Key, op: Op) -> Result<Reply> {
        let info = self.info(key);
        let name = key.name();
        match op {
            Op::Acquire(a) if a.ticket.is_some() => {
                let ticket = a.ticket.unwrap_or_default();
                if !self.gates.admit(name, ticket) {
                    // Behind another waiter of this process: no need to ask the store.
                    return Ok(Reply::Blocked { retry_at: None });
                }
                let reply = self.step_db(key, &info, Op::Acquire(a));
                if !matches!(reply, Ok(Reply::Blocked { .. })) {
                    self.finish_ticket(name, &info, ticket);
                }
                reply
            }
            Op::Dequeue { ticket } => {
                if self.finish_ticket(name, &info, ticket) == Finished::Gated {
                    // It never reached the store's queue.
                    return Ok(Reply::Done);
                }
                self.step_db(key, &info, op)
            }
            Op::CondCheck { ticket } | Op::CondCancel { ticket } => {
                let cancel = matches!(op, Op::CondCancel { .. });
                let reply = self.step_db(key, &info, op)?;
                if cancel || matches!(reply, Reply::Flag(true)) {
                    self.finish_ticket(name, &info, ticket);
                }
                Ok(reply)
            }
            Op::Holders => match self.step_db(key, &info, op)? {
                Reply::Holders { holders, waiting } => Ok(Reply::Holders {
                    holders,
                    waiting: waiting.saturating_add(self.gates.gated(name) as u32),
                }),
                other => Ok(other),
            },
            op => self.step_db(key, &info, op),
        }
    }

    fn watch(&self, key: &Key, ticket: Option<u64>) -> Result<Box<dyn Watch>> {
        let info = self.info(key);
        let shard = &self.shards[info.shard];
        let slot = slot(info.hash, ticket);
        let reg = shard.bell.as_ref().map(|bell| {
            let seen = bell.watch(slot);
            Registration {
                bell: bell.clone(),
                slot,
                seen,
            }
        });
        let local = ticket.map(|t| LocalWatch {
            listener: self.gates.listen(key.name(), t),
            gates: self.gates.clone(),
            name: key.name().into(),
            ticket: t,
        });
        Ok(Box::new(SqliteWatch {
            reg,
            local,
            poll: self.poll,
            sleepers: self.sleepers.clone(),
            uring: self.uring,
        }))
    }

    fn names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for shard in &self.shards {
            let conn = lock(&shard.conn);
            let err = |e| store_error(&shard.path, e);
            let mut stmt = conn
                .0
                .prepare_cached("SELECT name FROM prim")
                .map_err(err)?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(err)?;
            for row in rows {
                names.push(row.map_err(err)?);
            }
        }
        names.sort();
        Ok(names)
    }

    fn destroy(&self) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for shard in &self.shards {
            // SQLite's -wal and -shm files and the doorbell live beside the canonical
            // path (a symlink's target).
            let db = std::fs::canonicalize(&shard.path).unwrap_or_else(|_| shard.path.clone());
            for suffix in ["-wal", "-shm"] {
                let mut name = db.as_os_str().to_owned();
                name.push(suffix);
                files.push(PathBuf::from(name));
            }
            files.push(Bell::path_for(&db));
            files.push(db);
        }
        files.extend(self.dir.clone());
        Ok(files)
    }

    fn warnings(&self) -> Vec<String> {
        self.shards
            .iter()
            .filter_map(|s| s.warning.clone())
            .collect()
    }

    fn reclaim_idle(&self) -> Result<usize> {
        let mut reclaimed = 0;
        for shard in &self.shards {
            reclaimed += shard.transact(|conn| {
                let err = |e| store_error(&shard.path, e);
                // The floor first, in the same transaction as the deletion.
                let highest: Option<i64> = conn
                    .query_row(
                        "SELECT max(token) FROM prim WHERE state IS NULL AND tag IS NULL",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(err)?;
                let Some(highest) = highest else {
                    return Ok(0);
                };
                if highest > token_floor(conn).map_err(err)? {
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('token_floor', ?1) \
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        [highest],
                    )
                    .map_err(err)?;
                }
                conn.execute("DELETE FROM prim WHERE state IS NULL AND tag IS NULL", [])
                    .map_err(err)
            })?;
        }
        Ok(reclaimed)
    }

    fn evict_tag(&self, tag: &str) -> Result<usize> {
        let mut evicted = 0;
        for shard in &self.shards {
            let woken = shard.transact(|conn| {
                let err = |e| store_error(&shard.path, e);
                let mut woken = Vec::new();
                let mut kept = Vec::new();
                {
                    let mut stmt = conn
                        .prepare_cached(
                            "SELECT name, state FROM prim WHERE tag = ?1 AND state IS NOT NULL",
                        )
                        .map_err(err)?;
                    let rows = stmt
                        .query_map([tag], |r| {
                            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
                        })
                        .map_err(err)?;
                    for row in rows {
                        let (name, bytes) = row.map_err(err)?;
                        // A record that does not parse is evicted all the same; it
                        // just has no tickets to wake.
                        let mut record = Record {
                            next_token: 0,
                            tag: Some(tag.to_owned()),
                            state: serde_json::from_slice::<State>(&bytes).ok(),
                            kind: None,
                        };
                        let tickets = queued_tickets(&record);
                        model::evict(&mut record, tag);
                        if let Some(state) = &record.state {
                            // Holds were cut short: the next holder is told.
                            let bytes = serde_json::to_vec(state)
                                .map_err(|e| corrupt(&shard.path, &name, e))?;
                            kept.push((name.clone(), bytes));
                        }
                        woken.push((stable_hash(name.as_bytes()), tickets));
                    }
                }
                conn.prepare_cached(
                    "UPDATE prim SET state = NULL, tag = NULL, kind = NULL \
                     WHERE tag = ?1 AND state IS NOT NULL",
                )
                .and_then(|mut s| s.execute([tag]))
                .map_err(err)?;
                for (name, bytes) in kept {
                    conn.prepare_cached("UPDATE prim SET state = ?2 WHERE name = ?1")
                        .and_then(|mut s| s.execute(rusqlite::params![name, bytes]))
                        .map_err(err)?;
                }
                Ok(woken)
            })?;
            evicted += woken.len();
            for (hash, tickets) in woken {
                for t in tickets {
                    shard.ring(hash, Some(t));
                }
                shard.ring(hash, None);
            }
        }
        Ok(evicted)
    }
}

/// Moves WAL checkpoints off the steps' path.
///
/// SQLite checkpoints in the thread whose commit pushes the write-ahead log past a
/// threshold, and a checkpoint waits for the disk (it syncs): that step, and every
/// process waiting on the database lock behind it, stalls. Here one thread per space
/// runs a `PASSIVE` checkpoint on its own connection every [`CHECKPOINT_EVERY`] write
/// steps; a passive checkpoint never blocks writers, and steps keep SQLite's own
/// checkpoint only as a backstop ([`AUTOCHECKPOINT_BACKSTOP`] pages). Durability is
/// unchanged: committed steps are in the WAL either way.
#[derive(Debug)]
struct Checkpointer {
    tx: Option<mpsc::SyncSender<usize>>,
}

impl Checkpointer {
    fn start(paths: Vec<PathBuf>, timeout: Duration) -> Checkpointer {
        let (tx, rx) = mpsc::sync_channel::<usize>(paths.len());
        let spawned = std::thread::Builder::new()
            .name("locksmith-checkpoint".into())
            .spawn(move || {
                let mut conns: Vec<Option<Connection>> = paths.iter().map(|_| None).collect();
                // Ends when the backend, and with it the sender, is dropped.
                while let Ok(i) = rx.recv() {
                    let (Some(path), Some(slot)) = (paths.get(i), conns.get_mut(i)) else {
                        continue;
                    };
                    if slot.is_none() {
                        let flags =
                            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                        *slot = Connection::open_with_flags(path, flags)
                            .and_then(|c| c.busy_timeout(timeout).map(|()| c))
                            .map_err(|e| {
                                tracing::debug!(path = %path.display(), error = %e, "no checkpointer")
                            })
                            .ok();
                    }
                    if let Some(conn) = slot {
                        if let Err(e) =
                            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                        {
                            tracing::debug!(path = %path.display(), error = %e, "checkpoint failed");
                        }
                    }
                }
            });
        Checkpointer {
            tx: spawned.ok().map(|_| tx),
        }
    }

    /// Counts a write step on shard `i`; every so often, asks for a checkpoint.
    fn wrote(&self, i: usize, writes: &AtomicU32) {
        if writes.fetch_add(1, Ordering::Relaxed) % CHECKPOINT_EVERY == CHECKPOINT_EVERY - 1 {
            if let Some(tx) = &self.tx {
                // A full channel means checkpoints are already due.
                let _ = tx.try_send(i);
            }
        }
    }
}

impl SqliteBackend {
    /// Forgets `ticket` (granted, gone or done); if it was this process's waiter in
    /// the store's queue, lets the next local waiter take its place.
    fn finish_ticket(&self, name: &str, info: &KeyInfo, ticket: u64) -> Finished {
        let (finished, promoted) = self.gates.finish(name, ticket);
        if let Some(next) = promoted {
            // Its watch may be on the doorbell if it was promoted after it looked.
            self.shards[info.shard].ring(info.hash, Some(next));
        }
        finished
    }
}

/// A watcher's place on the doorbell.
struct Registration {
    bell: Arc<Bell>,
    slot: usize,
    seen: u32,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.bell.unwatch(self.slot);
    }
}

struct SqliteWatch {
    reg: Option<Registration>,
    local: Option<LocalWatch>,
    poll: Duration,
    sleepers: Sleepers,
    uring: bool,
}

/// The threads that sleep on the doorbell for async watchers, one per (bell, slot,
/// sequence) at a time.
#[derive(Clone, Debug, Default)]
struct Sleepers(Arc<Mutex<SleeperMap>>);

/// Sleepers by (doorbell address, slot).
type SleeperMap = HashMap<(usize, usize), Arc<Sleeper>>;

#[derive(Debug)]
struct Sleeper {
    seen: u32,
    done: Done,
}

impl Sleepers {
    fn lock(&self) -> MutexGuard<'_, SleeperMap> {
        // Plain inserts and removes: a panic cannot leave the map inconsistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sleeper for `slot` of `bell` waiting for it to move past `seen`; starts
    /// one if there is none yet. It sleeps for one poll interval at most.
    fn join(
        &self,
        bell: &Arc<Bell>,
        slot: usize,
        seen: u32,
        poll: Duration,
        rt: &tokio::runtime::Handle,
    ) -> Arc<Sleeper> {
        let key = (Arc::as_ptr(bell) as usize, slot);
        let mut map = self.lock();
        if let Some(s) = map.get(&key) {
            if s.seen == seen && !s.done.is_set() {
                return s.clone();
            }
        }
        let sleeper = Arc::new(Sleeper {
            seen,
            done: Done::default(),
        });
        map.insert(key, sleeper.clone());
        drop(map);
        let (me, bell, sleepers) = (sleeper.clone(), bell.clone(), self.clone());
        drop(rt.spawn_blocking(move || {
            bell.wait(slot, seen, poll);
            {
                let mut map = sleepers.lock();
                if map.get(&key).is_some_and(|s| Arc::ptr_eq(s, &me)) {
                    map.remove(&key);
                }
            }
            me.done.set();
        }));
        sleeper
    }
}

/// A queued waiter's link to its process-local gate.
struct LocalWatch {
    listener: EventListener,
    gates: Arc<Gates>,
    name: Arc<str>,
    ticket: u64,
}

impl LocalWatch {
    /// Whether the waiter waits behind another waiter of this process, rather than in
    /// the store's queue.
    fn gated(&self) -> bool {
        self.gates.is_gated(&self.name, self.ticket)
    }
}

impl SqliteWatch {
    /// Sleeps until the doorbell rings, `deadline`, or one poll interval, whichever
    /// comes first.
    fn sleep(mut self, deadline: Option<Instant>) {
        if let Some(local) = self.local.take() {
            if local.gated() {
                // Only this process can let it through: no polling needed.
                match deadline {
                    Some(deadline) => {
                        local.listener.wait_deadline(deadline);
                    }
                    None => local.listener.wait(),
                }
                return;
            }
            if local.listener.discard() {
                // Let through since the watch began.
                return;
            }
        }
        let now = Instant::now();
        let mut timeout = self.poll;
        if let Some(deadline) = deadline {
            timeout = timeout.min(deadline.saturating_duration_since(now));
        }
        if timeout.is_zero() {
            return;
        }
        match &self.reg {
            Some(reg) => reg.bell.wait(reg.slot, reg.seen, timeout),
            None => std::thread::sleep(timeout),
        }
    }
}

impl SqliteWatch {
    /// A sleep on the doorbell as an io_uring futex wait; `None` where io_uring cannot
    /// serve (see `futex_async`), without a doorbell, or with `?uring=off`.
    #[cfg(target_os = "linux")]
    fn uring_wait(&self) -> Option<super::futex_async::FutexWait> {
        let reg = self.reg.as_ref().filter(|_| self.uring)?;
        let word = reg.bell.seq_word(reg.slot);
        // SAFETY: the word lies in the doorbell's mapping, which lasts as long as the
        // `Bell`, and the wait keeps this `Arc<Bell>`.
        unsafe { super::futex_async::wait(word, reg.seen, reg.bell.clone()) }
    }

    #[cfg(not(target_os = "linux"))]
    fn uring_wait(&self) -> Option<std::future::Pending<()>> {
        None
    }
}

impl Watch for SqliteWatch {
    fn wait(self: Box<Self>, deadline: Option<Instant>) -> Result<()> {
        self.sleep(deadline);
        Ok(())
    }

    fn wait_async(self: Box<Self>, deadline: Option<Instant>) -> BoxFuture<'static, Result<()>> {
        let mut this = self;
        if let Some(local) = this.local.take() {
            if local.gated() {
                // Waiting behind another waiter of this process: a local event, no
                // thread needed.
                let has_timer = tokio::runtime::Handle::try_current().is_ok();
                if deadline.is_none() || has_timer {
                    return Box::pin(async move {
                        match deadline {
                            Some(d) => {
                                let _ = tokio::time::timeout_at(d.into(), local.listener).await;
                            }
                            None => local.listener.await,
                        }
                        Ok(())
                    });
                }
                this.local = Some(local);
            } else if local.listener.discard() {
                return Box::pin(std::future::ready(Ok(())));
            }
        }
        if let Some(wait) = this.uring_wait() {
            // The doorbell's futex word as an io_uring request: its wake-up reaches this
            // task with no thread in between, and the retry step that follows runs on
            // the task itself.
            let until = Instant::now() + this.poll;
            let until = deadline.map_or(until, |d| d.min(until));
            return Box::pin(async move {
                // The registration stays while the task waits, so rings wake it.
                let _registered = this;
                let _ = tokio::time::timeout_at(until.into(), wait).await;
                Ok(())
            });
        }
        if let (Some(reg), Ok(rt)) = (&this.reg, tokio::runtime::Handle::try_current()) {
            // The futex wait blocks a thread: one thread of tokio's blocking pool sleeps
            // for all the async watchers of this slot in this process, and wakes them
            // through an event.
            let sleeper = this
                .sleepers
                .join(&reg.bell, reg.slot, reg.seen, this.poll, &rt);
            return Box::pin(async move {
                // The registration stays while the watcher waits, so rings reach the
                // sleeping thread.
                let _registered = this;
                match deadline {
                    Some(d) => {
                        let _ = tokio::time::timeout_at(d.into(), sleeper.done.wait()).await;
                    }
                    None => sleeper.done.wait().await,
                }
                Ok(())
            });
        }
        let this = this;
        // Outside tokio (or without a doorbell): a thread of its own sleeps, and
        // completes this future through an event. If the future is dropped first, the
        // sleeper is rung awake so that it frees its thread at once.
        let done = Arc::new(Done::default());
        let ring = this.reg.as_ref().map(|r| (r.bell.clone(), r.slot));
        let task = {
            let done = done.clone();
            move || {
                this.sleep(deadline);
                done.set();
            }
        };
        let spawned = match tokio::runtime::Handle::try_current() {
            // No doorbell: the task only sleeps (bounded by the poll interval).
            Ok(rt) => {
                drop(rt.spawn_blocking(task));
                Ok(())
            }
            Err(_) => std::thread::Builder::new()
                .name("locksmith-sqlite-wait".into())
                .spawn(task)
                .map(drop),
        };
        Box::pin(async move {
            if let Err(e) = spawned {
                return Err(Error::backend(format!(
                    "cannot start a waiting thread: {e}"
                )));
            }
            let cancel = CancelOnDrop {
                done: done.clone(),
                ring,
            };
            done.wait().await;
            drop(cancel);
            Ok(())
        })
    }
}

/// Wakes an abandoned sleeper so that its thread returns to the pool.
struct CancelOnDrop {
    done: Arc<Done>,
    ring: Option<(Arc<Bell>, usize)>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.done.is_set() {
            if let Some((bell, slot)) = &self.ring {
                bell.ring(*slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_bad_options_are_refused() {
        let o = Options::parse("/tmp/a.db", "sqlite:/tmp/a.db").unwrap();
        assert_eq!(o.path, PathBuf::from("/tmp/a.db"));
        assert_eq!(o.shards, None);
        let o = Options::parse("///tmp/d?shards=8&poll=1000&sync=full", "u").unwrap();
        assert_eq!(o.path, PathBuf::from("/tmp/d"));
        assert_eq!(o.shards, Some(8));
        assert_eq!(o.poll, Duration::from_secs(1));
        assert!(o.sync_full);
        assert!(o.uring);
        assert!(!Options::parse("x?uring=off", "u").unwrap().uring);
        for bad in [
            "",
            "?shards=2",
            "x?shards=0",
            "x?shards=999",
            "x?nope=1",
            "x?sync=maybe",
            "x?uring=maybe",
        ] {
            assert!(
                matches!(Options::parse(bad, bad), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
    }
}
