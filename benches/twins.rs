//! The collector's dedup index (`src/intake/twins.rs`) against the plain map
//! and against the locked design it avoids, at a full queue of distinct
//! groups (the table sized for exactly that many, its worst case).
//!
//! * `churn`: one step is a new group's key in and the oldest group's key
//!   out, N keys live (the collector's work per group formed and launched).
//!   - `hashmap`: the plain `HashMap` the collector kept before the index
//!     was published (the baseline: the cost of publishing is the ratio);
//!   - `twins`: the map plus the published lock-free set, rebuilds included;
//!   - `mutex_hashset`: the map plus a `Mutex<HashSet>` copy, the locked
//!     alternative submit would read.
//! * `contains`: submit's question (does a twin wait?), half the keys
//!   asked live, half not: `waiting_keys` (Relaxed loads) against
//!   `mutex_hashset` (uncontended: the lock's cost under the collector's
//!   writes comes on top).
//!
//! After criterion, a plain loop times each churn step one by one and
//! prints p50, p99.9 and the largest, for `twins` and `hashmap`: a rebuild
//! of the table lands inside one step, and this is where it shows.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use convoy::internals::{Twins, WaitingKeys};
use convoy::model::splitmix64;
use criterion::{BenchmarkId, Criterion};

/// Live groups: a small queue, and one near the table's 65,536-slot cap.
const SIZES: [usize; 2] = [1_024, 16_384];

/// A steady set of `n` live keys and a stream of new ones.
struct Keys {
    live: VecDeque<u64>,
    rng: u64,
}

impl Keys {
    fn new(n: usize) -> Self {
        let mut k = Self {
            live: VecDeque::with_capacity(n + 1),
            rng: 0x7717_5eed,
        };
        for _ in 0..n {
            let key = k.fresh();
            k.live.push_back(key);
        }
        k
    }

    fn fresh(&mut self) -> u64 {
        splitmix64(&mut self.rng)
    }

    /// The next step: a key in, the oldest key out.
    fn step(&mut self) -> (u64, u64) {
        let key = self.fresh();
        self.live.push_back(key);
        let gone = self.live.pop_front().expect("n ≥ 1 keys are live");
        (key, gone)
    }
}

trait Index {
    fn insert(&mut self, k: u64, at: u64);
    fn remove(&mut self, k: u64);
}

impl Index for HashMap<u64, u64> {
    fn insert(&mut self, k: u64, at: u64) {
        HashMap::insert(self, k, at);
    }
    fn remove(&mut self, k: u64) {
        HashMap::remove(self, &k);
    }
}

impl Index for Twins<u64> {
    fn insert(&mut self, k: u64, at: u64) {
        Twins::insert(self, k, at);
    }
    fn remove(&mut self, k: u64) {
        Twins::remove(self, k);
    }
}

struct Locked {
    map: HashMap<u64, u64>,
    shared: Arc<Mutex<HashSet<u64>>>,
}

impl Index for Locked {
    fn insert(&mut self, k: u64, at: u64) {
        if self.map.insert(k, at).is_none() {
            self.shared.lock().expect("bench lock").insert(k);
        }
    }
    fn remove(&mut self, k: u64) {
        if self.map.remove(&k).is_some() {
            self.shared.lock().expect("bench lock").remove(&k);
        }
    }
}

/// An index holding the `n` live keys, and the keys.
fn filled<X: Index>(n: usize, mut index: X) -> (X, Keys) {
    let keys = Keys::new(n);
    for (at, &k) in keys.live.iter().enumerate() {
        index.insert(k, at as u64);
    }
    (index, keys)
}

fn twins(n: usize) -> (Twins<u64>, Arc<WaitingKeys>) {
    let published = Arc::new(WaitingKeys::for_groups(n));
    (Twins::new(published.clone()), published)
}

fn locked(n: usize) -> Locked {
    Locked {
        map: HashMap::with_capacity(n),
        shared: Arc::new(Mutex::new(HashSet::with_capacity(n))),
    }
}

