//! The collector's ordered set of waiting requests (single-owner, no atomics).
//!
//! # The ordering rule
//!
//! Times are nanoseconds since the runtime started. A waiting request is
//! picked by these rules, in order:
//!
//! 1. **Aged first.** A request that has waited `max_wait` or longer outranks
//!    every request that has not, whatever the priorities; aged requests go
//!    in arrival order (FIFO).
//! 2. **Effective level.** Otherwise each level offers its head (below), and
//!    the head with the lowest *effective level* wins, where
//!    `effective = level − ⌊max(0, wait − max_wait / 2) / aging_step⌋`
//!    (never below 0) and `aging_step = max_wait / 10`. So a request
//!    competes at its own level for the first half of `max_wait`, then
//!    gains one level per tenth of it: Normal competes as Critical from
//!    0.7 × `max_wait`, Background from 0.9 ×. Ties go to the more urgent
//!    original level.
//!
//!    Why half: aging from the first moment (`⌊wait / (max_wait / 5)⌋`)
//!    lets a Normal request 0.4 × `max_wait` old outrank every fresh High
//!    one, and at 1.2× load High's p99 then misses its 100 ms objective.
//!    Starting at half of `max_wait` leaves the bound (rule 1) as it is and
//!    keeps High well inside its objective (BENCHMARKS.md, `convoy
//!    compare`).
//! 3. **Within a level**: with `ordering.fairness = "vtc"` (the default),
//!    the tenant that has received the least weighted service at the level
//!    goes first (see `plan/fair.rs`); then, among that tenant's requests
//!    (or all of the level's, with fairness `none`): `Front` insertions
//!    first, then earliest deadline (requests without one last), then
//!    arrival order. Rule 2 ages the head this rule picks.
//!
//! Two baseline rules can replace it (`ordering.policy`), for comparison:
//! `strict_priority` applies rule 3 within the most urgent non-empty level
//! and never ages (lower levels can starve), and `fifo` takes requests in
//! arrival order whatever their level.
//!
//! # The starvation bound
//!
//! By rule 1, once a request has waited `max_wait`, only requests that
//! arrived before it can still go ahead of it. With capacity available (a
//! worker frees up at least once per batch interval and arrivals do not
//! outpace service), every request therefore starts within `max_wait` plus
//! one batch interval, whatever the stream of more urgent work.
//! `tests::starvation_bound_*` check this against a saturating stream of
//! Critical and High work.
//!
//! Tenant fairness does not loosen it: fairness only chooses among the
//! requests of one level (rule 3), while rule 1 sits above every level and
//! every tenant. A request of the most served tenant still starts within
//! `max_wait` plus one batch interval; fairness decides only who goes
//! first before that (`tests::starvation_bound_holds_under_fairness`).
//!
//! When arrivals do outpace service for long, rule 1 turns against the
//! urgent levels (every new Critical request queues behind the aged
//! backlog). With `ordering.shed` on (`Config::shed`; off by default) the
//! runtime then sheds the least urgent levels at submit, so what it
//! accepts keeps this bound.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::fair::{Fair, LevelKey};
use super::run_heap::RunHeap;
use crate::clock::nanos;
use crate::config::{Fairness, OrderingPolicy};
use crate::priority::Priority;

/// What ordering needs to know about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Its priority level.
    pub level: Priority,
    /// Nanoseconds since the runtime's epoch.
    pub arrival: u64,
    /// Nanoseconds since the epoch; `u64::MAX` for none.
    pub deadline: u64,
    /// When to expire (fail) it, if still waiting; `u64::MAX` for never.
    /// Its deadline when its level's deadline action is `Reject`. Kept apart
    /// from `deadline` because a deduplicated group orders by its most
    /// urgent member's deadline but expires members one by one.
    pub expire_at: u64,
    /// Inserted with `InsertPolicy::Front`.
    pub front: bool,
    /// Arrival sequence, the final tie-breaker (unique per request).
    pub seq: u64,
    /// Its cost in tokens, summed over the waiting set so the collector
    /// can tell a batch is full by tokens before it forms one.
    pub tokens: u64,
    /// Its cost in bytes, summed likewise.
    pub bytes: u64,
    /// Its tenant's index (`Planner::tenant_index`); 0 for none.
    pub tenant: u32,
}

/// Names one waiting request, for as long as it waits: once it leaves
/// (picked, expired, removed), its key finds nothing, even after the slot is
/// reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitKey(Id);

/// A slot index plus a generation, so stale heap entries of a reused slot
/// are told apart from live ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Id {
    index: u32,
    gen: u32,
}

struct Slot<T> {
    gen: u32,
    entry: Option<(T, Meta)>,
}

/// Whether `id` names a request that still waits in `slots`.
fn live<T>(slots: &[Slot<T>], id: Id) -> bool {
    let slot = &slots[id.index as usize];
    slot.gen == id.gen && slot.entry.is_some()
}

