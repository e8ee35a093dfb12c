//! What a device kernel needs from convoy, and convoy from it: the source,
//! the weights uploaded once, and how a batch of inputs is packed into one
//! ragged buffer and unpacked from one output matrix.
//!
//! This module is plain Rust (no CUDA), so packing is tested everywhere;
//! [`crate::device::cuda`] compiles and launches what it describes.
//!
//! # The kernel ABI
//!
//! Every kernel convoy launches has this signature:
//!
//! ```text
//! extern "C" __global__ void f(const float* w0, ..., const float* wK,   // KernelSpec::weights, in order
//!                              const unsigned* words, const unsigned* offsets, int batch,
//!                              float* out, int width)
//! ```
//!
//! Request `i` owns `words[offsets[i] .. offsets[i + 1]]` (what its
//! [`pack`](KernelSpec::pack) wrote) and writes `out[i * width ..
//! (i + 1) * width]`, which [`unpack`](KernelSpec::unpack) turns into its
//! output. The grid has one block per request, of
//! [`block_dim`](KernelSpec::block_dim) threads with
//! [`shared_bytes`](KernelSpec::shared_bytes) of dynamic shared memory: one
//! launch serves a whole batch of mixed lengths.

use std::fmt;
use std::sync::Arc;

use crate::device::model::PoolDense;

/// The built-in pool-dense kernel's CUDA C source.
pub const POOL_DENSE_SOURCE: &str = include_str!("../../kernels/pool_dense.cu");

/// A request's packed words, written by [`KernelSpec::pack`].
///
/// ```
/// let mut words = Vec::new();
/// let mut w = convoy::kernel::Words::new(&mut words, 4);
/// w.push_u32s(&[1, 2]).unwrap();
/// w.push_f32s(&[1.5]).unwrap();
/// assert!(w.push_u32s(&[9, 9]).is_err()); // over the 4-word limit
/// assert_eq!(words, vec![1, 2, 1.5f32.to_bits()]);
/// ```
#[derive(Debug)]
pub struct Words<'a> {
    buf: &'a mut Vec<u32>,
    start: usize,
    limit: usize,
}

impl<'a> Words<'a> {
    /// Appends to `buf`; this request may add at most `limit` words.
    pub fn new(buf: &'a mut Vec<u32>, limit: usize) -> Self {
        let start = buf.len();
        Self { buf, start, limit }
    }

    /// Appends words (token ids, indices).
    pub fn push_u32s(&mut self, words: &[u32]) -> Result<(), String> {
        self.room(words.len())?;
        self.buf.extend_from_slice(words);
        Ok(())
    }

    /// Appends floats, bit for bit (the kernel reads them back with
    /// `__uint_as_float` or through a `float*` cast).
    pub fn push_f32s(&mut self, values: &[f32]) -> Result<(), String> {
        self.room(values.len())?;
        self.buf.extend(values.iter().map(|v| v.to_bits()));
        Ok(())
    }

    /// Words this request has written so far.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether this request has written nothing yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn room(&self, more: usize) -> Result<(), String> {
        if self.len() + more > self.limit {
            return Err(format!(
                "request needs more than the maximum of {} words",
                self.limit
            ));
        }
        Ok(())
    }
}

