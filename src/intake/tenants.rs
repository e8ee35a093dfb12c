//! The tenant table: one entry per tenant id seen, read and updated by
//! every submitting thread while tenants appear at run time.
//!
//! A `DashMap` from id to an `Arc` of the tenant's state, whose fields are
//! atomics: a submit finds (or adds) the entry, takes the quota on it
//! ([`Quota`]) and keeps the `Arc` in its request, so nothing after the
//! lookup touches the map again. The collector gives the quota back at
//! launch through that `Arc`, and the worker records the request's
//! latency through it.
//!
//! # Bounded whatever ids clients send
//!
//! The map is pruned by the submit that grows it past twice its size after
//! the last prune (at least [`PRUNE_FLOOR`] entries): every entry that no
//! request holds (its `Arc` count is the map's alone) and that the figures
//! do not name is removed, its counts folded into `other`. So the table
//! holds the tenants with requests in the runtime, the named ones, and at
//! most as many again, and each prune is paid for by the inserts since the
//! last (amortised O(1) per new tenant). Latency buckets (2 KB) are held
//! only by the named tenants; the rest share `other`'s.

use std::sync::{Arc, OnceLock};

use crossbeam::utils::CachePadded;
use dashmap::DashMap;

use super::quota::{Quota, QuotaExceeded, UNLIMITED};
use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// The table is not pruned below this many entries.
pub const PRUNE_FLOOR: usize = 1024;

/// The id of requests that name no tenant.
pub const DEFAULT_TENANT: &str = "default";

/// The id the figures give every tenant they do not name, together. A
/// tenant whose own id is this one is never named: its figures are
/// `other`'s, so the label cannot appear twice.
pub const OTHER_TENANTS: &str = "other";

/// Sub-buckets per power of two of the latency buckets: 8, so a bucket
/// spans 1/8 of its octave and a percentile read at its middle is within
/// about 6% of the true value.
const SUB_BITS: u32 = 3;
/// Microseconds up to 2^32 (71 minutes) in 32 octaves.
const BUCKETS: usize = 32 << SUB_BITS;

/// A latency histogram of atomic buckets, in microseconds.
pub struct LatencyBuckets {
    counts: Box<[AtomicU64]>,
}

impl std::fmt::Debug for LatencyBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyBuckets")
            .field("count", &self.count())
            .finish()
    }
}

impl Default for LatencyBuckets {
    fn default() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

fn bucket_of(us: u64) -> usize {
    let us = us.clamp(1, (1 << 32) - 1);
    let octave = 63 - us.leading_zeros();
    // The SUB_BITS bits below the top one, or fewer for small octaves.
    let sub = if octave >= SUB_BITS {
        (us >> (octave - SUB_BITS)) & ((1 << SUB_BITS) - 1)
    } else {
        (us << (SUB_BITS - octave)) & ((1 << SUB_BITS) - 1)
    };
    ((octave as usize) << SUB_BITS) | sub as usize
}

/// The middle of bucket `b`, in microseconds.
fn middle_of(b: usize) -> f64 {
    let octave = (b >> SUB_BITS) as i32;
    let sub = (b & ((1 << SUB_BITS) - 1)) as f64;
    let width = 2f64.powi(octave) / f64::from(1 << SUB_BITS);
    2f64.powi(octave) + (sub + 0.5) * width
}

impl LatencyBuckets {
    /// Records one latency. `Relaxed`: a count, read only for figures.
    pub fn record(&self, us: u64) {
        self.counts[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The `q` quantile (0..=1) in microseconds; 0 with no samples.
    pub fn quantile(&self, q: f64) -> f64 {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        quantile_of(&counts, q)
    }

    /// Adds these counts into `into` (a plain copy, for a report).
    pub fn add_to(&self, into: &mut [u64]) {
        for (i, c) in into.iter_mut().zip(self.counts.iter()) {
            *i += c.load(Ordering::Relaxed);
        }
    }

    /// Empty counts the size of a histogram, for [`add_to`](Self::add_to).
    pub fn zeroed() -> Vec<u64> {
        vec![0; BUCKETS]
    }
}

/// The `q` quantile of bucket counts, in microseconds; 0 with none.
pub fn quantile_of(counts: &[u64], q: f64) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (b, &c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return middle_of(b);
        }
    }
    middle_of(counts.len() - 1)
}

/// One tenant: its quota and its figures. Every field is an atomic (or
/// set once), so submit threads, the collector and the workers share it
/// through an `Arc` with no lock.
#[derive(Debug)]
pub struct TenantState {
    name: Arc<str>,
    /// Written by submit threads and the collector (at launch).
    quota: Quota,
    /// Written by the collector (at launch), on a line of their own: the
    /// workers write `completed` at the same rate.
    launched: CachePadded<AtomicU64>,
    served_tokens: AtomicU64,
    refused: AtomicU64,
    /// Written by the workers.
    completed: CachePadded<AtomicU64>,
    /// Set once the figures name this tenant; until then its latencies go
    /// to the table's `other`.
    latency: OnceLock<LatencyBuckets>,
    /// Named by the figures' last ranking: kept through a prune.
    named: AtomicBool,
}

impl TenantState {
    fn new(name: Arc<str>, limits: (u64, u64)) -> Self {
        Self {
            name,
            quota: Quota::new(limits.0, limits.1),
            launched: CachePadded::new(AtomicU64::new(0)),
            served_tokens: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            completed: CachePadded::new(AtomicU64::new(0)),
            latency: OnceLock::new(),
            named: AtomicBool::new(false),
        }
    }

