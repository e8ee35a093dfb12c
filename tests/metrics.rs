//! The Prometheus exposition: the values match the runtime's counters, and
//! the real `promtool check metrics` accepts it.

mod common;

use common::{echo_runtime, echo_runtime_with, worker, WaitBounded};

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use convoy::{Config, Priority, Request, Runtime, WorkerSpec};

fn loaded_runtime() -> Runtime<u32, u32> {
    let rt = echo_runtime(2);
    let h = rt.handle();
    let ts: Vec<_> = (0..500u32)
        .map(|i| {
            h.submit(Request::new(i).priority(Priority::ALL[(i % 5) as usize]))
                .unwrap()
        })
        .collect();
    ts.into_iter()
        .for_each(|t| assert!(t.wait_bounded().is_ok()));
    let mut late = h
        .submit(Request::new(9).deadline(Duration::from_secs(60)))
        .unwrap();
    late.cancel();
    rt.shutdown();
    rt
}

fn value(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn exposition_matches_the_counters() {
    let rt = loaded_runtime();
    let text = rt.metrics_text();
    let s = rt.stats();
    for p in Priority::ALL {
        let l = format!("priority=\"{}\"", p.as_str());
        assert_eq!(
            value(&text, &format!("convoy_requests_inserted_total{{{l}}}")),
            s.of(p).inserted as f64
        );
        assert_eq!(
            value(
                &text,
                &format!("convoy_requests_ended_total{{{l},outcome=\"completed\"}}")
            ),
            s.of(p).completed as f64
        );
        assert_eq!(value(&text, &format!("convoy_queue_depth{{{l}}}")), 0.0);
        assert_eq!(
            value(&text, &format!("convoy_queue_capacity{{{l}}}")),
            s.queue_capacity as f64
        );
        assert_eq!(
            value(
                &text,
                &format!("convoy_request_latency_seconds_count{{{l}}}")
            ),
            s.of(p).completed as f64
        );
    }
    assert_eq!(value(&text, "convoy_batches_total"), s.batches as f64);
    assert_eq!(value(&text, "convoy_batch_size_count"), s.batches as f64);
    // One decision per launched batch, timed by the collector.
    assert_eq!(
        value(&text, "convoy_decision_seconds_count"),
        s.batches as f64
    );
    let decision = rt.sla_report().decision;
    assert_eq!(decision.count, s.batches);
    assert!(decision.p50 <= decision.p99 && decision.p99 <= decision.max);
    assert!(decision.p50 > Duration::ZERO);
    assert_eq!(value(&text, "convoy_deduplicated_total"), 0.0);
    assert_eq!(
        value(&text, "convoy_batch_size_sum"),
        s.batched_requests as f64
    );
    assert_eq!(
        value(
            &text,
            "convoy_requests_ended_total{priority=\"normal\",outcome=\"cancelled\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "convoy_slo_compliance_ratio{priority=\"high\",window=\"total\"}"
        ),
        1.0
    );
    assert!(text.contains("convoy_worker_capacity{worker=\"cpu0\",resource=\"slots\"} 128"));
    assert!(text.contains("convoy_placements_total{reason=\"least_loaded\"}"));
    assert!(
        text.contains("# TYPE convoy_batches_total counter"),
        "classic format names counters with _total"
    );
    assert!(!text.contains("# EOF"));
}

/// Every reservation is given back: after a load with cancels and
/// deadlines, once every ticket has its outcome, each worker's reserved
/// capacity (`convoy_worker_reserved`) is zero again. A release lost on
/// the way fails here by name, not as a later test that hangs.
#[test]
fn every_reservation_is_released_once_the_load_is_done() {
    let rt = echo_runtime(2);
    let h = rt.handle();
    let mut tickets = Vec::new();
    for i in 0..2000u32 {
        let mut r = Request::new(i).priority(Priority::ALL[(i % 5) as usize]);
        if i % 7 == 0 {
            r = r.deadline(Duration::from_micros(50));
        }
        let mut t = h.submit(r).unwrap();
        if i % 11 == 0 {
            t.cancel();
        }
        tickets.push(t);
    }
    for t in tickets {
        let _ = t.wait_bounded();
    }
    let reserved = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("convoy_worker_reserved{"))
            .filter(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) != Some(0.0))
            .map(str::to_owned)
            .collect()
    };
    // Releases reach the collector through its ring a moment after the
    // outcomes: give them that moment, bounded.
    let start = std::time::Instant::now();
    let mut held = reserved(&rt.metrics_text());
    while !held.is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
        held = reserved(&rt.metrics_text());
    }
    assert!(held.is_empty(), "capacity still reserved: {held:?}");
    assert!(rt.metrics_text().contains("convoy_worker_reserved{"));
    rt.shutdown();
    assert_eq!(rt.stats().total().inserted, rt.stats().total().ended());
}

