//! The "no lock on the hot path" invariant (DESIGN.md), checked on the
//! source: in every file that submit, the collector loop or completion
//! runs, a lock may be taken only inside the control-path functions named
//! below, each with the reason it is off the hot path. A new `.lock()`
//! (waiting on a condvar needs one), a `RwLock` or a blocking channel
//! anywhere else fails this
//! test, whatever the timing; a test module at the end of a file is not
//! scanned.
//!
//! The check is textual (it looks for the calls, not at types), so it
//! cannot see a lock taken inside a dependency; the hot path's
//! dependencies are our ring, ticket and ledger, `arc-swap` (lock-free
//! loads) and `hdrhistogram` (plain single-owner data).

use std::path::Path;

/// Files on the hot path: submit (`runtime/handle.rs` and what it calls),
/// the collector loop and what it owns, the workers and completion, and
/// `runtime.rs`, whose shared state all of them use (its control calls
/// are allowed below by name).
const HOT: &[&str] = &[
    "src/intake/ring.rs",
    "src/intake/sharded.rs",
    "src/intake/gate.rs",
    "src/intake/doorbell.rs",
    "src/intake/shed.rs",
    "src/intake/twins.rs",
    "src/outcome/ticket.rs",
    "src/plan/ledger.rs",
    "src/plan/order.rs",
    "src/plan/planner.rs",
    "src/plan/placement.rs",
    "src/plan/dedup.rs",
    "src/observe/stats.rs",
    "src/observe/refresh.rs",
    "src/observe/sla/mod.rs",
    "src/observe/sla/board.rs",
    "src/observe/sla/recorder.rs",
    "src/observe/sla/shard.rs",
    "src/request.rs",
    "src/device/executor.rs",
    "src/intake/quota.rs",
    "src/runtime/clearing.rs",
    "src/runtime/control.rs",
    "src/runtime/mod.rs",
    "src/runtime/handle.rs",
    "src/runtime/collector/mod.rs",
    "src/runtime/collector/arrivals.rs",
    "src/runtime/collector/changes.rs",
    "src/runtime/collector/ending.rs",
    "src/runtime/collector/launch.rs",
    "src/runtime/collector/report.rs",
    "src/runtime/collector/sweep.rs",
    "src/runtime/collector/displace.rs",
    "src/runtime/handoff.rs",
    "src/runtime/stopped.rs",
    "src/device/stop.rs",
    "src/device/chunked.rs",
    "src/runtime/worker.rs",
];

/// (file, function): where a lock is allowed, and why that is a control path.
const ALLOWED: &[(&str, &str, &str)] = &[
    (
        "src/runtime/collector/changes.rs",
        "apply_fleet_changes",
        "runs only after the control `Notice` said a control operation (a worker added or removed, health, capacity, a reload) happened",
    ),
    (
        "src/observe/sla/board.rs",
        "recorder",
        "a worker or collector thread starting: one recorder per thread",
    ),
    ("src/observe/sla/board.rs", "listed", "a report, asked by the caller"),
    ("src/observe/sla/board.rs", "merged", "a report, asked by the caller"),
    (
        "src/observe/sla/recorder.rs",
        "drop",
        "a recorder retiring as its thread exits",
    ),
    ("src/runtime/clearing.rs", "lock", "the helper the three below call"),
    ("src/runtime/clearing.rs", "ask", "`clear_waiting`, a control call"),
    (
        "src/runtime/clearing.rs",
        "ask_later",
        "`clear_waiting` from the collector's own thread",
    ),
    (
        "src/runtime/clearing.rs",
        "answer",
        "the collector, only for a clear that was asked",
    ),
    ("src/runtime/clearing.rs", "gone", "the collector exiting"),
    (
        "src/runtime/mod.rs",
        "refresh_sla",
        "a report, asked by the caller: which worker threads to wake",
    ),
    (
        "src/runtime/mod.rs",
        "reload_config",
        "`reload_config`, a control call",
    ),
    (
        "src/runtime/mod.rs",
        "config",
        "`Runtime::config`, a control call",
    ),
    (
        "src/runtime/mod.rs",
        "add_worker",
        "`add_worker`, a control call",
    ),
    (
        "src/runtime/mod.rs",
        "update_worker",
        "`remove_worker`, `set_health`, `set_capacity`: control calls",
    ),
    ("src/runtime/mod.rs", "stop", "shutdown, joining the threads"),
];

