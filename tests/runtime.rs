//! The runtime end to end on CPU workers: ordering, limits, every outcome,
//! bad input, shutdown, and a "nothing lost" stress run.

mod common;

use common::{
    echo_runtime_with, eventually, occupy_the_held_worker, occupy_the_worker, worker, Hold, Rng,
    Seen, WaitBounded,
};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use convoy::{
    BatchDelay, BatchingConfig, BuildError, Capacity, Config, Executor, Failure, InsertPolicy,
    Priority, Request, Runtime, SubmitErrorKind, Ticket, WorkerSpec,
};

fn config(workers: Vec<WorkerSpec>, max_batch: usize, delay_ms: u64) -> Config {
    Config {
        workers,
        batching: BatchingConfig {
            max_batch_size: max_batch,
            max_batch_tokens: 1 << 20,
            max_batch_bytes: u64::MAX,
            target_batch_time: None,
            preferred_batch_sizes: convoy::PreferredBatchSizes::NONE,
            max_queue_delay: Duration::from_millis(delay_ms),
            delay: BatchDelay::Adaptive,
        },
        ..Config::default()
    }
}

/// One worker whose executor blocks on request 0 until `hold` opens, and
/// records every input it runs.
fn blocked_runtime() -> (Runtime<u32, u32>, Hold, Arc<Mutex<Vec<u32>>>) {
    blocked_runtime_with(config(vec![worker(1, 1 << 20)], 1, 0))
}

fn blocked_runtime_with(cfg: Config) -> (Runtime<u32, u32>, Hold, Arc<Mutex<Vec<u32>>>) {
    let (builder, hold, ran) = blocked_builder(cfg);
    (builder.build().unwrap(), hold, ran)
}

/// `blocked_runtime_with`'s builder, before `build`, for tests that add to
/// it (a shortfall hook).
fn blocked_builder(cfg: Config) -> (convoy::Builder<u32, u32>, Hold, Arc<Mutex<Vec<u32>>>) {
    let hold = Hold::default();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let (h2, r2) = (hold.clone(), ran.clone());
    let builder = Runtime::builder().config(cfg).batch_fn(move |xs: &[u32]| {
        if xs[0] == 0 {
            h2.wait();
        }
        r2.lock().unwrap().extend_from_slice(xs);
        xs.to_vec()
    });
    (builder, hold, ran)
}

/// One worker, batches of one, and an intake of one shard whose lanes hold
/// `lane_capacity`: each level's bound is `lane_capacity`.
fn one_lane_config(lane_capacity: usize) -> Config {
    let mut cfg = config(vec![worker(1, 1 << 20)], 1, 0);
    cfg.intake = convoy::IntakeConfig {
        shards: 1,
        lane_capacity,
    };
    cfg
}

/// A caller whose ticket has its result finds it counted: outcomes are
/// counted before any ticket of the batch is completed. Each round sends
/// one full batch of 256 and reads the counters the moment its first
/// ticket is ready, while the worker is still completing the other 255;
/// counting after the deliveries fails here. (Fixed delay: each round's
/// 256 go as one full batch, however the submitting thread is scheduled.)
#[test]
fn a_ready_ticket_is_already_counted() {
    const BATCH: usize = 256;
    let mut cfg = config(vec![worker(BATCH as u32, 1 << 20)], BATCH, 10_000);
    cfg.batching.delay = BatchDelay::Fixed;
    let rt = echo_runtime_with(cfg);
    let h = rt.handle();
    for round in 0..20u64 {
        let mut tickets: Vec<_> = (0..BATCH as u32)
            .map(|i| h.submit(Request::new(i)).unwrap())
            .collect();
        let before = round * BATCH as u64;
        let first = loop {
            if let Some(out) = tickets[0].try_take() {
                break out;
            }
            std::hint::spin_loop();
        };
        let s = rt.stats().total();
        assert_eq!(first, Ok(0));
        assert!(
            s.completed > before,
            "round {round}: ticket 0 had its result but completed was still {} (≤ {before})",
            s.completed
        );
        assert_eq!(s.queue_depth, 0, "round {round}: launched, so no room held");
        for t in tickets.drain(1..) {
            t.wait_bounded().unwrap();
        }
        assert_eq!(rt.stats().total().completed, before + BATCH as u64);
    }
}

/// The same for room: a caller told its request expired finds its room
/// already given back. Each round lets 256 requests expire together behind
/// a busy worker (one deadline instant, so one collector pass ends them
/// all) and reads the depth the moment the first is told; giving
/// the room back after telling all 256 (as convoy once did) fails here.
#[test]
fn an_expired_ticket_finds_its_room_given_back() {
    const N: usize = 256;
    let (rt, hold, _) = blocked_runtime_with(one_lane_config(N));
    let h = rt.handle();
    let running = occupy_the_worker(&rt);
    for round in 0..10 {
        // One instant for all, so they expire in one collector pass.
        let at = Instant::now() + Duration::from_millis(100);
        let mut tickets: Vec<_> = (1..=N as u32)
            .map(|i| h.submit(Request::new(i).deadline_at(at)).unwrap())
            .collect();
        let first = loop {
            if let Some(out) = tickets[0].try_take() {
                break out;
            }
            std::hint::spin_loop();
        };
        let depth = rt.stats().of(Priority::Normal).queue_depth;
        assert_eq!(first, Err(Failure::Expired));
        assert_eq!(depth, 0, "round {round}: told before its room was back");
        for t in tickets.drain(1..) {
            assert_eq!(t.wait_bounded(), Err(Failure::Expired));
        }
    }
    hold.open();
    assert!(running.wait_bounded().is_ok());
    let s = rt.stats().of(Priority::Normal);
    assert_eq!((s.expired, s.lost()), (10 * N as u64, 0));
}

#[test]
fn serves_a_request() {
    let rt = Runtime::builder()
        .config(Config {
            cpu_workers: 2,
            ..Config::default()
        })
        .batch_fn(|xs: &[u32]| xs.iter().map(|x| x + 1).collect())
        .build()
        .unwrap();
    let t = rt.handle().submit(Request::new(41)).unwrap();
    assert_eq!(t.wait_bounded(), Ok(42));
    rt.shutdown();
    let s = rt.stats().total();
    assert_eq!((s.inserted, s.completed), (1, 1));
}

/// Seed 001: with the only worker busy, queued work runs by priority.
#[test]
fn queued_work_runs_in_priority_order() {
    let hold = Hold::default();
    let order = Arc::new(Mutex::new(Vec::new()));
    let (h2, o2) = (hold.clone(), order.clone());
    let rt = Runtime::builder()
        .config(config(vec![worker(1, 1 << 20)], 1, 0))
        .batch_fn(move |xs: &[(u32, Priority)]| {
            if xs[0].0 == 0 {
                h2.wait();
            }
            o2.lock().unwrap().push(xs[0].1);
            xs.iter().map(|x| x.0).collect()
        })
        .build()
        .unwrap();
    let h = rt.handle();
    let blocker = h.submit(Request::new((0, Priority::Normal))).unwrap();
    // Running, not only launched: a staged Normal batch would be
    // displaced by the Critical request below.
    eventually("the blocker runs", || hold.entered() == 1);
    let mut tickets = Vec::new();
    for (i, p) in [
        Priority::Background,
        Priority::Low,
        Priority::Normal,
        Priority::Critical,
        Priority::High,
    ]
    .into_iter()
    .enumerate()
    {
        tickets.push(
            h.submit(Request::new((i as u32 + 1, p)).priority(p))
                .unwrap(),
        );
    }
    eventually("all queued", || rt.stats().total().queue_depth == 5);
    hold.open();
    assert_eq!(blocker.wait_bounded(), Ok(0));
    for t in tickets {
        assert!(t.wait_bounded().is_ok());
    }
    let ran = order.lock().unwrap().clone();
    assert_eq!(
        ran,
        [
            Priority::Normal,
            Priority::Critical,
            Priority::High,
            Priority::Normal,
            Priority::Low,
            Priority::Background
        ]
    );
}

/// Seed 001: batches respect max batch size and a worker's token capacity;
/// a request that fits nowhere now waits (shortfall), one that never fits is
/// refused at submit.
#[test]
fn resource_limits_hold_and_shortfall_is_signalled() {
    let biggest = Arc::new(AtomicUsize::new(0));
    let shortfalls = Arc::new(AtomicUsize::new(0));
    let (b2, s2) = (biggest.clone(), shortfalls.clone());
    let mut cfg = config(vec![worker(8, 100)], 4, 1);
    cfg.batching.max_batch_tokens = 100;
    cfg.batching.max_batch_bytes = 4096;
    let rt = Runtime::builder()
        .config(cfg)
        .batch_fn(move |xs: &[u32]| {
            let tokens: u32 = xs.iter().sum();
            b2.fetch_max(tokens as usize, Ordering::Relaxed);
            assert!(xs.len() <= 4, "batch of {} > max_batch_size", xs.len());
            std::thread::sleep(Duration::from_millis(2));
            xs.to_vec()
        })
        .on_capacity_shortfall(move |_| {
            s2.fetch_add(1, Ordering::Relaxed);
        })
        .build()
        .unwrap();
    let h = rt.handle();
    let never = h.submit(Request::new(101).tokens(101)).unwrap_err();
    assert_eq!(never.kind, SubmitErrorKind::CostNeverFits);
    assert_eq!(never.request.into_input(), 101);
    // Exactly the limit fits: the bound is inclusive, in tokens and in
    // bytes.
    let at_limit = h.submit(Request::new(100).tokens(100)).unwrap();
    assert_eq!(at_limit.wait_bounded(), Ok(100));
    let at_bytes = h.submit(Request::new(7).tokens(7).bytes(4096)).unwrap();
    assert_eq!(at_bytes.wait_bounded(), Ok(7));
    let over_bytes = h.submit(Request::new(8).tokens(8).bytes(4097)).unwrap_err();
    assert_eq!(over_bytes.kind, SubmitErrorKind::CostNeverFits);
    // In an all-or-nothing batch the impossible member refuses the rest
    // for its own reason (retrying them as they are would fail again),
    // not as `QueueFull`.
    let whole = h
        .submit_batch(
            vec![Request::new(1).tokens(1), Request::new(102).tokens(102)],
            InsertPolicy::AllOrNothing,
        )
        .unwrap_err();
    let back: Vec<_> = whole
        .rejected
        .iter()
        .map(|e| (e.kind, *e.request.input()))
        .collect();
    assert_eq!(
        back,
        [
            (SubmitErrorKind::CostNeverFits, 102),
            (SubmitErrorKind::CostNeverFits, 1)
        ]
    );
    let why = whole.rejected[1].to_string();
    assert!(
        why.contains("all-or-nothing") && why.contains("cost_never_fits"),
        "{why}"
    );
    let tickets: Vec<_> = (0..40)
        .map(|i| {
            h.submit(Request::new(30 + i % 40).tokens(30 + i % 40))
                .unwrap()
        })
        .collect();
    for t in tickets {
        assert!(t.wait_bounded().is_ok());
    }
    assert!(
        biggest.load(Ordering::Relaxed) <= 100,
        "a batch held more tokens than the worker"
    );
    assert!(
        shortfalls.load(Ordering::Relaxed) > 0,
        "some request had to wait for capacity"
    );
    assert_eq!(
        rt.stats().capacity_shortfall as usize,
        shortfalls.load(Ordering::Relaxed)
    );
}

