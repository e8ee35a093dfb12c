//! The CUDA executor. Without a GPU (no libcuda, no NVRTC or no device)
//! the device tests print why they skip, and fail instead when
//! `CONVOY_REQUIRE_GPU=1` (as `scripts/gpu-check.sh` sets). The compile
//! tests need only NVRTC, no GPU: they skip without it (the crate's tests
//! pass on a machine with no CUDA at all), and fail instead under
//! `CONVOY_REQUIRE_NVRTC=1`, which `.ci/run` sets once it has installed
//! NVRTC, or `CONVOY_REQUIRE_GPU=1`.
//! The error-path tests run everywhere.
#![cfg(feature = "cuda")]

mod common;
use common::WaitBounded;

use convoy::cuda::{compile_kernel, compile_ptx, probe, CudaConfig, CudaError, CudaExecutor};
use convoy::kernel::{KernelSpec, Words, POOL_DENSE_SOURCE};
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

/// Whether NVRTC is here (compiling needs no GPU); prints the skip reason,
/// or fails under `CONVOY_REQUIRE_NVRTC=1` or `CONVOY_REQUIRE_GPU=1`.
fn nvrtc(test: &str) -> bool {
    match compile_ptx(r#"extern "C" __global__ void k() {}"#, "k", (9, 0)) {
        Ok(_) => true,
        Err(CudaError::NvrtcMissing) => {
            let required = ["CONVOY_REQUIRE_NVRTC", "CONVOY_REQUIRE_GPU"]
                .iter()
                .any(|v| std::env::var(v).as_deref() == Ok("1"));
            if required {
                panic!("{test}: NVRTC (libnvrtc.so.13) is required here (CONVOY_REQUIRE_NVRTC=1 or CONVOY_REQUIRE_GPU=1) but not loadable");
            }
            eprintln!("skipped {test}: no NVRTC here (libnvrtc.so.13 not loadable); scripts/install-nvrtc.sh fetches it, and CONVOY_REQUIRE_NVRTC=1 makes this a failure");
            false
        }
        Err(e) => panic!("{test}: NVRTC is here, but an empty kernel failed: {e}"),
    }
}

/// The CUDA 13 targets worth compiling for: the oldest it supports
/// (Turing), Ampere, and the Hopper GPUs this project runs on (H100, H200).
const CAPABILITIES: [(i32, i32); 3] = [(7, 5), (8, 0), (9, 0)];

/// `source`'s kernel `function` with `weights` one-float weight buffers,
/// packed and unpacked as pool-dense's (only compiling is under test).
fn spec_of(source: &str, function: &str, weights: usize) -> KernelSpec<Vec<u32>, Vec<f32>> {
    KernelSpec {
        source: source.into(),
        function: function.into(),
        weights: vec![vec![1.0]; weights],
        ..KernelSpec::pool_dense(&PoolDense::seeded(10, 4, 1).expect("valid dimensions"), 4)
    }
}

/// splitmix64, seeded from the clock: fresh inputs every run, with the seed
/// printed so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn fresh(test: &str) -> Self {
        Self(common::fresh_seed(test))
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
            KernelSpec {
                source: format!("{}\0", good.source),
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
    // Compiling alone refuses them too, before looking for NVRTC (cudarc
    // would panic on a NUL in the source or the name).
    for (source, function) in [("__global__ void k() {}\0", "k"), ("", "a\0b"), ("", "")] {
        let e = compile_ptx(source, function, (9, 0)).unwrap_err();
        assert!(matches!(e, CudaError::Invalid(_)), "{e}");
    }
    let nul = KernelSpec {
        source: format!("{}\0", good.source),
        ..good.clone()
    };
    let e = compile_kernel(&nul, (9, 0)).unwrap_err();
    assert!(e.to_string().contains("NUL"), "{e}");
}

#[test]
fn every_bundled_kernel_compiles_and_matches_the_abi() {
    if !nvrtc("every_bundled_kernel_compiles_and_matches_the_abi") {
        return;
    }
    let mean_max = include_str!("../kernels/mean_max.cu");
    for (major, minor) in CAPABILITIES {
        let pool_dense = KernelSpec::pool_dense(&model(), MAX_TOKENS);
        for (spec, what) in [
            (pool_dense, "pool_dense"),
            (spec_of(mean_max, "mean_max", 1), "mean_max"),
        ] {
            let ptx = compile_kernel(&spec, (major, minor))
                .unwrap_or_else(|e| panic!("{what} at sm_{major}{minor}: {e}"))
                .to_src();
            assert!(
                ptx.contains(&format!(".target sm_{major}{minor}")),
                "{what}: {ptx}"
            );
            assert!(ptx.contains(&format!(".entry {what}(")), "{what}: {ptx}");
            // The driver's load takes the PTX as a C string (cudarc
            // unwraps that conversion): no NUL may ride along.
            assert!(!ptx.contains('\0'), "{what}: PTX holds a NUL");
        }
    }
}

