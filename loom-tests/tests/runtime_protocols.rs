//! loom models of the runtime's small protocols, on the real code.
#![cfg(loom)]

use convoy::loom_exports::{
    Answers, Clearing, Doorbell, Gate, Mode, Notice, Refresh, RunMode, Shedding, Watch,
};
use convoy::ring;
use convoy::Priority;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

/// A producer publishes into a ring and rings; the collector re-checks and
/// parks with no timeout. A lost wake-up would leave it parked forever,
/// which loom reports as a deadlock.
#[test]
fn doorbell_never_loses_a_wakeup() {
    loom::model(|| {
        let bell = Arc::new(Doorbell::new());
        let (tx, mut rx) = ring::channel::<u32>(2).unwrap();
        bell.register_current();
        let b = bell.clone();
        // Not joined: loom wakes a thread blocked in `join` on any unpark,
        // and the producer's unpark may land after the collector moved on.
        // loom still runs every thread to the end of each execution.
        thread::spawn(move || {
            tx.push(7).unwrap();
            b.ring();
        });
        let got = loop {
            if let Some(v) = rx.pop() {
                break v;
            }
            bell.sleep(|| rx.has_ready(), None);
        };
        assert_eq!(got, 7);
    });
}

/// A submit as `Handle::submit` makes one: pass the gate, push, leave. The
/// thread returns whether it was accepted.
fn submit_through_the_gate(gate: &Arc<Gate>, tx: ring::Producer<u32>) -> thread::JoinHandle<bool> {
    let g = gate.clone();
    thread::spawn(move || match g.enter() {
        Some(_pass) => {
            tx.push(1).unwrap();
            true
        }
        None => false,
    })
}

/// A submit races the close: either it is refused, or the collector, which
/// waits for the gate to drain before its final drain, sees its item.
#[test]
fn gate_lets_no_submit_slip_past_close() {
    loom::model(|| {
        let gate = Arc::new(Gate::new());
        let (tx, mut rx) = ring::channel::<u32>(2).unwrap();
        let submitter = submit_through_the_gate(&gate, tx);
        gate.close();
        while !gate.is_drained() {
            thread::yield_now();
        }
        let drained = rx.pop();
        let accepted = submitter.join().unwrap();
        assert_eq!(
            accepted,
            drained.is_some(),
            "accepted iff the final drain saw it"
        );
    });
}

/// The runtime's shutdown as it really runs: `stop` raises the mode and
/// then closes the gate on the caller's thread, while the collector, on
/// its own, drains and exits once it has seen the mode raised and the gate
/// drained with nothing left in the ring. A submit races both. Either it is
/// refused, or the collector drains it before it exits. (A gate that
/// reported "drained" before it was closed let the collector leave between
/// the two steps of `stop`, and a submit accepted then was never drained.)
#[test]
fn the_collector_exits_only_after_every_accepted_submit() {
    loom::model(|| {
        let gate = Arc::new(Gate::new());
        let mode = Arc::new(Mode::new());
        let (tx, mut rx) = ring::channel::<u32>(2).unwrap();
        let submitter = submit_through_the_gate(&gate, tx);
        let (g, m) = (gate.clone(), mode.clone());
        let stopper = thread::spawn(move || {
            // `stop`'s order: the mode first, then the gate.
            m.raise(RunMode::Draining);
            g.close();
        });
        let mut drained = 0;
        loop {
            // The collector's pass: the mode is read before the drain.
            let closing = mode.get() != RunMode::Running;
            while rx.pop().is_some() {
                drained += 1;
            }
            if closing && gate.is_drained() && !rx.has_ready() {
                break;
            }
            thread::yield_now();
        }
        stopper.join().unwrap();
        let accepted = submitter.join().unwrap();
        assert_eq!(
            usize::from(accepted),
            drained,
            "accepted iff the collector drained it before exiting"
        );
    });
}

