//! Async futex waits without a helper thread: the shm backend's bells and the sqlite
//! doorbell let an async task sleep on a shared futex word through io_uring's
//! `IORING_OP_FUTEX_WAIT` (Linux 6.7+).
//!
//! Without this, an async waiter is woken in two hops: the releasing process's
//! `FUTEX_WAKE` wakes a thread of ours that sleeps on the word, and that thread wakes the
//! tokio worker. Here the wait is a request in an io_uring whose completions signal an
//! eventfd that the tokio runtime polls (`AsyncFd`), so the `FUTEX_WAKE` reaches the
//! worker directly. Waits are plain shared 32-bit futex waits (`FUTEX2_SIZE_U32`, no
//! `FUTEX2_PRIVATE`, any bitset), so the `FUTEX_WAKE` calls of other processes wake
//! them as they wake threads in `FUTEX_WAIT`.
//!
//! # Rings
//!
//! One ring per thread and tokio runtime, made on the first wait there and kept in a
//! thread-local: every wait of that thread shares it. A wait keeps its ring alive until
//! it ends, wherever its task moves. A forked child never touches its parent's ring
//! (its thread-local is recognised by the pid and abandoned, not dropped: dropping it
//! would deregister the parent's eventfd from the epoll instance they share).
//!
//! # When it is not used
//!
//! [`wait`] answers `None`, and the caller falls back to its helper threads, when:
//! `LOCKSMITH_URING=off` is set (read once per process); io_uring cannot be set up or
//! lacks `FUTEX_WAIT` (kernels before 6.7, seccomp, `kernel.io_uring_disabled`);
//! there is no tokio runtime; or the runtime was built without its IO driver
//! (`enable_io`/`enable_all`). Tokio offers no way to ask the last; registering the
//! eventfd panics there, so it is tried once per runtime and thread under
//! `catch_unwind`, with that one panic kept off stderr. With `panic = "abort"` it is
//! never tried and the helper threads are always used.
//!
//! # Cancel safety
//!
//! Dropping a [`FutexWait`] cancels its request (`IORING_OP_ASYNC_CANCEL`) before the
//! drop returns, so an abandoned wait is not left in the futex's queue to absorb a
//! later `FUTEX_WAKE`. If a wake reached it first, it is passed on with a
//! `FUTEX_WAKE` of one, so no other waiter misses it.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, IoUring, Probe};
use rustix::event::{eventfd, EventfdFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::os::futex;

/// `user_data` of cancel requests, whose completions need no handling.
const CANCEL: u64 = u64::MAX;
/// Submission queue entries; each wait needs one only until it is submitted.
const SQ_ENTRIES: u32 = 64;
/// Completion queue entries; more completions than this at once overflow into the
/// kernel's backlog, which `reap` flushes.
const CQ_ENTRIES: u32 = 1024;

/// The environment variable that turns the io_uring path off for the process.
pub(crate) const ENV: &str = "LOCKSMITH_URING";

/// A wait for a shared futex word to be woken, in the current thread's ring.
///
/// Completes when the word is woken, when it no longer held the expected value at
/// submission, or when the request ends for another reason (the submitting thread
/// exited); callers re-check their state in every case. Dropping it cancels the wait.
#[must_use = "a futex wait is cancelled when dropped"]
pub(crate) struct FutexWait {
    ring: Arc<Ring>,
    id: u64,
}

impl std::fmt::Debug for FutexWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FutexWait").field("id", &self.id).finish()
    }
}

/// Starts waiting on `word` while it holds `expected`, or answers `None` if io_uring
/// cannot serve this caller (see the module docs); the caller then waits some other way.
///
/// `mapping` is kept until the kernel is done with the request.
///
/// # Safety
///
/// `word` must stay mapped, at the same address, for as long as `mapping` lives.
pub(crate) unsafe fn wait(
    word: &AtomicU32,
    expected: u32,
    mapping: Arc<dyn Any + Send + Sync>,
) -> Option<FutexWait> {
    let ring = local_ring()?;
    let id = ring.submit(word, expected, mapping)?;
    Some(FutexWait { ring, id })
}

/// Whether io_uring futex waits can work in this process at all: checked once.
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var(ENV).is_ok_and(|v| matches!(v.as_str(), "off" | "0" | "no")) {
            return false;
        }
        let supported = IoUring::new(2).ok().is_some_and(|ring| {
            let mut probe = Probe::new();
            ring.submitter().register_probe(&mut probe).is_ok()
                && probe.is_supported(opcode::FutexWait::CODE)
        });
        if !supported {
            tracing::debug!("io_uring futex waits unavailable: async waits use helper threads");
        }
        supported
    })
}

