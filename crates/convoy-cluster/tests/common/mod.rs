//! A real `redis-server` for the cluster tests (and the pool bench),
//! started on a free loopback port and killed when the guard drops.
//! Without the binary a test skips with a printed reason; under
//! `CI=true` that fails instead. And the hosts, frontends and checks the
//! tests share.
#![allow(dead_code)] // each test binary uses its own subset

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use convoy::{Config, Executor, ExecutorError, Priority};
use convoy_cluster::{Frontend, FrontendConfig, HostConfig, LaneSpec, WorkerHost};

/// A redis-server child process.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    /// Starts one, or returns `None` (printing why) where the binary is
    /// missing; under `CI=true` a missing binary panics.
    pub fn start() -> Option<Self> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        Self::on(port)
    }

    /// Starts one on `port` (a restart reuses the port).
    pub fn on(port: u16) -> Option<Self> {
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("redis-server is required under CI=true: {e}");
                }
                eprintln!("skipped: redis-server not found ({e}); apt-get install redis-server");
                return None;
            }
        };
        let redis = Self { child, port };
        let began = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills it at once (SIGKILL).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An executor that squares each input, taking `per_batch` per batch.
pub struct Square {
    pub per_batch: Duration,
}

impl Executor<u32, u64> for Square {
    fn execute(&self, _: usize, xs: &[u32]) -> Result<Vec<u64>, ExecutorError> {
        std::thread::sleep(self.per_batch);
        Ok(xs.iter().map(|&x| u64::from(x) * u64::from(x)).collect())
    }
}

/// A host named `name` with `lanes` lanes of `slots` requests, running
/// [`Square`].
pub fn host(url: &str, name: &str, lanes: usize, slots: u32, per_batch: Duration) -> WorkerHost {
    host_of(url, name, lanes, slots, Arc::new(Square { per_batch }))
}

/// A host named `name` with `lanes` lanes of `slots` requests (100
/// tokens each), running `executor`.
pub fn host_of<I, O>(
    url: &str,
    name: &str,
    lanes: usize,
    slots: u32,
    executor: Arc<dyn Executor<I, O>>,
) -> WorkerHost
where
    I: serde::de::DeserializeOwned + Send + Sync + 'static,
    O: serde::Serialize + Send + 'static,
{
    let config = HostConfig {
        redis_url: url.to_owned(),
        pool: "default".into(),
        name: name.into(),
        listen: "127.0.0.1:0".parse().expect("an address"),
        advertise: None,
        lanes: vec![
            LaneSpec {
                slots,
                tokens: u64::from(slots) * 100,
                speed: 1.0,
                cost_per_hour: 0.0,
            };
            lanes
        ],
        heartbeat: Duration::from_millis(100),
    };
    WorkerHost::start(config, executor).expect("host starts")
}

/// A frontend named `name` costing each request 1 token, with liveness
/// `window` and a heartbeat of a fifth of it.
pub fn frontend(url: &str, name: &str, window: Duration) -> Frontend<u32, u64> {
    let mut cfg = FrontendConfig::new(url, name);
    cfg.liveness = window;
    cfg.heartbeat = window / 5;
    cfg.batch_timeout = Duration::from_secs(5);
    Frontend::start(cfg, Config::default(), |_| 1).expect("frontend starts")
}

/// Every level's accounting closes: accepted = each outcome, lost 0.
pub fn closes<O: Send + 'static>(f: &Frontend<u32, O>) {
    let s = f.runtime().stats();
    for p in Priority::ALL {
        assert_eq!(s.of(p).lost(), 0, "{p:?}: {}", s.of(p));
    }
}

/// Polls `done` every `every` until it holds; panics naming `what` once
/// `bound` has passed. Returns how long it took.
#[track_caller]
pub fn eventually(
    bound: Duration,
    every: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> Duration {
    let began = Instant::now();
    while !done() {
        assert!(began.elapsed() < bound, "{what} (after {bound:?})");
        std::thread::sleep(every);
    }
    began.elapsed()
}
