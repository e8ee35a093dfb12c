//! Launching: whether a batch is due, forming it through the planner,
//! handing it to its worker, and the shed levels that follow from what
//! still waits.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use std::sync::Arc;

use super::displace::StagedRef;
use super::{Collector, Entry};
use crate::clock::nanos;
use crate::config::{BatchDelay, Capacity, LaunchCause};
use crate::intake::ring;
use crate::intake::shed::levels_to_shed;
use crate::intake::Admission;
use crate::observe::stats::Ended;
use crate::outcome::Failure;
use crate::plan::placement::Candidate;
use crate::plan::planner::{batch_size_now, Formed, Plan};
use crate::priority::Priority;
use crate::request::Cost;
use crate::runtime::handoff::TakeOnce;
use crate::runtime::worker::{fail_batch, open_batch};
use crate::runtime::{Health, Staged};

/// The workers up that hold nothing, the workers up, and the requests
/// launched and unfinished on the fleet: what the adaptive queue delay
/// needs of the ledger, read in one pass over it.
#[derive(Debug, Clone, Copy)]
pub(super) struct FleetLoad {
    idle: usize,
    up: usize,
    launched: usize,
}

impl FleetLoad {
    /// Itself when some worker up holds nothing, `None` when every worker
    /// up is busy: what `batch_due` takes as `idle`.
    fn if_idle(self) -> Option<Self> {
        (self.idle > 0).then_some(self)
    }
}

impl<I: Send + 'static, O: Send + 'static> Collector<I, O> {
    /// How many requests a batch formed now should take, or `None` while
    /// the batch is not due: see `planner::batch_size_now` (forced by the
    /// queue delay, a near deadline or shutdown, full by any limit
    /// (`Planner::is_full`, given `most`, the largest worker up), or a
    /// preferred size reachable).
    ///
    /// A near deadline: a waiting request that expires within one queue
    /// delay. The delay is how long a request may wait for company, and
    /// one that would expire first has no such time to spend (with a 2 ms
    /// delay, a request with a 1 ms deadline on an idle worker expired
    /// waiting for a batch that was not due).
    ///
    /// Under `batching.delay = "adaptive"` a partial batch is also due when
    /// a worker up holds nothing (`idle`: then the requests launched and
    /// unfinished on the others, and how many workers hold nothing) and
    /// nothing more is coming (`plan/pace.rs`): waiting out the delay would
    /// only idle that worker. Not when the loop holds a full batch for
    /// every worker up (its peak is at least the batch limit times the
    /// workers): then batches fill by themselves, and a partial launch would
    /// only leave the rest of a round behind, holding up the clients that
    /// wait for all of theirs. When it is a closed loop back at its level,
    /// the batch takes an even share of what waits per idle worker, so
    /// that the round runs on every worker that has nothing to do rather
    /// than on one while the others look on (the next launch takes the
    /// next share): its clients are answered sooner, and a closed loop
    /// sends as fast as it is answered. (On the quiet rule alone, which an
    /// open stream's lull can meet, the batch takes what waits: there a
    /// split would only make batches smaller.)
    pub(super) fn batch_due(
        &mut self,
        now_ns: u64,
        closing: bool,
        most: Option<Capacity>,
        idle: Option<FleetLoad>,
    ) -> Option<(usize, LaunchCause)> {
        let waiting = self.planner.len();
        if waiting == 0 {
            return None;
        }
        let delay = nanos(self.applied.batching.max_queue_delay);
        let adaptive = self.applied.batching.delay == BatchDelay::Adaptive;
        let cause = if closing {
            Some(LaunchCause::Closing)
        } else if self.planner.is_full(most) {
            Some(LaunchCause::Full)
        } else if self
            .planner
            .oldest_arrival()
            .is_some_and(|a| now_ns.saturating_sub(a) >= delay)
        {
            Some(LaunchCause::Delay)
        } else if self
            .planner
            .next_deadline()
            .is_some_and(|d| d.saturating_sub(now_ns) <= delay)
        {
            Some(LaunchCause::Deadline)
        } else if self.preempt_due(now_ns) {
            Some(LaunchCause::Preempt)
        } else if adaptive
            && idle.is_some_and(|i| {
                self.pace.peak() < self.planner.batch_limit().saturating_mul(i.up)
                    && self.pace.nothing_more(waiting + i.launched, now_ns)
            })
        {
            Some(LaunchCause::Idle)
        } else {
            None
        };
        let limit = self.planner.batch_limit();
        let mut size = batch_size_now(
            waiting,
            limit,
            cause.is_some(),
            self.applied.batching.preferred_batch_sizes.as_slice(),
        )?;
        if let (Some(LaunchCause::Idle), Some(i)) = (cause, idle) {
            if self.pace.at_level(waiting + i.launched) {
                size = size.min(waiting.div_ceil(i.idle.max(1)));
            }
        }
        let cause = cause.unwrap_or(if waiting >= limit {
            LaunchCause::Full
        } else {
            LaunchCause::Preferred
        });
        Some((size, cause))
    }