/// This thread's ring for the current runtime, made on first use; `None` if there is
/// no runtime or no ring can serve it.
fn local_ring() -> Option<Arc<Ring>> {
    if !available() {
        return None;
    }
    let runtime = tokio::runtime::Handle::try_current().ok()?.id();
    let pid = crate::owner::pid();
    LOCAL
        .try_with(|local| {
            let mut local = local.borrow_mut();
            if let Some(l) = &*local {
                if l.pid == pid && l.runtime == runtime {
                    return l.ring.clone();
                }
                if l.pid != pid {
                    // Inherited through fork: dropping it would deregister the
                    // parent's eventfd from the epoll instance the two share.
                    std::mem::forget(local.take());
                }
            }
            let ring = Ring::new().map(Arc::new);
            *local = Some(Local {
                pid,
                runtime,
                ring: ring.clone(),
            });
            ring
        })
        .ok()
        .flatten()
}

/// A thread's ring and the runtime and process it serves; `ring` is `None` when that
/// runtime cannot poll one (no IO driver).
struct Local {
    pid: u32,
    runtime: tokio::runtime::Id,
    ring: Option<Arc<Ring>>,
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

/// An io_uring whose completions make `ready` readable, and the waits in flight on it.
struct Ring {
    ready: AsyncFd<OwnedFd>,
    inner: Mutex<Inner>,
}

struct Inner {
    uring: IoUring,
    next_id: u64,
    waits: HashMap<u64, Pending>,
    /// The wait whose task tokio wakes when `ready` becomes readable: tokio keeps only
    /// the last waker given to `poll_read_ready`. When that wait ends, another waiting
    /// task is woken to take its place, so completions are always watched for.
    leader: Option<u64>,
}

/// A submitted wait, until its completion has been reaped.
struct Pending {
    /// The futex word's address, to pass on a wake an abandoned wait received.
    word: usize,
    state: State,
    /// Keeps the word mapped while the kernel may still use the request.
    _mapping: Arc<dyn Any + Send + Sync>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for (_, p) in self.waits.drain() {
            if !matches!(p.state, State::Done(_)) {
                // Its completion was never reaped (a cancel that could not be
                // submitted): the kernel may still hold the request, so its mapping
                // is leaked rather than unmapped under it.
                std::mem::forget(p);
            }
        }
    }
}

impl Pending {
    /// A wait that was woken but whose future is gone hands the wake to whoever else
    /// sleeps on the word, as a thread that gave up would leave it to the others.
    fn pass_wake_on(&self) {
        // SAFETY: `self` still holds the word's mapping, which keeps it mapped at this
        // address; it is an aligned `AtomicU32`.
        let word = unsafe { &*(self.word as *const AtomicU32) };
        futex::wake(word, 1, true);
    }
}

enum State {
    Waiting(Option<Waker>),
    /// Completed with this result (0: woken), not yet seen by its future.
    Done(i32),
    /// Its future was dropped; the entry goes when the completion comes.
    Abandoned,
}

