//! The worker's pipelined path (`Executor::lane`), on a fake device that
//! the test controls: batches stay "on the device" until the test lets
//! them finish, so the test can see two batches in flight on one worker,
//! outputs reach the right tickets in launch order, a failed launch or a
//! failed finish fails only its own batch, and submit-time checks refuse
//! bad input with the executor's reason.

mod common;

use common::{eventually, worker, Hold, WaitBounded};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use convoy::{
    BatchingConfig, Config, Executor, Failure, InsertPolicy, Lane, Request, Runtime,
    SubmitErrorKind,
};

/// What the fake device did, shared with the test.
#[derive(Default)]
struct Seen {
    launched: AtomicUsize,
    finished: AtomicUsize,
    /// Most batches launched and not yet finished at one time.
    max_in_flight: AtomicUsize,
    lanes: AtomicUsize,
}

/// Doubles its inputs. Inputs of `-1` make the launch fail, `-2` the
/// finish; a batch becomes ready only once `release` is open.
struct FakeDevice {
    seen: Arc<Seen>,
    release: Hold,
    depth: usize,
}

struct FakeLane {
    seen: Arc<Seen>,
    release: Hold,
    depth: usize,
    queue: VecDeque<Result<Vec<i64>, String>>,
}

impl Executor<i64, i64> for FakeDevice {
    fn execute(&self, _worker: usize, _inputs: &[i64]) -> Result<Vec<i64>, convoy::ExecutorError> {
        Err("the plain path must not be used when a lane is given".into())
    }

    fn check(&self, input: &i64) -> Result<(), String> {
        if *input > 1000 {
            return Err(format!("{input} is over 1000"));
        }
        Ok(())
    }

    fn lane(&self, _worker: usize) -> Option<Box<dyn Lane<i64, i64>>> {
        self.seen.lanes.fetch_add(1, Ordering::SeqCst);
        Some(Box::new(FakeLane {
            seen: self.seen.clone(),
            release: self.release.clone(),
            depth: self.depth,
            queue: VecDeque::new(),
        }))
    }
}

impl Lane<i64, i64> for FakeLane {
    fn depth(&self) -> usize {
        self.depth
    }

    fn launch(&mut self, inputs: &[i64]) -> Result<(), convoy::ExecutorError> {
        assert!(
            self.queue.len() < self.depth,
            "worker launched past the lane's depth"
        );
        if inputs.contains(&-1) {
            return Err("launch refused".into());
        }
        let out = if inputs.contains(&-2) {
            Err("device fault".into())
        } else {
            Ok(inputs.iter().map(|x| x * 2).collect())
        };
        self.queue.push_back(out);
        let launched = self.seen.launched.fetch_add(1, Ordering::SeqCst) + 1;
        let in_flight = launched - self.seen.finished.load(Ordering::SeqCst);
        self.seen
            .max_in_flight
            .fetch_max(in_flight, Ordering::SeqCst);
        Ok(())
    }

    fn is_ready(&mut self) -> bool {
        self.release.is_open()
    }

    fn finish(&mut self) -> Result<Vec<i64>, convoy::ExecutorError> {
        self.release.wait();
        let out = self.queue.pop_front().expect("finish matches a launch");
        self.seen.finished.fetch_add(1, Ordering::SeqCst);
        out.map_err(Into::into)
    }
}

/// One worker that holds two batches of `batch` requests.
fn runtime(depth: usize, batch: usize) -> (Runtime<i64, i64>, Arc<Seen>, Hold) {
    runtime_with(depth, batch, Duration::from_millis(1), None)
}

/// As [`runtime`], with the queue delay `delay` and `batching.target_batch_ms`
/// set to `target`.
fn runtime_with(
    depth: usize,
    batch: usize,
    delay: Duration,
    target: Option<Duration>,
) -> (Runtime<i64, i64>, Arc<Seen>, Hold) {
    let seen = Arc::new(Seen::default());
    let release = Hold::default();
    let config = Config {
        workers: vec![worker((2 * batch) as u32, 1 << 20)],
        batching: BatchingConfig {
            max_batch_size: batch,
            max_queue_delay: delay,
            target_batch_time: target,
            ..Config::default().batching
        },
        ..Config::default()
    };
    let rt = Runtime::builder()
        .config(config)
        .executor(FakeDevice {
            seen: seen.clone(),
            release: release.clone(),
            depth,
        })
        .build()
        .expect("valid runtime");
    (rt, seen, release)
}

