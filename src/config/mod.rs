//! Every knob of a runtime, with defaults (here), validation
//! (`validate.rs`) and the TOML file format (`file.rs`).

use std::time::Duration;

use crate::intake::shed::DEFAULT_SHED_AT;
use crate::intake::IntakeConfig;
use crate::priority::Priority;

mod file;
mod preemption;
mod tenants;
mod validate;

pub use preemption::{Preemption, MAX_DISPLACEMENTS};
pub(crate) use tenants::check_tenant_id;
pub use tenants::{Fairness, TenantOverride, TenantsConfig, MAX_TENANT_LEN, MAX_TOP_N, MAX_WEIGHT};

use validate::invalid;
pub use validate::{ConfigError, MAX_WORKERS};

/// What happens when a queued request's deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DeadlineAction {
    /// Fail it with `Failure::Expired`; it is never executed (Triton's
    /// queue-timeout `REJECT`).
    #[default]
    Reject,
    /// The deadline only orders (earliest first among equals); it still runs.
    Delay,
}

/// Which rule orders waiting requests; see `convoy::order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OrderingPolicy {
    /// Priority with aging (convoy's rule, starvation-free).
    #[default]
    Aging,
    /// Strict priority, no aging: a lower level waits while any higher one
    /// does (a baseline; lower levels can starve).
    StrictPriority,
    /// Arrival order, priorities ignored (a baseline, like a plain queue).
    Fifo,
}

impl OrderingPolicy {
    /// Every policy, for listing and parsing.
    pub const ALL: [OrderingPolicy; 3] = [Self::Aging, Self::StrictPriority, Self::Fifo];

    /// The name `ordering.policy` and `--policy` use.
    ///
    /// ```
    /// assert_eq!(convoy::OrderingPolicy::StrictPriority.as_str(), "strict_priority");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aging => "aging",
            Self::StrictPriority => "strict_priority",
            Self::Fifo => "fifo",
        }
    }
}

/// A policy name that is not one of [`OrderingPolicy::ALL`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy {0:?} (expected aging, strict_priority or fifo)")]
pub struct UnknownPolicy(pub String);

impl std::str::FromStr for OrderingPolicy {
    type Err = UnknownPolicy;

    /// ```
    /// use convoy::OrderingPolicy;
    /// assert_eq!("fifo".parse::<OrderingPolicy>(), Ok(OrderingPolicy::Fifo));
    /// assert!("lifo".parse::<OrderingPolicy>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPolicy(s.to_owned()))
    }
}

/// How a batch picks its worker; see `convoy::placement` for the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PlacementPolicy {
    /// The worker with the most free slots (FIFO-fair across workers).
    #[default]
    LeastLoaded,
    /// Critical and High batches go to the fastest worker with room; the
    /// rest to the least loaded.
    Priority,
    /// Requests close to their deadline go to the fastest worker.
    SloAware,
    /// The cheapest worker that meets the deadline.
    CostOptimized,
    /// Switches between cost, balance and SLO modes by load.
    Adaptive,
}

/// How long a partial batch waits for company (`batching.delay`).
///
/// ```
/// use convoy::{BatchDelay, Config};
/// assert_eq!(Config::default().batching.delay, BatchDelay::Adaptive);
/// assert_eq!("fixed".parse::<BatchDelay>(), Ok(BatchDelay::Fixed));
/// assert!("sometimes".parse::<BatchDelay>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum BatchDelay {
    /// Triton's rule: a partial batch launches once its oldest request has
    /// waited `max_queue_delay`, whether or not anything more is coming.
    Fixed,
    /// The delay is spent only while more requests may come: a partial
    /// batch also launches at once when a worker is idle and the requests
    /// in the runtime are back at the level they held over the last window
    /// (a closed loop's clients are all in), or at their recent peak with
    /// arrivals gone quiet (`src/plan/pace.rs`); a loop that fills a batch
    /// for every worker is left to fill them. A request
    /// still never waits more than `max_queue_delay` for batching, and
    /// while every worker is busy batches form exactly as under `Fixed`.
    #[default]
    Adaptive,
}

impl BatchDelay {
    /// The name a config file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchDelay::Fixed => "fixed",
            BatchDelay::Adaptive => "adaptive",
        }
    }
}

impl std::str::FromStr for BatchDelay {
    type Err = UnknownPolicy;

    /// `"fixed"` or `"adaptive"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fixed" => Ok(BatchDelay::Fixed),
            "adaptive" => Ok(BatchDelay::Adaptive),
            other => Err(UnknownPolicy(other.to_owned())),
        }
    }
}

