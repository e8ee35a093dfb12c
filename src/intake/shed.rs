//! Shedding: which levels submit refuses while the queue runs late
//! (`ordering.shed`: off by default in the library, where `submit` refuses
//! only for a full queue unless asked; on in the `convoy` commands run
//! without `--config`).
//!
//! # Why
//!
//! Aging promises that a request which has waited `max_wait` outranks
//! every later arrival (`order.rs`, rule 1). Under sustained overload that
//! promise is what hurts the urgent levels: once the oldest waiting
//! requests are past `max_wait`, every fresh Critical request queues behind
//! all of them, and the order is FIFO in all but name: the default replay
//! at 1.2× capacity, with a queue bound deeper than `max_wait`, keeps only
//! part of Critical within its 50 ms objective (BENCHMARKS.md). A deeper
//! queue does not help; it only makes the wait longer.
//! So when the queue runs late, the collector stops taking more of the
//! levels that would wait longest, least urgent first, and the requests
//! already accepted keep the starvation bound.
//!
//! # The rule
//!
//! The queue's *lateness* is the larger of
//!
//! * the age of the oldest waiting request less the batching delay
//!   (`max_queue_delay`, which a request may wait by design): how late the
//!   queue already is; and
//! * how long the fleet would take to run every waiting request: their
//!   tokens × the time per token measured over recent batches (at unit
//!   speed) ÷ the speed of the workers up. That is how late it is going to
//!   be. Under a heavy overload the backlog grows faster than its oldest
//!   request ages, and by the time the age alone says "late", more has been
//!   accepted than can start within `max_wait` (at 3× capacity, the age
//!   alone let Critical's p99 reach 760 ms).
//!
//! Level `l` (Critical 0 … Background 4) is shed while lateness ≥
//! `shed_at[l] × max_wait` (`ordering.shed_at`). By default that is
//! `(7 − l) / 10`: Background from 0.3 × `max_wait`, Low from 0.4, Normal
//! from 0.5, High from 0.6. Critical is never shed; its bound is its
//! queue's room. A share may be infinite (`inf`: that level is never
//! shed), and a less urgent level's share may not exceed a more urgent
//! one's: levels are shed least urgent first. A share above 1 sheds its
//! level only once the queue is already past `max_wait`, so what that
//! level had accepted may then wait longer than the starvation bound.
//!
//! The last request admitted at a level waits behind the backlog and
//! behind more urgent work admitted after it, until aging lifts it (from
//! half of `max_wait`, `order.rs`); thresholds of 0.5–0.8
//! left too little of `max_wait` for that, and at 3× load a backlog sat at
//! 0.8 × `max_wait` with waits past `max_wait` (Critical 78% within its
//! objective); 0.3–0.6 gave 100% (BENCHMARKS.md, "Shedding"). The
//! thresholds set how deep a standing backlog may grow, not how much is
//! refused: under a sustained overload the excess is refused either way.
//!
//! The collector works the mask out after each pass's launches, so a level
//! opens again on the first pass that finds the queue less late. A
//! refused submit gets
//! [`SubmitErrorKind::Overloaded`](crate::SubmitErrorKind::Overloaded)
//! with its request handed back, and counts in
//! [`PriorityStats::rejected_shed`](crate::PriorityStats::rejected_shed).
//!
//! A worker that overlaps batches (a GPU worker with `CudaConfig::depth`
//! 2) times each from its launch or the previous batch's release,
//! whichever is later (`runtime/worker.rs`, `service_time`), so a batch's
//! wait behind the other on the device is not counted twice and the
//! estimate holds there as on the plain path. That has not been measured
//! on a GPU.
//!
//! A request with a dedup key whose group waits is let in at a shed level:
//! it rides that group's execution and adds no work (`twins.rs`).
//!
//! A request that waits for room rather than for a worker's time (a large
//! cost, a worker down) ages too, and sheds the lower levels while it
//! waits. That is the rule working, not a fault: whatever the reason, a
//! queue whose oldest request is late is one where a new Background
//! request would wait long behind it.

use std::time::Duration;

use crate::priority::Priority;
use crate::sync::{AtomicUsize, Ordering};

