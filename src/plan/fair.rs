//! Fair shares between tenants within each priority level: the Virtual
//! Token Counter (Sheng et al., "Fairness in Serving Large Language
//! Models", OSDI 2024), single-owner (the collector's).
//!
//! # The rule
//!
//! Each tenant has, per level, a counter of the service it has received
//! there: every request taken is charged its tokens divided by the
//! tenant's weight. Within a level the next request comes from the
//! backlogged tenant (one with requests waiting at that level) with the
//! smallest counter, and among that tenant's requests by the level's own
//! rule (front, deadline, arrival). When a tenant becomes backlogged at a
//! level, its counter is lifted to the smallest counter of the tenants
//! backlogged there (or, with none, to the counter the last request taken
//! there was charged from): a tenant that was idle does not come back with
//! credit banked while it was away, and one that was served much does not
//! keep its debt against tenants that were not there.
//!
//! # The bound
//!
//! Counters are charged at take time, so between two tenants backlogged at
//! a level over an interval the counters never differ by more than one
//! request's charge: the smaller is always taken next. Their weighted
//! service over the interval therefore differs by at most twice the
//! largest request's tokens (VTC's bound, `2·L`), whatever their rates.
//! `tests` and `tests/tenants.rs` check this bound.
//!
//! # Cost
//!
//! A charge is an addition. The level's heap of tenants is lazy: an entry
//! whose counter is behind its tenant's is put back with the right one
//! when it reaches the top, so a take costs O(log tenants) only when the
//! top tenant changes, O(1) with one tenant.
//!
//! # Memory
//!
//! Tenants with nothing waiting and no debt (a counter no higher than its
//! level's floor) are dropped when the table has doubled since the last
//! drop: a flood of one-off ids costs a bounded table, and a dropped
//! tenant would have come back lifted to the floor anyway.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use super::run_heap::RunHeap;
use crate::priority::Priority;

/// A unit of weighted service: one token at weight 1.
const SCALE: f64 = 65536.0;

/// The table is not pruned below this many tenants.
const PRUNE_FLOOR: usize = 1024;

/// The index of the tenant of requests that name none.
pub const DEFAULT: u32 = 0;

/// Within-level key: front first, then deadline, then arrival sequence.
pub(crate) type LevelKey = (bool, u64, u64);

struct Tenant<V> {
    /// `None` for the default tenant and for a free slot.
    name: Option<Arc<str>>,
    /// Charge per token: `SCALE / weight`.
    step: f64,
    counter: [u64; Priority::COUNT],
    waiting: [u32; Priority::COUNT],
    /// The key of this tenant's entry in the level's heap that counts, if
    /// it has one: an entry with another key is stale.
    key: [Option<u64>; Priority::COUNT],
    queue: [RunHeap<LevelKey, V>; Priority::COUNT],
}

impl<V: Ord + Copy> Tenant<V> {
    fn new(name: Option<Arc<str>>, step: f64) -> Self {
        Self {
            name,
            step,
            counter: [0; Priority::COUNT],
            waiting: [0; Priority::COUNT],
            key: [None; Priority::COUNT],
            queue: std::array::from_fn(|_| RunHeap::new()),
        }
    }
}

/// One level's tenants by counter, lazily (see the module docs).
#[derive(Default)]
struct Level {
    heap: BinaryHeap<Reverse<(u64, u32)>>,
    /// The counter the last request taken here was charged from.
    last: u64,
}

/// The VTC state of every tenant with requests waiting or recent debt.
pub(crate) struct Fair<V> {
    names: HashMap<Arc<str>, u32>,
    tenants: Vec<Tenant<V>>,
    free: Vec<u32>,
    levels: [Level; Priority::COUNT],
    weights: HashMap<Arc<str>, f64>,
    prune_at: usize,
}

fn step_of(weight: f64) -> f64 {
    SCALE / weight
}

impl<V: Ord + Copy> Fair<V> {
    pub fn new() -> Self {
        Self {
            names: HashMap::new(),
            tenants: vec![Tenant::new(None, SCALE)],
            free: Vec::new(),
            levels: std::array::from_fn(|_| Level::default()),
            weights: HashMap::new(),
            prune_at: PRUNE_FLOOR,
        }
    }

    /// Tenants held, the default one included.
    pub fn tenants(&self) -> usize {
        self.names.len() + 1
    }

    /// New weights by tenant id (others weigh 1), for every tenant now
    /// and to come. Counters keep what was charged.
    pub fn set_weights(&mut self, weights: HashMap<Arc<str>, f64>) {
        for t in &mut self.tenants {
            let w = t
                .name
                .as_ref()
                .and_then(|n| weights.get(n))
                .copied()
                .unwrap_or(1.0);
            t.step = step_of(w);
        }
        let default = weights.get(crate::intake::tenants::DEFAULT_TENANT).copied();
        self.tenants[DEFAULT as usize].step = step_of(default.unwrap_or(1.0));
        self.weights = weights;
    }

