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

// The vocabulary every stage speaks, and the std/loom switch.
mod clock;
mod priority;
mod request;
mod sync;

// The pipeline, each stage importing only from the ones above it (checked
// by `tests/layering.rs`).
mod config;
mod device;
pub mod intake;
mod observe;
mod outcome;
mod plan;
mod runtime;

pub use config::{
    BatchingConfig, Capacity, Config, ConfigError, DeadlineAction, OrderingPolicy, PlacementPolicy,
    PlacementReason, PreferredBatchSizes, SloTarget, UnknownPolicy, WorkerSpec, MAX_WORKERS,
};
#[cfg(feature = "cuda")]
pub use device::cuda;
pub use device::executor::{BatchFn, Executor, Lane};
pub use device::{kernel, model};
pub use intake::shed::DEFAULT_SHED_AT;
pub use intake::{ring, Intake, IntakeConfig};
pub use observe::metrics;
pub use observe::sla::{Percentiles, PrioritySla, SlaReport, Violation};
pub use observe::stats::{PriorityStats, Stats, BATCH_SIZE_BOUNDS};
pub use outcome::ticket::{self, Completer, Ticket};
pub use outcome::{ExecutorError, Failure, Outcome};
pub use priority::{InsertPolicy, Priority, UnknownPriority};
pub use request::{Cost, Deadline, Request};
pub use runtime::{
    BatchSubmitError, BatchSubmitErrorKind, BuildError, Builder, Error, Handle, Health, Runtime,
    SubmitError, SubmitErrorKind, Submitter, SLA_REFRESH_WAIT,
};

/// The internal lock-free protocols, exposed only to the loom models.
#[cfg(loom)]
#[doc(hidden)]
pub mod loom_exports {
    pub use crate::intake::doorbell::Doorbell;
    pub use crate::intake::gate::Gate;
    pub use crate::intake::shed::Shedding;
    pub use crate::observe::refresh::{Answers, Refresh};
    pub use crate::observe::stats::{Counters, Ended};
    pub use crate::runtime::clearing::Clearing;
    pub use crate::runtime::control::{Mode, Notice, RunMode, Watch};
}

/// The collector's single-owner machinery, exposed only so that the
/// benches (`decide`, `twins`) and the model tests (`ledger_model`) run
/// the code the collector runs. Not part of the API: no semver promise.
#[doc(hidden)]
pub mod internals {
    pub use crate::intake::twins::{Twins, WaitingKeys};
    pub use crate::plan::{ledger, order, placement, planner};
}

/// The README's example is compiled and run as a doc test, so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
