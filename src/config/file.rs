//! TOML files. A serde mirror of `Config`, so the file format can use plain
//! numbers for durations (`_ms` keys) and reject unknown keys, while
//! `Config` keeps typed `Duration`s. Every default comes from
//! `Config::default()`.

use std::time::Duration;

use serde::Deserialize;

use super::validate::invalid;
use super::*;

/// How a file spells a deadline action.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FileDeadlineAction {
    Reject,
    Delay,
}

/// How a file spells a placement policy.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FilePlacementPolicy {
    LeastLoaded,
    Priority,
    SloAware,
    CostOptimized,
    Adaptive,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIntake {
    shards: Option<usize>,
    lane_capacity: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBatching {
    max_batch_size: Option<usize>,
    max_batch_tokens: Option<u64>,
    max_batch_bytes: Option<u64>,
    preferred_batch_sizes: Option<Vec<usize>>,
    max_queue_delay_ms: Option<f64>,
    target_batch_ms: Option<f64>,
    delay: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOrdering {
    max_wait_ms: Option<f64>,
    policy: Option<FileOrderingPolicy>,
    fairness: Option<String>,
    shed: Option<bool>,
    /// `[ordering.shed_at]`: shares of `max_wait`. `critical` is read
    /// only to be refused with a reason rather than as an unknown key.
    shed_at: Option<FileLevels<f64>>,
}

/// A table with one optional entry per level (`[slo]`,
/// `[ordering.shed_at]`, `[deadlines.default_ms]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLevels<T> {
    critical: Option<T>,
    high: Option<T>,
    normal: Option<T>,
    low: Option<T>,
    background: Option<T>,
}

impl<T> FileLevels<T> {
    /// The entries, indexed by `Priority::index`.
    fn by_index(self) -> [Option<T>; Priority::COUNT] {
        [
            self.critical,
            self.high,
            self.normal,
            self.low,
            self.background,
        ]
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FileOrderingPolicy {
    Aging,
    StrictPriority,
    Fifo,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDeadlines {
    critical: Option<FileDeadlineAction>,
    high: Option<FileDeadlineAction>,
    normal: Option<FileDeadlineAction>,
    low: Option<FileDeadlineAction>,
    background: Option<FileDeadlineAction>,
    default_ms: Option<FileLevels<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePlacement {
    policy: Option<FilePlacementPolicy>,
    urgent_slack_ms: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSloTarget {
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
    timeout_ms: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWorker {
    name: Option<String>,
    slots: u32,
    tokens: u64,
    bytes: Option<u64>,
    speed: Option<f64>,
    cost_per_hour: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTenant {
    weight: Option<f64>,
    max_queued: Option<u64>,
    max_queued_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTenants {
    max_queued: Option<u64>,
    max_queued_tokens: Option<u64>,
    top_n: Option<usize>,
    #[serde(default)]
    overrides: std::collections::BTreeMap<String, FileTenant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePreemption {
    enabled: Option<bool>,
    /// Wide integers, so that a negative or huge value is refused with
    /// the range rather than as a type error.
    min_priority_gap: Option<i64>,
    max_displacements: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    intake: Option<FileIntake>,
    batching: Option<FileBatching>,
    ordering: Option<FileOrdering>,
    deadlines: Option<FileDeadlines>,
    placement: Option<FilePlacement>,
    tenants: Option<FileTenants>,
    preemption: Option<FilePreemption>,
    cpu_workers: Option<usize>,
    shutdown_timeout_ms: Option<f64>,
    slo: Option<FileLevels<FileSloTarget>>,
    #[serde(default)]
    workers: Vec<FileWorker>,
}

/// A duration in milliseconds from a file: finite and ≥ 0 (> 0 if `positive`).
fn millis(key: &str, ms: f64, positive: bool) -> Result<Duration, ConfigError> {
    if !ms.is_finite() || ms < 0.0 || (positive && ms == 0.0) {
        let want = if positive {
            "a positive"
        } else {
            "a non-negative"
        };
        return Err(invalid(
            key,
            format!("{ms} is not {want} number of milliseconds"),
        ));
    }
    // Finite but past what a `Duration` holds (about 5.8e14 years) is a
    // typo; `from_secs_f64` would panic on it.
    Duration::try_from_secs_f64(ms / 1000.0)
        .map_err(|_| invalid(key, format!("{ms} milliseconds is too long")))
}

impl Config {
    /// Reads a config from TOML text. Unknown keys, wrong types and values
    /// out of range are errors that name the key; missing keys take the
    /// defaults of `Config::default()` (see `config/convoy.example.toml`).
    ///
    /// ```
    /// let c = convoy::Config::from_toml_str("[batching]\nmax_batch_size = 32\n").unwrap();
    /// assert_eq!(c.batching.max_batch_size, 32);
    /// let e = convoy::Config::from_toml_str("[batching]\nmax_batch_sise = 32\n").unwrap_err();
    /// assert!(e.to_string().contains("max_batch_sise"));
    /// ```
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            message: e.to_string(),
        })?;
        let mut c = Config::default();
        if let Some(i) = file.intake {
            c.intake.shards = i.shards.unwrap_or(c.intake.shards);
            c.intake.lane_capacity = i.lane_capacity.unwrap_or(c.intake.lane_capacity);
        }
        if let Some(b) = file.batching {
            c.batching.max_batch_size = b.max_batch_size.unwrap_or(c.batching.max_batch_size);
            c.batching.max_batch_tokens = b.max_batch_tokens.unwrap_or(c.batching.max_batch_tokens);
            c.batching.max_batch_bytes = b.max_batch_bytes.unwrap_or(c.batching.max_batch_bytes);
            if let Some(sizes) = b.preferred_batch_sizes {
                c.batching.preferred_batch_sizes = PreferredBatchSizes::new(&sizes)?;
            }
            if let Some(ms) = b.max_queue_delay_ms {
                c.batching.max_queue_delay = millis("batching.max_queue_delay_ms", ms, false)?;
            }
            if let Some(ms) = b.target_batch_ms {
                c.batching.target_batch_time = Some(millis("batching.target_batch_ms", ms, true)?);
            }
            if let Some(rule) = b.delay {
                c.batching.delay = rule.parse().map_err(|_| {
                    invalid(
                        "batching.delay",
                        format!("unknown rule {rule:?}: give \"fixed\" or \"adaptive\""),
                    )
                })?;
            }
        }
        if let Some(o) = file.ordering {
            if let Some(ms) = o.max_wait_ms {
                c.max_wait = millis("ordering.max_wait_ms", ms, true)?;
            }
            if let Some(p) = o.policy {
                c.ordering = match p {
                    FileOrderingPolicy::Aging => OrderingPolicy::Aging,
                    FileOrderingPolicy::StrictPriority => OrderingPolicy::StrictPriority,
                    FileOrderingPolicy::Fifo => OrderingPolicy::Fifo,
                };
            }
            if let Some(f) = o.fairness {
                c.fairness = f.parse().map_err(|why| invalid("ordering.fairness", why))?;
            }
            c.shed = o.shed.unwrap_or(c.shed);
            if let Some(at) = o.shed_at {
                for (slot, share) in c.shed_at.iter_mut().zip(at.by_index()) {
                    *slot = share.unwrap_or(*slot);
                }
            }
        }
        if let Some(d) = file.deadlines {
            let levels = [d.critical, d.high, d.normal, d.low, d.background];
            for (slot, action) in c.deadline_action.iter_mut().zip(levels) {
                if let Some(a) = action {
                    *slot = match a {
                        FileDeadlineAction::Reject => DeadlineAction::Reject,
                        FileDeadlineAction::Delay => DeadlineAction::Delay,
                    };
                }
            }
            if let Some(dm) = d.default_ms {
                for ((p, slot), ms) in Priority::ALL
                    .into_iter()
                    .zip(c.default_deadline.iter_mut())
                    .zip(dm.by_index())
                {
                    if let Some(ms) = ms {
                        *slot = Some(millis(&format!("deadlines.default_ms.{p}"), ms, true)?);
                    }
                }
            }
        }
        if let Some(p) = file.placement {
            if let Some(policy) = p.policy {
                c.placement = match policy {
                    FilePlacementPolicy::LeastLoaded => PlacementPolicy::LeastLoaded,
                    FilePlacementPolicy::Priority => PlacementPolicy::Priority,
                    FilePlacementPolicy::SloAware => PlacementPolicy::SloAware,
                    FilePlacementPolicy::CostOptimized => PlacementPolicy::CostOptimized,
                    FilePlacementPolicy::Adaptive => PlacementPolicy::Adaptive,
                };
            }
            if let Some(ms) = p.urgent_slack_ms {
                c.urgent_slack = millis("placement.urgent_slack_ms", ms, false)?;
            }
        }
        if let Some(slo) = file.slo {
            let levels = slo.by_index();
            for ((p, target), given) in Priority::ALL.into_iter().zip(c.slo.iter_mut()).zip(levels)
            {
                let Some(given) = given else { continue };
                let key = |f: &str| format!("slo.{p}.{f}");
                if let Some(ms) = given.p95_ms {
                    target.p95 = millis(&key("p95_ms"), ms, true)?;
                }
                if let Some(ms) = given.p99_ms {
                    target.p99 = millis(&key("p99_ms"), ms, true)?;
                }
                if let Some(ms) = given.timeout_ms {
                    target.timeout = millis(&key("timeout_ms"), ms, true)?;
                }
            }
        }
        if let Some(t) = file.tenants {
            c.tenants.max_queued = t.max_queued;
            c.tenants.max_queued_tokens = t.max_queued_tokens;
            c.tenants.top_n = t.top_n.unwrap_or(c.tenants.top_n);
            c.tenants.overrides = t
                .overrides
                .into_iter()
                .map(|(name, o)| {
                    let over = TenantOverride {
                        weight: o.weight.unwrap_or(1.0),
                        max_queued: o.max_queued,
                        max_queued_tokens: o.max_queued_tokens,
                    };
                    (name, over)
                })
                .collect();
        }
        if let Some(p) = file.preemption {
            c.preemption.enabled = p.enabled.unwrap_or(c.preemption.enabled);
            if let Some(g) = p.min_priority_gap {
                c.preemption.min_gap = Preemption::gap(g)?;
            }
            if let Some(n) = p.max_displacements {
                c.preemption.max_displacements = Preemption::cap(n)?;
            }
        }
        c.cpu_workers = file.cpu_workers.unwrap_or(c.cpu_workers);
        if let Some(ms) = file.shutdown_timeout_ms {
            c.shutdown_timeout = millis("shutdown_timeout_ms", ms, false)?;
        }
        c.workers = file
            .workers
            .into_iter()
            .enumerate()
            .map(|(i, w)| WorkerSpec {
                name: w.name.unwrap_or_else(|| format!("worker{i}")),
                capacity: Capacity {
                    slots: w.slots,
                    tokens: w.tokens,
                    bytes: w.bytes.unwrap_or(u64::MAX),
                },
                speed: w.speed.unwrap_or(1.0),
                cost_per_hour: w.cost_per_hour.unwrap_or(0.0),
            })
            .collect();
        c.validate()?;
        Ok(c)
    }

    /// Reads a config from a TOML file; see [`from_toml_str`](Self::from_toml_str).
    pub fn from_toml_file(path: impl AsRef<std::path::Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Parse {
            message: format!("{}: {e}", path.display()),
        })?;
        Self::from_toml_str(&text).map_err(|e| match e {
            ConfigError::Parse { message } => ConfigError::Parse {
                message: format!("{}: {message}", path.display()),
            },
            other => other,
        })
    }
}
