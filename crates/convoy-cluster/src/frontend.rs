//! A frontend: convoy as embedded today (lock-free intake, one collector,
//! ordering, SLA, metrics), whose fleet is the pool in Redis. Its local
//! workers mirror the pool's live workers (`sync.rs`), each batch is
//! granted by the pool in the commit of its pass (`committer.rs`) and
//! run on its worker host (`remote.rs`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use convoy::{Config, Handle, Runtime};
use crossbeam::channel::Sender;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::committer::{self, Msg, Plan, PoolCounters};
use crate::error::{check_name, ClusterError};
use crate::pool::{CommitReply, Pool};
use crate::remote::RemoteExecutor;
use crate::sync::{spec, Mirror, Remote};

/// How a frontend joins a pool.
#[derive(Debug, Clone)]
pub struct FrontendConfig {
    /// `redis://host:port/db`.
    pub redis_url: String,
    /// The pool's name (default `default`).
    pub pool: String,
    /// This frontend's name; it joins as `NAME#EPOCH`, a new epoch each
    /// start.
    pub name: String,
    /// A frontend or worker whose heartbeat is older than this stops
    /// counting (default 3 s). Every frontend and host of a pool should
    /// use the same window.
    pub liveness: Duration,
    /// How often an idle frontend commits (its heartbeat; releases ride
    /// on it). Default: a quarter of the window.
    pub heartbeat: Duration,
    /// How long a batch may take on its host before the host counts as
    /// lost for it (default 30 s).
    pub batch_timeout: Duration,
    /// How long to wait at start for a live worker (default 10 s).
    pub wait_for_workers: Duration,
}

impl FrontendConfig {
    /// A frontend named `name` on pool `default` at `redis_url`, with the
    /// default windows.
    pub fn new(redis_url: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            redis_url: redis_url.into(),
            pool: "default".into(),
            name: name.into(),
            liveness: Duration::from_secs(3),
            heartbeat: Duration::from_millis(750),
            batch_timeout: Duration::from_secs(30),
            wait_for_workers: Duration::from_secs(10),
        }
    }
}

/// What a frontend counts of its dealings with the pool (a snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PoolStats {
    /// Commits made: each one Redis round trip.
    pub commits: u64,
    /// Batches the pool granted.
    pub granted: u64,
    /// Batches the pool denied (they waited again).
    pub denied: u64,
    /// Commits that failed (Redis unreachable); their batches waited again.
    pub failed_commits: u64,
    /// Times the frontend found itself fenced and rejoined.
    pub rejoins: u64,
    /// Shortfall records written.
    pub shortfalls: u64,
    /// Batches a worker host refused as over its capacity.
    pub host_refusals: u64,
    /// Batches lost with their worker host.
    pub lost_batches: u64,
}

/// A running frontend. [`Frontend::shutdown`] drains its runtime, then
/// leaves the pool holding nothing.
pub struct Frontend<I: Send + 'static, O: Send + 'static> {
    runtime: Arc<Runtime<I, O>>,
    id: Arc<ArcSwap<String>>,
    counters: Arc<PoolCounters>,
    commits: Option<Sender<Msg>>,
    committer: Option<JoinHandle<()>>,
    tokio: Option<tokio::runtime::Runtime>,
}