    /// The tenant's id.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The collector launched `n` of its requests, of `tokens` in all.
    pub fn launched(&self, n: u64, tokens: u64) {
        self.launched.fetch_add(n, Ordering::Relaxed);
        self.served_tokens.fetch_add(tokens, Ordering::Relaxed);
    }

    /// The executor reported a request's real cost: `charged` becomes `real`.
    pub fn correct_served(&self, charged: u64, real: u64) {
        if real >= charged {
            self.served_tokens
                .fetch_add(real - charged, Ordering::Relaxed);
        } else {
            self.served_tokens
                .fetch_sub(charged - real, Ordering::Relaxed);
        }
    }

    /// Figures: a snapshot of this tenant's counts.
    pub fn figures(&self) -> TenantFigures {
        let (queued, queued_tokens) = self.quota.queued();
        TenantFigures {
            launched: self.launched.load(Ordering::Relaxed),
            served_tokens: self.served_tokens.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            queued,
            queued_tokens,
        }
    }

    /// One of its requests ended after launch, `us` microseconds after it
    /// was received; `other` takes the latency while the figures do not
    /// name this tenant.
    pub fn completed(&self, us: u64, other: &LatencyBuckets) {
        self.completed_many(1);
        self.latency().unwrap_or(other).record(us);
    }

    /// `n` of its requests ended after launch (their latencies recorded
    /// apart, with [`record_latency`](Self::record_latency)).
    pub fn completed_many(&self, n: u64) {
        self.completed.fetch_add(n, Ordering::Relaxed);
    }

    /// Records one latency, in this tenant's buckets or `other`'s.
    pub fn record_latency(&self, us: u64, other: &LatencyBuckets) {
        self.latency().unwrap_or(other).record(us);
    }

    /// Its latency buckets, once the figures name it.
    pub fn latency(&self) -> Option<&LatencyBuckets> {
        self.latency.get()
    }
}

/// A tenant's counts at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantFigures {
    /// Requests launched.
    pub launched: u64,
    /// Tokens launched (corrected by what executors report).
    pub served_tokens: u64,
    /// Requests refused for its quota.
    pub refused: u64,
    /// Requests completed (any outcome after launch).
    pub completed: u64,
    /// Requests queued now (counted while a quota applies, and always for
    /// a named tenant).
    pub queued: u64,
    /// Tokens queued now, likewise.
    pub queued_tokens: u64,
}

impl TenantFigures {
    fn add(&mut self, o: &TenantFigures) {
        self.launched += o.launched;
        self.served_tokens += o.served_tokens;
        self.refused += o.refused;
        self.completed += o.completed;
        self.queued += o.queued;
        self.queued_tokens += o.queued_tokens;
    }

