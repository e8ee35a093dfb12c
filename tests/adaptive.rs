//! The adaptive queue delay (`batching.delay = "adaptive"`, the default):
//! an idle worker does not sit out the delay for requests that are not
//! coming, a stream that fills batches still fills them, and under
//! saturation batches form as under Triton's fixed rule. Every assertion
//! is on batch counts and composition, none on timing.

mod common;

use common::{worker, Hold, WaitBounded};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use convoy::{BatchDelay, Config, LaunchCause, Request, Runtime};

fn config(delay: BatchDelay, max_batch: usize, delay_ms: u64, slots: u32) -> Config {
    config_on(1, delay, max_batch, delay_ms, slots)
}

/// As `config`, over `workers` workers of `slots` each.
fn config_on(
    workers: usize,
    delay: BatchDelay,
    max_batch: usize,
    delay_ms: u64,
    slots: u32,
) -> Config {
    let mut c = Config {
        workers: (0..workers)
            .map(|i| convoy::WorkerSpec {
                name: format!("w{i}"),
                ..worker(slots, 1 << 20)
            })
            .collect(),
        ..Config::default()
    };
    c.batching.max_batch_size = max_batch;
    c.batching.max_batch_tokens = 1 << 20;
    c.batching.max_queue_delay = Duration::from_millis(delay_ms);
    c.batching.delay = delay;
    c
}

/// `clients` threads, each submitting and waiting for its answer `rounds`
/// times (a closed loop); returns the runtime's final stats.
fn closed_loop(cfg: Config, clients: u32, rounds: u32) -> convoy::Stats {
    let rt = Runtime::builder()
        .config(cfg)
        .batch_fn(|xs: &[u32]| xs.to_vec())
        .build()
        .unwrap();
    std::thread::scope(|s| {
        for c in 0..clients {
            let h = rt.handle();
            s.spawn(move || {
                for r in 0..rounds {
                    let x = c * 1000 + r;
                    assert_eq!(h.submit(Request::new(x)).unwrap().wait_bounded(), Ok(x));
                }
            });
        }
    });
    rt.shutdown();
    let s = rt.stats();
    assert_eq!(s.total().completed, u64::from(clients * rounds));
    assert_eq!(s.total().inserted, s.total().ended());
    s
}

/// Eight clients in a closed loop, a batch limit of 64 they can never
/// fill, and a 200 ms delay: under the adaptive rule the batches are
/// launched by the idle worker once the burst of resubmissions is over,
/// not by the delay. Only a few may wait it out: the start, while the
/// clients' threads are still starting and the runtime has no pace to go
/// by yet, and a round whose clients the machine deschedules for long.
/// (Were the rule broken, every batch would wait the delay and be counted
/// `Delay`, as the fixed rule's are below.)
#[test]
fn a_closed_loop_never_waits_out_the_delay_once_arrivals_stop() {
    let s = closed_loop(config(BatchDelay::Adaptive, 64, 200, 128), 8, 40);
    assert!(s.batches >= 40, "at least one batch a round: {}", s.batches);
    let (delay, idle) = (
        s.launched_by(LaunchCause::Delay),
        s.launched_by(LaunchCause::Idle),
    );
    assert!(
        delay * 10 <= s.batches,
        "{delay} batches waited the delay: {:?}",
        s.launches
    );
    assert_eq!(s.launched_by(LaunchCause::Full), 0, "8 never fill 64");
    assert_eq!(delay + idle, s.batches, "{:?}", s.launches);
}

/// The same loop under the fixed rule waits out the delay for every batch:
/// what the adaptive rule is there to avoid, and the count that tells the
/// two apart.
#[test]
fn under_the_fixed_rule_every_batch_of_a_closed_loop_waits_the_delay() {
    let s = closed_loop(config(BatchDelay::Fixed, 64, 30, 128), 8, 5);
    assert!(s.batches >= 5);
    assert_eq!(
        s.launched_by(LaunchCause::Delay),
        s.batches,
        "{:?}",
        s.launches
    );
    assert_eq!(s.launched_by(LaunchCause::Idle), 0);
}

