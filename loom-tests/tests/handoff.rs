//! loom models of the staged batch's take-once cell
//! (`convoy::loom_exports::TakeOnce`) on the real code: a worker starting
//! a batch races the collector recalling it.
#![cfg(loom)]

use convoy::loom_exports::TakeOnce;
use convoy::{Stop, StopTicket};
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

/// A value that counts its drops, so a model sees a double drop.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The worker starts the batch while the collector recalls it: in every
/// interleaving exactly one of them takes it. Neither drops what it took
/// (a model of a broken cell would then free one box twice); the winner's
/// count is what is checked.
#[test]
fn start_races_recall_and_exactly_one_takes() {
    loom::model(|| {
        let cell = Arc::new(TakeOnce::new(Box::new(7u32)));
        let worker = {
            let cell = cell.clone();
            thread::spawn(move || {
                let got = cell.take();
                let took = got.is_some();
                std::mem::forget(got);
                took
            })
        };
        let got = cell.take();
        let recalled = got.is_some();
        std::mem::forget(got);
        let started = worker.join().unwrap();
        assert!(
            started ^ recalled,
            "started {started}, recalled {recalled}: exactly one must take the batch"
        );
        assert!(cell.is_taken());
    });
}

/// However the race goes, and whether or not anyone takes it, the value
/// is dropped exactly once: by its taker, or with the cell.
#[test]
fn the_batch_is_dropped_exactly_once() {
    loom::model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = Arc::new(TakeOnce::new(Counted(drops.clone())));
        let worker = {
            let cell = cell.clone();
            thread::spawn(move || drop(cell.take()))
        };
        drop(cell.take());
        worker.join().unwrap();
        assert_eq!(drops.load(Ordering::Relaxed), 1);
        drop(cell);
        assert_eq!(drops.load(Ordering::Relaxed), 1);
    });
}

/// Nobody takes it (a runtime torn down with a batch staged): the cell
/// drops it once, on whichever thread lets go of the cell last.
#[test]
fn an_untaken_batch_is_dropped_with_the_cell() {
    loom::model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = Arc::new(TakeOnce::new(Counted(drops.clone())));
        let other = cell.clone();
        let t = thread::spawn(move || drop(other));
        drop(cell);
        t.join().unwrap();
        assert_eq!(drops.load(Ordering::Relaxed), 1);
    });
}

/// The collector asks batch 1 to stop while its worker finishes it and
/// starts batch 2: batch 2 is never stopped, however late the worker
/// reads the ticket, and batch 1 sees the ask once it is stored.
#[test]
fn a_stop_meant_for_one_batch_never_stops_the_next() {
    loom::model(|| {
        let ticket = Arc::new(StopTicket::new());
        let collector = {
            let ticket = ticket.clone();
            thread::spawn(move || ticket.ask(1))
        };
        let gone = || false;
        let first = Stop::new(&ticket, 1, &gone);
        let _maybe = first.requested();
        let second = Stop::new(&ticket, 2, &gone);
        assert!(!second.requested(), "a stop for batch 1 stopped batch 2");
        collector.join().unwrap();
        assert!(first.requested() && first.preempted());
        assert!(!second.requested());
    });
}
