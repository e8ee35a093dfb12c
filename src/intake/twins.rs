//! The dedup keys that have a group waiting in the collector, published
//! for submit: a request whose twin waits adds no work (it rides its
//! twin's execution, `dedup.rs`), only a queue slot, so a shed level
//! (`shed.rs`) lets it in rather than refuse it.
//!
//! The collector owns the index of waiting groups ([`Twins`]: key →
//! where the group waits) and mirrors its keys into [`WaitingKeys`], an
//! open-addressed set of key hashes in atomics that submits read without a
//! lock. One writer, any number of readers:
//!
//! | slot value | meaning |
//! |---|---|
//! | `EMPTY` (0) | never used since the last rebuild: a probe stops here |
//! | `GONE` (1) | a key was removed: a probe goes on past it, an insert may reuse it |
//! | anything else | a key's tag (its hash, 0 and 1 read as 2) |
//!
//! A key is placed in the first `GONE` or `EMPTY` slot of its probe
//! sequence, after checking up to the first `EMPTY` that it is not there
//! already. Removal writes `GONE`, so a reader probing past it for another
//! key goes on. Tombstones pile up; once used slots reach three quarters
//! of the table the collector rebuilds it (all `EMPTY`, then the live keys
//! again), which it does at most once per quarter-table of inserts, and
//! once per half-table while the live keys fill at most a quarter of it
//! (the table is sized so that they do when every waiting request is a
//! group of its own, up to 16,384 of them).
//!
//! **It is a hint, not a protocol.** Every access is Relaxed: what a
//! submit does with the answer is only admit or refuse one request, and
//! either way the request ends in exactly one outcome (accepted, or handed
//! back). A stale or wrong answer costs this much:
//!
//! * a twin reported waiting that has just launched (or a rebuild or hash
//!   collision saying yes): the request is admitted and starts a group of
//!   its own, one request's work let past the shed;
//! * a twin reported absent (it arrived a moment ago, a rebuild is under
//!   way, the table is full, or another key with the same 64-bit hash
//!   left and took the shared tag with it): the request is shed, as any
//!   request of a shed level is.
//!
//! What it costs the collector (`benches/twins.rs`, BENCHMARKS.md): a
//! group in and one out takes 1.5–1.8× what the plain `HashMap` alone
//! took, 30–46 ns more, less than a `Mutex<HashSet>` copy would add; a
//! rebuild lands inside one step, at the 65,536-slot cap with 16,000 live
//! keys 68 µs (best of 50, a throwaway timing), and at a full queue of
//! distinct groups under one step in a thousand. Submit's question takes
//! 3–4 ns against 15–20 ns for the locked set uncontended.
//!
//! No data is read through it, so there is no loom model (see "Atomics
//! that are hints" in `loom-tests/README.md`); the unit tests below check
//! the set against a `HashSet`.

use std::collections::HashMap;

use std::sync::Arc;

use crate::sync::{AtomicU64, Ordering};

/// A slot never used since the last rebuild.
const EMPTY: u64 = 0;
/// A slot whose key was removed.
const GONE: u64 = 1;

/// What a slot holds for key hash `k`: `k`, with the two markers read as
/// 2 (a collision that only makes a yes a little likelier).
fn tag(k: u64) -> u64 {
    k.max(2)
}

/// The published set of waiting keys (see the module docs).
#[derive(Debug)]
pub struct WaitingKeys {
    slots: Box<[AtomicU64]>,
}

impl WaitingKeys {
    /// A set for about `groups` waiting groups at most: four times that
    /// many slots, a power of two, from 64 to 65,536 (512 KiB). Twice
    /// was measured too: with the live keys at half the table, probes run
    /// longer and rebuilds come every few hundred steps (a group in and
    /// out took 15–19% longer, and one step in a thousand took 12 µs at
    /// 1,024 groups; `benches/twins.rs`).
    pub fn for_groups(groups: usize) -> Self {
        let len = groups
            .saturating_mul(4)
            .clamp(64, 1 << 16)
            .next_power_of_two();
        Self {
            slots: (0..len).map(|_| AtomicU64::new(EMPTY)).collect(),
        }
    }