/// A runtime whose only worker holds 200 tokens under batches of 100,
/// with batch A (request 0, 100 tokens) held running on `hold` and batch
/// B (request 1, 60 tokens) queued behind it: 40 tokens of room left, in
/// two batches.
struct TwoBatchesHeld {
    rt: Runtime<u32, u32>,
    hold: Hold,
    ran: Arc<Mutex<Vec<u32>>>,
    a: convoy::Ticket<u32>,
    b: convoy::Ticket<u32>,
}

fn two_batches_held() -> TwoBatchesHeld {
    let mut cfg = config(vec![worker(64, 200)], 64, 1);
    cfg.batching.max_batch_tokens = 100;
    // What is held back here must stay held: a Critical request would
    // otherwise displace batch B (`tests/preemption.rs`).
    cfg.preemption.enabled = false;
    let (rt, hold, ran) = blocked_runtime_with(cfg);
    let h = rt.handle();
    let a = h.submit(Request::new(0).tokens(100)).unwrap();
    eventually("batch A runs", || rt.stats().batches == 1);
    let b = h.submit(Request::new(1).tokens(60)).unwrap();
    eventually("batch B queues behind it", || rt.stats().batches == 2);
    TwoBatchesHeld {
        rt,
        hold,
        ran,
        a,
        b,
    }
}

/// A worker that holds two batches is not cut a fragment from the room it
/// has left: the requests wait for its running batch to finish and then go
/// together, and the wait is no shortfall. The worker holds 200 tokens and
/// a batch 100. Batch A (100 tokens) is held running; batch B (60) queues
/// behind it (a worker takes a second batch whatever its room); two
/// requests of 5 tokens then fit the 40 tokens left but would only queue
/// behind B as a third batch. Without the rule they launched within the
/// 1 ms queue delay (checked).
#[test]
fn a_busy_worker_takes_no_fragment_and_the_wait_is_no_shortfall() {
    let t = two_batches_held();
    let (rt, hold, ran, a, b) = (t.rt, t.hold, t.ran, t.a, t.b);
    let h = rt.handle();
    let small: Vec<_> = (2..4)
        .map(|i| h.submit(Request::new(i).tokens(5)).unwrap())
        .collect();
    // Far past the queue delay: still no third batch.
    std::thread::sleep(Duration::from_millis(100));
    let s = rt.stats();
    assert_eq!(s.batches, 2, "a fragment launched behind a full worker");
    assert_eq!(s.capacity_shortfall, 0, "holding back is no shortfall");
    assert_eq!(s.of(Priority::Normal).queue_depth, 2);
    hold.open();
    assert_eq!((a.wait_bounded(), b.wait_bounded()), (Ok(0), Ok(1)));
    for (t, i) in small.into_iter().zip(2..) {
        assert_eq!(t.wait_bounded(), Ok(i));
    }
    let s = rt.stats();
    assert_eq!(s.batches, 3, "the two small requests went together");
    assert_eq!(s.capacity_shortfall, 0);
    assert_eq!(*ran.lock().unwrap(), vec![0, 1, 2, 3]);
}

/// Holding back from a fragment neither starts nor ends a shortfall
/// episode. Same worker as above, A running and B queued (40 tokens
/// left): a request of 50 fits nowhere (episode 1); a Critical one of 5
/// then heads the order and fits the room but is held back; once it is
/// cancelled the 50 heads the order again. Ending the episode on the held
/// pass counted that as a second episode (checked).
#[test]
fn holding_back_neither_starts_nor_ends_a_shortfall_episode() {
    let t = two_batches_held();
    let (rt, hold, ran, a, b) = (t.rt, t.hold, t.ran, t.a, t.b);
    let h = rt.handle();
    let x = h.submit(Request::new(2).tokens(50)).unwrap();
    eventually("a shortfall", || rt.stats().capacity_shortfall == 1);
    let mut c = h
        .submit(Request::new(3).tokens(5).priority(Priority::Critical))
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(c.cancel(), "held back, not launched");
    // An arrival wakes the collector, which meets the cancelled head and
    // then the 50 again.
    let y = h.submit(Request::new(4).tokens(5)).unwrap();
    eventually("the cancel is counted", || {
        rt.stats().of(Priority::Critical).cancelled == 1
    });
    assert_eq!(rt.stats().capacity_shortfall, 1, "one episode");
    hold.open();
    assert_eq!(
        (
            a.wait_bounded(),
            b.wait_bounded(),
            x.wait_bounded(),
            y.wait_bounded()
        ),
        (Ok(0), Ok(1), Ok(2), Ok(4))
    );
    assert_eq!(rt.stats().capacity_shortfall, 1);
    assert!(!ran.lock().unwrap().contains(&3));
}

/// Seed 001 mixed workload: every request of every level is scheduled.
#[test]
fn mixed_workload_is_all_scheduled() {
    let rt = Runtime::builder()
        .config(config(vec![worker(16, 4096), worker(16, 4096)], 8, 1))
        .batch_fn(|xs: &[u64]| xs.iter().map(|x| x * 3).collect())
        .build()
        .unwrap();
    let h = rt.handle();
    let tickets: Vec<_> = (0..2000u64)
        .map(|i| {
            let p = Priority::ALL[(i % 5) as usize];
            (
                i,
                h.submit(Request::new(i).priority(p).tokens((i % 50) as u32 + 1))
                    .unwrap(),
            )
        })
        .collect();
    for (i, t) in tickets {
        assert_eq!(t.wait_bounded(), Ok(i * 3));
    }
    // Counters are bumped just after tickets are completed; shutdown joins
    // the workers, so the counts are final.
    rt.shutdown();
    let s = rt.stats();
    for p in Priority::ALL {
        assert_eq!(s.of(p).completed, 400, "{p}");
    }
}

#[test]
fn deadline_passing_in_queue_expires_without_running() {
    let (rt, hold, ran) = blocked_runtime();
    let h = rt.handle();
    let blocker = occupy_the_worker(&rt);
    let doomed = h
        .submit(Request::new(1).deadline(Duration::from_millis(5)))
        .unwrap();
    // Expiry is reported while the worker is still busy.
    assert_eq!(doomed.wait_bounded(), Err(Failure::Expired));
    hold.open();
    assert_eq!(blocker.wait_bounded(), Ok(0));
    rt.shutdown();
    assert_eq!(*ran.lock().unwrap(), [0], "the expired request never ran");
    assert_eq!(rt.stats().of(Priority::Normal).expired, 1);
}

/// A batch waits for company at most until a member is one queue delay
/// from expiring. With a minute's delay and a batch of 8 that never fills,
/// a request with a 500 ms deadline launches at once (with the one that
/// waited beside it) instead of expiring; a request without a deadline
/// then waits for the delay as before, until shutdown launches it.
/// Without the rule the first two expired (checked).
#[test]
fn a_request_that_expires_within_the_queue_delay_launches_at_once() {
    let mut cfg = config(vec![worker(8, 1 << 20)], 8, 60_000);
    cfg.batching.delay = BatchDelay::Fixed; // only the deadline may launch it
    let rt = echo_runtime_with(cfg);
    let h = rt.handle();
    let company = h.submit(Request::new(1)).unwrap();
    let urgent = h
        .submit(Request::new(2).deadline(Duration::from_millis(500)))
        .unwrap();
    assert_eq!(
        (urgent.wait_bounded(), company.wait_bounded()),
        (Ok(2), Ok(1))
    );
    let patient = h.submit(Request::new(3)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let s = rt.stats();
    assert_eq!((s.batches, s.of(Priority::Normal).queue_depth), (1, 1));
    rt.shutdown();
    assert_eq!(patient.wait_bounded(), Ok(3));
    assert_eq!(rt.stats().of(Priority::Normal).expired, 0);
}

#[test]
fn a_levels_default_deadline_applies_to_requests_without_one_and_caps_longer_ones() {
    let mut cfg = config(vec![worker(1, 1 << 20)], 1, 0);
    cfg.default_deadline[Priority::Normal.index()] = Some(Duration::from_millis(20));
    let (rt, hold, ran) = blocked_runtime_with(cfg.clone());
    let h = rt.handle();
    let blocker = h.submit(Request::new(0).priority(Priority::High)).unwrap();
    eventually("blocker running", || rt.stats().batches == 1);
    let bare = h.submit(Request::new(1)).unwrap();
    let longer = h
        .submit(Request::new(2).deadline(Duration::from_secs(3600)))
        .unwrap();
    let other_level = h.submit(Request::new(3).priority(Priority::Low)).unwrap();
    assert_eq!(
        bare.wait_bounded(),
        Err(Failure::Expired),
        "the default applies"
    );
    assert_eq!(
        longer.wait_bounded(),
        Err(Failure::Expired),
        "and caps a longer one"
    );
    // A reload sets Low's default; it applies to submits after it.
    cfg.default_deadline[Priority::Low.index()] = Some(Duration::from_millis(20));
    rt.reload_config(cfg).unwrap();
    let after_reload = h.submit(Request::new(4).priority(Priority::Low)).unwrap();
    assert_eq!(after_reload.wait_bounded(), Err(Failure::Expired));
    hold.open();
    assert_eq!(blocker.wait_bounded(), Ok(0));
    assert_eq!(
        other_level.wait_bounded(),
        Ok(3),
        "submitted before Low had a default"
    );
    rt.shutdown();
    assert_eq!(*ran.lock().unwrap(), [0, 3]);
    assert_eq!(rt.stats().total().expired, 3);
    // A zero default is refused, naming the key.
    let mut zero = Config::default();
    zero.default_deadline[Priority::High.index()] = Some(Duration::ZERO);
    let e = zero.validate().unwrap_err().to_string();
    assert!(e.contains("deadlines.default_ms.high"), "{e}");
}

#[test]
fn cancel_before_launch_never_runs() {
    let (rt, hold, ran) = blocked_runtime();
    let h = rt.handle();
    let blocker = occupy_the_worker(&rt);
    let mut cancelled = h.submit(Request::new(1)).unwrap();
    let dropped = h.submit(Request::new(2)).unwrap();
    let kept = h.submit(Request::new(3)).unwrap();
    assert!(cancelled.cancel());
    drop(dropped);
    hold.open();
    assert_eq!(blocker.wait_bounded(), Ok(0));
    assert_eq!(kept.wait_bounded(), Ok(3));
    assert_eq!(cancelled.wait_bounded(), Err(Failure::Cancelled));
    rt.shutdown();
    assert_eq!(*ran.lock().unwrap(), [0, 3]);
    let s = rt.stats().total();
    assert_eq!(s.cancelled, 2);
    assert_eq!(s.inserted, s.ended());
}

#[test]
fn executor_failure_fails_the_batch_and_the_worker_lives_on() {
    let rt = Runtime::builder()
        .config(config(vec![worker(4, 1 << 20)], 1, 0))
        .batch_fn(|xs: &[i32]| match xs[0] {
            -1 => panic!("boom"),
            -2 => vec![],
            _ => xs.to_vec(),
        })
        .build()
        .unwrap();
    let h = rt.handle();
    match h.submit(Request::new(-1)).unwrap().wait_bounded() {
        Err(Failure::ExecutorFailed(why)) => assert!(why.message().contains("boom"), "{why}"),
        other => panic!("expected ExecutorFailed, got {other:?}"),
    }
    match h.submit(Request::new(-2)).unwrap().wait_bounded() {
        Err(Failure::ExecutorFailed(why)) => {
            assert!(why.message().contains("0 outputs for 1"), "{why}")
        }
        other => panic!("expected ExecutorFailed, got {other:?}"),
    }
    assert_eq!(h.submit(Request::new(7)).unwrap().wait_bounded(), Ok(7));
    rt.shutdown();
    let s = rt.stats().total();
    assert_eq!((s.failed, s.completed), (2, 1));
}

/// Polls `f` to completion on this thread (the futures here are tickets,
/// woken by the worker; a spin with a yield is enough for a test).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let start = Instant::now();
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "a call never resolved"
        );
        std::thread::yield_now();
    }
}

