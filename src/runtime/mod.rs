//! The runtime: producers submit through a [`Handle`], one collector thread
//! orders, places and launches batches, one thread per worker runs them.
//!
//! * **Submit** (any thread): validate, pass the shutdown gate, push into the
//!   intake, ring the collector's doorbell. No lock, no channel.
//! * **Collector** (one thread, owns everything it touches): absorbs capacity
//!   releases, drains the intake into its [`Waiting`] set, expires overdue
//!   requests, and while a batch is due and a worker has room, pops requests
//!   in order, reserves their cost in its ledger and hands the batch to the
//!   worker's ring.
//! * **Workers** (a thread each): run the executor, deliver each ticket's
//!   outcome, and send the batch's capacity back through the release ring.
//!
//! The fleet (capacity, speed, health) is an `ArcSwap` snapshot, loaded once
//! per collector pass; changing it is a control path behind a named mutex.
//!
//! This file holds [`Runtime`] (its control paths) and the state the
//! threads share; the builder is in `runtime/builder.rs`, the submit path
//! in `runtime/handle.rs`, the errors in `runtime/error.rs`, the
//! collector's loop in `runtime/collector.rs` and the workers' in
//! `runtime/worker.rs`.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::clock::nanos;
use crate::config::SloTarget;
use crate::config::{
    BatchingConfig, Capacity, Config, ConfigError, DeadlineAction, Fairness, OrderingPolicy,
    PlacementPolicy, Preemption, TenantsConfig, WorkerSpec,
};
use crate::device::executor::Executor;
use crate::intake::doorbell::Doorbell;
use crate::intake::gate::Gate;
use crate::intake::ring;
use crate::intake::shed::Shedding;
use crate::intake::tenants::{TenantHold, TenantState, Tenants};
use crate::intake::twins::WaitingKeys;
use crate::intake::Admission;
use crate::observe::sla::{SlaBoard, SlaReport};
use crate::observe::stats::{Counters, Stats};
use crate::outcome::ticket::{Completer, Ticket};
use crate::plan::dedup::{group_meta, Follower};
use crate::plan::order::Meta;
use crate::priority::Priority;
use crate::request::{Cost, Deadline, Request};
use crate::runtime::clearing::Clearing;
use crate::runtime::control::{Mode, Notice, RunMode};

mod builder;
pub(crate) mod clearing;
mod collector;
pub(crate) mod control;
mod error;
mod handle;
pub(crate) mod handoff;
mod stopped;
mod worker;

pub use builder::Builder;
pub use error::{
    BatchSubmitError, BatchSubmitErrorKind, BuildError, Error, SubmitError, SubmitErrorKind,
};
pub use handle::{Handle, Submitter};
use worker::{spawn_worker, WorkerLink};

/// The longest [`Runtime::sla_report`] and [`Runtime::metrics_text`] wait
/// for a worker inside a batch to publish a fresh SLA copy. One between
/// batches is waited for until it answers (at most a second, should the
/// OS not run its thread), since it answers at its next loop point.
pub const SLA_REFRESH_WAIT: Duration = Duration::from_millis(50);

/// Health of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Takes new batches.
    Up,
    /// Finishes what it has, takes nothing new.
    Draining,
    /// Takes nothing.
    Down,
}

#[derive(Debug, Clone)]
struct WorkerState {
    spec: WorkerSpec,
    health: Health,
    /// Removed: `Down` for good; its thread exits once its work is done.
    retired: bool,
}

/// The fleet snapshot the collector loads once per pass.
#[derive(Debug, Clone)]
struct Fleet {
    /// Shared between snapshots: a control operation copies pointers, not
    /// every spec (names included). Still O(workers ever added), since
    /// indices stay stable: 0.36 ms at 20k against 1.1 ms with copied
    /// specs (BENCHMARKS.md, "Worker churn").
    workers: Vec<Arc<WorkerState>>,
    /// The largest capacity any `Up` worker has, per resource: what submit
    /// checks a cost against. Derived once per fleet change (a control
    /// path), so submit does not scan the workers.
    max: Capacity,
}

impl Fleet {
    fn new(workers: Vec<Arc<WorkerState>>) -> Self {
        let max = workers.iter().filter(|w| w.health == Health::Up).fold(
            crate::plan::ledger::NOTHING,
            |m, w| Capacity {
                slots: m.slots.max(w.spec.capacity.slots),
                tokens: m.tokens.max(w.spec.capacity.tokens),
                bytes: m.bytes.max(w.spec.capacity.bytes),
            },
        );
        Self { workers, max }
    }
}

