//! The tenant settings: fair shares within a level (`ordering.fairness`),
//! weights, quotas at submit and the figures' label bound (`[tenants]`).
//! Every one is reloadable.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::validate::invalid;
use super::ConfigError;
use crate::intake::UNLIMITED;

/// The longest tenant id, in bytes. A server takes ids from its clients;
/// without a bound one request could name a tenant of megabytes, which
/// the tenant table and the figures would then hold.
pub const MAX_TENANT_LEN: usize = 256;

/// The largest weight a tenant may have. A weight divides the service a
/// tenant is charged; past a million the charge of a one-token request
/// rounds to the smallest step, and such a tenant's share is unbounded in
/// practice.
pub const MAX_WEIGHT: f64 = 1e6;

/// How requests of one priority level are ordered between tenants
/// (`ordering.fairness`; reloadable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Fairness {
    /// The Virtual Token Counter (Sheng et al., OSDI 2024) within each
    /// level: the backlogged tenant that has received the least weighted
    /// service goes next, counted in tokens; a tenant that returns from
    /// idle starts level with the others, never with banked credit. With
    /// one tenant (no request names one) it orders exactly as `None`.
    #[default]
    Vtc,
    /// No tenant ordering: within a level, front insertions, then
    /// deadlines, then arrival order, whoever sent them.
    None,
}

impl Fairness {
    /// The name `ordering.fairness` uses.
    ///
    /// ```
    /// assert_eq!(convoy::Fairness::Vtc.as_str(), "vtc");
    /// assert_eq!("none".parse::<convoy::Fairness>(), Ok(convoy::Fairness::None));
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vtc => "vtc",
            Self::None => "none",
        }
    }
}

impl std::str::FromStr for Fairness {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vtc" => Ok(Self::Vtc),
            "none" => Ok(Self::None),
            _ => Err(format!("unknown fairness {s:?} (expected vtc or none)")),
        }
    }
}

/// One tenant's settings, where they differ from the default
/// (`[tenants.overrides.NAME]`). A tenant named here that never sends
/// anything costs nothing: its entry applies when it first appears.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TenantOverride {
    /// Its share of service against the others' within a level: weight 2
    /// gets twice what weight 1 gets while both are backlogged. Default 1.
    pub weight: f64,
    /// Its quota of requests queued; `None`: the default's.
    pub max_queued: Option<u64>,
    /// Its quota of tokens queued; `None`: the default's.
    pub max_queued_tokens: Option<u64>,
}

impl Default for TenantOverride {
    fn default() -> Self {
        Self {
            weight: 1.0,
            max_queued: None,
            max_queued_tokens: None,
        }
    }
}

/// Tenant quotas and figures (`[tenants]`). Quotas bound what one tenant
/// may have queued (submitted and not yet launched); a submit past one is
/// refused with [`SubmitErrorKind::TenantQuota`](crate::SubmitErrorKind::TenantQuota).
#[derive(Debug, Clone, PartialEq)]
pub struct TenantsConfig {
    /// Every tenant's quota of requests queued, unless overridden; `None`
    /// (the default): no quota.
    pub max_queued: Option<u64>,
    /// Every tenant's quota of tokens queued, unless overridden; `None`
    /// (the default): no quota.
    pub max_queued_tokens: Option<u64>,
    /// How many tenants the figures name (the most active by requests
    /// submitted); the rest are summed under `other`. Default 20. Bounds
    /// the Prometheus label set whatever ids clients send.
    pub top_n: usize,
    /// Per-tenant weights and quotas, by tenant id.
    pub overrides: BTreeMap<String, TenantOverride>,
}

impl Default for TenantsConfig {
    fn default() -> Self {
        Self {
            max_queued: None,
            max_queued_tokens: None,
            top_n: 20,
            overrides: BTreeMap::new(),
        }
    }
}

/// The most tenants the figures may name: each named one is a label
/// value on every per-tenant series.
pub const MAX_TOP_N: usize = 1000;

impl TenantsConfig {
    /// The quotas as the tenant table takes them.
    pub(crate) fn limits(&self) -> crate::intake::Limits {
        let (r, t) = (
            self.max_queued.unwrap_or(UNLIMITED),
            self.max_queued_tokens.unwrap_or(UNLIMITED),
        );
        crate::intake::Limits {
            default: (r, t),
            overrides: self
                .overrides
                .iter()
                .map(|(name, o)| {
                    let own = (o.max_queued.unwrap_or(r), o.max_queued_tokens.unwrap_or(t));
                    (Arc::from(name.as_str()), own)
                })
                .collect(),
        }
    }

