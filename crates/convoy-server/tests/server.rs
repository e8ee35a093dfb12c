//! The HTTP front end through a real client (reqwest) against a server
//! started in the test: every status, cancel on disconnect, and shutdown
//! under load losing nothing.
// The root crate's test helpers (workers that hold, seeded inputs).
#[path = "../../../tests/common/mod.rs"]
mod common;

use common::{fresh_seed, worker, Hold, Rng};

use std::sync::Arc;
use std::time::{Duration, Instant};

use convoy::{BatchingConfig, Config, IntakeConfig, Priority, Runtime};
use convoy_server::{serve_until, HttpLimits, Input, Limits, ModelCodec, Server};
use reqwest::StatusCode;
use serde_json::{json, Value};

const LIMITS: Limits = Limits {
    max_body_bytes: 4096,
    max_tokens: 64,
    vocab: 100,
    dim: 4,
};

/// A server whose one worker blocks on any request whose first token is 0
/// until `hold` opens; outputs are `[len, 0, 0, 0]`. Tiny queues (4 per
/// level) so 429 is reachable.
struct TestServer {
    url: String,
    state: Arc<Server<ModelCodec>>,
    hold: Hold,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<std::io::Result<convoy::Stats>>>,
}

async fn start() -> TestServer {
    start_with(None).await
}

/// The test server's HTTP limits: a short header timeout and a small
/// connection budget, so both are reached quickly.
const HTTP: HttpLimits = HttpLimits {
    header_timeout: Duration::from_millis(400),
    body_timeout: Duration::from_millis(400),
    min_body_rate: 64 * 1024,
    max_connections: 24,
    urgent: Some(Priority::High),
};

