//! loom models of `convoy::intake` on the real code: the lane bound is the
//! ring's deferred free, and an all-or-nothing batch rolls back with
//! placeholders.
#![cfg(loom)]

use convoy::intake::{Intake, IntakeConfig};
use convoy::{InsertPolicy, Priority};
use loom::thread;

/// On lanes of one slot, an all-or-nothing pair (High + Low) races a single
/// Low push while the collector drains and releases. The pair goes in whole
/// or not at all; a rolled-back pair's placeholder is never handed out; every
/// accepted item is drained exactly once; and after the final release the
/// intake is empty.
#[test]
fn all_or_nothing_rollback_races_push_and_release() {
    loom::model(|| {
        let (intake, mut collector) = Intake::<u32>::new(IntakeConfig {
            shards: 1,
            lane_capacity: 1,
        })
        .unwrap();
        let a = intake.clone();
        let pair = thread::spawn(move || {
            a.push_batch(
                vec![(Priority::High, 10), (Priority::Low, 11)],
                InsertPolicy::AllOrNothing,
            )
            .is_ok()
        });
        let b = intake.clone();
        let single =
            thread::spawn(move || b.push(Priority::Low, 20, InsertPolicy::Enqueue).is_ok());
        // loom does not run a freshly spawned thread ahead of this one's next
        // atomic access on its own; a yield lets it, so the drain below can
        // meet the pushes half done.
        thread::yield_now();
        let mut got = Vec::new();
        let mut out = Vec::new();
        collector.drain(4, &mut out);
        for d in out.drain(..) {
            got.push(d.item);
            collector.release(d.admission);
        }
        let pair_in = pair.join().unwrap();
        let single_in = single.join().unwrap();
        collector.drain(4, &mut out);
        for d in out.drain(..) {
            got.push(d.item);
            collector.release(d.admission);
        }
        let mut want = Vec::new();
        if pair_in {
            want.extend([10, 11]);
        }
        if single_in {
            want.push(20);
        }
        got.sort_unstable();
        assert_eq!(got, want, "accepted items, each exactly once, nothing else");
        assert!(pair_in || single_in, "one of them always fits");
        assert_eq!(intake.stats().depth(), 0, "everything released");
    });
}