/// A submit reads the shed mask (`Shedding`, Relaxed: advice with no data
/// behind it) while the collector sheds Background, opens it again and
/// then shuts down. However they interleave, each of the two submits
/// (Background, then Critical) ends exactly once: handed back (shed or
/// shut down) or drained by the collector before it exits; and the mask
/// never refuses Critical.
#[test]
fn a_shed_level_refuses_and_every_submit_ends_once() {
    loom::model(|| {
        let gate = Arc::new(Gate::new());
        let shedding = Arc::new(Shedding::new());
        let (tx, mut rx) = ring::channel::<Priority>(2).unwrap();
        let (g, s) = (gate.clone(), shedding.clone());
        let submitter = thread::spawn(move || {
            let mut handed_back = 0;
            for level in [Priority::Background, Priority::Critical] {
                // `Handle::submit_through`'s order: the mask, then the gate.
                if s.refuses(level) {
                    assert_ne!(level, Priority::Critical, "Critical is never shed");
                    handed_back += 1;
                    continue;
                }
                match g.enter() {
                    Some(_pass) => tx.push(level).unwrap(),
                    None => handed_back += 1,
                }
            }
            handed_back
        });
        let mut drained = 0;
        shedding.set(1 << Priority::Background.index());
        while rx.pop().is_some() {
            drained += 1;
        }
        shedding.set(0);
        gate.close();
        loop {
            while rx.pop().is_some() {
                drained += 1;
            }
            if gate.is_drained() && !rx.has_ready() {
                break;
            }
            thread::yield_now();
        }
        let handed_back = submitter.join().unwrap();
        assert_eq!(handed_back + drained, 2, "each submit ends exactly once");
    });
}

/// Everything other threads tell the collector between its passes, as the
/// runtime's `Shared` holds it, plus a stand-in for the fleet a control
/// change swaps in.
#[derive(Default)]
struct Messages {
    changed: Notice,
    sweep: Notice,
    clearing: Clearing,
    refresh: Refresh,
    gate: Gate,
    fleet: AtomicUsize,
}

/// One collector pass's reads of the messages, in `Collector::run`'s
/// order (the mode first, read here as the gate that `stop` closes):
/// whether it read the mode as closing, and whether it saw any message.
/// `answered` is the collector's SLA recorder's last answered generation,
/// as its loop point leaves it.
fn pass(m: &Messages, answered: &mut u64) -> (bool, bool) {
    let closing = m.gate.is_closed();
    let changed = m.changed.take();
    if changed {
        assert_eq!(
            m.fleet.load(Ordering::Relaxed),
            2,
            "the mark carries the change"
        );
    }
    let cleared = m.clearing.take();
    let swept = m.sweep.take();
    let answers = Answers::new();
    let asked = answers.answer_if_asked(&m.refresh, answered, || {});
    (closing, closing || changed || cleared || swept || asked)
}

/// A message sent (`send`, then a ring, as every sender does) while the
/// collector is between its pass and its sleep. The collector's pass takes
/// it; if the pass missed it, the sleep's re-check, the runtime's own
/// `Watch::news`, must see it, and the pass after the sleep takes it.
/// The sleep has no timeout, so a lost wake-up is a loom deadlock; in the
/// runtime it cost the message up to the collector's 50 ms sleep (a new
/// worker or a raised capacity unused, a report's refresh or a clear
/// waiting, a shutdown slower than it needs to be).
fn a_message_during_the_collectors_pass_wakes_it(send: fn(&Messages)) {
    loom::model(move || {
        let bell = Arc::new(Doorbell::new());
        let m = Arc::new(Messages::default());
        bell.register_current();
        let (b, sent) = (bell.clone(), m.clone());
        // Not joined, as in the doorbell model above.
        thread::spawn(move || {
            send(&sent);
            b.ring();
        });
        let mut answered = 0;
        let (closing, mut seen) = pass(&m, &mut answered);
        if !seen {
            let watch = Watch {
                changed: &m.changed,
                clearing: &m.clearing,
                refresh: (&m.refresh, answered),
                sweep: Some(&m.sweep),
                gate: (!closing).then_some(&m.gate),
            };
            bell.sleep(|| watch.news(), None);
            seen = pass(&m, &mut answered).1;
        }
        assert!(seen, "woken by the ring or kept awake by the re-check");
    });
}

/// A shutdown that begins while the collector is on its way to sleep: the
/// pass read "running", `stop` closes the gate and rings. However the ring
/// and the announcement interleave, the collector does not park.
#[test]
fn a_shutdown_during_the_collectors_pass_wakes_it() {
    a_message_during_the_collectors_pass_wakes_it(|m| {
        m.gate.close();
    });
}

/// A control operation (`add_worker`, `set_capacity`, `reload_config`…)
/// stores its change, marks its notice and rings; the pass that takes the
/// mark sees the change (the stored fleet).
#[test]
fn a_control_change_during_the_collectors_pass_wakes_it() {
    a_message_during_the_collectors_pass_wakes_it(|m| {
        m.fleet.store(2, Ordering::Relaxed);
        m.changed.mark();
    });
}

