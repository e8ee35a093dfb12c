//! The intake under real threads: nothing lost, nothing duplicated, the
//! bound held, and per-producer order within a lane.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use convoy::intake::{Intake, IntakeConfig};
use convoy::{InsertPolicy, Priority};

#[test]
fn producers_and_collector_lose_nothing_and_respect_the_bound() {
    const N: u64 = 4;
    const M: u64 = 20_000;
    let cfg = IntakeConfig {
        shards: 2,
        lane_capacity: 16,
    };
    let (intake, mut collector) = Intake::<u64>::new(cfg).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..N)
        .map(|p| {
            let intake = intake.clone();
            std::thread::spawn(move || {
                let mut rejected = 0u64;
                for s in 0..M {
                    let prio = Priority::ALL[(s % 5) as usize];
                    let mut item = p << 32 | s;
                    loop {
                        match intake.push(prio, item, InsertPolicy::Enqueue) {
                            Ok(()) => break,
                            Err(full) => {
                                assert_eq!(full.priority, prio);
                                item = full.item;
                                rejected += 1;
                                std::thread::yield_now();
                            }
                        }
                    }
                }
                rejected
            })
        })
        .collect();
    let watcher = {
        let intake = intake.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let s = intake.stats();
                for p in Priority::ALL {
                    assert!(s.of(p).depth <= s.capacity_per_priority, "bound exceeded");
                }
                std::thread::yield_now();
            }
        })
    };
    let mut seen = HashSet::new();
    // Per (producer, lane): the last sequence number seen, to check FIFO
    // within a lane.
    let mut last = std::collections::HashMap::new();
    let mut out = Vec::new();
    let mut held = Vec::new();
    while (seen.len() as u64) < N * M {
        let drained = collector.drain(64, &mut out);
        for d in out.drain(..) {
            let (p, s) = (d.item >> 32, d.item & 0xffff_ffff);
            assert!(seen.insert(d.item), "duplicate {p}:{s}");
            let key = (p, d.admission.shard(), d.admission.priority());
            if let Some(prev) = last.insert(key, s) {
                assert!(s > prev, "lane FIFO broken for producer {p}");
            }
            held.push(d.admission);
        }
        // Release in bursts, as a collector does when batches launch.
        if held.len() >= 32 || drained == 0 {
            collector.release_all(held.drain(..));
        }
        std::thread::yield_now();
    }
    let rejected: u64 = producers.into_iter().map(|h| h.join().unwrap()).sum();
    done.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    for a in held.drain(..) {
        collector.release(a);
    }
    let stats = intake.stats();
    assert_eq!(stats.inserted(), N * M);
    assert_eq!(stats.rejected_full(), rejected);
    assert_eq!(stats.depth(), 0, "every admission released");
    assert!(!collector.has_pending());
}
