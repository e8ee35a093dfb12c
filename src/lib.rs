//! convoy batches requests for GPU inference without a lock on the hot path.
//!
//! Many producer threads submit requests with a priority, a deadline and a
//! cost; one collector thread drains them from a sharded lock-free intake,
//! orders them (priority, aging, deadlines), places each batch on a worker
//! whose capacity it reserves in its own ledger, and hands the batch to that
//! worker. Every accepted request ends in exactly one [`Outcome`], delivered
//! through its [`Ticket`] (blocking, timed, polled or `.await`ed).
//!
//! # Embedding it
//!
//! ```
//! use convoy::{Priority, Request, Runtime};
//! use std::time::Duration;
//!
//! let rt = Runtime::builder()
//!     .batch_fn(|xs: &[Vec<f32>]| xs.iter().map(|v| v.iter().sum::<f32>()).collect())
//!     .build()?;
//! let handle = rt.handle(); // Clone + Send + Sync: one per producer thread
//! let request = Request::new(vec![1.0, 2.0]).priority(Priority::High).deadline(Duration::from_millis(500));
//! assert_eq!(handle.submit(request)?.wait(), Ok(3.0)); // or `handle.call(request).await`
//! rt.shutdown(); // finishes what was accepted, refuses the rest
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What it promises
//!
//! ```
//! use convoy::{Config, InsertPolicy, Request, Runtime, SubmitErrorKind};
//!
//! let rt = Runtime::builder()
//!     .config(Config { cpu_workers: 2, ..Config::default() })
//!     .batch_fn(|xs: &[u32]| xs.iter().map(|x| x * 2).collect())
//!     .build()?;
//! let handle = rt.handle();
//! let tickets = handle
//!     .submit_batch(vec![Request::new(1), Request::new(3)], InsertPolicy::AllOrNothing)
//!     .expect("room for both");
//! let outputs: Vec<_> = tickets.into_iter().map(|t| t.wait()).collect();
//! assert_eq!(outputs, [Ok(2), Ok(6)]);
//!
//! rt.shutdown();
//! let refused = handle.submit(Request::new(5)).unwrap_err();
//! assert_eq!(refused.kind, SubmitErrorKind::ShuttingDown);
//! assert_eq!(*refused.request.input(), 5); // a refused request is handed back
//! let stats = rt.stats().total();
//! assert_eq!(stats.inserted, stats.ended()); // every accepted request ended once
//! # Ok::<(), convoy::BuildError>(())
//! ```
//!
//! # Stages
//!
//! The source folders are the pipeline, and each imports only from the
//! ones before it:
//!
//! * `intake/`: the [`ring`] every lane is made of, the sharded [`Intake`]
//!   of `S` shards × 5 [`Priority`] levels, the submit gate, the collector's
//!   doorbell, and shedding under overload ([`Config::shed`]).
//! * `config/`: every knob ([`Config`]), its validation and its TOML file.
//! * `plan/`: one batch decision, single-owner: the ordering rule (aging,
//!   deadlines) and its starvation bound, placement, the capacity ledger,
//!   deduplication.
//! * `observe/`: [`Stats`], the [`SlaReport`] and the Prometheus
//!   exposition ([`metrics`]).
//! * `device/`: the [`Executor`] trait and its pipelined [`Lane`], the
//!   built-in [`model`], a device [`kernel`]'s packing, and `cuda` (feature
//!   `cuda`, on by default): one batched launch per worker batch through
//!   cudarc, two batches in flight per worker.
//! * `runtime/`: [`Runtime`], [`Handle`] and the collector and worker
//!   threads around the stages.
//! * `sync.rs` (internal): the std/loom switch, so `loom-tests/` checks this
//!   very code.
//!
//! The HTTP server (`convoy-server`) and the `convoy` command with its
//! trace replay (`convoy-cli`) are crates of their own: embedding the
//! library compiles neither.

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
    BatchDelay, BatchingConfig, Capacity, Config, ConfigError, DeadlineAction, Fairness,
    LaunchCause, OrderingPolicy, PlacementPolicy, PlacementReason, Preemption, PreferredBatchSizes,
    SloTarget, TenantOverride, TenantsConfig, UnknownPolicy, WorkerSpec, MAX_DISPLACEMENTS,
    MAX_TENANT_LEN, MAX_TOP_N, MAX_WEIGHT, MAX_WORKERS,
};
pub use device::chunked::Chunked;
#[cfg(feature = "cuda")]
pub use device::cuda;
pub use device::executor::{BatchFn, Executor, Lane};
pub use device::stop::{Interruptible, Stop, StopTicket};
pub use device::{kernel, model};
pub use intake::shed::DEFAULT_SHED_AT;
pub use intake::{ring, Intake, IntakeConfig};
pub use observe::metrics;
pub use observe::sla::{Percentiles, PrioritySla, SlaReport, TenantSla, Violation};
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
    pub use crate::runtime::handoff::TakeOnce;
}

/// The collector's single-owner machinery (and the take-once cell it
/// hands batches to workers in), exposed only so that the
/// benches (`decide`, `twins`) and the model tests (`ledger_model`) run
/// the code the collector runs. Not part of the API: no semver promise.
#[doc(hidden)]
pub mod internals {
    pub use crate::intake::twins::{Twins, WaitingKeys};
    pub use crate::plan::{ledger, order, pace, placement, planner};
    pub use crate::runtime::handoff::TakeOnce;
}

/// The README's example is compiled and run as a doc test, so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
