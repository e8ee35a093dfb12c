//! One batch decision: order, place, reserve. Single-owner and synchronous,
//! so the collector runs it on its own data with no lock, and the `decide`
//! bench measures exactly the code the collector runs.
//!
//! [`Planner::form`] pops requests in the [`order`](crate::plan::order) rule. The
//! first one that fits a worker (chosen by the placement policy) decides the
//! worker, and the batch then fills with the next requests in order that fit
//! both the batch limits and that worker's remaining capacity. A request
//! that does not fit is set aside and put back afterwards, so it keeps its
//! place. After [`MAX_DEFERRED`] set-asides in a row the pass stops, which
//! bounds the work one decision can do. A worker that already holds two
//! batches is offered a third only when a full one still fits it
//! ([`takes_batch`]), so the leftover room is never cut into fragments.

use crate::config::{BatchingConfig, Capacity, PlacementReason};
use crate::plan::ledger::{Ledger, OverRelease};
use crate::plan::order::{Meta, WaitKey, Waiting};
use crate::plan::placement::{Candidate, Head, Placer};
use crate::priority::Priority;
use std::time::Duration;

/// How many requests in a row a pass may set aside before it stops looking.
pub const MAX_DEFERRED: usize = 16;

/// How many requests the next batch should take, or `None` to keep
/// waiting. A forced batch (queue delay reached, or shutting down) and a
/// full one take `limit`. Otherwise, with preferred sizes, the largest one
/// that `waiting` allows; with none possible yet, or no preferred sizes,
/// wait.
///
/// ```
/// use convoy::internals::planner::batch_size_now;
/// assert_eq!(batch_size_now(11, 16, false, &[4, 8]), Some(8));
/// assert_eq!(batch_size_now(3, 16, false, &[4, 8]), None); // wait for 4 or the delay
/// assert_eq!(batch_size_now(3, 16, true, &[4, 8]), Some(16)); // delay reached: take what is there
/// assert_eq!(batch_size_now(20, 16, false, &[4, 8]), Some(16)); // full
/// assert_eq!(batch_size_now(5, 16, false, &[]), None);
/// ```
pub fn batch_size_now(
    waiting: usize,
    limit: usize,
    forced: bool,
    preferred: &[usize],
) -> Option<usize> {
    if waiting == 0 {
        return None;
    }
    if forced || waiting >= limit {
        return Some(limit);
    }
    preferred
        .iter()
        .copied()
        .filter(|&p| p <= waiting.min(limit))
        .max()
}

/// Whether a worker holding `batches` batches that reserve `reserved` of
/// its `capacity` is offered a new batch of up to `slots` requests under
/// `limits`. Yes while it holds fewer than two (one to run and one queued
/// behind it, so it never waits for the collector between them), and
/// beyond that only when a full batch still fits in its room: per
/// resource, the batch limit clipped to the worker's capacity.
///
/// Otherwise a batch formed now would be a fragment cut to the room that
/// is left, to run only after the two ahead of it anyway. Holding back
/// loses nothing: when the running batch finishes, the worker starts the
/// queued one, and the release wakes the collector, which then forms a
/// full batch, from whatever more urgent work arrived meanwhile. Without
/// this rule, under a sustained overload of the bundled trace (two CPU
/// workers that each hold two full batches), about half of all batches
/// were fragments, most of one request (BENCHMARKS.md, "Fragments").
///
/// A resource the batch limits leave unbounded (`max_batch_bytes` by
/// default), or the worker does (`u64::MAX`), defines no full batch and is
/// not counted: otherwise a GPU worker, whose byte capacity is finite,
/// would take a third batch only when empty, however small its two were.
///
/// ```
/// use convoy::{BatchingConfig, Capacity};
/// use convoy::internals::planner::takes_batch;
/// let limits = BatchingConfig { max_batch_size: 8, max_batch_tokens: 100, ..convoy::Config::default().batching };
/// let capacity = Capacity { slots: 16, tokens: 200, bytes: u64::MAX };
/// let holding = |slots, tokens| Capacity { slots, tokens, bytes: 0 };
/// assert!(takes_batch(0, &holding(0, 0), &capacity, 8, &limits)); // idle
/// assert!(takes_batch(1, &holding(8, 100), &capacity, 8, &limits)); // one running, one may queue
/// assert!(takes_batch(2, &holding(6, 90), &capacity, 8, &limits)); // a full batch (8, 100) still fits
/// assert!(!takes_batch(2, &holding(10, 150), &capacity, 8, &limits)); // room for 6 and 50 tokens only
/// // Bytes bounded by the worker, not by the limits: not counted.
/// let gpu = Capacity { bytes: 1 << 30, ..capacity };
/// let some_bytes = Capacity { bytes: 1 << 20, ..holding(6, 90) };
/// assert!(takes_batch(2, &some_bytes, &gpu, 8, &limits));
/// ```
pub fn takes_batch(
    batches: u32,
    reserved: &Capacity,
    capacity: &Capacity,
    slots: usize,
    limits: &BatchingConfig,
) -> bool {
    batches < 2
        || [
            (
                u64::from(reserved.slots),
                u64::from(capacity.slots),
                slots as u64,
            ),
            (reserved.tokens, capacity.tokens, limits.max_batch_tokens),
            (reserved.bytes, capacity.bytes, limits.max_batch_bytes),
        ]
        .iter()
        .all(|&(held, cap, limit)| {
            cap == u64::MAX || limit == u64::MAX || cap.saturating_sub(held) >= limit.min(cap)
        })
}

/// What the planner needs to know about a waiting item.
pub trait Plannable {
    /// What it costs a worker while it runs.
    fn cost(&self) -> Capacity;
    /// Whether its caller gave up; it is then handed back unplanned.
    fn abandoned(&self) -> bool {
        false
    }
    /// A key the owner indexes its waiting requests by (deduplication):
    /// when forming puts such a request back, its new [`WaitKey`] is
    /// reported through [`Planner::take_moved`].
    fn group(&self) -> Option<u64> {
        None
    }
}

/// A formed batch: reserved in the ledger, not yet launched.
#[derive(Debug)]
pub struct Formed<T> {
    /// The worker it is reserved on.
    pub worker: usize,
    /// Why that worker.
    pub reason: PlacementReason,
    /// The requests, most urgent first.
    pub items: Vec<(T, Meta)>,
    /// The batch's total reservation (release exactly this when done).
    pub reserved: Capacity,
    /// How many were taken by the aging rule.
    pub aged: u32,
}

/// What one call to [`Planner::form`] found.
#[derive(Debug)]
pub enum Plan<T> {
    /// A batch to launch. `shortfall` is the cost of a more urgent request
    /// that fitted no worker and was set aside, if any.
    Batch {
        /// The batch.
        formed: Formed<T>,
        /// A set-aside request's cost.
        shortfall: Option<Capacity>,
    },
    /// Requests wait but none fits any worker now.
    Stalled {
        /// The most urgent set-aside request's cost.
        shortfall: Capacity,
    },
    /// Requests wait, and the workers with room for them each hold two
    /// batches already, with room for less than a full third
    /// ([`takes_batch`]): nothing launches until a batch finishes. Not a
    /// shortfall.
    Held,
    /// Nothing waits.
    Empty,
}

