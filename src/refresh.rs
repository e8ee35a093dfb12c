//! Fresh copies on demand from single-owner recorders.
//!
//! Each SLA recorder belongs to one thread (the collector, a worker) and
//! publishes a copy of itself now and then (see `sla.rs`). A report that
//! only read those copies could miss what a caller has just seen happen:
//! a request whose `wait()` returned a moment ago. So a report first
//! **asks**: it bumps a generation. Every recorder checks the generation
//! at its loop points (one Relaxed load), and when it sees a new one it
//! publishes and **answers** that generation. The report waits, bounded,
//! until every live recorder has answered, then reads the copies.
//!
//! Why an answer covers everything the caller saw: a recorder records a
//! request before its next loop point, and a recorder's load of the
//! generation that comes before it completed a ticket cannot see an ask
//! made after the caller observed that ticket (the ask happens-after the
//! completion, and a load never reads a write that happens after it). So
//! the loop point that answers the ask comes after the record.
//!
//! | field      | written by | read by | meaning |
//! |------------|------------|---------|---------|
//! | `wanted`   | reports (`fetch_add`) | recorders | the newest generation asked for |
//! | `answered` | its recorder (Release) | reports (Acquire) | the newest generation this recorder published for |
//! | `live`     | its recorder, once, on drop (Release) | reports (Acquire) | false: the final copy is out, do not wait |
//! | `busy`     | its recorder (Relaxed) | reports (Relaxed) | inside a call that may run long (a batch): answers only after it |
//!
//! `busy` is a hint that carries no data: it only tells a report how long
//! to wait. A recorder between batches answers at its next loop point, so
//! a report waits for it as long as the OS takes to run its thread (up to
//! a generous cap); one inside a batch may take as long as the batch, so a
//! report waits for it only briefly and reads its last copy. A stale
//! `false` makes a report wait longer, a stale `true` shorter; neither
//! changes what an answer covers.

use crate::sync::{AtomicBool, AtomicU64, Ordering};

/// The generation asked for, shared by every recorder of one runtime
/// (`Default` is a refresh nobody has asked for yet).
#[derive(Debug, Default)]
pub struct Refresh {
    wanted: AtomicU64,
}

impl Refresh {
    /// Asks every recorder for a fresh copy; returns the generation to
    /// wait for.
    pub fn ask(&self) -> u64 {
        // Relaxed: the ask carries no data. What makes the answer cover the
        // caller's past is the argument in the module docs (coherence),
        // and the data travels through `answered`'s Release/Acquire.
        self.wanted.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The newest generation asked for (a recorder's check per loop point).
    pub fn wanted(&self) -> u64 {
        // Relaxed: a hint to publish; seeing it late only delays the answer.
        self.wanted.load(Ordering::Relaxed)
    }
}

/// One recorder's answers, shared between it and the reports.
#[derive(Debug)]
pub struct Answers {
    answered: AtomicU64,
    live: AtomicBool,
    busy: AtomicBool,
}

impl Default for Answers {
    fn default() -> Self {
        Self::new()
    }
}

impl Answers {
    /// A live recorder that has answered nothing.
    pub fn new() -> Self {
        Self {
            answered: AtomicU64::new(0),
            live: AtomicBool::new(true),
            busy: AtomicBool::new(false),
        }
    }

    /// The recorder enters (`true`) or leaves (`false`) a call that may run
    /// long and during which it cannot answer.
    pub fn set_busy(&self, busy: bool) {
        // Relaxed: a hint for how long a report waits (module docs).
        self.busy.store(busy, Ordering::Relaxed);
    }

    /// Whether the recorder said it is inside a long call.
    pub fn is_busy(&self) -> bool {
        // Relaxed: see `set_busy`.
        self.busy.load(Ordering::Relaxed)
    }

    /// The recorder published a copy that answers `generation`.
    pub fn answer(&self, generation: u64) {
        // Release: the copy published before this store is what a report
        // that Acquires the answer reads.
        self.answered.store(generation, Ordering::Release);
    }

    /// The recorder published its final copy and will never answer again.
    pub fn retire(&self) {
        // Release: as for `answer`, for the final copy.
        self.live.store(false, Ordering::Release);
    }

    /// Whether a report may stop waiting for this recorder.
    pub fn has_answered(&self, generation: u64) -> bool {
        // Acquire, pairing with `answer` and `retire`.
        !self.live.load(Ordering::Acquire) || self.answered.load(Ordering::Acquire) >= generation
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_report_waits_for_live_recorders_only() {
        let refresh = Refresh::default();
        let (a, b) = (Answers::new(), Answers::new());
        assert_eq!(refresh.wanted(), 0);
        let g = refresh.ask();
        assert_eq!((g, refresh.wanted()), (1, 1));
        assert!(!a.has_answered(g) && !b.has_answered(g));
        a.answer(g);
        b.retire();
        assert!(a.has_answered(g) && b.has_answered(g));
        let g2 = refresh.ask();
        assert!(
            !a.has_answered(g2),
            "an old answer does not cover a new ask"
        );
        assert!(b.has_answered(g2), "a retired recorder is never waited for");
        assert!(!a.is_busy());
        a.set_busy(true);
        assert!(a.is_busy() && !a.has_answered(g2), "busy is not an answer");
    }
}
