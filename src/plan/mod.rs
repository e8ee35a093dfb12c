//! Stage 2, plan: one batch decision, single-owner and synchronous.
//!
//! * `order`: the collector's ordered set of waiting requests and the
//!   ordering rule (priority, aging, deadlines) with its starvation bound.
//! * `placement`: which worker a batch goes to, and why.
//! * `ledger`: the collector's in-memory capacity ledger.
//! * `planner`: order, place and reserve, the decision the `decide` bench
//!   measures.
//! * `dedup`: requests with the same key that wait together run once.
//! * `pace`: whether requests are still arriving (the adaptive delay).
//!
//! The collector owns all of it and runs it with no lock and no atomics.

pub mod dedup;
pub(crate) mod fair;
pub mod ledger;
pub mod order;
pub mod pace;
pub mod placement;
pub mod planner;
pub(crate) mod run_heap;
