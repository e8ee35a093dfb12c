//! A one-shot completion slot: one [`Completer`] delivers exactly one
//! [`Outcome`] to one [`Ticket`].
//!
//! # State bits
//!
//! One `AtomicUsize` carries three bits; every transition is a single
//! read-modify-write, so the two sides always agree on who owns what.
//!
//! | bit          | set by    | meaning |
//! |--------------|-----------|---------|
//! | `COMPLETE`   | completer | the value cell is written; the ticket may take it |
//! | `CLOSED`     | ticket    | cancelled or dropped; the completer takes its value back |
//! | `WAKER_SET`  | ticket    | the waker cell holds the waiter's waker; the completer must wake it |
//!
//! Ownership of the **value cell**: the completer writes it before setting
//! `COMPLETE`. If its `fetch_or(COMPLETE)` finds `CLOSED`, the ticket has
//! promised never to read, and the completer takes the value back. Otherwise
//! the ticket owns it from the moment it observes `COMPLETE`.
//!
//! Ownership of the **waker cell**: the ticket writes it only while
//! `WAKER_SET` is clear and then sets the bit; to replace it, the ticket
//! first clears the bit, and if that `fetch_and` finds `COMPLETE` already set
//! the completer may be reading the waker, so the ticket leaves it alone.
//! The completer only reads the waker, and only if `WAKER_SET` was set when
//! its `fetch_or(COMPLETE)` ran.
//!
//! A blocking [`Ticket::wait`] spins a bounded number of times, then
//! registers a waker that unparks the thread and parks: the same path an
//! `.await` takes, so both are covered by the same loom models.
//!
//! # Example
//!
//! ```
//! use convoy::{ticket, Failure};
//!
//! let (completer, ticket) = ticket::pair::<u32>();
//! std::thread::spawn(move || completer.complete(Ok(42)));
//! assert_eq!(ticket.wait(), Ok(42));
//!
//! let (completer, mut ticket) = ticket::pair::<u32>();
//! assert!(ticket.cancel()); // before any result: nothing was lost
//! assert_eq!(completer.complete(Ok(1)), Err(Ok(1))); // handed back
//! assert_eq!(ticket.wait(), Err(Failure::Cancelled));
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crate::outcome::{Failure, Outcome};
use crate::sync::{thread, Arc, AtomicUsize, Ordering, UnsafeCell, SPIN_LIMIT};

const COMPLETE: usize = 0b001;
const CLOSED: usize = 0b010;
const WAKER_SET: usize = 0b100;

struct Inner<O> {
    state: AtomicUsize,
    value: UnsafeCell<Option<Outcome<O>>>,
    waker: UnsafeCell<Option<Waker>>,
}

// SAFETY: the cells are handed between the two sides by the state protocol
// above (each access is preceded by an Acquire of the bit that grants it and
// followed by a Release of the bit that gives it up); `O` moves across
// threads, so it must be `Send`. `Waker` is `Send + Sync`.
unsafe impl<O: Send> Send for Inner<O> {}
// SAFETY: as above; no `&O` is ever shared between threads.
unsafe impl<O: Send> Sync for Inner<O> {}

impl<O> Inner<O> {
    /// Takes the value after `COMPLETE` was observed with Acquire.
    ///
    /// # Safety
    /// The caller is the ticket side, saw `COMPLETE`, and has not set `CLOSED`
    /// before the completer's `fetch_or(COMPLETE)`.
    unsafe fn take_value(&self) -> Outcome<O> {
        // SAFETY: by the caller's contract the ticket owns the value cell.
        self.value
            .with_mut(|p| unsafe { (*p).take() })
            .expect("COMPLETE is set only after the value cell is written, and taken once")
    }
}

