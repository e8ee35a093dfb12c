//! The CUDA executor on the pool-dense kernel (V = 32,000, D = 256).
//!
//! 1. `gpu_batching/{batched,per_request}/B` (criterion): B requests as one
//!    launch, against the same B requests as B launches of one request
//!    (two in flight, so the baseline is pipelined too), same lane, same
//!    run. After criterion, a plain loop prints requests/s and the ratio
//!    per B (goal: ≥ 20× at B = 256).
//! 2. Saturation through the runtime: 4 producer threads keep one GPU
//!    worker (2 batches in flight) full for a few seconds; prints the
//!    collector's decision time per batch against the kernel time per
//!    batch (goal: < 5%) and the device's busy fraction (goal: ≥ 80%).
//!
//! Without a GPU it prints why and exits 0 (1 under `CONVOY_REQUIRE_GPU=1`).

use std::time::{Duration, Instant};

use convoy::cuda::{CudaConfig, CudaExecutor, CudaLane};
use convoy::kernel::KernelSpec;
use convoy::model::{splitmix64, PoolDense};
use convoy::{BatchingConfig, Config, Lane, Request, Runtime};
use criterion::{BenchmarkId, Criterion, Throughput};

const SIZES: [usize; 7] = [1, 8, 32, 64, 128, 256, 512];

/// Deterministic ragged requests: 16–271 tokens each.
fn requests(n: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut s = seed;
    let mut next = move || splitmix64(&mut s) as usize;
    (0..n)
        .map(|_| {
            let len = 16 + next() % 256;
            (0..len).map(|_| (next() % 32_000) as u32).collect()
        })
        .collect()
}

fn batched(lane: &mut CudaLane<Vec<u32>, Vec<f32>>, batch: &[Vec<u32>]) {
    lane.launch(batch).expect("launch");
    lane.finish().expect("finish");
}

/// One launch per request, two in flight.
fn per_request(lane: &mut CudaLane<Vec<u32>, Vec<f32>>, batch: &[Vec<u32>]) {
    let mut in_flight = 0;
    for r in batch.chunks(1) {
        if in_flight == 2 {
            lane.finish().expect("finish");
            in_flight -= 1;
        }
        lane.launch(r).expect("launch");
        in_flight += 1;
    }
    for _ in 0..in_flight {
        lane.finish().expect("finish");
    }
}

/// Median seconds of `f` over `reps` runs.
fn median(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

fn saturation(model: &PoolDense) {
    let exec = CudaExecutor::new(KernelSpec::pool_dense(model, 4096), CudaConfig::default())
        .expect("GPU checked above");
    let config = Config {
        workers: vec![exec.worker_spec("gpu0").expect("free memory")],
        batching: BatchingConfig {
            max_batch_size: 256,
            max_queue_delay: Duration::from_micros(500),
            ..Config::default().batching
        },
        ..Config::default()
    };
    let rt = Runtime::builder()
        .config(config)
        .executor(exec.clone())
        .build()
        .expect("runtime");
    let run_for = Duration::from_secs(4);
    let before = exec.device_stats();
    let start = Instant::now();
    std::thread::scope(|s| {
        for p in 0..4u64 {
            let h = rt.handle();
            s.spawn(move || {
                let pool = requests(1024, p + 1);
                let mut window = std::collections::VecDeque::new();
                let mut i = 0;
                while start.elapsed() < run_for {
                    while window.len() < 512 {
                        match h.submit(Request::new(pool[i % pool.len()].clone())) {
                            Ok(t) => window.push_back(t),
                            Err(_) => break,
                        }
                        i += 1;
                    }
                    if let Some(t) = window.pop_front() {
                        let _ = t.wait();
                    }
                }
                for t in window {
                    let _ = t.wait();
                }
            });
        }
    });
    let wall = start.elapsed();
    let after = exec.device_stats();
    let sla = rt.sla_report();
    rt.shutdown();
    let batches = (after.batches - before.batches).max(1);
    let kernel_per_batch = (after.kernel - before.kernel) / batches as u32;
    let device = after.device - before.device;
    let busy = device.as_secs_f64() / wall.as_secs_f64();
    let decision = sla.decision;
    println!("\nsaturation: 1 GPU worker, 2 batches in flight, 4 producers, {wall:.1?}");
    println!(
        "  {} requests in {batches} batches ({:.0} req/s, mean batch {:.1})",
        after.requests - before.requests,
        (after.requests - before.requests) as f64 / wall.as_secs_f64(),
        (after.requests - before.requests) as f64 / batches as f64
    );
    println!(
        "  collector decision per batch p50 {:?} p99 {:?}; kernel per batch {kernel_per_batch:?}; overhead {:.2}% (goal < 5%)",
        decision.p50,
        decision.p99,
        100.0 * decision.p50.as_secs_f64() / kernel_per_batch.as_secs_f64().max(1e-12)
    );
    println!(
        "  device busy (copy in + kernel + copy out) {:.1}% of wall time (goal ≥ 80%)",
        100.0 * busy
    );
}

fn main() {
    let model = PoolDense::seeded(32_000, 256, 7).expect("valid dimensions");
    let exec = match CudaExecutor::new(KernelSpec::pool_dense(&model, 4096), CudaConfig::default())
    {
        Ok(e) => e,
        Err(e) => {
            println!("gpu bench skipped: {e}");
            if std::env::var("CONVOY_REQUIRE_GPU").as_deref() == Ok("1") {
                std::process::exit(1);
            }
            return;
        }
    };
    println!("device: {}", exec.device_name());
    let mut lane = exec.new_lane(2).expect("lane");

    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("gpu_batching");
    g.measurement_time(Duration::from_secs(3));
    for b in SIZES {
        let batch = requests(b, 42);
        g.throughput(Throughput::Elements(b as u64));
        g.bench_with_input(BenchmarkId::new("batched", b), &batch, |bench, batch| {
            bench.iter(|| batched(&mut lane, batch))
        });
        g.bench_with_input(
            BenchmarkId::new("per_request", b),
            &batch,
            |bench, batch| bench.iter(|| per_request(&mut lane, batch)),
        );
    }
    g.finish();

    println!(
        "\n{:>6} {:>14} {:>14} {:>8}",
        "batch", "batched req/s", "per-req req/s", "ratio"
    );
    for b in SIZES {
        let batch = requests(b, 7);
        batched(&mut lane, &batch); // warm the staging buffers
        let one = median(21, || batched(&mut lane, &batch));
        let each = median(7, || per_request(&mut lane, &batch));
        println!(
            "{b:>6} {:>14.0} {:>14.0} {:>7.1}×",
            b as f64 / one,
            b as f64 / each,
            each / one
        );
    }
    drop(lane);
    saturation(&model);
}
