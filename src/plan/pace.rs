//! Whether more requests are coming, so that an idle worker does not sit
//! out the queue delay for requests that are not (`BatchDelay::Adaptive`).
//!
//! The commonest serving pattern is a closed loop: clients that each wait
//! for their answer before sending the next. Its arrivals come in bursts
//! (every client of a finished batch resubmits), and the number of its
//! requests in the runtime (waiting, or launched and unfinished) never
//! exceeds the number of clients. Two tests say that nothing more is
//! coming:
//!
//! * **back at the level**: the requests in the runtime are back at the
//!   most they reached over the last full [`PEAK_WINDOW`] (or within
//!   1/[`LEVEL_SLACK`] below it), and the current window has not risen
//!   above it. A closed loop meets this the moment its last client is
//!   back, with no silence to wait out. An open stream meets it only when
//!   its load returns to a high it held for a whole window, and the batch
//!   it then launches is as large as any of that window's; a rising
//!   stream (each window above the last) never does.
//! * **at the peak, and quiet**: the requests in the runtime are as many
//!   as they have been at any time over the last one to two windows, and
//!   nothing has arrived for [`QUIET_GAPS`] times the moving average gap
//!   between arrivals (at least [`QUIET_FLOOR`]): every client is in and
//!   the burst is over. This serves the first window, before a level is
//!   known.
//!
//! An open-loop stream rarely meets either: its count in the runtime sits
//! below its recent peak most of the time, and a stream faster than the
//! batches fill is never quiet, so under it batches form as under the
//! fixed rule (on the bundled trace's replay, they are as large).
//!
//! Both tests rely on the count being exact: a worker gives a batch's
//! capacity back before its callers hear, and the collector takes in
//! releases again after each drain of the intake, so a caller's next
//! request is not counted beside its last one (`runtime::worker`'s
//! `settle`; `Stats::most_in_runtime` shows the count's high). The one
//! exception is an instant: a release can wait in the release ring behind
//! another worker's that is still being written.
//!
//! Single-owner (the collector), no atomics: a few integer operations per
//! drained request and per pass.

/// The stream counts as quiet after this many average gaps of silence.
pub const QUIET_GAPS: u64 = 2;

/// ... and never before this much silence, in nanoseconds (20 µs): the
/// spread of one burst's submits across threads is of this order, and it
/// bounds what the rule adds to a closed loop's latency.
pub const QUIET_FLOOR: u64 = 20_000;

/// The peak is the most requests in the runtime over the current window
/// and the one before it, each this long (20 ms, in nanoseconds): long
/// against a closed loop's cycle, so its peak is its client count; short
/// enough that a loop which loses clients is recognised again within 40 ms
/// (the collector wakes when a window ends to look again).
pub const PEAK_WINDOW: u64 = 20_000_000;

/// "Back at the level": within 1/16 of it below (two requests in 32), so
/// that one or two clients the machine has descheduled do not hold back
/// the batch of all the others; they go in the next. Larger shares let
/// open streams' lulls pass for a closed loop: on the bundled trace's
/// replay, 1/8 kept the batches as large as the fixed rule's, 1/4 cut
/// them by a sixth and 1/2 by half (BENCHMARKS.md, "The queue delay
/// rules").
pub const LEVEL_SLACK: usize = 16;

/// Weight of the newest gap in the moving average: 1/8.
const SHIFT: u32 = 3;

/// The collector's estimate of whether more requests are coming; see the
/// module docs.
///
/// ```
/// use convoy::internals::pace::Pace;
/// let mut pace = Pace::default();
/// for t in [0, 1_000, 2_000, 3_000] {
///     pace.observe(t, 2_000_000); // four clients' burst, 1 µs apart
/// }
/// pace.note_load(4, 3_000); // all four in the runtime
/// assert!(!pace.nothing_more(4, 10_000), "7 µs of silence is within the floor");
/// assert!(pace.nothing_more(4, 23_000), "every client in, and quiet");
/// assert!(!pace.nothing_more(2, 23_000), "half the clients still out");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Pace {
    /// The latest arrival seen, ns since the runtime's epoch.
    last: Option<u64>,
    /// The moving average of gaps between arrivals, ns; `None` until two
    /// arrivals have been seen.
    gap: Option<u64>,
    /// Most requests in the runtime in the current window, in the one
    /// before it, and when the current one began.
    peak_now: usize,
    peak_before: usize,
    window_start: u64,
}

