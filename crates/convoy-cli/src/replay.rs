//! Trace replay: drive a runtime with a trace's arrivals and sizes, then
//! report what the scheduler did.
//!
//! One driver thread submits each trace row at `arrival / speedup` after
//! the start (open loop: a slow runtime does not slow the arrivals), as a
//! pool-dense request of `tokens` token ids at the row's priority (the
//! trace's own, or the seeded [`PriorityMix`]); it sleeps between rows and
//! never spins, and a row due within 300 µs goes at once. Each ticket is polled as a
//! future once, with a waker that stamps the time the worker completed it,
//! so a request's end-to-end latency is exact whatever order requests
//! finish in, and no thread blocks per request.
//!
//! The [`Report`] combines what the client saw (outcomes per ticket,
//! end-to-end latency) with the runtime's own accounts (`stats`,
//! `sla_report`): its `lost` is accepted minus every outcome the runtime
//! counted, and the client checks that each accepted ticket got exactly one
//! outcome.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crossbeam::queue::SegQueue;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::tenants::{TenantLine, TenantMix, TenantTally, NOISY};
use crate::trace::{PriorityMix, Trace, TraceRequest};
use convoy::ticket::Ticket;
use convoy::Failure;
use convoy::Priority;
use convoy::Request;
use convoy::BATCH_SIZE_BOUNDS;
use convoy::{BuildError, Handle, Runtime, SubmitErrorKind};
use convoy::{Config, OrderingPolicy};
use convoy::{Executor, Lane};

/// How a replay runs.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The runtime's config (batching, ordering, SLOs, workers).
    pub config: Config,
    /// Trace time runs this many times faster than real time (> 0).
    pub speedup: f64,
    /// Priorities for rows without one.
    pub mix: PriorityMix,
    /// Replay at most this many rows.
    pub limit: Option<usize>,
    /// Stop submitting after this much real time.
    pub duration: Option<Duration>,
    /// Start the trace over when it ends (until `duration`, which must
    /// then be set): cycle `k` replays row `i` at `k × period + arrival(i)`,
    /// as request `k × rows + i` (fresh token ids), where the period is the
    /// span plus one mean gap ([`cycle_period`]). Rows that all arrive at
    /// once cannot be cycled (an error).
    pub cycle: bool,
    /// Width of the time windows of [`Report::timeline`].
    pub window: Duration,
    /// Vocabulary of the token ids generated for each row.
    pub vocab: usize,
    /// Send each row as one of these tenants (`compare --tenants`); `None`:
    /// no tenant.
    pub tenants: Option<TenantMix>,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            config: Config::default(),
            speedup: 1.0,
            mix: PriorityMix::default(),
            limit: None,
            duration: None,
            cycle: false,
            window: Duration::from_secs(1),
            vocab: convoy::model::DEFAULT_VOCAB,
            tenants: None,
        }
    }
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A bad option; names it.
    #[error("{option}: {reason}")]
    Option {
        /// The option.
        option: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The runtime could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// One priority's line of the report.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PriorityReport {
    /// The level's name.
    pub priority: String,
    /// Rows of this level replayed (submitted).
    pub offered: u64,
    /// Accepted by the runtime.
    pub accepted: u64,
    /// Refused at submit and handed back (why: [`Report::refused_by`]).
    pub refused: u64,
    /// Outcomes.
    pub completed: u64,
    /// Expired while queued.
    pub expired: u64,
    /// Of `expired`, those whose own deadline ended them before the
    /// starvation bound ([`Report::starvation_bound_ms`]; timed by the
    /// client from submit to the `Expired` outcome). The goal's "served
    /// within the bound" does not hold these against the ordering: the
    /// request asked for less time than the bound, and with the default
    /// `Reject` action it expired as it asked.
    pub expired_before_bound: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Executor failures.
    pub failed: u64,
    /// Failed by shutdown.
    pub shut_down: u64,
    /// Times preemption recalled one of its requests before it started
    /// (it waited again; not an outcome).
    pub displaced: u64,
    /// Times one of its requests stopped unfinished at a boundary of a
    /// running batch and waited again (not an outcome).
    pub interrupted: u64,
    /// End-to-end latency of completed requests (client side), ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// Queue wait (runtime side), ms.
    pub queue_wait_p50_ms: f64,
    /// Queue wait p95, ms.
    pub queue_wait_p95_ms: f64,
    /// Queue wait p99, ms.
    pub queue_wait_p99_ms: f64,
    /// Longest queue wait, ms.
    pub queue_wait_max_ms: f64,
    /// The configured p99 objective, ms.
    pub slo_p99_ms: f64,
    /// The configured per-request timeout, ms.
    pub slo_timeout_ms: f64,
    /// Share of finished requests within the timeout (runtime's
    /// compliance since start); 1.0 when none finished.
    pub slo_compliance: f64,
    /// Whether the client-side p99 meets the p99 objective, with expired
    /// and failed requests counted as slower than any completion
    /// ([`p99_within`]); `p99_ms` itself is over completions only.
    pub p99_met: bool,
}

impl PriorityReport {
    /// A level with no request accepted has no latency to show: its
    /// figures (0, and compliance 1.0 in the JSON) are placeholders, so a
    /// table shows "–" rather than a latency of 0.0 ms.
    pub fn measured(&self) -> bool {
        self.accepted > 0
    }

    /// `v` with `decimals` for a table, or "–" when not [`measured`](Self::measured).
    pub fn figure(&self, v: f64, decimals: usize) -> String {
        if self.measured() {
            format!("{v:.decimals$}")
        } else {
            "–".to_owned()
        }
    }

    /// `slo_compliance` as a percentage for a table, or "–".
    pub fn compliance_text(&self) -> String {
        if self.measured() {
            format!("{:.2}%", self.slo_compliance * 100.0)
        } else {
            "–".to_owned()
        }
    }
}

/// Latency over time: per window, per priority, p50 and p99 in ms.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Timeline {
    /// Window width, s: the one asked for, or a power-of-two multiple of
    /// it where the run would have needed more than [`MAX_WINDOWS`].
    pub window_s: f64,
    /// Per window (by completion time): per priority `(p50_ms, p99_ms)`,
    /// `None` where nothing of that level completed in the window.
    pub windows: Vec<[Option<(f64, f64)>; Priority::COUNT]>,
}