/// Creates a connected completer and ticket.
///
/// ```
/// let (c, t) = convoy::ticket::pair::<&str>();
/// c.complete(Ok("done")).unwrap();
/// assert_eq!(t.wait(), Ok("done"));
/// ```
pub fn pair<O>() -> (Completer<O>, Ticket<O>) {
    let inner = Arc::new(Inner {
        state: AtomicUsize::new(0),
        value: UnsafeCell::new(None),
        waker: UnsafeCell::new(None),
    });
    (
        Completer {
            inner: Some(inner.clone()),
        },
        Ticket {
            inner,
            local: Local::Waiting,
        },
    )
}

/// The side that delivers the outcome. Dropping it without calling
/// [`complete`](Self::complete) delivers [`Failure::ShutDown`], so a waiter
/// can never hang on a completer that went away.
pub struct Completer<O> {
    inner: Option<Arc<Inner<O>>>,
}

impl<O> fmt::Debug for Completer<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completer")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl<O> Completer<O> {
    /// Delivers `outcome`. Returns it back when the ticket was cancelled or
    /// dropped first, so the caller can count it as such (and drop it).
    ///
    /// ```
    /// let (c, t) = convoy::ticket::pair::<u8>();
    /// drop(t);
    /// assert_eq!(c.complete(Ok(3)), Err(Ok(3)));
    /// ```
    pub fn complete(mut self, outcome: Outcome<O>) -> Result<(), Outcome<O>> {
        let inner = self
            .inner
            .take()
            .expect("the inner is only taken by complete, which consumes self");
        Self::deliver(&inner, outcome)
    }

    fn deliver(inner: &Inner<O>, outcome: Outcome<O>) -> Result<(), Outcome<O>> {
        // SAFETY: before COMPLETE is set only the completer touches the value
        // cell, and there is exactly one completer (this one, consumed).
        inner.value.with_mut(|p| unsafe { *p = Some(outcome) });
        // AcqRel: Release publishes the value written above to the ticket's
        // Acquire; Acquire makes the waker written before WAKER_SET visible.
        let prev = inner.state.fetch_or(COMPLETE, Ordering::AcqRel);
        if prev & CLOSED != 0 {
            // SAFETY: CLOSED was set before COMPLETE, so the ticket promised
            // never to read the value cell: it is ours again.
            let back = inner.value.with_mut(|p| unsafe { (*p).take() });
            return Err(back.expect("written just above and not taken by a closed ticket"));
        }
        if prev & WAKER_SET != 0 {
            // SAFETY: WAKER_SET was set when COMPLETE went in, so the ticket
            // wrote the waker and will not touch it again (see module docs).
            inner.waker.with(|w| unsafe {
                if let Some(w) = &*w {
                    w.wake_by_ref();
                }
            });
        }
        Ok(())
    }

    /// Whether this completer delivers to `ticket`.
    pub(crate) fn is_for(&self, ticket: &Ticket<O>) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|inner| Arc::ptr_eq(inner, &ticket.inner))
    }

    /// Whether the ticket was cancelled or dropped, so the work can be
    /// skipped. A `false` may be stale by the time it is used.
    ///
    /// ```
    /// let (c, mut t) = convoy::ticket::pair::<u8>();
    /// assert!(!c.is_cancelled());
    /// t.cancel();
    /// assert!(c.is_cancelled());
    /// ```
    pub fn is_cancelled(&self) -> bool {
        self.inner.as_ref().is_some_and(|inner| {
            // Acquire: a caller that skips work on `true` reads nothing the
            // ticket wrote, but pairing with the ticket's Release keeps the
            // answer monotonic with anything else it published before.
            inner.state.load(Ordering::Acquire) & CLOSED != 0
        })
    }
}

impl<O> Drop for Completer<O> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            // A completer that never delivered: deliver ShutDown so the
            // ticket never waits forever. An `Err` means nobody is waiting.
            let _ = Self::deliver(&inner, Err(Failure::ShutDown));
        }
    }
}