/// Every histogram in the exposition is a valid Prometheus histogram: per
/// series, the `_bucket` lines rise (cumulative), the last is `le="+Inf"`,
/// and it equals `_count`. A quantile computed by Prometheus from buckets
/// that overshoot `_count` is wrong, and `promtool check metrics` does
/// not look at the values.
#[test]
fn every_histogram_is_cumulative_and_ends_at_its_count() {
    let rt = loaded_runtime();
    let text = rt.metrics_text();
    let mut checked = 0;
    for family in text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" histogram"))
    {
        // Group the family's bucket lines by their labels other than `le`.
        let mut series: std::collections::BTreeMap<String, Vec<(String, f64)>> = Default::default();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(&format!("{family}_bucket{{")) else {
                continue;
            };
            let (labels, v) = rest.rsplit_once("} ").expect("a sample line");
            let mut le = String::new();
            let others: Vec<&str> = labels
                .split(',')
                .filter(|kv| match kv.strip_prefix("le=") {
                    Some(bound) => {
                        le = bound.trim_matches('"').to_owned();
                        false
                    }
                    None => true,
                })
                .collect();
            series
                .entry(others.join(","))
                .or_default()
                .push((le, v.parse().expect("a number")));
        }
        assert!(!series.is_empty(), "{family} has no buckets");
        for (labels, buckets) in series {
            let count_series = if labels.is_empty() {
                format!("{family}_count")
            } else {
                format!("{family}_count{{{labels}}}")
            };
            let count = value(&text, &count_series);
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family}{{{labels}}} buckets fall: {buckets:?}"
            );
            let (le, last) = buckets.last().expect("not empty").clone();
            assert_eq!(le, "+Inf", "{family}{{{labels}}} ends at le={le}");
            assert_eq!(
                last, count,
                "{family}{{{labels}}}: the +Inf bucket is not _count: {buckets:?}"
            );
            checked += 1;
        }
    }
    // batch size, decision time, and latency and wait for five levels.
    assert!(checked >= 12, "only {checked} histogram series checked");
}

/// The sample lines of `text` (not comments), each as its series (name and
/// labels), which must be unique within one exposition.
fn series(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.rsplit_once(' ').expect("a sample has a value").0)
        .collect()
}

/// Worker series stay distinct when names repeat (each such worker is
/// labelled `name#index`), and a removed worker's series leave the
/// exposition, so a fleet that scales up and down does not grow it.
#[test]
fn worker_series_are_distinct_and_removed_workers_leave() {
    let named = |name: &str| WorkerSpec {
        name: name.into(),
        ..worker(4, 1 << 20)
    };
    let rt = echo_runtime_with(Config {
        workers: vec![named("w"), named("solo"), named("w")],
        ..Config::default()
    });
    let text = rt.metrics_text();
    let all = series(&text);
    let mut unique = all.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), all.len(), "a series repeats in:\n{text}");
    for w in ["w#0", "solo", "w#2"] {
        assert_eq!(
            value(&text, &format!("convoy_worker_up{{worker=\"{w}\"}}")),
            1.0
        );
    }
    assert!(!text.contains("worker=\"w\""), "{text}");
    for _ in 0..20 {
        let added = rt.add_worker(named("extra")).unwrap();
        rt.remove_worker(added).unwrap();
    }
    rt.remove_worker(2).unwrap();
    let text = rt.metrics_text();
    // 3 resources × 2 families + `up`, for each worker left.
    let workers: Vec<_> = series(&text)
        .into_iter()
        .filter(|s| s.starts_with("convoy_worker_"))
        .collect();
    assert_eq!(workers.len(), 2 * 7, "{workers:#?}");
    assert_eq!(value(&text, "convoy_worker_up{worker=\"w\"}"), 1.0);
    assert_eq!(value(&text, "convoy_worker_up{worker=\"solo\"}"), 1.0);
    assert!(!text.contains("extra"), "{text}");
    let h = rt.handle();
    assert_eq!(h.submit(Request::new(7)).unwrap().wait_bounded(), Ok(7));
    rt.shutdown();
}

/// While the runtime runs (no shutdown), a report includes every request
/// whose ticket already has its outcome: it asks the collector and the
/// workers for fresh copies first. Without that, their copies come every
/// 100 ms and the first rounds here read zeros.
#[test]
fn a_running_report_includes_every_finished_request() {
    let rt = echo_runtime(2);
    let h = rt.handle();
    for round in 1..=20u64 {
        for p in Priority::ALL {
            let t = h.submit(Request::new(round as u32).priority(p)).unwrap();
            assert!(t.wait_bounded().is_ok());
        }
        let report = rt.sla_report();
        for p in Priority::ALL {
            let sla = report.of(p);
            assert_eq!(
                (sla.end_to_end.count, sla.queue_wait.count),
                (round, round),
                "round {round}, {p:?}"
            );
        }
        let text = rt.metrics_text();
        assert_eq!(
            value(
                &text,
                "convoy_request_latency_seconds_count{priority=\"low\"}"
            ),
            round as f64,
            "round {round}"
        );
    }
    rt.shutdown();
    // After shutdown every recorder has retired with its final copy.
    assert_eq!(rt.sla_report().of(Priority::High).end_to_end.count, 20);
}

#[test]
fn promtool_accepts_the_exposition() {
    let text = loaded_runtime().metrics_text();
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let why =
                format!("promtool not available ({e}); install Debian's `prometheus` package");
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: {why}"
            );
            eprintln!("SKIP promtool_accepts_the_exposition: {why}");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool rejected the exposition:\n{report}\n---\n{text}"
    );
    assert!(
        report.trim().is_empty(),
        "promtool lint findings:\n{report}"
    );
}
