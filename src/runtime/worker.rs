//! The workers: one thread each, running the executor on the batches the
//! collector hands over, delivering every ticket's outcome and sending each
//! batch's capacity back through the release ring. A device executor's
//! lane keeps several batches in flight; a panic or error fails only its
//! batch, and the worker lives on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::stopped;
use super::{
    Back, Batch, BuildError, Caller, Correction, Job, Release, Shared, Staged, StagedCell,
};
use crate::config::{Capacity, ConfigError, WorkerSpec};
use crate::device::executor::{Executor, Lane};
use crate::device::stop::{Interruptible, Stop, StopTicket};
use crate::intake::ring;
use crate::intake::tenants::TenantHold;
use crate::observe::sla::SlaRecorder;
use crate::observe::stats::{Ended, Preempted};
use crate::outcome::{ExecutorError, Failure, Outcome};
use crate::priority::Priority;

pub(super) struct WorkerLink<I, O> {
    pub(super) jobs: ring::Producer<StagedCell<I, O>>,
    pub(super) thread: std::thread::Thread,
    /// Names the running batch the collector wants stopped.
    pub(super) stop: Arc<StopTicket>,
}

pub(super) fn spawn_worker<I: Send + 'static, O: Send + 'static>(
    index: usize,
    spec: &WorkerSpec,
    executor: &Arc<dyn Executor<I, O>>,
    releases: &ring::Producer<Release<I, O>>,
    shared: &Arc<Shared>,
) -> Result<(WorkerLink<I, O>, JoinHandle<()>), BuildError> {
    // Each live batch holds a slot of capacity, so a worker holds at most
    // `slots` of them; as many again leaves room for the cells of recalled
    // batches, which stay on the ring until the worker pops them (empty)
    // after the batch it runs (`collector/displace.rs` recalls only while
    // the ring has room).
    let depth = (spec.capacity.slots as usize)
        .clamp(2, 1 << 16)
        .next_power_of_two()
        * 2;
    let (tx, rx) = ring::channel::<StagedCell<I, O>>(depth).map_err(|e| {
        BuildError::Config(ConfigError::Invalid {
            key: format!("workers[{index}].capacity.slots"),
            reason: e.to_string(),
        })
    })?;
    let stop = Arc::new(StopTicket::new());
    let interruptible = executor.interruptible();
    let worker = Worker {
        index,
        stop: stop.clone(),
        interruptible,
        sla: shared.sla.recorder(shared.epoch),
        jobs: rx,
        executor: executor.clone(),
        releases: releases.clone(),
        shared: shared.clone(),
        delivering: Vec::new(),
        last_release: None,
    };
    let handle = std::thread::Builder::new()
        .name(format!("convoy-{}", spec.name))
        .spawn(move || worker.run())
        .map_err(|e| BuildError::Spawn(e.to_string()))?;
    let link = WorkerLink {
        jobs: tx,
        thread: handle.thread().clone(),
        stop,
    };
    Ok((link, handle))
}

pub(super) fn fail_batch<O>(
    shared: &Shared,
    completers: Vec<Caller<O>>,
    followers: Vec<(usize, Caller<O>)>,
    why: ExecutorError,
) {
    let failure = Failure::ExecutorFailed(why);
    let mut outcomes: Vec<Delivery<O>> = completers
        .into_iter()
        .chain(followers.into_iter().map(|(_, c)| c))
        .map(|c| (c, Err(failure.clone())))
        .collect();
    deliver(shared, &mut outcomes, Ended::Failed, |_, _| {});
}

/// One outcome on its way: the caller, and what it gets.
type Delivery<O> = (Caller<O>, Outcome<O>);