    /// The index of `name`'s tenant (`DEFAULT` for none), added if new.
    pub fn index_of(&mut self, name: Option<&Arc<str>>) -> u32 {
        if let Some(i) = self.find(name) {
            return i;
        }
        let Some(name) = name else { return DEFAULT };
        if self.names.len() >= self.prune_at {
            self.prune();
        }
        let step = step_of(self.weights.get(name).copied().unwrap_or(1.0));
        let i = match self.free.pop() {
            Some(i) => {
                self.tenants[i as usize] = Tenant::new(Some(name.clone()), step);
                i
            }
            None => {
                self.tenants.push(Tenant::new(Some(name.clone()), step));
                u32::try_from(self.tenants.len() - 1)
                    .expect("fewer than 2^32 tenants: the table is pruned to what waits")
            }
        };
        self.names.insert(name.clone(), i);
        i
    }

    /// The index of `name`'s tenant (`DEFAULT` for none, or for the
    /// default tenant's own id), if it is held.
    fn find(&self, name: Option<&Arc<str>>) -> Option<u32> {
        match name {
            None => Some(DEFAULT),
            Some(n) if n.as_ref() == crate::intake::tenants::DEFAULT_TENANT => Some(DEFAULT),
            Some(n) => self.names.get(n).copied(),
        }
    }

    /// The level's floor: the smallest counter among its backlogged
    /// tenants, else the counter its last take was charged from. Fixes
    /// the heap's top on the way.
    fn floor(&mut self, l: usize) -> u64 {
        self.top(l).map_or(self.levels[l].last, |(c, _)| c)
    }

    /// The heap's top entry after dropping stale ones and renewing lagging
    /// ones: the backlogged tenant with the smallest counter.
    fn top(&mut self, l: usize) -> Option<(u64, u32)> {
        let level = &mut self.levels[l];
        while let Some(&Reverse((c, t))) = level.heap.peek() {
            let tenant = &mut self.tenants[t as usize];
            if tenant.key[l] != Some(c) {
                level.heap.pop();
                continue;
            }
            if tenant.waiting[l] == 0 {
                level.heap.pop();
                tenant.key[l] = None;
                continue;
            }
            let now = tenant.counter[l];
            if now != c {
                // Charged since it was pushed (never lowered: a lowering
                // pushes at once, see `lowered`): the entry takes the new
                // counter in place, one sift instead of a pop and a push.
                if let Some(mut top) = level.heap.peek_mut() {
                    *top = Reverse((now, t));
                }
                tenant.key[l] = Some(now);
                continue;
            }
            return Some((c, t));
        }
        None
    }

    /// A request of tenant `t` now waits at level `l` under `key`. `lift`:
    /// it arrives (a tenant back from idle is lifted to the floor); a
    /// request put back after a take is not.
    pub fn insert(&mut self, t: u32, l: usize, key: LevelKey, id: V, lift: bool) {
        if self.tenants[t as usize].waiting[l] == 0 && lift {
            let floor = self.floor(l);
            let c = &mut self.tenants[t as usize].counter[l];
            *c = (*c).max(floor);
        }
        let tenant = &mut self.tenants[t as usize];
        tenant.waiting[l] += 1;
        tenant.queue[l].push(key, id);
        if tenant.waiting[l] == 1 {
            self.enter(t, l);
        }
    }

    /// Gives tenant `t` an entry at level `l` with its counter, unless it
    /// has one that counts with that counter already.
    fn enter(&mut self, t: u32, l: usize) {
        let tenant = &mut self.tenants[t as usize];
        let c = tenant.counter[l];
        if tenant.key[l] != Some(c) {
            tenant.key[l] = Some(c);
            self.levels[l].heap.push(Reverse((c, t)));
        }
    }

    /// A request of tenant `t` at level `l` left the waiting set.
    pub fn taken(&mut self, t: u32, l: usize) {
        let w = &mut self.tenants[t as usize].waiting[l];
        *w = w.saturating_sub(1);
    }

    /// The id the level's rule picks next among tenant queues: the front
    /// of the least-served backlogged tenant. `live` tells ids still
    /// waiting from stale ones.
    pub fn head(&mut self, l: usize, live: impl Fn(V) -> bool) -> Option<V> {
        let (_, t) = self.top(l)?;
        let queue = &mut self.tenants[t as usize].queue[l];
        queue.clean(live);
        queue.front().map(|(_, id)| id)
    }