/// What made the collector launch a batch; counted per batch
/// ([`Stats::launched_by`](crate::Stats::launched_by)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LaunchCause {
    /// The batch was full: by count, tokens, bytes or the largest worker.
    Full,
    /// Its oldest request had waited `max_queue_delay`.
    Delay,
    /// A waiting request would have expired within `max_queue_delay`.
    Deadline,
    /// A worker was idle and nothing more was coming (`BatchDelay::Adaptive`).
    Idle,
    /// A preferred batch size could be made.
    Preferred,
    /// Shutting down: what was accepted launches without waiting.
    Closing,
    /// Its most urgent request may take the place of less urgent work a
    /// worker holds (`[preemption]`): it launches without waiting for
    /// company it would only be slowed by.
    Preempt,
}

impl LaunchCause {
    /// How many causes there are.
    pub const COUNT: usize = 7;

    /// Every cause, in index order.
    pub const ALL: [LaunchCause; LaunchCause::COUNT] = [
        LaunchCause::Full,
        LaunchCause::Delay,
        LaunchCause::Deadline,
        LaunchCause::Idle,
        LaunchCause::Preferred,
        LaunchCause::Closing,
        LaunchCause::Preempt,
    ];

    /// A stable snake_case name, for metrics labels and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            LaunchCause::Full => "full",
            LaunchCause::Delay => "delay",
            LaunchCause::Deadline => "deadline",
            LaunchCause::Idle => "idle",
            LaunchCause::Preferred => "preferred",
            LaunchCause::Closing => "closing",
            LaunchCause::Preempt => "preempt",
        }
    }
}

/// Why a batch went where it went; recorded per batch, never a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PlacementReason {
    /// Most free slots among workers with room.
    LeastLoaded,
    /// Fastest worker with room, for Critical/High work (or as the fallback
    /// when no worker meets a deadline).
    FastestForUrgent,
    /// Fastest worker with room, for a request short of slack.
    SloUrgent,
    /// Cheapest worker, no deadline to meet.
    Cheapest,
    /// Cheapest worker whose estimated finish meets the deadline.
    CheapestMeetingDeadline,
}

impl PlacementReason {
    /// How many reasons there are.
    pub const COUNT: usize = 5;

    /// Every reason, in index order.
    pub const ALL: [PlacementReason; PlacementReason::COUNT] = [
        PlacementReason::LeastLoaded,
        PlacementReason::FastestForUrgent,
        PlacementReason::SloUrgent,
        PlacementReason::Cheapest,
        PlacementReason::CheapestMeetingDeadline,
    ];
}

/// A worker's capacity per resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Capacity {
    /// Requests at once.
    pub slots: u32,
    /// Tokens at once.
    pub tokens: u64,
    /// Bytes at once.
    pub bytes: u64,
}

/// One worker of the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSpec {
    /// A name for logs and metrics.
    pub name: String,
    /// What it can hold at once.
    pub capacity: Capacity,
    /// Relative speed (higher is faster), > 0.
    pub speed: f64,
    /// Cost per hour, ≥ 0.
    pub cost_per_hour: f64,
}

impl WorkerSpec {
    /// Checks capacity, speed and cost; `key` names the worker in errors.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let field = |f: &str| format!("{key}.{f}");
        if self.capacity.slots == 0 {
            return Err(invalid(field("capacity.slots"), "must be at least 1"));
        }
        if self.capacity.tokens == 0 {
            return Err(invalid(field("capacity.tokens"), "must be at least 1"));
        }
        if !(self.speed.is_finite() && self.speed > 0.0) {
            return Err(invalid(
                field("speed"),
                format!("{} is not a positive number", self.speed),
            ));
        }
        if !(self.cost_per_hour.is_finite() && self.cost_per_hour >= 0.0) {
            return Err(invalid(
                field("cost_per_hour"),
                format!("{} is not a non-negative number", self.cost_per_hour),
            ));
        }
        Ok(())
    }
}

/// Up to 8 preferred batch sizes, ascending, each ≥ 1 (kept `Copy` so the
/// batch limits stay a plain value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PreferredBatchSizes {
    sizes: [usize; 8],
    len: usize,
}

impl PreferredBatchSizes {
    /// No preferred sizes.
    pub const NONE: PreferredBatchSizes = PreferredBatchSizes {
        sizes: [0; 8],
        len: 0,
    };

