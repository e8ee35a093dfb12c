//! Trace replay end to end: a tiny replay whose outcome counts add up, and
//! the `convoy` binary's bad-input exits.

use std::process::Command;
use std::time::Duration;

use convoy::model::PoolDense;
use convoy::{Config, DeadlineAction, Priority};
use convoy_cli::replay::{calibrate, replay, ReplayOptions};
use convoy_cli::trace::parse;

fn tiny_trace() -> convoy_cli::trace::Trace {
    // 200 rows over 0.2 s: all five levels, a few 1 ms deadlines that
    // cannot all be met while the worker is busy.
    let mut text = String::from("arrival_s,priority,tokens,deadline_ms\n");
    for i in 0..200u32 {
        let p = Priority::ALL[(i % 5) as usize].as_str();
        let deadline = if i % 17 == 0 { "1" } else { "" };
        text.push_str(&format!(
            "{},{p},{},{deadline}\n",
            f64::from(i) / 1000.0,
            1 + i % 40
        ));
    }
    parse("tiny", &text).unwrap()
}

/// Replay options for the tiny model: one CPU worker, a 64-token vocabulary.
fn one_worker() -> ReplayOptions {
    ReplayOptions {
        config: Config {
            cpu_workers: 1,
            ..Config::default()
        },
        vocab: 64,
        ..ReplayOptions::default()
    }
}

#[test]
fn a_tiny_replay_accounts_for_every_request() {
    let trace = tiny_trace();
    let model = PoolDense::seeded(64, 8, 1).unwrap();
    let options = ReplayOptions {
        window: Duration::from_millis(50),
        ..one_worker()
    };
    let report = replay(&trace, model, &options, &|_| {}).unwrap();
    assert_eq!(report.offered, 200);
    assert_eq!(report.offered, report.accepted + report.refused);
    assert_eq!(report.refused, report.refused_by.values().sum::<u64>());
    assert_eq!(report.lost, 0);
    assert_eq!(report.client_unresolved, 0);
    let outcomes: u64 = report
        .priorities
        .iter()
        .map(|p| p.completed + p.expired + p.cancelled + p.failed + p.shut_down)
        .sum();
    assert_eq!(
        outcomes, report.accepted,
        "every accepted request ended once"
    );
    for p in &report.priorities {
        assert_eq!(p.offered, 40, "{}: the trace's own priorities", p.priority);
        assert_eq!(p.offered, p.accepted + p.refused);
        assert!(p.p50_ms <= p.p99_ms && p.p99_ms <= p.max_ms + 0.001);
        // More than 1% that never came back in time is a missed p99,
        // however fast the rest were.
        let misses = p.expired + p.failed;
        if misses * 100 > p.completed + misses {
            assert!(!p.p99_met, "{}: {misses} misses, p99 met", p.priority);
        }
        // Every deadline here is 1 ms, far inside the starvation bound: each
        // expiry is the request's own deadline, timed by the client.
        assert_eq!(p.expired_before_bound, p.expired, "{}", p.priority);
    }
    let goal = report.goal();
    assert!(
        goal.missed.iter().all(|m| !m.contains("not served")),
        "expiries by a 1 ms deadline are not starvation: {goal:?}"
    );
    eprintln!(
        "expired (all by their own 1 ms deadline): {}",
        report.priorities.iter().map(|p| p.expired).sum::<u64>()
    );
    assert_eq!(
        report.completed,
        report.priorities.iter().map(|p| p.completed).sum::<u64>()
    );
    assert!(report.batches > 0 && report.mean_batch >= 1.0);
    assert_eq!(
        report.batch_sizes.iter().map(|(_, n)| n).sum::<u64>(),
        report.batches
    );
    assert!(!report.timeline.windows.is_empty());
    assert!(report.metrics.contains("convoy_requests_inserted_total"));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["lost"], 0);
    assert_eq!(json["accepted"], report.accepted);
    assert!(json["priorities"][0]["p99_ms"].is_number());
    assert!(json["priorities"][0]["slo_compliance"].is_number());
}

