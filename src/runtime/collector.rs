//! The collector: the one thread that owns the waiting set. Each pass it
//! absorbs capacity releases, drains the intake, expires overdue requests,
//! and while a batch is due and a worker has room, pops requests in order,
//! reserves their cost in its ledger and hands the batch to the worker's
//! ring. What it holds (the waiting set, the ledger, the dedup index) is
//! its own, so none of it needs a lock or an atomic; it talks to the other
//! threads only through the intake, the rings, the counters and the
//! `ArcSwap` snapshots. The one lock it may take, on `new_links`, is the
//! control path of a worker added at run time.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::worker::{fail_batch, WorkerLink};
use super::{Batch, BuildError, Health, Job, Knobs, Release, Shared};
use crate::clock::{after, nanos};
use crate::config::{Capacity, Config, DeadlineAction};
use crate::control::{RunMode, Watch};
use crate::dedup::Follower;
use crate::intake::{Admission, IntakeConsumer};
use crate::order::{Meta, WaitKey};
use crate::outcome::Failure;
use crate::placement::{Candidate, Placer};
use crate::planner::{batch_size_now, Formed, Plan, Plannable, Planner};
use crate::priority::Priority;
use crate::request::Cost;
use crate::ring;
use crate::shed::{levels_to_shed, DrainRate};
use crate::sla::SlaRecorder;
use crate::stats::Ended;
use crate::ticket::Completer;
use crate::twins::Twins;

/// What the builder hands the collector it starts.
pub(super) struct Start<I, O> {
    pub(super) shared: Arc<Shared>,
    pub(super) intake: IntakeConsumer<Job<I, O>>,
    pub(super) releases: ring::Consumer<Release>,
    /// One per configured worker, in the fleet's order.
    pub(super) workers: Vec<Option<WorkerLink<I, O>>>,
    pub(super) new_links: Arc<Mutex<Vec<WorkerLink<I, O>>>>,
    pub(super) on_shortfall: Option<Box<dyn Fn(Cost) + Send + 'static>>,
    pub(super) cloner: Option<fn(&O) -> O>,
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
    releases: ring::Consumer<Release>,
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
}

/// Requests leaving unlaunched, gathered so that their room is given back
/// before any of them is told (see `Collector::end_leaving`).
struct Leaving<O> {
    completers: Vec<(Completer<O>, Priority)>,
    admissions: Vec<Admission>,
}

impl<O> Leaving<O> {
    fn with_capacity(n: usize) -> Self {
        Leaving {
            completers: Vec::with_capacity(n),
            admissions: Vec::with_capacity(n),
        }
    }

    /// One request leaving: its room and whom to tell.
    fn add(&mut self, admission: Admission, completer: Completer<O>, level: Priority) {
        self.admissions.push(admission);
        self.completers.push((completer, level));
    }

    fn followers(&mut self, gone: Vec<Follower<O>>) {
        for f in gone {
            self.add(f.admission, f.completer, f.priority);
        }
    }
}

/// Slots of the waiting set a sweep for cancelled requests looks at per
/// pass: bounds the pass's extra work (one ticket-state load per slot).
const SWEEP_STEP: usize = 1024;

