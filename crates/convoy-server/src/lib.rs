//! An HTTP front end for [`convoy`]: an axum [`Router`] any application
//! can mount (or nest) over its own runtime and [`Codec`].
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/infer` | a JSON object: the codec's fields, and optionally `priority` (name or level 0–4), `deadline_ms`, `tenant`, `dedup_key`; answers `{"output": …}` |
//! | `GET /metrics` | the runtime's Prometheus text |
//! | `GET /healthz` | `ok` (503 once shutting down) |
//! | `GET /v1/stats` | outcome counts per priority, queue capacity per level and utilization, JSON |
//! | `GET /v1/sla` | latency per priority (end to end, queue wait, execution: p50/p95/p99/max in ms) against its objectives, and compliance; per tenant (the most active, then `other`): requests launched, refused, queued, served tokens, p50/p99 in ms; JSON |
//!
//! Handlers submit without blocking (the intake is lock-free) and await the
//! ticket as a future: no thread blocks per request. A client that
//! disconnects drops the handler's future and with it the ticket, which
//! cancels the request if it has not launched.
//!
//! The priority may also come in an `x-priority` header ([`PRIORITY_HEADER`]),
//! read before the body: a level the queue is shedding is then answered 429
//! at once, and [`serve_until`] serves a connection whose first request is
//! urgent on a thread of its own ([`HttpLimits::urgent`]). Each request's
//! end-to-end latency counts from its first byte ([`Received`]).
//!
//! Statuses: 400 malformed JSON or invalid UTF-8; 404 an unknown route and
//! 405 a wrong method; 408 a body slower than the body timeout; 413 a body
//! over the limit, or what the codec finds
//! too large; 422 a well-formed request that cannot be served (an unknown
//! priority, a bad deadline, a body that is not an object, what the codec
//! refuses); then [`refusal`] for what submit refuses and [`failure`] for
//! how an accepted request can fail. Every error body the router writes is
//! `{"error": "…"}`. hyper answers a few malformed requests itself, before
//! they reach the router (a request line it cannot parse, 400; too many or
//! too large headers, 431); [`serve_until`] gives those answers the same
//! JSON body, where hyper alone would send none. A router mounted in your
//! own server gets them from your server as it writes them.
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

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, State};
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
mod parse_errors;
mod trim;

pub use codec::{Codec, MAX_DEADLINE_MS};
pub use error::{failure, refusal, ApiError};
pub use listen::{default_max_connections, HttpLimits, Received, PRIORITY_HEADER};
pub use model::{
    model_kernel, model_server, model_server_on, model_server_with, Input, Limits, ModelCodec,
    ModelExecutor,
};

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

    /// Connections whose first request was urgent, served on the door's
    /// own thread (see [`HttpLimits::urgent`]).
    pub fn urgent_connections(&self) -> u64 {
        self.refusals.urgent.load(Ordering::Relaxed)
    }

    /// Requests of `level` answered 429 before their body was read, because
    /// their `x-priority` header named a level the queue was shedding.
    /// They never reached the runtime, so its counts do not include them.
    pub fn shed_at_door(&self, level: Priority) -> u64 {
        self.refusals.shed_at_door[level.index()].load(Ordering::Relaxed)
    }

    /// The server's own counters in Prometheus text, which `/metrics`
    /// appends to the runtime's: connections refused over the budget,
    /// connections served on the urgent thread, and requests shed at the
    /// door per priority.
    pub fn http_metrics(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP convoy_http_connections_refused_total Connections closed at accept because the connection budget was spent\n\
             # TYPE convoy_http_connections_refused_total counter\n",
        );
        out.push_str(&format!(
            "convoy_http_connections_refused_total {}\n",
            self.refused_connections()
        ));
        out.push_str(
            "# HELP convoy_http_urgent_connections_total Connections whose first request was urgent, served on the accepting thread\n\
             # TYPE convoy_http_urgent_connections_total counter\n",
        );
        out.push_str(&format!(
            "convoy_http_urgent_connections_total {}\n",
            self.urgent_connections()
        ));
        out.push_str(
            "# HELP convoy_http_shed_at_door_total Requests answered 429 before their body was read, their x-priority level being shed\n\
             # TYPE convoy_http_shed_at_door_total counter\n",
        );
        for p in Priority::ALL {
            out.push_str(&format!(
                "convoy_http_shed_at_door_total{{priority=\"{}\"}} {}\n",
                p.as_str(),
                self.shed_at_door(p)
            ));
        }
        out
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
        .route("/v1/sla", get(sla::<C>))
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
    request: axum::extract::Request,
) -> Response {
    match answer(&server, request).await {
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
    match declared_length(request.headers()) {
        Some(n) if n > limit as u64 => {
            tracing::debug!(declared = n, limit, "body over the limit refused on sight");
            ApiError::too_large(format!("the body is over {limit} bytes ({n} declared)"))
                .into_response()
        }
        _ => next.run(request).await,
    }
}

/// The body length a request's `Content-Length` declares, if it declares
/// a number.
fn declared_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Any other path: a 404 in JSON like every other error.
async fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such route: POST /v1/infer, GET /metrics, /healthz, /v1/stats or /v1/sla",
    )
    .into_response()
}

/// A known path with the wrong method: a 405 in JSON.
async fn wrong_method() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed: /v1/infer takes POST; /metrics, /healthz, /v1/stats and /v1/sla take GET",
    )
    .into_response()
}

async fn answer<C: Codec>(
    server: &Server<C>,
    request: axum::extract::Request,
) -> Result<Value, ApiError> {
    // When the request reached the server: its first byte (or its
    // connection's accept) when served by `serve_until`, else now.
    let received = request
        .extensions()
        .get::<Received>()
        .map_or_else(std::time::Instant::now, |r| r.0);
    let said = match request.headers().get(PRIORITY_HEADER) {
        None => None,
        Some(v) => Some(codec::parse_priority(v.to_str().unwrap_or("?"))?),
    };
    // A level the queue sheds is answered before its body is read.
    if let Some(level) = said.filter(|&p| server.runtime.handle().is_shed(p)) {
        server.refusals.shed_at_door[level.index()].fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::retry_later(
            "overloaded: this priority is turned away while the queue runs late; retry later",
        ));
    }
    let declared = declared_length(request.headers()).unwrap_or(0);
    let allowed = server.limits.body_deadline(declared);
    let limit = server.max_body_bytes;
    let too_large = || ApiError::too_large(format!("the body is over {limit} bytes"));
    // A body the extractor refused (over `DefaultBodyLimit`, or cut off)
    // is answered in JSON like every other error, not axum's plain text.
    let body = match tokio::time::timeout(allowed, Bytes::from_request(request, &())).await {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {} ms", allowed.as_millis()),
            ))
        }
        Ok(Ok(body)) => body,
        Ok(Err(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
        Ok(Err(e)) => return Err(ApiError::new(e.status(), e.body_text())),
    };
    if body.len() > limit {
        return Err(too_large());
    }
    let request = decode_with(&server.codec, &body, said, received)?;
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

/// Reads a request body as `POST /v1/infer` does, up to the submit: UTF-8,
/// a JSON object, the envelope (`priority`, `deadline_ms`, `tenant`,
/// `dedup_key`), the codec's fields; `header_priority` is the
/// [`PRIORITY_HEADER`]'s value, if the request had one, and must agree
/// with the body's; `received` is when the request arrived (its deadline
/// counts from then). For embedders that take bodies from another
/// transport, and for fuzzing. Every error is a 4xx [`ApiError`].
///
/// ```
/// use convoy::Priority;
/// use convoy_server::{decode_body, Limits, ModelCodec};
/// let codec = ModelCodec { limits: Limits { max_body_bytes: 1024, max_tokens: 8, vocab: 100, dim: 4 } };
/// let now = std::time::Instant::now();
/// let r = decode_body(&codec, br#"{"tokens": [1, 2], "priority": "high"}"#, None, now).unwrap();
/// assert_eq!(r.level(), Priority::High);
/// let e = decode_body(&codec, br#"{"tokens": [1], "priority": "low"}"#, Some("critical"), now).unwrap_err();
/// assert_eq!(e.status().as_u16(), 422);
/// assert_eq!(decode_body(&codec, b"[1", None, now).unwrap_err().status().as_u16(), 400);
/// ```
pub fn decode_body<C: Codec>(
    codec: &C,
    body: &[u8],
    header_priority: Option<&str>,
    received: std::time::Instant,
) -> Result<convoy::Request<C::Input>, ApiError> {
    let said = header_priority.map(codec::parse_priority).transpose()?;
    decode_with(codec, body, said, received)
}

