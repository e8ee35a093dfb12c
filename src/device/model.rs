//! The built-in model, **pool-dense**: `GELU(mean(E[tokens]) @ W + b)`.
//!
//! A request is a list of token ids; the output is one `D`-vector of f32.
//! `E` is `V×D`, `W` is `D×D`, `b` is `D`, row-major. A batch does one gather
//! and mean per request and one `(B×D)·(D×D)` product for the whole batch,
//! which is where batching pays. The same model is the CPU reference for the
//! GPU kernel, and weights can be loaded from raw little-endian f32 files so
//! other implementations can be checked against this one.

use std::path::Path;

use crate::device::executor::Executor;
use crate::outcome::ExecutorError;

/// Why a model could not be built or a request not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// `V` or `D` is zero.
    #[error("model dimensions must be at least 1 (vocab {vocab}, dim {dim})")]
    ZeroDimension {
        /// `V`.
        vocab: usize,
        /// `D`.
        dim: usize,
    },
    /// More weights than one table can hold: `V × D` or `D × D` above
    /// [`MAX_WEIGHTS`] floats (or past `usize`), or a vocabulary larger
    /// than a `u32` token id can address.
    #[error("model too large: vocab {vocab} × dim {dim} (at most {MAX_WEIGHTS} floats per table, vocab at most 2^32)")]
    TooLarge {
        /// `V`.
        vocab: usize,
        /// `D`.
        dim: usize,
    },
    /// A weight file is missing, unreadable or the wrong size.
    #[error("{path}: {reason}")]
    Weights {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// A vector of the wrong size for the dense layer.
    #[error("vector has {got} values, the model takes {dim}")]
    WrongDimension {
        /// Its length.
        got: usize,
        /// `D`.
        dim: usize,
    },
    /// A token id outside the embedding table.
    #[error("token id {token} is outside the vocabulary of {vocab}")]
    TokenOutOfRange {
        /// The id.
        token: u32,
        /// `V`.
        vocab: usize,
    },
}

/// The pool-dense model's weights.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolDense {
    vocab: usize,
    dim: usize,
    embeddings: Vec<f32>,
    weights: Vec<f32>,
    bias: Vec<f32>,
}

/// The most floats one weight table (`E` or `W`) may hold: 2^32, 16 GiB.
/// A size past it is a typed error rather than an allocation that aborts
/// the process (or, in `V × D`, a product that wraps).
pub const MAX_WEIGHTS: usize = 1 << 32;

/// Default vocabulary size.
pub const DEFAULT_VOCAB: usize = 32_000;
/// Default hidden size.
pub const DEFAULT_DIM: usize = 256;
/// The built-in model's seed: with [`DEFAULT_VOCAB`] and [`DEFAULT_DIM`],
/// the weights every figure, the server and `convoy weights` use.
pub const DEFAULT_SEED: u64 = 2023;

/// splitmix64: a tiny seeded generator, so weights are reproducible
/// everywhere (CPU, GPU upload, other servers) without a dependency. Also
/// the tests' and benches' source of random inputs.
///
/// ```
/// let (mut a, mut b) = (7, 7);
/// assert_eq!(convoy::model::splitmix64(&mut a), convoy::model::splitmix64(&mut b));
/// ```
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in `[-scale, scale)`.
fn uniform(state: &mut u64, scale: f32) -> f32 {
    let unit = (splitmix64(state) >> 40) as f32 / (1u64 << 24) as f32;
    (unit * 2.0 - 1.0) * scale
}

/// Checks every token id is below `vocab`: the model's own check, also
/// used where the weights are not at hand (a GPU kernel's pack).
pub fn check_tokens(tokens: &[u32], vocab: usize) -> Result<(), ModelError> {
    match tokens.iter().find(|&&t| t as usize >= vocab) {
        Some(&token) => Err(ModelError::TokenOutOfRange { token, vocab }),
        None => Ok(()),
    }
}

/// tanh-approximate GELU.
pub fn gelu(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2 / pi)
    0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())
}

