//! The collector: the one thread that owns the waiting set. Each pass it
//! absorbs capacity releases, drains the intake, expires overdue requests,
//! and while a batch is due and a worker has room, pops requests in order,
//! reserves their cost in its ledger and hands the batch to the worker's
//! ring. What it holds (the waiting set, the ledger, the dedup index) is
//! its own, so none of it needs a lock or an atomic; it talks to the other
//! threads only through the intake, the rings, the counters and the
//! `ArcSwap` snapshots. The one lock it may take, on `new_links`, is the
//! control path of a worker added at run time.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::worker::WorkerLink;
use super::{BuildError, Job, Knobs, Release, Shared};
use crate::clock::{after, nanos};
use crate::config::{BatchDelay, Capacity, Config};
use crate::intake::ring;
use crate::intake::shed::DrainRate;
use crate::intake::twins::Twins;
use crate::intake::{Admission, IntakeConsumer};
use crate::observe::sla::SlaRecorder;
use crate::observe::stats::Ended;
use crate::outcome::Failure;
use crate::plan::order::WaitKey;
use crate::plan::pace::Pace;
use crate::plan::placement::Placer;
use crate::plan::planner::{Plannable, Planner};
use crate::request::Cost;
use crate::runtime::control::{RunMode, Watch};

mod arrivals;
mod changes;
mod displace;
mod ending;
mod launch;
mod report;
mod sweep;

/// What the builder hands the collector it starts.
pub(super) struct Start<I, O> {
    pub(super) shared: Arc<Shared>,
    pub(super) intake: IntakeConsumer<Job<I, O>>,
    pub(super) releases: ring::Consumer<Release<I, O>>,
    /// One per configured worker, in the fleet's order.
    pub(super) workers: Vec<Option<WorkerLink<I, O>>>,
    pub(super) new_links: Arc<Mutex<Vec<WorkerLink<I, O>>>>,
    pub(super) on_shortfall: Option<Box<dyn Fn(Cost) + Send + 'static>>,
    pub(super) cloner: Option<fn(&O) -> O>,
    /// The executor declares a re-run safe: a running batch may be
    /// stopped for more urgent work (`displace.rs`).
    pub(super) rerun: bool,
}

/// Marks the collector gone for `clear_waiting` when dropped.
struct CollectorGone(Arc<Shared>);

impl Drop for CollectorGone {
    fn drop(&mut self) {
        self.0.clearing.gone();
    }
}

type Entry<I, O> = (Job<I, O>, Admission);

pub(super) struct Collector<I, O> {
    shared: Arc<Shared>,
    intake: IntakeConsumer<Job<I, O>>,
    planner: Planner<Entry<I, O>>,
    releases: ring::Consumer<Release<I, O>>,
    /// `None` once a removed worker has been let go.
    workers: Vec<Option<WorkerLink<I, O>>>,
    /// The indices whose link is held, ascending: what a launch and a
    /// retirement check look at, so their cost follows the workers there
    /// are, not every worker ever added.
    held: Vec<usize>,
    /// Links of workers added at run time (control path, see `Shared::changed`).
    new_links: Arc<Mutex<Vec<WorkerLink<I, O>>>>,
    /// A removed worker may still have work in flight: check each pass.
    retiring: bool,

    /// The knobs this collector runs with; replaced when a reload lands.
    applied: Arc<Knobs>,
    /// Queue waits and expiries (single-owner).
    sla: SlaRecorder,
    reserved_published: Instant,
    summary_logged: Instant,
    shutdown_timeout: Duration,
    on_shortfall: Option<Box<dyn Fn(Cost) + Send + 'static>>,
    /// Copies outputs for deduplicated twins; `None`: dedup is off.
    cloner: Option<fn(&O) -> O>,
    /// The waiting group of each dedup key (see `dedup.rs`), its keys
    /// published for submit's shed check (`twins.rs`).
    dedup: Twins<WaitKey>,
    seq: u64,
    drained: Vec<crate::intake::Drained<Job<I, O>>>,
    /// The last pass had a batch due but could place nothing: wait for a
    /// release (the doorbell) rather than for the queue delay.
    stalled: bool,
    /// The last pass met a request that fitted no worker (shortfall episode).
    short_last_pass: bool,
    /// Where a sweep for cancelled requests goes on next pass, while one
    /// is under way (see `sweep_step`).
    sweep: Option<usize>,
    /// When the last sweep started, what its steps have cost so far, and
    /// how soon the next may start (see `sweep_step`).
    sweep_started: Instant,
    sweep_spent: Duration,
    sweep_allowed: Instant,
    /// Time per token, from finished batches, and the total speed of the
    /// workers up at the last launch: how long the waiting set would take
    /// to run (`shed.rs`).
    drain_rate: DrainRate,
    speed_up: f64,
    /// The arrival pace (`plan/pace.rs`), for the adaptive delay.
    pace: Pace,
    /// The most requests in the runtime at once so far (`Stats`).
    most_in_runtime: u64,
    /// Whether a worker up held nothing after the last launches.
    idle: bool,
    /// Per worker, the batches pushed and not yet released, oldest first
    /// (`displace.rs`): the unstarted ones may be recalled.
    staged: Vec<std::collections::VecDeque<displace::StagedRef<I, O>>>,
    /// The last batch's number (`Staged::seq`).
    batch_seq: u64,
    /// See `Start::rerun`.
    rerun: bool,
}

