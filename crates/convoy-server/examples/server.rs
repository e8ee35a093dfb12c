//! convoy inside an HTTP server, as a library user would write it: build a
//! runtime for the model, put it behind axum's router, serve until SIGINT
//! or SIGTERM, then drain and print the final counts.
//!
//! ```sh
//! cargo run --release --example server -- 127.0.0.1:8080
//! curl -s localhost:8080/v1/infer -d '{"tokens":[1,2,3],"priority":"high","deadline_ms":200}'
//! ```

use convoy::model::{PoolDense, DEFAULT_DIM, DEFAULT_SEED, DEFAULT_VOCAB};
use convoy::Config;
use convoy_server::{model_server, serve_until, shutdown_signal};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let model = PoolDense::seeded(DEFAULT_VOCAB, DEFAULT_DIM, DEFAULT_SEED)?;
    // A server meets whatever load comes: under sustained overload, hand
    // back the least urgent levels' excess as 429s (shedding, off in the
    // library's defaults) so the urgent ones keep their objectives.
    let config = Config {
        shed: true,
        ..Config::default()
    };
    let state = std::sync::Arc::new(model_server(config, model)?);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let stats = serve_until(listener, state, shutdown_signal()).await?;
    println!("{}", stats.total()); // accepted = each outcome; lost: 0
    Ok(())
}