    /// From a list: at most 8 sizes, each ≥ 1; sorted and deduplicated.
    ///
    /// ```
    /// let p = convoy::PreferredBatchSizes::new(&[8, 4, 8]).unwrap();
    /// assert_eq!(p.as_slice(), [4, 8]);
    /// assert!(convoy::PreferredBatchSizes::new(&[0]).is_err());
    /// ```
    pub fn new(sizes: &[usize]) -> Result<Self, ConfigError> {
        let key = "batching.preferred_batch_sizes";
        if sizes.contains(&0) {
            return Err(invalid(key, "sizes must be at least 1"));
        }
        let mut v = sizes.to_vec();
        v.sort_unstable();
        v.dedup();
        if v.len() > 8 {
            return Err(invalid(key, format!("{} sizes given, at most 8", v.len())));
        }
        let mut out = Self::NONE;
        out.sizes[..v.len()].copy_from_slice(&v);
        out.len = v.len();
        Ok(out)
    }

    /// The sizes, ascending.
    pub fn as_slice(&self) -> &[usize] {
        &self.sizes[..self.len]
    }
}

/// Batch limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchingConfig {
    /// Most requests in one batch (≥ 1).
    pub max_batch_size: usize,
    /// Most tokens in one batch (≥ 1).
    pub max_batch_tokens: u64,
    /// Most bytes (the requests' `Cost::bytes`) in one batch, a memory
    /// budget per batch (≥ 1; default unlimited).
    pub max_batch_bytes: u64,
    /// A batch launches when full, when its oldest request has waited
    /// this long, or when a waiting request would expire within this long.
    pub max_queue_delay: Duration,
    /// Triton's preferred batch sizes: unless the queue delay forces a
    /// launch, a batch is cut to the largest preferred size the waiting
    /// requests allow, and waits when none can be made yet. Empty: off.
    pub preferred_batch_sizes: PreferredBatchSizes,
    /// Adaptive batch sizing: when set, the batch limit follows AIMD toward
    /// this batch execution time (halved after a slower batch, +1 after a
    /// batch within it, never above `max_batch_size`). `None`: fixed limit.
    pub target_batch_time: Option<Duration>,
    /// Whether a partial batch always waits out `max_queue_delay`
    /// (`Fixed`, Triton's rule) or only while requests are still arriving
    /// (`Adaptive`, the default); reloadable.
    pub delay: BatchDelay,
}