/// What a replay did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    /// The trace's source.
    pub trace: String,
    /// Ordering policy name.
    pub policy: String,
    /// Whether the least urgent levels were shed while the queue ran late
    /// (`ordering.shed`): with it, `refused_by` may hold `overloaded`.
    pub shed: bool,
    /// Speed-up applied to the trace's clock.
    pub speedup: f64,
    /// Offered arrival rate, requests/s of real time; 0 when every row
    /// arrives at the same instant (no rate to give: the table says "all
    /// at once").
    pub offered_rps: f64,
    /// Rows submitted.
    pub offered: u64,
    /// Accepted by the runtime.
    pub accepted: u64,
    /// Refused at submit.
    pub refused: u64,
    /// The refusals by reason ([`SubmitErrorKind::as_str`]; in JSON an
    /// object, `{"queue_full": 12}`), reasons that never happened left
    /// out: `queue_full` is load, while `cost_never_fits` or `invalid` is
    /// a trace row this fleet can never run.
    pub refused_by: BTreeMap<String, u64>,
    /// Accepted minus every outcome the runtime counted: 0 unless a
    /// request was lost.
    pub lost: u64,
    /// Accepted tickets that did not get exactly one outcome (client side).
    pub client_unresolved: u64,
    /// Completed.
    pub completed: u64,
    /// Real seconds from the first submit to the last outcome.
    pub elapsed_s: f64,
    /// Completed per second over `elapsed_s`.
    pub throughput_rps: f64,
    /// Batches launched.
    pub batches: u64,
    /// Mean requests per batch.
    pub mean_batch: f64,
    /// `(upper bound, batches)` per batch size bucket.
    pub batch_sizes: Vec<(u64, u64)>,
    /// Collector decision time per batch, µs.
    pub decision_p50_us: f64,
    /// 99th percentile, µs.
    pub decision_p99_us: f64,
    /// Share of worker-time spent executing batches.
    pub utilization: f64,
    /// Capacity shortfall episodes.
    pub shortfall: u64,
    /// Aging promotions.
    pub aging_promotions: u64,
    /// The ordering's `max_wait` (the starvation bound, less one batch
    /// interval), ms.
    pub max_wait_ms: f64,
    /// One batch interval as this run saw it, ms: the configured
    /// `max_queue_delay` (forming a batch) plus the slowest level's p99
    /// batch execution time (a worker finishing the batch it holds). The
    /// starvation bound is `max_wait_ms + batch_interval_ms`.
    pub batch_interval_ms: f64,
    /// Per priority, in level order.
    pub priorities: Vec<PriorityReport>,
    /// Latency over time.
    pub timeline: Timeline,
    /// Per tenant, with [`ReplayOptions::tenants`] (else empty): the noisy
    /// one first, then the quiet ones.
    pub tenants: Vec<TenantLine>,
    /// The quiet tenants' completed requests together: p50 and p99, ms.
    pub quiet_p50_ms: f64,
    /// See `quiet_p50_ms`.
    pub quiet_p99_ms: f64,
    /// Jain's index of the tenants' served tokens against their max-min
    /// fair shares ([`crate::tenants::jain`]); 1 without tenants.
    pub jain: f64,
    /// The runtime's final Prometheus text (not in the JSON).
    #[serde(skip)]
    pub metrics: String,
}

/// The `compare` goal judged on one run: see [`Report::goal`].
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Goal {
    /// Every part held.
    pub met: bool,
    /// Each part that did not, in words (`"high p99 134.1 ms > 100"`).
    pub missed: Vec<String>,
    /// What the goal did not hold against the run, in words (`"low: 12
    /// expired by their own deadline within the bound"`).
    pub excused: Vec<String>,
}

impl Report {
    /// One level's line.
    pub fn of(&self, p: Priority) -> &PriorityReport {
        &self.priorities[p.index()]
    }

    /// The starvation bound this run is held to, ms: `max_wait` plus one
    /// batch interval ([`Report::batch_interval_ms`]).
    pub fn starvation_bound_ms(&self) -> f64 {
        self.max_wait_ms + self.batch_interval_ms
    }

    /// The goal `compare` is run for, judged on this run:
    ///
    /// * Critical and High meet their p99 objective (expired and failed
    ///   requests counted as slower, [`PriorityReport::p99_met`]) with at
    ///   least 99.9% of them within their timeout;
    /// * every accepted Low and Background request is served (completed:
    ///   none expired, failed or shut down) after a queue wait within the
    ///   starvation bound ([`Report::starvation_bound_ms`]). A request
    ///   whose own deadline ended it before the bound
    ///   ([`PriorityReport::expired_before_bound`]) was not starved: it is
    ///   named in [`Goal::excused`], not counted as unserved;
    /// * nothing is lost.
    ///
    /// A level with nothing accepted has nothing to miss. Requests refused
    /// at submit are not part of it: at a load over capacity some must be,
    /// and each is handed back.
    ///
    /// ```
    /// use convoy_cli::replay::{PriorityReport, Report};
    /// let line = |name: &str| PriorityReport { priority: name.into(), accepted: 10, completed: 10,
    ///     p99_met: true, slo_compliance: 1.0, ..Default::default() };
    /// let mut r = Report { max_wait_ms: 500.0, batch_interval_ms: 10.0,
    ///     priorities: ["critical", "high", "normal", "low", "background"].map(line).to_vec(),
    ///     ..Default::default() };
    /// assert!(r.goal().met);
    /// r.priorities[1].p99_met = false;
    /// r.priorities[1].p99_ms = 134.0;
    /// r.priorities[1].slo_p99_ms = 100.0;
    /// r.priorities[4].queue_wait_max_ms = 600.0;
    /// let goal = r.goal();
    /// assert!(!goal.met);
    /// assert_eq!(goal.missed, ["high p99 134.0 ms > 100", "background waited 600 ms > 510"]);
    /// ```
    pub fn goal(&self) -> Goal {
        let mut missed = Vec::new();
        let mut excused = Vec::new();
        // `get`, not `of`: a report built by hand may lack levels.
        let line = |p: Priority| self.priorities.get(p.index());
        for l in [Priority::Critical, Priority::High]
            .into_iter()
            .filter_map(line)
        {
            if !l.measured() {
                continue;
            }
            if !l.p99_met {
                let misses = l.expired + l.failed;
                // The p99 shown is of the requests served; expiries and
                // failures rank above them (`p99_within`), so it can read
                // under the objective and still miss it.
                let why = if l.p99_ms > l.slo_p99_ms {
                    let mut why = format!(
                        "{} p99 {:.1} ms > {:.0}",
                        l.priority, l.p99_ms, l.slo_p99_ms
                    );
                    if misses > 0 {
                        why.push_str(&format!(" ({misses} expired or failed)"));
                    }
                    why
                } else {
                    format!(
                        "{} p99 over {:.0} ms counting its {misses} expired or failed (p99 of those served {:.1} ms)",
                        l.priority, l.slo_p99_ms, l.p99_ms
                    )
                };
                missed.push(why);
            }
            if l.slo_compliance < 0.999 {
                missed.push(format!(
                    "{} {:.2}% within timeout < 99.9%",
                    l.priority,
                    l.slo_compliance * 100.0
                ));
            }
        }
        let bound = self.starvation_bound_ms();
        for l in [Priority::Low, Priority::Background]
            .into_iter()
            .filter_map(line)
        {
            let unserved = l
                .accepted
                .saturating_sub(l.completed)
                .saturating_sub(l.expired_before_bound);
            if l.expired_before_bound > 0 {
                excused.push(format!(
                    "{}: {} expired by their own deadline within the bound",
                    l.priority, l.expired_before_bound
                ));
            }
            if unserved > 0 {
                missed.push(format!(
                    "{} {unserved} of {} accepted not served",
                    l.priority, l.accepted
                ));
            }
            if l.queue_wait_max_ms > bound {
                missed.push(format!(
                    "{} waited {:.0} ms > {bound:.0}",
                    l.priority, l.queue_wait_max_ms
                ));
            }
        }
        if self.lost > 0 || self.client_unresolved > 0 {
            missed.push(format!(
                "lost {} (unresolved tickets {})",
                self.lost, self.client_unresolved
            ));
        }
        Goal {
            met: missed.is_empty(),
            missed,
            excused,
        }
    }

