//! Preemption of staged work: urgent work placed nowhere takes the place
//! of a batch a worker holds but has not started. Every assertion is on
//! the order of execution and on counts, never on timing.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::{eventually, fresh_seed, worker, Rng, WaitBounded};
use convoy::{
    BatchDelay, BatchingConfig, Config, Executor, ExecutorError, Failure, Interruptible, Priority,
    Request, Runtime, Stats, Stop, Ticket,
};

/// An executor's turnstile: each batch records its inputs as it enters,
/// then waits for a permit. A test lets batches through one at a time or
/// all at once; dropping the turnstile's owner lets everything through,
/// so a failing test still ends.
#[derive(Default)]
struct Turnstile {
    state: Mutex<(usize, Vec<u32>)>,
    cv: Condvar,
}

impl Turnstile {
    fn pass(&self, inputs: &[u32]) {
        let mut s = self.state.lock().unwrap();
        s.1.extend_from_slice(inputs);
        self.cv.notify_all();
        while s.0 == 0 {
            s = self.cv.wait(s).unwrap();
        }
        s.0 -= 1;
    }

    fn allow(&self, n: usize) {
        let mut s = self.state.lock().unwrap();
        s.0 = s.0.saturating_add(n);
        self.cv.notify_all();
    }

    /// The inputs of every batch that entered, in the order they did.
    fn entered(&self) -> Vec<u32> {
        self.state.lock().unwrap().1.clone()
    }
}

/// Lets every batch through when the test ends, however it ends.
struct OpenOnDrop(Arc<Turnstile>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.allow(usize::MAX);
    }
}

/// A runtime under `cfg` whose batches pass `gate` (an identity model),
/// and the guard that lets them all through when dropped: bind it last,
/// so it drops before the runtime joins its workers.
fn gated(cfg: Config) -> (Runtime<u32, u32>, Arc<Turnstile>, OpenOnDrop) {
    let gate = Arc::new(Turnstile::default());
    let g = gate.clone();
    let rt = Runtime::builder()
        .config(cfg)
        .batch_fn(move |xs: &[u32]| {
            g.pass(xs);
            xs.to_vec()
        })
        .build()
        .unwrap();
    (rt, gate.clone(), OpenOnDrop(gate))
}

/// One worker holding two requests, batches of one, no queue delay: one
/// batch runs, one is staged behind it, and the next waits.
fn one_worker(preemption: convoy::Preemption) -> Config {
    Config {
        workers: vec![worker(2, 1 << 20)],
        batching: BatchingConfig {
            max_batch_size: 1,
            max_batch_tokens: 1 << 20,
            max_batch_bytes: u64::MAX,
            target_batch_time: None,
            preferred_batch_sizes: convoy::PreferredBatchSizes::NONE,
            max_queue_delay: Duration::ZERO,
            delay: BatchDelay::Fixed,
        },
        preemption,
        ..Config::default()
    }
}

struct Held {
    /// First, so it drops first: a failing test's runtime then joins
    /// workers that are let through.
    _open: OpenOnDrop,
    rt: Runtime<u32, u32>,
    gate: Arc<Turnstile>,
    tickets: Vec<Ticket<u32>>,
}

/// Request 0 at `running` runs (held at the turnstile) and request 1 at
/// `staged` is staged behind it.
fn held(cfg: Config, running: Priority, staged: Priority) -> Held {
    let (rt, gate, open) = gated(cfg);
    let h = rt.handle();
    let a = h.submit(Request::new(0).priority(running)).unwrap();
    eventually("request 0 runs", || gate.entered() == [0]);
    let b = h.submit(Request::new(1).priority(staged)).unwrap();
    eventually("request 1 is staged", || rt.stats().batches == 2);
    Held {
        _open: open,
        rt,
        gate,
        tickets: vec![a, b],
    }
}

impl Held {
    fn submit(&mut self, input: u32, p: Priority) {
        let t = self
            .rt
            .handle()
            .submit(Request::new(input).priority(p))
            .unwrap();
        self.tickets.push(t);
    }