/// An SLA report asks its recorders for fresh copies and rings, so the
/// collector's recorder answers at its next loop point.
#[test]
fn a_report_refresh_during_the_collectors_pass_wakes_it() {
    a_message_during_the_collectors_pass_wakes_it(|m| {
        m.refresh.ask();
    });
}

/// `clear_waiting` raises its ask and rings.
#[test]
fn a_clear_during_the_collectors_pass_wakes_it() {
    a_message_during_the_collectors_pass_wakes_it(|m| m.clearing.ask_later());
}

/// A refused submit asks for a sweep and rings (watched once a sweep may
/// start, as here).
#[test]
fn a_sweep_hint_during_the_collectors_pass_wakes_it() {
    a_message_during_the_collectors_pass_wakes_it(|m| m.sweep.mark());
}

/// `clear_waiting` racing the collector's last two passes and its exit.
/// The asker gets the collector's count exactly when the collector took its
/// ask, and `None` otherwise: it never waits on a collector that has gone
/// (a hang is a loom deadlock). What the asker did before asking (here a
/// Relaxed store standing for its submits) is seen by the clear.
#[test]
fn clearing_is_answered_or_told_gone_and_sees_prior_submits() {
    loom::model(|| {
        let clearing = Arc::new(Clearing::new());
        let submitted = Arc::new(AtomicUsize::new(0));
        let (c, s) = (clearing.clone(), submitted.clone());
        let collector = thread::spawn(move || {
            let mut seen = None;
            for _ in 0..2 {
                if c.take() {
                    let n = s.load(Ordering::Relaxed);
                    c.answer(n);
                    seen = Some(n);
                }
                thread::yield_now();
            }
            c.gone();
            seen
        });
        submitted.store(3, Ordering::Relaxed);
        let got = clearing.ask(|| {});
        let seen = collector.join().unwrap();
        assert_eq!(got, seen, "answered iff the collector took the ask");
        if let Some(n) = got {
            assert_eq!(n, 3, "the clear saw the submits made before the ask");
        }
    });
}

/// One recorder loop point (`SlaRecorder::maybe_publish`'s refresh branch,
/// `Answers::answer_if_asked`): a new generation is answered after
/// publishing the copy. The real copy is an `ArcSwap`, which loom cannot
/// see, so a loom atomic stands in for it; the order is the real code's.
fn loop_point(
    refresh: &Refresh,
    answers: &Answers,
    answered: &mut u64,
    copy: &AtomicUsize,
    records: usize,
) -> bool {
    answers.answer_if_asked(refresh, answered, || copy.store(records, Ordering::Relaxed))
}

/// A recorder delivers a ticket, then records it, with loop points before
/// and after; a reporter that saw the ticket asks for a refresh and waits
/// for the answer (or, with `retire`, for the recorder's final copy, as a
/// worker that exits gives). The copy it then reads must hold the record:
/// no loop point before the delivery can answer an ask made after it, and
/// the answer carries the copy published before it.
fn refresh_covers_what_the_asker_saw(retire: bool) {
    loom::model(move || {
        let refresh = Arc::new(Refresh::default());
        let answers = Arc::new(Answers::new());
        let ticket = Arc::new(AtomicUsize::new(0));
        let copy = Arc::new(AtomicUsize::new(0));
        let (r, a, t, c) = (
            refresh.clone(),
            answers.clone(),
            ticket.clone(),
            copy.clone(),
        );
        let recorder = thread::spawn(move || {
            let mut answered = 0;
            loop_point(&r, &a, &mut answered, &c, 0);
            t.store(1, Ordering::Release); // the ticket's outcome
            let records = 1; // recorded after delivering, as a worker does
            if retire {
                // The final copy, then retire, in `Answers::retire_after`,
                // which `SlaRecorder::drop` calls: the model runs the
                // order, it does not copy it.
                a.retire_after(|| c.store(records, Ordering::Relaxed));
            } else {
                while !loop_point(&r, &a, &mut answered, &c, records) {
                    thread::yield_now();
                }
            }
        });
        while ticket.load(Ordering::Acquire) == 0 {
            thread::yield_now();
        }
        let generation = refresh.ask();
        while !answers.has_answered(generation) {
            thread::yield_now();
        }
        assert_eq!(
            copy.load(Ordering::Relaxed),
            1,
            "the report read a copy without the request the asker saw finish"
        );
        recorder.join().unwrap();
    });
}

#[test]
fn refresh_answer_covers_what_the_asker_saw() {
    refresh_covers_what_the_asker_saw(false);
}

#[test]
fn refresh_retired_recorder_covers_what_the_asker_saw() {
    refresh_covers_what_the_asker_saw(true);
}
