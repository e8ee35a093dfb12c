//! The preemption settings (`[preemption]`, every one reloadable): when
//! urgent work that cannot be placed may take the place of staged, less
//! urgent work, and the guards that keep it from doing harm.

use super::validate::invalid;
use super::ConfigError;
use crate::priority::Priority;

/// The most times one request may be displaced (`max_displacements`).
/// Each displacement can add a batch interval to its wait; past a few the
/// bound that promises means little.
pub const MAX_DISPLACEMENTS: u8 = 16;

/// When more urgent work may displace staged work, and how much.
///
/// A batch handed to a worker but not yet started (staged behind the
/// batch it runs) can be recalled by the collector when a request that
/// cannot be placed now is at least `min_gap` levels more urgent than
/// every request of that batch, and none of them has been displaced
/// `max_displacements` times. The recalled requests wait again with their
/// arrival times (aging intact); the urgent batch takes the place.
///
/// ```
/// let p = convoy::Preemption::default();
/// assert!(p.enabled);
/// assert_eq!((p.min_gap, p.max_displacements), (2, 1));
/// // Critical (level 0) may displace a batch of Normal (2) or below.
/// assert!(p.may_displace(convoy::Priority::Critical, convoy::Priority::Normal));
/// assert!(!p.may_displace(convoy::Priority::Critical, convoy::Priority::High));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preemption {
    /// The switch: off, nothing is ever displaced.
    pub enabled: bool,
    /// How many levels more urgent than a staged batch's most urgent
    /// request a request must be to displace it (`min_priority_gap`,
    /// 1 to 4; default 2: Critical displaces Normal, Low and Background,
    /// High displaces Low and Background). A gap of 1 would let High
    /// displace Normal, churning work whose latency matters too.
    pub min_gap: u8,
    /// How many times one request may be displaced (1 to
    /// [`MAX_DISPLACEMENTS`]; default 1). A batch holding a request
    /// displaced that often is never displaced again, so each request's
    /// wait grows by at most this many batch intervals.
    pub max_displacements: u8,
}

impl Default for Preemption {
    fn default() -> Self {
        Self {
            enabled: true,
            min_gap: 2,
            max_displacements: 1,
        }
    }
}

impl Preemption {
    /// Whether a request at `urgent` may displace a batch whose most
    /// urgent request is at `staged` (the gap alone; the cap is the
    /// batch's).
    pub fn may_displace(&self, urgent: Priority, staged: Priority) -> bool {
        self.enabled && staged.index() >= urgent.index() + usize::from(self.min_gap)
    }

    /// Checks the ranges, naming the key that is out of one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Self::gap(i64::from(self.min_gap))?;
        Self::cap(i64::from(self.max_displacements))?;
        Ok(())
    }

    /// `min_priority_gap` as given (a file may give any integer).
    pub(crate) fn gap(given: i64) -> Result<u8, ConfigError> {
        let most = Priority::COUNT as i64 - 1;
        u8::try_from(given)
            .ok()
            .filter(|&g| (1..=most).contains(&i64::from(g)))
            .ok_or_else(|| {
                invalid(
                    "preemption.min_priority_gap",
                    format!("{given} is out of range: give 1 to {most} levels"),
                )
            })
    }

    /// `max_displacements` as given.
    pub(crate) fn cap(given: i64) -> Result<u8, ConfigError> {
        u8::try_from(given)
            .ok()
            .filter(|n| (1..=MAX_DISPLACEMENTS).contains(n))
            .ok_or_else(|| {
                invalid(
                    "preemption.max_displacements",
                    format!(
                        "{given} is out of range: give 1 to {MAX_DISPLACEMENTS} \
                         (turn preemption off with enabled = false)"
                    ),
                )
            })
    }
}
