//! Deduplication by a caller-given key: requests with the same key that wait
//! at the same time run once, and every ticket gets a copy of the output.
//!
//! # The rule
//!
//! The collector keeps, per key, the one waiting *group* of requests with
//! that key (a map from key to the group's [`WaitKey`]; single-owner, no
//! lock). A request whose key has a waiting group joins it as a
//! [`Follower`]; otherwise it starts a group. A group is one entry of the
//! ordered set and one execution, so it costs one request's capacity, and it
//! is ordered as its most urgent member: the lowest level, the earliest
//! arrival and the earliest deadline of its members (see [`group_meta`]).
//! Once the group launches, its key is free: a request arriving while the
//! twin runs starts a new group and runs again (groups are never joined in
//! flight, which would need the worker to share its batch).
//!
//! Members keep their own outcome: each expires at its own deadline (the
//! rest of the group waits on), a cancelled member is counted cancelled, and
//! the group is dropped unrun only when every member has cancelled.
//!
//! A twin adds no work, only a queue slot, so a level shed while the queue
//! runs late (`shed.rs`) still lets in a request whose group waits: the
//! collector publishes the waiting groups' keys for submit (`twins.rs`).

use std::time::Instant;

use crate::intake::tenants::TenantHold;
use crate::intake::Admission;
use crate::outcome::ticket::Completer;
use crate::plan::order::Meta;
use crate::priority::Priority;

/// A request merged into a waiting twin: everything it needs to receive
/// its own outcome, but no input (the twin's runs for both).
pub(crate) struct Follower<O> {
    pub completer: Completer<O>,
    pub priority: Priority,
    pub submitted: Instant,
    /// Where its end-to-end latency runs from (`Job::since`).
    pub since: Instant,
    /// Nanoseconds since the runtime's epoch.
    pub arrival: u64,
    pub deadline: u64,
    pub expire_at: u64,
    /// Its queue room, given back when the group launches or ends.
    pub admission: Admission,
    /// Its tenant's quota, likewise.
    pub hold: Option<TenantHold>,
}

/// The ordering a group gets from its members' `(level, arrival, deadline,
/// expire_at)`: the most urgent of each. `base` supplies `front` and `seq`.
pub(crate) fn group_meta(
    base: Meta,
    members: impl IntoIterator<Item = (Priority, u64, u64, u64)>,
) -> Meta {
    members
        .into_iter()
        .fold(base, |m, (level, arrival, deadline, expire_at)| Meta {
            level: m.level.min(level),
            arrival: m.arrival.min(arrival),
            deadline: m.deadline.min(deadline),
            expire_at: m.expire_at.min(expire_at),
            ..m
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_as_urgent_as_its_most_urgent_member() {
        let base = Meta {
            level: Priority::Low,
            arrival: 10,
            deadline: 500,
            expire_at: u64::MAX,
            front: false,
            seq: 3,
            tokens: 1,
            bytes: 0,
            tenant: 0,
        };
        let m = group_meta(
            base,
            [
                (Priority::High, 20, 300, 300),
                (Priority::Background, 5, u64::MAX, u64::MAX),
            ],
        );
        assert_eq!(m.level, Priority::High);
        assert_eq!(m.arrival, 5);
        assert_eq!(m.deadline, 300);
        assert_eq!(m.expire_at, 300);
        assert_eq!(m.seq, 3);
    }
}