/// Opens a staged batch as it starts (or as it fails unstarted): its
/// requests' queue waits are recorded in `sla`, their tenants' quotas
/// given back and their launches counted, and the inputs and callers
/// split for the executor and the outcomes. Done here, not when the
/// collector forms the batch, so that a batch recalled before it starts
/// goes back to the queue as it was (`collector/displace.rs`).
///
/// With `rerun` (an executor that declares a re-run safe, on the plain
/// path) and no twins in the batch, each request keeps what it needs to
/// wait again should the batch stop for more urgent work.
pub(super) fn open_batch<I, O>(
    shared: &Shared,
    sla: &mut SlaRecorder,
    staged: Staged<I, O>,
    rerun: bool,
) -> Batch<I, O> {
    let Staged {
        jobs,
        cloner,
        reserved,
        seq,
    } = staged;
    let now = Instant::now();
    let keep = rerun && jobs.iter().all(|(j, _)| j.followers.is_empty());
    let mut batch = Batch {
        inputs: Vec::with_capacity(jobs.len()),
        completers: Vec::with_capacity(jobs.len()),
        followers: Vec::new(),
        cloner,
        reserved,
        seq,
        backs: Vec::with_capacity(if keep { jobs.len() } else { 0 }),
    };
    // Requests of the default tenant with no hold, counted once per
    // batch: (requests, tokens).
    let mut unheld = (0u64, 0u64);
    for (mut job, meta) in jobs {
        let meta = &meta;
        let index = batch.inputs.len();
        for f in std::mem::take(&mut job.followers) {
            sla.queue_wait(f.priority, now.saturating_duration_since(f.submitted));
            // A twin rides free: its quota goes back, and its tenant is
            // charged nothing (the head's is).
            let tenant = f.hold.map(TenantHold::launch_free);
            batch
                .followers
                .push((index, (f.completer, f.priority, f.since, tenant, 0)));
        }
        let since = job.since();
        sla.queue_wait(job.priority, now.saturating_duration_since(job.submitted));
        if keep {
            batch.backs.push(Back {
                meta: *meta,
                deadline: job.deadline,
                bytes: job.bytes,
                submitted: job.submitted,
                received: job.received,
                deadline_ns: job.deadline_ns,
                expire_at: job.expire_at,
                displaced: job.displaced,
                named: job.hold.as_ref().is_some_and(TenantHold::is_named),
            });
        }
        let tenant = job.hold.map(TenantHold::launch);
        if tenant.is_none() {
            unheld.0 += 1;
            unheld.1 += u64::from(job.tokens);
        }
        batch.inputs.push(job.input);
        batch
            .completers
            .push((job.completer, job.priority, since, tenant, job.tokens));
    }
    if unheld.0 > 0 {
        shared.tenants.default_tenant().launched(unheld.0, unheld.1);
    }
    batch
}

/// Delivers a launched batch's outcomes (draining `outcomes`), counted as
/// `how` per priority, or as cancelled where the ticket had closed (the
/// result is dropped). One counter update per priority per batch, not per
/// request. `delivered` is called with the level and submit time of each
/// outcome a ticket received.
///
/// The counts go in **before** any ticket is completed, so a caller whose
/// `wait()` has returned finds its request in `stats()` (the counters are
/// sequenced before the ticket's Release of its value, which the waiter
/// Acquires). A ticket that closes between the count and its delivery is
/// counted as `how`, like one that closes just after: the result was on its
/// way, and the ticket drops it.
pub(super) fn deliver<O>(
    shared: &Shared,
    outcomes: &mut Vec<Delivery<O>>,
    how: Ended,
    mut delivered: impl FnMut(Priority, Instant),
) {
    let mut counts = [[0u64; 2]; Priority::COUNT];
    for ((c, p, ..), _) in outcomes.iter() {
        counts[p.index()][usize::from(c.is_cancelled())] += 1;
    }
    for p in Priority::ALL {
        shared.counters.ended(p, how, counts[p.index()][0]);
        shared
            .counters
            .ended(p, Ended::Cancelled, counts[p.index()][1]);
    }
    // The tenants' figures first, like the counts above: a caller whose
    // wait returned finds its request counted. Requests of the default
    // tenant with no hold are counted once per batch, and their latencies
    // recorded only once some request has named a tenant (before that
    // they are every request's, which the SLA report has).
    let tenants = &shared.tenants;
    let unheld = outcomes
        .iter()
        .filter(|((_, _, _, h, _), _)| h.is_none())
        .count() as u64;
    if unheld > 0 {
        tenants.default_tenant().completed_many(unheld);
    }
    let default_latency = unheld > 0 && tenants.named_seen();
    if default_latency || unheld < outcomes.len() as u64 {
        let now = Instant::now();
        for ((_, _, since, hold, _), _) in outcomes.iter() {
            let us = u64::try_from(now.saturating_duration_since(*since).as_micros())
                .unwrap_or(u64::MAX);
            match hold {
                Some(t) => t.completed(us, tenants.other_latency()),
                None if default_latency => tenants
                    .default_tenant()
                    .record_latency(us, tenants.other_latency()),
                None => {}
            }
        }
    }
    for ((c, p, since, ..), outcome) in outcomes.drain(..) {
        if c.complete(outcome).is_ok() {
            delivered(p, since);
        }
    }
}