impl Pace {
    /// Takes in one arrival at `at` (ns since the epoch). A gap is capped at
    /// `cap` (the queue delay), and at the quiet threshold: the pause
    /// between two bursts says nothing about the gaps inside the next one,
    /// which are what tell that it is over. Arrivals drained out of order
    /// (from different shards) count as simultaneous.
    #[inline]
    pub fn observe(&mut self, at: u64, cap: u64) {
        let Some(last) = self.last else {
            self.last = Some(at);
            return;
        };
        let gap = at.saturating_sub(last).min(cap);
        self.gap = Some(match self.gap {
            None => gap,
            Some(avg) => {
                let gap = gap.min(threshold(avg));
                avg - (avg >> SHIFT) + (gap >> SHIFT)
            }
        });
        self.last = Some(last.max(at));
    }

    /// Takes in the requests in the runtime (waiting, or launched and
    /// unfinished) at `now`, once per collector pass.
    #[inline]
    pub fn note_load(&mut self, in_runtime: usize, now: u64) {
        if now.saturating_sub(self.window_start) >= PEAK_WINDOW {
            self.peak_before = self.peak_now;
            self.peak_now = 0;
            self.window_start = now;
        }
        self.peak_now = self.peak_now.max(in_runtime);
    }

    /// When the current window ends and the peak may fall: the collector,
    /// idle beside a quiet queue below the peak, looks again then.
    pub fn window_ends_at(&self) -> u64 {
        self.window_start.saturating_add(PEAK_WINDOW)
    }

    /// The most requests in the runtime over the last one to two windows.
    pub fn peak(&self) -> usize {
        self.peak_now.max(self.peak_before)
    }

    /// When the stream will count as quiet if nothing more arrives; `None`
    /// before any gap has been seen (no evidence either way).
    pub fn quiet_at(&self) -> Option<u64> {
        let (last, gap) = (self.last?, self.gap?);
        Some(last.saturating_add(threshold(gap)))
    }

    /// Whether the requests in the runtime are back at the level the last
    /// full window peaked at, the current window not having risen above it
    /// (see the module docs). `false` in the first window: no level yet.
    pub fn at_level(&self, in_runtime: usize) -> bool {
        let level = self.peak_before;
        let slack = level / LEVEL_SLACK;
        level > 0 && self.peak_now <= level && in_runtime.saturating_add(slack) >= level
    }

    /// Whether nothing more is coming at `now` with `in_runtime` requests
    /// in the runtime: back at the level, or at the peak and quiet.
    pub fn nothing_more(&self, in_runtime: usize, now: u64) -> bool {
        in_runtime > 0
            && (self.at_level(in_runtime)
                || (in_runtime >= self.peak() && self.quiet_at().is_some_and(|q| now >= q)))
    }
}

