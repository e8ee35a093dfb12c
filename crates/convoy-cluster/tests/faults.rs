//! Redis restarting and a frontend cut off from it, and bad input of
//! every kind: typed errors, never a panic, nothing lost.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{closes, frontend, host, Redis, Square};
use convoy::{Config, Failure, Request};
use convoy_cluster::{ClusterError, Frontend, FrontendConfig, HostConfig, LaneSpec, WorkerHost};

#[test]
fn a_redis_restart_keeps_requests_queued_and_frontends_reassert() {
    let Some(redis) = Redis::start() else { return };
    let port = redis.port;
    let url = redis.url();
    let window = Duration::from_millis(800);
    let h = host(&url, "h", 1, 4, Duration::from_millis(5));
    let f = frontend(&url, "f", window);
    let handle = f.handle();
    // Warm: it works.
    let mut t = handle.submit(Request::new(2).tokens(1)).unwrap();
    assert_eq!(t.wait_timeout(Duration::from_secs(10)), Some(Ok(4)));
    redis.kill();
    // While Redis is down: queued requests wait, and a deadline still fires.
    let short = handle
        .submit(
            Request::new(5)
                .tokens(1)
                .deadline(Duration::from_millis(300)),
        )
        .unwrap();
    let waiting: Vec<_> = (0..50u32)
        .map(|i| handle.submit(Request::new(i).tokens(1)).unwrap())
        .collect();
    thread::sleep(Duration::from_millis(600));
    let mut short = short;
    assert_eq!(
        short.wait_timeout(Duration::from_secs(5)),
        Some(Err(Failure::Expired)),
        "a deadline fires while the pool is unreachable"
    );
    let back = Redis::on(port).expect("redis-server restarts");
    // The host re-registers at its next beat, the frontend rejoins under
    // a new epoch and re-asserts its usage; the waiting requests run.
    for (i, mut t) in waiting.into_iter().enumerate() {
        assert_eq!(
            t.wait_timeout(Duration::from_secs(20)),
            Some(Ok((i * i) as u64)),
            "request {i} after the restart"
        );
    }
    let ps = f.pool_stats();
    assert!(ps.rejoins >= 1 && ps.failed_commits >= 1, "{ps:?}");
    assert_eq!(h.status().refusals, 0);
    closes(&f);
    f.shutdown();
    h.shutdown();
    drop(back);
}

/// A loopback TCP proxy that can be cut (every connection dropped, new
/// ones refused) and restored: a frontend partitioned from Redis.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    fn to(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if flag.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let flag = flag.clone();
                    thread::spawn(move || {
                        let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            if flag.load(Ordering::SeqCst) {
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => return,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
            }
        });
        Self { addr, cut }
    }

    fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }
}

#[test]
fn a_partitioned_frontend_fences_itself_rejoins_and_loses_nothing() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let window = Duration::from_millis(600);
    let h = host(&url, "h", 1, 4, Duration::from_millis(20));
    let proxy = Proxy::to(([127, 0, 0, 1], redis.port).into());
    let cut_off = frontend(&proxy.url(), "cut", window);
    let other = frontend(&url, "other", window);
    let first_id = cut_off.id();
    let stop = Arc::new(AtomicBool::new(false));
    // The other frontend keeps the host busy throughout.
    let busy = {
        let h = other.handle();
        let stop = stop.clone();
        thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut t = h.submit(Request::new(3).tokens(1)).unwrap();
                assert_eq!(t.wait_timeout(Duration::from_secs(20)), Some(Ok(9)));
                n += 1;
            }
            n
        })
    };
    let ch = cut_off.handle();
    let before: Vec<_> = (0..20u32)
        .map(|i| ch.submit(Request::new(i).tokens(1)).unwrap())
        .collect();
    thread::sleep(Duration::from_millis(100));
    proxy.cut.store(true, Ordering::SeqCst);
    let during: Vec<_> = (20..40u32)
        .map(|i| ch.submit(Request::new(i).tokens(1)).unwrap())
        .collect();
    // Cut for longer than the window: the pool stops counting it, and the
    // host's own admission keeps the lane within capacity meanwhile.
    let began = Instant::now();
    while began.elapsed() < window * 3 {
        let s = h.status();
        assert!(s.running[0].0 <= s.capacity[0].0, "{s:?}");
        thread::sleep(Duration::from_millis(5));
    }
    proxy.cut.store(false, Ordering::SeqCst);
    for (i, mut t) in before.into_iter().chain(during).enumerate() {
        assert_eq!(
            t.wait_timeout(Duration::from_secs(30)),
            Some(Ok((i * i) as u64)),
            "request {i} of the partitioned frontend"
        );
    }
    assert_ne!(cut_off.id(), first_id, "it rejoined under a new epoch");
    stop.store(true, Ordering::Relaxed);
    assert!(busy.join().unwrap() > 0);
    closes(&cut_off);
    closes(&other);
    cut_off.shutdown();
    other.shutdown();
    h.shutdown();
}

