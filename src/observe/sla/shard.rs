//! What a recorder holds and publishes: HDR histograms per level and kind,
//! and per-second (counted, violations) buckets. Plain data, single-owner.

use std::collections::VecDeque;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::{Percentiles, Violation};
use crate::priority::Priority;

pub(super) const KINDS: usize = 3;
pub(super) const WAIT: usize = 0;
pub(super) const EXEC: usize = 1;
pub(super) const E2E: usize = 2;
pub(super) const WINDOW_SECS: usize = 300;
pub(super) const RECENT: usize = 32;
pub(super) const PUBLISH_EVERY: u32 = 4096;
pub(super) const PUBLISH_AFTER: Duration = Duration::from_millis(100);

/// Microseconds from 1 µs to 1 hour at 2 significant figures (≤ 1% error).
/// Two, not three: a histogram is then ~27 KB instead of ~270 KB, and a
/// recorder copies each it holds on every publish.
pub(super) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("static, valid histogram bounds")
}

/// Nanoseconds from 1 ns to 10 s at 2 significant figures: decisions take
/// microseconds, below the latency histograms' 1 µs resolution.
pub(super) fn decision_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 2).expect("static, valid histogram bounds")
}

pub(super) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// One latency histogram in Prometheus form.
#[derive(Debug, Clone)]
pub(crate) struct BucketedLatency {
    /// Sum of samples, in seconds.
    pub sum_s: f64,
    /// Samples.
    pub count: u64,
    /// `(upper bound in s, samples ≤ bound)`, cumulative, without `+Inf`.
    pub buckets: Vec<(f64, u64)>,
}

/// What a recorder publishes; merged by the report.
///
/// Each histogram, and the per-second ring, is allocated when first
/// recorded into: a recorder holds only what its thread records (a worker
/// its levels' execution and end-to-end latency, the collector queue wait
/// and decision time), and it holds it twice (its own and the published
/// copy). Allocated up front, every recorder held all 16 histograms and the
/// ring, about 0.9 MB per worker with both copies.
#[derive(Clone)]
pub(crate) struct SlaShard {
    /// Indexed by `level * KINDS + kind`; `None` until first recorded.
    pub(super) hist: Vec<Option<Histogram<u64>>>,
    /// Per level: (counted, violations) since start.
    pub(super) totals: [(u64, u64); Priority::COUNT],
    /// Per second of runtime, modulo `WINDOW_SECS`: (second, per level
    /// (counted, violations)). Empty until first counted, then
    /// `WINDOW_SECS` long (in a report's merge: every shard's appended).
    pub(super) buckets: Vec<(u64, [(u64, u64); Priority::COUNT])>,
    pub(super) recent: VecDeque<Violation>,
    /// Decision time per batch, in ns (only the collector records it).
    pub(super) decision: Option<Histogram<u64>>,
}

/// Adds `from` into `into`, allocating `into` if it has none yet.
pub(super) fn add_histogram(into: &mut Option<Histogram<u64>>, from: &Option<Histogram<u64>>) {
    match (into.as_mut(), from) {
        (_, None) => {}
        (None, Some(h)) => *into = Some(h.clone()),
        (Some(m), Some(h)) => m.add(h).expect("histograms share bounds"),
    }
}

impl SlaShard {
    pub(super) fn new() -> Self {
        Self {
            decision: None,
            hist: vec![None; Priority::COUNT * KINDS],
            totals: [(0, 0); Priority::COUNT],
            buckets: Vec::new(),
            recent: VecDeque::new(),
        }
    }

    /// Adds `other`'s histograms and totals to these.
    pub(super) fn add_samples(&mut self, other: &SlaShard) {
        for (m, h) in self.hist.iter_mut().zip(&other.hist) {
            add_histogram(m, h);
        }
        add_histogram(&mut self.decision, &other.decision);
        for (m, t) in self.totals.iter_mut().zip(other.totals) {
            m.0 += t.0;
            m.1 += t.1;
        }
    }

