//! The take-once cell a staged batch travels in: the collector pushes it
//! onto a worker's ring and keeps a second handle, and exactly one of two
//! parties takes the batch out: the worker, when it starts it, or the
//! collector, when it recalls it for more urgent work (preemption,
//! `collector/displace.rs`). Whoever loses finds the cell empty and does
//! nothing, so a batch never runs twice and its capacity is released once:
//! by the worker after running it, or by the collector when it recalls it.
//!
//! # The protocol
//!
//! The cell is one `AtomicPtr`: non-null while the batch is in it, null
//! once taken. [`TakeOnce::take`] swaps in null; the swap is one atomic
//! read-modify-write, so of any number of racing takers exactly one reads
//! the pointer (the modification order of one location is total) and the
//! rest read null. `loom-tests/tests/handoff.rs` checks it on this code;
//! `loom-tests/weaken.sh` splits the swap into a load and a store and the
//! model then finds two takers.

use std::ptr;

use crate::sync::{AtomicPtr, Ordering};

/// A value that exactly one taker gets.
///
/// ```
/// use convoy::internals::TakeOnce;
/// let cell = TakeOnce::new(7);
/// assert!(!cell.is_taken());
/// assert_eq!(cell.take(), Some(7));
/// assert_eq!(cell.take(), None); // the other party finds it empty
/// assert!(cell.is_taken());
/// ```
pub struct TakeOnce<T> {
    /// `Box::into_raw` of the value while it is here; null once taken.
    value: AtomicPtr<T>,
}

// SAFETY: the cell hands its `T` to exactly one thread (the swap in `take`
// decides which), so sharing the cell moves a `T` between threads: `Send`
// is all `T` needs for both, as for a channel.
unsafe impl<T: Send> Send for TakeOnce<T> {}
// SAFETY: as above; `&TakeOnce<T>` gives no access to a `T` it has not
// moved out whole.
unsafe impl<T: Send> Sync for TakeOnce<T> {}

impl<T> TakeOnce<T> {
    /// A cell holding `value`.
    pub fn new(value: T) -> Self {
        Self {
            value: AtomicPtr::new(Box::into_raw(Box::new(value))),
        }
    }

    /// Takes the value, or `None` if another taker already has.
    ///
    /// AcqRel: the value was written before the cell was shared (the
    /// collector's push onto the worker's ring Releases it, the worker's
    /// pop Acquires it), so the winner would read it whole even with a
    /// Relaxed swap; the swap's atomicity alone picks the one winner.
    /// AcqRel keeps the cell sound when shared by a path that does not
    /// synchronise, at no cost on x86, where every swap is a full barrier.
    ///
    /// ```
    /// let cell = std::sync::Arc::new(convoy::internals::TakeOnce::new("batch"));
    /// let other = cell.clone();
    /// let t = std::thread::spawn(move || other.take().is_some());
    /// let here = cell.take().is_some();
    /// assert!(here ^ t.join().unwrap()); // exactly one of the two
    /// ```
    pub fn take(&self) -> Option<T> {
        let p = self.value.swap(ptr::null_mut(), Ordering::AcqRel);
        if p.is_null() {
            return None;
        }
        // SAFETY: `p` came from `Box::into_raw` in `new` and is non-null,
        // so this swap is the one that replaced it by null: no other call
        // can read it again, and the box is rebuilt exactly once.
        Some(*unsafe { Box::from_raw(p) })
    }

    /// Whether the value is gone (a hint: it may be taken just after a
    /// `false`). Relaxed: the collector reads it to skip started batches
    /// when it looks for one to recall, and a stale `false` only costs a
    /// `take` that finds nothing.
    ///
    /// ```
    /// let cell = convoy::internals::TakeOnce::new(());
    /// assert!(!cell.is_taken());
    /// cell.take();
    /// assert!(cell.is_taken());
    /// ```
    pub fn is_taken(&self) -> bool {
        self.value.load(Ordering::Relaxed).is_null()
    }
}

impl<T> Drop for TakeOnce<T> {
    fn drop(&mut self) {
        // A value nobody took (a runtime torn down with a batch staged)
        // is dropped with the cell. `&mut self`: no taker races this.
        drop(self.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering as O};
    use std::sync::Arc;

    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, O::Relaxed);
        }
    }

    #[test]
    fn the_value_is_taken_once_and_dropped_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = TakeOnce::new(Counted(drops.clone()));
        assert!(!cell.is_taken(), "a full cell is not taken");
        let first = cell.take();
        assert!(first.is_some() && cell.take().is_none() && cell.is_taken());
        drop(first);
        drop(cell);
        assert_eq!(drops.load(O::Relaxed), 1);
    }

    #[test]
    fn an_untaken_value_is_dropped_with_the_cell() {
        let drops = Arc::new(AtomicUsize::new(0));
        drop(TakeOnce::new(Counted(drops.clone())));
        assert_eq!(drops.load(O::Relaxed), 1);
    }

    /// Two threads race for each of many cells (a worker starting, the
    /// collector recalling): exactly one wins each, and every value is
    /// dropped once.
    #[test]
    fn racing_takers_win_each_cell_exactly_once() {
        let rounds = if cfg!(miri) { 20 } else { 2_000 };
        let drops = Arc::new(AtomicUsize::new(0));
        let cells: Vec<_> = (0..rounds)
            .map(|_| Arc::new(TakeOnce::new(Counted(drops.clone()))))
            .collect();
        let other = cells.clone();
        let t = std::thread::spawn(move || other.iter().filter(|c| c.take().is_some()).count());
        let here = cells.iter().filter(|c| c.take().is_some()).count();
        let there = t.join().unwrap();
        assert_eq!(here + there, rounds);
        drop(cells);
        assert_eq!(drops.load(O::Relaxed), rounds);
    }
}
