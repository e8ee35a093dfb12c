//! Arrivals: requests drained from the intake into the waiting set, with
//! their order key; a request whose dedup key has a group waiting joins
//! that group instead (see `plan/dedup.rs`).

use super::{Collector, Job};
use crate::clock::nanos;
use crate::config::DeadlineAction;
use crate::intake::Admission;
use crate::plan::dedup::Follower;
use crate::plan::order::Meta;

impl<I: Send + 'static, O: Send + 'static> Collector<I, O> {
    pub(super) fn drain_intake(&mut self, now_ns: u64) {
        self.intake.drain(usize::MAX, &mut self.drained);
        let mut drained = std::mem::take(&mut self.drained);
        let delay = nanos(self.applied.batching.max_queue_delay);
        for d in drained.drain(..) {
            let mut job = d.item;
            self.seq += 1;
            let level = job.priority;
            job.arrival_ns = self.shared.ns_since_epoch(job.submitted).min(now_ns);
            self.pace.observe(job.arrival_ns, delay);
            job.expire_at = if self.applied.deadline_action[level.index()] == DeadlineAction::Reject
            {
                job.deadline_ns
            } else {
                u64::MAX
            };
            let meta = Meta {
                level,
                arrival: job.arrival_ns,
                deadline: job.deadline_ns,
                expire_at: job.expire_at,
                front: d.front,
                seq: self.seq,
                tokens: u64::from(job.tokens),
                bytes: job.bytes,
                tenant: self
                    .planner
                    .tenant_index(job.hold.as_ref().and_then(|h| h.named())),
            };
            match job.dedup().filter(|_| self.cloner.is_some()) {
                Some(k) => self.join_or_start_group(k, job, d.admission, meta),
                None => {
                    self.planner.insert((job, d.admission), meta);
                }
            }
        }
        self.drained = drained;
    }

    /// Merges `job` into the waiting group of key `k`, or makes it one.
    pub(super) fn join_or_start_group(
        &mut self,
        k: u64,
        job: Job<I, O>,
        admission: Admission,
        meta: Meta,
    ) {
        let existing = self.dedup.get(k).and_then(|key| self.planner.remove(key));
        let entry = match existing {
            Some(((mut head, head_admission), head_meta)) => {
                let since = job.since();
                head.followers.push(Follower {
                    completer: job.completer,
                    priority: job.priority,
                    submitted: job.submitted,
                    since,
                    arrival: job.arrival_ns,
                    deadline: job.deadline_ns,
                    expire_at: job.expire_at,
                    admission,
                    hold: job.hold,
                });
                self.shared.counters.deduplicated();
                let meta = head.group_meta(Meta {
                    front: head_meta.front || meta.front,
                    ..head_meta
                });
                ((head, head_admission), meta)
            }
            None => ((job, admission), meta),
        };
        let key = self.planner.insert(entry.0, entry.1);
        self.dedup.insert(k, key);
    }

    /// A group left the waiting set: its key is free again.
    pub(super) fn forget_group(&mut self, job: &Job<I, O>) {
        if let Some(k) = job.dedup() {
            self.dedup.remove(k);
        }
    }
}
