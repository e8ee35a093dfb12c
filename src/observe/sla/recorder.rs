//! One thread's SLA recorder: records into its own shard with no atomics,
//! no lock and no allocation per request, and publishes a copy every
//! 100 ms, every 4,096 records, when a report asks, and when it goes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::board::*;
use super::shard::*;
use super::Violation;
use crate::observe::refresh::Refresh;
use crate::priority::Priority;

/// One thread's recorder. Single-owner: `&mut self` everywhere.
pub(crate) struct SlaRecorder {
    pub(super) data: SlaShard,
    pub(super) slot: Arc<Slot>,
    /// Where this recorder leaves its final copy when it goes.
    pub(super) registry: Arc<Mutex<Registry>>,
    pub(super) refresh: Arc<Refresh>,
    /// The newest refresh generation this recorder answered.
    pub(super) answered: u64,
    pub(super) epoch: Instant,
    pub(super) unpublished: u32,
    pub(super) last_publish: Instant,
}

impl SlaRecorder {
    /// The refresh asks and the generation this recorder last answered,
    /// for the collector's sleep re-check (`control::Watch`): a report's
    /// ring that lands before the collector announces its sleep is lost
    /// (see `doorbell.rs`), and the report then waited out the sleep, up to
    /// 50 ms.
    pub fn asks(&self) -> (&Refresh, u64) {
        (&self.refresh, self.answered)
    }

    /// Collector: a request launched after waiting `wait`.
    pub fn queue_wait(&mut self, p: Priority, wait: Duration) {
        self.data.hist(p, WAIT).saturating_record(micros(wait));
        self.unpublished += 1;
    }

    /// Collector: one batch was decided in `took`.
    pub fn decision(&mut self, took: Duration) {
        let ns = crate::clock::nanos(took).max(1);
        self.data
            .decision
            .get_or_insert_with(decision_histogram)
            .saturating_record(ns);
        self.unpublished += 1;
    }

    /// Collector: a request expired after waiting `waited`.
    pub fn expired(&mut self, p: Priority, waited: Duration, target: Duration, now: Instant) {
        let at = now.saturating_duration_since(self.epoch);
        self.data.count(p, at.as_secs(), true);
        self.violation(Violation {
            priority: p,
            latency: waited,
            target,
            at,
            expired: true,
        });
        self.unpublished += 1;
    }

    /// Worker: a request completed `e2e` after submit, in a batch that ran
    /// for `exec`.
    pub fn completed(
        &mut self,
        p: Priority,
        exec: Duration,
        e2e: Duration,
        timeout: Duration,
        now: Instant,
    ) {
        self.data.hist(p, EXEC).saturating_record(micros(exec));
        self.data.hist(p, E2E).saturating_record(micros(e2e));
        let at = now.saturating_duration_since(self.epoch);
        let violated = e2e > timeout;
        self.data.count(p, at.as_secs(), violated);
        if violated {
            self.violation(Violation {
                priority: p,
                latency: e2e,
                target: timeout,
                at,
                expired: false,
            });
        }
        self.unpublished += 1;
    }

    pub(super) fn violation(&mut self, v: Violation) {
        if self.data.recent.len() == RECENT {
            self.data.recent.pop_front();
        }
        self.data.recent.push_back(v);
    }

    /// Publishes if a report asked for a fresh copy (and answers it), or
    /// if enough was recorded or enough time passed. Called at each of the
    /// owning thread's loop points.
    pub fn maybe_publish(&mut self, now: Instant) {
        // Field by field, so the closure can write what `publish` writes
        // while `answers` is borrowed beside it.
        let answered = self
            .slot
            .answers
            .answer_if_asked(&self.refresh, &mut self.answered, || {
                if self.unpublished > 0 {
                    publish_copy(&self.slot, &self.data);
                    self.unpublished = 0;
                    self.last_publish = now;
                }
            });
        if !answered
            && (self.unpublished >= PUBLISH_EVERY
                || (self.unpublished > 0
                    && now.saturating_duration_since(self.last_publish) >= PUBLISH_AFTER))
        {
            self.publish(now);
        }
    }

    /// Runs `call`, which may run long (a batch), marked busy: a report
    /// meanwhile waits for this recorder only briefly.
    pub fn busy<R>(&mut self, call: impl FnOnce() -> R) -> R {
        self.slot.answers.set_busy(true);
        let r = call();
        self.slot.answers.set_busy(false);
        r
    }

    /// Publishes a copy now (one allocation per publish, never per request).
    pub fn publish(&mut self, now: Instant) {
        publish_copy(&self.slot, &self.data);
        self.unpublished = 0;
        self.last_publish = now;
    }
}

impl Drop for SlaRecorder {
    fn drop(&mut self) {
        // The final copy, folded into what gone recorders left and the slot
        // unlisted, in one step under the lock: a report after shutdown (or
        // after this worker was removed) is exact. Retired only then, still
        // under the lock: a report that stops waiting on seeing "retired"
        // (Acquire, pairing with `retire`'s Release) then takes the lock
        // and finds the fold. Retiring before the lock let a report take
        // the lock between the two and read the slot's stale copy (a lost
        // count, found by a soak).
        let _registry = self.slot.answers.retire_after(|| {
            let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            registry.slots.retain(|s| !Arc::ptr_eq(s, &self.slot));
            match &mut registry.gone {
                Some(gone) => gone.fold(&self.data),
                None => registry.gone = Some(self.data.clone()),
            }
            registry
        });
    }
}
