//! convoy beyond one machine: several frontends share one pool of
//! worker hosts through Redis.
//!
//! See the crate README section "Running on several machines".
pub mod error;
pub mod pool;
pub mod status;

pub use error::ClusterError;
pub use pool::{CommitReply, Pool, Registration, Room, WorkerInfo};
pub use status::PoolStatus;
pub mod admission;
pub mod host;
pub mod wire;

pub use host::{HostConfig, HostStatus, LaneSpec, WorkerHost};
mod committer;
pub mod frontend;
mod remote;
mod sync;

pub use frontend::{Frontend, FrontendConfig, PoolStats};
pub use remote::WorkerLost;
