//! The submit gate: closing intake so that no submit slips past shutdown.
//!
//! One word: the top bit says closed, the rest count submits in progress.
//! A submit enters (one `fetch_add`), and if the word was already closed it
//! leaves and refuses; otherwise it publishes its request and leaves. The
//! collector closes (`fetch_or`) and then waits for the count to reach zero:
//! every submit that entered before the close has then published, and every
//! later one sees the closed bit. The RMWs are totally ordered, so there is
//! no third case.

use crate::sync::{AtomicUsize, Ordering};

const CLOSED: usize = 1 << (usize::BITS - 1);

/// The submit gate; see the module docs for the protocol.
pub struct Gate {
    state: AtomicUsize,
}

/// Proof of a successful `enter`; leaving is its drop.
pub struct Pass<'a>(&'a Gate);

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        // Release: the request pushed while inside happens-before the
        // collector's Acquire load that sees the count drop.
        self.0.state.fetch_sub(1, Ordering::Release);
    }
}

impl Default for Gate {
    /// An open gate.
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    /// An open gate.
    pub fn new() -> Self {
        Self {
            state: AtomicUsize::new(0),
        }
    }

    /// Enters, or `None` when closed.
    pub fn enter(&self) -> Option<Pass<'_>> {
        // Acquire: pairs with nothing the collector publishes; Relaxed would
        // do for the count, but Acquire keeps the closed check conservative.
        let prev = self.state.fetch_add(1, Ordering::Acquire);
        let pass = Pass(self);
        if prev & CLOSED != 0 {
            drop(pass);
            return None;
        }
        Some(pass)
    }

    /// Closes; idempotent. Returns whether this call closed it.
    pub fn close(&self) -> bool {
        // AcqRel: totally ordered with `enter`'s RMW (any RMW would be); the
        // Acquire half sees the submits that left before.
        self.state.fetch_or(CLOSED, Ordering::AcqRel) & CLOSED == 0
    }

    /// Whether `close` has run.
    pub fn is_closed(&self) -> bool {
        // Acquire: a caller that sees the close also sees what preceded it.
        self.state.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Whether the gate is closed and every submit that got in has left:
    /// from then on nothing more can be pushed, so one more drain is the
    /// last. An open gate is never drained, however few submits are inside:
    /// the collector reads the shutdown mode before `close` has run, and an
    /// open gate that read as drained let it exit while a submit could
    /// still enter and be accepted with no one left to drain it (the loom
    /// model `the_collector_exits_only_after_every_accepted_submit`).
    pub fn is_drained(&self) -> bool {
        // Acquire: pairs with `Pass::drop`'s Release, so their pushes are
        // visible to the drain that follows.
        self.state.load(Ordering::Acquire) == CLOSED
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Gate;

    #[test]
    fn drained_means_closed_with_no_submit_inside() {
        let gate = Gate::new();
        assert!(!gate.is_drained(), "open: a submit may still come");
        let pass = gate.enter().expect("open");
        assert!(!gate.is_drained());
        assert!(gate.close(), "this call closed it");
        assert!(!gate.close(), "idempotent");
        assert!(!gate.is_drained(), "closed, one submit still inside");
        assert!(gate.enter().is_none(), "closed: refused");
        drop(pass);
        assert!(gate.is_drained());
        assert!(gate.is_closed());
    }
}