/// A producer submitting as fast as it can, with the worker idle and a
/// 10 s delay: the stream never stops for long, so batches keep filling
/// to the limit instead of launching at each lull. A stream whose thread
/// the machine deschedules may count as stopped now and then, so the
/// assertion leaves room for a few partial batches; a rule that launched
/// whenever a worker is idle would form batches of one or two.
#[test]
fn a_stream_fast_enough_to_fill_batches_still_fills_them() {
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let seen = sizes.clone();
    let rt = Runtime::builder()
        .config(config(BatchDelay::Adaptive, 16, 10_000, 64))
        .batch_fn(move |xs: &[u32]| {
            seen.lock().unwrap().push(xs.len());
            xs.to_vec()
        })
        .build()
        .unwrap();
    let h = rt.handle();
    let tickets: Vec<_> = (0..2048)
        .map(|i| h.submit(Request::new(i)).unwrap())
        .collect();
    for (i, t) in tickets.into_iter().enumerate() {
        assert_eq!(t.wait_bounded(), Ok(i as u32));
    }
    rt.shutdown();
    let sizes = sizes.lock().unwrap().clone();
    let s = rt.stats();
    assert_eq!(sizes.iter().sum::<usize>(), 2048);
    let full = sizes.iter().filter(|&&n| n == 16).count();
    assert!(
        full * 4 >= sizes.len() * 3,
        "{full} of {} batches full: {sizes:?}",
        sizes.len()
    );
    assert_eq!(s.launched_by(LaunchCause::Delay), 0, "nothing waited 10 s");
}

/// Under saturation no worker is idle, so the adaptive rule forms the same
/// batches as the fixed one: the only worker (room for two batches) is
/// held busy while 200 requests queue behind it, then released. Both rules
/// give the same mean batch size, and the adaptive one launches at most
/// the tail for an idle worker.
#[test]
fn under_saturation_batches_are_as_large_as_under_the_fixed_rule() {
    let run = |delay: BatchDelay| {
        let hold = Hold::default();
        let gate = hold.clone();
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let rt = Runtime::builder()
            .config(config(delay, 8, 30, 16))
            .batch_fn(move |xs: &[u32]| {
                if xs.contains(&0) {
                    gate.wait();
                }
                seen.lock().unwrap().push(xs.len());
                xs.to_vec()
            })
            .build()
            .unwrap();
        let h = rt.handle();
        let blocker = h.submit(Request::new(0)).unwrap();
        common::eventually("the blocker runs", || rt.stats().batches == 1);
        let tickets: Vec<_> = (1..=200)
            .map(|i| h.submit(Request::new(i)).unwrap())
            .collect();
        hold.open();
        assert_eq!(blocker.wait_bounded(), Ok(0));
        for (i, t) in tickets.into_iter().enumerate() {
            assert_eq!(t.wait_bounded(), Ok(i as u32 + 1));
        }
        rt.shutdown();
        let sizes = sizes.lock().unwrap().clone();
        (sizes, rt.stats())
    };
    let (fixed, _) = run(BatchDelay::Fixed);
    let (adaptive, stats) = run(BatchDelay::Adaptive);
    let mean = |v: &[usize]| v[1..].iter().sum::<usize>() as f64 / (v.len() - 1) as f64;
    assert_eq!(fixed.iter().sum::<usize>(), 201);
    assert_eq!(adaptive.iter().sum::<usize>(), 201);
    assert!(
        mean(&adaptive) >= mean(&fixed) - 0.5,
        "adaptive {adaptive:?} against fixed {fixed:?}"
    );
    assert!(
        stats.launched_by(LaunchCause::Idle) <= 2,
        "only the tail may go to an idle worker: {:?}",
        stats.launches
    );
}

/// The rule is a knob like the others: reloadable, named in a config file,
/// and an unknown name is an error naming the key.
#[test]
fn the_rule_reloads_and_a_bad_name_is_refused_by_key() {
    let c = Config::from_toml_str("[batching]\ndelay = \"fixed\"\n").unwrap();
    assert_eq!(c.batching.delay, BatchDelay::Fixed);
    let e = Config::from_toml_str("[batching]\ndelay = \"eager\"\n").unwrap_err();
    assert!(e.to_string().starts_with("batching.delay"), "{e}");
    assert!(e.to_string().contains("\"eager\""), "{e}");
    let e = Config::from_toml_str("[batching]\ndelay = 3\n").unwrap_err();
    assert!(e.to_string().contains("delay"), "{e}");

    // Fixed, then reloaded to adaptive: a closed loop stops waiting.
    let rt = Runtime::builder()
        .config(config(BatchDelay::Fixed, 64, 30, 128))
        .batch_fn(|xs: &[u32]| xs.to_vec())
        .build()
        .unwrap();
    let h = rt.handle();
    let burst = |base: u32| {
        let ts: Vec<_> = (0..4)
            .map(|i| h.submit(Request::new(base + i)).unwrap())
            .collect();
        ts.into_iter()
            .for_each(|t| assert!(t.wait_bounded().is_ok()));
    };
    burst(0);
    assert_eq!(rt.stats().launched_by(LaunchCause::Delay), 1);
    rt.reload_config(config(BatchDelay::Adaptive, 64, 30_000, 128))
        .unwrap();
    for round in 1..=5 {
        burst(round * 10);
    }
    let s = rt.stats();
    assert_eq!(s.launched_by(LaunchCause::Delay), 1, "{:?}", s.launches);
    assert!(s.launched_by(LaunchCause::Idle) >= 5, "{:?}", s.launches);
    rt.shutdown();
}