/// An executor whose failure keeps the error it came from.
struct Fails;

impl Executor<u32, u32> for Fails {
    fn execute(&self, _worker: usize, inputs: &[u32]) -> Result<Vec<u32>, convoy::ExecutorError> {
        if inputs.contains(&0) {
            let io = std::io::Error::new(std::io::ErrorKind::NotFound, "weights file vanished");
            return Err(convoy::ExecutorError::with_source(
                "loading the weights",
                io,
            ));
        }
        Ok(inputs.to_vec())
    }
}

/// `Handle::call` gives the output, a refusal with the request inside, or
/// the failure of an accepted request, in one error type; an executor's
/// error reaches the caller with its source.
#[test]
fn call_gives_the_output_the_refusal_or_the_failure_with_its_source() {
    use std::error::Error as _;
    let rt = Runtime::builder()
        .config(config(vec![worker(4, 1 << 20)], 1, 0))
        .executor(Fails)
        .build()
        .unwrap();
    let h = rt.handle();
    assert_eq!(block_on(h.call(Request::new(5))).unwrap(), 5);
    match block_on(h.call(Request::new(0))) {
        Err(convoy::Error::Failed(Failure::ExecutorFailed(e))) => {
            assert_eq!(e.message(), "loading the weights");
            let source = e.source().expect("the executor's error is kept");
            assert_eq!(source.to_string(), "weights file vanished");
        }
        other => panic!("expected the executor's failure, got {other:?}"),
    }
    let past = Request::new(9).deadline_at(Instant::now() - Duration::from_millis(1));
    match block_on(h.call(past)) {
        Err(convoy::Error::Refused(e)) => {
            assert_eq!(e.kind, SubmitErrorKind::DeadlinePassed);
            assert_eq!(*e.request.input(), 9, "the request is handed back");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    rt.shutdown();
    let err = block_on(h.call(Request::new(1))).unwrap_err();
    assert_eq!(err.refusal(), Some(SubmitErrorKind::ShuttingDown));
    assert!(err.failure().is_none());
    let s = rt.stats().total();
    assert_eq!((s.completed, s.failed, s.inserted), (1, 1, 2));
}

#[test]
fn bad_input_is_a_typed_error() {
    let build = |cfg: Config| {
        Runtime::builder()
            .config(cfg)
            .batch_fn(|x: &[u8]| x.to_vec())
            .build()
    };
    let zero_workers = Config {
        cpu_workers: 0,
        ..Config::default()
    };
    assert!(
        matches!(build(zero_workers), Err(BuildError::Config(e)) if e.to_string().contains("cpu_workers"))
    );
    let mut zero_batch = Config::default();
    zero_batch.batching.max_batch_size = 0;
    assert!(
        matches!(build(zero_batch), Err(BuildError::Config(e)) if e.to_string().contains("max_batch_size"))
    );
    let zero_cap = config(vec![worker(0, 10)], 4, 1);
    assert!(
        matches!(build(zero_cap), Err(BuildError::Config(e)) if e.to_string().contains("capacity.slots"))
    );
    let mut nan = worker(1, 10);
    nan.speed = f64::NAN;
    assert!(
        matches!(build(config(vec![nan], 4, 1)), Err(BuildError::Config(e)) if e.to_string().contains("speed"))
    );
    assert!(matches!(
        Runtime::builder().build().map(|_: Runtime<u8, u8>| ()),
        Err(BuildError::NoExecutor)
    ));
    // 2^40 slots per lane: a typed error naming the key, where the
    // allocation once aborted the process.
    let mut huge = Config::default();
    huge.intake.lane_capacity = 1 << 40;
    assert!(
        matches!(build(huge), Err(BuildError::Config(e)) if e.to_string().contains("intake.lane_capacity"))
    );

    let rt = build(Config {
        cpu_workers: 1,
        ..Config::default()
    })
    .unwrap();
    let h = rt.handle();
    let e = h
        .submit(Request::new(1).deadline(Duration::ZERO))
        .unwrap_err();
    assert_eq!(e.kind, SubmitErrorKind::DeadlinePassed);
    let past = Instant::now() - Duration::from_millis(1);
    let e = h.submit(Request::new(2).deadline_at(past)).unwrap_err();
    assert_eq!(
        (e.kind, e.request.into_input()),
        (SubmitErrorKind::DeadlinePassed, 2)
    );
    for policy in [
        InsertPolicy::Enqueue,
        InsertPolicy::Front,
        InsertPolicy::AllOrNothing,
    ] {
        let e = h.submit_batch(vec![], policy).unwrap_err();
        assert_eq!(e.kind, convoy::BatchSubmitErrorKind::EmptyBatch);
        assert!(e.accepted.is_empty() && e.rejected.is_empty());
        assert!(e.to_string().contains("empty"), "{e}");
    }
}

#[test]
fn full_queue_hands_the_request_back() {
    let (rt, hold, _) = blocked_runtime_with(one_lane_config(2));
    let h = rt.handle();
    let t0 = occupy_the_worker(&rt);
    let t1 = h.submit(Request::new(1)).unwrap();
    let t2 = h.submit(Request::new(2)).unwrap();
    let full = h.submit(Request::new(3)).unwrap_err();
    assert_eq!(
        (full.kind, full.request.into_input()),
        (SubmitErrorKind::QueueFull, 3)
    );
    // The full level reads as such: its two waiting requests fill its bound.
    let s = rt.stats();
    assert_eq!(s.queue_capacity, 2);
    assert_eq!(s.utilization_of(Priority::Normal), 1.0);
    assert_eq!(s.utilization_of(Priority::High), 0.0);
    assert_eq!(s.utilization(), 0.2);
    let all = h
        .submit_batch(
            vec![Request::new(4), Request::new(5)],
            InsertPolicy::AllOrNothing,
        )
        .unwrap_err();
    assert!(all.accepted.is_empty());
    assert_eq!(all.rejected.len(), 2);
    assert_eq!(all.kind, convoy::BatchSubmitErrorKind::Refused);
    hold.open();
    for t in [t0, t1, t2] {
        assert!(t.wait_bounded().is_ok());
    }
}

/// The aging promise through the runtime, with the library's defaults: a
/// request that has waited `max_wait` outranks every later arrival,
/// however urgent. The later arrivals must get in for that, which is why
/// shedding is off by default: with it on, the High and Normal submits
/// below are refused as `Overloaded`, the held queue being late past 0.6 ×
/// `max_wait` (checked).
#[test]
fn a_request_that_waited_max_wait_outranks_later_urgent_work_under_the_defaults() {
    let cfg = Config {
        workers: vec![worker(1, 1 << 20)],
        batching: BatchingConfig {
            max_batch_size: 1,
            ..Config::default().batching
        },
        max_wait: Duration::from_millis(100),
        ..Config::default()
    };
    let (rt, hold, ran) = blocked_runtime_with(cfg);
    let h = rt.handle();
    let t0 = occupy_the_held_worker(&rt, &hold);
    let old = h
        .submit(Request::new(1).priority(Priority::Background))
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    // A Critical arrival among them: by the gradual rule alone the aged
    // Background request (effective level 0 by now) ties with it and the
    // tie goes to Critical; only the bound (rule 1) puts it first.
    let later: Vec<_> = [
        (2, Priority::Critical),
        (3, Priority::High),
        (4, Priority::Normal),
    ]
    .into_iter()
    .map(|(i, p)| h.submit(Request::new(i).priority(p)).unwrap())
    .collect();
    hold.open();
    assert_eq!(t0.wait_bounded(), Ok(0));
    assert_eq!(old.wait_bounded(), Ok(1));
    for (t, want) in later.into_iter().zip(2..) {
        assert_eq!(t.wait_bounded(), Ok(want));
    }
    assert_eq!(
        *ran.lock().unwrap(),
        [0, 1, 2, 3, 4],
        "the aged Background request first, even before Critical, then by level"
    );
}

/// A queue that runs late sheds its least urgent levels first and never
/// Critical (`ordering.shed`, turned on here): the only worker is held, so
/// the waiting request's age only grows, and each level closes at its
/// share of `max_wait` (Background from 0.3, High from 0.6). A shed submit
/// hands its request back as `Overloaded`, singly and in a batch; the
/// levels open again once the queue has drained; nothing accepted is lost.
/// Without the collector's `shed` step, `eventually` times out here
/// (checked).
#[test]
fn a_late_queue_sheds_the_least_urgent_levels_and_hands_requests_back() {
    let mut cfg = config(vec![worker(1, 1 << 20)], 1, 0);
    cfg.max_wait = Duration::from_millis(100);
    cfg.shed = true;
    let (rt, hold, _) = blocked_runtime_with(cfg);
    let h = rt.handle();
    let t0 = occupy_the_held_worker(&rt, &hold);
    let t1 = h.submit(Request::new(1)).unwrap();
    eventually("Background is shed", || h.is_shed(Priority::Background));
    let back = h
        .submit(Request::new(2).priority(Priority::Background))
        .unwrap_err();
    assert_eq!(
        (back.kind, back.request.into_input()),
        (SubmitErrorKind::Overloaded, 2)
    );
    eventually("High is shed", || h.is_shed(Priority::High));
    for level in [Priority::High, Priority::Normal, Priority::Low] {
        let e = h.submit(Request::new(3).priority(level)).unwrap_err();
        assert_eq!(
            (e.kind, e.request.into_input()),
            (SubmitErrorKind::Overloaded, 3),
            "{level:?}"
        );
    }
    assert!(!h.is_shed(Priority::Critical), "Critical is never shed");
    let t4 = h
        .submit(Request::new(4).priority(Priority::Critical))
        .unwrap();
    let mixed = h
        .submit_batch(
            vec![
                Request::new(5).priority(Priority::Background),
                Request::new(6).priority(Priority::Critical),
            ],
            InsertPolicy::Enqueue,
        )
        .unwrap_err();
    assert_eq!(mixed.rejected.len(), 1);
    assert_eq!(mixed.rejected[0].kind, SubmitErrorKind::Overloaded);
    assert_eq!(mixed.rejected[0].request.input(), &5);
    let [t6]: [_; 1] = mixed.accepted.try_into().expect("Critical accepted");
    // All or nothing: the shed member refuses the batch, and the Critical
    // one comes back as `Overloaded` too (worth retrying later), with a
    // reason naming its batchmate's refusal; it counts as no shed.
    let whole = h
        .submit_batch(
            vec![
                Request::new(8).priority(Priority::Critical),
                Request::new(9).priority(Priority::Background),
            ],
            InsertPolicy::AllOrNothing,
        )
        .unwrap_err();
    assert!(whole.accepted.is_empty());
    let back: Vec<_> = whole
        .rejected
        .iter()
        .map(|e| (e.kind, *e.request.input(), e.reason.is_some()))
        .collect();
    assert_eq!(
        back,
        [
            (SubmitErrorKind::Overloaded, 9, false),
            (SubmitErrorKind::Overloaded, 8, true)
        ]
    );
    let s = rt.stats();
    assert_eq!(s.of(Priority::Background).rejected_shed, 3);
    assert_eq!(
        s.rejected(),
        6,
        "three Background, one each of High, Normal, Low"
    );
    assert_eq!(
        (
            s.of(Priority::High).rejected_shed,
            s.of(Priority::Critical).rejected_shed
        ),
        (1, 0)
    );
    let text = rt.metrics_text();
    assert!(
        text.contains("convoy_level_shed{priority=\"high\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("convoy_level_shed{priority=\"critical\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("convoy_requests_rejected_shed_total{priority=\"background\"} 3"),
        "{text}"
    );

    hold.open();
    for (t, want) in [(t0, 0), (t1, 1), (t4, 4), (t6, 6)] {
        assert_eq!(t.wait_bounded(), Ok(want));
    }
    eventually("the drained queue sheds nothing", || {
        Priority::ALL.iter().all(|&p| !h.is_shed(p))
    });
    let t7 = h
        .submit(Request::new(7).priority(Priority::Background))
        .unwrap();
    assert_eq!(t7.wait_bounded(), Ok(7));
    let total = rt.stats().total();
    assert_eq!((total.inserted, total.completed), (5, 5));
}

/// The queue counts as late as soon as what waits would take long to run,
/// before anything has waited long: one measured batch sets the time per
/// token (50 ms for a 1-token request), and a waiting request of 1,000
/// tokens then reads as 50 s of work, past High's threshold (0.6 × a
/// 60 s `max_wait`), while it has waited milliseconds. By age
/// alone nothing would be shed for 18 s, so without the drain estimate
/// `eventually` times out here (checked).
#[test]
fn a_backlog_that_would_take_long_to_run_sheds_before_it_has_waited() {
    let mut cfg = config(vec![worker(1, 1 << 20)], 1, 0);
    cfg.max_wait = Duration::from_secs(60);
    cfg.shed = true;
    let hold = Hold::default();
    let h2 = hold.clone();
    let rt = Runtime::builder()
        .config(cfg)
        .batch_fn(move |xs: &[u32]| {
            match xs[0] {
                0 => h2.wait(),
                5 => std::thread::sleep(Duration::from_millis(50)),
                _ => {}
            }
            xs.to_vec()
        })
        .build()
        .unwrap();
    // Dropped before `rt` if the test fails, so the runtime's drop can
    // join the worker it holds.
    let hold = hold;
    let h = rt.handle();
    assert_eq!(h.submit(Request::new(5)).unwrap().wait_bounded(), Ok(5));
    let t0 = h.submit(Request::new(0)).unwrap();
    eventually("the blocker runs", || rt.stats().batches == 2);
    let big = h.submit(Request::new(1).tokens(1000)).unwrap();
    eventually("High is shed", || h.is_shed(Priority::High));
    assert!(h.is_shed(Priority::Background) && !h.is_shed(Priority::Critical));
    hold.open();
    assert_eq!(t0.wait_bounded(), Ok(0));
    assert_eq!(big.wait_bounded(), Ok(1));
    eventually("the drained queue sheds nothing", || {
        Priority::ALL.iter().all(|&p| !h.is_shed(p))
    });
}

/// Shedding on, `max_wait` 100 ms, the one worker held (input 0) and
/// request 1 waiting behind it, returned once the queue runs late enough
/// that High is shed: with the config, for a reload, and both tickets.
fn a_late_queue_shedding_high() -> (Runtime<u32, u32>, Hold, Config, [Ticket<u32>; 2]) {
    let mut cfg = config(vec![worker(1, 1 << 20)], 1, 0);
    cfg.max_wait = Duration::from_millis(100);
    cfg.shed = true;
    let (rt, hold, _) = blocked_runtime_with(cfg.clone());
    let t0 = occupy_the_worker(&rt);
    let h = rt.handle();
    let t1 = h.submit(Request::new(1)).unwrap();
    eventually("High is shed", || h.is_shed(Priority::High));
    (rt, hold, cfg, [t0, t1])
}

/// `ordering.shed = false`, reloaded while levels are shed, opens them on
/// the collector's next pass although the queue is as late as before: only
/// a full queue refuses then.
#[test]
fn reloading_shedding_off_opens_every_level() {
    let (rt, hold, cfg, [t0, t1]) = a_late_queue_shedding_high();
    let h = rt.handle();
    rt.reload_config(Config { shed: false, ..cfg }).unwrap();
    eventually("nothing is shed", || {
        Priority::ALL.iter().all(|&p| !h.is_shed(p))
    });
    let t2 = h
        .submit(Request::new(2).priority(Priority::Background))
        .unwrap();
    hold.open();
    for (t, want) in [(t0, 0), (t1, 1), (t2, 2)] {
        assert_eq!(t.wait_bounded(), Ok(want));
    }
}

/// `ordering.shed_at` reloaded while the queue runs late: with High
/// never shed (and Normal from half of `max_wait`, as by default), High
/// opens again and a High submit gets in while the less urgent levels stay
/// shed. The worker stays held, so the queue stays late throughout.
#[test]
fn reloaded_thresholds_open_a_level_the_defaults_shed() {
    let (rt, hold, cfg, [t0, t1]) = a_late_queue_shedding_high();
    let h = rt.handle();
    let mut shed_at = convoy::DEFAULT_SHED_AT;
    shed_at[Priority::High.index()] = f64::INFINITY;
    rt.reload_config(Config { shed_at, ..cfg }).unwrap();
    eventually("High opens again", || !h.is_shed(Priority::High));
    for p in [Priority::Normal, Priority::Low, Priority::Background] {
        assert!(h.is_shed(p), "{p} is still shed");
        let refused = h.submit(Request::new(9).priority(p)).unwrap_err();
        assert_eq!(refused.kind, SubmitErrorKind::Overloaded);
        assert_eq!(*refused.request.input(), 9, "handed back");
    }
    let t2 = h.submit(Request::new(2).priority(Priority::High)).unwrap();
    hold.open();
    for (t, want) in [(t0, 0), (t1, 1), (t2, 2)] {
        assert_eq!(t.wait_bounded(), Ok(want));
    }
}

/// A dropped ticket's request is ended as cancelled, and its room given
/// back, while the only worker stays busy (so no batch forms, and the
/// cancelled request's turn never comes): the stalled collector sweeps its
/// waiting set every `SWEEP_EVERY`, and a submit refused for a full queue
/// asks for a sweep at once. A retry then gets the room; which sweep
/// freed it is a matter of latency, which a test does not time. The retry
/// is then dropped with no submit refused after it, so only the periodic
/// sweep can count it: without that sweep the test times out in
/// `eventually` (checked).
#[test]
fn a_cancelled_request_gives_its_room_back_while_every_worker_is_busy() {
    // A long max_wait: aging would otherwise bring the cancelled request to
    // the head within half a second, where batch forming meets it anyway.
    let mut cfg = one_lane_config(2);
    cfg.max_wait = Duration::from_secs(600);
    let (rt, hold, ran) = blocked_runtime_with(cfg);
    let h = rt.handle();
    let running = occupy_the_worker(&rt);
    // The head of the order stays; the one behind it goes, so the
    // collector's batch forming (which stops at the head it cannot place)
    // never meets it.
    let kept = h.submit(Request::new(1)).unwrap();
    let gone = h.submit(Request::new(2)).unwrap();
    drop(gone); // cancels request 2 (not launched)
    let retried = std::cell::RefCell::new(None);
    eventually("a retry gets the cancelled request's room", || {
        match h.submit(Request::new(3)) {
            Ok(t) => {
                *retried.borrow_mut() = Some(t);
                true
            }
            Err(e) => {
                assert_eq!(e.kind, SubmitErrorKind::QueueFull);
                false
            }
        }
    });
    assert!(!hold.is_open(), "the worker was busy all along");
    let s = rt.stats();
    assert_eq!(s.of(Priority::Normal).cancelled, 1);
    assert_eq!(s.of(Priority::Normal).queue_depth, 2);
    // The retry goes too, with no submit refused after it: the periodic
    // sweep counts it and frees its room.
    let refused = s.of(Priority::Normal).rejected_full;
    drop(retried.into_inner().expect("accepted above"));
    eventually("the second cancel is counted", || {
        rt.stats().of(Priority::Normal).cancelled == 2
    });
    let s = rt.stats().of(Priority::Normal);
    assert_eq!((s.queue_depth, s.rejected_full), (1, refused));
    hold.open();
    assert!(running.wait_bounded().is_ok() && kept.wait_bounded().is_ok());
    rt.shutdown();
    let ran = ran.lock().unwrap().clone();
    assert!(ran.contains(&1), "the kept request ran: {ran:?}");
    assert!(
        !ran.contains(&2) && !ran.contains(&3),
        "a cancelled request never runs: {ran:?}"
    );
}

/// The same while the worker is idle and a batch is filling under a queue
/// delay far longer than the test: nothing is due, so the collector is not
/// stalled, and only the periodic sweep can end the dropped request. Once
/// it did, and it ran on a stalled collector alone, this timed out
/// (checked).
#[test]
fn a_cancelled_request_gives_its_room_back_while_its_batch_fills() {
    let mut cfg = config(vec![worker(8, 1 << 20)], 8, 600_000);
    cfg.batching.delay = BatchDelay::Fixed; // the batch fills under the delay
    let rt = echo_runtime_with(cfg);
    let h = rt.handle();
    let kept = h.submit(Request::new(1)).unwrap();
    let mut gone = h.submit(Request::new(2)).unwrap();
    assert_eq!(rt.stats().of(Priority::Normal).queue_depth, 2);
    assert!(gone.cancel(), "not launched: the batch is still filling");
    eventually("the cancel is counted", || {
        rt.stats().of(Priority::Normal).cancelled == 1
    });
    let s = rt.stats().of(Priority::Normal);
    assert_eq!((s.queue_depth, s.completed), (1, 0), "the kept one waits");
    assert_eq!(gone.wait_bounded(), Err(Failure::Cancelled));
    // Shutdown launches what waits: the kept request still runs.
    rt.shutdown();
    assert_eq!(kept.wait_bounded(), Ok(1));
    let s = rt.stats().of(Priority::Normal);
    assert_eq!(
        (s.inserted, s.completed, s.cancelled, s.lost()),
        (2, 1, 1, 0)
    );
}

/// A submitter owns a shard of the intake. With two shards of one slot per
/// level and the worker held: the submitter's first request takes its own
/// lane and the second spills into the shared shard; a plain handle is then
/// refused (its home is owned or full) with the request handed back; the
/// second shard can be owned too, and then no third. Dropping the
/// submitters gives the room back to everyone, everything accepted runs
/// once, and after shutdown a submitter is refused like a handle.
#[test]
fn a_submitter_owns_a_shard_until_dropped() {
    let mut cfg = one_lane_config(1);
    cfg.intake.shards = 2;
    let (rt, hold, ran) = blocked_runtime_with(cfg);
    let h = rt.handle();
    let running = occupy_the_worker(&rt);
    let mut sub = h.submitter().expect("a free shard");
    let accepted = vec![
        sub.submit(Request::new(1)).unwrap(),
        sub.submit(Request::new(2)).unwrap(),
    ];
    let full = sub.submit(Request::new(3)).unwrap_err();
    assert_eq!(
        (full.kind, *full.request.input()),
        (SubmitErrorKind::QueueFull, 3)
    );
    let refused = h.submit(Request::new(4)).unwrap_err();
    assert_eq!(
        (refused.kind, *refused.request.input()),
        (SubmitErrorKind::QueueFull, 4)
    );
    let second = h.submitter().expect("the other shard is free to own");
    assert!(h.submitter().is_none(), "both shards owned");
    // Each says which shard it owns, and they differ.
    let (a, b) = (format!("{sub:?}"), format!("{second:?}"));
    assert!(a.starts_with("Submitter { shard: ") && b.starts_with("Submitter { shard: "));
    assert_ne!(a, b);
    drop(second);
    drop(sub);
    let s = rt.stats().of(Priority::Normal);
    assert_eq!((s.inserted, s.rejected_full, s.queue_depth), (3, 2, 2));
    hold.open();
    assert!(running.wait_bounded().is_ok());
    for t in accepted {
        assert!(t.wait_bounded().is_ok());
    }
    let mut later = h.submitter().expect("given back on drop");
    // A submitter is for a dedicated thread: it moves there.
    let later = std::thread::spawn(move || {
        assert_eq!(later.submit(Request::new(5)).unwrap().wait_bounded(), Ok(5));
        later
    });
    let mut later = later.join().unwrap();
    assert_eq!(h.submit(Request::new(6)).unwrap().wait_bounded(), Ok(6));
    rt.shutdown();
    let after = later.submit(Request::new(7)).unwrap_err();
    assert_eq!(
        (after.kind, *after.request.input()),
        (SubmitErrorKind::ShuttingDown, 7)
    );
    let mut ran = ran.lock().unwrap().clone();
    ran.sort_unstable();
    assert_eq!(ran, [0, 1, 2, 5, 6], "every accepted request ran once");
}

/// `shutdown` returns when every thread is joined, whoever calls it: a
/// second caller, arriving while the first is still waiting for a running
/// batch, waits too. (It once found the threads already taken and returned
/// at once, with the batch still running.) The sleeps only order the calls;
/// what is checked is that the running request has its outcome when the
/// second call returns.
#[test]
fn a_second_shutdown_returns_only_once_every_thread_is_joined() {
    let (rt, hold, _ran) = blocked_runtime_with(one_lane_config(4));
    let h = rt.handle();
    let mut running = occupy_the_worker(&rt);
    std::thread::scope(|s| {
        s.spawn(|| rt.shutdown());
        eventually("the first shutdown closed intake", || {
            h.submit(Request::new(1)).is_err()
        });
        // Let the first call reach its joins.
        std::thread::sleep(Duration::from_millis(50));
        let opener = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            hold.open();
        });
        rt.shutdown();
        assert_eq!(
            running.try_take(),
            Some(Ok(0)),
            "the running batch finished before shutdown returned"
        );
        opener.join().unwrap();
    });
}

/// A batch function that shuts its own runtime down: the call asks for the
/// stop and returns (the worker cannot join itself, and the collector
/// waits for the very batch that asked), the batch delivers, and a caller
/// outside then joins. It once deadlocked: the worker joined the collector,
/// which waited for the worker's batch.
#[test]
fn a_shutdown_from_inside_a_batch_returns_and_an_outside_one_joins() {
    type Rt = Runtime<u32, u32>;
    let slot: Arc<std::sync::OnceLock<Arc<Rt>>> = Arc::default();
    let inner = slot.clone();
    let rt: Arc<Rt> = Arc::new(
        Runtime::builder()
            .config(config(vec![worker(4, 1 << 20)], 4, 0))
            .batch_fn(move |xs: &[u32]| {
                if xs.contains(&7) {
                    if let Some(rt) = inner.get() {
                        rt.shutdown();
                    }
                }
                xs.to_vec()
            })
            .build()
            .unwrap(),
    );
    assert!(slot.set(rt.clone()).is_ok());
    let t = rt.handle().submit(Request::new(7)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(t.wait_bounded()).unwrap());
    let got = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the batch that asked for the stop delivers (no deadlock)");
    assert_eq!(got, Ok(7));
    let refused = rt.handle().submit(Request::new(8)).unwrap_err();
    assert_eq!(refused.kind, SubmitErrorKind::ShuttingDown);
    rt.shutdown(); // joins; the runtime and the batch function hold each other
}

/// A partly accepted `Enqueue` batch whose levels fill at different
/// points: the accepted tickets are exactly the requests that got in, in
/// the order given, and each refused request comes back with its input.
#[test]
fn a_partly_accepted_batch_pairs_each_ticket_with_its_request() {
    let (rt, hold, ran) = blocked_runtime_with(one_lane_config(2));
    let h = rt.handle();
    let running = occupy_the_worker(&rt);
    let (n, hi) = (Priority::Normal, Priority::High);
    let levels = [n, hi, n, n, hi, hi, n, hi];
    let e = h
        .submit_batch(
            levels
                .iter()
                .zip(1u32..)
                .map(|(&p, i)| Request::new(i).priority(p))
                .collect(),
            InsertPolicy::Enqueue,
        )
        .unwrap_err();
    assert_eq!(e.kind, convoy::BatchSubmitErrorKind::Refused);
    let back: Vec<u32> = e
        .rejected
        .into_iter()
        .map(|r| r.request.into_input())
        .collect();
    assert_eq!(back, [4, 6, 7, 8], "each level's third and later, in order");
    hold.open();
    assert_eq!(running.wait_bounded(), Ok(0));
    let got: Vec<_> = e.accepted.into_iter().map(|t| t.wait_bounded()).collect();
    assert_eq!(got, [Ok(1), Ok(2), Ok(3), Ok(5)]);
    let mut ran = ran.lock().unwrap().clone();
    ran.sort_unstable();
    assert_eq!(ran, [0, 1, 2, 3, 5], "only what was accepted ran");
}

#[test]
fn clear_waiting_cancels_what_waits_frees_its_room_and_spares_what_runs() {
    let (rt, hold, ran) = blocked_runtime_with(one_lane_config(4));
    let h = rt.handle();
    assert_eq!(rt.clear_waiting(), 0, "nothing waits yet");
    let running = occupy_the_held_worker(&rt, &hold);
    // Four levels, a front insert and a batch insert: all of it waits.
    let mut waiting = vec![
        h.submit(Request::new(1).priority(Priority::Critical))
            .unwrap(),
        h.submit_with(Request::new(2), InsertPolicy::Front).unwrap(),
        h.submit(Request::new(3).priority(Priority::Background))
            .unwrap(),
    ];
    let batch = h
        .submit_batch(
            (4..8)
                .map(|i| Request::new(i).priority(Priority::Low))
                .collect(),
            InsertPolicy::AllOrNothing,
        )
        .unwrap();
    waiting.extend(batch);
    let full = h
        .submit(Request::new(8).priority(Priority::Low))
        .unwrap_err();
    assert_eq!(full.kind, SubmitErrorKind::QueueFull);

    assert_eq!(
        h.clear_waiting(),
        7,
        "every waiting request, from a handle too"
    );
    for t in waiting {
        assert_eq!(t.wait_bounded(), Err(Failure::Cancelled));
    }
    let s = rt.stats();
    assert_eq!(s.total().cancelled, 7);
    assert_eq!(s.total().queue_depth, 0, "nothing waits; one runs");
    // The cleared room is free again, and the runtime goes on serving.
    let again: Vec<_> = (10..14)
        .map(|i| h.submit(Request::new(i).priority(Priority::Low)).unwrap())
        .collect();
    hold.open();
    assert_eq!(
        running.wait_bounded(),
        Ok(0),
        "a launched request is not cleared"
    );
    for (t, want) in again.into_iter().zip(10..) {
        assert_eq!(t.wait_bounded(), Ok(want));
    }
    let ran = ran.lock().unwrap().clone();
    assert!(
        ran.iter().all(|&x| x == 0 || x >= 10),
        "cleared ones never ran: {ran:?}"
    );
    rt.shutdown();
    let s = rt.stats().total();
    assert_eq!(s.inserted, s.ended(), "nothing lost: {s}");
    // After the collector has gone, a clear answers at once.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(h.clear_waiting());
    });
    let late = rx.recv_timeout(Duration::from_secs(60));
    assert_eq!(late, Ok(0), "a clear after shutdown does not wait");
}

