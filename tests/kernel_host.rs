//! The real CUDA source of the pool-dense kernel, compiled by the host's
//! C++ compiler behind a small shim and run on the CPU, against the CPU
//! model: equal to the last bit.
//!
//! No GPU has run the kernel yet (README, "GPU"), and NVRTC in CI only
//! checks that it compiles. This checks what it computes: the ragged
//! offsets, empty and one-token requests, every branch of the grouped
//! gather, and that the kernel sums in the model's order (`add_rows` in
//! `src/model.rs`), which is what keeps the GPU parity test's 1e-5 bound
//! about rounding rather than about two orders drifting apart over 2,048
//! tokens. The shim runs each block with one thread (`blockDim.x = 1`,
//! `__syncthreads()` a no-op), so the per-thread column loops cover every
//! column; how threads share a block is left to the GPU tests. It builds
//! with `-ffp-contract=off`: without fused multiply-adds the host and the
//! model do the same float operations in the same order, so any
//! difference is a change of order on one side.
//!
//! Needs a C++ compiler (`$CXX`, else `c++`, `g++` or `clang++`); without
//! one the test prints why and passes, and under `CI=true` (where
//! `.ci/run` installs `g++`) it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use convoy::kernel::POOL_DENSE_SOURCE;
use convoy::model::{splitmix64, PoolDense};

/// Stands in for CUDA's built-ins so the kernel compiles as plain C++.
const SHIM: &str = r#"
#include <cmath>
#include <cstdio>
#include <vector>
struct Dim { int x; };
static Dim blockIdx, threadIdx, blockDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __syncthreads() ((void)0)
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
int main() {
    std::vector<float> e = load<float>("E.f32"), w = load<float>("W.f32"), b = load<float>("b.f32");
    std::vector<unsigned> words = load<unsigned>("words.u32"), offsets = load<unsigned>("offsets.u32");
    int width = (int)b.size(), batch = (int)offsets.size() - 1;
    shared_floats.assign(width, NAN);
    std::vector<float> out((size_t)batch * width, NAN);  // poisoned: an unwritten row stays NaN
    blockDim.x = 1;
    threadIdx.x = 0;
    for (int i = 0; i < batch; ++i) {
        blockIdx.x = i;
        pool_dense(e.data(), w.data(), b.data(), words.data(), offsets.data(), batch, out.data(), width);
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

/// Compiles the kernel behind the shim in `dir`, runs it on the batch and
/// returns its output rows. `None` (with the reason printed) where no C++
/// compiler is present.
fn run_on_host(dir: &Path, model: &PoolDense, batch: &[Vec<u32>]) -> Option<Vec<Vec<f32>>> {
    let cxx = match compiler() {
        Ok(c) => c,
        Err(why) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: {why} (.ci/run installs g++)"
            );
            eprintln!("SKIP kernel_host: {why}");
            return None;
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
    let (e, w, b) = model.weights();
    write_le(&dir.join("E.f32"), e, f32::to_le_bytes);
    write_le(&dir.join("W.f32"), w, f32::to_le_bytes);
    write_le(&dir.join("b.f32"), b, f32::to_le_bytes);
    let words: Vec<u32> = batch.concat();
    let offsets: Vec<u32> = std::iter::once(0)
        .chain(batch.iter().scan(0u32, |end, r| {
            *end += r.len() as u32;
            Some(*end)
        }))
        .collect();
    write_le(&dir.join("words.u32"), &words, u32::to_le_bytes);
    write_le(&dir.join("offsets.u32"), &offsets, u32::to_le_bytes);

    let built = Command::new(&cxx)
        .current_dir(dir)
        .args([
            "-O2",
            "-std=c++11",
            "-ffp-contract=off",
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
    let ran = Command::new(dir.join("shim"))
        .current_dir(dir)
        .output()
        .expect("run the shim");
    assert!(ran.status.success(), "the shim failed: {ran:?}");
    let out = std::fs::read(dir.join("out.f32")).expect("the shim's output");
    let floats: Vec<f32> = out
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(floats.len(), batch.len() * model.dim(), "output size");
    Some(floats.chunks(model.dim()).map(<[f32]>::to_vec).collect())
}

#[test]
fn the_cuda_source_computes_what_the_cpu_model_does() {
    let model = PoolDense::seeded(5_000, 64, 42).expect("a small model");
    // Fresh lengths and tokens each run, around a fixed set that takes
    // every branch of the grouped gather (below and across 4, 8 and 16,
    // several whole groups, and long requests).
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64);
    println!("seed {seed}");
    let mut lengths: Vec<usize> = vec![
        0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 20, 24, 28, 31, 32, 33, 47, 48, 63, 64, 65,
        1_000, 2_047, 2_048,
    ];
    lengths.extend((0..24).map(|_| (splitmix64(&mut seed) % 3_000) as usize));
    let batch: Vec<Vec<u32>> = lengths
        .iter()
        .map(|&n| {
            (0..n)
                .map(|_| (splitmix64(&mut seed) % 5_000) as u32)
                .collect()
        })
        .collect();
    let dir = scratch("kernel-host");
    let Some(got) = run_on_host(&dir, &model, &batch) else {
        return;
    };
    let want = model.forward_batch(&batch).expect("tokens in range");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            g.iter().all(|x| !x.is_nan()),
            "request {i}: the kernel left output unwritten"
        );
        if let Some(j) = (0..w.len()).find(|&j| g[j] != w[j]) {
            panic!(
                "request {i} ({} tokens), column {j}: {} from the kernel, {} from the model",
                batch[i].len(),
                g[j],
                w[j]
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