/// The waiting set. Every index is lazy: an entry taken through one index
/// stays in the others until it reaches their front and is skipped, which
/// keeps each operation O(1) amortised for requests whose keys rise, and
/// O(log n) for the rest (see [`RunHeap`]).
pub(crate) struct Waiting<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    /// Rule 3's order per level, while `fair_on` is off (else empty).
    levels: [RunHeap<LevelKey, Id>; Priority::COUNT],
    /// Rule 3's order per level and tenant, while `fair_on` is on.
    fair: Fair<Id>,
    fairness: Fairness,
    /// The tenant order is in use: fairness is `vtc` and a request has
    /// named a tenant. Until one does, every request is the default
    /// tenant's, VTC orders exactly as the plain level order, and the set
    /// keeps that (cheaper) order; the first named tenant switches it.
    fair_on: bool,
    /// Arrival order (arrival time, then sequence), for rule 1.
    fifo: RunHeap<(u64, u64), Id>,
    /// Deadlines of requests that expire, earliest first.
    deadlines: RunHeap<u64, Id>,
    len: usize,
    /// Sums of `Meta::tokens` and `Meta::bytes` over the waiting requests:
    /// u128, so even requests of `u64::MAX` bytes cannot overflow them.
    tokens: u128,
    bytes: u128,
    max_wait: u64,
    aging_step: u64,
    policy: OrderingPolicy,
}

