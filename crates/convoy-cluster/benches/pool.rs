//! The pool's costs on loopback, each against a baseline in the same run.
//!
//! 1. `commit`: one commit (`lua/commit.lua`) of one grant, with 64
//!    workers registered and 3 live frontends each holding usage on 16 of
//!    them, against a bare `PING` over the same connection (the floor of
//!    any round trip). Prints p50/p99 of each and their ratio, and from
//!    the commit's p50 the commits per second one Redis serves.
//! 2. `cluster_vs_local`: the same closed-loop work (a 200 µs batch of up
//!    to 64 requests, 32 clients) on a local runtime of 2 workers, and on
//!    a frontend whose 2 workers are a worker host on loopback: throughput
//!    ratio, p99 of each, and Redis round trips per launched batch.
//!
//! Needs `redis-server` on the PATH (Debian's package); without it, says
//! so and exits 0 (under `CI=true`, fails).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use convoy::{Capacity, Config, Executor, ExecutorError, Request, Runtime, WorkerSpec};
use convoy_cluster::{Frontend, FrontendConfig, Pool, Registration, WorkerInfo};
use hdrhistogram::Histogram;

// The tests' redis-server guard and host builder.
#[path = "../tests/common/mod.rs"]
mod common;

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn commit_bench(tokio: &tokio::runtime::Runtime, url: &str) {
    let window = Duration::from_secs(60);
    let pool = tokio.block_on(Pool::connect(url, "bench")).unwrap();
    let workers: Vec<Registration> = (0..64)
        .map(|i| Registration {
            id: format!("h{}/{}", i / 8, i % 8),
            slots: 1_000_000,
            tokens: 1_000_000_000,
            info: WorkerInfo {
                addr: "127.0.0.1:1".into(),
                lane: i % 8,
                speed: 1.0,
                cost_per_hour: 0.0,
            },
        })
        .collect();
    tokio.block_on(pool.register(&workers)).unwrap();
    let usage: Vec<(String, u32, u64)> = workers[..16]
        .iter()
        .map(|w| (w.id.clone(), 4, 400))
        .collect();
    let mut ids = Vec::new();
    for f in 0..3 {
        let id = tokio.block_on(pool.join(&format!("f{f}"))).unwrap();
        tokio
            .block_on(pool.commit(&id, window, &usage, &[]))
            .unwrap();
        ids.push(id);
    }
    let me = &ids[0];
    let mut conn_ping = Histogram::<u64>::new(3).unwrap();
    let mut commit = Histogram::<u64>::new(3).unwrap();
    let rounds = 20_000;
    for i in 0..rounds {
        let t = Instant::now();
        let _: String = tokio.block_on(pool.ping()).unwrap();
        conn_ping.record(t.elapsed().as_nanos() as u64).unwrap();
        let grant = [(workers[i % 64].id.clone(), 1u32, 100u64)];
        let t = Instant::now();
        black_box(
            tokio
                .block_on(pool.commit(me, window, &usage, &grant))
                .unwrap(),
        );
        commit.record(t.elapsed().as_nanos() as u64).unwrap();
    }
    println!(
        "commit (64 workers, 3 live frontends, 1 grant): p50 {:.1} µs  p99 {:.1} µs",
        pct(&commit, 0.5),
        pct(&commit, 0.99)
    );
    println!(
        "PING baseline (same connection):              p50 {:.1} µs  p99 {:.1} µs",
        pct(&conn_ping, 0.5),
        pct(&conn_ping, 0.99)
    );
    println!(
        "commit / PING: p50 {:.2}x  p99 {:.2}x;  one Redis serves about {:.0} commits/s",
        pct(&commit, 0.5) / pct(&conn_ping, 0.5),
        pct(&commit, 0.99) / pct(&conn_ping, 0.99),
        1e6 / pct(&commit, 0.5)
    );
}

/// A 200 µs batch: the same work local and remote.
struct Work;

impl Executor<u32, u32> for Work {
    fn execute(&self, _: usize, xs: &[u32]) -> Result<Vec<u32>, ExecutorError> {
        let until = Instant::now() + Duration::from_micros(200);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        Ok(xs.iter().map(|x| x + 1).collect())
    }
}

/// 32 closed-loop clients for `secs`: (requests/s, p99 µs).
fn closed_loop(h: convoy::Handle<u32, u32>, secs: u64) -> (f64, f64) {
    let until = Instant::now() + Duration::from_secs(secs);
    let threads: Vec<_> = (0..32)
        .map(|_| {
            let h = h.clone();
            std::thread::spawn(move || {
                let mut hist = Histogram::<u64>::new(3).unwrap();
                while Instant::now() < until {
                    let t = Instant::now();
                    let mut tk = h.submit(Request::new(1).tokens(1)).unwrap();
                    let out = tk.wait_timeout(Duration::from_secs(10));
                    assert_eq!(out, Some(Ok(2)));
                    hist.record(t.elapsed().as_nanos() as u64).unwrap();
                }
                hist
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new(3).unwrap();
    for t in threads {
        all.add(t.join().unwrap()).unwrap();
    }
    (all.len() as f64 / secs as f64, pct(&all, 0.99))
}

fn cluster_vs_local(url: &str) {
    let lanes = 2;
    let slots = 64;
    let spec = WorkerSpec {
        name: "w".into(),
        capacity: Capacity {
            slots,
            tokens: u64::from(slots) * 100,
            bytes: u64::MAX,
        },
        speed: 1.0,
        cost_per_hour: 0.0,
    };
    let local = Runtime::builder()
        .config(Config {
            workers: vec![spec; lanes],
            ..Config::default()
        })
        .executor(Work)
        .build()
        .unwrap();
    let (local_rate, local_p99) = closed_loop(local.handle(), 5);
    local.shutdown();

    let host = common::host_of(url, "h", lanes, slots, Arc::new(Work));
    let f: Frontend<u32, u32> =
        Frontend::start(FrontendConfig::new(url, "bench"), Config::default(), |_| 1).unwrap();
    let before = f.pool_stats();
    let (pool_rate, pool_p99) = closed_loop(f.handle(), 5);
    let after = f.pool_stats();
    let batches = after.granted - before.granted;
    let commits = after.commits - before.commits;
    f.shutdown();
    host.shutdown();
    println!("local runtime ({lanes} workers): {local_rate:.0} req/s, p99 {local_p99:.0} µs");
    println!("pool frontend ({lanes} remote workers): {pool_rate:.0} req/s, p99 {pool_p99:.0} µs");
    println!(
        "pool / local: throughput {:.2}x, p99 {:+.2} ms;  Redis round trips per launched batch {:.3} ({commits} commits, {batches} batches)",
        pool_rate / local_rate,
        (pool_p99 - local_p99) / 1000.0,
        commits as f64 / batches.max(1) as f64
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not run us.
    // Says why and returns None where redis-server is missing.
    let Some(redis) = common::Redis::start() else {
        return;
    };
    let url = redis.url();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    commit_bench(&tokio, &url);
    cluster_vs_local(&url);
}