    /// What ranks tenants for the figures: requests launched, refused and
    /// queued.
    pub fn traffic(&self) -> u64 {
        self.launched + self.refused + self.queued
    }
}

/// A request's hold on its tenant while it is queued: the quota it took,
/// given back when the request launches ([`launch`](Self::launch), which
/// hands over the tenant for the figures) or is dropped unlaunched.
#[derive(Debug)]
pub struct TenantHold {
    /// Always `Some` until `launch` takes it.
    state: Option<Arc<TenantState>>,
    tokens: u32,
    /// The request named its tenant (else it is the default tenant's,
    /// held for a quota).
    named: bool,
}

impl TenantHold {
    /// The tenant.
    pub fn state(&self) -> &Arc<TenantState> {
        self.state
            .as_ref()
            .expect("a hold keeps its tenant until launch consumes the hold")
    }

    /// The tenant id the request named, if it named one.
    pub fn named(&self) -> Option<&Arc<str>> {
        self.named.then(|| &self.state().name)
    }

    /// The request launched: the quota goes back, the service is counted,
    /// and the tenant is handed over for the request's figures.
    pub fn launch(self) -> Arc<TenantState> {
        let tokens = u64::from(self.tokens);
        self.launched_serving(tokens)
    }

    /// A hold again for a launched request of `tokens` that waits again
    /// (its running batch stopped for more urgent work): the quota is
    /// taken back whatever its limits, since the request was admitted.
    /// `named`: whether the request named its tenant.
    pub fn rejoin(state: Arc<TenantState>, tokens: u32, named: bool) -> Self {
        state.quota.take_back(u64::from(tokens));
        Self {
            state: Some(state),
            tokens,
            named,
        }
    }

    /// Whether the request named its tenant.
    pub fn is_named(&self) -> bool {
        self.named
    }

    /// The request launched as a deduplicated twin of another, which runs
    /// for both: the quota goes back, and no service is counted.
    pub fn launch_free(self) -> Arc<TenantState> {
        self.launched_serving(0)
    }

    /// Gives the quota back, counts one request launched serving `tokens`,
    /// and hands the tenant over (the drop then gives back nothing).
    fn launched_serving(mut self, tokens: u64) -> Arc<TenantState> {
        let state = self
            .state
            .take()
            .expect("a hold keeps its tenant until launch consumes the hold");
        state.quota.give_back(u64::from(self.tokens));
        state.launched(1, tokens);
        state
    }
}

impl Drop for TenantHold {
    fn drop(&mut self) {
        // Unlaunched: the quota goes back.
        if let Some(state) = &self.state {
            state.quota.give_back(u64::from(self.tokens));
        }
    }
}

/// What [`Tenants::hold`] refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaRefusal {
    /// The tenant.
    pub tenant: Arc<str>,
    /// The limit met.
    pub exceeded: QuotaExceeded,
}

/// The tenant table; see the module docs.
#[derive(Debug)]
pub struct Tenants {
    map: DashMap<Arc<str>, Arc<TenantState>>,
    default: Arc<TenantState>,
    /// Limits (requests, tokens) of a tenant with no override, and the
    /// overrides, as the config last set them.
    limits: arc_swap::ArcSwap<Limits>,
    /// Whether any quota applies (a request naming no tenant then takes
    /// the default tenant's).
    any_quota: AtomicBool,
    /// Counts of pruned tenants.
    gone: Gone,
    /// Latencies of every tenant the figures do not name.
    other_latency: LatencyBuckets,
    /// The size past which an insert prunes.
    prune_at: AtomicUsize,
    /// Some request has named a tenant: from then on the default tenant's
    /// latencies are recorded too (before, they would be every request's,
    /// which the SLA report has already).
    named_seen: AtomicBool,
}

#[derive(Debug, Default)]
struct Gone {
    launched: AtomicU64,
    served_tokens: AtomicU64,
    refused: AtomicU64,
    completed: AtomicU64,
}

