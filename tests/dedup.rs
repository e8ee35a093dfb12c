//! Deduplication by caller key: one execution per waiting group, every
//! ticket its own outcome, nothing lost.

mod common;

use common::{
    echo_runtime, eventually, occupy_the_held_worker, occupy_the_worker, worker, Hold, WaitBounded,
};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use convoy::{BatchingConfig, Config, Failure, Priority, Request, Runtime, SubmitErrorKind};

fn one_worker(max_batch: usize) -> Config {
    Config {
        workers: vec![worker(1, 1 << 20)],
        batching: BatchingConfig {
            max_batch_size: max_batch,
            max_queue_delay: Duration::ZERO,
            ..Config::default().batching
        },
        ..Config::default()
    }
}

type Ran = Arc<Mutex<Vec<u32>>>;

/// One worker, dedup on; input 0 blocks until `hold` opens; input 99 fails
/// its batch; every input run is recorded; output = input × 10.
fn blocked(max_batch: usize) -> (Runtime<u32, u32>, Hold, Ran) {
    blocked_with(one_worker(max_batch))
}

/// `blocked`, with a config of one's own.
fn blocked_with(config: Config) -> (Runtime<u32, u32>, Hold, Ran) {
    let hold = Hold::default();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let (h2, r2) = (hold.clone(), ran.clone());
    let rt = Runtime::builder()
        .config(config)
        .batch_fn(move |xs: &[u32]| {
            if xs[0] == 0 {
                h2.wait();
            }
            r2.lock().unwrap().extend_from_slice(xs);
            if xs.contains(&99) {
                return Vec::new(); // a wrong output count fails the batch
            }
            xs.iter().map(|x| x * 10).collect()
        })
        .deduplicate()
        .build()
        .unwrap();
    (rt, hold, ran)
}

fn count(ran: &Ran, x: u32) -> usize {
    ran.lock().unwrap().iter().filter(|&&y| y == x).count()
}

#[test]
fn identical_keys_execute_once_and_every_ticket_gets_the_output() {
    let (rt, hold, ran) = blocked(8);
    let h = rt.handle();
    let blocker = occupy_the_held_worker(&rt, &hold);
    let levels = [
        Priority::Low,
        Priority::Critical,
        Priority::Normal,
        Priority::Background,
        Priority::High,
    ];
    let a: Vec<_> = levels
        .iter()
        .map(|&p| {
            h.submit(Request::new(7).priority(p).dedup_key("prompt-a"))
                .unwrap()
        })
        .collect();
    let b: Vec<_> = (0..2)
        .map(|_| h.submit(Request::new(8).dedup_key("prompt-b")).unwrap())
        .collect();
    let plain = h.submit(Request::new(9)).unwrap();
    eventually("all drained", || rt.stats().deduplicated == 5);
    hold.open();
    assert_eq!(blocker.wait_bounded(), Ok(0));
    for t in a {
        assert_eq!(t.wait_bounded(), Ok(70));
    }
    for t in b {
        assert_eq!(t.wait_bounded(), Ok(80));
    }
    assert_eq!(plain.wait_bounded(), Ok(90));
    rt.shutdown();
    assert_eq!((count(&ran, 7), count(&ran, 8), count(&ran, 9)), (1, 1, 1));
    let s = rt.stats();
    assert_eq!(s.deduplicated, 5, "4 twins of a, 1 of b");
    for p in levels {
        assert_eq!(s.of(p).completed, 1 + u64::from(p == Priority::Normal) * 4);
    }
    assert_eq!(s.total().inserted, s.total().ended());
    assert!(rt.metrics_text().contains("convoy_deduplicated_total 5"));
}

