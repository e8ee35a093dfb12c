//! What a caller submits.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::priority::Priority;

/// What a request costs a worker while it runs: tokens (for the built-in
/// model, its token count) and bytes of device memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cost {
    /// Tokens; default 1.
    pub tokens: u32,
    /// Bytes; default 0.
    pub bytes: u64,
}

impl Default for Cost {
    fn default() -> Self {
        Self {
            tokens: 1,
            bytes: 0,
        }
    }
}

/// When a request must have started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// Relative to submit.
    After(Duration),
    /// An absolute instant.
    At(Instant),
}

/// One request: an input plus how urgent and how costly it is.
///
/// ```
/// use convoy::{Priority, Request};
/// use std::time::Duration;
/// let r = Request::new(vec![1u32, 2, 3])
///     .priority(Priority::High)
///     .deadline(Duration::from_millis(500))
///     .tokens(3);
/// assert_eq!(r.cost().tokens, 3);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Request<I> {
    pub(crate) input: I,
    pub(crate) priority: Priority,
    pub(crate) deadline: Option<Deadline>,
    pub(crate) cost: Cost,
    pub(crate) dedup_key: Option<u64>,
    pub(crate) received: Option<Instant>,
    pub(crate) tenant: Option<Arc<str>>,
}

impl<I> Request<I> {
    /// A `Normal` request with no deadline and the default cost.
    pub fn new(input: I) -> Self {
        Self {
            input,
            priority: Priority::Normal,
            deadline: None,
            cost: Cost::default(),
            dedup_key: None,
            received: None,
            tenant: None,
        }
    }

    /// Sets the priority level.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Sets a deadline relative to submit.
    pub fn deadline(mut self, after: Duration) -> Self {
        self.deadline = Some(Deadline::After(after));
        self
    }

    /// Sets an absolute deadline.
    pub fn deadline_at(mut self, at: Instant) -> Self {
        self.deadline = Some(Deadline::At(at));
        self
    }

    /// Says when the request reached the application, if before submit:
    /// for a server, when its first byte arrived. The end-to-end latency
    /// the SLA report, the metrics and the compliance ratios give then
    /// runs from this instant, so they count the time spent accepting,
    /// reading and decoding the request, as its client sees it. (Ordering
    /// and aging still run from submit, and a relative
    /// [`deadline`](Self::deadline) from submit too: give
    /// [`deadline_at`](Self::deadline_at) to count it from here.) An
    /// instant after submit counts as submit.
    ///
    /// ```
    /// use convoy::{Request, Runtime};
    /// use std::time::{Duration, Instant};
    /// let rt = Runtime::builder().batch_fn(|xs: &[u32]| xs.to_vec()).build()?;
    /// let first_byte = Instant::now();
    /// // ... reading and decoding the request ...
    /// let r = Request::new(7).received_at(first_byte).deadline_at(first_byte + Duration::from_secs(1));
    /// assert_eq!(r.received(), Some(first_byte));
    /// assert_eq!(rt.handle().submit(r)?.wait(), Ok(7));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn received_at(mut self, at: Instant) -> Self {
        self.received = Some(at);
        self
    }

    /// When the request reached the application, if set
    /// ([`received_at`](Self::received_at)).
    pub fn received(&self) -> Option<Instant> {
        self.received
    }

    /// Names the tenant the request is for. Within a priority level the
    /// collector shares service fairly between tenants
    /// ([`Fairness`](crate::Fairness), `ordering.fairness`), each tenant's
    /// queued requests are bounded by its quota (`[tenants]`), and its
    /// figures are kept apart ([`SlaReport::tenants`](crate::SlaReport)).
    /// Requests that name none share the tenant `"default"`. An id is at
    /// most [`MAX_TENANT_LEN`](crate::MAX_TENANT_LEN) bytes and not empty,
    /// else the submit is refused as
    /// [`Invalid`](crate::SubmitErrorKind::Invalid).
    ///
    /// A server sends the same few ids again and again: an `Arc<str>` it
    /// keeps per tenant is taken without a copy.
    ///
    /// ```
    /// use convoy::{Request, Runtime};
    /// let rt = Runtime::builder().batch_fn(|xs: &[u32]| xs.to_vec()).build()?;
    /// let r = Request::new(7).tenant("acme");
    /// assert_eq!(r.tenant_id(), Some("acme"));
    /// assert_eq!(rt.handle().submit(r)?.wait(), Ok(7));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tenant(mut self, tenant: impl Into<Arc<str>>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// The tenant id, if one was set.
    pub fn tenant_id(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// Sets the token cost.
    pub fn tokens(mut self, tokens: u32) -> Self {
        self.cost.tokens = tokens;
        self
    }

    /// Sets the byte cost.
    pub fn bytes(mut self, bytes: u64) -> Self {
        self.cost.bytes = bytes;
        self
    }

    /// Marks the request as identical to every other waiting request with
    /// the same key: the runtime then runs one of them and hands each ticket
    /// a copy of the output (see [`Builder::deduplicate`]). The key is
    /// hashed to 64 bits; two different keys collide with probability about
    /// 2⁻⁶⁴ per pair waiting at the same time.
    ///
    /// [`Builder::deduplicate`]: crate::Builder::deduplicate
    pub fn dedup_key(mut self, key: impl std::hash::Hash) -> Self {
        self.dedup_key = Some(hash_key(&key));
        self
    }

    /// The hashed dedup key, if one was set.
    pub fn dedup(&self) -> Option<u64> {
        self.dedup_key
    }

    /// The input.
    pub fn input(&self) -> &I {
        &self.input
    }

    /// Gives the input back.
    pub fn into_input(self) -> I {
        self.input
    }

    /// The priority level.
    pub fn level(&self) -> Priority {
        self.priority
    }

    /// The cost.
    pub fn cost(&self) -> Cost {
        self.cost
    }
}

/// Hashes a caller's key with a fixed-key SipHash, so equal keys agree
/// across threads and runs.
fn hash_key<K: Hash + ?Sized>(key: &K) -> u64 {
    #[allow(deprecated)] // SipHasher is deprecated only in favour of the
    // randomly keyed DefaultHasher, which would not agree across runs.
    let mut h = std::hash::SipHasher::new();
    key.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_keys_hash_equal_and_different_keys_differ() {
        assert_eq!(hash_key("prompt-1"), hash_key("prompt-1"));
        assert_ne!(hash_key("prompt-1"), hash_key("prompt-2"));
        assert_eq!(hash_key(&7u64), hash_key(&7u64));
    }
}