impl<T> Waiting<T> {
    pub fn new(max_wait: Duration) -> Self {
        let max_wait = nanos(max_wait).max(1);
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            levels: std::array::from_fn(|_| RunHeap::new()),
            fair: Fair::new(),
            fairness: Fairness::Vtc,
            fair_on: false,
            fifo: RunHeap::new(),
            deadlines: RunHeap::new(),
            len: 0,
            tokens: 0,
            bytes: 0,
            max_wait,
            aging_step: (max_wait / (2 * Priority::COUNT as u64)).max(1),
            policy: OrderingPolicy::Aging,
        }
    }

    /// Changes the ordering rule for every request, waiting or to come.
    pub fn set_policy(&mut self, policy: OrderingPolicy) {
        self.policy = policy;
    }

    /// Changes how a level's requests are ordered between tenants, for
    /// every request, waiting or to come (the level indexes are rebuilt:
    /// O(waiting), once per reload that changes it).
    pub fn set_fairness(&mut self, fairness: Fairness) {
        self.fairness = fairness;
        self.reindex();
    }

    /// Switches the level order to the tenant order or back when
    /// `fair_on` should change (see there).
    fn reindex(&mut self) {
        let on = self.fairness == Fairness::Vtc && self.fair.tenants() > 1;
        if on == self.fair_on {
            return;
        }
        self.fair_on = on;
        self.levels.iter_mut().for_each(RunHeap::clear);
        self.fair.clear_queues();
        for index in 0..self.slots.len() {
            let slot = &self.slots[index];
            if let Some((_, meta)) = &slot.entry {
                let id = Id {
                    index: u32::try_from(index).expect("slot indices are u32 by construction"),
                    gen: slot.gen,
                };
                let meta = *meta;
                self.index_level(&meta, id, false);
            }
        }
    }

    /// New tenant weights (by id; others weigh 1).
    pub fn set_weights(&mut self, weights: HashMap<Arc<str>, f64>) {
        self.fair.set_weights(weights);
    }

    /// The index a request of tenant `name` (`None`: no tenant) carries in
    /// [`Meta::tenant`].
    pub fn tenant_index(&mut self, name: Option<&Arc<str>>) -> u32 {
        let t = self.fair.index_of(name);
        if t != super::fair::DEFAULT && !self.fair_on {
            self.reindex();
        }
        t
    }

    /// See `Planner::correct_charge`.
    pub fn correct_charge(
        &mut self,
        name: Option<&Arc<str>>,
        level: Priority,
        charged: u32,
        real: u32,
    ) {
        if self.fair_on {
            self.fair
                .correct(name, level.index(), u64::from(charged), u64::from(real));
        }
    }

    /// Tenants the fairness rule holds state for (the default one
    /// included): those with requests waiting or recent debt.
    pub fn tenants(&self) -> usize {
        self.fair.tenants()
    }

    /// Puts `id` in its level's order; `lift`: as an arrival (see
    /// `Fair::insert`).
    #[inline]
    fn index_level(&mut self, meta: &Meta, id: Id, lift: bool) {
        let key = (!meta.front, meta.deadline, meta.seq);
        if self.fair_on {
            self.fair
                .insert(meta.tenant, meta.level.index(), key, id, lift);
        } else {
            self.levels[meta.level.index()].push(key, id);
        }
    }

    /// Changes `max_wait` (and so the aging step) for every request,
    /// waiting or to come: ages are computed when a request is picked.
    pub fn set_max_wait(&mut self, max_wait: Duration) {
        let fresh = Self::new(max_wait);
        self.max_wait = fresh.max_wait;
        self.aging_step = fresh.aging_step;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokens of every waiting request together.
    pub fn tokens(&self) -> u128 {
        self.tokens
    }

    /// Bytes of every waiting request together.
    pub fn bytes(&self) -> u128 {
        self.bytes
    }

    /// Adds a request; the key finds it while it waits.
    pub fn insert(&mut self, item: T, meta: Meta) -> WaitKey {
        self.add(item, meta, true)
    }

    /// Puts back a request [`pop`](Self::pop) took but did not launch:
    /// its tenant's charge is taken back, and it waits again with its old
    /// order.
    pub fn put_back(&mut self, item: T, meta: Meta) -> WaitKey {
        self.refund(&meta);
        self.add(item, meta, false)
    }

    /// Takes back the charge of a request [`pop`](Self::pop) took and
    /// that was not served (its caller had gone).
    #[inline]
    pub fn refund(&mut self, meta: &Meta) {
        if self.fair_on {
            self.fair
                .refund(meta.tenant, meta.level.index(), meta.tokens);
        }
    }

    #[inline]
    fn add(&mut self, item: T, meta: Meta, arrival: bool) -> WaitKey {
        let id = match self.free.pop() {
            Some(index) => {
                let slot = &mut self.slots[index as usize];
                slot.entry = Some((item, meta));
                Id {
                    index,
                    gen: slot.gen,
                }
            }
            None => {
                let index = u32::try_from(self.slots.len())
                    .expect("fewer than 2^32 waiting requests: the intake bound is far lower");
                self.slots.push(Slot {
                    gen: 0,
                    entry: Some((item, meta)),
                });
                Id { index, gen: 0 }
            }
        };
        self.index_level(&meta, id, arrival);
        self.fifo.push((meta.arrival, meta.seq), id);
        if meta.expire_at != u64::MAX {
            self.deadlines.push(meta.expire_at, id);
        }
        self.len += 1;
        self.tokens += u128::from(meta.tokens);
        self.bytes += u128::from(meta.bytes);
        WaitKey(id)
    }

    /// Takes the request `key` names, if it still waits. Its index entries
    /// go stale and are dropped lazily, as after any take.
    pub fn remove(&mut self, key: WaitKey) -> Option<(T, Meta)> {
        self.live(key.0).then(|| self.take(key.0))
    }

    fn live(&self, id: Id) -> bool {
        live(&self.slots, id)
    }

    fn take(&mut self, id: Id) -> (T, Meta) {
        let slot = &mut self.slots[id.index as usize];
        let (item, meta) = slot
            .entry
            .take()
            .expect("take is only called on an id checked live");
        slot.gen = slot.gen.wrapping_add(1);
        self.free.push(id.index);
        if self.fair_on {
            self.fair.taken(meta.tenant, meta.level.index());
        }
        self.len -= 1;
        self.tokens -= u128::from(meta.tokens);
        self.bytes -= u128::from(meta.bytes);
        (item, meta)
    }

    fn meta(&self, id: Id) -> &Meta {
        &self.slots[id.index as usize]
            .entry
            .as_ref()
            .expect("meta is only read for live ids")
            .1
    }

    /// Drops stale entries from the front of every index, so each front is
    /// live (or the index is empty). (Fairness's tenant queues are
    /// cleaned as their heads are read.)
    fn clean(&mut self) {
        let slots = &self.slots;
        let live = |id| live(slots, id);
        self.fifo.clean(live);
        for level in &mut self.levels {
            level.clean(live);
        }
        self.deadlines.clean(live);
    }

    /// Level `l`'s head by rule 3 (after `clean`).
    #[inline]
    fn level_head(&mut self, l: usize) -> Option<Id> {
        if self.fair_on {
            let slots = &self.slots;
            self.fair.head(l, |id| live(slots, id))
        } else {
            self.levels[l].front().map(|(_, id)| id)
        }
    }

    /// The id the rule picks next at time `now`, and whether it was aged.
    fn pick(&mut self, now: u64) -> Option<(Id, bool)> {
        self.clean();
        match self.policy {
            OrderingPolicy::Fifo => return self.fifo.front().map(|(_, id)| (id, false)),
            OrderingPolicy::StrictPriority => {
                return (0..Priority::COUNT).find_map(|l| self.level_head(l).map(|id| (id, false)))
            }
            OrderingPolicy::Aging => {}
        }
        if let Some(((arrival, _), id)) = self.fifo.front() {
            if now.saturating_sub(arrival) >= self.max_wait {
                return Some((id, true));
            }
        }
        let mut best: Option<(u64, usize, Id)> = None;
        for l in 0..Priority::COUNT {
            let Some(id) = self.level_head(l) else {
                continue;
            };
            let wait = now.saturating_sub(self.meta(id).arrival);
            // Rule 2: no aging for the first half of `max_wait`.
            let aged_for = wait.saturating_sub(self.max_wait / 2);
            let effective = (l as u64).saturating_sub(aged_for / self.aging_step);
            if best.is_none_or(|(e, bl, _)| (effective, l) < (e, bl)) {
                best = Some((effective, l, id));
            }
        }
        best.map(|(_, _, id)| (id, false))
    }

    /// The level of the request [`pop`](Self::pop) would take at `now`,
    /// without taking it.
    pub fn peek_level(&mut self, now: u64) -> Option<Priority> {
        let (id, _) = self.pick(now)?;
        Some(self.meta(id).level)
    }

    /// Takes the most urgent request at `now`. The flag says it was taken by
    /// the aging rule (it had waited `max_wait`) and not by its level.
    pub fn pop(&mut self, now: u64) -> Option<(T, Meta, bool)> {
        let (id, aged) = self.pick(now)?;
        let (item, meta) = self.take(id);
        if self.fair_on {
            self.fair
                .charge(meta.tenant, meta.level.index(), meta.tokens);
        }
        Some((item, meta, aged))
    }

    /// Takes one request whose expiring deadline is at or before `now`.
    pub fn pop_expired(&mut self, now: u64) -> Option<(T, Meta)> {
        self.clean();
        let (deadline, _) = self.deadlines.front()?;
        if deadline > now {
            return None;
        }
        let (_, id) = self.deadlines.pop_front().expect("the front was just read");
        Some(self.take(id))
    }

    /// The earliest expiring deadline, so an idle collector knows how long
    /// it may sleep.
    pub fn next_deadline(&mut self) -> Option<u64> {
        self.clean();
        self.deadlines.front().map(|(d, _)| d)
    }

    /// Arrival time of the oldest waiting request.
    pub fn oldest_arrival(&mut self) -> Option<u64> {
        self.clean();
        self.fifo.front().map(|((a, _), _)| a)
    }

    /// Visits the waiting requests among the slots `from .. from + limit`
    /// and takes those `visit` returns `true` for, into `out`; returns where
    /// the next call should go on, or `None` once the last slot was looked
    /// at. A sweep in bounded steps: each call costs at most `limit` slot
    /// visits. `visit` may change a request it keeps (a dedup group sheds
    /// its cancelled members) but not its ordering, which stays as inserted.
    /// Index entries of what it takes go stale and are dropped lazily.
    pub fn take_where(
        &mut self,
        from: usize,
        limit: usize,
        mut visit: impl FnMut(&mut T) -> bool,
        out: &mut Vec<(T, Meta)>,
    ) -> Option<usize> {
        let end = from.saturating_add(limit).min(self.slots.len());
        for index in from..end {
            let slot = &mut self.slots[index];
            if slot.entry.as_mut().is_some_and(|(item, _)| visit(item)) {
                let id = Id {
                    index: u32::try_from(index).expect("slot indices are u32 by construction"),
                    gen: slot.gen,
                };
                out.push(self.take(id));
            }
        }
        (end < self.slots.len()).then_some(end)
    }

    /// Takes every request, in arrival order (for shutdown).
    pub fn drain_all(&mut self) -> Vec<(T, Meta)> {
        let mut out = Vec::with_capacity(self.len);
        while let Some((_, id)) = self.fifo.pop_front() {
            if self.live(id) {
                out.push(self.take(id));
            }
        }
        self.levels.iter_mut().for_each(RunHeap::clear);
        self.fair.clear_queues();
        self.deadlines.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Priority::*;

    const MS: u64 = 1_000_000;

    struct Gen(u64);
    impl Gen {
        fn meta(&mut self, level: Priority, arrival: u64) -> Meta {
            self.0 += 1;
            Meta {
                level,
                arrival,
                deadline: u64::MAX,
                expire_at: u64::MAX,
                front: false,
                seq: self.0,
                tokens: 1,
                bytes: 0,
                tenant: 0,
            }
        }
    }

    fn order(w: &mut Waiting<u32>, now: u64) -> Vec<u32> {
        std::iter::from_fn(|| w.pop(now).map(|(x, _, _)| x)).collect()
    }

    /// The count and the summed costs follow every way in and out: insert,
    /// pop, remove, and the expiry of a deadline. (The collector reads them
    /// to tell whether anything waits and whether a batch is full.)
    #[test]
    fn len_and_costs_follow_inserts_and_takes() {
        let mut g = Gen(0);
        let mut w = Waiting::new(Duration::from_secs(10));
        let keys: Vec<_> = (0..4)
            .map(|i| {
                let meta = Meta {
                    tokens: 10 + i,
                    bytes: 100,
                    expire_at: if i == 3 { 5 * MS } else { u64::MAX },
                    deadline: if i == 3 { 5 * MS } else { u64::MAX },
                    ..g.meta(Normal, i)
                };
                w.insert(i as u32, meta)
            })
            .collect();
        assert_eq!((w.len(), w.tokens(), w.bytes()), (4, 46, 400));
        assert_eq!(
            w.pop(0).map(|(x, _, _)| x),
            Some(3),
            "the nearest deadline first"
        );
        assert_eq!((w.len(), w.tokens(), w.bytes()), (3, 33, 300));
        assert!(w.remove(keys[1]).is_some());
        assert_eq!((w.len(), w.tokens(), w.bytes()), (2, 22, 200));
        assert!(w.remove(keys[1]).is_none(), "a key is taken once");
        assert_eq!(w.len(), 2);
        assert!(
            w.pop_expired(10 * MS).is_none(),
            "the one with a deadline left"
        );
        assert_eq!(order(&mut w, 0), [0, 2]);
        assert_eq!((w.len(), w.tokens(), w.bytes()), (0, 0, 0));
        assert!(w.is_empty());
    }

    /// A new `max_wait` (a reload) applies to requests already waiting:
    /// a Background request 200 ms old is aged past a fresh Critical one
    /// once `max_wait` drops to 100 ms, and is not under 10 s.
    #[test]
    fn a_new_max_wait_applies_to_requests_already_waiting() {
        let fill = || {
            let mut g = Gen(0);
            let mut w = Waiting::new(Duration::from_secs(10));
            w.insert(1, g.meta(Background, 0));
            w.insert(2, g.meta(Critical, 150 * MS));
            w
        };
        let mut kept = fill();
        assert_eq!(
            kept.pop(200 * MS).map(|(x, _, aged)| (x, aged)),
            Some((2, false))
        );
        let mut changed = fill();
        changed.set_max_wait(Duration::from_millis(100));
        assert_eq!(
            changed.pop(200 * MS).map(|(x, _, aged)| (x, aged)),
            Some((1, true))
        );
    }

    /// Draining for shutdown empties every index, not only the FIFO that
    /// the drain walks: stale entries left in the others would be kept
    /// (and walked past) for as long as the set lives.
    #[test]
    fn drain_all_leaves_no_index_behind() {
        let mut g = Gen(0);
        let mut w = Waiting::new(Duration::from_secs(10));
        for (i, level) in Priority::ALL.into_iter().enumerate() {
            let meta = Meta {
                deadline: 100 * MS,
                expire_at: 100 * MS,
                ..g.meta(level, i as u64)
            };
            w.insert(i as u32, meta);
        }
        assert_eq!(w.drain_all().len(), Priority::COUNT);
        assert!(w.levels.iter().all(RunHeap::is_empty) && w.fair.is_empty());
        assert!(w.fifo.is_empty() && w.deadlines.is_empty());
        assert!(w.is_empty());
    }

    #[test]
    fn levels_then_front_then_deadline_then_fifo() {
        let mut g = Gen(0);
        let mut w = Waiting::new(Duration::from_secs(10));
        w.insert(1, g.meta(Low, 0));
        w.insert(2, g.meta(Normal, 0));
        w.insert(3, g.meta(Normal, 0));
        w.insert(
            4,
            Meta {
                deadline: 50 * MS,
                ..g.meta(Normal, 0)
            },
        );
        w.insert(
            5,
            Meta {
                deadline: 20 * MS,
                ..g.meta(Normal, 0)
            },
        );
        w.insert(
            6,
            Meta {
                front: true,
                ..g.meta(Normal, 0)
            },
        );
        w.insert(7, g.meta(Critical, 0));
        assert_eq!(order(&mut w, 0), [7, 6, 5, 4, 2, 3, 1]);
        assert!(w.is_empty());
    }

    #[test]
    fn aging_lowers_the_effective_level_step_by_step() {
        let mut g = Gen(0);
        // max_wait 100 ms: no aging for 50 ms, then one level per 10 ms.
        let mut w = Waiting::new(Duration::from_millis(100));
        w.insert(1, g.meta(Background, 0));
        // At 59 ms the Background request has not aged a step: a fresh Low
        // wins.
        w.insert(2, g.meta(Low, 59 * MS));
        assert_eq!(w.pop(59 * MS).unwrap().0, 2);
        // At 69 ms it is effective level 3: a fresh Normal wins.
        w.insert(3, g.meta(Normal, 69 * MS));
        assert_eq!(w.pop(69 * MS).unwrap().0, 3);
        // At 70 ms it is effective level 2 and ties with a fresh Normal; ties
        // go to the more urgent original level, Normal.
        w.insert(4, g.meta(Normal, 70 * MS));
        assert_eq!(w.pop(70 * MS).unwrap().0, 4);
        // At 80 ms it is effective level 1 and beats a fresh Normal.
        w.insert(5, g.meta(Normal, 80 * MS));
        assert_eq!(w.pop(80 * MS).unwrap().0, 1);
    }

    #[test]
    fn aged_requests_outrank_everything_in_arrival_order() {
        let mut g = Gen(0);
        let mut w = Waiting::new(Duration::from_millis(100));
        w.insert(1, g.meta(Background, 0));
        w.insert(2, g.meta(Low, 10 * MS));
        w.insert(3, g.meta(Critical, 150 * MS));
        let (x, _, aged) = w.pop(150 * MS).unwrap();
        assert_eq!((x, aged), (1, true));
        let (x, _, aged) = w.pop(150 * MS).unwrap();
        assert_eq!((x, aged), (2, true));
        let (x, _, aged) = w.pop(150 * MS).unwrap();
        assert_eq!((x, aged), (3, false));
    }

    /// Saturating stream: every 1 ms a batch of 8 slots frees up, and 8 new
    /// Critical/High requests arrive (arrivals = service). Low and
    /// Background requests arrive now and then. Each must start within
    /// `max_wait` + one batch interval.
    fn starvation_run(max_wait_ms: u64, all_critical: bool) {
        starvation_run_with(max_wait_ms, all_critical, false);
    }

    /// A saturating stream of Critical and High work with a Low or
    /// Background request now and then. With `tenants`, fairness is on and
    /// the stream comes from three tenants, one of them sending most of
    /// it, the rare requests from a fourth; the bound then covers every
    /// request, the most served tenant's included.
    fn starvation_run_with(max_wait_ms: u64, all_critical: bool, tenants: bool) {
        let mut g = Gen(0);
        let mut w = Waiting::new(Duration::from_millis(max_wait_ms));
        let names: Vec<u32> = (0..4)
            .map(|i| w.tenant_index(Some(&Arc::from(format!("t{i}")))))
            .collect();
        if !tenants {
            w.set_fairness(Fairness::None);
        }
        let tenant = |k: u64| {
            if tenants {
                names[[0, 0, 0, 0, 0, 1, 1, 2][k as usize % 8]]
            } else {
                0
            }
        };
        let mut arrived = std::collections::HashMap::new();
        let mut worst_low = 0;
        let mut worst_any = 0;
        let mut next_id = 0u32;
        let interval = MS;
        for tick in 0..5_000u64 {
            let now = tick * interval;
            for k in 0..8 {
                let level = if all_critical || k % 2 == 0 {
                    Critical
                } else {
                    High
                };
                let meta = Meta {
                    tenant: tenant(k),
                    ..g.meta(level, now)
                };
                w.insert(next_id, meta);
                arrived.insert(next_id, (level, now));
                next_id += 1;
            }
            if tick % 37 == 0 {
                let level = if tick % 74 == 0 { Low } else { Background };
                let meta = Meta {
                    tenant: if tenants { names[3] } else { 0 },
                    ..g.meta(level, now)
                };
                w.insert(next_id, meta);
                arrived.insert(next_id, (level, now));
                next_id += 1;
            }
            for _ in 0..8 {
                if let Some((id, meta, _)) = w.pop(now) {
                    let (level, at) = arrived[&id];
                    assert_eq!(meta.level, level);
                    if level >= Low {
                        worst_low = worst_low.max(now - at);
                    }
                    worst_any = worst_any.max(now - at);
                }
            }
        }
        assert!(
            worst_low <= max_wait_ms * MS + interval,
            "a Low/Background request waited {} ms > max_wait {} ms + one interval",
            worst_low / MS,
            max_wait_ms
        );
        if tenants {
            assert!(
                worst_any <= max_wait_ms * MS + interval,
                "a request waited {} ms > max_wait {} ms + one interval",
                worst_any / MS,
                max_wait_ms
            );
        }
        assert!(worst_low > 0, "the stream really did saturate");
    }

    #[test]
    fn starvation_bound_holds_under_fairness() {
        starvation_run_with(20, false, true);
        starvation_run_with(50, true, true);
    }

    /// Switching fairness on and off with requests waiting (a reload)
    /// rebuilds the level order: nothing is lost or taken twice, and the
    /// order after each switch is the new rule's.
    #[test]
    fn switching_fairness_keeps_every_waiting_request() {
        let mut g = Gen(0);
        let mut w = Waiting::new(Duration::from_secs(10));
        let (a, b) = (
            w.tenant_index(Some(&Arc::from("a"))),
            w.tenant_index(Some(&Arc::from("b"))),
        );
        for i in 0..6u32 {
            w.insert(
                i,
                Meta {
                    tenant: a,
                    ..g.meta(Normal, 0)
                },
            );
        }
        for i in 6..9u32 {
            w.insert(
                i,
                Meta {
                    tenant: b,
                    ..g.meta(Normal, 0)
                },
            );
        }
        let first = w.pop(0).map(|(x, _, _)| x);
        assert_eq!(first, Some(0));
        assert_eq!(
            w.pop(0).map(|(x, _, _)| x),
            Some(6),
            "vtc: b next, a was served"
        );
        w.set_fairness(Fairness::None);
        assert_eq!(
            w.pop(0).map(|(x, _, _)| x),
            Some(1),
            "none: arrival order within the level"
        );
        w.set_fairness(Fairness::Vtc);
        let rest: Vec<u32> = std::iter::from_fn(|| w.pop(0).map(|(x, _, _)| x)).collect();
        // Even counters (the pop under `none` charged nothing): the two
        // alternate, ties to the tenant first seen, until b runs out.
        assert_eq!(rest, [2, 7, 3, 8, 4, 5]);
        assert!(w.is_empty());
    }

    #[test]
    fn starvation_bound_short_max_wait() {
        starvation_run(20, false);
    }

    #[test]
    fn starvation_bound_long_max_wait() {
        starvation_run(250, false);
    }

    /// Only rule 1 saves a Low request from an all-Critical stream: aging
    /// alone brings it to effective level 0, where it ties with Critical and
    /// ties go to Critical.
    #[test]
    fn starvation_bound_all_critical_stream() {
        starvation_run(50, true);
    }

    #[test]
    fn baseline_policies_ignore_age_or_level() {
        let mut g = Gen(0);
        let fill = |w: &mut Waiting<u32>, g: &mut Gen| {
            w.insert(1, g.meta(Background, 0));
            w.insert(2, g.meta(Critical, 10 * MS));
            w.insert(3, g.meta(Normal, 20 * MS));
        };
        // Long past max_wait: aging would take 1 first, by rule 1.
        let now = 5_000 * MS;
        let mut aging = Waiting::new(Duration::from_secs(1));
        fill(&mut aging, &mut g);
        let order: Vec<_> = std::iter::from_fn(|| aging.pop(now).map(|(x, _, _)| x)).collect();
        assert_eq!(order, [1, 2, 3]);

        let mut strict = Waiting::new(Duration::from_secs(1));
        strict.set_policy(OrderingPolicy::StrictPriority);
        fill(&mut strict, &mut g);
        let order: Vec<_> = std::iter::from_fn(|| strict.pop(now).map(|(x, _, _)| x)).collect();
        assert_eq!(order, [2, 3, 1], "no aging: Background last however old");

        let mut fifo = Waiting::new(Duration::from_secs(1));
        fifo.set_policy(OrderingPolicy::Fifo);
        fill(&mut fifo, &mut g);
        fifo.insert(4, g.meta(Critical, 30 * MS));
        let order: Vec<_> = std::iter::from_fn(|| fifo.pop(MS).map(|(x, _, _)| x)).collect();
        assert_eq!(order, [1, 2, 3, 4], "arrival order, levels ignored");
    }

    #[test]
    fn expiry_takes_only_due_expiring_requests() {
        let mut g = Gen(0);
        let mut w = Waiting::new(Duration::from_secs(1));
        w.insert(
            1,
            Meta {
                deadline: 5 * MS,
                expire_at: 5 * MS,
                ..g.meta(High, 0)
            },
        );
        w.insert(
            2,
            Meta {
                deadline: 3 * MS,
                expire_at: u64::MAX,
                ..g.meta(High, 0)
            },
        );
        w.insert(
            3,
            Meta {
                deadline: 9 * MS,
                expire_at: 9 * MS,
                ..g.meta(Low, 0)
            },
        );
        assert_eq!(w.next_deadline(), Some(5 * MS));
        assert!(w.pop_expired(4 * MS).is_none());
        assert_eq!(w.pop_expired(5 * MS).unwrap().0, 1);
        assert!(w.pop_expired(6 * MS).is_none());
        // Taken by pop before expiry: no stale expiry later.
        assert_eq!(w.pop(6 * MS).unwrap().0, 2);
        assert_eq!(w.pop(6 * MS).unwrap().0, 3);
        assert!(w.pop_expired(100 * MS).is_none());
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn take_where_sweeps_in_steps_and_leaves_the_order_intact() {
        let mut g = Gen(0);
        let mut w = Waiting::new(Duration::from_secs(1));
        for i in 0..10u32 {
            let level = if i % 2 == 0 { High } else { Low };
            w.insert(i, g.meta(level, u64::from(i)));
        }
        let mut out = Vec::new();
        let mut from = Some(0);
        let mut steps = 0;
        while let Some(at) = from {
            from = w.take_where(at, 3, |&mut i| i % 3 == 0, &mut out);
            steps += 1;
        }
        assert_eq!(steps, 4, "10 slots in steps of 3");
        let mut taken: Vec<u32> = out.iter().map(|(i, _)| *i).collect();
        taken.sort_unstable();
        assert_eq!(taken, [0, 3, 6, 9]);
        assert_eq!(w.len(), 6);
        // The rest still comes out in order: High before Low, FIFO within.
        assert_eq!(order(&mut w, 0), [2, 4, 8, 1, 5, 7]);
    }

    /// A request put back with its old key (a planner's stalled pass sets
    /// it aside and re-inserts it) keeps its place in arrival order: rule
    /// 1 takes it when aged, `oldest_arrival` reports it, shutdown drains
    /// it first. The arrival index was a plain deque once, where a put-back
    /// request went to the back: it was aged only after every request
    /// inserted before its return, and a batch's queue delay was counted
    /// from a younger request.
    #[test]
    fn a_request_put_back_keeps_its_arrival_place() {
        let mut g = Gen(0);
        let mut w = Waiting::new(Duration::from_millis(100));
        w.insert(1, g.meta(Background, 0));
        w.insert(2, g.meta(Low, 10 * MS));
        w.insert(3, g.meta(Low, 20 * MS));
        // Picked at 30 ms (Low first), set aside, put back as it was.
        let (x, m, _) = w.pop(30 * MS).unwrap();
        assert_eq!(x, 2);
        w.insert(x, m);
        assert_eq!(w.oldest_arrival(), Some(0));
        // At 115 ms requests 1 and 2 are aged: 1, then 2 by arrival, then 3.
        assert_eq!(
            w.pop(115 * MS).map(|(x, _, aged)| (x, aged)),
            Some((1, true))
        );
        assert_eq!(w.oldest_arrival(), Some(10 * MS));
        assert_eq!(
            w.pop(115 * MS).map(|(x, _, aged)| (x, aged)),
            Some((2, true))
        );
        w.insert(2, m);
        let drained: Vec<u32> = w.drain_all().into_iter().map(|(x, _)| x).collect();
        assert_eq!(drained, [2, 3]);
    }

    #[test]
    fn slots_are_reused_without_confusing_stale_entries() {
        let mut g = Gen(0);
        let mut w = Waiting::new(Duration::from_secs(1));
        for round in 0..100u32 {
            w.insert(round, g.meta(Normal, u64::from(round)));
            w.insert(round + 1000, g.meta(Low, u64::from(round)));
            assert_eq!(w.pop(u64::from(round)).unwrap().0, round);
            assert_eq!(w.pop(u64::from(round)).unwrap().0, round + 1000);
        }
        assert!(w.slots.len() <= 2);
        let mut all = Vec::new();
        for i in 0..5 {
            w.insert(i, g.meta(Priority::ALL[i as usize], 0));
        }
        all.extend(w.drain_all().into_iter().map(|(x, _)| x));
        assert_eq!(all, [0, 1, 2, 3, 4]);
        assert!(w.pop(0).is_none());
    }

    /// The rule of the module docs, computed the slow way over a plain
    /// list of what waits: the reference `Waiting` must agree with.
    struct Reference {
        live: Vec<(u32, Meta)>,
        max_wait: u64,
        aging_step: u64,
        policy: OrderingPolicy,
    }

    impl Reference {
        fn within_level(m: &Meta) -> (bool, u64, u64) {
            (!m.front, m.deadline, m.seq)
        }

        fn pick(&self, now: u64) -> Option<(usize, bool)> {
            let by = |key: &dyn Fn(&Meta) -> (bool, u64, u64), filter: &dyn Fn(&Meta) -> bool| {
                (0..self.live.len())
                    .filter(|&i| filter(&self.live[i].1))
                    .min_by_key(|&i| key(&self.live[i].1))
            };
            let arrival = |m: &Meta| (false, m.arrival, m.seq);
            let head = |l: usize| by(&Self::within_level, &|m: &Meta| m.level.index() == l);
            match self.policy {
                OrderingPolicy::Fifo => return by(&arrival, &|_| true).map(|i| (i, false)),
                OrderingPolicy::StrictPriority => {
                    return (0..Priority::COUNT).find_map(head).map(|i| (i, false))
                }
                OrderingPolicy::Aging => {}
            }
            let aged = |m: &Meta| now.saturating_sub(m.arrival) >= self.max_wait;
            if let Some(i) = by(&arrival, &aged) {
                return Some((i, true));
            }
            (0..Priority::COUNT)
                .filter_map(|l| head(l).map(|i| (l, i)))
                .min_by_key(|&(l, i)| {
                    let wait = now.saturating_sub(self.live[i].1.arrival);
                    let aged_for = wait.saturating_sub(self.max_wait / 2);
                    ((l as u64).saturating_sub(aged_for / self.aging_step), l)
                })
                .map(|(_, i)| (i, false))
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A new request: level, front, relative deadline and expiry (ms).
        Insert(usize, bool, Option<u64>, Option<u64>),
        /// Time passes (ms).
        Tick(u64),
        Pop,
        /// Pop, then insert it again as it was (a planner's put-back).
        PutBack,
        PopExpired,
        /// Remove the `n`-th waiting request by its key.
        Remove(usize),
        /// Take every request whose value is divisible by `n`.
        TakeWhere(u32),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0..Priority::COUNT, prop::bool::weighted(0.1),
                  prop::option::weighted(0.3, 1u64..200), prop::option::weighted(0.2, 1u64..200))
                .prop_map(|(l, f, d, e)| Op::Insert(l, f, d, e)),
            2 => (0u64..80).prop_map(Op::Tick),
            3 => Just(Op::Pop),
            2 => Just(Op::PutBack),
            1 => Just(Op::PopExpired),
            1 => any::<usize>().prop_map(Op::Remove),
            1 => (2u32..6).prop_map(Op::TakeWhere),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]

        /// Every pick, expiry, removal and sweep agrees with the rule
        /// computed the slow way, under every policy, with requests put
        /// back with their old arrival and sequence (as a stalled batch
        /// does) and slots reused.
        #[test]
        fn waiting_agrees_with_the_rule(
            ops in proptest::collection::vec(op(), 1..300),
            policy in 0usize..3,
        ) {
            let policy = [OrderingPolicy::Aging, OrderingPolicy::StrictPriority, OrderingPolicy::Fifo][policy];
            let max_wait = 100 * MS;
            let mut w = Waiting::new(Duration::from_nanos(max_wait));
            w.set_policy(policy);
            let mut r = Reference { live: Vec::new(), max_wait, aging_step: w.aging_step, policy };
            let mut keys: Vec<(u32, WaitKey)> = Vec::new();
            let (mut now, mut seq, mut next) = (0u64, 0u64, 0u32);
            for op in ops {
                match op {
                    Op::Insert(l, front, deadline, expire) => {
                        seq += 1;
                        next += 1;
                        let m = Meta {
                            level: Priority::ALL[l],
                            arrival: now,
                            deadline: deadline.map_or(u64::MAX, |d| now + d * MS),
                            expire_at: expire.map_or(u64::MAX, |e| now + e * MS),
                            front,
                            seq,
                            tokens: u64::from(next % 7),
                            bytes: 0,
                            tenant: 0,
                        };
                        keys.push((next, w.insert(next, m)));
                        r.live.push((next, m));
                    }
                    Op::Tick(ms) => now += ms * MS,
                    Op::Pop | Op::PutBack => {
                        let want = r.pick(now);
                        let got = w.pop(now);
                        proptest::prop_assert_eq!(got.is_some(), want.is_some());
                        if let (Some((x, m, aged)), Some((i, want_aged))) = (got, want) {
                            proptest::prop_assert_eq!((x, aged), (r.live[i].0, want_aged), "now {}", now);
                            r.live.swap_remove(i);
                            if matches!(op, Op::PutBack) {
                                keys.push((x, w.insert(x, m)));
                                r.live.push((x, m));
                            }
                        }
                    }
                    Op::PopExpired => {
                        let due = r.live.iter().map(|(_, m)| m.expire_at).filter(|&e| e <= now).min();
                        let got = w.pop_expired(now);
                        proptest::prop_assert_eq!(got.as_ref().map(|(_, m)| m.expire_at), due);
                        if let Some((x, _)) = got {
                            let i = r.live.iter().position(|(y, _)| *y == x).expect("it waited");
                            r.live.swap_remove(i);
                        }
                    }
                    Op::Remove(n) if !keys.is_empty() => {
                        let (x, key) = keys[n % keys.len()];
                        let got = w.remove(key).map(|(y, _)| y);
                        let i = r.live.iter().position(|(y, _)| *y == x);
                        // A key is stale once its request left, even if
                        // the request came back under a new key.
                        if got.is_some() {
                            proptest::prop_assert_eq!(got, Some(x));
                            r.live.swap_remove(i.expect("it waited"));
                        }
                    }
                    Op::Remove(_) => {}
                    Op::TakeWhere(n) => {
                        let mut out = Vec::new();
                        let mut from = Some(0);
                        while let Some(at) = from {
                            from = w.take_where(at, 7, |x| *x % n == 0, &mut out);
                        }
                        let mut got: Vec<u32> = out.iter().map(|(x, _)| *x).collect();
                        got.sort_unstable();
                        let mut want: Vec<u32> = r.live.iter().map(|(x, _)| *x).filter(|x| x % n == 0).collect();
                        want.sort_unstable();
                        proptest::prop_assert_eq!(got, want);
                        r.live.retain(|(x, _)| x % n != 0);
                    }
                }
                proptest::prop_assert_eq!(w.len(), r.live.len());
                let tokens: u128 = r.live.iter().map(|(_, m)| u128::from(m.tokens)).sum();
                proptest::prop_assert_eq!(w.tokens(), tokens);
                let expiring = r.live.iter().map(|(_, m)| m.expire_at).filter(|&e| e != u64::MAX).min();
                proptest::prop_assert_eq!(w.next_deadline(), expiring);
                let oldest = r.live.iter().map(|(_, m)| m.arrival).min();
                proptest::prop_assert_eq!(w.oldest_arrival(), oldest);
            }
            // Shutdown takes the rest in arrival order.
            let rest: Vec<(u64, u64)> = w.drain_all().iter().map(|(_, m)| (m.arrival, m.seq)).collect();
            let mut want: Vec<(u64, u64)> = r.live.iter().map(|(_, m)| (m.arrival, m.seq)).collect();
            want.sort_unstable();
            proptest::prop_assert_eq!(rest, want);
        }
    }
}