#[test]
fn a_group_is_ordered_as_its_most_urgent_member() {
    let (rt, hold, ran) = blocked(1);
    let h = rt.handle();
    let blocker = occupy_the_held_worker(&rt, &hold);
    let slow = h
        .submit(
            Request::new(5)
                .priority(Priority::Background)
                .dedup_key(5u64),
        )
        .unwrap();
    let normal = h.submit(Request::new(6)).unwrap();
    let urgent = h
        .submit(Request::new(5).priority(Priority::Critical).dedup_key(5u64))
        .unwrap();
    eventually("twin merged", || rt.stats().deduplicated == 1);
    hold.open();
    assert_eq!(
        (
            blocker.wait_bounded(),
            slow.wait_bounded(),
            normal.wait_bounded(),
            urgent.wait_bounded()
        ),
        (Ok(0), Ok(50), Ok(60), Ok(50))
    );
    rt.shutdown();
    assert_eq!(
        *ran.lock().unwrap(),
        [0, 5, 6],
        "the Critical twin lifts its Background group ahead of Normal"
    );
}

#[test]
fn members_expire_one_by_one_and_the_rest_still_run() {
    let (rt, hold, ran) = blocked(4);
    let h = rt.handle();
    let blocker = occupy_the_worker(&rt);
    // The head of the group expires; its twins must survive it.
    let head = h
        .submit(
            Request::new(3)
                .dedup_key("k")
                .deadline(Duration::from_millis(5)),
        )
        .unwrap();
    let patient = h.submit(Request::new(3).dedup_key("k")).unwrap();
    let also_doomed = h
        .submit(
            Request::new(3)
                .dedup_key("k")
                .priority(Priority::High)
                .deadline(Duration::from_millis(10)),
        )
        .unwrap();
    assert_eq!(head.wait_bounded(), Err(Failure::Expired));
    assert_eq!(also_doomed.wait_bounded(), Err(Failure::Expired));
    hold.open();
    assert_eq!(patient.wait_bounded(), Ok(30));
    assert_eq!(blocker.wait_bounded(), Ok(0));
    rt.shutdown();
    assert_eq!(count(&ran, 3), 1);
    let s = rt.stats();
    assert_eq!(s.total().expired, 2);
    assert_eq!(s.total().completed, 2);
    assert_eq!(s.total().inserted, s.total().ended());
}

#[test]
fn a_group_runs_while_any_member_waits_and_not_when_all_cancelled() {
    let (rt, hold, ran) = blocked(4);
    let h = rt.handle();
    let blocker = occupy_the_worker(&rt);
    let mut head = h.submit(Request::new(4).dedup_key("live")).unwrap();
    let follower = h.submit(Request::new(4).dedup_key("live")).unwrap();
    let mut gone_a = h.submit(Request::new(6).dedup_key("gone")).unwrap();
    let gone_b = h.submit(Request::new(6).dedup_key("gone")).unwrap();
    eventually("twins merged", || rt.stats().deduplicated == 2);
    assert!(head.cancel());
    assert!(gone_a.cancel());
    drop(gone_b);
    // The cancelled members leave while the worker is still busy (the
    // collector's periodic sweep; without its shedding the cancelled head
    // would be counted only when its group launched): "live" goes on under
    // its follower, "gone" is dropped whole.
    eventually("the cancels are counted before any group runs", || {
        rt.stats().total().cancelled == 3
    });
    assert!(!hold.is_open());
    assert_eq!(
        rt.stats().total().queue_depth,
        1,
        "only the follower holds room"
    );
    hold.open();
    assert_eq!(follower.wait_bounded(), Ok(40));
    assert_eq!(head.wait_bounded(), Err(Failure::Cancelled));
    assert_eq!(blocker.wait_bounded(), Ok(0));
    rt.shutdown();
    assert_eq!(count(&ran, 4), 1);
    assert_eq!(count(&ran, 6), 0, "a group nobody waits for never runs");
    let s = rt.stats().total();
    assert_eq!((s.completed, s.cancelled), (2, 3));
    assert_eq!(s.inserted, s.ended());
}