#[test]
fn two_batches_in_flight_on_one_worker_and_outputs_in_order() {
    let (rt, seen, release) = runtime(2, 4);
    let h = rt.handle();
    let first: Vec<_> = (0..4).map(|i| h.submit(Request::new(i)).unwrap()).collect();
    eventually("first batch launched", || {
        seen.launched.load(Ordering::SeqCst) == 1
    });
    let second: Vec<_> = (10..14)
        .map(|i| h.submit(Request::new(i)).unwrap())
        .collect();
    // The second batch is launched while the first is still on the device.
    eventually("second batch launched behind the first", || {
        seen.launched.load(Ordering::SeqCst) == 2
    });
    assert_eq!(seen.finished.load(Ordering::SeqCst), 0);
    assert_eq!(seen.max_in_flight.load(Ordering::SeqCst), 2);
    release.open();
    for (i, t) in (0..4).zip(first) {
        assert_eq!(t.wait_bounded(), Ok(i * 2));
    }
    for (i, t) in (10..14).zip(second) {
        assert_eq!(t.wait_bounded(), Ok(i * 2));
    }
    assert_eq!(seen.lanes.load(Ordering::SeqCst), 1, "one lane per worker");
    rt.shutdown();
    let total = rt.stats().total();
    assert_eq!(total.completed, 8);
    assert_eq!(total.inserted, total.ended());
}

/// A batch launched behind another on the lane is timed from that one's
/// release, not from its own launch: its wait on the device is the first
/// batch's time, not its own. Both batches sit on the device for 300 ms,
/// past the 100 ms `target_batch_ms`, and finish together. The first (4
/// requests) took 300 ms and halves the batch limit to 2; the second (2
/// requests) took next to nothing after the first's release and raises it
/// to 3. Timed from its launch it too read 300 ms and halved the limit to 1
/// (checked); the same time fed shedding's drain estimate and placement.
#[test]
fn a_batch_behind_another_on_the_lane_is_not_timed_for_its_wait() {
    let target = Duration::from_millis(100);
    // Each batch is submitted in one call, and a queue delay of 50 ms lets
    // the collector see the whole of it before launching: batches of
    // exactly 4 and 2 on a loaded machine too.
    let (rt, seen, release) = runtime_with(2, 4, Duration::from_millis(50), Some(target));
    let h = rt.handle();
    let batch = |ids: std::ops::Range<i64>| {
        h.submit_batch(ids.map(Request::new).collect(), InsertPolicy::AllOrNothing)
            .map_err(|e| e.to_string())
            .unwrap()
    };
    let first = batch(0..4);
    eventually("first batch launched", || {
        seen.launched.load(Ordering::SeqCst) == 1
    });
    let second = batch(10..12);
    eventually("second batch launched behind the first", || {
        seen.launched.load(Ordering::SeqCst) == 2
    });
    std::thread::sleep(3 * target);
    release.open();
    for t in first.into_iter().chain(second) {
        assert!(t.wait_bounded().is_ok());
    }
    // A ticket is answered before its batch's release reaches the
    // collector: wait until both releases are absorbed, in either reading
    // (after the first the limit is 2 with one decrease).
    eventually("both batches' times absorbed", || {
        let s = rt.stats();
        s.batch_limit == 3 || s.batch_limit_decreases == 2
    });
    let s = rt.stats();
    assert_eq!(
        (s.batch_limit_decreases, s.batch_limit),
        (1, 3),
        "only the first batch ran past the target"
    );
}

