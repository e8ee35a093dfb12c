//! The sharded priority intake: `S` shards × 5 priority levels of MPSC rings.
//!
//! Producers submit from any thread; each thread sticks to one *home* shard
//! (a thread-local index handed out round-robin), so producers on different
//! threads rarely touch the same cache line. A single [`IntakeConsumer`] (the
//! collector) drains the rings, most urgent level first.
//!
//! # What the bound bounds
//!
//! Every lane (one shard, one priority) is one ring, and the ring's slots
//! are the room. The consumer's drain *takes* an item out of its slot but
//! does **not** free the slot ([`ring::Consumer::take`]): a drained item
//! carries an [`Admission`], and only [`IntakeConsumer::release`] (called
//! when the request is launched, expired or cancelled) gives a slot back. So
//! the capacity bounds every request that is accepted and not yet finished
//! with, rings plus the collector's own set, and a full queue is seen at
//! submit, with the item handed back.
//!
//! A submit is therefore one ring push: one CAS on the lane's tail, as in a
//! plain bounded queue. A separate per-lane counter that submit raised and
//! release lowered would be a second line both sides write, stalling submit
//! and release alike.
//!
//! When its home lane is full a producer spills to the next shard's lane of
//! the same priority, so the whole `shards × lane_capacity` is usable by any
//! thread. Per-producer FIFO holds within a lane; a collector that needs
//! global arrival order across a spill orders by an arrival stamp.
//!
//! # Exclusive producers
//!
//! A thread that submits a lot may take a shard for itself with
//! [`Intake::exclusive`]: it then owns that shard's five rings
//! ([`ring::Producer::own`]) and claims slots by plain store instead of the
//! CAS, which is what a push waits on when the consumer keeps pace (see
//! `BENCHMARKS.md`). While it lives, the shard's room serves its owner
//! only: other threads spill past it, and a level counts as full to them
//! when every other shard's lane is. The owner itself spills into shared
//! shards when its own lane is full.
//!
//! An all-or-nothing batch that spans levels reserves a run of slots in one
//! lane per level. If a later level has no room, the runs already reserved
//! cannot be unclaimed, so they are written with placeholders that the
//! consumer frees on sight and never hands out.
//!
//! # Example
//!
//! ```
//! use convoy::intake::{Intake, IntakeConfig};
//! use convoy::{InsertPolicy, Priority};
//!
//! let (intake, mut collector) = Intake::new(IntakeConfig { shards: 2, lane_capacity: 4 })?;
//! intake.push(Priority::Low, "report", InsertPolicy::Enqueue).unwrap();
//! intake.push(Priority::Critical, "page", InsertPolicy::Enqueue).unwrap();
//!
//! let mut out = Vec::new();
//! collector.drain(16, &mut out);
//! assert_eq!(out[0].item, "page"); // most urgent level first
//! assert_eq!(intake.stats().depth(), 2); // drained, not yet released
//! for d in out {
//!     collector.release(d.admission);
//! }
//! assert_eq!(intake.stats().depth(), 0);
//! # Ok::<(), convoy::intake::IntakeError>(())
//! ```

use std::fmt;

use crossbeam::utils::CachePadded;

use crate::intake::ring::{self, RingError};
use crate::priority::{InsertPolicy, Priority};
use crate::sync::{Arc, AtomicU64, Ordering};

/// The most shards an intake may have; far above any useful core count.
pub const MAX_SHARDS: usize = 4096;

/// Shape of an intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntakeConfig {
    /// Number of shards (≥ 1). A good value is the number of producer
    /// threads rounded up, capped at the core count.
    pub shards: usize,
    /// Slots per lane (one shard, one priority); a power of two. The bound per
    /// priority is `shards × lane_capacity`.
    pub lane_capacity: usize,
}

impl Default for IntakeConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            shards: cores.next_power_of_two().min(64),
            lane_capacity: 1024,
        }
    }
}

/// Why an intake could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntakeError {
    /// At least one shard is needed.
    #[error("intake.shards must be at least 1")]
    ZeroShards,
    /// More shards than [`MAX_SHARDS`].
    #[error("intake.shards = {0} exceeds the maximum of {MAX_SHARDS}")]
    TooManyShards(usize),
    /// The lane capacity is not a valid ring capacity.
    #[error("intake.lane_capacity: {0}")]
    LaneCapacity(#[from] RingError),
}

/// A single push found every lane of its priority full; the item is handed
/// back.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("{priority} queue is full")]
pub struct QueueFull<T> {
    /// The item, untouched.
    pub item: T,
    /// The level that was full.
    pub priority: Priority,
}

impl<T> fmt::Debug for QueueFull<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueFull")
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

/// Why a batch (or part of it) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchRejectReason {
    /// The batch had no items.
    Empty,
    /// Some level had no room for (all of) its items right now.
    Full,
    /// An all-or-nothing batch has more items of one level than a lane can
    /// ever hold; it can never be accepted whole.
    Oversized {
        /// The level with too many items.
        priority: Priority,
        /// How many items of that level the batch holds.
        count: usize,
        /// The lane capacity.
        capacity: usize,
    },
}

