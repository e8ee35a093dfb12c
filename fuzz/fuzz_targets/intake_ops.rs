//! The sharded intake against an exact model of its lanes, over an
//! operation sequence read from the input: push, push_batch under each
//! policy, drain (all levels or one), release one admission, release a set
//! together, and cancel (release an admission out of drain order, as the
//! collector does for a cancelled or expired request). Every step checks
//! what the intake answers against the model: which pushes are refused, what
//! a refused batch hands back and why, the exact items and order a drain
//! returns (most urgent level first, lanes in rotation, FIFO within a lane,
//! placeholders of a rolled-back batch skipped), and the per-level depth,
//! inserted and refused counts. At the end everything is drained and
//! released: each accepted item came out exactly once and the depth is 0.
#![no_main]
use std::collections::VecDeque;

use convoy::intake::{
    Admission, BatchRejectReason, Drained, Intake, IntakeConfig, IntakeConsumer,
};
use convoy::{InsertPolicy, Priority};
use libfuzzer_sys::fuzz_target;

/// One lane (shard, level) of the model: what the ring holds in order
/// (`None` is a rolled-back batch's placeholder) and how many drained
/// items still hold room.
#[derive(Default, Clone)]
struct Lane {
    pending: VecDeque<Option<(u32, bool)>>,
    held: usize,
}

struct Model {
    shards: usize,
    cap: usize,
    home: usize,
    lanes: Vec<Lane>,
    cursor: [usize; Priority::COUNT],
    inserted: [u64; Priority::COUNT],
    refused: [u64; Priority::COUNT],
}

impl Model {
    fn lane(&mut self, shard: usize, p: Priority) -> &mut Lane {
        &mut self.lanes[shard * Priority::COUNT + p.index()]
    }

    fn free(&mut self, shard: usize, p: Priority) -> usize {
        let cap = self.cap;
        let lane = self.lane(shard, p);
        cap - lane.pending.len() - lane.held
    }

    fn from_home(&self) -> impl Iterator<Item = usize> {
        let (home, shards) = (self.home, self.shards);
        (0..shards).map(move |i| (home + i) % shards)
    }

    fn push(&mut self, p: Priority, id: u32, front: bool) -> bool {
        let Some(shard) = self.from_home().find(|&s| self.free(s, p) > 0) else {
            self.refused[p.index()] += 1;
            return false;
        };
        self.lane(shard, p).pending.push_back(Some((id, front)));
        self.inserted[p.index()] += 1;
        true
    }

    /// An all-or-nothing batch: one run per level in one lane, reserved in
    /// level order; on the first level with no lane that fits, the runs
    /// already reserved become placeholders.
    fn push_whole(&mut self, items: &[(Priority, u32)]) -> Result<(), BatchRejectReason> {
        let mut counts = [0usize; Priority::COUNT];
        for (p, _) in items {
            counts[p.index()] += 1;
        }
        if let Some(p) = Priority::ALL.into_iter().find(|p| counts[p.index()] > self.cap) {
            return Err(BatchRejectReason::Oversized {
                priority: p,
                count: counts[p.index()],
                capacity: self.cap,
            });
        }
        let mut runs: Vec<(Priority, usize)> = Vec::new();
        for p in Priority::ALL {
            let k = counts[p.index()];
            if k == 0 {
                continue;
            }
            let Some(shard) = self.from_home().find(|&s| self.free(s, p) >= k) else {
                // The runs reserved so far stay as placeholders.
                for q in Priority::ALL {
                    self.refused[q.index()] += counts[q.index()] as u64;
                }
                return Err(BatchRejectReason::Full);
            };
            runs.push((p, shard));
            // Reserve now, so a later level's search sees it taken.
            self.lane(shard, p).pending.extend(std::iter::repeat(None).take(k));
        }
        for (p, shard) in runs {
            let k = counts[p.index()];
            let lane = self.lane(shard, p);
            let start = lane.pending.len() - k;
            let ids = items.iter().filter(|(q, _)| *q == p).map(|&(_, id)| id);
            for (slot, id) in lane.pending.range_mut(start..).zip(ids) {
                *slot = Some((id, false));
            }
            self.inserted[p.index()] += k as u64;
        }
        Ok(())
    }