/// `start`, shedding (`ordering.shed`) under this `max_wait` when given.
async fn start_with(shed_under: Option<Duration>) -> TestServer {
    let hold = Hold::default();
    let h2 = hold.clone();
    let runtime = Runtime::builder()
        .config(Config {
            // One slot: while the blocker runs, everything else waits.
            workers: vec![worker(1, 1 << 20)],
            intake: IntakeConfig {
                shards: 1,
                lane_capacity: 4,
            },
            batching: BatchingConfig {
                max_batch_size: 1,
                ..Config::default().batching
            },
            // The blocker holds the worker as long as a test needs: a full
            // queue, not shedding, is what these tests reach, except the
            // one that asks `start_with` for shedding.
            shed: shed_under.is_some(),
            max_wait: shed_under.unwrap_or(Config::default().max_wait),
            ..Config::default()
        })
        .batch_fn(move |xs: &[Input]| {
            xs.iter()
                .map(|x| match x {
                    Input::Tokens(t) => {
                        if t.first() == Some(&0) {
                            h2.wait();
                        }
                        vec![t.len() as f32, 0.0, 0.0, 0.0]
                    }
                    // A model gone wrong on one input no other test sends.
                    Input::Vector(v) if v.first() == Some(&1234.5) => vec![f32::NAN; 4],
                    Input::Vector(v) => v.clone(),
                })
                .collect()
        })
        .deduplicate()
        .build()
        .unwrap();
    let state = Arc::new(
        Server::new(Arc::new(runtime), ModelCodec { limits: LIMITS })
            .max_body_bytes(LIMITS.max_body_bytes)
            .http_limits(HTTP),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(serve_until(listener, state.clone(), async move {
        let _ = rx.await;
    }));
    TestServer {
        url,
        state,
        hold,
        stop: Some(tx),
        done: Some(done),
    }
}

impl TestServer {
    async fn infer(&self, body: Value) -> (StatusCode, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/infer", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn raw(&self, body: Vec<u8>) -> StatusCode {
        reqwest::Client::new()
            .post(format!("{}/v1/infer", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
    }

    /// `GET /v1/stats`, as JSON.
    async fn stats_json(&self) -> Value {
        reqwest::get(format!("{}/v1/stats", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn stop(mut self) -> convoy::Stats {
        self.hold.open();
        let _ = self.stop.take().unwrap().send(());
        self.done.take().unwrap().await.unwrap().unwrap()
    }

    async fn eventually(&self, what: &str, f: impl Fn(&convoy::Stats) -> bool) {
        let start = Instant::now();
        while !f(&self.state.runtime.stats()) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out: {what}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_error_has_its_status_and_a_json_reason() {
    let s = start().await;
    let (st, body) = s
        .infer(json!({"tokens": [1, 2, 3], "priority": "high"}))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body["output"], json!([3.0, 0.0, 0.0, 0.0]));
    let (st, body) = s.infer(json!({"vector": [1.0, 2.0, 3.0, 4.0]})).await;
    assert_eq!(
        (st, body["output"].clone()),
        (StatusCode::OK, json!([1.0, 2.0, 3.0, 4.0]))
    );

    let cases = [
        (
            json!({"tokens": [1], "priority": "urgent"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown priority",
        ),
        (
            json!({"tokens": [1], "priority": 5}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown priority \"5\"",
        ),
        (
            json!({"tokens": [1], "priority": -1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown priority \"-1\"",
        ),
        (
            json!({"tokens": vec![1; 65]}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "at most 64",
        ),
        (
            json!({"vector": [1.0]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "takes 4",
        ),
        (
            json!({"tokens": [100]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "outside the vocabulary",
        ),
        (
            json!({"tokens": [1], "deadline_ms": -5}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "deadline_ms",
        ),
        (
            json!({"tokens": [1], "vector": [1.0, 2.0, 3.0, 4.0]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "exactly one",
        ),
        (json!({}), StatusCode::UNPROCESSABLE_ENTITY, "exactly one"),
        (
            json!({"tokens": [1], "colour": "red"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown field",
        ),
        (
            json!({"tokens": "abc"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid type",
        ),
    ];
    for (body, status, reason) in cases {
        let (st, err) = s.infer(body.clone()).await;
        assert_eq!(st, status, "{body}: {err}");
        let msg = err["error"].as_str().unwrap_or_default();
        assert!(msg.contains(reason), "{body}: {msg}");
    }
    assert_eq!(
        s.raw(b"{\"tokens\": [1,".to_vec()).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.raw(vec![b'{', 0xff, 0xfe, b'}']).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.raw(vec![b' '; 10_000]).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    let client = reqwest::Client::new();
    let health = client
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let metrics = client
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(metrics
        .text()
        .await
        .unwrap()
        .contains("convoy_requests_ended_total"));
    let stats = s.stats_json().await;
    assert_eq!(stats["total"]["completed"], 2);
    assert!(stats["queue_capacity"].as_u64().unwrap() > 0);
    assert_eq!(stats["utilization"], 0.0, "nothing waits");
    let final_stats = s.stop().await;
    assert_eq!(final_stats.total().inserted, final_stats.total().ended());
}

/// Every error, including a path or method the server does not have, an
/// empty token list and an output JSON cannot carry, is a status with a
/// JSON body in plain words; nothing names an internal type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_status_has_a_json_body_in_plain_words() {
    let s = start().await;
    let client = reqwest::Client::new();
    let cases = [
        (
            client.get(format!("{}/nope", s.url)),
            StatusCode::NOT_FOUND,
            "no such route",
        ),
        (
            client.get(format!("{}/v1/infer", s.url)),
            StatusCode::METHOD_NOT_ALLOWED,
            "POST",
        ),
        (
            client.delete(format!("{}/metrics", s.url)),
            StatusCode::METHOD_NOT_ALLOWED,
            "GET",
        ),
        (
            client
                .post(format!("{}/v1/infer", s.url))
                .json(&json!({"tokens": []})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "must not be empty",
        ),
        (
            client
                .post(format!("{}/v1/infer", s.url))
                .json(&json!([1, 2])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "JSON object",
        ),
        (
            client
                .post(format!("{}/v1/infer", s.url))
                .json(&json!({"vector": [1234.5, 0.0, 0.0, 0.0]})),
            StatusCode::INTERNAL_SERVER_ERROR,
            "not a finite number",
        ),
        (
            client
                .post(format!("{}/v1/infer", s.url))
                .json(&json!({"tokens": [1], "priority": {"x": 1}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown priority",
        ),
    ];
    for (request, status, words) in cases {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), status);
        let body: Value = r.json().await.expect("a JSON body");
        let msg = body["error"].as_str().expect("an error message");
        assert!(msg.contains(words), "{status}: {msg}");
        assert!(!msg.contains("enum") && !msg.contains("::"), "{msg}");
    }
    // What hyper answers itself, before the router: a request line it
    // cannot parse (400) and more headers than it takes (431).
    use tokio::io::AsyncWriteExt;
    let addr = s.url.trim_start_matches("http://").to_owned();
    let many: String = (0..200)
        .map(|i| format!("x-h{i}: {}\r\n", "a".repeat(20)))
        .collect();
    for (raw, status, words) in [
        ("GARBAGE LINE\r\n\r\n".to_owned(), "400", "request line"),
        (
            format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{many}\r\n"),
            "431",
            "headers",
        ),
    ] {
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        conn.write_all(raw.as_bytes()).await.unwrap();
        let answer = read_answer(&mut conn, Duration::from_secs(5)).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
        assert!(head.contains("content-type: application/json"), "{answer}");
        let body: Value = serde_json::from_str(body).expect("a JSON body");
        let msg = body["error"].as_str().expect("an error message");
        assert!(msg.contains(words), "{status}: {msg}");
    }
    let stats = s.stop().await;
    assert_eq!(stats.total().inserted, stats.total().ended());
}

/// A declared body over the limit is refused with 413 before any of it
/// is sent: the client gets its answer with the headers alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_declared_body_is_refused_before_it_arrives() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start().await;
    let addr = s.url.trim_start_matches("http://").to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(
        b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000000000\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = conn.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if answer.windows(9).any(|w| w == b"\"error\":") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer while the body was not sent");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("5000000000 declared"), "{text}");
    let stats = s.stop().await;
    assert_eq!(stats.total().inserted, 0);
}

/// Reads from `conn` until the server closes it, for at most `bound`;
/// whether it closed in time.
async fn closed_within(conn: &mut tokio::net::TcpStream, bound: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    tokio::time::timeout(bound, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// What the server writes on `conn` until it closes it or `bound` passes.
async fn read_answer(conn: &mut tokio::net::TcpStream, bound: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(bound, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    // One whole answer: its head and its JSON body.
                    let text = String::from_utf8_lossy(&got);
                    if let Some((_, body)) = text.split_once("\r\n\r\n") {
                        if body.trim_end().ends_with('}') {
                            break;
                        }
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

/// A body that does not arrive within the body timeout (400 ms here, plus
/// its declared length at the minimum rate) is a 408 in JSON, whatever the
/// client goes on to send; a request sent slowly but within the timeouts is
/// served, and the latency the server reports counts from its first byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_too_slow_is_408_and_a_slow_one_counts_from_its_first_byte() {
    use tokio::io::AsyncWriteExt;
    let s = start().await;
    let addr = s.url.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /v1/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"tokens\"")
        .await
        .unwrap();
    let t = Instant::now();
    let answer = read_answer(&mut slow, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("{\"error\":\"the body did not arrive within"),
        "{answer}"
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    let body = br#"{"tokens":[5,6,7],"priority":"low"}"#;
    let mut late = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    // Half the head, a pause (within the header timeout), then the rest:
    // the request began at its first byte, not when its head was whole.
    late.write_all(&head.as_bytes()[..20]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    late.write_all(&head.as_bytes()[20..]).await.unwrap();
    late.write_all(body).await.unwrap();
    let answer = read_answer(&mut late, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let sla: Value = reqwest::get(format!("{}/v1/sla", s.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let low = &sla["priorities"]["low"]["end_to_end_ms"];
    assert_eq!(low["count"], 1, "{sla}");
    assert!(low["max"].as_f64().unwrap() >= 250.0, "{sla}");
    assert!(
        sla["priorities"]["low"]["queue_wait_ms"]["max"]
            .as_f64()
            .unwrap()
            < 250.0,
        "{sla}"
    );
    s.stop().await;
}

/// The `x-priority` header gives the request's level when the body gives
/// none; a body that says another level is a 422 naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_priority_header_sets_the_level_and_must_agree_with_the_body() {
    let s = start().await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/infer", s.url);
    let r = client
        .post(&url)
        .header("x-priority", "High")
        .json(&json!({"tokens": [4]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = client
        .post(&url)
        .header("x-priority", "critical")
        .json(&json!({"tokens": [4], "priority": "low"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = r.json().await.unwrap();
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("critical") && msg.contains("low"), "{msg}");
    let r = client
        .post(&url)
        .header("x-priority", "soon")
        .json(&json!({"tokens": [4]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let stats = s.stop().await;
    assert_eq!(stats.of(convoy::Priority::High).completed, 1);
    assert_eq!(stats.total().inserted, 1);
}

/// A connection whose first request is urgent (by its `x-priority`
/// header) is served on the door's own thread: with every worker thread
/// of the server's runtime busy, a Critical request is still answered,
/// while a Normal one waits for a worker thread.
#[test]
fn an_urgent_connection_is_served_while_the_runtime_is_busy() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    let served = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let runtime = Runtime::builder()
        .batch_fn(|xs: &[Input]| xs.iter().map(|_| vec![0.0; 4]).collect())
        .build()
        .unwrap();
    let state =
        Arc::new(Server::new(Arc::new(runtime), ModelCodec { limits: LIMITS }).http_limits(HTTP));
    let listener = served
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = served.spawn(serve_until(listener, state.clone(), async move {
        let _ = stopped.await;
    }));
    let ask = move |priority: &str| {
        let body = r#"{"tokens":[1,2]}"#;
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            conn,
            "POST /v1/infer HTTP/1.1\r\nhost: x\r\nx-priority: {priority}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        answer
    };
    assert!(ask("normal").starts_with("HTTP/1.1 200"), "served at all");
    // Hold the runtime's only worker thread.
    let (busy, released) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (b, r) = (busy.clone(), released.clone());
    served.spawn(async move {
        b.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(1500));
        r.store(true, Ordering::SeqCst);
    });
    while !busy.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let normal = std::thread::spawn(move || (ask("normal"), Instant::now()));
    let answer = ask("critical");
    let critical_at = Instant::now();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        !released.load(Ordering::SeqCst),
        "the Critical request waited for the busy worker thread"
    );
    let (answer, normal_at) = normal.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(normal_at > critical_at, "Normal went first");
    assert_eq!(state.urgent_connections(), 1);
    let _ = stop.send(());
    let stats = served.block_on(server).unwrap().unwrap();
    assert_eq!((stats.total().inserted, stats.total().completed), (3, 3));
}

/// A client that sends its request head a line at a time, slower than the
/// header timeout allows, and one that connects and sends nothing, are
/// both closed once the timeout (400 ms here) has passed, however long
/// they would go on; a normal request on a fresh connection is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_silent_client_is_closed_at_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let s = start().await;
    let addr = s.url.trim_start_matches("http://").to_owned();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let dripping = tokio::spawn(async move {
        let _ = slow.write_all(b"POST /v1/infer HTTP/1.1\r\n").await;
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            if slow
                .write_all(format!("X-Drip-{i}: {i}\r\n").as_bytes())
                .await
                .is_err()
            {
                return true; // closed by the server
            }
        }
        false // 6 s of dripping without being closed
    });
    assert!(
        closed_within(&mut silent, Duration::from_secs(5)).await,
        "a silent connection outlived the header timeout"
    );
    assert!(
        dripping.await.unwrap(),
        "a client dripping header lines was never closed"
    );
    let (status, body) = s.infer(json!({"tokens": [1, 2]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stats = s.stop().await;
    assert_eq!(stats.total().inserted, stats.total().ended());
}

/// Past the connection budget (24 here), a new connection is closed
/// (within the reserve's short look for an urgent head) and counted, and
/// the server keeps its file descriptors, while an urgent request on a new
/// connection is still served from the reserve; once the idle connections
/// time out, normal requests are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_budget_holds_and_refusals_are_counted() {
    let s = start().await;
    let addr = s.url.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..HTTP.max_connections {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // Give the server a moment to accept them all, then one more.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_millis(300)).await,
        "a connection past the budget was kept open"
    );
    assert!(s.state.refused_connections() >= 1);
    let r = reqwest::Client::new()
        .post(format!("{}/v1/infer", s.url))
        .header("x-priority", "critical")
        .json(&json!({"tokens": [2]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "urgent, past the budget");
    let r = reqwest::Client::new()
        .post(format!("{}/v1/infer", s.url))
        .header("x-priority", "normal")
        .json(&json!({"tokens": [2]}))
        .send()
        .await;
    assert!(r.is_err(), "a Normal request past the budget was served");
    let refused = s.state.refused_connections();
    assert!(refused >= 2, "{refused}");
    assert!(s.state.http_metrics().contains(&format!(
        "convoy_http_connections_refused_total {refused}\n"
    )));
    // The held ones time out (the header timeout), and the room comes back.
    for mut c in held {
        assert!(closed_within(&mut c, Duration::from_secs(5)).await);
    }
    let (status, body) = s.infer(json!({"tokens": [3]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stats = s.stop().await;
    assert_eq!(stats.total().inserted, stats.total().ended());
}

/// `serve_until` as an embedder calls it: after the signal, a connection
/// still sending its body at the drain deadline (the runtime's
/// `shutdown_timeout`, 200 ms here) is closed, not left open in the
/// caller's tokio runtime, and `serve_until` returns the final counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_until_closes_what_remains_at_the_drain_deadline() {
    use tokio::io::AsyncWriteExt;
    let runtime = Runtime::builder()
        .config(Config {
            shutdown_timeout: Duration::from_millis(200),
            ..Config::default()
        })
        .batch_fn(|xs: &[Input]| xs.iter().map(|_| vec![0.0; 4]).collect())
        .build()
        .unwrap();
    let server = Arc::new(
        Server::new(Arc::new(runtime), ModelCodec { limits: LIMITS }).http_limits(HttpLimits {
            // Long: only the drain deadline may close the connection.
            header_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            max_connections: 8,
            ..HttpLimits::default()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(serve_until(listener, server, async move {
        let _ = rx.await;
    }));
    let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
    half.write_all(
        b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"tok",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.send(()).unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .expect("serve_until returned after the drain deadline")
        .unwrap()
        .unwrap();
    assert_eq!(stats.total().lost(), 0);
    assert!(
        closed_within(&mut half, Duration::from_secs(2)).await,
        "the half-sent connection outlived the drain"
    );
}

/// A level shed while the queue runs late is a 429 with `Retry-After`
/// that says so, and Critical, never shed, still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shed_level_is_429_and_critical_still_gets_in() {
    let s = start_with(Some(Duration::from_millis(100))).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/infer", s.url);
    let blocker = tokio::spawn(client.post(&url).json(&json!({"tokens": [0]})).send());
    s.eventually("blocker running", |st| st.batches == 1).await;
    let queued = tokio::spawn(client.post(&url).json(&json!({"tokens": [1]})).send());
    s.eventually("one waiting", |st| st.total().queue_depth == 1)
        .await;
    let handle = s.state.runtime.handle();
    let start = Instant::now();
    while !handle.is_shed(convoy::Priority::Background) {
        assert!(start.elapsed() < Duration::from_secs(10), "never shed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let r = client
        .post(&url)
        .json(&json!({"tokens": [2], "priority": "background"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("overloaded"),
        "{body}"
    );
    // Said in the header, the shed level is answered before the body is
    // read (a body that never comes), and counted as the door's.
    let mut door = tokio::net::TcpStream::connect(s.url.trim_start_matches("http://"))
        .await
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        door.write_all(
            b"POST /v1/infer HTTP/1.1\r\nhost: x\r\nx-priority: background\r\n\
              content-type: application/json\r\ncontent-length: 500\r\n\r\n{",
        )
        .await
        .unwrap();
    }
    let answer = read_answer(&mut door, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("overloaded"), "{answer}");
    assert_eq!(s.state.shed_at_door(convoy::Priority::Background), 1);
    let critical = tokio::spawn(
        client
            .post(&url)
            .json(&json!({"tokens": [3], "priority": "critical"}))
            .send(),
    );
    s.eventually("Critical accepted", |st| st.total().queue_depth == 2)
        .await;
    let json = s.stats_json().await;
    assert_eq!(
        json["priorities"]["background"]["rejected_shed"], 1,
        "{json}"
    );
    assert_eq!(json["shed_at_door"]["background"], 1, "{json}");
    assert_eq!(json["shed_at_door"]["total"], 1, "{json}");
    let metrics = reqwest::get(format!("{}/metrics", s.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("convoy_http_shed_at_door_total{priority=\"background\"} 1\n"),
        "{metrics}"
    );
    s.hold.open();
    for t in [blocker, queued, critical] {
        assert_eq!(t.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    let stats = s.stop().await;
    assert_eq!(stats.of(convoy::Priority::Background).rejected_shed, 1);
    assert_eq!((stats.total().inserted, stats.total().ended()), (3, 3));
}

/// A tenant past its quota of requests queued is a 429 with `Retry-After`
/// and a JSON error naming the tenant; another tenant still gets in, and
/// the refused request is not counted as accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_past_its_quota_is_429_naming_it() {
    let s = start().await;
    let mut c = s.state.runtime.config();
    c.tenants.max_queued = Some(2);
    s.state.runtime.reload_config(c).unwrap();
    let client = reqwest::Client::new();
    let url = format!("{}/v1/infer", s.url);
    let blocker = tokio::spawn(client.post(&url).json(&json!({"tokens": [0]})).send());
    s.eventually("blocker running", |st| st.batches == 1).await;
    let queued: Vec<_> = (0..2)
        .map(|i| {
            let body = json!({"tokens": [1, i], "tenant": "acme"});
            tokio::spawn(client.post(&url).json(&body).send())
        })
        .collect();
    s.eventually("two queued", |st| st.total().queue_depth == 2)
        .await;
    let r = client
        .post(&url)
        .json(&json!({"tokens": [2], "tenant": "acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    let why = body["error"].as_str().unwrap_or_default();
    assert!(why.contains("\"acme\"") && why.contains("quota"), "{body}");
    let other = tokio::spawn(
        client
            .post(&url)
            .json(&json!({"tokens": [3], "tenant": "zed"}))
            .send(),
    );
    s.eventually("the other tenant queued", |st| st.total().queue_depth == 3)
        .await;
    s.hold.open();
    assert_eq!(blocker.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(other.await.unwrap().unwrap().status(), StatusCode::OK);
    for q in queued {
        assert_eq!(q.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    let sla: Value = reqwest::get(format!("{}/v1/sla", s.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let acme = sla["tenants"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["tenant"] == "acme"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        (acme["launched"].as_u64(), acme["refused"].as_u64()),
        (Some(2), Some(1)),
        "{sla}"
    );
    let stats = s.stop().await.total();
    assert_eq!((stats.inserted, stats.ended()), (4, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_429_expired_is_504_shutdown_is_503() {
    let s = start().await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/infer", s.url);
    // Block the worker, then fill the Normal level (4) behind it.
    let blocker = tokio::spawn(client.post(&url).json(&json!({"tokens": [0]})).send());
    s.eventually("blocker running", |st| st.batches == 1).await;
    let queued: Vec<_> = (0..4)
        .map(|i| tokio::spawn(client.post(&url).json(&json!({"tokens": [1, i]})).send()))
        .collect();
    s.eventually("queue full", |st| st.total().queue_depth == 4)
        .await;
    let r = client
        .post(&url)
        .json(&json!({"tokens": [2]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "1");
    // Another level still has room: a deadline that passes while queued.
    let (st, body) = s
        .infer(json!({"tokens": [3], "priority": "low", "deadline_ms": 5}))
        .await;
    assert_eq!(st, StatusCode::GATEWAY_TIMEOUT, "{body}");
    s.hold.open();
    assert_eq!(blocker.await.unwrap().unwrap().status(), StatusCode::OK);
    for q in queued {
        assert_eq!(q.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    // Once the runtime shuts down, the server answers 503.
    let rt = s.state.runtime.clone();
    tokio::task::spawn_blocking(move || rt.shutdown())
        .await
        .unwrap();
    let (st, _) = s.infer(json!({"tokens": [1]})).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    let health = client
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
    let stats = s.stop().await.total();
    assert_eq!(stats.inserted, stats.ended());
    assert_eq!((stats.expired, stats.rejected_full), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_cancels_its_request() {
    let s = start().await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/infer", s.url);
    let blocker = tokio::spawn(client.post(&url).json(&json!({"tokens": [0]})).send());
    s.eventually("blocker running", |st| st.batches == 1).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let r = impatient
        .post(&url)
        .json(&json!({"tokens": [5]}))
        .send()
        .await;
    assert!(r.is_err(), "the client gave up");
    s.eventually("its request cancelled", |st| st.total().cancelled == 1)
        .await;
    s.hold.open();
    assert_eq!(blocker.await.unwrap().unwrap().status(), StatusCode::OK);
    let stats = s.stop().await.total();
    assert_eq!((stats.completed, stats.cancelled), (1, 1));
    assert_eq!(stats.inserted, stats.ended());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_answers_every_request_and_loses_nothing() {
    let s = start().await;
    s.hold.open();
    // A bound on each request, for a race in the client, not the server:
    // a request that reqwest hands to a pooled connection just as the
    // server closes it can be left in hyper's dispatch channel with
    // nobody to answer or drop it (hyperium/hyper#4122), and its future
    // then never resolves although no socket is open any more. The soak
    // (scripts/soak.sh) met it about once in 50–100 runs. Such a request
    // never reached the server, so it ends here like a refused connection.
    // What the server owes, an answer to every request it read, is
    // checked by `stop` returning (graceful shutdown waits for every
    // handler) and by the counts below.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("{}/v1/infer", s.url);
    let mut clients = Vec::new();
    for c in 0..16u32 {
        let (client, url) = (client.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            let mut answered = 0u32;
            for i in 0..50u32 {
                let body =
                    json!({"tokens": [1 + c, i % 90 + 1], "dedup_key": format!("{}", i % 7)});
                match client.post(&url).json(&body).send().await {
                    Ok(r) => {
                        let st = r.status();
                        assert!(
                            [
                                StatusCode::OK,
                                StatusCode::TOO_MANY_REQUESTS,
                                StatusCode::SERVICE_UNAVAILABLE
                            ]
                            .contains(&st),
                            "{st}"
                        );
                        answered += 1;
                    }
                    Err(_) => break, // the server stopped accepting
                }
            }
            answered
        }));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    // A server that left a request it accepted unanswered would never
    // finish its graceful shutdown: fail with that, rather than hang.
    let stats = tokio::time::timeout(Duration::from_secs(60), s.stop())
        .await
        .expect("the server stops: every request it read was answered");
    let mut answered = 0;
    for c in clients {
        answered += c.await.unwrap();
    }
    let t = stats.total();
    assert!(t.inserted > 0 && answered > 0, "{t:?}, {answered} answered");
    assert_eq!(t.inserted, t.ended(), "{t:?}");
}

/// A priority may be a level number as well as a name, as in a trace: `0`
/// is critical, `4` background. Each lands on its own level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_may_be_its_level_number() {
    let s = start().await;
    for (level, name) in [(0, "critical"), (1, "high"), (3, "low"), (4, "background")] {
        let (st, body) = s.infer(json!({"tokens": [1, 2], "priority": level})).await;
        assert_eq!(st, StatusCode::OK, "{level}: {body}");
        let stats = convoy_server::stats_json(&s.state.runtime);
        assert_eq!(
            stats["priorities"][name]["completed"],
            json!(1),
            "{level} counted as {name}: {stats}"
        );
    }
    let stats = s.stop().await;
    assert_eq!(stats.of(convoy::Priority::Normal).inserted, 0);
}

/// Bodies for the fuzz test, from the shared seeded generator.
impl Rng {
    /// A JSON value of any type, near the shapes the endpoint expects.
    fn value(&mut self, depth: u32) -> Value {
        match self.below(if depth > 1 { 7 } else { 9 }) {
            0 => Value::Null,
            1 => json!(self.below(2) == 0),
            2 => json!(self.below(200) as i64 - 50),
            3 => json!((self.next() as i64) >> self.below(64)),
            4 => json!((self.below(2_000_001) as f64 - 1e6) / 997.0),
            5 => json!(
                ["critical", "high", "Low", "", "urgent", "0", "4", "5", "ü"]
                    [self.below(9) as usize]
            ),
            6 => json!(self.next() as f64 * 1e300),
            7 => Value::Array((0..self.below(80)).map(|_| self.value(depth + 1)).collect()),
            _ => {
                let mut m = serde_json::Map::new();
                m.insert("tokens".into(), self.value(depth + 1));
                Value::Object(m)
            }
        }
    }

    /// A body that must be served: tokens inside the vocabulary and the
    /// length limit, a priority by name or number or none, no deadline.
    fn good_body(&mut self) -> Vec<u8> {
        let tokens: Vec<u64> = (0..1 + self.below(64)).map(|_| self.below(100)).collect();
        let body = match self.below(3) {
            0 => json!({ "tokens": tokens }),
            1 => json!({ "tokens": tokens, "priority": self.below(5) }),
            _ => json!({ "tokens": tokens, "priority": "background" }),
        };
        serde_json::to_vec(&body).expect("a JSON value serializes")
    }

    /// A body for `/v1/infer`: mostly objects with the endpoint's keys
    /// (sometimes well-formed), sometimes raw bytes.
    fn body(&mut self) -> Vec<u8> {
        if self.below(8) == 0 {
            return (0..self.below(64)).map(|_| self.next() as u8).collect();
        }
        let mut m = serde_json::Map::new();
        for key in [
            "tokens",
            "vector",
            "priority",
            "deadline_ms",
            "tenant",
            "dedup_key",
            "extra",
        ] {
            if self.below(3) != 0 {
                continue;
            }
            let v = match (key, self.below(2)) {
                ("tokens", 0) => json!((0..self.below(70))
                    .map(|_| self.below(110))
                    .collect::<Vec<_>>()),
                ("vector", 0) => json!((0..self.below(6))
                    .map(|_| self.below(9) as f64 - 4.0)
                    .collect::<Vec<_>>()),
                ("priority", 0) => json!(self.below(7) as i64 - 1),
                ("deadline_ms", 0) => json!(self.below(5000)),
                _ => self.value(0),
            };
            m.insert(key.into(), v);
        }
        serde_json::to_vec(&Value::Object(m)).expect("a JSON value serializes")
    }
}

/// Whatever a client sends, the answer is a status the endpoint documents
/// (never a 5xx, never a dropped connection), a 200 carries an output of
/// the model's width, and every request the runtime accepted is answered:
/// nothing is lost, and the server is still healthy after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_body_gets_a_documented_status_and_loses_nothing() {
    let seed = fresh_seed("any_body_gets_a_documented_status_and_loses_nothing");
    let mut rng = Rng::for_thread(seed);
    let s = start().await;
    s.hold.open(); // token 0 must not block here
    let client = reqwest::Client::new();
    for i in 0..400 {
        // One in four is well formed and must be served (random ones
        // rarely are: every token must be in the vocabulary, and any
        // unknown key is refused).
        let good = i % 4 == 0;
        let body = if good { rng.good_body() } else { rng.body() };
        let r = client
            .post(format!("{}/v1/infer", s.url))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "request {i} got no answer ({e}): {}",
                    String::from_utf8_lossy(&body)
                )
            });
        let status = r.status();
        let answer: Value = r.json().await.unwrap_or(Value::Null);
        let what = || {
            format!(
                "request {i}, seed {seed}: {} -> {status} {answer}",
                String::from_utf8_lossy(&body)
            )
        };
        assert!(!good || status == StatusCode::OK, "{}", what());
        match status {
            StatusCode::OK => {
                let out = answer["output"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{}", what()));
                assert_eq!(out.len(), LIMITS.dim, "{}", what());
            }
            StatusCode::BAD_REQUEST
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNPROCESSABLE_ENTITY
            | StatusCode::UNSUPPORTED_MEDIA_TYPE
            | StatusCode::TOO_MANY_REQUESTS
            | StatusCode::GATEWAY_TIMEOUT => {
                assert!(answer["error"].is_string(), "{}", what());
            }
            _ => panic!("undocumented status: {}", what()),
        }
    }
    let health = reqwest::get(format!("{}/healthz", s.url)).await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let stats = s.stop().await.total();
    assert_eq!(stats.ended(), stats.inserted, "seed {seed}: {stats:?}");
    assert_eq!(stats.failed + stats.shut_down, 0, "seed {seed}: {stats:?}");
}