/// Everything a runtime needs. `Config::default()` runs CPU workers on this
/// machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Intake shape.
    pub intake: IntakeConfig,
    /// Batch limits.
    pub batching: BatchingConfig,
    /// A request that has waited this long outranks every later arrival.
    pub max_wait: Duration,
    /// The ordering rule (`ordering.policy`); reloadable.
    pub ordering: OrderingPolicy,
    /// How a level's requests are ordered between tenants
    /// (`ordering.fairness`; reloadable): by default the Virtual Token
    /// Counter, which with no tenants named orders as before.
    pub fairness: Fairness,
    /// Tenant weights, quotas and the figures' label bound (`[tenants]`;
    /// reloadable).
    pub tenants: TenantsConfig,
    /// When urgent work may displace staged, less urgent work
    /// (`[preemption]`; reloadable; on by default, with a gap of two
    /// levels and one displacement per request).
    pub preemption: Preemption,
    /// Shed levels while the queue runs late (`ordering.shed`; reloadable;
    /// off by default in the library, on in the `convoy` commands run
    /// without `--config`): while the queue is late by `shed_at[l] ×
    /// max_wait`, by default `(7 − l) / 10 × max_wait` (the oldest
    /// request's wait beyond the batching delay, or
    /// the measured time to run what waits, whichever is larger), submits
    /// at level `l` are refused with
    /// [`SubmitErrorKind::Overloaded`](crate::SubmitErrorKind::Overloaded):
    /// Background (l = 4) from 0.3 × `max_wait`, High (1) from 0.6;
    /// Critical never. Without it, sustained overload drives the oldest
    /// waits past `max_wait`, where aging serves them first (FIFO) and
    /// every Critical request queues behind the backlog. With it, the
    /// accepted requests keep the starvation bound and the urgent levels
    /// their latency, and the excess of the least urgent levels is handed
    /// back at submit. Off: only a full queue refuses.
    ///
    /// Off by default because it changes what `submit` may answer: with it
    /// on, a request submitted behind a late queue is refused where the
    /// aging rule alone would have taken it and served it after the
    /// backlog (a Background request that has waited `max_wait` outranks a
    /// later High one only if the High one got in). A server facing
    /// sustained overload wants it; a caller that expects every submit to
    /// be accepted while there is room does not.
    pub shed: bool,
    /// Per priority (index by `Priority::index`), the lateness from which
    /// `shed` refuses that level, as a share of `max_wait`
    /// (`ordering.shed_at`; reloadable). Default
    /// [`DEFAULT_SHED_AT`](crate::DEFAULT_SHED_AT): High 0.6, Normal 0.5,
    /// Low 0.4, Background 0.3. Critical's entry must be infinite (it is
    /// never shed); another may be infinite too (never shed), and each must
    /// be positive and no more than any more urgent level's (least urgent
    /// first). Lower shares keep the standing backlog shorter, and the
    /// urgent levels faster, by refusing sooner; a share above 1 lets a
    /// level in until the queue is already past `max_wait`.
    pub shed_at: [f64; Priority::COUNT],
    /// Per priority (index by `Priority::index`).
    pub deadline_action: [DeadlineAction; Priority::COUNT],
    /// Per priority, the deadline a request gets when it brings none, and
    /// the latest one it may bring (Triton's `default_timeout_microseconds`
    /// with timeout override: a request may shorten it, never extend it).
    /// Counted from submit. `None` (the default): no deadline unless the
    /// request sets one. Reloadable; applies to submits after the reload.
    pub default_deadline: [Option<Duration>; Priority::COUNT],
    /// Worker choice per batch.
    pub placement: PlacementPolicy,
    /// A request with less time than this left to its deadline counts as
    /// urgent (`SloAware`, `Adaptive`).
    pub urgent_slack: Duration,
    /// The fleet. Empty means `cpu_workers` identical CPU workers.
    pub workers: Vec<WorkerSpec>,
    /// How many CPU workers when `workers` is empty (default: available
    /// parallelism), at most [`MAX_WORKERS`].
    pub cpu_workers: usize,
    /// How long `shutdown()` lets accepted requests finish.
    pub shutdown_timeout: Duration,
    /// Latency objectives per priority (index by `Priority::index`).
    pub slo: [SloTarget; Priority::COUNT],
}

impl Default for Config {
    fn default() -> Self {
        Self {
            intake: IntakeConfig::default(),
            batching: BatchingConfig {
                max_batch_size: 64,
                max_batch_tokens: 64 * 512,
                max_batch_bytes: u64::MAX,
                max_queue_delay: Duration::from_millis(2),
                target_batch_time: None,
                preferred_batch_sizes: PreferredBatchSizes::NONE,
                delay: BatchDelay::Adaptive,
            },
            max_wait: Duration::from_millis(500),
            ordering: OrderingPolicy::Aging,
            fairness: Fairness::Vtc,
            tenants: TenantsConfig::default(),
            preemption: Preemption::default(),
            shed: false,
            shed_at: DEFAULT_SHED_AT,
            deadline_action: [DeadlineAction::Reject; Priority::COUNT],
            default_deadline: [None; Priority::COUNT],
            placement: PlacementPolicy::LeastLoaded,
            urgent_slack: Duration::from_millis(50),
            workers: Vec::new(),
            cpu_workers: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_WORKERS),
            shutdown_timeout: Duration::from_secs(5),
            slo: SloTarget::defaults(),
        }
    }
}

/// Latency objectives of one priority level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SloTarget {
    /// The 95th percentile of end-to-end latency should stay under this.
    pub p95: Duration,
    /// The 99th percentile of end-to-end latency should stay under this.
    pub p99: Duration,
    /// A single request slower than this end to end is a violation.
    pub timeout: Duration,
}

impl SloTarget {
    /// Defaults per level: Critical 20/50/100 ms, High 50/100/250 ms, Normal
    /// 200/500/1000 ms, Low 1/2/5 s, Background 5/10/30 s (p95/p99/timeout).
    pub fn defaults() -> [SloTarget; Priority::COUNT] {
        let t = |p95: u64, p99: u64, timeout: u64| SloTarget {
            p95: Duration::from_millis(p95),
            p99: Duration::from_millis(p99),
            timeout: Duration::from_millis(timeout),
        };
        [
            t(20, 50, 100),
            t(50, 100, 250),
            t(200, 500, 1000),
            t(1000, 2000, 5000),
            t(5000, 10_000, 30_000),
        ]
    }
}
