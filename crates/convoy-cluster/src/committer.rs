//! The frontend's one writer to the pool: a thread that owns this
//! frontend's usage table (single owner, so the absolute values it
//! commits never race), gathers every grant its workers ask while the
//! last commit was in flight, and commits them together with the releases
//! since in one script call: one Redis round trip for all the batches of
//! a pass, never more than one per batch. Idle, it commits every
//! heartbeat (releases ride on it, and it keeps the frontend live).
//!
//! Fencing: a commit refused as fenced (the heartbeat lapsed: a partition,
//! a stall, a Redis restart that lost the pool) makes the committer rejoin
//! under a new epoch and re-assert its usage from its own table before it
//! grants anything more.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::channel::{Receiver, RecvTimeoutError, Sender};

use crate::pool::{CommitReply, Pool};
use crate::sync::Mirror;

/// How long a release waits for an ask's commit to ride on before it is
/// committed alone.
const RELEASE_DELAY: Duration = Duration::from_millis(2);

/// A worker thread's message to the committer.
pub(crate) enum Msg {
    /// Reserve (slots, tokens) on a worker; the verdict comes back on
    /// `reply`.
    Ask {
        worker: String,
        slots: u32,
        tokens: u64,
        reply: Sender<Verdict>,
    },
    /// Give back what a granted batch held.
    Release {
        worker: String,
        slots: u32,
        tokens: u64,
    },
    /// A request fit no worker now (the runtime's shortfall signal).
    Short { tokens: u32 },
    /// Leave the pool holding nothing, and stop.
    Leave,
    /// Stop with no last commit (a crash, for tests).
    Vanish,
}

/// The answer to an ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Granted,
    /// The pool has no room for it now.
    Denied,
    /// Redis did not answer; nothing was reserved.
    Unreachable(String),
}

/// What a frontend counts of its dealings with the pool.
#[derive(Debug, Default)]
pub struct PoolCounters {
    /// Commits made (each one Redis round trip).
    pub commits: AtomicU64,
    /// Grants asked and granted.
    pub granted: AtomicU64,
    /// Grants asked and denied (the pool was full).
    pub denied: AtomicU64,
    /// Commits that failed (Redis unreachable).
    pub failed_commits: AtomicU64,
    /// Times this frontend found itself fenced and rejoined.
    pub rejoins: AtomicU64,
    /// Shortfall records written.
    pub shortfalls: AtomicU64,
    /// Batches a worker host refused as over its capacity.
    pub host_refusals: AtomicU64,
    /// Batches lost with their worker host.
    pub lost_batches: AtomicU64,
}

/// How the committer runs.
pub(crate) struct Plan {
    pub(crate) pool: Pool,
    pub(crate) name: String,
    pub(crate) id: Arc<ArcSwap<String>>,
    pub(crate) window: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) counters: Arc<PoolCounters>,
    pub(crate) tokio: tokio::runtime::Handle,
}