/// Packs one input; an `Err` fails that batch before anything is launched.
pub type PackFn<I> = Arc<dyn Fn(&I, &mut Words<'_>) -> Result<(), String> + Send + Sync>;
/// Turns one output row (`width` floats) into a request's output.
pub type UnpackFn<O> = Arc<dyn Fn(&[f32]) -> O + Send + Sync>;
/// Checks one input at submit (see `Executor::check`).
pub type CheckFn<I> = Arc<dyn Fn(&I) -> Result<(), String> + Send + Sync>;

/// A kernel and everything convoy needs to run batches through it.
pub struct KernelSpec<I, O> {
    /// CUDA C source, compiled once with NVRTC.
    pub source: String,
    /// The `extern "C" __global__` function to launch.
    pub function: String,
    /// Uploaded once; passed first, in this order.
    pub weights: Vec<Vec<f32>>,
    /// Floats each request writes.
    pub width: usize,
    /// Threads per block (one block per request).
    pub block_dim: u32,
    /// Dynamic shared memory per block, in bytes.
    pub shared_bytes: u32,
    /// The most words one request may pack.
    pub max_words: usize,
    /// Packs one input's words.
    pub pack: PackFn<I>,
    /// Turns one output row into an output.
    pub unpack: UnpackFn<O>,
    /// Refuses at submit an input that could never run.
    pub check: CheckFn<I>,
}

impl<I, O> Clone for KernelSpec<I, O> {
    fn clone(&self) -> Self {
        Self {
            source: self.source.clone(),
            function: self.function.clone(),
            weights: self.weights.clone(),
            width: self.width,
            block_dim: self.block_dim,
            shared_bytes: self.shared_bytes,
            max_words: self.max_words,
            pack: self.pack.clone(),
            unpack: self.unpack.clone(),
            check: self.check.clone(),
        }
    }
}

impl<I, O> fmt::Debug for KernelSpec<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelSpec")
            .field("function", &self.function)
            .field(
                "weights",
                &self.weights.iter().map(Vec::len).collect::<Vec<_>>(),
            )
            .field("width", &self.width)
            .field("block_dim", &self.block_dim)
            .field("shared_bytes", &self.shared_bytes)
            .field("max_words", &self.max_words)
            .finish_non_exhaustive()
    }
}

/// A batch packed for one launch: all requests' words end to end, and
/// `batch + 1` offsets into them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Packed {
    /// Every request's words.
    pub words: Vec<u32>,
    /// Request `i` is `words[offsets[i]..offsets[i + 1]]`.
    pub offsets: Vec<u32>,
}

impl Packed {
    /// Packs `inputs` with `spec`, reusing this buffer's allocations (a
    /// worker keeps one, so steady state allocates nothing).
    ///
    /// ```
    /// use convoy::kernel::{KernelSpec, Packed};
    /// let model = convoy::model::PoolDense::seeded(100, 8, 1).unwrap();
    /// let spec = KernelSpec::pool_dense(&model, 16);
    /// let mut packed = Packed::default();
    /// packed.pack(&spec, &[vec![3u32, 4], vec![], vec![7]]).unwrap();
    /// assert_eq!(packed.offsets, vec![0, 2, 2, 3]);
    /// assert_eq!(packed.words, vec![3, 4, 7]);
    /// assert!(packed.pack(&spec, &[vec![100u32]]).is_err()); // outside the vocabulary
    /// assert!(packed.pack(&spec, &Vec::<Vec<u32>>::new()).is_err()); // empty batch
    /// ```
    pub fn pack<I, O>(&mut self, spec: &KernelSpec<I, O>, inputs: &[I]) -> Result<(), String> {
        if inputs.is_empty() {
            return Err("empty batch".into());
        }
        self.words.clear();
        self.offsets.clear();
        self.offsets.push(0);
        for (i, input) in inputs.iter().enumerate() {
            (spec.pack)(input, &mut Words::new(&mut self.words, spec.max_words))
                .map_err(|e| format!("request {i} of the batch: {e}"))?;
            let end = u32::try_from(self.words.len())
                .map_err(|_| "batch packs more than 2^32 words".to_owned())?;
            self.offsets.push(end);
        }
        Ok(())
    }

    /// Requests in the batch.
    pub fn batch(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }
}

