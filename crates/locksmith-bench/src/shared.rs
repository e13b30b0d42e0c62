//! Shared memory between a process and the children it forks, and the fork helper.
//!
//! Cross-process scenarios fork: the parent is single-threaded when it forks (the harness
//! starts no threads, and async peers use a current-thread runtime that is gone by then),
//! so the child may run ordinary Rust code and ends with `_exit`, never returning into the
//! parent's stack.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use locksmith::shm::Region;

/// An anonymous shared mapping, zero-filled, inherited by forked children: a locksmith
/// [`Region`].
#[derive(Debug)]
pub struct SharedRegion {
    region: Region,
}

impl SharedRegion {
    /// Maps `len` bytes (rounded up by the kernel to whole pages).
    pub fn new(len: usize) -> io::Result<Self> {
        let region = Region::anonymous(len.max(1)).map_err(io::Error::other)?;
        Ok(SharedRegion { region })
    }

    /// Start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.region.whole().as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Whether the mapping is empty (never: at least one byte is mapped).
    pub fn is_empty(&self) -> bool {
        self.region.is_empty()
    }

    /// The `i`-th 64-bit atomic word of the region, if it fits.
    pub fn word(&self, i: usize) -> Option<&AtomicU64> {
        if (i + 1) * 8 > self.len() {
            return None;
        }
        // SAFETY: the mapping is page-aligned, so 8-byte aligned; word `i` lies inside it
        // (checked above); the memory lives as long as `self`, and AtomicU64 may alias
        // memory that other processes access atomically.
        Some(unsafe { &*self.as_ptr().add(i * 8).cast::<AtomicU64>() })
    }
}

/// Control words shared by the two processes of a cross-process scenario.
#[derive(Debug)]
pub struct Control {
    region: SharedRegion,
}

/// Indices of the control words.
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub enum Word {
    /// Set by the parent to start a timed phase.
    Go = 0,
    /// Set by the parent to stop a timed phase.
    Stop = 1,
    /// Round counter published by the holder ("I hold it for round i").
    Held = 2,
    /// Round counter published by the waiter ("I am about to wait in round i").
    Ready = 3,
    /// Round counter published by the waiter ("I got it in round i").
    Done = 4,
    /// Release timestamp (ns, CLOCK_MONOTONIC).
    T0 = 5,
    /// Counter incremented non-atomically under the lock, to check exclusion.
    Counter = 6,
    /// Cycles done by the parent.
    CountA = 7,
    /// Cycles done by the child.
    CountB = 8,
    /// Child reports an error (non-zero).
    Failed = 9,
}

/// Number of control words before the sample area.
const CONTROL_WORDS: usize = 16;

impl Control {
    /// Control words plus room for `samples` 64-bit sample slots.
    pub fn new(samples: usize) -> io::Result<Self> {
        Ok(Control {
            region: SharedRegion::new((CONTROL_WORDS + samples) * 8)?,
        })
    }

    /// A control word.
    pub fn w(&self, w: Word) -> &AtomicU64 {
        self.region
            .word(w as usize)
            .expect("control words fit by construction")
    }

    /// Sample slot `i`, if there is room for it.
    pub fn sample(&self, i: usize) -> Option<&AtomicU64> {
        self.region.word(CONTROL_WORDS + i)
    }

    /// Waits until word `w` is at least `v`, spinning briefly then yielding. Returns false
    /// if `limit` passed first or the other side reported a failure.
    pub fn wait_at_least(&self, w: Word, v: u64, limit: Duration) -> bool {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if self.w(w).load(Ordering::Acquire) >= v {
                return true;
            }
            if self.w(Word::Failed).load(Ordering::Relaxed) != 0 || start.elapsed() > limit {
                return false;
            }
            spins += 1;
            if spins < 200 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// A forked child process.
#[derive(Debug)]
pub struct Child {
    pid: libc::pid_t,
    reaped: bool,
}

/// Forks; the child runs `f` and exits with 0 if it returned `Ok`, 1 otherwise (after
/// printing the error). The parent gets the child handle.
pub fn fork_child(f: impl FnOnce() -> anyhow::Result<()>) -> io::Result<Child> {
    // SAFETY: the harness is single-threaded when it forks (see the module docs), so the
    // child has a consistent copy of every lock and allocator state.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(Ok(())) => 0,
            Ok(Err(e)) => {
                eprintln!("child process: {e:#}");
                1
            }
            Err(_) => 2,
        };
        // SAFETY: _exit ends the child at once without running the parent's atexit handlers
        // or destructors of state the parent owns.
        unsafe { libc::_exit(code) };
    }
    Ok(Child { pid, reaped: false })
}

impl Child {
    /// Waits for the child; an error if it did not exit with 0.
    pub fn wait(mut self) -> anyhow::Result<()> {
        let mut status = 0;
        // SAFETY: pid is our own unreaped child; status is a valid out pointer.
        let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
        self.reaped = true;
        if r < 0 {
            return Err(io::Error::last_os_error().into());
        }
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            Ok(())
        } else {
            anyhow::bail!("child process failed (wait status {status:#x})")
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: pid is our own child; killing and reaping it cannot touch other
            // processes. Used only when the parent bails out early.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}
