//! `convoy`: for now, a demo of the intake and tickets under a mixed-priority
//! burst. Producers submit from several threads; one collector drains the
//! most urgent work first, "executes" it in batches and completes each
//! ticket. It prints what it saw per priority.

use std::time::{Duration, Instant};

use convoy::intake::{Intake, IntakeConfig};
use convoy::{ticket, Completer, InsertPolicy, Priority, Ticket};

const PRODUCERS: u64 = 4;
const PER_PRODUCER: u64 = 25_000;
const MAX_BATCH: usize = 256;

type Job = (u64, Instant, Completer<u64>);

fn main() {
    let config = IntakeConfig {
        shards: 4,
        lane_capacity: 1024,
    };
    let (intake, mut collector) = match Intake::<Job>::new(config) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("convoy: {e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let intake = intake.clone();
            std::thread::spawn(move || {
                let mut tickets: Vec<(Priority, Ticket<u64>)> = Vec::new();
                for i in 0..PER_PRODUCER {
                    let prio = Priority::ALL[((i * 7 + p) % 5) as usize];
                    let (completer, ticket) = ticket::pair();
                    let mut job = (i, Instant::now(), completer);
                    loop {
                        match intake.push(prio, job, InsertPolicy::Enqueue) {
                            Ok(()) => break,
                            Err(full) => {
                                job = full.item;
                                std::thread::yield_now();
                            }
                        }
                    }
                    tickets.push((prio, ticket));
                }
                tickets
                    .into_iter()
                    .map(|(prio, t)| (prio, t.wait()))
                    .collect::<Vec<_>>()
            })
        })
        .collect();

    let total = PRODUCERS * PER_PRODUCER;
    let mut done = 0u64;
    let mut batches = 0u64;
    let mut waits: [Vec<Duration>; Priority::COUNT] = Default::default();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while done < total {
        if collector.drain(MAX_BATCH, &mut batch) == 0 {
            std::thread::yield_now();
            continue;
        }
        batches += 1;
        for d in batch.drain(..) {
            let priority = d.admission.priority();
            collector.release(d.admission);
            let (x, submitted, completer) = d.item;
            waits[priority.index()].push(submitted.elapsed());
            // Nobody cancels in this demo; an Err would mean a dropped ticket.
            let _ = completer.complete(Ok(x.wrapping_mul(x)));
            done += 1;
        }
    }
    let mut ok = 0u64;
    for p in producers {
        let results = p.join().expect("demo producer thread");
        ok += results.iter().filter(|(_, r)| r.is_ok()).count() as u64;
    }
    let elapsed = started.elapsed();
    let stats = intake.stats();

    println!("convoy intake demo: {PRODUCERS} producers x {PER_PRODUCER} requests, batches of <= {MAX_BATCH}");
    println!(
        "{:<11} {:>8} {:>12} {:>12}",
        "priority", "count", "p50 wait", "p99 wait"
    );
    for p in Priority::ALL {
        let w = &mut waits[p.index()];
        w.sort_unstable();
        let pct = |q: f64| {
            w.get(((w.len() as f64 - 1.0) * q) as usize)
                .copied()
                .unwrap_or_default()
        };
        println!(
            "{:<11} {:>8} {:>12.1?} {:>12.1?}",
            p.as_str(),
            w.len(),
            pct(0.5),
            pct(0.99)
        );
    }
    println!(
        "completed {ok}/{total} in {elapsed:.2?} ({:.2} M req/s), {batches} batches, rejected-full retries {}, lost {}",
        total as f64 / elapsed.as_secs_f64() / 1e6,
        stats.rejected_full(),
        total - ok,
    );
}