    /// What `drain(max)` returns: levels most urgent first, while room is
    /// left.
    fn drain(&mut self, max: usize) -> Vec<(u32, bool, usize, Priority)> {
        let mut out = Vec::new();
        for p in Priority::ALL {
            if out.len() >= max {
                break;
            }
            let left = max - out.len();
            out.extend(self.drain_level(p, left));
        }
        out
    }

    /// What `drain_priority(p, max)` returns: lanes in rotation from the
    /// level's cursor (which moves on even when `max` is 0), FIFO within a
    /// lane, placeholders freed as they are passed.
    fn drain_level(&mut self, p: Priority, max: usize) -> Vec<(u32, bool, usize, Priority)> {
        let mut out = Vec::new();
        let start = self.cursor[p.index()];
        for i in 0..self.shards {
            let shard = (start + i) % self.shards;
            while out.len() < max {
                let lane = self.lane(shard, p);
                let Some(slot) = lane.pending.pop_front() else { break };
                if let Some((id, front)) = slot {
                    lane.held += 1;
                    out.push((id, front, shard, p));
                }
            }
            if out.len() >= max {
                break;
            }
        }
        self.cursor[p.index()] = (start + 1) % self.shards;
        out
    }

    /// What releasing `a` frees: one held slot of its lane.
    fn release(&mut self, a: &Admission) {
        let lane = self.lane(a.shard(), a.priority());
        assert!(lane.held > 0, "an admission releases a lane that holds room");
        lane.held -= 1;
    }

    fn depth(&self, p: Priority) -> usize {
        (0..self.shards)
            .map(|s| {
                let lane = &self.lanes[s * Priority::COUNT + p.index()];
                lane.pending.len() + lane.held
            })
            .sum()
    }
}

/// The shard this thread's shared pushes start at, for `shards` shards:
/// where a lone push into an empty intake lands.
fn home_of(shards: usize) -> usize {
    let cfg = IntakeConfig { shards, lane_capacity: 1 };
    let (intake, mut c) = Intake::<()>::new(cfg).expect("a valid shape");
    intake.push(Priority::Low, (), InsertPolicy::Enqueue).expect("an empty intake");
    let mut out = Vec::new();
    c.drain(1, &mut out);
    let d = out.pop().expect("the item just pushed");
    let home = d.admission.shard();
    c.release(d.admission);
    home
}

fn check_drained(got: &[Drained<u32>], want: &[(u32, bool, usize, Priority)]) {
    let got: Vec<_> = got
        .iter()
        .map(|d| (d.item, d.front, d.admission.shard(), d.admission.priority()))
        .collect();
    assert_eq!(got, want);
}

fn check_stats(intake: &Intake<u32>, model: &Model) {
    let stats = intake.stats();
    for p in Priority::ALL {
        let s = stats.of(p);
        assert_eq!(s.depth, model.depth(p), "depth of {p}");
        assert_eq!(s.inserted, model.inserted[p.index()], "inserted at {p}");
        assert_eq!(s.rejected_full, model.refused[p.index()], "refused at {p}");
    }
}