/// [`decode_body`] with the header's priority already read.
fn decode_with<C: Codec>(
    codec: &C,
    body: &[u8],
    said: Option<Priority>,
    received: std::time::Instant,
) -> Result<convoy::Request<C::Input>, ApiError> {
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(ApiError::bad_request("the body is not valid UTF-8"));
    };
    let mut fields = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(fields)) => fields,
        Ok(_) => return Err(ApiError::unprocessable("the body must be a JSON object")),
        Err(e) => return Err(ApiError::bad_request(format!("malformed JSON: {e}"))),
    };
    let mut envelope = codec::take_envelope(&mut fields)?;
    match (said, envelope.priority) {
        (Some(h), Some(b)) if h != b => {
            return Err(ApiError::unprocessable(format!(
                "the {PRIORITY_HEADER} header says {} and the body's priority says {}: give one, or the same in both",
                h.as_str(),
                b.as_str()
            )))
        }
        (Some(h), None) => envelope.priority = Some(h),
        _ => {}
    }
    Ok(codec::apply(codec.decode(fields)?, envelope, received))
}

async fn metrics<C: Codec>(State(server): State<Arc<Server<C>>>) -> Response {
    // metrics_text may wait (SLA_REFRESH_WAIT for a busy worker, longer
    // for one the OS has not run yet) for fresh SLA copies: off the async
    // workers.
    let rt = server.runtime.clone();
    match tokio::task::spawn_blocking(move || rt.metrics_text()).await {
        Ok(mut text) => {
            text.push_str(&server.http_metrics());
            (
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                text,
            )
                .into_response()
        }
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
    let mut json = stats_json(&server.runtime);
    // What the server refused before the runtime saw it.
    let mut door = serde_json::Map::new();
    let mut total = 0;
    for p in Priority::ALL {
        let n = server.shed_at_door(p);
        total += n;
        door.insert(p.as_str().to_owned(), n.into());
    }
    door.insert("total".into(), total.into());
    json["shed_at_door"] = Value::Object(door);
    Json(json).into_response()
}

async fn sla<C: Codec>(State(server): State<Arc<Server<C>>>) -> Response {
    // sla_report may wait for fresh copies from busy workers, as
    // metrics_text does: off the async workers.
    let rt = server.runtime.clone();
    match tokio::task::spawn_blocking(move || sla_json(&rt)).await {
        Ok(json) => Json(json).into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("building the SLA report failed: {e}"),
        )
        .into_response(),
    }
}