/// Twins cancelled at random, heads included, some before a sweep and
/// some after, while the worker is busy: every member ends once, the
/// cancelled ones `Cancelled` (counted before the groups launch) and the
/// rest with their group's output, and each group with a live member runs
/// once.
#[test]
fn twins_cancelled_at_random_each_end_once() {
    let (rt, hold, ran) = blocked(64);
    let h = rt.handle();
    let blocker = occupy_the_worker(&rt);
    let mut state = 0x2545_F491u32;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let mut tickets: Vec<_> = (0..300)
        .map(|_| {
            let r = next();
            let x = 1 + r % 10;
            let p = Priority::ALL[(r >> 8) as usize % 5];
            (
                x,
                h.submit(Request::new(x).priority(p).dedup_key(x)).unwrap(),
            )
        })
        .collect();
    eventually("all merged", || rt.stats().deduplicated == 290);
    let mut cancelled = 0;
    for (_, t) in tickets.iter_mut() {
        if next() % 3 == 0 {
            assert!(t.cancel());
            cancelled += 1;
        }
    }
    eventually("the first cancels are swept", || {
        rt.stats().total().cancelled == cancelled
    });
    // Every member of key 10 goes, after the sweep: its group never runs.
    for (x, t) in tickets.iter_mut() {
        if *x == 10 && t.cancel() {
            cancelled += 1;
        }
    }
    eventually("the second cancels are swept", || {
        rt.stats().total().cancelled == cancelled
    });
    assert!(!hold.is_open(), "the worker was busy all along");
    hold.open();
    assert_eq!(blocker.wait_bounded(), Ok(0));
    let mut live = [0usize; 11];
    for (x, t) in tickets {
        match t.wait_bounded() {
            Ok(y) => {
                assert_eq!(y, x * 10);
                live[x as usize] += 1;
            }
            Err(Failure::Cancelled) => {}
            Err(e) => panic!("unexpected outcome {e:?}"),
        }
    }
    rt.shutdown();
    for x in 1..=10u32 {
        let runs = if live[x as usize] > 0 { 1 } else { 0 };
        assert_eq!(count(&ran, x), runs, "key {x}: {} live", live[x as usize]);
    }
    assert_eq!(live[10], 0);
    let s = rt.stats().total();
    assert_eq!(s.cancelled, cancelled);
    assert_eq!(s.completed, 1 + live.iter().sum::<usize>() as u64);
    assert_eq!(s.inserted, s.ended());
}

#[test]
fn a_failed_group_fails_every_member() {
    let (rt, hold, _ran) = blocked(4);
    let h = rt.handle();
    let blocker = occupy_the_worker(&rt);
    let tickets: Vec<_> = (0..3)
        .map(|_| h.submit(Request::new(99).dedup_key("bad")).unwrap())
        .collect();
    hold.open();
    assert_eq!(blocker.wait_bounded(), Ok(0));
    for t in tickets {
        assert!(matches!(t.wait_bounded(), Err(Failure::ExecutorFailed(_))));
    }
    rt.shutdown();
    let s = rt.stats().total();
    assert_eq!(s.failed, 3);
    assert_eq!(s.inserted, s.ended());
}

#[test]
fn a_key_is_free_again_once_its_group_launched() {
    let (rt, hold, ran) = blocked(1);
    let h = rt.handle();
    hold.open();
    let first = h.submit(Request::new(2).dedup_key("again")).unwrap();
    assert_eq!(first.wait_bounded(), Ok(20));
    let second = h.submit(Request::new(2).dedup_key("again")).unwrap();
    assert_eq!(second.wait_bounded(), Ok(20));
    rt.shutdown();
    assert_eq!(count(&ran, 2), 2);
    assert_eq!(rt.stats().deduplicated, 0);
}

