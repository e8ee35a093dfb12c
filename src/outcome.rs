//! What every accepted request ends in.

/// Why an accepted request produced no output. Every accepted request ends in
/// exactly one `Ok(output)` or one `Failure`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
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
    ExecutorFailed(String),
}

/// The result a ticket delivers: the output, or why there is none.
pub type Outcome<O> = Result<O, Failure>;
