//! A worker host: a process that owns lanes (CPU workers, or GPUs through
//! the CUDA executor), registers them in the pool with a heartbeat, and
//! runs the batches frontends send it, never more than each lane's
//! capacity (`admission.rs`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use convoy::Executor;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::admission::{Admission, Held};
use crate::error::{check_name, ClusterError};
use crate::pool::{Pool, Registration, WorkerInfo};
use crate::wire::{self, HostError};

/// One lane of a worker host: what it holds at once and how it compares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LaneSpec {
    /// Requests at once (≥ 1).
    pub slots: u32,
    /// Tokens at once (≥ 1).
    pub tokens: u64,
    /// Relative speed (> 0).
    pub speed: f64,
    /// Cost per hour (≥ 0).
    pub cost_per_hour: f64,
}

/// How a worker host joins a pool.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// `redis://host:port/db`.
    pub redis_url: String,
    /// The pool's name (default `default`).
    pub pool: String,
    /// This host's name; its workers are `NAME/0`, `NAME/1`, ….
    pub name: String,
    /// Where to listen for batches.
    pub listen: SocketAddr,
    /// The address frontends reach it at (default: the bound address).
    pub advertise: Option<String>,
    /// Its lanes.
    pub lanes: Vec<LaneSpec>,
    /// How often it renews its registration. Keep it well inside the
    /// frontends' liveness window (a third of it or less).
    pub heartbeat: Duration,
}

/// The host's counters.
#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    refusals: AtomicU64,
    bad_input: AtomicU64,
    failed: AtomicU64,
}

struct Shared<I, O> {
    executor: Arc<dyn Executor<I, O>>,
    admission: Admission,
    counters: Counters,
    ids: Vec<String>,
}

/// A running worker host. Dropping it (or [`WorkerHost::shutdown`])
/// takes its workers out of the pool and stops serving.
pub struct WorkerHost {
    addr: SocketAddr,
    ids: Vec<String>,
    pool: Pool,
    status: Arc<dyn Fn() -> HostStatus + Send + Sync>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// What a worker host reports at `GET /v1/host`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct HostStatus {
    /// Its workers' ids, by lane.
    pub workers: Vec<String>,
    /// Each lane's capacity: (slots, tokens).
    pub capacity: Vec<(u64, u64)>,
    /// What each lane runs now: (slots, tokens).
    pub running: Vec<(u64, u64)>,
    /// Batches run.
    pub batches: u64,
    /// Batches refused because they would have taken a lane over its
    /// capacity (the pool's view was stale): 0 in a healthy pool.
    pub refusals: u64,
    /// Batches whose inputs did not decode.
    pub bad_input: u64,
    /// Batches the executor failed.
    pub failed: u64,
}

impl<I, O> Shared<I, O> {
    fn status(&self) -> HostStatus {
        let pairs = |v: &[Held]| v.iter().map(|h| (h.slots, h.tokens)).collect();
        HostStatus {
            workers: self.ids.clone(),
            capacity: pairs(self.admission.capacity()),
            running: pairs(&self.admission.running()),
            batches: self.counters.batches.load(Ordering::Relaxed),
            refusals: self.counters.refusals.load(Ordering::Relaxed),
            bad_input: self.counters.bad_input.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
        }
    }
}