impl Ring {
    fn new() -> Option<Ring> {
        let uring = IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .build(SQ_ENTRIES)
            .ok()?;
        let eventfd = eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC).ok()?;
        uring
            .submitter()
            .register_eventfd(eventfd.as_raw_fd())
            .ok()?;
        let ready = register_readable(eventfd)?;
        Some(Ring {
            ready,
            inner: Mutex::new(Inner {
                uring,
                next_id: 0,
                waits: HashMap::new(),
                leader: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change to `Inner` is complete before anything that could panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Submits a wait on `word` for as long as it holds `expected`; its id.
    fn submit(
        &self,
        word: &AtomicU32,
        expected: u32,
        mapping: Arc<dyn Any + Send + Sync>,
    ) -> Option<u64> {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        let sqe = opcode::FutexWait::new(
            word.as_ptr().cast_const(),
            u64::from(expected),
            futex::BITSET_MATCH_ANY,
            futex::URING_WAIT_FLAGS,
        )
        .build()
        .user_data(id);
        // SAFETY: the entry names the futex word, which the caller guarantees stays
        // mapped while `mapping` lives; `mapping` is stored with the wait below and
        // dropped only once the request's completion is reaped.
        if !unsafe { inner.push(&sqe) } {
            return None;
        }
        inner.waits.insert(
            id,
            Pending {
                word: word.as_ptr() as usize,
                state: State::Waiting(None),
                _mapping: mapping,
            },
        );
        if inner.uring.submit().is_err() {
            // Not taken by the kernel (it consumes the whole batch or reports an error
            // before consuming any); the entry stays queued and goes with the next
            // submission, where its completion is handled as an abandoned wait's.
            if let Some(p) = inner.waits.get_mut(&id) {
                p.state = State::Abandoned;
            }
            return None;
        }
        Some(id)
    }

    /// Ends wait `id` (its future was dropped or finished): cancels it if it is still
    /// in flight, and hands the watch over `ready` to another waiter if it had it.
    fn leave(&self, id: u64) {
        let mut wake = Vec::new();
        {
            let mut inner = self.lock();
            inner.reap(&mut wake);
            match inner.waits.get_mut(&id).map(|p| &mut p.state) {
                Some(State::Done(result)) => {
                    // Completed, but the future never saw it.
                    let woken = *result == 0;
                    if let Some(p) = inner.waits.remove(&id) {
                        if woken {
                            p.pass_wake_on();
                        }
                    }
                }
                Some(state @ State::Waiting(_)) => {
                    *state = State::Abandoned;
                    let cancel = opcode::AsyncCancel::new(id).build().user_data(CANCEL);
                    // SAFETY: a cancel request refers to no memory of ours.
                    if unsafe { inner.push(&cancel) } && inner.uring.submit().is_ok() {
                        // Futex cancellation completes inline: reap it now, so the
                        // mapping is released and a wake it absorbed is passed on.
                        inner.reap(&mut wake);
                    }
                }
                Some(State::Abandoned) | None => {}
            }
            if inner.leader == Some(id) {
                inner.leader = None;
                inner.wake_a_waiter(&mut wake);
            }
        }
        wake.into_iter().for_each(Waker::wake);
    }
}

impl Inner {
    /// Queues `sqe`, submitting what is queued first if the queue is full.
    ///
    /// # Safety
    ///
    /// Any memory the entry refers to must stay valid until its completion is reaped.
    unsafe fn push(&mut self, sqe: &io_uring::squeue::Entry) -> bool {
        // SAFETY: the caller keeps the entry's memory valid until its completion.
        if unsafe { self.uring.submission().push(sqe) }.is_ok() {
            return true;
        }
        // SAFETY: as above.
        self.uring.submit().is_ok() && unsafe { self.uring.submission().push(sqe) }.is_ok()
    }

    /// Takes every completion posted so far; collects the wakers of the waits it ends.
    fn reap(&mut self, wake: &mut Vec<Waker>) {
        loop {
            let done: Vec<(u64, i32)> = self
                .uring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (id, result) in done {
                if id == CANCEL {
                    continue;
                }
                let Some(p) = self.waits.get_mut(&id) else {
                    continue;
                };
                match std::mem::replace(&mut p.state, State::Done(result)) {
                    State::Waiting(waker) => wake.extend(waker),
                    State::Done(_) => {}
                    State::Abandoned => {
                        if let Some(p) = self.waits.remove(&id) {
                            if result == 0 {
                                p.pass_wake_on();
                            }
                        }
                    }
                }
            }
            // Completions that did not fit wait in the kernel's backlog until an
            // `io_uring_enter` flushes them (which `submit` does when it is flagged).
            if !self.uring.submission().cq_overflow() || self.uring.submit().is_err() {
                return;
            }
            if self.uring.completion().is_empty() {
                return;
            }
        }
    }

    /// Wakes one waiting task, so that it polls `ready` in place of a leader that left.
    fn wake_a_waiter(&mut self, wake: &mut Vec<Waker>) {
        let waker = self.waits.values_mut().find_map(|p| match &mut p.state {
            State::Waiting(w) => w.take(),
            _ => None,
        });
        wake.extend(waker);
    }
}

impl Future for FutexWait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let ring = &self.ring;
        let id = self.id;
        let mut wake = Vec::new();
        let outcome = {
            let mut inner = ring.lock();
            loop {
                inner.reap(&mut wake);
                let Some(p) = inner.waits.get_mut(&id) else {
                    break Poll::Ready(());
                };
                match &mut p.state {
                    State::Waiting(w) => {
                        if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                            *w = Some(cx.waker().clone());
                        }
                    }
                    State::Done(_) | State::Abandoned => {
                        inner.waits.remove(&id);
                        if inner.leader == Some(id) {
                            inner.leader = None;
                            inner.wake_a_waiter(&mut wake);
                        }
                        break Poll::Ready(());
                    }
                }
                // Under the lock, so that `leader` names the task tokio will wake.
                match ring.ready.poll_read_ready(cx) {
                    Poll::Pending => {
                        inner.leader = Some(id);
                        break Poll::Pending;
                    }
                    Poll::Ready(Ok(mut guard)) => {
                        guard.clear_ready();
                        drain(ring.ready.get_ref());
                    }
                    // The runtime's IO driver is gone: end the wait (the caller
                    // re-checks); dropping the future cancels the request.
                    Poll::Ready(Err(_)) => break Poll::Ready(()),
                }
            }
        };
        wake.into_iter().for_each(Waker::wake);
        outcome
    }
}

impl Drop for FutexWait {
    fn drop(&mut self) {
        self.ring.leave(self.id);
    }
}

/// Resets the eventfd's counter, so that it signals readiness again on the next
/// completion.
fn drain(eventfd: &OwnedFd) {
    // The fd is a non-blocking eventfd, so the read never blocks (EAGAIN when it is
    // already empty, which is fine).
    let _ = rustix::io::read(eventfd, &mut [0u8; 8]);
}

thread_local! {
    /// Set while this thread tries to register an eventfd, so that the panic tokio
    /// raises for a runtime without IO driver is not printed.
    static PROBING: Cell<bool> = const { Cell::new(false) };
}

/// Registers `eventfd` with the current runtime's IO driver, if it has one.
#[cfg(panic = "unwind")]
fn register_readable(eventfd: OwnedFd) -> Option<AsyncFd<OwnedFd>> {
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !PROBING.with(Cell::get) {
                previous(info);
            }
        }));
    });
    PROBING.with(|p| p.set(true));
    let registered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: the AsyncFd owns `eventfd`, which stays open and unchanged until
        // the AsyncFd is dropped.
        unsafe { AsyncFd::register_with_interest(eventfd, Interest::READABLE) }
    }));
    PROBING.with(|p| p.set(false));
    match registered {
        Ok(Ok(fd)) => Some(fd),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cannot poll an io_uring eventfd: async waits use helper threads");
            None
        }
        Err(_) => {
            tracing::debug!("the tokio runtime has no IO driver: async waits use helper threads");
            None
        }
    }
}

