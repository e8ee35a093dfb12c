//! What makes a config valid: every value checked, the first problem
//! returned naming its key.

use crate::intake::IntakeError;
use crate::priority::Priority;

use super::{Capacity, Config, WorkerSpec};

/// A config value that cannot work; names the key and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value out of range.
    #[error("{key}: {reason}")]
    Invalid {
        /// The offending key, e.g. `batching.max_batch_size`.
        key: String,
        /// Why.
        reason: String,
    },
    /// The intake shape is invalid.
    #[error(transparent)]
    Intake(#[from] IntakeError),
    /// The TOML could not be read: syntax, an unknown key or a wrong type.
    /// The message names the key and shows the line.
    #[error("config: {message}")]
    Parse {
        /// The parser's account, with the key and line.
        message: String,
    },
    /// `reload_config` was asked to change a knob that is fixed at build.
    #[error("{key} cannot change while running (rebuild the runtime to change it)")]
    Fixed {
        /// The fixed key.
        key: String,
    },
}

pub(super) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The most workers a config may start with. Each is a thread with its
/// own SLA recorder (about 0.9 MB, README "SLA and metrics"), so a typo of
/// a few zeros in `cpu_workers` once started threads until the machine ran
/// out of memory. `Runtime::add_worker` is not bounded by it.
pub const MAX_WORKERS: usize = 4096;

impl Config {
    /// The fleet this config describes: `workers`, or `cpu_workers` default
    /// CPU workers that each hold two full batches.
    pub fn fleet(&self) -> Vec<WorkerSpec> {
        if !self.workers.is_empty() {
            return self.workers.clone();
        }
        (0..self.cpu_workers)
            .map(|i| WorkerSpec {
                name: format!("cpu{i}"),
                capacity: Capacity {
                    slots: u32::try_from(self.batching.max_batch_size.saturating_mul(2))
                        .unwrap_or(u32::MAX),
                    tokens: self.batching.max_batch_tokens.saturating_mul(2),
                    bytes: u64::MAX,
                },
                speed: 1.0,
                cost_per_hour: 0.0,
            })
            .collect()
    }

    /// Checks every value; the first problem found is returned.
    ///
    /// ```
    /// let mut c = convoy::Config::default();
    /// c.batching.max_batch_size = 0;
    /// assert!(c.validate().unwrap_err().to_string().contains("batching.max_batch_size"));
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.tenants.validate()?;
        self.preemption.validate()?;
        if self.intake.shards == 0 {
            return Err(IntakeError::ZeroShards.into());
        }
        if !self.intake.lane_capacity.is_power_of_two() {
            return Err(invalid(
                "intake.lane_capacity",
                format!("{} is not a power of two ≥ 1", self.intake.lane_capacity),
            ));
        }
        if self.batching.max_batch_size == 0 {
            return Err(invalid("batching.max_batch_size", "must be at least 1"));
        }
        if self.batching.max_batch_tokens == 0 {
            return Err(invalid("batching.max_batch_tokens", "must be at least 1"));
        }
        if let Some(&big) = self.batching.preferred_batch_sizes.as_slice().last() {
            if big > self.batching.max_batch_size {
                return Err(invalid(
                    "batching.preferred_batch_sizes",
                    format!(
                        "{big} exceeds max_batch_size {}",
                        self.batching.max_batch_size
                    ),
                ));
            }
        }
        if self.batching.max_batch_bytes == 0 {
            return Err(invalid("batching.max_batch_bytes", "must be at least 1"));
        }
        if self.max_wait.is_zero() {
            return Err(invalid("ordering.max_wait_ms", "must be greater than 0"));
        }
        check_shed_at(&self.shed_at)?;
        for (p, d) in Priority::ALL.into_iter().zip(&self.default_deadline) {
            if d.is_some_and(|d| d.is_zero()) {
                return Err(invalid(
                    format!("deadlines.default_ms.{p}"),
                    "must be greater than 0 (leave it out for no deadline)",
                ));
            }
        }
        for (p, t) in Priority::ALL.into_iter().zip(&self.slo) {
            for (name, d) in [
                ("p95_ms", t.p95),
                ("p99_ms", t.p99),
                ("timeout_ms", t.timeout),
            ] {
                if d.is_zero() {
                    return Err(invalid(format!("slo.{p}.{name}"), "must be greater than 0"));
                }
            }
        }
        if self.workers.is_empty() && self.cpu_workers == 0 {
            return Err(invalid(
                "cpu_workers",
                "zero workers: nothing could ever run",
            ));
        }
        if self.workers.is_empty() && self.cpu_workers > MAX_WORKERS {
            return Err(invalid(
                "cpu_workers",
                format!("{} exceeds the maximum of {MAX_WORKERS}", self.cpu_workers),
            ));
        }
        if self.workers.len() > MAX_WORKERS {
            return Err(invalid(
                "workers",
                format!(
                    "{} listed, more than the maximum of {MAX_WORKERS}",
                    self.workers.len()
                ),
            ));
        }
        for (i, w) in self.workers.iter().enumerate() {
            w.validate(&format!("workers[{i}]"))?;
        }
        Ok(())
    }
}

/// `Config::shed_at`'s rules: Critical never shed, every share positive
/// (infinite: never), and no level shed before a more urgent one.
fn check_shed_at(shed_at: &[f64; Priority::COUNT]) -> Result<(), ConfigError> {
    let key = |p: Priority| format!("ordering.shed_at.{p}");
    if shed_at[0] != f64::INFINITY {
        return Err(invalid(
            key(Priority::Critical),
            format!(
                "{} given, but Critical is never shed (its bound is its queue's room); leave it out",
                shed_at[0]
            ),
        ));
    }
    for p in Priority::ALL.into_iter().skip(1) {
        let share = shed_at[p.index()];
        if share.is_nan() || share <= 0.0 {
            return Err(invalid(
                key(p),
                format!("{share} is not a positive share of max_wait (inf: never shed)"),
            ));
        }
        let urgent = Priority::ALL[p.index() - 1];
        let above = shed_at[urgent.index()];
        if share > above {
            return Err(invalid(
                key(p),
                format!(
                    "{share} is above {urgent}'s {above}: levels are shed least urgent first, \
                     so a level's share may not exceed a more urgent one's"
                ),
            ));
        }
    }
    Ok(())
}
