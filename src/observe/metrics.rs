//! The Prometheus text exposition, through the `prometheus-client` crate.
//!
//! Every scrape builds a snapshot of the lock-free counters, the SLA
//! histograms and the published ledger, and encodes it with a
//! `prometheus-client` `Collector`. A scrape is a control path, so it may
//! allocate. Names follow Prometheus conventions: a `convoy_` prefix, base
//! units (`_seconds`, `_bytes`), and `_total` on counters.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `convoy_queue_depth` | gauge | `priority` |
//! | `convoy_queue_capacity` | gauge | `priority` (the bound of each level) |
//! | `convoy_requests_inserted_total` | counter | `priority` |
//! | `convoy_requests_rejected_full_total` | counter | `priority` |
//! | `convoy_requests_rejected_shed_total` | counter | `priority` (refused while the level was shed, `ordering.shed`) |
//! | `convoy_level_shed` | gauge | `priority` (1 while submits at the level are shed) |
//! | `convoy_requests_ended_total` | counter | `priority`, `outcome` (completed, expired, cancelled, failed, shut_down) |
//! | `convoy_batches_total` | counter | |
//! | `convoy_batch_size` | histogram | |
//! | `convoy_decision_seconds` | histogram | |
//! | `convoy_batch_limit` | gauge | |
//! | `convoy_batch_limit_decreases_total` | counter | |
//! | `convoy_requests_in_runtime_max` | gauge | |
//! | `convoy_request_latency_seconds` | histogram | `priority` (end to end) |
//! | `convoy_queue_wait_seconds` | histogram | `priority` |
//! | `convoy_slo_compliance_ratio` | gauge | `priority`, `window` (1m, 5m, total) |
//! | `convoy_slo_violations_total` | counter | `priority` |
//! | `convoy_slo_target_seconds` | gauge | `priority`, `objective` (p95, p99) |
//! | `convoy_worker_capacity` | gauge | `worker`, `resource` (slots, tokens, bytes) |
//! | `convoy_worker_reserved` | gauge | `worker`, `resource` |
//! | `convoy_worker_up` | gauge | `worker` |
//! | `convoy_capacity_shortfall_total` | counter | |
//! | `convoy_placements_total` | counter | `reason` |
//! | `convoy_batch_launches_total` | counter | `cause` (full, delay, deadline, idle, preferred, closing) |
//! | `convoy_aging_promotions_total` | counter | |
//! | `convoy_preemptions_total` | counter | `priority` (the preempted request's), `kind` (displaced, interrupted) |
//! | `convoy_adaptive_switches_total` | counter | |
//! | `convoy_deduplicated_total` | counter | |
//! | `convoy_tenant_requests_launched_total` | counter | `tenant` |
//! | `convoy_tenant_served_tokens_total` | counter | `tenant` |
//! | `convoy_tenant_refused_total` | counter | `tenant` (refused for its quota) |
//! | `convoy_tenant_requests_completed_total` | counter | `tenant` |
//! | `convoy_tenant_queued` | gauge | `tenant` |
//! | `convoy_tenant_latency_p50_seconds`, `convoy_tenant_latency_p99_seconds` | gauge | `tenant` |
//! | `convoy_tenants_tracked` | gauge | |
//!
//! The `tenant` label names the `tenants.top_n` most active tenants
//! (requests launched, refused and queued; default 20) and `other` for the
//! rest together, so a flood of tenant ids cannot grow the exposition. A
//! tenant's series appear when it enters the named set and end when it
//! leaves it (its counts then go on under `other`); read them with
//! `rate()`, which takes such a reset in its stride.
//!
//! The `worker` label is the worker's name. Workers removed at run time
//! leave the exposition (their series end), so a fleet that scales up and
//! down does not grow it. Names should be unique; where two listed workers
//! share one, each of them is labelled `name#index` (its fleet index), so
//! that no two series carry the same labels, which a scraper would drop.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::config::{Capacity, LaunchCause, PlacementReason};
use crate::observe::sla::{BucketedLatency, SlaReport};
use crate::observe::stats::{Preempted, Stats, BATCH_SIZE_BOUNDS};
use crate::priority::Priority;