    /// Submit: whether a group with key hash `k` waits (a hint; see the
    /// module docs). Probes until the key or an `EMPTY` slot, at most the
    /// whole table.
    pub fn contains(&self, k: u64) -> bool {
        let t = tag(k);
        let mask = self.slots.len() - 1;
        let mut i = t as usize & mask;
        for _ in 0..self.slots.len() {
            // Relaxed: a hint (module docs).
            match self.slots[i].load(Ordering::Relaxed) {
                s if s == t => return true,
                EMPTY => return false,
                _ => i = (i + 1) & mask,
            }
        }
        false
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    /// Where `t` is, and the first reusable slot before it (or the `EMPTY`
    /// that ends its probe). Writer only.
    fn find(&self, t: u64) -> (Option<usize>, Option<usize>) {
        let mask = self.len() - 1;
        let mut i = t as usize & mask;
        let mut free = None;
        for _ in 0..self.len() {
            match self.slots[i].load(Ordering::Relaxed) {
                s if s == t => return (Some(i), free),
                EMPTY => return (None, free.or(Some(i))),
                GONE => free = free.or(Some(i)),
                _ => {}
            }
            i = (i + 1) & mask;
        }
        (None, free)
    }

    fn store(&self, i: usize, value: u64) {
        // Relaxed: a hint (module docs).
        self.slots[i].store(value, Ordering::Relaxed);
    }

    /// Writer: puts tag `t` in the first reusable slot of its probe.
    fn place(&self, t: u64) -> Placed {
        match self.find(t) {
            (Some(_), _) => Placed::There,
            (None, Some(i)) => {
                let fresh = self.slots[i].load(Ordering::Relaxed) == EMPTY;
                self.store(i, t);
                if fresh {
                    Placed::Fresh
                } else {
                    Placed::Reused
                }
            }
            (None, None) => Placed::Full,
        }
    }
}

/// Where [`WaitingKeys::place`] put a tag.
#[derive(Debug, PartialEq, Eq)]
enum Placed {
    /// Already there (the same key, or a tag collision: already a yes).
    There,
    /// In an `EMPTY` slot: one more slot used.
    Fresh,
    /// In a `GONE` slot.
    Reused,
    /// Nowhere: no free slot in the whole table.
    Full,
}

/// The collector's index of waiting dedup groups: key hash → where the
/// group waits (`V`), mirrored into a [`WaitingKeys`] for submit.
/// Single-owner (the collector).
pub struct Twins<V> {
    map: HashMap<u64, V>,
    published: Arc<WaitingKeys>,
    /// Slots not `EMPTY`: live keys and tombstones.
    used: usize,
    /// Some live key went unpublished (the table was full of live keys);
    /// the first change that finds room for a rebuild publishes it.
    stale: bool,
}

impl<V: Copy> Twins<V> {
    /// An empty index that publishes into `published`, the table the
    /// runtime's submits read.
    pub fn new(published: Arc<WaitingKeys>) -> Self {
        Self {
            map: HashMap::new(),
            published,
            used: 0,
            stale: false,
        }
    }

    /// Where the group with key `k` waits.
    pub fn get(&self, k: u64) -> Option<V> {
        self.map.get(&k).copied()
    }

    /// The group with key `k` waits at `at` (a new group, or one put back
    /// under a new key).
    pub fn insert(&mut self, k: u64, at: V) {
        if self.map.insert(k, at).is_none() {
            self.publish(k);
        }
    }

    /// The group with key `k` left the waiting set: its key is free.
    pub fn remove(&mut self, k: u64) {
        if self.map.remove(&k).is_some() {
            if let (Some(i), _) = self.published.find(tag(k)) {
                self.published.store(i, GONE);
            }
            if self.stale && self.has_room() {
                self.rebuild();
            }
        }
    }

    /// Whether the live keys take at most half the table, so a rebuild
    /// frees at least a quarter of it.
    fn has_room(&self) -> bool {
        self.map.len() <= self.published.len() / 2
    }

    fn publish(&mut self, k: u64) {
        let limit = self.published.len() / 4 * 3;
        if self.used >= limit || self.stale {
            // With more live keys than that, new ones go unpublished (shed
            // as before) until enough leave.
            if self.has_room() {
                self.rebuild(); // publishes `k` with the rest
            } else {
                self.stale = true;
            }
            return;
        }
        match self.published.place(tag(k)) {
            Placed::Fresh => self.used += 1,
            Placed::Full => self.stale = true,
            Placed::There | Placed::Reused => {}
        }
    }

