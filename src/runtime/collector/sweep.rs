//! The sweep for cancelled requests: a dropped ticket's room is freed
//! within `SWEEP_EVERY` even while its turn in the order is far off, at a
//! bounded share of the collector's time.

use std::time::{Duration, Instant};

use super::Collector;
use crate::clock::after;
use crate::observe::stats::Ended;
use crate::outcome::Failure;

/// Slots of the waiting set a sweep for cancelled requests looks at per
/// pass: bounds the pass's extra work (one ticket-state load per slot).
const SWEEP_STEP: usize = 1024;

/// How often a collector with requests waiting sweeps for cancelled ones:
/// how long a dropped ticket's room may stay taken while its turn does not
/// come (every worker busy, or a batch still filling under a long queue
/// delay). A sweep costs one ticket-state load per waiting request.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Sweeps take at most about one part in `SWEEP_SHARE` of the collector's
/// time: each waits this many times the last one's cost after it ended.
const SWEEP_SHARE: u32 = 100;

impl<I: Send + 'static, O: Send + 'static> Collector<I, O> {
    /// A cancelled request keeps its room until its turn comes in the
    /// order, and that turn may be far off: every worker busy, or a batch
    /// filling under a long `max_queue_delay`. So the collector sweeps its
    /// waiting set for requests nobody waits for, `SWEEP_STEP` slots a
    /// pass, ending them as cancelled and freeing their room (a dedup group
    /// sheds its cancelled members and launches for the rest). A sweep
    /// starts when a submit was refused for a full queue, where the room is
    /// wanted now, and otherwise every `SWEEP_EVERY` while anything waits;
    /// either way no sooner than `SWEEP_SHARE` times the last sweep's cost
    /// after it, since under sustained overload submits are refused all the
    /// time and back-to-back sweeps of a deep set would take a share of the
    /// collector's time for nothing.
    pub(super) fn sweep_step(&mut self, now: Instant) {
        if self.sweep.is_none() && self.sweep_due(now) {
            self.sweep = Some(0);
            self.sweep_started = now;
            self.sweep_spent = Duration::ZERO;
        }
        let Some(from) = self.sweep else {
            return;
        };
        let stepping = Instant::now();
        let mut swept = Vec::new();
        let mut shed = Vec::new();
        self.sweep = self.planner.take_where(
            from,
            SWEEP_STEP,
            |(job, admission)| {
                job.shed_members(admission, &mut shed, |c, _| c.is_cancelled());
                job.completer.is_cancelled()
            },
            &mut swept,
        );
        self.end_followers(shed, Failure::Cancelled, Ended::Cancelled);
        self.end_unlaunched(swept, Failure::Cancelled, Ended::Cancelled);
        let done = Instant::now();
        self.sweep_spent += done.saturating_duration_since(stepping);
        if self.sweep.is_none() {
            self.sweep_allowed = after(done, self.sweep_spent.saturating_mul(SWEEP_SHARE));
        }
    }

    /// Whether a sweep should start now (taking the refusal hint if so).
    pub(super) fn sweep_due(&self, now: Instant) -> bool {
        if now < self.sweep_allowed {
            return false;
        }
        let refused = self.shared.sweep_wanted.take();
        refused
            || (!self.planner.is_empty()
                && now.saturating_duration_since(self.sweep_started) >= SWEEP_EVERY)
    }
}
