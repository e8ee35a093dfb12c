//! An HTTP front end for [`convoy`]: an axum [`Router`] any application
//! can mount (or nest) over its own runtime and [`Codec`].
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/infer` | a JSON object: the codec's fields, and optionally `priority` (name or level 0–4), `deadline_ms`, `tenant`, `dedup_key`; answers `{"output": …}` |
//! | `GET /metrics` | the runtime's Prometheus text |
//! | `GET /healthz` | `ok` (503 once shutting down) |
//! | `GET /v1/stats` | outcome counts per priority, queue capacity per level and utilization, JSON |
//!
//! Handlers submit without blocking (the intake is lock-free) and await the
//! ticket as a future: no thread blocks per request. A client that
//! disconnects drops the handler's future and with it the ticket, which
//! cancels the request if it has not launched.
//!
//! Statuses: 400 malformed JSON or invalid UTF-8; 404 an unknown route and
//! 405 a wrong method; 413 a body over the limit, or what the codec finds
//! too large; 422 a well-formed request that cannot be served (an unknown
//! priority, a bad deadline, a body that is not an object, what the codec
//! refuses); then [`refusal`] for what submit refuses and [`failure`] for
//! how an accepted request can fail. Every error body the router writes is
//! `{"error": "…"}` (hyper itself answers a few malformed requests, such as
//! an oversized header, before they reach the router).
//!
//! # Embedding your own model
//!
//! ```no_run
//! use std::sync::Arc;
//! use convoy::{Request, Runtime};
//! use convoy_server::{ApiError, Codec, Server};
//! use serde_json::{Map, Value};
//!
//! struct Doubler;
//! impl Codec for Doubler {
//!     type Input = f32;
//!     type Output = f32;
//!     fn decode(&self, mut f: Map<String, Value>) -> Result<Request<f32>, ApiError> {
//!         let x = f.remove("x").and_then(|v| v.as_f64())
//!             .ok_or_else(|| ApiError::unprocessable("give \"x\" as a number"))?;
//!         Ok(Request::new(x as f32))
//!     }
//!     fn encode(&self, y: f32) -> Result<Value, ApiError> { Ok(Value::from(y)) }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = Runtime::builder()
//!     .batch_fn(|xs: &[f32]| xs.iter().map(|x| x * 2.0).collect())
//!     .build()?;
//! let server = Arc::new(Server::new(Arc::new(rt), Doubler));
//! let app = axum::Router::new().nest("/doubler", server.router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use convoy::{Priority, PriorityStats, Runtime, Stats};
use serde_json::Value;

mod codec;
mod error;
mod listen;
pub mod model;

pub use codec::{Codec, MAX_DEADLINE_MS};
pub use error::{failure, refusal, ApiError};
pub use listen::{default_max_connections, HttpLimits};
pub use model::{model_server, model_server_with, Input, Limits, ModelCodec, ModelExecutor};

/// The body limit when none is set: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// A runtime and the codec its requests go through: what every handler
/// shares. Build one, then mount [`Server::router`].
pub struct Server<C: Codec> {
    /// The runtime requests go to (and metrics and stats come from).
    pub runtime: Arc<Runtime<C::Input, C::Output>>,
    /// Reads bodies into inputs and outputs into JSON.
    pub codec: C,
    max_body_bytes: usize,
    limits: HttpLimits,
    refusals: Arc<listen::Refusals>,
}

impl<C: Codec> Server<C> {
    /// A server over `runtime` with `codec`, and a 1 MiB body limit.
    pub fn new(runtime: Arc<Runtime<C::Input, C::Output>>, codec: C) -> Self {
        Self {
            runtime,
            codec,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            limits: HttpLimits::default(),
            refusals: Arc::default(),
        }
    }

    /// Sets the header timeout and the connection budget [`serve_until`]
    /// applies (a router mounted elsewhere is served by its host).
    pub fn http_limits(mut self, limits: HttpLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The limits [`serve_until`] applies.
    pub fn limits(&self) -> HttpLimits {
        self.limits
    }

    /// Connections [`serve_until`] closed at accept because the connection
    /// budget was spent.
    pub fn refused_connections(&self) -> u64 {
        self.refusals
            .over_budget
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets the largest body accepted (413 above it).
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// The router: serve it with `axum::serve`, or nest it in your own.
    pub fn router(self: &Arc<Self>) -> Router {
        router(self.clone())
    }
}

/// The router for `server`; see the crate docs for its routes.
pub fn router<C: Codec>(server: Arc<Server<C>>) -> Router {
    let limit = server.max_body_bytes;
    Router::new()
        .route("/v1/infer", post(infer::<C>))
        .route("/metrics", get(metrics::<C>))
        .route("/healthz", get(healthz::<C>))
        .route("/v1/stats", get(stats::<C>))
        .fallback(not_found)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            limit,
            refuse_oversized,
        ))
        .with_state(server)
}

