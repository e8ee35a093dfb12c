//! The CUDA executor. Without a GPU (no libcuda, no NVRTC or no device)
//! the device tests print why they skip, and fail instead when
//! `CONVOY_REQUIRE_GPU=1` (as `scripts/gpu-check.sh` sets). The error-path
//! tests run everywhere.
#![cfg(feature = "cuda")]

use std::time::{SystemTime, UNIX_EPOCH};

use convoy::cuda::{probe, CudaConfig, CudaError, CudaExecutor};
use convoy::kernel::{KernelSpec, Words};
use convoy::model::{splitmix64, PoolDense};
use convoy::{Config, Lane, Request, Runtime, SubmitErrorKind};

const MAX_TOKENS: usize = 2048;

/// Whether a GPU is here; prints the skip reason, or fails under
/// `CONVOY_REQUIRE_GPU=1`.
fn gpu(test: &str) -> bool {
    match probe(0) {
        Ok(name) => {
            eprintln!("{test}: running on {name}");
            true
        }
        Err(e) => {
            if std::env::var("CONVOY_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("{test}: CONVOY_REQUIRE_GPU=1 but no GPU: {e}");
            }
            eprintln!("skipped {test}: no GPU here ({e}); set CONVOY_REQUIRE_GPU=1 to make this a failure");
            false
        }
    }
}

/// splitmix64, seeded from the clock: fresh inputs every run, with the seed
/// printed so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn fresh(test: &str) -> Self {
        let seed = std::env::var("CONVOY_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("{test}: seed {seed} (CONVOY_SEED={seed} replays it)");
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        splitmix64(&mut self.0)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A ragged batch with an empty, a one-token and a maximum-length
    /// request among random lengths.
    fn batch(&mut self, size: usize, vocab: usize) -> Vec<Vec<u32>> {
        (0..size)
            .map(|i| {
                let len = match i % 7 {
                    0 => 0,
                    1 => 1,
                    2 => MAX_TOKENS,
                    _ => self.below(300),
                };
                (0..len).map(|_| self.below(vocab) as u32).collect()
            })
            .collect()
    }
}

/// ‖got − want‖ / ‖want‖ per row, and every value written (not NaN).
fn assert_parity(got: &[Vec<f32>], want: &[Vec<f32>], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: row count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}: row {i} width");
        assert!(
            g.iter().all(|x| x.is_finite()),
            "{what}: row {i} has unwritten (NaN) values"
        );
        let diff: f64 = g.iter().zip(w).map(|(a, b)| f64::from(a - b).powi(2)).sum();
        let norm: f64 = w.iter().map(|b| f64::from(*b).powi(2)).sum();
        let rel = (diff / norm.max(1e-30)).sqrt();
        assert!(rel <= 1e-5, "{what}: row {i} relative error {rel:e} > 1e-5");
    }
}

fn model() -> PoolDense {
    PoolDense::seeded(32_000, 256, 7).expect("valid dimensions")
}

fn poisoned() -> CudaConfig {
    CudaConfig {
        poison_outputs: true,
        max_batch: 8, // start small so that the staging buffers must grow
        max_batch_words: 64,
        ..CudaConfig::default()
    }
}

#[test]
fn without_a_gpu_new_is_a_typed_error_not_a_panic() {
    let spec = KernelSpec::pool_dense(&model(), MAX_TOKENS);
    match probe(0) {
        Err(missing) => {
            let e = CudaExecutor::new(spec, CudaConfig::default()).unwrap_err();
            assert_eq!(e, missing, "new reports what probe found missing");
            let text = e.to_string();
            assert!(
                matches!(
                    e,
                    CudaError::DriverMissing | CudaError::NvrtcMissing | CudaError::NoDevice { .. }
                ),
                "{text}"
            );
            assert!(
                text.contains("libcuda") || text.contains("NVRTC") || text.contains("device"),
                "{text}"
            );
        }
        Ok(_) => {
            // A machine with a GPU: a device that is not there.
            let e = CudaExecutor::new(
                spec,
                CudaConfig {
                    device: 999,
                    ..CudaConfig::default()
                },
            )
            .unwrap_err();
            assert!(matches!(e, CudaError::NoDevice { ordinal: 999, .. }), "{e}");
        }
    }
}

