//! The ring against a `VecDeque` model over random operation sequences, and
//! under real threads.

use std::collections::VecDeque;

use convoy::ring::{self, Full, Layout, PushAllError};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Push(u32),
    PushAll(Vec<u32>),
    Pop,
    Drain(usize),
    Take,
    Free(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<u32>().prop_map(Op::Push),
        2 => prop::collection::vec(any::<u32>(), 0..10).prop_map(Op::PushAll),
        3 => Just(Op::Pop),
        1 => (0usize..12).prop_map(Op::Drain),
        2 => Just(Op::Take),
        2 => (0usize..6).prop_map(Op::Free),
    ]
}

proptest! {
    // Under Miri every operation is interpreted: a few cases there.
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 2 } else { 512 }))]

    /// Every operation answers what a bounded FIFO of the same capacity
    /// answers: full hands back, k-push all-or-nothing, drain in order.
    /// Taken values keep their slots until freed, so the model's bound is
    /// queued plus held. Long sequences on small rings cover many laps of
    /// wrap-around, with slots held across laps. Both layouts, and rings of
    /// 16 and 32 where `Spread` rotates the slot index.
    #[test]
    fn ring_matches_vecdeque(
        cap_log in 0u32..6,
        spread in any::<bool>(),
        ops in prop::collection::vec(op(), 1..if cfg!(miri) { 120 } else { 300 }),
    ) {
        let cap = 1usize << cap_log;
        let layout = if spread { Layout::Spread } else { Layout::Sequential };
        let (tx, mut rx) = ring::channel_with::<u32>(cap, layout).unwrap();
        let mut model: VecDeque<u32> = VecDeque::new();
        // Taken and not yet freed.
        let mut held = 0usize;
        for op in ops {
            match op {
                Op::Push(v) => {
                    let got = tx.push(v);
                    if model.len() + held < cap {
                        prop_assert_eq!(got, Ok(()));
                        model.push_back(v);
                    } else {
                        prop_assert_eq!(got, Err(Full(v)));
                    }
                }
                Op::PushAll(items) => {
                    let got = tx.push_all(items.clone());
                    if items.is_empty() {
                        prop_assert_eq!(got, Err(PushAllError::Empty));
                    } else if items.len() > cap {
                        prop_assert_eq!(got, Err(PushAllError::Oversized { items, capacity: cap }));
                    } else if model.len() + held + items.len() <= cap {
                        prop_assert_eq!(got, Ok(()));
                        model.extend(items);
                    } else {
                        prop_assert_eq!(got, Err(PushAllError::Full(items)));
                    }
                }
                Op::Pop => {
                    // A pop frees one slot: the oldest held one if any, else
                    // its own.
                    prop_assert_eq!(rx.pop(), model.pop_front());
                }
                Op::Take => {
                    let want = model.pop_front();
                    held += usize::from(want.is_some());
                    prop_assert_eq!(rx.take(), want);
                }
                Op::Free(n) => {
                    let freed = rx.free(n);
                    prop_assert_eq!(freed, n.min(held));
                    held -= freed;
                }
                Op::Drain(n) => {
                    let mut out = Vec::new();
                    let k = rx.drain_into(&mut out, n);
                    let want: Vec<u32> = (0..n.min(model.len())).filter_map(|_| model.pop_front()).collect();
                    prop_assert_eq!(k, want.len());
                    prop_assert_eq!(out, want);
                }
            }
            prop_assert_eq!(tx.len(), model.len() + held);
            prop_assert_eq!(rx.held(), held);
            prop_assert_eq!(rx.pending(), model.len());
        }
    }
}

/// N producers push M tagged items each, some as all-or-nothing pairs, into
/// a small ring; the consumer receives every item exactly once and each
/// producer's items in the order it pushed them.
#[test]
fn many_producers_exactly_once_in_order() {
    const N: u64 = 4;
    const M: u64 = if cfg!(miri) { 100 } else { 50_000 };
    // Spread, as the intake's lanes are: its slot rotation is then under
    // real threads too.
    let (tx, mut rx) = ring::channel_with::<u64>(64, Layout::Spread).unwrap();
    let producers: Vec<_> = (0..N)
        .map(|p| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut seq = 0;
                while seq < M {
                    let tag = |s: u64| p << 32 | s;
                    if seq % 7 == 0 && seq + 1 < M {
                        match tx.push_all(vec![tag(seq), tag(seq + 1)]) {
                            Ok(()) => seq += 2,
                            Err(_) => std::thread::yield_now(),
                        }
                    } else {
                        match tx.push(tag(seq)) {
                            Ok(()) => seq += 1,
                            Err(_) => std::thread::yield_now(),
                        }
                    }
                }
            })
        })
        .collect();
    drop(tx);
    receive_each_once_in_order(&mut rx, producers, M);
}

/// Threads take turns owning the ring (one push per ownership) while
/// thread 0 only pushes shared: ownership changes hands all the time, and
/// the consumer still receives every item once, each thread's in order.
#[test]
fn owners_and_shared_producers_take_turns_exactly_once_in_order() {
    const M: u64 = if cfg!(miri) { 60 } else { 20_000 };
    let (tx, mut rx) = ring::channel_with::<u64>(64, Layout::Spread).unwrap();
    let producers: Vec<_> = (0..3u64)
        .map(|p| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut seq = 0;
                while seq < M {
                    let v = p << 32 | seq;
                    let owned = if p == 0 { None } else { tx.own() };
                    let pushed = match owned {
                        Some(mut owner) => owner.push(v).is_ok(),
                        None => tx.push(v).is_ok(),
                    };
                    if pushed {
                        seq += 1;
                    } else {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    drop(tx);
    receive_each_once_in_order(&mut rx, producers, M);
}

/// Pops until every producer's `per` items (tagged `producer << 32 | seq`)
/// arrived, checking each producer's come once and in order, then that
/// nothing else follows once the producers are joined.
fn receive_each_once_in_order(
    rx: &mut ring::Consumer<u64>,
    producers: Vec<std::thread::JoinHandle<()>>,
    per: u64,
) {
    let mut next = vec![0u64; producers.len()];
    let mut received = 0;
    while received < per * producers.len() as u64 {
        match rx.pop() {
            Some(v) => {
                let (p, s) = ((v >> 32) as usize, v & 0xffff_ffff);
                assert_eq!(s, next[p], "producer {p}: out of order or duplicated");
                next[p] += 1;
                received += 1;
            }
            None => std::thread::yield_now(),
        }
    }
    for p in producers {
        p.join().unwrap();
    }
    assert_eq!(rx.pop(), None, "nothing beyond what was pushed");
    assert!(next.iter().all(|&n| n == per));
}
