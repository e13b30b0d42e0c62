//! `flock(2)` on a lock file: each process opens the file itself (flock locks belong to the
//! open file description, so a descriptor inherited through fork would share the lock).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::harness::{Ctx, ProcLock};
use crate::scenario::OPEN;

/// One process's handle on the lock file.
#[derive(Debug)]
pub struct Flock {
    file: File,
}

impl Flock {
    /// Opens (creating) the lock file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        Ok(Flock { file })
    }

    fn op(&self, how: libc::c_int) -> Result<()> {
        loop {
            // SAFETY: the descriptor belongs to `self.file`, which is open.
            if unsafe { libc::flock(self.file.as_raw_fd(), how) } == 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).context("flock");
            }
        }
    }
}

impl ProcLock for Flock {
    fn hold<R>(&mut self, f: impl FnOnce() -> R) -> Result<R> {
        self.op(libc::LOCK_EX)?;
        let r = f();
        self.op(libc::LOCK_UN)?;
        Ok(r)
    }
}

const NAME: &str = "flock(2)";

/// Runs the flock peer.
pub fn run(ctx: &mut Ctx) {
    let path: PathBuf = ctx.scratch.join("flock.lock");
    let note = "LOCK_EX/LOCK_UN on a file in the scratch directory";
    ctx.lock_uncontended(NAME, "Lock", note, || Flock::open(&path));
    ctx.lock_contention(NAME, note, || Flock::open(&path));
    ctx.lock_handoff(NAME, "Lock", note, || Flock::open(&path));
    ctx.per_op(
        OPEN,
        "flock(2) lock file",
        "Lock",
        "open(2) of an existing lock file + close",
        || Flock::open(&path).map(drop),
    );
}