#[test]
fn clear_waiting_from_the_shortfall_callback_does_not_wait_on_itself() {
    // The callback runs on the collector thread: a clear there must ask and
    // return, or the collector would wait for itself forever.
    let handle: Arc<std::sync::OnceLock<convoy::Handle<u32, u32>>> = Arc::default();
    let asked = Arc::new(AtomicUsize::new(0));
    let (h2, a2) = (handle.clone(), asked.clone());
    let (builder, hold, _) = blocked_builder(config(vec![worker(1, 100)], 1, 0));
    let rt = builder
        .on_capacity_shortfall(move |_| {
            if let Some(h) = h2.get() {
                assert_eq!(h.clear_waiting(), 0, "asked, not waited for");
                a2.fetch_add(1, Ordering::Relaxed);
            }
        })
        .build()
        .unwrap();
    let h = rt.handle();
    let _ = handle.set(h.clone());
    let blocker = h.submit(Request::new(0).tokens(60)).unwrap();
    eventually("blocker running", || rt.stats().batches == 1);
    // 60 of 100 tokens are held: this one fits no worker now.
    let waiting = h.submit(Request::new(1).tokens(60)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(waiting.wait_bounded());
    });
    let Ok(outcome) = rx.recv_timeout(Duration::from_secs(60)) else {
        // A collector stuck waiting on itself would also hang the drop's
        // join: leak the runtime so the test fails instead of hanging.
        std::mem::forget(rt);
        panic!("clear_waiting from the collector's callback deadlocked it");
    };
    assert_eq!(outcome, Err(Failure::Cancelled), "cleared on the next pass");
    assert!(asked.load(Ordering::Relaxed) >= 1);
    hold.open();
    assert_eq!(blocker.wait_bounded(), Ok(0));
    rt.shutdown();
}