    /// What `tokens` cost tenant `t` (at least one token's worth).
    fn charge_of(&self, t: u32, tokens: u64) -> u64 {
        ((tokens.max(1) as f64) * self.tenants[t as usize].step).ceil() as u64
    }

    /// Charges tenant `t` at level `l` for `tokens` just taken.
    pub fn charge(&mut self, t: u32, l: usize, tokens: u64) {
        let charge = self.charge_of(t, tokens);
        let c = &mut self.tenants[t as usize].counter[l];
        *c = c.saturating_add(charge);
        // The level's virtual time, for a tenant that comes back to a
        // level where nobody waits (VTC lifts it to the counter of the
        // last tenant to leave).
        self.levels[l].last = *c;
    }

    /// Takes back the charge of `tokens`: the request taken was not
    /// served (put back, or abandoned by its caller).
    pub fn refund(&mut self, t: u32, l: usize, tokens: u64) {
        let charge = self.charge_of(t, tokens);
        let c = &mut self.tenants[t as usize].counter[l];
        *c = c.saturating_sub(charge);
        self.lowered(t, l);
    }

    /// Corrects tenant `name`'s counter at level `l` from `charged` tokens
    /// to the `real` cost its executor reported; a tenant no longer held
    /// is left alone (it was dropped for having no debt).
    pub fn correct(&mut self, name: Option<&Arc<str>>, l: usize, charged: u64, real: u64) {
        let Some(t) = self.find(name) else { return };
        let tenant = &mut self.tenants[t as usize];
        let step = tenant.step;
        let at = |n: u64| ((n.max(1) as f64) * step).ceil() as u64;
        let c = &mut tenant.counter[l];
        if real >= charged {
            *c = c.saturating_add(at(real) - at(charged));
        } else {
            *c = c.saturating_sub(at(charged) - at(real));
            self.lowered(t, l);
        }
    }

    /// A counter went down: a backlogged tenant's entry must come up with
    /// it at once (the heap renews only entries that lag behind).
    fn lowered(&mut self, t: u32, l: usize) {
        let tenant = &self.tenants[t as usize];
        if tenant.waiting[l] > 0 && tenant.key[l].is_some_and(|k| k > tenant.counter[l]) {
            self.enter(t, l);
        }
    }

    /// Empties every queue and heap (counters stay), for a rebuild or a
    /// drain.
    pub fn clear_queues(&mut self) {
        for t in &mut self.tenants {
            t.waiting = [0; Priority::COUNT];
            t.key = [None; Priority::COUNT];
            t.queue.iter_mut().for_each(RunHeap::clear);
        }
        for l in &mut self.levels {
            l.heap.clear();
        }
    }