/// Adds the embedding rows `E[t]` of every token into `row` (`d` wide),
/// sixteen tokens at a time, then eight, four and one.
///
/// Why in groups: a row is 1 KiB at `D = 256`, read from memory rather
/// than cache (`E` is 32 MB), and one row at a time leaves the core
/// waiting on one row's lines while loading and storing `row` once per
/// token. Sixteen rows summed per column and added to `row` once put
/// sixteen rows' loads in flight together and cut `row`'s traffic
/// sixteenfold. On the bundled trace's token counts the gather runs at
/// 2.3–2.6× its rate one row at a time, and `forward_batch` at 2.1–2.3×
/// (`benches/model.rs`; BENCHMARKS.md, "The built-in model's gather").
/// Thirty-two at a time ran out of registers and was slower.
///
/// The order is fixed so that `kernels/pool_dense.cu` can follow it term
/// for term: per column, each group's sixteen values are summed as a
/// pairwise tree (`((e0 + e1) + (e2 + e3)) + …`), that sum is added to the
/// running total, groups in token order; what is left after the last
/// whole group goes by one group of eight, of four, then one by one.
fn add_rows(e: &[f32], d: usize, tokens: &[u32], row: &mut [f32]) {
    let rest = add_groups::<16>(e, d, tokens, row);
    let rest = add_groups::<8>(e, d, rest, row);
    let rest = add_groups::<4>(e, d, rest, row);
    add_groups::<1>(e, d, rest, row);
}

/// One size of [`add_rows`]' groups: every whole group of `N` tokens
/// (`N` a power of two), returning the tokens left over.
fn add_groups<'t, const N: usize>(
    e: &[f32],
    d: usize,
    tokens: &'t [u32],
    row: &mut [f32],
) -> &'t [u32] {
    let row = &mut row[..d];
    let mut groups = tokens.chunks_exact(N);
    for group in &mut groups {
        let rows: [&[f32]; N] = std::array::from_fn(|i| {
            let at = group[i] as usize * d;
            &e[at..at + d]
        });
        for (j, acc) in row.iter_mut().enumerate() {
            // The pairwise tree, halving the partial sums until one is
            // left; unrolled at compile time, vectorized across `j`.
            let mut v: [f32; N] = std::array::from_fn(|i| rows[i][j]);
            let mut n = N;
            while n > 1 {
                n /= 2;
                for i in 0..n {
                    v[i] = v[2 * i] + v[2 * i + 1];
                }
            }
            *acc += v[0];
        }
    }
    groups.remainder()
}

impl PoolDense {
    /// Weights from a seeded generator: `E` uniform in ±1, `W` in ±1/√D,
    /// `b` in ±0.1.
    ///
    /// ```
    /// let m = convoy::model::PoolDense::seeded(100, 8, 7).unwrap();
    /// let out = m.forward(&[1, 2, 3]).unwrap();
    /// assert_eq!(out.len(), 8);
    /// assert_eq!(out, convoy::model::PoolDense::seeded(100, 8, 7).unwrap().forward(&[1, 2, 3]).unwrap());
    /// ```
    pub fn seeded(vocab: usize, dim: usize, seed: u64) -> Result<Self, ModelError> {
        if vocab == 0 || dim == 0 {
            return Err(ModelError::ZeroDimension { vocab, dim });
        }
        let fits = |n: Option<usize>| n.is_some_and(|n| n <= MAX_WEIGHTS);
        if vocab as u64 > 1 << 32 || !fits(vocab.checked_mul(dim)) || !fits(dim.checked_mul(dim)) {
            return Err(ModelError::TooLarge { vocab, dim });
        }
        let mut s = seed;
        let w_scale = 1.0 / (dim as f32).sqrt();
        Ok(Self {
            vocab,
            dim,
            embeddings: (0..vocab * dim).map(|_| uniform(&mut s, 1.0)).collect(),
            weights: (0..dim * dim).map(|_| uniform(&mut s, w_scale)).collect(),
            bias: (0..dim).map(|_| uniform(&mut s, 0.1)).collect(),
        })
    }