/// How often a collector with requests waiting sweeps for cancelled ones:
/// how long a dropped ticket's room may stay taken while its turn does not
/// come (every worker busy, or a batch still filling under a long queue
/// delay). A sweep costs one ticket-state load per waiting request.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Sweeps take at most about one part in `SWEEP_SHARE` of the collector's
/// time: each waits this many times the last one's cost after it ended.
const SWEEP_SHARE: u32 = 100;

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
            shared: s.shared,
        };
        collector.planner.set_ordering(config.ordering);
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
                && self.planner.waiting.is_empty()
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

    /// A cancelled request keeps its room until its turn comes in the
    /// order, and that turn may be far off: every worker busy, or a batch
    /// filling under a long `max_queue_delay`. So the collector sweeps its
    /// waiting set for requests nobody waits for, `SWEEP_STEP` slots a
    /// pass, ending them as cancelled and freeing their room (a dedup group
    /// sheds its cancelled members and launches for the rest). A sweep
    /// starts when a submit was refused for a full queue, where the room is
    /// wanted now, and otherwise every `SWEEP_EVERY` while anything waits;
    /// either way no sooner than `SWEEP_SHARE` times the last sweep's cost
    /// after it, since under sustained overload submits are refused all the
    /// time and back-to-back sweeps of a deep set would take a share of the
    /// collector's time for nothing.
    fn sweep_step(&mut self, now: Instant) {
        if self.sweep.is_none() && self.sweep_due(now) {
            self.sweep = Some(0);
            self.sweep_started = now;
            self.sweep_spent = Duration::ZERO;
        }
        let Some(from) = self.sweep else {
            return;
        };
        let stepping = Instant::now();
        let mut swept = Vec::new();
        let mut shed = Vec::new();
        self.sweep = self.planner.waiting.take_where(
            from,
            SWEEP_STEP,
            |(job, admission)| {
                job.shed_members(admission, &mut shed, |c, _| c.is_cancelled());
                job.completer.is_cancelled()
            },
            &mut swept,
        );
        self.end_followers(shed, Failure::Cancelled, Ended::Cancelled);
        self.end_unlaunched(swept, Failure::Cancelled, Ended::Cancelled);
        let done = Instant::now();
        self.sweep_spent += done.saturating_duration_since(stepping);
        if self.sweep.is_none() {
            self.sweep_allowed = after(done, self.sweep_spent.saturating_mul(SWEEP_SHARE));
        }
    }

    /// Whether a sweep should start now (taking the refusal hint if so).
    fn sweep_due(&self, now: Instant) -> bool {
        if now < self.sweep_allowed {
            return false;
        }
        let refused = self.shared.sweep_wanted.take();
        refused
            || (!self.planner.waiting.is_empty()
                && now.saturating_duration_since(self.sweep_started) >= SWEEP_EVERY)
    }

    fn sleep(&mut self, now: Instant, now_ns: u64, closing: bool) {
        if self.sweep.is_some() {
            // A sweep is under way: go on with it next pass.
            return;
        }
        let mut timeout = Duration::from_millis(50);
        let delay = nanos(self.applied.batching.max_queue_delay);
        if let Some(d) = self.planner.waiting.next_deadline() {
            // Its expiry, or (with room to launch) one queue delay before
            // it, when the batch falls due (`batch_due`).
            let due = if self.stalled {
                d
            } else {
                d.saturating_sub(delay)
            };
            timeout = timeout.min(Duration::from_nanos(due.saturating_sub(now_ns)));
        }
        if let Some(a) = self
            .planner
            .waiting
            .oldest_arrival()
            .filter(|_| !self.stalled)
        {
            let due = a.saturating_add(delay);
            timeout = timeout.min(Duration::from_nanos(due.saturating_sub(now_ns)));
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

    /// Every `SUMMARY_EVERY`, an info line with the queues, outcomes and
    /// promotions since start.
    fn log_summary(&mut self, now: Instant) {
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
    fn publish_reserved(&mut self, now: Instant) {
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

    /// Takes up knobs a `reload_config` stored since the last pass. One
    /// pointer compare per pass when nothing changed.
    fn apply_reload(&mut self) {
        let knobs = self.shared.knobs.load_full();
        if Arc::ptr_eq(&knobs, &self.applied) {
            return;
        }
        let b = knobs.batching;
        self.planner.set_limits(b, knobs.max_wait);
        self.planner.set_ordering(knobs.ordering);
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
    fn apply_fleet_changes(&mut self) {
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
    fn let_go_of_retired(&mut self) {
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

    fn absorb_releases(&mut self) {
        let fleet = self.shared.fleet.load();
        while let Some(r) = self.releases.pop() {
            // A release is the exact total a batch reserved, sent once by the
            // worker that ran it; an over-release would be a convoy bug.
            let over = self.planner.release(r.worker, &r.amount);
            debug_assert!(over.is_ok(), "{over:?}");
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

    fn drain_intake(&mut self, now_ns: u64) {
        self.intake.drain(usize::MAX, &mut self.drained);
        let mut drained = std::mem::take(&mut self.drained);
        for d in drained.drain(..) {
            let mut job = d.item;
            self.seq += 1;
            let level = job.priority;
            job.arrival_ns = self.shared.ns_since_epoch(job.submitted).min(now_ns);
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
                tokens: u64::from(job.cost.tokens),
                bytes: job.cost.bytes,
            };
            match job.dedup.filter(|_| self.cloner.is_some()) {
                Some(k) => self.join_or_start_group(k, job, d.admission, meta),
                None => {
                    self.planner.waiting.insert((job, d.admission), meta);
                }
            }
        }
        self.drained = drained;
    }

    /// Merges `job` into the waiting group of key `k`, or makes it one.
    fn join_or_start_group(&mut self, k: u64, job: Job<I, O>, admission: Admission, meta: Meta) {
        let existing = self
            .dedup
            .get(k)
            .and_then(|key| self.planner.waiting.remove(key));
        let entry = match existing {
            Some(((mut head, head_admission), head_meta)) => {
                head.followers.push(Follower {
                    completer: job.completer,
                    priority: job.priority,
                    submitted: job.submitted,
                    arrival: job.arrival_ns,
                    deadline: job.deadline_ns,
                    expire_at: job.expire_at,
                    admission,
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
        let key = self.planner.waiting.insert(entry.0, entry.1);
        self.dedup.insert(k, key);
    }

    /// A group left the waiting set: its key is free again.
    fn forget_group(&mut self, job: &Job<I, O>) {
        if let Some(k) = job.dedup {
            self.dedup.remove(k);
        }
    }

    fn expire(&mut self, now_ns: u64) {
        let mut expired = Vec::new();
        let mut regrouped = Vec::new();
        let now = Instant::now();
        while let Some(((mut job, mut adm), meta)) = self.planner.waiting.pop_expired(now_ns) {
            // A group expires member by member: those past their own
            // expiry leave, the others wait on under a new head if needed.
            let mut gone = Vec::new();
            job.shed_members(&mut adm, &mut gone, |_, expire_at| expire_at <= now_ns);
            for f in &gone {
                self.record_expiry(f.priority, f.submitted, now);
            }
            if job.expire_at > now_ns {
                // The head survives: the group goes back with fresh ordering
                // (its expiry now that of the members left).
                let meta = job.group_meta(meta);
                regrouped.push(((job, adm), meta));
                self.end_followers(gone, Failure::Expired, Ended::Expired);
                continue;
            }
            self.end_followers(gone, Failure::Expired, Ended::Expired);
            self.record_expiry(job.priority, job.submitted, now);
            expired.push(((job, adm), meta));
        }
        for ((job, adm), meta) in regrouped {
            let k = job.dedup;
            let key = self.planner.waiting.insert((job, adm), meta);
            if let Some(k) = k {
                self.dedup.insert(k, key);
            }
        }
        self.end_unlaunched(expired, Failure::Expired, Ended::Expired);
    }

    fn record_expiry(&mut self, level: Priority, submitted: Instant, now: Instant) {
        let timeout = self.applied.slo[level.index()].timeout;
        self.sla.expired(
            level,
            now.saturating_duration_since(submitted),
            timeout,
            now,
        );
    }

    /// Ends followers that leave their group unlaunched.
    fn end_followers(&mut self, gone: Vec<Follower<O>>, failure: Failure, how: Ended) {
        let mut leaving = Leaving::with_capacity(gone.len());
        leaving.followers(gone);
        self.end_leaving(leaving, &failure, how);
    }

    /// Gives the room of requests leaving unlaunched back, then tells each
    /// one: a caller woken by its failure finds the queue depth already
    /// down, as it finds the outcome already counted.
    fn end_leaving(&mut self, leaving: Leaving<O>, failure: &Failure, how: Ended) {
        self.intake.release_all(leaving.admissions);
        for (completer, level) in leaving.completers {
            self.end_one(completer, level, failure, how);
        }
    }

    /// Delivers `failure` to one unlaunched request, counted as `how` (or
    /// as cancelled when its ticket had already closed). Counted first, so
    /// a caller woken by the failure finds it in `stats()`; see `deliver`
    /// for a ticket that closes in between.
    fn end_one(&self, completer: Completer<O>, level: Priority, failure: &Failure, how: Ended) {
        let ended = if completer.is_cancelled() {
            Ended::Cancelled
        } else {
            how
        };
        self.shared.counters.ended(level, ended, 1);
        // An Err hands the failure back from a ticket that closed after the
        // check above; it was counted as `how`, and there is no one to tell.
        let _ = completer.complete(Err(failure.clone()));
    }

    /// Ends every request accepted and not launched with `failure` (the
    /// intake's too, so a submit that returned before is covered), dedup
    /// twins included; returns how many ended. `shutdown_now` and the
    /// drain deadline fail them `ShutDown`; `clear_waiting` cancels them.
    fn end_all_waiting(&mut self, now_ns: u64, failure: Failure, how: Ended) -> usize {
        self.drain_intake(now_ns);
        let all = self.planner.waiting.drain_all();
        let ended = all
            .iter()
            .map(|((job, _), _)| 1 + job.followers.len())
            .sum();
        self.end_unlaunched(all, failure, how);
        ended
    }

    fn fail_all_waiting(&mut self) {
        self.end_all_waiting(u64::MAX, Failure::ShutDown, Ended::ShutDown);
    }

    /// Ends requests that never launched with `failure`, counted as `how`
    /// (or as cancelled when the ticket had already closed), and gives their
    /// queue room back.
    fn end_unlaunched(&mut self, entries: Vec<(Entry<I, O>, Meta)>, failure: Failure, how: Ended) {
        if entries.is_empty() {
            return;
        }
        let mut leaving = Leaving::with_capacity(entries.len());
        for ((job, adm), _) in entries {
            self.forget_group(&job);
            leaving.followers(job.followers);
            leaving.add(adm, job.completer, job.priority);
        }
        self.end_leaving(leaving, &failure, how);
    }

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
    fn batch_due(&mut self, now_ns: u64, closing: bool, most: Option<Capacity>) -> Option<usize> {
        let waiting = self.planner.len();
        if waiting == 0 {
            return None;
        }
        let delay = nanos(self.applied.batching.max_queue_delay);
        let forced = closing
            || self.planner.is_full(most)
            || self
                .planner
                .waiting
                .oldest_arrival()
                .is_some_and(|a| now_ns.saturating_sub(a) >= delay)
            || self
                .planner
                .waiting
                .next_deadline()
                .is_some_and(|d| d.saturating_sub(now_ns) <= delay);
        batch_size_now(
            waiting,
            self.planner.batch_limit(),
            forced,
            self.applied.batching.preferred_batch_sizes.as_slice(),
        )
    }

    fn launch(&mut self, now_ns: u64, closing: bool) {
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
            .waiting
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
        while let Some(size) = self.batch_due(now_ns, closing, most) {
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
            self.launch_formed(formed, deciding);
        }
        self.short_last_pass = short_now;
        self.end_unlaunched(abandoned, Failure::Cancelled, Ended::Cancelled);
    }

    /// After the launches, what still waits says how late the queue runs;
    /// publishes the levels submit should refuse (`shed.rs`). None while
    /// closing (the gate refuses everything) or with `ordering.shed` off.
    fn shed(&mut self, now_ns: u64, closing: bool) {
        let knobs = &self.applied;
        let mask = match self.planner.waiting.oldest_arrival() {
            Some(a) if knobs.shed && !closing => {
                let late = Duration::from_nanos(
                    now_ns
                        .saturating_sub(a)
                        .saturating_sub(nanos(knobs.batching.max_queue_delay)),
                );
                let drain = self
                    .drain_rate
                    .drain(self.planner.waiting.tokens(), self.speed_up)
                    .unwrap_or_default();
                levels_to_shed(late.max(drain), knobs.max_wait, &knobs.shed_at)
            }
            _ => 0,
        };
        self.shared.shedding.set(mask);
    }

    /// Hands a formed batch to its worker; the decision begun at `deciding`
    /// is timed up to the hand-off.
    fn launch_formed(&mut self, formed: Formed<Entry<I, O>>, deciding: Instant) {
        let now = Instant::now();
        let counters = &self.shared.counters;
        counters.placement(formed.reason);
        for _ in 0..formed.aged {
            counters.aging_promotion();
        }
        let size = formed.items.len();
        let mut batch = Batch {
            inputs: Vec::with_capacity(formed.items.len()),
            completers: Vec::with_capacity(formed.items.len()),
            followers: Vec::new(),
            cloner: self.cloner,
            reserved: formed.reserved,
        };
        let mut admissions = Vec::with_capacity(formed.items.len());
        for ((mut job, adm), _) in formed.items {
            if job.dedup.is_some() {
                self.forget_group(&job);
                let index = batch.inputs.len();
                for f in std::mem::take(&mut job.followers) {
                    self.sla
                        .queue_wait(f.priority, now.saturating_duration_since(f.submitted));
                    batch
                        .followers
                        .push((index, f.completer, f.priority, f.submitted));
                    admissions.push(f.admission);
                }
            }
            batch.inputs.push(job.input);
            self.sla
                .queue_wait(job.priority, now.saturating_duration_since(job.submitted));
            batch
                .completers
                .push((job.completer, job.priority, job.submitted));
            admissions.push(adm);
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
            size = batch.inputs.len(),
            tokens = batch.reserved.tokens,
            reason = ?formed.reason,
            aged = formed.aged,
            "batch launched"
        );
        // Timed before the hand-off: unparking the worker may give it this
        // core at once (wake-up preemption), and the decision histogram
        // would then time the scheduler, not the decision (replay p99 went
        // from 47 µs to 1.2 ms between runs on 2 cores that way).
        self.sla.decision(deciding.elapsed());
        let link = self.workers[worker]
            .as_ref()
            .expect("placement only offers workers whose link is held");
        if let Err(ring::Full(batch)) = link.jobs.push(batch) {
            // The ring holds one batch per slot; only a capacity raised past
            // the ring's size at run time gets here.
            let undone = self.planner.release(worker, &batch.reserved);
            debug_assert!(undone.is_ok(), "{undone:?}");
            fail_batch(
                &self.shared,
                batch.completers,
                batch.followers,
                "worker queue full",
            );
        } else {
            link.thread.unpark();
        }
    }
}

impl<I, O> Plannable for Entry<I, O> {
    fn cost(&self) -> Capacity {
        as_capacity(self.0.cost)
    }

    fn group(&self) -> Option<u64> {
        self.0.dedup
    }

    /// A group is dropped unrun only when every member cancelled.
    fn abandoned(&self) -> bool {
        self.0.completer.is_cancelled()
            && self.0.followers.iter().all(|f| f.completer.is_cancelled())
    }
}