/// The caller's side: wait for the outcome, poll it, or cancel.
///
/// The outcome is delivered once. After [`wait_timeout`](Self::wait_timeout)
/// or [`try_take`](Self::try_take) returned it, they return `None` and
/// [`wait`](Self::wait) returns `Cancelled` at once; a `Ticket` polled as a
/// `Future` after it returned `Ready` stays `Pending`.
///
/// Dropping a ticket closes it: a request not yet launched is then skipped by
/// the collector, and a result that arrives later is dropped.
#[must_use = "dropping a ticket cancels its request; keep it, `.wait()` or `.await` it"]
pub struct Ticket<O> {
    inner: Arc<Inner<O>>,
    /// What this side has done; single-owner, so a plain field.
    local: Local,
}

/// The ticket side's own progress, beside the shared state bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Local {
    /// No outcome handed out yet.
    Waiting,
    /// `cancel()` ran (CLOSED is set); `Cancelled` is still to be reported.
    Cancelled,
    /// The outcome was handed out.
    Done,
}

impl<O> fmt::Debug for Ticket<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("ready", &self.is_ready())
            .field("local", &self.local)
            .finish()
    }
}

struct ThreadWaker(thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.unpark();
    }
}

impl<O> Ticket<O> {
    /// Whether an outcome has arrived and not been taken.
    ///
    /// ```
    /// let (c, t) = convoy::ticket::pair::<u8>();
    /// assert!(!t.is_ready());
    /// c.complete(Ok(1)).unwrap();
    /// assert!(t.is_ready());
    /// ```
    pub fn is_ready(&self) -> bool {
        // Acquire: pairs with the completer's Release of COMPLETE.
        self.local == Local::Waiting && self.inner.state.load(Ordering::Acquire) & COMPLETE != 0
    }

    /// Blocks until the outcome arrives: a bounded spin, then park.
    ///
    /// ```
    /// let (c, t) = convoy::ticket::pair::<u8>();
    /// c.complete(Err(convoy::Failure::Expired)).unwrap();
    /// assert_eq!(t.wait(), Err(convoy::Failure::Expired));
    /// ```
    pub fn wait(mut self) -> Outcome<O> {
        if self.local == Local::Done {
            // Taken before (by `try_take`/`wait_timeout`): there is no second
            // outcome, and blocking would never end.
            return Err(Failure::Cancelled);
        }
        if let Some(out) = self.spin() {
            return out;
        }
        let waker = Waker::from(std::sync::Arc::new(ThreadWaker(thread::current())));
        loop {
            if let Poll::Ready(out) = self.poll_take(&waker) {
                return out;
            }
            thread::park();
        }
    }

    /// Blocks up to `timeout`; `None` when it elapsed first (the ticket stays
    /// usable) or the outcome was already taken.
    ///
    /// ```
    /// use std::time::Duration;
    /// let (c, mut t) = convoy::ticket::pair::<u8>();
    /// assert_eq!(t.wait_timeout(Duration::from_millis(1)), None);
    /// c.complete(Ok(9)).unwrap();
    /// assert_eq!(t.wait_timeout(Duration::from_secs(1)), Some(Ok(9)));
    /// assert_eq!(t.wait_timeout(Duration::from_secs(1)), None); // taken
    /// ```
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Outcome<O>> {
        if self.local == Local::Done {
            return None;
        }
        if let Some(out) = self.spin() {
            return Some(out);
        }
        let deadline = Instant::now().checked_add(timeout);
        let waker = Waker::from(std::sync::Arc::new(ThreadWaker(thread::current())));
        loop {
            if let Poll::Ready(out) = self.poll_take(&waker) {
                return Some(out);
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::MAX,
            };
            if left.is_zero() {
                return None;
            }
            crate::sync::park_timeout(left);
        }
    }

    /// Takes the outcome if it has arrived; never blocks.
    ///
    /// ```
    /// let (c, mut t) = convoy::ticket::pair::<u8>();
    /// assert_eq!(t.try_take(), None);
    /// c.complete(Ok(5)).unwrap();
    /// assert_eq!(t.try_take(), Some(Ok(5)));
    /// assert_eq!(t.try_take(), None);
    /// ```
    pub fn try_take(&mut self) -> Option<Outcome<O>> {
        if let Some(out) = self.local_outcome() {
            return out;
        }
        if self.is_ready() {
            self.local = Local::Done;
            // SAFETY: COMPLETE observed with Acquire in `is_ready`, and this
            // ticket has not closed (closing leaves `Waiting`).
            Some(unsafe { self.inner.take_value() })
        } else {
            None
        }
    }

