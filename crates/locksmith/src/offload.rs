//! A space's helper thread: it runs the store work that async callers and drops must
//! not wait for, on stores whose steps wait on I/O (a Redis round trip, an SQLite
//! transaction another process holds up).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Mutex};

use crate::{Error, Result};

type Job = Box<dyn FnOnce() + Send>;

/// The helper thread's queue of jobs, which run one at a time, in order. The thread
/// starts with the first job (and again in a forked child, which has no copy of it)
/// and ends once the space is gone and its jobs are done.
#[derive(Default)]
pub(crate) struct Offload {
    /// The process that started the thread, the thread's queue, and the thread.
    jobs: Mutex<Option<Helper>>,
}

struct Helper {
    pid: u32,
    queue: mpsc::Sender<Job>,
    thread: std::thread::JoinHandle<()>,
}

impl Drop for Offload {
    /// Lets the thread finish what it was handed (a dropped wait's leaving), so that
    /// a space dropped before its process exits leaves no queue place behind. Jobs
    /// hold the store, never the space, so this never runs on the helper thread.
    fn drop(&mut self) {
        let helper = self
            .jobs
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(Helper { pid, queue, thread }) = helper {
            drop(queue);
            if pid != std::process::id() {
                // A forked child's copy of its parent's thread: nothing to join.
                std::mem::forget(thread);
            } else if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl Offload {
    /// Hands `job` to the helper thread; never waits for it.
    pub(crate) fn spawn(&self, job: Job) -> Result<()> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        let job = match &*jobs {
            Some(helper) if helper.pid == pid => match helper.queue.send(job) {
                Ok(()) => return Ok(()),
                // (It cannot end while the queue lives; start another all the same.)
                Err(mpsc::SendError(job)) => job,
            },
            _ => job,
        };
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("locksmith-offload".into())
            .spawn(move || {
                for job in rx {
                    // A job that panics loses its own answer only.
                    let _ = catch_unwind(AssertUnwindSafe(job));
                }
            })
            .map_err(|e| Error::backend(format!("cannot start the space's helper thread: {e}")))?;
        let _ = tx.send(job);
        // (A forked child's copy of its parent's helper is forgotten, not joined.)
        if let Some(stale) = jobs.replace(Helper {
            pid,
            queue: tx,
            thread,
        }) {
            std::mem::forget(stale);
        }
        Ok(())
    }

    /// Runs `f` on the helper thread and awaits its answer without blocking the
    /// caller's thread.
    pub(crate) async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.spawn(Box::new(move || {
            let _ = tx.send(f());
        }))?;
        rx.await
            .map_err(|_| Error::backend("the space's helper thread dropped the call"))?
    }
}