/// A batch push that did not insert everything. `rejected` holds every item
/// that did not go in, in the order given.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("batch insert: {inserted} inserted, {} handed back ({reason:?})", rejected.len())]
pub struct BatchRejected<T> {
    /// How many items went in (always 0 for `AllOrNothing`).
    pub inserted: usize,
    /// The items handed back, with their priorities.
    pub rejected: Vec<(Priority, T)>,
    /// Why.
    pub reason: BatchRejectReason,
}

impl<T> fmt::Debug for BatchRejected<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchRejected")
            .field("inserted", &self.inserted)
            .field("rejected", &self.rejected.len())
            .field("reason", &self.reason)
            .finish()
    }
}

/// Proof that a drained item holds room in its lane. Hand it to
/// [`IntakeConsumer::release`] exactly once, when the request is finished
/// with (launched, expired, cancelled). Neither `Copy` nor `Clone`, so a
/// double release does not compile.
#[must_use = "an admission not released keeps its queue slot forever"]
#[derive(Debug, PartialEq, Eq)]
pub struct Admission {
    shard: u32,
    priority: Priority,
}

impl Admission {
    /// The shard of an admission that holds no room.
    const NO_SHARD: u32 = u32::MAX;

    /// An admission that holds no room: for a request that gave its room
    /// back when it was first launched and waits again (preemption put it
    /// back before it started). Releasing it frees nothing.
    ///
    /// ```
    /// use convoy::intake::{Admission, Intake, IntakeConfig};
    /// use convoy::{InsertPolicy, Priority};
    /// let (intake, mut c) = Intake::new(IntakeConfig { shards: 1, lane_capacity: 4 }).unwrap();
    /// intake.push(Priority::Low, 1, InsertPolicy::Enqueue).unwrap();
    /// c.release(Admission::none(Priority::Low));
    /// assert_eq!(intake.stats().depth(), 1); // the pushed item still holds its room
    /// ```
    pub fn none(priority: Priority) -> Self {
        Self {
            shard: Self::NO_SHARD,
            priority,
        }
    }

    /// The level the item was admitted at.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// The shard whose lane holds the room.
    pub fn shard(&self) -> usize {
        self.shard as usize
    }
}

/// One item out of the intake.
#[derive(Debug)]
pub struct Drained<T> {
    /// The submitted item.
    pub item: T,
    /// Submitted with [`InsertPolicy::Front`].
    pub front: bool,
    /// The room it holds until released.
    pub admission: Admission,
}

struct Entry<T> {
    item: T,
    front: bool,
}

impl<T> Entry<T> {
    /// A single push's slot: `Front` is carried as the flag.
    fn slot(item: T, policy: InsertPolicy) -> Slot<T> {
        Some(Entry {
            item,
            front: policy == InsertPolicy::Front,
        })
    }
}

/// What a lane's slot carries: an entry, or `None` for a placeholder written
/// by a rolled-back all-or-nothing push. `Option` costs nothing here for
/// small items: it uses `front`'s spare bit patterns.
type Slot<T> = Option<Entry<T>>;

/// One shard's ring for one priority. Producers share only the ring's tail
/// and slots; the counters are written on refusal or rollback alone.
/// `inserted` is not counted at all: it is the ring's claim counter, less
/// the placeholders.
struct Lane<T> {
    ring: ring::Producer<Slot<T>>,
    counters: CachePadded<LaneCounters>,
}

struct LaneCounters {
    rejected_full: AtomicU64,
    /// Placeholder slots written by rolled-back all-or-nothing pushes.
    voided: AtomicU64,
}

struct Shared<T> {
    /// `shards × 5` lanes, at `lane_index(shard, priority)`.
    lanes: Box<[Lane<T>]>,
    /// Per shard: batch insert operations that inserted at least one item.
    batch_insertions: Box<[CachePadded<AtomicU64>]>,
    shards: usize,
    /// `shards - 1` when `shards` is a power of two.
    shard_mask: Option<usize>,
    lane_capacity: usize,
}

impl<T> Shared<T> {
    /// The shard after `shard`, wrapping; no division on the submit path.
    fn next_shard(&self, shard: usize) -> usize {
        if shard + 1 == self.shards {
            0
        } else {
            shard + 1
        }
    }

