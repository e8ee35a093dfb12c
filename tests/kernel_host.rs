//! The real CUDA sources of the bundled kernels, compiled by the host's
//! C++ compiler behind a small shim and run on the CPU: pool-dense against
//! the CPU model, equal to the last bit; the custom-kernel example's
//! `mean_max` against a plain mean and max.
//!
//! No GPU has run the kernel yet (README, "GPU"), and NVRTC in CI only
//! checks that it compiles. This checks what it computes, fed as a worker
//! feeds it (the `KernelSpec`'s weights in its order, the words and
//! offsets of `Packed::pack`, rows read back through its `unpack`): the
//! ragged offsets, empty and one-token requests, every branch of the grouped
//! gather, the columns each thread takes (a block of the launch's own
//! size, of one thread, of 24, and of 256 threads over 300 columns), the
//! barrier between the gather and the dense layer (the shim's shared
//! memory starts as NaN, and a thread that reads it too early shows), and
//! that the kernel sums in the model's order (`add_rows` in
//! `src/model.rs`), which is what keeps the GPU parity test's 1e-5 bound
//! about rounding rather than about two orders drifting apart over 2,048
//! tokens.
//!
//! The shim works for any kernel of convoy's ABI, given its
//! `KernelSpec`: it runs a block's threads as OS threads (`threadIdx`
//! thread local, `__syncthreads()` a barrier, `__shared__` arrays one copy
//! per block, the dynamic one NaN until written), blocks one after
//! another. It
//! builds with `-ffp-contract=off`: without fused multiply-adds the host
//! and the model do the same float operations in the same order, so any
//! difference is a change of order on one side, or a thread reading what
//! another has not written. What it cannot show is the GPU's own memory
//! model, warps, or the device's `tanhf`: those are the GPU tests'.
//!
//! Needs a C++ compiler (`$CXX`, else `c++`, `g++` or `clang++`); without
//! one the test prints why and passes, and under `CI=true` (where
//! `.ci/run` installs `g++`) it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use convoy::kernel::{KernelSpec, Packed, Words};
use convoy::model::{splitmix64, PoolDense};

/// Stands in for CUDA's built-ins so a kernel compiles as plain C++.
/// `call.h` (written per kernel) defines `KERNEL_CALL`, the launch of the
/// spec's function with its weights, the words, offsets, batch, out and
/// width, in the ABI's order.
const SHIM: &str = r#"
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>
struct Dim { int x; };
static Dim blockIdx, blockDim;
static thread_local Dim threadIdx;
// __syncthreads(): every thread of the block waits for the rest.
struct Barrier {
    std::mutex m;
    std::condition_variable cv;
    int n = 0, waiting = 0, generation = 0;
    void wait() {
        std::unique_lock<std::mutex> lock(m);
        int g = generation;
        if (++waiting == n) { waiting = 0; ++generation; cv.notify_all(); return; }
        cv.wait(lock, [&] { return generation != g; });
    }
};
static Barrier block_barrier;
#define __global__
#define __device__
#define __forceinline__ inline
// A block's static shared arrays: one copy for all its threads (blocks run
// one after another, so one copy serves them all).
#define __shared__ static
#define __syncthreads() block_barrier.wait()
// The block's dynamic shared memory (the `extern __shared__` array).
static std::vector<float> shared_floats;
#include "kernel.cu"
template <class T> static std::vector<T> load(const std::string& path) {
    std::vector<T> v;
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) return v;
    T x;
    while (std::fread(&x, sizeof x, 1, f) == 1) v.push_back(x);
    std::fclose(f);
    return v;
}
// Usage: shim BLOCK_DIM WIDTH WEIGHTS SHARED_FLOATS. Runs every block, one
// after another, each with BLOCK_DIM threads; reads weight0.f32 ...,
// words.u32 and offsets.u32 and writes out.f32 in this folder.
int main(int argc, char** argv) {
    if (argc != 5) return 2;
    int width = std::atoi(argv[2]), nweights = std::atoi(argv[3]);
    std::vector<std::vector<float>> w(nweights);
    for (int k = 0; k < nweights; ++k) w[k] = load<float>("weight" + std::to_string(k) + ".f32");
    std::vector<unsigned> words = load<unsigned>("words.u32"), offsets = load<unsigned>("offsets.u32");
    int batch = (int)offsets.size() - 1;
    blockDim.x = std::atoi(argv[1]);
    if (blockDim.x < 1 || width < 1 || batch < 1) return 2;
    words.push_back(0);  // so that an empty batch of words still has data()
    std::vector<float> out((size_t)batch * width, NAN);  // poisoned: an unwritten value stays NaN
    block_barrier.n = blockDim.x;
    for (int i = 0; i < batch; ++i) {
        blockIdx.x = i;
        shared_floats.assign(std::atoi(argv[4]), NAN);  // fresh per block, and NaN until written
        std::vector<std::thread> threads;
        for (int t = 0; t < blockDim.x; ++t) {
            threads.emplace_back([&, t] {
                threadIdx.x = t;
                KERNEL_CALL;
            });
        }
        for (std::thread& t : threads) t.join();
    }
    FILE* f = std::fopen("out.f32", "wb");
    std::fwrite(out.data(), sizeof(float), out.size(), f);
    std::fclose(f);
    return 0;
}
"#;