    /// Clears the table and publishes the live keys again. A submit that
    /// reads it meanwhile may be told no for a waiting twin (module docs).
    fn rebuild(&mut self) {
        for i in 0..self.published.len() {
            self.published.store(i, EMPTY);
        }
        self.used = 0;
        self.stale = false;
        // Into an empty table with at most half of it live: every key
        // lands in a fresh slot, or on its tag's twin.
        for &k in self.map.keys() {
            if self.published.place(tag(k)) == Placed::Fresh {
                self.used += 1;
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn a_key_is_seen_while_it_waits_and_not_after() {
        let keys = Arc::new(WaitingKeys::for_groups(8));
        let mut twins = Twins::new(keys.clone());
        assert!(!keys.contains(7));
        twins.insert(7, 'a');
        assert!(keys.contains(7) && !keys.contains(8));
        twins.insert(7, 'b');
        assert_eq!(twins.get(7), Some('b'), "put back under a new place");
        twins.remove(7);
        assert!(!keys.contains(7) && twins.get(7).is_none());
        twins.insert(0, 'z');
        assert!(keys.contains(0), "the markers' values are keys too");
    }

    #[test]
    fn a_key_leaving_a_shared_tag_never_unpublishes_the_slots_next_owner() {
        // 0 and 2 share tag 2, so they share one slot. Once the first to
        // leave frees it (documented: the other goes unseen) and another
        // key takes it, the second's removal must leave that key alone.
        let keys = Arc::new(WaitingKeys::for_groups(8));
        let mut twins = Twins::new(keys.clone());
        twins.insert(0, ());
        twins.insert(2, ());
        twins.remove(0);
        let next = (3..1_000u64)
            .find(|k| *k as usize & (keys.len() - 1) == 2)
            .expect("some key probes from slot 2");
        twins.insert(next, ()); // reuses the freed slot
        twins.remove(2);
        assert!(keys.contains(next), "{next} lost its slot to 2's removal");
    }

    #[test]
    fn tombstones_are_rebuilt_away_and_a_full_table_says_no_rather_than_spin() {
        let keys = Arc::new(WaitingKeys::for_groups(16)); // 64 slots
        let mut twins = Twins::new(keys.clone());
        // Churn far past the table's size: rebuilds keep it answering.
        for k in 0..10_000u64 {
            twins.insert(k, ());
            assert!(keys.contains(k), "key {k}");
            if k >= 8 {
                twins.remove(k - 8);
                assert!(!keys.contains(k - 8), "key {} gone", k - 8);
            }
        }
        // More live keys than the table takes: the extra ones are not
        // published (shed as before), the rest still are.
        let mut live = Twins::new(Arc::new(WaitingKeys::for_groups(16)));
        for k in 0..200u64 {
            live.insert(k, ());
        }
        let seen = (0..200u64).filter(|&k| live.published.contains(k)).count();
        assert!((40..=64).contains(&seen), "{seen} published of 200");
        assert!(
            !live.published.contains(1_000_000),
            "a full table ends its probe"
        );
    }

    /// The proptest's keys: 96 of them on 12 home slots of the 64-slot
    /// table (`2 + i % 12`), so probe sequences run through one another's
    /// keys and tombstones, where a removal done wrong shows.
    fn crowded(i: usize) -> u64 {
        (2 + i % 12 + 64 * i) as u64
    }

    proptest! {
        /// Against a `HashSet`: while the live keys take at most half the
        /// table, the published set answers exactly, also after a spell
        /// with more. Runs of inserts and runs of removals, so the live
        /// keys swing from none to past half the table and back.
        #[test]
        fn the_published_set_matches_the_live_keys(
            runs in proptest::collection::vec(
                (any::<bool>(), proptest::collection::vec(0usize..96, 1..90)),
                1..12,
            )
        ) {
            let keys = Arc::new(WaitingKeys::for_groups(16)); // 64 slots
            let mut twins = Twins::new(keys.clone());
            let mut model = HashSet::new();
            let ops = runs.into_iter().flat_map(|(add, is)| is.into_iter().map(move |i| (add, i)));
            for (add, i) in ops {
                let k = crowded(i);
                if add {
                    twins.insert(k, ());
                    model.insert(k);
                } else {
                    twins.remove(k);
                    model.remove(&k);
                }
                if model.len() <= 32 {
                    for probe in (0..96).map(crowded) {
                        prop_assert_eq!(keys.contains(probe), model.contains(&probe), "key {}", probe);
                    }
                }
            }
        }
    }
}