    /// `n` shards in turn from `first`, wrapping: the order a push, a
    /// batch reservation and an exclusive producer try them in.
    fn shards_from(&self, first: usize, n: usize) -> impl Iterator<Item = usize> + '_ {
        std::iter::successors(Some(first), |&s| Some(self.next_shard(s))).take(n)
    }

    fn lane(&self, shard: usize, priority: Priority) -> &Lane<T> {
        &self.lanes[lane_index(shard, priority)]
    }

    /// Pushes `slot` into the `priority` lane of the first shard, from
    /// `first` on and `tries` shards in all, that takes it (owned lanes
    /// refuse); on refusal everywhere counts it against `home` and hands
    /// the item back.
    fn push_from(
        &self,
        home: usize,
        first: usize,
        tries: usize,
        priority: Priority,
        mut slot: Slot<T>,
    ) -> Result<(), QueueFull<T>> {
        for shard in self.shards_from(first, tries) {
            match self.lane(shard, priority).ring.push(slot) {
                Ok(()) => return Ok(()),
                Err(ring::Full(back)) => slot = back,
            }
        }
        // Relaxed: a statistic.
        let lane = self.lane(home, priority);
        lane.counters.rejected_full.fetch_add(1, Ordering::Relaxed);
        let entry = slot.expect("a full ring hands back the Some it was given");
        Err(QueueFull {
            item: entry.item,
            priority,
        })
    }

    fn stats(&self) -> IntakeStats {
        let mut stats = IntakeStats {
            per_priority: [PriorityIntakeStats::default(); Priority::COUNT],
            batch_insertions: 0,
            capacity_per_priority: self.shards * self.lane_capacity,
        };
        for shard in 0..self.shards {
            for p in Priority::ALL {
                let lane = self.lane(shard, p);
                let s = &mut stats.per_priority[p.index()];
                // `voided` before the claims, with Acquire (it is raised with
                // Release after the claim it voids): a void seen is a claim
                // seen, so `inserted` may briefly count a rolled-back
                // batch's placeholders but never undercounts, and a count
                // of outcomes read before this (`Counters::snapshot`) stays
                // ≤ it. The rest are Relaxed: independent statistics.
                let voided = lane.counters.voided.load(Ordering::Acquire);
                s.depth += lane.ring.len();
                s.inserted += (lane.ring.pushed() as u64).saturating_sub(voided);
                s.rejected_full += lane.counters.rejected_full.load(Ordering::Relaxed);
            }
            stats.batch_insertions += self.batch_insertions[shard].load(Ordering::Relaxed);
        }
        stats
    }
}

/// Per-level intake statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PriorityIntakeStats {
    /// Slots in use: accepted and not yet released (rings plus the
    /// collector's set), plus any placeholders of a rolled-back
    /// all-or-nothing batch that the collector has not yet passed.
    pub depth: usize,
    /// Accepted since start.
    pub inserted: u64,
    /// Refused because the level was full.
    pub rejected_full: u64,
}

/// A lock-free snapshot of the intake. Each counter is exact; the set is not
/// one atomic instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IntakeStats {
    /// Indexed by [`Priority::index`].
    pub per_priority: [PriorityIntakeStats; Priority::COUNT],
    /// Batch inserts that put at least one item in.
    pub batch_insertions: u64,
    /// The bound per level: `shards × lane_capacity`.
    pub capacity_per_priority: usize,
}

impl IntakeStats {
    /// The level's statistics.
    pub fn of(&self, p: Priority) -> PriorityIntakeStats {
        self.per_priority[p.index()]
    }

    /// Accepted and not yet released, all levels.
    pub fn depth(&self) -> usize {
        self.per_priority.iter().map(|s| s.depth).sum()
    }

    /// Accepted since start, all levels.
    pub fn inserted(&self) -> u64 {
        self.per_priority.iter().map(|s| s.inserted).sum()
    }

    /// Refused as full, all levels.
    pub fn rejected_full(&self) -> u64 {
        self.per_priority.iter().map(|s| s.rejected_full).sum()
    }

    /// Depth over capacity, all levels, in `[0, 1]`.
    pub fn utilization(&self) -> f64 {
        fill(self.depth(), self.capacity_per_priority * Priority::COUNT)
    }

    /// Depth over capacity of one level, in `[0, 1]`.
    pub fn utilization_of(&self, p: Priority) -> f64 {
        fill(self.of(p).depth, self.capacity_per_priority)
    }
}

/// `depth / capacity`, 0 for no capacity (a default `Stats`: an intake
/// always has some). The one utilization formula of `IntakeStats` and
/// `Stats`.
pub(crate) fn fill(depth: usize, capacity: usize) -> f64 {
    if capacity == 0 {
        0.0
    } else {
        depth as f64 / capacity as f64
    }
}

/// The producer side; cheap to clone, `Send + Sync`.
pub struct Intake<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Intake<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> fmt::Debug for Intake<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Intake")
            .field("shards", &self.shared.shards)
            .field("lane_capacity", &self.shared.lane_capacity)
            .finish()
    }
}

/// Round-robin source of home shards. A hint, not a protocol: any value is
/// correct, so it is a plain std atomic even under loom.
static NEXT_HOME: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    static HOME: usize = NEXT_HOME.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

impl<T> Intake<T> {
    /// Builds an intake and its single consumer.
    ///
    /// ```
    /// use convoy::intake::{Intake, IntakeConfig, IntakeError};
    /// assert_eq!(
    ///     Intake::<u8>::new(IntakeConfig { shards: 0, lane_capacity: 8 }).unwrap_err(),
    ///     IntakeError::ZeroShards,
    /// );
    /// assert!(Intake::<u8>::new(IntakeConfig { shards: 3, lane_capacity: 8 }).is_ok());
    /// ```
    pub fn new(config: IntakeConfig) -> Result<(Intake<T>, IntakeConsumer<T>), IntakeError> {
        // Spread: a shared producer's pushes alternate between its shard's
        // five lanes, the case that layout is for (1.5-2.8x the throughput
        // of a sequential layout in the intake bench, BENCHMARKS.md).
        Self::with_layout(config, ring::Layout::Spread)
    }