    /// The report as JSON: its fields, plus `per_priority`, the same lines
    /// as `priorities` keyed by level name (`report["per_priority"]["high"]
    /// ["p99_ms"]`), for readers that look a level up rather than scan.
    ///
    /// ```
    /// let r = convoy_cli::replay::Report::default();
    /// let json = r.to_json();
    /// assert_eq!(json["lost"], 0);
    /// assert!(json["per_priority"].is_object());
    /// ```
    pub fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::to_value(self).expect("a report is plain numbers and strings");
        // The lines already serialized under `priorities`, named.
        let lines = json["priorities"].as_array().cloned().unwrap_or_default();
        let by_name: serde_json::Map<String, serde_json::Value> = self
            .priorities
            .iter()
            .map(|p| p.priority.clone())
            .zip(lines)
            .collect();
        let goal = serde_json::to_value(self.goal()).expect("a goal is a flag and strings");
        if let Some(fields) = json.as_object_mut() {
            fields.insert("per_priority".into(), by_name.into());
            fields.insert(
                "starvation_bound_ms".into(),
                self.starvation_bound_ms().into(),
            );
            fields.insert("goal".into(), goal);
        }
        json
    }

    /// The report as a table for a terminal.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "trace {} | policy {} | shedding {} | speed-up {:.1}× | offered {}",
            self.trace,
            self.policy,
            if self.shed { "on" } else { "off" },
            self.speedup,
            if self.offered_rps > 0.0 || self.offered == 0 {
                format!("{:.0} req/s", self.offered_rps)
            } else {
                format!("{} all at once", self.offered)
            }
        );
        // Two header rows: which latency, then the percentile.
        let _ = writeln!(s, "{:<27} {:<23} queue wait ms", "", "end-to-end ms");
        let _ = writeln!(
            s,
            "{:<11} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>6}",
            "priority",
            "offered",
            "done",
            "p50",
            "p95",
            "p99",
            "p50",
            "p95",
            "p99",
            "max",
            "SLO p99",
            "SLO ok",
            "expired",
            "other"
        );
        for p in &self.priorities {
            let f = |v: f64, decimals: usize| p.figure(v, decimals);
            let _ = writeln!(
                s,
                "{:<11} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8.0} {:>8} {:>8} {:>6}",
                p.priority,
                p.offered,
                p.completed,
                f(p.p50_ms, 1),
                f(p.p95_ms, 1),
                f(p.p99_ms, 1),
                f(p.queue_wait_p50_ms, 1),
                f(p.queue_wait_p95_ms, 1),
                f(p.queue_wait_p99_ms, 1),
                f(p.queue_wait_max_ms, 1),
                p.slo_p99_ms,
                p.compliance_text(),
                p.expired,
                p.refused + p.cancelled + p.failed + p.shut_down,
            );
        }
        let sizes: Vec<String> = self
            .batch_sizes
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(b, n)| {
                if *b == u64::MAX {
                    format!(">1024:{n}")
                } else {
                    format!("≤{b}:{n}")
                }
            })
            .collect();
        let _ = writeln!(
            s,
            "throughput {:.0} req/s over {:.2} s | {} batches, mean {:.1} [{}]",
            self.throughput_rps,
            self.elapsed_s,
            self.batches,
            self.mean_batch,
            sizes.join(" ")
        );
        let _ = writeln!(
            s,
            "decision p50 {:.1} µs, p99 {:.1} µs | utilization {:.0}% | shortfall {} | aging promotions {}",
            self.decision_p50_us,
            self.decision_p99_us,
            self.utilization * 100.0,
            self.shortfall,
            self.aging_promotions
        );
        let preempted: Vec<String> = self
            .priorities
            .iter()
            .filter(|p| p.displaced + p.interrupted > 0)
            .map(|p| {
                format!(
                    "{} {} displaced, {} interrupted",
                    p.priority, p.displaced, p.interrupted
                )
            })
            .collect();
        if !preempted.is_empty() {
            let _ = writeln!(s, "preempted: {}", preempted.join("; "));
        }
        if !self.refused_by.is_empty() {
            let why: Vec<String> = self
                .refused_by
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let _ = writeln!(s, "refused at submit: {}", why.join(", "));
        }
        // Every outcome by name, so the line is the arithmetic it claims:
        // accepted minus their sum is `lost`.
        let sum = |f: fn(&PriorityReport) -> u64| self.priorities.iter().map(f).sum::<u64>();
        let _ = writeln!(
            s,
            "offered {} = refused {} + accepted {}; accepted {} = completed {} + expired {} + cancelled {} + failed {} + shut down {}; lost: {}",
            self.offered,
            self.refused,
            self.accepted,
            self.accepted,
            self.completed,
            sum(|p| p.expired),
            sum(|p| p.cancelled),
            sum(|p| p.failed),
            sum(|p| p.shut_down),
            self.lost
        );
        s
    }
}

/// Accepted minus every outcome: what a runtime lost, from raw counts
/// (the report itself uses [`PriorityStats::lost`](convoy::PriorityStats::lost),
/// the same arithmetic). Saturating, so a count read mid-flight never wraps.
///
/// ```
/// use convoy_cli::replay::lost;
/// assert_eq!(lost(10, [7, 1, 1, 1, 0]), 0);
/// assert_eq!(lost(10, [7, 1, 0, 0, 0]), 2);
/// ```
pub fn lost(accepted: u64, outcomes: [u64; 5]) -> u64 {
    accepted.saturating_sub(outcomes.iter().sum())
}

/// Whether a level's p99 meets its objective when the requests that
/// never completed in time count too: an expiry or a failure ranks above
/// every completion (it never came back within its deadline), so a level
/// that expired most of its requests cannot pass on the few it served.
/// Cancellations are the client's choice and do not count.
///
/// `completed` holds end-to-end latencies in µs; `misses` is the number of
/// requests that expired or failed.
///
/// ```
/// use convoy_cli::replay::p99_within;
/// use hdrhistogram::Histogram;
/// let mut h = Histogram::<u64>::new(3).unwrap();
/// for _ in 0..99 { h.record(10_000).unwrap(); } // 99 served in 10 ms
/// assert!(p99_within(&h, 1, 50.0)); // one expiry in 100 is the 1% tail
/// assert!(!p99_within(&h, 2, 50.0)); // two are not
/// assert!(!p99_within(&Histogram::<u64>::new(3).unwrap(), 1, 50.0)); // nothing served
/// assert!(p99_within(&Histogram::<u64>::new(3).unwrap(), 0, 50.0)); // nothing finished
/// ```
pub fn p99_within(completed: &Histogram<u64>, misses: u64, objective_ms: f64) -> bool {
    let served = completed.len();
    let n = served + misses;
    if n == 0 {
        return true;
    }
    // Rank of the p99 among all n, 1-based, with the misses on top.
    let rank = (0.99 * n as f64).ceil() as u64;
    if rank > served {
        return false;
    }
    let p99_us = completed.value_at_quantile(rank as f64 / served as f64);
    p99_us as f64 / 1e3 <= objective_ms
}

/// Counts the time workers spend running batches (one relaxed add per
/// batch, or per busy stretch of a pipelined lane).
struct Busy<E> {
    inner: E,
    busy_ns: Arc<AtomicU64>,
}

