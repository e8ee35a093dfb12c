//! What can go wrong joining or serving a pool, as types a caller can
//! match and messages an operator understands.

/// Why a frontend, a worker host or a status query failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The Redis URL does not parse (`redis://host:port/db`).
    #[error("bad Redis URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// Redis could not be reached or answered with an error.
    #[error("Redis at {url} unreachable: {reason}")]
    Unreachable {
        /// The URL as given.
        url: String,
        /// The client's error.
        reason: String,
    },
    /// A worker host would register a worker that can hold nothing.
    #[error("worker {worker}: capacity must be at least 1 slot and 1 token")]
    ZeroCapacity {
        /// The worker's id.
        worker: String,
    },
    /// A worker host was given no lanes at all.
    #[error("a worker host needs at least one lane")]
    NoLanes,
    /// No live worker registered in the pool within the wait.
    #[error("no live worker in pool {pool:?} after waiting {waited_ms} ms (start a worker host: convoy worker --redis URL)")]
    NoWorkers {
        /// The pool's name.
        pool: String,
        /// How long the frontend waited.
        waited_ms: u64,
    },
    /// A name with characters the pool's keys and ids cannot carry.
    #[error("bad name {name:?}: use letters, digits, '-', '_' and '.' only")]
    BadName {
        /// The name as given.
        name: String,
    },
    /// The worker host could not listen.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: String,
        /// The system's error.
        reason: String,
    },
    /// The local runtime refused to start.
    #[error(transparent)]
    Build(#[from] convoy::BuildError),
}

impl ClusterError {
    pub(crate) fn unreachable(url: &str, e: impl std::fmt::Display) -> Self {
        Self::Unreachable {
            url: url.to_owned(),
            reason: e.to_string(),
        }
    }
}

/// Checks a host, frontend or pool name: it becomes part of Redis keys
/// and worker ids.
pub(crate) fn check_name(name: &str) -> Result<(), ClusterError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ClusterError::BadName {
            name: name.to_owned(),
        })
    }
}
