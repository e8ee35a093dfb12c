//! Observing the runtime: outcome counters, SLA latency tracking, the
//! Prometheus exposition.
//!
//! * `stats`: outcome counters per priority, written without a lock
//!   ([`Stats`](crate::Stats)).
//! * `sla`: latency histograms per priority, recorded by their owning
//!   threads and published on demand ([`SlaReport`](crate::SlaReport)).
//! * `refresh`: the handshake that asks each recorder for a fresh copy.
//! * [`metrics`](crate::metrics): the Prometheus text exposition.

pub mod metrics;
pub(crate) mod refresh;
pub(crate) mod sla;
pub(crate) mod stats;
