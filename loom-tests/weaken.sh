#!/usr/bin/env bash
# Weakens one memory ordering at a time in the real source and checks that the
# named loom model then FAILS. Restores the source after each case.
# Usage: loom-tests/weaken.sh   (from the repository root; takes a few minutes)
#        ONLY=stats loom-tests/weaken.sh   (one test binary's cases)
set -u
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom
status=0
# file @ exact line fragment @ replacement @ test binary @ test name
cases=(
  "src/intake/ring.rs@slot.stamp.store(written(pos), Ordering::Release);@slot.stamp.store(written(pos), Ordering::Relaxed);@ring@two_producers_one_consumer_full_and_wrap"
  "src/intake/ring.rs@if slot.stamp.load(Ordering::Acquire) != written(taken) {@if slot.stamp.load(Ordering::Relaxed) != written(taken) {@ring@two_producers_one_consumer_full_and_wrap"
  "src/intake/ring.rs@let freed = self.consumer.freed.load(Ordering::Acquire);@let freed = self.consumer.freed.load(Ordering::Relaxed);@ring@push_all_races_single_push"
  "src/intake/ring.rs@.store(freed.wrapping_add(n), Ordering::Release);@.store(freed.wrapping_add(n), Ordering::Relaxed);@ring@take_holds_the_slot_until_free"
  "src/intake/ring.rs@let limit = self.claims.limit.load(Ordering::Acquire);@let limit = self.claims.limit.load(Ordering::Relaxed);@ring@a_cached_limit_carries_the_free_to_the_next_producer"
  "src/intake/ring.rs@self.claims.limit.store(fresh, Ordering::Release);@self.claims.limit.store(fresh, Ordering::Relaxed);@ring@a_cached_limit_carries_the_free_to_the_next_producer"
  "src/intake/ring.rs@let freed = self.consumer.freed.load(Ordering::Acquire);@let freed = self.consumer.freed.load(Ordering::Relaxed);@intake@all_or_nothing_rollback_races_push_and_release"
  "src/outcome/ticket.rs@let prev = inner.state.fetch_or(COMPLETE, Ordering::AcqRel);@let prev = inner.state.fetch_or(COMPLETE, Ordering::Acquire);@ticket@complete_races_wait"
  "src/outcome/ticket.rs@let prev = self.inner.state.fetch_or(CLOSED, Ordering::AcqRel);@let prev = self.inner.state.fetch_or(CLOSED, Ordering::Release);@ticket@complete_races_cancel"
  "src/intake/doorbell.rs@let producer_fence = Ordering::SeqCst;@let producer_fence = Ordering::Release;@runtime_protocols@doorbell_never_loses_a_wakeup"
  "src/intake/gate.rs@self.0.state.fetch_sub(1, Ordering::Release);@self.0.state.fetch_sub(1, Ordering::Relaxed);@runtime_protocols@gate_lets_no_submit_slip_past_close"
  "src/runtime/clearing.rs@self.asked.store(true, Ordering::Release);@self.asked.store(true, Ordering::Relaxed);@runtime_protocols@clearing_is_answered_or_told_gone_and_sees_prior_submits"
  "src/runtime/clearing.rs@self.asked.swap(false, Ordering::Acquire)@self.asked.swap(false, Ordering::Relaxed)@runtime_protocols@clearing_is_answered_or_told_gone_and_sees_prior_submits"
  "src/observe/refresh.rs@self.answered.store(generation, Ordering::Release);@self.answered.store(generation, Ordering::Relaxed);@runtime_protocols@refresh_answer_covers_what_the_asker_saw"
  "src/observe/refresh.rs@self.answered.load(Ordering::Acquire) >= generation@self.answered.load(Ordering::Relaxed) >= generation@runtime_protocols@refresh_answer_covers_what_the_asker_saw"
  "src/observe/refresh.rs@self.live.store(false, Ordering::Release);@self.live.store(false, Ordering::Relaxed);@runtime_protocols@refresh_retired_recorder_covers_what_the_asker_saw"
  "src/observe/refresh.rs@!self.live.load(Ordering::Acquire)@!self.live.load(Ordering::Relaxed)@runtime_protocols@refresh_retired_recorder_covers_what_the_asker_saw"
  "src/intake/ring.rs@let freed = self.consumer.freed.load(Ordering::Acquire);@let freed = self.consumer.freed.load(Ordering::Relaxed);@ring@an_owner_races_a_shared_push_and_hands_the_ring_back"
  "src/intake/gate.rs@self.0.state.fetch_sub(1, Ordering::Release);@self.0.state.fetch_sub(1, Ordering::Relaxed);@runtime_protocols@the_collector_exits_only_after_every_accepted_submit"
  "src/observe/stats.rs@self.ended[p.index()][how as usize].fetch_add(n, Ordering::Release);@self.ended[p.index()][how as usize].fetch_add(n, Ordering::Relaxed);@stats@a_snapshot_sees_the_insert_before_an_outcome_and_the_room_after_a_batch"
  "src/observe/stats.rs@std::array::from_fn(|how| self.ended[p][how].load(Ordering::Acquire))@std::array::from_fn(|how| self.ended[p][how].load(Ordering::Relaxed))@stats@a_snapshot_sees_the_insert_before_an_outcome_and_the_room_after_a_batch"
  "src/observe/stats.rs@self.batches.fetch_add(1, Ordering::Release);@self.batches.fetch_add(1, Ordering::Relaxed);@stats@a_snapshot_sees_the_insert_before_an_outcome_and_the_room_after_a_batch"
  "src/observe/stats.rs@let batches = self.batches.load(Ordering::Acquire);@let batches = self.batches.load(Ordering::Relaxed);@stats@a_snapshot_sees_the_insert_before_an_outcome_and_the_room_after_a_batch"
  "src/intake/sharded.rs@.fetch_add(counts[q.index()] as u64, Ordering::Release);@.fetch_add(counts[q.index()] as u64, Ordering::Relaxed);@stats@a_rolled_back_batch_never_makes_outcomes_exceed_inserts"
  "src/intake/sharded.rs@let voided = lane.counters.voided.load(Ordering::Acquire);@let voided = lane.counters.voided.load(Ordering::Relaxed);@stats@a_rolled_back_batch_never_makes_outcomes_exceed_inserts"
  "src/runtime/control.rs@self.flag.store(true, Ordering::Release);@self.flag.store(true, Ordering::Relaxed);@runtime_protocols@a_control_change_during_the_collectors_pass_wakes_it"
  "src/runtime/control.rs@self.flag.swap(false, Ordering::Acquire)@self.flag.swap(false, Ordering::Relaxed)@runtime_protocols@a_control_change_during_the_collectors_pass_wakes_it"
  # Not orderings: the read orders, as they were before the models.
  "src/observe/stats.rs@intake.release_all(admissions);\n        // Release: see the type's docs.\n        self.batches.fetch_add(1, Ordering::Release);@// Release: see the type's docs.\n        self.batches.fetch_add(1, Ordering::Release);\n        intake.release_all(admissions);@stats@a_snapshot_sees_the_insert_before_an_outcome_and_the_room_after_a_batch"
  "src/observe/stats.rs@let ended: [[u64; ENDED]; Priority::COUNT] = std::array::from_fn(|p| {\n            std::array::from_fn(|how| self.ended[p][how].load(Ordering::Acquire))\n        });\n        let batches = self.batches.load(Ordering::Acquire);\n        let intake = intake();@let intake = intake();\n        let ended: [[u64; ENDED]; Priority::COUNT] = std::array::from_fn(|p| {\n            std::array::from_fn(|how| self.ended[p][how].load(Ordering::Acquire))\n        });\n        let batches = self.batches.load(Ordering::Acquire);@stats@a_snapshot_sees_the_insert_before_an_outcome_and_the_room_after_a_batch"
  "src/intake/sharded.rs@let voided = lane.counters.voided.load(Ordering::Acquire);\n                s.depth += lane.ring.len();\n                s.inserted += (lane.ring.pushed() as u64).saturating_sub(voided);@s.depth += lane.ring.len();\n                let pushed = lane.ring.pushed() as u64;\n                let voided = lane.counters.voided.load(Ordering::Acquire);\n                s.inserted += pushed.saturating_sub(voided);@stats@a_rolled_back_batch_never_makes_outcomes_exceed_inserts"
  # Not orderings: each message the collector's sleep re-check reads
  # (`control::Watch::news`), removed in turn; each model then deadlocks.
  "src/runtime/control.rs@self.changed.is_marked()\n            || self.clearing.is_asked()@self.clearing.is_asked()@runtime_protocols@a_control_change_during_the_collectors_pass_wakes_it"
  "src/runtime/control.rs@\n            || self.clearing.is_asked()@@runtime_protocols@a_clear_during_the_collectors_pass_wakes_it"
  "src/runtime/control.rs@\n            || self.refresh.0.asked_after(self.refresh.1)@@runtime_protocols@a_report_refresh_during_the_collectors_pass_wakes_it"
  "src/runtime/control.rs@\n            || self.sweep.is_some_and(Notice::is_marked)@@runtime_protocols@a_sweep_hint_during_the_collectors_pass_wakes_it"
  "src/runtime/control.rs@\n            || self.gate.is_some_and(Gate::is_closed)@@runtime_protocols@a_shutdown_during_the_collectors_pass_wakes_it"
  # Not orderings: a recorder's publish-then-answer and publish-then-retire
  # (`refresh.rs`), each swapped.
  "src/observe/refresh.rs@publish();\n        *answered = wanted;\n        self.answer(wanted);@*answered = wanted;\n        self.answer(wanted);\n        publish();@runtime_protocols@refresh_answer_covers_what_the_asker_saw"
  "src/observe/refresh.rs@let held = publish_final();\n        self.retire();@self.retire();\n        let held = publish_final();@runtime_protocols@refresh_retired_recorder_covers_what_the_asker_saw"
  # Not orderings: a tenant quota's check-and-take split into a read and a
  # write, and a token refusal that keeps the request it counted.
  "src/intake/quota.rs@let taken = self\n                .queued\n                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {\n                    (q < max).then_some(q + 1)\n                });@let seen = self.queued.load(Ordering::Relaxed);\n            let taken = (seen < max).then(|| self.queued.store(seen + 1, Ordering::Relaxed)).ok_or(seen);@quota@racing_takes_never_pass_the_limit"
  "src/intake/quota.rs@self.queued.fetch_sub(1, Ordering::Relaxed);\n                return Err(QuotaExceeded::Tokens@return Err(QuotaExceeded::Tokens@quota@a_give_back_races_a_take_and_the_counts_end_exact"
  # Not an ordering: the staged batch's take-once swap split into a load
  # and a store (a worker and a recall could then both take the batch).
  "src/runtime/handoff.rs@let p = self.value.swap(ptr::null_mut(), Ordering::AcqRel);@let p = self.value.load(Ordering::Acquire);\n        self.value.store(ptr::null_mut(), Ordering::Release);@handoff@start_races_recall_and_exactly_one_takes"
  # Not an ordering: a stop ticket read as "some batch was asked" rather
  # than "this batch was asked" (a late ask would stop the next batch).
  "src/device/stop.rs@self.0.load(Ordering::Relaxed) == seq@self.0.load(Ordering::Relaxed) != u64::MAX@handoff@a_stop_meant_for_one_batch_never_stops_the_next"
  # Not an ordering: the check itself, as it was before the model found it.
  "src/intake/gate.rs@self.state.load(Ordering::Acquire) == CLOSED@self.state.load(Ordering::Acquire) & !CLOSED == 0@runtime_protocols@the_collector_exits_only_after_every_accepted_submit"
)
for c in "${cases[@]}"; do
  IFS='@' read -r file from to bin name <<<"$c"
  # ONLY=<test binary> runs that binary's cases alone.
  if [ -n "${ONLY:-}" ] && [ "$bin" != "$ONLY" ]; then continue; fi
  cp "$file" "$file.orig"
  python3 - "$file" "$from" "$to" <<'PY'
import sys
p, a, b = sys.argv[1:]
# `\n` in a case stands for a line break (a fragment over several lines).
a, b = a.replace("\\n", "\n"), b.replace("\\n", "\n")
s = open(p).read()
assert s.count(a) == 1, f"{a!r} must occur once in {p}"
open(p, "w").write(s.replace(a, b))
PY
  if cargo test -q -p loom-tests --release --test "$bin" -- --exact "$name" >/tmp/weaken.log 2>&1; then
    echo "NOT CAUGHT: $name with $to"; status=1
  else
    if grep -q "error\[E" /tmp/weaken.log; then echo "BROKEN CASE (does not compile): $name"; status=1; mv "$file.orig" "$file"; touch "$file"; continue; fi
    why=$(grep -m1 -oE "Causality violation: [A-Za-z ]+|deadlock|assertion[^\n]*failed[^\n]*" /tmp/weaken.log)
    echo "caught: $name <- $file: $to  ($why)"
  fi
  mv "$file.orig" "$file"; touch "$file"  # newer than the weakened build, so cargo rebuilds
done
exit $status