fn add_busy(busy_ns: &AtomicU64, since: Instant) {
    // Saturating: `as u64` of `as_nanos()` would wrap past 584 years.
    let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
    // Relaxed: an independent sum read after the workers are joined.
    busy_ns.fetch_add(ns, Ordering::Relaxed);
}

impl<E: Executor<Vec<u32>, Vec<f32>>> Executor<Vec<u32>, Vec<f32>> for Busy<E> {
    fn execute(
        &self,
        worker: usize,
        inputs: &[Vec<u32>],
    ) -> Result<Vec<Vec<f32>>, convoy::ExecutorError> {
        let started = Instant::now();
        let out = self.inner.execute(worker, inputs);
        add_busy(&self.busy_ns, started);
        out
    }

    fn check(&self, input: &Vec<u32>) -> Result<(), String> {
        self.inner.check(input)
    }

    fn interruptible(&self) -> convoy::Interruptible {
        self.inner.interruptible()
    }

    fn execute_until(
        &self,
        worker: usize,
        inputs: &[Vec<u32>],
        stop: &convoy::Stop<'_>,
    ) -> Result<Vec<Option<Vec<f32>>>, convoy::ExecutorError> {
        let started = Instant::now();
        let out = self.inner.execute_until(worker, inputs, stop);
        add_busy(&self.busy_ns, started);
        out
    }

    fn lane(&self, worker: usize) -> Option<Box<dyn Lane<Vec<u32>, Vec<f32>>>> {
        let inner = self.inner.lane(worker)?;
        Some(Box::new(BusyLane {
            inner,
            busy_ns: self.busy_ns.clone(),
            in_flight: 0,
            since: Instant::now(),
        }))
    }
}

/// A lane's busy time is the union of its stretches with work in flight
/// (overlapping batches are counted once).
struct BusyLane {
    inner: Box<dyn Lane<Vec<u32>, Vec<f32>>>,
    busy_ns: Arc<AtomicU64>,
    in_flight: usize,
    since: Instant,
}

impl Lane<Vec<u32>, Vec<f32>> for BusyLane {
    fn depth(&self) -> usize {
        self.inner.depth()
    }

    fn launch(&mut self, inputs: &[Vec<u32>]) -> Result<(), convoy::ExecutorError> {
        let now = Instant::now();
        self.inner.launch(inputs)?;
        if self.in_flight == 0 {
            self.since = now;
        }
        self.in_flight += 1;
        Ok(())
    }

    fn is_ready(&mut self) -> bool {
        self.inner.is_ready()
    }

    fn finish(&mut self) -> Result<Vec<Vec<f32>>, convoy::ExecutorError> {
        let out = self.inner.finish();
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            add_busy(&self.busy_ns, self.since);
        }
        out
    }
}

/// Stamps the moment a ticket's outcome arrives (the completing worker
/// calls `wake`) and queues the ticket's id for the driver.
struct Stamp {
    id: usize,
    woken: Arc<SegQueue<(usize, Instant)>>,
}

impl Wake for Stamp {
    fn wake(self: Arc<Self>) {
        self.woken.push((self.id, Instant::now()));
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.push((self.id, Instant::now()));
    }
}

struct Pending {
    ticket: Ticket<Vec<f32>>,
    waker: Waker,
    level: Priority,
    submitted: Instant,
    /// Its tenant and tokens, with tenants.
    tenant: Option<(usize, u32)>,
}

/// Client-side tallies.
struct Tally {
    e2e: Vec<Histogram<u64>>,
    /// Per priority, how long each expired request lived, submit to
    /// `Expired` (for [`PriorityReport::expired_before_bound`]).
    expired_after: [Vec<Duration>; Priority::COUNT],
    /// Per window: per priority, latencies in µs.
    windows: Vec<[Vec<u32>; Priority::COUNT]>,
    window: Duration,
    start: Instant,
    last_outcome: Instant,
    resolved: u64,
    tenants: TenantTally,
}