async fn infer<C: Codec>(
    State(server): State<Arc<Server<C>>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match answer(&server, body).await {
        Ok(output) => Json(serde_json::json!({ "output": output })).into_response(),
        Err(e) => {
            if e.status().is_server_error() {
                tracing::warn!(
                    status = e.status().as_u16(),
                    error = e.message(),
                    "request failed"
                );
            } else {
                tracing::debug!(
                    status = e.status().as_u16(),
                    error = e.message(),
                    "request refused"
                );
            }
            e.into_response()
        }
    }
}

/// A declared `Content-Length` over the body limit is refused on sight
/// with 413, before a byte of the body is read: a client announcing 5 GB
/// gets its answer at once instead of after the first megabyte.
async fn refuse_oversized(
    State(limit): State<usize>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => {
            tracing::debug!(declared = n, limit, "body over the limit refused on sight");
            ApiError::too_large(format!("the body is over {limit} bytes ({n} declared)"))
                .into_response()
        }
        _ => next.run(request).await,
    }
}

/// Any other path: a 404 in JSON like every other error.
async fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such route: POST /v1/infer, GET /metrics, /healthz or /v1/stats",
    )
    .into_response()
}

/// A known path with the wrong method: a 405 in JSON.
async fn wrong_method() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed: /v1/infer takes POST; /metrics, /healthz and /v1/stats take GET",
    )
    .into_response()
}

async fn answer<C: Codec>(
    server: &Server<C>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, ApiError> {
    let limit = server.max_body_bytes;
    let too_large = || ApiError::too_large(format!("the body is over {limit} bytes"));
    // A body the extractor refused (over `DefaultBodyLimit`, or cut off)
    // is answered in JSON like every other error, not axum's plain text.
    let body = match body {
        Ok(body) => body,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
        Err(e) => return Err(ApiError::new(e.status(), e.body_text())),
    };
    if body.len() > limit {
        return Err(too_large());
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return Err(ApiError::bad_request("the body is not valid UTF-8"));
    };
    let mut fields = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(fields)) => fields,
        Ok(_) => return Err(ApiError::unprocessable("the body must be a JSON object")),
        Err(e) => return Err(ApiError::bad_request(format!("malformed JSON: {e}"))),
    };
    let envelope = codec::take_envelope(&mut fields)?;
    let request = codec::apply(server.codec.decode(fields)?, envelope);
    let ticket = server
        .runtime
        .handle()
        .submit(request)
        .map_err(|e| refusal(&e))?;
    // Dropping this future (the client went away) drops the ticket, which
    // cancels the request if it has not launched.
    match ticket.await {
        Ok(output) => server.codec.encode(output),
        Err(f) => Err(failure(&f)),
    }
}

async fn metrics<C: Codec>(State(server): State<Arc<Server<C>>>) -> Response {
    // metrics_text may wait (SLA_REFRESH_WAIT for a busy worker, longer
    // for one the OS has not run yet) for fresh SLA copies: off the async
    // workers.
    let rt = server.runtime.clone();
    match tokio::task::spawn_blocking(move || rt.metrics_text()).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering metrics failed: {e}"),
        )
        .into_response(),
    }
}

async fn healthz<C: Codec>(State(server): State<Arc<Server<C>>>) -> Response {
    if server.runtime.is_shutting_down() {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else {
        "ok".into_response()
    }
}

async fn stats<C: Codec>(State(server): State<Arc<Server<C>>>) -> Response {
    Json(stats_json(&server.runtime)).into_response()
}

/// Outcome counts per priority and in total, as JSON.
pub fn stats_json<I: Send + 'static, O: Send + 'static>(rt: &Runtime<I, O>) -> Value {
    let s: Stats = rt.stats();
    let row = |p: PriorityStats| {
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

/// Serves `server` on `listener` until `signal` resolves, then drains and
/// returns the runtime's final counts. While serving, the server's
/// [`HttpLimits`] hold: a connection that sends no complete request head
/// within the header timeout is closed, and past the connection budget a
/// new connection is closed at once. Then:
///
/// 1. stops accepting, and lets requests in flight finish;
/// 2. after the runtime's `shutdown_timeout` (the drain deadline), closes
///    the connections that remain: a client holding a half-sent request
///    cannot keep the server from stopping;
/// 3. shuts the runtime down, which finishes what it accepted within the
///    same timeout and fails the rest with `ShutDown`.
pub async fn serve_until<C: Codec>(
    listener: tokio::net::TcpListener,
    server: Arc<Server<C>>,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<Stats> {
    let drain = server.runtime.config().shutdown_timeout;
    listen::serve_router(
        listener,
        router(server.clone()),
        server.limits,
        server.refusals.clone(),
        signal,
        drain,
    )
    .await?;
    let rt = server.runtime.clone();
    // shutdown() joins threads: keep it off the async workers.
    tokio::task::spawn_blocking(move || rt.shutdown())
        .await
        .map_err(std::io::Error::other)?;
    Ok(server.runtime.stats())
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