#[test]
fn shutdown_now_fails_every_member_of_a_waiting_group() {
    let (rt, hold, _ran) = blocked(1);
    let h = rt.handle();
    let blocker = occupy_the_worker(&rt);
    let tickets: Vec<_> = (0..3)
        .map(|_| h.submit(Request::new(1).dedup_key("w")).unwrap())
        .collect();
    eventually("twins merged", || rt.stats().deduplicated == 2);
    let opener = {
        let hold = hold.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            hold.open();
        })
    };
    rt.shutdown_now();
    opener.join().unwrap();
    for t in tickets {
        assert_eq!(t.wait_bounded(), Err(Failure::ShutDown));
    }
    let _ = blocker.wait_bounded();
    let s = rt.stats().total();
    assert_eq!(s.inserted, s.ended());
}

#[test]
fn clear_waiting_cancels_every_member_and_frees_the_key() {
    let (rt, hold, ran) = blocked(8);
    let h = rt.handle();
    let blocker = occupy_the_worker(&rt);
    let twins: Vec<_> = (0..3)
        .map(|_| h.submit(Request::new(1).dedup_key("w")).unwrap())
        .collect();
    let other = h.submit(Request::new(2)).unwrap();
    eventually("twins merged", || rt.stats().deduplicated == 2);
    assert_eq!(rt.clear_waiting(), 4, "each member counts, not the group");
    for t in twins.into_iter().chain([other]) {
        assert_eq!(t.wait_bounded(), Err(Failure::Cancelled));
    }
    // The key is free: a new twin starts a new group and runs.
    let again = h.submit(Request::new(1).dedup_key("w")).unwrap();
    hold.open();
    assert_eq!(blocker.wait_bounded(), Ok(0));
    assert_eq!(again.wait_bounded(), Ok(10));
    assert_eq!(count(&ran, 1), 1, "the cleared group never ran");
    assert_eq!(count(&ran, 2), 0);
    rt.shutdown();
    let s = rt.stats().total();
    assert_eq!((s.inserted, s.cancelled), (s.ended(), 4));
}

#[test]
fn a_key_without_deduplicate_is_refused_and_handed_back() {
    let rt = echo_runtime(1);
    let e = rt
        .handle()
        .submit(Request::new(5).dedup_key("k"))
        .unwrap_err();
    assert_eq!(e.kind, SubmitErrorKind::DedupNotEnabled);
    assert_eq!(*e.request.input(), 5);
    assert!(e.request.dedup().is_some());
    rt.shutdown();
}

/// Many threads, few keys, cancels and deadlines: each ticket gets exactly
/// one outcome, outputs match inputs, and the counts add up. A ticket
/// cancelled once its outcome is being or has been delivered reports
/// `Cancelled` while the runtime counted what it delivered (the blur
/// `Runtime::stats` documents), so the client's cancels are matched
/// against the runtime's cancels plus what it counted beyond the client's
/// other outcomes. Matching `completed` to the client's `Ok`s alone failed
/// about one run in ten beside two CPU hogs.
#[test]
fn nothing_lost_with_many_twins_under_load() {
    let rt = Runtime::builder()
        .config(Config {
            cpu_workers: 2,
            ..Config::default()
        })
        .batch_fn(|xs: &[u32]| {
            std::thread::sleep(Duration::from_micros(50));
            xs.iter().map(|x| x * 10).collect()
        })
        .deduplicate()
        .build()
        .unwrap();
    let producers: Vec<_> = (0..4u32)
        .map(|t| {
            let h = rt.handle();
            std::thread::spawn(move || {
                let mut state = 0x9E37_79B9u32.wrapping_mul(t + 1);
                // Client-side outcomes: Ok, Expired, Cancelled.
                let mut seen = [0u64; 3];
                for i in 0..2000u32 {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    let x = state % 16;
                    let mut r = Request::new(x)
                        .priority(Priority::ALL[(state >> 8) as usize % 5])
                        .dedup_key(x);
                    if state % 7 == 0 {
                        r = r.deadline(Duration::from_micros(u64::from(state % 3000) + 1));
                    }
                    let Ok(mut ticket) = h.submit(r) else {
                        continue;
                    };
                    if i % 11 == 0 {
                        ticket.cancel();
                    }
                    match ticket.wait_bounded() {
                        Ok(y) => {
                            assert_eq!(y, x * 10);
                            seen[0] += 1;
                        }
                        Err(Failure::Expired) => seen[1] += 1,
                        Err(Failure::Cancelled) => {
                            assert!(i % 11 == 0, "cancelled without a cancel");
                            seen[2] += 1;
                        }
                        Err(e) => panic!("unexpected outcome {e:?}"),
                    }
                }
                seen
            })
        })
        .collect();
    let [ok, expired, cancelled] = producers
        .into_iter()
        .map(|p| p.join().unwrap())
        .fold([0u64; 3], |a, b| [a[0] + b[0], a[1] + b[1], a[2] + b[2]]);
    rt.shutdown();
    let s = rt.stats();
    let t = s.total();
    assert_eq!(t.inserted, t.ended(), "{t:?}");
    assert_eq!(
        t.inserted,
        ok + expired + cancelled,
        "one outcome per ticket"
    );
    assert_eq!((t.failed, t.shut_down), (0, 0), "{t:?}");
    assert!(t.completed >= ok && t.expired >= expired, "{t:?}");
    assert_eq!(
        t.cancelled + (t.completed - ok) + (t.expired - expired),
        cancelled,
        "every client cancel is counted once, as cancelled or as what it raced: {t:?}"
    );
    assert_eq!(t.queue_depth, 0);
}