    /// Cancels the request. Returns `true` when no result had arrived, so
    /// the request will end as cancelled (not executed, if not yet
    /// launched); `false` when a result had arrived (it is dropped) or the
    /// outcome was already taken. After `cancel`, waiting yields
    /// [`Failure::Cancelled`] unless the outcome was already taken.
    ///
    /// ```
    /// let (c, mut t) = convoy::ticket::pair::<u8>();
    /// c.complete(Ok(1)).unwrap();
    /// assert!(!t.cancel()); // too late: the result is dropped
    /// assert_eq!(t.wait(), Err(convoy::Failure::Cancelled));
    /// ```
    pub fn cancel(&mut self) -> bool {
        if self.local != Local::Waiting {
            return false;
        }
        self.local = Local::Cancelled;
        // AcqRel: Acquire so that, if COMPLETE is already set, the value is
        // visible before we drop it; Release orders this ticket's earlier
        // waker writes before the completer may act on CLOSED.
        let prev = self.inner.state.fetch_or(CLOSED, Ordering::AcqRel);
        if prev & COMPLETE != 0 {
            // SAFETY: COMPLETE came first, so the ticket owns the value.
            drop(unsafe { self.inner.take_value() });
            false
        } else {
            true
        }
    }

    /// What the local state alone decides: `None` when the shared state must
    /// be consulted; `Some(Some(Cancelled))` once after `cancel`;
    /// `Some(None)` after the outcome was handed out.
    fn local_outcome(&mut self) -> Option<Option<Outcome<O>>> {
        match self.local {
            Local::Waiting => None,
            Local::Cancelled => {
                self.local = Local::Done;
                Some(Some(Err(Failure::Cancelled)))
            }
            Local::Done => Some(None),
        }
    }

    fn spin(&mut self) -> Option<Outcome<O>> {
        for _ in 0..SPIN_LIMIT {
            if let Some(out) = self.try_take() {
                return Some(out);
            }
            crate::sync::spin_loop();
        }
        None
    }

    /// The shared poll path of `wait`, `wait_timeout` and `Future::poll`.
    fn poll_take(&mut self, waker: &Waker) -> Poll<Outcome<O>> {
        match self.local_outcome() {
            Some(Some(out)) => return Poll::Ready(out),
            Some(None) => return Poll::Pending,
            None => {}
        }
        let inner = &*self.inner;
        // Acquire: pairs with the completer's Release of COMPLETE.
        let mut state = inner.state.load(Ordering::Acquire);
        if state & COMPLETE != 0 {
            self.local = Local::Done;
            // SAFETY: COMPLETE observed with Acquire; we have not closed.
            return Poll::Ready(unsafe { inner.take_value() });
        }
        if state & WAKER_SET != 0 {
            // SAFETY: while WAKER_SET is set the completer only reads the
            // waker, so a shared read here is fine.
            let same = inner
                .waker
                .with(|w| unsafe { (*w).as_ref().is_some_and(|w| w.will_wake(waker)) });
            if same {
                return Poll::Pending;
            }
            // AcqRel: Acquire to see COMPLETE and the value; Release is not
            // needed for the clear itself but keeps the RMW chain uniform.
            state = inner.state.fetch_and(!WAKER_SET, Ordering::AcqRel);
            if state & COMPLETE != 0 {
                // The completer may be reading the old waker right now: leave
                // the cell alone (it is dropped with `Inner`).
                self.local = Local::Done;
                // SAFETY: COMPLETE observed with Acquire; we have not closed.
                return Poll::Ready(unsafe { inner.take_value() });
            }
        }
        // SAFETY: WAKER_SET is clear and our last RMW/load saw no COMPLETE,
        // so the completer will not read the waker cell unless we set the bit
        // again below (after this write).
        inner
            .waker
            .with_mut(|w| unsafe { *w = Some(waker.clone()) });
        // AcqRel: Release publishes the waker to the completer's Acquire;
        // Acquire sees the value if COMPLETE raced in first.
        state = inner.state.fetch_or(WAKER_SET, Ordering::AcqRel);
        if state & COMPLETE != 0 {
            self.local = Local::Done;
            // SAFETY: COMPLETE observed with Acquire; we have not closed.
            return Poll::Ready(unsafe { inner.take_value() });
        }
        Poll::Pending
    }
}