/// The C++ compiler to use, or why there is none.
fn compiler() -> Result<String, String> {
    let candidates: Vec<String> = std::env::var("CXX")
        .into_iter()
        .chain(["c++", "g++", "clang++"].map(String::from))
        .collect();
    for cxx in &candidates {
        if Command::new(cxx).arg("--version").output().is_ok() {
            return Ok(cxx.clone());
        }
    }
    Err(format!(
        "no C++ compiler found (tried $CXX, {})",
        candidates.join(", ")
    ))
}

fn write_le<T: Copy>(path: &Path, values: &[T], bytes: impl Fn(T) -> [u8; 4]) {
    let data: Vec<u8> = values.iter().flat_map(|&v| bytes(v)).collect();
    std::fs::write(path, data).expect("write the shim's input");
}

/// A fresh folder for one run.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("convoy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scratch folder");
    dir
}

/// The source with each dynamic shared array (`extern __shared__ float
/// NAME[];`, which C++ cannot take) pointed at the shim's buffer.
fn host_source(source: &str) -> String {
    const DECL: &str = "extern __shared__ float ";
    let mut out = String::new();
    let mut rest = source;
    while let Some(at) = rest.find(DECL) {
        let after = &rest[at + DECL.len()..];
        let end = after
            .find("[];")
            .expect("a dynamic shared array is declared as `extern __shared__ float NAME[];`");
        out.push_str(&rest[..at]);
        out.push_str(&format!(
            "float* {} = shared_floats.data();",
            after[..end].trim()
        ));
        rest = &after[end + 3..];
    }
    out.push_str(rest);
    out
}

/// Builds `spec`'s kernel behind the shim in `dir`. `false` (with the
/// reason printed) where no C++ compiler is present.
fn build_on_host<I, O>(dir: &Path, spec: &KernelSpec<I, O>) -> bool {
    let cxx = match compiler() {
        Ok(c) => c,
        Err(why) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: {why} (.ci/run installs g++)"
            );
            eprintln!("SKIP kernel_host: {why}");
            return false;
        }
    };
    std::fs::write(dir.join("kernel.cu"), host_source(&spec.source)).expect("write kernel.cu");
    let weights: String = (0..spec.weights.len())
        .map(|k| format!("w[{k}].data(), "))
        .collect();
    let call = format!(
        "#define KERNEL_CALL {}({weights}words.data(), offsets.data(), batch, out.data(), width)\n",
        spec.function
    );
    std::fs::write(dir.join("call.h"), call).expect("write call.h");
    std::fs::write(dir.join("shim.cpp"), format!("#include \"call.h\"\n{SHIM}"))
        .expect("write shim.cpp");
    let built = Command::new(&cxx)
        .current_dir(dir)
        .args([
            "-O2",
            "-std=c++11",
            "-ffp-contract=off",
            "-pthread",
            "-o",
            "shim",
            "shim.cpp",
        ])
        .output()
        .expect("run the C++ compiler");
    assert!(
        built.status.success(),
        "{cxx} could not build {} behind the shim:\n{}",
        spec.function,
        String::from_utf8_lossy(&built.stderr)
    );
    true
}

