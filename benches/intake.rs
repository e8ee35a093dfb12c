//! Submit + drain throughput of the sharded intake against two baselines in
//! the same run:
//!
//! * `array_queue`: one shared `crossbeam::queue::ArrayQueue` (no priorities:
//!   the fastest plain bounded queue, the bar to meet);
//! * `mutex_heap`: a `Mutex<BinaryHeap>` ordered by (priority, arrival), the
//!   same priority semantics as the intake's drain, the design to beat.
//!
//! Each measurement pushes `ITEMS` items from `P` producer threads (1, 2, 4)
//! with a five-level priority mix while one consumer drains in chunks of up
//! to 64 and (for the intake) releases the chunk's admissions, as the
//! collector does when a batch launches. Every queue is bounded at the same
//! total; a producer that finds it full yields and retries. Throughput is
//! items/s; ratios go in BENCHMARKS.md.
//!
//! `convoy_exclusive` is the intake with each producer owning its shard
//! (`Intake::exclusive`: claims by plain store, no CAS) on sequential lanes.
//!
//! Three more rows take the intake apart, to show where its cost over
//! ArrayQueue comes from: `convoy_one_level` (every item at one level, so
//! one lane per shard), `ring_deferred` (the bare ring with one lane's
//! capacity, slots freed once per chunk, as the intake does) and `ring` (the
//! bare ring, popped and freed at once, the same protocol as ArrayQueue).
//!
//! `single_thread` measures one thread's push then drain of 256 items, per
//! item, for the ≤ 25 ns target.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use convoy::intake::{Intake, IntakeConfig};
use convoy::ring::Layout;
use convoy::{InsertPolicy, Priority};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam::queue::ArrayQueue;

const ITEMS: u64 = 200_000;
const CAPACITY_PER_LEVEL: usize = 4096;
const DRAIN_CHUNK: usize = 64;

fn prio(i: u64) -> Priority {
    Priority::ALL[(i % 5) as usize]
}

/// Runs `producers` threads and one consumer loop of `drain` (which returns
/// how many it took) until `ITEMS` are consumed. Each producer thread pushes
/// through its own `push`, made by `producer` before it starts: it owns its
/// handle (a clone, as every submitting thread of a server does), so no
/// producer reads a line of the consumer's stack frame while the consumer
/// writes its locals there. That false sharing once cost one row half its
/// throughput.
fn run<P: FnMut(u64) + Send>(
    producers: u64,
    producer: impl Fn() -> P,
    mut drain: impl FnMut() -> usize,
) -> Duration {
    let per = ITEMS / producers;
    let pushes: Vec<P> = (0..producers).map(|_| producer()).collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for (p, mut push) in (0..producers).zip(pushes) {
            s.spawn(move || {
                for i in 0..per {
                    push(p << 32 | i);
                }
            });
        }
        let mut got = 0u64;
        while got < per * producers {
            let n = drain();
            if n == 0 {
                std::thread::yield_now();
            }
            got += n as u64;
        }
    });
    start.elapsed()
}

/// Which level each item goes to.
type Levels = fn(u64) -> Priority;

/// How the intake's producers push.
#[derive(Clone, Copy)]
enum Mode {
    /// Shared handles (`Intake::push`, a CAS per claim) on `Spread` lanes:
    /// what the runtime's submit does.
    Shared,
    /// Each producer owns a shard (`Intake::exclusive`, a plain store per
    /// claim) on `Sequential` lanes.
    Exclusive,
}

