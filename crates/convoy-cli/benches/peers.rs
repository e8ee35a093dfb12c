//! convoy against a peer dynamic batcher, `batched-fn` (a Rust crate used
//! to batch model calls in web services), in the same run: the same
//! pool-dense model (V = 32000, D = 256), the same requests (token counts
//! from the bundled Azure trace), the same max batch size (32) and delay
//! (2 ms). convoy's token limit per batch is lifted, since batched-fn has
//! none: both batch by count alone.
//!
//! Load: `PRODUCERS` threads, each keeping a window of requests in flight
//! (submit the window, await all of it, repeat) until it has sent
//! `PER_PRODUCER`. Three windows, from `WINDOWS`: 16 (64 in flight: enough
//! to keep one handler thread busy, not two workers), 32, and 64 (256 in
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
//! range of the per-round paired ratios), for BENCHMARKS.md. The same
//! rounds time the model alone on as many threads as each convoy row has
//! workers (no batcher, no clients): what the cores give the model in
//! parallel, the ceiling of convoy's N-worker ratio on this machine. Each
//! row also says what share of its model threads' wall time went to the
//! model ("in model", timed around each batch's call in both batchers):
//! the rest they waited for work, delivered, or were off the core.
//! `--bench nothing-matches` skips criterion and runs only that pass.
//!
//! batched-fn runs every batch on its one handler thread. convoy is shown
//! with one CPU worker (the same parallelism), two, and its default (one
//! worker per core) where the machine has more than two cores, each under
//! its default queue delay rule (`adaptive`); the standalone pass also
//! runs two workers under the `fixed` rule and with a delay of 0, the
//! bounds the adaptive rule sits between.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use batched_fn::batched_fn;
use convoy::model::{PoolDense, DEFAULT_DIM, DEFAULT_SEED, DEFAULT_VOCAB};
use convoy::{BatchDelay, BatchingConfig, Config, Request, Runtime};
use criterion::{BenchmarkId, Criterion, Throughput};
use futures::future::join_all;

const PRODUCERS: usize = 4;
const WINDOWS: [usize; 3] = [16, 32, 64];
const PER_PRODUCER: usize = 512;
const MAX_BATCH: usize = 32;
const DELAY_MS: u64 = 2;

fn model() -> PoolDense {
    PoolDense::seeded(DEFAULT_VOCAB, DEFAULT_DIM, DEFAULT_SEED).expect("valid dimensions")
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
    let trace = convoy_cli::trace::load(path).expect("the bundled trace loads");
    trace
        .requests
        .iter()
        .take(PRODUCERS * PER_PRODUCER)
        .enumerate()
        .map(|(i, r)| convoy_cli::replay::tokens_of(i, r.tokens.min(2048), DEFAULT_VOCAB))
        .collect()
}

/// batched-fn's batches and the requests in them, counted in its handler
/// so the report can show both batchers' mean batch size.
static PEER_BATCHES: AtomicU64 = AtomicU64::new(0);
static PEER_REQUESTS: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds batched-fn's handler spent in the model.
static PEER_BUSY_NS: AtomicU64 = AtomicU64::new(0);