#[test]
fn a_refused_row_is_counted_by_its_reason() {
    // One row no worker can ever hold among rows that fit: refused at
    // submit as `cost_never_fits`, not lumped in with a full queue.
    let trace = parse(
        "mixed",
        "arrival_s,priority,tokens\n0,high,10\n0.001,low,4000000000\n0.002,normal,20\n",
    )
    .unwrap();
    let model = PoolDense::seeded(64, 8, 1).unwrap();
    let options = one_worker();
    let report = replay(&trace, model, &options, &|_| {}).unwrap();
    assert_eq!((report.offered, report.accepted, report.refused), (3, 2, 1));
    assert_eq!(report.of(Priority::Low).refused, 1);
    assert_eq!(
        report.refused_by,
        [("cost_never_fits".to_owned(), 1)].into_iter().collect()
    );
    assert_eq!(report.lost, 0);
    let text = report.render();
    assert!(text.contains("refused at submit: cost_never_fits 1"));
    // The last line is the lost-count arithmetic, every outcome named.
    assert_eq!(
        text.lines().last(),
        Some(
            "offered 3 = refused 1 + accepted 2; accepted 2 = completed 2 + expired 0 \
             + cancelled 0 + failed 0 + shut down 0; lost: 0"
        ),
        "{text}"
    );
    // Critical and Background had no rows and Low's one was refused:
    // nothing was measured there, so the table shows no 0.0 ms latency
    // and no 100% compliance for them.
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("a {name} line in\n{text}"))
            .to_owned()
    };
    for empty in ["critical", "low", "background"] {
        let l = line(empty);
        assert!(l.contains('–') && !l.contains('%'), "{l}");
    }
    // End-to-end p50/p95/p99 and queue wait p50/p95/p99/max, both.
    assert!(
        text.contains("end-to-end ms") && text.contains("queue wait ms"),
        "{text}"
    );
    let header = line("priority");
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        columns[3..10],
        ["p50", "p95", "p99", "p50", "p95", "p99", "max"],
        "{header}"
    );
    for served in ["high", "normal"] {
        let l = line(served);
        assert!(l.contains("100.00%") && !l.contains('–'), "{l}");
        // The name and 13 figures: offered, done, seven latencies, the
        // SLO and its compliance, expired, other.
        assert_eq!(l.split_whitespace().count(), 14, "{l}");
    }
    assert_eq!(report.to_json()["refused_by"]["cost_never_fits"], 1);
}

#[test]
fn calibration_measures_the_rows_that_run_and_refuses_a_trace_with_none() {
    let model = PoolDense::seeded(64, 8, 1).unwrap();
    let config = Config {
        cpu_workers: 1,
        ..Config::default()
    };
    let measure = |text: &str| {
        let trace = parse("cal", text).unwrap();
        calibrate(
            &trace,
            model.clone(),
            &config,
            // Long enough that a loaded machine still completes some.
            Duration::from_millis(500),
            64,
        )
    };
    // A row no worker holds is skipped, not taken for a full queue: the
    // rows beside it are measured (once, 0 req/s and a speed-up of 0).
    let rate =
        measure("arrival_s,priority,tokens\n0,high,10\n0.1,low,4000000000\n0.2,low,20\n").unwrap();
    assert!(rate > 0.0, "{rate}");
    // Every row too large: an error naming the trace and why, not a rate
    // of 0 or a loop that never fills.
    let e = measure("arrival_s,priority,tokens\n0,high,4000000000\n0.1,low,100000\n").unwrap_err();
    let e = e.to_string();
    assert!(
        e.contains("cal: no row can run") && e.contains("cost_never_fits"),
        "{e}"
    );
}

#[test]
fn a_cycled_replay_with_delayed_deadlines_runs_past_the_trace() {
    let trace = tiny_trace();
    let model = PoolDense::seeded(64, 8, 1).unwrap();
    let options = ReplayOptions {
        config: Config {
            cpu_workers: 1,
            deadline_action: [DeadlineAction::Delay; Priority::COUNT],
            ..Config::default()
        },
        vocab: 64,
        speedup: 2.0,
        cycle: true,
        duration: Some(Duration::from_millis(250)),
        ..ReplayOptions::default()
    };
    let report = replay(&trace, model, &options, &|_| {}).unwrap();
    assert!(report.offered > 200, "cycled: {} rows", report.offered);
    assert_eq!(report.lost, 0);
    assert_eq!(report.completed, report.accepted, "Delay never expires");
}

