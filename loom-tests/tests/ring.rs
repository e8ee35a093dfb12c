//! loom models of `convoy::ring`: the real ring code, built with `--cfg loom`.
#![cfg(loom)]

use convoy::ring::{self, Full, PushAllError};
use loom::thread;

/// Two producers and the consumer race on a ring of 2. Before they start,
/// positions 0 and 1 were pushed and 0 popped, so the next push lands at
/// position 2, slot 0, one lap on (wrap-around), and only one slot is free:
/// one producer finds the ring full unless the concurrent pop of position 1
/// frees slot 1 in time. Every accepted value is received exactly once, in
/// claim order, and a refused value is handed back.
#[test]
fn two_producers_one_consumer_full_and_wrap() {
    loom::model(|| {
        let (tx, mut rx) = ring::channel::<u32>(2).unwrap();
        tx.push(0).unwrap();
        tx.push(1).unwrap();
        assert_eq!(rx.pop(), Some(0));
        let producers: Vec<_> = [10u32, 20]
            .into_iter()
            .map(|v| {
                let tx = tx.clone();
                thread::spawn(move || match tx.push(v) {
                    Ok(()) => Some(v),
                    Err(Full(back)) => {
                        assert_eq!(back, v, "full hands the value back");
                        None
                    }
                })
            })
            .collect();
        // loom does not run a freshly spawned thread ahead of this one's next
        // atomic load on its own; a yield lets it.
        thread::yield_now();
        // Two pops while the producers run: the second can read a value a
        // producer is publishing right now.
        let mut got: Vec<u32> = (0..2).filter_map(|_| rx.pop()).collect();
        let mut sent = vec![1];
        for p in producers {
            sent.extend(p.join().unwrap());
        }
        while let Some(v) = rx.pop() {
            got.push(v);
        }
        assert!(sent.len() >= 2, "the free slot was used");
        assert_eq!(got[0], 1, "FIFO: the older item first");
        let mut g = got.clone();
        g.sort_unstable();
        sent.sort_unstable();
        assert_eq!(g, sent, "each accepted value received exactly once");
    });
}

/// An all-or-nothing push of 2 races a single push and a consumer on a ring
/// of 2 that starts full, so the k-push can only succeed on slots freed by the
/// concurrent pops (one lap later). The pair is never split by the single
/// value, is never half-admitted, and nothing is lost or duplicated.
#[test]
fn push_all_races_single_push() {
    loom::model(|| {
        let (tx, mut rx) = ring::channel::<u32>(2).unwrap();
        tx.push_all(vec![1, 2]).unwrap();
        let tx2 = tx.clone();
        let pair = thread::spawn(move || match tx.push_all(vec![30, 31]) {
            Ok(()) => true,
            Err(PushAllError::Full(back)) => {
                assert_eq!(back, vec![30, 31], "handed back whole");
                false
            }
            Err(e) => panic!("unexpected {e:?}"),
        });
        let single = thread::spawn(move || tx2.push(40).is_ok());
        thread::yield_now(); // as in the model above
        let mut got = Vec::new();
        for _ in 0..2 {
            if let Some(v) = rx.pop() {
                got.push(v);
            }
        }
        let pair_in = pair.join().unwrap();
        let single_in = single.join().unwrap();
        while let Some(v) = rx.pop() {
            got.push(v);
        }
        let mut expected = vec![1, 2];
        if pair_in {
            expected.extend([30, 31]);
        }
        if single_in {
            expected.push(40);
        }
        let mut sorted = got.clone();
        sorted.sort_unstable();
        expected.sort_unstable();
        assert_eq!(sorted, expected);
        if pair_in {
            let at = got.iter().position(|v| *v == 30).unwrap();
            assert_eq!(got[at + 1], 31, "the pair is contiguous");
        }
    });
}