/// Quotas by tenant, with a default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// (requests, tokens) for a tenant with no override.
    pub default: (u64, u64),
    /// Per tenant.
    pub overrides: std::collections::HashMap<Arc<str>, (u64, u64)>,
}

impl Limits {
    /// No quota for anyone.
    pub fn none() -> Self {
        Self {
            default: (UNLIMITED, UNLIMITED),
            overrides: Default::default(),
        }
    }

    fn of(&self, tenant: &str) -> (u64, u64) {
        self.overrides.get(tenant).copied().unwrap_or(self.default)
    }

    fn any(&self) -> bool {
        self.default != (UNLIMITED, UNLIMITED)
            || self
                .overrides
                .values()
                .any(|&l| l != (UNLIMITED, UNLIMITED))
    }
}

/// The figures of the most active tenants and of the rest.
#[derive(Debug, Clone)]
pub struct Ranked {
    /// The named tenants, most active first.
    pub named: Vec<Arc<TenantState>>,
    /// Every other tenant's counts, pruned ones included.
    pub other: TenantFigures,
    /// Tenants in the table now (the default one included).
    pub tracked: usize,
}

impl Tenants {
    /// A table with these quotas.
    pub fn new(limits: Limits) -> Self {
        let any = limits.any();
        let default = Arc::new(TenantState::new(
            DEFAULT_TENANT.into(),
            limits.of(DEFAULT_TENANT),
        ));
        Self {
            map: DashMap::new(),
            default,
            limits: arc_swap::ArcSwap::from_pointee(limits),
            any_quota: AtomicBool::new(any),
            gone: Gone::default(),
            other_latency: LatencyBuckets::default(),
            prune_at: AtomicUsize::new(PRUNE_FLOOR),
            named_seen: AtomicBool::new(false),
        }
    }

    /// The tenant of requests that name none.
    pub fn default_tenant(&self) -> &Arc<TenantState> {
        &self.default
    }

    /// Latencies of the tenants the figures do not name.
    pub fn other_latency(&self) -> &LatencyBuckets {
        &self.other_latency
    }

    /// Takes `tokens` of `tenant`'s quota (the default tenant's for
    /// `None`); `Ok(None)` for a request naming no tenant while no quota
    /// applies, which skips the table entirely.
    ///
    /// ```
    /// use convoy::intake::{Limits, Tenants};
    /// let mut limits = Limits::none();
    /// limits.default = (1, u64::MAX);
    /// let t = Tenants::new(limits);
    /// let held = t.hold(Some("acme"), 3).unwrap().expect("a named tenant is held");
    /// assert!(t.hold(Some("acme"), 3).is_err(), "one request queued is the quota");
    /// drop(held);
    /// assert!(t.hold(Some("acme"), 3).is_ok());
    /// ```
    #[inline]
    pub fn hold(
        &self,
        tenant: Option<&str>,
        tokens: u32,
    ) -> Result<Option<TenantHold>, QuotaRefusal> {
        // Inlined into submit: most requests name no tenant, and with no
        // quota that is one relaxed load.
        if tenant.is_none() && !self.any_quota.load(Ordering::Relaxed) {
            return Ok(None);
        }
        self.hold_tenant(tenant, tokens)
    }

    fn hold_tenant(
        &self,
        tenant: Option<&str>,
        tokens: u32,
    ) -> Result<Option<TenantHold>, QuotaRefusal> {
        let (state, named) = match tenant {
            Some(name) if name != DEFAULT_TENANT => (self.entry(name), true),
            _ if !self.any_quota.load(Ordering::Relaxed) => return Ok(None),
            _ => (self.default.clone(), false),
        };
        match state.quota.try_take(u64::from(tokens)) {
            Ok(()) => Ok(Some(TenantHold {
                state: Some(state),
                tokens,
                named,
            })),
            Err(exceeded) => {
                state.refused.fetch_add(1, Ordering::Relaxed);
                Err(QuotaRefusal {
                    tenant: state.name.clone(),
                    exceeded,
                })
            }
        }
    }

