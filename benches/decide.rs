//! One batch decision: take in new arrivals, order, place and reserve a
//! batch of 256 from 10,000 queued over 64 workers, then release it (the
//! steady state of a busy collector).
//!
//! * `convoy`: the collector's own `Planner` (order rule + placement +
//!   ledger), single-owner, no lock.
//! * `convoy_preempting`: a decision that displaces a staged batch
//!   (`[preemption]`), at its worst: form 256, recall them, form 256 again.
//! * `mutex_heap_scan`: seed 003's "before" design in the same run: a
//!   `Mutex<BinaryHeap>` of (priority, arrival) and, per request, a scan of
//!   all workers in a shared `Mutex<HashMap>` capacity map.
//!
//! Criterion reports the median per decision. After it, a plain loop of
//! 3,000 decisions per design prints p50/p99 and the ratio, because the goal
//! (median ≤ 50 µs, p99 ≤ 100 µs, ≥ 10× the baseline) is about the tail too.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use convoy::internals::order::Meta;
use convoy::internals::placement::{Candidate, Placer};
use convoy::internals::planner::{Plan, Plannable, Planner};
use convoy::{BatchingConfig, Capacity, PlacementPolicy, Priority, WorkerSpec};
use criterion::{BenchmarkId, Criterion};

const QUEUED: usize = 10_000;
const BATCH: usize = 256;
const WORKERS: usize = 64;
/// Tenants of the `convoy_64_tenants` row: fair shares (VTC) between them
/// within each level.
const TENANTS: usize = 64;

#[derive(Debug)]
struct Req {
    tokens: u64,
}

