//! The one switch between `std` and `loom`.
//!
//! Every lock-free structure in convoy (the ring, the ticket, the ledger's
//! release queue) takes its atomics, cells, `Arc` and thread primitives from
//! here, and so do the control-path handshakes that meet them (the mutex
//! and condvar of `clearing.rs`). Built normally this is `std`; built with
//! `RUSTFLAGS="--cfg loom"` it is `loom`, so the models in `loom-tests/`
//! exercise the very code that ships (the same pattern as tokio's
//! `loom/std` and `loom/mocked`).

// Not every structure uses every primitive; the switch offers them all.
#![allow(unused_imports)]

#[cfg(loom)]
mod imp {
    pub use loom::cell::UnsafeCell;
    pub use loom::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
    pub use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
    pub use loom::thread;

    /// Under loom a spin is a yield, so the model explores the other threads.
    #[inline]
    pub fn spin_loop() {
        loom::thread::yield_now();
    }

    /// loom models no clock: a timed park is a spurious wake-up (a yield),
    /// which every caller must already tolerate.
    #[inline]
    pub fn park_timeout(_dur: std::time::Duration) {
        loom::thread::yield_now();
    }

    /// Spins before parking. One under loom keeps the state space small while
    /// still covering the spin path.
    pub const SPIN_LIMIT: u32 = 1;

    /// A backoff step is one yield under loom, never more.
    pub const BACKOFF_MAX_LOG: u32 = 0;
}

#[cfg(not(loom))]
mod imp {
    pub use std::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
    pub use std::sync::{Arc, Condvar, Mutex, MutexGuard};
    pub use std::thread;

    /// `std::cell::UnsafeCell` with loom's closure API, so the same call sites
    /// compile against both. Zero cost: the closures are inlined.
    #[derive(Debug)]
    pub struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        /// Wraps `value`.
        #[inline]
        pub const fn new(value: T) -> Self {
            Self(std::cell::UnsafeCell::new(value))
        }

        /// Shared access through a raw pointer, as loom's `with`.
        #[inline]
        pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        /// Exclusive access through a raw pointer, as loom's `with_mut`.
        #[inline]
        pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }

    /// One step of a bounded spin.
    #[inline]
    pub fn spin_loop() {
        std::hint::spin_loop();
    }

    /// Parks this thread for at most `dur` (spurious wake-ups allowed).
    #[inline]
    pub fn park_timeout(dur: std::time::Duration) {
        std::thread::park_timeout(dur);
    }

    /// Spins before parking: long enough to catch an answer that is a few
    /// hundred nanoseconds away, short enough that two threads sharing one
    /// core do not burn each other's time slice.
    pub const SPIN_LIMIT: u32 = 64;

    /// The longest backoff step is `2^6 = 64` spins, as crossbeam's
    /// `Backoff::spin`: long enough to let a contended line settle, short
    /// next to a time slice.
    pub const BACKOFF_MAX_LOG: u32 = 6;
}

/// Exponential backoff for a CAS retry loop: each failed attempt spins twice
/// as long as the last, up to `2^BACKOFF_MAX_LOG` spins. Without it,
/// producers that lose a race on a shared index retry at once and keep
/// the line moving between cores, so none of them gets through.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    step: u32,
}

impl Backoff {
    /// One wait, longer than the one before.
    // Under loom `BACKOFF_MAX_LOG` is 0, so clippy sees the cap as a no-op;
    // it is the std build's cap that matters.
    #[cfg_attr(
        loom,
        allow(clippy::unnecessary_min_or_max, clippy::absurd_extreme_comparisons)
    )]
    #[inline]
    pub(crate) fn spin(&mut self) {
        for _ in 0..1u32 << self.step.min(imp::BACKOFF_MAX_LOG) {
            imp::spin_loop();
        }
        if self.step < imp::BACKOFF_MAX_LOG {
            self.step += 1;
        }
    }
}

pub(crate) use imp::*;
