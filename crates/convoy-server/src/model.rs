//! The built-in model behind the server: pool-dense over token ids, or its
//! dense layer alone over a pooled vector. `convoy serve` is this codec
//! and executor on [`Server`].

use std::sync::Arc;

use convoy::kernel::KernelSpec;
use convoy::model::PoolDense;
use convoy::{BuildError, Config, Executor, ExecutorError, Request, Runtime};
use serde_json::{Map, Value};

use crate::codec::Codec;
use crate::error::ApiError;
use crate::Server;

/// What one request asks the model: token ids to pool, or a pooled vector.
/// Serde crosses it to a worker host (`convoy worker`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Input {
    /// Token ids: the full pool-dense model.
    Tokens(Vec<u32>),
    /// A `D`-vector: the dense layer alone.
    Vector(Vec<f32>),
}

/// The executor behind the server: the pool-dense model for both inputs.
#[derive(Debug, Clone)]
pub struct ModelExecutor(pub Arc<PoolDense>);

impl Executor<Input, Vec<f32>> for ModelExecutor {
    fn execute(&self, _worker: usize, inputs: &[Input]) -> Result<Vec<Vec<f32>>, ExecutorError> {
        let tokens: Vec<&[u32]> = inputs
            .iter()
            .filter_map(|i| match i {
                Input::Tokens(t) => Some(t.as_slice()),
                Input::Vector(_) => None,
            })
            .collect();
        let mut pooled = self
            .0
            .forward_batch(&tokens)
            .map_err(ExecutorError::from_error)?
            .into_iter();
        inputs
            .iter()
            .map(|i| match i {
                Input::Tokens(_) => pooled
                    .next()
                    .ok_or_else(|| ExecutorError::new("model returned too few rows")),
                Input::Vector(v) => self.0.dense(v).map_err(ExecutorError::from_error),
            })
            .collect()
    }
}

/// The pool-dense CUDA kernel over the server's inputs (`convoy serve
/// --gpu` runs it through `convoy::cuda::CudaExecutor` and
/// [`model_server_on`]): token ids run on the device; a `{"vector": …}`
/// request (the dense layer alone) has no kernel and is refused at submit
/// (422), rather than failing the batch it would have joined. Packing and
/// checking are plain Rust, so they hold without a device.
///
/// ```
/// use convoy::model::PoolDense;
/// use convoy_server::{model_kernel, Input};
/// let model = PoolDense::seeded(64, 8, 1)?;
/// let spec = model_kernel(&model, 16);
/// assert!((spec.check)(&Input::Tokens(vec![1, 2])).is_ok());
/// assert!((spec.check)(&Input::Tokens(vec![64])).is_err()); // outside the vocabulary
/// assert!((spec.check)(&Input::Vector(vec![0.0; 8])).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn model_kernel(model: &PoolDense, max_tokens: usize) -> KernelSpec<Input, Vec<f32>> {
    let tokens = KernelSpec::pool_dense(model, max_tokens);
    let (check, pack) = (tokens.check.clone(), tokens.pack.clone());
    const VECTORS_REFUSED: &str = "with --gpu the server runs token ids on the GPU; \"vector\" \
                                   requests (the dense layer alone) are not served";
    KernelSpec {
        source: tokens.source,
        function: tokens.function,
        weights: tokens.weights,
        width: tokens.width,
        block_dim: tokens.block_dim,
        shared_bytes: tokens.shared_bytes,
        max_words: tokens.max_words,
        pack: Arc::new(move |input: &Input, words| match input {
            Input::Tokens(t) => pack(t, words),
            Input::Vector(_) => Err(VECTORS_REFUSED.into()),
        }),
        unpack: tokens.unpack,
        check: Arc::new(move |input: &Input| match input {
            Input::Tokens(t) => check(t),
            Input::Vector(_) => Err(VECTORS_REFUSED.into()),
        }),
    }
}

/// Request limits the model's codec checks before submitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest body accepted, bytes (413 above).
    pub max_body_bytes: usize,
    /// Most token ids per request (413 above).
    pub max_tokens: usize,
    /// Vocabulary: token ids must be below it (422).
    pub vocab: usize,
    /// The vector size `D` (422 otherwise).
    pub dim: usize,
}

