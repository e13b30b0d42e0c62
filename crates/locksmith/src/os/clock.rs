//! The clocks: wall time for the deadlines stores keep (leases, ages), and the host's
//! monotonic clock for the time stamps placed primitives keep in shared memory.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 for a clock set before it): the time every
/// store and the primitive layer stamp records with, comparable across processes and
/// machines as far as their clocks agree.
pub(crate) fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `CLOCK_MONOTONIC` in milliseconds, modulo 2^32: the same clock in every process of
/// the host, for time stamps kept in shared memory.
#[cfg(target_os = "linux")]
#[cfg_attr(not(feature = "shm"), allow(dead_code))]
pub(crate) fn monotonic_ms() -> u32 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (ts.tv_sec as u64)
        .wrapping_mul(1000)
        .wrapping_add(ts.tv_nsec as u64 / 1_000_000) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_time_is_milliseconds_since_the_epoch() {
        // After 2020-01-01, before 2200-01-01: milliseconds, not seconds or micros.
        let now = now_millis();
        assert!(
            (1_577_836_800_000..7_258_118_400_000).contains(&now),
            "{now}"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_monotonic_clock_counts_milliseconds_as_std_does() {
        let (before, t) = (monotonic_ms(), std::time::Instant::now());
        while t.elapsed() < std::time::Duration::from_millis(5) {
            std::thread::yield_now();
        }
        // Both read CLOCK_MONOTONIC: 5 ms by std's measure are at least 4 whole ones here.
        assert!(monotonic_ms().wrapping_sub(before) >= 4);
    }
}
