//! Preemption: urgent work takes the place of less urgent work a worker
//! holds. A batch handed to a worker but not started (staged) is recalled
//! and its requests wait again with their arrival times; a running batch
//! of an executor that declares a re-run safe is asked to stop at its
//! next boundary (`device/stop.rs`), and its unfinished requests wait
//! again the same way.
//!
//! # When (`[preemption]`, reloadable)
//!
//! Work at level `u` may displace a batch only if preemption is on, every
//! request of the batch is at least `min_gap` levels less urgent than `u`
//! (the batch's most urgent request decides), and none of its requests
//! has been displaced or stopped `max_displacements` times. Then:
//!
//! * **a batch staged behind others** (`make_way`): once a batch is
//!   staged on a worker, the staged batches ahead of it that it may
//!   displace are recalled, and the running one asked to stop, so it
//!   starts next;
//! * **urgent work placed nowhere** (`displace`): when the planner could
//!   place its head on no worker, one staged batch is recalled to make
//!   room: the least urgent, the last staged among equals, on a worker up
//!   whose room would then take the head (evict only what the urgent work
//!   needs), whose ring has room for the batch that takes its place;
//!   failing that, a running batch is asked to stop (`interrupt`);
//! * **due at once** (`preempt_due`): a head that may displace work some
//!   worker holds launches without waiting out the batching delay.
//!
//! A batch carries its head's level and those less than the gap below it,
//! never work its head could displace (`Planner::set_band`):
//! urgent callers wait for their own short batch, and no running batch of
//! urgent work shields bulk work from the next urgent request.
//!
//! Who wins between the worker starting a staged batch and the collector
//! recalling it is decided by the batch's
//! [`TakeOnce`](crate::runtime::handoff::TakeOnce) cell: the loser finds
//! it empty. So a batch never runs twice, and its capacity is released
//! once: by the collector here, or by its worker after it ran (a stopped
//! batch's worker releases it at once).
//!
//! # The bound
//!
//! A displaced request keeps its arrival, so its age goes on and rule 1 of
//! the ordering (`plan/order.rs`) still promotes it at `max_wait`. Each
//! displacement costs it at most one batch interval (the urgent batch that
//! took its place), and it is displaced at most `max_displacements` times,
//! so it starts within `max_wait` plus `1 + max_displacements` batch
//! intervals. `tests/preemption.rs` checks the cap on the order of
//! execution (`a_request_is_displaced_at_most_max_displacements_times`),
//! and `convoy compare --preemption` the bound under load.

use std::collections::VecDeque;

use super::Collector;
use crate::config::{Capacity, Preemption};
use crate::intake::Admission;
use crate::observe::stats::Preempted;
use crate::plan::placement::Candidate;
use crate::priority::Priority;
use crate::runtime::StagedCell;

/// A batch the collector pushed to a worker, tracked until the worker
/// releases it: while its cell is full it may still be recalled.
pub(super) struct StagedRef<I, O> {
    pub(super) cell: StagedCell<I, O>,
    /// Its number, which the worker's stop ticket names to stop it.
    pub(super) seq: u64,
    /// The most urgent level among its requests.
    pub(super) top: Priority,
    /// The most times any of its requests has been displaced.
    pub(super) displaced: u8,
    /// Holds deduplicated twins (never stopped for preemption: a twin
    /// has no input of its own to run again).
    pub(super) twins: bool,
    pub(super) reserved: Capacity,
    /// Asked to stop while running; asked once.
    pub(super) stopping: bool,
}

impl<I, O> StagedRef<I, O> {
    /// Whether work at `urgent` may displace this batch under `rule`: the
    /// gap to its most urgent request, and the cap on its requests.
    fn gives_way_to(&self, rule: &Preemption, urgent: Priority) -> bool {
        rule.may_displace(urgent, self.top) && self.displaced < rule.max_displacements
    }

    /// Whether it may be recalled for work at `urgent`: not started yet,
    /// and it gives way.
    fn recallable_for(&self, rule: &Preemption, urgent: Priority) -> bool {
        !self.cell.is_taken() && self.gives_way_to(rule, urgent)
    }

    /// Whether it may be asked to stop for work at `urgent`: running, not
    /// asked yet, free of twins, and it gives way, where the executor
    /// declares a re-run safe (`rerun`).
    fn stoppable_for(&self, rule: &Preemption, urgent: Priority, rerun: bool) -> bool {
        rerun
            && self.cell.is_taken()
            && !self.stopping
            && !self.twins
            && self.gives_way_to(rule, urgent)
    }
}

/// Whether `cost` fits `capacity` once `leaving` of `reserved` is given back.
fn fits_without(
    capacity: &Capacity,
    reserved: &Capacity,
    leaving: &Capacity,
    cost: &Capacity,
) -> bool {
    let slots = u64::from(reserved.slots.saturating_sub(leaving.slots)) + u64::from(cost.slots);
    let tokens =
        u128::from(reserved.tokens.saturating_sub(leaving.tokens)) + u128::from(cost.tokens);
    let bytes = u128::from(reserved.bytes.saturating_sub(leaving.bytes)) + u128::from(cost.bytes);
    slots <= u64::from(capacity.slots)
        && tokens <= u128::from(capacity.tokens)
        && bytes <= u128::from(capacity.bytes)
}