/// The runtime's SLA report as JSON: per priority, its objectives, the
/// end-to-end latency (from the request's receipt: a connection's accept
/// or the request's first byte, when served by [`serve_until`]), queue
/// wait and execution percentiles in milliseconds, violations and
/// compliance; the collector's decision time in microseconds; and the
/// named tenants' figures, then `other`'s (`SlaReport::tenants`).
pub fn sla_json<I: Send + 'static, O: Send + 'static>(rt: &Runtime<I, O>) -> Value {
    let report = rt.sla_report();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let pct = |p: convoy::Percentiles| {
        serde_json::json!({
            "count": p.count, "p50": ms(p.p50), "p95": ms(p.p95), "p99": ms(p.p99), "max": ms(p.max),
        })
    };
    let mut per = serde_json::Map::new();
    for p in Priority::ALL {
        let s = report.of(p);
        per.insert(
            p.as_str().to_owned(),
            serde_json::json!({
                "target_ms": {
                    "p95": ms(s.target.p95), "p99": ms(s.target.p99), "timeout": ms(s.target.timeout),
                },
                "end_to_end_ms": pct(s.end_to_end),
                "queue_wait_ms": pct(s.queue_wait),
                "execution_ms": pct(s.execution),
                "p95_met": s.p95_met,
                "p99_met": s.p99_met,
                "violations": s.violations,
                "compliance_1m": s.compliance_1m,
                "compliance_total": s.compliance_total,
            }),
        );
    }
    let d = report.decision;
    let tenant = |t: &convoy::TenantSla| {
        serde_json::json!({
            "tenant": t.tenant, "launched": t.launched, "served_tokens": t.served_tokens,
            "refused": t.refused, "queued": t.queued, "completed": t.completed,
            "p50_ms": ms(t.latency_p50), "p99_ms": ms(t.latency_p99),
        })
    };
    let tenants: Vec<Value> = report
        .tenants
        .iter()
        .chain(std::iter::once(&report.other_tenants))
        .map(tenant)
        .collect();
    serde_json::json!({
        "priorities": per,
        "tenants": tenants,
        "decision_us": {
            "count": d.count,
            "p50": d.p50.as_secs_f64() * 1e6,
            "p99": d.p99.as_secs_f64() * 1e6,
            "max": d.max.as_secs_f64() * 1e6,
        },
    })
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
            "displaced": p.displaced,
            "interrupted": p.interrupted,
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