    /// How many workers up hold nothing (each would start a batch launched
    /// now at once, rather than queue it behind another), how many are up,
    /// and the requests launched and unfinished on all of them: one pass
    /// over the ledger for all three.
    fn fleet_load(&self, candidates: &[Candidate<'_>]) -> FleetLoad {
        let ledger = self.planner.ledger();
        let (mut idle, mut up) = (0, 0);
        let mut launched = 0u64;
        for c in candidates {
            let slots = ledger.reserved(c.index).slots;
            idle += usize::from(c.up && slots == 0);
            up += usize::from(c.up);
            launched += u64::from(slots);
        }
        FleetLoad {
            idle,
            up,
            launched: usize::try_from(launched).unwrap_or(usize::MAX),
        }
    }

    pub(super) fn launch(&mut self, now_ns: u64, closing: bool) {
        // Again here, after the drain: a request drained this pass was
        // submitted after any reload that returned before it, so it is
        // batched under the new limits.
        self.apply_reload();
        let fleet = self.shared.fleet.load_full();
        // Only workers whose link the collector holds: one added a moment ago
        // is in the snapshot before its link arrives, and one removed and let
        // go is in it for good (indices stay stable for `remove_worker`).
        let candidates: Vec<Candidate<'_>> = self
            .held
            .iter()
            .filter_map(|&index| {
                let w = fleet.workers.get(index)?;
                Some(Candidate {
                    index,
                    spec: &w.spec,
                    up: w.health == Health::Up,
                })
            })
            .collect();
        self.speed_up = candidates
            .iter()
            .filter(|c| c.up)
            .map(|c| c.spec.speed)
            .sum();
        let urgent_slack = nanos(self.planner.placer_mut().urgent_slack);
        let urgent_waiting = self
            .planner
            .next_deadline()
            .is_some_and(|d| d.saturating_sub(now_ns) < urgent_slack);
        let waiting = self.planner.len();
        let placer = self.planner.placer_mut();
        placer.update_load(waiting, urgent_waiting);
        let switches = placer.switches().0;
        self.shared.counters.set_adaptive_switches(switches);

        let mut abandoned = Vec::new();
        let mut short_now = false;
        self.stalled = false;
        // The most any worker up could hold, per resource: a batch that
        // reaches it is full however long it waits. None up: only the
        // batch limits count.
        let most = Some(fleet.max).filter(|m| m.slots > 0);
        // The requests in the runtime, for the adaptive delay's peak.
        let load = self.fleet_load(&candidates);
        let in_runtime = self.planner.len().saturating_add(load.launched);
        self.pace.note_load(in_runtime, now_ns);
        if in_runtime as u64 > self.most_in_runtime {
            self.most_in_runtime = in_runtime as u64;
            self.shared
                .counters
                .set_most_in_runtime(self.most_in_runtime);
        }
        let mut idle = load.if_idle();
        while let Some((size, cause)) = self.batch_due(now_ns, closing, most, idle) {
            let deciding = Instant::now();
            // `stalled`: nothing launches until a batch finishes (or a
            // worker comes), so the sleep waits for that and not for the
            // queue delay, which has passed.
            let (formed, shortfall, stalled) =
                match self.planner.form(now_ns, &candidates, &mut abandoned, size) {
                    Plan::Batch { formed, shortfall } => (Some(formed), shortfall, false),
                    Plan::Stalled { shortfall } => (None, Some(shortfall), true),
                    Plan::Held => (None, None, true),
                    Plan::Empty => (None, None, false),
                };
            for (k, key) in self.planner.take_moved() {
                self.dedup.insert(k, key);
            }
            // Urgent work placed nowhere may take a staged batch's place
            // (`displace.rs`); then form again, and no shortfall is told.
            if formed.is_none() && !closing && self.displace(&candidates) {
                continue;
            }
            if let Some(cost) = shortfall {
                // One signal per episode: consecutive passes that meet a
                // request fitting no worker count once.
                if !self.short_last_pass && !short_now {
                    self.shared.counters.shortfall();
                    if let Some(f) = &self.on_shortfall {
                        let cost = Cost {
                            tokens: u32::try_from(cost.tokens).unwrap_or(u32::MAX),
                            bytes: cost.bytes,
                        };
                        // A panicking hook must not take the collector (and
                        // with it every waiting request) down with it.
                        if catch_unwind(AssertUnwindSafe(|| f(cost))).is_err() {
                            tracing::warn!("on_capacity_shortfall callback panicked; ignored");
                        }
                    }
                }
                short_now = true;
            }
            let Some(formed) = formed else {
                self.stalled = stalled;
                // Holding back for a fuller batch neither starts nor ends
                // a shortfall episode: the room it keeps is a fragment's,
                // and an overload that alternates between the two would
                // otherwise signal hundreds of times a second.
                short_now |= stalled && shortfall.is_none() && self.short_last_pass;
                break;
            };
            let Some(formed) = self.ring_room(formed) else {
                // Its worker's ring is full of cells it has not popped yet
                // (recalled ones among them): wait for the worker.
                self.stalled = true;
                break;
            };
            self.shared.counters.launch(cause);
            self.launch_formed(formed, deciding);
            idle = self.fleet_load(&candidates).if_idle();
        }
        self.idle = idle.is_some();
        self.short_last_pass = short_now;
        self.end_unlaunched(abandoned, Failure::Cancelled, Ended::Cancelled);
    }

    /// After the launches, what still waits says how late the queue runs;
    /// publishes the levels submit should refuse (`shed.rs`). None while
    /// closing (the gate refuses everything) or with `ordering.shed` off.
    pub(super) fn shed(&mut self, now_ns: u64, closing: bool) {
        let knobs = &self.applied;
        let mask = match self.planner.oldest_arrival() {
            Some(a) if knobs.shed && !closing => {
                let late = Duration::from_nanos(
                    now_ns
                        .saturating_sub(a)
                        .saturating_sub(nanos(knobs.batching.max_queue_delay)),
                );
                let drain = self
                    .drain_rate
                    .drain(self.planner.waiting_tokens(), self.speed_up)
                    .unwrap_or_default();
                levels_to_shed(late.max(drain), knobs.max_wait, &knobs.shed_at)
            }
            _ => 0,
        };
        self.shared.shedding.set(mask);
    }

    /// The batch back if its worker's ring has room for it; else it is
    /// undone (its reservation released, its requests waiting again with
    /// their order and room) and `None`. Each live batch holds a slot, so
    /// only the empty cells of recalled batches, which the worker pops
    /// once the batch it runs ends, can fill a ring sized at two cells a
    /// slot.
    fn ring_room(&mut self, formed: Formed<Entry<I, O>>) -> Option<Formed<Entry<I, O>>> {
        let link = self.workers[formed.worker]
            .as_ref()
            .expect("placement only offers workers whose link is held");
        if link.jobs.len() < link.jobs.capacity() {
            return Some(formed);
        }
        let undone = self.planner.release(formed.worker, &formed.reserved);
        debug_assert!(undone.is_ok(), "{undone:?}");
        for (item, meta) in formed.items {
            self.planner.requeue(item, meta);
        }
        for (k, key) in self.planner.take_moved() {
            self.dedup.insert(k, key);
        }
        None
    }

    /// Hands a formed batch to its worker; the decision begun at `deciding`
    /// is timed up to the hand-off. The requests go whole, in a take-once
    /// cell the collector keeps a handle on while the batch is staged
    /// (`displace.rs`); the worker opens it when it starts it
    /// (`worker::open_batch`).
    pub(super) fn launch_formed(&mut self, formed: Formed<Entry<I, O>>, deciding: Instant) {
        let counters = &self.shared.counters;
        counters.placement(formed.reason);
        for _ in 0..formed.aged {
            counters.aging_promotion();
        }
        let size = formed.items.len();
        let mut jobs = Vec::with_capacity(size);
        let mut admissions = Vec::with_capacity(size);
        let (mut top, mut displaced) = (Priority::Background, 0u8);
        for ((mut job, adm), meta) in formed.items {
            if job.has_dedup {
                // Launched: its key is free, and should the batch be
                // recalled it waits again as a group of its own.
                self.forget_group(&job);
                job.has_dedup = false;
            }
            for f in &mut job.followers {
                let none = Admission::none(f.priority);
                admissions.push(std::mem::replace(&mut f.admission, none));
                top = top.min(f.priority);
            }
            top = top.min(job.priority);
            displaced = displaced.max(job.displaced);
            admissions.push(adm);
            jobs.push((job, meta));
        }
        // Launched: the room goes back before the worker can complete any
        // of them, so a caller woken by its result finds the depth down;
        // and before the batch is counted, so one who sees the count does
        // too (`Counters::launched`).
        self.shared
            .counters
            .launched(&mut self.intake, admissions, size);
        let worker = formed.worker;
        // The level check comes first inside the macro: with debug off,
        // nothing is formatted.
        tracing::debug!(
            worker,
            size,
            tokens = formed.reserved.tokens,
            reason = ?formed.reason,
            aged = formed.aged,
            "batch launched"
        );
        let twins = jobs.iter().any(|(j, _)| !j.followers.is_empty());
        self.batch_seq += 1;
        let seq = self.batch_seq;
        let cell = Arc::new(TakeOnce::new(Staged {
            jobs,
            cloner: self.cloner,
            reserved: formed.reserved,
            seq,
        }));
        // Timed before the hand-off: unparking the worker may give it this
        // core at once (wake-up preemption), and the decision histogram
        // would then time the scheduler, not the decision (replay p99 went
        // from 47 µs to 1.2 ms between runs on 2 cores that way).
        self.sla.decision(deciding.elapsed());
        let link = self.workers[worker]
            .as_ref()
            .expect("placement only offers workers whose link is held");
        match link.jobs.push(cell.clone()) {
            Ok(()) => {
                link.thread.unpark();
                let staged = StagedRef {
                    cell,
                    seq,
                    top,
                    displaced,
                    twins,
                    reserved: formed.reserved,
                    stopping: false,
                };
                self.track_staged(worker, staged);
                self.make_way(worker, top);
            }
            Err(ring::Full(_)) => {
                // The ring holds two cells per slot; only a capacity raised
                // past the ring's size at run time gets here.
                let staged = cell
                    .take()
                    .expect("the ring refused it: nobody else holds it");
                let undone = self.planner.release(worker, &staged.reserved);
                debug_assert!(undone.is_ok(), "{undone:?}");
                let batch = open_batch(&self.shared, &mut self.sla, staged, false);
                fail_batch(
                    &self.shared,
                    batch.completers,
                    batch.followers,
                    "worker queue full".into(),
                );
            }
        }
    }
}
