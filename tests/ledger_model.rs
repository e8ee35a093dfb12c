//! The ledger against a model over random reserve / release / resize
//! sequences: reserved never passes capacity through a reservation, every
//! release is applied exactly once, and an idle fleet ends at zero.

use convoy::internals::ledger::{Ledger, NOTHING};
use convoy::Capacity;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Reserve {
        worker: usize,
        slots: u32,
        tokens: u64,
        bytes: u64,
    },
    Release {
        pick: usize,
    },
    Resize {
        worker: usize,
        slots: u32,
        tokens: u64,
        bytes: u64,
    },
    DoubleRelease {
        pick: usize,
    },
}

const WORKERS: usize = 3;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..WORKERS, 1u32..4, 0u64..300, 0u64..5000)
            .prop_map(|(worker, slots, tokens, bytes)| Op::Reserve { worker, slots, tokens, bytes }),
        4 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        1 => (0..WORKERS, 1u32..12, 1u64..1000, 0u64..20_000)
            .prop_map(|(worker, slots, tokens, bytes)| Op::Resize { worker, slots, tokens, bytes }),
        1 => any::<usize>().prop_map(|pick| Op::DoubleRelease { pick }),
    ]
}

fn sum(rs: &[(usize, Capacity)], w: usize) -> Capacity {
    rs.iter()
        .filter(|(x, _)| *x == w)
        .fold(NOTHING, |a, (_, c)| Capacity {
            slots: a.slots + c.slots,
            tokens: a.tokens + c.tokens,
            bytes: a.bytes + c.bytes,
        })
}

fn within(r: &Capacity, cap: &Capacity) -> bool {
    r.slots <= cap.slots && r.tokens <= cap.tokens && r.bytes <= cap.bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn ledger_matches_model(ops in prop::collection::vec(op(), 1..200)) {
        let mut caps = [Capacity { slots: 6, tokens: 600, bytes: 10_000 }; WORKERS];
        let mut ledger = Ledger::new(WORKERS);
        let mut outstanding: Vec<(usize, Capacity)> = Vec::new();
        let mut released: Vec<(usize, Capacity)> = Vec::new();
        for op in ops {
            match op {
                Op::Reserve { worker, slots, tokens, bytes } => {
                    let cost = Capacity { slots, tokens, bytes };
                    let before = sum(&outstanding, worker);
                    let after = Capacity {
                        slots: before.slots + slots,
                        tokens: before.tokens + tokens,
                        bytes: before.bytes + bytes,
                    };
                    let ok = ledger.reserve(worker, &caps[worker], &cost);
                    prop_assert_eq!(ok, within(&after, &caps[worker]), "reserve answers what fits");
                    if ok {
                        outstanding.push((worker, cost));
                        prop_assert!(within(&ledger.reserved(worker), &caps[worker]), "over-commit");
                    }
                }
                Op::Release { pick } if !outstanding.is_empty() => {
                    let (w, c) = outstanding.swap_remove(pick % outstanding.len());
                    prop_assert!(ledger.release(w, &c).is_ok());
                    released.push((w, c));
                }
                Op::Release { .. } => {}
                Op::Resize { worker, slots, tokens, bytes } => {
                    caps[worker] = Capacity { slots, tokens, bytes };
                }
                Op::DoubleRelease { pick } if !released.is_empty() => {
                    // Releasing again what was already released must be refused
                    // whenever it would take the ledger below zero, and must
                    // change nothing when refused.
                    let (w, c) = released[pick % released.len()];
                    let held = ledger.reserved(w);
                    let fits_in_held = c.slots <= held.slots && c.tokens <= held.tokens && c.bytes <= held.bytes;
                    if !fits_in_held {
                        prop_assert!(ledger.release(w, &c).is_err());
                        prop_assert_eq!(ledger.reserved(w), held);
                    }
                }
                Op::DoubleRelease { .. } => {}
            }
            for w in 0..WORKERS {
                prop_assert_eq!(ledger.reserved(w), sum(&outstanding, w), "ledger = sum of outstanding");
            }
            // `is_idle` is a count kept on the way, not a scan: it must agree.
            prop_assert_eq!(ledger.is_idle(), outstanding.is_empty(), "idle = nothing outstanding");
        }
        for (w, c) in outstanding.drain(..) {
            prop_assert!(ledger.release(w, &c).is_ok());
        }
        prop_assert!(ledger.is_idle(), "back to zero when idle");
    }
}
