//! Priority levels and insert policies.

use std::fmt;
use std::str::FromStr;

/// The five priority levels, most urgent first. The numeric order is the
/// order of urgency: `Critical < High < … < Background`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum Priority {
    /// Never waits behind anything but other critical work.
    Critical = 0,
    /// Interactive traffic with a tight SLO.
    High = 1,
    /// The default.
    #[default]
    Normal = 2,
    /// Batch-like traffic that tolerates delay.
    Low = 3,
    /// Runs when nothing else waits, or once aged past `max_wait`.
    Background = 4,
}

impl Priority {
    /// How many levels there are.
    pub const COUNT: usize = 5;

    /// Every level, most urgent first.
    pub const ALL: [Priority; Priority::COUNT] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
        Priority::Background,
    ];

    /// Index into per-priority arrays, `0` for `Critical`.
    ///
    /// ```
    /// assert_eq!(convoy::Priority::Low.index(), 3);
    /// ```
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The lowercase name used in configs and metric labels.
    ///
    /// ```
    /// assert_eq!(convoy::Priority::High.as_str(), "high");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
            Priority::Background => "background",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A priority name that is not one of the five levels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown priority {0:?} (expected critical, high, normal, low, background, or 0 to 4 with 0 the most urgent)")]
pub struct UnknownPriority(pub String);

impl FromStr for Priority {
    type Err = UnknownPriority;

    /// A name, in any case, or the level's index (`0` = critical through
    /// `4` = background), as traces and clients that number their
    /// priorities write them.
    ///
    /// ```
    /// use convoy::Priority;
    /// assert_eq!("Critical".parse::<Priority>(), Ok(Priority::Critical));
    /// assert_eq!("3".parse::<Priority>(), Ok(Priority::Low));
    /// assert!("urgent".parse::<Priority>().is_err());
    /// assert!("5".parse::<Priority>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let index = match s.as_bytes() {
            [digit @ b'0'..=b'9'] => Some(usize::from(digit - b'0')),
            _ => None,
        };
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s) || index == Some(p.index()))
            .ok_or_else(|| UnknownPriority(s.to_owned()))
    }
}

/// How a submit enters the queue (seed 000's enqueue / merge-at-front /
/// drop-if-full).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum InsertPolicy {
    /// At the back of its priority level, FIFO. A batch inserts what fits, in
    /// order, and hands back the rest.
    #[default]
    Enqueue,
    /// Ahead of every waiting request of its priority level (the collector's
    /// ordering honours the flag). A batch inserts what fits.
    Front,
    /// A batch goes in whole or not at all; when it does not fit, every item
    /// is handed back.
    AllOrNothing,
}
