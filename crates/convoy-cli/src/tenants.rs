//! Tenants in a replay: a noisy neighbour and the well-behaved tenants
//! beside it (`convoy compare --tenants`), their latencies as the client
//! saw them, and how fairly the service was shared (Jain's index).

use hdrhistogram::Histogram;
use serde::Serialize;

/// Which tenant sends each row: one noisy tenant sending `noisy_weight`
/// times the load of each of `quiet` well-behaved ones, drawn per row from
/// a seed, so every run sends the same rows as the same tenants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TenantMix {
    /// Well-behaved tenants.
    pub quiet: usize,
    /// The noisy tenant's load as a multiple of one quiet tenant's.
    pub noisy_weight: u32,
    /// Whether the noisy tenant sends at all (its rows are skipped when
    /// not: the baseline of the quiet tenants alone).
    pub noisy_present: bool,
    /// The seed of the draw.
    pub seed: u64,
}

impl Default for TenantMix {
    fn default() -> Self {
        Self {
            quiet: 4,
            noisy_weight: 10,
            noisy_present: true,
            seed: 7,
        }
    }
}

/// The noisy tenant's index; quiet tenant `k` is `k + 1`.
pub const NOISY: usize = 0;

impl TenantMix {
    /// The tenant of row `index`: [`NOISY`] or a quiet one.
    ///
    /// ```
    /// use convoy_cli::tenants::{TenantMix, NOISY};
    /// let mix = TenantMix::default();
    /// let noisy = (0..14_000).filter(|&i| mix.of(i) == NOISY).count();
    /// assert!((9_500..10_500).contains(&noisy), "10 of every 14 rows: {noisy}");
    /// ```
    pub fn of(&self, index: usize) -> usize {
        let mut state = self
            .seed
            .wrapping_mul(0x9E37_79B9)
            .wrapping_add(index as u64);
        let draw = convoy::model::splitmix64(&mut state)
            % (u64::from(self.noisy_weight) + self.quiet as u64);
        match draw.checked_sub(u64::from(self.noisy_weight)) {
            None => NOISY,
            Some(k) => 1 + k as usize,
        }
    }

    /// Tenant `t`'s id.
    pub fn name(&self, t: usize) -> String {
        if t == NOISY {
            "noisy".into()
        } else {
            format!("quiet-{t}")
        }
    }

    /// Tenants, the noisy one included.
    pub fn count(&self) -> usize {
        self.quiet + 1
    }
}

/// Client-side tallies per tenant.
pub(crate) struct TenantTally {
    pub e2e: Vec<Histogram<u64>>,
    pub offered: Vec<u64>,
    pub refused: Vec<u64>,
    pub demand_tokens: Vec<u64>,
    pub served_tokens: Vec<u64>,
}

impl TenantTally {
    pub fn new(tenants: usize) -> Self {
        Self {
            e2e: (0..tenants)
                .map(|_| {
                    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static, valid bounds")
                })
                .collect(),
            offered: vec![0; tenants],
            refused: vec![0; tenants],
            demand_tokens: vec![0; tenants],
            served_tokens: vec![0; tenants],
        }
    }
}

/// One tenant's line of a replay report.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TenantLine {
    /// Its id.
    pub tenant: String,
    /// Rows it sent.
    pub offered: u64,
    /// Refused at submit.
    pub refused: u64,
    /// Completed.
    pub completed: u64,
    /// End-to-end latency of its completed requests, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Tokens it sent.
    pub demand_tokens: u64,
    /// Tokens of its completed requests.
    pub served_tokens: u64,
}

impl TenantTally {
    pub fn lines(&self, mix: &TenantMix) -> Vec<TenantLine> {
        (0..self.offered.len())
            .filter(|&t| mix.noisy_present || t != NOISY)
            .map(|t| {
                let h = &self.e2e[t];
                TenantLine {
                    tenant: mix.name(t),
                    offered: self.offered[t],
                    refused: self.refused[t],
                    completed: h.len(),
                    p50_ms: h.value_at_quantile(0.5) as f64 / 1e3,
                    p99_ms: h.value_at_quantile(0.99) as f64 / 1e3,
                    demand_tokens: self.demand_tokens[t],
                    served_tokens: self.served_tokens[t],
                }
            })
            .collect()
    }

    /// The quiet tenants' completed latencies together: (p50, p99) in ms.
    pub fn quiet_percentiles(&self) -> (f64, f64) {
        let mut all =
            Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("static, valid bounds");
        for h in self.e2e.iter().skip(1) {
            all.add(h).expect("same bounds");
        }
        (
            all.value_at_quantile(0.5) as f64 / 1e3,
            all.value_at_quantile(0.99) as f64 / 1e3,
        )
    }
}

/// The max-min fair share of `capacity` for each demand (water-filling):
/// a tenant asking for less than an equal share gets what it asks, and
/// what it leaves is shared by the others the same way.
///
/// ```
/// use convoy_cli::tenants::fair_shares;
/// assert_eq!(fair_shares(&[10.0, 100.0, 100.0], 90.0), vec![10.0, 40.0, 40.0]);
/// ```
pub fn fair_shares(demands: &[f64], capacity: f64) -> Vec<f64> {
    let mut order: Vec<usize> = (0..demands.len()).collect();
    order.sort_by(|&a, &b| demands[a].total_cmp(&demands[b]));
    let mut share = vec![0.0; demands.len()];
    let mut left = capacity;
    for (k, &i) in order.iter().enumerate() {
        let equal = left / (order.len() - k) as f64;
        share[i] = demands[i].min(equal);
        left -= share[i];
    }
    share
}

/// Jain's fairness index of each tenant's service against its max-min
/// fair share of the service delivered: 1 when every tenant got its fair
/// share, down to `1/n` when one got everything.
///
/// ```
/// use convoy_cli::tenants::jain;
/// assert!((jain(&[10.0, 40.0, 40.0], &[10.0, 100.0, 100.0]) - 1.0).abs() < 1e-9);
/// assert!(jain(&[0.0, 90.0, 0.0], &[10.0, 100.0, 100.0]) < 0.5);
/// ```
pub fn jain(served: &[f64], demands: &[f64]) -> f64 {
    let fair = fair_shares(demands, served.iter().sum());
    let x: Vec<f64> = served
        .iter()
        .zip(&fair)
        .filter(|(_, f)| **f > 0.0)
        .map(|(s, f)| s / f)
        .collect();
    let (sum, sq): (f64, f64) = x.iter().fold((0.0, 0.0), |(a, b), v| (a + v, b + v * v));
    if sq == 0.0 {
        return 1.0;
    }
    sum * sum / (x.len() as f64 * sq)
}
