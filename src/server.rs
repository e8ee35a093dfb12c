//! An HTTP front end (axum + tokio) for a runtime serving the built-in
//! model: what a user embedding convoy in a server writes.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/infer` | JSON `{"tokens": [u32…]}` or `{"vector": [f32…]}`, optional `priority` (name or level 0–4), `deadline_ms`, `tenant`, `dedup_key`; answers `{"output": [f32…]}` |
//! | `GET /metrics` | the runtime's Prometheus text |
//! | `GET /healthz` | `ok` (503 once shutting down) |
//! | `GET /v1/stats` | outcome counts per priority, queue capacity per level and utilization, JSON |
//!
//! Handlers submit without blocking (the intake is lock-free) and await
//! the ticket as a future: no thread blocks per request. A client that
//! disconnects drops the handler's future and with it the ticket, which
//! cancels the request if it has not launched.
//!
//! Statuses: 400 malformed JSON or invalid UTF-8; 413 a body over the limit,
//! more tokens than allowed, or a cost no worker can hold; 422 a
//! well-formed request that cannot be served (unknown priority, a vector
//! of the wrong size, a token outside the vocabulary, a negative or zero
//! deadline, neither or both of `tokens` and `vector`, dedup without
//! support); 429 with `Retry-After` when the priority's queue is full; 503
//! when shutting down; 504 when the deadline passed in the queue; 500 when
//! the model failed. Every error body is `{"error": "…"}`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::executor::Executor;
use crate::model::PoolDense;
use crate::outcome::Failure;
use crate::priority::Priority;
use crate::request::Request;
use crate::runtime::{Runtime, SubmitErrorKind};

/// What one request asks the model: token ids to pool, or a pooled vector.
#[derive(Debug, Clone, PartialEq)]
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
    fn execute(&self, _worker: usize, inputs: &[Input]) -> Result<Vec<Vec<f32>>, String> {
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
            .map_err(|e| e.to_string())?
            .into_iter();
        inputs
            .iter()
            .map(|i| match i {
                Input::Tokens(_) => pooled
                    .next()
                    .ok_or_else(|| "model returned too few rows".to_owned()),
                Input::Vector(v) => self.0.dense(v).map_err(|e| e.to_string()),
            })
            .collect()
    }
}

/// Request limits the server checks before submitting.
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

/// Shared by every handler: the runtime (for metrics and stats) and limits.
pub struct AppState {
    /// The runtime requests go to.
    pub runtime: Arc<Runtime<Input, Vec<f32>>>,
    /// What a request may be.
    pub limits: Limits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InferBody {
    tokens: Option<Vec<u32>>,
    vector: Option<Vec<f32>>,
    priority: Option<PriorityField>,
    deadline_ms: Option<f64>,
    tenant: Option<String>,
    dedup_key: Option<String>,
}

/// A priority as a name (`"high"`) or a level number (`1`), the two forms
/// `Priority::from_str` and the trace loader take, so clients that number
/// their priorities need no name table. The numbering is convoy's (0 is
/// Critical), not Triton's (where 1 is the highest and 0 the default).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PriorityField {
    Name(String),
    Level(i64),
}

impl PriorityField {
    fn parse(self) -> Result<Priority, String> {
        match self {
            PriorityField::Name(name) => Priority::from_str(&name),
            PriorityField::Level(level) => Priority::from_str(&level.to_string()),
        }
        .map_err(|e| e.to_string())
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// A 429 with `Retry-After`: load, not the request, was the reason.
fn retry_later(message: &str) -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, "1")],
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// The router for `state`; serve it with `axum::serve`.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.limits.max_body_bytes;
    Router::new()
        .route("/v1/infer", post(infer))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/v1/stats", get(stats))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn infer(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let limits = state.limits;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {} bytes", limits.max_body_bytes),
        )
    };
    // A body the extractor refused (over `DefaultBodyLimit`, or cut off)
    // is answered in JSON like every other error, not axum's plain text.
    let body = match body {
        Ok(body) => body,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return too_large(),
        Err(e) => return error(e.status(), e.body_text()),
    };
    if body.len() > limits.max_body_bytes {
        return too_large();
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "body is not valid UTF-8");
    };
    let parsed: InferBody = match serde_json::from_str(text) {
        Ok(b) => b,
        Err(e) if e.is_data() => return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")),
    };
    let request = match build_request(parsed, &limits) {
        Ok(r) => r,
        Err(response) => return response,
    };
    let handle = state.runtime.handle();
    let ticket = match handle.submit(request) {
        Ok(t) => t,
        Err(e) => {
            return match e.kind {
                SubmitErrorKind::QueueFull => {
                    retry_later("queue full for this priority; retry later")
                }
                SubmitErrorKind::Overloaded => retry_later(
                    "overloaded: this priority is shed while the queue runs late; retry later",
                ),
                SubmitErrorKind::ShuttingDown => {
                    error(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
                }
                SubmitErrorKind::CostNeverFits => error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request larger than any worker can hold",
                ),
                SubmitErrorKind::DeadlinePassed => {
                    error(StatusCode::UNPROCESSABLE_ENTITY, "deadline_ms must be > 0")
                }
                SubmitErrorKind::DedupNotEnabled => error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "dedup_key is not supported by this server",
                ),
                SubmitErrorKind::Invalid => error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    e.reason.unwrap_or_else(|| "invalid input".into()),
                ),
            };
        }
    };
    // Dropping this future (the client went away) drops the ticket, which
    // cancels the request if it has not launched.
    match ticket.await {
        Ok(output) => Json(serde_json::json!({ "output": output })).into_response(),
        Err(Failure::Expired) => error(StatusCode::GATEWAY_TIMEOUT, "deadline passed in the queue"),
        Err(Failure::ShutDown) => error(StatusCode::SERVICE_UNAVAILABLE, "shut down before it ran"),
        Err(Failure::Cancelled) => error(StatusCode::SERVICE_UNAVAILABLE, "cancelled"),
        Err(Failure::ExecutorFailed(why)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("model failed: {why}"),
        ),
    }
}

