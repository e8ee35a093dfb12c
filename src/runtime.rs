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

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering as StdOrdering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::clearing::Clearing;
use crate::clock::{after, nanos};
use crate::config::{
    BatchingConfig, Capacity, Config, ConfigError, DeadlineAction, OrderingPolicy, PlacementPolicy,
    WorkerSpec,
};
use crate::dedup::{group_meta, Follower};
use crate::doorbell::Doorbell;
use crate::executor::{BatchFn, Executor, Lane};
use crate::gate::Gate;
use crate::intake::{Admission, BatchRejectReason, Intake, IntakeConsumer, IntakeError};
use crate::order::{Meta, WaitKey};
use crate::outcome::{Failure, Outcome};
use crate::placement::{Candidate, Placer};
use crate::planner::{batch_size_now, Formed, Plan, Plannable, Planner};
use crate::priority::{InsertPolicy, Priority};
use crate::request::{Cost, Deadline, Request};
use crate::ring;
use crate::sla::{SlaBoard, SlaRecorder, SlaReport, SloTarget};
use crate::stats::{Counters, Ended, Stats};
use crate::ticket::{self, Completer, Ticket};

/// Why a runtime could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The config is invalid.
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    /// No executor was given.
    #[error("no executor: call .batch_fn(..) or .executor(..)")]
    NoExecutor,
    /// A thread could not be started.
    #[error("could not start thread: {0}")]
    Spawn(String),
}

impl From<IntakeError> for BuildError {
    fn from(e: IntakeError) -> Self {
        BuildError::Config(e.into())
    }
}

/// Why a submit was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitErrorKind {
    /// The request's level is full; retry later.
    QueueFull,
    /// The runtime is shutting down or gone.
    ShuttingDown,
    /// The cost exceeds what any worker (or a batch) can ever hold.
    CostNeverFits,
    /// The deadline is zero or already past.
    DeadlinePassed,
    /// The request has a dedup key but the runtime was built without
    /// [`Builder::deduplicate`].
    DedupNotEnabled,
    /// The executor can never run this input ([`Executor::check`]): a
    /// token outside the model's vocabulary, a request over its maximum
    /// length. [`SubmitError::reason`] says which.
    Invalid,
}

/// A refused submit; the request is handed back untouched.
#[derive(Clone, PartialEq, thiserror::Error)]
#[error("submit refused: {kind:?}{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
pub struct SubmitError<I> {
    /// Why.
    pub kind: SubmitErrorKind,
    /// The executor's words for an [`Invalid`](SubmitErrorKind::Invalid)
    /// input; `None` for the other kinds.
    pub reason: Option<String>,
    /// The request, as given.
    pub request: Request<I>,
}

impl<I> SubmitError<I> {
    fn new(kind: SubmitErrorKind, request: Request<I>) -> Self {
        Self {
            kind,
            reason: None,
            request,
        }
    }
}

impl<I> std::fmt::Debug for SubmitError<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubmitError")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// A batch submit that did not accept every request.
#[derive(thiserror::Error)]
#[error("batch submit: {} accepted, {} refused", accepted.len(), rejected.len())]
pub struct BatchSubmitError<I, O> {
    /// Tickets of the requests that went in (none for `AllOrNothing`).
    pub accepted: Vec<Ticket<O>>,
    /// Every refused request with its reason.
    pub rejected: Vec<SubmitError<I>>,
}

impl<I, O> std::fmt::Debug for BatchSubmitError<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchSubmitError")
            .field("accepted", &self.accepted.len())
            .field("rejected", &self.rejected.len())
            .finish()
    }
}

/// Health of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    workers: Vec<WorkerState>,
    /// The largest capacity any `Up` worker has, per resource: what submit
    /// checks a cost against. Derived once per fleet change (a control
    /// path), so submit does not scan the workers.
    max: Capacity,
}

