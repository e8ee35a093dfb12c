//! The `convoy serve` binary end to end: weights written by `convoy
//! weights`, served, answered with the model's own outputs, drained on
//! SIGTERM.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

/// `convoy serve --weights DIR` answers with the model in `DIR`, as
/// written by `convoy weights`: the path a user takes to check another
/// implementation of pool-dense against convoy's outputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_the_weights_convoy_weights_wrote() {
    use std::process::Command;

    let dir = std::env::temp_dir().join(format!("convoy-serve-weights-{}", std::process::id()));
    let bin = env!("CARGO_BIN_EXE_convoy");
    let dir_arg = dir.to_str().expect("a UTF-8 temp dir");
    let wrote = Command::new(bin)
        .args(["weights", "--out", dir_arg, "--vocab", "64", "--dim", "8"])
        .args(["--seed", "5"])
        .output()
        .expect("convoy runs");
    assert!(wrote.status.success(), "{wrote:?}");
    let model = convoy::model::PoolDense::seeded(64, 8, 5).unwrap();
    assert_eq!(convoy::model::PoolDense::from_dir(&dir).unwrap(), model);

    let (mut server, mut stdout, addr) = start_serve(&["--weights", dir_arg]);
    let url = format!("http://{addr}");

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let infer = |body: Value| {
        let req = client.post(format!("{url}/v1/infer")).json(&body);
        async move {
            let r = req.send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = infer(json!({"tokens": [1, 2, 63]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let expect = model.forward(&[1, 2, 63]).unwrap();
    let got: Vec<f32> = serde_json::from_value(body["output"].clone()).unwrap();
    assert_eq!(got, expect, "the served output is the loaded model's");
    // The loaded vocabulary (64) and width (8), not the built-in 32000 × 256.
    let (status, body) = infer(json!({"tokens": [64]})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = infer(json!({"vector": vec![0.5f32; 8]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // SIGTERM: it drains and exits 0, nothing lost.
    let pid = server.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(server.wait().unwrap().success(), "{rest}");
    assert!(rest.contains("lost: 0"), "{rest}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Starts `convoy serve` on a free port with `extra` arguments, and
/// returns the child, its stdout reader (past the first line) and its
/// address.
fn start_serve(
    extra: &[&str],
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
    String,
) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args(["serve", "--addr", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("convoy serve starts");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let addr = listening_on(&mut stdout).0;
    (child, stdout, addr)
}

/// Reads `convoy serve`'s stdout up to its "listening on" line: the
/// address, and whether a line before it said the model runs on a GPU.
fn listening_on(stdout: &mut impl std::io::BufRead) -> (String, bool) {
    let mut on_gpu = false;
    for _ in 0..4 {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        if let Some(addr) = line
            .trim()
            .strip_prefix("convoy serve: listening on http://")
        {
            return (addr.to_owned(), on_gpu);
        }
        on_gpu |= line.contains("GPU workers on");
    }
    panic!("convoy serve never said where it listens")
}

/// `convoy serve --gpu`: on a GPU, token ids run on the device and a
/// `{"vector": …}` request is refused with 422 (it has no kernel); without
/// one (or without the cuda feature) it says so on stderr and serves both
/// on CPU workers. Either way it answers and loses nothing.
#[test]
fn serve_gpu_runs_on_the_device_or_says_why_not() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args(["serve", "--addr", "127.0.0.1:0", "--gpu"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("convoy serve starts");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let (addr, on_gpu) = listening_on(&mut stdout);
    let tokens = post_once(&addr, r#"{"tokens":[1,2,3]}"#);
    assert!(tokens.starts_with("HTTP/1.1 200"), "{tokens}");
    let vector = format!("{{\"vector\":[{}]}}", vec!["0.5"; 256].join(","));
    let vector = post_once(&addr, &vector);
    if on_gpu {
        assert!(vector.starts_with("HTTP/1.1 422"), "{vector}");
        assert!(vector.contains("--gpu"), "{vector}");
    } else {
        assert!(vector.starts_with("HTTP/1.1 200"), "{vector}");
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(exits_within(&mut child, Duration::from_secs(20)).success());
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("lost: 0"), "{rest}");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    if !on_gpu {
        assert!(
            err.contains("--gpu: no GPU") || err.contains("--gpu: built without the cuda feature"),
            "{err}"
        );
    }
}

/// `start_serve` with `config` (TOML text) as its `--config` file, whose
/// path is returned too.
fn serve_with(
    config: &str,
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
    String,
    std::path::PathBuf,
) {
    let path = std::env::temp_dir().join(format!(
        "convoy-serve-{}-{}.toml",
        std::process::id(),
        config.len()
    ));
    std::fs::write(&path, config).unwrap();
    let (child, stdout, addr) =
        start_serve(&["--config", path.to_str().expect("a UTF-8 temp dir")]);
    (child, stdout, addr, path)
}

/// Waits for `child` at most `bound`; kills it and fails past that.
fn exits_within(child: &mut std::process::Child, bound: Duration) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > bound {
            let _ = child.kill();
            panic!("convoy serve did not exit within {bound:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client that sent half a request (part of the headers) and then
/// nothing does not keep SIGTERM from completing: the server drains for
/// its drain deadline (`shutdown_timeout_ms`, 300 ms here), closes the
/// connection, prints its accounting and exits 0.
#[test]
fn a_half_sent_request_does_not_hold_shutdown_past_the_drain_deadline() {
    use std::io::Write;
    let (mut child, mut stdout, addr, config) = serve_with("shutdown_timeout_ms = 300\n");
    let mut half = std::net::TcpStream::connect(&addr).unwrap();
    half.write_all(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Le")
        .unwrap();
    let mut body_half = std::net::TcpStream::connect(&addr).unwrap();
    body_half
        .write_all(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"tok")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // 300 ms of drain, the runtime's shutdown, and room for a slow machine;
    // without the deadline it never exits while the clients hold on.
    let status = exits_within(&mut child, Duration::from_secs(20));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(status.success(), "{status:?}: {rest}");
    assert!(rest.contains("convoy serve: stopped."), "{rest}");
    assert!(rest.contains("lost: 0"), "{rest}");
    drop((half, body_half));
    std::fs::remove_file(config).unwrap();
}

/// `convoy serve`'s `[http]` section sets its limits: here a 300 ms header
/// timeout closes a silent connection, a 300 ms body timeout answers a body
/// that stops coming with 408, and a 64-byte body limit refuses a longer
/// body with 413. An unknown key or a bad value in it, or a bad flag, is
/// refused, naming it, with exit code 2.
#[test]
fn the_http_limits_come_from_the_config_file() {
    use std::io::{Read, Write};
    let (mut child, mut stdout, addr, config) = serve_with(
        "shutdown_timeout_ms = 300\n[http]\nheader_timeout_ms = 300\nbody_timeout_ms = 300\n\
         max_body_bytes = 64\nurgent = \"critical\"\n",
    );
    let mut silent = std::net::TcpStream::connect(&addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    // Closed by the server (0 bytes) well before the 5 s read timeout.
    assert_eq!(silent.read(&mut buf).unwrap_or(usize::MAX), 0);
    let mut big = std::net::TcpStream::connect(&addr).unwrap();
    let body = format!("{{\"tokens\": [{}]}}", vec!["1"; 40].join(","));
    write!(
        big,
        "POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    big.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = big.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let mut stalled = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stalled,
        "POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{{\"tok"
    )
    .unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = [0u8; 512];
    let n = stalled.read(&mut answer).unwrap_or(0);
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(exits_within(&mut child, Duration::from_secs(20)).success());
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("lost: 0"), "{rest}");
    std::fs::remove_file(config).unwrap();

    let bad = std::env::temp_dir().join(format!("convoy-serve-bad-{}.toml", std::process::id()));
    for (text, flags, named) in [
        ("[http]\nheader_timeout = 5\n", &[][..], "header_timeout"),
        ("[http]\nurgent = \"soon\"\n", &[], "soon"),
        ("[http]\nbody_timeout_ms = 0\n", &[], "body_timeout_ms"),
        (
            "[http]\nmin_body_bytes_per_s = 0\n",
            &[],
            "min_body_bytes_per_s",
        ),
        ("", &["--urgent", "7"], "urgent"),
    ] {
        std::fs::write(&bad, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_convoy"))
            .args(["serve", "--addr", "127.0.0.1:0", "--config"])
            .arg(&bad)
            .args(flags)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{text} {flags:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named), "{text} {flags:?}: {err}");
    }
    std::fs::remove_file(&bad).unwrap();
}

/// The soft limit on open files of this process.
fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// A process's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// One request on a fresh connection; its answer.
fn post_once(addr: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer
}

/// 2,000 connections holding half-sent request heads, then 400 more with a
/// budget of 2,100: a normal request is still answered well before any
/// header timeout frees room, the connections past the budget are closed
/// at once, the server never holds more sockets than its budget, and once
/// the clients are gone its memory is back within 1.5× its idle figure
/// (the goal is 2×; the allocator alone would keep it near 2×).
/// Needs 3,000 open files for the test's own sockets (`.ci/run` raises the
/// limit); with fewer it skips, saying so, and under `CI=true` fails.
#[test]
fn thousands_of_slow_connections_do_not_hold_a_normal_request() {
    use std::io::{Read, Write};
    let limit = open_files_limit();
    if limit < 3000 {
        let why = format!("needs 3000 open files, the limit is {limit} (ulimit -n 3000)");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("SKIP thousands_of_slow_connections: {why}");
        return;
    }
    let (mut child, mut stdout, addr) =
        start_serve(&["--max-connections", "2100", "--header-timeout-ms", "20000"]);
    let pid = child.id();
    let normal = r#"{"tokens":[1,2,3,4,5,6,7,8]}"#;
    assert!(post_once(&addr, normal).starts_with("HTTP/1.1 200"));
    let idle = rss_kib(pid);
    let mut slow = Vec::new();
    for _ in 0..2000 {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.write_all(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        slow.push(c);
    }
    // Answered while all 2,000 hold their connections, long before the
    // 20 s header timeout could free one.
    let t = std::time::Instant::now();
    let answer = post_once(&addr, normal);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // 400 more: 100 fill the budget, the server closes the other 300
    // (those it held back for a look at their head, within 200 ms).
    let mut past = Vec::new();
    for _ in 0..400 {
        if let Ok(c) = std::net::TcpStream::connect(&addr) {
            past.push(c);
        }
    }
    std::thread::sleep(Duration::from_millis(800));
    let mut closed = 0;
    for c in &mut past {
        c.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        match c.read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => closed += 1,
        }
    }
    assert!(
        (290..=310).contains(&closed),
        "{closed} of 400 closed; 300 were past the budget"
    );
    let sockets = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .ok()
                .and_then(|e| std::fs::read_link(e.path()).ok())
                .is_some_and(|l| l.to_string_lossy().starts_with("socket:"))
        })
        .count();
    assert!(sockets <= 2100 + 16, "{sockets} sockets open, budget 2100");
    drop(past);
    drop(slow);
    // The connections end as their clients close, and once the flood has
    // ebbed (two looks a second apart) the server returns the memory.
    assert!(post_once(&addr, normal).starts_with("HTTP/1.1 200"));
    let start = std::time::Instant::now();
    let mut after = rss_kib(pid);
    // Kept by the allocator it would stand near 2× (BENCHMARKS.md);
    // returned, it is back near idle.
    while after > idle * 3 / 2 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        after = rss_kib(pid);
    }
    assert!(
        after <= idle * 3 / 2,
        "RSS {after} KiB 10 s after the flood, {idle} KiB idle"
    );
    let pid = pid.to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(exits_within(&mut child, Duration::from_secs(20)).success());
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("lost: 0"), "{rest}");
}