    fn entry(&self, name: &str) -> Arc<TenantState> {
        if let Some(s) = self.map.get(name) {
            return s.value().clone();
        }
        if !self.named_seen.load(Ordering::Relaxed) {
            self.named_seen.store(true, Ordering::Relaxed);
        }
        let name: Arc<str> = name.into();
        let limits = self.limits.load().of(&name);
        let state = self
            .map
            .entry(name.clone())
            .or_insert_with(|| Arc::new(TenantState::new(name, limits)))
            .value()
            .clone();
        if self.map.len() > self.prune_at.load(Ordering::Relaxed) {
            self.prune();
        }
        state
    }

    /// Removes every entry no request holds and the figures do not name,
    /// folding its counts into `other`.
    fn prune(&self) {
        self.map.retain(|_, s| {
            // The map's own reference alone: no request holds it, and no
            // submit is between its lookup and its hold (the lookup's
            // clone would count), while `retain` holds the shard's lock.
            let keep = Arc::strong_count(s) > 1 || s.named.load(Ordering::Relaxed);
            if !keep {
                let f = s.figures();
                self.gone.launched.fetch_add(f.launched, Ordering::Relaxed);
                self.gone
                    .served_tokens
                    .fetch_add(f.served_tokens, Ordering::Relaxed);
                self.gone.refused.fetch_add(f.refused, Ordering::Relaxed);
                self.gone
                    .completed
                    .fetch_add(f.completed, Ordering::Relaxed);
            }
            keep
        });
        self.prune_at
            .store((2 * self.map.len()).max(PRUNE_FLOOR), Ordering::Relaxed);
    }

    /// New quotas (a reload): every tenant's, now and to come.
    pub fn set_limits(&self, limits: Limits) {
        self.any_quota.store(limits.any(), Ordering::Relaxed);
        self.default
            .quota
            .set_limits(limits.of(DEFAULT_TENANT).0, limits.of(DEFAULT_TENANT).1);
        for s in self.map.iter() {
            let (r, t) = limits.of(s.key());
            s.quota.set_limits(r, t);
        }
        self.limits.store(Arc::new(limits));
    }