/// The collector's batch-forming state.
pub struct Planner<T> {
    waiting: Waiting<T>,
    ledger: Ledger,
    /// Batches formed and not yet released, per worker (`takes_batch`).
    batches: Vec<u32>,
    placer: Placer,
    limits: BatchingConfig,
    /// The batch limit in force: `max_batch_size`, or the AIMD limit when
    /// `target_batch_time` is set.
    batch_limit: usize,
    /// AIMD decreases since start.
    limit_decreases: u64,
    deferred: Vec<(T, Meta)>,
    /// Grouped requests put back by the last `form`, with their new keys.
    moved: Vec<(u64, WaitKey)>,
    /// The level and cost of the most urgent request the last `form` set
    /// aside without forming a batch (see [`Planner::blocked`]).
    blocked: Option<(Priority, Capacity)>,
    /// See [`Planner::set_band`].
    band: Option<u8>,
}

impl<T: Plannable> Planner<T> {
    /// A planner over `workers` workers with batch `limits` (its
    /// `max_queue_delay` is the collector's business, not the planner's).
    pub fn new(workers: usize, max_wait: Duration, limits: BatchingConfig, placer: Placer) -> Self {
        Self {
            waiting: Waiting::new(max_wait),
            ledger: Ledger::new(workers),
            batches: vec![0; workers],
            placer,
            batch_limit: limits.max_batch_size,
            limit_decreases: 0,
            limits,
            deferred: Vec::new(),
            moved: Vec::new(),
            blocked: None,
            band: None,
        }
    }

    /// The batch limit in force now.
    pub fn batch_limit(&self) -> usize {
        self.batch_limit
    }

    /// How many times AIMD halved the limit.
    pub fn limit_decreases(&self) -> u64 {
        self.limit_decreases
    }

    /// Adaptive batch sizing: feeds one finished batch of `size` requests
    /// and its execution time. Slower than `target_batch_time` lowers the
    /// limit to half that batch's size (at least 1; never raises it);
    /// within it adds one (at most `max_batch_size`). No target: no change.
    ///
    /// Half the size of the slow batch, not half the limit: batches formed
    /// under the old limit finish slow after the first decrease too, and
    /// halving the limit again for each of them collapsed it. With two
    /// workers each holding two batches, three stale batches took a limit
    /// of 64 to 4 on one overload (the bundled trace under a 2 ms target
    /// had a fifth of its batches of one request; BENCHMARKS.md, "AIMD").
    ///
    /// ```
    /// use std::time::Duration;
    /// use convoy::internals::planner::Planner;
    /// # use convoy::{Capacity, PlacementPolicy};
    /// # struct R;
    /// # impl convoy::internals::planner::Plannable for R {
    /// #     fn cost(&self) -> Capacity { Capacity { slots: 1, tokens: 1, bytes: 0 } }
    /// # }
    /// let mut limits = convoy::Config::default().batching;
    /// limits.target_batch_time = Some(Duration::from_millis(8));
    /// let placer = convoy::internals::placement::Placer::new(PlacementPolicy::LeastLoaded, Duration::ZERO, 4, 32);
    /// let mut p: Planner<R> = Planner::new(1, Duration::from_secs(1), limits, placer);
    /// let slow = Duration::from_millis(20);
    /// p.observe_batch_time(slow, 64);
    /// assert_eq!(p.batch_limit(), 32);
    /// p.observe_batch_time(slow, 64); // formed before the decrease
    /// assert_eq!((p.batch_limit(), p.limit_decreases()), (32, 1));
    /// p.observe_batch_time(slow, 32);
    /// p.observe_batch_time(Duration::from_millis(5), 16);
    /// assert_eq!((p.batch_limit(), p.limit_decreases()), (17, 2));
    /// ```
    pub fn observe_batch_time(&mut self, took: Duration, size: usize) {
        let Some(target) = self.limits.target_batch_time else {
            return;
        };
        if took > target {
            let halved = (size / 2).max(1);
            if halved < self.batch_limit {
                self.batch_limit = halved;
                self.limit_decreases += 1;
            }
        } else {
            self.batch_limit = (self.batch_limit + 1).min(self.limits.max_batch_size);
        }
    }

    /// Adds a waiting request. Its cost in `meta` is taken from the item,
    /// so the waiting set's sums agree with what forming will reserve.
    #[inline]
    pub fn insert(&mut self, item: T, meta: Meta) -> WaitKey {
        let cost = item.cost();
        let meta = Meta {
            tokens: cost.tokens,
            bytes: cost.bytes,
            ..meta
        };
        self.waiting.insert(item, meta)
    }

    // The waiting set's calls below are the collector's only way to it
    // (it never reaches into the set itself); inlined, they cost what a
    // direct call into the set does.

    /// Takes the waiting request `key` names, if it still waits (a dedup
    /// twin joining its group).
    #[inline]
    pub fn remove(&mut self, key: WaitKey) -> Option<(T, Meta)> {
        self.waiting.remove(key)
    }

    /// Takes one waiting request whose expiring deadline is at or before
    /// `now`.
    #[inline]
    pub fn pop_expired(&mut self, now: u64) -> Option<(T, Meta)> {
        self.waiting.pop_expired(now)
    }

    /// The earliest expiring deadline of what waits.
    #[inline]
    pub fn next_deadline(&mut self) -> Option<u64> {
        self.waiting.next_deadline()
    }

    /// The arrival time of the oldest waiting request.
    #[inline]
    pub fn oldest_arrival(&mut self) -> Option<u64> {
        self.waiting.oldest_arrival()
    }

    /// The tokens of everything waiting (what the queue would take to run).
    #[inline]
    pub fn waiting_tokens(&self) -> u128 {
        self.waiting.tokens()
    }

    /// One bounded step of a sweep over the waiting set; see
    /// [`Waiting::take_where`].
    #[inline]
    pub fn take_where(
        &mut self,
        from: usize,
        limit: usize,
        visit: impl FnMut(&mut T) -> bool,
        out: &mut Vec<(T, Meta)>,
    ) -> Option<usize> {
        self.waiting.take_where(from, limit, visit, out)
    }

    /// Takes every waiting request, in arrival order (shutdown, clear).
    #[inline]
    pub fn drain_all(&mut self) -> Vec<(T, Meta)> {
        self.waiting.drain_all()
    }