/// Runs the built shim on `inputs` as a worker would launch them: the
/// spec's weights in the spec's order (what `CudaExecutor` uploads), the
/// words and offsets `Packed::pack` makes, `block_dim` threads per block,
/// the spec's dynamic shared memory. Returns the rows through `unpack`.
fn run_on_host<I, O>(dir: &Path, spec: &KernelSpec<I, O>, inputs: &[I], block_dim: u32) -> Vec<O> {
    for (k, weight) in spec.weights.iter().enumerate() {
        write_le(
            &dir.join(format!("weight{k}.f32")),
            weight,
            f32::to_le_bytes,
        );
    }
    let mut packed = Packed::default();
    packed.pack(spec, inputs).expect("the batch packs");
    write_le(&dir.join("words.u32"), &packed.words, u32::to_le_bytes);
    write_le(&dir.join("offsets.u32"), &packed.offsets, u32::to_le_bytes);
    let ran = Command::new(dir.join("shim"))
        .current_dir(dir)
        .args([
            block_dim.to_string(),
            spec.width.to_string(),
            spec.weights.len().to_string(),
            (spec.shared_bytes / 4).to_string(),
        ])
        .output()
        .expect("run the shim");
    // A crash here is the kernel reading out of bounds: weights in the
    // wrong order or of the wrong size, or offsets past the words.
    assert!(ran.status.success(), "the shim failed: {ran:?}");
    let out = std::fs::read(dir.join("out.f32")).expect("the shim's output");
    let floats: Vec<f32> = out
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(floats.len(), inputs.len() * spec.width, "output size");
    floats
        .chunks(spec.width)
        .map(|row| (spec.unpack)(row))
        .collect()
}

/// Fresh ragged requests each run, around a fixed set of lengths that
/// takes every branch of the grouped gather (below and across 4, 8 and
/// 16, several whole groups, and long requests).
fn ragged_batch(seed: &mut u64, vocab: u64, fixed: &[usize], random: usize) -> Vec<Vec<u32>> {
    let lengths: Vec<usize> = fixed
        .iter()
        .copied()
        .chain((0..random).map(|_| (splitmix64(seed) % 3_000) as usize))
        .collect();
    lengths
        .iter()
        .map(|&n| (0..n).map(|_| (splitmix64(seed) % vocab) as u32).collect())
        .collect()
}

fn assert_equal(got: &[Vec<f32>], want: &[Vec<f32>], batch: &[Vec<u32>], how: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if let Some(j) = (0..w.len()).find(|&j| g[j] != w[j]) {
            panic!(
                "{how}: request {i} ({} tokens), column {j}: {} from the kernel, {} from the model{}",
                batch[i].len(),
                g[j],
                w[j],
                if g[j].is_nan() {
                    " (NaN: never written, or computed from shared memory read before it was written)"
                } else {
                    ""
                }
            );
        }
    }
}

