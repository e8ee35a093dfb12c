//! What building a runtime or submitting to it can refuse, and why. A
//! refused request is always handed back inside the error.

use crate::config::ConfigError;
use crate::intake::IntakeError;
use crate::outcome::ticket::Ticket;
use crate::outcome::Failure;
use crate::request::Request;

/// Why a runtime could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The config is invalid.
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    /// No executor was given.
    #[error("no executor: call .batch_fn(..) or .executor(..)")]
    NoExecutor,
    /// A thread could not be started.
    #[error("could not start thread: {0}")]
    Spawn(String),
}

impl From<IntakeError> for BuildError {
    fn from(e: IntakeError) -> Self {
        BuildError::Config(e.into())
    }
}

/// Why a submit was refused. More kinds may come: match with a wildcard
/// arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubmitErrorKind {
    /// The request's level is full; retry later.
    QueueFull,
    /// The runtime is shutting down or gone.
    ShuttingDown,
    /// The cost exceeds what any worker (or a batch) can ever hold.
    CostNeverFits,
    /// The deadline is zero or already past.
    DeadlinePassed,
    /// The request has a dedup key but the runtime was built without
    /// [`Builder::deduplicate`](super::Builder::deduplicate).
    DedupNotEnabled,
    /// The executor can never run this input ([`Executor::check`](crate::device::executor::Executor::check)): a
    /// token outside the model's vocabulary, a request over its maximum
    /// length. [`SubmitError::reason`] says which.
    Invalid,
    /// The queue runs late and the request's level is shed for now
    /// (`ordering.shed`): taking more of it would push what is already
    /// accepted past the starvation bound. Retry later, or at a more
    /// urgent level if the work is. The rule is on
    /// [`Config::shed`](crate::Config::shed).
    Overloaded,
    /// The request's tenant has its quota queued (`[tenants]`
    /// `max_queued`, `max_queued_tokens`): retry once some of its requests
    /// have launched. [`SubmitError::reason`] names the tenant and the
    /// limit.
    TenantQuota,
}

impl SubmitErrorKind {
    /// Every kind, for tallies that keep one count per kind.
    pub const ALL: [SubmitErrorKind; 8] = [
        SubmitErrorKind::QueueFull,
        SubmitErrorKind::ShuttingDown,
        SubmitErrorKind::CostNeverFits,
        SubmitErrorKind::DeadlinePassed,
        SubmitErrorKind::DedupNotEnabled,
        SubmitErrorKind::Invalid,
        SubmitErrorKind::Overloaded,
        SubmitErrorKind::TenantQuota,
    ];

    /// A stable snake_case name, for reports and logs that a program
    /// reads: the `Debug` form is Rust's, not a format to parse.
    ///
    /// ```
    /// use convoy::SubmitErrorKind;
    /// assert_eq!(SubmitErrorKind::CostNeverFits.as_str(), "cost_never_fits");
    /// assert!(SubmitErrorKind::ALL.iter().all(|k| !k.as_str().is_empty()));
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            SubmitErrorKind::QueueFull => "queue_full",
            SubmitErrorKind::ShuttingDown => "shutting_down",
            SubmitErrorKind::CostNeverFits => "cost_never_fits",
            SubmitErrorKind::DeadlinePassed => "deadline_passed",
            SubmitErrorKind::DedupNotEnabled => "dedup_not_enabled",
            SubmitErrorKind::Invalid => "invalid",
            SubmitErrorKind::Overloaded => "overloaded",
            SubmitErrorKind::TenantQuota => "tenant_quota",
        }
    }

    /// Position in [`ALL`](Self::ALL).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A refused submit; the request is handed back untouched.
#[derive(Clone, PartialEq, thiserror::Error)]
#[error("submit refused: {kind:?}{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
pub struct SubmitError<I> {
    /// Why.
    pub kind: SubmitErrorKind,
    /// The executor's words for an [`Invalid`](SubmitErrorKind::Invalid)
    /// input, or, for a request refused only because another in its
    /// `AllOrNothing` batch was, a line saying so; `None` otherwise.
    pub reason: Option<String>,
    /// The request, as given.
    pub request: Request<I>,
}

