//! Preemption of staged work: urgent work placed nowhere takes the place
//! of a batch a worker holds but has not started. Every assertion is on
//! the order of execution and on counts, never on timing.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::{eventually, fresh_seed, worker, Rng, WaitBounded};
use convoy::{
    BatchDelay, BatchingConfig, Config, Failure, Priority, Request, Runtime, Stats, Ticket,
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
    rt: Runtime<u32, u32>,
    gate: Arc<Turnstile>,
    _open: OpenOnDrop,
    tickets: Vec<Ticket<u32>>,
}

/// Request 0 at `running` runs (held at the turnstile) and request 1 at
/// `staged` is staged behind it.
fn held(cfg: Config, running: Priority, staged: Priority) -> Held {
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
    let h = rt.handle();
    let a = h.submit(Request::new(0).priority(running)).unwrap();
    eventually("request 0 runs", || gate.entered() == [0]);
    let b = h.submit(Request::new(1).priority(staged)).unwrap();
    eventually("request 1 is staged", || rt.stats().batches == 2);
    Held {
        rt,
        _open: OpenOnDrop(gate.clone()),
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
    let gate = Arc::new(Turnstile::default());
    let _open = OpenOnDrop(gate.clone());
    let g = gate.clone();
    let rt = Runtime::builder()
        .config(cfg)
        .batch_fn(move |xs: &[u32]| {
            g.pass(xs);
            xs.to_vec()
        })
        .build()
        .unwrap();
    let h = rt.handle();
    let mut tickets = vec![h.submit(Request::new(0).priority(Priority::Low)).unwrap()];
    eventually("request 0 runs", || gate.entered() == [0]);
    // One batch of a High and a Background request, staged; the worker
    // then holds 3 of its 4 slots and takes no third batch.
    let pair = vec![
        Request::new(1).priority(Priority::High),
        Request::new(2).priority(Priority::Background),
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
    let seed = fresh_seed("displacement_under_churn");
    let ran = Arc::new(Mutex::new((HashSet::new(), 0u64)));
    let r = ran.clone();
    let mut cfg = Config {
        workers: vec![worker(4, 1 << 20), worker(4, 1 << 20)],
        ..Config::default()
    };
    cfg.batching.max_batch_size = 2;
    cfg.batching.max_queue_delay = Duration::ZERO;
    cfg.preemption.max_displacements = 3;
    cfg.shutdown_timeout = Duration::from_millis(200);
    let rt = Runtime::builder()
        .config(cfg)
        .batch_fn(move |xs: &[u32]| {
            {
                let mut r = r.lock().unwrap();
                for &x in xs {
                    assert!(r.0.insert(x), "request {x} ran twice");
                }
                r.1 += 1;
            }
            std::thread::sleep(Duration::from_micros(150));
            xs.to_vec()
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
    let (ids, _) = &*ran.lock().unwrap();
    // Each id ran at most once (checked as it ran); every completion ran.
    assert!(ids.len() as u64 >= completed);
    assert!(
        s.of(Priority::Background).displaced >= 200,
        "the load displaced only {} batches' requests; the test no longer exercises preemption",
        s.of(Priority::Background).displaced
    );
    assert_eq!(
        s.of(Priority::Critical).displaced,
        0,
        "the gap protects Critical"
    );
    eprintln!(
        "displaced {} Background requests; {completed} completed",
        s.of(Priority::Background).displaced
    );
}
