//! Runs a short mixed load on CPU workers and prints `rt.metrics_text()`, so
//! `cargo run --release --example metrics | promtool check metrics` checks
//! the exposition in one line.

use std::time::Duration;

use convoy::model::{PoolDense, DEFAULT_DIM, DEFAULT_VOCAB};
use convoy::{Config, Priority, Request, Runtime};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = PoolDense::seeded(DEFAULT_VOCAB, DEFAULT_DIM, 7)?;
    let rt = Runtime::builder()
        .config(Config {
            cpu_workers: 2,
            ..Config::default()
        })
        .executor(model)
        .build()?;
    let h = rt.handle();
    let tickets: Vec<_> = (0..2_000u32)
        .filter_map(|i| {
            let p = Priority::ALL[(i % 5) as usize];
            let tokens: Vec<u32> = (0..1 + i % 64)
                .map(|t| (i * 31 + t) % DEFAULT_VOCAB as u32)
                .collect();
            let len = tokens.len() as u32;
            let mut r = Request::new(tokens).priority(p).tokens(len);
            if i % 10 == 0 {
                r = r.deadline(Duration::from_millis(50));
            }
            h.submit(r).ok()
        })
        .collect();
    for t in tickets {
        let _ = t.wait();
    }
    rt.shutdown();
    print!("{}", rt.metrics_text());
    Ok(())
}