#[test]
fn a_panicking_shortfall_callback_does_not_stop_the_collector() {
    let (builder, hold, _) = blocked_builder(config(vec![worker(1, 100)], 1, 0));
    let rt = builder
        .on_capacity_shortfall(|_| panic!("a buggy hook"))
        .build()
        .unwrap();
    let h = rt.handle();
    let blocker = h.submit(Request::new(0).tokens(60)).unwrap();
    eventually("blocker running", || rt.stats().batches == 1);
    let short = h.submit(Request::new(1).tokens(60)).unwrap();
    eventually("shortfall signalled", || rt.stats().capacity_shortfall == 1);
    hold.open();
    assert_eq!(blocker.wait_bounded(), Ok(0));
    assert_eq!(
        short.wait_bounded(),
        Ok(1),
        "the collector lived on and ran it"
    );
    assert_eq!(h.submit(Request::new(2)).unwrap().wait_bounded(), Ok(2));
    rt.shutdown();
}

#[test]
fn shutdown_drains_and_refuses_new_work() {
    let rt = Runtime::builder()
        .config(config(vec![worker(4, 1 << 20)], 4, 5))
        .batch_fn(|xs: &[u32]| {
            std::thread::sleep(Duration::from_millis(1));
            xs.to_vec()
        })
        .build()
        .unwrap();
    let h = rt.handle();
    let tickets: Vec<_> = (0..200)
        .map(|i| h.submit(Request::new(i)).unwrap())
        .collect();
    rt.shutdown();
    rt.shutdown(); // idempotent
    for (i, t) in tickets.into_iter().enumerate() {
        assert_eq!(
            t.wait_bounded(),
            Ok(i as u32),
            "drain finishes every accepted request"
        );
    }
    let e = h.submit(Request::new(9)).unwrap_err();
    assert_eq!(
        (e.kind, e.request.into_input()),
        (SubmitErrorKind::ShuttingDown, 9)
    );
    // A batch after shutdown is refused whole, under every policy, each
    // request handed back: none is accepted with a ticket nobody answers.
    for policy in [
        InsertPolicy::Enqueue,
        InsertPolicy::Front,
        InsertPolicy::AllOrNothing,
    ] {
        let e = h
            .submit_batch(vec![Request::new(10), Request::new(11)], policy)
            .unwrap_err();
        assert!(e.accepted.is_empty(), "{policy:?}: accepted after shutdown");
        let back: Vec<_> = e
            .rejected
            .into_iter()
            .map(|r| (r.kind, r.request.into_input()))
            .collect();
        assert_eq!(
            back,
            [
                (SubmitErrorKind::ShuttingDown, 10),
                (SubmitErrorKind::ShuttingDown, 11)
            ],
            "{policy:?}"
        );
    }
    assert_eq!(rt.stats().total().inserted, 200);
}