/// The deferred free the intake's bound rests on: the consumer takes the only
/// value of a full ring of 1 and frees its slot later, while a producer
/// pushes. The push may succeed only on a freed slot, so it never overwrites
/// the value the consumer is still reading, and nothing is lost or doubled.
#[test]
fn take_holds_the_slot_until_free() {
    loom::model(|| {
        let (tx, mut rx) = ring::channel::<u32>(1).unwrap();
        tx.push(1).unwrap();
        let producer = thread::spawn(move || tx.push(2).is_ok());
        // No yield here, unlike the models above: with one, loom's search
        // never reaches the push that overwrites the slot while the take
        // reads it, and the weakened free goes uncaught.
        assert_eq!(rx.take(), Some(1));
        assert_eq!(rx.held(), 1);
        assert_eq!(rx.free(1), 1);
        let pushed = producer.join().unwrap();
        assert_eq!(rx.pop(), pushed.then_some(2));
        assert_eq!(rx.pop(), None);
    });
}

/// The producers' cached bound: a ring of 2 starts full, the consumer takes
/// both values and frees both while two producers push. One producer may
/// read `freed` and store the fresh `limit`; the other may then claim
/// within that `limit` without reading `freed` itself, and write the slot
/// the consumer read. That write must still come after the consumer's
/// read: the bound carries the free from one producer to the next.
#[test]
fn a_cached_limit_carries_the_free_to_the_next_producer() {
    loom::model(|| {
        let (tx, mut rx) = ring::channel::<u32>(2).unwrap();
        tx.push(1).unwrap();
        tx.push(2).unwrap();
        let pushers: Vec<_> = [10u32, 20]
            .into_iter()
            .map(|v| {
                let tx = tx.clone();
                thread::spawn(move || tx.push(v).ok().map(|()| v))
            })
            .collect();
        drop(tx);
        assert_eq!(rx.take(), Some(1));
        assert_eq!(rx.take(), Some(2));
        assert_eq!(rx.free(2), 2);
        let mut sent: Vec<u32> = pushers
            .into_iter()
            .filter_map(|p| p.join().unwrap())
            .collect();
        let mut got = Vec::new();
        while let Some(v) = rx.pop() {
            got.push(v);
        }
        got.sort_unstable();
        sent.sort_unstable();
        assert_eq!(got, sent, "each accepted value received exactly once");
    });
}

/// An owner races a shared producer for a ring of 2 that holds position 1
/// (0 was pushed and popped, so the owner's pushes wrap onto slot 0 and
/// then slot 1), while the consumer pops. The owner takes the ring, pushes
/// two values by plain store and hands the ring back; the shared push
/// lands before, after, or is refused while the ring is owned. The
/// owner's second push may only write slot 1 once the consumer freed
/// position 1 (the owner's own read of `freed`), no two threads ever claim
/// one position (loom would see two writes of one slot), and every
/// accepted value arrives once, the owner's in order.
#[test]
fn an_owner_races_a_shared_push_and_hands_the_ring_back() {
    loom::model(|| {
        let (tx, mut rx) = ring::channel::<u32>(2).unwrap();
        tx.push(0).unwrap();
        tx.push(1).unwrap();
        assert_eq!(rx.pop(), Some(0));
        let tx2 = tx.clone();
        let owner = thread::spawn(move || {
            let mut sent = Vec::new();
            if let Some(mut owner) = tx.own() {
                for v in [10u32, 11] {
                    if owner.push(v).is_ok() {
                        sent.push(v);
                    }
                }
            }
            sent
        });
        let shared = thread::spawn(move || tx2.push(20).ok().map(|()| 20u32));
        thread::yield_now(); // as in the first model
        let mut got: Vec<u32> = (0..2).filter_map(|_| rx.pop()).collect();
        let owner_sent = owner.join().unwrap();
        let mut sent = owner_sent.clone();
        sent.extend(shared.join().unwrap());
        sent.push(1);
        while let Some(v) = rx.pop() {
            got.push(v);
        }
        let owner_got: Vec<u32> = got
            .iter()
            .copied()
            .filter(|v| (10..20).contains(v))
            .collect();
        assert_eq!(owner_got, owner_sent, "the owner's values in order");
        got.sort_unstable();
        sent.sort_unstable();
        assert_eq!(got, sent, "each accepted value received exactly once");
    });
}