struct Worker<I, O> {
    index: usize,
    /// Names the running batch the collector wants stopped.
    stop: Arc<StopTicket>,
    /// The executor's [`Executor::interruptible`], read once.
    interruptible: Interruptible,
    /// This worker's own SLA histograms (single-owner).
    sla: SlaRecorder,
    jobs: ring::Consumer<StagedCell<I, O>>,
    executor: Arc<dyn Executor<I, O>>,
    releases: ring::Producer<Release<I, O>>,
    shared: Arc<Shared>,
    /// Reused for each batch's outcomes: no allocation per batch.
    delivering: Vec<Delivery<O>>,
    /// When this worker last sent a release: a batch launched behind
    /// another on a lane starts its own time there (see [`service_time`]).
    last_release: Option<Instant>,
}

/// How long a batch kept its worker busy: from its launch, or from the
/// previous batch's release if that came later. On the plain path a batch
/// starts after the previous one is released, so this is its run time. On
/// a lane of depth 2 the second batch is launched while the first runs,
/// and timing it from its launch would count the first batch's time twice;
/// from the first's release it is the device's time for this batch alone,
/// and the times of back-to-back batches add up to the time the worker was
/// busy. Placement's finish estimates, the adaptive batch limit
/// (`batching.target_batch_ms`) and shedding's drain estimate all read it
/// as the worker's time per batch.
fn service_time(started: Instant, last_release: Option<Instant>, now: Instant) -> Duration {
    now.saturating_duration_since(last_release.map_or(started, |l| l.max(started)))
}

/// Whether a settled batch ran. One whose launch on a lane failed never
/// reached the device, so a batch still running there keeps its own start
/// for [`service_time`], not this failure's release.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ran {
    Yes,
    NotLaunched,
}

/// A batch handed to the executor, waiting for its outputs: everything of
/// [`Batch`] but the inputs.
struct Pending<O> {
    completers: Vec<Caller<O>>,
    followers: Vec<(usize, Caller<O>)>,
    cloner: Option<fn(&O) -> O>,
    reserved: Capacity,
    started: Instant,
    seq: u64,
    backs: Vec<Back>,
}

/// The failure of a batch whose executor returned `got` outputs for `want`
/// inputs.
fn wrong_count(got: usize, want: usize) -> ExecutorError {
    ExecutorError::new(format!("executor returned {got} outputs for {want} inputs"))
}

/// What running a batch gave: outputs, an executor error, or a panic's
/// message.
type RunResult<O> = Result<Result<Vec<O>, ExecutorError>, ExecutorError>;