    /// Lets everything run and returns the order it ran in, and the counts.
    fn finish(self) -> (Vec<u32>, Stats) {
        self.gate.allow(usize::MAX);
        for (i, t) in self.tickets.into_iter().enumerate() {
            assert!(t.wait_bounded().is_ok(), "request #{i} failed");
        }
        self.rt.shutdown();
        (self.gate.entered(), self.rt.stats())
    }
}

/// Waits until `n` batches have launched, or checks over 50 ms that no
/// more than `n` do (a batch that must not launch).
fn settle(rt: &Runtime<u32, u32>, n: u64, expect_launch: bool) {
    if expect_launch {
        eventually("the urgent batch launches", || rt.stats().batches >= n);
    } else {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(rt.stats().batches, n);
}

/// The case: a Critical request arriving behind a staged Low
/// batch starts before it with preemption on, and after it with it off.
#[test]
fn a_critical_request_starts_before_a_staged_low_batch_only_with_preemption() {
    let mut on = held(
        one_worker(convoy::Preemption::default()),
        Priority::Low,
        Priority::Low,
    );
    on.submit(2, Priority::Critical);
    settle(&on.rt, 3, true);
    let (order, stats) = on.finish();
    assert_eq!(order, [0, 2, 1], "the Critical request goes first");
    assert_eq!(stats.of(Priority::Low).displaced, 1);
    assert_eq!(stats.of(Priority::Low).completed, 2);
    assert_eq!(stats.total().lost(), 0);

    let off = convoy::Preemption {
        enabled: false,
        ..Default::default()
    };
    let mut off = held(one_worker(off), Priority::Low, Priority::Low);
    off.submit(2, Priority::Critical);
    settle(&off.rt, 2, false);
    let (order, stats) = off.finish();
    assert_eq!(order, [0, 1, 2], "nothing is displaced with preemption off");
    assert_eq!(stats.total().displaced, 0);
}

/// The gap: with the default of two levels, Normal does not displace Low
/// but High does; with a gap of one, Normal does.
#[test]
fn the_priority_gap_decides_who_may_displace() {
    let mut close = held(
        one_worker(convoy::Preemption::default()),
        Priority::Low,
        Priority::Low,
    );
    close.submit(2, Priority::Normal);
    settle(&close.rt, 2, false);
    assert_eq!(close.finish().0, [0, 1, 2], "one level is not enough");

    let mut far = held(
        one_worker(convoy::Preemption::default()),
        Priority::Low,
        Priority::Low,
    );
    far.submit(2, Priority::High);
    settle(&far.rt, 3, true);
    assert_eq!(far.finish().0, [0, 2, 1], "two levels are");

    let gap_one = convoy::Preemption {
        min_gap: 1,
        ..Default::default()
    };
    let mut near = held(one_worker(gap_one), Priority::Low, Priority::Low);
    near.submit(2, Priority::Normal);
    settle(&near.rt, 3, true);
    assert_eq!(near.finish().0, [0, 2, 1], "a gap of one lets Normal in");
}

/// A batch holding any request more urgent than the gap allows is never
/// displaced, whatever its other requests are.
#[test]
fn a_batch_is_judged_by_its_most_urgent_request() {
    let mut cfg = one_worker(convoy::Preemption::default());
    cfg.batching.max_batch_size = 2;
    cfg.workers = vec![worker(4, 1 << 20)];
    let (rt, gate, _open) = gated(cfg);
    let h = rt.handle();
    let mut tickets = vec![h.submit(Request::new(0).priority(Priority::Low)).unwrap()];
    eventually("request 0 runs", || gate.entered() == [0]);
    // One batch of a High and a Normal request (a High batch carries the
    // level below it, never work a gap below), staged; the worker then
    // holds 3 of its 4 slots and takes no third batch. Critical may
    // displace Normal, but not High, so the batch stays.
    let pair = vec![
        Request::new(1).priority(Priority::High),
        Request::new(2).priority(Priority::Normal),
    ];
    tickets.extend(h.submit_batch(pair, convoy::InsertPolicy::Enqueue).unwrap());
    eventually("the pair is staged", || rt.stats().batches == 2);
    tickets.push(
        h.submit(Request::new(3).priority(Priority::Critical))
            .unwrap(),
    );
    settle(&rt, 2, false);
    gate.allow(usize::MAX);
    for t in tickets {
        assert!(t.wait_bounded().is_ok());
    }
    rt.shutdown();
    assert_eq!(gate.entered(), [0, 1, 2, 3]);
    assert_eq!(rt.stats().total().displaced, 0);
}

/// The cap: a request displaced `max_displacements` times is not
/// displaced again. Request 1 is displaced once by request 2; once it is
/// staged again, request 3 (Critical) waits behind it under a cap of 1,
/// and displaces it again under a cap of 2.
#[test]
fn a_request_is_displaced_at_most_max_displacements_times() {
    for (cap, expect) in [(1u8, [0, 2, 1, 3]), (2, [0, 2, 3, 1])] {
        let rule = convoy::Preemption {
            max_displacements: cap,
            ..Default::default()
        };
        let mut t = held(one_worker(rule), Priority::Low, Priority::Low);
        t.submit(2, Priority::Critical);
        settle(&t.rt, 3, true);
        // Request 0 finishes; 2 starts (held) and 1 is staged again.
        t.gate.allow(1);
        eventually("request 2 runs", || t.gate.entered() == [0, 2]);
        eventually("request 1 is staged again", || t.rt.stats().batches == 4);
        t.submit(3, Priority::Critical);
        settle(&t.rt, if cap == 1 { 4 } else { 5 }, cap > 1);
        let (order, stats) = t.finish();
        assert_eq!(order, expect, "cap {cap}");
        assert_eq!(stats.of(Priority::Low).displaced, u64::from(cap));
    }
}

/// Preemption is reloadable: switched off at run time, a Critical request
/// waits behind the staged batch.
#[test]
fn switching_preemption_off_at_run_time_holds() {
    let mut t = held(
        one_worker(convoy::Preemption::default()),
        Priority::Low,
        Priority::Low,
    );
    let mut cfg = one_worker(convoy::Preemption::default());
    cfg.preemption.enabled = false;
    t.rt.reload_config(cfg).unwrap();
    t.submit(2, Priority::Critical);
    settle(&t.rt, 2, false);
    assert_eq!(t.finish().0, [0, 1, 2]);
}

/// Thousands of displacements among cancels, deadlines and a shutdown in
/// the middle of the load: no request runs twice, every ticket gets one
/// outcome, and the counts add up.
#[test]
fn displacement_under_churn_runs_nothing_twice_and_loses_nothing() {
    churn(Interruptible::No);
}

/// The same with an executor that declares a re-run safe: running batches
/// are also stopped at boundaries, and a request stopped unfinished runs
/// again, but none finishes twice.
#[test]
fn interruption_under_churn_finishes_nothing_twice_and_loses_nothing() {
    churn(Interruptible::Rerun);
}

/// Runs each request as a step of 150 µs / batch size, checking the stop
/// signal between steps, and records each finished request once.
struct Recording {
    ran: Arc<Mutex<HashSet<u32>>>,
    mode: Interruptible,
}

impl Executor<u32, u32> for Recording {
    fn execute(&self, worker: usize, xs: &[u32]) -> Result<Vec<u32>, ExecutorError> {
        let all = self.execute_until(worker, xs, &Stop::never())?;
        Ok(all.into_iter().flatten().collect())
    }

    fn interruptible(&self) -> Interruptible {
        self.mode
    }

    fn execute_until(
        &self,
        _: usize,
        xs: &[u32],
        stop: &Stop<'_>,
    ) -> Result<Vec<Option<u32>>, ExecutorError> {
        let mut out = vec![None; xs.len()];
        for (i, &x) in xs.iter().enumerate() {
            if stop.requested() {
                break;
            }
            std::thread::sleep(Duration::from_micros(150) / xs.len() as u32);
            assert!(
                self.ran.lock().unwrap().insert(x),
                "request {x} finished twice"
            );
            out[i] = Some(x);
        }
        Ok(out)
    }
}

fn churn(mode: Interruptible) {
    let seed = fresh_seed("preemption under churn");
    let second = if mode == Interruptible::Rerun { 1 } else { 4 };
    let ran = Arc::new(Mutex::new(HashSet::new()));
    let mut cfg = Config {
        // Batches of two: each worker holds a running and a staged batch
        // (displacement); with a re-run safe, the second holds one batch
        // of one at a time (interruption only).
        workers: vec![worker(4, 1 << 20), worker(second, 1 << 20)],
        ..Config::default()
    };
    cfg.batching.max_batch_size = 2;
    cfg.batching.max_queue_delay = Duration::ZERO;
    cfg.preemption.max_displacements = 3;
    cfg.shutdown_timeout = Duration::from_millis(200);
    let rt = Runtime::builder()
        .config(cfg)
        .executor(Recording {
            ran: ran.clone(),
            mode,
        })
        .build()
        .unwrap();
    // Producer 0 floods Background; producer 1 sends Critical requests
    // in pairs, each pair meeting workers that hold staged Background.
    let producers: Vec<_> = (0..2u32)
        .map(|p| {
            let h = rt.handle();
            std::thread::spawn(move || {
                let mut rng = Rng::for_thread(seed ^ u64::from(p));
                let mut kept = Vec::new();
                let (n, priority) = if p == 0 {
                    (40_000u32, Priority::Background)
                } else {
                    (3_000, Priority::Critical)
                };
                for i in 0..n {
                    let id = p * 1_000_000 + i;
                    let mut req = Request::new(id).priority(priority);
                    if rng.below(10) == 0 {
                        req = req.deadline(Duration::from_millis(rng.below(20) + 1));
                    }
                    let t = match h.submit(req) {
                        Ok(t) => t,
                        Err(_) => {
                            // Full: the flood backs off a little.
                            std::thread::sleep(Duration::from_micros(50));
                            continue;
                        }
                    };
                    match rng.below(10) {
                        0 => drop(t),
                        1 => {
                            let mut t = t;
                            t.cancel();
                            kept.push((id, t));
                        }
                        _ => kept.push((id, t)),
                    }
                    if p == 1 && i % 2 == 1 {
                        std::thread::sleep(Duration::from_micros(300));
                    }
                }
                kept
            })
        })
        .collect();
    let kept: Vec<_> = producers
        .into_iter()
        .flat_map(|p| p.join().unwrap())
        .collect();
    // Shut down with work still queued and staged.
    rt.shutdown();
    let mut completed = 0u64;
    for (id, t) in kept {
        match t.wait_bounded() {
            Ok(x) => {
                assert_eq!(x, id);
                completed += 1;
            }
            Err(Failure::Expired | Failure::Cancelled | Failure::ShutDown) => {}
            Err(e) => panic!("request {id}: {e:?}"),
        }
    }
    let s = rt.stats();
    let total = s.total();
    assert_eq!(total.lost(), 0, "{total}");
    assert_eq!(total.inserted, total.ended(), "{total}");
    let ids = ran.lock().unwrap();
    // Each id finished at most once (checked as it did); every completion
    // finished.
    assert!(ids.len() as u64 >= completed);
    let bg = s.of(Priority::Background);
    assert!(
        bg.displaced + bg.interrupted >= 100,
        "the load preempted only {} requests; the test no longer exercises preemption",
        bg.displaced + bg.interrupted
    );
    if mode == Interruptible::Rerun {
        // A floor, not a rate: under ThreadSanitizer's slowdown about 80.
        assert!(
            bg.interrupted >= 20,
            "only {} interrupted ({} displaced)",
            bg.interrupted,
            bg.displaced
        );
    } else {
        assert_eq!(bg.interrupted, 0, "{mode:?} is never interrupted");
    }
    let critical = s.of(Priority::Critical);
    assert_eq!(
        critical.displaced + critical.interrupted,
        0,
        "the gap protects Critical"
    );
    eprintln!(
        "{mode:?}: displaced {} and interrupted {} Background requests; {completed} completed",
        bg.displaced, bg.interrupted
    );
}

/// An executor that runs its batch a request at a time, each step held at
/// the turnstile, and checks the stop signal between steps.
struct Steps {
    gate: Arc<Turnstile>,
    mode: Interruptible,
}

impl Executor<u32, u32> for Steps {
    fn execute(&self, worker: usize, xs: &[u32]) -> Result<Vec<u32>, ExecutorError> {
        let all = self.execute_until(worker, xs, &Stop::never())?;
        Ok(all.into_iter().flatten().collect())
    }

    fn interruptible(&self) -> Interruptible {
        self.mode
    }

    fn execute_until(
        &self,
        _worker: usize,
        xs: &[u32],
        stop: &Stop<'_>,
    ) -> Result<Vec<Option<u32>>, ExecutorError> {
        let mut out = vec![None; xs.len()];
        for (i, &x) in xs.iter().enumerate() {
            if i > 0 && stop.requested() {
                break;
            }
            self.gate.pass(&[x]);
            out[i] = Some(x);
        }
        Ok(out)
    }
}

/// One worker holding one batch of two: a running batch leaves no room.
fn stepping(mode: Interruptible) -> (Runtime<u32, u32>, Arc<Turnstile>, OpenOnDrop) {
    let mut cfg = one_worker(convoy::Preemption::default());
    cfg.batching.max_batch_size = 2;
    let gate = Arc::new(Turnstile::default());
    let rt = Runtime::builder()
        .config(cfg)
        .executor(Steps {
            gate: gate.clone(),
            mode,
        })
        .build()
        .unwrap();
    (rt, gate.clone(), OpenOnDrop(gate))
}

/// A running batch of Low work holds the only worker when a Critical
/// request comes. An executor that declares a re-run safe stops at its
/// next boundary: the finished request is delivered, the unfinished one
/// waits again and runs after the Critical one, and the capacity came
/// back at once (the Critical batch could launch). Any other executor's
/// running batch runs to its end.
#[test]
fn a_running_batch_stops_at_a_boundary_only_when_its_executor_allows() {
    for mode in [
        Interruptible::Rerun,
        Interruptible::OnCancel,
        Interruptible::No,
    ] {
        let (rt, gate, _open) = stepping(mode);
        let h = rt.handle();
        let low = vec![
            Request::new(0).priority(Priority::Low),
            Request::new(1).priority(Priority::Low),
        ];
        let mut tickets = h.submit_batch(low, convoy::InsertPolicy::Enqueue).unwrap();
        eventually("request 0 runs", || gate.entered() == [0]);
        tickets.push(
            h.submit(Request::new(2).priority(Priority::Critical))
                .unwrap(),
        );
        // Let request 0's step finish: a Rerun batch stops before 1.
        std::thread::sleep(Duration::from_millis(20));
        gate.allow(1);
        if mode == Interruptible::Rerun {
            eventually("the Critical request runs", || gate.entered() == [0, 2]);
        } else {
            eventually("request 1 runs", || gate.entered() == [0, 1]);
        }
        gate.allow(usize::MAX);
        for (i, t) in tickets.into_iter().enumerate() {
            assert!(t.wait_bounded().is_ok(), "{mode:?}: request {i}");
        }
        rt.shutdown();
        let s = rt.stats();
        let (order, interrupted) = (gate.entered(), s.of(Priority::Low).interrupted);
        if mode == Interruptible::Rerun {
            assert_eq!(order, [0, 2, 1], "{mode:?}");
            assert_eq!(interrupted, 1, "{mode:?}");
        } else {
            assert_eq!(order, [0, 1, 2], "{mode:?}: never interrupted");
            assert_eq!(interrupted, 0, "{mode:?}");
        }
        assert_eq!(s.of(Priority::Low).completed, 2, "{mode:?}");
        assert_eq!(s.total().lost(), 0, "{mode:?}");
    }
}

/// A long batch whose every caller went away stops at its next boundary
/// (the same signal): what it had not started never runs, and each
/// request ends cancelled.
#[test]
fn a_batch_whose_callers_all_left_stops_early() {
    let (rt, gate, _open) = stepping(Interruptible::OnCancel);
    let h = rt.handle();
    let reqs = (0..2).map(Request::new).collect();
    let tickets = h.submit_batch(reqs, convoy::InsertPolicy::Enqueue).unwrap();
    eventually("request 0 runs", || gate.entered() == [0]);
    drop(tickets);
    gate.allow(usize::MAX);
    eventually("both end", || rt.stats().total().ended() == 2);
    rt.shutdown();
    assert_eq!(gate.entered(), [0], "request 1 never ran");
    assert_eq!(rt.stats().total().cancelled, 2);
}

/// An executor that leaves requests unfinished with no stop asked breaks
/// its contract: those requests fail with an error naming it, the
/// finished one is delivered, and nothing is lost.
#[test]
fn an_executor_that_stops_unasked_fails_those_requests_naming_it() {
    struct Lazy;
    impl Executor<u32, u32> for Lazy {
        fn execute(&self, _: usize, xs: &[u32]) -> Result<Vec<u32>, ExecutorError> {
            Ok(xs.to_vec())
        }
        fn interruptible(&self) -> Interruptible {
            Interruptible::Rerun
        }
        fn execute_until(
            &self,
            _: usize,
            xs: &[u32],
            _: &Stop<'_>,
        ) -> Result<Vec<Option<u32>>, ExecutorError> {
            Ok(xs.iter().map(|&x| (x == 0).then_some(x)).collect())
        }
    }
    let mut cfg = one_worker(convoy::Preemption::default());
    cfg.batching.max_batch_size = 2;
    let rt = Runtime::builder()
        .config(cfg)
        .executor(Lazy)
        .build()
        .unwrap();
    let h = rt.handle();
    let mut t = h
        .submit_batch(
            (0..2).map(Request::new).collect(),
            convoy::InsertPolicy::Enqueue,
        )
        .unwrap();
    let second = t.pop().unwrap().wait_bounded();
    let first = t.pop().unwrap().wait_bounded();
    assert_eq!(first, Ok(0));
    match second {
        Err(Failure::ExecutorFailed(e)) => {
            assert!(e.to_string().contains("Lazy"), "{e}");
            assert!(e.to_string().contains("unfinished"), "{e}");
        }
        other => panic!("expected the executor's failure, got {other:?}"),
    }
    rt.shutdown();
    assert_eq!(rt.stats().total().lost(), 0);
}

/// Urgent work that may take the place of bulk work launches at once
/// (launch cause `preempt`), not after the batching delay: with a delay of
/// a minute, a lone Critical request (a partial batch) behind a staged
/// batch of Low work still launches, and runs first.
#[test]
fn urgent_work_that_may_displace_launches_without_waiting_out_the_delay() {
    let mut cfg = one_worker(convoy::Preemption::default());
    cfg.workers = vec![worker(4, 1 << 20)];
    cfg.batching.max_batch_size = 2;
    cfg.batching.max_queue_delay = Duration::from_secs(60);
    let (rt, gate, _open) = gated(cfg);
    let h = rt.handle();
    // Full batches launch at once, whatever the delay: one runs, one is
    // staged behind it.
    let low = (0..4)
        .map(|i| Request::new(i).priority(Priority::Low))
        .collect();
    let mut tickets = h.submit_batch(low, convoy::InsertPolicy::Enqueue).unwrap();
    eventually("the first batch runs", || gate.entered() == [0, 1]);
    eventually("the second is staged", || rt.stats().batches == 2);
    tickets.push(
        h.submit(Request::new(4).priority(Priority::Critical))
            .unwrap(),
    );
    // Due at once (`preempt`); once the staged batch is recalled, the
    // queue holds a full batch's worth and the Critical request goes
    // first in a batch of its own.
    eventually("the lone Critical request launches", || {
        rt.stats().batches == 3
    });
    gate.allow(usize::MAX);
    for t in tickets {
        assert!(t.wait_bounded().is_ok());
    }
    rt.shutdown();
    assert_eq!(gate.entered(), [0, 1, 4, 2, 3]);
    assert_eq!(rt.stats().of(Priority::Low).displaced, 2);
}