/// A level shed while the queue runs late still lets in a twin of a
/// request that waits: it rides that request's execution and adds no work
/// (`twins.rs`). A keyed request with no twin waiting is shed as before,
/// and handed back.
#[test]
fn a_twin_gets_in_at_a_shed_level_and_shares_the_output() {
    let mut config = one_worker(8);
    config.max_wait = Duration::from_millis(100);
    config.shed = true;
    let (rt, hold, ran) = blocked_with(config);
    let h = rt.handle();
    let blocker = occupy_the_worker(&rt);
    let first = h.submit(Request::new(5).dedup_key("prompt")).unwrap();
    eventually("Background is shed", || h.is_shed(Priority::Background));
    let loner = h
        .submit(
            Request::new(6)
                .priority(Priority::Background)
                .dedup_key("other"),
        )
        .unwrap_err();
    assert_eq!(loner.kind, SubmitErrorKind::Overloaded);
    assert_eq!(*loner.request.input(), 6, "handed back");
    // The collector publishes a group's key before it works out the shed
    // levels in the same pass, but the two are read with Relaxed loads: a
    // refusal here is handed back and the twin tried again.
    let twin = std::cell::RefCell::new(None);
    let retries = std::cell::Cell::new(0);
    eventually("the twin gets in at its shed level", || {
        let request = Request::new(5)
            .priority(Priority::Background)
            .dedup_key("prompt");
        match h.submit(request) {
            Ok(t) => *twin.borrow_mut() = Some(t),
            Err(e) => {
                assert_eq!(e.kind, SubmitErrorKind::Overloaded);
                retries.set(retries.get() + 1);
            }
        }
        twin.borrow().is_some()
    });
    assert!(
        h.is_shed(Priority::Background),
        "still shed, the twin let in"
    );
    hold.open();
    assert_eq!(blocker.wait_bounded(), Ok(0));
    assert_eq!(first.wait_bounded(), Ok(50));
    let twin = twin.into_inner().expect("set by the loop above");
    assert_eq!(twin.wait_bounded(), Ok(50), "the twin's copy of the output");
    assert_eq!(count(&ran, 5), 1, "one execution for both");
    let s = rt.stats();
    assert_eq!(s.deduplicated, 1);
    assert_eq!(
        s.of(Priority::Background).rejected_shed,
        1 + retries.get(),
        "the loner, and any try of the twin's before its key was seen"
    );
}