    /// [`new`](Self::new) with the lanes laid out as `layout`.
    /// `Sequential` suits exclusive producers: with no CAS to wait on a
    /// slot's line, a producer fills a line in a run and the consumer reads
    /// it once (BENCHMARKS.md); shared producers do better on `Spread`, the
    /// default.
    ///
    /// ```
    /// use convoy::intake::{Intake, IntakeConfig};
    /// use convoy::ring::Layout;
    /// let config = IntakeConfig { shards: 4, lane_capacity: 1024 };
    /// let (intake, _c) = Intake::<u64>::with_layout(config, Layout::Sequential).unwrap();
    /// assert!(intake.exclusive().is_some());
    /// ```
    pub fn with_layout(
        config: IntakeConfig,
        layout: ring::Layout,
    ) -> Result<(Intake<T>, IntakeConsumer<T>), IntakeError> {
        if config.shards == 0 {
            return Err(IntakeError::ZeroShards);
        }
        if config.shards > MAX_SHARDS {
            return Err(IntakeError::TooManyShards(config.shards));
        }
        let n = config.shards * Priority::COUNT;
        let mut lanes = Vec::with_capacity(n);
        let mut consumers = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = ring::channel_with(config.lane_capacity, layout)?;
            lanes.push(Lane {
                ring: tx,
                counters: CachePadded::new(LaneCounters {
                    rejected_full: AtomicU64::new(0),
                    voided: AtomicU64::new(0),
                }),
            });
            consumers.push(rx);
        }
        let shared = Arc::new(Shared {
            lanes: lanes.into_boxed_slice(),
            batch_insertions: (0..config.shards)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
            shards: config.shards,
            shard_mask: config.shards.is_power_of_two().then(|| config.shards - 1),
            lane_capacity: config.lane_capacity,
        });
        Ok((
            Intake {
                shared: shared.clone(),
            },
            IntakeConsumer {
                shared,
                rings: consumers,
                cursor: [0; Priority::COUNT],
            },
        ))
    }

    /// This thread's home shard.
    fn home(&self) -> usize {
        let seed = HOME.with(|h| *h);
        // A mask, not a division, when the shard count allows (the default).
        match self.shared.shard_mask {
            Some(mask) => seed & mask,
            None => seed % self.shared.shards,
        }
    }

    /// Submits one item at `priority`; hands it back when the level is full.
    /// `AllOrNothing` is the same as `Enqueue` for a single item.
    ///
    /// ```
    /// use convoy::intake::{Intake, IntakeConfig};
    /// use convoy::{InsertPolicy, Priority};
    /// let (intake, _c) = Intake::new(IntakeConfig { shards: 1, lane_capacity: 1 }).unwrap();
    /// intake.push(Priority::High, 1, InsertPolicy::Enqueue).unwrap();
    /// let full = intake.push(Priority::High, 2, InsertPolicy::Front).unwrap_err();
    /// assert_eq!(full.item, 2);
    /// assert!(intake.push(Priority::Low, 3, InsertPolicy::Enqueue).is_ok()); // other level
    /// ```
    pub fn push(
        &self,
        priority: Priority,
        item: T,
        policy: InsertPolicy,
    ) -> Result<(), QueueFull<T>> {
        let home = self.home();
        let slot = Entry::slot(item, policy);
        self.shared
            .push_from(home, home, self.shared.shards, priority, slot)
    }

    /// Takes a shard for this thread alone, or `None` when every shard is
    /// owned (module docs). Its pushes claim by plain store; dropping it
    /// gives the shard back.
    ///
    /// ```
    /// use convoy::intake::{Intake, IntakeConfig};
    /// use convoy::{InsertPolicy, Priority};
    /// let (intake, mut c) = Intake::new(IntakeConfig { shards: 2, lane_capacity: 1 }).unwrap();
    /// let mut mine = intake.exclusive().expect("a shard is free");
    /// mine.push(Priority::High, 1, InsertPolicy::Enqueue).unwrap();
    /// mine.push(Priority::High, 2, InsertPolicy::Enqueue).unwrap(); // spills to the shared shard
    /// assert_eq!(intake.push(Priority::High, 3, InsertPolicy::Enqueue).unwrap_err().item, 3);
    /// assert!(intake.push(Priority::Low, 4, InsertPolicy::Enqueue).is_ok()); // the other shard
    /// let _second = intake.exclusive().expect("the other shard");
    /// assert!(intake.exclusive().is_none(), "both owned");
    /// let mut out = vec![];
    /// c.drain(8, &mut out);
    /// assert_eq!(out.iter().map(|d| d.item).collect::<Vec<_>>(), [1, 2, 4]);
    /// ```
    pub fn exclusive(&self) -> Option<ExclusiveProducer<T>> {
        for shard in self.shared.shards_from(self.home(), self.shared.shards) {
            // All five lanes or none: a partial set drops, giving back
            // what it took.
            let owners: Vec<_> = Priority::ALL
                .into_iter()
                .map_while(|p| self.shared.lane(shard, p).ring.own())
                .collect();
            if owners.len() == Priority::COUNT {
                return Some(ExclusiveProducer {
                    shared: self.shared.clone(),
                    shard,
                    owners,
                });
            }
        }
        None
    }

    /// Submits a batch of `(priority, item)` pairs under `policy`.
    ///
    /// `Enqueue` and `Front` insert what fits, in order, and hand back the
    /// rest; `AllOrNothing` inserts every item or none. Returns how many went
    /// in when all did. An empty batch is refused.
    ///
    /// ```
    /// use convoy::intake::{BatchRejectReason, Intake, IntakeConfig};
    /// use convoy::{InsertPolicy, Priority::*};
    /// let (intake, _c) = Intake::new(IntakeConfig { shards: 1, lane_capacity: 2 }).unwrap();
    /// let err = intake
    ///     .push_batch(vec![(High, 1), (High, 2), (High, 3)], InsertPolicy::AllOrNothing)
    ///     .unwrap_err();
    /// assert_eq!(err.inserted, 0);
    /// assert_eq!(err.rejected.len(), 3);
    /// let err = intake
    ///     .push_batch(vec![(High, 1), (High, 2), (High, 3)], InsertPolicy::Enqueue)
    ///     .unwrap_err();
    /// assert_eq!((err.inserted, err.rejected), (2, vec![(High, 3)]));
    /// assert_eq!(err.reason, BatchRejectReason::Full);
    /// ```
    pub fn push_batch(
        &self,
        items: Vec<(Priority, T)>,
        policy: InsertPolicy,
    ) -> Result<usize, BatchRejected<T>> {
        if items.is_empty() {
            return Err(BatchRejected {
                inserted: 0,
                rejected: items,
                reason: BatchRejectReason::Empty,
            });
        }
        let result = match policy {
            InsertPolicy::Enqueue | InsertPolicy::Front => self.push_each(items, policy),
            InsertPolicy::AllOrNothing => self.push_whole(items),
        };
        let inserted = match &result {
            Ok(n) => *n,
            Err(e) => e.inserted,
        };
        if inserted > 0 {
            self.shared.batch_insertions[self.home()].fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn push_each(
        &self,
        items: Vec<(Priority, T)>,
        policy: InsertPolicy,
    ) -> Result<usize, BatchRejected<T>> {
        let mut inserted = 0;
        let mut rejected = Vec::new();
        for (priority, item) in items {
            match self.push(priority, item, policy) {
                Ok(()) => inserted += 1,
                Err(full) => rejected.push((priority, full.item)),
            }
        }
        if rejected.is_empty() {
            Ok(inserted)
        } else {
            Err(BatchRejected {
                inserted,
                rejected,
                reason: BatchRejectReason::Full,
            })
        }
    }

    fn push_whole(&self, items: Vec<(Priority, T)>) -> Result<usize, BatchRejected<T>> {
        let shared = &*self.shared;
        let mut counts = [0usize; Priority::COUNT];
        for (p, _) in &items {
            counts[p.index()] += 1;
        }
        if let Some(p) = Priority::ALL
            .into_iter()
            .find(|p| counts[p.index()] > shared.lane_capacity)
        {
            return Err(BatchRejected {
                inserted: 0,
                rejected: items,
                reason: BatchRejectReason::Oversized {
                    priority: p,
                    count: counts[p.index()],
                    capacity: shared.lane_capacity,
                },
            });
        }
        // Reserve a run of slots for every level's group in one lane each,
        // or roll back.
        let home = self.home();
        let mut reserved: [Option<(usize, ring::Reservation<'_, Slot<T>>)>; Priority::COUNT] =
            std::array::from_fn(|_| None);
        for p in Priority::ALL {
            let k = counts[p.index()];
            if k == 0 {
                continue;
            }
            reserved[p.index()] = shared
                .shards_from(home, shared.shards)
                .find_map(|s| shared.lane(s, p).ring.reserve(k).map(|r| (s, r)));
            if reserved[p.index()].is_none() {
                for q in Priority::ALL {
                    // `voided` is raised after the claim (the reservation)
                    // it voids, with Release, and read before the claims
                    // with Acquire (`Shared::stats`): a reader never
                    // subtracts a void whose claim it did not count.
                    // `rejected_full` is Relaxed: a statistic.
                    if let Some((s, run)) = reserved[q.index()].take() {
                        let lane = shared.lane(s, q);
                        lane.counters
                            .voided
                            .fetch_add(counts[q.index()] as u64, Ordering::Release);
                        drop(run); // writes the placeholders
                    }
                    shared
                        .lane(home, q)
                        .counters
                        .rejected_full
                        .fetch_add(counts[q.index()] as u64, Ordering::Relaxed);
                }
                return Err(BatchRejected {
                    inserted: 0,
                    rejected: items,
                    reason: BatchRejectReason::Full,
                });
            }
        }
        let total = items.len();
        let mut groups: [Vec<Slot<T>>; Priority::COUNT] = Default::default();
        for (p, group) in groups.iter_mut().enumerate() {
            group.reserve_exact(counts[p]);
        }
        for (p, item) in items {
            groups[p.index()].push(Some(Entry { item, front: false }));
        }
        for (run, group) in reserved.into_iter().zip(groups) {
            if let Some((_, run)) = run {
                run.fill(group);
            }
        }
        Ok(total)
    }

    /// A lock-free snapshot of depths and counters.
    pub fn stats(&self) -> IntakeStats {
        self.shared.stats()
    }

    /// The bound per level: `shards × lane_capacity`.
    pub fn capacity_per_priority(&self) -> usize {
        self.shared.shards * self.shared.lane_capacity
    }
}

/// A producer that owns one shard's five lanes (see
/// [`Intake::exclusive`]). Not `Clone`: one thread pushes through it, by
/// `&mut self`. Dropping it gives the shard back to shared producers.
pub struct ExclusiveProducer<T> {
    shared: Arc<Shared<T>>,
    shard: usize,
    /// The shard's lanes, indexed by `Priority::index`.
    owners: Vec<ring::Owner<Slot<T>>>,
}

impl<T> fmt::Debug for ExclusiveProducer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExclusiveProducer")
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

impl<T> ExclusiveProducer<T> {
    /// Submits one item at `priority` into this producer's own lane, or,
    /// when that is full, into a shared shard's; hands it back when every
    /// one it may use is full. As [`Intake::push`] otherwise.
    ///
    /// ```
    /// use convoy::intake::{Intake, IntakeConfig};
    /// use convoy::{InsertPolicy, Priority};
    /// let (intake, _c) = Intake::new(IntakeConfig { shards: 1, lane_capacity: 1 }).unwrap();
    /// let mut mine = intake.exclusive().unwrap();
    /// mine.push(Priority::Low, 'a', InsertPolicy::Enqueue).unwrap();
    /// assert_eq!(mine.push(Priority::Low, 'b', InsertPolicy::Front).unwrap_err().item, 'b');
    /// ```
    pub fn push(
        &mut self,
        priority: Priority,
        item: T,
        policy: InsertPolicy,
    ) -> Result<(), QueueFull<T>> {
        match self.owners[priority.index()].push(Entry::slot(item, policy)) {
            Ok(()) => Ok(()),
            Err(ring::Full(slot)) => {
                let shared = &*self.shared;
                let next = shared.next_shard(self.shard);
                shared.push_from(self.shard, next, shared.shards - 1, priority, slot)
            }
        }
    }

    /// The shard this producer owns.
    pub fn shard(&self) -> usize {
        self.shard
    }
}

/// Where a lane sits in `Shared::lanes` and `IntakeConsumer::rings`: one
/// layout for the producer and consumer ends.
fn lane_index(shard: usize, priority: Priority) -> usize {
    shard * Priority::COUNT + priority.index()
}

/// The single consumer: the collector's end of the intake.
pub struct IntakeConsumer<T> {
    shared: Arc<Shared<T>>,
    /// Same indexing as `Shared::lanes`.
    rings: Vec<ring::Consumer<Slot<T>>>,
    /// Per level, the shard the next drain starts at, so a small `max` does
    /// not always favour shard 0.
    cursor: [usize; Priority::COUNT],
}

impl<T> fmt::Debug for IntakeConsumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntakeConsumer")
            .field("shards", &self.shared.shards)
            .finish()
    }
}

impl<T> IntakeConsumer<T> {
    /// Drains up to `max` items into `out`, most urgent level first; within
    /// a level, shards in rotation and each lane in FIFO order. Returns how
    /// many were drained.
    pub fn drain(&mut self, max: usize, out: &mut Vec<Drained<T>>) -> usize {
        let mut n = 0;
        for p in Priority::ALL {
            if n >= max {
                break;
            }
            n += self.drain_priority(p, max - n, out);
        }
        n
    }

    /// Drains up to `max` items of one level into `out`.
    ///
    /// ```
    /// use convoy::intake::{Intake, IntakeConfig};
    /// use convoy::{InsertPolicy, Priority};
    /// let (intake, mut c) = Intake::new(IntakeConfig { shards: 1, lane_capacity: 4 }).unwrap();
    /// intake.push(Priority::Low, 'l', InsertPolicy::Enqueue).unwrap();
    /// intake.push(Priority::High, 'h', InsertPolicy::Enqueue).unwrap();
    /// let mut out = vec![];
    /// assert_eq!(c.drain_priority(Priority::Low, 8, &mut out), 1);
    /// assert_eq!(out[0].item, 'l');
    /// # for d in out { c.release(d.admission) }
    /// ```
    pub fn drain_priority(
        &mut self,
        priority: Priority,
        max: usize,
        out: &mut Vec<Drained<T>>,
    ) -> usize {
        let shards = self.shared.shards;
        let start = self.cursor[priority.index()];
        let mut n = 0;
        for i in 0..shards {
            let shard = (start + i) % shards;
            let ring = &mut self.rings[lane_index(shard, priority)];
            while n < max {
                let Some(slot) = ring.take() else { break };
                let Some(entry) = slot else {
                    // A rolled-back batch's placeholder: nobody holds it.
                    ring.free(1);
                    continue;
                };
                out.push(Drained {
                    item: entry.item,
                    front: entry.front,
                    admission: Admission {
                        shard: shard as u32,
                        priority,
                    },
                });
                n += 1;
            }
            if n >= max {
                break;
            }
        }
        self.cursor[priority.index()] = (start + 1) % shards;
        n
    }

    /// Gives the room an item held back to its lane.
    ///
    /// Room is counted per lane, not per item, so it frees the lane's oldest
    /// held slot. An admission from another intake frees nothing beyond
    /// what this lane holds, and one naming a lane this intake lacks is
    /// ignored.
    pub fn release(&mut self, admission: Admission) {
        self.free(admission.shard(), admission.priority, 1);
    }

    /// Releases many admissions with one free per run of the same lane (a
    /// drained batch comes grouped by lane).
    ///
    /// ```
    /// use convoy::intake::{Intake, IntakeConfig};
    /// use convoy::{InsertPolicy, Priority};
    /// let (intake, mut c) = Intake::new(IntakeConfig { shards: 1, lane_capacity: 4 }).unwrap();
    /// intake.push_batch(vec![(Priority::High, 1), (Priority::High, 2)], InsertPolicy::Enqueue).unwrap();
    /// let mut out = vec![];
    /// c.drain(8, &mut out);
    /// c.release_all(out.into_iter().map(|d| d.admission));
    /// assert_eq!(intake.stats().depth(), 0);
    /// ```
    pub fn release_all(&mut self, admissions: impl IntoIterator<Item = Admission>) {
        let mut run: Option<(usize, Priority, usize)> = None;
        for a in admissions {
            match &mut run {
                Some((shard, prio, n)) if *shard == a.shard() && *prio == a.priority => *n += 1,
                _ => {
                    if let Some((shard, prio, n)) = run {
                        self.free(shard, prio, n);
                    }
                    run = Some((a.shard(), a.priority, 1));
                }
            }
        }
        if let Some((shard, prio, n)) = run {
            self.free(shard, prio, n);
        }
    }

    fn free(&mut self, shard: usize, priority: Priority, n: usize) {
        // An `Admission::none` names no shard, so no lane: nothing to free.
        if shard >= self.shared.shards {
            return;
        }
        if let Some(ring) = self.rings.get_mut(lane_index(shard, priority)) {
            ring.free(n);
        }
    }

    /// Whether any ring holds an item not yet drained, written or still
    /// being written (a snapshot).
    pub fn has_pending(&self) -> bool {
        self.rings.iter().any(|r| r.pending() > 0)
    }

    /// Whether a drain would return something now: `false` while items are
    /// only claimed, not yet written. This is what a consumer about to
    /// sleep should check (the producer rings after writing).
    pub fn has_ready(&self) -> bool {
        self.rings.iter().any(|r| r.has_ready())
    }

    /// A lock-free snapshot of depths and counters.
    pub fn stats(&self) -> IntakeStats {
        self.shared.stats()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use InsertPolicy::*;
    use Priority::*;

    fn intake(shards: usize, cap: usize) -> (Intake<u32>, IntakeConsumer<u32>) {
        Intake::new(IntakeConfig {
            shards,
            lane_capacity: cap,
        })
        .unwrap()
    }

    fn drain_all(c: &mut IntakeConsumer<u32>) -> Vec<Drained<u32>> {
        let mut out = Vec::new();
        c.drain(usize::MAX, &mut out);
        out
    }

    #[test]
    fn bad_config_is_a_typed_error() {
        let bad = |shards, lane_capacity| {
            Intake::<u8>::new(IntakeConfig {
                shards,
                lane_capacity,
            })
            .unwrap_err()
        };
        assert_eq!(bad(0, 8), IntakeError::ZeroShards);
        assert_eq!(
            bad(MAX_SHARDS + 1, 8),
            IntakeError::TooManyShards(MAX_SHARDS + 1)
        );
        assert_eq!(
            bad(1, 0),
            IntakeError::LaneCapacity(RingError::ZeroCapacity)
        );
        assert_eq!(
            bad(1, 12),
            IntakeError::LaneCapacity(RingError::NotPowerOfTwo(12))
        );
    }

    #[test]
    fn drains_most_urgent_first_and_keeps_front_flag() {
        let (i, mut c) = intake(1, 8);
        i.push(Background, 5, Enqueue).unwrap();
        i.push(Normal, 3, Enqueue).unwrap();
        i.push(Critical, 1, Front).unwrap();
        i.push(High, 2, Enqueue).unwrap();
        i.push(Low, 4, Enqueue).unwrap();
        let out = drain_all(&mut c);
        let items: Vec<_> = out.iter().map(|d| d.item).collect();
        assert_eq!(items, [1, 2, 3, 4, 5]);
        assert!(out[0].front && !out[1].front);
        assert_eq!(out[4].admission.priority(), Background);
    }

    #[test]
    fn drain_does_not_free_room_release_does() {
        let (i, mut c) = intake(1, 2);
        i.push(High, 1, Enqueue).unwrap();
        i.push(High, 2, Enqueue).unwrap();
        let out = drain_all(&mut c);
        assert_eq!(i.push(High, 3, Enqueue).unwrap_err().item, 3);
        assert_eq!(i.stats().of(High).depth, 2);
        let mut out = out.into_iter();
        c.release(out.next().unwrap().admission);
        i.push(High, 3, Enqueue).unwrap();
        assert_eq!(i.stats().of(High).rejected_full, 1);
        assert_eq!(i.stats().of(High).inserted, 3);
    }

    #[test]
    fn spills_to_other_shards_before_refusing() {
        let (i, mut c) = intake(4, 2);
        for n in 0..8 {
            i.push(Normal, n, Enqueue).unwrap();
        }
        assert!(i.push(Normal, 99, Enqueue).is_err());
        let out = drain_all(&mut c);
        let mut items: Vec<_> = out.iter().map(|d| d.item).collect();
        items.sort_unstable();
        assert_eq!(items, (0..8).collect::<Vec<_>>());
        let stats = i.stats();
        assert_eq!(stats.of(Normal).depth, 8);
        assert!((stats.utilization_of(Normal) - 1.0).abs() < 1e-12);
        assert!((stats.utilization() - 0.2).abs() < 1e-12);
    }

    #[test]
    fn all_or_nothing_rolls_back_every_level() {
        let (i, mut c) = intake(1, 2);
        i.push(Low, 0, Enqueue).unwrap();
        i.push(Low, 0, Enqueue).unwrap();
        let err = i
            .push_batch(vec![(High, 1), (Critical, 2), (Low, 3)], AllOrNothing)
            .unwrap_err();
        assert_eq!(err.reason, BatchRejectReason::Full);
        assert_eq!(err.rejected, vec![(High, 1), (Critical, 2), (Low, 3)]);
        let stats = i.stats();
        // The runs reserved on High and Critical hold placeholders until the
        // collector passes them; they are not counted as inserted.
        assert_eq!(stats.of(High).inserted, 0);
        assert_eq!(stats.of(Critical).inserted, 0);
        assert_eq!(stats.inserted(), 2);
        assert_eq!(stats.batch_insertions, 0);
        assert_eq!(stats.rejected_full(), 3);
        let out = drain_all(&mut c);
        assert_eq!(
            out.iter()
                .map(|d| (d.admission.priority(), d.item))
                .collect::<Vec<_>>(),
            vec![(Low, 0), (Low, 0)],
            "placeholders are never handed out"
        );
        let stats = i.stats();
        assert_eq!(stats.of(High).depth, 0, "High's placeholder was freed");
        assert_eq!(
            stats.of(Critical).depth,
            0,
            "Critical's placeholder was freed"
        );
        assert_eq!(stats.of(Low).depth, 2, "drained, not yet released");
        // With room it goes in whole.
        c.release_all(out.into_iter().map(|d| d.admission));
        assert_eq!(
            i.push_batch(vec![(High, 1), (Critical, 2), (Low, 3)], AllOrNothing),
            Ok(3)
        );
        assert_eq!(i.stats().batch_insertions, 1);
        let items: Vec<_> = drain_all(&mut c).iter().map(|d| d.item).collect();
        assert_eq!(items, [2, 1, 3]);
    }

    #[test]
    fn all_or_nothing_oversized_and_empty() {
        let (i, _c) = intake(2, 2);
        let err = i
            .push_batch(vec![(High, 1), (High, 2), (High, 3)], AllOrNothing)
            .unwrap_err();
        assert_eq!(
            err.reason,
            BatchRejectReason::Oversized {
                priority: High,
                count: 3,
                capacity: 2
            }
        );
        assert_eq!(err.rejected.len(), 3);
        let err = i.push_batch(vec![], Enqueue).unwrap_err();
        assert_eq!(err.reason, BatchRejectReason::Empty);
        assert_eq!(i.stats().depth(), 0);
    }

    #[test]
    fn front_batch_flags_every_item() {
        let (i, mut c) = intake(1, 4);
        assert_eq!(i.push_batch(vec![(Normal, 1), (Normal, 2)], Front), Ok(2));
        assert!(drain_all(&mut c).iter().all(|d| d.front));
    }

    #[test]
    fn a_foreign_admission_never_frees_an_undrained_slot() {
        // Admissions from another, bigger intake: each names a shard this
        // one may lack, or one it has where nothing is taken yet.
        let (big, mut big_c) = intake(4, 2);
        big.push(High, 1, Enqueue).unwrap();
        big.push(High, 2, Enqueue).unwrap();
        let foreign: Vec<_> = drain_all(&mut big_c)
            .into_iter()
            .map(|d| d.admission)
            .collect();
        let (small, mut c) = intake(1, 1);
        small.push(High, 7, Enqueue).unwrap();
        // Nothing drained here yet: releasing frees nothing, panics nowhere.
        c.release_all(foreign);
        assert!(
            small.push(High, 8, Enqueue).is_err(),
            "the slot still holds 7"
        );
        let out = drain_all(&mut c);
        assert_eq!(out.iter().map(|d| d.item).collect::<Vec<_>>(), [7]);
        c.release_all(out.into_iter().map(|d| d.admission));
        assert!(small.push(High, 8, Enqueue).is_ok());
    }

    #[test]
    fn small_drains_rotate_over_shards() {
        let (i, mut c) = intake(2, 4);
        // Fill both shards' Normal lanes by spilling.
        for n in 0..8 {
            i.push(Normal, n, Enqueue).unwrap();
        }
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2 {
            let mut out = Vec::new();
            c.drain(1, &mut out);
            seen.insert(out[0].admission.shard());
        }
        assert_eq!(seen.len(), 2, "both shards served by one-item drains");
    }
}
