//! Tenants: fair shares within a level (VTC), quotas at submit and
//! per-tenant figures, through the runtime. Order of execution and counts
//! only, never timing.

// The quota test keeps every refusal whole, request inside, to check
// each came back.
#![allow(clippy::result_large_err)]

mod common;

use common::{eventually, worker, Hold};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use convoy::{
    BatchingConfig, Config, Fairness, Request, Runtime, SubmitErrorKind, TenantOverride,
    TenantsConfig, Ticket,
};

/// (tenant, sequence number, tokens).
type Job = (u32, u32, u32);
type Ran = Arc<Mutex<Vec<Job>>>;

/// One worker holding one request at a time, so each batch is one request
/// and the order of execution is the collector's order. Input `(9, 0, _)`
/// blocks until `hold` opens, `(t, n, _)` with `n == pause_at` (tenant 0)
/// until `pause` does.
fn one_at_a_time(
    fairness: Fairness,
    tenants: TenantsConfig,
    pause_at: u32,
) -> (Runtime<Job, u32>, Hold, Hold, Ran) {
    let config = Config {
        workers: vec![worker(1, 1 << 20)],
        batching: BatchingConfig {
            max_batch_size: 1,
            max_queue_delay: Duration::ZERO,
            ..Config::default().batching
        },
        // Long enough that aging (rule 1) never steps in: the order is
        // the fairness rule's alone.
        max_wait: Duration::from_secs(600),
        fairness,
        tenants,
        ..Config::default()
    };
    let (hold, pause) = (Hold::default(), Hold::default());
    let ran: Ran = Arc::default();
    let (h, p, r) = (hold.clone(), pause.clone(), ran.clone());
    let rt = Runtime::builder()
        .config(config)
        .batch_fn(move |xs: &[Job]| {
            for &x in xs {
                if x.0 == 9 && x.1 == 0 {
                    h.wait();
                }
                if x.0 == 0 && x.1 == pause_at {
                    p.wait();
                }
            }
            r.lock().unwrap().extend_from_slice(xs);
            xs.iter().map(|x| x.2).collect()
        })
        .build()
        .unwrap();
    (rt, hold, pause, ran)
}

fn submit(rt: &Runtime<Job, u32>, tenant: u32, n: u32, tokens: u32) -> Ticket<u32> {
    rt.handle()
        .submit(
            Request::new((tenant, n, tokens))
                .tenant(format!("t{tenant}"))
                .tokens(tokens),
        )
        .unwrap()
}

/// Blocks the worker with a request of tenant 9 and waits until it runs.
fn block(rt: &Runtime<Job, u32>) -> Ticket<u32> {
    let t = submit(rt, 9, 0, 1);
    eventually("the blocker runs", || rt.stats().batches == 1);
    t
}

fn cost(tenant: u32, n: u32) -> u32 {
    (n * 7 + tenant * 3) % 16 + 1
}

/// The spread of `served(a) − served(b)` over every prefix of `order`
/// while `b` still had requests to come: the most the two drifted apart
/// in any stretch.
fn spread(order: &[Job], a: u32, b: u32, b_total: usize) -> i64 {
    let (mut diff, mut seen_b) = (0i64, 0);
    let (mut lo, mut hi) = (0i64, 0i64);
    for &(t, _, tokens) in order {
        if seen_b == b_total {
            break;
        }
        if t == a {
            diff += i64::from(tokens);
        } else if t == b {
            diff -= i64::from(tokens);
            seen_b += 1;
        }
        lo = lo.min(diff);
        hi = hi.max(diff);
    }
    hi - lo
}