/// What counts as taking a lock or blocking on a channel.
const LOCKS: &[&str] = &[
    ".lock()",
    "RwLock",
    "mpsc::",
    "crossbeam::channel",
    ".recv()",
];

/// The function a line is in: the last `fn name` seen above it.
fn fn_name(line: &str) -> Option<String> {
    let code = line.split("//").next().unwrap_or("");
    let at = code.find("fn ")?;
    if at > 0 && code.as_bytes()[at - 1].is_ascii_alphanumeric() {
        return None;
    }
    let name: String = code[at + 3..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// Every lock taken outside the allowed functions, as `file:line: text (in
/// fn)`, and the allowances that matched a lock.
fn findings(root: &Path) -> (Vec<String>, Vec<(&'static str, &'static str)>) {
    let mut found = Vec::new();
    let mut used = Vec::new();
    for file in HOT {
        let text = std::fs::read_to_string(root.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e} (was it renamed? update HOT)"));
        let mut current = String::new();
        for (i, line) in text.lines().enumerate() {
            if line.starts_with("#[cfg(test)]") || line.starts_with("#[cfg(all(test") {
                break;
            }
            if let Some(name) = fn_name(line) {
                current = name;
            }
            let code = line.split("//").next().unwrap_or("");
            if code.trim_start().starts_with("use ") || !LOCKS.iter().any(|p| code.contains(p)) {
                continue;
            }
            match ALLOWED
                .iter()
                .find(|(f, name, _)| f == file && *name == current)
            {
                Some((f, name, _)) => used.push((*f, *name)),
                None => found.push(format!(
                    "{file}:{}: {} (in fn {current})",
                    i + 1,
                    line.trim()
                )),
            }
        }
    }
    (found, used)
}

#[test]
fn no_lock_is_taken_on_the_hot_path() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (found, used) = findings(root);
    assert!(
        found.is_empty(),
        "a lock on the hot path (allow it in tests/hot_path.rs only with the reason it is a control path):\n{}",
        found.join("\n")
    );
    for (file, name, why) in ALLOWED {
        assert!(
            used.contains(&(*file, *name)),
            "{file}: fn {name} ({why}) takes no lock any more: remove its allowance"
        );
    }
}

/// The scan itself can fail: a lock in a hot function is found, one in an
/// allowed function is not, and a test module is skipped.
#[test]
fn the_scan_finds_a_lock_where_it_does_not_belong() {
    let dir = std::env::temp_dir().join(format!("convoy-hot-path-{}", std::process::id()));
    for file in HOT {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().expect("a file has a folder")).expect("temp dir");
        std::fs::write(&path, "").expect("temp file");
    }
    std::fs::write(
        dir.join("src/runtime/collector/changes.rs"),
        "impl C {\n    fn apply_fleet_changes(&mut self) {\n        self.new_links.lock();\n    }\n    fn drain_intake(&mut self) {\n        let g = self.shared.stats.lock();\n    }\n}\n#[cfg(test)]\nmod tests {\n    fn t() { m.lock(); }\n}\n",
    )
    .expect("temp file");
    let (found, used) = findings(&dir);
    assert_eq!(
        used,
        [("src/runtime/collector/changes.rs", "apply_fleet_changes")]
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("src/runtime/collector/changes.rs:6:")
            && found[0].contains("drain_intake"),
        "{found:?}"
    );
}