impl Tally {
    /// A completed request of tenant `t` of `tokens`.
    fn tenant(&mut self, t: usize, tokens: u32, submitted: Instant, at: Instant) {
        let us = u64::try_from(at.saturating_duration_since(submitted).as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.tenants.e2e[t].saturating_record(us);
        self.tenants.served_tokens[t] += u64::from(tokens);
    }

    /// Nothing recorded yet; windows of `window` from `start`.
    fn new(start: Instant, window: Duration) -> Self {
        Tally {
            e2e: (0..Priority::COUNT)
                .map(|_| {
                    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static, valid bounds")
                })
                .collect(),
            expired_after: Default::default(),
            windows: Vec::new(),
            window,
            start,
            last_outcome: start,
            resolved: 0,
            tenants: TenantTally::new(0),
        }
    }

    fn record(
        &mut self,
        level: Priority,
        submitted: Instant,
        at: Instant,
        outcome: Result<Vec<f32>, Failure>,
    ) {
        self.resolved += 1;
        self.last_outcome = self.last_outcome.max(at);
        // Outcome kinds are counted by the runtime (`stats`); the client
        // counts that each ticket resolved, and times the completed and
        // the expired ones.
        if matches!(outcome, Err(Failure::Expired)) {
            self.expired_after[level.index()].push(at.saturating_duration_since(submitted));
        }
        if outcome.is_ok() {
            let e2e = at.saturating_duration_since(submitted);
            let us = u64::try_from(e2e.as_micros()).unwrap_or(u64::MAX).max(1);
            self.e2e[level.index()].saturating_record(us);
            let w = self.window_of(at);
            if self.windows.len() <= w {
                self.windows.resize_with(w + 1, Default::default);
            }
            self.windows[w][level.index()].push(u32::try_from(us).unwrap_or(u32::MAX));
        }
    }

    /// The window `at` falls in, widening the windows first if it lies
    /// beyond [`MAX_WINDOWS`] of them.
    fn window_of(&mut self, at: Instant) -> usize {
        let since = at.saturating_duration_since(self.start).as_nanos();
        loop {
            let w = since / self.window.as_nanos().max(1);
            if w < MAX_WINDOWS as u128 {
                return w as usize;
            }
            self.widen();
        }
    }

    /// Doubles the window width, merging each pair of neighbours: the
    /// samples stay, the timeline gets coarser.
    fn widen(&mut self) {
        self.window = self.window.max(Duration::from_nanos(1)).saturating_mul(2);
        let mut old = std::mem::take(&mut self.windows).into_iter();
        while let Some(mut first) = old.next() {
            if let Some(second) = old.next() {
                for (into, from) in first.iter_mut().zip(second) {
                    into.extend(from);
                }
            }
            self.windows.push(first);
        }
    }
}

/// The most windows a [`Timeline`] holds. A `--window` too fine for the
/// run (a nanosecond over seconds once asked for 2·10⁹ windows, gigabytes)
/// is doubled, neighbours merged, until the run fits;
/// [`Timeline::window_s`] says the width used.
pub const MAX_WINDOWS: usize = 4096;

/// Token ids of row `i`: `len` ids (at least one) spread over the
/// vocabulary, fixed by the row index, so every run, policy and bench sends
/// the same requests.
///
/// ```
/// let t = convoy_cli::replay::tokens_of(3, 5, 100);
/// assert_eq!(t.len(), 5);
/// assert!(t.iter().all(|&id| id < 100));
/// assert_eq!(t, convoy_cli::replay::tokens_of(3, 5, 100));
/// ```
pub fn tokens_of(i: usize, len: u32, vocab: usize) -> Vec<u32> {
    let vocab = vocab.max(1) as u64;
    (0..u64::from(len.max(1)))
        .map(|j| ((i as u64).wrapping_mul(7919) + j * 104_729) % vocab)
        .map(|t| t as u32)
        .collect()
}

/// Row `i` as a request: its token ids ([`tokens_of`]) at a cost of its
/// token count. A row no worker can hold is refused by that cost, so its
/// input is built no longer than what `handle` accepts now: a row of a
/// billion tokens costs no gigabytes to refuse.
fn row_request(
    handle: &Handle<Vec<u32>, Vec<f32>>,
    i: usize,
    row: &TraceRequest,
    vocab: usize,
) -> Request<Vec<u32>> {
    let most = handle.max_cost().map_or(1, |max| max.tokens);
    Request::new(tokens_of(i, row.tokens.min(most), vocab)).tokens(row.tokens.max(1))
}

/// Refuses a speed-up that is not a finite number of at least
/// [`MIN_SPEEDUP`], so a caller can check it before it prints or builds
/// anything.
///
/// ```
/// assert!(convoy_cli::replay::check_speedup(0.0).is_err());
/// assert!(convoy_cli::replay::check_speedup(1e-300).is_err());
/// assert!(convoy_cli::replay::check_speedup(1600.0).is_ok());
/// ```
pub fn check_speedup(speedup: f64) -> Result<(), ReplayError> {
    // Below a millionth, one second of trace takes over eleven days: a
    // typo, not a replay (and its due times soon outgrow `Duration`).
    if speedup.is_finite() && speedup >= MIN_SPEEDUP {
        Ok(())
    } else {
        Err(ReplayError::Option {
            option: "--speedup",
            reason: format!("must be a finite number ≥ {MIN_SPEEDUP}, got {speedup}"),
        })
    }
}

/// The slowest replay [`check_speedup`] accepts.
pub const MIN_SPEEDUP: f64 = 1e-6;

/// The arrival of the last of `rows` (relative to the first).
fn span_of(rows: &[TraceRequest]) -> Duration {
    rows.last().map_or(Duration::ZERO, |r| r.arrival)
}

/// How far apart two cycles of `rows` start in trace time: their span plus
/// one mean gap, so the last row of a cycle and the first of the next are as
/// far apart as an average pair. Zero when the rows all arrive at once.
///
/// ```
/// use std::time::Duration;
/// use convoy_cli::trace::TraceRequest;
/// let at = |s: u64| TraceRequest { arrival: Duration::from_secs(s), priority: None, tokens: 1, generated: None, deadline: None };
/// // Three rows over 4 s: gaps of 2 s on average, so a cycle is 6 s.
/// assert_eq!(convoy_cli::replay::cycle_period(&[at(0), at(1), at(4)]), Duration::from_secs(6));
/// assert_eq!(convoy_cli::replay::cycle_period(&[at(0)]), Duration::ZERO);
/// ```
pub fn cycle_period(rows: &[TraceRequest]) -> Duration {
    match rows.len() {
        0 | 1 => Duration::ZERO,
        n => {
            let span = span_of(rows);
            span + span / u32::try_from(n - 1).unwrap_or(u32::MAX)
        }
    }
}

/// When the row at `arrival` of cycle `round` is due, after the start, at
/// `speedup`: `None` when that is too far for a `Duration`.
fn due_offset(period: Duration, round: u64, arrival: Duration, speedup: f64) -> Option<Duration> {
    let trace_s = period.as_secs_f64() * round as f64 + arrival.as_secs_f64();
    Duration::try_from_secs_f64(trace_s / speedup).ok()
}

/// The real time the submits of `rows` take at `speedup`: the rows' span
/// at the speed-up, or `duration` where that ends them sooner. Printed
/// before a replay starts, so a trace with a long quiet gap says up front
/// that it will take a week, not after.
///
/// ```
/// use std::time::Duration;
/// let t = convoy_cli::trace::parse("t", "arrival_s,priority,tokens\n0,high,1\n44,low,2\n").unwrap();
/// // 44 s of trace at 20× is 2.2 s of real time; a 1 s duration ends it sooner.
/// assert_eq!(convoy_cli::replay::expected_run(&t.requests, 20.0, None), Duration::from_secs_f64(2.2));
/// let cut = Some(Duration::from_secs(1));
/// assert_eq!(convoy_cli::replay::expected_run(&t.requests, 20.0, cut), Duration::from_secs(1));
/// ```
pub fn expected_run(rows: &[TraceRequest], speedup: f64, duration: Option<Duration>) -> Duration {
    let expected = due_offset(Duration::ZERO, 0, span_of(rows), speedup).unwrap_or(Duration::MAX);
    duration.map_or(expected, |d| d.min(expected))
}

/// A timeline window for a replay expected to last `expected` of real time
/// (the binary passes [`expected_run`]): about 50 windows, on a 1-2-5 step,
/// from 10 ms to 60 s. A fixed 1 s window gave the default replay (2.2 s) a
/// three-point chart; an hour at 1× would have had 3,600 points.
///
/// ```
/// use std::time::Duration;
/// use convoy_cli::replay::timeline_window;
/// assert_eq!(timeline_window(Duration::from_secs_f64(2.2)), Duration::from_millis(50));
/// assert_eq!(timeline_window(Duration::from_secs(3600)), Duration::from_secs(60));
/// assert_eq!(timeline_window(Duration::ZERO), Duration::from_millis(10));
/// ```
pub fn timeline_window(expected: Duration) -> Duration {
    const STEPS_MS: [u64; 12] = [
        10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 60_000,
    ];
    let ideal_ms = expected.as_secs_f64() * 1e3 / 50.0;
    // The step nearest the ideal on a log scale; the last one caps it.
    let ms = STEPS_MS
        .iter()
        .copied()
        .min_by(|&a, &b| {
            let d = |s: u64| (s as f64 / ideal_ms.max(1e-3)).ln().abs();
            d(a).total_cmp(&d(b))
        })
        .expect("a non-empty table");
    Duration::from_millis(ms)
}

/// Replays `trace` through a runtime running `executor`, calling
/// `progress(submitted)` every 256 submits. Returns the report after the
/// runtime has shut down (so its accounts are exact).
pub fn replay<E: Executor<Vec<u32>, Vec<f32>>>(
    trace: &Trace,
    executor: E,
    options: &ReplayOptions,
    progress: &dyn Fn(u64),
) -> Result<Report, ReplayError> {
    check_speedup(options.speedup)?;
    if options.cycle && options.duration.is_none() {
        return Err(ReplayError::Option {
            option: "cycle",
            reason: "a cycled replay needs a duration".into(),
        });
    }
    let rows = trace.first(options.limit);
    let period = cycle_period(rows);
    if options.cycle && period.is_zero() {
        // Every cycle would be due at the start: the driver would submit
        // forever without the clock passing `duration`.
        return Err(ReplayError::Option {
            option: "cycle",
            reason: format!(
                "the {} replayed rows all arrive at once; a cycled replay needs arrival times",
                rows.len()
            ),
        });
    }
    if options.duration.is_none() && due_offset(period, 0, span_of(rows), options.speedup).is_none()
    {
        return Err(ReplayError::Option {
            option: "--speedup",
            reason: format!(
                "at {}× the trace's {:.0} s would take longer than this clock can count; give a duration or a larger speed-up",
                options.speedup,
                span_of(rows).as_secs_f64()
            ),
        });
    }
    if options.window.is_zero() {
        return Err(ReplayError::Option {
            option: "window",
            reason: "must be > 0".into(),
        });
    }
    let busy_ns = Arc::new(AtomicU64::new(0));
    let rt = Runtime::builder()
        .config(options.config.clone())
        .executor(Busy {
            inner: executor,
            busy_ns: busy_ns.clone(),
        })
        .build()?;
    let workers = options.config.fleet().len().max(1);
    let handle = rt.handle();
    let woken: Arc<SegQueue<(usize, Instant)>> = Arc::new(SegQueue::new());
    let mut pending: Vec<Option<Pending>> = Vec::with_capacity(rows.len());
    let start = Instant::now();
    let mut tally = Tally::new(start, options.window);
    tally.tenants = TenantTally::new(options.tenants.map_or(0, |m| m.count()));
    // One shared id per tenant: a request takes it without a copy.
    let tenant_ids: Vec<Arc<str>> = options
        .tenants
        .map(|m| (0..m.count()).map(|t| Arc::from(m.name(t))).collect())
        .unwrap_or_default();
    let mut offered = [0u64; Priority::COUNT];
    let mut refused = [0u64; Priority::COUNT];
    let mut refused_by = [0u64; SubmitErrorKind::ALL.len()];
    let mut accepted = 0u64;
    let mut last_due = start;

    let drain = |pending: &mut Vec<Option<Pending>>, tally: &mut Tally| {
        while let Some((id, at)) = woken.pop() {
            let Some(p) = pending[id].as_mut() else {
                continue;
            };
            let mut cx = Context::from_waker(&p.waker);
            if let Poll::Ready(outcome) = Pin::new(&mut p.ticket).poll(&mut cx) {
                let p = pending[id].take().expect("checked above");
                if let (Some((t, tokens)), Ok(_)) = (p.tenant, &outcome) {
                    tally.tenant(t, tokens, p.submitted, at);
                }
                tally.record(p.level, p.submitted, at, outcome);
            }
        }
    };

    let total = if options.cycle {
        usize::MAX
    } else {
        rows.len()
    };
    for i in 0..total {
        let Some(row) = rows.get(i % rows.len().max(1)) else {
            break;
        };
        let round = (i / rows.len()) as u64;
        // `None`: beyond what `Instant` can hold, so beyond any duration
        // (without one, the check above ruled this out).
        let Some(due) = due_offset(period, round, row.arrival, options.speedup)
            .and_then(|offset| start.checked_add(offset))
        else {
            break;
        };
        // A duration past what `Instant` holds ends nothing. The end is
        // real time: a row due after it, or a driver still submitting
        // when it passes (behind schedule: at a speed-up so large that a
        // cycle of the trace is due within nanoseconds, due times hardly
        // advance and the run never ended).
        if options.duration.is_some_and(|d| {
            start
                .checked_add(d)
                .is_some_and(|end| due > end || Instant::now() > end)
        }) {
            break;
        }
        // Sleep until the row is due, never spin: the driver shares the
        // machine with the workers it measures. A row due within
        // `EARLY` goes now, so arrivals are at most that early (sleeps
        // shorter than that are not precise anyway).
        const EARLY: Duration = Duration::from_micros(300);
        loop {
            drain(&mut pending, &mut tally);
            let now = Instant::now();
            if now + EARLY >= due {
                break;
            }
            std::thread::sleep((due - now - EARLY).min(Duration::from_millis(1)));
        }
        last_due = due;
        let tenant = options.tenants.map(|m| m.of(i));
        if tenant == Some(NOISY) && options.tenants.is_some_and(|m| !m.noisy_present) {
            continue;
        }
        let level = options.mix.of(i, row);
        offered[level.index()] += 1;
        let mut request = row_request(&handle, i, row, options.vocab).priority(level);
        if let Some(d) = row.deadline {
            request = request.deadline(d);
        }
        let tokens = row.tokens.max(1);
        if let Some(t) = tenant {
            request = request.tenant(tenant_ids[t].clone());
            tally.tenants.offered[t] += 1;
            tally.tenants.demand_tokens[t] += u64::from(tokens);
        }
        let submitted = Instant::now();
        match handle.submit(request) {
            Ok(mut ticket) => {
                accepted += 1;
                let id = pending.len();
                let waker = Waker::from(Arc::new(Stamp {
                    id,
                    woken: woken.clone(),
                }));
                let mut cx = Context::from_waker(&waker);
                match Pin::new(&mut ticket).poll(&mut cx) {
                    Poll::Ready(outcome) => {
                        let at = Instant::now();
                        if let (Some(t), Ok(_)) = (tenant, &outcome) {
                            tally.tenant(t, tokens, submitted, at);
                        }
                        tally.record(level, submitted, at, outcome);
                        pending.push(None);
                    }
                    Poll::Pending => pending.push(Some(Pending {
                        ticket,
                        waker,
                        level,
                        submitted,
                        tenant: tenant.map(|t| (t, tokens)),
                    })),
                }
            }
            Err(e) => {
                refused[level.index()] += 1;
                refused_by[e.kind.index()] += 1;
                if let Some(t) = tenant {
                    tally.tenants.refused[t] += 1;
                }
            }
        }
        if i % 256 == 255 {
            progress(i as u64 + 1);
        }
    }
    progress(offered.iter().sum());
    // Every accepted ticket gets its outcome; wait for the stragglers.
    while tally.resolved < accepted {
        drain(&mut pending, &mut tally);
        std::thread::sleep(Duration::from_micros(200));
    }
    rt.shutdown();
    let stats = rt.stats();
    let sla = rt.sla_report();
    let elapsed = tally
        .last_outcome
        .saturating_duration_since(start)
        .max(Duration::from_micros(1));
    let busy = Duration::from_nanos(busy_ns.load(Ordering::Relaxed));

    // Nanoseconds over 1e6, not seconds times 1e3: the division lands on
    // the float nearest the decimal, so the JSON says 0.979, not
    // 0.9790000000000001.
    let ms = |d: Duration| d.as_nanos() as f64 / 1e6;
    let priorities = Priority::ALL
        .into_iter()
        .map(|p| {
            let s = stats.of(p);
            let h = &tally.e2e[p.index()];
            let q = |x: f64| h.value_at_quantile(x) as f64 / 1e3;
            let r = sla.of(p);
            PriorityReport {
                priority: p.as_str().to_owned(),
                offered: offered[p.index()],
                accepted: s.inserted,
                refused: refused[p.index()],
                completed: s.completed,
                expired: s.expired,
                // Set below, once the report knows its starvation bound.
                expired_before_bound: 0,
                cancelled: s.cancelled,
                failed: s.failed,
                shut_down: s.shut_down,
                displaced: s.displaced,
                interrupted: s.interrupted,
                p50_ms: q(0.50),
                p95_ms: q(0.95),
                p99_ms: q(0.99),
                max_ms: h.max() as f64 / 1e3,
                queue_wait_p50_ms: ms(r.queue_wait.p50),
                queue_wait_p95_ms: ms(r.queue_wait.p95),
                queue_wait_p99_ms: ms(r.queue_wait.p99),
                queue_wait_max_ms: ms(r.queue_wait.max),
                slo_p99_ms: ms(r.target.p99),
                slo_timeout_ms: ms(r.target.timeout),
                slo_compliance: r.compliance_total.unwrap_or(1.0),
                p99_met: p99_within(h, s.expired + s.failed, ms(r.target.p99)),
            }
        })
        .collect();
    let total = stats.total();
    let timeline = Timeline {
        window_s: tally.window.as_secs_f64(),
        windows: tally
            .windows
            .iter_mut()
            .map(|w| {
                std::array::from_fn(|p| {
                    let v = &mut w[p];
                    if v.is_empty() {
                        return None;
                    }
                    v.sort_unstable();
                    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
                    Some((at(0.5), at(0.99)))
                })
            })
            .collect(),
    };
    let offered_total: u64 = offered.iter().sum();
    let submit_span = last_due.saturating_duration_since(start);
    let mut report = Report {
        trace: trace.source.clone(),
        policy: policy_name(options.config.ordering).to_owned(),
        shed: options.config.shed,
        speedup: options.speedup,
        offered_rps: if submit_span.is_zero() {
            0.0
        } else {
            offered_total as f64 / submit_span.as_secs_f64()
        },
        offered: offered_total,
        accepted: total.inserted,
        refused: refused.iter().sum(),
        refused_by: SubmitErrorKind::ALL
            .iter()
            .zip(refused_by)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.as_str().to_owned(), n))
            .collect(),
        lost: total.lost(),
        client_unresolved: accepted.saturating_sub(tally.resolved)
            + pending.iter().filter(|p| p.is_some()).count() as u64,
        completed: total.completed,
        elapsed_s: elapsed.as_secs_f64(),
        throughput_rps: total.completed as f64 / elapsed.as_secs_f64(),
        batches: stats.batches,
        mean_batch: stats.batched_requests as f64 / stats.batches.max(1) as f64,
        batch_sizes: BATCH_SIZE_BOUNDS
            .iter()
            .copied()
            .zip(stats.batch_sizes)
            .collect(),
        decision_p50_us: sla.decision.p50.as_secs_f64() * 1e6,
        decision_p99_us: sla.decision.p99.as_secs_f64() * 1e6,
        utilization: (busy.as_secs_f64() / (elapsed.as_secs_f64() * workers as f64)).min(1.0),
        shortfall: stats.capacity_shortfall,
        aging_promotions: stats.aging_promotions,
        max_wait_ms: ms(options.config.max_wait),
        batch_interval_ms: ms(options.config.batching.max_queue_delay)
            + sla
                .per_priority
                .iter()
                .map(|l| ms(l.execution.p99))
                .fold(0.0, f64::max),
        priorities,
        timeline,
        tenants: options
            .tenants
            .map(|m| tally.tenants.lines(&m))
            .unwrap_or_default(),
        quiet_p50_ms: tally.tenants.quiet_percentiles().0,
        quiet_p99_ms: tally.tenants.quiet_percentiles().1,
        jain: 1.0,
        metrics: rt.metrics_text(),
    };
    if !report.tenants.is_empty() {
        let served: Vec<f64> = report
            .tenants
            .iter()
            .map(|t| t.served_tokens as f64)
            .collect();
        let demand: Vec<f64> = report
            .tenants
            .iter()
            .map(|t| t.demand_tokens as f64)
            .collect();
        report.jain = crate::tenants::jain(&served, &demand);
    }
    let bound_ms = report.starvation_bound_ms();
    for (line, lives) in report.priorities.iter_mut().zip(&tally.expired_after) {
        line.expired_before_bound = expired_before(lives, line.expired, bound_ms);
    }
    Ok(report)
}

