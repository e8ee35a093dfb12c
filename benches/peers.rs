//! convoy against a peer dynamic batcher, `batched-fn` (a Rust crate used
//! to batch model calls in web services), in the same run: the same
//! pool-dense model (V = 32000, D = 256), the same requests (token counts
//! from the bundled Azure trace), the same max batch size (32) and delay
//! (2 ms). convoy's token limit per batch is lifted, since batched-fn has
//! none: both batch by count alone.
//!
//! Load: `PRODUCERS` threads, each keeping a window of requests in flight
//! (submit the window, await all of it, repeat) until it has sent
//! `PER_PRODUCER`. Two windows, from `WINDOWS`: 16 (64 in flight: enough
//! to keep one handler thread busy, not two workers) and 64 (256 in
//! flight: every batcher saturated, so the throughput is the batcher's and
//! not the client's closed loop). Both batchers are awaited as futures
//! (`join_all` under `futures::executor::block_on`), so the client side is
//! the same.
//!
//! Criterion measures the time of one full load (throughput in
//! requests/s). After it, a standalone pass per window runs every batcher
//! in interleaved rounds (7, or `PEERS_ROUNDS`), records each request's
//! latency (submit to the future's completion) and prints p50/p99, the
//! mean batch size and the throughput ratios (pooled, and the median and
//! range of the per-round paired ratios), for BENCHMARKS.md.
//! `--bench nothing-matches` skips criterion and runs only that pass.
//!
//! batched-fn runs every batch on its one handler thread. convoy is shown
//! with one CPU worker (the same parallelism), two, and its default (one
//! worker per core) where the machine has more than two cores.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use batched_fn::batched_fn;
use convoy::model::{PoolDense, DEFAULT_DIM, DEFAULT_VOCAB};
use convoy::{BatchingConfig, Config, Request, Runtime};
use criterion::{BenchmarkId, Criterion, Throughput};
use futures::future::join_all;

const PRODUCERS: usize = 4;
const WINDOWS: [usize; 2] = [16, 64];
const PER_PRODUCER: usize = 512;
const MAX_BATCH: usize = 32;
const DELAY_MS: u64 = 2;

fn model() -> PoolDense {
    PoolDense::seeded(DEFAULT_VOCAB, DEFAULT_DIM, 2023).expect("valid dimensions")
}

/// Token lists from the first rows of the bundled trace, capped at 2048
/// tokens so one request never dominates a run.
fn requests() -> Vec<Vec<u32>> {
    // The checkout's copy, or `data/` beside a prebuilt bench binary run
    // elsewhere (scripts/gpu-check.sh runs it from its own folder).
    let built = concat!(env!("CARGO_MANIFEST_DIR"), "/data/azure_llm_conv_2023.csv");
    let beside = std::path::Path::new("data/azure_llm_conv_2023.csv");
    let path = if beside.exists() {
        beside
    } else {
        built.as_ref()
    };
    let trace = convoy::trace::load(path).expect("the bundled trace loads");
    trace
        .requests
        .iter()
        .take(PRODUCERS * PER_PRODUCER)
        .enumerate()
        .map(|(i, r)| convoy::replay::tokens_of(i, r.tokens.min(2048), DEFAULT_VOCAB))
        .collect()
}

/// batched-fn's batches and the requests in them, counted in its handler
/// so the report can show both batchers' mean batch size.
static PEER_BATCHES: AtomicU64 = AtomicU64::new(0);
static PEER_REQUESTS: AtomicU64 = AtomicU64::new(0);

async fn batched_fn_call(tokens: Vec<u32>) -> Vec<f32> {
    let f = batched_fn! {
        handler = |batch: Vec<Vec<u32>>, model: &PoolDense| -> Vec<Vec<f32>> {
            PEER_BATCHES.fetch_add(1, Ordering::Relaxed);
            PEER_REQUESTS.fetch_add(batch.len() as u64, Ordering::Relaxed);
            model.forward_batch(&batch).expect("token ids are in range")
        };
        config = {
            max_batch_size: MAX_BATCH,
            max_delay: DELAY_MS as u128,
        };
        context = {
            model: model(),
        };
    };
    f(tokens).await.expect("the handler thread lives")
}