impl<I: Send + 'static, O: Send + 'static> Collector<I, O> {
    /// Builds the collector from `config` and starts its thread.
    pub(super) fn start(s: Start<I, O>, config: &Config) -> Result<JoinHandle<()>, BuildError> {
        let mut collector = Collector {
            planner: Planner::new(
                s.workers.len(),
                config.max_wait,
                config.batching,
                Placer::new(
                    config.placement,
                    config.urgent_slack,
                    config.batching.max_batch_size,
                    config.batching.max_batch_size.saturating_mul(8),
                ),
            ),
            intake: s.intake,
            releases: s.releases,
            held: (0..s.workers.len())
                .filter(|&i| s.workers[i].is_some())
                .collect(),
            workers: s.workers,
            new_links: s.new_links,
            retiring: false,
            applied: s.shared.knobs.load_full(),
            sla: s.shared.sla.recorder(s.shared.epoch),
            reserved_published: Instant::now(),
            summary_logged: Instant::now(),
            shutdown_timeout: config.shutdown_timeout,
            on_shortfall: s.on_shortfall,
            cloner: s.cloner,
            dedup: Twins::new(s.shared.waiting_keys.clone()),
            seq: 0,
            drained: Vec::new(),
            stalled: false,
            short_last_pass: false,
            sweep: None,
            sweep_started: Instant::now(),
            sweep_spent: Duration::ZERO,
            sweep_allowed: Instant::now(),
            drain_rate: DrainRate::default(),
            speed_up: 0.0,
            pace: Pace::default(),
            most_in_runtime: 0,
            idle: false,
            staged: Vec::new(),
            batch_seq: 0,
            rerun: s.rerun,
            shared: s.shared,
        };
        collector.planner.set_ordering(config.ordering);
        let p = config.preemption;
        collector.planner.set_band(p.enabled.then_some(p.min_gap));
        collector
            .planner
            .set_fairness(config.fairness, config.tenants.weights());
        std::thread::Builder::new()
            .name("convoy-collector".into())
            .spawn(move || collector.run())
            .map_err(|e| BuildError::Spawn(e.to_string()))
    }
}

fn as_capacity(cost: Cost) -> Capacity {
    Capacity {
        slots: 1,
        tokens: u64::from(cost.tokens),
        bytes: cost.bytes,
    }
}