/// Once a closed loop's level is known (after one 20 ms window), the idle
/// worker takes each round (nearly) whole: every client's request, or all
/// but the 1/16 the level's slack lets go to the next batch, launched the
/// moment they are back, neither at the first arrival nor after the delay.
/// The one worker holds nothing while a round is coming back. A rule that
/// launched for an idle worker at the first arrival would form batches of
/// a few.
#[test]
fn a_closed_loop_goes_whole_once_its_level_is_known() {
    for clients in [8u32, 48] {
        let most = clients as usize - clients as usize / 16;
        let later = closed_loop_sizes(1, clients, 64);
        let what = format!("held at least {most} of {clients} clients");
        assert_tenths(&later, 8, &what, |n| n >= most);
    }
}

/// At least `tenths` tenths of the batch `sizes` are `such`; the message
/// names them `what`.
fn assert_tenths(sizes: &[usize], tenths: usize, what: &str, such: impl Fn(usize) -> bool) {
    let n = sizes.iter().filter(|&&n| such(n)).count();
    assert!(
        n * 10 >= sizes.len() * tenths,
        "{n} of {} later batches {what}: {sizes:?}",
        sizes.len()
    );
}

/// With two workers, each with room for whole rounds, a closed loop back
/// at its level is spread over both: each launch for an idle worker takes
/// its half of what waits, and the halves run side by side. Taking what
/// waits, as for an open stream's lull, would run each round of 16 on
/// one worker while the other looked on.
#[test]
fn a_closed_loop_round_is_spread_over_the_idle_workers() {
    let later = closed_loop_sizes(2, 16, 64);
    let what = "held at most half the round (and a straggler)";
    assert_tenths(&later, 8, what, |n| n <= 9);
}

/// A loop that holds a full batch for every worker (16 clients, batches
/// of 8, two workers) fills its batches by itself: the rule launches no
/// partial batch for an idle worker, which would only leave the rest of a
/// round behind. Later batches are full.
#[test]
fn a_loop_that_fills_every_worker_gets_full_batches() {
    let later = closed_loop_sizes(2, 16, 8);
    assert_tenths(&later, 9, "full", |n| n == 8);
}

/// Runs `clients` closed-loop callers over `workers` workers (each with
/// room for four rounds, so that no round fills a worker and launches as
/// `Full`) under batches of at most `max_batch`, long enough for the level
/// to be learnt, and returns the sizes of the later half of the batches,
/// after checking what holds in every run: few batches waited out the
/// delay, and the count the rule reads stayed at the callers (within an
/// eighth).
fn closed_loop_sizes(workers: usize, clients: u32, max_batch: usize) -> Vec<usize> {
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let seen = sizes.clone();
    let rt = Runtime::builder()
        .config(config_on(
            workers,
            BatchDelay::Adaptive,
            max_batch,
            200,
            4 * clients,
        ))
        .batch_fn(move |xs: &[u32]| {
            seen.lock().unwrap().push(xs.len());
            xs.to_vec()
        })
        .build()
        .unwrap();
    std::thread::scope(|s| {
        for c in 0..clients {
            let h = rt.handle();
            s.spawn(move || {
                // Long enough for the level to be learnt and then used.
                let start = std::time::Instant::now();
                let mut r = 0;
                while start.elapsed() < Duration::from_millis(300) || r < 40 {
                    let x = c * 100_000 + r;
                    assert_eq!(h.submit(Request::new(x)).unwrap().wait_bounded(), Ok(x));
                    r += 1;
                }
            });
        }
    });
    rt.shutdown();
    let sizes = sizes.lock().unwrap().clone();
    let s = rt.stats();
    assert!(
        s.launched_by(LaunchCause::Delay) * 10 <= s.batches,
        "{clients} clients: {:?}",
        s.launches
    );
    // The count the rule reads holds each caller once: a worker gives a
    // batch's capacity back before its callers hear, so none of them is
    // counted again with its next request while the last still counts.
    // (Released after the answers, 8 callers were counted as 16.) An
    // eighth more is allowed for the instant one worker's release waits in
    // the release ring behind another's still being written.
    assert!(
        s.most_in_runtime <= u64::from(clients + clients / 8),
        "{clients} clients counted as {}",
        s.most_in_runtime
    );
    // The later half of the run, well past the first window.
    sizes[sizes.len() / 2..].to_vec()
}
