//! Which worker a batch goes to, and why (seed 002's strategies).
//!
//! The head of a batch (its most urgent request) picks the worker; the rest
//! of the batch fills that worker's remaining room. Every decision carries a
//! [`PlacementReason`], an enum, so nothing is formatted on the hot path.
//!
//! | policy | rule |
//! |---|---|
//! | `LeastLoaded` | the worker with the most free slots (ties: lowest index) |
//! | `Priority` | Critical/High: the fastest worker with room; others: least loaded |
//! | `SloAware` | a request whose slack (deadline − now) is under `urgent_slack`: the fastest worker with room; others: least loaded |
//! | `CostOptimized` | the cheapest worker (cost per hour ÷ speed) whose estimated finish meets the deadline; without a deadline, the cheapest |
//! | `Adaptive` | `CostOptimized` while the queue is short, `SloAware` when it is long or urgent work waits, `LeastLoaded` in between; each switch and its cause is counted |
//!
//! The estimated finish of a batch on worker `w` is
//! `(2 if w is busy, else 1) × batch_time / speed(w)`, where `batch_time` is
//! an exponentially weighted mean of measured batch durations at speed 1.

use std::time::Duration;

use crate::config::{Capacity, PlacementPolicy, PlacementReason, WorkerSpec};
use crate::plan::ledger::Ledger;
use crate::priority::Priority;

/// What placement sees of one worker.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// Index in the fleet (and the ledger). Candidates need not be every
    /// worker nor in index order: the collector offers only workers it
    /// still holds, so a fleet that has added and removed many workers
    /// is not scanned in full on every launch.
    pub index: usize,
    /// Its spec (capacity, speed, cost).
    pub spec: &'a WorkerSpec,
    /// Whether it takes new work.
    pub up: bool,
}

/// What placement knows about the batch's head request.
#[derive(Debug, Clone, Copy)]
pub struct Head {
    /// Its level.
    pub level: Priority,
    /// Its cost as capacity.
    pub cost: Capacity,
    /// Time left until its deadline, if it has one.
    pub slack: Option<Duration>,
}

/// Which simpler policy `Adaptive` is running now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdaptiveMode {
    /// Low load: save money.
    Cost,
    /// Moderate load: spread work.
    Balance,
    /// High load or urgent work waiting: protect SLOs.
    Slo,
}

/// Why `Adaptive` switched mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SwitchCause {
    /// Waiting requests exceed `high_water`.
    QueueHigh,
    /// A waiting request's slack fell under `urgent_slack`.
    UrgentWaiting,
    /// Waiting requests fell under `low_water`.
    QueueLow,
    /// Between the water marks with nothing urgent.
    QueueModerate,
}

/// The collector-owned placement state.
#[derive(Debug, Clone)]
pub struct Placer {
    policy: PlacementPolicy,
    /// Slack under which a request counts as urgent.
    pub urgent_slack: Duration,
    /// `Adaptive`: queue length under which it saves cost.
    pub low_water: usize,
    /// `Adaptive`: queue length over which it protects SLOs.
    pub high_water: usize,
    mode: AdaptiveMode,
    switches: u64,
    last_cause: Option<SwitchCause>,
    /// EWMA of batch duration at speed 1, in nanoseconds.
    batch_ns: f64,
}

impl Placer {
    /// A placer for `policy`; water marks in requests.
    pub fn new(
        policy: PlacementPolicy,
        urgent_slack: Duration,
        low_water: usize,
        high_water: usize,
    ) -> Self {
        Self {
            policy,
            urgent_slack,
            low_water,
            high_water,
            mode: AdaptiveMode::Balance,
            switches: 0,
            last_cause: None,
            batch_ns: 1_000_000.0,
        }
    }

    /// Changes the policy and its thresholds (a config reload); the
    /// measured batch time and the switch count carry over.
    pub fn set_policy(
        &mut self,
        policy: PlacementPolicy,
        urgent_slack: Duration,
        low_water: usize,
        high_water: usize,
    ) {
        self.policy = policy;
        self.urgent_slack = urgent_slack;
        self.low_water = low_water;
        self.high_water = high_water;
    }