/// One accepted request inside the runtime.
struct Job<I, O> {
    input: I,
    completer: Completer<O>,
    priority: Priority,
    deadline: Option<Deadline>,
    /// Its cost, as two fields rather than a `Cost`, and its dedup key as
    /// a flag and a value rather than an `Option`: the tokens, the level
    /// and the flag share one word. A job is moved through the intake's
    /// ring and the waiting set, and at a free model's rates the runtime's
    /// round trip is bound by those moves: 16 more bytes cost about a
    /// tenth of its throughput (`benches/submit.rs`).
    tokens: u32,
    bytes: u64,
    has_dedup: bool,
    dedup_key: u64,
    submitted: Instant,
    /// `Request::received_at`, if given: where end-to-end latency starts.
    received: Option<Instant>,
    deadline_ns: u64,
    /// Set when drained: nanoseconds since the epoch of its arrival, and
    /// when it expires (`u64::MAX`: never).
    arrival_ns: u64,
    expire_at: u64,
    /// Twins merged into this request by dedup key (see `dedup.rs`).
    followers: Vec<Follower<O>>,
    /// Its tenant (`Request::tenant`): the quota it holds and the figures
    /// (`intake/tenants.rs`); `None` for a request naming no tenant while
    /// no quota applies.
    hold: Option<TenantHold>,
    /// How many times preemption took it back from a worker before it
    /// started (`collector/displace.rs`); at `max_displacements` its batch
    /// is never displaced again.
    displaced: u8,
}

impl<I, O> Job<I, O> {
    fn cost(&self) -> Cost {
        Cost {
            tokens: self.tokens,
            bytes: self.bytes,
        }
    }

    fn dedup(&self) -> Option<u64> {
        self.has_dedup.then_some(self.dedup_key)
    }

    fn into_request(self) -> Request<I> {
        let (cost, dedup_key) = (self.cost(), self.dedup());
        Request {
            input: self.input,
            priority: self.priority,
            deadline: self.deadline,
            cost,
            dedup_key,
            received: self.received,
            tenant: self.hold.as_ref().and_then(TenantHold::named).cloned(),
        }
    }

    /// Where this request's end-to-end latency runs from: when it was
    /// received, if the caller said, else its submit (never later).
    fn since(&self) -> Instant {
        self.received
            .map_or(self.submitted, |r| r.min(self.submitted))
    }

    /// Makes follower `f` this group's head (it takes over the input),
    /// and this request's own identity the follower, for a head that must
    /// leave the group while its twins stay.
    fn swap_head(&mut self, admission: &mut Admission, f: &mut Follower<O>) {
        std::mem::swap(&mut self.completer, &mut f.completer);
        std::mem::swap(&mut self.priority, &mut f.priority);
        let since = self.since();
        self.received = Some(std::mem::replace(&mut f.since, since));
        std::mem::swap(&mut self.submitted, &mut f.submitted);
        std::mem::swap(&mut self.arrival_ns, &mut f.arrival);
        std::mem::swap(&mut self.deadline_ns, &mut f.deadline);
        std::mem::swap(&mut self.expire_at, &mut f.expire_at);
        std::mem::swap(admission, &mut f.admission);
        std::mem::swap(&mut self.hold, &mut f.hold);
    }

    /// Moves the members of this group that `leaves` picks (given each
    /// member's completer and expiry) into `gone`, so their room comes back
    /// before the group launches: members past their expiry, or whose
    /// callers gave up. A leaving head hands the input to a staying
    /// follower (see `swap_head`); with none left, the head stays for the
    /// caller to end. The ordering is the caller's: expiry re-inserts the
    /// group with fresh ordering, a sweep keeps the old one (at worst more
    /// urgent than the members left, never less).
    fn shed_members(
        &mut self,
        admission: &mut Admission,
        gone: &mut Vec<Follower<O>>,
        leaves: impl Fn(&Completer<O>, u64) -> bool,
    ) {
        let mut i = 0;
        while i < self.followers.len() {
            let f = &self.followers[i];
            if leaves(&f.completer, f.expire_at) {
                gone.push(self.followers.swap_remove(i));
            } else {
                i += 1;
            }
        }
        if leaves(&self.completer, self.expire_at) && !self.followers.is_empty() {
            let mut f = self.followers.swap_remove(0);
            self.swap_head(admission, &mut f);
            gone.push(f);
        }
    }

