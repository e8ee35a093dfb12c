//! convoy batches requests for GPU inference without a lock on the hot path.
//!
//! Many producer threads submit requests with a priority, a deadline and a
//! cost; one collector thread drains them from a sharded lock-free intake,
//! orders them (priority, aging, deadlines), places each batch on a worker
//! whose capacity it reserves in its own ledger, and hands the batch to that
//! worker. Every accepted request ends in exactly one [`Outcome`], delivered
//! through its [`Ticket`] (blocking, timed, polled or `.await`ed).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use convoy::{Config, Failure, InsertPolicy, Priority, Request, Runtime};
//!
//! let rt = Runtime::builder()
//!     .config(Config { cpu_workers: 2, ..Config::default() })
//!     .batch_fn(|inputs: &[Vec<f32>]| -> Vec<Vec<f32>> {
//!         inputs.iter().map(|v| v.iter().map(|x| x * 2.0).collect()).collect()
//!     })
//!     .build()?;
//! let handle = rt.handle(); // Clone + Send + Sync
//!
//! let ticket = handle
//!     .submit(Request::new(vec![1.0, 2.0]).priority(Priority::High).deadline(Duration::from_millis(500)))
//!     .expect("room in the queue");
//! assert_eq!(ticket.wait(), Ok(vec![2.0, 4.0]));
//!
//! let tickets = handle
//!     .submit_batch(vec![Request::new(vec![1.0]), Request::new(vec![3.0])], InsertPolicy::AllOrNothing)
//!     .expect("room for both");
//! assert_eq!(tickets.len(), 2);
//!
//! rt.shutdown(); // finishes what was accepted, refuses the rest
//! assert!(matches!(
//!     handle.submit(Request::new(vec![0.0])).map_err(|e| e.kind),
//!     Err(convoy::SubmitErrorKind::ShuttingDown)
//! ));
//! let stats = rt.stats().total();
//! assert_eq!(stats.inserted, stats.ended()); // nothing lost
//! # let _ = Failure::Expired;
//! # Ok::<(), convoy::BuildError>(())
//! ```
//!
//! # Layers
//!
//! * [`ring`]: our bounded lock-free MPSC ring (push hands the value back
//!   when full; all-or-nothing push of `k` items).
//! * [`intake`]: `S` shards × 5 [`Priority`] levels of rings, with
//!   [`InsertPolicy`], an admission bound and lock-free statistics.
//! * [`ticket`]: the one-shot completion slot.
//! * [`order`]: the ordering rule and its starvation bound. Under
//!   overload, with [`Config::shed`] on (off by default), the collector
//!   sheds the least urgent levels at submit
//!   ([`SubmitErrorKind::Overloaded`]), so that the bound and the urgent
//!   levels' latency hold for what it accepts.
//! * [`ledger`], [`placement`], [`planner`]: one batch decision (order,
//!   place, reserve), single-owner.
//! * [`Runtime`]: the collector and worker threads around them.
//! * [`model`]: the built-in pool-dense model (CPU reference).
//! * [`kernel`]: a device kernel's source, weights and packing; `cuda`
//!   (feature `cuda`, on by default) runs it through cudarc, one launch per
//!   batch, pipelined per worker.
//! * `sync` (internal): the std/loom switch, so `loom-tests/` checks this
//!   very code.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod clearing;
mod clock;
mod config;
mod control;
#[cfg(feature = "cuda")]
pub mod cuda;
mod dedup;
mod doorbell;
mod executor;
mod gate;
pub mod intake;
pub mod kernel;
pub mod ledger;
pub mod metrics;
pub mod model;
pub mod order;
mod outcome;
pub mod placement;
pub mod planner;
pub mod plot;
mod priority;
mod refresh;
pub mod replay;
mod request;
pub mod ring;
mod runtime;
#[cfg(feature = "server")]
pub mod server;
mod shed;
pub mod sla;
mod stats;
mod sync;
pub mod ticket;
pub mod trace;
mod twins;

pub use config::{
    BatchingConfig, Capacity, Config, ConfigError, DeadlineAction, OrderingPolicy, PlacementPolicy,
    PlacementReason, PreferredBatchSizes, UnknownPolicy, WorkerSpec, MAX_WORKERS,
};
pub use executor::{BatchFn, Executor, Lane};
pub use request::{Cost, Deadline, Request};
pub use runtime::{
    BatchSubmitError, BatchSubmitErrorKind, BuildError, Builder, Handle, Health, Runtime,
    SubmitError, SubmitErrorKind, Submitter, SLA_REFRESH_WAIT,
};
pub use shed::DEFAULT_SHED_AT;
pub use sla::{SlaReport, SloTarget};
pub use stats::{PriorityStats, Stats, BATCH_SIZE_BOUNDS};

/// The internal lock-free protocols, exposed only to the loom models.
#[cfg(loom)]
#[doc(hidden)]
pub mod loom_exports {
    pub use crate::clearing::Clearing;
    pub use crate::control::{Mode, Notice, RunMode, Watch};
    pub use crate::doorbell::Doorbell;
    pub use crate::gate::Gate;
    pub use crate::refresh::{Answers, Refresh};
    pub use crate::shed::Shedding;
    pub use crate::stats::{Counters, Ended};
}

/// The collector's dedup index, exposed only so `benches/twins.rs` can
/// measure it against the plain map and a locked set; not part of the API.
#[doc(hidden)]
pub mod bench_exports {
    pub use crate::twins::{Twins, WaitingKeys};
}

pub use intake::{Intake, IntakeConfig};
pub use outcome::{Failure, Outcome};
pub use priority::{InsertPolicy, Priority, UnknownPriority};
pub use ticket::{Completer, Ticket};

/// The README's example is compiled and run as a doc test, so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
