//! convoy batches requests for GPU inference without a lock on the hot path.
//!
//! Many producer threads submit requests with a priority; one collector
//! drains them from a sharded lock-free intake, forms batches and hands each
//! request's outcome back through a one-shot [`Ticket`]. This crate is built
//! up in layers; the ones here are:
//!
//! * [`ring`]: our bounded lock-free MPSC ring (push hands the value back
//!   when full; all-or-nothing push of `k` items).
//! * [`intake`]: `S` shards × 5 [`Priority`] levels of rings, with
//!   [`InsertPolicy`] and lock-free statistics.
//! * [`ticket`]: the one-shot completion slot (blocking wait, timed wait,
//!   `try_take`, `cancel`, and `Future`).
//! * `sync` (internal): the std/loom switch, so `loom-tests/` checks this very code.
//!
//! # Example
//!
//! A producer submits through the intake, the collector drains, runs the
//! batch and completes each ticket:
//!
//! ```
//! use convoy::intake::{Intake, IntakeConfig};
//! use convoy::{ticket, InsertPolicy, Priority};
//!
//! let (intake, mut collector) = Intake::new(IntakeConfig { shards: 2, lane_capacity: 64 })?;
//! let mut tickets = Vec::new();
//! for x in 0..4u32 {
//!     let (completer, ticket) = ticket::pair::<u32>();
//!     let prio = if x % 2 == 0 { Priority::High } else { Priority::Low };
//!     intake.push(prio, (x, completer), InsertPolicy::Enqueue).unwrap();
//!     tickets.push(ticket);
//! }
//!
//! let mut batch = Vec::new();
//! collector.drain(64, &mut batch);
//! for d in batch {
//!     let (x, completer) = d.item;
//!     collector.release(d.admission);
//!     completer.complete(Ok(x * 10)).unwrap();
//! }
//! let outputs: Vec<_> = tickets.into_iter().map(|t| t.wait().unwrap()).collect();
//! assert_eq!(outputs, [0, 10, 20, 30]);
//! # Ok::<(), convoy::intake::IntakeError>(())
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod config;
mod doorbell;
mod executor;
mod gate;
pub mod intake;
pub mod ledger;
pub mod model;
pub mod order;
mod outcome;
pub mod placement;
pub mod planner;
mod priority;
mod request;
pub mod ring;
mod runtime;
mod stats;
mod sync;
pub mod ticket;

pub use config::{
    BatchingConfig, Capacity, Config, ConfigError, DeadlineAction, PlacementPolicy,
    PlacementReason, WorkerSpec,
};
pub use executor::{BatchFn, Executor};
pub use request::{Cost, Deadline, Request};
pub use runtime::{
    BatchSubmitError, BuildError, Builder, Handle, Health, Runtime, SubmitError, SubmitErrorKind,
};
pub use stats::{PriorityStats, Stats};

/// The internal lock-free protocols, exposed only to the loom models.
#[cfg(loom)]
#[doc(hidden)]
pub mod loom_exports {
    pub use crate::doorbell::Doorbell;
    pub use crate::gate::Gate;
}

pub use intake::{Intake, IntakeConfig};
pub use outcome::{Failure, Outcome};
pub use priority::{InsertPolicy, Priority, UnknownPriority};
pub use ticket::{Completer, Ticket};

/// The README's example is compiled and run as a doc test, so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