    /// The group's ordering: its members' most urgent values.
    fn group_meta(&self, base: Meta) -> Meta {
        let head = (
            self.priority,
            self.arrival_ns,
            self.deadline_ns,
            self.expire_at,
        );
        let base = Meta {
            level: head.0,
            arrival: head.1,
            deadline: head.2,
            expire_at: head.3,
            ..base
        };
        group_meta(
            base,
            self.followers
                .iter()
                .map(|f| (f.priority, f.arrival, f.deadline, f.expire_at)),
        )
    }
}

/// A validated job and the ticket that will receive its outcome.
type Prepared<I, O> = (Job<I, O>, Ticket<O>);

/// One launched request's caller: its ticket's completer, its level,
/// where its latency runs from, its tenant (`None`: the default tenant,
/// untracked at submit) and the tokens its tenant was charged. 40 bytes:
/// a batch's callers are written by the collector and read by the worker
/// per request.
type Caller<O> = (
    Completer<O>,
    Priority,
    Instant,
    Option<Arc<TenantState>>,
    u32,
);

/// A formed batch handed to a worker and not yet started: its requests
/// whole, with their ordering, so that the collector can still recall it
/// and put them back (preemption). It travels in a [`TakeOnce`] cell, which
/// the worker opens into a [`Batch`] when it starts it (`worker.rs`).
struct Staged<I, O> {
    jobs: Vec<(Job<I, O>, Meta)>,
    cloner: Option<fn(&O) -> O>,
    reserved: Capacity,
    /// Its number, unique in the runtime: what the worker's stop ticket
    /// names to stop it (`device/stop.rs`).
    seq: u64,
}

/// What a started request needs, besides its input and its caller, to
/// wait again should its running batch stop for more urgent work: kept
/// per request only for an executor that declares a re-run safe.
struct Back {
    meta: Meta,
    deadline: Option<Deadline>,
    bytes: u64,
    submitted: Instant,
    received: Option<Instant>,
    deadline_ns: u64,
    expire_at: u64,
    displaced: u8,
    named: bool,
}

impl<I, O> Job<I, O> {
    /// The request again, from what its batch split it into.
    fn rebuild(input: I, caller: Caller<O>, back: Back, displaced: bool) -> (Self, Meta) {
        let (completer, priority, _, tenant, tokens) = caller;
        let job = Job {
            input,
            completer,
            priority,
            deadline: back.deadline,
            tokens,
            bytes: back.bytes,
            has_dedup: false,
            dedup_key: 0,
            submitted: back.submitted,
            received: back.received,
            deadline_ns: back.deadline_ns,
            arrival_ns: back.meta.arrival,
            expire_at: back.expire_at,
            followers: Vec::new(),
            hold: tenant.map(|t| TenantHold::rejoin(t, tokens, back.named)),
            // Stopped for more urgent work counts against the same cap as
            // displaced before it started.
            displaced: back.displaced.saturating_add(u8::from(displaced)),
        };
        (job, back.meta)
    }
}

/// A staged batch's cell: one handle on the worker's ring, one kept by the
/// collector while the batch may still be recalled.
type StagedCell<I, O> = Arc<handoff::TakeOnce<Staged<I, O>>>;

/// A batch a worker has started: what the executor reads and what the
/// outcomes go to.
struct Batch<I, O> {
    inputs: Vec<I>,
    /// Each request's completer, level, submit time and tenant.
    completers: Vec<Caller<O>>,
    /// Deduplicated twins: the index of the input whose output they share.
    followers: Vec<(usize, Caller<O>)>,
    /// Copies an output for a follower; set when dedup is enabled.
    cloner: Option<fn(&O) -> O>,
    reserved: Capacity,
    /// Its number (`Staged::seq`).
    seq: u64,
    /// Per request, what it needs to wait again; empty unless the
    /// executor declares a re-run safe and the batch has no twins.
    backs: Vec<Back>,
}

/// A request whose executor reported a cost other than its charge: its
/// tenant, its level, the tokens charged and the tokens it really cost.
type Correction = (Option<Arc<str>>, Priority, u32, u32);