#[test]
fn shutdown_now_and_drop_fail_what_waits() {
    for via_drop in [false, true] {
        let (rt, hold, _) = blocked_runtime();
        let h = rt.handle();
        let running = occupy_the_worker(&rt);
        let waiting: Vec<_> = (1..50)
            .map(|i| h.submit(Request::new(i)).unwrap())
            .collect();
        let opener = {
            let hold = hold.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                hold.open();
            })
        };
        if via_drop {
            drop(rt);
        } else {
            rt.shutdown_now();
        }
        opener.join().unwrap();
        assert_eq!(
            running.wait_bounded(),
            Ok(0),
            "a running batch still delivers"
        );
        for t in waiting {
            assert_eq!(t.wait_bounded(), Err(Failure::ShutDown));
        }
        let e = h.submit(Request::new(99)).unwrap_err();
        assert_eq!(
            e.kind,
            SubmitErrorKind::ShuttingDown,
            "a handle outliving the runtime refuses"
        );
    }
}

/// Waits every pending ticket, checks each output is its own request's,
/// and counts the outcomes.
fn settle(pending: &mut Vec<(u64, convoy::Ticket<u64>)>, seen: &mut Seen) {
    for (id, t) in pending.drain(..) {
        let out = t.wait_bounded();
        if let Ok(v) = &out {
            assert_eq!(*v, id, "a request got another's result");
        }
        seen.outcome(&out);
    }
}

/// 8 producers × 50k requests of mixed priorities, random cancels, drops and
/// deadlines, ~1% of batches failing, and a shutdown in the middle of the
/// load. Every accepted request ends in exactly one outcome, the client's
/// view matches the server's counts, and shutdown returns only once the
/// ledger is back to zero (the collector exits only with nothing in flight).
#[test]
fn nothing_lost_under_load_cancels_deadlines_failures_and_shutdown() {
    const PRODUCERS: u64 = 8;
    const PER: u64 = 50_000;
    let mut cfg = config(vec![worker(64, 1 << 20), worker(64, 1 << 20)], 32, 1);
    cfg.intake = convoy::IntakeConfig {
        shards: 4,
        lane_capacity: 1024,
    };
    cfg.deadline_action[Priority::Low.index()] = convoy::DeadlineAction::Delay;
    cfg.shutdown_timeout = Duration::from_millis(200);
    /// Fails a batch whose first request is flagged (~1% of batches).
    struct FailFlagged;
    impl convoy::Executor<(u64, bool), u64> for FailFlagged {
        fn execute(
            &self,
            _worker: usize,
            xs: &[(u64, bool)],
        ) -> Result<Vec<u64>, convoy::ExecutorError> {
            if xs[0].1 {
                return Err("injected failure".into());
            }
            Ok(xs.iter().map(|x| x.0).collect())
        }
    }
    let rt = Runtime::builder()
        .config(cfg)
        .executor(FailFlagged)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let h = rt.handle();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::for_thread(p);
                let mut seen = Seen::default();
                let mut pending = Vec::new();
                for i in 0..PER {
                    let r = rng.next();
                    let prio = Priority::ALL[(r % 5) as usize];
                    // Independent bits of `r` for each choice.
                    let fail = (r >> 16) % 100 == 0;
                    let mut req = Request::new((p << 32 | i, fail)).priority(prio);
                    if (r >> 24) % 7 == 0 {
                        req = req.deadline(Duration::from_micros(200 + (r >> 32) % 5000));
                    }
                    match h.submit(req) {
                        Ok(mut t) => {
                            seen.accepted += 1;
                            match (r >> 40) % 50 {
                                0 => {
                                    t.cancel();
                                    pending.push((p << 32 | i, t));
                                }
                                1 => {
                                    drop(t);
                                    seen.dropped += 1;
                                }
                                _ => pending.push((p << 32 | i, t)),
                            }
                        }
                        Err(e) => {
                            assert_eq!(e.request.input().0, p << 32 | i, "the request comes back");
                            seen.refused += 1;
                            if e.kind == SubmitErrorKind::ShuttingDown {
                                break;
                            }
                            std::thread::yield_now();
                        }
                    }
                    if pending.len() >= 256 || stop.load(Ordering::Relaxed) {
                        settle(&mut pending, &mut seen);
                    }
                }
                settle(&mut pending, &mut seen);
                seen
            })
        })
        .collect();
    // Shut down in the middle of the load.
    eventually("load under way", || {
        rt.stats().total().inserted >= PRODUCERS * PER / 3
    });
    stop.store(true, Ordering::Relaxed);
    rt.shutdown();
    let mut total = Seen::default();
    for p in producers {
        total.add(p.join().unwrap());
    }
    let s = rt.stats().total();
    assert_eq!(
        s.inserted, total.accepted,
        "server and client agree on accepted"
    );
    assert_eq!(
        s.inserted,
        s.ended(),
        "every accepted request ended exactly once: {s:?}"
    );
    assert_eq!(s.queue_depth, 0);
    assert_eq!(
        total.ended() + total.dropped,
        total.accepted,
        "every kept ticket got one outcome"
    );
    // Dropped tickets end server-side as cancelled (before launch) or as
    // completed/failed/expired (the drop came too late to matter).
    assert!(s.completed <= total.ok + total.dropped);
    assert!(s.completed >= total.ok);
    assert!(s.failed >= total.failed && s.expired >= total.expired);
    assert!(
        total.ok > 0 && total.failed > 0 && total.expired > 0 && total.cancelled > 0,
        "{total:?}"
    );
    assert!(total.refused > 0, "shutdown refused someone mid-load");
}

fn priced(name: &str, slots: u32, speed: f64, cost: f64) -> WorkerSpec {
    WorkerSpec {
        name: name.into(),
        capacity: Capacity {
            slots,
            tokens: 1 << 20,
            bytes: u64::MAX,
        },
        speed,
        cost_per_hour: cost,
    }
}