#[allow(clippy::result_large_err)] // the error is the response itself
fn build_request(b: InferBody, limits: &Limits) -> Result<Request<Input>, Response> {
    let unprocessable = |m: String| error(StatusCode::UNPROCESSABLE_ENTITY, m);
    let (input, tokens) = match (b.tokens, b.vector) {
        (Some(t), None) => {
            if t.len() > limits.max_tokens {
                return Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("{} tokens; at most {} allowed", t.len(), limits.max_tokens),
                ));
            }
            crate::model::check_tokens(&t, limits.vocab)
                .map_err(|e| unprocessable(e.to_string()))?;
            let n = t.len().max(1) as u32;
            (Input::Tokens(t), n)
        }
        (None, Some(v)) => {
            if v.len() != limits.dim {
                return Err(unprocessable(format!(
                    "vector has {} values; the model takes {}",
                    v.len(),
                    limits.dim
                )));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(unprocessable("vector values must be finite".into()));
            }
            (Input::Vector(v), 1)
        }
        _ => {
            return Err(unprocessable(
                "give exactly one of \"tokens\" or \"vector\"".into(),
            ))
        }
    };
    let mut request = Request::new(input).tokens(tokens);
    if let Some(p) = b.priority {
        let p = p.parse().map_err(unprocessable)?;
        request = request.priority(p);
    }
    if let Some(ms) = b.deadline_ms {
        if !(ms.is_finite() && ms > 0.0 && ms <= 3.6e6) {
            return Err(unprocessable(format!(
                "deadline_ms must be > 0 and ≤ 3600000, got {ms}"
            )));
        }
        request = request.deadline(Duration::from_secs_f64(ms / 1e3));
    }
    if let Some(key) = b.dedup_key {
        // The tenant is part of the key: tenants never share results.
        request = request.dedup_key((b.tenant.as_deref().unwrap_or(""), key));
    }
    Ok(request)
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    // metrics_text may wait (SLA_REFRESH_WAIT for a busy worker, longer
    // for one the OS has not run yet) for fresh SLA copies:
    // off the async workers.
    let rt = state.runtime.clone();
    match tokio::task::spawn_blocking(move || rt.metrics_text()).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering metrics failed: {e}"),
        ),
    }
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    if state.runtime.is_shutting_down() {
        error(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else {
        "ok".into_response()
    }
}

async fn stats(State(state): State<Arc<AppState>>) -> Response {
    Json(stats_json(&state.runtime)).into_response()
}

/// Outcome counts per priority and in total, as JSON.
pub fn stats_json<I: Send + 'static, O: Send + 'static>(rt: &Runtime<I, O>) -> serde_json::Value {
    let s = rt.stats();
    let row = |p: crate::stats::PriorityStats| {
        serde_json::json!({
            "inserted": p.inserted,
            "rejected_full": p.rejected_full,
            "rejected_shed": p.rejected_shed,
            "queue_depth": p.queue_depth,
            "completed": p.completed,
            "expired": p.expired,
            "cancelled": p.cancelled,
            "failed": p.failed,
            "shut_down": p.shut_down,
        })
    };
    let mut per = serde_json::Map::new();
    for p in Priority::ALL {
        per.insert(p.as_str().to_owned(), row(s.of(p)));
    }
    serde_json::json!({
        "total": row(s.total()),
        "priorities": per,
        "batches": s.batches,
        "deduplicated": s.deduplicated,
        "queue_capacity": s.queue_capacity,
        "utilization": s.utilization(),
    })
}

/// Serves `state` on `listener` until `signal` resolves, then stops
/// accepting, lets in-flight requests finish, shuts the runtime down
/// (finishing what it accepted) and returns its final counts.
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<crate::stats::Stats> {
    axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(signal)
        .await?;
    let rt = state.runtime.clone();
    // shutdown() joins threads: keep it off the async workers.
    tokio::task::spawn_blocking(move || rt.shutdown())
        .await
        .map_err(std::io::Error::other)?;
    Ok(state.runtime.stats())
}

/// Builds the runtime for the built-in model with `config` (dedup on),
/// with the model's [`Limits`].
pub fn model_runtime(
    config: crate::config::Config,
    model: PoolDense,
) -> Result<Arc<AppState>, crate::runtime::BuildError> {
    let limits = Limits::for_model(&model);
    let runtime = Runtime::builder()
        .config(config)
        .executor(ModelExecutor(Arc::new(model)))
        .deduplicate()
        .build()?;
    Ok(Arc::new(AppState {
        runtime: Arc::new(runtime),
        limits,
    }))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
