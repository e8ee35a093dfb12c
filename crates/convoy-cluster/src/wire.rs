//! What crosses the wire between a frontend and a worker host: a batch's
//! inputs and outputs in postcard (compact, serde), errors as JSON a
//! person can read. HTTP carries it; nothing here is a protocol of ours.

use serde::{Deserialize, Serialize};

/// The header carrying the tokens a batch costs (its slots are its
/// length).
pub const TOKENS: &str = "x-convoy-tokens";
/// The header naming the frontend that sent a batch (for logs).
pub const FRONTEND: &str = "x-convoy-frontend";
/// The content type of a postcard body.
pub const POSTCARD: &str = "application/x-postcard";

/// A worker host's answer when it did not run a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostError {
    /// `over_capacity`, `bad_input`, `unknown_lane`, `executor_failed`.
    pub error: String,
    /// For people.
    pub message: String,
}

impl HostError {
    pub(crate) fn new(error: &str, message: impl Into<String>) -> Self {
        Self {
            error: error.to_owned(),
            message: message.into(),
        }
    }
}

/// Encodes a value for the wire.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(value)
}

/// Decodes a value from the wire.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}