fn convoy_runtime(workers: usize) -> Runtime<Vec<u32>, Vec<f32>> {
    Runtime::builder()
        .config(Config {
            cpu_workers: workers,
            batching: BatchingConfig {
                max_batch_size: MAX_BATCH,
                max_queue_delay: Duration::from_millis(DELAY_MS),
                // batched-fn batches by count alone; so does convoy here.
                max_batch_tokens: u64::MAX,
                ..Config::default().batching
            },
            // batched-fn refuses nothing; a closed loop never runs late,
            // and a refusal would end the bench.
            shed: false,
            ..Config::default()
        })
        .executor(model())
        .build()
        .expect("valid config")
}

/// Runs the load: `call` turns a request into a future of its output.
/// Returns the elapsed time and every request's latency.
fn load<F, Fut>(requests: &[Vec<u32>], window: usize, call: F) -> (Duration, Vec<Duration>)
where
    F: Fn(Vec<u32>) -> Fut + Sync,
    Fut: Future<Output = Vec<f32>>,
{
    let start = Instant::now();
    let latencies = std::thread::scope(|s| {
        let threads: Vec<_> = requests
            .chunks(PER_PRODUCER)
            .map(|mine| {
                let call = &call;
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(mine.len());
                    for window in mine.chunks(window) {
                        let timed = window.iter().map(|r| {
                            let fut = call(r.clone());
                            async move {
                                let t = Instant::now();
                                let out = fut.await;
                                assert_eq!(out.len(), DEFAULT_DIM);
                                t.elapsed()
                            }
                        });
                        lat.extend(futures::executor::block_on(join_all(timed)));
                    }
                    lat
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("producer thread"))
            .collect::<Vec<_>>()
    });
    (start.elapsed(), latencies)
}

fn convoy_call(
    h: &convoy::Handle<Vec<u32>, Vec<f32>>,
) -> impl Fn(Vec<u32>) -> std::pin::Pin<Box<dyn Future<Output = Vec<f32>> + Send>> + Sync + '_ {
    move |tokens: Vec<u32>| {
        let len = tokens.len() as u32;
        let ticket = h
            .submit(Request::new(tokens).tokens(len))
            .expect("the queue holds a window per producer");
        Box::pin(async move { ticket.await.expect("completes") })
    }
}