impl<I> SubmitError<I> {
    pub(super) fn new(kind: SubmitErrorKind, request: Request<I>) -> Self {
        Self {
            kind,
            reason: None,
            request,
        }
    }
}

impl<I> std::fmt::Debug for SubmitError<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubmitError")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// A batch submit that did not accept every request.
#[derive(thiserror::Error)]
#[error("{}", match kind {
    BatchSubmitErrorKind::EmptyBatch => "batch submit: the batch is empty (no requests to submit)".to_owned(),
    BatchSubmitErrorKind::Refused => format!("batch submit: {} accepted, {} refused", accepted.len(), rejected.len()),
})]
pub struct BatchSubmitError<I, O> {
    /// Why: an empty batch, or some (or all) requests refused.
    pub kind: BatchSubmitErrorKind,
    /// Tickets of the requests that went in (none for `AllOrNothing`).
    pub accepted: Vec<Ticket<O>>,
    /// Every refused request with its reason.
    pub rejected: Vec<SubmitError<I>>,
}

/// Why a batch submit failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchSubmitErrorKind {
    /// No requests were given: nothing was submitted and nothing is
    /// handed back. A caller bug rather than back-pressure.
    EmptyBatch,
    /// Some or all requests were refused; each is in `rejected` with its
    /// own reason (a full queue, a bad deadline, a cost no worker holds).
    Refused,
}

impl<I, O> std::fmt::Debug for BatchSubmitError<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchSubmitError")
            .field("kind", &self.kind)
            .field("accepted", &self.accepted.len())
            .field("rejected", &self.rejected.len())
            .finish()
    }
}

/// Why [`Handle::call`](crate::Handle::call) gave no output: the request
/// was refused at submit (and is handed back inside), or it was accepted
/// and ended in a [`Failure`]. One error type for the one-call shape.
///
/// ```
/// use convoy::{Error, Failure, Request, Runtime, SubmitErrorKind};
///
/// let rt = Runtime::builder().batch_fn(|xs: &[u32]| xs.to_vec()).build()?;
/// rt.shutdown();
/// let refused = futures_lite_block_on(rt.handle().call(Request::new(7)));
/// match refused {
///     Err(Error::Refused(e)) => {
///         assert_eq!(e.kind, SubmitErrorKind::ShuttingDown);
///         assert_eq!(*e.request.input(), 7); // handed back
///     }
///     other => panic!("{other:?}"),
/// }
/// # fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     let mut f = std::pin::pin!(f);
/// #     let waker = std::task::Waker::noop();
/// #     let mut cx = std::task::Context::from_waker(&waker);
/// #     loop {
/// #         if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; }
/// #         std::thread::yield_now();
/// #     }
/// # }
/// # let _ = Failure::Expired;
/// # Ok::<(), convoy::BuildError>(())
/// ```
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error<I> {
    /// Refused at submit; the request is inside.
    #[error(transparent)]
    Refused(SubmitError<I>),
    /// Accepted, then ended without an output.
    #[error(transparent)]
    Failed(Failure),
}

impl<I> std::fmt::Debug for Error<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Refused(e) => f.debug_tuple("Refused").field(e).finish(),
            Error::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

impl<I> Error<I> {
    /// The failure, for an accepted request; `None` for a refusal.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Error::Failed(f) => Some(f),
            Error::Refused(_) => None,
        }
    }

    /// The refusal's kind; `None` for an accepted request that failed.
    pub fn refusal(&self) -> Option<SubmitErrorKind> {
        match self {
            Error::Refused(e) => Some(e.kind),
            Error::Failed(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SubmitErrorKind;

    #[test]
    fn each_kind_sits_at_its_index_with_its_own_name() {
        // Tallies index by `index()`: a reordered `ALL` or enum would
        // count one reason under another's name.
        for (i, k) in SubmitErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k:?}");
        }
        let mut names: Vec<_> = SubmitErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SubmitErrorKind::ALL.len());
    }
}