/// Every policy serves a mixed burst completely, and its placement reasons
/// show it applied its own rule.
#[test]
fn placement_policies_serve_everything_by_their_rule() {
    use convoy::{PlacementPolicy::*, PlacementReason as R};
    for policy in [LeastLoaded, Priority, SloAware, CostOptimized, Adaptive] {
        let mut cfg = config(
            vec![priced("cheap", 16, 1.0, 1.0), priced("fast", 16, 4.0, 10.0)],
            8,
            1,
        );
        cfg.placement = policy;
        cfg.urgent_slack = Duration::from_millis(500);
        let rt = Runtime::builder()
            .config(cfg)
            .batch_fn(|xs: &[u32]| {
                std::thread::sleep(Duration::from_micros(200));
                xs.to_vec()
            })
            .build()
            .unwrap();
        let h = rt.handle();
        let tickets: Vec<_> = (0..600u32)
            .map(|i| {
                let p = convoy::Priority::ALL[(i % 5) as usize];
                let mut r = Request::new(i).priority(p);
                if i % 3 == 0 {
                    r = r.deadline(Duration::from_secs(5));
                }
                h.submit(r).unwrap()
            })
            .collect();
        for (i, t) in tickets.into_iter().enumerate() {
            assert_eq!(t.wait_bounded(), Ok(i as u32), "{policy:?}");
        }
        rt.shutdown();
        let s = rt.stats();
        let placed: u64 = s.placements.iter().sum();
        assert_eq!(placed, s.batches, "{policy:?}: every batch has a reason");
        match policy {
            LeastLoaded => assert_eq!(s.placed(R::LeastLoaded), s.batches),
            Priority => assert!(s.placed(R::FastestForUrgent) > 0 && s.placed(R::LeastLoaded) > 0),
            SloAware => assert_eq!(s.placed(R::SloUrgent) + s.placed(R::LeastLoaded), s.batches),
            CostOptimized => assert_eq!(
                s.placed(R::Cheapest)
                    + s.placed(R::CheapestMeetingDeadline)
                    + s.placed(R::FastestForUrgent),
                s.batches
            ),
            Adaptive => assert!(
                s.adaptive_switches >= 1,
                "the burst moved Adaptive off its start mode"
            ),
            other => panic!("{other:?}: a policy this test does not cover yet"),
        }
    }
}

/// A batch limit far beyond any real batch, at build and by reload, is a
/// limit and not an allocation: once the collector asked for 224 TB for a
/// limit of 10^12 and the process aborted.
#[test]
fn a_huge_batch_limit_serves_as_usual() {
    let rt = echo_runtime_with(config(vec![worker(8, 1 << 20)], usize::MAX, 0));
    let h = rt.handle();
    let served = |h: &convoy::Handle<u32, u32>| {
        let ts: Vec<_> = (0..40)
            .map(|i| h.submit(Request::new(i)).unwrap())
            .collect();
        for (i, t) in ts.into_iter().enumerate() {
            assert_eq!(t.wait_bounded(), Ok(i as u32));
        }
    };
    served(&h);
    let mut huge = rt.config();
    huge.batching.max_batch_size = 1_000_000_000_000;
    rt.reload_config(huge).unwrap();
    served(&h);
    rt.shutdown();
    assert_eq!(rt.stats().total().lost(), 0);
}

/// `max_cost` is what submit checks against: the largest Up worker,
/// clipped by the batch limits, following health, capacity and reloads,
/// and `None` with no worker up. A cost at the answer is accepted, one
/// token over it refused.
#[test]
fn max_cost_follows_the_fleet_and_the_limits() {
    let rt = echo_runtime_with(config(vec![worker(8, 100), worker(8, 300)], 4, 0));
    let h = rt.handle();
    let tokens = |h: &convoy::Handle<u32, u32>| h.max_cost().map(|c| c.tokens);
    let at_the_edge = |h: &convoy::Handle<u32, u32>, max: u32| {
        assert_eq!(
            h.submit(Request::new(1).tokens(max))
                .unwrap()
                .wait_bounded(),
            Ok(1)
        );
        let e = h.submit(Request::new(2).tokens(max + 1)).unwrap_err();
        assert_eq!(e.kind, SubmitErrorKind::CostNeverFits);
    };
    assert_eq!(tokens(&h), Some(300));
    assert_eq!(h.max_cost().unwrap().bytes, u64::MAX);
    at_the_edge(&h, 300);
    // The larger worker drains: only Up workers count.
    rt.set_health(1, convoy::Health::Draining).unwrap();
    assert_eq!(tokens(&h), Some(100));
    at_the_edge(&h, 100);
    rt.set_capacity(
        0,
        Capacity {
            slots: 8,
            tokens: 40,
            bytes: 1000,
        },
    )
    .unwrap();
    assert_eq!(h.max_cost().map(|c| (c.tokens, c.bytes)), Some((40, 1000)));
    // The batch limits clip it too.
    let mut tighter = rt.config();
    tighter.batching.max_batch_tokens = 25;
    rt.reload_config(tighter).unwrap();
    assert_eq!(tokens(&h), Some(25));
    at_the_edge(&h, 25);
    rt.set_health(0, convoy::Health::Down).unwrap();
    assert_eq!(h.max_cost(), None, "no worker up");
    let e = h.submit(Request::new(3)).unwrap_err();
    assert_eq!(e.kind, SubmitErrorKind::CostNeverFits);
    rt.shutdown();
}

