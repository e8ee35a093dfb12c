//! `Runtime::clear_waiting`'s handshake: a control thread asks the
//! collector to cancel everything waiting and waits for the count.
//!
//! The waiting set belongs to the collector, so only the collector can
//! clear it. The collector's per-pass cost is one load of `asked` (the line
//! is written only when a caller asks); everything else is a control path
//! and takes the mutex:
//!
//! * A caller waits until no other clear is outstanding (`asked ==
//!   answered`), counts its own (`asked += 1`), sets the flag and rings the
//!   collector's doorbell, then waits on the condvar until `answered`
//!   reaches its number, or until the collector has gone.
//! * The collector, seeing the flag, takes it (`swap`), clears, and answers
//!   under the mutex: `answered = asked` (one outstanding at most), the
//!   count, `notify_all`.
//! * A collector that exits marks itself gone under the mutex. A caller
//!   checks `gone` under the same mutex before it waits, so an ask that
//!   lands after the collector's last pass does not wait forever; it gets
//!   `None` (the collector left nothing waiting: it exits only then).

use crate::sync::{AtomicBool, Condvar, Mutex, MutexGuard, Ordering};

/// The handshake; see the module docs.
pub struct Clearing {
    /// A clear is asked and not yet taken by the collector.
    asked: AtomicBool,
    state: Mutex<State>,
    answered: Condvar,
}

#[derive(Default)]
struct State {
    /// Clears asked so far.
    asked: u64,
    /// Clears the collector has done (equals `asked` when none waits).
    answered: u64,
    /// Requests the last answered clear ended.
    cleared: usize,
    /// The collector has exited; nothing will answer again.
    gone: bool,
}

impl Default for Clearing {
    fn default() -> Self {
        Self::new()
    }
}

impl Clearing {
    /// No clear asked.
    pub fn new() -> Self {
        Self {
            asked: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            answered: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a few counters updated in one step each: a panic
        // elsewhere cannot leave it half-written, so a poisoned lock is
        // still good.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Control thread: asks for a clear, calls `wake` (the collector's
    /// doorbell), and blocks until the collector has cleared. The count of
    /// requests it ended, or `None` if the collector has gone.
    pub fn ask(&self, wake: impl FnOnce()) -> Option<usize> {
        let mut st = self.lock();
        while !st.gone && st.asked != st.answered {
            st = self.answered.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.gone {
            return None;
        }
        st.asked += 1;
        let mine = st.asked;
        self.raise();
        wake();
        while !st.gone && st.answered < mine {
            st = self.answered.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        (st.answered >= mine).then_some(st.cleared)
    }

    /// Collector thread (a callback it runs, such as the shortfall hook):
    /// asks without waiting, since the collector cannot answer while it is
    /// the one waiting. The clear happens on its next pass.
    pub fn ask_later(&self) {
        let mut st = self.lock();
        if st.gone {
            return;
        }
        if st.asked == st.answered {
            st.asked += 1;
        }
        self.raise();
    }

    /// Raises the flag the collector takes.
    fn raise(&self) {
        // Release: what this thread did before asking (its submits among
        // them) happens-before the collector's Acquire swap, so the clear
        // sees those requests in the intake.
        self.asked.store(true, Ordering::Release);
    }

    /// Collector, once per pass: whether a clear was asked (and takes it).
    #[inline]
    pub fn take(&self) -> bool {
        // The Relaxed load keeps the pass's cost at one read of a line no
        // one writes; the Acquire swap pairs with `ask`'s Release store.
        self.asked.load(Ordering::Relaxed) && self.asked.swap(false, Ordering::Acquire)
    }

    /// Collector, re-checking before it sleeps: a clear is asked. Relaxed:
    /// the doorbell's fences order it against the asker's ring.
    #[inline]
    pub fn is_asked(&self) -> bool {
        self.asked.load(Ordering::Relaxed)
    }

    /// Collector, after clearing `cleared` requests for a `take`n ask.
    pub fn answer(&self, cleared: usize) {
        let mut st = self.lock();
        st.answered = st.asked;
        st.cleared = cleared;
        drop(st);
        self.answered.notify_all();
    }

    /// Collector, on exit: nothing answers any more.
    pub fn gone(&self) {
        self.lock().gone = true;
        self.answered.notify_all();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn an_ask_gets_the_collectors_count_and_none_once_it_has_gone() {
        let c = Arc::new(Clearing::new());
        assert!(!c.take(), "nothing asked yet");
        let collector = {
            let c = c.clone();
            std::thread::spawn(move || {
                while !c.take() {
                    std::thread::yield_now();
                }
                c.answer(7);
            })
        };
        assert_eq!(c.ask(|| {}), Some(7));
        collector.join().unwrap();
        c.gone();
        assert_eq!(c.ask(|| panic!("no wake")), None, "no collector: no wait");
        assert!(!c.take(), "an ask after the collector left sets nothing");
    }

    #[test]
    fn an_ask_from_the_collector_thread_is_taken_on_its_next_pass() {
        let c = Clearing::new();
        c.ask_later();
        c.ask_later(); // one outstanding clear, asked twice
        assert!(c.take());
        c.answer(2);
        assert!(!c.take());
        // A later ask from another thread is not held up by the first.
        let c = std::sync::Arc::new(c);
        let other = {
            let c = c.clone();
            std::thread::spawn(move || c.ask(|| {}))
        };
        while !c.take() {
            std::thread::yield_now();
        }
        c.answer(0);
        assert_eq!(other.join().unwrap(), Some(0));
    }
}
