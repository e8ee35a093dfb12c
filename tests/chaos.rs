//! Everything at once: producers use every way in (plain submits, `Front`,
//! batches under each policy, an exclusive submitter, deduplicated
//! requests), set deadlines, cancel and drop tickets, while the executor
//! fails, panics, returns too few outputs or runs slow, and a control
//! thread adds, drains, resizes and removes workers, reloads the config
//! (ordering, placement, batch limits), clears the waiting set and reads
//! the reports; then the runtime stops at once (`shutdown_now`) in the
//! middle of it.
//!
//! Checked: every accepted request ends in exactly one outcome on both
//! sides (the client's tickets and the server's counters agree), every
//! output is the request's own, every refused request comes back, an
//! `Expired` only reaches a request that had a deadline, and nothing waits
//! or holds room at the end. The choices come from a seeded generator per
//! thread, so a run is varied but the mix is the same every time.

mod common;

use common::{eventually, worker, Rng, Seen, WaitBounded};

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use convoy::{
    BatchingConfig, Capacity, Config, Executor, Failure, Health, InsertPolicy, OrderingPolicy,
    PlacementPolicy, Priority, Request, Runtime, SubmitErrorKind, Ticket,
};

const PRODUCERS: u64 = 6;
const PER: u64 = 20_000;
/// Values of deduplicated requests: `DEDUP | key`, so every member of a
/// group expects the same output.
const DEDUP: u64 = 1 << 62;

/// What the executor does with a batch that holds a request of this mode.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Echo,
    Fail,
    Panic,
    TooFew,
    Slow,
}

/// A request's input: the output it asks for, what the executor does with
/// its batch, and an id unique to it (members of a dedup group share a
/// value, never an id), by which a request handed back is recognised.
#[derive(Clone, Copy, Debug)]
struct In {
    value: u64,
    mode: Mode,
    id: u64,
}

struct Chaos;

impl Executor<In, u64> for Chaos {
    fn execute(&self, _worker: usize, xs: &[In]) -> Result<Vec<u64>, convoy::ExecutorError> {
        let has = |m| xs.iter().any(|x| x.mode == m);
        if has(Mode::Panic) {
            panic!("injected panic");
        }
        if has(Mode::Fail) {
            return Err("injected failure".into());
        }
        if has(Mode::Slow) {
            std::thread::sleep(Duration::from_micros(200));
        }
        let take = if has(Mode::TooFew) {
            xs.len() - 1
        } else {
            xs.len()
        };
        Ok(xs[..take].iter().map(|x| x.value).collect())
    }
}

/// A kept ticket, what it must deliver, and whether it had a deadline.
struct Kept {
    ticket: Ticket<u64>,
    value: u64,
    deadline: bool,
}

fn settle(kept: &mut Vec<Kept>, seen: &mut Seen) {
    for k in kept.drain(..) {
        let out = k.ticket.wait_bounded();
        match &out {
            Ok(v) => assert_eq!(*v, k.value, "a request got another's output"),
            Err(Failure::Expired) => assert!(k.deadline, "a request without a deadline expired"),
            Err(_) => {}
        }
        seen.outcome(&out);
    }
}

/// Builds request `id` from `rng`: its value, mode, level and deadline.
/// Returns it with the output it must get and whether it has a deadline.
fn request(rng: &mut Rng, id: u64) -> (Request<In>, u64, bool) {
    let r = rng.next();
    let (value, mode, key) = if r % 10 == 0 {
        let key = (r >> 8) % 32;
        (DEDUP | key, Mode::Echo, Some(key))
    } else {
        let mode = match (r >> 8) % 1000 {
            0..=4 => Mode::Fail,
            5 => Mode::Panic,
            6..=8 => Mode::TooFew,
            9..=60 => Mode::Slow,
            _ => Mode::Echo,
        };
        (id, mode, None)
    };
    let mut req =
        Request::new(In { value, mode, id }).priority(Priority::ALL[((r >> 20) % 5) as usize]);
    if let Some(key) = key {
        req = req.dedup_key(key);
    }
    let deadline = (r >> 24) % 6 == 0;
    if deadline {
        req = req.deadline(Duration::from_micros(100 + (r >> 32) % 3000));
    }
    (req, value, deadline)
}

/// Keeps, cancels or drops a fresh ticket.
fn keep(
    rng: &mut Rng,
    mut ticket: Ticket<u64>,
    value: u64,
    deadline: bool,
    kept: &mut Vec<Kept>,
    seen: &mut Seen,
) {
    seen.accepted += 1;
    match rng.below(40) {
        0 => {
            ticket.cancel();
        }
        1 => {
            drop(ticket);
            seen.dropped += 1;
            return;
        }
        _ => {}
    }
    kept.push(Kept {
        ticket,
        value,
        deadline,
    });
}