/// A drained worker takes no new batch; capacity changes are checked.
#[test]
fn fleet_changes_apply_at_run_time() {
    struct Record(Arc<Mutex<Vec<usize>>>);
    impl convoy::Executor<u32, u32> for Record {
        fn execute(&self, worker: usize, xs: &[u32]) -> Result<Vec<u32>, convoy::ExecutorError> {
            self.0.lock().unwrap().push(worker);
            Ok(xs.to_vec())
        }
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rt = Runtime::builder()
        .config(config(vec![worker(8, 1 << 20), worker(8, 1 << 20)], 4, 0))
        .executor(Record(seen.clone()))
        .build()
        .unwrap();
    rt.set_health(1, convoy::Health::Draining).unwrap();
    let h = rt.handle();
    let ts: Vec<_> = (0..200)
        .map(|i| h.submit(Request::new(i)).unwrap())
        .collect();
    ts.into_iter()
        .for_each(|t| assert!(t.wait_bounded().is_ok()));
    assert!(
        seen.lock().unwrap().iter().all(|&w| w == 0),
        "draining worker 1 got work"
    );
    rt.set_health(1, convoy::Health::Up).unwrap();
    rt.set_health(0, convoy::Health::Down).unwrap();
    seen.lock().unwrap().clear();
    let ts: Vec<_> = (0..200)
        .map(|i| h.submit(Request::new(i)).unwrap())
        .collect();
    ts.into_iter()
        .for_each(|t| assert!(t.wait_bounded().is_ok()));
    assert!(seen.lock().unwrap().iter().all(|&w| w == 1));
    assert!(rt.set_health(7, convoy::Health::Up).is_err());
    assert!(rt
        .set_capacity(
            0,
            Capacity {
                slots: 0,
                tokens: 1,
                bytes: 0
            }
        )
        .is_err());
    rt.set_capacity(
        1,
        Capacity {
            slots: 1,
            tokens: 5,
            bytes: u64::MAX,
        },
    )
    .unwrap();
    // A cost that no longer fits any Up worker is refused at submit.
    let e = h.submit(Request::new(1).tokens(6)).unwrap_err();
    assert_eq!(e.kind, SubmitErrorKind::CostNeverFits);
    assert_eq!(
        h.submit(Request::new(2).tokens(5)).unwrap().wait_bounded(),
        Ok(2)
    );

    // Add a worker, take the others out: the new one serves everything.
    let added = rt.add_worker(worker(8, 1 << 20)).unwrap();
    assert_eq!(added, 2);
    rt.remove_worker(1).unwrap();
    assert!(
        rt.set_health(1, convoy::Health::Up).is_err(),
        "a removed worker stays down"
    );
    seen.lock().unwrap().clear();
    let ts: Vec<_> = (0..100)
        .map(|i| h.submit(Request::new(i)).unwrap())
        .collect();
    ts.into_iter()
        .for_each(|t| assert!(t.wait_bounded().is_ok()));
    assert!(
        seen.lock().unwrap().iter().all(|&w| w == 2),
        "{:?}",
        seen.lock().unwrap()
    );
    let mut bad = worker(1, 1);
    bad.speed = 0.0;
    assert!(rt.add_worker(bad).is_err());
    assert!(rt.remove_worker(9).is_err());
    rt.shutdown();
    assert!(
        rt.add_worker(worker(1, 1)).is_err(),
        "no new worker after shutdown"
    );
}

/// A fleet that scales up and down keeps every finished request in the SLA
/// report: each removed worker's counts are folded into the board when its
/// thread exits (its recorder is no longer listed; `sla.rs` tests that),
/// and the report after 30 add/serve/remove cycles holds all 30.
#[test]
fn removed_workers_leave_their_sla_counts_behind() {
    let rt = echo_runtime_with(config(vec![worker(8, 1 << 20)], 8, 0));
    rt.set_health(0, convoy::Health::Draining).unwrap();
    let h = rt.handle();
    for i in 0..30 {
        let w = rt.add_worker(worker(8, 1 << 20)).unwrap();
        let t = h.submit(Request::new(i).priority(Priority::High)).unwrap();
        assert_eq!(t.wait_bounded(), Ok(i));
        rt.remove_worker(w).unwrap();
    }
    // By now most removed workers' threads have exited and their recorders
    // are folded; the last may still be listed. Either way each counts once.
    rt.set_health(0, convoy::Health::Up).unwrap();
    let report = rt.sla_report();
    assert_eq!(report.of(Priority::High).end_to_end.count, 30);
    assert_eq!(report.of(Priority::High).violations, 0);
    rt.shutdown();
    assert_eq!(rt.sla_report().of(Priority::High).end_to_end.count, 30);
}

/// The SLA report counts what ran, per priority, and counts every request
/// over its timeout as a violation.
#[test]
fn sla_report_tracks_latency_and_violations() {
    let mut cfg = config(vec![worker(8, 1 << 20)], 4, 0);
    cfg.slo[Priority::Normal.index()].timeout = Duration::from_millis(1);
    cfg.slo[Priority::High.index()].timeout = Duration::from_secs(60);
    let rt = Runtime::builder()
        .config(cfg)
        .batch_fn(|xs: &[u32]| {
            std::thread::sleep(Duration::from_millis(3));
            xs.to_vec()
        })
        .build()
        .unwrap();
    let h = rt.handle();
    let mut ts = Vec::new();
    for i in 0..40u32 {
        let p = if i % 2 == 0 {
            Priority::Normal
        } else {
            Priority::High
        };
        ts.push(h.submit(Request::new(i).priority(p)).unwrap());
    }
    ts.into_iter()
        .for_each(|t| assert!(t.wait_bounded().is_ok()));
    rt.shutdown(); // recorders publish their last copy on exit
    let r = rt.sla_report();
    let normal = r.of(Priority::Normal);
    let high = r.of(Priority::High);
    assert_eq!(normal.end_to_end.count, 20);
    assert_eq!(high.end_to_end.count, 20);
    assert_eq!(normal.queue_wait.count, 20);
    assert!(normal.execution.p50 >= Duration::from_millis(3));
    assert!(normal.end_to_end.p50 >= normal.execution.p50);
    assert_eq!(normal.violations, 20, "3 ms > 1 ms timeout, every time");
    assert_eq!(normal.compliance_total, Some(0.0));
    assert_eq!(high.violations, 0);
    assert_eq!(high.compliance_total, Some(1.0));
    assert_eq!(r.of(Priority::Low).end_to_end.count, 0);
    assert!(!normal.recent_violations.is_empty());
}

/// A request received before submit (a server's first byte) counts its
/// end-to-end latency from then, for completed and expired requests and
/// for deduplicated twins alike, while its queue wait still runs from
/// submit; and a receipt after submit counts as submit.
#[test]
fn end_to_end_latency_runs_from_receipt() {
    let mut cfg = config(vec![worker(8, 1 << 20)], 4, 0);
    cfg.slo[Priority::High.index()].timeout = Duration::from_millis(150);
    cfg.slo[Priority::Normal.index()].timeout = Duration::from_millis(100);
    let rt = Runtime::builder()
        .config(cfg)
        .batch_fn(|xs: &[u32]| xs.to_vec())
        .deduplicate()
        .build()
        .unwrap();
    let h = rt.handle();
    let early = Instant::now() - Duration::from_millis(200);
    let done: Vec<_> = (0..4u32)
        .map(|i| {
            h.submit(
                Request::new(i)
                    .priority(Priority::High)
                    .dedup_key(i % 2)
                    .received_at(early),
            )
            .unwrap()
        })
        .collect();
    done.into_iter()
        .for_each(|t| assert!(t.wait_bounded().is_ok()));
    let late = h
        .submit(
            Request::new(9)
                .priority(Priority::Low)
                .received_at(Instant::now() + Duration::from_secs(5)),
        )
        .unwrap();
    assert_eq!(late.wait_bounded(), Ok(9));
    let expired = h
        .submit(
            Request::new(10)
                .priority(Priority::Normal)
                .received_at(early)
                .deadline(Duration::from_millis(1)),
        )
        .unwrap();
    // Expires unless it launched within the millisecond: either way it
    // ends, and its latency runs from receipt.
    let _ = expired.wait_bounded();
    rt.shutdown();
    let r = rt.sla_report();
    let high = r.of(Priority::High);
    assert_eq!(high.end_to_end.count, 4, "twins count too");
    assert!(
        high.end_to_end.p50 >= Duration::from_millis(200),
        "{:?} does not count the 200 ms before submit",
        high.end_to_end
    );
    assert!(high.queue_wait.max < Duration::from_millis(150));
    assert_eq!(high.violations, 4, "200 ms > the 150 ms timeout");
    let low = r.of(Priority::Low);
    assert!(low.end_to_end.max < Duration::from_secs(1), "{low:?}");
    // Expired or completed, it missed its 100 ms by its 200 ms before submit.
    let normal = r.of(Priority::Normal);
    assert_eq!(normal.violations, 1);
    assert!(normal.recent_violations[0].latency >= Duration::from_millis(200));
}

/// A memory budget per batch: the batch's total bytes never exceed it, and
/// a request larger than the budget is refused at submit.
#[test]
fn batch_bytes_stay_within_the_budget() {
    let biggest = Arc::new(AtomicUsize::new(0));
    let b2 = biggest.clone();
    let mut cfg = config(vec![worker(64, 1 << 20)], 16, 2);
    cfg.batching.max_batch_bytes = 250;
    let rt = Runtime::builder()
        .config(cfg)
        .batch_fn(move |xs: &[u32]| {
            b2.fetch_max(xs.len(), Ordering::Relaxed);
            xs.to_vec()
        })
        .build()
        .unwrap();
    let h = rt.handle();
    let e = h.submit(Request::new(0).bytes(251)).unwrap_err();
    assert_eq!(e.kind, SubmitErrorKind::CostNeverFits);
    let ts: Vec<_> = (0..60)
        .map(|i| h.submit(Request::new(i).bytes(100)).unwrap())
        .collect();
    ts.into_iter()
        .for_each(|t| assert!(t.wait_bounded().is_ok()));
    rt.shutdown();
    assert_eq!(
        biggest.load(Ordering::Relaxed),
        2,
        "100-byte requests under a 250-byte budget: 2 per batch"
    );
}

/// Adaptive batch sizing: batches that take longer than the target halve
/// the limit. Work here costs ≥ 1 ms per request (a sleep, a lower bound),
/// so any batch over 8 requests exceeds an 8 ms target: with the target the
/// batches shrink, without it they stay full. (The limit shapes batches
/// formed after a release: it matters when the workers are saturated.)
#[test]
fn adaptive_batch_sizing_shrinks_slow_batches() {
    let run = |target: Option<Duration>| {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let s2 = sizes.clone();
        // One batch in flight at a time, so every batch after the first is
        // formed after a release has fed the AIMD rule.
        let mut cfg = config(vec![worker(64, 1 << 20)], 64, 1);
        cfg.batching.target_batch_time = target;
        let rt = Runtime::builder()
            .config(cfg)
            .batch_fn(move |xs: &[u32]| {
                s2.lock().unwrap().push(xs.len());
                std::thread::sleep(Duration::from_millis(xs.len() as u64));
                xs.to_vec()
            })
            .build()
            .unwrap();
        let h = rt.handle();
        let ts: Vec<_> = (0..300)
            .map(|i| h.submit(Request::new(i)).unwrap())
            .collect();
        ts.into_iter()
            .for_each(|t| assert!(t.wait_bounded().is_ok()));
        rt.shutdown();
        let mut sizes = sizes.lock().unwrap().clone();
        sizes.sort_unstable();
        (sizes[sizes.len() / 2], rt.stats())
    };
    let (median, stats) = run(Some(Duration::from_millis(8)));
    assert!(median <= 16, "median batch {median} with an 8 ms target");
    assert!(stats.batch_limit_decreases >= 3, "{stats:?}");
    // (The final limit is not checked: once the queue drains, small quick
    // batches raise it again, as additive increase should.)
    assert!(stats.batch_limit >= 1, "the limit gauge is published");
    let (median, stats) = run(None);
    assert_eq!(
        median, 64,
        "without a target the limit stays at max_batch_size"
    );
    assert_eq!(stats.batch_limit_decreases, 0);
}

/// Preferred batch sizes: with a long queue delay, every batch is a
/// preferred size (or full), except the tail that the delay finally forces.
#[test]
fn batches_are_cut_to_preferred_sizes() {
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let s2 = sizes.clone();
    let mut cfg = config(vec![worker(64, 1 << 20)], 16, 200);
    cfg.batching.preferred_batch_sizes = convoy::PreferredBatchSizes::new(&[4, 8]).unwrap();
    // Triton's rule, which preferred sizes belong to: an idle worker under
    // the adaptive delay takes what waits once arrivals stop.
    cfg.batching.delay = BatchDelay::Fixed;
    let rt = Runtime::builder()
        .config(cfg)
        .batch_fn(move |xs: &[u32]| {
            s2.lock().unwrap().push(xs.len());
            xs.to_vec()
        })
        .build()
        .unwrap();
    let h = rt.handle();
    let ts: Vec<_> = (0..101)
        .map(|i| h.submit(Request::new(i)).unwrap())
        .collect();
    ts.into_iter()
        .for_each(|t| assert!(t.wait_bounded().is_ok()));
    rt.shutdown();
    let sizes = sizes.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>(), 101);
    let odd: Vec<_> = sizes.iter().filter(|s| ![4, 8, 16].contains(*s)).collect();
    assert!(
        odd.len() <= 1 && odd.iter().all(|&&s| s < 4),
        "sizes {sizes:?}"
    );
}

/// Every duration set to "forever" (`Duration::MAX`): the arithmetic on
/// them saturates, where it once wrapped (the queue delay and the urgent
/// slack, cast to u64 nanoseconds) or would have panicked (the drain
/// deadline, `Instant + Duration`). Full batches still launch, a request
/// with a forever deadline completes, and the drain finishes the rest.
#[test]
fn forever_durations_neither_wrap_nor_panic() {
    let forever = Duration::MAX;
    let mut cfg = config(vec![worker(2, 1 << 20)], 4, 0);
    cfg.batching.max_queue_delay = forever;
    cfg.batching.target_batch_time = Some(forever);
    cfg.max_wait = forever;
    cfg.urgent_slack = forever;
    cfg.shutdown_timeout = forever;
    for t in &mut cfg.slo {
        t.p95 = forever;
        t.p99 = forever;
        t.timeout = forever;
    }
    let rt = Runtime::builder()
        .config(cfg)
        .batch_fn(|xs: &[u32]| xs.iter().map(|x| x * 2).collect())
        .build()
        .unwrap();
    let h = rt.handle();
    // Two full batches of 4: launched although the queue delay never ends.
    let full: Vec<_> = (0..8)
        .map(|i| h.submit(Request::new(i).deadline(forever)).unwrap())
        .collect();
    for (i, t) in full.into_iter().enumerate() {
        assert_eq!(t.wait_bounded(), Ok(2 * i as u32));
    }
    // A partial batch waits for the delay, so only the drain launches it.
    let partial: Vec<_> = (0..3).map(|i| h.submit(Request::new(i)).unwrap()).collect();
    rt.shutdown();
    for (i, t) in partial.into_iter().enumerate() {
        assert_eq!(t.wait_bounded(), Ok(2 * i as u32));
    }
    let s = rt.stats();
    assert_eq!(s.total().completed, 11);
    assert_eq!(s.total().inserted, 11);
}

/// Requests whose tokens fill `max_batch_tokens`, or that fill the only
/// worker's slots, launch at once: waiting out the queue delay (an hour
/// here) could not make their batch larger. Before, only `max_batch_size`
/// waiting requests counted as full.
#[test]
fn a_batch_full_by_tokens_or_worker_slots_does_not_wait_out_the_delay() {
    let hour = Duration::from_secs(3600);
    // The minute is a backstop that turns a regression into a failure
    // instead of an hour-long hang; the batches launch at once.
    let backstop = Duration::from_secs(60);
    for (slots, max_tokens) in [(64, 100), (2, 1 << 20)] {
        let mut cfg = config(vec![worker(slots, 1 << 20)], 32, 0);
        cfg.batching.max_batch_tokens = max_tokens;
        cfg.batching.max_queue_delay = hour;
        let rt = echo_runtime_with(cfg);
        let h = rt.handle();
        let mut tickets: Vec<_> = (0..2)
            .map(|i| h.submit(Request::new(i).tokens(50)).unwrap())
            .collect();
        for (i, t) in tickets.iter_mut().enumerate() {
            assert_eq!(
                t.wait_timeout(backstop),
                Some(Ok(i as u32)),
                "{slots} slots, max_batch_tokens {max_tokens}"
            );
        }
        assert_eq!(rt.stats().batches, 1, "one full batch of both");
        rt.shutdown();
    }
}
