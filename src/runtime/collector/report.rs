//! What the collector tells the outside while it runs: the ledger's
//! reservations for the metrics, and a periodic summary log line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Collector;

impl<I: Send + 'static, O: Send + 'static> Collector<I, O> {
    /// Every `SUMMARY_EVERY`, an info line with the queues, outcomes and
    /// promotions since start.
    pub(super) fn log_summary(&mut self, now: Instant) {
        const SUMMARY_EVERY: Duration = Duration::from_secs(10);
        if now.saturating_duration_since(self.summary_logged) < SUMMARY_EVERY
            || !tracing::enabled!(tracing::Level::INFO)
        {
            return;
        }
        self.summary_logged = now;
        let stats = self.shared.counters.snapshot(|| self.intake.stats());
        let total = stats.total();
        tracing::info!(
            queued = total.queue_depth,
            inserted = total.inserted,
            completed = total.completed,
            expired = total.expired,
            cancelled = total.cancelled,
            failed = total.failed,
            batches = stats.batches,
            aging_promotions = stats.aging_promotions,
            capacity_shortfall = stats.capacity_shortfall,
            "convoy summary"
        );
    }

    /// Publishes the ledger for metrics, at most every 100 ms and only when
    /// it changed (one small allocation then, none per request).
    pub(super) fn publish_reserved(&mut self, now: Instant) {
        if now.saturating_duration_since(self.reserved_published) < Duration::from_millis(100) {
            return;
        }
        let ledger = self.planner.ledger();
        let current = self.shared.reserved.load();
        let changed = current.len() != ledger.workers()
            || (0..ledger.workers()).any(|w| current[w] != ledger.reserved(w));
        if changed {
            let snapshot = (0..ledger.workers()).map(|w| ledger.reserved(w)).collect();
            self.shared.reserved.store(Arc::new(snapshot));
        }
        self.reserved_published = now;
    }
}
