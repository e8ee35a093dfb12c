//! Your own model behind convoy's HTTP server, in one screen: a codec that
//! reads `{"text": "…"}` into the input type and writes the output, a batch
//! function, and the router mounted under `/sentiment` of your own app.
//!
//! ```sh
//! cargo run --release -p convoy-server --example own_model
//! curl -s localhost:8080/sentiment/v1/infer -d '{"text":"what a good day","priority":"high"}'
//! # {"output":{"score":1,"words":4}}
//! ```

use std::sync::Arc;

use convoy::{Request, Runtime};
use convoy_server::{serve_until, shutdown_signal, ApiError, Codec, Server};
use serde_json::{json, Map, Value};

/// A toy sentiment model: +1 per good word, -1 per bad one, in batches.
fn score_batch(texts: &[String]) -> Vec<(i32, usize)> {
    texts
        .iter()
        .map(|t| {
            let words = t.split_whitespace();
            let score = words.clone().fold(0, |s, w| match w {
                "good" | "great" => s + 1,
                "bad" | "awful" => s - 1,
                _ => s,
            });
            (score, words.count())
        })
        .collect()
}

struct Sentiment;

impl Codec for Sentiment {
    type Input = String;
    type Output = (i32, usize);

    fn decode(&self, mut fields: Map<String, Value>) -> Result<Request<String>, ApiError> {
        let Some(Value::String(text)) = fields.remove("text") else {
            return Err(ApiError::unprocessable("give \"text\" as a string"));
        };
        if text.len() > 4096 {
            return Err(ApiError::too_large("text over 4096 bytes"));
        }
        // A request costs its words, so batches are bounded in work.
        let words = text.split_whitespace().count().max(1) as u32;
        Ok(Request::new(text).tokens(words))
    }

    fn encode(&self, (score, words): (i32, usize)) -> Result<Value, ApiError> {
        Ok(json!({ "score": score, "words": words }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = Runtime::builder().batch_fn(score_batch).build()?;
    let server = Arc::new(Server::new(Arc::new(runtime), Sentiment));
    // Nest it beside your own routes; `serve_until` below serves it alone
    // and drains on SIGINT/SIGTERM.
    let _app = axum::Router::new().nest("/sentiment", server.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!("listening on http://{}", listener.local_addr()?);
    let stats = serve_until(listener, server, shutdown_signal()).await?;
    println!("{}", stats.total());
    Ok(())
}