    /// Loads `E.f32`, `W.f32` and `b.f32` (raw little-endian row-major f32)
    /// from `dir`; `dim` is read off `b.f32` and `vocab` off `E.f32`.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let read = |name: &str| -> Result<Vec<f32>, ModelError> {
            let path = dir.join(name);
            let err = |reason: String| ModelError::Weights {
                path: path.display().to_string(),
                reason,
            };
            let bytes = std::fs::read(&path).map_err(|e| err(e.to_string()))?;
            if bytes.is_empty() || bytes.len() % 4 != 0 {
                return Err(err(format!(
                    "{} bytes is not a non-empty whole number of f32",
                    bytes.len()
                )));
            }
            let values: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            // A NaN or infinite weight makes every output it touches
            // meaningless: refused at load, naming the first, rather than
            // answered as `null`s request by request.
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(err(format!(
                    "value {i} is {}; weights must be finite",
                    values[i]
                )));
            }
            Ok(values)
        };
        let bias = read("b.f32")?;
        let dim = bias.len();
        let weights = read("W.f32")?;
        if weights.len() != dim * dim {
            return Err(ModelError::Weights {
                path: dir.join("W.f32").display().to_string(),
                reason: format!("{} floats, expected D×D = {}", weights.len(), dim * dim),
            });
        }
        let embeddings = read("E.f32")?;
        if embeddings.len() % dim != 0 {
            return Err(ModelError::Weights {
                path: dir.join("E.f32").display().to_string(),
                reason: format!("{} floats is not a multiple of D = {dim}", embeddings.len()),
            });
        }
        Ok(Self {
            vocab: embeddings.len() / dim,
            dim,
            embeddings,
            weights,
            bias,
        })
    }

    /// Writes `E.f32`, `W.f32` and `b.f32` into `dir` (made if missing), in
    /// the format [`PoolDense::from_dir`] reads: so another implementation
    /// of the model (another server, a NumPy reference) can load exactly
    /// the weights convoy runs, seeded ones included, and their outputs can
    /// be compared request by request. `convoy weights --out DIR` calls it.
    ///
    /// ```
    /// use convoy::model::PoolDense;
    ///
    /// let dir = std::env::temp_dir().join(format!("convoy-doc-weights-{}", std::process::id()));
    /// let model = PoolDense::seeded(16, 4, 7)?;
    /// model.to_dir(&dir)?;
    /// assert_eq!(PoolDense::from_dir(&dir)?, model);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), convoy::model::ModelError>(())
    /// ```
    pub fn to_dir(&self, dir: &Path) -> Result<(), ModelError> {
        let fail = |path: &Path, e: std::io::Error| ModelError::Weights {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(dir, e))?;
        for (name, data) in [
            ("E.f32", &self.embeddings),
            ("W.f32", &self.weights),
            ("b.f32", &self.bias),
        ] {
            let path = dir.join(name);
            let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
            std::fs::write(&path, bytes).map_err(|e| fail(&path, e))?;
        }
        Ok(())
    }

    /// `V`.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// `D`.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The raw weights `(E, W, b)`, e.g. to upload to a device.
    pub fn weights(&self) -> (&[f32], &[f32], &[f32]) {
        (&self.embeddings, &self.weights, &self.bias)
    }

    /// Checks every token id is in the vocabulary.
    pub fn check(&self, tokens: &[u32]) -> Result<(), ModelError> {
        check_tokens(tokens, self.vocab)
    }

    /// One request. An empty request pools to the zero vector.
    pub fn forward(&self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        Ok(self.forward_batch(&[tokens])?.remove(0))
    }

    /// A batch: gather and mean per request, then one `(B×D)·(D×D)`.
    ///
    /// ```
    /// let m = convoy::model::PoolDense::seeded(50, 4, 1).unwrap();
    /// let batch = m.forward_batch(&[&[1u32, 2][..], &[], &[49]]).unwrap();
    /// assert_eq!(batch[0], m.forward(&[1, 2]).unwrap());
    /// assert!(m.forward_batch(&[&[50u32][..]]).is_err()); // out of range
    /// ```
    pub fn forward_batch<T: AsRef<[u32]>>(&self, batch: &[T]) -> Result<Vec<Vec<f32>>, ModelError> {
        let d = self.dim;
        let mut pooled = vec![0f32; batch.len() * d];
        for (row, tokens) in pooled.chunks_exact_mut(d).zip(batch) {
            let tokens = tokens.as_ref();
            self.check(tokens)?;
            add_rows(&self.embeddings, d, tokens, row);
            if !tokens.is_empty() {
                let inv = 1.0 / tokens.len() as f32;
                row.iter_mut().for_each(|r| *r *= inv);
            }
        }
        Ok(pooled
            .chunks_exact(d)
            .map(|row| self.dense_row(row))
            .collect())
    }

    /// `GELU(x @ W + b)` for one `D`-vector (the caller checked its size).
    fn dense_row(&self, x: &[f32]) -> Vec<f32> {
        let d = self.dim;
        let mut y = self.bias.clone();
        // i-k-j order: stream W's rows, accumulate into y.
        for (k, &v) in x.iter().enumerate() {
            if v == 0.0 {
                continue;
            }
            let w = &self.weights[k * d..(k + 1) * d];
            y.iter_mut().zip(w).for_each(|(acc, wk)| *acc += v * wk);
        }
        y.iter_mut().for_each(|v| *v = gelu(*v));
        y
    }
}

impl PoolDense {
    /// The dense layer alone, `GELU(x @ W + b)`, for a caller that brings
    /// its own pooled `D`-vector.
    ///
    /// ```
    /// let m = convoy::model::PoolDense::seeded(50, 4, 1).unwrap();
    /// let pooled = vec![0.0; 4];
    /// assert_eq!(m.dense(&pooled).unwrap().len(), 4);
    /// assert!(m.dense(&[1.0]).is_err()); // wrong size
    /// ```
    pub fn dense(&self, x: &[f32]) -> Result<Vec<f32>, ModelError> {
        if x.len() != self.dim {
            return Err(ModelError::WrongDimension {
                got: x.len(),
                dim: self.dim,
            });
        }
        Ok(self.dense_row(x))
    }
}

