//! One index of the collector's waiting set: entries in key order, for
//! keys that mostly come in rising order (see [`RunHeap`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// One index of the waiting set: ids in key order, for keys that mostly
/// come in rising order. Requests arrive with rising sequence numbers and
/// arrival times, and most carry neither a deadline nor `Front`, so most
/// keys come after the last one pushed: those go on a run, a deque whose
/// push and pop are O(1). A key that does not (a deadline, a `Front`, a
/// request put back with its old key) goes into a heap beside the run,
/// O(log n). The front is the smaller of the two fronts.
///
/// Lazy, like every index of the set: an id taken through another index
/// stays here until it reaches a front and `clean` drops it.
pub(crate) struct RunHeap<K, V> {
    run: VecDeque<(K, V)>,
    rest: BinaryHeap<Reverse<(K, V)>>,
}

impl<K: Ord + Copy, V: Ord + Copy> RunHeap<K, V> {
    pub fn new() -> Self {
        Self {
            run: VecDeque::new(),
            rest: BinaryHeap::new(),
        }
    }

    #[inline]
    pub fn push(&mut self, key: K, id: V) {
        // Equal keys may go either way: their order is not the rule's.
        if self.run.back().is_none_or(|&(last, _)| last <= key) {
            self.run.push_back((key, id));
        } else {
            self.rest.push(Reverse((key, id)));
        }
    }

    /// Drops ids that no longer wait from both fronts.
    #[inline]
    pub fn clean(&mut self, live: impl Fn(V) -> bool) {
        while self.run.front().is_some_and(|&(_, id)| !live(id)) {
            self.run.pop_front();
        }
        while self.rest.peek().is_some_and(|Reverse((_, id))| !live(*id)) {
            self.rest.pop();
        }
    }

    /// Whether the smallest entry is the heap's: its key is below the
    /// run's front, or the run is empty (ties go to the run). `front` and
    /// `pop_front` both ask this, so what one reads the other takes.
    #[inline]
    fn rest_first(&self) -> bool {
        match (self.run.front(), self.rest.peek()) {
            (Some((a, _)), Some(Reverse((b, _)))) => b < a,
            (Some(_), None) => false,
            (None, _) => true,
        }
    }

    /// The smallest entry (after `clean`, a live one).
    #[inline]
    pub fn front(&self) -> Option<(K, V)> {
        if self.rest_first() {
            self.rest.peek().map(|Reverse(e)| *e)
        } else {
            self.run.front().copied()
        }
    }

    /// Removes the smallest entry.
    #[inline]
    pub fn pop_front(&mut self) -> Option<(K, V)> {
        if self.rest_first() {
            self.rest.pop().map(|Reverse(e)| e)
        } else {
            self.run.pop_front()
        }
    }

    /// Whether it holds no entry, stale or live.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.run.is_empty() && self.rest.is_empty()
    }

    pub fn clear(&mut self) {
        self.run.clear();
        self.rest.clear();
    }
}
