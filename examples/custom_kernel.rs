//! Your own CUDA kernel behind convoy: source, function name, weights and
//! pack/unpack functions in a `KernelSpec`, run by `CudaExecutor` with one
//! launch per batch.
//!
//! The kernel here scores ragged float vectors: per request, the
//! (mean, max) of its values times a learned scale. Without a GPU the same
//! function runs on CPU workers, so the example shows the same results
//! everywhere.
//!
//! `cargo run --release --example custom_kernel`

use std::sync::Arc;

use convoy::cuda::{CudaConfig, CudaExecutor};
use convoy::kernel::{KernelSpec, Words};
use convoy::{Config, Executor, Priority, Request, Runtime};

/// The kernel (`kernels/mean_max.cu`), in the ABI of `convoy::kernel`:
/// weights first, then words, offsets, batch, out, width; one block per
/// request.
const SOURCE: &str = include_str!("../kernels/mean_max.cu");

const SCALE: f32 = 2.0;

/// The same function on the CPU.
fn mean_max(v: &[f32]) -> (f32, f32) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let mean = v.iter().sum::<f32>() / v.len() as f32;
    let max = v.iter().copied().fold(f32::MIN, f32::max);
    (SCALE * mean, SCALE * max)
}

fn spec() -> KernelSpec<Vec<f32>, (f32, f32)> {
    KernelSpec {
        source: SOURCE.into(),
        function: "mean_max".into(),
        weights: vec![vec![SCALE]],
        width: 2,
        block_dim: 128,
        shared_bytes: 0, // static shared memory only
        max_words: 4096,
        pack: Arc::new(|v: &Vec<f32>, w: &mut Words<'_>| w.push_f32s(v)),
        unpack: Arc::new(|row: &[f32]| (row[0], row[1])),
        check: Arc::new(|v: &Vec<f32>| {
            if v.len() > 4096 {
                Err(format!("{} values is over 4096", v.len()))
            } else if v.iter().any(|x| !x.is_finite()) {
                Err("values must be finite".into())
            } else {
                Ok(())
            }
        }),
    }
}

/// The CPU fallback: the same function, and the spec's submit check.
struct Cpu(KernelSpec<Vec<f32>, (f32, f32)>);

impl Executor<Vec<f32>, (f32, f32)> for Cpu {
    fn execute(
        &self,
        _worker: usize,
        batch: &[Vec<f32>],
    ) -> Result<Vec<(f32, f32)>, convoy::ExecutorError> {
        Ok(batch.iter().map(|v| mean_max(v)).collect())
    }

    fn check(&self, input: &Vec<f32>) -> Result<(), String> {
        (self.0.check)(input)
    }
}

fn main() {
    let inputs: Vec<Vec<f32>> = (0..64)
        .map(|i| {
            (0..(i * 37) % 300)
                .map(|j| ((i * j) % 17) as f32 - 8.0)
                .collect()
        })
        .collect();

    let builder = Runtime::builder();
    let builder = match CudaExecutor::new(spec(), CudaConfig::default()) {
        Ok(gpu) => {
            println!("running on {}", gpu.device_name());
            let workers = vec![gpu.worker_spec("gpu0").expect("device memory readable")];
            builder
                .config(Config {
                    workers,
                    ..Config::default()
                })
                .executor(gpu)
        }
        Err(e) => {
            println!("no GPU ({e}); running the same function on CPU workers");
            builder.executor(Cpu(spec()))
        }
    };
    let rt = builder.build().expect("valid runtime");
    let h = rt.handle();

    let tickets: Vec<_> = inputs
        .iter()
        .map(|v| {
            h.submit(Request::new(v.clone()).priority(Priority::High))
                .expect("room")
        })
        .collect();
    let mut worst = 0f32;
    for (v, t) in inputs.iter().zip(tickets) {
        let (mean, max) = t.wait().expect("completed");
        let (want_mean, want_max) = mean_max(v);
        worst = worst
            .max((mean - want_mean).abs())
            .max((max - want_max).abs());
    }
    // A request the kernel must never see is refused at submit.
    let bad = h.submit(Request::new(vec![f32::NAN])).unwrap_err();
    println!("refused at submit: {bad}");

    rt.shutdown();
    let total = rt.stats().total();
    println!(
        "{} requests, {} completed, worst difference from the CPU function {worst:e}",
        total.inserted, total.completed
    );
    assert_eq!(total.inserted, total.ended(), "nothing lost");
    assert!(worst <= 1e-4, "GPU and CPU disagree by {worst}");
}
