//! What other threads changed between passes: reloaded knobs, workers
//! added or removed, and the capacity finished batches give back.

use std::sync::Arc;

use super::Collector;
use crate::intake::Admission;

impl<I: Send + 'static, O: Send + 'static> Collector<I, O> {
    /// Takes up knobs a `reload_config` stored since the last pass. One
    /// pointer compare per pass when nothing changed.
    pub(super) fn apply_reload(&mut self) {
        let knobs = self.shared.knobs.load_full();
        if Arc::ptr_eq(&knobs, &self.applied) {
            return;
        }
        let b = knobs.batching;
        self.planner.set_limits(b, knobs.max_wait);
        self.planner.set_ordering(knobs.ordering);
        let p = knobs.preemption;
        self.planner.set_band(p.enabled.then_some(p.min_gap));
        if knobs.fairness != self.applied.fairness || knobs.tenants != self.applied.tenants {
            self.planner
                .set_fairness(knobs.fairness, knobs.tenants.weights());
        }
        self.planner.placer_mut().set_policy(
            knobs.placement,
            knobs.urgent_slack,
            b.max_batch_size,
            b.max_batch_size.saturating_mul(8),
        );
        self.applied = knobs;
    }

    /// Takes links of added workers (the one place the collector locks the
    /// control mutex, and only after `Shared::changed` said so), then looks at
    /// removed workers.
    pub(super) fn apply_fleet_changes(&mut self) {
        let added: Vec<_> = self
            .new_links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for link in added {
            self.planner.add_worker();
            self.held.push(self.workers.len());
            self.workers.push(Some(link));
        }
        self.retiring = true;
    }

    /// Lets go of removed workers with nothing in flight (their thread then
    /// exits); `retiring` stays set while one still has work, so the next
    /// passes look again without touching the control path.
    pub(super) fn let_go_of_retired(&mut self) {
        let fleet = self.shared.fleet.load();
        let mut waiting_on_retired = false;
        let workers = &mut self.workers;
        let ledger = self.planner.ledger();
        self.held.retain(|&i| {
            if !fleet.workers.get(i).is_some_and(|w| w.retired) {
                return true;
            }
            if ledger.reserved(i).slots > 0 {
                waiting_on_retired = true;
                return true;
            }
            if let Some(link) = workers[i].take() {
                let thread = link.thread.clone();
                drop(link);
                thread.unpark();
            }
            false
        });
        self.retiring = waiting_on_retired;
    }

    pub(super) fn absorb_releases(&mut self) {
        let fleet = self.shared.fleet.load();
        while let Some(r) = self.releases.pop() {
            // A release is the exact total a batch reserved, sent once by the
            // worker that ran it; an over-release would be a convoy bug.
            let over = self.planner.release(r.worker, &r.amount);
            debug_assert!(over.is_ok(), "{over:?}");
            self.untrack_released(r.worker);
            // A batch stopped for more urgent work: its unfinished
            // requests wait again, their intake room long given back.
            for (job, meta) in r.requeue {
                let admission = Admission::none(job.priority);
                self.planner.requeue((job, admission), meta);
            }
            for (tenant, level, charged, real) in r.corrections {
                self.planner
                    .correct_charge(tenant.as_ref(), level, charged, real);
            }
            if let Some(w) = fleet.workers.get(r.worker) {
                self.planner
                    .placer_mut()
                    .observe_batch(r.took, w.spec.speed);
                self.drain_rate
                    .observe(r.took, r.amount.tokens, w.spec.speed);
            }
            // The batch's size in the limit's terms: one slot per request
            // it launched (deduplicated followers ride free).
            self.planner
                .observe_batch_time(r.took, r.amount.slots as usize);
        }
        self.shared
            .counters
            .set_batch_limit(self.planner.batch_limit(), self.planner.limit_decreases());
    }
}
