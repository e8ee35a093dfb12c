//! A worker host's own admission, the last line of defence: whatever the
//! pool's view (stale during a partition, lost in a Redis restart), a
//! worker never runs more than its capacity. A batch that would exceed it
//! is refused with a typed answer and counted.
//!
//! A mutex, not an atomic protocol: it is taken twice per batch on the
//! host (admit, release), off convoy's hot path, and never held across
//! the batch's run.

use std::sync::Mutex;

/// One worker's capacity and what it runs now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Held {
    /// Requests running.
    pub slots: u64,
    /// Tokens running.
    pub tokens: u64,
}

/// Why a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("worker over capacity: {running:?} running of {capacity:?}, asked {asked:?}")]
pub struct OverCapacity {
    /// What ran when it was asked.
    pub running: Held,
    /// The worker's capacity.
    pub capacity: Held,
    /// What the batch needed.
    pub asked: Held,
}

/// The admission of every worker (lane) of one host.
#[derive(Debug)]
pub struct Admission {
    capacity: Vec<Held>,
    running: Mutex<Vec<Held>>,
}

impl Admission {
    /// Lanes of these capacities, all idle.
    pub fn new(capacity: Vec<Held>) -> Self {
        let running = Mutex::new(vec![Held::default(); capacity.len()]);
        Self { capacity, running }
    }

    /// Admits `asked` on `lane`, or refuses it: nothing is admitted that
    /// would take the lane over its capacity.
    ///
    /// ```
    /// use convoy_cluster::admission::{Admission, Held};
    /// let a = Admission::new(vec![Held { slots: 4, tokens: 100 }]);
    /// let two = Held { slots: 2, tokens: 40 };
    /// assert!(a.admit(0, two).is_ok() && a.admit(0, two).is_ok());
    /// assert!(a.admit(0, Held { slots: 1, tokens: 1 }).is_err());
    /// a.release(0, two);
    /// assert!(a.admit(0, Held { slots: 1, tokens: 1 }).is_ok());
    /// ```
    pub fn admit(&self, lane: usize, asked: Held) -> Result<(), OverCapacity> {
        let capacity = self.capacity[lane];
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let now = running[lane];
        if now.slots + asked.slots > capacity.slots || now.tokens + asked.tokens > capacity.tokens {
            return Err(OverCapacity {
                running: now,
                capacity,
                asked,
            });
        }
        running[lane] = Held {
            slots: now.slots + asked.slots,
            tokens: now.tokens + asked.tokens,
        };
        Ok(())
    }

    /// Gives back what an admitted batch held.
    pub fn release(&self, lane: usize, held: Held) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let r = &mut running[lane];
        r.slots = r.slots.saturating_sub(held.slots);
        r.tokens = r.tokens.saturating_sub(held.tokens);
    }

    /// What each lane runs now.
    pub fn running(&self) -> Vec<Held> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Each lane's capacity.
    pub fn capacity(&self) -> &[Held] {
        &self.capacity
    }

    /// How many lanes.
    pub fn lanes(&self) -> usize {
        self.capacity.len()
    }
}