#[test]
fn bad_urls_and_configs_are_typed_errors() {
    let cfg = |url: &str| {
        let mut c = FrontendConfig::new(url, "f");
        c.wait_for_workers = Duration::from_millis(200);
        c
    };
    let start = |url: &str| Frontend::<u32, u64>::start(cfg(url), Config::default(), |_| 1);
    assert!(matches!(
        start("not a url"),
        Err(ClusterError::BadUrl { .. })
    ));
    // Nothing listens on port 1.
    let e = start("redis://127.0.0.1:1/").err().expect("unreachable");
    assert!(matches!(e, ClusterError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
    let mut named = cfg("redis://127.0.0.1:1/");
    named.name = "has space".into();
    assert!(matches!(
        Frontend::<u32, u64>::start(named, Config::default(), |_| 1),
        Err(ClusterError::BadName { .. })
    ));
    let Some(redis) = Redis::start() else { return };
    // An empty pool: no worker within the wait.
    let e = start(&redis.url()).err().expect("no workers");
    assert!(matches!(e, ClusterError::NoWorkers { .. }), "{e}");
    let host_cfg = |slots| HostConfig {
        redis_url: redis.url(),
        pool: "default".into(),
        name: "h".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        lanes: vec![LaneSpec {
            slots,
            tokens: 10,
            speed: 1.0,
            cost_per_hour: 0.0,
        }],
        heartbeat: Duration::from_millis(100),
    };
    let sq = Arc::new(Square {
        per_batch: Duration::ZERO,
    });
    let e = WorkerHost::start(host_cfg(0), sq.clone())
        .err()
        .expect("zero capacity");
    assert!(
        matches!(e, ClusterError::ZeroCapacity { ref worker } if worker == "h/0"),
        "{e}"
    );
    let mut none = host_cfg(1);
    none.lanes.clear();
    assert!(matches!(
        WorkerHost::start(none, sq),
        Err(ClusterError::NoLanes)
    ));
}

#[test]
fn a_host_answers_bad_batches_with_json_errors() {
    let Some(redis) = Redis::start() else { return };
    let h = host(&redis.url(), "h", 1, 4, Duration::ZERO);
    let post = |path: &str, body: &[u8]| -> (u16, String) {
        let mut s = TcpStream::connect(h.addr()).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let code = out[9..12].parse().unwrap();
        (code, out)
    };
    // Inputs that do not decode as a list of u32.
    let (code, body) = post("/v1/batch/0", &[0xff, 0xff, 0xff]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("\"error\":\"bad_input\""), "{body}");
    let (code, body) = post("/v1/batch/7", &[0]);
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("unknown_lane"), "{body}");
    // An empty batch is fine: no inputs, no outputs.
    let (code, _) = post("/v1/batch/0", &[0]);
    assert_eq!(code, 200);
    let s = h.status();
    assert_eq!((s.bad_input, s.refusals), (1, 0), "{s:?}");
    h.shutdown();
}