    /// Records a measured batch duration on a worker of `speed`.
    pub fn observe_batch(&mut self, took: Duration, speed: f64) {
        let at_unit_speed = took.as_nanos() as f64 * speed;
        self.batch_ns = 0.8 * self.batch_ns + 0.2 * at_unit_speed;
    }

    /// The current `Adaptive` mode.
    pub fn mode(&self) -> AdaptiveMode {
        self.mode
    }

    /// How many times `Adaptive` switched, and the cause of the last switch.
    pub fn switches(&self) -> (u64, Option<SwitchCause>) {
        (self.switches, self.last_cause)
    }

    /// `Adaptive`: re-evaluates the mode from the load once per pass.
    pub fn update_load(&mut self, waiting: usize, urgent_waiting: bool) {
        if self.policy != PlacementPolicy::Adaptive {
            return;
        }
        let (mode, cause) = if urgent_waiting {
            (AdaptiveMode::Slo, SwitchCause::UrgentWaiting)
        } else if waiting > self.high_water {
            (AdaptiveMode::Slo, SwitchCause::QueueHigh)
        } else if waiting < self.low_water {
            (AdaptiveMode::Cost, SwitchCause::QueueLow)
        } else {
            (AdaptiveMode::Balance, SwitchCause::QueueModerate)
        };
        if mode != self.mode {
            self.mode = mode;
            self.switches += 1;
            self.last_cause = Some(cause);
        }
    }

    fn urgent(&self, head: &Head) -> bool {
        head.slack.is_some_and(|s| s < self.urgent_slack)
    }