impl KernelSpec<Vec<u32>, Vec<f32>> {
    /// The built-in pool-dense model as a kernel: inputs are token ids, at
    /// most `max_tokens` per request, each below the model's vocabulary.
    ///
    /// ```
    /// let model = convoy::model::PoolDense::seeded(100, 8, 1).unwrap();
    /// let spec = convoy::kernel::KernelSpec::pool_dense(&model, 4);
    /// assert_eq!(spec.width, 8);
    /// assert!((spec.check)(&vec![1, 2, 3, 4]).is_ok());
    /// assert!((spec.check)(&vec![1, 2, 3, 4, 5]).is_err()); // too long
    /// assert!((spec.check)(&vec![100]).is_err()); // outside the vocabulary
    /// ```
    pub fn pool_dense(model: &PoolDense, max_tokens: usize) -> Self {
        let (e, w, b) = model.weights();
        let vocab = model.vocab();
        let check = move |tokens: &Vec<u32>| -> Result<(), String> {
            if tokens.len() > max_tokens {
                return Err(format!(
                    "{} tokens is over the maximum of {max_tokens}",
                    tokens.len()
                ));
            }
            crate::device::model::check_tokens(tokens, vocab).map_err(|e| e.to_string())
        };
        let check: CheckFn<Vec<u32>> = Arc::new(check);
        let pack_check = check.clone();
        // 256 threads cover D = 256 in one pass; fewer for a small model.
        let block_dim = model.dim().next_power_of_two().clamp(32, 256) as u32;
        Self {
            source: POOL_DENSE_SOURCE.to_owned(),
            function: "pool_dense".into(),
            weights: vec![e.to_vec(), w.to_vec(), b.to_vec()],
            width: model.dim(),
            block_dim,
            shared_bytes: (model.dim() * std::mem::size_of::<f32>()) as u32,
            max_words: max_tokens,
            // Checked again here, so that a token id outside the table can
            // never reach the device (an out-of-bounds read there is a
            // fault, not an error).
            pack: Arc::new(move |tokens: &Vec<u32>, words: &mut Words<'_>| {
                pack_check(tokens)?;
                words.push_u32s(tokens)
            }),
            unpack: Arc::new(|row: &[f32]| row.to_vec()),
            check,
        }
    }
}

impl<I, O> KernelSpec<I, O> {
    /// Checks the spec's own shape, before anything touches a device.
    pub fn validate(&self) -> Result<(), String> {
        if self.width == 0 {
            return Err("width must be at least 1".into());
        }
        if self.block_dim == 0 || self.block_dim > 1024 {
            return Err(format!("block_dim {} is outside 1..=1024", self.block_dim));
        }
        check_c_strings(&self.source, &self.function)?;
        if self.weights.iter().any(Vec::is_empty) {
            return Err("a weight buffer is empty".into());
        }
        if i32::try_from(self.width).is_err() {
            return Err("width does not fit an int".into());
        }
        Ok(())
    }
}

