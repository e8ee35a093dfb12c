//! A batch its executor refuses before running any of it
//! (`ExecutorError::not_run`: a shared pool denied the capacity) waits
//! again, with its arrival time and deadline, and runs once when let: no
//! request lost, none run twice, none counted failed or preempted.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{worker, WaitBounded};
use convoy::{
    Config, Executor, ExecutorError, Failure, Interruptible, Priority, Request, Runtime, Stop,
};

/// Refuses every batch until `refusals` are spent, then runs each
/// request once, recording how often each input ran.
struct Refusing {
    refusals: AtomicU32,
    interruptible: Interruptible,
    ran: Mutex<HashMap<u32, u32>>,
}

impl Refusing {
    fn new(refusals: u32, interruptible: Interruptible) -> Arc<Self> {
        Arc::new(Self {
            refusals: AtomicU32::new(refusals),
            interruptible,
            ran: Mutex::new(HashMap::new()),
        })
    }
}

struct Shared(Arc<Refusing>);

impl Executor<u32, u32> for Shared {
    fn execute(&self, w: usize, xs: &[u32]) -> Result<Vec<u32>, ExecutorError> {
        let out = self.execute_until(w, xs, &Stop::never())?;
        Ok(out.into_iter().flatten().collect())
    }
    fn interruptible(&self) -> Interruptible {
        self.0.interruptible
    }
    fn execute_until(
        &self,
        _: usize,
        xs: &[u32],
        _: &Stop<'_>,
    ) -> Result<Vec<Option<u32>>, ExecutorError> {
        let left = self.0.refusals.load(Ordering::SeqCst);
        if left > 0 {
            self.0.refusals.store(left - 1, Ordering::SeqCst);
            return Err(ExecutorError::not_run("pool full"));
        }
        let mut ran = self.0.ran.lock().unwrap();
        for x in xs {
            *ran.entry(*x).or_default() += 1;
        }
        Ok(xs.iter().map(|x| Some(x + 1)).collect())
    }
}

fn runtime(exec: &Arc<Refusing>) -> Runtime<u32, u32> {
    Runtime::builder()
        .config(Config {
            workers: vec![worker(4, 1_000)],
            ..Config::default()
        })
        .executor(Shared(exec.clone()))
        .build()
        .unwrap()
}

#[test]
fn a_refused_batch_waits_again_and_runs_once() {
    let exec = Refusing::new(25, Interruptible::Rerun);
    let rt = runtime(&exec);
    let h = rt.handle();
    let tickets: Vec<_> = (0..40u32)
        .map(|i| {
            h.submit(Request::new(i).priority(Priority::ALL[i as usize % 5]))
                .unwrap()
        })
        .collect();
    for (i, t) in tickets.into_iter().enumerate() {
        assert_eq!(t.wait_bounded(), Ok(i as u32 + 1), "request {i}");
    }
    assert_eq!(
        exec.refusals.load(Ordering::SeqCst),
        0,
        "every refusal was spent"
    );
    let ran = exec.ran.lock().unwrap();
    assert_eq!(ran.len(), 40);
    assert!(
        ran.values().all(|&n| n == 1),
        "a refused request ran twice: {ran:?}"
    );
    let s = rt.stats();
    for p in Priority::ALL {
        let of = s.of(p);
        assert_eq!(
            (of.completed, of.failed, of.lost()),
            (8, 0, 0),
            "{p:?}: {of}"
        );
        assert_eq!(
            (of.displaced, of.interrupted),
            (0, 0),
            "{p:?}: a refusal is no preemption"
        );
    }
    rt.shutdown();
}

#[test]
fn a_refused_request_still_expires_at_its_deadline() {
    // Refused for ever: the deadline, not the refusals, ends it.
    let exec = Refusing::new(u32::MAX, Interruptible::Rerun);
    let rt = runtime(&exec);
    let t = rt
        .handle()
        .submit(Request::new(1).deadline(Duration::from_millis(50)))
        .unwrap();
    assert_eq!(t.wait_bounded(), Err(Failure::Expired));
    assert!(exec.ran.lock().unwrap().is_empty());
    rt.shutdown();
}

#[test]
fn refused_by_an_executor_that_cannot_rerun_fails_the_batch() {
    let exec = Refusing::new(1, Interruptible::No);
    let rt = runtime(&exec);
    let t = rt.handle().submit(Request::new(1)).unwrap();
    match t.wait_bounded() {
        Err(Failure::ExecutorFailed(e)) => assert!(e.is_not_run() && e.message() == "pool full"),
        other => panic!("expected the refusal as a failure, got {other:?}"),
    }
    rt.shutdown();
}