impl<I, O> Frontend<I, O>
where
    I: Serialize + Send + Sync + 'static,
    O: DeserializeOwned + Send + 'static,
{
    /// Joins the pool under a new epoch, waits for a live worker, and
    /// starts a runtime of `config` (its `workers` and `cpu_workers` are
    /// replaced by the pool's) whose batches run on the pool.
    /// `tokens_of` is each input's token cost, the same the caller gives
    /// [`Request::tokens`](convoy::Request::tokens): the pool reserves by
    /// it. Deduplication is not offered over a pool.
    pub fn start(
        cfg: FrontendConfig,
        config: Config,
        tokens_of: fn(&I) -> u32,
    ) -> Result<Self, ClusterError> {
        Self::start_with(cfg, config, tokens_of, |_| Ok(()))
    }

    /// [`Frontend::start`], with `check` refusing at submit an input the
    /// worker hosts could never run (the check their executor makes,
    /// [`Executor::check`](convoy::Executor::check)): the caller gets it
    /// back at once instead of a failed batch.
    pub fn start_with(
        cfg: FrontendConfig,
        config: Config,
        tokens_of: fn(&I) -> u32,
        check: impl Fn(&I) -> Result<(), String> + Send + Sync + 'static,
    ) -> Result<Self, ClusterError> {
        check_name(&cfg.name)?;
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("convoy-frontend")
            .enable_all()
            .build()
            .map_err(|e| ClusterError::unreachable(&cfg.redis_url, e))?;
        let pool = tokio.block_on(Pool::connect(&cfg.redis_url, &cfg.pool))?;
        let unreachable = |e: redis::RedisError| ClusterError::unreachable(&cfg.redis_url, e);
        let id = tokio.block_on(pool.join(&cfg.name)).map_err(unreachable)?;
        // The first snapshot: wait for a live worker with room.
        let began = Instant::now();
        let rooms = loop {
            let reply = tokio
                .block_on(pool.commit(&id, cfg.liveness, &[], &[]))
                .map_err(unreachable)?;
            if let CommitReply::Done { room, .. } = reply {
                let room: Vec<_> = room
                    .into_iter()
                    .filter(|r| r.slots > 0 && r.tokens > 0)
                    .collect();
                if !room.is_empty() {
                    break room;
                }
            }
            if began.elapsed() >= cfg.wait_for_workers {
                return Err(ClusterError::NoWorkers {
                    pool: cfg.pool.clone(),
                    waited_ms: began.elapsed().as_millis() as u64,
                });
            }
            std::thread::sleep(Duration::from_millis(100).min(cfg.heartbeat));
        };
        let infos: HashMap<_, _> = tokio.block_on(pool.infos()).map_err(unreachable)?;
        let rooms: Vec<_> = rooms
            .into_iter()
            .filter(|r| infos.contains_key(&r.worker))
            .collect();
        let remotes: Vec<Remote> = rooms
            .iter()
            .map(|r| Remote {
                id: r.worker.clone(),
                info: infos[&r.worker].clone(),
            })
            .collect();
        let mut config = config;
        config.workers = rooms.iter().map(|r| spec(r, &infos[&r.worker])).collect();
        config.cpu_workers = 0;

        let id = Arc::new(ArcSwap::from_pointee(id));
        let remotes = Arc::new(ArcSwap::from_pointee(remotes));
        let counters = Arc::new(PoolCounters::default());
        let (tx, rx) = crossbeam::channel::unbounded();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| ClusterError::unreachable(&cfg.redis_url, e))?;
        let executor = RemoteExecutor {
            remotes: remotes.clone(),
            commits: tx.clone(),
            http,
            tokio: tokio.handle().clone(),
            tokens_of,
            check: Box::new(check),
            timeout: cfg.batch_timeout,
            id: id.clone(),
            counters: counters.clone(),
        };
        let short = tx.clone();
        let runtime = Arc::new(
            Runtime::builder()
                .config(config)
                .executor(executor)
                .on_capacity_shortfall(move |cost| {
                    let _ = short.send(Msg::Short {
                        tokens: cost.tokens,
                    });
                })
                .build()?,
        );
        let plan = Plan {
            pool,
            name: cfg.name.clone(),
            id: id.clone(),
            window: cfg.liveness,
            heartbeat: cfg.heartbeat.max(Duration::from_millis(10)),
            counters: counters.clone(),
            tokio: tokio.handle().clone(),
        };
        let mirror = Mirror::new(remotes, infos, &rooms);
        let weak = Arc::downgrade(&runtime);
        let committer = std::thread::Builder::new()
            .name("convoy-commit".into())
            .spawn(move || committer::run(plan, rx, mirror, weak))
            .map_err(|e| ClusterError::Build(convoy::BuildError::Spawn(e.to_string())))?;
        Ok(Self {
            runtime,
            id,
            counters,
            commits: Some(tx),
            committer: Some(committer),
            tokio: Some(tokio),
        })
    }
}

impl<I: Send + 'static, O: Send + 'static> Frontend<I, O> {
    /// The local runtime: submit through its handle, read its stats,
    /// mount it behind `convoy-server`.
    pub fn runtime(&self) -> &Arc<Runtime<I, O>> {
        &self.runtime
    }

    /// A handle for submitting.
    pub fn handle(&self) -> Handle<I, O> {
        self.runtime.handle()
    }

    /// This frontend's id in the pool now (`NAME#EPOCH`; a new epoch
    /// after it was fenced).
    pub fn id(&self) -> String {
        self.id.load().as_str().to_owned()
    }

    /// Its dealings with the pool so far.
    pub fn pool_stats(&self) -> PoolStats {
        let c = &self.counters;
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        PoolStats {
            commits: n(&c.commits),
            granted: n(&c.granted),
            denied: n(&c.denied),
            failed_commits: n(&c.failed_commits),
            rejoins: n(&c.rejoins),
            shortfalls: n(&c.shortfalls),
            host_refusals: n(&c.host_refusals),
            lost_batches: n(&c.lost_batches),
        }
    }

    /// Drains the runtime (it finishes what it accepted within its
    /// shutdown timeout), then leaves the pool holding nothing.
    pub fn shutdown(mut self) {
        self.stop(true);
    }

    /// Stops as a crash would, for tests of a lost frontend: no more
    /// commits or heartbeats, and what it holds in the pool stays until
    /// its heartbeat lapses. Its runtime stops at once
    /// ([`Runtime::shutdown_now`]).
    pub fn abandon(mut self) {
        self.stop(false);
    }

    fn stop(&mut self, clean: bool) {
        let Some(commits) = self.commits.take() else {
            return;
        };
        if clean {
            // Workers are joined: no ask comes after this.
            self.runtime.shutdown();
            let _ = commits.send(Msg::Leave);
        } else {
            let _ = commits.send(Msg::Vanish);
            if let Some(c) = self.committer.take() {
                let _ = c.join();
            }
            self.runtime.shutdown_now();
        }
        if let Some(c) = self.committer.take() {
            let _ = c.join();
        }
        if let Some(t) = self.tokio.take() {
            t.shutdown_background();
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Drop for Frontend<I, O> {
    fn drop(&mut self) {
        self.stop(true);
    }
}