    /// Whether no queue or heap holds an entry, stale or live.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.tenants
            .iter()
            .all(|t| t.queue.iter().all(RunHeap::is_empty))
            && self.levels.iter().all(|l| l.heap.is_empty())
    }

    /// Drops tenants with nothing waiting and no debt; see the module docs.
    fn prune(&mut self) {
        let floors: [u64; Priority::COUNT] = std::array::from_fn(|l| self.floor(l));
        let mut dropped = Vec::new();
        for (i, t) in self.tenants.iter_mut().enumerate().skip(1) {
            let idle = t.waiting.iter().all(|&w| w == 0);
            let no_debt = t.counter.iter().zip(&floors).all(|(c, f)| c <= f);
            if t.name.is_some() && idle && no_debt {
                if let Some(name) = t.name.take() {
                    dropped.push((name, i));
                }
            }
        }
        for (name, i) in dropped {
            self.names.remove(&name);
            let i = u32::try_from(i).expect("indices fit u32 by construction");
            self.free.push(i);
            // Its stale heap entries name a slot that may be reused: a key
            // of None makes them stale to the new tenant too, until it
            // enters with its own.
            let t = &mut self.tenants[i as usize];
            t.key = [None; Priority::COUNT];
            t.counter = [0; Priority::COUNT];
        }
        self.prune_at = (2 * self.names.len()).max(PRUNE_FLOOR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ids are (tenant, n); every id is live.
    fn take(
        f: &mut Fair<(u32, u32)>,
        l: usize,
        tokens: impl Fn(u32, u32) -> u64,
    ) -> Option<(u32, u32)> {
        let id = f.head(l, |_| true)?;
        let (t, n) = id;
        // Remove it from the queue the way the waiting set does: the take
        // makes it stale, and the queue drops it at its front.
        f.tenants[t as usize].queue[l].pop_front();
        f.taken(t, l);
        f.charge(t, l, tokens(t, n));
        Some(id)
    }

    fn named(f: &mut Fair<(u32, u32)>, name: &str) -> u32 {
        f.index_of(Some(&Arc::from(name)))
    }

    /// Two backlogged tenants of equal weight, one with 10× the requests
    /// and costs from 1 to 16 tokens: over every stretch of the order, the
    /// service each got differs by at most twice the largest request.
    #[test]
    fn two_backlogged_tenants_stay_within_twice_the_largest_request() {
        let mut f = Fair::new();
        let (a, b) = (named(&mut f, "a"), named(&mut f, "b"));
        let cost = |t: u32, n: u32| u64::from((n * 7 + t * 3) % 16 + 1);
        for n in 0..2_000 {
            f.insert(a, 2, (true, u64::MAX, u64::from(n)), (a, n), true);
        }
        for n in 0..200 {
            f.insert(b, 2, (true, u64::MAX, 10_000 + u64::from(n)), (b, n), true);
        }
        let mut served = [0i64; 2];
        let mut diffs = Vec::new();
        while let Some((t, n)) = take(&mut f, 2, cost) {
            if f.tenants[b as usize].waiting[2] == 0 && t == a {
                break;
            }
            served[usize::from(t == b)] += cost(t, n) as i64;
            diffs.push(served[0] - served[1]);
        }
        let spread = diffs.iter().max().unwrap() - diffs.iter().min().unwrap();
        assert!(spread <= 2 * 16, "service spread {spread} tokens");
    }

    #[test]
    fn weights_two_to_one_give_service_two_to_one() {
        let mut f = Fair::new();
        let (a, b) = (named(&mut f, "a"), named(&mut f, "b"));
        f.set_weights(HashMap::from([(Arc::from("a"), 2.0)]));
        for n in 0..3_000 {
            f.insert(a, 0, (true, u64::MAX, u64::from(n)), (a, n), true);
            f.insert(b, 0, (true, u64::MAX, u64::from(n)), (b, n), true);
        }
        let mut served = [0u64; 2];
        for _ in 0..3_000 {
            let (t, _) = take(&mut f, 0, |_, _| 4).unwrap();
            served[usize::from(t == b)] += 4;
        }
        // Weighted service a/2 and b/1 within 2·L of each other.
        let gap = (served[0] as i64 / 2 - served[1] as i64).abs();
        assert!(gap <= 2 * 4, "a {} b {}", served[0], served[1]);
    }

    /// A tenant idle while another was served comes back level with it,
    /// not with the credit of its absence: it does not take the next
    /// several hundred requests in a row.
    #[test]
    fn a_returning_tenant_banks_no_credit() {
        let mut f = Fair::new();
        let (a, b) = (named(&mut f, "a"), named(&mut f, "b"));
        for n in 0..1_000 {
            f.insert(a, 1, (true, u64::MAX, u64::from(n)), (a, n), true);
        }
        for _ in 0..500 {
            take(&mut f, 1, |_, _| 1);
        }
        for n in 0..100 {
            f.insert(b, 1, (true, u64::MAX, 5_000 + u64::from(n)), (b, n), true);
        }
        let next: Vec<u32> = (0..20)
            .map(|_| take(&mut f, 1, |_, _| 1).unwrap().0)
            .collect();
        let bs = next.iter().filter(|&&t| t == b).count();
        assert!(
            (9..=11).contains(&bs),
            "b took {bs} of the next 20: {next:?}"
        );
    }

    #[test]
    fn a_refund_puts_the_tenant_back_in_front_at_once() {
        let mut f = Fair::new();
        let (a, b) = (named(&mut f, "a"), named(&mut f, "b"));
        for n in 0..4 {
            f.insert(a, 0, (true, u64::MAX, u64::from(n)), (a, n), true);
            f.insert(b, 0, (true, u64::MAX, 10 + u64::from(n)), (b, n), true);
        }
        let first = take(&mut f, 0, |_, _| 100).unwrap();
        // Let the other tenant be taken once, which renews the heap.
        let second = take(&mut f, 0, |_, _| 1).unwrap();
        assert_ne!(first.0, second.0);
        // The first was not served: refund it and put it back.
        f.refund(first.0, 0, 100);
        f.insert(first.0, 0, (true, u64::MAX, 0), first, false);
        assert_eq!(take(&mut f, 0, |_, _| 1).unwrap().0, first.0);
    }

    #[test]
    fn idle_tenants_without_debt_are_dropped() {
        let mut f = Fair::<(u32, u32)>::new();
        for i in 0..100_000u32 {
            let t = named(&mut f, &format!("t{i}"));
            f.insert(t, 3, (true, u64::MAX, u64::from(i)), (t, i), true);
            take(&mut f, 3, |_, _| 1).unwrap();
            assert!(f.tenants() <= 2 * PRUNE_FLOOR + 1, "{} at {i}", f.tenants());
        }
        assert!(f.tenants.len() <= 2 * PRUNE_FLOOR + 2);
    }
}
