//! One tenant's quota of requests and tokens queued: taken on the
//! producer's thread at submit, given back when the request leaves the
//! queue (launched, expired, cancelled, refused further on). No lock.
//!
//! # Protocol
//!
//! Two counters, `queued` and `tokens`, each changed only by read-modify-
//! write operations, so each has one modification order that every thread
//! agrees on. A take is a compare-and-swap loop that adds only while the
//! sum stays within the limit ([`AtomicU64::fetch_update`]): of any set of
//! takes racing for the last unit, exactly one wins, and the counter never
//! passes its limit, not even for an instant. A give-back is a
//! `fetch_sub` of what was taken.
//!
//! A take of both checks requests first, then tokens, and gives the
//! request back when the tokens refuse. Between the two a racing take may
//! find the request count one higher than it ends up: a refusal it would
//! not have met a moment later, never an acceptance past a limit.
//!
//! Every operation is `Relaxed`: the counters publish no other data (the
//! request itself travels through the intake's ring, with its own
//! Release/Acquire), and a count's exactness needs only the single
//! modification order. Checked by `loom-tests/tests/quota.rs`.

use crate::sync::{AtomicU64, Ordering};

/// "No limit".
pub const UNLIMITED: u64 = u64::MAX;

/// Which limit refused a take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaExceeded {
    /// The count of requests queued is at its limit.
    Requests {
        /// The limit.
        limit: u64,
    },
    /// The request's tokens would take the tokens queued past the limit.
    Tokens {
        /// The limit.
        limit: u64,
    },
}

/// One tenant's counts and limits; see the module docs.
#[derive(Debug)]
pub struct Quota {
    queued: AtomicU64,
    tokens: AtomicU64,
    max_queued: AtomicU64,
    max_tokens: AtomicU64,
}

impl Quota {
    /// A quota with the given limits ([`UNLIMITED`] for none).
    ///
    /// ```
    /// use convoy::intake::{Quota, QuotaExceeded, UNLIMITED};
    /// let q = Quota::new(1, UNLIMITED);
    /// assert_eq!(q.try_take(5), Ok(()));
    /// assert_eq!(q.try_take(5), Err(QuotaExceeded::Requests { limit: 1 }));
    /// q.give_back(5);
    /// assert_eq!(q.try_take(5), Ok(()));
    /// ```
    pub fn new(max_queued: u64, max_tokens: u64) -> Self {
        Self {
            queued: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            max_queued: AtomicU64::new(max_queued),
            max_tokens: AtomicU64::new(max_tokens),
        }
    }

    /// New limits (a reload). What is queued stays; a lower limit refuses
    /// takes until the count falls below it.
    ///
    /// ```
    /// use convoy::intake::{Quota, UNLIMITED};
    /// let q = Quota::new(UNLIMITED, UNLIMITED);
    /// q.try_take(1).unwrap();
    /// q.set_limits(1, UNLIMITED);
    /// assert!(q.try_take(1).is_err());
    /// ```
    pub fn set_limits(&self, max_queued: u64, max_tokens: u64) {
        self.max_queued.store(max_queued, Ordering::Relaxed);
        self.max_tokens.store(max_tokens, Ordering::Relaxed);
    }

    /// Takes one request of `tokens`, if both limits allow it.
    ///
    /// ```
    /// use convoy::intake::{Quota, QuotaExceeded, UNLIMITED};
    /// let q = Quota::new(UNLIMITED, 10);
    /// q.try_take(6).unwrap();
    /// assert_eq!(q.try_take(6), Err(QuotaExceeded::Tokens { limit: 10 }));
    /// assert_eq!(q.queued(), (1, 6), "a refused take leaves nothing behind");
    /// ```
    pub fn try_take(&self, tokens: u64) -> Result<(), QuotaExceeded> {
        let max = self.max_queued.load(Ordering::Relaxed);
        if max != UNLIMITED {
            let taken = self
                .queued
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                    (q < max).then_some(q + 1)
                });
            if taken.is_err() {
                return Err(QuotaExceeded::Requests { limit: max });
            }
        } else {
            self.queued.fetch_add(1, Ordering::Relaxed);
        }
        let max_tokens = self.max_tokens.load(Ordering::Relaxed);
        if max_tokens != UNLIMITED {
            let taken = self
                .tokens
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                    t.checked_add(tokens).filter(|&s| s <= max_tokens)
                });
            if taken.is_err() {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                return Err(QuotaExceeded::Tokens { limit: max_tokens });
            }
        } else {
            self.tokens.fetch_add(tokens, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Gives back one request of `tokens`, taken by a successful
    /// [`try_take`](Self::try_take).
    pub fn give_back(&self, tokens: u64) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
        self.tokens.fetch_sub(tokens, Ordering::Relaxed);
    }

    /// Takes one request of `tokens` whatever the limits: for a request
    /// admitted before that waits again (its running batch stopped for
    /// more urgent work). The counts may pass the limits by such requests,
    /// which new submits then wait out.
    ///
    /// ```
    /// use convoy::intake::Quota;
    /// let q = Quota::new(1, 10);
    /// q.try_take(4).unwrap();
    /// q.take_back(4);
    /// assert_eq!(q.queued(), (2, 8));
    /// ```
    pub fn take_back(&self, tokens: u64) {
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.tokens.fetch_add(tokens, Ordering::Relaxed);
    }

    /// Requests and tokens queued now.
    pub fn queued(&self) -> (u64, u64) {
        (
            self.queued.load(Ordering::Relaxed),
            self.tokens.load(Ordering::Relaxed),
        )
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Many threads race for a quota of 100: exactly 100 takes succeed,
    /// and after every give-back the counts are zero.
    #[test]
    fn racing_takes_accept_exactly_the_limit() {
        let q = std::sync::Arc::new(Quota::new(100, 1_000));
        let won: u64 = (0..8)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    (0..1_000).filter(|_| q.try_take(1).is_ok()).count() as u64
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(won, 100);
        assert_eq!(q.queued(), (100, 100));
        (0..100).for_each(|_| q.give_back(1));
        assert_eq!(q.queued(), (0, 0));
    }

    #[test]
    fn a_token_refusal_gives_the_request_back() {
        let q = Quota::new(2, 10);
        assert_eq!(q.try_take(11), Err(QuotaExceeded::Tokens { limit: 10 }));
        assert_eq!(q.queued(), (0, 0));
        q.try_take(10).unwrap();
        assert_eq!(
            q.try_take(0),
            Ok(()),
            "a zero-token request fits a full token quota"
        );
        assert_eq!(q.try_take(0), Err(QuotaExceeded::Requests { limit: 2 }));
    }
}
