//! Outcome counters, per priority, written without a lock.

use crate::config::{LaunchCause, PlacementReason};
use crate::intake::{fill, Admission, IntakeConsumer, IntakeStats};
use crate::priority::Priority;
use crate::sync::{AtomicU64, Ordering};

/// Which of the exactly-one outcomes a request ended in. (`pub` only for
/// the loom models; the module is private.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Delivered an output.
    Completed,
    /// Its deadline passed while queued.
    Expired,
    /// Cancelled or abandoned by the caller.
    Cancelled,
    /// The executor failed its batch.
    Failed,
    /// Failed by shutdown.
    ShutDown,
}

const ENDED: usize = 5;

/// How preemption took a request back (`convoy_preemptions_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preempted {
    /// Its batch was recalled from a worker before it started.
    Displaced = 0,
    /// Its batch stopped at a boundary while running, before it finished.
    Interrupted = 1,
}

impl Preempted {
    /// Both kinds, in index order.
    pub const ALL: [Preempted; 2] = [Self::Displaced, Self::Interrupted];

    /// The `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Displaced => "displaced",
            Self::Interrupted => "interrupted",
        }
    }
}

/// Counters written by the collector and the workers, read for reporting.
///
/// Most are Relaxed: independent monotonic counts. Two pairs are not,
/// because a reader compares them with the intake's counts, which are
/// read after them ([`Counters::snapshot`]):
///
/// * an outcome is counted (Release) only after its request was inserted
///   (the intake ring's claim, carried to the counting thread by the
///   ring's and the worker queue's Release/Acquire hand-offs), so a
///   snapshot that loads it (Acquire) sees that insertion too: in every
///   snapshot, per level, outcomes ≤ inserted;
/// * a batch is counted (Release) only after its requests' room was given
///   back, so a snapshot that counts the batch (Acquire) no longer counts
///   its requests in `queue_depth`: a caller who waits for `batches` to
///   move and then submits finds the room.
///
/// Reading the intake first would let a thread descheduled between the
/// two reads report more outcomes than insertions, and count a launched
/// batch whose room a submit then did not find.
pub struct Counters {
    ended: [[AtomicU64; ENDED]; Priority::COUNT],
    batches: AtomicU64,
    batched_requests: AtomicU64,
    shortfall: AtomicU64,
    aging_promotions: AtomicU64,
    deduplicated: AtomicU64,
    /// Submits refused because their level was shed, per level.
    shed: [AtomicU64; Priority::COUNT],
    /// Requests preempted, per level and kind (`Preempted`).
    preempted: [[AtomicU64; 2]; Priority::COUNT],
    placements: [AtomicU64; PlacementReason::COUNT],
    launches: [AtomicU64; LaunchCause::COUNT],
    adaptive_switches: AtomicU64,
    /// The most requests in the runtime at once (see `Stats`).
    most_in_runtime: AtomicU64,
    /// The batch limit in force (adaptive sizing) and its decreases.
    batch_limit: AtomicU64,
    batch_limit_decreases: AtomicU64,
    /// Batches by size, `BATCH_SIZE_BOUNDS[i-1] < size ≤ BATCH_SIZE_BOUNDS[i]`.
    batch_sizes: [AtomicU64; BATCH_SIZE_BOUNDS.len()],
}

/// Upper bounds of the batch size histogram; the last catches the rest.
pub const BATCH_SIZE_BOUNDS: [u64; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, u64::MAX];

impl Default for Counters {
    fn default() -> Self {
        Self::new()
    }
}