/// Capacity a worker gives back when a batch is done.
struct Release<I, O> {
    worker: usize,
    amount: Capacity,
    /// Costs the executor reported that differ from the charges (empty,
    /// unallocated, for an executor that reports none).
    corrections: Vec<Correction>,
    /// How long the batch kept its worker busy (not counting a wait
    /// behind another batch on a lane: `worker.rs`, `service_time`), for
    /// placement's finish estimates, the adaptive batch limit and
    /// shedding's drain estimate.
    took: Duration,
    /// Requests of a batch stopped for more urgent work, unfinished: they
    /// wait again (empty, unallocated, for every other batch).
    requeue: Vec<(Job<I, O>, Meta)>,
}

struct Shared {
    gate: Gate,
    doorbell: Doorbell,
    counters: Counters,
    fleet: ArcSwap<Fleet>,
    epoch: Instant,
    /// Raised by shutdown (control path); see `control.rs`.
    mode: Mode,
    /// Marked by every control operation that changes the fleet or the
    /// knobs: the collector takes new links, retires workers and reloads
    /// on its next pass, and its sleep re-check sees a mark it has not
    /// taken (see `control.rs`).
    changed: Notice,
    /// The knobs `reload_config` may change, swapped whole.
    knobs: ArcSwap<Knobs>,
    /// Where every SLA recorder publishes.
    sla: SlaBoard,
    /// Reserved capacity per worker, as the collector last published it
    /// (every 100 ms at most, for metrics).
    reserved: ArcSwap<Vec<Capacity>>,
    /// Built with `Builder::deduplicate`: dedup keys are honoured.
    dedup: bool,
    /// The keys whose dedup group waits in the collector: a twin of one
    /// is let in at a shed level (`twins.rs`). Minimal, and always empty,
    /// with dedup off.
    waiting_keys: Arc<WaitingKeys>,
    /// `clear_waiting`'s handshake with the collector (control path).
    clearing: Clearing,
    /// A submit was refused for a full queue since the collector last
    /// looked: it sweeps its waiting set for cancelled requests, whose room
    /// it frees otherwise at their turn or the next periodic sweep. A hint
    /// with no data behind it (the sweep reads each ticket's own state,
    /// with its own Acquire); `Doorbell::ring` wakes a sleeping collector,
    /// whose re-check reads it. Only the refusal that marks it rings: one
    /// that finds it marked comes after a ring whose sweep has not started
    /// yet (the collector takes it as it starts one), so that sweep covers
    /// it too.
    sweep_wanted: Notice,
    /// The levels submit refuses while the queue runs late, set by the
    /// collector each pass (see `shed.rs`).
    shedding: Shedding,
    /// Every tenant's quota and figures (`intake/tenants.rs`).
    tenants: Tenants,
}

/// The runtime-changeable part of a `Config`.
#[derive(Debug, Clone, PartialEq)]
struct Knobs {
    batching: BatchingConfig,
    max_wait: Duration,
    ordering: OrderingPolicy,
    fairness: Fairness,
    tenants: TenantsConfig,
    preemption: Preemption,
    shed: bool,
    shed_at: [f64; Priority::COUNT],
    deadline_action: [DeadlineAction; Priority::COUNT],
    default_deadline: [Option<Duration>; Priority::COUNT],
    placement: PlacementPolicy,
    urgent_slack: Duration,
    slo: [SloTarget; Priority::COUNT],
}

impl Knobs {
    fn of(c: &Config) -> Self {
        Self {
            batching: c.batching,
            max_wait: c.max_wait,
            ordering: c.ordering,
            fairness: c.fairness,
            tenants: c.tenants.clone(),
            preemption: c.preemption,
            shed: c.shed,
            shed_at: c.shed_at,
            deadline_action: c.deadline_action,
            default_deadline: c.default_deadline,
            placement: c.placement,
            urgent_slack: c.urgent_slack,
            slo: c.slo,
        }
    }
}

impl Shared {
    /// See `sweep_wanted`. Called only on a refusal, never on the accepting
    /// path.
    fn want_sweep(&self) {
        if !self.sweep_wanted.is_marked() {
            self.sweep_wanted.mark();
            self.doorbell.ring();
        }
    }

    fn ns_since_epoch(&self, t: Instant) -> u64 {
        nanos(t.saturating_duration_since(self.epoch))
    }
}

struct Threads {
    collector: JoinHandle<()>,
    workers: Vec<JoinHandle<()>>,
}

impl Threads {
    fn ids(&self) -> Vec<std::thread::ThreadId> {
        std::iter::once(&self.collector)
            .chain(&self.workers)
            .map(|t| t.thread().id())
            .collect()
    }
}

