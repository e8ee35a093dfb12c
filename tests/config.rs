//! TOML config: defaults, every error path, and reload while running.

mod common;

use std::time::Duration;

use common::WaitBounded;

use convoy::{Config, ConfigError, DeadlineAction, PlacementPolicy, Priority, Request, Runtime};

#[test]
fn example_file_is_exactly_the_defaults() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/convoy.example.toml");
    assert_eq!(Config::from_toml_file(path).unwrap(), Config::default());
}

#[test]
fn every_key_is_read() {
    let c = Config::from_toml_str(
        r#"
        shutdown_timeout_ms = 250
        cpu_workers = 3
        [intake]
        shards = 4
        lane_capacity = 64
        [batching]
        max_batch_size = 16
        max_batch_tokens = 4096
        max_batch_bytes = 1000000
        target_batch_ms = 12
        preferred_batch_sizes = [8, 4]
        max_queue_delay_ms = 0.5
        [ordering]
        max_wait_ms = 100
        shed = true
        [ordering.shed_at]
        high = inf
        low = 0.35
        [deadlines]
        low = "delay"
        [deadlines.default_ms]
        critical = 40
        background = 60000
        [placement]
        policy = "cost_optimized"
        urgent_slack_ms = 7
        [preemption]
        enabled = false
        min_priority_gap = 3
        max_displacements = 4
        [[workers]]
        name = "a"
        slots = 8
        tokens = 1000
        speed = 2.5
        cost_per_hour = 1.5
        [[workers]]
        slots = 4
        tokens = 100
        bytes = 1024
        "#,
    )
    .unwrap();
    assert_eq!(c.shutdown_timeout, Duration::from_millis(250));
    assert_eq!(c.cpu_workers, 3);
    assert_eq!((c.intake.shards, c.intake.lane_capacity), (4, 64));
    assert_eq!(c.batching.max_batch_size, 16);
    assert_eq!(c.batching.max_batch_tokens, 4096);
    assert_eq!(c.batching.max_batch_bytes, 1_000_000);
    assert_eq!(
        c.batching.target_batch_time,
        Some(Duration::from_millis(12))
    );
    assert_eq!(c.batching.max_queue_delay, Duration::from_micros(500));
    assert_eq!(c.max_wait, Duration::from_millis(100));
    assert!(
        c.shed && !Config::default().shed,
        "shed is off unless turned on"
    );
    assert_eq!(
        c.shed_at,
        [f64::INFINITY, f64::INFINITY, 0.5, 0.35, 0.3],
        "High never shed, Low from 0.35, the rest as by default"
    );
    assert_eq!(
        c.deadline_action[Priority::Low.index()],
        DeadlineAction::Delay
    );
    assert_eq!(
        c.deadline_action[Priority::High.index()],
        DeadlineAction::Reject
    );
    assert_eq!(
        c.default_deadline,
        [
            Some(Duration::from_millis(40)),
            None,
            None,
            None,
            Some(Duration::from_secs(60))
        ]
    );
    assert_eq!(c.placement, PlacementPolicy::CostOptimized);
    assert_eq!(c.urgent_slack, Duration::from_millis(7));
    assert_eq!(
        c.preemption,
        convoy::Preemption {
            enabled: false,
            min_gap: 3,
            max_displacements: 4
        }
    );
    assert_eq!(c.workers.len(), 2);
    assert_eq!((c.workers[0].name.as_str(), c.workers[0].speed), ("a", 2.5));
    assert_eq!(
        (c.workers[1].name.as_str(), c.workers[1].capacity.bytes),
        ("worker1", 1024)
    );
}