impl<O> Drop for Ticket<O> {
    fn drop(&mut self) {
        if self.local == Local::Waiting {
            // Release: nothing the completer reads depends on this thread's
            // data, but it orders the waker write before the close. The value
            // (if any) is dropped with `Inner` by whichever side goes last.
            self.inner.state.fetch_or(CLOSED, Ordering::Release);
        }
    }
}

impl<O> Future for Ticket<O> {
    type Output = Outcome<O>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<O>> {
        self.get_mut().poll_take(cx.waker())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A completer's `Debug` says whether its caller went away: what a
    /// log line about an undeliverable outcome needs.
    #[test]
    fn a_completer_shows_whether_its_ticket_was_cancelled() {
        let (c, t) = pair::<u8>();
        assert_eq!(format!("{c:?}"), "Completer { cancelled: false }");
        drop(t);
        assert_eq!(format!("{c:?}"), "Completer { cancelled: true }");
    }

    /// A completer knows its own ticket and no other (how a partly
    /// refused `submit_batch` tells which tickets to keep), and a ticket's
    /// `Debug` says whether its outcome is ready.
    #[test]
    fn a_completer_knows_its_ticket_and_a_ticket_shows_readiness() {
        let (c1, t1) = pair::<u8>();
        let (c2, t2) = pair::<u8>();
        assert!(c1.is_for(&t1) && c2.is_for(&t2));
        assert!(!c1.is_for(&t2) && !c2.is_for(&t1));
        assert_eq!(format!("{t1:?}"), "Ticket { ready: false, local: Waiting }");
        c1.complete(Ok(1)).unwrap();
        assert!(
            format!("{t1:?}").starts_with("Ticket { ready: true"),
            "{t1:?}"
        );
        drop((c2, t2));
    }

    #[test]
    fn completer_drop_delivers_shutdown() {
        let (c, t) = pair::<u8>();
        drop(c);
        assert_eq!(t.wait(), Err(Failure::ShutDown));
    }

    #[test]
    fn wait_across_threads_parks_and_wakes() {
        for _ in 0..200 {
            let (c, t) = pair::<Vec<u8>>();
            let h = std::thread::spawn(move || t.wait());
            std::thread::yield_now();
            c.complete(Ok(vec![1, 2])).unwrap();
            assert_eq!(h.join().unwrap(), Ok(vec![1, 2]));
        }
    }

    #[test]
    fn dropping_ticket_releases_value() {
        let marker = std::sync::Arc::new(());
        let (c, t) = pair::<std::sync::Arc<()>>();
        c.complete(Ok(marker.clone())).unwrap();
        drop(t);
        assert_eq!(std::sync::Arc::strong_count(&marker), 1);
    }

    #[test]
    fn future_completes_under_a_simple_executor() {
        let (c, t) = pair::<u8>();
        let h = std::thread::spawn(move || c.complete(Ok(7)));
        let out = block_on(t);
        h.join().unwrap().unwrap();
        assert_eq!(out, Ok(7));
    }

    #[test]
    fn cancel_after_take_is_a_no_op() {
        let (c, mut t) = pair::<u8>();
        c.complete(Ok(1)).unwrap();
        assert_eq!(t.try_take(), Some(Ok(1)));
        assert!(!t.cancel());
        assert_eq!(t.try_take(), None);
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        let waker = Waker::from(std::sync::Arc::new(ThreadWaker(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }
}
