//! Frontends and worker hosts on a real Redis: no over-commit under
//! contention, and what happens when a frontend or a host dies.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{closes, eventually, frontend, host, Redis};
use convoy::{Failure, Priority, Request, Ticket};
use convoy_cluster::{Frontend, Pool, PoolStatus, WorkerHost, WorkerLost};

/// Reads the pool as `convoy cluster status` does.
struct Reader {
    tokio: tokio::runtime::Runtime,
    pool: Pool,
}

impl Reader {
    fn new(url: &str) -> Self {
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let pool = tokio.block_on(Pool::connect(url, "default")).unwrap();
        Self { tokio, pool }
    }

    fn status(&self, window: Duration) -> Option<PoolStatus> {
        self.tokio.block_on(self.pool.status(window)).ok()
    }
}

/// Samples the pool and every host until stopped; panics (in `join`) on
/// the first sample where live frontends hold more than a worker's
/// capacity, or a host runs more than a lane's.
struct Auditor {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<u64>>,
}

impl Auditor {
    fn start(url: &str, hosts: Vec<Arc<WorkerHost>>, window: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let url = url.to_owned();
        let thread = thread::spawn(move || {
            let reader = Reader::new(&url);
            let mut samples = 0;
            while !flag.load(Ordering::Relaxed) {
                if let Some(s) = reader.status(window) {
                    for w in &s.workers {
                        assert!(
                            w.held.0 <= u64::from(w.slots) && w.held.1 <= w.tokens,
                            "over-committed {}: live frontends hold {:?} of ({}, {})",
                            w.id,
                            w.held,
                            w.slots,
                            w.tokens
                        );
                    }
                }
                for h in &hosts {
                    let s = h.status();
                    for (lane, (run, cap)) in s.running.iter().zip(&s.capacity).enumerate() {
                        assert!(
                            run.0 <= cap.0 && run.1 <= cap.1,
                            "lane {lane} runs {run:?} over {cap:?}"
                        );
                    }
                }
                samples += 1;
                thread::sleep(Duration::from_millis(5));
            }
            samples
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns how many samples held.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("the audit held")
    }
}

/// Submits mixed priorities from `threads` threads until `until`, each
/// keeping at most `depth` requests open, and returns every outcome
/// counted by kind: (completed, expired, failed, other).
fn load(f: &Frontend<u32, u64>, threads: usize, depth: usize, until: Instant) -> [u64; 4] {
    let mut joins = Vec::new();
    for t in 0..threads {
        let h = f.handle();
        joins.push(thread::spawn(move || {
            let mut counts = [0u64; 4];
            let mut open: std::collections::VecDeque<(u32, Ticket<u64>)> = Default::default();
            let mut i = 0u32;
            let settle = |(x, mut tk): (u32, Ticket<u64>), counts: &mut [u64; 4]| match tk
                .wait_timeout(Duration::from_secs(30))
            {
                Some(Ok(v)) => {
                    assert_eq!(v, u64::from(x) * u64::from(x), "wrong output for {x}");
                    counts[0] += 1
                }
                Some(Err(Failure::Expired)) => counts[1] += 1,
                Some(Err(Failure::ExecutorFailed(_))) => counts[2] += 1,
                Some(Err(_)) => counts[3] += 1,
                None => panic!("request {x} got no outcome within 30 s"),
            };
            while Instant::now() < until {
                let p = Priority::ALL[(i as usize + t) % 5];
                let x = i % 1000;
                let req = Request::new(x)
                    .priority(p)
                    .tokens(1)
                    .deadline(Duration::from_secs(10));
                if let Ok(tk) = h.submit(req) {
                    open.push_back((x, tk));
                }
                i += 1;
                if open.len() >= depth {
                    let o = open.pop_front().unwrap();
                    settle(o, &mut counts);
                }
            }
            for o in open.drain(..) {
                settle(o, &mut counts);
            }
            counts
        }));
    }
    let mut all = [0u64; 4];
    for j in joins {
        let c = j.join().expect("a load thread");
        for k in 0..4 {
            all[k] += c[k];
        }
    }
    all
}

#[test]
fn three_frontends_never_over_commit_a_contended_pool() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let window = Duration::from_secs(1);
    // 3 hosts of one lane of 4: 12 slots for 3 frontends that each want
    // 16 at once.
    let hosts: Vec<Arc<WorkerHost>> = (0..3)
        .map(|i| Arc::new(host(&url, &format!("h{i}"), 1, 4, Duration::from_millis(2))))
        .collect();
    let fronts: Vec<_> = (0..3)
        .map(|i| frontend(&url, &format!("f{i}"), window))
        .collect();
    let audit = Auditor::start(&url, hosts.clone(), window);
    let until = Instant::now() + Duration::from_secs(20);
    let results: Vec<[u64; 4]> = thread::scope(|s| {
        let runs: Vec<_> = fronts
            .iter()
            .map(|f| s.spawn(move || load(f, 4, 4, until)))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let samples = audit.finish();
    assert!(samples > 100, "the auditor sampled only {samples} times");
    for (f, r) in fronts.iter().zip(&results) {
        assert!(r[0] > 200, "{}: only {} completed: {r:?}", f.id(), r[0]);
        assert_eq!(r[2] + r[3], 0, "{}: failures {r:?}", f.id());
        let ps = f.pool_stats();
        assert!(ps.denied > 0, "the pool was never contended: {ps:?}");
        assert_eq!(ps.host_refusals, 0, "a host refused a batch: {ps:?}");
        closes(f);
    }
    for h in &hosts {
        assert_eq!(h.status().refusals, 0, "{:?}", h.status());
    }
    for f in fronts {
        f.shutdown();
    }
    // Each left the pool holding nothing.
    let left = Reader::new(&url).status(window).unwrap();
    assert!(left.frontends.is_empty(), "{:?}", left.frontends);
}

#[test]
fn a_vanished_frontends_hold_lapses_and_the_others_take_it_up() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let window = Duration::from_millis(800);
    let h = Arc::new(host(&url, "h", 1, 4, Duration::from_millis(50)));
    let doomed = frontend(&url, "doomed", window);
    let survivor = frontend(&url, "survivor", window);
    let doomed_id = doomed.id();
    let audit = Auditor::start(&url, vec![h.clone()], window);
    // Both load the host; then one vanishes mid-load, holding capacity.
    let until = Instant::now() + Duration::from_secs(6);
    let kill_at = Instant::now() + Duration::from_secs(2);
    let reader = Reader::new(&url);
    let (survived, lapsed_after) = thread::scope(|s| {
        let run = s.spawn(|| load(&survivor, 3, 4, until));
        let dh = doomed.handle();
        let mut open = Vec::new();
        while Instant::now() < kill_at {
            if let Ok(t) = dh.submit(Request::new(3).tokens(1)) {
                open.push(t);
            }
            thread::sleep(Duration::from_millis(2));
        }
        // Wait until it holds something, so that its hold must lapse.
        let held = |st: &PoolStatus| {
            st.frontends
                .iter()
                .any(|f| f.id == doomed_id && f.live && !f.usage.is_empty())
        };
        eventually(
            Duration::from_secs(5),
            Duration::from_millis(1),
            "the doomed frontend never held",
            || reader.status(window).as_ref().is_some_and(held),
        );
        doomed.abandon();
        let lapsed = eventually(
            Duration::from_secs(10),
            Duration::from_millis(10),
            "its hold never lapsed",
            || {
                let st = reader.status(window).unwrap();
                !st.frontends.iter().any(|f| f.id == doomed_id && f.live)
            },
        );
        drop(open);
        (run.join().unwrap(), lapsed)
    });
    assert!(
        lapsed_after <= window + Duration::from_secs(1),
        "the vanished frontend's hold counted for {lapsed_after:?}"
    );
    audit.finish();
    assert!(
        survived[0] > 0 && survived[2] + survived[3] == 0,
        "{survived:?}"
    );
    closes(&survivor);
    // Once the load ends, its releases reach the pool within a few
    // milliseconds (they ride on the next commit, or go alone after 2 ms).
    eventually(
        Duration::from_secs(1),
        Duration::from_millis(5),
        "the survivor still holds the host once the load ended",
        || reader.status(window).unwrap().workers[0].held == (0, 0),
    );
    survivor.shutdown();
}

#[test]
fn a_killed_hosts_batches_fail_naming_it_and_no_batch_goes_there_after() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let window = Duration::from_millis(800);
    let doomed = host(&url, "doomed", 1, 8, Duration::from_millis(300));
    let doomed_id = doomed.worker_ids()[0].clone();
    let steady = host(&url, "steady", 1, 8, Duration::from_millis(5));
    let f = frontend(&url, "f", window);
    let h = f.handle();
    // Load both hosts; the doomed one's batches run long.
    let first: Vec<_> = (0..64u32)
        .map(|i| h.submit(Request::new(i).tokens(1)).unwrap())
        .collect();
    eventually(
        Duration::from_secs(5),
        Duration::from_millis(1),
        "nothing reached the doomed host",
        || doomed.status().running[0].0 > 0,
    );
    doomed.kill();
    let killed = Instant::now();
    let mut lost = 0;
    for (i, mut t) in first.into_iter().enumerate() {
        match t.wait_timeout(Duration::from_secs(20)) {
            Some(Ok(v)) => assert_eq!(v, (i * i) as u64),
            Some(Err(Failure::ExecutorFailed(e))) => {
                let source = std::error::Error::source(&e).expect("a typed source");
                let named = source.downcast_ref::<WorkerLost>().expect("WorkerLost");
                assert_eq!(named.worker, doomed_id);
                lost += 1;
            }
            other => panic!("request {i}: {other:?}"),
        }
    }
    assert!(lost > 0, "no request was in flight on the killed host");
    // After the window, every batch goes to the steady host.
    let wait = (window + Duration::from_millis(300)).saturating_sub(killed.elapsed());
    thread::sleep(wait);
    let later: Vec<_> = (0..200u32)
        .map(|i| h.submit(Request::new(i).tokens(1)).unwrap())
        .collect();
    for (i, mut t) in later.into_iter().enumerate() {
        assert_eq!(
            t.wait_timeout(Duration::from_secs(20)),
            Some(Ok((i * i) as u64)),
            "request {i} after the window"
        );
    }
    closes(&f);
    let ps = f.pool_stats();
    assert!(ps.lost_batches >= 1, "the lost batches are counted: {ps:?}");
    f.shutdown();
    steady.shutdown();
}
