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

    /// Whether a generation newer than `answered` was asked for: the
    /// collector's sleep re-check (`control::Watch`), so that a report's
    /// ask that rang before the collector announced its sleep is not left
    /// to the sleep's timeout. Relaxed (in `wanted`): the doorbell's fences
    /// order it against the announcement.
    pub fn asked_after(&self, answered: u64) -> bool {
        self.wanted() > answered
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

    /// Recorder, at a loop point: if `refresh` asked for a generation newer
    /// than `answered`, runs `publish` (the copy a report will read), then
    /// answers that generation and records it in `answered`. Returns
    /// whether it answered.
    ///
    /// The order is the protocol, which is why it lives here and not in
    /// each recorder: an answer stored before the copy lets a report that
    /// sees it read the copy before, without a request its caller has seen
    /// finish. The loom model `refresh_answer_covers_what_the_asker_saw`
    /// runs this method.
    pub fn answer_if_asked(
        &self,
        refresh: &Refresh,
        answered: &mut u64,
        publish: impl FnOnce(),
    ) -> bool {
        let wanted = refresh.wanted();
        if wanted <= *answered {
            return false;
        }
        publish();
        *answered = wanted;
        self.answer(wanted);
        true
    }

    /// Recorder, as it goes: runs `publish_final` (the final copy), then
    /// retires, so reports stop waiting for it. What `publish_final`
    /// returns is handed back after the retire (the SLA recorder returns
    /// its registry's guard, so it retires still under the lock).
    ///
    /// As with [`answer_if_asked`](Self::answer_if_asked), the order is
    /// the protocol: retired first, a report could stop waiting and read
    /// the stale copy and miss a count. The loom model
    /// `refresh_retired_recorder_covers_what_the_asker_saw` runs this
    /// method, so that order fails it.
    pub fn retire_after<R>(&self, publish_final: impl FnOnce() -> R) -> R {
        let held = publish_final();
        self.retire();
        held
    }

    /// The recorder published a copy that answers `generation` (only
    /// through `answer_if_asked`, after the copy).
    fn answer(&self, generation: u64) {
        // Release: the copy published before this store is what a report
        // that Acquires the answer reads.
        self.answered.store(generation, Ordering::Release);
    }

    /// The recorder published its final copy and will never answer again
    /// (only through `retire_after`, after the copy).
    fn retire(&self) {
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
        assert!(refresh.asked_after(0) && !refresh.asked_after(g));
        let (mut answered, mut published) = (0, 0);
        assert!(a.answer_if_asked(&refresh, &mut answered, || published += 1));
        assert_eq!((answered, published), (g, 1), "published, then answered");
        assert!(
            !a.answer_if_asked(&refresh, &mut answered, || published += 1),
            "one answer per generation"
        );
        assert_eq!(published, 1, "no copy without a new ask");
        assert_eq!(b.retire_after(|| 7), 7, "the final copy's value comes back");
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