/// Bucket bounds of the latency histograms, in seconds.
pub const LATENCY_BOUNDS_S: &[f64] = &[
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Bucket bounds of the decision time histogram, in seconds.
pub const DECISION_BOUNDS_S: &[f64] = &[
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.005,
    0.01,
];

/// One worker as a scrape sees it.
#[derive(Debug, Clone)]
pub(crate) struct WorkerSnapshot {
    /// Its fleet index, which tells apart workers of the same name.
    pub index: usize,
    pub name: String,
    pub capacity: Capacity,
    pub reserved: Capacity,
    pub up: bool,
}

/// Everything one scrape encodes.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub stats: Stats,
    pub sla: SlaReport,
    /// Per priority: (sum in s, count, cumulative buckets).
    pub e2e_buckets: Vec<BucketedLatency>,
    pub wait_buckets: Vec<BucketedLatency>,
    pub decision: BucketedLatency,
    pub workers: Vec<WorkerSnapshot>,
    /// The shed levels, a bit per level index (`shed.rs`).
    pub shed: usize,
}

/// The `worker` label of each listed worker: its name, or `name#index`
/// where the name is shared (see the module docs).
fn worker_labels(workers: &[WorkerSnapshot]) -> Vec<String> {
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for w in workers {
        *seen.entry(w.name.as_str()).or_default() += 1;
    }
    workers
        .iter()
        .map(|w| {
            if seen[w.name.as_str()] > 1 {
                escaped(&format!("{}#{}", w.name, w.index))
            } else {
                escaped(&w.name)
            }
        })
        .collect()
}

/// Renders a snapshot as Prometheus text (format 0.0.4).
pub(crate) fn render(snapshot: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("encoding into a String cannot fail");
    openmetrics_to_prometheus(&out)
}

/// `prometheus-client` writes OpenMetrics, where a counter family's HELP and
/// TYPE omit the `_total` its samples carry and the text ends in `# EOF`.
/// The classic text format (0.0.4), which Prometheus scrapes by default and
/// `promtool check metrics` checks, names the family as the samples are
/// named and has no `# EOF`. This rewrites those two things only.
fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + counters.len() * 16);
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match rewritten {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn reason_label(r: PlacementReason) -> &'static str {
    match r {
        PlacementReason::LeastLoaded => "least_loaded",
        PlacementReason::FastestForUrgent => "fastest_for_urgent",
        PlacementReason::SloUrgent => "slo_urgent",
        PlacementReason::Cheapest => "cheapest",
        PlacementReason::CheapestMeetingDeadline => "cheapest_meeting_deadline",
    }
}

