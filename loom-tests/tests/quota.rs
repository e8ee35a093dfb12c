//! loom models of a tenant's quota (`convoy::intake::Quota`) on the real
//! code: takes race for the last unit of a limit, and a give-back races a
//! take.
#![cfg(loom)]

use convoy::intake::{Quota, QuotaExceeded, UNLIMITED};
use loom::sync::Arc;
use loom::thread;

/// Two submits race for a quota of one request: in every interleaving
/// exactly one wins, and the count is never past the limit.
#[test]
fn racing_takes_never_pass_the_limit() {
    loom::model(|| {
        let q = Arc::new(Quota::new(1, UNLIMITED));
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let q = q.clone();
                thread::spawn(move || q.try_take(1).is_ok())
            })
            .collect();
        let won = racers
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|&w| w)
            .count();
        assert_eq!(won, 1);
        assert_eq!(q.queued(), (1, 1));
    });
}

/// A request that launches gives its unit back while another submit
/// takes: the take may find the quota full or free, but the counts end
/// exact, and a take refused for tokens leaves no request counted.
#[test]
fn a_give_back_races_a_take_and_the_counts_end_exact() {
    loom::model(|| {
        let q = Arc::new(Quota::new(1, 2));
        q.try_take(2).unwrap();
        let giver = {
            let q = q.clone();
            thread::spawn(move || q.give_back(2))
        };
        let taker = {
            let q = q.clone();
            thread::spawn(move || q.try_take(1))
        };
        giver.join().unwrap();
        let took = taker.join().unwrap();
        match took {
            Ok(()) => assert_eq!(q.queued(), (1, 1)),
            Err(QuotaExceeded::Requests { limit: 1 } | QuotaExceeded::Tokens { limit: 2 }) => {
                assert_eq!(q.queued(), (0, 0))
            }
            Err(e) => panic!("unexpected refusal {e:?}"),
        }
    });
}
