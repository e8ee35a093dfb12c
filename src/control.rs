//! What other threads tell the collector between its passes: the run mode
//! (`shutdown` and `shutdown_now` raise it), and one-bit [`Notice`]s: that
//! the fleet or the knobs changed (`add_worker`, `remove_worker`,
//! `set_health`, `set_capacity`, `reload_config`), or that a submit was
//! refused and a sweep for cancelled requests is wanted.
//!
//! The collector reads each once per pass (the sweep notice only once a
//! sweep may start), so a control operation takes effect on the pass after
//! it. Each sender then rings the doorbell. That ring wakes a collector
//! that has announced its sleep; one that has not yet announced it must
//! find the news in its re-check before parking (`Doorbell::sleep`'s Dekker
//! pattern). So the re-check reads [`Notice::is_marked`], and, for a
//! shutdown, the gate that `stop` closes before it rings. Before the
//! re-check read the control notice, a worker added or a capacity raised
//! between a pass and its sleep waited out the sleep's timeout (up to
//! 50 ms) while requests it could serve queued. The loom
//! models `a_control_change_during_the_collectors_pass_wakes_it` and
//! `the_collector_exits_only_after_every_accepted_submit` run this code.
//!
//! One message goes the other way, the levels the collector tells submit
//! to refuse while its queue runs late (`shed.rs`).

use crate::sync::{AtomicBool, AtomicUsize, Ordering};

/// How far a shutdown has gone. The order matters: a stronger mode is
/// never lowered (an abort asked during a drain stays an abort).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RunMode {
    /// Accepting and serving.
    Running = 0,
    /// `shutdown`: intake closed; what was accepted finishes within the
    /// shutdown timeout.
    Draining = 1,
    /// `shutdown_now` or a drop: what waits fails at once.
    Aborting = 2,
}

/// The run mode, raised by the control path and read by the collector.
pub struct Mode {
    /// A `RunMode` as its discriminant; only ever raised.
    state: AtomicUsize,
}

impl Default for Mode {
    /// Running.
    fn default() -> Self {
        Self::new()
    }
}

impl Mode {
    /// Running.
    pub fn new() -> Self {
        Self {
            state: AtomicUsize::new(RunMode::Running as usize),
        }
    }

    /// Raises the mode to `to`, or leaves a stronger one in place.
    pub fn raise(&self, to: RunMode) {
        // One RMW, so concurrent raises are totally ordered and the
        // strongest wins. AcqRel (with `get`'s Acquire) is not load-bearing
        // for the drain: the gate, closed right after, carries that hand-off,
        // and the model `the_collector_exits_only_after_every_accepted_submit`
        // passes with both Relaxed. It is kept so a collector that sees the
        // mode also sees what the stopping thread did before it.
        self.state.fetch_max(to as usize, Ordering::AcqRel);
    }

    /// The mode now.
    pub fn get(&self) -> RunMode {
        // Acquire: see `raise`.
        match self.state.load(Ordering::Acquire) {
            0 => RunMode::Running,
            1 => RunMode::Draining,
            _ => RunMode::Aborting,
        }
    }
}

/// A one-bit message to the collector ("the fleet or the knobs changed",
/// "a sweep is wanted"): a sender marks it after storing what it refers
/// to and before ringing; the collector takes it once per pass, and its
/// sleep re-check reads it.
pub struct Notice {
    flag: AtomicBool,
}

impl Default for Notice {
    /// Nothing to tell.
    fn default() -> Self {
        Self::new()
    }
}

impl Notice {
    /// Nothing to tell.
    pub fn new() -> Self {
        Self {
            flag: AtomicBool::new(false),
        }
    }

    /// Sender: called after what the notice refers to is stored (the fleet
    /// or knobs swapped, a new worker's link pushed) and before the
    /// doorbell rings.
    pub fn mark(&self) {
        // Release: what was stored before this happens-before the
        // collector's Acquire `take` that sees the mark. (The sweep notice
        // carries no data; for it the ordering is only not in the way.)
        self.flag.store(true, Ordering::Release);
    }

    /// Collector, once per pass before it reads what the notice refers
    /// to: whether it was marked, clearing the mark.
    pub fn take(&self) -> bool {
        // Relaxed load first: the common case (nothing changed) writes
        // nothing to the line. Acquire on the swap pairs with `mark`.
        self.flag.load(Ordering::Relaxed) && self.flag.swap(false, Ordering::Acquire)
    }

    /// Collector's sleep re-check: a mark it has not taken yet. Nothing is
    /// read through it (the next pass `take`s), so Relaxed; the doorbell's
    /// SeqCst fences order it against the announcement.
    pub fn is_marked(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_mode_only_rises() {
        let m = Mode::new();
        assert_eq!(m.get(), RunMode::Running);
        m.raise(RunMode::Draining);
        assert_eq!(m.get(), RunMode::Draining);
        m.raise(RunMode::Aborting);
        m.raise(RunMode::Draining);
        m.raise(RunMode::Running);
        assert_eq!(m.get(), RunMode::Aborting, "an abort is never lowered");
    }

    #[test]
    fn a_mark_is_taken_once() {
        let c = Notice::new();
        assert!(!c.is_marked() && !c.take());
        c.mark();
        c.mark();
        assert!(c.is_marked());
        assert!(c.take());
        assert!(
            !c.is_marked() && !c.take(),
            "two marks before a pass are one change"
        );
    }
}