/// Whose joins are under way, so that every `shutdown` returns only once
/// the threads are joined: the first caller takes the threads and joins
/// them; a later one waits here until it is done. The lock is not held
/// through the joins: a batch function or a shortfall hook may take the
/// runtime's other control locks (an SLA report, `add_worker`) while the
/// first caller waits on its thread.
#[derive(Default)]
struct Joining {
    state: Mutex<JoinState>,
    done: std::sync::Condvar,
}

#[derive(Default)]
struct JoinState {
    /// The runtime's own threads, once a caller has taken them to join.
    ids: Option<Vec<std::thread::ThreadId>>,
    /// Every one of them is joined.
    joined: bool,
}

/// A running batcher. Dropping it is [`shutdown_now`](Runtime::shutdown_now).
///
/// ```
/// use convoy::{Config, Priority, Request, Runtime};
///
/// let rt = Runtime::builder()
///     .config(Config { cpu_workers: 2, ..Config::default() })
///     .batch_fn(|xs: &[u32]| xs.iter().map(|x| x * 2).collect())
///     .build()?;
/// let h = rt.handle();
/// let t = h.submit(Request::new(21).priority(Priority::High)).unwrap();
/// assert_eq!(t.wait(), Ok(42));
/// rt.shutdown();
/// # Ok::<(), convoy::BuildError>(())
/// ```
pub struct Runtime<I, O> {
    handle: Handle<I, O>,
    shared: Arc<Shared>,
    /// Control path: joined once by shutdown.
    threads: Mutex<Option<Threads>>,
    /// Control path: lets a second `shutdown` wait for the first's joins.
    joining: Joining,
    /// Control path: serialises fleet changes and holds what adding a
    /// worker needs (never touched by submit or the collector loop).
    control: Mutex<Spawner<I, O>>,
}

/// What `add_worker` needs to start a worker like the others.
struct Spawner<I, O> {
    /// The config as built or last reloaded, to tell fixed knobs apart.
    config: Config,
    executor: Arc<dyn Executor<I, O>>,
    releases: ring::Producer<Release<I, O>>,
    /// Links of added workers, waiting for the collector (control path).
    new_links: Arc<Mutex<Vec<WorkerLink<I, O>>>>,
}

impl<I: Send + 'static, O: Send + 'static> Runtime<I, O> {
    /// A cloneable handle for producers.
    pub fn handle(&self) -> Handle<I, O> {
        self.handle.clone()
    }

