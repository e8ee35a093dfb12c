//! A real `redis-server` for the cluster tests, started on a free
//! loopback port and killed when the guard drops. Without the binary a
//! test skips with a printed reason; under `CI=true` that fails instead.
#![allow(dead_code)] // each test binary uses its own subset

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use convoy::{Executor, ExecutorError};
use convoy_cluster::{HostConfig, LaneSpec, WorkerHost};

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
    WorkerHost::start(config, Arc::new(Square { per_batch })).expect("host starts")
}