impl Counters {
    /// All zero.
    pub fn new() -> Self {
        Self {
            ended: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            batches: AtomicU64::new(0),
            batched_requests: AtomicU64::new(0),
            shortfall: AtomicU64::new(0),
            aging_promotions: AtomicU64::new(0),
            deduplicated: AtomicU64::new(0),
            shed: std::array::from_fn(|_| AtomicU64::new(0)),
            preempted: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            placements: std::array::from_fn(|_| AtomicU64::new(0)),
            launches: std::array::from_fn(|_| AtomicU64::new(0)),
            adaptive_switches: AtomicU64::new(0),
            most_in_runtime: AtomicU64::new(0),
            batch_limit: AtomicU64::new(0),
            batch_limit_decreases: AtomicU64::new(0),
            batch_sizes: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts a batch placed for `reason`.
    pub fn placement(&self, reason: PlacementReason) {
        self.placements[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a batch launched for `cause`.
    pub fn launch(&self, cause: LaunchCause) {
        self.launches[cause as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The adaptive batch limit in force and its decreases so far.
    pub fn set_batch_limit(&self, limit: usize, decreases: u64) {
        self.batch_limit.store(limit as u64, Ordering::Relaxed);
        self.batch_limit_decreases
            .store(decreases, Ordering::Relaxed);
    }

    /// The adaptive placement's switches so far.
    pub fn set_adaptive_switches(&self, n: u64) {
        self.adaptive_switches.store(n, Ordering::Relaxed);
    }

    /// The most requests in the runtime at once so far (the collector
    /// stores only a new high).
    pub fn set_most_in_runtime(&self, n: u64) {
        // Relaxed: a statistic, written by the collector alone.
        self.most_in_runtime.store(n, Ordering::Relaxed);
    }

    /// Counts `n` requests of level `p` that ended `how`; called only
    /// after their insertion was seen (see the type's docs).
    pub fn ended(&self, p: Priority, how: Ended, n: u64) {
        if n > 0 {
            // Release: see the type's docs.
            self.ended[p.index()][how as usize].fetch_add(n, Ordering::Release);
        }
    }

    /// A batch of `size` requests launched: gives their room back to the
    /// intake (`admissions`), then counts the batch. The order is the
    /// promise in the type's docs (a counted batch no longer holds room),
    /// so it lives here, where the collector and the loom model of it both
    /// call it, rather than in the collector alone.
    pub fn launched<T>(
        &self,
        intake: &mut IntakeConsumer<T>,
        admissions: impl IntoIterator<Item = Admission>,
        size: usize,
    ) {
        intake.release_all(admissions);
        // Release: see the type's docs.
        self.batches.fetch_add(1, Ordering::Release);
        self.batched_requests
            .fetch_add(size as u64, Ordering::Relaxed);
        let bucket = BATCH_SIZE_BOUNDS
            .iter()
            .position(|&b| size as u64 <= b)
            .unwrap_or(BATCH_SIZE_BOUNDS.len() - 1);
        self.batch_sizes[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a capacity shortfall episode.
    pub fn shortfall(&self) {
        self.shortfall.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request joined to a waiting one with its dedup key.
    pub fn deduplicated(&self) {
        self.deduplicated.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a submit at level `p` refused because the level was shed.
    pub fn shed(&self, p: Priority) {
        self.shed[p.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` requests of level `p` preempted `how`. Relaxed: an
    /// independent count, read only for reporting.
    pub fn preempted(&self, p: Priority, how: Preempted, n: u64) {
        if n > 0 {
            self.preempted[p.index()][how as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts a request launched ahead of more urgent ones by its age.
    pub fn aging_promotion(&self) {
        self.aging_promotions.fetch_add(1, Ordering::Relaxed);
    }

    /// These counters, then the intake's (`intake` is called after the
    /// outcome and batch counts are loaded, with Acquire: see the type's
    /// docs).
    pub fn snapshot(&self, intake: impl FnOnce() -> IntakeStats) -> Stats {
        let ended: [[u64; ENDED]; Priority::COUNT] = std::array::from_fn(|p| {
            std::array::from_fn(|how| self.ended[p][how].load(Ordering::Acquire))
        });
        let batches = self.batches.load(Ordering::Acquire);
        let intake = intake();
        let get = |p: usize, how: Ended| ended[p][how as usize];
        Stats {
            per_priority: std::array::from_fn(|p| PriorityStats {
                inserted: intake.per_priority[p].inserted,
                rejected_full: intake.per_priority[p].rejected_full,
                rejected_shed: self.shed[p].load(Ordering::Relaxed),
                queue_depth: intake.per_priority[p].depth,
                completed: get(p, Ended::Completed),
                expired: get(p, Ended::Expired),
                cancelled: get(p, Ended::Cancelled),
                failed: get(p, Ended::Failed),
                shut_down: get(p, Ended::ShutDown),
                displaced: self.preempted[p][Preempted::Displaced as usize].load(Ordering::Relaxed),
                interrupted: self.preempted[p][Preempted::Interrupted as usize]
                    .load(Ordering::Relaxed),
            }),
            batches,
            batched_requests: self.batched_requests.load(Ordering::Relaxed),
            capacity_shortfall: self.shortfall.load(Ordering::Relaxed),
            aging_promotions: self.aging_promotions.load(Ordering::Relaxed),
            deduplicated: self.deduplicated.load(Ordering::Relaxed),
            batch_insertions: intake.batch_insertions,
            queue_capacity: intake.capacity_per_priority,
            placements: std::array::from_fn(|i| self.placements[i].load(Ordering::Relaxed)),
            launches: std::array::from_fn(|i| self.launches[i].load(Ordering::Relaxed)),
            adaptive_switches: self.adaptive_switches.load(Ordering::Relaxed),
            most_in_runtime: self.most_in_runtime.load(Ordering::Relaxed),
            batch_limit: self.batch_limit.load(Ordering::Relaxed),
            batch_limit_decreases: self.batch_limit_decreases.load(Ordering::Relaxed),
            batch_sizes: std::array::from_fn(|i| self.batch_sizes[i].load(Ordering::Relaxed)),
        }
    }
}

/// Per-priority counts. `inserted` (accepted) equals the sum of the five
/// outcome counts plus `queue_depth` and those in flight; once the runtime
/// is idle or shut down, it equals the sum exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PriorityStats {
    /// Accepted at submit.
    pub inserted: u64,
    /// Refused because the level was full (handed back to the caller).
    pub rejected_full: u64,
    /// Refused because the level was shed while the queue ran late
    /// (`ordering.shed`; handed back to the caller).
    pub rejected_shed: u64,
    /// Accepted and not yet launched, expired or cancelled.
    pub queue_depth: usize,
    /// Delivered an output.
    pub completed: u64,
    /// Deadline passed while queued.
    pub expired: u64,
    /// Cancelled or abandoned by the caller.
    pub cancelled: u64,
    /// The executor failed its batch.
    pub failed: u64,
    /// Failed by shutdown.
    pub shut_down: u64,
    /// Times preemption recalled one of its requests from a worker before
    /// it started (it waited again; not an outcome).
    pub displaced: u64,
    /// Times one of its requests stopped unfinished at a boundary of a
    /// running batch and waited again (not an outcome).
    pub interrupted: u64,
}

impl PriorityStats {
    /// Requests that reached an outcome.
    pub fn ended(&self) -> u64 {
        self.completed + self.expired + self.cancelled + self.failed + self.shut_down
    }

    /// Accepted minus every outcome: what was lost. Saturating, so a count
    /// read while requests are in flight never wraps.
    ///
    /// ```
    /// let s = convoy::PriorityStats { inserted: 10, completed: 7, expired: 1, ..Default::default() };
    /// assert_eq!(s.lost(), 2);
    /// ```
    pub fn lost(&self) -> u64 {
        self.inserted.saturating_sub(self.ended())
    }
}

/// The accounting line: accepted, each outcome, refusals, and `lost`
/// (accepted minus every outcome; saturating, so a count read while
/// requests are in flight never wraps).
///
/// ```
/// let s = convoy::PriorityStats { inserted: 3, completed: 2, expired: 1, ..Default::default() };
/// assert_eq!(
///     s.to_string(),
///     "accepted 3 = completed 2 + expired 1 + cancelled 0 + failed 0 + shut down 0; refused (queue full) 0, (shed) 0; lost: 0"
/// );
/// ```
impl std::fmt::Display for PriorityStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "accepted {} = completed {} + expired {} + cancelled {} + failed {} + shut down {}; refused (queue full) {}, (shed) {}; lost: {}",
            self.inserted,
            self.completed,
            self.expired,
            self.cancelled,
            self.failed,
            self.shut_down,
            self.rejected_full,
            self.rejected_shed,
            self.lost()
        )
    }
}

/// A lock-free snapshot of a runtime's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Indexed by `Priority::index`.
    pub per_priority: [PriorityStats; Priority::COUNT],
    /// Batches launched.
    pub batches: u64,
    /// Requests launched in batches.
    pub batched_requests: u64,
    /// Episodes in which the most urgent request fitted no worker and
    /// stayed queued (the "need a new worker" signal); one per episode, not
    /// per collector pass.
    pub capacity_shortfall: u64,
    /// Requests picked by the aging rule ahead of more urgent levels.
    pub aging_promotions: u64,
    /// Requests merged into a waiting twin by dedup key (each ran as part
    /// of its twin's execution and is counted in its own outcome too).
    pub deduplicated: u64,
    /// `submit_batch` calls that inserted at least one request.
    pub batch_insertions: u64,
    /// The bound on accepted, unlaunched requests of each level
    /// (`intake.shards × intake.lane_capacity`): `queue_depth` never
    /// exceeds it, and a submit past it is refused.
    pub queue_capacity: usize,
    /// Batches placed per reason, indexed by `PlacementReason as usize`.
    pub placements: [u64; PlacementReason::COUNT],
    /// Batches launched per cause, indexed by `LaunchCause as usize`.
    pub launches: [u64; LaunchCause::COUNT],
    /// Mode switches of the `Adaptive` policy.
    pub adaptive_switches: u64,
    /// The most requests in the runtime at once (waiting, or launched and
    /// unfinished), as the collector counted them: what the adaptive queue
    /// delay reads. A closed loop of N callers stays at N (see
    /// `docs/semantics.md`).
    pub most_in_runtime: u64,
    /// The batch limit in force, as of the last finished batch (0 before
    /// any); below `max_batch_size` only with adaptive sizing.
    pub batch_limit: u64,
    /// Times adaptive sizing halved the limit.
    pub batch_limit_decreases: u64,
    /// Batches per size bucket (see [`BATCH_SIZE_BOUNDS`]).
    pub batch_sizes: [u64; BATCH_SIZE_BOUNDS.len()],
}

impl Stats {
    /// Batches placed for `reason`.
    pub fn placed(&self, reason: PlacementReason) -> u64 {
        self.placements[reason as usize]
    }

    /// Batches launched for `cause`: how many waited out the queue delay
    /// (`Delay`), and how many an idle worker took at once because nothing
    /// more was arriving (`Idle`).
    pub fn launched_by(&self, cause: LaunchCause) -> u64 {
        self.launches[cause as usize]
    }

    /// One level's counts.
    pub fn of(&self, p: Priority) -> PriorityStats {
        self.per_priority[p.index()]
    }

    /// Queue depth over capacity, all levels together, in `[0, 1]`: how
    /// close the runtime is to refusing work (0 when there is no bound).
    ///
    /// ```
    /// let mut s = convoy::Stats { queue_capacity: 100, ..Default::default() };
    /// s.per_priority[0].queue_depth = 50;
    /// s.per_priority[4].queue_depth = 100;
    /// assert_eq!(s.utilization(), 0.3);
    /// assert_eq!(s.utilization_of(convoy::Priority::Background), 1.0);
    /// ```
    pub fn utilization(&self) -> f64 {
        let depth: usize = self.per_priority.iter().map(|p| p.queue_depth).sum();
        fill(depth, self.queue_capacity * Priority::COUNT)
    }

    /// One level's queue depth over its capacity, in `[0, 1]`: at 1 its
    /// submits are refused.
    pub fn utilization_of(&self, p: Priority) -> f64 {
        fill(self.of(p).queue_depth, self.queue_capacity)
    }

    /// What happened between `earlier` and this snapshot: counters become
    /// differences, gauges (queue depth and capacity, the batch limit) keep
    /// this snapshot's value. The counters themselves never reset (they
    /// are Prometheus counters); this is the "reset insertion stats" of a
    /// dashboard or a test, without a write. Saturating, so snapshots
    /// passed in the wrong order give zeros, not a wrap.
    ///
    /// ```
    /// # use convoy::{Priority, Request, Runtime};
    /// let rt = Runtime::builder().batch_fn(|xs: &[u32]| xs.to_vec()).build()?;
    /// let h = rt.handle();
    /// h.submit(Request::new(1))?.wait().unwrap();
    /// let before = rt.stats();
    /// h.submit(Request::new(2))?.wait().unwrap();
    /// let delta = rt.stats().since(&before);
    /// assert_eq!(delta.of(Priority::Normal).inserted, 1);
    /// assert_eq!(delta.total().completed, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn since(&self, earlier: &Stats) -> Stats {
        let d = |now: u64, then: u64| now.saturating_sub(then);
        Stats {
            per_priority: std::array::from_fn(|i| {
                let (n, e) = (self.per_priority[i], earlier.per_priority[i]);
                PriorityStats {
                    inserted: d(n.inserted, e.inserted),
                    rejected_full: d(n.rejected_full, e.rejected_full),
                    rejected_shed: d(n.rejected_shed, e.rejected_shed),
                    queue_depth: n.queue_depth,
                    completed: d(n.completed, e.completed),
                    expired: d(n.expired, e.expired),
                    cancelled: d(n.cancelled, e.cancelled),
                    failed: d(n.failed, e.failed),
                    shut_down: d(n.shut_down, e.shut_down),
                    displaced: d(n.displaced, e.displaced),
                    interrupted: d(n.interrupted, e.interrupted),
                }
            }),
            batches: d(self.batches, earlier.batches),
            batched_requests: d(self.batched_requests, earlier.batched_requests),
            capacity_shortfall: d(self.capacity_shortfall, earlier.capacity_shortfall),
            aging_promotions: d(self.aging_promotions, earlier.aging_promotions),
            deduplicated: d(self.deduplicated, earlier.deduplicated),
            batch_insertions: d(self.batch_insertions, earlier.batch_insertions),
            queue_capacity: self.queue_capacity,
            placements: std::array::from_fn(|i| d(self.placements[i], earlier.placements[i])),
            launches: std::array::from_fn(|i| d(self.launches[i], earlier.launches[i])),
            adaptive_switches: d(self.adaptive_switches, earlier.adaptive_switches),
            most_in_runtime: self.most_in_runtime,
            batch_limit: self.batch_limit,
            batch_limit_decreases: d(self.batch_limit_decreases, earlier.batch_limit_decreases),
            batch_sizes: std::array::from_fn(|i| d(self.batch_sizes[i], earlier.batch_sizes[i])),
        }
    }

    /// Accepted at submit, all levels (seed 000's `total_inserted`).
    ///
    /// ```
    /// # use convoy::{Request, Runtime};
    /// // A batch function that returns no output for a 0 fails its batch.
    /// let rt = Runtime::builder()
    ///     .batch_fn(|xs: &[u32]| xs.iter().copied().filter(|&x| x != 0).collect())
    ///     .build()?;
    /// assert!(rt.handle().submit(Request::new(0))?.wait().is_err());
    /// let s = rt.stats();
    /// assert_eq!((s.inserted(), s.rejected(), s.dropped(), s.queue_depth()), (1, 0, 1, 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn inserted(&self) -> u64 {
        self.total().inserted
    }

    /// Refused at submit for load, all levels: the level was full, or shed
    /// while the queue ran late (`ordering.shed`). Each was handed back to
    /// its caller inside the error, so none is lost. Per level and reason:
    /// [`PriorityStats::rejected_full`], [`PriorityStats::rejected_shed`].
    pub fn rejected(&self) -> u64 {
        let t = self.total();
        t.rejected_full + t.rejected_shed
    }

    /// Accepted and ended without an output (expired, cancelled, failed or
    /// shut down), all levels. Every one of them got that outcome on its
    /// ticket: nothing is dropped silently.
    pub fn dropped(&self) -> u64 {
        let t = self.total();
        t.ended() - t.completed
    }

    /// Accepted and not yet launched, all levels.
    pub fn queue_depth(&self) -> usize {
        self.total().queue_depth
    }

    /// All levels summed.
    pub fn total(&self) -> PriorityStats {
        self.per_priority
            .iter()
            .fold(PriorityStats::default(), |a, s| PriorityStats {
                inserted: a.inserted + s.inserted,
                rejected_full: a.rejected_full + s.rejected_full,
                rejected_shed: a.rejected_shed + s.rejected_shed,
                queue_depth: a.queue_depth + s.queue_depth,
                completed: a.completed + s.completed,
                expired: a.expired + s.expired,
                cancelled: a.cancelled + s.cancelled,
                failed: a.failed + s.failed,
                shut_down: a.shut_down + s.shut_down,
                displaced: a.displaced + s.displaced,
                interrupted: a.interrupted + s.interrupted,
            })
    }
}