    /// The weights that are not 1, by tenant id.
    pub(crate) fn weights(&self) -> HashMap<Arc<str>, f64> {
        self.overrides
            .iter()
            .filter(|(_, o)| o.weight != 1.0)
            .map(|(name, o)| (Arc::from(name.as_str()), o.weight))
            .collect()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let quota = |key: String, q: Option<u64>| match q {
            Some(0) => Err(invalid(
                key,
                "a quota of 0 refuses every request; leave it out for no quota",
            )),
            _ => Ok(()),
        };
        quota("tenants.max_queued".into(), self.max_queued)?;
        quota("tenants.max_queued_tokens".into(), self.max_queued_tokens)?;
        if self.top_n == 0 || self.top_n > MAX_TOP_N {
            return Err(invalid(
                "tenants.top_n",
                format!("{} is not between 1 and {MAX_TOP_N}", self.top_n),
            ));
        }
        for (name, o) in &self.overrides {
            let key = |f: &str| format!("tenants.overrides.{name}.{f}");
            check_tenant_id(name)
                .map_err(|why| invalid(format!("tenants.overrides.{name}"), why))?;
            if !(o.weight.is_finite() && o.weight > 0.0 && o.weight <= MAX_WEIGHT) {
                return Err(invalid(
                    key("weight"),
                    format!("{} is not a number in (0, {MAX_WEIGHT}]", o.weight),
                ));
            }
            quota(key("max_queued"), o.max_queued)?;
            quota(key("max_queued_tokens"), o.max_queued_tokens)?;
        }
        Ok(())
    }
}

/// Why a tenant id cannot be used, if it cannot: empty, or longer than
/// [`MAX_TENANT_LEN`] bytes.
pub(crate) fn check_tenant_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("a tenant id may not be empty".into());
    }
    if id.len() > MAX_TENANT_LEN {
        return Err(format!(
            "a tenant id of {} bytes is over the limit of {MAX_TENANT_LEN}",
            id.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_fall_back_to_the_default_and_weights_to_one() {
        let mut c = TenantsConfig {
            max_queued: Some(10),
            ..TenantsConfig::default()
        };
        c.overrides.insert(
            "big".into(),
            TenantOverride {
                weight: 2.0,
                max_queued: Some(100),
                max_queued_tokens: Some(5),
            },
        );
        let limits = c.limits();
        assert_eq!(limits.overrides[&Arc::from("big")], (100, 5));
        assert_eq!(limits.default, (10, UNLIMITED));
        assert_eq!(c.weights(), HashMap::from([(Arc::from("big"), 2.0)]));
        assert_eq!(
            TenantsConfig::default().limits(),
            crate::intake::Limits::none()
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let bad = |o: TenantOverride| {
            let mut c = TenantsConfig::default();
            c.overrides.insert("t".into(), o);
            c.validate().unwrap_err().to_string()
        };
        for w in [0.0, -1.0, f64::NAN, f64::INFINITY, 2e6] {
            let e = bad(TenantOverride {
                weight: w,
                ..TenantOverride::default()
            });
            assert!(e.contains("tenants.overrides.t.weight"), "{e}");
        }
        let e = bad(TenantOverride {
            max_queued: Some(0),
            ..TenantOverride::default()
        });
        assert!(e.contains("tenants.overrides.t.max_queued"), "{e}");
        let zero = TenantsConfig {
            max_queued_tokens: Some(0),
            ..TenantsConfig::default()
        };
        assert!(zero
            .validate()
            .unwrap_err()
            .to_string()
            .contains("tenants.max_queued_tokens"));
        let n = TenantsConfig {
            top_n: 0,
            ..TenantsConfig::default()
        };
        assert!(n
            .validate()
            .unwrap_err()
            .to_string()
            .contains("tenants.top_n"));
        assert!(check_tenant_id(&"x".repeat(MAX_TENANT_LEN)).is_ok());
        assert!(check_tenant_id(&"x".repeat(MAX_TENANT_LEN + 1)).is_err());
        assert!(check_tenant_id("").is_err());
    }
}
