//! The arrival pace: whether requests are still coming, so that an idle
//! worker does not sit out the queue delay for requests that are not
//! (`BatchDelay::Adaptive`).
//!
//! The collector feeds every request it drains (its submit time) into a
//! [`Pace`]: the latest arrival, and a moving average of the gap between
//! arrivals. The stream counts as *stopped* once nothing has arrived for
//! [`QUIET_GAPS`] times that average gap, and at least [`QUIET_FLOOR`].
//! Single-owner, no atomics: a few integer operations per drained request.
//!
//! Why this signal and not a rate. In the commonest serving pattern, clients
//! that each wait for their answer before sending the next (a closed loop),
//! arrivals come in bursts: every client of a finished batch resubmits at
//! once, then nothing until the next batch finishes. An average rate over
//! recent batches says "requests arrive at N per batch time" and would wait;
//! the gap since the last arrival, measured against the gaps inside the
//! burst, says the burst is over. An open-loop stream keeps arriving at its
//! own gap and is never taken for stopped (a pause of four gaps is rare in
//! any steady stream), so its batches fill as under the fixed rule.

/// The stream counts as stopped after this many average gaps of silence.
pub const QUIET_GAPS: u64 = 4;

/// ... and never before this much silence, in nanoseconds (20 µs): the
/// spread of one burst's submits across threads is of this order, and it
/// bounds what the rule adds to a closed loop's latency.
pub const QUIET_FLOOR: u64 = 20_000;

/// Weight of the newest gap in the moving average: 1/8.
const SHIFT: u32 = 3;

/// The collector's estimate of the arrival pace; see the module docs.
///
/// ```
/// use convoy::internals::pace::Pace;
/// let mut pace = Pace::default();
/// assert!(!pace.stopped(1_000_000), "no gap seen yet: as the fixed rule");
/// for t in [0, 1_000, 2_000, 3_000] {
///     pace.observe(t, 2_000_000); // a burst, 1 µs apart
/// }
/// assert!(!pace.stopped(10_000), "7 µs of silence is within the floor");
/// assert!(pace.stopped(3_000 + 20_000), "20 µs of silence after 1 µs gaps");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Pace {
    /// The latest arrival seen, ns since the runtime's epoch.
    last: Option<u64>,
    /// The moving average of gaps between arrivals, ns; `None` until two
    /// arrivals have been seen.
    gap: Option<u64>,
}

impl Pace {
    /// Takes in one arrival at `at` (ns since the epoch). A gap is capped at
    /// `cap` (the queue delay): a long idle spell says nothing about the
    /// pace of the next burst, and must not make it look slow for long.
    /// Arrivals drained out of order (from different shards) count as
    /// simultaneous.
    #[inline]
    pub fn observe(&mut self, at: u64, cap: u64) {
        let Some(last) = self.last else {
            self.last = Some(at);
            return;
        };
        let gap = at.saturating_sub(last).min(cap);
        self.gap = Some(match self.gap {
            None => gap,
            Some(avg) => avg - (avg >> SHIFT) + (gap >> SHIFT),
        });
        self.last = Some(last.max(at));
    }

    /// When the stream will count as stopped if nothing more arrives;
    /// `None` before any gap has been seen (no evidence either way).
    pub fn quiet_at(&self) -> Option<u64> {
        let (last, gap) = (self.last?, self.gap?);
        Some(last.saturating_add(gap.saturating_mul(QUIET_GAPS).max(QUIET_FLOOR)))
    }

    /// Whether nothing has arrived for long enough, at `now`, to say the
    /// stream has stopped.
    pub fn stopped(&self, now: u64) -> bool {
        self.quiet_at().is_some_and(|q| now >= q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: u64 = 2_000_000;

    /// A steady stream is never taken for stopped between two of its
    /// arrivals, whatever its pace: its batches fill as under the fixed
    /// rule.
    #[test]
    fn a_steady_stream_never_counts_as_stopped_between_arrivals() {
        for gap in [1_000u64, 30_000, 113_000, 500_000, 1_500_000] {
            let mut pace = Pace::default();
            let mut t = 0;
            for _ in 0..200 {
                pace.observe(t, DELAY);
                // Just before the next arrival is due, and a little late.
                assert!(!pace.stopped(t + gap), "gap {gap}");
                assert!(!pace.stopped(t + 2 * gap), "gap {gap}");
                t += gap;
            }
        }
    }

    /// A burst (every client of a closed loop resubmitting) followed by
    /// silence counts as stopped soon after the burst, long before a 2 ms
    /// delay would end, even though the gap before the burst was long.
    #[test]
    fn the_end_of_a_burst_is_seen_within_a_few_of_its_gaps() {
        let mut pace = Pace::default();
        let mut t = 0;
        for _round in 0..20 {
            for _client in 0..32 {
                pace.observe(t, DELAY);
                t += 2_000; // 2 µs apart inside the burst
            }
            let last = t - 2_000;
            let stops = pace.quiet_at().expect("gaps seen");
            assert!(
                stops - last <= 100_000,
                "stops {} µs after the burst",
                (stops - last) / 1000
            );
            assert!(!pace.stopped(last + 1_000));
            t = last + 1_000_000; // the batch runs 1 ms, then the next burst
        }
    }

    /// The floor: bursts whose submits are nanoseconds apart still get
    /// `QUIET_FLOOR` before they count as over.
    #[test]
    fn silence_shorter_than_the_floor_never_stops_the_stream() {
        let mut pace = Pace::default();
        for t in 0..100 {
            pace.observe(t * 10, DELAY);
        }
        assert!(!pace.stopped(990 + QUIET_FLOOR - 1));
        assert!(pace.stopped(990 + QUIET_FLOOR));
    }

    /// Out-of-order arrivals (drained from different shards) neither move
    /// the latest arrival back nor make a gap negative.
    #[test]
    fn out_of_order_arrivals_count_as_simultaneous() {
        let mut pace = Pace::default();
        pace.observe(100_000, DELAY);
        pace.observe(50_000, DELAY);
        assert_eq!(pace.last, Some(100_000));
        assert_eq!(pace.gap, Some(0));
        assert_eq!(pace.quiet_at(), Some(100_000 + QUIET_FLOOR));
    }

    /// A long idle spell is capped at the queue delay in the average.
    #[test]
    fn a_long_idle_spell_counts_as_one_queue_delay() {
        let mut pace = Pace::default();
        pace.observe(0, DELAY);
        pace.observe(3_600_000_000_000, DELAY);
        assert_eq!(pace.gap, Some(DELAY));
    }
}