    /// Whether the waiting requests already fill a batch, so waiting out
    /// the queue delay could not make it larger: by count (the batch limit,
    /// or the most slots any worker up has), by tokens (`max_batch_tokens`,
    /// or the most tokens such a worker holds) or by bytes likewise.
    /// `most` is that largest worker capacity, per resource; `None` when no
    /// worker is up (then only the batch limits count).
    ///
    /// Without the worker and token terms, a worker of 2 slots under a
    /// batch limit of 32 made every batch wait out the whole delay.
    pub fn is_full(&self, most: Option<Capacity>) -> bool {
        let w = &self.waiting;
        let mut count = self.batch_limit as u128;
        let mut tokens = u128::from(self.limits.max_batch_tokens);
        let mut bytes = u128::from(self.limits.max_batch_bytes);
        if let Some(m) = most {
            count = count.min(u128::from(m.slots));
            tokens = tokens.min(u128::from(m.tokens));
            bytes = bytes.min(u128::from(m.bytes));
        }
        // A sum of 0 fills nothing: requests that cost no bytes never fill
        // a worker that holds none.
        w.len() as u128 >= count.max(1)
            || (w.tokens() > 0 && w.tokens() >= tokens)
            || (w.bytes() > 0 && w.bytes() >= bytes)
    }

    /// Changes the ordering rule (a config reload).
    pub fn set_ordering(&mut self, policy: crate::config::OrderingPolicy) {
        self.waiting.set_policy(policy);
    }

    /// Changes the tenant fairness rule and weights (a config reload).
    pub fn set_fairness(
        &mut self,
        fairness: crate::config::Fairness,
        weights: std::collections::HashMap<std::sync::Arc<str>, f64>,
    ) {
        self.waiting.set_fairness(fairness);
        self.waiting.set_weights(weights);
    }

    /// The index of tenant `name` for [`Meta::tenant`] (`None`: no tenant).
    pub fn tenant_index(&mut self, name: Option<&std::sync::Arc<str>>) -> u32 {
        self.waiting.tenant_index(name)
    }

    /// Corrects the fairness charge of a launched request of tenant
    /// `name` at `level` from `charged` tokens to the `real` cost its
    /// executor reported. A tenant no longer held (dropped with no debt)
    /// is left alone.
    pub fn correct_charge(
        &mut self,
        name: Option<&std::sync::Arc<str>>,
        level: Priority,
        charged: u32,
        real: u32,
    ) {
        self.waiting.correct_charge(name, level, charged, real);
    }

    /// Tenants the fairness rule holds state for.
    pub fn tenants(&self) -> usize {
        self.waiting.tenants()
    }

    /// Changes the batch limits and `max_wait` (a config reload).
    pub fn set_limits(&mut self, limits: BatchingConfig, max_wait: Duration) {
        self.batch_limit = match limits.target_batch_time {
            Some(_) => self.batch_limit.clamp(1, limits.max_batch_size),
            None => limits.max_batch_size,
        };
        self.limits = limits;
        self.waiting.set_max_wait(max_wait);
    }

    /// Requests waiting.
    #[inline]
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Nothing waiting.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The placer (for load updates and batch timings).
    pub fn placer_mut(&mut self) -> &mut Placer {
        &mut self.placer
    }

    /// Tracks one more worker; returns its index.
    pub fn add_worker(&mut self) -> usize {
        self.batches.push(0);
        self.ledger.add_worker()
    }

    /// Gives a finished batch's reservation back: exactly what one formed
    /// batch reserved, once per batch.
    pub fn release(&mut self, worker: usize, amount: &Capacity) -> Result<(), OverRelease> {
        self.ledger.release(worker, amount)?;
        if let Some(n) = self.batches.get_mut(worker) {
            *n = n.saturating_sub(1);
        }
        Ok(())
    }

    /// Forms one batch of at most `max_items` (and the batch limit) at time
    /// `now_ns` over `workers`. Abandoned requests met on the way are moved
    /// to `abandoned` (unplanned, unreserved).
    pub fn form(
        &mut self,
        now_ns: u64,
        workers: &[Candidate<'_>],
        abandoned: &mut Vec<(T, Meta)>,
        max_items: usize,
    ) -> Plan<T> {
        let mut shortfall = None;
        self.blocked = None;
        let cap = self.batch_limit.min(max_items).max(1);
        // The head decides the worker.
        let (picked, mut formed) = loop {
            let Some((item, meta, aged)) = self.waiting.pop(now_ns) else {
                return self.finish_without_batch(shortfall);
            };
            if item.abandoned() {
                self.waiting.refund(&meta);
                abandoned.push((item, meta));
                continue;
            }
            let cost = item.cost();
            let head = Head {
                level: meta.level,
                cost,
                slack: (meta.deadline != u64::MAX)
                    .then(|| Duration::from_nanos(meta.deadline.saturating_sub(now_ns))),
            };
            let (ledger, limits, batches) = (&self.ledger, &self.limits, &self.batches);
            let open = |c: &Candidate<'_>| {
                let held = batches.get(c.index).copied().unwrap_or(0);
                takes_batch(
                    held,
                    &ledger.reserved(c.index),
                    &c.spec.capacity,
                    cap,
                    limits,
                )
            };
            match self.placer.place_at(workers, ledger, &head, open) {
                Some((at, reason)) => {
                    let picked = workers[at];
                    let fitted = self
                        .ledger
                        .reserve(picked.index, &picked.spec.capacity, &cost);
                    debug_assert!(fitted, "placement only offers workers where the head fits");
                    // No more than wait (the head and the rest): the limit
                    // is a config value, and a limit of 10^12 once
                    // asked for 224 TB here.
                    let mut items = Vec::with_capacity(cap.min(self.waiting.len() + 1));
                    items.push((item, meta));
                    break (
                        picked,
                        Formed {
                            worker: picked.index,
                            reason,
                            items,
                            reserved: cost,
                            aged: u32::from(aged),
                        },
                    );
                }
                None => {
                    // A shortfall only when no worker up has room for it
                    // at all: one held back from fragments has room.
                    let room = workers
                        .iter()
                        .any(|c| c.up && self.ledger.fits(c.index, &c.spec.capacity, &cost));
                    if !room {
                        shortfall.get_or_insert(cost);
                    }
                    self.deferred.push((item, meta));
                    let any_open = workers.iter().any(|c| {
                        c.up && self.ledger.free_slots(c.index, &c.spec.capacity) > 0 && open(c)
                    });
                    if self.deferred.len() >= MAX_DEFERRED || !any_open {
                        return self.finish_without_batch(shortfall);
                    }
                }
            }
        };
        // Never work a band's gap below the head (`set_band`).
        let head = formed.items[0].1.level;
        let band_end = self
            .band
            .map_or(usize::MAX, |g| head.index() + usize::from(g));
        let mut skipped = 0;
        while formed.items.len() < cap && skipped < MAX_DEFERRED {
            let Some((item, meta, aged)) = self.waiting.pop(now_ns) else {
                break;
            };
            if meta.level.index() >= band_end {
                self.deferred.push((item, meta));
                break;
            }
            if item.abandoned() {
                self.waiting.refund(&meta);
                abandoned.push((item, meta));
                continue;
            }
            let cost = item.cost();
            let tokens_ok = formed.reserved.tokens + cost.tokens <= self.limits.max_batch_tokens;
            let bytes_ok =
                formed.reserved.bytes.saturating_add(cost.bytes) <= self.limits.max_batch_bytes;
            if !tokens_ok
                || !bytes_ok
                || !self
                    .ledger
                    .reserve(picked.index, &picked.spec.capacity, &cost)
            {
                self.deferred.push((item, meta));
                skipped += 1;
                continue;
            }
            formed.aged += u32::from(aged);
            formed.reserved.slots += cost.slots;
            formed.reserved.tokens += cost.tokens;
            formed.reserved.bytes = formed.reserved.bytes.saturating_add(cost.bytes);
            formed.items.push((item, meta));
        }
        self.put_back();
        if let Some(n) = self.batches.get_mut(formed.worker) {
            *n += 1;
        }
        Plan::Batch { formed, shortfall }
    }