/// How many of a level's `expired` requests (their lives from submit to
/// `Expired` timed by the client in `lives`) expired before `bound_ms`.
/// The client's count stands only if it saw every expiry the runtime
/// counted; otherwise none is excused.
fn expired_before(lives: &[Duration], expired: u64, bound_ms: f64) -> u64 {
    if lives.len() as u64 != expired {
        return 0;
    }
    lives
        .iter()
        .filter(|d| d.as_secs_f64() * 1e3 < bound_ms)
        .count() as u64
}

/// The intake lane capacity under which accepted work drains within
/// `max_wait` even when arrivals outpace service: the five levels together
/// may hold at most half of what the fleet serves in `max_wait`
/// (`capacity_rps × max_wait / 10` per level, split over `shards`, rounded
/// down to a power of two, at least 16). Beyond it a submit is refused and
/// the request handed back: load shedding at the door instead of an
/// unbounded wait, so the starvation bound holds for whatever was
/// accepted.
///
/// ```
/// use std::time::Duration;
/// let lanes = convoy_cli::replay::wait_bounded_lane_capacity(11_300.0, Duration::from_millis(500), 2);
/// assert_eq!(lanes, 256); // 11,300 × 0.5 / 10 = 565 per level, 282 per shard
/// assert_eq!(convoy_cli::replay::wait_bounded_lane_capacity(0.0, Duration::from_millis(500), 2), 16);
/// ```
pub fn wait_bounded_lane_capacity(capacity_rps: f64, max_wait: Duration, shards: usize) -> usize {
    let per_level = capacity_rps.max(0.0) * max_wait.as_secs_f64() / 10.0;
    let per_shard = (per_level / shards.max(1) as f64).clamp(16.0, (1u64 << 20) as f64) as usize;
    // Round down: the largest power of two not above it.
    1 << (usize::BITS - 1 - per_shard.leading_zeros())
}

