//! The `convoy` command's library: trace loading, replay, the report and
//! its plot. The binary (`src/main.rs`) is a thin layer of argument parsing
//! over these; the benches and tests of this crate use them directly.
//!
//! This is tooling around the batching library, not part of it: a server
//! that embeds `convoy` compiles none of it.

#![warn(missing_docs)]

pub mod plot;
pub mod replay;
pub mod tenants;
pub mod trace;