    /// Adds `other` for a report: its per-second buckets and violations are
    /// appended, not folded (a report sums every entry of a second and
    /// sorts the violations).
    pub(super) fn add(&mut self, other: &SlaShard) {
        self.add_samples(other);
        self.buckets.extend(other.buckets.iter().copied());
        self.recent.extend(other.recent.iter().copied());
    }

    /// Folds a gone recorder's final shard into this one, keeping its size
    /// bounded: buckets stay one ring of `WINDOW_SECS` (a second already
    /// here adds up; an older one in the same place is past every window),
    /// and only the newest `RECENT` violations stay.
    pub(super) fn fold(&mut self, other: &SlaShard) {
        self.add_samples(other);
        for &(second, counts) in other.buckets.iter().filter(|b| b.0 != u64::MAX) {
            let slot = &mut self.ring()[(second % WINDOW_SECS as u64) as usize];
            if slot.0 == second {
                for (m, c) in slot.1.iter_mut().zip(counts) {
                    m.0 += c.0;
                    m.1 += c.1;
                }
            } else if slot.0 == u64::MAX || slot.0 < second {
                *slot = (second, counts);
            }
        }
        let mut all: Vec<Violation> = self
            .recent
            .drain(..)
            .chain(other.recent.iter().copied())
            .collect();
        all.sort_by_key(|v| v.at);
        let older = all.len().saturating_sub(RECENT);
        self.recent = all.into_iter().skip(older).collect();
    }

    /// One histogram to record into (allocated on its first record: once
    /// per level and kind in a recorder's life, never per request).
    pub(super) fn hist(&mut self, p: Priority, kind: usize) -> &mut Histogram<u64> {
        self.hist[p.index() * KINDS + kind].get_or_insert_with(histogram)
    }

    /// One histogram to read; `None` when nothing was recorded into it.
    pub(super) fn read(&self, p: Priority, kind: usize) -> Option<&Histogram<u64>> {
        self.hist[p.index() * KINDS + kind].as_ref()
    }

    /// The per-second ring to count into, allocated on its first use.
    pub(super) fn ring(&mut self) -> &mut [(u64, [(u64, u64); Priority::COUNT])] {
        if self.buckets.is_empty() {
            self.buckets = vec![(u64::MAX, [(0, 0); Priority::COUNT]); WINDOW_SECS];
        }
        &mut self.buckets
    }

    pub(super) fn count(&mut self, p: Priority, second: u64, violated: bool) {
        let v = u64::from(violated);
        let t = &mut self.totals[p.index()];
        t.0 += 1;
        t.1 += v;
        let slot = &mut self.ring()[(second % WINDOW_SECS as u64) as usize];
        if slot.0 != second {
            *slot = (second, [(0, 0); Priority::COUNT]);
        }
        slot.1[p.index()].0 += 1;
        slot.1[p.index()].1 += v;
    }
}

/// A histogram's percentiles, its values turned into durations by `unit`;
/// all zero when it was never recorded into.
pub(super) fn percentiles(h: Option<&Histogram<u64>>, unit: fn(u64) -> Duration) -> Percentiles {
    let Some(h) = h else {
        return Percentiles::default();
    };
    let q = |x: f64| unit(h.value_at_quantile(x));
    Percentiles {
        count: h.len(),
        p50: q(0.50),
        p95: q(0.95),
        p99: q(0.99),
        max: unit(h.max()),
    }
}

/// A histogram in Prometheus form; its values are `per_s` to the second.
pub(super) fn bucketed(
    h: Option<&Histogram<u64>>,
    bounds_s: &[f64],
    per_s: f64,
) -> BucketedLatency {
    let Some(h) = h else {
        return BucketedLatency {
            sum_s: 0.0,
            count: 0,
            buckets: bounds_s.iter().map(|&b| (b, 0)).collect(),
        };
    };
    BucketedLatency {
        sum_s: h.mean() * h.len() as f64 / per_s,
        count: h.len(),
        buckets: bounds_s
            .iter()
            .map(|&b| (b, h.count_between(0, (b * per_s) as u64)))
            .collect(),
    }
}