impl Executor<Vec<u32>, Vec<f32>> for PoolDense {
    fn execute(&self, _worker: usize, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, ExecutorError> {
        self.forward_batch(inputs)
            .map_err(ExecutorError::from_error)
    }

    /// A token outside the vocabulary is refused at submit.
    fn check(&self, input: &Vec<u32>) -> Result<(), String> {
        PoolDense::check(self, input).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_naive_reference() {
        let m = PoolDense::seeded(40, 6, 3).unwrap();
        let tokens = [3u32, 39, 0, 3];
        let (e, w, b) = m.weights();
        let mut mean = [0f32; 6];
        for &t in &tokens {
            for j in 0..6 {
                mean[j] += e[t as usize * 6 + j] / tokens.len() as f32;
            }
        }
        let expect: Vec<f32> = (0..6)
            .map(|j| gelu(b[j] + (0..6).map(|k| mean[k] * w[k * 6 + j]).sum::<f32>()))
            .collect();
        let got = m.forward(&tokens).unwrap();
        for (g, x) in got.iter().zip(&expect) {
            assert!((g - x).abs() <= 1e-5 * x.abs().max(1.0), "{g} vs {x}");
        }
    }

    #[test]
    fn empty_request_is_gelu_of_bias() {
        let m = PoolDense::seeded(10, 4, 9).unwrap();
        let expect: Vec<f32> = m.weights().2.iter().map(|&b| gelu(b)).collect();
        assert_eq!(m.forward(&[]).unwrap(), expect);
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert_eq!(
            PoolDense::seeded(0, 4, 1).unwrap_err(),
            ModelError::ZeroDimension { vocab: 0, dim: 4 }
        );
        let m = PoolDense::seeded(10, 4, 1).unwrap();
        assert_eq!(
            m.forward(&[10]).unwrap_err(),
            ModelError::TokenOutOfRange {
                token: 10,
                vocab: 10
            }
        );
        for (vocab, dim) in [
            (usize::MAX, 2),
            (2, usize::MAX),
            (1 << 33, 1),
            (1 << 20, 1 << 13),
        ] {
            assert_eq!(
                PoolDense::seeded(vocab, dim, 1).unwrap_err(),
                ModelError::TooLarge { vocab, dim },
                "{vocab} × {dim}"
            );
        }
        let missing = PoolDense::from_dir(Path::new("/nonexistent-convoy-dir")).unwrap_err();
        assert!(matches!(missing, ModelError::Weights { .. }));
    }

    /// A scratch folder no other run of these tests shares: the process id
    /// alone is not enough under Miri, whose seeds run side by side in one
    /// process (`-Zmiri-many-seeds`), so a random tag goes with it.
    fn scratch(name: &str) -> std::path::PathBuf {
        use std::hash::BuildHasher;
        let tag = std::hash::RandomState::new().hash_one(name);
        std::env::temp_dir().join(format!("convoy-{name}-{}-{tag:x}", std::process::id()))
    }

    #[test]
    fn round_trips_through_weight_files() {
        let m = PoolDense::seeded(12, 4, 5).unwrap();
        let dir = scratch("model");
        m.to_dir(&dir).unwrap();
        // The files are raw little-endian f32, row-major, as documented.
        let e = std::fs::read(dir.join("E.f32")).unwrap();
        assert_eq!(e.len(), 12 * 4 * 4);
        assert_eq!(
            f32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            m.weights().0[1]
        );
        let loaded = PoolDense::from_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(loaded, m);
    }

    #[test]
    fn a_weight_file_with_a_nan_or_an_infinity_is_refused_naming_it() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let m = PoolDense::seeded(12, 4, 5).unwrap();
            let dir = scratch(&format!("model-bad-{}", bad.to_bits()));
            m.to_dir(&dir).unwrap();
            let mut w = std::fs::read(dir.join("W.f32")).unwrap();
            w[20..24].copy_from_slice(&bad.to_le_bytes());
            std::fs::write(dir.join("W.f32"), &w).unwrap();
            let e = PoolDense::from_dir(&dir).unwrap_err();
            std::fs::remove_dir_all(&dir).unwrap();
            let text = e.to_string();
            assert!(text.contains("W.f32") && text.contains("value 5"), "{text}");
            assert!(text.contains("finite"), "{text}");
        }
    }
}