/// With `panic = "abort"`, tokio's panic for a runtime without IO cannot be caught:
/// never try.
#[cfg(not(panic = "unwind"))]
fn register_readable(_eventfd: OwnedFd) -> Option<AsyncFd<OwnedFd>> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A shared anonymous mapping holding futex words, as a fork would share it.
    struct Words(memmap2::MmapRaw);
    impl Words {
        fn new() -> Arc<Words> {
            Arc::new(Words(crate::os::mmap::map_anonymous(4096).unwrap()))
        }
        fn word(&self, i: usize) -> &AtomicU32 {
            assert!(i < 1024);
            // SAFETY: inside the 4096-byte mapping, which lives as long as `self`.
            unsafe { &*self.0.as_ptr().cast::<AtomicU32>().add(i) }
        }
    }

    fn start(words: &Arc<Words>, i: usize) -> FutexWait {
        let word = words.word(i);
        // SAFETY: the word lies in `words`' mapping, which the Arc keeps mapped.
        unsafe { wait(word, word.load(Ordering::SeqCst), words.clone()) }
            .expect("io_uring futex waits work on this kernel")
    }

    fn wake(word: &AtomicU32, n: u32) {
        word.fetch_add(1, Ordering::SeqCst);
        futex::wake(word, n, true);
    }

    #[test]
    fn a_plain_futex_wake_from_another_thread_ends_the_wait() {
        let words = Words::new();
        runtime().block_on(async {
            // Submitted before the waker thread starts, so its wake cannot come early.
            let waiting = start(&words, 0);
            let w = words.clone();
            let waker = std::thread::spawn(move || wake(w.word(0), 1));
            tokio::time::timeout(Duration::from_secs(60), waiting)
                .await
                .expect("woken");
            waker.join().unwrap();
        });
    }

    #[test]
    fn a_stale_value_completes_at_once() {
        let words = Words::new();
        runtime().block_on(async {
            let word = words.word(1);
            // SAFETY: as in `start`.
            let waiting = unsafe { wait(word, 7, words.clone()) }.unwrap();
            tokio::time::timeout(Duration::from_secs(60), waiting)
                .await
                .expect("a wait for a value the word does not hold returns");
        });
    }

    #[test]
    fn a_cancelled_wait_leaves_the_queue_and_eats_no_wake_up() {
        let words = Words::new();
        runtime().block_on(async {
            let word = words.word(2);
            let cancelled = start(&words, 2);
            let kept = start(&words, 2);
            // Poll both once so that each registers, then drop the first.
            let mut cancelled = Box::pin(cancelled);
            let mut kept = Box::pin(kept);
            std::future::poll_fn(|cx| {
                assert!(cancelled.as_mut().poll(cx).is_pending());
                assert!(kept.as_mut().poll(cx).is_pending());
                Poll::Ready(())
            })
            .await;
            drop(cancelled);
            // One wake for one waiter: it must reach the one still waiting.
            wake(word, 1);
            tokio::time::timeout(Duration::from_secs(60), kept)
                .await
                .expect("the remaining waiter got the only wake-up");
            assert!(
                ring_is_idle(),
                "the cancelled wait's entry and mapping were released"
            );
        });
    }

    #[test]
    fn a_wake_absorbed_by_an_abandoned_wait_is_passed_on() {
        let words = Words::new();
        runtime().block_on(async {
            let word = words.word(3);
            let abandoned = start(&words, 3);
            let other = start(&words, 3);
            let mut other = Box::pin(other);
            std::future::poll_fn(|cx| {
                assert!(other.as_mut().poll(cx).is_pending());
                Poll::Ready(())
            })
            .await;
            // The first queued waiter takes this wake; its future is then dropped
            // without being polled, so it never learns of it.
            wake(word, 1);
            drop(abandoned);
            tokio::time::timeout(Duration::from_secs(60), other)
                .await
                .expect("the wake-up reached the other waiter");
        });
    }

    #[test]
    fn many_waits_on_one_ring_all_complete_whichever_is_polled() {
        let words = Words::new();
        runtime().block_on(async {
            let tasks: Vec<_> = (0..100).map(|_| tokio::spawn(start(&words, 4))).collect();
            // Let every task register before waking them.
            tokio::task::yield_now().await;
            wake(words.word(4), u32::MAX);
            for t in tasks {
                tokio::time::timeout(Duration::from_secs(60), t)
                    .await
                    .expect("woken")
                    .unwrap();
            }
        });
    }

    #[test]
    fn a_runtime_without_an_io_driver_is_refused_without_a_panic() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let words = Words::new();
        rt.block_on(async {
            let word = words.word(5);
            // SAFETY: as in `start`.
            assert!(unsafe { wait(word, 0, words.clone()) }.is_none());
        });
    }

    #[test]
    fn a_forked_child_makes_its_own_ring() {
        let words = Words::new();
        let rt = runtime();
        let parent_ring = rt.block_on(async {
            let ring = local_ring().unwrap();
            // SAFETY: as in `start`; a stale value, so it completes at once.
            let waited = unsafe { wait(words.word(6), 1, words.clone()) }.unwrap();
            tokio::time::timeout(Duration::from_secs(60), waited)
                .await
                .unwrap();
            Arc::as_ptr(&ring) as usize
        });
        // SAFETY: the child only builds a runtime, waits once and leaves with _exit;
        // the parent only waits for it.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = std::panic::catch_unwind(|| {
                // The runtime's id can equal the parent's at fork: the pid tells.
                rt.block_on(async {
                    let ring = local_ring().unwrap();
                    // SAFETY: as in `start`.
                    let waited = unsafe { wait(words.word(6), 1, words.clone()) }.unwrap();
                    tokio::time::timeout(Duration::from_secs(60), waited)
                        .await
                        .is_ok()
                        && Arc::as_ptr(&ring) as usize != parent_ring
                })
            });
            // SAFETY: leaves the forked child at once, running no destructors.
            unsafe { libc::_exit(if ok.unwrap_or(false) { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above; `status` is a live int.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child could not wait through a ring of its own ({status:#x})"
        );
    }

    fn ring_is_idle() -> bool {
        local_ring().is_some_and(|r| r.lock().waits.is_empty())
    }
}
