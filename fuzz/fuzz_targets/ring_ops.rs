//! The ring against a `VecDeque` model over an operation sequence read
//! from the input (push, push_all, pop, take, free, drain), with the same
//! invariants as `tests/ring_model.rs`: full hands back, push_all is all or
//! nothing, drains keep order, and taken slots stay held until freed.
#![no_main]
use std::collections::VecDeque;

use convoy::ring::{self, Full, Layout, PushAllError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, ops)) = data.split_first() else {
        return;
    };
    let cap = 1usize << (first % 6);
    let layout = if first & 0x80 != 0 {
        Layout::Spread
    } else {
        Layout::Sequential
    };
    let (tx, mut rx) = ring::channel_with::<u32>(cap, layout).expect("a power of two");
    let mut model: VecDeque<u32> = VecDeque::new();
    let mut held = 0usize;
    let mut next = 0u32;
    for &op in ops {
        let arg = usize::from(op >> 3);
        match op & 7 {
            0 | 1 => {
                next += 1;
                let got = tx.push(next);
                if model.len() + held < cap {
                    assert_eq!(got, Ok(()));
                    model.push_back(next);
                } else {
                    assert_eq!(got, Err(Full(next)));
                }
            }
            2 => {
                let items: Vec<u32> = (0..arg % 10).map(|i| next + 1 + i as u32).collect();
                next += items.len() as u32;
                let got = tx.push_all(items.clone());
                if items.is_empty() {
                    assert_eq!(got, Err(PushAllError::Empty));
                } else if items.len() > cap {
                    assert_eq!(got, Err(PushAllError::Oversized { items, capacity: cap }));
                } else if model.len() + held + items.len() <= cap {
                    assert_eq!(got, Ok(()));
                    model.extend(items);
                } else {
                    assert_eq!(got, Err(PushAllError::Full(items)));
                }
            }
            3 => assert_eq!(rx.pop(), model.pop_front()),
            4 => {
                let want = model.pop_front();
                held += usize::from(want.is_some());
                assert_eq!(rx.take(), want);
            }
            5 => {
                let n = arg % 6;
                let freed = rx.free(n);
                assert_eq!(freed, n.min(held));
                held -= freed;
            }
            _ => {
                let n = arg % 12;
                let mut out = Vec::new();
                let k = rx.drain_into(&mut out, n);
                let want: Vec<u32> = (0..n.min(model.len()))
                    .filter_map(|_| model.pop_front())
                    .collect();
                assert_eq!(k, want.len());
                assert_eq!(out, want);
            }
        }
        assert_eq!(tx.len(), model.len() + held);
        assert_eq!(rx.held(), held);
        assert_eq!(rx.pending(), model.len());
    }
});