fn producer(rt_handle: convoy::Handle<In, u64>, p: u64) -> Seen {
    let mut rng = Rng::for_thread(p);
    let mut submitter = if p % 2 == 0 {
        rt_handle.submitter()
    } else {
        None
    };
    let mut seen = Seen::default();
    let mut kept = Vec::new();
    let mut i = 0;
    'load: while i < PER {
        let value = p << 32 | i;
        match rng.below(10) {
            // A batch of 1 to 8 under a random policy.
            0 => {
                let n = 1 + rng.below(8);
                let policy = [
                    InsertPolicy::Enqueue,
                    InsertPolicy::Front,
                    InsertPolicy::AllOrNothing,
                ][rng.below(3) as usize];
                let mut reqs = Vec::new();
                let mut values = Vec::new();
                for j in 0..n {
                    let (req, v, d) = request(&mut rng, value + j);
                    reqs.push(req);
                    values.push((value + j, v, d));
                }
                i += n;
                match rt_handle.submit_batch(reqs, policy) {
                    Ok(tickets) => {
                        assert_eq!(tickets.len(), values.len());
                        for (t, (_, v, d)) in tickets.into_iter().zip(values) {
                            keep(&mut rng, t, v, d, &mut kept, &mut seen);
                        }
                    }
                    Err(e) => {
                        if policy == InsertPolicy::AllOrNothing {
                            assert!(e.accepted.is_empty(), "all or nothing took a part");
                        }
                        assert_eq!(e.accepted.len() + e.rejected.len(), values.len());
                        // Accepted tickets are the requests not handed
                        // back, in the order given.
                        let mut back: Vec<u64> =
                            e.rejected.iter().map(|r| r.request.input().id).collect();
                        let shut = e
                            .rejected
                            .iter()
                            .any(|r| r.kind == SubmitErrorKind::ShuttingDown);
                        seen.refused += back.len() as u64;
                        let mut accepted = e.accepted.into_iter();
                        for (id, v, d) in values {
                            if let Some(pos) = back.iter().position(|&b| b == id) {
                                back.remove(pos);
                            } else {
                                let t = accepted
                                    .next()
                                    .expect("one ticket per request not handed back");
                                keep(&mut rng, t, v, d, &mut kept, &mut seen);
                            }
                        }
                        assert!(back.is_empty(), "a request came back that was not sent");
                        assert!(accepted.next().is_none());
                        if shut {
                            break 'load;
                        }
                    }
                }
            }
            op => {
                let (req, v, d) = request(&mut rng, value);
                i += 1;
                let res = match (op, submitter.as_mut()) {
                    (1, _) => rt_handle.submit_with(req, InsertPolicy::Front),
                    (2..=5, Some(s)) => s.submit(req),
                    _ => rt_handle.submit(req),
                };
                match res {
                    Ok(t) => keep(&mut rng, t, v, d, &mut kept, &mut seen),
                    Err(e) => {
                        assert_eq!(e.request.input().id, value, "the request comes back");
                        seen.refused += 1;
                        match e.kind {
                            SubmitErrorKind::ShuttingDown => break 'load,
                            // Backpressure: the level is full or shed.
                            SubmitErrorKind::QueueFull | SubmitErrorKind::Overloaded => {
                                std::thread::yield_now()
                            }
                            other => panic!("unexpected refusal {other:?}"),
                        }
                    }
                }
            }
        }
        if kept.len() >= 128 {
            settle(&mut kept, &mut seen);
        }
    }
    settle(&mut kept, &mut seen);
    seen
}

