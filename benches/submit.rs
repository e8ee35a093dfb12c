//! The runtime's submit path, end to end of the caller's side, against a
//! plain channel batcher in the same run.
//!
//! `benches/intake.rs` measures the intake alone. A caller of
//! `Handle::submit` pays more than a ring push: a ticket is allocated, the
//! cost and deadline are checked against the fleet and config snapshots,
//! the submit gate is entered and left, and the collector's doorbell is
//! rung. This bench measures that whole call while the runtime's collector
//! and workers drain what comes in, with a trivial batch function (the
//! identity) so the submit side is what is timed.
//!
//! Rows, each with `P` producer threads (1, 2, 4) submitting `ITEMS`
//! requests in all with a five-level priority mix:
//!
//! * `handle`: `Handle::submit` on a clone per thread (the shared intake);
//! * `submitter`: `Handle::submitter()` per thread (each owns a shard);
//! * `channel` (baseline): what a plain dynamic batcher does per request:
//!   a ticket (the same `convoy::ticket`) and a send on one bounded
//!   `crossbeam::channel`, with one consumer thread completing each ticket
//!   as it arrives. No priorities, no deadlines, no placement.
//!
//! Two groups time the same runs differently. `runtime_submit`: from the
//! producers' start until the last submit returns (every ticket is then
//! waited on and checked, outside the timing). `runtime_round_trip`: until
//! every ticket has delivered, so the collector's and workers' cost per
//! request is in it (with a trivial model, the batcher's own ceiling). On a
//! machine with fewer cores than threads, the submit phase also shares
//! the cores with the collector, so the two groups are not independent.
//! The queues are sized so that nothing is refused.
//!
//! `runtime_submit_tenants` times the submit phase of requests that name
//! a tenant (each producer its own four, as a server's clients would be),
//! with no quota (`tenant`) and with a quota that never refuses
//! (`tenant_quota`: the quota is taken and given back for real), beside
//! requests naming none (`no_tenant`). Quotas on against off is the cost
//! of the quota itself; the tenant lookup is paid by both.

use std::time::{Duration, Instant};

use convoy::intake::IntakeConfig;
use convoy::ticket::{self, Completer, Ticket};
use convoy::{Config, Priority, Request, Runtime, TenantsConfig};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::sync::Arc;

const ITEMS: u64 = 60_000;

fn prio(i: u64) -> Priority {
    Priority::ALL[(i % 5) as usize]
}

