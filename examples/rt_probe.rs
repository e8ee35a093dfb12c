use convoy::intake::IntakeConfig;
use convoy::{Config, Priority, Request, Runtime};
fn main() {
    let rt = Runtime::builder()
        .config(Config { intake: IntakeConfig { shards: 4, lane_capacity: 8192 }, cpu_workers: 1, shed: false, ..Config::default() })
        .batch_fn(|xs: &[u64]| xs.to_vec()).build().unwrap();
    let h = rt.handle();
    let t0 = std::time::Instant::now();
    for _ in 0..40 {
        let ts: Vec<_> = (0..60_000u64).map(|x| h.submit(Request::new(x).priority(Priority::ALL[(x % 5) as usize])).unwrap()).collect();
        for (i, t) in ts.into_iter().enumerate() { assert_eq!(t.wait(), Ok(i as u64)); }
    }
    eprintln!("{:.2} M req/s", 2.4e6 / t0.elapsed().as_secs_f64() / 1e6);
}