/// Changes the fleet and the config, clears the waiting set and reads the
/// reports, until `stop`. Workers 0 and 1 stay (1 may drain for a while),
/// so the load never waits on an empty fleet.
fn control(rt: &Runtime<In, u64>, stop: &AtomicBool) -> u64 {
    let mut rng = Rng(0xC0FF_EE00_1234_5678);
    let mut added: Vec<usize> = Vec::new();
    let mut actions = 0;
    let base = rt.config();
    while !stop.load(Ordering::Relaxed) {
        actions += 1;
        match rng.below(9) {
            0 if added.len() < 4 => {
                if let Ok(w) = rt.add_worker(worker(8 + rng.below(24) as u32, 1 << 20)) {
                    added.push(w);
                }
            }
            1 if !added.is_empty() => {
                let w = added.swap_remove(rng.below(added.len() as u64) as usize);
                let _ = rt.remove_worker(w);
            }
            2 => {
                let health = [Health::Up, Health::Draining][rng.below(2) as usize];
                let _ = rt.set_health(1, health);
            }
            3 => {
                let w = [0, 1]
                    .into_iter()
                    .chain(added.iter().copied())
                    .nth(rng.below(2 + added.len() as u64) as usize);
                if let Some(w) = w {
                    let _ = rt.set_capacity(
                        w,
                        Capacity {
                            slots: 4 + rng.below(60) as u32,
                            tokens: 1 << 20,
                            bytes: u64::MAX,
                        },
                    );
                }
            }
            4 | 5 => {
                let mut c = base.clone();
                c.ordering = [
                    OrderingPolicy::Aging,
                    OrderingPolicy::StrictPriority,
                    OrderingPolicy::Fifo,
                ][rng.below(3) as usize];
                c.placement = [
                    PlacementPolicy::LeastLoaded,
                    PlacementPolicy::Priority,
                    PlacementPolicy::SloAware,
                    PlacementPolicy::CostOptimized,
                    PlacementPolicy::Adaptive,
                ][rng.below(5) as usize];
                c.batching.max_batch_size = 1 + rng.below(48) as usize;
                c.batching.max_queue_delay = Duration::from_micros(rng.below(2000));
                c.max_wait = Duration::from_millis(1 + rng.below(50));
                rt.reload_config(c).expect("a valid reload");
            }
            6 if rng.below(4) == 0 => {
                rt.clear_waiting();
            }
            _ => {
                let _ = rt.sla_report();
                let text = rt.metrics_text();
                assert!(text.contains("convoy_"), "metrics text has convoy's series");
                let s = rt.stats().total();
                assert!(s.ended() <= s.inserted, "more ended than accepted: {s:?}");
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let _ = rt.set_health(1, Health::Up);
    actions
}

#[test]
fn nothing_lost_when_everything_happens_at_once() {
    // The injected panics would print a backtrace line each; keep the
    // output readable, and every other panic as loud as ever.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&"injected panic") {
            default_hook(info);
        }
    }));
    let cfg = Config {
        workers: vec![worker(32, 1 << 20), worker(32, 1 << 20)],
        batching: BatchingConfig {
            max_batch_size: 16,
            max_queue_delay: Duration::from_micros(500),
            ..Config::default().batching
        },
        intake: convoy::IntakeConfig {
            shards: 4,
            lane_capacity: 64,
        },
        ..Config::default()
    };
    let rt = Runtime::builder()
        .config(cfg)
        .executor(Chaos)
        .deduplicate()
        .build()
        .expect("a valid config");
    let stop = AtomicBool::new(false);
    let (total, actions) = std::thread::scope(|s| {
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let h = rt.handle();
                s.spawn(move || producer(h, p))
            })
            .collect();
        let admin = s.spawn(|| control(&rt, &stop));
        // Stops the control thread however this closure ends: a failed
        // assertion here must fail the test, not leave the scope waiting
        // on a thread that never stops.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);
        eventually("the load is half way", || {
            rt.stats().total().inserted >= PRODUCERS * PER / 2
        });
        // The abrupt stop: what waits fails `ShutDown` at once, while
        // batches run, submits race the close and the control thread acts.
        // (The graceful one is `tests/runtime.rs`'s stress run.)
        rt.shutdown_now();
        stop.store(true, Ordering::Relaxed);
        let mut total = Seen::default();
        for p in producers {
            total.add(p.join().expect("a producer"));
        }
        (total, admin.join().expect("the control thread"))
    });
    let s = rt.stats().total();
    println!("{actions} control actions; client {total:?}; server {s:?}");
    assert_eq!(
        s.inserted, total.accepted,
        "server and client agree on accepted: {s:?} {total:?}"
    );
    assert_eq!(
        s.inserted,
        s.ended(),
        "every accepted request ended exactly once: {s:?}"
    );
    assert_eq!(s.queue_depth, 0, "nothing holds room at the end");
    assert_eq!(
        total.ended() + total.dropped,
        total.accepted,
        "every kept ticket got one outcome: {total:?}"
    );
    assert!(
        s.completed >= total.ok && s.completed <= total.ok + total.dropped,
        "{s:?} {total:?}"
    );
    assert!(
        s.failed >= total.failed && s.expired >= total.expired,
        "{s:?} {total:?}"
    );
    assert!(
        total.refused > 0,
        "shutdown refused someone mid-load: {total:?}"
    );
    assert!(
        total.ok > 0 && total.failed > 0 && total.cancelled > 0,
        "the mix reached the outcomes it should: {total:?}"
    );
    assert!(actions > 0, "the control thread acted");
    assert!(
        rt.stats().deduplicated > 0,
        "some requests were deduplicated"
    );
}
