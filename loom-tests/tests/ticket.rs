//! loom models of `convoy::ticket`: the real ticket code, built with `--cfg loom`.
#![cfg(loom)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};

use convoy::{ticket, Failure};
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

/// A blocking wait (spin, then register a waker and park) races completion.
#[test]
fn complete_races_wait() {
    loom::model(|| {
        let (c, t) = ticket::pair::<Box<u32>>();
        let h = thread::spawn(move || c.complete(Ok(Box::new(7))).is_ok());
        assert_eq!(t.wait(), Ok(Box::new(7)));
        assert!(h.join().unwrap());
    });
}

/// Cancel races completion: exactly one side ends up owning the value, and
/// after cancel the ticket reports `Cancelled`.
#[test]
fn complete_races_cancel() {
    loom::model(|| {
        let (c, mut t) = ticket::pair::<Box<u32>>();
        let h = thread::spawn(move || c.complete(Ok(Box::new(1))));
        let cancelled_first = t.cancel();
        let delivered = h.join().unwrap();
        // cancel() == true  <=> the completer got its value back.
        assert_eq!(cancelled_first, delivered.is_err());
        if let Err(back) = delivered {
            assert_eq!(back, Ok(Box::new(1)));
        }
        assert_eq!(t.wait(), Err(Failure::Cancelled));
    });
}

/// A ticket dropped while the completer delivers: no leak (loom checks the
/// boxed value is freed) and the completer never blocks.
#[test]
fn complete_races_ticket_drop() {
    loom::model(|| {
        let (c, t) = ticket::pair::<Box<u32>>();
        let h = thread::spawn(move || c.complete(Ok(Box::new(2))).is_ok());
        drop(t);
        h.join().unwrap();
    });
}

/// A completer dropped without delivering still wakes the waiter with
/// `ShutDown`.
#[test]
fn completer_drop_races_wait() {
    loom::model(|| {
        let (c, t) = ticket::pair::<u32>();
        let h = thread::spawn(move || drop(c));
        assert_eq!(t.wait(), Err(Failure::ShutDown));
        h.join().unwrap();
    });
}

/// The `Future` path: a poll that registers one waker, then a second poll
/// with a different waker (the replace path), races completion; the last
/// registered waker is woken or the value is seen directly.
#[test]
fn future_poll_replaces_waker_while_completing() {
    loom::model(|| {
        let (c, mut t) = ticket::pair::<u32>();
        let h = thread::spawn(move || c.complete(Ok(5)).unwrap());

        let wakes = Arc::new(AtomicUsize::new(0));
        let first = counting_waker(wakes.clone());
        let second = counting_waker(wakes.clone());
        let mut fut = pin!(&mut t);
        let r1 = fut.as_mut().poll(&mut Context::from_waker(&first));
        let out = match r1 {
            Poll::Ready(v) => v,
            Poll::Pending => match fut.as_mut().poll(&mut Context::from_waker(&second)) {
                Poll::Ready(v) => v,
                Poll::Pending => {
                    h.join().unwrap();
                    assert!(
                        wakes.load(Ordering::SeqCst) >= 1,
                        "a registered waker was woken"
                    );
                    match fut.as_mut().poll(&mut Context::from_waker(&second)) {
                        Poll::Ready(v) => {
                            assert_eq!(v, Ok(5));
                            return;
                        }
                        Poll::Pending => panic!("completed but still pending"),
                    }
                }
            },
        };
        assert_eq!(out, Ok(5));
        h.join().unwrap();
    });
}

fn counting_waker(count: Arc<AtomicUsize>) -> std::task::Waker {
    struct Count(Arc<AtomicUsize>);
    impl std::task::Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    std::task::Waker::from(std::sync::Arc::new(Count(count)))
}
