//! `convoy`: a short demo of the runtime on this machine's CPU.
//!
//! Four producer threads submit a mixed-priority burst of pool-dense
//! requests (1–512 tokens each, a seeded mix). Critical and High requests
//! carry deadlines. CPU workers run the built-in model in batches, and the
//! demo prints a per-priority summary: count, p50/p99 latency, and failures
//! by kind. `lost` is accepted minus every outcome.

use std::time::{Duration, Instant};

use convoy::model::{PoolDense, DEFAULT_DIM, DEFAULT_VOCAB};
use convoy::{Config, Failure, Priority, Request, Runtime, SubmitErrorKind};

const PRODUCERS: u64 = 4;
const PER_PRODUCER: u64 = 5_000;

#[derive(Default, Clone)]
struct Tally {
    latencies: Vec<Duration>,
    expired: u64,
    cancelled: u64,
    failed: u64,
    shut_down: u64,
    refused: u64,
}

fn main() {
    let model = match PoolDense::seeded(DEFAULT_VOCAB, DEFAULT_DIM, 2023) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("convoy: {e}");
            std::process::exit(2);
        }
    };
    let config = Config::default();
    let workers = config.fleet().len();
    let rt = match Runtime::builder()
        .config(config.clone())
        .executor(model)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("convoy: {e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let h = rt.handle();
            std::thread::spawn(move || {
                let mut rng = 0x5EED ^ (p + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let mut tallies: Vec<Tally> = vec![Tally::default(); Priority::COUNT];
                let mut pending = Vec::new();
                for _ in 0..PER_PRODUCER {
                    let r = next();
                    // Mix: 5% Critical, 15% High, 40% Normal, 25% Low, 15% Background.
                    let prio = match r % 100 {
                        0..=4 => Priority::Critical,
                        5..=19 => Priority::High,
                        20..=59 => Priority::Normal,
                        60..=84 => Priority::Low,
                        _ => Priority::Background,
                    };
                    let len = 1 + (r >> 8) % 512;
                    let tokens: Vec<u32> = (0..len)
                        .map(|i| ((r >> 20) + i * 7919) as u32 % DEFAULT_VOCAB as u32)
                        .collect();
                    let mut req = Request::new(tokens).priority(prio).tokens(len as u32);
                    if prio <= Priority::High {
                        req = req.deadline(Duration::from_millis(250));
                    }
                    match h.submit(req) {
                        Ok(t) => pending.push((prio, Instant::now(), t)),
                        Err(e) => {
                            tallies[prio.index()].refused += 1;
                            if e.kind == SubmitErrorKind::ShuttingDown {
                                break;
                            }
                        }
                    }
                    if pending.len() >= 1024 {
                        settle(&mut pending, &mut tallies);
                    }
                }
                settle(&mut pending, &mut tallies);
                tallies
            })
        })
        .collect();
    let mut tallies: Vec<Tally> = vec![Tally::default(); Priority::COUNT];
    for p in producers {
        for (t, mine) in tallies
            .iter_mut()
            .zip(p.join().expect("demo producer thread"))
        {
            t.latencies.extend(mine.latencies);
            t.expired += mine.expired;
            t.cancelled += mine.cancelled;
            t.failed += mine.failed;
            t.shut_down += mine.shut_down;
            t.refused += mine.refused;
        }
    }
    let elapsed = started.elapsed();
    rt.shutdown();
    let stats = rt.stats();
    let total = stats.total();

    println!(
        "convoy demo: {} requests from {PRODUCERS} threads, pool-dense V={DEFAULT_VOCAB} D={DEFAULT_DIM}, {workers} CPU workers, max batch {}",
        PRODUCERS * PER_PRODUCER,
        config.batching.max_batch_size
    );
    println!(
        "{:<11} {:>7} {:>10} {:>10} {:>8} {:>9} {:>7} {:>9} {:>8}",
        "priority", "done", "p50", "p99", "expired", "cancelled", "failed", "shutdown", "refused"
    );
    for p in Priority::ALL {
        let t = &mut tallies[p.index()];
        t.latencies.sort_unstable();
        let pct = |q: f64| {
            let l = &t.latencies;
            l.get(((l.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        println!(
            "{:<11} {:>7} {:>10.2?} {:>10.2?} {:>8} {:>9} {:>7} {:>9} {:>8}",
            p.as_str(),
            t.latencies.len(),
            pct(0.50),
            pct(0.99),
            t.expired,
            t.cancelled,
            t.failed,
            t.shut_down,
            t.refused
        );
    }
    let mean_batch = stats.batched_requests as f64 / stats.batches.max(1) as f64;
    println!(
        "throughput {:.0} req/s over {elapsed:.2?}; {} batches, mean size {mean_batch:.1}; aging promotions {}; capacity shortfalls {}",
        total.completed as f64 / elapsed.as_secs_f64(),
        stats.batches,
        stats.aging_promotions,
        stats.capacity_shortfall,
    );
    println!(
        "accepted {} = completed {} + expired {} + cancelled {} + failed {} + shut down {}; lost: {}",
        total.inserted,
        total.completed,
        total.expired,
        total.cancelled,
        total.failed,
        total.shut_down,
        total.inserted - total.ended()
    );
}

/// Waits for every pending ticket, timing each when it becomes ready (not
/// when we get round to it), so a Critical request finished early is not
/// charged for the Normal ones submitted before it.
fn settle(pending: &mut Vec<(Priority, Instant, convoy::Ticket<Vec<f32>>)>, tallies: &mut [Tally]) {
    while !pending.is_empty() {
        pending.retain_mut(|(p, at, t)| {
            let Some(outcome) = t.try_take() else {
                return true;
            };
            let tally = &mut tallies[p.index()];
            match outcome {
                Ok(_) => tally.latencies.push(at.elapsed()),
                Err(Failure::Expired) => tally.expired += 1,
                Err(Failure::Cancelled) => tally.cancelled += 1,
                Err(Failure::ExecutorFailed(_)) => tally.failed += 1,
                Err(Failure::ShutDown) => tally.shut_down += 1,
            }
            false
        });
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}