    fn finish_without_batch(&mut self, shortfall: Option<Capacity>) -> Plan<T> {
        let held = !self.deferred.is_empty();
        self.blocked = self
            .deferred
            .first()
            .map(|(item, meta)| (meta.level, item.cost()));
        self.put_back();
        match shortfall {
            Some(shortfall) => Plan::Stalled { shortfall },
            None if held => Plan::Held,
            None => Plan::Empty,
        }
    }

    /// Set-aside requests go back with their original order keys (under
    /// new wait keys: grouped ones are reported in `moved`).
    fn put_back(&mut self) {
        for (item, meta) in self.deferred.drain(..) {
            let group = item.group();
            let key = self.waiting.put_back(item, meta);
            if let Some(g) = group {
                self.moved.push((g, key));
            }
        }
    }

    /// The level and cost of the most urgent request that the last
    /// [`form`](Self::form) met and could place nowhere, when it formed no
    /// batch (`Stalled` or `Held`): what preemption would make room for.
    /// `None` after a form that launched or found nothing waiting.
    ///
    /// ```
    /// use convoy::internals::order::Meta;
    /// use convoy::internals::placement::{Candidate, Placer};
    /// use convoy::internals::planner::{Plan, Plannable, Planner};
    /// use convoy::{Capacity, Config, PlacementPolicy, Priority, WorkerSpec};
    /// use std::time::Duration;
    /// struct One;
    /// impl Plannable for One {
    ///     fn cost(&self) -> Capacity { Capacity { slots: 1, tokens: 1, bytes: 0 } }
    /// }
    /// let placer = Placer::new(PlacementPolicy::LeastLoaded, Duration::ZERO, 1, 8);
    /// let mut p = Planner::new(1, Duration::from_secs(1), Config::default().batching, placer);
    /// let spec = WorkerSpec {
    ///     name: "w".into(),
    ///     capacity: Capacity { slots: 1, tokens: 10, bytes: u64::MAX },
    ///     speed: 1.0,
    ///     cost_per_hour: 0.0,
    /// };
    /// let w = [Candidate { index: 0, spec: &spec, up: true }];
    /// let meta = |level, seq| Meta { level, arrival: 0, deadline: u64::MAX,
    ///     expire_at: u64::MAX, front: false, seq, tokens: 1, bytes: 0, tenant: 0 };
    /// p.insert(One, meta(Priority::Low, 0));
    /// assert!(matches!(p.form(0, &w, &mut vec![], 1), Plan::Batch { .. }));
    /// p.insert(One, meta(Priority::Critical, 1));
    /// assert!(matches!(p.form(0, &w, &mut vec![], 1), Plan::Stalled { .. }));
    /// assert_eq!(p.blocked(), Some((Priority::Critical, One.cost())));
    /// ```
    pub fn blocked(&self) -> Option<(Priority, Capacity)> {
        self.blocked
    }

    /// With `Some(gap)`, every batch [`form`](Self::form) makes carries
    /// its head's level and those less than `gap` below it, never a
    /// request `gap` or more levels less urgent: with preemption on, such
    /// a request is work the head could displace, and urgent work runs
    /// apart from it, in a short batch that shields nothing. `None`: any
    /// level (the default).
    ///
    /// ```
    /// use convoy::internals::order::Meta;
    /// use convoy::internals::placement::{Candidate, Placer};
    /// use convoy::internals::planner::{Plan, Plannable, Planner};
    /// use convoy::{Capacity, Config, PlacementPolicy, Priority, WorkerSpec};
    /// use std::time::Duration;
    /// struct One;
    /// impl Plannable for One {
    ///     fn cost(&self) -> Capacity { Capacity { slots: 1, tokens: 1, bytes: 0 } }
    /// }
    /// let placer = Placer::new(PlacementPolicy::LeastLoaded, Duration::ZERO, 1, 8);
    /// let mut p = Planner::new(1, Duration::from_secs(1), Config::default().batching, placer);
    /// let spec = WorkerSpec {
    ///     name: "w".into(),
    ///     capacity: Capacity { slots: 8, tokens: 80, bytes: u64::MAX },
    ///     speed: 1.0,
    ///     cost_per_hour: 0.0,
    /// };
    /// let w = [Candidate { index: 0, spec: &spec, up: true }];
    /// let meta = |level, seq| Meta { level, arrival: 0, deadline: u64::MAX,
    ///     expire_at: u64::MAX, front: false, seq, tokens: 1, bytes: 0, tenant: 0 };
    /// p.set_band(Some(2));
    /// for (seq, level) in [Priority::Critical, Priority::High, Priority::Normal].into_iter().enumerate() {
    ///     p.insert(One, meta(level, seq as u64));
    /// }
    /// let Plan::Batch { formed, .. } = p.form(0, &w, &mut vec![], 8) else { panic!() };
    /// assert_eq!(formed.items.len(), 2, "Critical and High; Normal waits");
    /// ```
    pub fn set_band(&mut self, gap: Option<u8>) {
        self.band = gap;
    }

    /// The level of the request the next [`form`](Self::form) would start
    /// with at `now_ns`.
    pub fn head_level(&mut self, now_ns: u64) -> Option<Priority> {
        self.waiting.peek_level(now_ns)
    }

    /// Puts back a request that a formed batch took and that never
    /// started (preemption recalled its batch, or its worker's ring had no
    /// room): its tenant's charge is taken back and it waits again with
    /// its old order, arrival included, so its aging goes on where it was.
    /// A grouped one's new key is reported through
    /// [`take_moved`](Self::take_moved).
    pub fn requeue(&mut self, item: T, meta: Meta) -> WaitKey {
        let group = item.group();
        let key = self.waiting.put_back(item, meta);
        if let Some(g) = group {
            self.moved.push((g, key));
        }
        key
    }

