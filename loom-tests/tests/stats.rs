//! loom models of the statistics snapshot (`convoy::Stats`) on the real
//! code: the runtime's counters are read before the intake's, each pair
//! joined by a Release count and an Acquire read.
#![cfg(loom)]

use convoy::intake::{Intake, IntakeConfig, IntakeConsumer};
use convoy::loom_exports::{Counters, Ended};
use convoy::{InsertPolicy, Priority};
use loom::sync::Arc;
use loom::thread;

/// The collector's part: launch the High request it finds, if any, through
/// the runtime's own `Counters::launched` (room back, then the batch
/// counted), then count it ended as the worker does.
fn launch_one(mut collector: IntakeConsumer<u32>, c: Arc<Counters>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut out = Vec::new();
        collector.drain_priority(Priority::High, 1, &mut out);
        for d in out {
            c.launched(&mut collector, [d.admission], 1);
            c.ended(Priority::High, Ended::Completed, 1);
        }
    })
}

/// A submit races its launch and a snapshot. In every snapshot the
/// outcomes are ≤ inserted, and a counted batch's room is back (a caller
/// who saw the batch counted and submits finds the room). Reading the
/// intake first breaks the first; counting the batch before giving its
/// room back, or either count Relaxed, breaks one of them.
#[test]
fn a_snapshot_sees_the_insert_before_an_outcome_and_the_room_after_a_batch() {
    loom::model(|| {
        let (intake, collector) = Intake::<u32>::new(IntakeConfig {
            shards: 1,
            lane_capacity: 1,
        })
        .unwrap();
        let counters = Arc::new(Counters::new());
        let producer = intake.clone();
        let submit = thread::spawn(move || {
            producer
                .push(Priority::High, 1, InsertPolicy::Enqueue)
                .unwrap();
        });
        let launch = launch_one(collector, counters.clone());
        let s = counters.snapshot(|| intake.stats());
        let high = s.of(Priority::High);
        assert!(high.ended() <= high.inserted, "{high:?}");
        if s.batches == 1 {
            assert_eq!(high.queue_depth, 0, "a counted batch's room is back");
        }
        submit.join().unwrap();
        launch.join().unwrap();
    });
}

/// A launch races an all-or-nothing High + Low pair that rolls back while
/// Low is full, voiding its High placeholder when it got one, and a
/// snapshot: `inserted`
/// subtracts a void only with the claim it voids, so the outcome counted
/// stays ≤ inserted. Subtracting the void first, or raising it Relaxed,
/// breaks that.
///
/// Bounded to 3 preemptions: unbounded, the all-or-nothing push's
/// reservation and placeholders take loom past ten minutes. Two are what
/// the interleaving that breaks it needs (the launch run ahead of the
/// snapshot, the snapshot preempted between its two intake loads).
#[test]
fn a_rolled_back_batch_never_makes_outcomes_exceed_inserts() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(3);
    model.check(|| {
        let (intake, collector) = Intake::<u32>::new(IntakeConfig {
            shards: 1,
            lane_capacity: 1,
        })
        .unwrap();
        // Low is full and stays so: the collector only drains High. The
        // pair's High part finds room only once the High request submitted
        // here has launched: then it claims a slot and voids it.
        intake
            .push(Priority::Low, 90, InsertPolicy::Enqueue)
            .unwrap();
        intake
            .push(Priority::High, 1, InsertPolicy::Enqueue)
            .unwrap();
        let counters = Arc::new(Counters::new());
        let producer = intake.clone();
        let submits = thread::spawn(move || {
            let pair = producer.push_batch(
                vec![(Priority::High, 2), (Priority::Low, 3)],
                InsertPolicy::AllOrNothing,
            );
            assert!(pair.is_err(), "Low is full: the pair rolls back");
        });
        let launch = launch_one(collector, counters.clone());
        let s = counters.snapshot(|| intake.stats());
        let high = s.of(Priority::High);
        assert!(high.ended() <= high.inserted, "{high:?}");
        submits.join().unwrap();
        launch.join().unwrap();
    });
}
