//! The doorbell: a small shared-memory file of futex words through which a step that
//! changed a primitive wakes the processes on this host that wait for it.
//!
//! One doorbell serves one database file and lives beside it, as SQLite's own `-shm`
//! index does: `<canonical database path>-bell`, created 0600. Every process that
//! opens the same file rings the same bell. Beside the database rather than in
//! `/dev/shm`, it goes away with the database's directory, and nobody who cannot
//! write that directory can plant a doorbell for it (in the world-writeable
//! `/dev/shm`, another user could create the predictable name first and force every
//! waiter back to polling). It is one page; the kernel writes it back to disk now and
//! then, which costs nothing measurable.
//!
//! # Layout
//!
//! An array of `u32` words, native endian, all zero when the file is created:
//!
//! | words | name | meaning |
//! | --- | --- | --- |
//! | `0` | magic | `MAGIC` once initialised; `0` for the instant between creation and initialisation |
//! | `1` | `tx_seq` | bumped by every transaction that ends (commit or rollback) holding the write lock |
//! | `2` | `tx_waiters` | how many connections wait in SQLite's busy handler for that lock |
//! | `3 ..HEADER` | reserved | zero |
//! | `HEADER + i` for `i < SLOTS` | `seq[i]` | bumped (wrapping) by every change that concerns slot `i`; the futex word waiters sleep on |
//! | `HEADER + SLOTS + i` | `waiters[i]` | how many watchers may sleep on `seq[i]`; a waker skips the `FUTEX_WAKE` system call while it reads 0 |
//!
//! A watcher of a name (or of one queued ticket of it) uses slot
//! `slot(hash(name), ticket)`. Different names may share a slot: their waiters then
//! see spurious wake-ups, which the waiting loop tolerates.
//!
//! # Memory ordering
//!
//! The waker bumps `seq[i]` and then reads `waiters[i]`; the watcher increments
//! `waiters[i]` and then reads `seq[i]`; all four are `SeqCst`. So either the waker sees
//! the watcher and issues `FUTEX_WAKE`, or the watcher reads the bumped sequence before
//! it re-checks the database, which already holds the change (the bell rings after the
//! commit). A watcher that was killed leaves its count behind: that costs its slot's
//! wakers a system call each, never a lost wake-up.
//!
//! The futex operations are the shared (not `_PRIVATE`) forms, since the words live in
//! a `MAP_SHARED` file mapping that several processes map.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::os::{futex, mmap};

/// How many futex slots a doorbell has.
pub(crate) const SLOTS: usize = 508;
/// Words before the slots.
const HEADER: usize = 8;
/// The first word of an initialised doorbell: "LSb1".
const MAGIC: u32 = 0x4C53_6231;
/// The size of the mapping, in bytes: one page.
const SIZE: usize = (HEADER + 2 * SLOTS) * 4;
const _: () = assert!(SIZE == 4096);

/// A mapped doorbell file.
#[derive(Debug)]
pub(crate) struct Bell {
    /// `SIZE` bytes, only ever accessed through atomics.
    map: memmap2::MmapRaw,
}