impl Limits {
    /// Limits for `model`: 1 MiB bodies, 8192 tokens.
    pub fn for_model(model: &PoolDense) -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_tokens: 8192,
            vocab: model.vocab(),
            dim: model.dim(),
        }
    }
}

/// The model's codec: `{"tokens": [u32…]}` or `{"vector": [f32…]}` in,
/// `[f32…]` out. A request costs its token count (a vector costs 1).
#[derive(Debug, Clone, Copy)]
pub struct ModelCodec {
    /// What a request may be.
    pub limits: Limits,
}

impl Codec for ModelCodec {
    type Input = Input;
    type Output = Vec<f32>;

    fn decode(&self, mut fields: Map<String, Value>) -> Result<Request<Input>, ApiError> {
        let limits = &self.limits;
        let tokens = fields.remove("tokens");
        let vector = fields.remove("vector");
        if let Some(extra) = fields.keys().next() {
            return Err(ApiError::unprocessable(format!(
                "unknown field \"{extra}\": a request has \"tokens\" or \"vector\", and may have \
                 \"priority\", \"deadline_ms\", \"tenant\" and \"dedup_key\""
            )));
        }
        let (input, cost) = match (tokens, vector) {
            (Some(t), None) => {
                let t: Vec<u32> = serde_json::from_value(t).map_err(|e| {
                    ApiError::unprocessable(format!(
                        "tokens must be a list of token ids (whole numbers from 0): {e}"
                    ))
                })?;
                if t.len() > limits.max_tokens {
                    return Err(ApiError::too_large(format!(
                        "{} tokens; at most {} allowed",
                        t.len(),
                        limits.max_tokens
                    )));
                }
                if t.is_empty() {
                    return Err(ApiError::unprocessable(
                        "tokens must not be empty: the model pools at least one token",
                    ));
                }
                convoy::model::check_tokens(&t, limits.vocab)
                    .map_err(|e| ApiError::unprocessable(e.to_string()))?;
                let n = u32::try_from(t.len()).unwrap_or(u32::MAX);
                (Input::Tokens(t), n)
            }
            (None, Some(v)) => {
                let v: Vec<f32> = serde_json::from_value(v).map_err(|e| {
                    ApiError::unprocessable(format!("vector must be a list of numbers: {e}"))
                })?;
                if v.len() != limits.dim {
                    return Err(ApiError::unprocessable(format!(
                        "vector has {} values; the model takes {}",
                        v.len(),
                        limits.dim
                    )));
                }
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(ApiError::unprocessable("vector values must be finite"));
                }
                (Input::Vector(v), 1)
            }
            _ => {
                return Err(ApiError::unprocessable(
                    "give exactly one of \"tokens\" or \"vector\"",
                ))
            }
        };
        Ok(Request::new(input).tokens(cost))
    }

    fn encode(&self, output: Vec<f32>) -> Result<Value, ApiError> {
        if output.iter().any(|x| !x.is_finite()) {
            return Err(ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "the model produced a value that is not a finite number",
            ));
        }
        Ok(Value::from(output))
    }
}

/// Builds the server for the built-in model with `config` (dedup on), with
/// the model's [`Limits`].
pub fn model_server(config: Config, model: PoolDense) -> Result<Server<ModelCodec>, BuildError> {
    let limits = Limits::for_model(&model);
    model_server_with(config, model, limits)
}

/// [`model_server`] with request limits of your own (a larger body, fewer
/// tokens); their `vocab` and `dim` should be the model's.
pub fn model_server_with(
    config: Config,
    model: PoolDense,
    limits: Limits,
) -> Result<Server<ModelCodec>, BuildError> {
    model_server_on(config, ModelExecutor(Arc::new(model)), limits)
}

/// The model's server over an executor of your own for its inputs: the
/// CUDA executor (`convoy serve --gpu`), or a model on other hardware.
/// The executor's `check` refuses at submit what it cannot run (422).
pub fn model_server_on(
    config: Config,
    executor: impl Executor<Input, Vec<f32>>,
    limits: Limits,
) -> Result<Server<ModelCodec>, BuildError> {
    let runtime = Runtime::builder()
        .config(config)
        .executor(executor)
        .deduplicate()
        .build()?;
    Ok(Server::new(Arc::new(runtime), ModelCodec { limits }).max_body_bytes(limits.max_body_bytes))
}