/// Tenant 0 queues 400 requests, then tenant 1 queues 100, both at Normal
/// with 1–16 tokens each. VTC serves them within twice the largest request
/// of each other (32 tokens) over every stretch; arrival order (fairness
/// `none`) serves tenant 0's 400 first, thousands of tokens apart.
#[test]
fn two_backlogged_tenants_are_served_within_the_vtc_bound() {
    let run = |fairness| {
        let (rt, hold, _pause, ran) = one_at_a_time(fairness, TenantsConfig::default(), u32::MAX);
        let blocker = block(&rt);
        let mut tickets = Vec::new();
        for n in 0..400 {
            tickets.push(submit(&rt, 0, n, cost(0, n)));
        }
        for n in 0..100 {
            tickets.push(submit(&rt, 1, n, cost(1, n)));
        }
        hold.open();
        assert!(blocker.wait().is_ok());
        for t in tickets {
            assert!(t.wait().is_ok());
        }
        let order: Vec<Job> = ran
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|j| j.0 != 9)
            .collect();
        assert_eq!(order.len(), 500, "each request ran once");
        spread(&order, 0, 1, 100)
    };
    let vtc = run(Fairness::Vtc);
    assert!(vtc <= 32, "VTC: the two drifted {vtc} tokens apart");
    let fifo = run(Fairness::None);
    assert!(
        fifo > 1_000,
        "arrival order should serve tenant 0 first: {fifo}"
    );
}

/// Weights 2:1 give service 2:1 while both are backlogged, within VTC's
/// bound on the weighted service (2 × 4 tokens).
#[test]
fn weights_two_to_one_give_service_two_to_one() {
    let mut tenants = TenantsConfig::default();
    tenants.overrides.insert(
        "t0".into(),
        TenantOverride {
            weight: 2.0,
            ..TenantOverride::default()
        },
    );
    let (rt, hold, _pause, ran) = one_at_a_time(Fairness::Vtc, tenants, u32::MAX);
    let blocker = block(&rt);
    let tickets: Vec<_> = (0..300)
        .flat_map(|n| [submit(&rt, 1, n, 4), submit(&rt, 0, n, 4)])
        .collect();
    hold.open();
    assert!(blocker.wait().is_ok());
    tickets.into_iter().for_each(|t| assert!(t.wait().is_ok()));
    let order = ran.lock().unwrap().clone();
    // The first 300 after the blocker: both still backlogged throughout.
    let first: Vec<_> = order.iter().filter(|j| j.0 != 9).take(300).collect();
    let a = first.iter().filter(|j| j.0 == 0).count() as i64 * 4;
    let b = first.iter().filter(|j| j.0 == 1).count() as i64 * 4;
    assert!(
        (a / 2 - b).abs() <= 8,
        "weight 2 got {a} tokens, weight 1 got {b}"
    );
}

/// Tenant 1 is idle while tenant 0 gets 200 requests served; when it
/// comes back it shares with tenant 0 from then on (about half of the
/// next 20), not with 200 requests of banked credit (all of them).
#[test]
fn a_tenant_back_from_idle_gets_no_burst_of_banked_credit() {
    let (rt, hold, pause, ran) = one_at_a_time(Fairness::Vtc, TenantsConfig::default(), 200);
    let blocker = block(&rt);
    let mut tickets: Vec<_> = (0..1_000).map(|n| submit(&rt, 0, n, 1)).collect();
    hold.open();
    // Request 200 of tenant 0 holds the worker; tenant 1 arrives then.
    eventually("tenant 0's request 200 runs", || {
        ran.lock().unwrap().iter().filter(|j| j.0 == 0).count() == 200
    });
    tickets.extend((0..100).map(|n| submit(&rt, 1, n, 1)));
    pause.open();
    assert!(blocker.wait().is_ok());
    tickets.into_iter().for_each(|t| assert!(t.wait().is_ok()));
    let order = ran.lock().unwrap().clone();
    let from = order.iter().position(|j| j.0 == 1).expect("tenant 1 ran");
    let next: Vec<u32> = order[from..from + 20].iter().map(|j| j.0).collect();
    let ones = next.iter().filter(|&&t| t == 1).count();
    assert!(
        (8..=12).contains(&ones),
        "tenant 1 took {ones} of the next 20: {next:?}"
    );
}