/// A launch that fails while a batch is on the device does not restart
/// that batch's time: the failed batch never reached the device. Batch A
/// (4 requests) sits on the device for 300 ms; then B is refused at
/// launch; then A finishes. A took 300 ms, past the 100 ms target, and
/// halves the limit to 2 (B, which took nothing, left it at 4). Timed from
/// B's failure, A read next to nothing and the limit stayed at 4 (checked).
#[test]
fn a_failed_launch_does_not_restart_the_time_of_the_batch_on_the_device() {
    let target = Duration::from_millis(100);
    let (rt, seen, release) = runtime_with(2, 4, Duration::from_millis(50), Some(target));
    let h = rt.handle();
    let first = h
        .submit_batch(
            (0..4).map(Request::new).collect(),
            InsertPolicy::AllOrNothing,
        )
        .map_err(|e| e.to_string())
        .unwrap();
    eventually("first batch launched", || {
        seen.launched.load(Ordering::SeqCst) == 1
    });
    std::thread::sleep(3 * target);
    let refused = h.submit(Request::new(-1)).unwrap();
    assert!(matches!(
        refused.wait_bounded(),
        Err(Failure::ExecutorFailed(_))
    ));
    release.open();
    for t in first {
        assert!(t.wait_bounded().is_ok());
    }
    eventually("the first batch's time absorbed", || {
        rt.stats().batch_limit_decreases == 1
    });
    assert_eq!(rt.stats().batch_limit, 2);
}

#[test]
fn depth_one_never_launches_ahead() {
    let (rt, seen, release) = runtime(1, 2);
    let h = rt.handle();
    let tickets: Vec<_> = (0..6).map(|i| h.submit(Request::new(i)).unwrap()).collect();
    eventually("a batch launched", || {
        seen.launched.load(Ordering::SeqCst) >= 1
    });
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        seen.launched.load(Ordering::SeqCst),
        1,
        "depth 1 waits for the device"
    );
    release.open();
    for (i, t) in (0..6).zip(tickets) {
        assert_eq!(t.wait_bounded(), Ok(i * 2));
    }
    assert_eq!(seen.max_in_flight.load(Ordering::SeqCst), 1);
}

#[test]
fn a_failed_launch_or_finish_fails_only_its_batch() {
    let (rt, seen, release) = runtime(2, 1);
    release.open();
    let h = rt.handle();
    let bad_launch = h.submit(Request::new(-1)).unwrap();
    assert!(
        matches!(bad_launch.wait_bounded(), Err(Failure::ExecutorFailed(e)) if e.message().contains("launch refused"))
    );
    let bad_finish = h.submit(Request::new(-2)).unwrap();
    assert!(
        matches!(bad_finish.wait_bounded(), Err(Failure::ExecutorFailed(e)) if e.message().contains("device fault"))
    );
    let good = h.submit(Request::new(21)).unwrap();
    assert_eq!(good.wait_bounded(), Ok(42));
    rt.shutdown();
    let total = rt.stats().total();
    assert_eq!((total.failed, total.completed), (2, 1));
    assert_eq!(
        seen.launched.load(Ordering::SeqCst),
        2,
        "the refused launch is not counted"
    );
}

#[test]
fn submit_refuses_what_the_executor_cannot_run_and_hands_it_back() {
    let (rt, _seen, release) = runtime(2, 2);
    release.open();
    let e = rt.handle().submit(Request::new(5000)).unwrap_err();
    assert_eq!(e.kind, SubmitErrorKind::Invalid);
    assert_eq!(*e.request.input(), 5000);
    assert_eq!(e.reason.as_deref(), Some("5000 is over 1000"));
    assert!(e.to_string().contains("over 1000"), "{e}");
    assert_eq!(rt.stats().total().inserted, 0);
}

#[test]
fn shutdown_finishes_batches_in_flight() {
    let (rt, seen, release) = runtime(2, 3);
    let h = rt.handle();
    let tickets: Vec<_> = (0..6).map(|i| h.submit(Request::new(i)).unwrap()).collect();
    eventually("both batches in flight", || {
        seen.launched.load(Ordering::SeqCst) == 2
    });
    let opener = {
        let release = release.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            release.open();
        })
    };
    rt.shutdown(); // waits for the worker, which waits for the device
    opener.join().unwrap();
    for (i, mut t) in (0..6).zip(tickets) {
        assert_eq!(t.try_take(), Some(Ok(i * 2)));
    }
    assert_eq!(seen.finished.load(Ordering::SeqCst), 2);
}
