//! Frontends and worker hosts on a real Redis: the pool's arithmetic,
//! no over-commit under contention, and what happens when a part dies.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{host, Redis};
use convoy::{Config, Failure, Priority, Request};
use convoy_cluster::{Frontend, FrontendConfig};

fn frontend(url: &str, name: &str, window: Duration) -> Frontend<u32, u64> {
    let mut cfg = FrontendConfig::new(url, name);
    cfg.liveness = window;
    cfg.heartbeat = window / 5;
    cfg.batch_timeout = Duration::from_secs(5);
    Frontend::start(cfg, Config::default(), |_| 1).expect("frontend starts")
}

#[test]
fn one_frontend_runs_requests_on_a_worker_host() {
    let Some(redis) = Redis::start() else { return };
    let h = host(&redis.url(), "h1", 2, 4, Duration::from_millis(1));
    let f = frontend(&redis.url(), "f1", Duration::from_secs(1));
    let handle = f.handle();
    let tickets: Vec<_> = (0..200u32)
        .map(|i| handle.submit(Request::new(i).tokens(1)).unwrap())
        .collect();
    for (i, mut t) in tickets.into_iter().enumerate() {
        let i = i as u64;
        assert_eq!(t.wait_timeout(Duration::from_secs(20)), Some(Ok(i * i)));
    }
    let s = f.pool_stats();
    assert!(s.granted > 0 && s.commits >= 1, "{s:?}");
    assert!(s.commits <= s.granted + 200, "{s:?}");
    assert_eq!(h.status().refusals, 0);
    f.shutdown();
    h.shutdown();
}