#[test]
fn bad_options_are_typed_errors() {
    let trace = tiny_trace();
    let model = PoolDense::seeded(64, 8, 1).unwrap();
    // 1e-300 once panicked: its due times overflowed `Duration`.
    for speedup in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-300] {
        let options = ReplayOptions {
            speedup,
            ..ReplayOptions::default()
        };
        let e = replay(&trace, model.clone(), &options, &|_| {}).unwrap_err();
        assert!(e.to_string().contains("--speedup"), "{e}");
    }
}

#[test]
fn rows_that_all_arrive_at_once_are_not_cycled() {
    // One row, or several at the same instant: every cycle would be due at
    // the start, so the driver once submitted forever.
    let same = parse("same", "arrival_s,priority,tokens\n0,high,3\n0,low,4\n").unwrap();
    for (trace, limit) in [(tiny_trace(), Some(1)), (same, None)] {
        let options = ReplayOptions {
            cycle: true,
            limit,
            duration: Some(Duration::from_millis(100)),
            vocab: 64,
            ..ReplayOptions::default()
        };
        let model = PoolDense::seeded(64, 8, 1).unwrap();
        // On a thread, so a regression fails here instead of hanging the
        // suite: the error comes at once, the minute is only a backstop.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(replay(&trace, model, &options, &|_| {}).map(|r| r.offered));
        });
        let result = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a cycle of rows with no span is refused, not replayed forever");
        let e = result.unwrap_err();
        assert!(e.to_string().contains("all arrive at once"), "{e}");
    }
}

#[test]
fn rows_that_all_arrive_at_once_replay_once_and_say_so() {
    // Not cycled, the same rows replay as one burst. There is no rate to
    // offer: the header says so instead of "offered 0 req/s", and the JSON
    // keeps a number.
    let same = parse(
        "same",
        "arrival_s,priority,tokens\n0,high,3\n0,low,4\n0,normal,5\n",
    )
    .unwrap();
    let model = PoolDense::seeded(64, 8, 1).unwrap();
    let report = replay(&same, model, &one_worker(), &|_| {}).unwrap();
    assert_eq!((report.offered, report.lost), (3, 0));
    assert_eq!(report.offered_rps, 0.0);
    let header = report.render();
    let header = header.lines().next().unwrap();
    assert!(header.ends_with("offered 3 all at once"), "{header}");
    assert_eq!(report.to_json()["offered_rps"], 0.0);
}

#[test]
fn a_cycled_replay_ends_on_real_time_however_large_the_speed_up() {
    // At 10^15× a cycle of the tiny trace is due within a nanosecond: due
    // times hardly advance, and a run that stopped only on a row due
    // after its duration never stopped (`compare --load 1e9` did this).
    let options = ReplayOptions {
        speedup: 1e15,
        cycle: true,
        duration: Some(Duration::from_millis(100)),
        ..one_worker()
    };
    let trace = tiny_trace();
    let model = PoolDense::seeded(64, 8, 1).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(replay(&trace, model, &options, &|_| {}).unwrap());
    });
    // The minute is a backstop, so a regression fails rather than hangs.
    let report = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the replay stops submitting once its duration has passed");
    assert!(report.offered > 200, "cycled: {} rows", report.offered);
    assert_eq!(report.offered, report.accepted + report.refused);
    assert_eq!(report.lost, 0);
}

