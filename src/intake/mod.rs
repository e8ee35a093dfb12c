//! Stage 1, intake: what a producer's `submit` touches, and nothing else.
//!
//! * [`ring`]: the bounded lock-free MPSC ring every lane is made of.
//! * `sharded` (re-exported here): `S` shards × 5 priority levels of rings,
//!   with [`InsertPolicy`](crate::InsertPolicy), the admission bound and
//!   lock-free statistics.
//! * `gate`: closes intake at shutdown so that no submit slips past it.
//! * `doorbell`: wakes the collector without a lock or a syscall per submit.
//! * `shed`: which levels submit refuses while the queue runs late.
//! * `twins`: the dedup keys with a group waiting, published for submit.
//! * [`quota`] and [`tenants`]: each tenant's quota of requests queued,
//!   taken at submit, and the table of tenants that holds them.
//!
//! Nothing here imports from a later stage (plan, observe, device, runtime).

pub(crate) mod doorbell;
pub(crate) mod gate;
pub mod quota;
pub mod ring;
mod sharded;
pub(crate) mod shed;
pub mod tenants;
pub(crate) mod twins;

pub use quota::{Quota, QuotaExceeded, UNLIMITED};
pub use sharded::*;
pub use tenants::{Limits, Tenants};
