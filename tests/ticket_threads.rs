//! The ticket's one-shot protocol under real threads, sized to run under
//! Miri too (`scripts/miri.sh`), which checks what loom does not: that the
//! value and waker cells are never read uninitialised, freed twice or
//! leaked, whichever side wins each race. Values count their drops, so a
//! value dropped twice or never fails here as well as under Miri.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use convoy::{ticket, Failure};

/// Rounds per test: every round is a fresh pair and a fresh race.
const ROUNDS: usize = if cfg!(miri) { 40 } else { 4_000 };

/// A value that counts its drops.
#[derive(Debug)]
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A completer on another thread races the ticket's wait: the value
/// arrives once and is dropped once.
#[test]
fn a_value_sent_across_threads_arrives_once_and_drops_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    for round in 0..ROUNDS {
        let (c, t) = ticket::pair::<(usize, Counted)>();
        let d = drops.clone();
        let sender = std::thread::spawn(move || c.complete(Ok((round, Counted(d)))));
        let (got, value) = t.wait().expect("completed");
        assert_eq!(got, round);
        drop(value);
        assert!(sender.join().unwrap().is_ok());
    }
    assert_eq!(drops.load(Ordering::Relaxed), ROUNDS);
}

/// Cancel races complete: either the ticket took the value (cancel says
/// a result had arrived) or the completer got it back, never both and
/// never neither; each value is dropped exactly once.
#[test]
fn cancel_racing_complete_hands_the_value_to_exactly_one_side() {
    let drops = Arc::new(AtomicUsize::new(0));
    let (mut delivered, mut handed_back) = (0, 0);
    for _ in 0..ROUNDS {
        let (c, mut t) = ticket::pair::<Counted>();
        let d = drops.clone();
        let sender = std::thread::spawn(move || c.complete(Ok(Counted(d))).is_err());
        let cancelled_first = t.cancel();
        let back = sender.join().unwrap();
        assert_eq!(
            cancelled_first, back,
            "cancel said {cancelled_first}, the completer got its value back: {back}"
        );
        if back {
            handed_back += 1;
        } else {
            delivered += 1;
        }
        assert!(matches!(t.wait(), Err(Failure::Cancelled)));
    }
    assert_eq!(delivered + handed_back, ROUNDS);
    assert_eq!(
        drops.load(Ordering::Relaxed),
        ROUNDS,
        "each value dropped once"
    );
}

/// A ticket dropped while the completer runs: the value is dropped once,
/// by whichever side holds it last.
#[test]
fn a_ticket_dropped_mid_race_drops_the_value_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    for _ in 0..ROUNDS {
        let (c, t) = ticket::pair::<Counted>();
        let d = drops.clone();
        let sender = std::thread::spawn(move || {
            let _ = c.complete(Ok(Counted(d)));
        });
        drop(t);
        sender.join().unwrap();
    }
    assert_eq!(drops.load(Ordering::Relaxed), ROUNDS);
}

/// A completer dropped without completing delivers `ShutDown`.
#[test]
fn a_completer_gone_delivers_shut_down() {
    for _ in 0..ROUNDS / 4 {
        let (c, t) = ticket::pair::<u32>();
        let gone = std::thread::spawn(move || drop(c));
        assert_eq!(t.wait(), Err(Failure::ShutDown));
        gone.join().unwrap();
    }
}

struct Flag(AtomicUsize);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// The async path: a poll registers a waker, a second poll with another
/// waker replaces it while the completer may be reading it, and the
/// completion wakes the waker registered last (or finds the ticket ready).
#[test]
fn a_polled_ticket_is_woken_and_its_waker_replaced_safely() {
    for round in 0..ROUNDS / 4 {
        let (c, mut t) = ticket::pair::<usize>();
        let (first, second) = (
            Arc::new(Flag(AtomicUsize::new(0))),
            Arc::new(Flag(AtomicUsize::new(0))),
        );
        let (w1, w2) = (Waker::from(first.clone()), Waker::from(second.clone()));
        let sender = std::thread::spawn(move || c.complete(Ok(round)));
        let mut outcome = match Pin::new(&mut t).poll(&mut Context::from_waker(&w1)) {
            Poll::Ready(o) => Some(o),
            Poll::Pending => None,
        };
        if outcome.is_none() {
            outcome = match Pin::new(&mut t).poll(&mut Context::from_waker(&w2)) {
                Poll::Ready(o) => Some(o),
                Poll::Pending => None,
            };
        }
        assert!(sender.join().unwrap().is_ok());
        let outcome = match outcome {
            Some(o) => o,
            None => {
                // Pending twice: the completion must have woken a waker.
                let woken = first.0.load(Ordering::SeqCst) + second.0.load(Ordering::SeqCst);
                assert!(woken >= 1, "completed without waking anyone");
                match Pin::new(&mut t).poll(&mut Context::from_waker(&w2)) {
                    Poll::Ready(o) => o,
                    Poll::Pending => panic!("woken but not ready"),
                }
            }
        };
        assert_eq!(outcome, Ok(round));
    }
}

/// `wait_timeout` gives nothing before the completion and the outcome
/// after it.
#[test]
fn wait_timeout_returns_nothing_then_the_outcome() {
    let (c, mut t) = ticket::pair::<u8>();
    assert_eq!(t.wait_timeout(Duration::from_millis(1)), None);
    let sender = std::thread::spawn(move || c.complete(Ok(7)));
    assert_eq!(t.wait_timeout(Duration::from_secs(30)), Some(Ok(7)));
    assert!(sender.join().unwrap().is_ok());
}