type Labels = Vec<(&'static str, String)>;

/// A label value as the text format writes it: backslash, double quote and
/// line feed escaped. The encoder writes values as given, and a tenant id
/// comes from a client: one holding a quote or a line break would end the
/// sample line early and break the whole exposition for the scraper.
fn escaped(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A cumulative histogram (`samples ≤ bound`, without `+Inf`) in the
/// form `prometheus-client`'s encoder takes: the samples of each bucket
/// alone (it sums them into the cumulative `_bucket` lines itself) and a
/// last bucket, `f64::MAX`, that it writes as `+Inf`. Handing it the
/// cumulative counts would sum them twice: every bucket past the first
/// non-empty one would read more samples than `_count`.
fn per_bucket(h: &BucketedLatency) -> Vec<(f64, u64)> {
    let mut below = 0;
    let mut out: Vec<(f64, u64)> = h
        .buckets
        .iter()
        .map(|&(bound, cumulative)| {
            let n = cumulative.saturating_sub(below);
            below = below.max(cumulative);
            (bound, n)
        })
        .collect();
    out.push((f64::MAX, h.count.saturating_sub(below)));
    out
}

fn counter(m: &mut MetricEncoder<'_>, labels: &Labels, v: u64) -> fmt::Result {
    if labels.is_empty() {
        // No family: an empty one would print `name{}`.
        return m.encode_counter::<(), u64, f64>(&v, None);
    }
    m.encode_family(labels)?
        .encode_counter::<(), u64, f64>(&v, None)
}

fn gauge(m: &mut MetricEncoder<'_>, labels: &Labels, v: f64) -> fmt::Result {
    m.encode_family(labels)?.encode_gauge(&v)
}

fn prio(p: Priority) -> Labels {
    vec![("priority", p.as_str().to_owned())]
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> fmt::Result {
        let s = &self.stats;
        let none: Labels = Vec::new();

        let mut m = e.encode_descriptor(
            "convoy_queue_depth",
            "Requests accepted and not yet launched, expired or cancelled",
            None,
            MetricType::Gauge,
        )?;
        for p in Priority::ALL {
            gauge(&mut m, &prio(p), s.of(p).queue_depth as f64)?;
        }
        // Beside the depth, so `depth / capacity` (how near a level is to
        // refusing work) is one PromQL division.
        let mut m = e.encode_descriptor(
            "convoy_queue_capacity",
            "Accepted, unlaunched requests a level may hold before submits are refused",
            None,
            MetricType::Gauge,
        )?;
        for p in Priority::ALL {
            gauge(&mut m, &prio(p), s.queue_capacity as f64)?;
        }
        let mut m = e.encode_descriptor(
            "convoy_requests_inserted",
            "Requests accepted at submit",
            None,
            MetricType::Counter,
        )?;
        for p in Priority::ALL {
            counter(&mut m, &prio(p), s.of(p).inserted)?;
        }
        let mut m = e.encode_descriptor(
            "convoy_requests_rejected_full",
            "Requests refused because their level was full (handed back)",
            None,
            MetricType::Counter,
        )?;
        for p in Priority::ALL {
            counter(&mut m, &prio(p), s.of(p).rejected_full)?;
        }
        let mut m = e.encode_descriptor(
            "convoy_requests_rejected_shed",
            "Requests refused because their level was shed while the queue ran late (handed back)",
            None,
            MetricType::Counter,
        )?;
        for p in Priority::ALL {
            counter(&mut m, &prio(p), s.of(p).rejected_shed)?;
        }
        let mut m = e.encode_descriptor(
            "convoy_level_shed",
            "1 while submits at the level are refused because the queue runs late",
            None,
            MetricType::Gauge,
        )?;
        for p in Priority::ALL {
            let shed = self.shed & (1 << p.index()) != 0;
            gauge(&mut m, &prio(p), if shed { 1.0 } else { 0.0 })?;
        }
        let mut m = e.encode_descriptor(
            "convoy_requests_ended",
            "Accepted requests by the one outcome each ended in",
            None,
            MetricType::Counter,
        )?;
        for p in Priority::ALL {
            let ps = s.of(p);
            for (outcome, v) in [
                ("completed", ps.completed),
                ("expired", ps.expired),
                ("cancelled", ps.cancelled),
                ("failed", ps.failed),
                ("shut_down", ps.shut_down),
            ] {
                let mut l = prio(p);
                l.push(("outcome", outcome.to_owned()));
                counter(&mut m, &l, v)?;
            }
        }
        let mut m = e.encode_descriptor(
            "convoy_batches",
            "Batches launched",
            None,
            MetricType::Counter,
        )?;
        counter(&mut m, &none, s.batches)?;

        let mut m = e.encode_descriptor(
            "convoy_batch_limit",
            "Batch size limit in force (adaptive sizing moves it)",
            None,
            MetricType::Gauge,
        )?;
        m.encode_gauge(&(s.batch_limit as f64))?;
        let mut m = e.encode_descriptor(
            "convoy_batch_limit_decreases",
            "Times adaptive sizing halved the batch limit",
            None,
            MetricType::Counter,
        )?;
        counter(&mut m, &none, s.batch_limit_decreases)?;
        let mut m = e.encode_descriptor(
            "convoy_requests_in_runtime_max",
            "The most requests waiting or running at once",
            None,
            MetricType::Gauge,
        )?;
        m.encode_gauge(&(s.most_in_runtime as f64))?;

        let mut m = e.encode_descriptor(
            "convoy_batch_size",
            "Requests per launched batch",
            None,
            MetricType::Histogram,
        )?;
        // Batch-size counts are per bucket already, the form the encoder
        // takes; the last bound (`u64::MAX`) is `+Inf`.
        let buckets: Vec<(f64, u64)> = BATCH_SIZE_BOUNDS
            .iter()
            .zip(s.batch_sizes)
            .map(|(&b, n)| (if b == u64::MAX { f64::MAX } else { b as f64 }, n))
            .collect();
        m.encode_histogram::<()>(s.batched_requests as f64, s.batches, &buckets, None)?;

        let mut m = e.encode_descriptor(
            "convoy_decision_seconds",
            "Collector time to form, place and hand off one batch",
            None,
            MetricType::Histogram,
        )?;
        let b = per_bucket(&self.decision);
        m.encode_histogram::<()>(self.decision.sum_s, self.decision.count, &b, None)?;

        for (name, help, all) in [
            (
                "convoy_request_latency_seconds",
                "End-to-end latency of completed requests",
                &self.e2e_buckets,
            ),
            (
                "convoy_queue_wait_seconds",
                "Time from submit to launch",
                &self.wait_buckets,
            ),
        ] {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (p, h) in Priority::ALL.into_iter().zip(all) {
                let b = per_bucket(h);
                let labels = prio(p);
                m.encode_family(&labels)?
                    .encode_histogram::<()>(h.sum_s, h.count, &b, None)?;
            }
        }

        let mut m = e.encode_descriptor(
            "convoy_slo_compliance_ratio",
            "Share of finished requests within their SLO timeout, per window",
            None,
            MetricType::Gauge,
        )?;
        for p in Priority::ALL {
            let sla = self.sla.of(p);
            for (window, v) in [
                ("1m", sla.compliance_1m),
                ("5m", sla.compliance_5m),
                ("total", sla.compliance_total),
            ] {
                if let Some(v) = v {
                    let mut l = prio(p);
                    l.push(("window", window.to_owned()));
                    gauge(&mut m, &l, v)?;
                }
            }
        }
        let mut m = e.encode_descriptor(
            "convoy_slo_violations",
            "Requests that missed their SLO timeout or expired",
            None,
            MetricType::Counter,
        )?;
        for p in Priority::ALL {
            counter(&mut m, &prio(p), self.sla.of(p).violations)?;
        }
        let mut m = e.encode_descriptor(
            "convoy_slo_target_seconds",
            "Configured latency objectives",
            None,
            MetricType::Gauge,
        )?;
        for p in Priority::ALL {
            let t = self.sla.of(p).target;
            for (q, d) in [("p95", t.p95), ("p99", t.p99)] {
                let mut l = prio(p);
                l.push(("objective", q.to_owned()));
                gauge(&mut m, &l, d.as_secs_f64())?;
            }
        }

        let worker_labels = worker_labels(&self.workers);
        for (name, help, pick) in [
            (
                "convoy_worker_capacity",
                "What a worker can hold at once",
                true,
            ),
            (
                "convoy_worker_reserved",
                "What the ledger holds on a worker",
                false,
            ),
        ] {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (w, label) in self.workers.iter().zip(&worker_labels) {
                let c = if pick { w.capacity } else { w.reserved };
                for (resource, v) in [
                    ("slots", f64::from(c.slots)),
                    ("tokens", c.tokens as f64),
                    ("bytes", c.bytes as f64),
                ] {
                    let l: Labels =
                        vec![("worker", label.clone()), ("resource", resource.to_owned())];
                    gauge(&mut m, &l, v)?;
                }
            }
        }
        let mut m = e.encode_descriptor(
            "convoy_worker_up",
            "1 when a worker takes new batches",
            None,
            MetricType::Gauge,
        )?;
        for (w, label) in self.workers.iter().zip(&worker_labels) {
            gauge(
                &mut m,
                &vec![("worker", label.clone())],
                if w.up { 1.0 } else { 0.0 },
            )?;
        }

        let mut m = e.encode_descriptor(
            "convoy_capacity_shortfall",
            "Episodes in which the most urgent request fitted no worker",
            None,
            MetricType::Counter,
        )?;
        counter(&mut m, &none, s.capacity_shortfall)?;
        let mut m = e.encode_descriptor(
            "convoy_placements",
            "Batches placed, by reason",
            None,
            MetricType::Counter,
        )?;
        for r in PlacementReason::ALL {
            counter(
                &mut m,
                &vec![("reason", reason_label(r).to_owned())],
                s.placed(r),
            )?;
        }
        let mut m = e.encode_descriptor(
            "convoy_batch_launches",
            "Batches launched, by what made the collector launch them",
            None,
            MetricType::Counter,
        )?;
        for c in LaunchCause::ALL {
            counter(
                &mut m,
                &vec![("cause", c.as_str().to_owned())],
                s.launched_by(c),
            )?;
        }
        let mut m = e.encode_descriptor(
            "convoy_aging_promotions",
            "Requests picked by the aging rule ahead of more urgent levels",
            None,
            MetricType::Counter,
        )?;
        counter(&mut m, &none, s.aging_promotions)?;
        let mut m = e.encode_descriptor(
            "convoy_preemptions",
            "Requests taken back for more urgent work: their batch recalled before it started (displaced) or stopped at a boundary (interrupted)",
            None,
            MetricType::Counter,
        )?;
        for p in Priority::ALL {
            for kind in Preempted::ALL {
                let n = match kind {
                    Preempted::Displaced => s.of(p).displaced,
                    Preempted::Interrupted => s.of(p).interrupted,
                };
                let labels = vec![
                    ("priority", p.as_str().to_owned()),
                    ("kind", kind.as_str().to_owned()),
                ];
                counter(&mut m, &labels, n)?;
            }
        }
        let mut m = e.encode_descriptor(
            "convoy_deduplicated",
            "Requests merged into a waiting twin by dedup key",
            None,
            MetricType::Counter,
        )?;
        counter(&mut m, &none, s.deduplicated)?;
        let mut m = e.encode_descriptor(
            "convoy_adaptive_switches",
            "Mode switches of the Adaptive placement policy",
            None,
            MetricType::Counter,
        )?;
        counter(&mut m, &none, s.adaptive_switches)?;
        self.encode_tenants(&mut e)
    }
}

impl Snapshot {
    /// The per-tenant families: one series per named tenant and `other`,
    /// so the label set is at most `tenants.top_n + 1` whatever ids
    /// clients send.
    fn encode_tenants(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let sla = &self.sla;
        let tenants: Vec<(Labels, &crate::observe::sla::TenantSla)> = sla
            .tenants
            .iter()
            .chain(std::iter::once(&sla.other_tenants))
            .map(|t| (vec![("tenant", escaped(&t.tenant))], t))
            .collect();
        type Field = fn(&crate::observe::sla::TenantSla) -> u64;
        let counters: [(&str, &str, Field); 4] = [
            (
                "convoy_tenant_requests_launched",
                "Requests of the tenant launched",
                |t| t.launched,
            ),
            (
                "convoy_tenant_served_tokens",
                "Tokens of the tenant's requests launched (corrected by reported costs)",
                |t| t.served_tokens,
            ),
            (
                "convoy_tenant_refused",
                "Requests of the tenant refused for its quota (handed back)",
                |t| t.refused,
            ),
            (
                "convoy_tenant_requests_completed",
                "Requests of the tenant that ended after launch",
                |t| t.completed,
            ),
        ];
        for (name, help, field) in counters {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (l, t) in &tenants {
                counter(&mut m, l, field(t))?;
            }
        }
        let mut m = e.encode_descriptor(
            "convoy_tenant_queued",
            "Requests of the tenant accepted and not yet launched",
            None,
            MetricType::Gauge,
        )?;
        for (l, t) in &tenants {
            gauge(&mut m, l, t.queued as f64)?;
        }
        for (name, help, q) in [
            (
                "convoy_tenant_latency_p50_seconds",
                "Median end-to-end latency of the tenant's requests",
                0,
            ),
            (
                "convoy_tenant_latency_p99_seconds",
                "99th percentile end-to-end latency of the tenant's requests",
                1,
            ),
        ] {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (l, t) in &tenants {
                let v = if q == 0 { t.latency_p50 } else { t.latency_p99 };
                gauge(&mut m, l, v.as_secs_f64())?;
            }
        }
        let mut m = e.encode_descriptor(
            "convoy_tenants_tracked",
            "Tenants held in the tenant table",
            None,
            MetricType::Gauge,
        )?;
        m.encode_gauge(&(sla.tenants_tracked as f64))?;
        Ok(())
    }
}