impl Plannable for Req {
    fn cost(&self) -> Capacity {
        Capacity {
            slots: 1,
            tokens: self.tokens,
            bytes: 0,
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn fleet() -> Vec<WorkerSpec> {
    (0..WORKERS)
        .map(|i| WorkerSpec {
            name: format!("w{i}"),
            capacity: Capacity {
                slots: 512,
                tokens: 512 * 512,
                bytes: u64::MAX,
            },
            speed: 1.0 + (i % 4) as f64,
            cost_per_hour: 1.0 + (i % 3) as f64,
        })
        .collect()
}

/// Every worker of `specs`, up: what the collector offers the planner.
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

struct ConvoyDecider {
    planner: Planner<Req>,
    specs: Vec<WorkerSpec>,
    rng: Rng,
    now: u64,
    seq: u64,
    /// The tenants' indices requests are spread over (fairness `vtc`, the
    /// default); `[0]`: every request of the default tenant.
    tenants: Vec<u32>,
    /// How many the last preempting decision launched.
    last: usize,
}

impl ConvoyDecider {
    /// Requests spread over `tenants` tenants (1: none named; a power of
    /// two).
    fn new(tenants: usize) -> Self {
        assert!(tenants.is_power_of_two());
        let placer = Placer::new(
            PlacementPolicy::LeastLoaded,
            Duration::from_millis(50),
            BATCH,
            BATCH * 8,
        );
        let mut d = Self {
            planner: Planner::new(
                WORKERS,
                Duration::from_millis(500),
                BatchingConfig {
                    max_batch_size: BATCH,
                    max_batch_tokens: u64::MAX,
                    max_batch_bytes: u64::MAX,
                    max_queue_delay: Duration::ZERO,
                    target_batch_time: None,
                    preferred_batch_sizes: convoy::PreferredBatchSizes::NONE,
                    ..convoy::Config::default().batching
                },
                placer,
            ),
            specs: fleet(),
            rng: Rng(0x1234_5678),
            now: 0,
            seq: 0,
            tenants: vec![0],
            last: BATCH,
        };
        if tenants > 1 {
            d.tenants = (0..tenants)
                .map(|t| {
                    d.planner
                        .tenant_index(Some(&std::sync::Arc::from(format!("tenant-{t}"))))
                })
                .collect();
        }
        d.arrive(QUEUED);
        d
    }

    fn arrive(&mut self, n: usize) {
        for _ in 0..n {
            let r = self.rng.next();
            self.seq += 1;
            let tokens = 1 + (r >> 20) % 512;
            let meta = Meta {
                level: Priority::ALL[(r % 5) as usize],
                arrival: self.now,
                deadline: if r % 4 == 0 {
                    self.now + 50_000_000 + (r >> 8) % 100_000_000
                } else {
                    u64::MAX
                },
                expire_at: u64::MAX,
                front: r % 97 == 0,
                seq: self.seq,
                tokens,
                bytes: 0,
                // A mask, not a division: the count is a power of two.
                tenant: self.tenants[(r >> 40) as usize & (self.tenants.len() - 1)],
            };
            self.planner.insert(Req { tokens }, meta);
        }
    }

    /// A decision that displaces (`[preemption]`), at its worst: a full
    /// staged batch of 256 is recalled (its reservation released, its
    /// requests back with their order) and a full batch formed in its
    /// place, then completed. (With preemption's band a batch that takes
    /// a place is urgent work alone and shorter; full batches bound it.)
    fn decide_preempting(&mut self) -> usize {
        self.now += 100_000;
        // As many arrive as the last batch took: a banded batch is shorter
        // than a full one, and the queue stays at its size.
        self.arrive(self.last);
        let candidates = candidates(&self.specs);
        let mut abandoned = Vec::new();
        let Plan::Batch { formed, .. } =
            self.planner
                .form(self.now, &candidates, &mut abandoned, BATCH)
        else {
            panic!("bench fleet always has room");
        };
        self.planner
            .release(formed.worker, &formed.reserved)
            .expect("releasing exactly what was reserved");
        for (item, meta) in formed.items {
            self.planner.requeue(item, meta);
        }
        let Plan::Batch { formed, .. } =
            self.planner
                .form(self.now, &candidates, &mut abandoned, BATCH)
        else {
            panic!("bench fleet always has room");
        };
        let n = formed.items.len();
        self.last = n;
        black_box(&formed.items);
        self.planner
            .release(formed.worker, &formed.reserved)
            .expect("releasing exactly what was reserved");
        BATCH
    }

    /// Arrivals, one decision, then the batch's completion.
    fn decide(&mut self) -> usize {
        self.now += 100_000;
        self.arrive(BATCH);
        let candidates = candidates(&self.specs);
        let mut abandoned = Vec::new();
        let formed = match self
            .planner
            .form(self.now, &candidates, &mut abandoned, BATCH)
        {
            Plan::Batch { formed, .. } => formed,
            other => panic!("bench fleet always has room: {other:?}"),
        };
        let n = formed.items.len();
        black_box(&formed.items);
        self.planner
            .release(formed.worker, &formed.reserved)
            .expect("releasing exactly what was reserved");
        n
    }
}

/// Seed 003's "before": everything behind locks, a scan per request.
struct MutexDecider {
    heap: Mutex<BinaryHeap<Reverse<(Priority, u64, u64)>>>,
    reserved: Mutex<HashMap<usize, Capacity>>,
    specs: Vec<WorkerSpec>,
    tokens: HashMap<u64, u64>,
    rng: Rng,
    seq: u64,
}

impl MutexDecider {
    fn new() -> Self {
        let mut d = Self {
            heap: Mutex::new(BinaryHeap::new()),
            reserved: Mutex::new(
                (0..WORKERS)
                    .map(|w| {
                        (
                            w,
                            Capacity {
                                slots: 0,
                                tokens: 0,
                                bytes: 0,
                            },
                        )
                    })
                    .collect(),
            ),
            specs: fleet(),
            tokens: HashMap::new(),
            rng: Rng(0x1234_5678),
            seq: 0,
        };
        d.arrive(QUEUED);
        d
    }

    fn arrive(&mut self, n: usize) {
        for _ in 0..n {
            let r = self.rng.next();
            self.seq += 1;
            self.tokens.insert(self.seq, 1 + (r >> 20) % 512);
            self.heap.lock().expect("bench lock").push(Reverse((
                Priority::ALL[(r % 5) as usize],
                self.seq,
                self.seq,
            )));
        }
    }

    fn decide(&mut self) -> usize {
        self.arrive(BATCH);
        let mut batch = Vec::with_capacity(BATCH);
        while batch.len() < BATCH {
            let Some(Reverse((_, _, id))) = self.heap.lock().expect("bench lock").pop() else {
                break;
            };
            let tokens = self.tokens.remove(&id).expect("every queued id has tokens");
            let mut map = self.reserved.lock().expect("bench lock");
            let best = (0..WORKERS)
                .filter(|w| {
                    let r = map[w];
                    let c = self.specs[*w].capacity;
                    r.slots < c.slots && r.tokens + tokens <= c.tokens
                })
                .max_by_key(|w| self.specs[*w].capacity.slots - map[w].slots);
            if let Some(w) = best {
                let r = map.get_mut(&w).expect("worker in map");
                r.slots += 1;
                r.tokens += tokens;
                batch.push((id, w, tokens));
            }
        }
        black_box(&batch);
        let mut map = self.reserved.lock().expect("bench lock");
        for (_, w, tokens) in &batch {
            let r = map.get_mut(w).expect("worker in map");
            r.slots -= 1;
            r.tokens -= tokens;
        }
        batch.len()
    }
}

fn percentiles(mut f: impl FnMut() -> usize) -> (Duration, Duration) {
    for _ in 0..200 {
        f();
    }
    let mut times: Vec<Duration> = (0..3000)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(f(), BATCH, "a full batch every decision");
            t.elapsed()
        })
        .collect();
    times.sort_unstable();
    (times[times.len() / 2], times[times.len() * 99 / 100])
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    {
        let mut g = c.benchmark_group("decide_256_of_10k_over_64");
        let mut convoy = ConvoyDecider::new(1);
        g.bench_function(BenchmarkId::new("convoy", BATCH), |b| {
            b.iter(|| convoy.decide())
        });
        let mut convoy = ConvoyDecider::new(TENANTS);
        g.bench_function(BenchmarkId::new("convoy_64_tenants", BATCH), |b| {
            b.iter(|| convoy.decide())
        });
        let mut convoy = ConvoyDecider::new(1);
        g.bench_function(BenchmarkId::new("convoy_preempting", BATCH), |b| {
            b.iter(|| convoy.decide_preempting())
        });
        let mut baseline = MutexDecider::new();
        g.bench_function(BenchmarkId::new("mutex_heap_scan", BATCH), |b| {
            b.iter(|| baseline.decide())
        });
        g.finish();
    }
    c.final_summary();

    // `--list` and `--test` (`cargo bench -- --test`, a smoke run) skip the
    // tail measurement; `cargo test --benches` runs it, a few seconds.
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let mut convoy = ConvoyDecider::new(1);
    let (c50, c99) = percentiles(|| convoy.decide());
    let mut tenants = ConvoyDecider::new(TENANTS);
    let (t50, t99) = percentiles(|| tenants.decide());
    let mut preempting = ConvoyDecider::new(1);
    let (p50, p99) = percentiles(|| preempting.decide_preempting());
    let mut baseline = MutexDecider::new();
    let (b50, b99) = percentiles(|| baseline.decide());
    println!(
        "decide: batch of {BATCH} from {QUEUED} queued over {WORKERS} workers, 3000 decisions each"
    );
    println!("  convoy          p50 {c50:>10.2?}  p99 {c99:>10.2?}");
    println!("  convoy, {TENANTS} tenants p50 {t50:>10.2?}  p99 {t99:>10.2?}");
    println!("  convoy, preempting p50 {p50:>10.2?}  p99 {p99:>10.2?}");
    println!("  mutex_heap_scan p50 {b50:>10.2?}  p99 {b99:>10.2?}");
    println!(
        "  ratio (baseline / convoy): p50 {:.1}x  p99 {:.1}x",
        b50.as_secs_f64() / c50.as_secs_f64(),
        b99.as_secs_f64() / c99.as_secs_f64()
    );
}
