//! Waking the collector without a lock and without a syscall per submit.
//!
//! Producers ring after publishing work; the collector, about to sleep,
//! announces it and re-checks for work. It is Dekker's pattern: each side
//! writes its own flag, issues a `SeqCst` fence, then reads the other's.
//! The fences are totally ordered, so at least one side sees the other:
//! either the collector's re-check finds the work, or the producer finds
//! `sleeping` and unparks it. `std::thread::park` keeps an unpark that
//! arrives before the park, so no wake-up is lost in between.
//!
//! The common case (collector busy) costs a producer one fence and one load
//! of a line that rarely changes.

use std::sync::OnceLock;
use std::time::Duration;

use crate::sync::{thread, AtomicBool, Ordering};

/// Wakes the collector; see the module docs for the protocol.
pub struct Doorbell {
    /// Set by the collector just before it re-checks for work and parks.
    sleeping: AtomicBool,
    /// The collector's thread, set once when it starts.
    sleeper: OnceLock<thread::Thread>,
}

impl Default for Doorbell {
    /// A doorbell nobody sleeps on yet.
    fn default() -> Self {
        Self::new()
    }
}

impl Doorbell {
    /// A doorbell nobody sleeps on yet.
    pub fn new() -> Self {
        Self {
            sleeping: AtomicBool::new(false),
            sleeper: OnceLock::new(),
        }
    }

    /// Called once by the sleeping side before its first `sleep`.
    pub fn register_current(&self) {
        let _ = self.sleeper.set(thread::current());
    }

    /// Whether the calling thread is the one registered to sleep (so a
    /// caller can tell it would be waiting on itself).
    pub fn is_sleeper_current(&self) -> bool {
        self.sleeper
            .get()
            .is_some_and(|t| t.id() == thread::current().id())
    }

    /// Producer side: call after the work is published.
    pub fn ring(&self) {
        // SeqCst fence: orders the publication above before the load of
        // `sleeping` (the store→load order that Release/Acquire cannot give).
        let producer_fence = Ordering::SeqCst;
        crate::sync::fence(producer_fence);
        // Relaxed: the fence provides the ordering.
        if self.sleeping.load(Ordering::Relaxed) {
            if let Some(t) = self.sleeper.get() {
                t.unpark();
            }
        }
    }

    /// Collector side: sleeps unless `has_work` finds work after announcing
    /// the sleep. `None` sleeps until rung; `Some(d)` at most `d`.
    pub fn sleep(&self, has_work: impl FnOnce() -> bool, timeout: Option<Duration>) {
        // Relaxed store + SeqCst fence: the fence orders this store before
        // the re-check's loads, pairing with the fence in `ring`.
        self.sleeping.store(true, Ordering::Relaxed);
        crate::sync::fence(Ordering::SeqCst);
        if !has_work() {
            match timeout {
                Some(d) => crate::sync::park_timeout(d),
                None => thread::park(),
            }
        }
        // Relaxed: a stale `true` seen by a producer costs one spare unpark.
        self.sleeping.store(false, Ordering::Relaxed);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn no_lost_wakeup_under_many_rounds() {
        let bell = Arc::new(Doorbell::new());
        let work = Arc::new(AtomicUsize::new(0));
        let (b, w) = (bell.clone(), work.clone());
        let sleeper = std::thread::spawn(move || {
            b.register_current();
            let mut seen = 0;
            while seen < 2000 {
                let now = w.load(Ordering::Relaxed);
                if now > seen {
                    seen = now;
                    continue;
                }
                // No timeout: a lost wake-up would hang this test.
                b.sleep(|| w.load(Ordering::Relaxed) > seen, None);
            }
        });
        assert!(!bell.is_sleeper_current(), "none registered yet, or not us");
        while bell.sleeper.get().is_none() {
            std::thread::yield_now();
        }
        assert!(!bell.is_sleeper_current(), "the ringer is not the sleeper");
        for _ in 0..2000 {
            work.fetch_add(1, Ordering::Relaxed);
            bell.ring();
        }
        sleeper.join().unwrap();
        let own = Doorbell::new();
        own.register_current();
        assert!(own.is_sleeper_current());
    }
}
