//! The stop signal a running batch checks at its own boundaries (chunks of
//! a long job, steps of a multi-step one): raised when the collector asks
//! the batch's worker to stop it for more urgent work (preemption, only
//! for an executor that declares a re-run safe), or when every caller of
//! the batch has gone (tickets dropped or cancelled).
//!
//! # The protocol
//!
//! Each worker has one word, its *stop ticket*: the sequence number of
//! the batch the collector wants stopped (`u64::MAX`: none). The
//! collector stores a running batch's number there; the batch's
//! [`Stop`] compares it with its own number. Numbers are never reused, so
//! a request meant for one batch never stops the next, however late the
//! worker reads it (`loom-tests/tests/handoff.rs`,
//! `a_stop_meant_for_one_batch_never_stops_the_next`).

use crate::sync::{AtomicU64, Ordering};

/// How an executor's running batches may stop before they finish
/// ([`Executor::interruptible`](crate::Executor::interruptible)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Interruptible {
    /// Never: a running batch runs to the end (the default).
    #[default]
    No,
    /// Stops when every caller of the batch has gone, so no work is
    /// spent on answers nobody waits for. Its unfinished requests end
    /// cancelled.
    OnCancel,
    /// Also stops when the collector asks, for more urgent work that
    /// cannot be placed: running a request again from the start is safe
    /// (no side effect a second run would repeat). Its unfinished
    /// requests wait again with their arrival times, as displaced ones do.
    Rerun,
}

/// A worker's stop ticket (see the module docs), shared by the collector
/// and the worker.
#[derive(Debug)]
pub struct StopTicket(AtomicU64);

impl Default for StopTicket {
    fn default() -> Self {
        Self::new()
    }
}

impl StopTicket {
    /// No batch asked to stop.
    pub fn new() -> Self {
        Self(AtomicU64::new(u64::MAX))
    }

    /// Asks the batch numbered `seq` to stop. Relaxed: the ticket carries
    /// no data, only the request; a worker that reads it late stops at a
    /// later boundary (or finishes first), and the number keeps it from
    /// stopping any other batch.
    pub fn ask(&self, seq: u64) {
        self.0.store(seq, Ordering::Relaxed);
    }

    /// Whether the batch numbered `seq` is asked to stop.
    pub fn asked(&self, seq: u64) -> bool {
        self.0.load(Ordering::Relaxed) == seq
    }
}

/// What a running batch checks at its boundaries.
///
/// ```
/// use convoy::{Stop, StopTicket};
/// let ticket = StopTicket::new();
/// let callers_gone = || false;
/// let stop = Stop::new(&ticket, 7, &callers_gone);
/// assert!(!stop.requested());
/// ticket.ask(6); // another batch
/// assert!(!stop.requested());
/// ticket.ask(7);
/// assert!(stop.requested() && stop.preempted());
/// ```
pub struct Stop<'a> {
    /// `None`: never asked ([`Stop::never`]).
    ticket: Option<&'a StopTicket>,
    seq: u64,
    gone: &'a dyn Fn() -> bool,
}

impl<'a> Stop<'a> {
    /// The signal of batch `seq`, stopped by `ticket` or when `gone`
    /// says every caller has left. Built by the worker; public so that
    /// an executor's boundary logic can be tested alone.
    pub fn new(ticket: &'a StopTicket, seq: u64, gone: &'a dyn Fn() -> bool) -> Self {
        Self {
            ticket: Some(ticket),
            seq,
            gone,
        }
    }

    /// A signal that is never raised: for running an interruptible
    /// executor to the end (tests, a direct call).
    ///
    /// ```
    /// assert!(!convoy::Stop::never().requested());
    /// ```
    pub fn never() -> Stop<'static> {
        Stop {
            ticket: None,
            seq: 0,
            gone: &|| false,
        }
    }

    /// Whether the batch should stop at this boundary: the collector
    /// asked (preemption) or every caller has gone. Check it between
    /// chunks or steps; leave the requests not finished by then as `None`.
    pub fn requested(&self) -> bool {
        self.preempted() || (self.gone)()
    }

    /// Whether the collector asked this batch to stop for more urgent
    /// work (its unfinished requests will run again).
    pub fn preempted(&self) -> bool {
        self.ticket.is_some_and(|t| t.asked(self.seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_names_one_batch_and_callers_gone_stops_any() {
        let ticket = StopTicket::new();
        let here = || false;
        let (one, two) = (Stop::new(&ticket, 1, &here), Stop::new(&ticket, 2, &here));
        assert!(!one.requested() && !two.requested());
        ticket.ask(1);
        assert!(one.requested() && one.preempted());
        assert!(!two.requested(), "an ask for batch 1 never stops batch 2");
        let gone = || true;
        let left = Stop::new(&ticket, 3, &gone);
        assert!(left.requested() && !left.preempted());
        assert!(!Stop::never().requested());
    }
}
