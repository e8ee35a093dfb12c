//! Requests that leave without launching: expired, cancelled, cleared or
//! failed at shutdown. Each ends in exactly one outcome, counted before its
//! ticket hears it, and its queue room is given back before anyone is told.

use std::time::Instant;

use super::{Collector, Entry};
use crate::intake::Admission;
use crate::observe::stats::Ended;
use crate::outcome::ticket::Completer;
use crate::outcome::Failure;
use crate::plan::dedup::Follower;
use crate::plan::order::Meta;
use crate::priority::Priority;

/// Requests leaving unlaunched, gathered so that their room is given back
/// before any of them is told (see `Collector::end_leaving`).
pub(super) struct Leaving<O> {
    completers: Vec<(Completer<O>, Priority)>,
    admissions: Vec<Admission>,
}

impl<O> Leaving<O> {
    pub(super) fn with_capacity(n: usize) -> Self {
        Leaving {
            completers: Vec::with_capacity(n),
            admissions: Vec::with_capacity(n),
        }
    }

    /// One request leaving: its room and whom to tell.
    pub(super) fn add(&mut self, admission: Admission, completer: Completer<O>, level: Priority) {
        self.admissions.push(admission);
        self.completers.push((completer, level));
    }

    pub(super) fn followers(&mut self, gone: Vec<Follower<O>>) {
        for f in gone {
            self.add(f.admission, f.completer, f.priority);
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Collector<I, O> {
    pub(super) fn expire(&mut self, now_ns: u64) {
        let mut expired = Vec::new();
        let mut regrouped = Vec::new();
        let now = Instant::now();
        while let Some(((mut job, mut adm), meta)) = self.planner.pop_expired(now_ns) {
            // A group expires member by member: those past their own
            // expiry leave, the others wait on under a new head if needed.
            let mut gone = Vec::new();
            job.shed_members(&mut adm, &mut gone, |_, expire_at| expire_at <= now_ns);
            for f in &gone {
                self.record_expiry(f.priority, f.since, now);
            }
            if job.expire_at > now_ns {
                // The head survives: the group goes back with fresh ordering
                // (its expiry now that of the members left).
                let meta = job.group_meta(meta);
                regrouped.push(((job, adm), meta));
                self.end_followers(gone, Failure::Expired, Ended::Expired);
                continue;
            }
            self.end_followers(gone, Failure::Expired, Ended::Expired);
            self.record_expiry(job.priority, job.since(), now);
            expired.push(((job, adm), meta));
        }
        for ((job, adm), meta) in regrouped {
            let k = job.dedup();
            let key = self.planner.insert((job, adm), meta);
            if let Some(k) = k {
                self.dedup.insert(k, key);
            }
        }
        self.end_unlaunched(expired, Failure::Expired, Ended::Expired);
    }

    /// Records an expiry: its latency runs from `since` (`Job::since`).
    pub(super) fn record_expiry(&mut self, level: Priority, since: Instant, now: Instant) {
        let timeout = self.applied.slo[level.index()].timeout;
        self.sla
            .expired(level, now.saturating_duration_since(since), timeout, now);
    }

    /// Ends followers that leave their group unlaunched.
    pub(super) fn end_followers(&mut self, gone: Vec<Follower<O>>, failure: Failure, how: Ended) {
        let mut leaving = Leaving::with_capacity(gone.len());
        leaving.followers(gone);
        self.end_leaving(leaving, &failure, how);
    }

    /// Gives the room of requests leaving unlaunched back, then tells each
    /// one: a caller woken by its failure finds the queue depth already
    /// down, as it finds the outcome already counted.
    pub(super) fn end_leaving(&mut self, leaving: Leaving<O>, failure: &Failure, how: Ended) {
        self.intake.release_all(leaving.admissions);
        for (completer, level) in leaving.completers {
            self.end_one(completer, level, failure, how);
        }
    }

    /// Delivers `failure` to one unlaunched request, counted as `how` (or
    /// as cancelled when its ticket had already closed). Counted first, so
    /// a caller woken by the failure finds it in `stats()`; see `deliver`
    /// for a ticket that closes in between.
    pub(super) fn end_one(
        &self,
        completer: Completer<O>,
        level: Priority,
        failure: &Failure,
        how: Ended,
    ) {
        let ended = if completer.is_cancelled() {
            Ended::Cancelled
        } else {
            how
        };
        self.shared.counters.ended(level, ended, 1);
        // An Err hands the failure back from a ticket that closed after the
        // check above; it was counted as `how`, and there is no one to tell.
        let _ = completer.complete(Err(failure.clone()));
    }

    /// Ends every request accepted and not launched with `failure` (the
    /// intake's too, so a submit that returned before is covered), dedup
    /// twins included; returns how many ended. `shutdown_now` and the
    /// drain deadline fail them `ShutDown`; `clear_waiting` cancels them.
    pub(super) fn end_all_waiting(&mut self, now_ns: u64, failure: Failure, how: Ended) -> usize {
        self.drain_intake(now_ns);
        let all = self.planner.drain_all();
        let ended = all
            .iter()
            .map(|((job, _), _)| 1 + job.followers.len())
            .sum();
        self.end_unlaunched(all, failure, how);
        ended
    }

    pub(super) fn fail_all_waiting(&mut self) {
        self.end_all_waiting(u64::MAX, Failure::ShutDown, Ended::ShutDown);
    }

    /// Ends requests that never launched with `failure`, counted as `how`
    /// (or as cancelled when the ticket had already closed), and gives their
    /// queue room back.
    pub(super) fn end_unlaunched(
        &mut self,
        entries: Vec<(Entry<I, O>, Meta)>,
        failure: Failure,
        how: Ended,
    ) {
        if entries.is_empty() {
            return;
        }
        let mut leaving = Leaving::with_capacity(entries.len());
        for ((job, adm), _) in entries {
            self.forget_group(&job);
            leaving.followers(job.followers);
            leaving.add(adm, job.completer, job.priority);
        }
        self.end_leaving(leaving, &failure, how);
    }
}