    /// Counters per priority and totals; lock-free.
    ///
    /// An outcome is counted before its ticket can see it, so once a
    /// `wait()` has returned (or a `try_take()` given a result), a snapshot
    /// taken after it includes that request, and no longer counts it in
    /// `queue_depth` (its room is given back before it is told). The one
    /// blur: a ticket cancelled while its outcome is being delivered, or
    /// after it was delivered and before it was taken (`cancel()` then
    /// returns `false`), is counted as delivered (completed, failed,
    /// expired), though the ticket reports `Cancelled`; every request is
    /// still counted exactly once.
    ///
    /// The counters are not read at one instant, but in an order that keeps
    /// two promises while requests are in flight: per level, the outcomes
    /// never exceed `inserted` (`lost()` never has to saturate), and a
    /// launched batch counted in `batches` no longer holds room in
    /// `queue_depth`, so a caller who saw it counted and submits finds the
    /// room (model-checked: `loom-tests/tests/stats.rs`).
    ///
    /// ```
    /// # use convoy::{Request, Runtime};
    /// let rt = Runtime::builder().batch_fn(|xs: &[u32]| xs.to_vec()).build()?;
    /// for i in 0..10 {
    ///     rt.handle().submit(Request::new(i))?.wait().unwrap();
    ///     assert_eq!(rt.stats().total().completed, u64::from(i) + 1);
    ///     assert_eq!(rt.stats().total().queue_depth, 0);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> Stats {
        self.handle.stats()
    }

    /// The Prometheus text exposition of every counter, gauge and
    /// histogram (`convoy_` prefix, base units, `priority` labels); see
    /// `convoy::metrics` for the list.
    pub fn metrics_text(&self) -> String {
        let fleet = self.shared.fleet.load();
        let reserved = self.shared.reserved.load();
        // Removed workers leave the exposition (see `convoy::metrics`).
        let workers = fleet
            .workers
            .iter()
            .enumerate()
            .filter(|(_, w)| !w.retired)
            .map(|(i, w)| crate::observe::metrics::WorkerSnapshot {
                index: i,
                name: w.spec.name.clone(),
                capacity: w.spec.capacity,
                reserved: reserved
                    .get(i)
                    .copied()
                    .unwrap_or(crate::plan::ledger::NOTHING),
                up: w.health == Health::Up,
            })
            .collect();
        crate::observe::metrics::render(crate::observe::metrics::Snapshot {
            stats: self.stats(),
            // Asks for fresh copies first, so the buckets below read them too.
            sla: self.sla_report(),
            e2e_buckets: self
                .shared
                .sla
                .prometheus_buckets(true, crate::observe::metrics::LATENCY_BOUNDS_S),
            wait_buckets: self
                .shared
                .sla
                .prometheus_buckets(false, crate::observe::metrics::LATENCY_BOUNDS_S),
            decision: self
                .shared
                .sla
                .decision_buckets(crate::observe::metrics::DECISION_BOUNDS_S),
            workers,
            shed: self.shared.shedding.mask(),
        })
    }

    /// Whether `shutdown`/`shutdown_now` has begun (new submits are then
    /// refused).
    pub fn is_shutting_down(&self) -> bool {
        self.shared.mode.get() != RunMode::Running
    }

    /// Latency percentiles (queue wait, execution, end to end), SLO
    /// violations and compliance per priority.
    ///
    /// The collector and each worker record into histograms of their own
    /// and publish a copy every 100 ms. A report first asks each of them
    /// for a fresh copy and waits for the answers: so it includes every
    /// request whose ticket had its outcome before the call. A worker
    /// still inside a batch after [`SLA_REFRESH_WAIT`] answers too late
    /// and is read from its last copy (at most 100 ms older than its
    /// previous batch). After `shutdown` a report is exact and does not
    /// wait.
    ///
    /// ```
    /// # use convoy::{Priority, Request, Runtime};
    /// let rt = Runtime::builder().batch_fn(|xs: &[u32]| xs.to_vec()).build()?;
    /// for i in 0..3 {
    ///     rt.handle().submit(Request::new(i).priority(Priority::High))?.wait().unwrap();
    /// }
    /// let high = rt.sla_report().of(Priority::High).clone();
    /// assert_eq!((high.end_to_end.count, high.queue_wait.count), (3, 3));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sla_report(&self) -> SlaReport {
        self.refresh_sla();
        let now = self.shared.epoch.elapsed();
        let knobs = self.shared.knobs.load();
        let mut report = self.shared.sla.report(&knobs.slo, now);
        let tenants = &self.shared.tenants;
        let ranked = tenants.rank(knobs.tenants.top_n);
        (report.tenants, report.other_tenants) =
            crate::observe::sla::TenantSla::ranked(&ranked, tenants.other_latency());
        report.tenants_tracked = ranked.tracked;
        report
    }

    /// Asks the collector and the workers for fresh SLA copies and wakes
    /// them so that idle ones answer at once (control path). Called from
    /// one of those threads (a shortfall hook, a batch function), it does
    /// not ask: that thread cannot answer while it waits.
    fn refresh_sla(&self) {
        let me = std::thread::current().id();
        let workers: Vec<std::thread::Thread> = {
            let threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
            threads
                .iter()
                .flat_map(|t| &t.workers)
                .map(|w| w.thread().clone())
                .collect()
        };
        if self.shared.doorbell.is_sleeper_current() || workers.iter().any(|w| w.id() == me) {
            return;
        }
        self.shared.sla.refresh(
            || {
                self.shared.doorbell.ring();
                for w in &workers {
                    w.unpark();
                }
            },
            SLA_REFRESH_WAIT,
        );
    }

    /// Changes a worker's capacity (control path). New reservations see it
    /// at the collector's next pass; running batches keep what they hold.
    pub fn set_capacity(&self, worker: usize, capacity: Capacity) -> Result<(), ConfigError> {
        if capacity.slots == 0 || capacity.tokens == 0 {
            return Err(ConfigError::Invalid {
                key: format!("workers[{worker}].capacity"),
                reason: "slots and tokens must be at least 1".into(),
            });
        }
        self.update_worker(worker, |w| {
            w.spec.capacity = capacity;
            Ok(())
        })
    }

    /// Marks a worker up, draining or down (control path). A removed worker
    /// stays down.
    pub fn set_health(&self, worker: usize, health: Health) -> Result<(), ConfigError> {
        self.update_worker(worker, |w| {
            if w.retired && health != Health::Down {
                return Err("the worker was removed".into());
            }
            w.health = health;
            Ok(())
        })
    }

    /// Swaps the knobs that may change while running: batch limits and queue
    /// delay, `max_wait` (aging), deadline actions, placement policy and
    /// urgent slack. The collector takes them up on its next pass; requests
    /// in flight are untouched and none is lost. A change to a fixed knob
    /// (`intake`, `workers`, `cpu_workers`, `shutdown_timeout_ms`) or an
    /// invalid value is refused and the running config stays as it was.
    pub fn reload_config(&self, new: Config) -> Result<(), ConfigError> {
        new.validate()?;
        let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let old = &control.config;
        let fixed = [
            ("intake", old.intake != new.intake),
            ("workers", old.workers != new.workers),
            ("cpu_workers", old.cpu_workers != new.cpu_workers),
            (
                "shutdown_timeout_ms",
                old.shutdown_timeout != new.shutdown_timeout,
            ),
        ];
        if let Some((key, _)) = fixed.iter().find(|(_, changed)| *changed) {
            return Err(ConfigError::Fixed {
                key: (*key).to_owned(),
            });
        }
        if old.tenants != new.tenants {
            self.shared.tenants.set_limits(new.tenants.limits());
        }
        self.shared.knobs.store(Arc::new(Knobs::of(&new)));
        control.config = new;
        self.shared.changed.mark();
        self.shared.doorbell.ring();
        Ok(())
    }

    /// The config as built or last reloaded (control path).
    pub fn config(&self) -> Config {
        self.control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .config
            .clone()
    }

    /// Starts one more worker like the others (same executor) and returns
    /// its index. Control path: spawns a thread; the collector picks the
    /// worker up on its next pass.
    pub fn add_worker(&self, spec: WorkerSpec) -> Result<usize, BuildError> {
        let spawner = self.control.lock().unwrap_or_else(|p| p.into_inner());
        if self.shared.gate.is_closed() {
            return Err(BuildError::Spawn("the runtime is shutting down".into()));
        }
        let mut workers = self.shared.fleet.load().workers.clone();
        let index = workers.len();
        spec.validate(&format!("workers[{index}]"))?;
        let (link, handle) = spawn_worker(
            index,
            &spec,
            &spawner.executor,
            &spawner.releases,
            &self.shared,
        )?;
        spawner
            .new_links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(link);
        if let Some(t) = self
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            // Join removed workers whose threads have exited: an unjoined
            // thread keeps its stack, so a fleet that scales up and down
            // for days would grow by one per removal.
            let (exited, running): (Vec<_>, Vec<_>) =
                t.workers.drain(..).partition(|w| w.is_finished());
            t.workers = running;
            for w in exited {
                let _ = w.join();
            }
            t.workers.push(handle);
        }
        workers.push(Arc::new(WorkerState {
            spec,
            health: Health::Up,
            retired: false,
        }));
        self.shared.fleet.store(Arc::new(Fleet::new(workers)));
        // After the link is pushed and the fleet stored, before the ring.
        self.shared.changed.mark();
        self.shared.doorbell.ring();
        Ok(index)
    }

    /// Removes a worker: it takes no new batch, finishes what it holds, and
    /// its thread exits. Its index is not reused (control path).
    pub fn remove_worker(&self, worker: usize) -> Result<(), ConfigError> {
        self.update_worker(worker, |w| {
            w.health = Health::Down;
            w.retired = true;
            Ok(())
        })
    }

    fn update_worker(
        &self,
        worker: usize,
        f: impl FnOnce(&mut WorkerState) -> Result<(), String>,
    ) -> Result<(), ConfigError> {
        let _control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let mut workers = self.shared.fleet.load().workers.clone();
        let key = format!("workers[{worker}]");
        let w = workers
            .get_mut(worker)
            .ok_or_else(|| ConfigError::Invalid {
                key: key.clone(),
                reason: "no such worker".into(),
            })?;
        f(Arc::make_mut(w)).map_err(|reason| ConfigError::Invalid { key, reason })?;
        self.shared.fleet.store(Arc::new(Fleet::new(workers)));
        self.shared.changed.mark();
        self.shared.doorbell.ring();
        Ok(())
    }

    /// Cancels every request accepted and not yet launched, at every level,
    /// and returns how many: each ticket reports `Cancelled` (counted as
    /// cancelled), its queue room is free again, and batches already
    /// running finish. Requests submitted before the call are covered;
    /// submits racing it may land either side. Blocks until the collector
    /// has done it (one pass); 0 once the runtime has stopped, and 0 at
    /// once from a callback on the collector's own thread (the clear then
    /// happens on its next pass). A control operation (seed 000's
    /// `clear_waiting`): it takes a mutex, never the hot path's.
    ///
    /// ```
    /// use convoy::{Failure, Request, Runtime};
    /// use std::time::Duration;
    /// let rt = Runtime::builder()
    ///     .batch_fn(|xs: &[u32]| { std::thread::sleep(Duration::from_millis(100)); xs.to_vec() })
    ///     .build()?;
    /// let h = rt.handle();
    /// let tickets: Vec<_> = (0..1000).map(|i| h.submit(Request::new(i)).unwrap()).collect();
    /// let cleared = rt.clear_waiting();
    /// let cancelled = tickets.into_iter().map(|t| t.wait()).filter(|o| *o == Err(Failure::Cancelled)).count();
    /// assert_eq!(cancelled, cleared); // the rest had launched and completed
    /// assert!(cleared > 0);
    /// # Ok::<(), convoy::BuildError>(())
    /// ```
    pub fn clear_waiting(&self) -> usize {
        self.handle.clear_waiting()
    }

    /// Stops intake (submits get their request back with `ShuttingDown`),
    /// finishes every accepted request within `shutdown_timeout`, fails the
    /// rest with `ShutDown`, and joins every thread. Idempotent, and every
    /// caller returns only once the threads are joined: a second call,
    /// from another thread, waits for the first's joins. Called from one
    /// of the runtime's own threads (a batch function, a shortfall hook),
    /// it asks for the stop and returns at once: that thread cannot join
    /// itself, and the collector waits for the batch it is in; a later
    /// call from outside (or `Drop`) joins.
    pub fn shutdown(&self) {
        self.stop(RunMode::Draining);
    }

    /// Stops intake and fails every waiting request with `ShutDown` at once;
    /// batches already running finish. Joins every thread, as
    /// [`shutdown`](Self::shutdown) does (the same rules for a second caller
    /// and for a call from the runtime's own threads).
    pub fn shutdown_now(&self) {
        self.stop(RunMode::Aborting);
    }

    fn stop(&self, mode: RunMode) {
        stop(&self.shared, &self.threads, &self.joining, mode);
    }
}