fn convoy_run(producers: u64, prio: Levels, mode: Mode) -> Duration {
    let shards = producers.next_power_of_two() as usize;
    let config = IntakeConfig {
        shards,
        lane_capacity: (CAPACITY_PER_LEVEL / shards).next_power_of_two(),
    };
    let (intake, mut consumer) = match mode {
        Mode::Shared => Intake::<u64>::new(config),
        Mode::Exclusive => Intake::<u64>::with_layout(config, Layout::Sequential),
    }
    .expect("valid bench config");
    let mut out = Vec::with_capacity(DRAIN_CHUNK);
    let mut held = Vec::with_capacity(2 * DRAIN_CHUNK);
    run(
        producers,
        || {
            let intake = intake.clone();
            let mut own = match mode {
                Mode::Shared => None,
                Mode::Exclusive => Some(intake.exclusive().expect("a shard per producer")),
            };
            move |v| {
                push_until_in(v, |v| {
                    match own.as_mut() {
                        Some(own) => own.push(prio(v), v, InsertPolicy::Enqueue),
                        None => intake.push(prio(v), v, InsertPolicy::Enqueue),
                    }
                    .map_err(|full| full.item)
                })
            }
        },
        || {
            let n = consumer.drain(DRAIN_CHUNK, &mut out);
            held.extend(out.drain(..).map(|d| {
                black_box(d.item);
                d.admission
            }));
            // Release per launched batch, as the collector does, not per
            // drain call (which returns a few items when it keeps up).
            if held.len() >= DRAIN_CHUNK || n == 0 {
                consumer.release_all(held.drain(..));
            }
            n
        },
    )
}

/// Pushes `v` with `push`, yielding and retrying while it is handed back.
fn push_until_in(mut v: u64, mut push: impl FnMut(u64) -> Result<(), u64>) {
    while let Err(back) = push(v) {
        v = back;
        std::thread::yield_now();
    }
}

/// Pops up to a chunk with `pop`; returns how many.
fn pop_chunk(mut pop: impl FnMut() -> Option<u64>) -> usize {
    let mut n = 0;
    while n < DRAIN_CHUNK {
        match pop() {
            Some(v) => {
                black_box(v);
                n += 1;
            }
            None => break,
        }
    }
    n
}

/// convoy's bare ring (one ring, no levels, no admissions): the same
/// protocol as ArrayQueue's, so this row tells the ring from the intake
/// built on it. 16,384 slots, the power of two nearest ArrayQueue's 20,480.
fn ring_run(producers: u64) -> Duration {
    let (tx, mut rx) = convoy::ring::channel::<u64>(CAPACITY_PER_LEVEL * 4).expect("power of two");
    run(
        producers,
        || {
            let tx = tx.clone();
            move |v| push_until_in(v, |v| tx.push(v).map_err(|full| full.0))
        },
        || pop_chunk(|| rx.pop()),
    )
}

/// The bare ring as the intake uses it: one lane's capacity, values taken
/// and their slots freed once per chunk (the deferred free that makes the
/// ring the admission bound).
fn ring_deferred_run(producers: u64) -> Duration {
    let (tx, mut rx) = convoy::ring::channel::<u64>(CAPACITY_PER_LEVEL).expect("power of two");
    let mut held = 0usize;
    run(
        producers,
        || {
            let tx = tx.clone();
            move |v| push_until_in(v, |v| tx.push(v).map_err(|full| full.0))
        },
        || {
            let n = pop_chunk(|| rx.take());
            held += n;
            if held >= DRAIN_CHUNK || n == 0 {
                rx.free(held);
                held = 0;
            }
            n
        },
    )
}

fn array_queue_run(producers: u64) -> Duration {
    // In an Arc, as crossbeam's docs share it: each producer owns a pointer.
    let q = Arc::new(ArrayQueue::<u64>::new(CAPACITY_PER_LEVEL * 5));
    run(
        producers,
        || {
            let q = q.clone();
            move |v| push_until_in(v, |v| q.push(v))
        },
        || pop_chunk(|| q.pop()),
    )
}

/// (priority, arrival) min-heap: the "before" design of seed 003.
type Heap = BinaryHeap<Reverse<(Priority, u64, u64)>>;