/// The slot that watchers of a name with hash `hash` (and, for a queued waiter,
/// `ticket`) use.
pub(crate) fn slot(hash: u64, ticket: Option<u64>) -> usize {
    let mut h = hash ^ ticket.map_or(0, |t| t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    // A final mix, so that names that differ only in their last byte spread out.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h % SLOTS as u64) as usize
}

/// Why a doorbell cannot be used (another user's, say), as one line: waiters on its
/// store poll, so hand-offs take up to the poll interval instead of microseconds. Also
/// logged, once per process and doorbell.
pub(crate) fn warn_once(path: &Path, e: &io::Error) -> String {
    static WARNED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let line = format!(
        "cannot use the doorbell '{}' ({e}): waiters on this store poll, so hand-offs \
         may take up to the poll interval",
        path.display()
    );
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if !warned.iter().any(|p| p == path) {
        warned.push(path.to_owned());
        tracing::warn!(bell = %path.display(), error = %e, "no doorbell: waiters on this store will poll");
    }
    line
}

impl Bell {
    /// The doorbell of the database at `db` (a canonical path).
    pub(crate) fn path_for(db: &Path) -> PathBuf {
        let mut name = db.as_os_str().to_owned();
        name.push("-bell");
        PathBuf::from(name)
    }

    /// Opens (creating if needed) and maps the doorbell at `path`. A file that another
    /// user owns, or whose first word is neither 0 nor the magic, is refused: its words
    /// could be driven by someone else.
    pub(crate) fn open(path: &Path) -> io::Result<Bell> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        let meta = file.metadata()?;
        let euid = rustix::process::geteuid().as_raw();
        if meta.uid() != euid || meta.mode() & 0o022 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the doorbell belongs to another user or is writeable by others",
            ));
        }
        // Allocate the page before mapping it (growing the file if needed): a write to
        // a page of a full filesystem that was never allocated is a SIGBUS, not an
        // error. Two processes doing it at once is harmless; a doorbell never shrinks.
        mmap::reserve(&file, 0, SIZE)?;
        let bell = Bell {
            map: mmap::map_file(&file, Some(SIZE))?,
        };
        match bell
            .word(0)
            .compare_exchange(0, MAGIC, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => Ok(bell),
            Err(MAGIC) => Ok(bell),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a locksmith doorbell",
            )),
        }
    }

    fn word(&self, i: usize) -> &AtomicU32 {
        debug_assert!(i < SIZE / 4);
        // SAFETY: `i` is within the mapping (callers index below HEADER + 2 * SLOTS),
        // which is aligned to a page and lives as long as `self`.
        unsafe { &*self.map.as_ptr().cast::<AtomicU32>().add(i) }
    }

    /// The futex word that watchers of `slot` sleep on.
    pub(crate) fn seq_word(&self, slot: usize) -> &AtomicU32 {
        self.seq(slot)
    }

    fn seq(&self, slot: usize) -> &AtomicU32 {
        self.word(HEADER + slot % SLOTS)
    }

    fn waiters(&self, slot: usize) -> &AtomicU32 {
        self.word(HEADER + SLOTS + slot % SLOTS)
    }

    /// Rings slot `slot`: bumps its sequence and wakes whoever sleeps on it.
    pub(crate) fn ring(&self, slot: usize) {
        let seq = self.seq(slot);
        seq.fetch_add(1, Ordering::SeqCst);
        if self.waiters(slot).load(Ordering::SeqCst) > 0 {
            futex::wake(seq, u32::MAX, true);
        }
    }

    /// Tells connections waiting for the database's write lock that it was released.
    pub(crate) fn ring_tx(&self) {
        let seq = self.word(1);
        seq.fetch_add(1, Ordering::SeqCst);
        if self.word(2).load(Ordering::SeqCst) > 0 {
            futex::wake(seq, u32::MAX, true);
        }
    }

    /// Waits (at most `timeout`) for a transaction holding the write lock to end.
    /// A release between the caller's failed attempt and this call is missed: the
    /// timeout bounds that case.
    pub(crate) fn wait_tx(&self, timeout: Duration) {
        self.word(2).fetch_add(1, Ordering::SeqCst);
        let seen = self.word(1).load(Ordering::SeqCst);
        futex::wait(self.word(1), seen, Some(timeout), true);
        self.word(2).fetch_sub(1, Ordering::SeqCst);
    }

    /// Registers a watcher of `slot`; returns the sequence to wait on. Pair with
    /// [`Bell::unwatch`].
    pub(crate) fn watch(&self, slot: usize) -> u32 {
        self.waiters(slot).fetch_add(1, Ordering::SeqCst);
        self.seq(slot).load(Ordering::SeqCst)
    }

    /// Ends a registration made by [`Bell::watch`].
    pub(crate) fn unwatch(&self, slot: usize) {
        self.waiters(slot).fetch_sub(1, Ordering::SeqCst);
    }

    /// Sleeps until `slot` rings after `seen` was read, or for `timeout` at most.
    /// Returns at once if it rang already; may return early for no reason.
    pub(crate) fn wait(&self, slot: usize, seen: u32, timeout: Duration) {
        futex::wait(self.seq(slot), seen, Some(timeout), true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_ring_wakes_a_sleeper_and_a_missed_ring_is_not_slept_through() {
        let dir = std::env::temp_dir().join(format!("locksmith-bell-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.bell");
        let bell = Arc::new(Bell::open(&path).unwrap());
        let other = Bell::open(&path).unwrap();
        let s = slot(crate::os::hash::stable_hash(b"x"), None);
        // Rung between watch and wait: the wait returns at once.
        let seen = bell.watch(s);
        other.ring(s);
        let t = Instant::now();
        bell.wait(s, seen, Duration::from_secs(30));
        assert!(t.elapsed() < Duration::from_secs(10));
        bell.unwatch(s);
        // A sleeper in another thread, woken through the other mapping.
        let seen = bell.watch(s);
        let b2 = bell.clone();
        let t = Instant::now();
        let h = std::thread::spawn(move || b2.wait(s, seen, Duration::from_secs(30)));
        other.ring(s);
        h.join().unwrap();
        assert!(t.elapsed() < Duration::from_secs(10));
        bell.unwatch(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