/// Runs the committer until every sender is gone; `mirror` applies each
/// snapshot to the local runtime (while it lives).
pub(crate) fn run<I: Send + 'static, O: Send + 'static>(
    plan: Plan,
    rx: Receiver<Msg>,
    mirror: Mirror,
    runtime: Weak<convoy::Runtime<I, O>>,
) {
    let mut usage: BTreeMap<String, (u32, u64)> = BTreeMap::new();
    // The usage as Redis holds it after the last commit.
    let mut committed = usage.clone();
    let mut asks: Vec<(String, u32, u64, Sender<Verdict>)> = Vec::new();
    let mut short: Option<u32> = None;
    let mut episode: Option<Instant> = None;
    let mut mirror = mirror;
    let mut last_commit = Instant::now();
    // Releases not yet committed, and when they must be at the latest.
    let mut flush_at: Option<Instant> = None;
    loop {
        let wake = flush_at.unwrap_or(last_commit + plan.heartbeat);
        let first = match rx.recv_deadline(wake) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut end = None;
        for msg in first.into_iter().chain(rx.try_iter()) {
            match msg {
                Msg::Leave => end = Some(true),
                Msg::Vanish => end = Some(false),
                Msg::Ask {
                    worker,
                    slots,
                    tokens,
                    reply,
                } => asks.push((worker, slots, tokens, reply)),
                Msg::Release {
                    worker,
                    slots,
                    tokens,
                } => {
                    if let Some(u) = usage.get_mut(&worker) {
                        u.0 = u.0.saturating_sub(slots);
                        u.1 = u.1.saturating_sub(tokens);
                        if *u == (0, 0) {
                            usage.remove(&worker);
                        }
                    }
                }
                Msg::Short { tokens } => short = Some(short.unwrap_or(0).max(tokens)),
            }
        }
        match end {
            Some(true) => break,
            Some(false) => return,
            None => {}
        }
        // Releases alone do not cost a round trip: they ride on the next
        // ask's commit, or go out within RELEASE_DELAY when none comes
        // (soon enough for the other frontends; under load an ask always
        // comes first).
        let now = Instant::now();
        let due = now >= last_commit + plan.heartbeat || flush_at.is_some_and(|at| now >= at);
        if asks.is_empty() && short.is_none() && !due {
            if flush_at.is_none() && usage != committed {
                flush_at = Some(now + RELEASE_DELAY);
            }
            continue;
        }
        flush_at = None;
        last_commit = now;
        let held: Vec<(String, u32, u64)> = usage
            .iter()
            .map(|(w, (s, t))| (w.clone(), *s, *t))
            .collect();
        let grants: Vec<(String, u32, u64)> = asks
            .iter()
            .map(|(w, s, t, _)| (w.clone(), *s, *t))
            .collect();
        let reply = commit_or_rejoin(&plan, &held, &grants);
        let mut denied = 0;
        match reply {
            Ok(CommitReply::Done { granted, room }) => {
                for (i, (w, s, t, reply)) in asks.drain(..).enumerate() {
                    if granted.get(i).copied().unwrap_or(false) {
                        let u = usage.entry(w).or_default();
                        u.0 += s;
                        u.1 += t;
                        let _ = reply.send(Verdict::Granted);
                        plan.counters.granted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        denied += 1;
                        let _ = reply.send(Verdict::Denied);
                        plan.counters.denied.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // What Redis holds for this frontend now.
                committed.clone_from(&usage);
                if let Some(rt) = runtime.upgrade() {
                    mirror.apply(&room, rt.as_ref(), || {
                        plan.tokio.block_on(plan.pool.infos()).ok()
                    });
                }
            }
            Ok(CommitReply::Fenced) | Err(_) => {
                let why = match &reply {
                    Err(e) => e.to_string(),
                    _ => "fenced twice in a row".to_owned(),
                };
                plan.counters.failed_commits.fetch_add(1, Ordering::Relaxed);
                for (_, _, _, reply) in asks.drain(..) {
                    let _ = reply.send(Verdict::Unreachable(why.clone()));
                }
            }
        }
        // One shortfall record per episode: an episode ends after a
        // liveness window with nothing short.
        if denied > 0 || short.is_some() {
            let fresh = episode.is_none_or(|at| at.elapsed() > plan.window);
            if fresh {
                let fields = [
                    ("frontend", plan.id.load().as_str().to_owned()),
                    ("denied", denied.to_string()),
                    ("tokens", short.unwrap_or(0).to_string()),
                    ("held_workers", usage.len().to_string()),
                ];
                if plan.tokio.block_on(plan.pool.shortfall(&fields)).is_ok() {
                    plan.counters.shortfalls.fetch_add(1, Ordering::Relaxed);
                }
            }
            episode = Some(Instant::now());
            short = None;
        }
    }
    // Leaving: whatever ran has been released by now.
    let _ = plan.tokio.block_on(plan.pool.leave(&plan.id.load()));
}

/// One commit; when fenced, rejoin under a new epoch and commit again
/// (the same usage, re-asserted under the new id, and the same asks).
fn commit_or_rejoin(
    plan: &Plan,
    held: &[(String, u32, u64)],
    grants: &[(String, u32, u64)],
) -> redis::RedisResult<CommitReply> {
    let id = plan.id.load_full();
    plan.counters.commits.fetch_add(1, Ordering::Relaxed);
    let first = plan
        .tokio
        .block_on(plan.pool.commit(&id, plan.window, held, grants))?;
    if first != CommitReply::Fenced {
        return Ok(first);
    }
    let new_id = plan.tokio.block_on(plan.pool.join(&plan.name))?;
    tracing::warn!(old = %id, new = %new_id, "fenced: rejoined the pool under a new epoch");
    plan.id.store(Arc::new(new_id.clone()));
    plan.counters.rejoins.fetch_add(1, Ordering::Relaxed);
    plan.counters.commits.fetch_add(1, Ordering::Relaxed);
    plan.tokio
        .block_on(plan.pool.commit(&new_id, plan.window, held, grants))
}
