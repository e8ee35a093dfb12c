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
    use std::io::BufRead;
    use std::process::{Command, Stdio};

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

    let mut server = Command::new(bin)
        .args(["serve", "--addr", "127.0.0.1:0", "--weights", dir_arg])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("convoy serve starts");
    let mut stdout = std::io::BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("convoy serve: listening on ")
        .unwrap_or_else(|| panic!("first line: {line:?}"))
        .to_owned();

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
