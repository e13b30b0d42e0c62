//! Futex wait and wake on a 32-bit word, through rustix's safe calls: the one place the
//! library sleeps on, or wakes, a futex word from a thread. The async waits through
//! io_uring (`backend::futex_async`) build their requests from [`URING_WAIT_FLAGS`] and
//! [`BITSET_MATCH_ANY`] and wake with [`wake`].

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::io::Errno;
use rustix::thread::futex::{self, Flags, Timespec, WaitFlags};

/// `futex2(2)` flags of an io_uring wait: a 32-bit word, shared between processes (no
/// `FUTEX2_PRIVATE`), so that the [`wake`]s of other processes reach it.
pub(crate) const URING_WAIT_FLAGS: u32 = WaitFlags::SIZE_U32.bits();

/// The bitset of a wait that every waker's bitset matches (a plain `FUTEX_WAKE` uses all
/// bits).
pub(crate) const BITSET_MATCH_ANY: u64 = 0xffff_ffff;

/// How a futex wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Woken, the word no longer held the expected value, or a signal arrived: look again.
    Maybe,
    /// The timeout passed.
    TimedOut,
}

/// The private form where only this process's threads use the word (cheaper in the
/// kernel); the shared form where the word lives in memory other processes map.
fn flags(shared: bool) -> Flags {
    if shared {
        Flags::empty()
    } else {
        Flags::PRIVATE
    }
}

/// A relative timeout as a normalised `timespec` (`0 <= tv_nsec < 1e9`, seconds clamped
/// to what it holds), so no out-of-range value can reach the kernel.
fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: d.subsec_nanos().into(),
    }
}

/// `FUTEX_WAIT`: sleeps while `*word == expected`, at most `timeout` (relative, measured
/// by the kernel on `CLOCK_MONOTONIC`). `shared`: the word lives in memory that other
/// processes map.
pub(crate) fn wait(
    word: &AtomicU32,
    expected: u32,
    timeout: Option<Duration>,
    shared: bool,
) -> Wake {
    let ts = timeout.map(timespec);
    match futex::wait(word, flags(shared), expected, ts.as_ref()) {
        Err(Errno::TIMEDOUT) => Wake::TimedOut,
        // Woken, or EAGAIN (the word had changed), or EINTR: the caller looks again.
        _ => Wake::Maybe,
    }
}

/// `FUTEX_WAKE`: wakes at most `n` waiters of `word`. `shared` as for [`wait`]: a waker
/// must use the form its waiters use.
pub(crate) fn wake(word: &AtomicU32, n: u32, shared: bool) {
    // The kernel reads the count as an int; beyond it, all means all. A failure (an
    // address the kernel rejects) wakes nobody, and waiters bound their sleep anyway.
    let _ = futex::wake(word, flags(shared), n.min(i32::MAX as u32));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespec_is_normalised() {
        let t = timespec(Duration::new(3, 999_999_999));
        assert_eq!((t.tv_sec, t.tv_nsec), (3, 999_999_999));
        let t = timespec(Duration::MAX);
        assert!(t.tv_nsec < 1_000_000_000 && t.tv_sec > 0);
        let t = timespec(Duration::from_nanos(1_500_000_000));
        assert_eq!((t.tv_sec, t.tv_nsec), (1, 500_000_000));
    }

    #[test]
    fn a_wait_times_out_and_sees_changes() {
        let w = AtomicU32::new(1);
        for shared in [false, true] {
            assert_eq!(
                wait(&w, 1, Some(Duration::from_millis(1)), shared),
                Wake::TimedOut
            );
            assert_eq!(wait(&w, 2, None, shared), Wake::Maybe);
            wake(&w, 1, shared);
        }
    }

    #[test]
    fn a_wake_reaches_a_sleeping_thread() {
        use std::sync::atomic::Ordering;
        use std::sync::Arc;
        for shared in [false, true] {
            let w = Arc::new(AtomicU32::new(0));
            let w2 = w.clone();
            // Either the store comes first (the wait returns at once) or the wake
            // reaches the sleeper; only a lost wake lets the wait time out.
            let sleeper =
                std::thread::spawn(move || wait(&w2, 0, Some(Duration::from_secs(60)), shared));
            w.store(1, Ordering::SeqCst);
            wake(&w, u32::MAX, shared);
            assert_eq!(sleeper.join().unwrap(), Wake::Maybe);
        }
    }
}