async fn batched_fn_call(tokens: Vec<u32>) -> Vec<f32> {
    let f = batched_fn! {
        handler = |batch: Vec<Vec<u32>>, model: &PoolDense| -> Vec<Vec<f32>> {
            PEER_BATCHES.fetch_add(1, Ordering::Relaxed);
            PEER_REQUESTS.fetch_add(batch.len() as u64, Ordering::Relaxed);
            let started = Instant::now();
            let out = model.forward_batch(&batch).expect("token ids are in range");
            PEER_BUSY_NS.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            out
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

/// The model as convoy's executor, timing its batches: the same work as
/// batched-fn's handler, with the same clock around it.
struct Timed {
    model: PoolDense,
    busy_ns: std::sync::Arc<AtomicU64>,
}

impl convoy::Executor<Vec<u32>, Vec<f32>> for Timed {
    fn execute(
        &self,
        worker: usize,
        inputs: &[Vec<u32>],
    ) -> Result<Vec<Vec<f32>>, convoy::ExecutorError> {
        let started = Instant::now();
        let out = convoy::Executor::execute(&self.model, worker, inputs);
        self.busy_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }

    fn check(&self, input: &Vec<u32>) -> Result<(), String> {
        convoy::Executor::check(&self.model, input)
    }
}

fn convoy_runtime(workers: usize) -> Runtime<Vec<u32>, Vec<f32>> {
    convoy_runtime_timed(workers, Default::default(), Rule::Adaptive)
}

/// The queue delay rule a convoy contender runs under.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// `batching.delay = "adaptive"` (the default), 2 ms.
    Adaptive,
    /// `batching.delay = "fixed"` (Triton's), 2 ms.
    Fixed,
    /// A delay of 0: every batch launches with what waits.
    Zero,
}

/// `convoy_runtime`, adding the time its workers spend in the model to
/// `busy_ns`.
fn convoy_runtime_timed(
    workers: usize,
    busy_ns: std::sync::Arc<AtomicU64>,
    rule: Rule,
) -> Runtime<Vec<u32>, Vec<f32>> {
    let delay_ms = if rule == Rule::Zero { 0 } else { DELAY_MS };
    Runtime::builder()
        .config(Config {
            cpu_workers: workers,
            batching: BatchingConfig {
                max_batch_size: MAX_BATCH,
                max_queue_delay: Duration::from_millis(delay_ms),
                delay: if rule == Rule::Adaptive {
                    BatchDelay::Adaptive
                } else {
                    BatchDelay::Fixed
                },
                // batched-fn batches by count alone; so does convoy here.
                max_batch_tokens: u64::MAX,
                ..Config::default().batching
            },
            // batched-fn refuses nothing; a closed loop never runs late,
            // and a refusal would end the bench.
            shed: false,
            ..Config::default()
        })
        .executor(Timed {
            model: model(),
            busy_ns,
        })
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

/// One load in the standalone pass.
struct Load {
    elapsed: Duration,
    /// Each request's, submit to completion (none for the bare model).
    latencies: Vec<Duration>,
    batches: u64,
    requests: u64,
    /// Time spent in the model, summed over the threads running it.
    busy: Duration,
}

/// One contender's loads, pooled over its rounds.
#[derive(Default)]
struct Pooled {
    elapsed: Duration,
    latencies: Vec<Duration>,
    batches: u64,
    requests: u64,
    busy: Duration,
    /// Per round: batched-fn's load time over this contender's, the
    /// throughput ratio of that round.
    ratios: Vec<f64>,
}

impl Pooled {
    fn add(&mut self, load: Load) {
        self.elapsed += load.elapsed;
        self.latencies.extend(load.latencies);
        self.batches += load.batches;
        self.requests += load.requests;
        self.busy += load.busy;
    }
}

/// One load through batched-fn, with the batches its handler formed.
fn batched_fn_load(requests: &[Vec<u32>], window: usize) -> Load {
    let counter = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let before = [&PEER_BATCHES, &PEER_REQUESTS, &PEER_BUSY_NS].map(counter);
    let (elapsed, latencies) = load(requests, window, batched_fn_call);
    let after = [&PEER_BATCHES, &PEER_REQUESTS, &PEER_BUSY_NS].map(counter);
    Load {
        elapsed,
        latencies,
        batches: after[0] - before[0],
        requests: after[1] - before[1],
        busy: Duration::from_nanos(after[2] - before[2]),
    }
}

/// One load through a fresh convoy runtime of `workers` workers. The
/// runtime is built and warmed before the timing, as batched-fn's context
/// is, and shut down after it, so an idle runtime never shares the cores
/// with the contender being timed.
fn convoy_load(requests: &[Vec<u32>], window: usize, workers: usize, rule: Rule) -> Load {
    let busy_ns = std::sync::Arc::new(AtomicU64::new(0));
    let rt = convoy_runtime_timed(workers, busy_ns.clone(), rule);
    let h = rt.handle();
    // The same one call first as batched-fn's: its threads have run and
    // its first batch's allocations are made before the timing.
    futures::executor::block_on(convoy_call(&h)(requests[0].clone()));
    let before = (rt.stats(), busy_ns.load(Ordering::Relaxed));
    let (elapsed, latencies) = load(requests, window, convoy_call(&h));
    let after = (rt.stats(), busy_ns.load(Ordering::Relaxed));
    rt.shutdown();
    Load {
        elapsed,
        latencies,
        batches: after.0.batches - before.0.batches,
        requests: after.0.batched_requests - before.0.batched_requests,
        busy: Duration::from_nanos(after.1 - before.1),
    }
}

/// The model alone: `threads` threads taking the next batch of
/// `MAX_BATCH` in turn and running `forward_batch`, with no batcher and no
/// clients. What this machine's cores give the model in parallel (the
/// gather shares the memory system and the cache): the ceiling a batcher
/// with that many workers can approach, measured in the same rounds.
fn bare_load(model: &PoolDense, requests: &[Vec<u32>], threads: usize) -> Load {
    let next = AtomicUsize::new(0);
    let busy_ns = AtomicU64::new(0);
    let batches: Vec<&[Vec<u32>]> = requests.chunks(MAX_BATCH).collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while let Some(batch) = batches.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let started = Instant::now();
                    std::hint::black_box(model.forward_batch(batch).expect("ids in range"));
                    busy_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
            });
        }
    });
    Load {
        elapsed: start.elapsed(),
        latencies: Vec::new(),
        batches: batches.len() as u64,
        requests: requests.len() as u64,
        busy: Duration::from_nanos(busy_ns.into_inner()),
    }
}

/// Who runs a load in the standalone pass.
#[derive(Clone, Copy)]
enum Contender {
    BatchedFn,
    Convoy(usize, Rule),
    Bare(usize),
}