/// Measures what the fleet of `config` sustains on this trace's requests:
/// a closed loop that keeps `2 × workers × max_batch_size` requests
/// outstanding (enough for full batches on every worker, never a full
/// queue) for `duration`, cycling through the trace's rows. Returns
/// completed requests per second. `convoy compare` sets its offered load
/// as a multiple of this.
///
/// A row refused for what it is (a cost no worker holds, an input the
/// executor rejects) is skipped, as the replays refuse it too; the rate
/// is of the rows that run. An error when no row can run, or when
/// nothing completes in `duration`: a rate of 0 is no load to scale.
pub fn calibrate<E: Executor<Vec<u32>, Vec<f32>>>(
    trace: &Trace,
    executor: E,
    config: &Config,
    duration: Duration,
    vocab: usize,
) -> Result<f64, ReplayError> {
    if trace.requests.is_empty() {
        return Err(ReplayError::Option {
            option: "--trace",
            reason: "no requests".into(),
        });
    }
    let rt = Runtime::builder()
        .config(config.clone())
        .executor(executor)
        .build()?;
    let h = rt.handle();
    let window = 2 * config.fleet().len().max(1) * config.batching.max_batch_size;
    let mut outstanding = std::collections::VecDeque::with_capacity(window);
    let start = Instant::now();
    let mut completed = 0u64;
    let mut i = 0usize;
    // Rows refused for what they are (too large, invalid), one after
    // another: a whole cycle of them means no row can run at all.
    let mut unfit_run = 0usize;
    while start.elapsed() < duration {
        while outstanding.len() < window {
            let row = &trace.requests[i % trace.requests.len()];
            let r = row_request(&h, i, row, vocab);
            i += 1;
            match h.submit(r) {
                Ok(t) => {
                    unfit_run = 0;
                    outstanding.push_back(t);
                }
                // Load: wait for an outcome, then fill again.
                Err(e)
                    if matches!(
                        e.kind,
                        SubmitErrorKind::QueueFull
                            | SubmitErrorKind::Overloaded
                            | SubmitErrorKind::ShuttingDown
                    ) =>
                {
                    break
                }
                // This row never runs here; the replays refuse it too.
                // Measure the rows that do.
                Err(e) => {
                    unfit_run += 1;
                    if unfit_run >= trace.requests.len() {
                        rt.shutdown_now();
                        return Err(ReplayError::Option {
                            option: "--trace",
                            reason: format!(
                                "{}: no row can run on this fleet (each is refused: {})",
                                trace.source,
                                e.kind.as_str()
                            ),
                        });
                    }
                }
            }
        }
        match outstanding.pop_front() {
            Some(t) => completed += u64::from(t.wait().is_ok()),
            None => std::thread::sleep(Duration::from_micros(100)),
        }
    }
    let elapsed = start.elapsed();
    drop(outstanding); // cancels what has not launched
    rt.shutdown_now();
    if completed == 0 {
        // A rate of 0 would scale the replays to a speed-up of 0.
        return Err(ReplayError::Option {
            option: "--calibrate",
            reason: format!(
                "nothing completed in {:.1} s, so there is no capacity to set the load from",
                elapsed.as_secs_f64()
            ),
        });
    }
    Ok(completed as f64 / elapsed.as_secs_f64())
}

