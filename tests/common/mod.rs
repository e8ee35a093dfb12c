//! Helpers shared by the integration tests (each test binary uses a part).
#![allow(dead_code)] // each test binary uses its own subset

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use convoy::{Capacity, Config, Request, Runtime, Ticket, WorkerSpec};

/// How long a test waits for any one outcome before calling it lost.
pub const OUTCOME_BOUND: Duration = Duration::from_secs(20);

/// A ticket wait with a bound. Every test waits through this rather than
/// `Ticket::wait`, so a runtime that loses an answer (a release lost or
/// applied twice, an expiry that never runs, a batch accepted after
/// shutdown) fails the test naming the line, instead of hanging it.
pub trait WaitBounded<O> {
    /// The outcome, or a panic after [`OUTCOME_BOUND`].
    fn wait_bounded(self) -> convoy::Outcome<O>;
}

impl<O> WaitBounded<O> for Ticket<O> {
    #[track_caller]
    fn wait_bounded(mut self) -> convoy::Outcome<O> {
        match self.wait_timeout(OUTCOME_BOUND) {
            Some(outcome) => outcome,
            None => panic!(
                "no outcome within {OUTCOME_BOUND:?}: the runtime lost this request's answer"
            ),
        }
    }
}

/// A worker named `w` holding `slots` requests and `tokens` tokens.
pub fn worker(slots: u32, tokens: u64) -> WorkerSpec {
    WorkerSpec {
        name: "w".into(),
        capacity: Capacity {
            slots,
            tokens,
            bytes: u64::MAX,
        },
        speed: 1.0,
        cost_per_hour: 0.0,
    }
}

/// A runtime on `cpu_workers` default CPU workers whose batch function
/// hands each input back.
pub fn echo_runtime(cpu_workers: usize) -> Runtime<u32, u32> {
    echo_runtime_with(Config {
        cpu_workers,
        ..Config::default()
    })
}

/// A runtime under `config` whose batch function hands each input back.
pub fn echo_runtime_with(config: Config) -> Runtime<u32, u32> {
    Runtime::builder()
        .config(config)
        .batch_fn(|xs: &[u32]| xs.to_vec())
        .build()
        .unwrap()
}

/// A gate an executor waits on, so a test can hold the only worker busy
/// while it queues work behind it. Dropping any handle opens it, so a test
/// that fails while the worker is held still ends (the runtime's drop
/// joins the worker) instead of hanging.
/// It also counts the executors that reached it: a batch launched may
/// still be staged (and, with preemption, recalled for more urgent work),
/// so a test that needs its blocker running waits for [`Hold::entered`].
#[derive(Clone, Default)]
pub struct Hold(Arc<(Mutex<(bool, usize)>, Condvar)>);

impl Hold {
    pub fn wait(&self) {
        let (m, cv) = &*self.0;
        let mut state = m.lock().unwrap();
        state.1 += 1;
        while !state.0 {
            state = cv.wait(state).unwrap();
        }
    }

    /// How many waits have begun (open or not).
    pub fn entered(&self) -> usize {
        self.0 .0.lock().unwrap().1
    }

    pub fn is_open(&self) -> bool {
        self.0 .0.lock().unwrap().0
    }

    pub fn open(&self) {
        let (m, cv) = &*self.0;
        m.lock().unwrap().0 = true;
        cv.notify_all();
    }
}

/// Submits request 0 and waits until the executor holds it at `hold`:
/// from then on it runs (it cannot be recalled) and the worker is busy.
pub fn occupy_the_held_worker(rt: &Runtime<u32, u32>, hold: &Hold) -> Ticket<u32> {
    let blocker = rt.handle().submit(Request::new(0)).unwrap();
    eventually("the blocker runs", || hold.entered() >= 1);
    blocker
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.open();
    }
}

/// Submits request 0, which the blocked executors of these tests hold until
/// their `Hold` opens, and waits until its batch has launched: from then on
/// the worker it went to is busy and what follows waits behind it.
pub fn occupy_the_worker(rt: &Runtime<u32, u32>) -> Ticket<u32> {
    let blocker = rt.handle().submit(Request::new(0)).unwrap();
    eventually("the blocker runs", || rt.stats().batches == 1);
    blocker
}

/// Waits until `f` holds; fails the test after 10 s (a hang, not a timing).
pub fn eventually(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A fresh seed for `test`, from the clock, or `CONVOY_SEED` to replay
/// one; printed, so a failure says how to replay it.
pub fn fresh_seed(test: &str) -> u64 {
    let seed = std::env::var("CONVOY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("{test}: seed {seed} (CONVOY_SEED={seed} replays it)");
    seed
}

/// A seeded xorshift generator: varied choices, the same mix every run.
pub struct Rng(pub u64);

impl Rng {
    /// A generator for thread `p` (any `p`; the state is never 0).
    pub fn for_thread(p: u64) -> Self {
        Self(p.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a client saw of its requests, for "nothing lost" checks against
/// the runtime's own counters.
#[derive(Default, Debug, Clone, Copy)]
pub struct Seen {
    pub accepted: u64,
    pub refused: u64,
    /// Tickets dropped unread (their outcome is the server's to count).
    pub dropped: u64,
    pub ok: u64,
    pub expired: u64,
    pub cancelled: u64,
    pub failed: u64,
    pub shut_down: u64,
}

impl Seen {
    pub fn add(&mut self, o: Seen) {
        self.accepted += o.accepted;
        self.refused += o.refused;
        self.dropped += o.dropped;
        self.ok += o.ok;
        self.expired += o.expired;
        self.cancelled += o.cancelled;
        self.failed += o.failed;
        self.shut_down += o.shut_down;
    }

    /// Counts one ticket's outcome; checking an output is the caller's.
    pub fn outcome<O>(&mut self, o: &Result<O, convoy::Failure>) {
        use convoy::Failure;
        match o {
            Ok(_) => self.ok += 1,
            Err(Failure::Expired) => self.expired += 1,
            Err(Failure::Cancelled) => self.cancelled += 1,
            Err(Failure::ExecutorFailed(_)) => self.failed += 1,
            Err(Failure::ShutDown) => self.shut_down += 1,
            Err(other) => panic!("an outcome this tally does not know: {other}"),
        }
    }

    /// Tickets read to an outcome.
    pub fn ended(&self) -> u64 {
        self.ok + self.expired + self.cancelled + self.failed + self.shut_down
    }
}