impl Contender {
    fn name(self) -> String {
        match self {
            Contender::BatchedFn => "batched-fn (1 handler)".to_owned(),
            Contender::Convoy(w, Rule::Adaptive) => format!("convoy ({w} workers)"),
            Contender::Convoy(w, Rule::Fixed) => format!("convoy ({w} w, fixed)"),
            Contender::Convoy(w, Rule::Zero) => format!("convoy ({w} w, delay 0)"),
            Contender::Bare(t) => format!("bare model ({t} threads)"),
        }
    }

    /// Threads running the model.
    fn threads(self) -> usize {
        match self {
            Contender::BatchedFn => 1,
            Contender::Convoy(n, _) | Contender::Bare(n) => n,
        }
    }
}

/// Rounds of the standalone pass (`PEERS_ROUNDS` to change).
const ROUNDS: usize = 7;

/// Latency and ratios for BENCHMARKS.md, measured in interleaved rounds.
///
/// One load takes a tenth of a second or two, and on a shared VM the
/// speed of the machine drifts over seconds (batched-fn alone has run at
/// 8.3k and 15.5k req/s a minute apart): one load per batcher, each after
/// the other, compares two moments as much as two batchers. So each
/// round runs every contender once, back to back, starting with a
/// different one each round; each round gives a paired ratio, and the
/// pass reports their median and range. Throughput is all rounds'
/// requests over all rounds' time; p50/p99 are over every request of
/// every round. The bare-model rows (no batcher, no clients) say what the
/// cores give the model in parallel, so that convoy's shortfall from N×
/// can be told apart from the machine's.
fn latency_pass(requests: &[Vec<u32>], window: usize, cores: usize) {
    // batched-fn builds its context (the model, ~32 MB of weights) on its
    // first call, inside the handler thread; convoy's runtime is built
    // before its load starts. One call first keeps that build out of
    // batched-fn's figures when criterion has not run before this pass.
    futures::executor::block_on(batched_fn_call(requests[0].clone()));
    let bare = model();
    let rounds = std::env::var("PEERS_ROUNDS")
        .ok()
        .and_then(|r| r.parse::<usize>().ok())
        .filter(|&r| r > 0)
        .unwrap_or(ROUNDS);
    let counts = worker_counts(cores);
    // batched-fn first: the ratios are to it.
    let contenders: Vec<Contender> = std::iter::once(Contender::BatchedFn)
        .chain(counts.iter().map(|&w| Contender::Convoy(w, Rule::Adaptive)))
        .chain([
            Contender::Convoy(2, Rule::Fixed),
            Contender::Convoy(2, Rule::Zero),
        ])
        .chain(counts.iter().map(|&t| Contender::Bare(t)))
        .collect();
    let mut pooled: Vec<Pooled> = contenders.iter().map(|_| Pooled::default()).collect();
    for round in 0..rounds {
        let mut times = vec![Duration::ZERO; contenders.len()];
        for k in 0..contenders.len() {
            let who = (round + k) % contenders.len();
            let load = match contenders[who] {
                Contender::BatchedFn => batched_fn_load(requests, window),
                Contender::Convoy(w, rule) => convoy_load(requests, window, w, rule),
                Contender::Bare(t) => bare_load(&bare, requests, t),
            };
            times[who] = load.elapsed;
            pooled[who].add(load);
        }
        for (p, t) in pooled.iter_mut().zip(&times) {
            p.ratios.push(times[0].as_secs_f64() / t.as_secs_f64());
        }
    }
    let base = (rounds * requests.len()) as f64 / pooled[0].elapsed.as_secs_f64();
    println!(
        "\npeers: {} requests, {PRODUCERS} producers × window {window} ({} in flight), max batch {MAX_BATCH}, delay {DELAY_MS} ms; {rounds} interleaved rounds",
        requests.len(),
        PRODUCERS * window,
    );
    for (who, p) in contenders.iter().zip(&mut pooled) {
        p.latencies.sort_unstable();
        p.ratios.sort_by(f64::total_cmp);
        let rps = (rounds * requests.len()) as f64 / p.elapsed.as_secs_f64();
        let latency = if p.latencies.is_empty() {
            "(no clients)".to_owned()
        } else {
            format!(
                "p50 {:>8.2?}  p99 {:>8.2?}",
                percentile(&p.latencies, 0.5),
                percentile(&p.latencies, 0.99)
            )
        };
        // The share of its threads' wall time spent in the model: below
        // 100%, they waited for work or were off the core.
        let in_model = p.busy.as_secs_f64() / (p.elapsed.as_secs_f64() * who.threads() as f64);
        println!(
            "  {:<24} {rps:>9.0} req/s  ({:.2}× batched-fn; per round median {:.2}×, {:.2}–{:.2}×)  {latency}  mean batch {:.1}  in model {:.0}%, {:.0} µs per batch",
            who.name(),
            rps / base,
            p.ratios[p.ratios.len() / 2],
            p.ratios[0],
            p.ratios[p.ratios.len() - 1],
            p.requests as f64 / p.batches.max(1) as f64,
            in_model * 100.0,
            p.busy.as_secs_f64() * 1e6 / p.batches.max(1) as f64,
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