/// The shed levels, written by the collector once per pass and read by
/// every submit.
///
/// Relaxed both ways: the mask is advice that carries no data. A submit
/// that reads a stale mask admits or refuses one request that the fresh
/// mask would not have; either way the request ends in exactly one outcome
/// (accepted and served, or handed back). The loom model
/// `a_shed_level_refuses_and_every_submit_ends_once` runs it with the
/// intake.
pub struct Shedding {
    /// Bit `l` set: level `l` is shed.
    closed: AtomicUsize,
}

impl Default for Shedding {
    /// Nothing shed.
    fn default() -> Self {
        Self::new()
    }
}

impl Shedding {
    /// Nothing shed.
    pub fn new() -> Self {
        Self {
            closed: AtomicUsize::new(0),
        }
    }

    /// Submit: whether `level` is shed now.
    pub fn refuses(&self, level: Priority) -> bool {
        // Relaxed: see the type's docs.
        self.closed.load(Ordering::Relaxed) & (1 << level.index()) != 0
    }

    /// The shed levels, a bit per level index (for metrics).
    pub fn mask(&self) -> usize {
        self.closed.load(Ordering::Relaxed)
    }

    /// Collector, once per pass: publishes the shed levels (see
    /// [`levels_to_shed`]). It stores only a change, so a pass that finds
    /// the same mask does not write the line every submit reads. The
    /// collector is the only writer, so the load cannot miss a store.
    pub fn set(&self, mask: usize) {
        // Relaxed: see the type's docs.
        if self.closed.load(Ordering::Relaxed) != mask {
            self.closed.store(mask, Ordering::Relaxed);
        }
    }
}

/// The default of `Config::shed_at` (`ordering.shed_at`): per level index,
/// the lateness, as a share of `max_wait`, from which that level is shed.
/// Critical's is infinite: it is never shed.
///
/// ```
/// use convoy::{Config, Priority, DEFAULT_SHED_AT};
/// let mut shed_at = DEFAULT_SHED_AT;
/// shed_at[Priority::High.index()] = f64::INFINITY; // never shed High
/// let c = Config { shed: true, shed_at, ..Config::default() };
/// assert!(c.validate().is_ok());
/// shed_at[Priority::Background.index()] = 0.9; // later than Low's 0.4
/// let e = Config { shed_at, ..c }.validate().unwrap_err();
/// assert!(e.to_string().starts_with("ordering.shed_at.background"));
/// ```
pub const DEFAULT_SHED_AT: [f64; Priority::COUNT] = [f64::INFINITY, 0.6, 0.5, 0.4, 0.3];

/// The levels to shed when the queue is `late` (see the module docs), a
/// bit per level index: level `l` while `late ≥ shed_at[l] × max_wait`.
/// An infinite share never sheds its level.
pub fn levels_to_shed(
    late: Duration,
    max_wait: Duration,
    shed_at: &[f64; Priority::COUNT],
) -> usize {
    // In nanoseconds: a share × an integer count of them rounds to the
    // nearest, so a threshold set at an exact time (1.5 × 200 ms) is that
    // time; in seconds, 1.5 × 0.2 is 0.30000000000000004.
    let late = late.as_nanos() as f64;
    let max_wait = max_wait.as_nanos() as f64;
    Priority::ALL
        .iter()
        .skip(1)
        .filter(|p| late >= shed_at[p.index()] * max_wait)
        .fold(0, |mask, p| mask | 1 << p.index())
}

/// The time per token at unit speed, from measured batches: what the
/// collector needs to say how long its waiting set would take to run.
/// Single-owner (the collector).
#[derive(Debug, Clone, Copy, Default)]
pub struct DrainRate {
    /// An exponentially weighted mean over batches; `None` before the
    /// first batch finishes.
    ns_per_token: Option<f64>,
}

impl DrainRate {
    /// A batch of `tokens` took `took` on a worker of `speed`.
    pub fn observe(&mut self, took: Duration, tokens: u64, speed: f64) {
        let sample = took.as_nanos() as f64 * speed / tokens.max(1) as f64;
        if !sample.is_finite() {
            return;
        }
        self.ns_per_token = Some(match self.ns_per_token {
            // The placer's weight for batch times (`placement.rs`).
            Some(mean) => 0.8 * mean + 0.2 * sample,
            None => sample,
        });
    }