impl<I: Send + 'static, O: Send + 'static> Collector<I, O> {
    /// Tracks a batch just pushed onto `worker`'s ring.
    pub(super) fn track_staged(&mut self, worker: usize, staged: StagedRef<I, O>) {
        if self.staged.len() <= worker {
            self.staged.resize_with(worker + 1, VecDeque::new);
        }
        self.staged[worker].push_back(staged);
    }

    /// A release came from `worker`: its oldest started batch is done. A
    /// worker starts and finishes its batches in ring order, and recalled
    /// ones left the list when they were recalled, so that is the front.
    pub(super) fn untrack_released(&mut self, worker: usize) {
        let done = self.staged.get_mut(worker).and_then(VecDeque::pop_front);
        debug_assert!(
            done.as_ref().is_some_and(|s| s.cell.is_taken()),
            "a release matches a started batch at the front"
        );
    }

    /// Recalls one staged batch to make room for the request the planner
    /// could not place (see the module docs); `true` if it did, and the
    /// caller forms again.
    pub(super) fn displace(&mut self, candidates: &[Candidate<'_>]) -> bool {
        let rule = self.applied.preemption;
        if !rule.enabled {
            return false;
        }
        let Some((urgent, cost)) = self.planner.blocked() else {
            return false;
        };
        let ledger = self.planner.ledger();
        // (worker, position, its top level)
        let mut pick: Option<(usize, usize, Priority)> = None;
        for c in candidates.iter().filter(|c| c.up) {
            let (Some(list), Some(Some(link))) =
                (self.staged.get(c.index), self.workers.get(c.index))
            else {
                continue;
            };
            if link.jobs.len() >= link.jobs.capacity() {
                continue;
            }
            let reserved = ledger.reserved(c.index);
            for (pos, s) in list.iter().enumerate() {
                let eligible = s.recallable_for(&rule, urgent)
                    && fits_without(&c.spec.capacity, &reserved, &s.reserved, &cost);
                // Least urgent first; among equals the later (`>=`).
                if eligible && pick.is_none_or(|(_, _, top)| s.top >= top) {
                    pick = Some((c.index, pos, s.top));
                }
            }
        }
        let Some((worker, pos, _)) = pick else {
            self.interrupt(candidates, urgent, cost);
            return false;
        };
        self.recall(worker, pos, urgent)
    }

    /// Recalls the staged batch at `pos` of `worker`'s list for work at
    /// `urgent`: `false` if its worker started it first (it then stays
    /// tracked, to be released like any started batch).
    fn recall(&mut self, worker: usize, pos: usize, urgent: Priority) -> bool {
        let list = &mut self.staged[worker];
        let Some(staged) = list[pos].cell.take() else {
            return false;
        };
        list.remove(pos);
        let over = self.planner.release(worker, &staged.reserved);
        debug_assert!(over.is_ok(), "{over:?}");
        let mut counts = [0u64; Priority::COUNT];
        let size = staged.jobs.len();
        for (mut job, meta) in staged.jobs {
            job.displaced = job.displaced.saturating_add(1);
            counts[job.priority.index()] += 1;
            for f in &job.followers {
                counts[f.priority.index()] += 1;
            }
            // Its room in the intake went back at the first launch.
            let admission = Admission::none(job.priority);
            self.planner.requeue((job, admission), meta);
        }
        for p in Priority::ALL {
            self.shared
                .counters
                .preempted(p, Preempted::Displaced, counts[p.index()]);
        }
        tracing::debug!(
            worker,
            size,
            tokens = staged.reserved.tokens,
            for_level = %urgent,
            displaced = ?counts,
            "staged batch displaced for more urgent work"
        );
        true
    }

    /// Whether the next batch is due now because its head may take the
    /// place of less urgent work some worker holds (`batch_due`): urgent
    /// work then starts without waiting out the batching delay for
    /// company it would only be slowed by.
    pub(super) fn preempt_due(&mut self, now_ns: u64) -> bool {
        if !self.applied.preemption.enabled {
            return false;
        }
        // Cheap first: the gap must leave room below the most urgent level.
        let Some(head) = self.planner.head_level(now_ns) else {
            return false;
        };
        if head.index() + usize::from(self.applied.preemption.min_gap) >= Priority::COUNT {
            return false;
        }
        self.held.iter().any(|&w| self.would_make_way(w, head))
    }

    /// Whether a batch whose most urgent request is at `top`, staged on
    /// `worker` now, would displace anything there (`make_way`).
    pub(super) fn would_make_way(&self, worker: usize, top: Priority) -> bool {
        let rule = self.applied.preemption;
        let Some(list) = self.staged.get(worker).filter(|_| rule.enabled) else {
            return false;
        };
        list.iter().enumerate().any(|(pos, s)| {
            s.recallable_for(&rule, top) || pos == 0 && s.stoppable_for(&rule, top, self.rerun)
        })
    }

    /// A batch whose most urgent request is at `top` was just staged on
    /// `worker`: what that worker holds ahead of it and may be displaced
    /// for it goes (see the module docs), so that it starts next: staged
    /// batches are recalled, and the running one, if the executor declares
    /// a re-run safe, is asked to stop at its next boundary.
    pub(super) fn make_way(&mut self, worker: usize, top: Priority) {
        let rule = self.applied.preemption;
        if !rule.enabled {
            return;
        }
        let Some(list) = self.staged.get(worker) else {
            return;
        };
        // The new batch is the last; look at those ahead of it, last
        // first, so positions stay valid as entries leave.
        let ahead = list.len().saturating_sub(1);
        for pos in (0..ahead).rev() {
            let s = &self.staged[worker][pos];
            if s.cell.is_taken() {
                // Started: the running batch (or a lane's in flight).
                if pos == 0 {
                    self.ask_to_stop(worker, top);
                }
                continue;
            }
            if s.recallable_for(&rule, top) {
                self.recall(worker, pos, top);
            }
        }
    }

    /// Asks the batch `worker` runs (the front of its list) to stop at its
    /// next boundary for work at `urgent`, under the rule, if the executor
    /// declares a re-run safe. Asked once per batch.
    fn ask_to_stop(&mut self, worker: usize, urgent: Priority) {
        let rule = self.applied.preemption;
        let (Some(Some(link)), Some(s)) = (
            self.workers.get(worker),
            self.staged.get_mut(worker).and_then(VecDeque::front_mut),
        ) else {
            return;
        };
        if !s.stoppable_for(&rule, urgent, self.rerun) {
            return;
        }
        s.stopping = true;
        link.stop.ask(s.seq);
        tracing::debug!(
            worker,
            batch = s.seq,
            tokens = s.reserved.tokens,
            for_level = %urgent,
            "running batch asked to stop at its next boundary for more urgent work"
        );
    }

    /// With no staged batch to recall, asks one running batch to stop at
    /// its next boundary, under the same rule, if the executor declares a
    /// re-run safe (`Interruptible::Rerun`). Its worker then sends its
    /// capacity back with the unfinished requests, which wait again, and
    /// the blocked request is placed on the next pass. The oldest batch a
    /// worker runs is the front of its list; a batch is asked once.
    fn interrupt(&mut self, candidates: &[Candidate<'_>], urgent: Priority, cost: Capacity) {
        if !self.rerun {
            return;
        }
        let rule = self.applied.preemption;
        let ledger = self.planner.ledger();
        let mut pick: Option<(usize, Priority)> = None;
        for c in candidates.iter().filter(|c| c.up) {
            let Some(s) = self.staged.get(c.index).and_then(VecDeque::front) else {
                continue;
            };
            let reserved = ledger.reserved(c.index);
            let eligible = s.stoppable_for(&rule, urgent, self.rerun)
                && fits_without(&c.spec.capacity, &reserved, &s.reserved, &cost);
            if eligible && pick.is_none_or(|(_, top)| s.top > top) {
                pick = Some((c.index, s.top));
            }
        }
        if let Some((worker, _)) = pick {
            self.ask_to_stop(worker, urgent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(slots: u32, tokens: u64, bytes: u64) -> Capacity {
        Capacity {
            slots,
            tokens,
            bytes,
        }
    }

    /// Recalling a batch frees its room, and only a room that then holds
    /// the blocked request counts, on every resource.
    #[test]
    fn a_batch_serves_only_if_its_room_takes_the_request() {
        let worker = cap(4, 100, 1_000);
        let held = cap(4, 100, 1_000);
        let batch = cap(2, 50, 500);
        // Exactly the room the batch leaves.
        assert!(fits_without(&worker, &held, &batch, &cap(2, 50, 500)));
        // One over on any resource.
        assert!(!fits_without(&worker, &held, &batch, &cap(3, 50, 500)));
        assert!(!fits_without(&worker, &held, &batch, &cap(2, 51, 500)));
        assert!(!fits_without(&worker, &held, &batch, &cap(2, 50, 501)));
        // What stays held counts: with room left over, more fits.
        let lighter = cap(3, 60, 600);
        assert!(fits_without(&worker, &lighter, &batch, &cap(3, 90, 900)));
        assert!(!fits_without(&worker, &lighter, &batch, &cap(3, 91, 900)));
        assert!(!fits_without(&worker, &lighter, &batch, &cap(4, 90, 900)));
        assert!(!fits_without(&worker, &lighter, &batch, &cap(3, 90, 901)));
        // A request larger than the whole worker never fits.
        assert!(!fits_without(
            &worker,
            &cap(0, 0, 0),
            &cap(0, 0, 0),
            &cap(5, 1, 1)
        ));
    }
}
