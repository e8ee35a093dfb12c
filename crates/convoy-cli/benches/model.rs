//! The built-in model's forward pass (`PoolDense::forward_batch`) against
//! the plain one-row-at-a-time gather, in the same run: batches of 32 requests with the
//! bundled trace's token counts (capped at 2,048, as the peers bench).
//!
//! * `one_row` (the baseline): the plain gather, one embedding row
//!   added into the pooled vector per token, then the
//!   model's own dense layer (`PoolDense::dense`), so only the gather
//!   differs;
//! * `grouped`: `forward_batch`, whose gather sums sixteen rows per step
//!   (`add_rows` in `src/device/model.rs`).
//!
//! Throughput is in requests. The gather is about nine tenths of a
//! request's time at these lengths (a mean of about 1,000 tokens, 1 KiB
//! of the 32 MB table each); the dense layer is the rest. After
//! criterion, `main` prints each side's best of five passes and the ratio.

use std::hint::black_box;
use std::time::{Duration, Instant};

use convoy::model::{PoolDense, DEFAULT_DIM, DEFAULT_SEED, DEFAULT_VOCAB};
use criterion::{Criterion, Throughput};

const BATCH: usize = 32;
const REQUESTS: usize = 2_048;

fn model() -> PoolDense {
    PoolDense::seeded(DEFAULT_VOCAB, DEFAULT_DIM, DEFAULT_SEED).expect("valid dimensions")
}

/// Token lists from the first rows of the bundled trace.
fn requests() -> Vec<Vec<u32>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/azure_llm_conv_2023.csv");
    let trace = convoy_cli::trace::load(path.as_ref()).expect("the bundled trace loads");
    trace
        .requests
        .iter()
        .take(REQUESTS)
        .enumerate()
        .map(|(i, r)| convoy_cli::replay::tokens_of(i, r.tokens.min(2048), DEFAULT_VOCAB))
        .collect()
}

/// The forward pass with the plain gather: one row at a time.
fn one_row(model: &PoolDense, batch: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let (e, _, _) = model.weights();
    let d = model.dim();
    batch
        .iter()
        .map(|tokens| {
            let mut row = vec![0f32; d];
            for &t in tokens {
                let x = &e[t as usize * d..(t as usize + 1) * d];
                row.iter_mut().zip(x).for_each(|(r, x)| *r += x);
            }
            if !tokens.is_empty() {
                let inv = 1.0 / tokens.len() as f32;
                row.iter_mut().for_each(|r| *r *= inv);
            }
            model.dense(&row).expect("a D-vector")
        })
        .collect()
}

fn grouped(model: &PoolDense, batch: &[Vec<u32>]) -> Vec<Vec<f32>> {
    model.forward_batch(batch).expect("tokens in range")
}

type Forward = fn(&PoolDense, &[Vec<u32>]) -> Vec<Vec<f32>>;
const SIDES: [(&str, Forward); 2] = [("one_row", one_row), ("grouped", grouped)];

fn all_batches(model: &PoolDense, requests: &[Vec<u32>], f: Forward) {
    for batch in requests.chunks(BATCH) {
        black_box(f(model, black_box(batch)));
    }
}

fn main() {
    let model = model();
    let requests = requests();
    // Both sides compute the same model: the baseline is only a slower
    // order of the same sums, within float rounding of the real one.
    for (a, b) in one_row(&model, &requests[..BATCH])
        .iter()
        .zip(grouped(&model, &requests[..BATCH]))
    {
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-4 * y.abs().max(1e-2), "{x} vs {y}");
        }
    }
    let mut c = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(6))
        .configure_from_args();
    let mut g = c.benchmark_group("model/forward_batch");
    g.throughput(Throughput::Elements(requests.len() as u64));
    for (name, f) in SIDES {
        g.bench_function(name, |b| b.iter(|| all_batches(&model, &requests, f)));
    }
    g.finish();
    c.final_summary();

    // `--list` and `--test` (`cargo bench -- --test`, a smoke run) skip the
    // printed ratio; a full run prints it for BENCHMARKS.md.
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let rate = |f: Forward| {
        (0..5)
            .map(|_| {
                let t = Instant::now();
                all_batches(&model, &requests, f);
                requests.len() as f64 / t.elapsed().as_secs_f64()
            })
            .fold(0.0, f64::max)
    };
    let (old, new) = (rate(one_row), rate(grouped));
    println!(
        "\nmodel: {REQUESTS} requests in batches of {BATCH}, best of 5: one_row {old:.0} req/s, grouped {new:.0} req/s ({:.2}×)",
        new / old
    );
}
