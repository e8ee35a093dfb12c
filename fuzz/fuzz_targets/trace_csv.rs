//! The trace loaders (Azure and generic CSV) on arbitrary text: a trace or
//! a typed error naming the line, never a panic; a trace they accept is in
//! arrival order with finite, non-negative arrivals.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(trace) = convoy_cli::trace::parse("fuzz.csv", text) {
        let arrivals: Vec<_> = trace.requests.iter().map(|r| r.arrival).collect();
        assert!(arrivals.windows(2).all(|w| w[0] <= w[1]), "out of order");
    }
});