impl<I, O> Drop for Runtime<I, O> {
    fn drop(&mut self) {
        stop(
            &self.shared,
            &self.threads,
            &self.joining,
            RunMode::Aborting,
        );
    }
}

/// Shared by `shutdown`, `shutdown_now` and `Drop`.
fn stop(shared: &Shared, threads: &Mutex<Option<Threads>>, joining: &Joining, mode: RunMode) {
    // The strongest mode asked for wins (abort beats drain).
    shared.mode.raise(mode);
    shared.gate.close();
    shared.doorbell.ring();
    let me = std::thread::current().id();
    let taken = {
        let mut threads = threads.lock().unwrap_or_else(|p| p.into_inner());
        let ids = threads.as_ref().map(Threads::ids);
        if ids.as_ref().is_some_and(|ids| ids.contains(&me)) {
            // One of the runtime's own threads (a batch function, a
            // shortfall hook): it cannot join itself, nor wait for the
            // collector, which waits for the batch it is in. The stop is
            // asked; a caller outside (a later `shutdown`, `Drop`) joins.
            return;
        }
        if ids.is_some() {
            // Recorded under the threads lock, so a caller that finds them
            // taken finds this too.
            joining.state.lock().unwrap_or_else(|p| p.into_inner()).ids = ids;
        }
        threads.take()
    };
    let Some(t) = taken else {
        let mut state = joining.state.lock().unwrap_or_else(|p| p.into_inner());
        // Not for the runtime's own threads, as above.
        while state.ids.as_ref().is_some_and(|ids| !ids.contains(&me)) && !state.joined {
            state = joining.done.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        return;
    };
    // A panic inside convoy's own threads is a bug; the joins still
    // complete so shutdown returns.
    let _ = t.collector.join();
    for w in t.workers {
        let _ = w.join();
    }
    joining
        .state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .joined = true;
    joining.done.notify_all();
}