impl<I: Send + 'static, O: Send + 'static> Collector<I, O> {
    fn run(mut self) {
        self.shared.doorbell.register_current();
        // However the loop ends (a panic in convoy's own code included), a
        // `clear_waiting` caller must not wait for a collector that left.
        let _gone = CollectorGone(self.shared.clone());
        let mut drain_deadline: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let now_ns = self.shared.ns_since_epoch(now);
            self.absorb_releases();
            // Before the fleet and knobs are read below (see `control.rs`).
            if self.shared.changed.take() {
                self.apply_fleet_changes();
            }
            if self.retiring {
                self.let_go_of_retired();
            }
            self.apply_reload();
            let mode = self.shared.mode.get();
            self.drain_intake(now_ns);
            // Again after the drain: a worker gives a batch's capacity back
            // before its callers hear, so every release that came before a
            // request drained here is taken in, and the count of requests
            // in the runtime holds each caller once (`worker::settle`).
            self.absorb_releases();
            self.expire(now_ns);
            self.sweep_step(now);
            if self.shared.clearing.take() {
                let cleared = self.end_all_waiting(now_ns, Failure::Cancelled, Ended::Cancelled);
                self.shared.clearing.answer(cleared);
            }
            if mode == RunMode::Aborting {
                self.fail_all_waiting();
            } else if mode == RunMode::Draining {
                let deadline =
                    *drain_deadline.get_or_insert_with(|| after(now, self.shutdown_timeout));
                if now >= deadline {
                    self.fail_all_waiting();
                }
            }
            let closing = mode != RunMode::Running;
            self.launch(now_ns, closing);
            self.shed(now_ns, closing);
            self.sla.maybe_publish(now);
            self.publish_reserved(now);
            self.log_summary(now);

            let in_flight = !self.planner.ledger().is_idle();
            if closing
                && self.shared.gate.is_drained()
                && !self.intake.has_pending()
                && self.planner.is_empty()
                && !in_flight
            {
                break;
            }
            self.sleep(now, now_ns, closing);
        }
        // Drop the producing ends first, then wake: a worker that finds its
        // ring empty with no producer exits.
        let threads: Vec<_> = self.workers.drain(..).flatten().map(|w| w.thread).collect();
        for t in threads {
            t.unpark();
        }
    }

    fn sleep(&mut self, now: Instant, now_ns: u64, closing: bool) {
        if self.sweep.is_some() {
            // A sweep is under way: go on with it next pass.
            return;
        }
        let mut timeout = Duration::from_millis(50);
        let delay = nanos(self.applied.batching.max_queue_delay);
        if let Some(d) = self.planner.next_deadline() {
            // Its expiry, or (with room to launch) one queue delay before
            // it, when the batch falls due (`batch_due`).
            let due = if self.stalled {
                d
            } else {
                d.saturating_sub(delay)
            };
            timeout = timeout.min(Duration::from_nanos(due.saturating_sub(now_ns)));
        }
        if let Some(a) = self.planner.oldest_arrival().filter(|_| !self.stalled) {
            let due = a.saturating_add(delay);
            timeout = timeout.min(Duration::from_nanos(due.saturating_sub(now_ns)));
            // Adaptive delay: with a worker idle, the batch may fall due
            // when the arrivals go quiet (`batch_due`), if that comes first.
            if self.idle && self.applied.batching.delay == BatchDelay::Adaptive {
                // Quiet still to come: look again then. Quiet already, but
                // below the peak: look again when the window ends and the
                // peak may fall (a closed loop that lost clients).
                let at = match self.pace.quiet_at() {
                    Some(quiet) if quiet > now_ns => Some(quiet),
                    Some(_) => Some(self.pace.window_ends_at()),
                    None => None,
                };
                if let Some(at) = at.filter(|&at| at > now_ns) {
                    timeout = timeout.min(Duration::from_nanos(at - now_ns));
                }
            }
        }
        if closing {
            timeout = timeout.min(Duration::from_millis(1));
        }
        // Until the next sweep may start, a refusal's hint must not wake
        // the collector (it would spin on it); the timeout covers it.
        let sweep_wait = self.sweep_allowed.saturating_duration_since(now);
        let sweep_wanted = &self.shared.sweep_wanted;
        let watch_sweep = sweep_wait.is_zero();
        if !watch_sweep && sweep_wanted.is_marked() {
            timeout = timeout.min(sweep_wait);
        }
        if timeout.is_zero() {
            return;
        }
        let intake = &self.intake;
        let releases = &self.releases;
        let watch = Watch {
            changed: &self.shared.changed,
            clearing: &self.shared.clearing,
            refresh: self.sla.asks(),
            sweep: watch_sweep.then_some(sweep_wanted),
            gate: (!closing).then_some(&self.shared.gate),
        };
        self.shared.doorbell.sleep(
            || intake.has_ready() || releases.has_ready() || watch.news(),
            Some(timeout),
        );
    }
}

impl<I, O> Plannable for Entry<I, O> {
    fn cost(&self) -> Capacity {
        as_capacity(self.0.cost())
    }

    fn group(&self) -> Option<u64> {
        self.0.dedup()
    }

    /// A group is dropped unrun only when every member cancelled.
    fn abandoned(&self) -> bool {
        self.0.completer.is_cancelled()
            && self.0.followers.iter().all(|f| f.completer.is_cancelled())
    }
}