fn churn<X: Index>(index: &mut X, keys: &mut Keys, at: &mut u64) {
    let (k, gone) = keys.step();
    *at += 1;
    index.insert(k, *at);
    index.remove(gone);
}

/// Half live keys, half never seen.
fn questions(keys: &Keys, rng: &mut u64) -> Vec<u64> {
    (0..4096)
        .map(|i| {
            let r = splitmix64(rng);
            if i % 2 == 0 {
                keys.live[r as usize % keys.live.len()]
            } else {
                r
            }
        })
        .collect()
}

/// Times each step alone; returns p50, p99.9 and the largest.
fn step_times<X: Index>(n: usize, index: X) -> (Duration, Duration, Duration) {
    let (mut index, mut keys) = filled(n, index);
    let mut at = 0;
    // Long enough for dozens of rebuilds at either size (one per
    // quarter-table of inserts).
    let steps = 400_000;
    let mut times: Vec<Duration> = (0..steps)
        .map(|_| {
            let t = Instant::now();
            churn(&mut index, &mut keys, &mut at);
            t.elapsed()
        })
        .collect();
    times.sort_unstable();
    (
        times[steps / 2],
        times[steps - steps / 1000],
        times[steps - 1],
    )
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for n in SIZES {
        let mut g = c.benchmark_group(format!("twins_churn_{n}_live"));
        let (mut map, mut keys) = filled(n, HashMap::with_capacity(n));
        let mut at = 0;
        g.bench_function(BenchmarkId::new("hashmap", n), |b| {
            b.iter(|| churn(&mut map, &mut keys, &mut at))
        });
        let ((mut tw, _published), mut keys) = {
            let (t, p) = twins(n);
            let (t, k) = filled(n, t);
            ((t, p), k)
        };
        g.bench_function(BenchmarkId::new("twins", n), |b| {
            b.iter(|| churn(&mut tw, &mut keys, &mut at))
        });
        let (mut lk, mut keys) = filled(n, locked(n));
        g.bench_function(BenchmarkId::new("mutex_hashset", n), |b| {
            b.iter(|| churn(&mut lk, &mut keys, &mut at))
        });
        g.finish();

        let mut g = c.benchmark_group(format!("twins_contains_{n}_live"));
        let (t, published) = twins(n);
        let (_tw, keys) = filled(n, t);
        let mut rng = 42;
        let asked = questions(&keys, &mut rng);
        let mut i = 0;
        g.bench_function(BenchmarkId::new("waiting_keys", n), |b| {
            b.iter(|| {
                i = (i + 1) % asked.len();
                published.contains(black_box(asked[i]))
            })
        });
        let (lk, keys) = filled(n, locked(n));
        let asked = questions(&keys, &mut rng);
        g.bench_function(BenchmarkId::new("mutex_hashset", n), |b| {
            b.iter(|| {
                i = (i + 1) % asked.len();
                lk.shared
                    .lock()
                    .expect("bench lock")
                    .contains(&black_box(asked[i]))
            })
        });
        g.finish();
    }
    c.final_summary();

    // `--list` and `--test` (`cargo bench -- --test`, a smoke run) skip the
    // tail measurement; `cargo test --benches` runs it, a few seconds.
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    for n in SIZES {
        let (m50, m999, mmax) = step_times(n, HashMap::<u64, u64>::with_capacity(n));
        let (t50, t999, tmax) = step_times(n, twins(n).0);
        println!("twins churn, {n} live, 400,000 steps timed one by one:");
        println!("  hashmap p50 {m50:>9.2?}  p99.9 {m999:>9.2?}  max {mmax:>9.2?}");
        println!("  twins   p50 {t50:>9.2?}  p99.9 {t999:>9.2?}  max {tmax:>9.2?}");
        println!(
            "  ratio (twins / hashmap): p50 {:.2}x  p99.9 {:.2}x",
            t50.as_secs_f64() / m50.as_secs_f64(),
            t999.as_secs_f64() / m999.as_secs_f64()
        );
    }
}