impl Fleet {
    fn new(workers: Vec<WorkerState>) -> Self {
        let max = workers.iter().filter(|w| w.health == Health::Up).fold(
            crate::ledger::NOTHING,
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
    cost: Cost,
    submitted: Instant,
    deadline_ns: u64,
    /// Set when drained: nanoseconds since the epoch of its arrival, and
    /// when it expires (`u64::MAX`: never).
    arrival_ns: u64,
    expire_at: u64,
    dedup: Option<u64>,
    /// Twins merged into this request by dedup key (see `dedup.rs`).
    followers: Vec<Follower<O>>,
}

impl<I, O> Job<I, O> {
    fn into_request(self) -> Request<I> {
        Request {
            input: self.input,
            priority: self.priority,
            deadline: self.deadline,
            cost: self.cost,
            dedup_key: self.dedup,
        }
    }

    /// Makes follower `f` this group's head (it takes over the input),
    /// and this request's own identity the follower, for a head that must
    /// leave the group while its twins stay.
    fn swap_head(&mut self, admission: &mut Admission, f: &mut Follower<O>) {
        std::mem::swap(&mut self.completer, &mut f.completer);
        std::mem::swap(&mut self.priority, &mut f.priority);
        std::mem::swap(&mut self.submitted, &mut f.submitted);
        std::mem::swap(&mut self.arrival_ns, &mut f.arrival);
        std::mem::swap(&mut self.deadline_ns, &mut f.deadline);
        std::mem::swap(&mut self.expire_at, &mut f.expire_at);
        std::mem::swap(admission, &mut f.admission);
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

/// A batch on its way to a worker.
struct Batch<I, O> {
    inputs: Vec<I>,
    /// Each request's completer, level and submit time.
    completers: Vec<(Completer<O>, Priority, Instant)>,
    /// Deduplicated twins: the index of the input whose output they share.
    followers: Vec<(usize, Completer<O>, Priority, Instant)>,
    /// Copies an output for a follower; set when dedup is enabled.
    cloner: Option<fn(&O) -> O>,
    reserved: Capacity,
}

/// Capacity a worker gives back when a batch is done.
struct Release {
    worker: usize,
    amount: Capacity,
    /// How long the batch ran, for placement's finish estimates.
    took: Duration,
}

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const ABORTING: u8 = 2;

struct Shared {
    gate: Gate,
    doorbell: Doorbell,
    counters: Counters,
    fleet: ArcSwap<Fleet>,
    epoch: Instant,
    /// RUNNING, DRAINING or ABORTING; written by shutdown (control path).
    mode: AtomicU8,
    /// Set by `add_worker`/`remove_worker`: the collector takes the new
    /// links and retires workers on its next pass. The only thing the
    /// collector reads of the control path on every pass.
    fleet_changed: AtomicBool,
    /// The knobs `reload_config` may change, swapped whole.
    knobs: ArcSwap<Knobs>,
    /// Where every SLA recorder publishes.
    sla: SlaBoard,
    /// Reserved capacity per worker, as the collector last published it
    /// (every 100 ms at most, for metrics).
    reserved: ArcSwap<Vec<Capacity>>,
    /// Built with `Builder::deduplicate`: dedup keys are honoured.
    dedup: bool,
    /// `clear_waiting`'s handshake with the collector (control path).
    clearing: Clearing,
}

/// The runtime-changeable part of a `Config`.
#[derive(Debug, Clone, PartialEq)]
struct Knobs {
    batching: BatchingConfig,
    max_wait: Duration,
    ordering: OrderingPolicy,
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
            deadline_action: c.deadline_action,
            default_deadline: c.default_deadline,
            placement: c.placement,
            urgent_slack: c.urgent_slack,
            slo: c.slo,
        }
    }
}

impl Shared {
    fn ns_since_epoch(&self, t: Instant) -> u64 {
        nanos(t.saturating_duration_since(self.epoch))
    }
}

/// Builds a [`Runtime`].
pub struct Builder<I, O> {
    config: Config,
    executor: Option<Arc<dyn Executor<I, O>>>,
    on_shortfall: Option<Box<dyn Fn(Cost) + Send + 'static>>,
    cloner: Option<fn(&O) -> O>,
}

impl<I: Send + 'static, O: Clone + Send + 'static> Builder<I, O> {
    /// Honours [`Request::dedup_key`]: requests with the same key waiting
    /// at the same time run once and each ticket gets a clone of the
    /// output (the rule is in `convoy::dedup`'s source docs). Without this,
    /// a request with a key is refused with `DedupNotEnabled`.
    ///
    /// ```
    /// use convoy::{Config, Request, Runtime};
    /// let rt = Runtime::builder()
    ///     .config(Config { cpu_workers: 1, ..Config::default() })
    ///     .batch_fn(|xs: &[u32]| xs.iter().map(|x| x + 1).collect())
    ///     .deduplicate()
    ///     .build()?;
    /// let h = rt.handle();
    /// let a = h.submit(Request::new(1).dedup_key("same")).unwrap();
    /// let b = h.submit(Request::new(1).dedup_key("same")).unwrap();
    /// assert_eq!((a.wait(), b.wait()), (Ok(2), Ok(2)));
    /// rt.shutdown();
    /// # Ok::<(), convoy::BuildError>(())
    /// ```
    pub fn deduplicate(mut self) -> Self {
        self.cloner = Some(<O as Clone>::clone);
        self
    }
}

impl<I: Send + 'static, O: Send + 'static> Builder<I, O> {
    /// Sets the config (default: `Config::default()`).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// A CPU executor from a closure run on each worker's thread.
    pub fn batch_fn<F>(self, f: F) -> Self
    where
        F: Fn(&[I]) -> Vec<O> + Send + Sync + 'static,
    {
        self.executor(BatchFn(f))
    }

    /// Any executor.
    pub fn executor(mut self, executor: impl Executor<I, O>) -> Self {
        self.executor = Some(Arc::new(executor));
        self
    }

    /// Called on the collector thread when a request fits no worker right
    /// now (seed 003's "need a new worker" signal). Keep it short: the
    /// collector waits for it. A panic in it is caught and logged, and the
    /// collector goes on.
    pub fn on_capacity_shortfall(mut self, f: impl Fn(Cost) + Send + 'static) -> Self {
        self.on_shortfall = Some(Box::new(f));
        self
    }

    /// Validates the config and starts the collector and worker threads.
    pub fn build(self) -> Result<Runtime<I, O>, BuildError> {
        self.config.validate()?;
        let executor = self.executor.ok_or(BuildError::NoExecutor)?;
        let specs = self.config.fleet();
        let (intake, intake_rx) = Intake::new(self.config.intake)?;
        let total_slots: usize = specs.iter().map(|w| w.capacity.slots as usize).sum();
        let (release_tx, release_rx) = ring::channel::<Release>(
            total_slots.clamp(2, 1 << 20).next_power_of_two(),
        )
        .map_err(|e| {
            BuildError::Config(ConfigError::Invalid {
                key: "workers".into(),
                reason: e.to_string(),
            })
        })?;
        let shared = Arc::new(Shared {
            gate: Gate::new(),
            doorbell: Doorbell::new(),
            counters: Counters::new(),
            fleet: ArcSwap::from_pointee(Fleet::new(
                specs
                    .iter()
                    .map(|spec| WorkerState {
                        spec: spec.clone(),
                        health: Health::Up,
                        retired: false,
                    })
                    .collect(),
            )),
            epoch: Instant::now(),
            mode: AtomicU8::new(RUNNING),
            fleet_changed: AtomicBool::new(false),
            knobs: ArcSwap::from_pointee(Knobs::of(&self.config)),
            sla: SlaBoard::default(),
            reserved: ArcSwap::from_pointee(Vec::new()),
            dedup: self.cloner.is_some(),
            clearing: Clearing::new(),
        });

        let mut worker_threads = Vec::new();
        let mut worker_rings = Vec::new();
        for (index, spec) in specs.iter().enumerate() {
            let (link, handle) = spawn_worker(index, spec, &executor, &release_tx, &shared)?;
            worker_rings.push(Some(link));
            worker_threads.push(handle);
        }
        let checker = executor.clone();
        let new_links = Arc::new(Mutex::new(Vec::new()));
        let spawner = Spawner {
            config: self.config.clone(),
            executor,
            releases: release_tx.clone(),
            new_links: new_links.clone(),
        };
        drop(release_tx);

        let mut collector = Collector {
            shared: shared.clone(),
            intake: intake_rx,
            planner: Planner::new(
                specs.len(),
                self.config.max_wait,
                self.config.batching,
                Placer::new(
                    self.config.placement,
                    self.config.urgent_slack,
                    self.config.batching.max_batch_size,
                    self.config.batching.max_batch_size.saturating_mul(8),
                ),
            ),
            releases: release_rx,
            workers: worker_rings,
            new_links,
            retiring: false,
            applied: shared.knobs.load_full(),
            sla: shared.sla.recorder(shared.epoch),
            reserved_published: Instant::now(),
            summary_logged: Instant::now(),
            shutdown_timeout: self.config.shutdown_timeout,
            on_shortfall: self.on_shortfall,
            cloner: self.cloner,
            dedup: HashMap::new(),
            seq: 0,
            drained: Vec::new(),
            stalled: false,
            short_last_pass: false,
        };
        collector.planner.set_ordering(self.config.ordering);
        let collector = std::thread::Builder::new()
            .name("convoy-collector".into())
            .spawn(move || collector.run())
            .map_err(|e| BuildError::Spawn(e.to_string()))?;

        Ok(Runtime {
            handle: Handle {
                intake,
                shared: shared.clone(),
                executor: checker,
            },
            shared,
            threads: Mutex::new(Some(Threads {
                collector,
                workers: worker_threads,
            })),
            control: Mutex::new(spawner),
        })
    }
}

struct Threads {
    collector: JoinHandle<()>,
    workers: Vec<JoinHandle<()>>,
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
    /// Control path: serialises fleet changes and holds what adding a
    /// worker needs (never touched by submit or the collector loop).
    control: Mutex<Spawner<I, O>>,
}

/// What `add_worker` needs to start a worker like the others.
struct Spawner<I, O> {
    /// The config as built or last reloaded, to tell fixed knobs apart.
    config: Config,
    executor: Arc<dyn Executor<I, O>>,
    releases: ring::Producer<Release>,
    /// Links of added workers, waiting for the collector (control path).
    new_links: Arc<Mutex<Vec<WorkerLink<I, O>>>>,
}

fn spawn_worker<I: Send + 'static, O: Send + 'static>(
    index: usize,
    spec: &WorkerSpec,
    executor: &Arc<dyn Executor<I, O>>,
    releases: &ring::Producer<Release>,
    shared: &Arc<Shared>,
) -> Result<(WorkerLink<I, O>, JoinHandle<()>), BuildError> {
    let depth = (spec.capacity.slots as usize)
        .clamp(2, 1 << 16)
        .next_power_of_two();
    let (tx, rx) = ring::channel::<Batch<I, O>>(depth).map_err(|e| {
        BuildError::Config(ConfigError::Invalid {
            key: format!("workers[{index}].capacity.slots"),
            reason: e.to_string(),
        })
    })?;
    let worker = Worker {
        index,
        sla: shared.sla.recorder(shared.epoch),
        jobs: rx,
        executor: executor.clone(),
        releases: releases.clone(),
        shared: shared.clone(),
    };
    let handle = std::thread::Builder::new()
        .name(format!("convoy-{}", spec.name))
        .spawn(move || worker.run())
        .map_err(|e| BuildError::Spawn(e.to_string()))?;
    let link = WorkerLink {
        jobs: tx,
        thread: handle.thread().clone(),
    };
    Ok((link, handle))
}

impl Runtime<(), ()> {
    /// Starts a builder.
    pub fn builder<I: Send + 'static, O: Send + 'static>() -> Builder<I, O> {
        Builder {
            config: Config::default(),
            executor: None,
            on_shortfall: None,
            cloner: None,
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Runtime<I, O> {
    /// A cloneable handle for producers.
    pub fn handle(&self) -> Handle<I, O> {
        self.handle.clone()
    }

    /// Counters per priority and totals; lock-free.
    pub fn stats(&self) -> Stats {
        self.handle.stats()
    }

    /// The Prometheus text exposition of every counter, gauge and
    /// histogram (`convoy_` prefix, base units, `priority` labels); see
    /// `convoy::metrics` for the list.
    pub fn metrics_text(&self) -> String {
        let fleet = self.shared.fleet.load();
        let reserved = self.shared.reserved.load();
        let workers = fleet
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| crate::metrics::WorkerSnapshot {
                name: w.spec.name.clone(),
                capacity: w.spec.capacity,
                reserved: reserved.get(i).copied().unwrap_or(crate::ledger::NOTHING),
                up: w.health == Health::Up,
            })
            .collect();
        crate::metrics::render(crate::metrics::Snapshot {
            stats: self.stats(),
            sla: self.sla_report(),
            e2e_buckets: self
                .shared
                .sla
                .prometheus_buckets(true, crate::metrics::LATENCY_BOUNDS_S),
            wait_buckets: self
                .shared
                .sla
                .prometheus_buckets(false, crate::metrics::LATENCY_BOUNDS_S),
            decision: self
                .shared
                .sla
                .decision_buckets(crate::metrics::DECISION_BOUNDS_S),
            workers,
        })
    }

    /// Whether `shutdown`/`shutdown_now` has begun (new submits are then
    /// refused).
    pub fn is_shutting_down(&self) -> bool {
        self.shared.mode.load(StdOrdering::Acquire) != RUNNING
    }

    /// Latency percentiles (queue wait, execution, end to end), SLO
    /// violations and compliance per priority. Recorders publish every
    /// 100 ms, so a report is at most that stale while running and exact
    /// after `shutdown`.
    pub fn sla_report(&self) -> SlaReport {
        let now = self.shared.epoch.elapsed();
        self.shared.sla.report(&self.shared.knobs.load().slo, now)
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
        self.shared.knobs.store(Arc::new(Knobs::of(&new)));
        control.config = new;
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
            t.workers.push(handle);
        }
        workers.push(WorkerState {
            spec,
            health: Health::Up,
            retired: false,
        });
        self.shared.fleet.store(Arc::new(Fleet::new(workers)));
        // Release: the link pushed above is visible to the collector's
        // Acquire swap of the flag.
        self.shared.fleet_changed.store(true, StdOrdering::Release);
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
        })?;
        self.shared.fleet_changed.store(true, StdOrdering::Release);
        self.shared.doorbell.ring();
        Ok(())
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
        f(w).map_err(|reason| ConfigError::Invalid { key, reason })?;
        self.shared.fleet.store(Arc::new(Fleet::new(workers)));
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
    /// happens on its next pass). A control
    /// operation (seed 000's `clear_waiting`): it takes a mutex, never the
    /// hot path's.
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
    /// rest with `ShutDown`, and joins every thread. Idempotent.
    pub fn shutdown(&self) {
        self.stop(DRAINING);
    }

    /// Stops intake and fails every waiting request with `ShutDown` at once;
    /// batches already running finish. Joins every thread.
    pub fn shutdown_now(&self) {
        self.stop(ABORTING);
    }

    fn stop(&self, mode: u8) {
        stop(&self.shared, &self.threads, mode);
    }
}

impl<I, O> Drop for Runtime<I, O> {
    fn drop(&mut self) {
        stop(&self.shared, &self.threads, ABORTING);
    }
}

/// Marks the collector gone for `clear_waiting` when dropped.
struct CollectorGone(Arc<Shared>);

impl Drop for CollectorGone {
    fn drop(&mut self) {
        self.0.clearing.gone();
    }
}

/// Shared by `shutdown`, `shutdown_now` and `Drop`.
fn stop(shared: &Shared, threads: &Mutex<Option<Threads>>, mode: u8) {
    // The strongest mode asked for wins (abort beats drain).
    shared.mode.fetch_max(mode, StdOrdering::AcqRel);
    shared.gate.close();
    shared.doorbell.ring();
    let taken = threads.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(t) = taken {
        // A panic inside convoy's own threads is a bug; the joins still
        // complete so shutdown returns.
        let _ = t.collector.join();
        for w in t.workers {
            let _ = w.join();
        }
    }
}

/// The producer's handle: `Clone + Send + Sync`, usable after the runtime is
/// gone (submits are then refused with `ShuttingDown`).
pub struct Handle<I, O> {
    intake: Intake<Job<I, O>>,
    shared: Arc<Shared>,
    /// For [`Executor::check`] at submit.
    executor: Arc<dyn Executor<I, O>>,
}

impl<I, O> Clone for Handle<I, O> {
    fn clone(&self) -> Self {
        Self {
            intake: self.intake.clone(),
            shared: self.shared.clone(),
            executor: self.executor.clone(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Handle<I, O> {
    /// [`Runtime::clear_waiting`], from a handle (an admin endpoint of a
    /// server that holds only handles); 0 once the runtime is gone.
    ///
    /// Called on the collector's own thread (from the
    /// `on_capacity_shortfall` callback, say), it cannot wait for the
    /// collector: it asks, returns 0 at once, and the clear happens on the
    /// collector's next pass.
    pub fn clear_waiting(&self) -> usize {
        let shared = &self.shared;
        // The doorbell's sleeper is the collector thread.
        if shared.doorbell.is_sleeper_current() {
            shared.clearing.ask_later();
            return 0;
        }
        shared.clearing.ask(|| shared.doorbell.ring()).unwrap_or(0)
    }

    /// Submits one request; its ticket delivers exactly one outcome.
    pub fn submit(&self, request: Request<I>) -> Result<Ticket<O>, SubmitError<I>> {
        self.submit_with(request, InsertPolicy::Enqueue)
    }

    /// Submits one request with an insert policy (`Front` jumps its level).
    pub fn submit_with(
        &self,
        request: Request<I>,
        policy: InsertPolicy,
    ) -> Result<Ticket<O>, SubmitError<I>> {
        let now = Instant::now();
        let (job, ticket) = self.prepare(request, now)?;
        let Some(_pass) = self.shared.gate.enter() else {
            return Err(refused(SubmitErrorKind::ShuttingDown, job));
        };
        match self.intake.push(job.priority, job, policy) {
            Ok(()) => {
                self.shared.doorbell.ring();
                Ok(ticket)
            }
            Err(full) => Err(refused(SubmitErrorKind::QueueFull, full.item)),
        }
    }

    /// Submits many requests under one policy. `AllOrNothing` accepts all or
    /// none; `Enqueue`/`Front` accept what fits. Invalid requests (bad
    /// deadline, impossible cost) are refused individually, and with
    /// `AllOrNothing` they make the whole batch refused.
    pub fn submit_batch(
        &self,
        requests: Vec<Request<I>>,
        policy: InsertPolicy,
    ) -> Result<Vec<Ticket<O>>, BatchSubmitError<I, O>> {
        let now = Instant::now();
        let mut jobs = Vec::with_capacity(requests.len());
        let mut tickets = Vec::with_capacity(requests.len());
        let mut rejected = Vec::new();
        for r in requests {
            match self.prepare(r, now) {
                Ok((job, ticket)) => {
                    jobs.push((job.priority, job));
                    tickets.push(ticket);
                }
                Err(e) => rejected.push(e),
            }
        }
        let refuse_all =
            |jobs: Vec<(Priority, Job<I, O>)>, mut rejected: Vec<SubmitError<I>>, kind| {
                rejected.extend(jobs.into_iter().map(|(_, j)| refused(kind, j)));
                BatchSubmitError {
                    accepted: Vec::new(),
                    rejected,
                }
            };
        if jobs.is_empty() || (policy == InsertPolicy::AllOrNothing && !rejected.is_empty()) {
            return Err(refuse_all(jobs, rejected, SubmitErrorKind::QueueFull));
        }
        let Some(_pass) = self.shared.gate.enter() else {
            return Err(refuse_all(jobs, rejected, SubmitErrorKind::ShuttingDown));
        };
        match self.intake.push_batch(jobs, policy) {
            Ok(_) if rejected.is_empty() => {
                self.shared.doorbell.ring();
                Ok(tickets)
            }
            Ok(_) => {
                self.shared.doorbell.ring();
                Err(BatchSubmitError {
                    accepted: tickets,
                    rejected,
                })
            }
            Err(e) => {
                if e.inserted > 0 {
                    self.shared.doorbell.ring();
                }
                let kind = match e.reason {
                    BatchRejectReason::Oversized { .. }
                    | BatchRejectReason::Full
                    | BatchRejectReason::Empty => SubmitErrorKind::QueueFull,
                };
                // Tickets of refused jobs: their completers come back inside
                // the jobs and are dropped with them (delivering ShutDown to
                // tickets nobody holds), so keep only accepted tickets. The
                // intake preserves order, so accepted jobs are the ones not
                // handed back.
                let refused_completers: Vec<_> = e.rejected.into_iter().map(|(_, j)| j).collect();
                let accepted = tickets
                    .into_iter()
                    .filter(|t| !refused_completers.iter().any(|j| j.completer.is_for(t)))
                    .collect();
                rejected.extend(refused_completers.into_iter().map(|j| refused(kind, j)));
                Err(BatchSubmitError { accepted, rejected })
            }
        }
    }

    /// Counters per priority and totals; lock-free.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot(self.intake.stats())
    }

    fn prepare(&self, request: Request<I>, now: Instant) -> Result<Prepared<I, O>, SubmitError<I>> {
        let max = self.shared.fleet.load().max;
        let cost = request.cost;
        let knobs = self.shared.knobs.load();
        let limits = knobs.batching;
        if u64::from(cost.tokens) > max.tokens.min(limits.max_batch_tokens)
            || cost.bytes > max.bytes.min(limits.max_batch_bytes)
            || max.slots == 0
        {
            return Err(SubmitError::new(SubmitErrorKind::CostNeverFits, request));
        }
        if let Err(reason) = self.executor.check(&request.input) {
            return Err(SubmitError {
                kind: SubmitErrorKind::Invalid,
                reason: Some(reason),
                request,
            });
        }
        if request.dedup_key.is_some() && !self.shared.dedup {
            return Err(SubmitError::new(SubmitErrorKind::DedupNotEnabled, request));
        }
        let deadline_at = match request.deadline {
            None => None,
            Some(Deadline::After(d)) if d.is_zero() => {
                return Err(SubmitError::new(SubmitErrorKind::DeadlinePassed, request));
            }
            Some(Deadline::After(d)) => Some(after(now, d)),
            Some(Deadline::At(t)) if t <= now => {
                return Err(SubmitError::new(SubmitErrorKind::DeadlinePassed, request));
            }
            Some(Deadline::At(t)) => Some(t),
        };
        // The level's default deadline applies when the request brings
        // none, and caps one it brings (it may be shorter, not longer).
        let default_at = knobs.default_deadline[request.priority.index()].map(|d| after(now, d));
        let deadline_at = match (deadline_at, default_at) {
            (Some(own), Some(default)) => Some(own.min(default)),
            (own, default) => own.or(default),
        };
        drop(knobs);
        let (completer, ticket) = ticket::pair();
        let job = Job {
            deadline_ns: deadline_at.map_or(u64::MAX, |t| self.shared.ns_since_epoch(t)),
            input: request.input,
            completer,
            priority: request.priority,
            deadline: request.deadline,
            cost,
            submitted: now,
            arrival_ns: 0,
            expire_at: u64::MAX,
            dedup: request.dedup_key,
            followers: Vec::new(),
        };
        Ok((job, ticket))
    }
}

fn refused<I, O>(kind: SubmitErrorKind, job: Job<I, O>) -> SubmitError<I> {
    // The completer inside is dropped here; nobody holds its ticket (the
    // caller gets the request back instead), so its ShutDown goes nowhere.
    SubmitError::new(kind, job.into_request())
}

struct WorkerLink<I, O> {
    jobs: ring::Producer<Batch<I, O>>,
    thread: std::thread::Thread,
}

type Entry<I, O> = (Job<I, O>, Admission);

struct Collector<I, O> {
    shared: Arc<Shared>,
    intake: IntakeConsumer<Job<I, O>>,
    planner: Planner<Entry<I, O>>,
    releases: ring::Consumer<Release>,
    /// `None` once a removed worker has been let go.
    workers: Vec<Option<WorkerLink<I, O>>>,
    /// Links of workers added at run time (control path, see `fleet_changed`).
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
    /// The waiting group of each dedup key (see `dedup.rs`).
    dedup: HashMap<u64, WaitKey>,
    seq: u64,
    drained: Vec<crate::intake::Drained<Job<I, O>>>,
    /// The last pass had a batch due but could place nothing: wait for a
    /// release (the doorbell) rather than for the queue delay.
    stalled: bool,
    /// The last pass met a request that fitted no worker (shortfall episode).
    short_last_pass: bool,
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
            // Acquire: pairs with the Release in add/remove_worker.
            if self.shared.fleet_changed.swap(false, StdOrdering::Acquire) {
                self.apply_fleet_changes();
            }
            if self.retiring {
                self.let_go_of_retired();
            }
            self.apply_reload();
            let mode = self.shared.mode.load(StdOrdering::Acquire);
            self.drain_intake(now_ns);
            self.expire(now_ns);
            if self.shared.clearing.take() {
                let cleared = self.end_all_waiting(now_ns, Failure::Cancelled, Ended::Cancelled);
                self.shared.clearing.answer(cleared);
            }
            if mode == ABORTING {
                self.fail_all_waiting();
            } else if mode == DRAINING {
                let deadline =
                    *drain_deadline.get_or_insert_with(|| after(now, self.shutdown_timeout));
                if now >= deadline {
                    self.fail_all_waiting();
                }
            }
            let closing = mode != RUNNING;
            self.launch(now_ns, closing);
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
            self.sleep(now_ns, closing);
        }
        // Drop the producing ends first, then wake: a worker that finds its
        // ring empty with no producer exits.
        let threads: Vec<_> = self.workers.drain(..).flatten().map(|w| w.thread).collect();
        for t in threads {
            t.unpark();
        }
    }

    fn sleep(&mut self, now_ns: u64, closing: bool) {
        let mut timeout = Duration::from_millis(50);
        if let Some(d) = self.planner.waiting.next_deadline() {
            timeout = timeout.min(Duration::from_nanos(d.saturating_sub(now_ns)));
        }
        if let Some(a) = self
            .planner
            .waiting
            .oldest_arrival()
            .filter(|_| !self.stalled)
        {
            let due = a.saturating_add(nanos(self.applied.batching.max_queue_delay));
            timeout = timeout.min(Duration::from_nanos(due.saturating_sub(now_ns)));
        }
        if closing {
            timeout = timeout.min(Duration::from_millis(1));
        }
        if timeout.is_zero() {
            return;
        }
        let intake = &self.intake;
        let releases = &self.releases;
        let clearing = &self.shared.clearing;
        self.shared.doorbell.sleep(
            || intake.has_ready() || releases.has_ready() || clearing.is_asked(),
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
        let stats = self.shared.counters.snapshot(self.intake.stats());
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
    /// control mutex, and only after `fleet_changed` said so), then looks at
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
        for (i, w) in fleet.workers.iter().enumerate().take(self.workers.len()) {
            if !w.retired || self.workers[i].is_none() {
                continue;
            }
            if self.planner.ledger().reserved(i).slots == 0 {
                if let Some(link) = self.workers[i].take() {
                    let thread = link.thread.clone();
                    drop(link);
                    thread.unpark();
                }
            } else {
                waiting_on_retired = true;
            }
        }
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
            }
            self.planner.observe_batch_time(r.took);
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
            .get(&k)
            .and_then(|&key| self.planner.waiting.remove(key));
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
            self.dedup.remove(&k);
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
            let mut i = 0;
            while i < job.followers.len() {
                if job.followers[i].expire_at <= now_ns {
                    gone.push(job.followers.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            if job.expire_at <= now_ns && !job.followers.is_empty() {
                let mut f = job.followers.swap_remove(0);
                job.swap_head(&mut adm, &mut f);
                gone.push(f);
            }
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
        if gone.is_empty() {
            return;
        }
        let mut admissions = Vec::with_capacity(gone.len());
        self.end_each_follower(gone, &failure, how, &mut admissions);
        self.intake.release_all(admissions);
    }

    /// Ends each follower with `failure`, collecting its admission for the
    /// caller's one release.
    fn end_each_follower(
        &self,
        gone: Vec<Follower<O>>,
        failure: &Failure,
        how: Ended,
        admissions: &mut Vec<Admission>,
    ) {
        for f in gone {
            admissions.push(f.admission);
            self.end_one(f.completer, f.priority, failure, how);
        }
    }

    /// Delivers `failure` to one unlaunched request, counted as `how` (or
    /// as cancelled when its ticket had already closed).
    fn end_one(&self, completer: Completer<O>, level: Priority, failure: &Failure, how: Ended) {
        let ended = match completer.complete(Err(failure.clone())) {
            Ok(()) => how,
            Err(_) => Ended::Cancelled,
        };
        self.shared.counters.ended(level, ended, 1);
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
        let mut admissions = Vec::with_capacity(entries.len());
        for ((job, adm), _) in entries {
            self.forget_group(&job);
            self.end_each_follower(job.followers, &failure, how, &mut admissions);
            admissions.push(adm);
            self.end_one(job.completer, job.priority, &failure, how);
        }
        self.intake.release_all(admissions);
    }

    /// How many requests a batch formed now should take, or `None` while
    /// the batch is not due: see `planner::batch_size_now` (forced by the
    /// queue delay or shutdown, full by any limit (`Planner::is_full`,
    /// given `most`, the largest worker up), or a preferred size
    /// reachable).
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
                .is_some_and(|a| now_ns.saturating_sub(a) >= delay);
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
        // is in the snapshot before its link arrives.
        let candidates: Vec<Candidate<'_>> = fleet
            .workers
            .iter()
            .enumerate()
            .take(self.workers.len())
            .map(|(index, w)| Candidate {
                index,
                spec: &w.spec,
                up: w.health == Health::Up && self.workers[index].is_some(),
            })
            .collect();
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
        let mut admissions = Vec::new();
        let mut short_now = false;
        self.stalled = false;
        // The most any worker up could hold, per resource: a batch that
        // reaches it is full however long it waits. None up: only the
        // batch limits count.
        let most = Some(fleet.max).filter(|m| m.slots > 0);
        while let Some(size) = self.batch_due(now_ns, closing, most) {
            let deciding = Instant::now();
            let (formed, shortfall) =
                match self.planner.form(now_ns, &candidates, &mut abandoned, size) {
                    Plan::Batch { formed, shortfall } => (Some(formed), shortfall),
                    Plan::Stalled { shortfall } => (None, Some(shortfall)),
                    Plan::Empty => (None, None),
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
                self.stalled = shortfall.is_some();
                break;
            };
            self.launch_formed(formed, &mut admissions);
            self.sla.decision(deciding.elapsed());
        }
        self.short_last_pass = short_now;
        self.intake.release_all(admissions);
        self.end_unlaunched(abandoned, Failure::Cancelled, Ended::Cancelled);
    }

    /// Hands a formed batch to its worker.
    fn launch_formed(&mut self, formed: Formed<Entry<I, O>>, admissions: &mut Vec<Admission>) {
        let now = Instant::now();
        let counters = &self.shared.counters;
        counters.placement(formed.reason);
        for _ in 0..formed.aged {
            counters.aging_promotion();
        }
        counters.batch(formed.items.len());
        let mut batch = Batch {
            inputs: Vec::with_capacity(formed.items.len()),
            completers: Vec::with_capacity(formed.items.len()),
            followers: Vec::new(),
            cloner: self.cloner,
            reserved: formed.reserved,
        };
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

fn fail_batch<O>(
    shared: &Shared,
    completers: Vec<(Completer<O>, Priority, Instant)>,
    followers: Vec<(usize, Completer<O>, Priority, Instant)>,
    why: &str,
) {
    let failure = Failure::ExecutorFailed(why.to_owned());
    let outcomes = completers
        .into_iter()
        .chain(followers.into_iter().map(|(_, c, p, at)| (c, p, at)))
        .map(|(c, p, at)| (c, p, at, Err(failure.clone())));
    deliver(shared, outcomes, Ended::Failed, |_, _| {});
}

/// Delivers a launched batch's outcomes, counted as `how` per priority, or
/// as cancelled where the ticket had closed (the result is dropped). One
/// counter update per priority per batch, not per request.
/// `delivered` is called with the level and submit time of each outcome a
/// ticket received.
fn deliver<O>(
    shared: &Shared,
    outcomes: impl Iterator<Item = (Completer<O>, Priority, Instant, Outcome<O>)>,
    how: Ended,
    mut delivered: impl FnMut(Priority, Instant),
) {
    let mut counts = [[0u64; 2]; Priority::COUNT];
    for (c, p, submitted, outcome) in outcomes {
        let closed = c.complete(outcome).is_err();
        if !closed {
            delivered(p, submitted);
        }
        counts[p.index()][usize::from(closed)] += 1;
    }
    for p in Priority::ALL {
        shared.counters.ended(p, how, counts[p.index()][0]);
        shared
            .counters
            .ended(p, Ended::Cancelled, counts[p.index()][1]);
    }
}

struct Worker<I, O> {
    index: usize,
    /// This worker's own SLA histograms (single-owner).
    sla: SlaRecorder,
    jobs: ring::Consumer<Batch<I, O>>,
    executor: Arc<dyn Executor<I, O>>,
    releases: ring::Producer<Release>,
    shared: Arc<Shared>,
}

/// A batch handed to the executor, waiting for its outputs: everything of
/// [`Batch`] but the inputs.
struct Pending<O> {
    completers: Vec<(Completer<O>, Priority, Instant)>,
    followers: Vec<(usize, Completer<O>, Priority, Instant)>,
    cloner: Option<fn(&O) -> O>,
    reserved: Capacity,
    started: Instant,
}

/// What running a batch gave: outputs, an executor error, or a panic's
/// message.
type RunResult<O> = Result<Result<Vec<O>, String>, String>;

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

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    let why = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned());
    format!("executor panicked: {why}")
}

impl<I: Send + 'static, O: Send + 'static> Worker<I, O> {
    fn run(mut self) {
        // A device executor gives this worker its own pipelined lane; a
        // lane that cannot be made (a panic) leaves the plain path.
        let mut lane = catch_unwind(AssertUnwindSafe(|| self.executor.lane(self.index)))
            .ok()
            .flatten();
        let depth = lane.as_ref().map_or(1, |l| l.depth().max(1));
        // Launched batches, oldest first: a lane finishes them in order.
        let mut in_flight: std::collections::VecDeque<Pending<O>> =
            std::collections::VecDeque::with_capacity(depth);
        let mut idle = 0u32;
        loop {
            if in_flight.len() < depth {
                if let Some(batch) = self.jobs.pop() {
                    idle = 0;
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
                    let result =
                        catch_unwind(AssertUnwindSafe(|| lane.finish())).map_err(panic_message);
                    let p = in_flight.pop_front().expect("checked non-empty just above");
                    self.settle(p, result);
                } else {
                    // The device is busy and there is room for one more
                    // batch: the collector unparks us when it pushes one;
                    // the device's progress is polled at this period.
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
        // Only the collector holds the producing end of the job ring.
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
        } = batch;
        let pending = Pending {
            completers,
            followers,
            cloner,
            reserved,
            started: Instant::now(),
        };
        (inputs, pending)
    }

    /// Runs a batch on the plain path and settles it.
    fn execute(&mut self, batch: Batch<I, O>) {
        let (inputs, pending) = Self::split(batch);
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.executor.execute(self.index, &inputs)
        }))
        .map_err(panic_message);
        drop(inputs);
        self.settle(pending, result);
    }

    /// Starts a batch on the lane; a batch that could not be launched is
    /// settled (failed) at once.
    fn launch(&mut self, lane: &mut dyn Lane<I, O>, batch: Batch<I, O>) -> Option<Pending<O>> {
        let (inputs, pending) = Self::split(batch);
        match catch_unwind(AssertUnwindSafe(|| lane.launch(&inputs))) {
            Ok(Ok(())) => Some(pending),
            Ok(Err(e)) => {
                self.settle(pending, Ok(Err(e)));
                None
            }
            Err(panic) => {
                self.settle(pending, Err(panic_message(panic)));
                None
            }
        }
    }

    /// Hands a finished batch's outcomes to its tickets and its capacity
    /// back to the collector.
    fn settle(&mut self, pending: Pending<O>, result: RunResult<O>) {
        let Pending {
            completers,
            followers,
            cloner,
            reserved,
            started,
        } = pending;
        match result {
            Ok(Ok(outputs)) if outputs.len() == completers.len() => {
                let exec = started.elapsed();
                let slo = self.shared.knobs.load().slo;
                // Twins first, while the outputs they copy are still here.
                let copies: Vec<_> = followers
                    .into_iter()
                    .map(|(i, c, p, at)| {
                        let out = match (cloner, outputs.get(i)) {
                            (Some(clone), Some(o)) => Ok(clone(o)),
                            _ => Err(Failure::ExecutorFailed(
                                "no output to share with a deduplicated twin".into(),
                            )),
                        };
                        (c, p, at, out)
                    })
                    .collect();
                let outcomes = copies.into_iter().chain(
                    completers
                        .into_iter()
                        .zip(outputs)
                        .map(|((c, p, at), out)| (c, p, at, Ok(out))),
                );
                let sla = &mut self.sla;
                deliver(&self.shared, outcomes, Ended::Completed, |p, submitted| {
                    let now = Instant::now();
                    let e2e = now.saturating_duration_since(submitted);
                    sla.completed(p, exec, e2e, slo[p.index()].timeout, now);
                });
                sla.maybe_publish(Instant::now());
            }
            Ok(Ok(outputs)) => {
                let why = format!(
                    "executor returned {} outputs for {} inputs",
                    outputs.len(),
                    completers.len()
                );
                fail_batch(&self.shared, completers, followers, &why);
            }
            Ok(Err(e)) | Err(e) => fail_batch(&self.shared, completers, followers, &e),
        }
        let mut release = Release {
            worker: self.index,
            amount: reserved,
            took: started.elapsed(),
        };
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
}