/// Eight threads race to submit 100 requests each for one tenant with a
/// quota of 100 queued, while the worker is held: exactly 100 are
/// accepted, every other one comes back as `TenantQuota` naming the
/// tenant, with its request; another tenant is not affected; every
/// accepted one completes; and once they launched the quota is free again.
#[test]
fn a_quota_refuses_exactly_past_its_limit_from_many_threads() {
    let tenants = TenantsConfig {
        max_queued: Some(100),
        ..TenantsConfig::default()
    };
    let (rt, hold, _pause, _ran) = one_at_a_time(Fairness::Vtc, tenants, u32::MAX);
    let blocker = block(&rt);
    let results: Vec<_> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..8u32)
            .map(|k| {
                let h = rt.handle();
                s.spawn(move || {
                    (0..100u32)
                        .map(|n| h.submit(Request::new((0, k * 100 + n, 1)).tenant("t0")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    let (accepted, refused): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    assert_eq!(accepted.len(), 100);
    assert_eq!(refused.len(), 700);
    for e in refused.iter().map(|r| r.as_ref().unwrap_err()) {
        assert_eq!(e.kind, SubmitErrorKind::TenantQuota);
        assert_eq!(e.request.tenant_id(), Some("t0"), "the request comes back");
        assert!(
            e.reason.as_deref().unwrap_or("").contains("\"t0\""),
            "{:?}",
            e.reason
        );
    }
    let other = submit(&rt, 1, 0, 1);
    let report = rt.sla_report();
    let t0 = report
        .tenants
        .iter()
        .find(|t| t.tenant == "t0")
        .expect("t0 named");
    assert_eq!((t0.queued, t0.refused), (100, 700));
    hold.open();
    assert!(blocker.wait().is_ok());
    assert!(other.wait().is_ok());
    for t in accepted {
        assert!(t.unwrap().wait().is_ok());
    }
    let again: Vec<_> = (0..100).map(|n| submit(&rt, 0, 1_000 + n, 1)).collect();
    again.into_iter().for_each(|t| assert!(t.wait().is_ok()));
    let stats = rt.stats().total();
    assert_eq!((stats.completed, stats.lost()), (202, 0));
}

/// A tokens quota refuses a request whose tokens would pass it, and a
/// reload that lowers the request quota applies to the next submit.
#[test]
fn a_tokens_quota_and_a_reloaded_quota_apply_at_submit() {
    let tenants = TenantsConfig {
        max_queued_tokens: Some(10),
        ..TenantsConfig::default()
    };
    let (rt, hold, _pause, _ran) = one_at_a_time(Fairness::Vtc, tenants, u32::MAX);
    let blocker = block(&rt);
    let six = submit(&rt, 0, 1, 6);
    let e = rt
        .handle()
        .submit(Request::new((0, 2, 5)).tenant("t0").tokens(5))
        .unwrap_err();
    assert_eq!(e.kind, SubmitErrorKind::TenantQuota);
    assert!(e.reason.unwrap().contains("10 tokens"));
    let four = submit(&rt, 0, 3, 4);
    let mut c = rt.config();
    c.tenants = TenantsConfig {
        max_queued: Some(1),
        ..TenantsConfig::default()
    };
    rt.reload_config(c).unwrap();
    let e = rt
        .handle()
        .submit(Request::new((1, 0, 1)).tenant("t1"))
        .unwrap();
    let refused = rt
        .handle()
        .submit(Request::new((1, 1, 1)).tenant("t1"))
        .unwrap_err();
    assert_eq!(refused.kind, SubmitErrorKind::TenantQuota);
    hold.open();
    for t in [blocker, six, four, e] {
        assert!(t.wait().is_ok());
    }
}

/// 100,000 distinct tenant ids pass through: the tenant table stays
/// bounded, the figures name at most `top_n` tenants plus `other`, the
/// exposition carries no more label values than that, and the counts of
/// every tenant add up.
#[test]
fn a_flood_of_tenant_ids_keeps_memory_and_the_exposition_bounded() {
    let rt = Runtime::builder()
        .config(Config {
            cpu_workers: 2,
            tenants: TenantsConfig {
                top_n: 5,
                ..TenantsConfig::default()
            },
            ..Config::default()
        })
        .batch_fn(|xs: &[u32]| xs.to_vec())
        .build()
        .unwrap();
    let h = rt.handle();
    let mut most = 0;
    for chunk in 0..100u32 {
        let tickets: Vec<_> = (0..1_000u32)
            .map(|i| {
                let id = chunk * 1_000 + i;
                h.submit(Request::new(id).tenant(format!("tenant-{id}")))
                    .unwrap()
            })
            .collect();
        for t in tickets {
            assert!(t.wait().is_ok());
        }
        most = most.max(rt.sla_report().tenants_tracked);
    }
    assert!(most <= 2 * 1024 + 2, "the table held {most} tenants");
    let report = rt.sla_report();
    assert!(report.tenants.len() <= 5);
    let launched: u64 =
        report.tenants.iter().map(|t| t.launched).sum::<u64>() + report.other_tenants.launched;
    assert_eq!(launched, 100_000);
    let text = rt.metrics_text();
    let mut labels: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("convoy_tenant_requests_launched_total{"))
        .collect();
    labels.dedup();
    assert!(labels.len() <= 6, "{labels:?}");
    assert!(text.contains("tenant=\"other\""));
}

/// The `[tenants]` table and `ordering.fairness` from a file, and their
/// bad values: typed errors naming the key.
#[test]
fn the_tenant_settings_read_from_toml_and_name_bad_keys() {
    let c = Config::from_toml_str(
        "[ordering]\nfairness = \"none\"\n[tenants]\nmax_queued = 50\ntop_n = 3\n\
         [tenants.overrides.acme]\nweight = 2.5\nmax_queued_tokens = 900\n",
    )
    .unwrap();
    assert_eq!(c.fairness, Fairness::None);
    assert_eq!((c.tenants.max_queued, c.tenants.top_n), (Some(50), 3));
    assert_eq!(c.tenants.overrides["acme"].weight, 2.5);
    assert_eq!(c.tenants.overrides["acme"].max_queued_tokens, Some(900));
    for (text, key) in [
        ("[ordering]\nfairness = \"lottery\"\n", "ordering.fairness"),
        (
            "[tenants.overrides.x]\nweight = 0.0\n",
            "tenants.overrides.x.weight",
        ),
        (
            "[tenants.overrides.x]\nweight = -1.0\n",
            "tenants.overrides.x.weight",
        ),
        (
            "[tenants.overrides.x]\nweight = nan\n",
            "tenants.overrides.x.weight",
        ),
        ("[tenants]\nmax_queued = 0\n", "tenants.max_queued"),
        ("[tenants]\ntop_n = 0\n", "tenants.top_n"),
    ] {
        let e = Config::from_toml_str(text).unwrap_err().to_string();
        assert!(e.contains(key), "{text:?}: {e}");
    }
    let long = format!("[tenants.overrides.{}]\nweight = 1.0\n", "x".repeat(300));
    assert!(Config::from_toml_str(&long)
        .unwrap_err()
        .to_string()
        .contains("over the limit"));
}

/// A tenant id past the length bound, or empty, is refused as `Invalid`
/// with the request handed back.
#[test]
fn a_bad_tenant_id_is_refused_with_its_request() {
    let rt = common::echo_runtime(1);
    for id in [String::new(), "x".repeat(convoy::MAX_TENANT_LEN + 1)] {
        let e = rt
            .handle()
            .submit(Request::new(1).tenant(id.clone()))
            .unwrap_err();
        assert_eq!(e.kind, SubmitErrorKind::Invalid);
        assert_eq!(e.request.tenant_id(), Some(id.as_str()));
    }
    let ok = "x".repeat(convoy::MAX_TENANT_LEN);
    assert_eq!(
        rt.handle()
            .submit(Request::new(2).tenant(ok))
            .unwrap()
            .wait(),
        Ok(2)
    );
}

/// An executor that reports a request's real cost corrects its tenant's
/// served tokens (and its fairness counter) from the declared one.
#[test]
fn a_reported_cost_corrects_the_tenants_served_tokens() {
    struct Halves;
    impl convoy::Executor<u32, u32> for Halves {
        fn execute(&self, _w: usize, xs: &[u32]) -> Result<Vec<u32>, convoy::ExecutorError> {
            Ok(xs.to_vec())
        }
        fn served_tokens(&self, out: &u32) -> Option<u32> {
            Some(out / 2)
        }
    }
    let rt = Runtime::builder()
        .config(Config {
            cpu_workers: 1,
            ..Config::default()
        })
        .executor(Halves)
        .build()
        .unwrap();
    for n in [10u32, 20, 30] {
        let t = rt
            .handle()
            .submit(Request::new(n).tenant("a").tokens(n))
            .unwrap();
        assert_eq!(t.wait(), Ok(n));
    }
    let report = rt.sla_report();
    let a = report.tenants.iter().find(|t| t.tenant == "a").unwrap();
    assert_eq!((a.launched, a.served_tokens, a.completed), (3, 30, 3));
}

/// Reloading `ordering.fairness` while requests of two tenants wait
/// changes the order from the next take and loses nothing: under VTC the
/// tenants alternate, after a reload to `none` the rest go in arrival
/// order.
#[test]
fn reloading_fairness_reorders_what_waits_and_loses_nothing() {
    let (rt, hold, _pause, ran) = one_at_a_time(Fairness::Vtc, TenantsConfig::default(), u32::MAX);
    let blocker = block(&rt);
    let mut tickets: Vec<_> = (0..50).map(|n| submit(&rt, 0, n, 1)).collect();
    tickets.extend((0..50).map(|n| submit(&rt, 1, n, 1)));
    let mut c = rt.config();
    c.fairness = Fairness::None;
    rt.reload_config(c).unwrap();
    hold.open();
    assert!(blocker.wait().is_ok());
    tickets.into_iter().for_each(|t| assert!(t.wait().is_ok()));
    let order: Vec<Job> = ran
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|j| j.0 != 9)
        .collect();
    assert_eq!(order.len(), 100);
    // Arrival order: tenant 0's fifty, then tenant 1's (the reload lands
    // before the worker frees, so at most one take under VTC precedes it).
    let first_one = order.iter().position(|j| j.0 == 1).unwrap();
    assert!(first_one >= 49, "tenant 1 ran at {first_one}: {order:?}");
    let mut seen: Vec<_> = order.iter().map(|j| (j.0, j.1)).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 100, "each ran once");
}

/// A tenant id is a client's string: one holding a quote, a line break or
/// a backslash is escaped in the exposition, so every sample stays one
/// well-formed line and the scrape is not broken.
#[test]
fn a_hostile_tenant_id_is_escaped_in_the_exposition() {
    let rt = common::echo_runtime(1);
    let id = "we\"ird\nid\\x} 1\nconvoy_fake 2";
    assert_eq!(
        rt.handle()
            .submit(Request::new(1).tenant(id))
            .unwrap()
            .wait(),
        Ok(1)
    );
    let text = rt.metrics_text();
    assert!(
        text.contains(r#"tenant="we\"ird\nid\\x} 1\nconvoy_fake 2""#),
        "{text}"
    );
    assert!(!text.lines().any(|l| l.starts_with("convoy_fake")));
    for l in text.lines().filter(|l| l.starts_with("convoy_tenant")) {
        let unescaped_quotes = l
            .replace("\\\\", "")
            .replace("\\\"", "")
            .matches('"')
            .count();
        assert_eq!(unescaped_quotes % 2, 0, "{l}");
    }
}
