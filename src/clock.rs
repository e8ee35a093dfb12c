//! Saturating time arithmetic: a configured "forever" (`Duration::MAX`)
//! must stay the largest value, never wrap to an arbitrary one or panic.

use std::time::{Duration, Instant};

/// `d` in nanoseconds, saturating at `u64::MAX` (584 years): an `as u64`
/// cast of `as_nanos()` would wrap instead.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `d` after `now`, or a year after it where `Instant` cannot hold the sum:
/// past any run, so it reads as "never".
pub(crate) fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or(now + Duration::from_secs(86_400 * 365))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forever_saturates() {
        assert_eq!(nanos(Duration::MAX), u64::MAX);
        assert_eq!(nanos(Duration::from_micros(3)), 3_000);
        let now = Instant::now();
        assert!(after(now, Duration::MAX) > now + Duration::from_secs(86_000 * 365));
        assert_eq!(
            after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }
}