/// The `convoy` binary run with `args` in `dir`.
fn convoy_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// The binary run in the repository: its exit code and stderr.
fn convoy(args: &[&str]) -> (i32, String) {
    let out = convoy_in(env!("CARGO_MANIFEST_DIR").as_ref(), args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh directory under the system's temp dir, named for the test and
/// this process so parallel test binaries do not share it.
fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_binary_exits_2_on_bad_input_with_file_and_line() {
    let dir = scratch_dir("convoy-cli");
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "arrival_s,priority,tokens\n0,high,1\n0.1,nope,2\n").unwrap();
    let bad = bad.to_str().unwrap();

    let (code, err) = convoy(&["--trace", "/nonexistent/trace.csv"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/trace.csv"), "{err}");

    let (code, err) = convoy(&["replay", "--trace", bad]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("{bad}:3:")), "{err}");

    // A negative number given as a separate word is a value, not a flag:
    // the message names the option rather than an "unexpected argument".
    for speedup in [["--speedup", "0"], ["--speedup", "-1"]] {
        let (code, err) = convoy(&speedup);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("--speedup: must be"), "{err}");
    }

    for load in [
        &["--load=0"][..],
        &["--load=-1"],
        &["--load", "-1"],
        &["--load", "inf"],
        &["--load", "NaN"],
    ] {
        let (code, err) = convoy(&[&["compare"][..], load].concat());
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("--load: must be"), "{err}");
    }
    for duration in ["0", "-2", "1e7", "inf"] {
        let (code, err) = convoy(&["compare", "--duration", duration]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("--duration: must be a number of seconds > 0 and < 1000000"),
            "{err}"
        );
    }
    let (code, err) = convoy(&["replay", "--policy", "random"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--policy"), "{err}");
    // One row has no rate to scale to a load (this hung before).
    let (code, err) = convoy(&["compare", "--limit", "1", "--duration", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("all arrive at once"), "{err}");
    // Rows none of which a worker can hold leave no capacity to scale to
    // (once a "capacity 0", then a speed-up of 0).
    let huge = dir.join("huge.csv");
    std::fs::write(
        &huge,
        "arrival_s,priority,tokens\n0,high,4000000000\n1,low,100000\n",
    )
    .unwrap();
    let huge = huge.to_str().unwrap();
    let (code, err) = convoy(&["compare", "--trace", huge, "--duration", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("{huge}: no row can run")), "{err}");
    for window in ["0", "-1"] {
        let (code, err) = convoy(&["replay", "--window", window]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("--window: must be"), "{err}");
    }
    // A replay of no rows is a mistake, not an empty report.
    let (code, err) = convoy(&["replay", "--limit", "0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--limit") && err.contains("≥ 1"), "{err}");
    // An output that cannot be written is found before the run (here even
    // before the trace is read), not after it, when the report is lost.
    let missing = dir.join("no-such-folder").join("out");
    let missing = missing.to_str().unwrap();
    let no_trace = ["--trace", "/nonexistent/trace.csv"];
    for (command, option) in [
        ("replay", "--json"),
        ("replay", "--metrics-out"),
        ("replay", "--plot"),
        ("compare", "--json"),
    ] {
        let (code, err) = convoy(&[&[command, option, missing][..], &no_trace].concat());
        assert_eq!(code, 2, "{command} {option}: {err}");
        assert!(err.contains(&format!("{option} {missing}")), "{err}");
    }
    let (code, err) =
        convoy(&[&["replay", "--json", dir.to_str().unwrap()][..], &no_trace].concat());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--json"),
        "a directory is no output file: {err}"
    );
    // Weights: a folder without them, a file of a size no f32 table has,
    // and a model too large to allocate, each a message, not a panic or
    // an abort.
    for command in ["replay", "compare", "serve"] {
        let (code, err) = convoy(&[command, "--weights", "/nonexistent/weights"]);
        assert_eq!(code, 2, "{command}: {err}");
        assert!(err.contains("--weights: /nonexistent/weights/"), "{err}");
    }
    let weights = dir.join("weights");
    std::fs::create_dir_all(&weights).unwrap();
    std::fs::write(weights.join("b.f32"), [0u8; 6]).unwrap();
    let (code, err) = convoy(&["replay", "--weights", weights.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("b.f32: 6 bytes"), "{err}");
    let out = weights.to_str().unwrap();
    for (vocab, dim) in [("0", "8"), ("99999999999", "99999"), ("8", "99999999999")] {
        let (code, err) = convoy(&["weights", "--out", out, "--vocab", vocab, "--dim", dim]);
        assert_eq!(code, 2, "{vocab} × {dim}: {err}");
        assert!(err.contains("model"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_binary_replays_with_the_weights_convoy_weights_wrote() {
    let dir = scratch_dir("convoy-cli-weights");
    let out = dir.to_str().unwrap();
    let (code, err) = convoy(&["weights", "--out", out, "--vocab", "50", "--dim", "4"]);
    assert_eq!(code, 0, "{err}");
    let loaded = PoolDense::from_dir(&dir).unwrap();
    assert_eq!(
        loaded,
        PoolDense::seeded(50, 4, convoy::model::DEFAULT_SEED).unwrap()
    );
    // Token ids are drawn from the loaded vocabulary: from the built-in
    // 32,000 they would be refused at submit by a model of 50.
    let json = dir.join("r.json");
    let run = convoy_in(
        env!("CARGO_MANIFEST_DIR").as_ref(),
        &[
            "replay",
            "--weights",
            out,
            "--limit",
            "300",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("pool-dense V=50 D=4 (weights from"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["lost"], 0);
    assert_eq!(report["accepted"], 300, "none refused as invalid: {report}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The binary run with `args`, its reader gone before the first line:
/// stdout closed, and stderr too with `close_stderr`. Returns the exit
/// code and the stderr it could still write, and the JSON it wrote.
fn convoy_with_pipes_closed(
    args: &[&str],
    json: &std::path::Path,
    close_stderr: bool,
) -> (Option<i32>, String, serde_json::Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args(args)
        .args(["--json", json.to_str().unwrap()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    if close_stderr {
        drop(child.stderr.take());
    }
    let out = child.wait_with_output().unwrap();
    let report = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        report,
    )
}

/// `convoy | head -1` closes stdout before the report is printed. That
/// panicked in `print!` ("failed printing to stdout: Broken pipe") and
/// left no `--json`. The run must finish, write its files and exit 0.
/// `convoy compare 2>&1 | head` closes stderr too, where compare writes
/// its progress ("running fifo ..."): `eprintln!` panicked there.
#[test]
fn a_closed_stdout_ends_no_run_and_loses_no_file() {
    let dir = scratch_dir("convoy-cli-pipe");
    let (code, stderr, report) =
        convoy_with_pipes_closed(&["replay", "--limit", "300"], &dir.join("r.json"), false);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(report["accepted"], 300, "{report}");
    assert_eq!(report["lost"], 0, "{report}");

    let compare = [
        "compare",
        "--limit",
        "2000",
        "--duration",
        "0.3",
        "--calibrate",
        "0.2",
    ];
    let (code, _, report) = convoy_with_pipes_closed(&compare, &dir.join("c.json"), true);
    assert_eq!(code, Some(0), "compare with both pipes closed");
    assert_eq!(report["lost"], 0, "{report}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The library leaves shedding off (`Config::default()`), so `submit`
/// refuses only for a full queue unless asked; the commands run without
/// `--config` turn it on, and a config file says for itself (the example
/// lists the library's defaults).
#[test]
fn the_commands_shed_without_a_config_and_a_config_file_says_for_itself() {
    assert!(!convoy::Config::default().shed);
    let dir = scratch_dir("convoy-cli-shed");
    let json = dir.join("r.json");
    let run = |extra: &[&str]| {
        let args = [
            &["replay", "--limit", "200", "--json", json.to_str().unwrap()][..],
            extra,
        ]
        .concat();
        let out = convoy_in(env!("CARGO_MANIFEST_DIR").as_ref(), &args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        (report["shed"].clone(), stdout)
    };
    let (shed, stdout) = run(&[]);
    assert_eq!(shed, true);
    assert!(stdout.contains("| shedding on |"), "{stdout}");
    let (shed, stdout) = run(&["--config", "../../config/convoy.example.toml"]);
    assert_eq!(shed, false);
    assert!(stdout.contains("| shedding off |"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn compare_runs_every_policy_and_marks_a_missed_p99() {
    let dir = scratch_dir("convoy-cli-compare");
    let json = dir.join("c.json");
    let out = convoy_in(
        env!("CARGO_MANIFEST_DIR").as_ref(),
        &[
            "compare",
            "--limit",
            "2000",
            "--duration",
            "0.5",
            "--calibrate",
            "0.3",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let policies = report["policies"].as_array().unwrap();
    let names: Vec<&str> = policies
        .iter()
        .map(|p| p["policy"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fifo", "strict_priority", "aging"]);
    assert!(report["capacity_rps"].as_f64().unwrap() > 0.0);
    assert_eq!(report["lost"], 0, "the total over the policies");
    for p in policies {
        assert_eq!(p["lost"], 0, "{}", p["policy"]);
        assert!(p["offered"].as_u64().unwrap() > 0);
    }
    // The table: a row per level, and a `!` beside each p99 that missed
    // its objective, exactly where the JSON says it did.
    for name in [
        "fifo",
        "strict_priority",
        "aging",
        "critical",
        "background",
        "lost",
    ] {
        assert!(stdout.contains(name), "{name} missing:\n{stdout}");
    }
    for (level, line) in ["critical", "high", "normal", "low", "background"]
        .iter()
        .map(|l| (l, stdout.lines().find(|x| x.starts_with(l)).unwrap()))
    {
        let marks: Vec<bool> = line
            .split(" | ")
            .skip(1)
            .map(|cell| cell.contains('!'))
            .collect();
        let missed: Vec<bool> = policies
            .iter()
            .map(|p| !p["per_priority"][level]["p99_met"].as_bool().unwrap())
            .collect();
        assert_eq!(marks, missed, "{line}");
    }
    // The verdict: one line per policy, "met" exactly where the JSON's
    // goal is, and a missed p99 of Critical or High among its reasons.
    for p in policies {
        let name = p["policy"].as_str().unwrap();
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name) && l.contains("starvation bound"))
            .unwrap_or_else(|| panic!("no verdict for {name}:\n{stdout}"));
        let met = p["goal"]["met"].as_bool().unwrap();
        assert_eq!(line.contains(" met ("), met, "{line}");
        assert_eq!(p["goal"]["missed"].as_array().unwrap().is_empty(), met);
        for level in ["critical", "high"] {
            if !p["per_priority"][level]["p99_met"].as_bool().unwrap() {
                assert!(!met && line.contains(&format!("{level} p99")), "{line}");
            }
        }
        let bound = p["starvation_bound_ms"].as_f64().unwrap();
        assert!(bound > p["max_wait_ms"].as_f64().unwrap(), "{bound}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_default_trace_replays_from_any_folder() {
    // Outside the repository (no `data/` there) the bundled trace is the
    // copy built into the binary; a path given is still read from disk.
    let dir = scratch_dir("convoy-cli-elsewhere");
    let json = dir.join("r.json");
    let out = convoy_in(&dir, &["replay", "--limit", "200", "--json", "r.json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["trace"], "data/azure_llm_conv_2023.csv");
    assert_eq!(report["offered"], 200);
    assert_eq!(report["lost"], 0);
    let out = convoy_in(&dir, &["replay", "--trace", "data/other.csv"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("data/other.csv"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_replay_that_completes_nothing_still_plots() {
    let dir = scratch_dir("convoy-cli-empty");
    // No worker holds 10^9 tokens: every row is refused at submit.
    let trace = dir.join("huge.csv");
    std::fs::write(
        &trace,
        "arrival_s,priority,tokens\n0,high,1000000000\n0.001,low,1000000000\n",
    )
    .unwrap();
    let plot = dir.join("p.svg");
    let (code, err) = convoy(&[
        "replay",
        "--trace",
        trace.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("nothing completed"),
        "{svg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_binary_replays_and_writes_json_metrics_and_plot() {
    let dir = scratch_dir("convoy-cli-ok");
    let json = dir.join("r.json");
    let metrics = dir.join("m.txt");
    let plot = dir.join("p.svg");
    let (code, err) = convoy(&[
        "replay",
        "--limit",
        "400",
        "--speedup",
        "2000",
        "--json",
        json.to_str().unwrap(),
        "--metrics-out",
        metrics.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["lost"], 0);
    assert_eq!(
        report["accepted"].as_u64().unwrap() + report["refused"].as_u64().unwrap(),
        400
    );
    // Each level both in order and by name, the two lines alike.
    for (i, name) in ["critical", "high", "normal", "low", "background"]
        .iter()
        .enumerate()
    {
        assert_eq!(report["priorities"][i]["priority"], *name);
        assert_eq!(report["per_priority"][name], report["priorities"][i]);
        assert!(report["per_priority"][name]["slo_compliance"].is_number());
    }
    assert!(std::fs::read_to_string(&metrics)
        .unwrap()
        .contains("convoy_batches_total"));
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));
    // The timeline's window fits the run (tens of ms here), not a fixed 1 s
    // that left a short run's chart with two or three points.
    let window = report["timeline"]["window_s"].as_f64().unwrap();
    assert!(window > 0.0 && window < 1.0, "window {window} s");
    std::fs::remove_dir_all(&dir).unwrap();
}
