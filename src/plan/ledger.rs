//! The collector's in-memory capacity ledger (single-owner, no atomics).
//!
//! The collector reserves every placed request's cost here before the batch
//! launches, so a batch never double-books a worker. Workers hand each
//! batch's total back through a lock-free ring, and the collector applies it
//! with [`Ledger::release`]: exactly once per batch, checked (a release
//! larger than what is held is an error, never a silent wrap).
//!
//! **Invariant**: a reservation succeeds only if, afterwards, reserved ≤
//! capacity for that worker in every resource. A capacity lowered at run
//! time below what is already held takes effect for new reservations:
//! nothing more is placed there until releases bring it back under.
//!
//! ```
//! use convoy::internals::ledger::Ledger;
//! use convoy::Capacity;
//! let cap = Capacity { slots: 2, tokens: 100, bytes: 0 };
//! let mut l = Ledger::new(1);
//! let one = Capacity { slots: 1, tokens: 60, bytes: 0 };
//! assert!(l.reserve(0, &cap, &one));
//! assert!(!l.reserve(0, &cap, &one)); // 120 tokens > 100
//! l.release(0, &one).unwrap();
//! assert!(l.is_idle());
//! ```

use crate::config::Capacity;

/// A release that does not match what the ledger holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("worker {worker}: release of {amount:?} exceeds the {held:?} held")]
pub struct OverRelease {
    /// The worker.
    pub worker: usize,
    /// What was released.
    pub amount: Capacity,
    /// What was held.
    pub held: Capacity,
}

/// Zero of every resource.
pub const NOTHING: Capacity = Capacity {
    slots: 0,
    tokens: 0,
    bytes: 0,
};

/// Reserved capacity per worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    reserved: Vec<Capacity>,
    /// How many workers hold anything: `is_idle` runs every collector
    /// pass, and a fleet that has added and removed thousands of workers
    /// keeps every index, so a scan would grow with them.
    busy: usize,
}

impl Ledger {
    /// A ledger for `workers` workers, all idle.
    pub fn new(workers: usize) -> Self {
        Self {
            reserved: vec![NOTHING; workers],
            busy: 0,
        }
    }

    /// Whether `cost` fits on `worker` given its `capacity` now.
    pub fn fits(&self, worker: usize, capacity: &Capacity, cost: &Capacity) -> bool {
        let held = &self.reserved[worker];
        u64::from(held.slots) + u64::from(cost.slots) <= u64::from(capacity.slots)
            && held.tokens.saturating_add(cost.tokens) <= capacity.tokens
            && held.bytes.saturating_add(cost.bytes) <= capacity.bytes
    }

    /// Reserves `cost` on `worker` if it fits; returns whether it did.
    pub fn reserve(&mut self, worker: usize, capacity: &Capacity, cost: &Capacity) -> bool {
        if !self.fits(worker, capacity, cost) {
            return false;
        }
        let held = &mut self.reserved[worker];
        let was_idle = *held == NOTHING;
        held.slots += cost.slots;
        held.tokens += cost.tokens;
        held.bytes += cost.bytes;
        if was_idle && *held != NOTHING {
            self.busy += 1;
        }
        true
    }

    /// Gives `amount` back; refuses (changing nothing) if more than is held.
    pub fn release(&mut self, worker: usize, amount: &Capacity) -> Result<(), OverRelease> {
        let held = self.reserved[worker];
        if amount.slots > held.slots || amount.tokens > held.tokens || amount.bytes > held.bytes {
            return Err(OverRelease {
                worker,
                amount: *amount,
                held,
            });
        }
        let h = &mut self.reserved[worker];
        h.slots -= amount.slots;
        h.tokens -= amount.tokens;
        h.bytes -= amount.bytes;
        if held != NOTHING && *h == NOTHING {
            self.busy -= 1;
        }
        Ok(())
    }

    /// What `worker` holds now.
    pub fn reserved(&self, worker: usize) -> Capacity {
        self.reserved[worker]
    }

    /// Slots `worker` has free under `capacity` (0 when over).
    pub fn free_slots(&self, worker: usize, capacity: &Capacity) -> u32 {
        capacity.slots.saturating_sub(self.reserved[worker].slots)
    }

    /// Nothing reserved anywhere.
    pub fn is_idle(&self) -> bool {
        self.busy == 0
    }

    /// Tracks one more worker (index = the previous count), idle.
    pub fn add_worker(&mut self) -> usize {
        self.reserved.push(NOTHING);
        self.reserved.len() - 1
    }

    /// Number of workers tracked.
    pub fn workers(&self) -> usize {
        self.reserved.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An added worker takes the next index, is counted, and starts idle
    /// (mutation testing found these unchecked).
    #[test]
    fn an_added_worker_takes_the_next_index_idle() {
        let mut l = Ledger::new(2);
        assert_eq!(l.workers(), 2);
        assert_eq!(l.add_worker(), 2);
        assert_eq!(l.add_worker(), 3);
        assert_eq!(l.workers(), 4);
        assert_eq!(l.reserved(3), NOTHING);
        assert!(l.is_idle());
    }

    /// A reservation of nothing leaves a worker idle, and idleness is
    /// counted per worker, not per reservation (the proptest in
    /// `tests/ledger_model.rs` walks the rest).
    #[test]
    fn idle_counts_workers_holding_something() {
        let cap = Capacity {
            slots: 4,
            tokens: 40,
            bytes: 0,
        };
        let one = Capacity {
            slots: 1,
            tokens: 5,
            bytes: 0,
        };
        let mut l = Ledger::new(2);
        assert!(l.reserve(0, &cap, &NOTHING));
        assert!(l.is_idle());
        assert!(l.reserve(0, &cap, &one) && l.reserve(0, &cap, &one));
        assert!(l.reserve(1, &cap, &one));
        l.release(0, &one).expect("held");
        l.release(1, &one).expect("held");
        assert!(!l.is_idle(), "worker 0 still holds one");
        assert!(l.release(1, &one).is_err());
        assert!(!l.is_idle(), "a refused release changes nothing");
        l.release(0, &one).expect("held");
        assert!(l.is_idle());
    }
}