/// Runs `producers` threads, each submitting its share through the
/// function `producer` made for it (made before the clock starts), and
/// returns the submit phase's time and every ticket.
fn run<S: FnMut(u64) -> Ticket<u64> + Send>(
    producers: u64,
    producer: &impl Fn() -> S,
) -> (Duration, Vec<Vec<Ticket<u64>>>) {
    let per = ITEMS / producers;
    let submits: Vec<S> = (0..producers).map(|_| producer()).collect();
    let start = Instant::now();
    let tickets = std::thread::scope(|s| {
        let threads: Vec<_> = (0..producers)
            .zip(submits)
            .map(|(p, mut submit)| {
                s.spawn(move || {
                    let mut mine = Vec::with_capacity(per as usize);
                    for i in 0..per {
                        mine.push(submit(p << 32 | i));
                    }
                    (Instant::now(), mine)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("producer thread"))
            .collect::<Vec<_>>()
    });
    let last = tickets.iter().map(|(t, _)| *t).max().expect("a producer");
    (
        last.duration_since(start),
        tickets.into_iter().map(|(_, t)| t).collect(),
    )
}

/// Waits every ticket and checks it delivered its own input back.
fn check(tickets: Vec<Vec<Ticket<u64>>>) {
    for (p, mine) in tickets.into_iter().enumerate() {
        for (i, t) in mine.into_iter().enumerate() {
            assert_eq!(t.wait(), Ok((p as u64) << 32 | i as u64));
        }
    }
}

fn runtime() -> Runtime<u64, u64> {
    runtime_with(TenantsConfig::default())
}

fn runtime_with(tenants: TenantsConfig) -> Runtime<u64, u64> {
    Runtime::builder()
        .config(Config {
            tenants,
            // Room for every request of a run at every level, so the
            // submit path is timed and not the refusals.
            intake: IntakeConfig {
                shards: 4,
                lane_capacity: 8192,
            },
            cpu_workers: 1,
            // Nor shed: a burst of 60,000 on a loaded machine could look
            // late, and a refusal here would end the bench.
            shed: false,
            ..Config::default()
        })
        .batch_fn(|xs: &[u64]| xs.to_vec())
        .build()
        .expect("valid config")
}

/// The baseline: one bounded channel to one consumer thread that completes
/// each ticket with its input.
struct Channel {
    tx: Option<crossbeam::channel::Sender<(u64, Completer<u64>)>>,
    consumer: Option<std::thread::JoinHandle<()>>,
}

impl Channel {
    fn new() -> Self {
        let (tx, rx) = crossbeam::channel::bounded::<(u64, Completer<u64>)>(ITEMS as usize);
        let consumer = std::thread::spawn(move || {
            for (x, c) in rx {
                let _ = c.complete(Ok(x));
            }
        });
        Self {
            tx: Some(tx),
            consumer: Some(consumer),
        }
    }

    fn sender(&self) -> crossbeam::channel::Sender<(u64, Completer<u64>)> {
        self.tx.clone().expect("open until dropped")
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(c) = self.consumer.take() {
            let _ = c.join();
        }
    }
}

/// What a row times: the submit phase alone, or the round trip (until
/// every ticket has delivered).
#[derive(Clone, Copy)]
enum Timed {
    Submits,
    RoundTrip,
}

/// One row: `iters` runs of `producers` threads through `producer`,
/// timed as `timed` says.
fn measure<S: FnMut(u64) -> Ticket<u64> + Send>(
    iters: u64,
    producers: u64,
    timed: Timed,
    producer: impl Fn() -> S,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let (submits, tickets) = run(producers, &producer);
        check(tickets);
        total += match timed {
            Timed::Submits => submits,
            Timed::RoundTrip => start.elapsed(),
        };
    }
    total
}

fn bench(c: &mut Criterion) {
    for (name, timed) in [
        ("runtime_submit", Timed::Submits),
        ("runtime_round_trip", Timed::RoundTrip),
    ] {
        let mut g = c.benchmark_group(name);
        g.sample_size(20)
            .measurement_time(Duration::from_secs(3))
            .throughput(Throughput::Elements(ITEMS));
        for producers in [1u64, 2, 4] {
            let rt = runtime();
            g.bench_function(BenchmarkId::new("handle", producers), |b| {
                b.iter_custom(|iters| {
                    measure(iters, producers, timed, || {
                        let h = rt.handle();
                        move |x| {
                            h.submit(Request::new(x).priority(prio(x)))
                                .expect("room for every request")
                        }
                    })
                })
            });
            g.bench_function(BenchmarkId::new("submitter", producers), |b| {
                b.iter_custom(|iters| {
                    measure(iters, producers, timed, || {
                        let mut s = rt.handle().submitter().expect("a shard per producer");
                        move |x| {
                            s.submit(Request::new(x).priority(prio(x)))
                                .expect("room for every request")
                        }
                    })
                })
            });
            rt.shutdown();
            let channel = Channel::new();
            g.bench_function(BenchmarkId::new("channel", producers), |b| {
                b.iter_custom(|iters| {
                    measure(iters, producers, timed, || {
                        let tx = channel.sender();
                        move |x| {
                            let (c, t) = ticket::pair();
                            tx.send((x, c)).expect("the consumer lives");
                            t
                        }
                    })
                })
            });
        }
        g.finish();
    }
}

fn bench_tenants(c: &mut Criterion) {
    let mut g = c.benchmark_group("runtime_submit_tenants");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(ITEMS));
    let quota = TenantsConfig {
        // Never reached: every submit takes the quota and every launch
        // gives it back, and none is refused.
        max_queued: Some(ITEMS),
        ..TenantsConfig::default()
    };
    for producers in [1u64, 4] {
        for (row, tenants, named) in [
            ("no_tenant", TenantsConfig::default(), false),
            ("tenant", TenantsConfig::default(), true),
            ("tenant_quota", quota.clone(), true),
        ] {
            let rt = runtime_with(tenants);
            let next = std::sync::atomic::AtomicU64::new(0);
            g.bench_function(BenchmarkId::new(row, producers), |b| {
                b.iter_custom(|iters| {
                    measure(iters, producers, Timed::Submits, || {
                        let h = rt.handle();
                        let p = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let ids: Vec<Arc<str>> = (0..4)
                            .map(|k| Arc::from(format!("tenant-{p}-{k}")))
                            .collect();
                        move |x| {
                            let mut r = Request::new(x).priority(prio(x));
                            if named {
                                r = r.tenant(ids[(x % 4) as usize].clone());
                            }
                            h.submit(r).expect("room for every request")
                        }
                    })
                })
            });
            rt.shutdown();
        }
    }
    g.finish();
}

criterion_group!(benches, bench, bench_tenants);
criterion_main!(benches);