    /// Grouped requests that the last `form` calls put back, each with the
    /// key it waits under now. The caller drains this after forming.
    pub fn take_moved(&mut self) -> std::vec::Drain<'_, (u64, WaitKey)> {
        self.moved.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PlacementPolicy, PreferredBatchSizes, WorkerSpec};
    use crate::priority::Priority;

    struct Grouped(u64);

    /// A worker of `capacity`, speed 1.
    fn worker(capacity: Capacity) -> WorkerSpec {
        WorkerSpec {
            name: "w".into(),
            capacity,
            speed: 1.0,
            cost_per_hour: 0.0,
        }
    }

    /// A Normal request arriving at 0, the `seq`-th, of one token.
    fn normal(seq: u64) -> Meta {
        Meta {
            level: Priority::Normal,
            arrival: 0,
            deadline: u64::MAX,
            expire_at: u64::MAX,
            front: false,
            seq,
            tokens: 1,
            bytes: 0,
            tenant: 0,
        }
    }

    /// Batches of up to `max_batch_size`, no token or byte limit, no delay.
    fn limits(max_batch_size: usize) -> BatchingConfig {
        BatchingConfig {
            max_batch_size,
            max_batch_tokens: u64::MAX,
            max_batch_bytes: u64::MAX,
            max_queue_delay: Duration::ZERO,
            target_batch_time: None,
            preferred_batch_sizes: PreferredBatchSizes::NONE,
            delay: crate::config::BatchDelay::Fixed,
        }
    }

    /// A planner over `workers` workers placing least loaded first.
    fn least_loaded<T: Plannable>(workers: usize, limits: BatchingConfig) -> Planner<T> {
        let placer = Placer::new(PlacementPolicy::LeastLoaded, Duration::ZERO, 4, 32);
        Planner::new(workers, Duration::from_secs(1), limits, placer)
    }

    impl Plannable for Grouped {
        fn cost(&self) -> Capacity {
            Capacity {
                slots: 1,
                tokens: 1,
                bytes: 0,
            }
        }
        fn group(&self) -> Option<u64> {
            Some(self.0)
        }
    }

    /// A grouped request that a stalled pass sets aside comes back under a
    /// new wait key, and `take_moved` names it, so an index by group stays
    /// true (a lost key would stop deduplication under load).
    #[test]
    fn put_back_reports_the_new_key_of_grouped_requests() {
        let mut p = least_loaded(1, limits(4));
        let spec = worker(Capacity {
            slots: 1,
            tokens: 16,
            bytes: u64::MAX,
        });
        let workers = [Candidate {
            index: 0,
            spec: &spec,
            up: true,
        }];
        p.waiting.insert(Grouped(1), normal(1));
        let old = p.waiting.insert(Grouped(2), normal(2));
        let mut abandoned = Vec::new();
        // The only slot goes to group 1; group 2 is set aside and put back.
        assert!(matches!(
            p.form(0, &workers, &mut abandoned, 1),
            Plan::Batch { .. }
        ));
        assert!(p.take_moved().next().is_none(), "nothing set aside yet");
        assert!(matches!(
            p.form(0, &workers, &mut abandoned, 1),
            Plan::Stalled { .. }
        ));
        let moved: Vec<_> = p.take_moved().collect();
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].0, 2);
        assert!(p.waiting.remove(old).is_none(), "the old key is stale");
        let (item, m) = p.waiting.remove(moved[0].1).expect("the new key finds it");
        assert_eq!((item.0, m.seq), (2, 2));
    }

    /// A request of one slot and one token.
    #[derive(Debug)]
    struct One;

    impl Plannable for One {
        fn cost(&self) -> Capacity {
            Capacity {
                slots: 1,
                tokens: 1,
                bytes: 0,
            }
        }
    }

    /// A batch limit of any size is a config value, not an allocation:
    /// the batch's vector holds what waits (a limit of 10^12 once aborted
    /// the process asking for 224 TB).
    #[test]
    fn a_huge_batch_limit_allocates_only_what_waits() {
        let mut p: Planner<One> = least_loaded(1, limits(usize::MAX));
        let spec = worker(Capacity {
            slots: u32::MAX,
            tokens: u64::MAX,
            bytes: u64::MAX,
        });
        let workers = [Candidate {
            index: 0,
            spec: &spec,
            up: true,
        }];
        for seq in 0..3 {
            p.waiting.insert(One, normal(seq));
        }
        let mut abandoned = Vec::new();
        match p.form(0, &workers, &mut abandoned, usize::MAX) {
            Plan::Batch { formed, .. } => {
                assert_eq!(formed.items.len(), 3);
                assert!(formed.items.capacity() < 16, "{}", formed.items.capacity());
            }
            Plan::Stalled { .. } | Plan::Held | Plan::Empty => panic!("expected a batch"),
        }
    }

    /// A worker that holds two batches is not cut a fragment from the room
    /// it has left: the batch goes to a worker that can take a full one
    /// (here the slower, though urgent work prefers the fastest), or, with
    /// none, nothing launches and it is no shortfall. Once one of its
    /// batches finishes it is offered again, and a worker holding one batch
    /// takes a second whatever its room.
    #[test]
    fn a_worker_holding_two_batches_is_not_cut_a_fragment() {
        let placer = Placer::new(PlacementPolicy::Priority, Duration::ZERO, 4, 32);
        let mut p: Planner<One> = Planner::new(2, Duration::from_secs(1), limits(4), placer);
        let capacity = Capacity {
            slots: 8,
            tokens: u64::MAX,
            bytes: u64::MAX,
        };
        let fast = WorkerSpec {
            speed: 2.0,
            ..worker(capacity)
        };
        let slow = worker(capacity);
        let both = [
            Candidate {
                index: 0,
                spec: &fast,
                up: true,
            },
            Candidate {
                index: 1,
                spec: &slow,
                up: true,
            },
        ];
        let slots = |slots| Capacity {
            slots,
            tokens: u64::from(slots),
            bytes: 0,
        };
        // The fast worker runs a batch of 4 with one of 1 queued: room 3.
        assert!(p.ledger.reserve(0, &capacity, &slots(5)));
        p.batches[0] = 2;
        for seq in 0..10 {
            let high = Meta {
                level: Priority::High,
                ..normal(seq)
            };
            p.waiting.insert(One, high);
        }
        let mut abandoned = Vec::new();
        match p.form(0, &both, &mut abandoned, 4) {
            Plan::Batch { formed, shortfall } => {
                assert_eq!(formed.worker, 1, "not a fragment of 3 on the fast worker");
                assert_eq!(formed.items.len(), 4);
                assert!(shortfall.is_none());
            }
            other => panic!("expected a batch on the slow worker, got {other:?}"),
        }
        assert_eq!(p.batches, [2, 1]);
        // Only the fast worker offered: held, nothing reserved, nothing lost.
        assert!(matches!(
            p.form(0, &both[..1], &mut abandoned, 4),
            Plan::Held
        ));
        assert_eq!((p.ledger().reserved(0), p.len()), (slots(5), 6));
        // Its running batch finished: one left, so it takes a second.
        p.release(0, &slots(4)).expect("reserved above");
        match p.form(0, &both[..1], &mut abandoned, 4) {
            Plan::Batch { formed, .. } => {
                assert_eq!((formed.worker, formed.items.len()), (0, 4));
            }
            other => panic!("expected a batch on the fast worker, got {other:?}"),
        }
        assert!(matches!(
            p.form(0, &both[..1], &mut abandoned, 4),
            Plan::Held
        ));
        // A worker of 6 slots running one batch of 3 (room 3, under a full
        // batch of 4) still takes a second behind it.
        let six = worker(Capacity {
            slots: 6,
            ..capacity
        });
        let small = [Candidate {
            index: 1,
            spec: &six,
            up: true,
        }];
        p.release(1, &slots(4)).expect("the slow worker's batch");
        assert!(p.ledger.reserve(1, &six.capacity, &slots(3)));
        p.batches[1] = 1;
        match p.form(0, &small, &mut abandoned, 4) {
            Plan::Batch { formed, .. } => assert_eq!(formed.items.len(), 2),
            other => panic!("expected a second batch behind the first, got {other:?}"),
        }
        assert!(abandoned.is_empty());
    }

    /// AIMD lowers the limit to half the slow batch's size, never raises
    /// it on a slow batch, never goes below 1, and counts only real
    /// decreases; a batch within the target adds one up to the maximum.
    #[test]
    fn a_slow_batch_lowers_the_limit_to_half_its_size() {
        let mut l = limits(64);
        l.target_batch_time = Some(Duration::from_millis(8));
        let mut p = least_loaded::<One>(1, l);
        let (slow, quick) = (Duration::from_millis(9), Duration::from_millis(8));
        p.observe_batch_time(slow, 20);
        assert_eq!((p.batch_limit(), p.limit_decreases()), (10, 1));
        p.observe_batch_time(slow, 64);
        assert_eq!(
            (p.batch_limit(), p.limit_decreases()),
            (10, 1),
            "stale: no raise"
        );
        p.observe_batch_time(slow, 1);
        assert_eq!((p.batch_limit(), p.limit_decreases()), (1, 2));
        p.observe_batch_time(slow, 1);
        assert_eq!((p.batch_limit(), p.limit_decreases()), (1, 2), "at least 1");
        for _ in 0..100 {
            p.observe_batch_time(quick, 1);
        }
        assert_eq!(p.batch_limit(), 64);
    }

    /// The collector offers only the workers it still holds, in any
    /// order: a batch goes to the picked candidate's fleet index, with
    /// that candidate's capacity (not the spec at the same position).
    #[test]
    fn candidates_may_be_a_subset_of_the_fleet_in_any_order() {
        // Five workers ever; 0, 1 and 3 are gone.
        let mut p = least_loaded::<Grouped>(5, limits(8));
        let roomy = |slots| {
            worker(Capacity {
                slots,
                tokens: u64::MAX,
                bytes: u64::MAX,
            })
        };
        let (three, one) = (roomy(3), roomy(1));
        let workers = [
            Candidate {
                index: 4,
                spec: &three,
                up: true,
            },
            Candidate {
                index: 2,
                spec: &one,
                up: true,
            },
        ];
        for seq in 0..5 {
            p.insert(Grouped(100 + seq), normal(seq));
        }
        let mut abandoned = Vec::new();
        let Plan::Batch { formed, .. } = p.form(0, &workers, &mut abandoned, 8) else {
            panic!("a batch forms on worker 4");
        };
        assert_eq!((formed.worker, formed.items.len()), (4, 3));
        assert_eq!(p.ledger().reserved(4).slots, 3);
        let Plan::Batch { formed, .. } = p.form(0, &workers, &mut abandoned, 8) else {
            panic!("a batch forms on worker 2");
        };
        assert_eq!((formed.worker, formed.items.len()), (2, 1));
        assert_eq!(p.ledger().reserved(2).slots, 1);
        for gone in [0, 1, 3] {
            assert_eq!(p.ledger().reserved(gone).slots, 0);
        }
        assert!(matches!(
            p.form(0, &workers, &mut abandoned, 8),
            Plan::Stalled { .. }
        ));
    }

    /// A request of `tokens` tokens and `bytes` bytes.
    struct Costs(u64, u64);

    impl Plannable for Costs {
        fn cost(&self) -> Capacity {
            Capacity {
                slots: 1,
                tokens: self.0,
                bytes: self.1,
            }
        }
    }

    /// Full by count, by tokens, by bytes, or by the largest worker; and
    /// the sums follow requests out of the waiting set.
    #[test]
    fn a_batch_is_full_by_any_limit() {
        let mut p = least_loaded::<Costs>(
            1,
            BatchingConfig {
                max_batch_tokens: 100,
                max_batch_bytes: 1000,
                ..limits(8)
            },
        );
        // Its cost (1 token) is overridden by `insert` from the item's.
        let roomy = Capacity {
            slots: 64,
            tokens: u64::MAX,
            bytes: u64::MAX,
        };
        p.insert(Costs(60, 0), normal(1));
        assert!(!p.is_full(Some(roomy)) && !p.is_full(None));
        // A worker of one slot is full with one request.
        let one_slot = Capacity { slots: 1, ..roomy };
        assert!(p.is_full(Some(one_slot)));
        // A worker holding 50 tokens is full with 60 waiting.
        let small = Capacity {
            tokens: 50,
            ..roomy
        };
        assert!(p.is_full(Some(small)));
        // 120 tokens reach max_batch_tokens (100).
        p.insert(Costs(60, 0), normal(2));
        assert!(p.is_full(Some(roomy)) && p.is_full(None));
        let mut abandoned = Vec::new();
        let spec = worker(roomy);
        let workers = [Candidate {
            index: 0,
            spec: &spec,
            up: true,
        }];
        // Forming takes one (two would pass 100 tokens); 60 remain.
        let Plan::Batch { formed, .. } = p.form(0, &workers, &mut abandoned, 8) else {
            panic!("a batch forms");
        };
        assert_eq!(formed.items.len(), 1);
        assert_eq!(p.waiting.tokens(), 60);
        assert!(!p.is_full(Some(roomy)));
        // Bytes: 600 + 600 reach max_batch_bytes (1000).
        p.insert(Costs(1, 600), normal(3));
        assert!(!p.is_full(Some(roomy)));
        p.insert(Costs(1, 600), normal(4));
        assert!(p.is_full(Some(roomy)));
        // Count: eight requests of nothing much.
        let mut q = least_loaded::<Costs>(1, limits(8));
        for seq in 0..7 {
            q.insert(Costs(1, 0), normal(seq));
        }
        assert!(!q.is_full(Some(roomy)));
        q.insert(Costs(1, 0), normal(7));
        assert!(q.is_full(Some(roomy)));
        assert_eq!(q.waiting.drain_all().len(), 8);
        assert_eq!((q.waiting.tokens(), q.waiting.bytes()), (0, 0));
    }

    /// Nothing fills on a sum of zero: requests that cost no bytes (or no
    /// tokens) never fill a worker that holds none of them, else every
    /// batch would launch at its first request as "full".
    #[test]
    fn a_sum_of_zero_fills_no_worker_that_holds_none() {
        let mut p = least_loaded::<Costs>(1, limits(8));
        p.insert(Costs(0, 0), normal(1));
        let holds_nothing = Capacity {
            slots: 64,
            tokens: 0,
            bytes: 0,
        };
        assert!(!p.is_full(Some(holds_nothing)));
    }

    /// The preferred sizes a batch is cut to are those the waiting
    /// requests (and the limit) allow: the largest not above either.
    #[test]
    fn a_batch_is_cut_to_the_largest_preferred_size_that_waits() {
        assert_eq!(batch_size_now(5, 16, false, &[4, 8]), Some(4));
        assert_eq!(batch_size_now(8, 16, false, &[4, 8]), Some(8));
        assert_eq!(batch_size_now(3, 16, false, &[4, 8]), None);
        assert_eq!(
            batch_size_now(12, 6, false, &[4, 8]),
            Some(6),
            "the limit wins"
        );
        assert_eq!(
            batch_size_now(3, 16, true, &[4, 8]),
            Some(16),
            "a forced launch"
        );
        assert_eq!(batch_size_now(0, 16, true, &[]), None);
    }

    /// A worker holding fewer than two batches always takes one; with two
    /// it takes a third only with room for a whole batch, and a resource
    /// with no limit (on the worker or the batch) never stops it.
    #[test]
    fn a_worker_takes_a_batch_while_it_holds_fewer_than_two() {
        let cap = Capacity {
            slots: 8,
            tokens: 100,
            bytes: u64::MAX,
        };
        let full = Capacity {
            slots: 8,
            tokens: 100,
            bytes: 0,
        };
        let lim = BatchingConfig {
            max_batch_tokens: 50,
            ..limits(4)
        };
        assert!(takes_batch(0, &full, &cap, 4, &lim), "none held: always");
        assert!(takes_batch(1, &full, &cap, 4, &lim), "one held: always");
        assert!(!takes_batch(2, &full, &cap, 4, &lim), "two held, no room");
        let unbounded = Capacity {
            slots: u32::MAX,
            tokens: u64::MAX,
            bytes: u64::MAX,
        };
        let slots_only = Capacity {
            slots: 0,
            ..unbounded
        };
        assert!(takes_batch(2, &slots_only, &unbounded, 4, &limits(4)));
        let no_token_limit = BatchingConfig {
            max_batch_tokens: u64::MAX,
            ..limits(4)
        };
        let tokens_full = Capacity {
            slots: 0,
            tokens: 100,
            bytes: 0,
        };
        assert!(takes_batch(2, &tokens_full, &cap, 4, &no_token_limit));
    }

    /// A request type that keeps the default `group` belongs to none: a
    /// pass that sets it aside reports no moved key.
    #[test]
    fn an_ungrouped_request_set_aside_reports_no_move() {
        let mut p = least_loaded::<One>(1, limits(4));
        let spec = worker(Capacity {
            slots: 1,
            tokens: 16,
            bytes: u64::MAX,
        });
        let workers = [Candidate {
            index: 0,
            spec: &spec,
            up: true,
        }];
        assert_eq!(One.group(), None);
        p.insert(One, normal(1));
        p.insert(One, normal(2));
        let mut abandoned = Vec::new();
        assert!(matches!(
            p.form(0, &workers, &mut abandoned, 1),
            Plan::Batch { .. }
        ));
        let _ = p.form(0, &workers, &mut abandoned, 1);
        assert_eq!(p.take_moved().count(), 0);
        assert_eq!(p.len(), 1);
    }

    /// A reload's ordering and limits reach the planner: `fifo` takes a
    /// Background request that arrived first ahead of a Critical one, and
    /// a new batch limit is the limit.
    #[test]
    fn a_reloaded_ordering_and_limit_apply() {
        let mut p = least_loaded::<One>(1, limits(4));
        p.set_ordering(crate::config::OrderingPolicy::Fifo);
        let key = p.insert(
            One,
            Meta {
                level: Priority::Background,
                ..normal(1)
            },
        );
        p.insert(
            One,
            Meta {
                level: Priority::Critical,
                arrival: 1,
                ..normal(2)
            },
        );
        let first = p.waiting.pop(2).map(|(_, m, _)| m.seq);
        assert_eq!(first, Some(1), "fifo: the first arrival");
        assert!(p.remove(key).is_none(), "taken already");
        let second = p.insert(One, normal(3));
        assert!(
            p.remove(second).is_some(),
            "a waiting request is removed by its key"
        );
        p.set_limits(limits(2), Duration::from_secs(1));
        assert_eq!(p.batch_limit(), 2);
    }

    /// A formed batch reserves exactly what its requests cost, counts the
    /// aged ones among them, and an empty planner forms nothing (not
    /// "held"); a request past its expiring deadline is taken out by it.
    #[test]
    fn a_formed_batch_reserves_its_requests_and_counts_the_aged() {
        let mut p = least_loaded::<Costs>(1, limits(8));
        let spec = worker(Capacity {
            slots: 64,
            tokens: 1_000,
            bytes: 1_000,
        });
        let workers = [Candidate {
            index: 0,
            spec: &spec,
            up: true,
        }];
        let mut abandoned = Vec::new();
        assert!(p.is_empty());
        assert!(matches!(
            p.form(0, &workers, &mut abandoned, 8),
            Plan::Empty
        ));
        for (seq, (tokens, bytes)) in [(3, 5), (4, 6), (5, 7)].into_iter().enumerate() {
            p.insert(Costs(tokens, bytes), normal(seq as u64));
        }
        assert!(!p.is_empty());
        // Two seconds on, past `max_wait` (1 s): all three are aged.
        let Plan::Batch { formed, .. } = p.form(2_000_000_000, &workers, &mut abandoned, 8) else {
            panic!("a batch forms");
        };
        assert_eq!(formed.items.len(), 3);
        assert_eq!(formed.aged, 3);
        assert_eq!(
            formed.reserved,
            Capacity {
                slots: 3,
                tokens: 12,
                bytes: 18,
            }
        );
        p.release(formed.worker, &formed.reserved)
            .expect("exactly what was reserved");
        p.insert(
            Costs(1, 0),
            Meta {
                deadline: 10,
                expire_at: 10,
                ..normal(9)
            },
        );
        assert!(p.pop_expired(5).is_none(), "not yet");
        assert_eq!(p.pop_expired(10).map(|(_, m)| m.seq), Some(9));
        assert!(p.is_empty());
    }

    /// A request with an id, for the property below.
    struct Req {
        id: u32,
        tokens: u64,
        bytes: u64,
    }

    impl Plannable for Req {
        fn cost(&self) -> Capacity {
            Capacity {
                slots: 1,
                tokens: self.tokens,
                bytes: self.bytes,
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// The priority invariant (DESIGN.md): a batch never defers a request
        /// for one of lower urgency that it could have placed instead. For
        /// every request X left waiting and every request Y in the batch
        /// that the rule ranks after X, the batch with X in Y's place breaks
        /// a limit (the batch's tokens or bytes, or the worker's room).
        /// Also: the batch keeps every limit, the ledger holds exactly the
        /// batch, nothing is lost, and a stalled pass found no request it
        /// could place among those it looked at.
        #[test]
        fn a_batch_never_defers_a_request_it_could_have_placed_for_a_less_urgent_one(
            reqs in proptest::collection::vec(
                (0..Priority::COUNT, 1u64..120, 0u64..300, proptest::option::weighted(0.3, 1u64..500),
                 proptest::bool::weighted(0.05), 0u64..400),
                1..60),
            max_batch_size in 1usize..24,
            batch_tokens in 120u64..600,
            batch_bytes in proptest::option::of(300u64..3000),
            slots in 1u32..32,
            cap_tokens in 120u64..900,
            cap_bytes in proptest::option::of(300u64..5000),
            held in (0u32..8, 0u64..200, 0u64..300),
            held_batches in 0u32..4,
            policy in 0usize..3,
        ) {
            let ms = 1_000_000;
            let now = 400 * ms;
            let limits = BatchingConfig {
                max_batch_tokens: batch_tokens,
                max_batch_bytes: batch_bytes.unwrap_or(u64::MAX),
                ..limits(max_batch_size)
            };
            let cap = Capacity { slots, tokens: cap_tokens, bytes: cap_bytes.unwrap_or(u64::MAX) };
            let policy = [
                crate::config::OrderingPolicy::Aging,
                crate::config::OrderingPolicy::StrictPriority,
                crate::config::OrderingPolicy::Fifo,
            ][policy];
            let mut p = least_loaded::<Req>(1, limits);
            let mut rank = least_loaded::<Req>(1, limits);
            p.set_ordering(policy);
            rank.set_ordering(policy);
            let held = Capacity { slots: held.0, tokens: held.1, bytes: held.2 };
            let _ = p.ledger.reserve(0, &cap, &held);
            let held = p.ledger().reserved(0);
            p.batches[0] = held_batches;
            let mut cost = std::collections::HashMap::new();
            for (i, &(level, tokens, bytes, deadline, front, age)) in reqs.iter().enumerate() {
                let id = i as u32;
                let meta = Meta {
                    level: Priority::ALL[level],
                    arrival: now - age * ms,
                    deadline: deadline.map_or(u64::MAX, |d| now + d * ms),
                    expire_at: u64::MAX,
                    front,
                    seq: i as u64,
                    tokens: 0,
                    bytes: 0,
                    tenant: 0,
                };
                p.insert(Req { id, tokens, bytes }, meta);
                rank.insert(Req { id, tokens, bytes }, meta);
                cost.insert(id, (tokens, bytes));
            }
            let order: Vec<u32> = std::iter::from_fn(|| rank.waiting.pop(now).map(|(r, _, _)| r.id)).collect();
            let at: std::collections::HashMap<u32, usize> = order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
            let spec = worker(cap);
            let workers = [Candidate { index: 0, spec: &spec, up: true }];
            let mut abandoned = Vec::new();
            let free_tokens = cap.tokens.saturating_sub(held.tokens);
            let free_bytes = cap.bytes.saturating_sub(held.bytes);
            let free_slots = cap.slots.saturating_sub(held.slots);
            // Whether the worker is offered a batch at all (no fragments).
            let open = takes_batch(held_batches, &held, &cap, max_batch_size, &limits);
            let head_fits = |x: &u32| {
                let (t, b) = cost[x];
                free_slots > 0 && t <= free_tokens && b <= free_bytes
            };
            match p.form(now, &workers, &mut abandoned, usize::MAX) {
                Plan::Batch { formed, .. } => {
                    proptest::prop_assert!(open, "a fragment: the worker held two batches and had room for less than a full one");
                    proptest::prop_assert_eq!(p.batches[0], held_batches + 1);
                    let ids: Vec<u32> = formed.items.iter().map(|(r, _)| r.id).collect();
                    let tokens: u64 = ids.iter().map(|id| cost[id].0).sum();
                    let bytes: u64 = ids.iter().map(|id| cost[id].1).sum();
                    proptest::prop_assert!(ids.len() <= max_batch_size && ids.len() as u32 <= free_slots);
                    proptest::prop_assert!(tokens <= free_tokens && bytes <= free_bytes);
                    // The head alone may pass the batch's own limits only if
                    // nothing could ever (it is refused at submit then);
                    // here every request fits them.
                    if ids.len() > 1 {
                        proptest::prop_assert!(tokens <= batch_tokens);
                        proptest::prop_assert!(bytes <= batch_bytes.unwrap_or(u64::MAX));
                    }
                    let reserved = p.ledger().reserved(0);
                    proptest::prop_assert_eq!(
                        (reserved.slots, reserved.tokens, reserved.bytes),
                        (held.slots + ids.len() as u32, held.tokens + tokens, held.bytes + bytes)
                    );
                    for &x in order.iter().filter(|x| !ids.contains(x)) {
                        for &y in ids.iter().filter(|&&y| at[&y] > at[&x]) {
                            let t = tokens - cost[&y].0 + cost[&x].0;
                            let b = bytes - cost[&y].1 + cost[&x].1;
                            let breaks = t > free_tokens
                                || b > free_bytes
                                || (ids.len() > 1 && (t > batch_tokens || b > batch_bytes.unwrap_or(u64::MAX)));
                            proptest::prop_assert!(
                                breaks,
                                "request {} (rank {}) was left for {} (rank {}) though it fits in its place",
                                x, at[&x], y, at[&y]
                            );
                        }
                    }
                    proptest::prop_assert_eq!(p.len() + ids.len(), reqs.len());
                }
                Plan::Stalled { .. } if !open => {
                    // Not offered: only the head was looked at, and it fits nowhere.
                    proptest::prop_assert!(!head_fits(&order[0]), "a shortfall though the head fits");
                    proptest::prop_assert_eq!(p.len(), reqs.len());
                }
                Plan::Held => {
                    proptest::prop_assert!(!open && head_fits(&order[0]));
                    proptest::prop_assert_eq!(p.len(), reqs.len());
                }
                Plan::Stalled { .. } => {
                    for x in order.iter().take(MAX_DEFERRED) {
                        let (t, b) = cost[x];
                        proptest::prop_assert!(
                            free_slots == 0 || t > free_tokens || b > free_bytes,
                            "stalled though request {} fits", x
                        );
                    }
                    proptest::prop_assert_eq!(p.len(), reqs.len());
                }
                Plan::Empty => proptest::prop_assert!(reqs.is_empty()),
            }
            proptest::prop_assert!(abandoned.is_empty());
        }
    }
}