    /// Picks a worker with room for the head, or `None` (shortfall): its
    /// fleet index and why.
    pub fn place(
        &self,
        workers: &[Candidate<'_>],
        ledger: &Ledger,
        head: &Head,
    ) -> Option<(usize, PlacementReason)> {
        self.place_at(workers, ledger, head, |_| true)
            .map(|(at, reason)| (workers[at].index, reason))
    }

    /// As `place`, but names the pick by its position in `workers`, so the
    /// planner reaches its spec without a search, and offers only the
    /// workers `open` admits (the planner's rule against fragments,
    /// `planner::takes_batch`).
    pub(crate) fn place_at(
        &self,
        workers: &[Candidate<'_>],
        ledger: &Ledger,
        head: &Head,
        open: impl Fn(&Candidate<'_>) -> bool,
    ) -> Option<(usize, PlacementReason)> {
        // Ties go to the lower fleet index whatever the candidates' order.
        let fitting = || {
            workers.iter().enumerate().filter(|(_, c)| {
                c.up && ledger.fits(c.index, &c.spec.capacity, &head.cost) && open(c)
            })
        };
        let least_loaded = || {
            fitting()
                .max_by_key(|(_, c)| {
                    (
                        ledger.free_slots(c.index, &c.spec.capacity),
                        std::cmp::Reverse(c.index),
                    )
                })
                .map(|(at, _)| (at, PlacementReason::LeastLoaded))
        };
        let fastest = |reason| {
            fitting()
                .max_by(|(_, a), (_, b)| {
                    a.spec
                        .speed
                        .total_cmp(&b.spec.speed)
                        .then(b.index.cmp(&a.index))
                })
                .map(|(at, _)| (at, reason))
        };
        let cheapest = || {
            let price = |c: &Candidate<'_>| c.spec.cost_per_hour / c.spec.speed;
            let meets = |c: &Candidate<'_>| match head.slack {
                None => true,
                Some(slack) => {
                    let busy = ledger.reserved(c.index).slots > 0;
                    let batches_ahead = if busy { 2.0 } else { 1.0 };
                    let finish_ns = batches_ahead * self.batch_ns / c.spec.speed;
                    finish_ns <= slack.as_nanos() as f64
                }
            };
            fitting()
                .filter(|(_, c)| meets(c))
                .min_by(|(_, a), (_, b)| price(a).total_cmp(&price(b)).then(a.index.cmp(&b.index)))
                .map(|(at, _)| {
                    let reason = if head.slack.is_some() {
                        PlacementReason::CheapestMeetingDeadline
                    } else {
                        PlacementReason::Cheapest
                    };
                    (at, reason)
                })
                // No worker meets the deadline: fall back to the fastest.
                .or_else(|| fastest(PlacementReason::FastestForUrgent))
        };
        match self.policy {
            PlacementPolicy::LeastLoaded => least_loaded(),
            PlacementPolicy::Priority if head.level <= Priority::High => {
                fastest(PlacementReason::FastestForUrgent)
            }
            PlacementPolicy::Priority => least_loaded(),
            PlacementPolicy::SloAware if self.urgent(head) => fastest(PlacementReason::SloUrgent),
            PlacementPolicy::SloAware => least_loaded(),
            PlacementPolicy::CostOptimized => cheapest(),
            PlacementPolicy::Adaptive => match self.mode {
                AdaptiveMode::Cost => cheapest(),
                AdaptiveMode::Balance => least_loaded(),
                AdaptiveMode::Slo if self.urgent(head) || head.level <= Priority::High => {
                    fastest(PlacementReason::SloUrgent)
                }
                AdaptiveMode::Slo => least_loaded(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(slots: u32, speed: f64, cost: f64) -> WorkerSpec {
        WorkerSpec {
            name: "w".into(),
            capacity: Capacity {
                slots,
                tokens: 1000,
                bytes: u64::MAX,
            },
            speed,
            cost_per_hour: cost,
        }
    }

    fn head(level: Priority, slack_ms: Option<u64>) -> Head {
        Head {
            level,
            cost: Capacity {
                slots: 1,
                tokens: 10,
                bytes: 0,
            },
            slack: slack_ms.map(Duration::from_millis),
        }
    }

    /// Fleet: 0 slow+cheap, 1 fast+expensive, 2 medium.
    fn fleet() -> Vec<WorkerSpec> {
        vec![spec(4, 1.0, 1.0), spec(4, 4.0, 10.0), spec(8, 2.0, 3.0)]
    }

    fn candidates(specs: &[WorkerSpec]) -> Vec<Candidate<'_>> {
        specs
            .iter()
            .enumerate()
            .map(|(index, spec)| Candidate {
                index,
                spec,
                up: true,
            })
            .collect()
    }

    fn placer(policy: PlacementPolicy) -> Placer {
        Placer::new(policy, Duration::from_millis(10), 8, 64)
    }

    #[test]
    fn each_policy_picks_by_its_rule() {
        let specs = fleet();
        let ws = candidates(&specs);
        let ledger = Ledger::new(3);
        let urgent = head(Priority::Normal, Some(2));
        let relaxed = head(Priority::Low, None);
        let crit = head(Priority::Critical, None);
        use PlacementReason::*;
        assert_eq!(
            placer(PlacementPolicy::LeastLoaded).place(&ws, &ledger, &relaxed),
            Some((2, LeastLoaded))
        );
        assert_eq!(
            placer(PlacementPolicy::Priority).place(&ws, &ledger, &crit),
            Some((1, FastestForUrgent))
        );
        assert_eq!(
            placer(PlacementPolicy::Priority).place(&ws, &ledger, &relaxed),
            Some((2, LeastLoaded))
        );
        assert_eq!(
            placer(PlacementPolicy::SloAware).place(&ws, &ledger, &urgent),
            Some((1, SloUrgent))
        );
        assert_eq!(
            placer(PlacementPolicy::SloAware).place(&ws, &ledger, &relaxed),
            Some((2, LeastLoaded))
        );
        assert_eq!(
            placer(PlacementPolicy::CostOptimized).place(&ws, &ledger, &relaxed),
            Some((0, Cheapest))
        );
    }

    /// Candidates come in any order (the collector's held workers): the
    /// pick and its ties are by fleet index, not position.
    #[test]
    fn the_order_of_candidates_does_not_change_the_pick() {
        let specs = vec![spec(4, 1.0, 1.0), spec(4, 1.0, 1.0), spec(8, 4.0, 8.0)];
        let mut ws = candidates(&specs);
        ws.reverse();
        let ledger = Ledger::new(3);
        use PlacementReason::*;
        let p = placer(PlacementPolicy::CostOptimized);
        // Workers 0 and 1 tie on price: the lower index wins.
        assert_eq!(
            p.place(&ws, &ledger, &head(Priority::Low, None)),
            Some((0, Cheapest))
        );
        assert_eq!(
            p.place_at(&ws, &ledger, &head(Priority::Low, None), |_| true),
            Some((2, Cheapest))
        );
        assert_eq!(
            placer(PlacementPolicy::Priority).place(&ws, &ledger, &head(Priority::High, None)),
            Some((2, FastestForUrgent))
        );
        let equal = vec![spec(4, 1.0, 1.0); 3];
        let mut ws = candidates(&equal);
        ws.swap(0, 2);
        assert_eq!(
            placer(PlacementPolicy::LeastLoaded).place(&ws, &ledger, &head(Priority::Low, None)),
            Some((0, LeastLoaded))
        );
    }

    #[test]
    fn cost_optimized_takes_the_cheapest_worker_that_meets_the_deadline() {
        let specs = fleet();
        let ws = candidates(&specs);
        let ledger = Ledger::new(3);
        let mut p = placer(PlacementPolicy::CostOptimized);
        // Batches take 4 ms at speed 1: worker 0 needs 4 ms, 2 needs 2 ms, 1 needs 1 ms.
        for _ in 0..50 {
            p.observe_batch(Duration::from_millis(4), 1.0);
        }
        use PlacementReason::*;
        assert_eq!(
            p.place(&ws, &ledger, &head(Priority::Normal, Some(5))),
            Some((0, CheapestMeetingDeadline))
        );
        assert_eq!(
            p.place(&ws, &ledger, &head(Priority::Normal, Some(3))),
            Some((2, CheapestMeetingDeadline))
        );
        assert_eq!(
            p.place(&ws, &ledger, &head(Priority::Normal, Some(1))),
            Some((1, CheapestMeetingDeadline))
        );
        // Nobody meets 0.5 ms: the fastest is the best that can be done.
        assert_eq!(
            p.place(
                &ws,
                &ledger,
                &Head {
                    slack: Some(Duration::from_micros(500)),
                    ..head(Priority::Normal, None)
                }
            ),
            Some((1, FastestForUrgent))
        );
    }

    #[test]
    fn full_or_down_workers_are_skipped_and_none_is_a_shortfall() {
        let specs = fleet();
        let mut ws = candidates(&specs);
        let mut ledger = Ledger::new(3);
        let big = Capacity {
            slots: 4,
            tokens: 10,
            bytes: 0,
        };
        assert!(ledger.reserve(1, &specs[1].capacity, &big));
        ws[2].up = false;
        let p = placer(PlacementPolicy::Priority);
        // Fast worker full, medium down: only the slow one is left.
        assert_eq!(
            p.place(&ws, &ledger, &head(Priority::Critical, None))
                .map(|x| x.0),
            Some(0)
        );
        assert!(ledger.reserve(0, &specs[0].capacity, &big));
        assert_eq!(p.place(&ws, &ledger, &head(Priority::Critical, None)), None);
    }

    #[test]
    fn adaptive_switches_with_load_and_says_why() {
        let specs = fleet();
        let ws = candidates(&specs);
        let ledger = Ledger::new(3);
        let mut p = placer(PlacementPolicy::Adaptive);
        p.update_load(2, false);
        assert_eq!(
            (p.mode(), p.switches()),
            (AdaptiveMode::Cost, (1, Some(SwitchCause::QueueLow)))
        );
        assert_eq!(
            p.place(&ws, &ledger, &head(Priority::Low, None))
                .map(|x| x.0),
            Some(0)
        );
        p.update_load(2, false);
        assert_eq!(p.switches().0, 1, "no switch without a change");
        p.update_load(500, false);
        assert_eq!(
            (p.mode(), p.switches()),
            (AdaptiveMode::Slo, (2, Some(SwitchCause::QueueHigh)))
        );
        assert_eq!(
            p.place(&ws, &ledger, &head(Priority::High, None))
                .map(|x| x.0),
            Some(1)
        );
        p.update_load(20, false);
        assert_eq!(
            (p.mode(), p.switches().1),
            (AdaptiveMode::Balance, Some(SwitchCause::QueueModerate))
        );
        p.update_load(20, true);
        assert_eq!(
            (p.mode(), p.switches().1),
            (AdaptiveMode::Slo, Some(SwitchCause::UrgentWaiting))
        );
    }
}
