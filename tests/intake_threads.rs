//! The intake under real threads: nothing lost, nothing duplicated, the
//! bound held, and per-producer order within a lane.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use convoy::intake::{Intake, IntakeConfig};
use convoy::{InsertPolicy, Priority};

#[test]
fn producers_and_collector_lose_nothing_and_respect_the_bound() {
    lose_nothing_and_respect_the_bound(2, 0);
}

/// The same with two of the four producers owning a shard each (plain-store
/// claims, spilling into the shared shards when their own lane is full)
/// while the other two push shared around them.
#[test]
fn exclusive_and_shared_producers_lose_nothing_and_respect_the_bound() {
    lose_nothing_and_respect_the_bound(4, 2);
}

fn lose_nothing_and_respect_the_bound(shards: usize, exclusive: u64) {
    const N: u64 = 4;
    // Under Miri every operation is interpreted: a few hundred there.
    const M: u64 = if cfg!(miri) { 80 } else { 20_000 };
    let cfg = IntakeConfig {
        shards,
        lane_capacity: 16,
    };
    let (intake, mut collector) = Intake::<u64>::new(cfg).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..N)
        .map(|p| {
            let intake = intake.clone();
            std::thread::spawn(move || {
                let mut own = (p < exclusive).then(|| intake.exclusive().expect("a free shard"));
                let mut rejected = 0u64;
                for s in 0..M {
                    let prio = Priority::ALL[(s % 5) as usize];
                    let mut item = p << 32 | s;
                    loop {
                        let pushed = match own.as_mut() {
                            Some(own) => own.push(prio, item, InsertPolicy::Enqueue),
                            None => intake.push(prio, item, InsertPolicy::Enqueue),
                        };
                        match pushed {
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

/// All-or-nothing batches across levels race single pushes on tiny lanes, so
/// batches roll back and leave placeholders in the rings. The Low lanes
/// start full and the collector waits until every producer has tried a few
/// batches, so rollbacks happen whatever the scheduling. An accepted batch
/// arrives whole; a refused one never shows up, not even in part; no
/// placeholder is ever drained; every accepted item arrives exactly once;
/// and after the last release the intake is empty.
#[test]
fn all_or_nothing_batches_race_singles_and_rollbacks_never_leak() {
    const N: u64 = 3;
    const BATCHES: u64 = if cfg!(miri) { 30 } else { 3_000 };
    let (intake, mut collector) = Intake::<u64>::new(IntakeConfig {
        shards: 2,
        lane_capacity: 4,
    })
    .unwrap();
    // Fill both Low lanes (2 shards × 4): every batch needs Low room.
    let prefill: Vec<u64> = (0..8).map(|i| 1 << 60 | i).collect();
    for &v in &prefill {
        intake
            .push(Priority::Low, v, InsertPolicy::Enqueue)
            .unwrap();
    }
    let tried = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let producers: Vec<_> = (0..N)
        .map(|p| {
            let intake = intake.clone();
            let tried = tried.clone();
            std::thread::spawn(move || {
                // Item = producer << 40 | batch << 8 | index; index 255 is a
                // single push.
                let tag = |b: u64, i: u64| p << 40 | b << 8 | i;
                let mut accepted = Vec::new();
                let mut refused_batches = 0u64;
                for b in 0..BATCHES {
                    let batch = vec![
                        (Priority::High, tag(b, 0)),
                        (Priority::Low, tag(b, 1)),
                        (Priority::Low, tag(b, 2)),
                        (Priority::Critical, tag(b, 3)),
                    ];
                    match intake.push_batch(batch.clone(), InsertPolicy::AllOrNothing) {
                        Ok(n) => {
                            assert_eq!(n, 4);
                            accepted.extend(batch.iter().map(|(_, v)| *v));
                        }
                        Err(e) => {
                            assert_eq!(e.inserted, 0, "all or nothing");
                            assert_eq!(e.rejected, batch, "handed back whole, in order");
                            refused_batches += 1;
                        }
                    }
                    if intake
                        .push(Priority::Low, tag(b, 255), InsertPolicy::Enqueue)
                        .is_ok()
                    {
                        accepted.push(tag(b, 255));
                    }
                    tried.fetch_add(1, Ordering::Relaxed);
                    std::thread::yield_now();
                }
                (accepted, refused_batches)
            })
        })
        .collect();
    while tried.load(Ordering::Relaxed) < 3 * N {
        std::thread::yield_now();
    }
    let mut drained = Vec::new();
    let mut out = Vec::new();
    let mut held = Vec::new();
    let mut accepted = prefill;
    let mut refused = 0;
    let mut producers = Some(producers);
    loop {
        let n = collector.drain(16, &mut out);
        for d in out.drain(..) {
            drained.push(d.item);
            held.push(d.admission);
        }
        if held.len() >= 8 || n == 0 {
            collector.release_all(held.drain(..));
        }
        if n == 0 {
            match producers.take() {
                // Joined: every push they made happens before this drain
                // (`is_finished` alone would not order it; under Miri's
                // weak memory a last publish could still be unseen).
                None if !collector.has_pending() => break,
                None => {}
                Some(hs) if hs.iter().all(|h| h.is_finished()) => {
                    for h in hs {
                        let (a, r) = h.join().unwrap();
                        accepted.extend(a);
                        refused += r;
                    }
                }
                Some(hs) => producers = Some(hs),
            }
            std::thread::yield_now();
        }
    }
    assert!(
        refused > 0,
        "the lanes are small enough that some batches roll back"
    );
    let mut sorted = drained.clone();
    sorted.sort_unstable();
    let unique = {
        let mut u = sorted.clone();
        u.dedup();
        u
    };
    assert_eq!(unique.len(), sorted.len(), "an item was drained twice");
    accepted.sort_unstable();
    assert_eq!(sorted, accepted, "drained exactly the accepted items");
    assert_eq!(intake.stats().inserted(), accepted.len() as u64);
    assert_eq!(
        intake.stats().depth(),
        0,
        "placeholders freed, admissions released"
    );
}