fn release_held(c: &mut IntakeConsumer<u32>, model: &mut Model, a: Admission) {
    model.release(&a);
    c.release(a);
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, ops)) = data.split_first() else {
        return;
    };
    let shards = [1, 2, 3, 4][usize::from(first & 3)];
    let cap = 1usize << ((first >> 2) % 4);
    let cfg = IntakeConfig { shards, lane_capacity: cap };
    let (intake, mut c) = Intake::<u32>::new(cfg).expect("a valid shape");
    let mut model = Model {
        shards,
        cap,
        home: home_of(shards),
        lanes: vec![Lane::default(); shards * Priority::COUNT],
        cursor: [0; Priority::COUNT],
        inserted: [0; Priority::COUNT],
        refused: [0; Priority::COUNT],
    };
    let mut next = 0u32;
    let mut accepted = 0usize;
    let mut seen = std::collections::HashSet::new();
    let mut held: Vec<(u32, Admission)> = Vec::new();
    let mut out = Vec::new();
    let mut take = |out: &mut Vec<Drained<u32>>, held: &mut Vec<(u32, Admission)>| {
        for d in out.drain(..) {
            assert!(seen.insert(d.item), "item {} drained twice", d.item);
            held.push((d.item, d.admission));
        }
    };
    for pair in ops.chunks(2) {
        let (op, arg) = (pair[0], usize::from(*pair.get(1).unwrap_or(&0)));
        let prio = Priority::ALL[usize::from(op >> 3) % Priority::COUNT];
        match op & 7 {
            0 | 1 => {
                next += 1;
                let policy = [InsertPolicy::Enqueue, InsertPolicy::Front][usize::from(op & 1)];
                let front = policy == InsertPolicy::Front;
                let want = model.push(prio, next, front);
                match intake.push(prio, next, policy) {
                    Ok(()) => {
                        assert!(want, "a push the model refuses was accepted");
                        accepted += 1;
                    }
                    Err(full) => {
                        assert!(!want, "a push with room was refused");
                        assert_eq!((full.item, full.priority), (next, prio));
                    }
                }
            }
            2 | 3 => {
                let items: Vec<(Priority, u32)> = (0..arg % 9)
                    .map(|i| {
                        next += 1;
                        (Priority::ALL[(arg / 9 + i * usize::from(op >> 3)) % 5], next)
                    })
                    .collect();
                let policy = match (op & 1, op >> 7) {
                    (0, _) => InsertPolicy::AllOrNothing,
                    (_, 0) => InsertPolicy::Enqueue,
                    _ => InsertPolicy::Front,
                };
                let got = intake.push_batch(items.clone(), policy);
                if items.is_empty() {
                    let err = got.expect_err("an empty batch is refused");
                    assert_eq!(err.reason, BatchRejectReason::Empty);
                    assert!(err.rejected.is_empty());
                } else if policy == InsertPolicy::AllOrNothing {
                    match (model.push_whole(&items), got) {
                        (Ok(()), Ok(n)) => {
                            assert_eq!(n, items.len());
                            accepted += n;
                        }
                        (Err(reason), Err(err)) => {
                            assert_eq!(err.reason, reason);
                            assert_eq!(err.inserted, 0);
                            assert_eq!(err.rejected, items, "every item handed back, in order");
                        }
                        (want, got) => panic!("all-or-nothing: model {want:?}, intake {got:?}"),
                    }
                } else {
                    let front = policy == InsertPolicy::Front;
                    let mut rejected = Vec::new();
                    for &(p, id) in &items {
                        if !model.push(p, id, front) {
                            rejected.push((p, id));
                        }
                    }
                    let inserted = items.len() - rejected.len();
                    accepted += inserted;
                    match got {
                        Ok(n) => {
                            assert!(rejected.is_empty());
                            assert_eq!(n, items.len());
                        }
                        Err(err) => {
                            assert_eq!(err.reason, BatchRejectReason::Full);
                            assert_eq!((err.inserted, err.rejected), (inserted, rejected));
                        }
                    }
                }
            }
            4 => {
                let max = arg % 12;
                let want = if op & 8 == 0 {
                    c.drain(max, &mut out);
                    model.drain(max)
                } else {
                    c.drain_priority(prio, max, &mut out);
                    model.drain_level(prio, max)
                };
                check_drained(&out, &want);
                take(&mut out, &mut held);
            }
            5 => {
                // Release the oldest held admission: a launched request.
                if !held.is_empty() {
                    let (_, a) = held.remove(0);
                    release_held(&mut c, &mut model, a);
                }
            }
            6 => {
                // Cancel: release one out of drain order.
                if !held.is_empty() {
                    let (_, a) = held.swap_remove(arg % held.len());
                    release_held(&mut c, &mut model, a);
                }
            }
            _ => {
                // A launched batch: its first `arg % 8` admissions together.
                let k = (arg % 8).min(held.len());
                let batch: Vec<_> = held.drain(..k).map(|(_, a)| a).collect();
                for a in &batch {
                    model.release(a);
                }
                c.release_all(batch);
            }
        }
        check_stats(&intake, &model);
        for p in Priority::ALL {
            assert!(model.depth(p) <= shards * cap, "the bound per level");
        }
    }
    // Drain and release everything: each accepted item exactly once.
    loop {
        let want = model.drain(64);
        c.drain(64, &mut out);
        check_drained(&out, &want);
        if out.is_empty() {
            break;
        }
        take(&mut out, &mut held);
    }
    for (_, a) in held.drain(..) {
        release_held(&mut c, &mut model, a);
    }
    assert_eq!(seen.len(), accepted, "every accepted item drained once");
    assert!(!c.has_pending());
    check_stats(&intake, &model);
    assert_eq!(intake.stats().depth(), 0);
});
