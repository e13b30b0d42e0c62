//! The SQLite floor: what one acquire+release costs at least if each step is one
//! single-row WAL transaction (`BEGIN IMMEDIATE; upsert; COMMIT`), measured with rusqlite
//! (bundled SQLite). The sqlite backend's target is stated against this row.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use rusqlite::{params, Connection};

use crate::harness::Ctx;
use crate::scenario::UNCONTENDED;

/// Name of the floor row.
pub const FLOOR: &str = "SQLite floor: 2 WAL transactions";

/// A database set up like the backend's: WAL, synchronous=NORMAL, one table.
#[derive(Debug)]
pub struct Floor {
    conn: Connection,
}

impl Floor {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).with_context(|| format!("open {}", path.display()))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            anyhow::bail!("journal_mode is {mode}, not wal");
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS locks (name TEXT PRIMARY KEY, holder INTEGER NOT NULL, \
             token INTEGER NOT NULL)",
        )?;
        Ok(Floor { conn })
    }

    /// One single-row transaction: BEGIN IMMEDIATE; upsert; COMMIT.
    pub fn txn(&self, holder: i64) -> Result<()> {
        self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        self.conn
            .prepare_cached(
                "INSERT INTO locks (name, holder, token) VALUES (?1, ?2, 1) \
                 ON CONFLICT(name) DO UPDATE SET holder = ?2, token = token + 1",
            )?
            .execute(params!["bench", holder])?;
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    }
}

/// Runs the SQLite floor.
pub fn run(ctx: &mut Ctx) {
    let path = ctx.scratch.join("floor.sqlite3");
    let note =
        "rusqlite bundled; journal_mode=WAL, synchronous=NORMAL; acquire=1 txn, release=1 txn";
    if !ctx.wants(UNCONTENDED, FLOOR) {
        return;
    }
    match Floor::open(&path) {
        Ok(db) => ctx.per_op(UNCONTENDED, FLOOR, "Lock", note, || {
            db.txn(1)?;
            db.txn(0)
        }),
        Err(e) => ctx.skip(UNCONTENDED, FLOOR, "Lock", &format!("{e:#}")),
    }
}