/// The silence after which a stream of average gap `gap` counts as quiet.
fn threshold(gap: u64) -> u64 {
    gap.saturating_mul(QUIET_GAPS).max(QUIET_FLOOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: u64 = 2_000_000;

    /// A steady stream is never quiet between two of its arrivals, whatever
    /// its pace, so its batches fill as under the fixed rule even when its
    /// load is at the peak.
    #[test]
    fn a_steady_stream_is_never_quiet_between_arrivals() {
        for gap in [1_000u64, 30_000, 113_000, 500_000, 1_500_000] {
            let mut pace = Pace::default();
            let mut t = 0;
            for n in 1..200 {
                pace.observe(t, DELAY);
                pace.note_load(n, t);
                assert!(!pace.nothing_more(n, t + gap), "gap {gap}");
                t += gap;
            }
        }
    }

    /// A closed loop: 32 clients' burst (2 µs apart), then the batch runs
    /// 1 ms. In the first window, before any level is known, the batch
    /// launches once the clients are in and the burst is over, well within
    /// a 2 ms delay; from the next window on, the moment the last client
    /// is back. While most are still out, the batch waits.
    #[test]
    fn a_closed_loop_is_seen_whole_soon_after_its_burst() {
        let mut pace = Pace::default();
        let mut t = 0;
        for round in 0..60 {
            for client in 1..=32 {
                pace.observe(t, DELAY);
                pace.note_load(client, t);
                t += 2_000;
            }
            let last = t - 2_000;
            assert!(!pace.nothing_more(15, last + 100_000), "most still out");
            if pace.peak_before == 0 {
                assert!(!pace.nothing_more(32, last + 1_000), "the burst may go on");
                let stops = pace.quiet_at().expect("gaps seen");
                assert!(stops - last <= QUIET_FLOOR, "{} µs", (stops - last) / 1000);
                assert!(pace.nothing_more(32, stops));
            } else {
                assert!(
                    pace.nothing_more(32, last),
                    "round {round}: back at the level"
                );
                assert!(!pace.nothing_more(29, last + 1_000), "three still out");
            }
            t = last + 1_000_000;
        }
        assert_eq!(pace.peak_before, 32, "the level was learnt");
    }

    /// A rising stream (each window above the last) is never back at a
    /// level, and one that falls back to a level it held for a whole
    /// window is, within the slack below it.
    #[test]
    fn the_level_is_a_whole_window_high_not_a_new_one() {
        let mut pace = Pace::default();
        pace.note_load(40, 0);
        pace.note_load(10, PEAK_WINDOW); // the window with 40 is the level
        assert_eq!(pace.peak_before, 40);
        assert!(pace.at_level(40));
        assert!(pace.at_level(40 - 40 / LEVEL_SLACK));
        assert!(!pace.at_level(40 - 40 / LEVEL_SLACK - 1));
        pace.note_load(41, PEAK_WINDOW + 1); // risen above it
        assert!(!pace.at_level(41));
        assert!(!pace.at_level(40));
        let mut rising = Pace::default();
        for w in 1..10u64 {
            for i in 0..10u64 {
                let n = (w * 10 + i) as usize;
                rising.note_load(n, w * PEAK_WINDOW + i);
                assert!(!rising.at_level(n), "window {w}, {n} in the runtime");
            }
        }
    }

    /// An open stream whose load sits below its recent peak is not taken
    /// for a finished closed loop in a lull: the delay keeps buying company.
    #[test]
    fn a_lull_below_the_peak_is_not_the_end() {
        let mut pace = Pace::default();
        pace.note_load(40, 0); // a burst earlier in the window
        for (i, t) in (1_000..=9_000).step_by(1_000).enumerate() {
            pace.observe(t, DELAY);
            pace.note_load(i + 1, t);
        }
        assert!(!pace.nothing_more(9, 1_000_000), "9 in, the peak was 40");
        // The burst leaves the peak after two windows.
        pace.note_load(9, PEAK_WINDOW + 1);
        assert_eq!(pace.peak(), 40);
        pace.note_load(9, 2 * PEAK_WINDOW + 2);
        assert_eq!(pace.peak(), 9);
        assert!(pace.nothing_more(9, 2 * PEAK_WINDOW + 2));
    }

    /// The floor: bursts whose submits are nanoseconds apart still get
    /// `QUIET_FLOOR` before they count as over.
    #[test]
    fn silence_shorter_than_the_floor_is_never_quiet() {
        let mut pace = Pace::default();
        for t in 0..100 {
            pace.observe(t * 10, DELAY);
        }
        pace.note_load(100, 990);
        assert!(!pace.nothing_more(100, 990 + QUIET_FLOOR - 1));
        assert!(pace.nothing_more(100, 990 + QUIET_FLOOR));
    }

    /// Out-of-order arrivals (drained from different shards) neither move
    /// the latest arrival back nor make a gap negative; the pause between
    /// bursts counts as one quiet threshold in the average.
    #[test]
    fn out_of_order_arrivals_and_long_pauses_keep_the_average_sane() {
        let mut pace = Pace::default();
        pace.observe(100_000, DELAY);
        pace.observe(50_000, DELAY);
        assert_eq!(pace.last, Some(100_000));
        assert_eq!(pace.gap, Some(0));
        pace.observe(3_600_000_000_000, DELAY);
        assert_eq!(pace.gap, Some(QUIET_FLOOR >> SHIFT));
    }

    /// Nothing in the runtime is never "nothing more": there is no batch.
    #[test]
    fn an_empty_runtime_launches_nothing() {
        let mut pace = Pace::default();
        pace.observe(0, DELAY);
        pace.observe(1_000, DELAY);
        assert!(!pace.nothing_more(0, 1_000_000_000));
    }
}