    /// Ranks the tenants by traffic: the `top_n` most active are named
    /// (their latencies recorded apart from now on), the rest summed.
    /// A control path (reports, scrapes): it visits every entry.
    pub fn rank(&self, top_n: usize) -> Ranked {
        let mut all: Vec<(u64, Arc<TenantState>)> = self
            .map
            .iter()
            .map(|s| s.value().clone())
            .chain(std::iter::once(self.default.clone()))
            .map(|s| (s.figures().traffic(), s))
            .collect();
        let tracked = all.len();
        all.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.name.cmp(&b.1.name)));
        let mut other = TenantFigures {
            launched: self.gone.launched.load(Ordering::Relaxed),
            served_tokens: self.gone.served_tokens.load(Ordering::Relaxed),
            refused: self.gone.refused.load(Ordering::Relaxed),
            completed: self.gone.completed.load(Ordering::Relaxed),
            queued: 0,
            queued_tokens: 0,
        };
        let mut named = Vec::with_capacity(top_n.min(all.len()));
        for (traffic, s) in all {
            let name = named.len() < top_n && traffic > 0 && s.name.as_ref() != OTHER_TENANTS;
            s.named.store(name, Ordering::Relaxed);
            if name {
                s.latency.get_or_init(LatencyBuckets::default);
                named.push(s);
            } else {
                other.add(&s.figures());
            }
        }
        Ranked {
            named,
            other,
            tracked,
        }
    }

    /// Whether a request has named a tenant yet (see `named_seen`).
    pub fn named_seen(&self) -> bool {
        self.named_seen.load(Ordering::Relaxed)
    }

    /// Tenants in the table now, the default one included.
    pub fn tracked(&self) -> usize {
        self.map.len() + 1
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_values_within_an_eighth() {
        for us in [
            1u64,
            2,
            3,
            7,
            8,
            9,
            100,
            1_000,
            12_345,
            1 << 20,
            3_600_000_000,
        ] {
            let mid = middle_of(bucket_of(us));
            let err = (mid - us as f64).abs() / us as f64;
            assert!(err <= 0.125, "{us} µs read as {mid}");
        }
        let b = LatencyBuckets::default();
        (1..=100).for_each(|ms| b.record(ms * 1_000));
        let p50 = b.quantile(0.5);
        let p99 = b.quantile(0.99);
        assert!((45_000.0..=56_000.0).contains(&p50), "{p50}");
        assert!((93_000.0..=106_000.0).contains(&p99), "{p99}");
        assert_eq!(b.count(), 100);
        assert_eq!(quantile_of(&LatencyBuckets::zeroed(), 0.5), 0.0);
    }

    #[test]
    fn an_unnamed_request_skips_the_table_unless_a_quota_applies() {
        let t = Tenants::new(Limits::none());
        assert!(t.hold(None, 1).unwrap().is_none());
        assert!(t.hold(Some(DEFAULT_TENANT), 1).unwrap().is_none());
        let mut limits = Limits::none();
        limits.default = (1, UNLIMITED);
        t.set_limits(limits);
        let h = t
            .hold(None, 1)
            .unwrap()
            .expect("held by the default tenant");
        assert!(Arc::ptr_eq(h.state(), t.default_tenant()));
        assert_eq!(t.hold(None, 1).unwrap_err().tenant.as_ref(), DEFAULT_TENANT);
    }

    #[test]
    fn a_launch_gives_the_quota_back_once_and_counts_the_service() {
        let mut limits = Limits::none();
        limits.overrides.insert("a".into(), (1, UNLIMITED));
        let t = Tenants::new(limits);
        let h = t.hold(Some("a"), 7).unwrap().unwrap();
        assert!(t.hold(Some("a"), 1).is_err());
        let state = h.launch();
        let f = state.figures();
        assert_eq!(
            (f.queued, f.launched, f.served_tokens, f.refused),
            (0, 1, 7, 1)
        );
        let _next = t.hold(Some("a"), 1).unwrap();
        drop(state);
        assert_eq!(
            t.hold(Some("a"), 1).unwrap_err().exceeded,
            QuotaExceeded::Requests { limit: 1 }
        );
        assert!(
            t.hold(Some("b"), 1).is_ok(),
            "b has no override and no default quota"
        );
    }

    /// 100k distinct ids, each held and let go in turn: the table stays
    /// within twice the prune floor, and their counts survive in `other`.
    #[test]
    fn a_flood_of_ids_keeps_the_table_bounded() {
        let t = Tenants::new(Limits::none());
        for i in 0..100_000 {
            let h = t.hold(Some(&format!("t{i}")), 1).unwrap().unwrap();
            drop(h.launch());
            assert!(t.tracked() <= 2 * PRUNE_FLOOR + 2, "{} at {i}", t.tracked());
        }
        let r = t.rank(20);
        assert_eq!(r.named.len(), 20);
        let named: u64 = r.named.iter().map(|s| s.figures().launched).sum();
        assert_eq!(named + r.other.launched, 100_000);
    }

    #[test]
    fn a_tenant_called_other_is_counted_as_other() {
        let t = Tenants::new(Limits::none());
        for name in ["other", "other", "a"] {
            drop(t.hold(Some(name), 1).unwrap().unwrap().launch());
        }
        let r = t.rank(5);
        let names: Vec<&str> = r.named.iter().map(|s| s.name().as_ref()).collect();
        assert_eq!(names, ["a"]);
        assert_eq!(r.other.launched, 2);
    }

    #[test]
    fn held_and_named_tenants_survive_a_prune() {
        let t = Tenants::new(Limits::none());
        let held = t.hold(Some("held"), 1).unwrap().unwrap();
        let named = t.hold(Some("named"), 1).unwrap().unwrap();
        drop(named.launch());
        t.rank(2);
        for i in 0..3 * PRUNE_FLOOR {
            drop(t.hold(Some(&format!("x{i}")), 1));
        }
        assert!(t.map.contains_key("held"));
        assert!(t.map.contains_key("named"));
        drop(held);
    }
}