#[test]
fn a_kernel_that_does_not_compile_returns_nvrtc_log() {
    if !nvrtc("a_kernel_that_does_not_compile_returns_nvrtc_log") {
        return;
    }
    let mut spec = KernelSpec::pool_dense(&model(), MAX_TOKENS);
    spec.source
        .push_str("\nextern \"C\" __global__ void broken( { this is not C }\n");
    let check = |e: Result<(), CudaError>| match e {
        Err(CudaError::Compile { function, log }) => {
            assert_eq!(function, "pool_dense");
            // NVRTC names the file after the function, with the line.
            assert!(
                log.contains("pool_dense.cu(") && log.contains("error"),
                "NVRTC log: {log}"
            );
        }
        other => panic!("expected a compile error, got {other:?}"),
    };
    check(compile_kernel(&spec, (9, 0)).map(|_| ()));
    if gpu("a_kernel_that_does_not_compile_returns_nvrtc_log (on the device)") {
        check(CudaExecutor::new(spec, CudaConfig::default()).map(|_| ()));
    }
}

#[test]
fn a_kernel_not_found_under_its_name_is_refused_naming_it() {
    if !nvrtc("a_kernel_not_found_under_its_name_is_refused_naming_it") {
        return;
    }
    let unmangled = POOL_DENSE_SOURCE.replace("extern \"C\" __global__", "__global__");
    for (source, function) in [
        (POOL_DENSE_SOURCE.to_owned(), "pool_dens"),
        // Without extern "C" the name is C++-mangled.
        (unmangled, "pool_dense"),
    ] {
        match compile_kernel(&spec_of(&source, function, 3), (9, 0)) {
            Err(CudaError::Compile { function: f, log }) => {
                assert_eq!(f, function);
                assert!(
                    log.contains(&format!("defines no kernel `{function}`"))
                        && log.contains("extern \"C\" __global__"),
                    "{log}"
                );
            }
            other => panic!(
                "{function}: expected a compile error, got {:?}",
                other.map(|_| ())
            ),
        }
    }
}

#[test]
fn a_kernel_whose_signature_is_not_the_abi_is_refused() {
    if !nvrtc("a_kernel_whose_signature_is_not_the_abi_is_refused") {
        return;
    }
    let mean_max = include_str!("../kernels/mean_max.cu");
    let float_batch = mean_max.replace("int batch,", "float batch,");
    assert_ne!(float_batch, mean_max, "the signature to change is there");
    let cases = [
        // The spec uploads two weights, the kernel takes one.
        (
            spec_of(mean_max, "mean_max", 2),
            "takes (pointer, pointer, pointer, int, pointer, int), but convoy launches it with (pointer, pointer, pointer, pointer, int, pointer, int)",
        ),
        // batch as a float.
        (
            spec_of(&float_batch, "mean_max", 1),
            "takes (pointer, pointer, pointer, float, pointer, int)",
        ),
    ];
    for (spec, want) in cases {
        match compile_kernel(&spec, (9, 0)) {
            Err(CudaError::Invalid(why)) => assert!(why.contains(want), "{why}"),
            other => panic!("expected the ABI refused, got {:?}", other.map(|_| ())),
        }
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
    // A batch of empty requests only: no words to copy in.
    let empty = vec![Vec::new(); 3];
    lane.launch(&empty).expect("launch empty requests");
    assert_parity(
        &lane.finish().expect("finish empty requests"),
        &model.forward_batch(&empty).expect("CPU reference"),
        "a batch of empty requests",
    );
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
        .message()
        .contains("vocabulary"));
    assert!(lane
        .launch(&[vec![0u32; MAX_TOKENS + 1]])
        .unwrap_err()
        .message()
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
                    .map(|t| t.wait_bounded().expect("completed"))
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
    // Without a GPU, still check that it compiles and fits the ABI.
    if nvrtc("a_custom_kernel_runs_through_the_same_abi (compile)") {
        compile_kernel(&spec, (9, 0)).expect("compiles to the ABI");
    }
    if !gpu("a_custom_kernel_runs_through_the_same_abi") {
        return;
    }
    let exec = CudaExecutor::new(spec, poisoned()).expect("compiles");
    let mut lane = exec.new_lane(1).unwrap();
    let inputs = vec![vec![1.0, 3.0], vec![], vec![-2.0]];
    lane.launch(&inputs).unwrap();
    assert_eq!(
        lane.finish().unwrap(),
        vec![(4.0, 6.0), (0.0, 0.0), (-4.0, -4.0)]
    );
}
