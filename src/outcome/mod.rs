//! What every accepted request ends in ([`Outcome`]), and the one-shot
//! slot that carries it to the caller ([`ticket`]).

use std::sync::Arc;

pub mod ticket;

/// Why an accepted request produced no output. Every accepted request ends in
/// exactly one `Ok(output)` or one `Failure`.
///
/// More kinds may come (a request displaced past its limit, say): match
/// with a wildcard arm.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// Its deadline passed while it was queued; it was never executed.
    #[error("deadline expired before launch")]
    Expired,
    /// The caller cancelled it (or dropped its ticket). If that happened
    /// before launch it was never executed; after launch its result was
    /// dropped.
    #[error("cancelled by the caller")]
    Cancelled,
    /// The runtime shut down before the request could run.
    #[error("runtime shut down")]
    ShutDown,
    /// The executor failed (returned an error, panicked, or returned the
    /// wrong number of outputs) on the batch holding this request.
    #[error("executor failed: {0}")]
    ExecutorFailed(ExecutorError),
}

/// The result a ticket delivers: the output, or why there is none.
pub type Outcome<O> = Result<O, Failure>;

/// Why an executor failed a batch: a message for people, and the error it
/// came from, if any, for programs ([`std::error::Error::source`]).
///
/// Every request of the failed batch receives a clone of it inside
/// [`Failure::ExecutorFailed`], so the source is shared (`Arc`), and two
/// errors compare equal when their messages do.
///
/// ```
/// use convoy::ExecutorError;
/// use std::error::Error as _;
///
/// let plain: ExecutorError = "device fault".into();
/// assert_eq!(plain.to_string(), "device fault");
/// assert!(plain.source().is_none());
///
/// let io = std::io::Error::other("weights file vanished");
/// let wrapped = ExecutorError::from_error(io);
/// assert_eq!(wrapped.to_string(), "weights file vanished");
/// assert!(wrapped.source().is_some());
/// ```
#[derive(Debug, Clone)]
pub struct ExecutorError {
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
    /// Nothing of the batch ran and it may run again ([`ExecutorError::not_run`]).
    not_run: bool,
}

impl ExecutorError {
    /// An error with a message and no source.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
            not_run: false,
        }
    }

    /// The batch was not run at all and may run again: a remote pool
    /// refused the capacity it needed (`convoy-cluster`), a device was
    /// momentarily full. For an executor that declares a re-run safe
    /// ([`Interruptible::Rerun`](crate::Interruptible::Rerun)) the batch's
    /// requests wait again with their arrival times and deadlines, as a
    /// preempted batch's do, and are not counted as failed or preempted;
    /// for any other executor (and for a batch holding dedup twins, which
    /// keeps nothing to wait again with) it fails the batch like any error.
    ///
    /// ```
    /// let e = convoy::ExecutorError::not_run("pool full on gpu-3");
    /// assert!(e.is_not_run());
    /// assert!(!convoy::ExecutorError::new("device fault").is_not_run());
    /// ```
    pub fn not_run(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
            not_run: true,
        }
    }

    /// Whether this is [`ExecutorError::not_run`].
    pub fn is_not_run(&self) -> bool {
        self.not_run
    }

    /// An error that keeps `source` (its message is `source`'s).
    pub fn from_error(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            message: source.to_string(),
            source: Some(Arc::new(source)),
            not_run: false,
        }
    }

    /// `message`, caused by `source`.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(Arc::new(source)),
            not_run: false,
        }
    }

    /// The message, as displayed.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ExecutorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExecutorError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl PartialEq for ExecutorError {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}

impl Eq for ExecutorError {}

impl std::hash::Hash for ExecutorError {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.message.hash(state);
    }
}

impl From<String> for ExecutorError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for ExecutorError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

impl From<Box<dyn std::error::Error + Send + Sync + 'static>> for ExecutorError {
    fn from(source: Box<dyn std::error::Error + Send + Sync + 'static>) -> Self {
        Self {
            message: source.to_string(),
            source: Some(Arc::from(source)),
            not_run: false,
        }
    }
}