fn mutex_heap_run(producers: u64) -> Duration {
    let heap: Arc<Mutex<(Heap, u64)>> = Arc::new(Mutex::new((BinaryHeap::new(), 0)));
    let cap = CAPACITY_PER_LEVEL * 5;
    run(
        producers,
        || {
            let heap = heap.clone();
            move |v| loop {
                {
                    let mut g = heap.lock().expect("bench lock");
                    if g.0.len() < cap {
                        let seq = g.1;
                        g.1 += 1;
                        g.0.push(Reverse((prio(v), seq, v)));
                        return;
                    }
                }
                std::thread::yield_now();
            }
        },
        || {
            let mut g = heap.lock().expect("bench lock");
            let mut n = 0;
            while n < DRAIN_CHUNK {
                match g.0.pop() {
                    Some(Reverse(e)) => {
                        black_box(e);
                        n += 1;
                    }
                    None => break,
                }
            }
            n
        },
    )
}

fn throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("intake_throughput");
    g.throughput(Throughput::Elements(ITEMS));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(4));
    g.warm_up_time(Duration::from_secs(1));
    for producers in [1u64, 2, 4] {
        let rows: [(&str, Levels, Mode); 3] = [
            ("convoy", prio, Mode::Shared),
            // Each producer owns its shard: plain-store claims, sequential
            // lanes (`Intake::exclusive`).
            ("convoy_exclusive", prio, Mode::Exclusive),
            // Every item at one level: one lane per shard instead of five,
            // so the consumer polls one head slot per shard. Tells the cost
            // of the ring from the cost of polling five lanes.
            ("convoy_one_level", |_| Priority::Normal, Mode::Shared),
        ];
        for (name, level, mode) in rows {
            g.bench_with_input(BenchmarkId::new(name, producers), &producers, |b, &p| {
                b.iter_custom(|iters| (0..iters).map(|_| convoy_run(p, level, mode)).sum())
            });
        }
        g.bench_with_input(
            BenchmarkId::new("ring_deferred", producers),
            &producers,
            |b, &p| b.iter_custom(|iters| (0..iters).map(|_| ring_deferred_run(p)).sum()),
        );
        g.bench_with_input(BenchmarkId::new("ring", producers), &producers, |b, &p| {
            b.iter_custom(|iters| (0..iters).map(|_| ring_run(p)).sum())
        });
        g.bench_with_input(
            BenchmarkId::new("array_queue", producers),
            &producers,
            |b, &p| b.iter_custom(|iters| (0..iters).map(|_| array_queue_run(p)).sum()),
        );
        g.bench_with_input(
            BenchmarkId::new("mutex_heap", producers),
            &producers,
            |b, &p| b.iter_custom(|iters| (0..iters).map(|_| mutex_heap_run(p)).sum()),
        );
    }
    g.finish();
}

fn single_thread(c: &mut Criterion) {
    const N: usize = 256;
    let mut g = c.benchmark_group("single_thread_push_pop");
    g.throughput(Throughput::Elements(N as u64));
    let (intake, mut consumer) = Intake::<u64>::new(IntakeConfig {
        shards: 1,
        lane_capacity: 1024,
    })
    .expect("valid bench config");
    let mut out = Vec::with_capacity(N);
    g.bench_function("convoy", |b| {
        b.iter(|| {
            for i in 0..N as u64 {
                let _ = intake.push(prio(i), i, InsertPolicy::Enqueue);
            }
            consumer.drain(N, &mut out);
            consumer.release_all(out.drain(..).map(|d| {
                black_box(d.item);
                d.admission
            }));
        })
    });
    let q = ArrayQueue::<u64>::new(1024);
    g.bench_function("array_queue", |b| {
        b.iter(|| {
            for i in 0..N as u64 {
                let _ = q.push(i);
            }
            while let Some(v) = q.pop() {
                black_box(v);
            }
        })
    });
    let heap = Mutex::new(Heap::new());
    g.bench_function("mutex_heap", |b| {
        b.iter(|| {
            for i in 0..N as u64 {
                heap.lock()
                    .expect("bench lock")
                    .push(Reverse((prio(i), i, i)));
            }
            let mut h = heap.lock().expect("bench lock");
            while let Some(v) = h.pop() {
                black_box(v);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, single_thread, throughput);
criterion_main!(benches);