impl WorkerHost {
    /// Checks `config`, connects to Redis, starts listening, registers the
    /// lanes and keeps them alive. Batches run on `executor`, lane `i` as
    /// its worker `i`.
    pub fn start<I, O>(
        config: HostConfig,
        executor: Arc<dyn Executor<I, O>>,
    ) -> Result<Self, ClusterError>
    where
        I: DeserializeOwned + Send + Sync + 'static,
        O: Serialize + Send + 'static,
    {
        check_name(&config.name)?;
        if config.lanes.is_empty() {
            return Err(ClusterError::NoLanes);
        }
        let ids: Vec<String> = (0..config.lanes.len())
            .map(|i| format!("{}/{i}", config.name))
            .collect();
        for (id, lane) in ids.iter().zip(&config.lanes) {
            let valid = lane.slots > 0
                && lane.tokens > 0
                && lane.speed.is_finite()
                && lane.speed > 0.0
                && lane.cost_per_hour.is_finite()
                && lane.cost_per_hour >= 0.0;
            if !valid {
                return Err(ClusterError::ZeroCapacity { worker: id.clone() });
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("convoy-host")
            .enable_all()
            .build()
            .map_err(|e| ClusterError::Listen {
                addr: config.listen.to_string(),
                reason: e.to_string(),
            })?;
        let pool = runtime.block_on(Pool::connect(&config.redis_url, &config.pool))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(config.listen))
            .map_err(|e| ClusterError::Listen {
                addr: config.listen.to_string(),
                reason: e.to_string(),
            })?;
        let addr = listener.local_addr().map_err(|e| ClusterError::Listen {
            addr: config.listen.to_string(),
            reason: e.to_string(),
        })?;
        let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());
        let registrations: Vec<Registration> = ids
            .iter()
            .zip(&config.lanes)
            .enumerate()
            .map(|(lane, (id, spec))| Registration {
                id: id.clone(),
                slots: spec.slots,
                tokens: spec.tokens,
                info: WorkerInfo {
                    addr: advertise.clone(),
                    lane,
                    speed: spec.speed,
                    cost_per_hour: spec.cost_per_hour,
                },
            })
            .collect();
        runtime
            .block_on(pool.register(&registrations))
            .map_err(|e| ClusterError::unreachable(&config.redis_url, e))?;
        let shared = Arc::new(Shared {
            executor,
            admission: Admission::new(
                config
                    .lanes
                    .iter()
                    .map(|l| Held {
                        slots: u64::from(l.slots),
                        tokens: l.tokens,
                    })
                    .collect(),
            ),
            counters: Counters::default(),
            ids: ids.clone(),
        });
        let app = Router::new()
            .route("/v1/batch/{lane}", post(run_batch::<I, O>))
            .route("/v1/host", get(host_status::<I, O>))
            .with_state(shared.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        let beat = pool.clone();
        let every = config.heartbeat.max(Duration::from_millis(10));
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = beat.register(&registrations).await {
                    tracing::warn!(error = %e, "worker host heartbeat failed; retrying");
                }
            }
        });
        Ok(Self {
            addr,
            ids,
            pool,
            status: Arc::new(move || shared.status()),
            stop: Some(stop),
            runtime: Some(runtime),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its workers' ids, by lane.
    pub fn worker_ids(&self) -> &[String] {
        &self.ids
    }

    /// Its counters and what each lane runs now.
    pub fn status(&self) -> HostStatus {
        (self.status)()
    }

    /// Takes its workers out of the pool, stops taking batches and lets
    /// those running finish.
    pub fn shutdown(mut self) {
        self.stop_now(true);
    }

    /// Stops at once, as a crash would: its workers stay registered until
    /// their heartbeat lapses, and batches in flight get no answer (their
    /// frontends see the connection drop). For tests of a lost host.
    pub fn kill(mut self) {
        self.stop_now(false);
    }

    fn stop_now(&mut self, clean: bool) {
        if let Some(rt) = self.runtime.take() {
            if clean {
                let _ = rt.block_on(self.pool.deregister(&self.ids));
                if let Some(stop) = self.stop.take() {
                    let _ = stop.send(());
                }
                rt.shutdown_timeout(Duration::from_secs(5));
            } else {
                rt.shutdown_background();
            }
        }
    }
}

impl Drop for WorkerHost {
    fn drop(&mut self) {
        self.stop_now(true);
    }
}

fn refuse(status: StatusCode, e: HostError) -> Response {
    (status, Json(e)).into_response()
}

async fn host_status<I, O>(State(shared): State<Arc<Shared<I, O>>>) -> Json<HostStatus> {
    Json(shared.status())
}

async fn run_batch<I, O>(
    State(shared): State<Arc<Shared<I, O>>>,
    Path(lane): Path<usize>,
    headers: HeaderMap,
    body: Bytes,
) -> Response
where
    I: DeserializeOwned + Send + Sync + 'static,
    O: Serialize + Send + 'static,
{
    if lane >= shared.admission.lanes() {
        return refuse(
            StatusCode::NOT_FOUND,
            HostError::new(
                "unknown_lane",
                format!(
                    "this host has lanes 0..{}, not {lane}",
                    shared.admission.lanes()
                ),
            ),
        );
    }
    let inputs: Vec<I> = match wire::decode(&body) {
        Ok(v) => v,
        Err(e) => {
            shared.counters.bad_input.fetch_add(1, Ordering::Relaxed);
            return refuse(
                StatusCode::BAD_REQUEST,
                HostError::new(
                    "bad_input",
                    format!("the batch's inputs do not decode: {e}"),
                ),
            );
        }
    };
    let tokens = headers
        .get(wire::TOKENS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(inputs.len() as u64);
    let asked = Held {
        slots: inputs.len() as u64,
        tokens,
    };
    if let Err(over) = shared.admission.admit(lane, asked) {
        shared.counters.refusals.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(lane, %over, "refused a batch over capacity");
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            HostError::new("over_capacity", over.to_string()),
        );
    }
    let run = shared.clone();
    let result = tokio::task::spawn_blocking(move || {
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run.executor.execute(lane, &inputs)
        }));
        run.admission.release(lane, asked);
        out
    })
    .await;
    shared.counters.batches.fetch_add(1, Ordering::Relaxed);
    let failed = |message: String| {
        shared.counters.failed.fetch_add(1, Ordering::Relaxed);
        refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            HostError::new("executor_failed", message),
        )
    };
    match result {
        Ok(Ok(Ok(outputs))) => match wire::encode(&outputs) {
            Ok(bytes) => ([(header::CONTENT_TYPE, wire::POSTCARD)], bytes).into_response(),
            Err(e) => failed(format!("outputs do not encode: {e}")),
        },
        Ok(Ok(Err(e))) => failed(e.to_string()),
        Ok(Err(_)) | Err(_) => failed("the executor panicked".to_owned()),
    }
}