/// A worker's wait for work: a bounded spin (`idle` counts it), then a
/// park of at most `park`, so threads sharing a core never spin for long.
fn pause(idle: &mut u32, park: Duration) {
    if *idle < crate::sync::SPIN_LIMIT {
        *idle += 1;
        std::hint::spin_loop();
    } else {
        std::thread::park_timeout(park);
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> ExecutorError {
    let why = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned());
    ExecutorError::new(format!("executor panicked: {why}"))
}

impl<I: Send + 'static, O: Send + 'static> Worker<I, O> {
    fn run(mut self) {
        // A device executor gives this worker its own pipelined lane; a
        // lane that cannot be made (a panic) leaves the plain path.
        // Busy: making a device lane may take seconds (a context, a
        // compile), and a report should not wait that long for this worker.
        let (executor, index) = (&self.executor, self.index);
        let mut lane = self
            .sla
            .busy(|| catch_unwind(AssertUnwindSafe(|| executor.lane(index))))
            .ok()
            .flatten();
        let depth = lane.as_ref().map_or(1, |l| l.depth().max(1));
        // Launched batches, oldest first: a lane finishes them in order.
        let mut in_flight: std::collections::VecDeque<Pending<O>> =
            std::collections::VecDeque::with_capacity(depth);
        let mut idle = 0u32;
        loop {
            if in_flight.len() < depth {
                if let Some(cell) = self.jobs.pop() {
                    idle = 0;
                    // Started here, unless the collector recalled it first
                    // (then it has released its capacity and re-queued its
                    // requests, and this cell is empty).
                    let Some(staged) = cell.take() else {
                        // Its ring slot is free now: a launch may be
                        // waiting for one (`collector/launch.rs`,
                        // `ring_room`).
                        self.shared.doorbell.ring();
                        continue;
                    };
                    let rerun = lane.is_none() && self.interruptible == Interruptible::Rerun;
                    let batch = open_batch(&self.shared, &mut self.sla, staged, rerun);
                    match lane.as_mut() {
                        None => self.execute(batch),
                        Some(lane) => {
                            if let Some(p) = self.launch(lane.as_mut(), batch) {
                                in_flight.push_back(p);
                            }
                        }
                    }
                    continue;
                }
            }
            if let (Some(lane), false) = (lane.as_mut(), in_flight.is_empty()) {
                // Finish the oldest when the lane is full (nothing else to
                // do), when it is done, or when no more work can come.
                let ready = in_flight.len() >= depth
                    || catch_unwind(AssertUnwindSafe(|| lane.is_ready())).unwrap_or(true)
                    || self.collector_gone();
                if ready {
                    idle = 0;
                    // `finish` blocks until the device is done.
                    let result = self
                        .sla
                        .busy(|| catch_unwind(AssertUnwindSafe(|| lane.finish())))
                        .map_err(panic_message);
                    let p = in_flight.pop_front().expect("checked non-empty just above");
                    self.settle(p, result, Ran::Yes);
                } else {
                    // The device is busy and there is room for one more
                    // batch: the collector unparks us when it pushes one;
                    // the device's progress is polled at this period. A
                    // loop point: a report's ask is answered here too.
                    self.sla.maybe_publish(Instant::now());
                    pause(&mut idle, Duration::from_micros(50));
                }
                continue;
            }
            // Nothing in flight and no batch waiting.
            if self.collector_gone() {
                return;
            }
            self.sla.maybe_publish(Instant::now());
            // The collector unparks us after every push; the timeout only
            // bounds a shutdown race.
            pause(&mut idle, Duration::from_millis(20));
        }
    }

    fn collector_gone(&self) -> bool {
        // Only the collector holds the producing end of the job ring, and
        // it lets go only once its ledger is idle: every batch it pushed
        // has been settled, so the ring is empty by then. That is why the
        // two reads need no order between them (the count is a Relaxed
        // load and does not synchronise with the drop).
        self.jobs.is_empty() && self.jobs.producers() == 0
    }

    /// Splits a batch into its inputs and what waits for the outputs.
    fn split(batch: Batch<I, O>) -> (Vec<I>, Pending<O>) {
        let Batch {
            inputs,
            completers,
            followers,
            cloner,
            reserved,
            seq,
            backs,
        } = batch;
        let pending = Pending {
            completers,
            followers,
            cloner,
            reserved,
            started: Instant::now(),
            seq,
            backs,
        };
        (inputs, pending)
    }

    /// The requests whose real cost, as the executor reports it, differs
    /// from their charge: their tenants' served tokens are corrected here,
    /// and their fairness counters by the collector, which owns them.
    fn corrections(&self, completers: &[Caller<O>], outputs: &[O]) -> Vec<Correction> {
        let mut out = Vec::new();
        for ((_, level, _, hold, tokens), o) in completers.iter().zip(outputs) {
            let Some(real) = self.executor.served_tokens(o) else {
                continue;
            };
            if real != *tokens {
                let state = hold
                    .as_ref()
                    .unwrap_or(self.shared.tenants.default_tenant());
                state.correct_served(u64::from(*tokens), u64::from(real));
                // The default tenant's name finds the default tenant.
                out.push((Some(state.name().clone()), *level, *tokens, real));
            }
        }
        out
    }

    /// Runs a batch on the plain path and settles it.
    fn execute(&mut self, batch: Batch<I, O>) {
        let (inputs, pending) = Self::split(batch);
        let (executor, index) = (&self.executor, self.index);
        if self.interruptible != Interruptible::No {
            // Every caller gone: the same stop as a preemption.
            let gone = || {
                pending.completers.iter().all(|c| c.0.is_cancelled())
                    && pending.followers.iter().all(|(_, c)| c.0.is_cancelled())
            };
            let stop = Stop::new(&self.stop, pending.seq, &gone);
            let result = self
                .sla
                .busy(|| {
                    catch_unwind(AssertUnwindSafe(|| {
                        executor.execute_until(index, &inputs, &stop)
                    }))
                })
                .map_err(panic_message);
            let preempted = stop.preempted();
            return self.settle_stoppable(pending, inputs, result, preempted);
        }
        let result = self
            .sla
            .busy(|| catch_unwind(AssertUnwindSafe(|| executor.execute(index, &inputs))))
            .map_err(panic_message);
        drop(inputs);
        self.settle(pending, result, Ran::Yes);
    }

    /// Starts a batch on the lane; a batch that could not be launched is
    /// settled (failed) at once.
    fn launch(&mut self, lane: &mut dyn Lane<I, O>, batch: Batch<I, O>) -> Option<Pending<O>> {
        let (inputs, pending) = Self::split(batch);
        let why = match self
            .sla
            .busy(|| catch_unwind(AssertUnwindSafe(|| lane.launch(&inputs))))
        {
            Ok(Ok(())) => return Some(pending),
            Ok(Err(e)) => e,
            Err(panic) => panic_message(panic),
        };
        self.settle(pending, Ok(Err(why)), Ran::NotLaunched);
        None
    }

    /// Gives a finished batch's capacity back to the collector, then hands
    /// its outcomes to their tickets.
    ///
    /// The release goes first so that the collector never sees a caller's
    /// next request before the capacity its last one held: a closed loop's
    /// count of requests in the runtime (what the adaptive queue delay
    /// reads, `plan/pace.rs`) then never exceeds its number of clients. The
    /// collector reads releases again after each drain of the intake, and
    /// a request drained there was submitted after its caller's ticket
    /// completed, which comes after this push.
    fn settle(&mut self, pending: Pending<O>, result: RunResult<O>, ran: Ran) {
        let Pending {
            completers,
            followers,
            cloner,
            reserved,
            started,
            ..
        } = pending;
        let corrections = match &result {
            Ok(Ok(outputs)) if outputs.len() == completers.len() => {
                self.corrections(&completers, outputs)
            }
            _ => Vec::new(),
        };
        self.release(reserved, started, corrections, Vec::new(), ran);
        match result {
            Ok(Ok(outputs)) if outputs.len() == completers.len() => {
                self.deliver_outputs(completers, followers, cloner, outputs, started);
            }
            Ok(Ok(outputs)) => {
                let why = wrong_count(outputs.len(), completers.len());
                fail_batch(&self.shared, completers, followers, why);
            }
            Ok(Err(e)) | Err(e) => fail_batch(&self.shared, completers, followers, e),
        }
    }

    /// Settles a batch of an interruptible executor, which may have left
    /// requests unfinished at a boundary (`device/stop.rs`). Each of those
    /// ends cancelled (its caller had gone), waits again (the batch was
    /// `preempted` and keeps what re-queueing needs), or fails: a request
    /// left unfinished with no stop asked breaks the executor's contract,
    /// and the error names the executor. The capacity goes back at once,
    /// with the requests that wait again riding on the release.
    fn settle_stoppable(
        &mut self,
        pending: Pending<O>,
        inputs: Vec<I>,
        result: Result<Result<Vec<Option<O>>, ExecutorError>, ExecutorError>,
        preempted: bool,
    ) {
        let outputs = match result {
            Ok(Ok(outputs)) if outputs.len() == inputs.len() => outputs,
            Ok(Ok(outputs)) => {
                let why = wrong_count(outputs.len(), inputs.len());
                return self.settle(pending, Ok(Err(why)), Ran::Yes);
            }
            // Refused before anything ran: every request waits again,
            // when each kept what waiting again needs.
            Ok(Err(e)) if e.is_not_run() && pending.backs.len() == inputs.len() => {
                let none = std::iter::repeat_with(|| None).take(inputs.len()).collect();
                return self.sort_stopped(pending, inputs, none, true, false);
            }
            Ok(Err(e)) => return self.settle(pending, Ok(Err(e)), Ran::Yes),
            Err(e) => return self.settle(pending, Err(e), Ran::Yes),
        };
        if outputs.iter().all(Option::is_some) {
            let outputs = outputs.into_iter().flatten().collect();
            return self.settle(pending, Ok(Ok(outputs)), Ran::Yes);
        }
        self.sort_stopped(pending, inputs, outputs, preempted, true);
    }

    /// Settles a batch some of whose requests were left unfinished: each
    /// goes to exactly one place (`stopped.rs`). `preempted`: they may wait
    /// again; `displaced`: a preemption (counted, and against the cap),
    /// not a batch the executor refused before running it.
    fn sort_stopped(
        &mut self,
        pending: Pending<O>,
        inputs: Vec<I>,
        outputs: Vec<Option<O>>,
        preempted: bool,
        displaced: bool,
    ) {
        let Pending {
            completers,
            followers,
            cloner,
            reserved,
            started,
            backs,
            ..
        } = pending;
        let sorted = stopped::sort(
            completers, followers, inputs, outputs, backs, preempted, displaced,
        );
        if displaced {
            let mut interrupted = [0u64; Priority::COUNT];
            for (job, _) in &sorted.requeue {
                interrupted[job.priority.index()] += 1;
            }
            for p in Priority::ALL {
                self.shared
                    .counters
                    .preempted(p, Preempted::Interrupted, interrupted[p.index()]);
            }
        }
        let corrections = self.corrections(&sorted.done, &sorted.outputs);
        let ran = if displaced {
            Ran::Yes
        } else {
            Ran::NotLaunched
        };
        self.release(reserved, started, corrections, sorted.requeue, ran);
        self.deliver_outputs(sorted.done, sorted.twins, cloner, sorted.outputs, started);
        let mut cancelled: Vec<Delivery<O>> = sorted
            .cancelled
            .into_iter()
            .map(|c| (c, Err(Failure::Cancelled)))
            .collect();
        deliver(&self.shared, &mut cancelled, Ended::Cancelled, |_, _| {});
        if !sorted.broken.is_empty() {
            let why = format!(
                "executor {} left {} requests unfinished with no stop requested",
                self.executor.name(),
                sorted.broken.len()
            );
            fail_batch(&self.shared, sorted.broken, Vec::new(), why.into());
        }
    }

    /// Gives a batch's capacity back to the collector (see `settle`), with
    /// the costs to correct and the requests that wait again.
    fn release(
        &mut self,
        reserved: Capacity,
        started: Instant,
        corrections: Vec<Correction>,
        requeue: Vec<(Job<I, O>, crate::plan::order::Meta)>,
        ran: Ran,
    ) {
        let now = Instant::now();
        let mut release = Release {
            worker: self.index,
            amount: reserved,
            corrections,
            took: service_time(started, self.last_release, now),
            requeue,
        };
        if ran == Ran::Yes {
            self.last_release = Some(now);
        }
        // The release ring holds one entry per slot of the whole fleet, so it
        // has room; should it not, wait for the collector rather than lose a
        // release.
        let mut spins = 0u32;
        while let Err(ring::Full(back)) = self.releases.push(release) {
            release = back;
            spins += 1;
            if spins < crate::sync::SPIN_LIMIT {
                std::hint::spin_loop();
            } else {
                self.shared.doorbell.ring();
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        self.shared.doorbell.ring();
    }

    /// Delivers a batch's outputs: `outputs[i]` to `completers[i]`, and a
    /// copy of `outputs[i]` to each twin `(i, caller)`.
    fn deliver_outputs(
        &mut self,
        completers: Vec<Caller<O>>,
        followers: Vec<(usize, Caller<O>)>,
        cloner: Option<fn(&O) -> O>,
        outputs: Vec<O>,
        started: Instant,
    ) {
        let exec = started.elapsed();
        let slo = self.shared.knobs.load().slo;
        // Twins first, while the outputs they copy are still here.
        let outcomes = &mut self.delivering;
        outcomes.extend(followers.into_iter().map(|(i, c)| {
            let out = match (cloner, outputs.get(i)) {
                (Some(clone), Some(o)) => Ok(clone(o)),
                _ => Err(Failure::ExecutorFailed(
                    "no output to share with a deduplicated twin".into(),
                )),
            };
            (c, out)
        }));
        outcomes.extend(
            completers
                .into_iter()
                .zip(outputs)
                .map(|(c, out)| (c, Ok(out))),
        );
        let sla = &mut self.sla;
        deliver(&self.shared, outcomes, Ended::Completed, |p, since| {
            let now = Instant::now();
            // From receipt (`Request::received_at`) or submit.
            let e2e = now.saturating_duration_since(since);
            sla.completed(p, exec, e2e, slo[p.index()].timeout, now);
        });
        sla.maybe_publish(Instant::now());
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_launched_behind_another_is_timed_from_that_ones_release() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // Plain path: launched after the last release, timed from launch.
        assert_eq!(
            service_time(ms(10), Some(ms(5)), ms(30)),
            Duration::from_millis(20)
        );
        assert_eq!(
            service_time(ms(10), None, ms(30)),
            Duration::from_millis(20)
        );
        // Lane: launched at 10 while the batch before it ran until 40; it
        // finished at 50, so it had the device for 10 ms, not 40.
        assert_eq!(
            service_time(ms(10), Some(ms(40)), ms(50)),
            Duration::from_millis(10)
        );
        // Never negative.
        assert_eq!(service_time(ms(10), Some(ms(60)), ms(50)), Duration::ZERO);
    }
}
