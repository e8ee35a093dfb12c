//! Every knob of a runtime, with defaults and validation.

use std::time::Duration;

use crate::intake::{IntakeConfig, IntakeError};
use crate::priority::Priority;
use crate::shed::DEFAULT_SHED_AT;
use crate::sla::SloTarget;

/// What happens when a queued request's deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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

/// Why a batch went where it went; recorded per batch, never a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
            },
            max_wait: Duration::from_millis(500),
            ordering: OrderingPolicy::Aging,
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

/// A config value that cannot work; names the key and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A value out of range.
    #[error("{key}: {reason}")]
    Invalid {
        /// The offending key, e.g. `batching.max_batch_size`.
        key: String,
        /// Why.
        reason: String,
    },
    /// The intake shape is invalid.
    #[error(transparent)]
    Intake(#[from] IntakeError),
    /// The TOML could not be read: syntax, an unknown key or a wrong type.
    /// The message names the key and shows the line.
    #[error("config: {message}")]
    Parse {
        /// The parser's account, with the key and line.
        message: String,
    },
    /// `reload_config` was asked to change a knob that is fixed at build.
    #[error("{key} cannot change while running (rebuild the runtime to change it)")]
    Fixed {
        /// The fixed key.
        key: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The most workers a config may start with. Each is a thread with its
/// own SLA recorder (about 0.9 MB, README "SLA and metrics"), so a typo of
/// a few zeros in `cpu_workers` once started threads until the machine ran
/// out of memory. `Runtime::add_worker` is not bounded by it.
pub const MAX_WORKERS: usize = 4096;

impl Config {
    /// The fleet this config describes: `workers`, or `cpu_workers` default
    /// CPU workers that each hold two full batches.
    pub fn fleet(&self) -> Vec<WorkerSpec> {
        if !self.workers.is_empty() {
            return self.workers.clone();
        }
        (0..self.cpu_workers)
            .map(|i| WorkerSpec {
                name: format!("cpu{i}"),
                capacity: Capacity {
                    slots: u32::try_from(self.batching.max_batch_size.saturating_mul(2))
                        .unwrap_or(u32::MAX),
                    tokens: self.batching.max_batch_tokens.saturating_mul(2),
                    bytes: u64::MAX,
                },
                speed: 1.0,
                cost_per_hour: 0.0,
            })
            .collect()
    }

    /// Checks every value; the first problem found is returned.
    ///
    /// ```
    /// let mut c = convoy::Config::default();
    /// c.batching.max_batch_size = 0;
    /// assert!(c.validate().unwrap_err().to_string().contains("batching.max_batch_size"));
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.intake.shards == 0 {
            return Err(IntakeError::ZeroShards.into());
        }
        if !self.intake.lane_capacity.is_power_of_two() {
            return Err(invalid(
                "intake.lane_capacity",
                format!("{} is not a power of two ≥ 1", self.intake.lane_capacity),
            ));
        }
        if self.batching.max_batch_size == 0 {
            return Err(invalid("batching.max_batch_size", "must be at least 1"));
        }
        if self.batching.max_batch_tokens == 0 {
            return Err(invalid("batching.max_batch_tokens", "must be at least 1"));
        }
        if let Some(&big) = self.batching.preferred_batch_sizes.as_slice().last() {
            if big > self.batching.max_batch_size {
                return Err(invalid(
                    "batching.preferred_batch_sizes",
                    format!(
                        "{big} exceeds max_batch_size {}",
                        self.batching.max_batch_size
                    ),
                ));
            }
        }
        if self.batching.max_batch_bytes == 0 {
            return Err(invalid("batching.max_batch_bytes", "must be at least 1"));
        }
        if self.max_wait.is_zero() {
            return Err(invalid("ordering.max_wait_ms", "must be greater than 0"));
        }
        check_shed_at(&self.shed_at)?;
        for (p, d) in Priority::ALL.into_iter().zip(&self.default_deadline) {
            if d.is_some_and(|d| d.is_zero()) {
                return Err(invalid(
                    format!("deadlines.default_ms.{p}"),
                    "must be greater than 0 (leave it out for no deadline)",
                ));
            }
        }
        for (p, t) in Priority::ALL.into_iter().zip(&self.slo) {
            for (name, d) in [
                ("p95_ms", t.p95),
                ("p99_ms", t.p99),
                ("timeout_ms", t.timeout),
            ] {
                if d.is_zero() {
                    return Err(invalid(format!("slo.{p}.{name}"), "must be greater than 0"));
                }
            }
        }
        if self.workers.is_empty() && self.cpu_workers == 0 {
            return Err(invalid(
                "cpu_workers",
                "zero workers: nothing could ever run",
            ));
        }
        if self.workers.is_empty() && self.cpu_workers > MAX_WORKERS {
            return Err(invalid(
                "cpu_workers",
                format!("{} exceeds the maximum of {MAX_WORKERS}", self.cpu_workers),
            ));
        }
        if self.workers.len() > MAX_WORKERS {
            return Err(invalid(
                "workers",
                format!(
                    "{} listed, more than the maximum of {MAX_WORKERS}",
                    self.workers.len()
                ),
            ));
        }
        for (i, w) in self.workers.iter().enumerate() {
            w.validate(&format!("workers[{i}]"))?;
        }
        Ok(())
    }
}

/// `Config::shed_at`'s rules: Critical never shed, every share positive
/// (infinite: never), and no level shed before a more urgent one.
fn check_shed_at(shed_at: &[f64; Priority::COUNT]) -> Result<(), ConfigError> {
    let key = |p: Priority| format!("ordering.shed_at.{p}");
    if shed_at[0] != f64::INFINITY {
        return Err(invalid(
            key(Priority::Critical),
            format!(
                "{} given, but Critical is never shed (its bound is its queue's room); leave it out",
                shed_at[0]
            ),
        ));
    }
    for p in Priority::ALL.into_iter().skip(1) {
        let share = shed_at[p.index()];
        if share.is_nan() || share <= 0.0 {
            return Err(invalid(
                key(p),
                format!("{share} is not a positive share of max_wait (inf: never shed)"),
            ));
        }
        let urgent = Priority::ALL[p.index() - 1];
        let above = shed_at[urgent.index()];
        if share > above {
            return Err(invalid(
                key(p),
                format!(
                    "{share} is above {urgent}'s {above}: levels are shed least urgent first, \
                     so a level's share may not exceed a more urgent one's"
                ),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// TOML files. A serde mirror of `Config`, so the file format can use plain
// numbers for durations (`_ms` keys) and reject unknown keys, while `Config`
// keeps typed `Duration`s. Every default comes from `Config::default()`.

use serde::Deserialize;

/// How a file spells a deadline action.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FileDeadlineAction {
    Reject,
    Delay,
}

/// How a file spells a placement policy.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FilePlacementPolicy {
    LeastLoaded,
    Priority,
    SloAware,
    CostOptimized,
    Adaptive,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIntake {
    shards: Option<usize>,
    lane_capacity: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBatching {
    max_batch_size: Option<usize>,
    max_batch_tokens: Option<u64>,
    max_batch_bytes: Option<u64>,
    preferred_batch_sizes: Option<Vec<usize>>,
    max_queue_delay_ms: Option<f64>,
    target_batch_ms: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOrdering {
    max_wait_ms: Option<f64>,
    policy: Option<FileOrderingPolicy>,
    shed: Option<bool>,
    /// `[ordering.shed_at]`: shares of `max_wait`. `critical` is read
    /// only to be refused with a reason rather than as an unknown key.
    shed_at: Option<FileLevels<f64>>,
}

/// A table with one optional entry per level (`[slo]`,
/// `[ordering.shed_at]`, `[deadlines.default_ms]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLevels<T> {
    critical: Option<T>,
    high: Option<T>,
    normal: Option<T>,
    low: Option<T>,
    background: Option<T>,
}

impl<T> FileLevels<T> {
    /// The entries, indexed by `Priority::index`.
    fn by_index(self) -> [Option<T>; Priority::COUNT] {
        [
            self.critical,
            self.high,
            self.normal,
            self.low,
            self.background,
        ]
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FileOrderingPolicy {
    Aging,
    StrictPriority,
    Fifo,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDeadlines {
    critical: Option<FileDeadlineAction>,
    high: Option<FileDeadlineAction>,
    normal: Option<FileDeadlineAction>,
    low: Option<FileDeadlineAction>,
    background: Option<FileDeadlineAction>,
    default_ms: Option<FileLevels<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePlacement {
    policy: Option<FilePlacementPolicy>,
    urgent_slack_ms: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSloTarget {
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
    timeout_ms: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWorker {
    name: Option<String>,
    slots: u32,
    tokens: u64,
    bytes: Option<u64>,
    speed: Option<f64>,
    cost_per_hour: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    intake: Option<FileIntake>,
    batching: Option<FileBatching>,
    ordering: Option<FileOrdering>,
    deadlines: Option<FileDeadlines>,
    placement: Option<FilePlacement>,
    cpu_workers: Option<usize>,
    shutdown_timeout_ms: Option<f64>,
    slo: Option<FileLevels<FileSloTarget>>,
    #[serde(default)]
    workers: Vec<FileWorker>,
}

/// A duration in milliseconds from a file: finite and ≥ 0 (> 0 if `positive`).
fn millis(key: &str, ms: f64, positive: bool) -> Result<Duration, ConfigError> {
    if !ms.is_finite() || ms < 0.0 || (positive && ms == 0.0) {
        let want = if positive {
            "a positive"
        } else {
            "a non-negative"
        };
        return Err(invalid(
            key,
            format!("{ms} is not {want} number of milliseconds"),
        ));
    }
    // Finite but past what a `Duration` holds (about 5.8e14 years) is a
    // typo; `from_secs_f64` would panic on it.
    Duration::try_from_secs_f64(ms / 1000.0)
        .map_err(|_| invalid(key, format!("{ms} milliseconds is too long")))
}

impl Config {
    /// Reads a config from TOML text. Unknown keys, wrong types and values
    /// out of range are errors that name the key; missing keys take the
    /// defaults of `Config::default()` (see `config/convoy.example.toml`).
    ///
    /// ```
    /// let c = convoy::Config::from_toml_str("[batching]\nmax_batch_size = 32\n").unwrap();
    /// assert_eq!(c.batching.max_batch_size, 32);
    /// let e = convoy::Config::from_toml_str("[batching]\nmax_batch_sise = 32\n").unwrap_err();
    /// assert!(e.to_string().contains("max_batch_sise"));
    /// ```
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            message: e.to_string(),
        })?;
        let mut c = Config::default();
        if let Some(i) = file.intake {
            c.intake.shards = i.shards.unwrap_or(c.intake.shards);
            c.intake.lane_capacity = i.lane_capacity.unwrap_or(c.intake.lane_capacity);
        }
        if let Some(b) = file.batching {
            c.batching.max_batch_size = b.max_batch_size.unwrap_or(c.batching.max_batch_size);
            c.batching.max_batch_tokens = b.max_batch_tokens.unwrap_or(c.batching.max_batch_tokens);
            c.batching.max_batch_bytes = b.max_batch_bytes.unwrap_or(c.batching.max_batch_bytes);
            if let Some(sizes) = b.preferred_batch_sizes {
                c.batching.preferred_batch_sizes = PreferredBatchSizes::new(&sizes)?;
            }
            if let Some(ms) = b.max_queue_delay_ms {
                c.batching.max_queue_delay = millis("batching.max_queue_delay_ms", ms, false)?;
            }
            if let Some(ms) = b.target_batch_ms {
                c.batching.target_batch_time = Some(millis("batching.target_batch_ms", ms, true)?);
            }
        }
        if let Some(o) = file.ordering {
            if let Some(ms) = o.max_wait_ms {
                c.max_wait = millis("ordering.max_wait_ms", ms, true)?;
            }
            if let Some(p) = o.policy {
                c.ordering = match p {
                    FileOrderingPolicy::Aging => OrderingPolicy::Aging,
                    FileOrderingPolicy::StrictPriority => OrderingPolicy::StrictPriority,
                    FileOrderingPolicy::Fifo => OrderingPolicy::Fifo,
                };
            }
            c.shed = o.shed.unwrap_or(c.shed);
            if let Some(at) = o.shed_at {
                for (slot, share) in c.shed_at.iter_mut().zip(at.by_index()) {
                    *slot = share.unwrap_or(*slot);
                }
            }
        }
        if let Some(d) = file.deadlines {
            let levels = [d.critical, d.high, d.normal, d.low, d.background];
            for (slot, action) in c.deadline_action.iter_mut().zip(levels) {
                if let Some(a) = action {
                    *slot = match a {
                        FileDeadlineAction::Reject => DeadlineAction::Reject,
                        FileDeadlineAction::Delay => DeadlineAction::Delay,
                    };
                }
            }
            if let Some(dm) = d.default_ms {
                for ((p, slot), ms) in Priority::ALL
                    .into_iter()
                    .zip(c.default_deadline.iter_mut())
                    .zip(dm.by_index())
                {
                    if let Some(ms) = ms {
                        *slot = Some(millis(&format!("deadlines.default_ms.{p}"), ms, true)?);
                    }
                }
            }
        }
        if let Some(p) = file.placement {
            if let Some(policy) = p.policy {
                c.placement = match policy {
                    FilePlacementPolicy::LeastLoaded => PlacementPolicy::LeastLoaded,
                    FilePlacementPolicy::Priority => PlacementPolicy::Priority,
                    FilePlacementPolicy::SloAware => PlacementPolicy::SloAware,
                    FilePlacementPolicy::CostOptimized => PlacementPolicy::CostOptimized,
                    FilePlacementPolicy::Adaptive => PlacementPolicy::Adaptive,
                };
            }
            if let Some(ms) = p.urgent_slack_ms {
                c.urgent_slack = millis("placement.urgent_slack_ms", ms, false)?;
            }
        }
        if let Some(slo) = file.slo {
            let levels = slo.by_index();
            for ((p, target), given) in Priority::ALL.into_iter().zip(c.slo.iter_mut()).zip(levels)
            {
                let Some(given) = given else { continue };
                let key = |f: &str| format!("slo.{p}.{f}");
                if let Some(ms) = given.p95_ms {
                    target.p95 = millis(&key("p95_ms"), ms, true)?;
                }
                if let Some(ms) = given.p99_ms {
                    target.p99 = millis(&key("p99_ms"), ms, true)?;
                }
                if let Some(ms) = given.timeout_ms {
                    target.timeout = millis(&key("timeout_ms"), ms, true)?;
                }
            }
        }
        c.cpu_workers = file.cpu_workers.unwrap_or(c.cpu_workers);
        if let Some(ms) = file.shutdown_timeout_ms {
            c.shutdown_timeout = millis("shutdown_timeout_ms", ms, false)?;
        }
        c.workers = file
            .workers
            .into_iter()
            .enumerate()
            .map(|(i, w)| WorkerSpec {
                name: w.name.unwrap_or_else(|| format!("worker{i}")),
                capacity: Capacity {
                    slots: w.slots,
                    tokens: w.tokens,
                    bytes: w.bytes.unwrap_or(u64::MAX),
                },
                speed: w.speed.unwrap_or(1.0),
                cost_per_hour: w.cost_per_hour.unwrap_or(0.0),
            })
            .collect();
        c.validate()?;
        Ok(c)
    }

    /// Reads a config from a TOML file; see [`from_toml_str`](Self::from_toml_str).
    pub fn from_toml_file(path: impl AsRef<std::path::Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Parse {
            message: format!("{}: {e}", path.display()),
        })?;
        Self::from_toml_str(&text).map_err(|e| match e {
            ConfigError::Parse { message } => ConfigError::Parse {
                message: format!("{}: {message}", path.display()),
            },
            other => other,
        })
    }
}