/// Checks what NVRTC and the driver take as C strings: a kernel's source
/// and its function name, which must not be empty. cudarc converts both
/// and panics on a NUL, so a NUL is refused here with a reason instead.
pub(crate) fn check_c_strings(source: &str, function: &str) -> Result<(), String> {
    if function.is_empty() {
        return Err("no kernel function name".into());
    }
    if function.contains('\0') {
        return Err("kernel function name contains NUL".into());
    }
    if let Some(at) = source.find('\0') {
        return Err(format!("kernel source contains NUL at byte {at}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the pool-dense kernel's arithmetic on the packed buffers, the
    /// way the CUDA source indexes them, so the packing and the ABI are
    /// checked against the model without a device.
    fn pool_dense_on_packed(model: &PoolDense, p: &Packed) -> Vec<f32> {
        let (e, w, b) = model.weights();
        let d = model.dim();
        let mut out = vec![f32::NAN; p.batch() * d];
        for i in 0..p.batch() {
            let (start, end) = (p.offsets[i] as usize, p.offsets[i + 1] as usize);
            let n = end - start;
            let inv = if n > 0 { 1.0 / n as f32 } else { 0.0 };
            // `group_sum<N>`: a pairwise tree over N tokens from `t`.
            fn group_sum(e: &[f32], words: &[u32], t: usize, n: usize, d: usize, j: usize) -> f32 {
                if n == 1 {
                    e[words[t] as usize * d + j]
                } else {
                    group_sum(e, words, t, n / 2, d, j)
                        + group_sum(e, words, t + n / 2, n / 2, d, j)
                }
            }
            let pooled: Vec<f32> = (0..d)
                .map(|j| {
                    // The kernel's loop: groups of 16, one of 8, one of 4,
                    // then token by token.
                    let (mut acc, mut t) = (0.0f32, start);
                    while end - t >= 16 {
                        acc += group_sum(e, &p.words, t, 16, d, j);
                        t += 16;
                    }
                    for n in [8, 4] {
                        if end - t >= n {
                            acc += group_sum(e, &p.words, t, n, d, j);
                            t += n;
                        }
                    }
                    for t in t..end {
                        acc += group_sum(e, &p.words, t, 1, d, j);
                    }
                    acc * inv
                })
                .collect();
            for j in 0..d {
                let y = (0..d).fold(b[j], |y, k| y + pooled[k] * w[k * d + j]);
                out[i * d + j] = crate::device::model::gelu(y);
            }
        }
        out
    }

    #[test]
    fn packed_layout_matches_the_model() {
        let model = PoolDense::seeded(64, 16, 11).unwrap();
        let spec = KernelSpec::pool_dense(&model, 32);
        // Lengths on each side of every group size, so each branch of the
        // kernel's gather runs.
        let inputs: Vec<Vec<u32>> = [0usize, 1, 3, 4, 5, 8, 12, 15, 16, 17, 29, 31, 32]
            .iter()
            .map(|&n| (0..n as u32).map(|t| (t * 37 + n as u32) % 64).collect())
            .chain([vec![63, 0, 63]])
            .collect();
        let mut packed = Packed::default();
        packed.pack(&spec, &inputs).unwrap();
        assert_eq!(&packed.offsets[..5], &[0, 0, 1, 4, 8]);
        let flat = pool_dense_on_packed(&model, &packed);
        let want = model.forward_batch(&inputs).unwrap();
        for (i, row) in flat.chunks_exact(spec.width).enumerate() {
            // Equal, not close: the kernel sums in the model's order and
            // this has no fused multiply-add, so any difference is a
            // change of order on one side. Except under Miri, which gives
            // `tanh` (GELU's) a few ULPs of deliberate noise per call, since
            // the standard library promises it no exact result: there,
            // within a few ULPs.
            let got = (spec.unpack)(row);
            if cfg!(miri) {
                for (a, b) in got.iter().zip(&want[i]) {
                    assert!(
                        (a - b).abs() <= 1e-6 * b.abs().max(1e-3),
                        "request {i}: {a} vs {b}"
                    );
                }
            } else {
                assert_eq!(got, want[i], "request {i} ({} tokens)", inputs[i].len());
            }
        }
    }

    #[test]
    fn pack_refuses_what_the_device_must_never_see() {
        let model = PoolDense::seeded(10, 4, 1).unwrap();
        let spec = KernelSpec::pool_dense(&model, 3);
        let mut p = Packed::default();
        let long = p.pack(&spec, &[vec![1], vec![1, 2, 3, 4]]).unwrap_err();
        assert!(
            long.contains("request 1") && long.contains("maximum of 3"),
            "{long}"
        );
        let oov = p.pack(&spec, &[vec![10]]).unwrap_err();
        assert!(oov.contains("vocabulary"), "{oov}");
        // Reuse after an error starts clean.
        p.pack(&spec, &[vec![2, 3]]).unwrap();
        assert_eq!(
            (p.words.clone(), p.offsets.clone()),
            (vec![2, 3], vec![0, 2])
        );
    }

    #[test]
    fn spec_shape_is_validated() {
        let model = PoolDense::seeded(10, 4, 1).unwrap();
        let good = KernelSpec::pool_dense(&model, 3);
        assert!(good.validate().is_ok());
        for (bad, what) in [
            (
                KernelSpec {
                    width: 0,
                    ..good.clone()
                },
                "width",
            ),
            (
                KernelSpec {
                    block_dim: 0,
                    ..good.clone()
                },
                "block_dim",
            ),
            (
                KernelSpec {
                    block_dim: 2048,
                    ..good.clone()
                },
                "block_dim",
            ),
            (
                KernelSpec {
                    function: String::new(),
                    ..good.clone()
                },
                "function",
            ),
            (
                KernelSpec {
                    weights: vec![vec![]],
                    ..good.clone()
                },
                "weight",
            ),
        ] {
            let e = bad.validate().unwrap_err();
            assert!(e.contains(what), "{e}");
        }
    }

    #[test]
    fn kernel_source_has_the_abi_function() {
        assert!(POOL_DENSE_SOURCE.contains("extern \"C\" __global__ void pool_dense("));
    }
}