    /// How long workers of total speed `speed_up` would take to run
    /// `tokens`; `None` before any batch was measured or with no worker
    /// up (the age of the oldest request then speaks alone).
    pub fn drain(&self, tokens: u128, speed_up: f64) -> Option<Duration> {
        let per_token = self.ns_per_token?;
        if speed_up <= 0.0 || !speed_up.is_finite() {
            return None;
        }
        let ns = tokens as f64 * per_token / speed_up;
        // `as` saturates: an absurd backlog reads as u64::MAX ns.
        Some(Duration::from_nanos(ns as u64))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn levels_are_shed_least_urgent_first_and_critical_never() {
        let mw = Duration::from_millis(1000);
        let at = |ms| levels_to_shed(Duration::from_millis(ms), mw, &DEFAULT_SHED_AT);
        assert_eq!(at(0), 0);
        assert_eq!(at(299), 0);
        assert_eq!(at(300), 1 << Priority::Background.index());
        assert_eq!(at(400), at(300) | 1 << Priority::Low.index());
        assert_eq!(at(500), at(400) | 1 << Priority::Normal.index());
        assert_eq!(at(599), at(500));
        assert_eq!(at(600), at(500) | 1 << Priority::High.index());
        assert_eq!(at(u64::MAX / 2), at(600), "Critical is never shed");
        let s = Shedding::new();
        s.set(at(400));
        assert!(s.refuses(Priority::Background) && s.refuses(Priority::Low));
        assert!(!s.refuses(Priority::Normal) && !s.refuses(Priority::Critical));
        assert_eq!(s.mask(), at(400));
        s.set(0);
        assert!(!s.refuses(Priority::Background), "a level opens again");
    }

    /// Thresholds of one's own: shares of `max_wait`, one may be never
    /// (infinite), and Critical is never shed whatever its entry says.
    #[test]
    fn thresholds_of_ones_own_shed_at_their_shares() {
        let mw = Duration::from_millis(200);
        let shed_at = [0.0, f64::INFINITY, 1.5, 0.25, 0.25];
        let at = |ms| levels_to_shed(Duration::from_millis(ms), mw, &shed_at);
        let (low, bg) = (Priority::Low.index(), Priority::Background.index());
        assert_eq!(at(49), 0);
        assert_eq!(at(50), 1 << low | 1 << bg, "both at 0.25 × 200 ms");
        assert_eq!(at(299), at(50));
        assert_eq!(
            at(300),
            at(50) | 1 << Priority::Normal.index(),
            "past max_wait"
        );
        assert_eq!(at(u64::MAX / 2), at(300), "High never, Critical never");
    }

    #[test]
    fn the_drain_follows_measured_batches_and_the_speed_up() {
        let mut r = DrainRate::default();
        assert_eq!(r.drain(1000, 2.0), None, "nothing measured yet");
        // 1,000 tokens in 10 ms on a worker of speed 1: 10 µs a token.
        r.observe(Duration::from_millis(10), 1000, 1.0);
        assert_eq!(r.drain(1000, 1.0), Some(Duration::from_millis(10)));
        assert_eq!(r.drain(1000, 2.0), Some(Duration::from_millis(5)));
        assert_eq!(r.drain(1000, 0.0), None, "no worker up");
        // A worker twice as fast took half as long: the same unit time.
        r.observe(Duration::from_millis(5), 1000, 2.0);
        assert_eq!(r.drain(1000, 1.0), Some(Duration::from_millis(10)));
        // Slower batches move the mean a fifth of the way.
        r.observe(Duration::from_millis(20), 1000, 1.0);
        assert_eq!(r.drain(1000, 1.0), Some(Duration::from_millis(12)));
        r.observe(Duration::ZERO, 0, 1.0);
        assert!(r.drain(u128::MAX, 1e-300).is_some(), "saturates, no panic");
    }
}
