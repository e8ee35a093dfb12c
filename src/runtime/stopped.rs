//! Where each request of a batch that stopped at a boundary goes: every
//! one to exactly one place. A finished request is delivered; an
//! unfinished one ends cancelled if its caller has gone, waits again if
//! the batch was preempted and kept what re-queueing needs, and otherwise
//! fails (the executor left it unfinished with no stop asked). A twin
//! (dedup follower) shares its head's fate, unless its own caller has gone.

use super::{Back, Caller, Job};
use crate::plan::order::Meta;

/// A stopped batch's requests, sorted.
pub(super) struct Sorted<I, O> {
    /// Finished, with their outputs (`outputs[i]` is `done[i]`'s).
    pub(super) done: Vec<Caller<O>>,
    pub(super) outputs: Vec<O>,
    /// Twins of finished requests, indexed into `done`.
    pub(super) twins: Vec<(usize, Caller<O>)>,
    /// Unfinished, their callers gone.
    pub(super) cancelled: Vec<Caller<O>>,
    /// Unfinished, to wait again.
    pub(super) requeue: Vec<(Job<I, O>, Meta)>,
    /// Unfinished with no stop asked: the executor's fault.
    pub(super) broken: Vec<Caller<O>>,
}

/// Sorts a stopped batch (see the module docs). `backs` is empty or has
/// one entry per request. `preempted`: unfinished requests may wait
/// again; `displaced`: that counts against their displacement cap (a
/// preemption does, a batch the executor never ran does not).
pub(super) fn sort<I, O>(
    completers: Vec<Caller<O>>,
    followers: Vec<(usize, Caller<O>)>,
    inputs: Vec<I>,
    outputs: Vec<Option<O>>,
    backs: Vec<Back>,
    preempted: bool,
    displaced: bool,
) -> Sorted<I, O> {
    let mut s = Sorted {
        done: Vec::new(),
        outputs: Vec::new(),
        twins: Vec::new(),
        cancelled: Vec::new(),
        requeue: Vec::new(),
        broken: Vec::new(),
    };
    // Where each head went among `done`, for its twins.
    let mut at = vec![None; completers.len()];
    let mut backs = backs.into_iter().map(Some).collect::<Vec<_>>();
    for (i, ((caller, input), out)) in completers.into_iter().zip(inputs).zip(outputs).enumerate() {
        let back = backs.get_mut(i).and_then(Option::take);
        match (out, back) {
            (Some(o), _) => {
                at[i] = Some(s.done.len());
                s.done.push(caller);
                s.outputs.push(o);
            }
            (None, _) if caller.0.is_cancelled() => s.cancelled.push(caller),
            (None, Some(back)) if preempted => {
                s.requeue.push(Job::rebuild(input, caller, back, displaced))
            }
            (None, _) => s.broken.push(caller),
        }
    }
    for (i, caller) in followers {
        match at.get(i).copied().flatten() {
            Some(j) => s.twins.push((j, caller)),
            None if caller.0.is_cancelled() => s.cancelled.push(caller),
            None => s.broken.push(caller),
        }
    }
    s
}
