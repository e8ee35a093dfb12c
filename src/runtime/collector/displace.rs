//! Preemption of staged work: when the most urgent waiting request can be
//! placed nowhere, the collector recalls a batch a worker holds but has
//! not started, puts its requests back with their arrival times, and
//! forms again, so the urgent request takes the recalled batch's place.
//!
//! # The rule (`[preemption]`, reloadable)
//!
//! A staged batch is recalled for a blocked request at level `u` only if
//! * preemption is on and the runtime is not closing;
//! * every request of the batch is at least `min_gap` levels less urgent
//!   than `u` (the batch's most urgent request decides);
//! * none of its requests has been displaced `max_displacements` times;
//! * its worker is up, and releasing the batch would leave that worker
//!   room for the blocked request (evict only what the urgent work needs:
//!   one batch per formed batch, never one whose room would not serve);
//! * the worker's ring has room for the batch that takes its place.
//!
//! Of those, the least urgent batch goes, and among equals the one staged
//! last (it would have started last). Who wins between the worker
//! starting the batch and the collector recalling it is decided by the
//! batch's [`TakeOnce`](crate::runtime::handoff::TakeOnce) cell: the
//! loser finds it empty. So a batch never runs twice, and its capacity is
//! released once: by the collector here, or by its worker after it ran.
//!
//! # The bound
//!
//! A recalled request keeps its arrival, so its age goes on and rule 1 of
//! the ordering (`plan/order.rs`) still promotes it at `max_wait`. Each
//! displacement costs it at most the batch interval it had been staged
//! for, and it is displaced at most `max_displacements` times, so it
//! starts within `max_wait` plus `1 + max_displacements` batch intervals.

use std::collections::VecDeque;

use super::Collector;
use crate::config::Capacity;
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
                let eligible = !s.cell.is_taken()
                    && rule.may_displace(urgent, s.top)
                    && s.displaced < rule.max_displacements
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
        let list = &mut self.staged[worker];
        let Some(staged) = list[pos].cell.take() else {
            // Its worker started it since the check: it stays tracked, to
            // be released like any started batch.
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
            "staged batch displaced: a more urgent request could be placed nowhere"
        );
        true
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
            let eligible = s.cell.is_taken()
                && !s.stopping
                && !s.twins
                && rule.may_displace(urgent, s.top)
                && s.displaced < rule.max_displacements
                && fits_without(&c.spec.capacity, &reserved, &s.reserved, &cost);
            if eligible && pick.is_none_or(|(_, top)| s.top > top) {
                pick = Some((c.index, s.top));
            }
        }
        let Some((worker, _)) = pick else {
            return;
        };
        let (Some(Some(link)), Some(s)) = (
            self.workers.get(worker),
            self.staged.get_mut(worker).and_then(VecDeque::front_mut),
        ) else {
            return;
        };
        s.stopping = true;
        link.stop.ask(s.seq);
        tracing::debug!(
            worker,
            batch = s.seq,
            tokens = s.reserved.tokens,
            for_level = %urgent,
            "running batch asked to stop at its next boundary: a more urgent request could be placed nowhere"
        );
    }
}
