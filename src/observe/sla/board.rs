//! The publication protocol: each recorder publishes a copy of its shard
//! through an `ArcSwap` slot; a report asks every live recorder for a fresh
//! copy (`refresh.rs`), waits (bounded) and merges the slots with what gone
//! recorders left behind.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::recorder::SlaRecorder;
use super::shard::*;
use super::{PrioritySla, SlaReport, Violation};
use crate::config::SloTarget;
use crate::observe::refresh::{Answers, Refresh};
use crate::priority::Priority;

/// The longest a report waits for a recorder that is not busy in a batch:
/// time for the OS to run a thread that was woken, however loaded the
/// machine, yet a bound should one never get there.
pub(super) const REFRESH_CAP: Duration = Duration::from_secs(1);

/// One recorder's latest copy and its answers to refresh asks.
pub(super) struct Slot {
    pub(super) copy: ArcSwap<SlaShard>,
    pub(super) answers: Answers,
}

/// The recorders a report merges: the live ones' slots, and what every
/// recorder that has gone (a removed worker's) left behind, folded into one
/// shard. Folding keeps a runtime that adds and removes workers for days at
/// the size of its live fleet: each recorder holds some hundreds of KiB of
/// histograms, and listing the slots of gone ones would grow forever.
#[derive(Default)]
pub(super) struct Registry {
    pub(super) slots: Vec<Arc<Slot>>,
    pub(super) gone: Option<SlaShard>,
}

/// Publishes `data` as `slot`'s copy (one allocation per publish, never
/// per request).
pub(super) fn publish_copy(slot: &Slot, data: &SlaShard) {
    slot.copy.store(Arc::new(data.clone()));
}

/// Where recorders publish; the report reads every slot.
#[derive(Default)]
pub(crate) struct SlaBoard {
    /// Control path: a recorder registers once and leaves once; a report
    /// merges under the lock, so a leaving recorder is counted exactly once
    /// (in its slot or in `gone`).
    pub(super) registry: Arc<Mutex<Registry>>,
    /// Asks for fresh copies (see `refresh.rs`).
    pub(super) refresh: Arc<Refresh>,
}

impl SlaBoard {
    pub fn recorder(&self, epoch: Instant) -> SlaRecorder {
        let slot = Arc::new(Slot {
            copy: ArcSwap::from_pointee(SlaShard::new()),
            answers: Answers::new(),
        });
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .slots
            .push(slot.clone());
        SlaRecorder {
            data: SlaShard::new(),
            slot,
            registry: self.registry.clone(),
            refresh: self.refresh.clone(),
            answered: 0,
            epoch,
            unpublished: 0,
            last_publish: Instant::now(),
        }
    }

    /// Asks every recorder for a fresh copy, calls `wake` so that idle
    /// recorder threads get to a loop point, and waits until each live
    /// recorder has answered, except those busy in a batch once `within`
    /// has passed (such a recorder answers after its batch), and at most
    /// `REFRESH_CAP`. A recorder between batches answers at its next loop
    /// point, so waiting for it costs only the time its thread takes to be
    /// run; giving up on it after `within` once lost requests a caller had
    /// already seen complete, on a loaded machine. Control path: a bounded
    /// spin, then short sleeps.
    pub fn refresh(&self, wake: impl FnOnce(), within: Duration) {
        let generation = self.refresh.ask();
        wake();
        let slots = self.listed();
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            // Done when every recorder answered; after `within`, when every
            // one left is busy in a batch; after `REFRESH_CAP`, in any case
            // (a thread the OS has not run for that long).
            let waited = start.elapsed();
            let brief = waited >= within;
            if waited >= REFRESH_CAP
                || slots
                    .iter()
                    .all(|s| s.answers.has_answered(generation) || (brief && s.answers.is_busy()))
            {
                return;
            }
            if spins < crate::sync::SPIN_LIMIT {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
    }

    /// The registered recorders' slots (control path: the lock is held
    /// only to copy the list).
    pub(super) fn listed(&self) -> Vec<Arc<Slot>> {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .slots
            .clone()
    }

    /// How many recorders are listed (live ones; gone ones are folded).
    #[cfg(test)]
    pub(super) fn listed_len(&self) -> usize {
        self.listed().len()
    }

    /// Every recorder's latest copy, and what gone ones left, merged.
    pub(super) fn merged(&self) -> (SlaShard, Vec<Violation>) {
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let mut merged = SlaShard::new();
        if let Some(gone) = &registry.gone {
            merged.add(gone);
        }
        for slot in &registry.slots {
            merged.add(&slot.copy.load());
        }
        drop(registry);
        let mut recent: Vec<Violation> = merged.recent.drain(..).collect();
        recent.sort_by_key(|v| v.at);
        (merged, recent)
    }

    /// Cumulative Prometheus buckets (upper bounds in seconds) of end-to-end
    /// latency (`e2e`) or queue wait, one per priority.
    pub fn prometheus_buckets(&self, e2e: bool, bounds_s: &[f64]) -> Vec<BucketedLatency> {
        let (merged, _) = self.merged();
        let kind = if e2e { E2E } else { WAIT };
        Priority::ALL
            .into_iter()
            .map(|p| bucketed(merged.read(p, kind), bounds_s, 1e6))
            .collect()
    }

    /// Cumulative Prometheus buckets (upper bounds in seconds) of the
    /// decision time per batch.
    pub fn decision_buckets(&self, bounds_s: &[f64]) -> BucketedLatency {
        let (merged, _) = self.merged();
        bucketed(merged.decision.as_ref(), bounds_s, 1e9)
    }

    pub fn report(&self, targets: &[SloTarget; Priority::COUNT], now: Duration) -> SlaReport {
        let (merged, recent) = self.merged();
        let now_sec = now.as_secs();
        let window = |p: usize, secs: u64| {
            let (n, v) = merged
                .buckets
                .iter()
                .filter(|(s, _)| *s != u64::MAX && *s + secs > now_sec && *s <= now_sec)
                .fold((0u64, 0u64), |(n, v), (_, c)| (n + c[p].0, v + c[p].1));
            (n > 0).then(|| 1.0 - v as f64 / n as f64)
        };
        let per_priority = Priority::ALL
            .into_iter()
            .map(|p| {
                let pct = |kind: usize| percentiles(merged.read(p, kind), Duration::from_micros);
                let target = targets[p.index()];
                let e2e = pct(E2E);
                let (n, v) = merged.totals[p.index()];
                PrioritySla {
                    priority: p,
                    target,
                    queue_wait: pct(WAIT),
                    execution: pct(EXEC),
                    end_to_end: e2e,
                    p95_met: e2e.count == 0 || e2e.p95 <= target.p95,
                    p99_met: e2e.count == 0 || e2e.p99 <= target.p99,
                    violations: v,
                    compliance_1m: window(p.index(), 60),
                    compliance_5m: window(p.index(), WINDOW_SECS as u64),
                    compliance_total: (n > 0).then(|| 1.0 - v as f64 / n as f64),
                    recent_violations: recent.iter().filter(|x| x.priority == p).copied().collect(),
                }
            })
            .collect();
        SlaReport {
            per_priority,
            decision: percentiles(merged.decision.as_ref(), Duration::from_nanos),
            // The runtime adds the tenants (`Runtime::sla_report`).
            tenants: Vec::new(),
            other_tenants: super::TenantSla::default(),
            tenants_tracked: 0,
        }
    }
}