/// The name `ordering.policy` uses ([`OrderingPolicy::as_str`]).
pub fn policy_name(p: OrderingPolicy) -> &'static str {
    p.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(window: Duration) -> Tally {
        Tally::new(Instant::now(), window)
    }

    #[test]
    fn only_expiries_before_the_bound_are_excused() {
        let ms = Duration::from_millis;
        let lives = [ms(1), ms(200), ms(509), ms(510), ms(3000)];
        assert_eq!(expired_before(&lives, 5, 510.0), 3);
        assert_eq!(expired_before(&lives, 5, 5000.0), 5);
        assert_eq!(expired_before(&[], 0, 510.0), 0);
        // The client missed one: excuse none rather than guess.
        assert_eq!(expired_before(&lives, 6, 510.0), 0);
    }

    /// Each part of the compare goal misses on its own, with its reason;
    /// a level with nothing accepted misses nothing.
    #[test]
    fn the_goal_names_each_part_missed() {
        let served = |p: Priority| PriorityReport {
            priority: p.as_str().into(),
            accepted: 100,
            completed: 100,
            p99_met: true,
            slo_compliance: 1.0,
            queue_wait_max_ms: 100.0,
            ..Default::default()
        };
        let fine = Report {
            max_wait_ms: 500.0,
            batch_interval_ms: 20.0,
            priorities: Priority::ALL.map(served).to_vec(),
            ..Default::default()
        };
        assert_eq!(
            fine.goal(),
            Goal {
                met: true,
                missed: vec![],
                excused: vec![]
            }
        );
        let missed = |change: &dyn Fn(&mut Report)| {
            let mut r = fine.clone();
            change(&mut r);
            let goal = r.goal();
            assert!(!goal.met);
            goal.missed
        };
        assert_eq!(
            missed(&|r| r.priorities[0].slo_compliance = 0.998),
            ["critical 99.80% within timeout < 99.9%"]
        );
        assert_eq!(
            missed(&|r| {
                let l = &mut r.priorities[1];
                (l.p99_met, l.p99_ms, l.slo_p99_ms, l.expired) = (false, 90.0, 100.0, 3);
            }),
            ["high p99 over 100 ms counting its 3 expired or failed (p99 of those served 90.0 ms)"]
        );
        assert_eq!(
            missed(&|r| {
                let l = &mut r.priorities[1];
                (l.p99_met, l.p99_ms, l.slo_p99_ms, l.failed) = (false, 120.0, 100.0, 2);
            }),
            ["high p99 120.0 ms > 100 (2 expired or failed)"]
        );
        assert_eq!(
            missed(&|r| {
                r.priorities[3].completed = 97;
                r.priorities[3].expired = 3;
            }),
            ["low 3 of 100 accepted not served"]
        );
        // Expired by their own deadline before the bound: not starved.
        assert_eq!(
            missed(&|r| {
                r.priorities[3].completed = 95;
                r.priorities[3].expired = 4;
                r.priorities[3].expired_before_bound = 3;
                r.priorities[3].failed = 1;
            }),
            ["low 2 of 100 accepted not served"]
        );
        let mut excused = fine.clone();
        excused.priorities[4].completed = 98;
        excused.priorities[4].expired = 2;
        excused.priorities[4].expired_before_bound = 2;
        assert_eq!(
            excused.goal(),
            Goal {
                met: true,
                missed: vec![],
                excused: vec![
                    "background: 2 expired by their own deadline within the bound".into()
                ],
            }
        );
        assert_eq!(
            missed(&|r| r.priorities[4].queue_wait_max_ms = 521.0),
            ["background waited 521 ms > 520"]
        );
        assert_eq!(missed(&|r| r.lost = 1), ["lost 1 (unresolved tickets 0)"]);
        // Normal is not part of the goal; an empty Critical has no p99.
        let mut r = fine.clone();
        r.priorities[2].queue_wait_max_ms = 10_000.0;
        r.priorities[0] = PriorityReport {
            priority: "critical".into(),
            p99_met: false,
            slo_compliance: 0.0,
            ..Default::default()
        };
        assert!(r.goal().met, "{:?}", r.goal());
    }

    #[test]
    fn a_window_too_fine_for_the_run_is_widened_and_keeps_every_sample() {
        let mut t = tally(Duration::from_nanos(1));
        let at = |ms: u64| t.start + Duration::from_millis(ms);
        let (early, late) = (at(1), at(2_000));
        let submitted = t.start;
        t.record(Priority::High, submitted, early, Ok(vec![]));
        t.record(Priority::Low, submitted, late, Ok(vec![]));
        t.record(Priority::Low, submitted, late, Err(Failure::Expired));
        assert!(
            t.windows.len() <= MAX_WINDOWS,
            "{} windows",
            t.windows.len()
        );
        // 2 s over at most 4096 windows: 2^19 ns (524 µs) is the first
        // power-of-two width that fits.
        assert_eq!(t.window, Duration::from_nanos(1 << 19));
        let kept: usize = t.windows.iter().flatten().map(Vec::len).sum();
        assert_eq!(kept, 2, "both completions, not the failure");
        assert_eq!(
            t.windows[1][Priority::High.index()].len(),
            1,
            "1 ms in window 1"
        );
        assert_eq!(t.windows.last().unwrap()[Priority::Low.index()].len(), 1);
    }

    #[test]
    fn widening_merges_neighbours_in_order() {
        let mut t = tally(Duration::from_millis(1));
        t.windows = (0..5u32)
            .map(|i| std::array::from_fn(|p| if p == 0 { vec![i] } else { vec![] }))
            .collect();
        t.widen();
        assert_eq!(t.window, Duration::from_millis(2));
        let firsts: Vec<Vec<u32>> = t.windows.iter().map(|w| w[0].clone()).collect();
        assert_eq!(firsts, [vec![0, 1], vec![2, 3], vec![4]]);
    }
}