/// 1, 2 and one per core (the default), each once: on a 2-core machine
/// that is 1 and 2; on a larger one, the 2-worker row shows whether two
/// workers reach 2× once the clients have cores of their own.
fn worker_counts(cores: usize) -> Vec<usize> {
    let mut counts = vec![1, 2, cores];
    counts.sort_unstable();
    counts.dedup();
    counts
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn bench(c: &mut Criterion) {
    let requests = requests();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for window in WINDOWS {
        let mut g = c.benchmark_group(format!("peers/window {window}"));
        g.sample_size(10)
            .measurement_time(Duration::from_secs(8))
            .throughput(Throughput::Elements(requests.len() as u64));
        g.bench_function(BenchmarkId::new("batched_fn", "1 handler"), |b| {
            b.iter(|| load(&requests, window, batched_fn_call))
        });
        for workers in worker_counts(cores) {
            let rt = convoy_runtime(workers);
            let h = rt.handle();
            g.bench_function(
                BenchmarkId::new("convoy", format!("{workers} workers")),
                |b| b.iter(|| load(&requests, window, convoy_call(&h))),
            );
            rt.shutdown();
        }
        g.finish();
    }
    for window in WINDOWS {
        latency_pass(&requests, window, cores);
    }
}

/// One batcher's loads in the standalone pass, pooled over its rounds.
#[derive(Default)]
struct Pooled {
    elapsed: Duration,
    latencies: Vec<Duration>,
    batches: u64,
    requests: u64,
    /// Per round: batched-fn's load time over this batcher's, the
    /// throughput ratio of that round.
    ratios: Vec<f64>,
}

/// One load through batched-fn, with the batches its handler formed.
fn batched_fn_load(requests: &[Vec<u32>], window: usize) -> (Duration, Vec<Duration>, u64, u64) {
    let before = (
        PEER_BATCHES.load(Ordering::Relaxed),
        PEER_REQUESTS.load(Ordering::Relaxed),
    );
    let (t, l) = load(requests, window, batched_fn_call);
    let batches = PEER_BATCHES.load(Ordering::Relaxed) - before.0;
    let served = PEER_REQUESTS.load(Ordering::Relaxed) - before.1;
    (t, l, batches, served)
}

/// One load through a fresh convoy runtime of `workers` workers. The
/// runtime is built and warmed before the timing, as batched-fn's context
/// is, and shut down after it, so an idle runtime never shares the cores
/// with the batcher being timed.
fn convoy_load(
    requests: &[Vec<u32>],
    window: usize,
    workers: usize,
) -> (Duration, Vec<Duration>, u64, u64) {
    let rt = convoy_runtime(workers);
    let h = rt.handle();
    // The same one call first as batched-fn's: its threads have run and
    // its first batch's allocations are made before the timing.
    futures::executor::block_on(convoy_call(&h)(requests[0].clone()));
    let before = rt.stats();
    let (t, l) = load(requests, window, convoy_call(&h));
    let stats = rt.stats();
    rt.shutdown();
    (
        t,
        l,
        stats.batches - before.batches,
        stats.batched_requests - before.batched_requests,
    )
}

/// Rounds of the standalone pass (`PEERS_ROUNDS` to change).
const ROUNDS: usize = 7;

/// Latency and ratios for BENCHMARKS.md, measured in interleaved rounds.
///
/// One load takes a tenth of a second or two, and on a shared VM the
/// speed of the machine drifts over seconds (batched-fn alone has run at
/// 8.3k and 15.5k req/s a minute apart): one load per batcher, each after
/// the other, compares two moments as much as two batchers. So each
/// round runs every batcher once, back to back, starting with a different
/// one each round; each round gives a paired ratio, and the pass reports
/// their median and range. Throughput is all rounds' requests over all
/// rounds' time; p50/p99 are over every request of every round.
fn latency_pass(requests: &[Vec<u32>], window: usize, cores: usize) {
    // batched-fn builds its context (the model, ~32 MB of weights) on its
    // first call, inside the handler thread; convoy's runtime is built
    // before its load starts. One call first keeps that build out of
    // batched-fn's figures when criterion has not run before this pass.
    futures::executor::block_on(batched_fn_call(requests[0].clone()));
    let rounds = std::env::var("PEERS_ROUNDS")
        .ok()
        .and_then(|r| r.parse::<usize>().ok())
        .filter(|&r| r > 0)
        .unwrap_or(ROUNDS);
    let counts = worker_counts(cores);
    // Index 0 is batched-fn, then convoy at each worker count.
    let mut pooled: Vec<Pooled> = (0..=counts.len()).map(|_| Pooled::default()).collect();
    for round in 0..rounds {
        let mut times = vec![Duration::ZERO; pooled.len()];
        for k in 0..pooled.len() {
            let who = (round + k) % pooled.len();
            let (t, l, batches, served) = match who {
                0 => batched_fn_load(requests, window),
                w => convoy_load(requests, window, counts[w - 1]),
            };
            times[who] = t;
            let p = &mut pooled[who];
            p.elapsed += t;
            p.latencies.extend(l);
            p.batches += batches;
            p.requests += served;
        }
        for (p, t) in pooled.iter_mut().zip(&times) {
            p.ratios.push(times[0].as_secs_f64() / t.as_secs_f64());
        }
    }
    let names = std::iter::once("batched-fn (1 handler)".to_owned())
        .chain(counts.iter().map(|w| format!("convoy ({w} workers)")));
    let base = (rounds * requests.len()) as f64 / pooled[0].elapsed.as_secs_f64();
    println!(
        "\npeers: {} requests, {PRODUCERS} producers × window {window} ({} in flight), max batch {MAX_BATCH}, delay {DELAY_MS} ms; {rounds} interleaved rounds",
        requests.len(),
        PRODUCERS * window,
    );
    for (name, p) in names.zip(&mut pooled) {
        p.latencies.sort_unstable();
        p.ratios.sort_by(f64::total_cmp);
        let rps = (rounds * requests.len()) as f64 / p.elapsed.as_secs_f64();
        println!(
            "  {name:<24} {rps:>9.0} req/s  ({:.2}× batched-fn; per round median {:.2}×, {:.2}–{:.2}×)  p50 {:>8.2?}  p99 {:>8.2?}  mean batch {:.1}",
            rps / base,
            p.ratios[p.ratios.len() / 2],
            p.ratios[0],
            p.ratios[p.ratios.len() - 1],
            percentile(&p.latencies, 0.5),
            percentile(&p.latencies, 0.99),
            p.requests as f64 / p.batches.max(1) as f64,
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