/// Each bad file is refused with an error that names the key.
#[test]
fn every_error_names_its_key() {
    let cases: &[(&str, &str)] = &[
        ("bogus = 1", "bogus"),
        ("[batching]\nmax_batch_sise = 3", "max_batch_sise"),
        ("[batching]\nmax_batch_size = \"many\"", "max_batch_size"),
        ("[batching]\nmax_batch_size = 0", "batching.max_batch_size"),
        (
            "[batching]\nmax_batch_tokens = 0",
            "batching.max_batch_tokens",
        ),
        (
            "[batching]\nmax_queue_delay_ms = -1",
            "batching.max_queue_delay_ms",
        ),
        (
            "[batching]\nmax_queue_delay_ms = nan",
            "batching.max_queue_delay_ms",
        ),
        ("[ordering]\nmax_wait_ms = 0", "ordering.max_wait_ms"),
        ("[ordering]\nshed = \"yes\"", "shed"),
        (
            "[ordering.shed_at]\ncritical = 1",
            "ordering.shed_at.critical",
        ),
        ("[ordering.shed_at]\nlow = 0", "ordering.shed_at.low"),
        ("[ordering.shed_at]\nhigh = -1", "ordering.shed_at.high"),
        (
            "[ordering.shed_at]\nnormal = nan",
            "ordering.shed_at.normal",
        ),
        // Above Low's default 0.4: a less urgent level shed later.
        (
            "[ordering.shed_at]\nbackground = 0.45",
            "ordering.shed_at.background",
        ),
        ("[ordering.shed_at]\nurgent = 0.5", "urgent"),
        // Finite but past what a Duration holds: once a panic.
        ("[ordering]\nmax_wait_ms = 1e300", "ordering.max_wait_ms"),
        ("[intake]\nlane_capacity = 12", "intake.lane_capacity"),
        ("[intake]\nshards = 0", "intake.shards"),
        ("[intake]\nshards = -2", "shards"),
        ("cpu_workers = 0", "cpu_workers"),
        // A typo of a few zeros once started threads until memory ran out.
        ("cpu_workers = 100000000", "cpu_workers"),
        ("shutdown_timeout_ms = -5", "shutdown_timeout_ms"),
        ("[deadlines]\nlow = \"later\"", "later"),
        (
            "[deadlines.default_ms]\nhigh = 0",
            "deadlines.default_ms.high",
        ),
        (
            "[deadlines.default_ms]\nlow = -5",
            "deadlines.default_ms.low",
        ),
        ("[deadlines.default_ms]\nurgent = 5", "urgent"),
        ("[placement]\npolicy = \"random\"", "random"),
        (
            "[placement]\nurgent_slack_ms = -1",
            "placement.urgent_slack_ms",
        ),
        (
            "[[workers]]\nslots = 0\ntokens = 5",
            "workers[0].capacity.slots",
        ),
        (
            "[[workers]]\nslots = 1\ntokens = 5\nspeed = 0",
            "workers[0].speed",
        ),
        (
            "[[workers]]\nslots = 1\ntokens = 5\ncost_per_hour = -1",
            "workers[0].cost_per_hour",
        ),
        ("[[workers]]\nslots = 1", "tokens"),
        ("[slo.high]\np99_ms = 0", "slo.high.p99_ms"),
        ("[slo.low]\ntimeout_ms = -3", "slo.low.timeout_ms"),
        ("[slo.urgent]\np99_ms = 5", "urgent"),
        ("[batching\nmax_batch_size = 1", "line 1"),
        (
            "[preemption]\nmin_priority_gap = 0",
            "preemption.min_priority_gap",
        ),
        (
            "[preemption]\nmin_priority_gap = 5",
            "preemption.min_priority_gap",
        ),
        (
            "[preemption]\nmin_priority_gap = -1",
            "preemption.min_priority_gap",
        ),
        (
            "[preemption]\nmax_displacements = 0",
            "preemption.max_displacements",
        ),
        (
            "[preemption]\nmax_displacements = 300",
            "preemption.max_displacements",
        ),
        ("[preemption]\nenabled = \"yes\"", "enabled"),
        ("[preemption]\nmax_preemptions = 1", "max_preemptions"),
    ];
    for (text, key) in cases {
        let err = Config::from_toml_str(text).expect_err(text).to_string();
        assert!(
            err.contains(key),
            "{text:?}: error {err:?} does not name {key:?}"
        );
    }
    let mut too_many = Config {
        cpu_workers: convoy::MAX_WORKERS,
        ..Config::default()
    };
    assert!(too_many.validate().is_ok(), "the maximum itself is fine");
    too_many.workers = vec![too_many.fleet()[0].clone(); convoy::MAX_WORKERS + 1];
    let err = too_many.validate().unwrap_err().to_string();
    assert!(err.contains("workers") && err.contains("4096"), "{err}");
    let missing = Config::from_toml_file("/nonexistent/convoy.toml").unwrap_err();
    assert!(missing.to_string().contains("/nonexistent/convoy.toml"));
}

