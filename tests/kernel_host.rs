//! The real CUDA source of the pool-dense kernel, compiled by the host's
//! C++ compiler behind a small shim and run on the CPU, against the CPU
//! model: equal to the last bit.
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
//! The shim runs a block's threads as OS threads (`threadIdx` thread
//! local, `__syncthreads()` a barrier), blocks one after another. It
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

use convoy::kernel::{KernelSpec, Packed, POOL_DENSE_SOURCE};
use convoy::model::{splitmix64, PoolDense};

/// Stands in for CUDA's built-ins so the kernel compiles as plain C++.
const SHIM: &str = r#"
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
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
#define __syncthreads() block_barrier.wait()
static std::vector<float> shared_floats;
#include "kernel.cu"
template <class T> static std::vector<T> load(const char* path) {
    std::vector<T> v;
    FILE* f = std::fopen(path, "rb");
    if (!f) return v;
    T x;
    while (std::fread(&x, sizeof x, 1, f) == 1) v.push_back(x);
    std::fclose(f);
    return v;
}
// Usage: shim BLOCK_DIM WIDTH. Runs every block, one after another, each with
// BLOCK_DIM threads; reads the inputs and writes out.f32 in this folder.
int main(int argc, char** argv) {
    // The spec's weights in its order (the kernel's parameter order).
    std::vector<float> e = load<float>("weight0.f32"), w = load<float>("weight1.f32"), b = load<float>("weight2.f32");
    std::vector<unsigned> words = load<unsigned>("words.u32"), offsets = load<unsigned>("offsets.u32");
    int width = argc > 2 ? std::atoi(argv[2]) : 0, batch = (int)offsets.size() - 1;
    std::vector<float> out((size_t)batch * width, NAN);  // poisoned: an unwritten value stays NaN
    blockDim.x = argc > 1 ? std::atoi(argv[1]) : 1;
    if (blockDim.x < 1 || width < 1 || batch < 1) return 2;
    block_barrier.n = blockDim.x;
    for (int i = 0; i < batch; ++i) {
        blockIdx.x = i;
        shared_floats.assign(width, NAN);  // fresh shared memory per block
        std::vector<std::thread> threads;
        for (int t = 0; t < blockDim.x; ++t) {
            threads.emplace_back([&, t] {
                threadIdx.x = t;
                pool_dense(e.data(), w.data(), b.data(), words.data(), offsets.data(), batch, out.data(), width);
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

/// Builds the kernel behind the shim in `dir`. `false` (with the reason
/// printed) where no C++ compiler is present.
fn build_on_host(dir: &Path) -> bool {
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
    // The one line C++ cannot take as it is: dynamic shared memory.
    let decl = "extern __shared__ float pooled[];";
    assert!(
        POOL_DENSE_SOURCE.contains(decl),
        "the kernel no longer declares {decl:?}; update the shim"
    );
    let kernel = POOL_DENSE_SOURCE.replace(decl, "float* pooled = shared_floats.data();");
    std::fs::write(dir.join("kernel.cu"), kernel).expect("write kernel.cu");
    std::fs::write(dir.join("shim.cpp"), SHIM).expect("write shim.cpp");
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
        "{cxx} could not build the kernel behind the shim:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    true
}

/// Runs the built shim on `batch` as a worker would launch it: the
/// spec's weights in the spec's order (what `CudaExecutor` uploads), the
/// words and offsets `Packed::pack` makes, `block_dim` threads per block.
/// Returns the rows through the spec's `unpack`.
fn run_on_host(
    dir: &Path,
    spec: &KernelSpec<Vec<u32>, Vec<f32>>,
    batch: &[Vec<u32>],
    block_dim: u32,
) -> Vec<Vec<f32>> {
    assert_eq!(spec.weights.len(), 3, "pool_dense takes E, W and b");
    for (k, weight) in spec.weights.iter().enumerate() {
        write_le(
            &dir.join(format!("weight{k}.f32")),
            weight,
            f32::to_le_bytes,
        );
    }
    let mut packed = Packed::default();
    packed.pack(spec, batch).expect("the batch packs");
    write_le(&dir.join("words.u32"), &packed.words, u32::to_le_bytes);
    write_le(&dir.join("offsets.u32"), &packed.offsets, u32::to_le_bytes);
    let ran = Command::new(dir.join("shim"))
        .current_dir(dir)
        .args([block_dim.to_string(), spec.width.to_string()])
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
    assert_eq!(floats.len(), batch.len() * spec.width, "output size");
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
    if !build_on_host(&dir) {
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
    let model = PoolDense::seeded(5_000, 64, 42).expect("a small model");
    let spec = KernelSpec::pool_dense(&model, 4_096);
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