#[test]
fn the_cuda_source_computes_what_the_cpu_model_does() {
    let dir = scratch("kernel-host");
    let model = PoolDense::seeded(5_000, 64, 42).expect("a small model");
    let spec = KernelSpec::pool_dense(&model, 4_096);
    if !build_on_host(&dir, &spec) {
        return;
    }
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64);
    println!("seed {seed}");
    let fixed = [
        0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 20, 24, 28, 31, 32, 33, 47, 48, 63, 64, 65,
        1_000, 2_047, 2_048,
    ];
    // D = 64: the launch's own block (64 threads, a column each), one
    // thread (every column in turn), and 24 threads (columns strided,
    // some threads with three, some with two).
    let batch = ragged_batch(&mut seed, 5_000, &fixed, 24);
    let want = model.forward_batch(&batch).expect("tokens in range");
    for threads in [spec.block_dim, 1, 24] {
        let got = run_on_host(&dir, &spec, &batch, threads);
        assert_equal(&got, &want, &batch, &format!("D = 64, {threads} threads"));
    }
    // D = 300: more columns than the launch's 256 threads, so some
    // threads take two.
    let model = PoolDense::seeded(2_000, 300, 7).expect("a small model");
    let spec = KernelSpec::pool_dense(&model, 4_096);
    assert_eq!(spec.block_dim, 256);
    let batch = ragged_batch(&mut seed, 2_000, &[0, 1, 16, 37, 700], 3);
    let got = run_on_host(&dir, &spec, &batch, spec.block_dim);
    let want = model.forward_batch(&batch).expect("tokens in range");
    assert_equal(&got, &want, &batch, "D = 300, 256 threads");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The custom-kernel example's kernel (`kernels/mean_max.cu`): each
/// thread reduces a strided part of a request into static shared arrays,
/// and thread 0 combines them after the barrier.
#[test]
fn the_custom_kernel_example_computes_mean_and_max() {
    let dir = scratch("kernel-host-mean-max");
    let scale = 1.5f32;
    let spec = KernelSpec::<Vec<f32>, (f32, f32)> {
        source: include_str!("../kernels/mean_max.cu").into(),
        function: "mean_max".into(),
        weights: vec![vec![scale]],
        width: 2,
        block_dim: 128,
        shared_bytes: 0,
        max_words: 4_096,
        pack: std::sync::Arc::new(|v: &Vec<f32>, w: &mut Words<'_>| w.push_f32s(v)),
        unpack: std::sync::Arc::new(|row: &[f32]| (row[0], row[1])),
        check: std::sync::Arc::new(|_: &Vec<f32>| Ok(())),
    };
    if !build_on_host(&dir, &spec) {
        return;
    }
    let mut seed = 0x5eed_u64;
    let unit = |s: &mut u64| (splitmix64(s) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
    let inputs: Vec<Vec<f32>> = [0usize, 1, 2, 127, 128, 129, 1_000, 4_096]
        .iter()
        .map(|&n| (0..n).map(|_| unit(&mut seed) * 100.0).collect())
        .collect();
    // The block the example launches (128, its shared arrays' size), one
    // thread, and 7 (a part of uneven length per thread).
    for threads in [spec.block_dim, 1, 7] {
        let got = run_on_host(&dir, &spec, &inputs, threads);
        for (i, (v, &(mean, max))) in inputs.iter().zip(&got).enumerate() {
            let how = format!("{threads} threads, request {i} ({} values)", v.len());
            if v.is_empty() {
                assert_eq!((mean, max), (0.0, 0.0), "{how}");
                continue;
            }
            let want_max = v.iter().copied().fold(f32::MIN, f32::max) * scale;
            assert_eq!(max, want_max, "{how}: max");
            // The threads' partial sums add in another order than one
            // pass: equal up to rounding on the sum of magnitudes.
            let n = v.len() as f64;
            let want_mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n * f64::from(scale);
            let bound = v.iter().map(|&x| f64::from(x.abs())).sum::<f64>() / n * 1e-5 + 1e-6;
            assert!(
                (f64::from(mean) - want_mean).abs() <= bound,
                "{how}: mean {mean}, want {want_mean} (within {bound:e})"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