#[test]
fn reload_swaps_knobs_without_losing_requests_and_refuses_fixed_ones() {
    let base = Config {
        cpu_workers: 2,
        ..Config::default()
    };
    let rt = Runtime::builder()
        .config(base.clone())
        .batch_fn(|xs: &[u32]| {
            std::thread::sleep(Duration::from_micros(100));
            xs.to_vec()
        })
        .build()
        .unwrap();
    let producers: Vec<_> = (0..4u32)
        .map(|p| {
            let h = rt.handle();
            std::thread::spawn(move || {
                let tickets: Vec<_> = (0..5_000u32)
                    .filter_map(|i| h.submit(Request::new(p * 100_000 + i)).ok())
                    .collect();
                let n = tickets.len();
                for t in tickets {
                    assert!(
                        t.wait_bounded().is_ok(),
                        "a request was lost or failed across a reload"
                    );
                }
                n
            })
        })
        .collect();
    // Reload repeatedly while the load runs.
    for i in 0..20 {
        let mut c = base.clone();
        c.batching.max_batch_size = 4 + i % 3 * 30;
        c.max_wait = Duration::from_millis(50 + i as u64);
        c.placement = if i % 2 == 0 {
            PlacementPolicy::Adaptive
        } else {
            PlacementPolicy::LeastLoaded
        };
        rt.reload_config(c).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let accepted: usize = producers.into_iter().map(|p| p.join().unwrap()).sum();
    rt.shutdown();
    let s = rt.stats().total();
    assert_eq!(s.inserted as usize, accepted);
    assert_eq!(s.completed, s.inserted, "every accepted request completed");

    let before = rt.config();
    let mut fixed = before.clone();
    fixed.intake.lane_capacity *= 2;
    assert_eq!(
        rt.reload_config(fixed),
        Err(ConfigError::Fixed {
            key: "intake".into()
        })
    );
    let mut fixed = before.clone();
    fixed.cpu_workers += 1;
    assert_eq!(
        rt.reload_config(fixed),
        Err(ConfigError::Fixed {
            key: "cpu_workers".into()
        })
    );
    let mut bad = before.clone();
    bad.batching.max_batch_size = 0;
    assert!(rt.reload_config(bad).is_err());
    assert_eq!(
        rt.config(),
        before,
        "a refused reload leaves the running config as it was"
    );
}

/// A reload's new batch limit is what the next batches obey.
#[test]
fn reloaded_batch_limit_applies() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let biggest = Arc::new(AtomicUsize::new(0));
    let b2 = biggest.clone();
    let mut cfg = Config {
        cpu_workers: 1,
        ..Config::default()
    };
    cfg.batching.max_queue_delay = Duration::from_millis(20);
    let rt = Runtime::builder()
        .config(cfg.clone())
        .batch_fn(move |xs: &[u32]| {
            b2.fetch_max(xs.len(), Ordering::Relaxed);
            xs.to_vec()
        })
        .build()
        .unwrap();
    cfg.batching.max_batch_size = 3;
    rt.reload_config(cfg).unwrap();
    let h = rt.handle();
    let ts: Vec<_> = (0..100)
        .map(|i| h.submit(Request::new(i)).unwrap())
        .collect();
    ts.into_iter()
        .for_each(|t| assert!(t.wait_bounded().is_ok()));
    rt.shutdown();
    assert!(
        biggest.load(Ordering::Relaxed) <= 3,
        "batch of {}",
        biggest.load(Ordering::Relaxed)
    );
}

#[test]
fn ordering_policy_parses_and_bad_values_name_the_key() {
    let c = Config::from_toml_str("[ordering]\npolicy = \"fifo\"").unwrap();
    assert_eq!(c.ordering, convoy::OrderingPolicy::Fifo);
    let c = Config::from_toml_str("[ordering]\npolicy = \"strict_priority\"").unwrap();
    assert_eq!(c.ordering, convoy::OrderingPolicy::StrictPriority);
    assert_eq!(Config::default().ordering, convoy::OrderingPolicy::Aging);
    let e = Config::from_toml_str("[ordering]\npolicy = \"lifo\"").unwrap_err();
    assert!(e.to_string().contains("policy"), "{e}");
}