#[test]
fn a_bad_spec_is_refused_before_any_device_call() {
    let good = KernelSpec::pool_dense(&PoolDense::seeded(10, 4, 1).unwrap(), 4);
    for (spec, config) in [
        (
            KernelSpec {
                width: 0,
                ..good.clone()
            },
            CudaConfig::default(),
        ),
        (
            KernelSpec {
                shared_bytes: 1 << 20,
                ..good.clone()
            },
            CudaConfig::default(),
        ),
        (
            KernelSpec {
                function: "a\0b".into(),
                ..good.clone()
            },
            CudaConfig::default(),
        ),
        (
            good.clone(),
            CudaConfig {
                depth: 0,
                ..CudaConfig::default()
            },
        ),
    ] {
        let e = CudaExecutor::new(spec, config).unwrap_err();
        assert!(matches!(e, CudaError::Invalid(_)), "{e}");
    }
}

#[test]
fn a_kernel_that_does_not_compile_returns_nvrtc_log() {
    if !gpu("a_kernel_that_does_not_compile_returns_nvrtc_log") {
        return;
    }
    let mut spec = KernelSpec::pool_dense(&model(), MAX_TOKENS);
    spec.source
        .push_str("\nextern \"C\" __global__ void broken( { this is not C }\n");
    match CudaExecutor::new(spec, CudaConfig::default()) {
        Err(CudaError::Compile { function, log }) => {
            assert_eq!(function, "pool_dense");
            assert!(log.contains("error"), "NVRTC log: {log}");
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}

#[test]
fn gpu_matches_cpu_on_random_ragged_batches() {
    if !gpu("gpu_matches_cpu_on_random_ragged_batches") {
        return;
    }
    let model = model();
    let exec = CudaExecutor::new(KernelSpec::pool_dense(&model, MAX_TOKENS), poisoned())
        .expect("GPU present");
    let mut lane = exec.new_lane(2).expect("lane");
    let mut rng = Rng::fresh("gpu_matches_cpu_on_random_ragged_batches");
    for size in [1, 2, 7, 64, 256, 512, 33] {
        let batch = rng.batch(size, model.vocab());
        lane.launch(&batch).expect("launch");
        let got = lane.finish().expect("finish");
        let want = model.forward_batch(&batch).expect("CPU reference");
        assert_parity(&got, &want, &format!("batch of {size}"));
    }
    // Two in flight: finished in launch order, each its own outputs.
    let (a, b) = (rng.batch(40, model.vocab()), rng.batch(9, model.vocab()));
    lane.launch(&a).expect("launch a");
    lane.launch(&b).expect("launch b");
    assert_parity(
        &lane.finish().unwrap(),
        &model.forward_batch(&a).unwrap(),
        "first in flight",
    );
    assert_parity(
        &lane.finish().unwrap(),
        &model.forward_batch(&b).unwrap(),
        "second in flight",
    );
    // Bad input never reaches the device and leaves the lane usable.
    assert!(lane
        .launch(&[vec![32_000u32]])
        .unwrap_err()
        .contains("vocabulary"));
    assert!(lane
        .launch(&[vec![0u32; MAX_TOKENS + 1]])
        .unwrap_err()
        .contains("maximum"));
    let one = vec![vec![5u32]];
    lane.launch(&one).unwrap();
    assert_parity(
        &lane.finish().unwrap(),
        &model.forward_batch(&one).unwrap(),
        "after errors",
    );
    let stats = exec.device_stats();
    assert!(
        stats.batches >= 10 && stats.kernel > std::time::Duration::ZERO,
        "{stats:?}"
    );
}

#[test]
fn runtime_on_gpu_workers_matches_cpu_and_loses_nothing() {
    if !gpu("runtime_on_gpu_workers_matches_cpu_and_loses_nothing") {
        return;
    }
    let model = model();
    let exec = CudaExecutor::new(KernelSpec::pool_dense(&model, MAX_TOKENS), poisoned())
        .expect("GPU present");
    let config = Config {
        workers: vec![
            exec.worker_spec("gpu0").unwrap(),
            exec.worker_spec("gpu1").unwrap(),
        ],
        ..Config::default()
    };
    let rt = Runtime::builder()
        .config(config)
        .executor(exec)
        .build()
        .expect("runtime");
    let bad = rt
        .handle()
        .submit(Request::new(vec![40_000u32]))
        .unwrap_err();
    assert_eq!(bad.kind, SubmitErrorKind::Invalid);
    let mut rng = Rng::fresh("runtime_on_gpu_workers_matches_cpu_and_loses_nothing");
    let seeds: Vec<u64> = (0..4).map(|_| rng.next()).collect();
    std::thread::scope(|s| {
        for seed in seeds {
            let h = rt.handle();
            let model = &model;
            s.spawn(move || {
                let mut rng = Rng(seed);
                let inputs = rng.batch(500, model.vocab());
                let tickets: Vec<_> = inputs
                    .iter()
                    .map(|t| h.submit(Request::new(t.clone())).expect("room"))
                    .collect();
                let got: Vec<Vec<f32>> = tickets
                    .into_iter()
                    .map(|t| t.wait().expect("completed"))
                    .collect();
                assert_parity(
                    &got,
                    &model.forward_batch(&inputs).unwrap(),
                    "through the runtime",
                );
            });
        }
    });
    rt.shutdown();
    let total = rt.stats().total();
    assert_eq!(
        (total.completed, total.inserted, total.ended()),
        (2000, 2000, 2000)
    );
}

#[test]
fn a_custom_kernel_runs_through_the_same_abi() {
    if !gpu("a_custom_kernel_runs_through_the_same_abi") {
        return;
    }
    // Per request: (mean, max) of a ragged float vector, scaled by w[0].
    let source = r#"
extern "C" __global__ void mean_max(const float* scale, const unsigned* words,
                                    const unsigned* offsets, int batch, float* out, int width) {
    int i = blockIdx.x;
    if (i >= batch || threadIdx.x != 0) return;
    const float* v = (const float*)words;
    unsigned s = offsets[i], e = offsets[i + 1];
    float sum = 0.0f, mx = -3.0e38f;
    for (unsigned t = s; t < e; ++t) { sum += v[t]; mx = fmaxf(mx, v[t]); }
    out[i * width] = e > s ? scale[0] * sum / (float)(e - s) : 0.0f;
    out[i * width + 1] = e > s ? scale[0] * mx : 0.0f;
}
"#;
    let spec = KernelSpec::<Vec<f32>, (f32, f32)> {
        source: source.into(),
        function: "mean_max".into(),
        weights: vec![vec![2.0]],
        width: 2,
        block_dim: 32,
        shared_bytes: 0,
        max_words: 1024,
        pack: std::sync::Arc::new(|v: &Vec<f32>, w: &mut Words<'_>| w.push_f32s(v)),
        unpack: std::sync::Arc::new(|row: &[f32]| (row[0], row[1])),
        check: std::sync::Arc::new(|v: &Vec<f32>| {
            if v.iter().all(|x| x.is_finite()) {
                Ok(())
            } else {
                Err("not finite".into())
            }
        }),
    };
    let exec = CudaExecutor::new(spec, poisoned()).expect("compiles");
    let mut lane = exec.new_lane(1).unwrap();
    let inputs = vec![vec![1.0, 3.0], vec![], vec![-2.0]];
    lane.launch(&inputs).unwrap();
    assert_eq!(
        lane.finish().unwrap(),
        vec![(4.0, 6.0), (0.0, 0.0), (-4.0, -4.0)]
    );
}
