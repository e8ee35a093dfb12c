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
//! pattern). So the re-check, [`Watch::news`], reads [`Notice::is_marked`],
//! and, for a shutdown, the gate that `stop` closes before it rings. Before the
//! re-check read the control notice, a worker added or a capacity raised
//! between a pass and its sleep waited out the sleep's timeout (up to
//! 50 ms) while requests it could serve queued. The loom
//! models `a_control_change_during_the_collectors_pass_wakes_it` (with its
//! four neighbours, one per message `Watch` reads) and
//! `the_collector_exits_only_after_every_accepted_submit` run this code.
//!
//! One message goes the other way, the levels the collector tells submit
//! to refuse while its queue runs late (`shed.rs`).

use crate::intake::gate::Gate;
use crate::observe::refresh::Refresh;
use crate::runtime::clearing::Clearing;
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

/// What the collector's sleep re-checks besides new requests and
/// releases: each message another thread stores and then rings for.
/// `Doorbell::sleep` runs [`Watch::news`] after announcing the sleep, so a
/// ring that landed before the announcement still keeps the collector
/// awake (the Dekker pattern in `doorbell.rs`). A message missing here
/// waits out the sleep's timeout, up to 50 ms.
///
/// It is a struct of its own, rather than lines in the collector's sleep,
/// so that the loom models (`a_control_change_during_the_collectors_pass_wakes_it`
/// and its neighbours) run the collector's own re-check; `weaken.sh`
/// removes its lines one at a time and each model then deadlocks.
pub struct Watch<'a> {
    /// `add_worker`, `set_capacity`, `reload_config`…: their notice.
    pub changed: &'a Notice,
    /// `clear_waiting`'s ask.
    pub clearing: &'a Clearing,
    /// An SLA report's refresh asks, and the generation the collector's
    /// recorder last answered.
    pub refresh: (&'a Refresh, u64),
    /// A refused submit's sweep hint, watched only once a sweep may
    /// start: before that it would wake the collector for nothing, again
    /// and again, and the sleep's timeout is set to cover it.
    pub sweep: Option<&'a Notice>,
    /// The gate `stop` closes before it rings, watched by a pass that read
    /// the mode as running. A shutdown that began after that read is then
    /// seen at once, and the pass that follows drains (without it, `stop`'s
    /// ring could land before the announcement, and a shutdown wait out
    /// the collector's sleep).
    pub gate: Option<&'a Gate>,
}

impl Watch<'_> {
    /// Whether any message is waiting for the collector's next pass. The
    /// reads need no ordering of their own (they are Relaxed but for the
    /// gate's Acquire, which its other callers want): the doorbell's SeqCst
    /// fences order them against the announcement, and the pass that
    /// follows reads the data with the orderings that carry it.
    pub fn news(&self) -> bool {
        self.changed.is_marked()
            || self.clearing.is_asked()
            || self.refresh.0.asked_after(self.refresh.1)
            || self.sweep.is_some_and(Notice::is_marked)
            || self.gate.is_some_and(Gate::is_closed)
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

    /// Each message the watch reads wakes it alone, and a quiet runtime
    /// has no news.
    #[test]
    fn each_message_is_news() {
        let (changed, sweep, clearing) = (Notice::new(), Notice::new(), Clearing::new());
        let (refresh, gate) = (Refresh::default(), Gate::new());
        let watch = |sweeping: bool, running: bool| Watch {
            changed: &changed,
            clearing: &clearing,
            refresh: (&refresh, 0),
            sweep: sweeping.then_some(&sweep),
            gate: running.then_some(&gate),
        };
        assert!(!watch(true, true).news(), "nothing told, no news");
        changed.mark();
        assert!(watch(false, false).news(), "a control change");
        changed.take();
        sweep.mark();
        assert!(
            watch(true, false).news(),
            "a sweep hint, once a sweep may start"
        );
        assert!(!watch(false, false).news(), "and not before");
        sweep.take();
        gate.close();
        assert!(watch(false, true).news(), "a close, to a running pass");
        assert!(!watch(false, false).news(), "not to a closing one");
        refresh.ask();
        assert!(watch(false, false).news(), "a report's refresh ask");
        let answered = Watch {
            refresh: (&refresh, refresh.wanted()),
            ..watch(false, false)
        };
        assert!(!answered.news(), "an answered ask is no news");
        clearing.ask_later();
        assert!(answered.news(), "a clear's ask");
    }
}
