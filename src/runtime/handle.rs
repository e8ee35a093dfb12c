//! The producer's side: [`Handle`] and [`Submitter`], and the submit path
//! (validate, pass the gate, push into the intake, ring the doorbell: no
//! lock, no channel). A request that names a tenant also finds it in the
//! tenant table (`intake/tenants.rs`), a `DashMap`: one shard's read lock
//! for the lookup.

use std::sync::Arc;
use std::time::Instant;

use super::error::{BatchSubmitError, BatchSubmitErrorKind, Error, SubmitError, SubmitErrorKind};
use super::{Job, Prepared, Shared};
use crate::clock::after;
use crate::config::{check_tenant_id, BatchingConfig, Capacity};
use crate::device::executor::Executor;
use crate::intake::{BatchRejectReason, ExclusiveProducer, Intake, QuotaExceeded};
use crate::observe::stats::Stats;
use crate::outcome::ticket::{self, Ticket};
use crate::priority::{InsertPolicy, Priority};
use crate::request::{Cost, Deadline, Request};

/// A [`Handle`] that owns a shard of the intake, for one thread that
/// submits a lot (see [`Handle::submitter`]). Not `Clone`; submits take
/// `&mut self`. Everything else a handle does, it does through
/// [`handle`](Self::handle).
pub struct Submitter<I, O> {
    handle: Handle<I, O>,
    own: ExclusiveProducer<Job<I, O>>,
}

impl<I, O> std::fmt::Debug for Submitter<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submitter")
            .field("shard", &self.own.shard())
            .finish_non_exhaustive()
    }
}

impl<I: Send + 'static, O: Send + 'static> Submitter<I, O> {
    /// [`Handle::submit`] through this submitter's own shard.
    pub fn submit(&mut self, request: Request<I>) -> Result<Ticket<O>, SubmitError<I>> {
        self.submit_with(request, InsertPolicy::Enqueue)
    }

    /// [`Handle::submit_with`] through this submitter's own shard.
    pub fn submit_with(
        &mut self,
        request: Request<I>,
        policy: InsertPolicy,
    ) -> Result<Ticket<O>, SubmitError<I>> {
        self.handle
            .submit_through(request, policy, Some(&mut self.own))
    }

    /// The plain handle, for batches, stats and the rest.
    pub fn handle(&self) -> &Handle<I, O> {
        &self.handle
    }
}

/// The producer's handle: `Clone + Send + Sync`, usable after the runtime is
/// gone (submits are then refused with `ShuttingDown`).
pub struct Handle<I, O> {
    intake: Intake<Job<I, O>>,
    shared: Arc<Shared>,
    /// For [`Executor::check`] at submit.
    executor: Arc<dyn Executor<I, O>>,
}

impl<I, O> Clone for Handle<I, O> {
    fn clone(&self) -> Self {
        Self {
            intake: self.intake.clone(),
            shared: self.shared.clone(),
            executor: self.executor.clone(),
        }
    }
}

impl<I, O> Handle<I, O> {
    pub(super) fn new(
        intake: Intake<Job<I, O>>,
        shared: Arc<Shared>,
        executor: Arc<dyn Executor<I, O>>,
    ) -> Self {
        Self {
            intake,
            shared,
            executor,
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Handle<I, O> {
    /// [`Runtime::clear_waiting`](super::Runtime::clear_waiting), from a handle (an admin endpoint of a
    /// server that holds only handles); 0 once the runtime is gone.
    ///
    /// Called on the collector's own thread (from the
    /// `on_capacity_shortfall` callback, say), it cannot wait for the
    /// collector: it asks, returns 0 at once, and the clear happens on the
    /// collector's next pass.
    pub fn clear_waiting(&self) -> usize {
        let shared = &self.shared;
        // The doorbell's sleeper is the collector thread.
        if shared.doorbell.is_sleeper_current() {
            shared.clearing.ask_later();
            return 0;
        }
        shared.clearing.ask(|| shared.doorbell.ring()).unwrap_or(0)
    }

    /// Submits one request; its ticket delivers exactly one outcome.
    pub fn submit(&self, request: Request<I>) -> Result<Ticket<O>, SubmitError<I>> {
        self.submit_with(request, InsertPolicy::Enqueue)
    }

    /// Submits `request` and awaits its output: the one-call shape of
    /// batched-fn and Ray Serve's `@serve.batch`, with the refusal and the
    /// outcome in one [`Error`]. The submit itself never blocks (a full
    /// queue is `Err(Error::Refused(..))` at once, the request inside);
    /// dropping the future before it resolves drops the ticket, which
    /// cancels the request if it has not launched.
    ///
    /// ```
    /// use convoy::{Request, Runtime};
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let waker = std::task::Waker::noop();
    /// #     let mut cx = std::task::Context::from_waker(&waker);
    /// #     loop {
    /// #         if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; }
    /// #         std::thread::yield_now();
    /// #     }
    /// # }
    /// let rt = Runtime::builder().batch_fn(|xs: &[u32]| xs.iter().map(|x| x + 1).collect()).build()?;
    /// let handle = rt.handle();
    /// // In an async fn: `handle.call(Request::new(41)).await`.
    /// assert_eq!(block_on(handle.call(Request::new(41))).unwrap(), 42);
    /// # Ok::<(), convoy::BuildError>(())
    /// ```
    pub async fn call(&self, request: Request<I>) -> Result<O, Error<I>> {
        let ticket = self.submit(request).map_err(Error::Refused)?;
        ticket.await.map_err(Error::Failed)
    }

    /// Submits one request with an insert policy (`Front` jumps its level).
    pub fn submit_with(
        &self,
        request: Request<I>,
        policy: InsertPolicy,
    ) -> Result<Ticket<O>, SubmitError<I>> {
        self.submit_through(request, policy, None)
    }

    /// A submitter for one thread that submits a lot: it owns a shard of
    /// the intake, and its submits claim queue slots by plain store rather
    /// than a CAS (`Intake::exclusive`; 2–3× the intake's throughput in
    /// `benches/intake.rs`). `None` when every shard is owned already.
    ///
    /// While it lives, its shard's room serves it alone: other handles'
    /// submits spill past it, and a level is full to them once the other
    /// shards' lanes are. Its own submits spill into shared shards when
    /// its lane is full. Dropping it gives the shard back.
    ///
    /// ```
    /// # use convoy::{Request, Runtime};
    /// let rt = Runtime::builder().batch_fn(|xs: &[u32]| xs.to_vec()).build()?;
    /// let mut submitter = rt.handle().submitter().expect("a free shard");
    /// let tickets: Vec<_> = (0..100).map(|i| submitter.submit(Request::new(i))).collect::<Result<_, _>>()?;
    /// for (i, t) in tickets.into_iter().enumerate() {
    ///     assert_eq!(t.wait(), Ok(i as u32));
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn submitter(&self) -> Option<Submitter<I, O>> {
        let own = self.intake.exclusive()?;
        Some(Submitter {
            handle: self.clone(),
            own,
        })
    }

    /// `submit_with`, through `own` when given, else the shared intake.
    fn submit_through(
        &self,
        request: Request<I>,
        policy: InsertPolicy,
        own: Option<&mut ExclusiveProducer<Job<I, O>>>,
    ) -> Result<Ticket<O>, SubmitError<I>> {
        let now = Instant::now();
        let (job, ticket) = self.prepare(request, now)?;
        if self.sheds(&job) {
            return Err(self.shed(job));
        }
        let Some(_pass) = self.shared.gate.enter() else {
            return Err(refused(SubmitErrorKind::ShuttingDown, job));
        };
        let pushed = match own {
            Some(own) => own.push(job.priority, job, policy),
            None => self.intake.push(job.priority, job, policy),
        };
        match pushed {
            Ok(()) => {
                self.shared.doorbell.ring();
                Ok(ticket)
            }
            Err(full) => {
                self.shared.want_sweep();
                Err(refused(SubmitErrorKind::QueueFull, full.item))
            }
        }
    }

    /// Submits many requests under one policy. `AllOrNothing` accepts all or
    /// none; `Enqueue`/`Front` accept what fits. A request refused on its
    /// own (bad deadline, impossible cost, a shed level) is handed back with
    /// its kind; with `AllOrNothing` it makes the whole batch refused, and
    /// the others come back with the first such refusal's kind and a
    /// [`reason`](SubmitError::reason) saying so (a batch with a shed member
    /// is `Overloaded` throughout: retry later; one with an invalid member
    /// is not worth retrying as it is). An empty `requests` is an error of
    /// kind [`BatchSubmitErrorKind::EmptyBatch`].
    ///
    /// ```
    /// use convoy::{BatchSubmitErrorKind, InsertPolicy, Request, Runtime};
    /// let rt = Runtime::builder().batch_fn(|xs: &[u32]| xs.to_vec()).build()?;
    /// let h = rt.handle();
    /// let tickets = h
    ///     .submit_batch(vec![Request::new(1), Request::new(2)], InsertPolicy::AllOrNothing)
    ///     .map_err(|e| e.to_string())?;
    /// let outs: Vec<_> = tickets.into_iter().map(|t| t.wait()).collect();
    /// assert_eq!(outs, [Ok(1), Ok(2)]);
    /// let empty = h.submit_batch(Vec::new(), InsertPolicy::Enqueue).unwrap_err();
    /// assert_eq!(empty.kind, BatchSubmitErrorKind::EmptyBatch);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn submit_batch(
        &self,
        requests: Vec<Request<I>>,
        policy: InsertPolicy,
    ) -> Result<Vec<Ticket<O>>, BatchSubmitError<I, O>> {
        if requests.is_empty() {
            return Err(BatchSubmitError {
                kind: BatchSubmitErrorKind::EmptyBatch,
                accepted: Vec::new(),
                rejected: Vec::new(),
            });
        }
        let now = Instant::now();
        let mut jobs = Vec::with_capacity(requests.len());
        let mut tickets = Vec::with_capacity(requests.len());
        let mut rejected = Vec::new();
        for r in requests {
            match self.prepare(r, now) {
                Ok((job, _)) if self.sheds(&job) => {
                    rejected.push(self.shed(job));
                }
                Ok((job, ticket)) => {
                    jobs.push((job.priority, job));
                    tickets.push(ticket);
                }
                Err(e) => rejected.push(e),
            }
        }
        // Hands back every job not yet refused, with `kind` (and `reason`),
        // after those refused on their own.
        let refuse_all = |jobs: Vec<(Priority, Job<I, O>)>,
                          mut rejected: Vec<SubmitError<I>>,
                          kind,
                          reason: Option<String>| {
            rejected.extend(jobs.into_iter().map(|(_, j)| SubmitError {
                reason: reason.clone(),
                ..refused(kind, j)
            }));
            BatchSubmitError {
                kind: BatchSubmitErrorKind::Refused,
                accepted: Vec::new(),
                rejected,
            }
        };
        let whole = jobs.is_empty() || policy == InsertPolicy::AllOrNothing;
        if let Some(first) = rejected.first().filter(|_| whole) {
            // Every member was refused on its own, or an all-or-nothing
            // batch lost one: the rest go back for the first refusal's
            // reason, not as `QueueFull`. A batch refused because one
            // member was shed is worth retrying later, one with an invalid
            // member is not, and a caller reading any member's kind should
            // learn which.
            let (kind, why) = (first.kind, first.kind.as_str());
            let reason = format!(
                "refused with its all-or-nothing batch: another request in it was refused ({why})"
            );
            return Err(refuse_all(jobs, rejected, kind, Some(reason)));
        }
        let Some(_pass) = self.shared.gate.enter() else {
            return Err(refuse_all(
                jobs,
                rejected,
                SubmitErrorKind::ShuttingDown,
                None,
            ));
        };
        match self.intake.push_batch(jobs, policy) {
            Ok(_) if rejected.is_empty() => {
                self.shared.doorbell.ring();
                Ok(tickets)
            }
            Ok(_) => {
                self.shared.doorbell.ring();
                Err(BatchSubmitError {
                    kind: BatchSubmitErrorKind::Refused,
                    accepted: tickets,
                    rejected,
                })
            }
            Err(e) => {
                if e.inserted > 0 {
                    self.shared.doorbell.ring();
                }
                if matches!(e.reason, BatchRejectReason::Full) {
                    self.shared.want_sweep();
                }
                let kind = match e.reason {
                    BatchRejectReason::Oversized { .. }
                    | BatchRejectReason::Full
                    | BatchRejectReason::Empty => SubmitErrorKind::QueueFull,
                };
                // Tickets of refused jobs: their completers come back inside
                // the jobs and are dropped with them (delivering ShutDown to
                // tickets nobody holds), so keep only accepted tickets. The
                // intake hands refused jobs back in the order given, which
                // is the tickets' order, so one merge pass finds them (a
                // search per ticket was quadratic in the batch).
                let refused_completers: Vec<_> = e.rejected.into_iter().map(|(_, j)| j).collect();
                let mut next_refused = refused_completers.iter().peekable();
                let accepted = tickets
                    .into_iter()
                    .filter(|t| {
                        let refused = next_refused.next_if(|j| j.completer.is_for(t)).is_some();
                        !refused
                    })
                    .collect();
                debug_assert!(next_refused.peek().is_none(), "every refused job matched");
                rejected.extend(refused_completers.into_iter().map(|j| refused(kind, j)));
                Err(BatchSubmitError {
                    kind: BatchSubmitErrorKind::Refused,
                    accepted,
                    rejected,
                })
            }
        }
    }

    /// Whether submits at `level` are refused now because the queue runs
    /// late (`ordering.shed`; the rule is in [`Config::shed`](crate::Config::shed)),
    /// all but a dedup twin of a waiting group, which adds no work.
    /// A load balancer can route a shed level elsewhere before it tries.
    /// Advice: the collector updates it every pass, so a submit right
    /// after may see it otherwise.
    ///
    /// ```
    /// # use convoy::{Priority, Runtime};
    /// let rt = Runtime::builder().batch_fn(|xs: &[u32]| xs.to_vec()).build()?;
    /// assert!(!rt.handle().is_shed(Priority::Background), "an idle queue sheds nothing");
    /// assert!(!rt.handle().is_shed(Priority::Critical), "and Critical never");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_shed(&self, level: Priority) -> bool {
        self.shared.shedding.refuses(level)
    }

    /// Counters per priority and totals; lock-free. The same snapshot as
    /// [`Runtime::stats`](super::Runtime::stats), whose docs say what a caller can rely on.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot(|| self.intake.stats())
    }

    /// The largest cost a request may bring and still be accepted now:
    /// the largest `Up` worker's capacity, clipped by the batch limits.
    /// `None` while no worker is up. A caller can check a cost here before
    /// it builds an input that would only be refused (a trace row of a
    /// billion tokens), or validate up front as a server does with its
    /// maximum input length. It can change with the fleet and the config.
    ///
    /// ```
    /// # use convoy::{Config, Runtime};
    /// let rt = Runtime::builder().batch_fn(|xs: &[u32]| xs.to_vec()).build()?;
    /// let max = rt.handle().max_cost().expect("the default fleet is up");
    /// assert_eq!(u64::from(max.tokens), Config::default().batching.max_batch_tokens);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_cost(&self) -> Option<Cost> {
        max_cost(
            self.shared.fleet.load().max,
            &self.shared.knobs.load().batching,
        )
    }

    /// Whether `job` is refused because its level is shed: unless its
    /// dedup twin waits, when it adds no work, only a queue slot
    /// (`twins.rs`; a hint, which at worst admits one request of work or
    /// sheds a twin as if it had none).
    fn sheds(&self, job: &Job<I, O>) -> bool {
        self.shared.shedding.refuses(job.priority)
            && !job
                .dedup()
                .is_some_and(|k| self.shared.waiting_keys.contains(k))
    }

    /// Refuses `job`, whose level is shed (see `shed.rs`): counts
    /// it and hands its request back. A refusal also asks for a sweep, as
    /// a full queue's does: a cancelled request at the front of the queue
    /// makes it look later than it is until a sweep drops it.
    fn shed(&self, job: Job<I, O>) -> SubmitError<I> {
        self.shared.counters.shed(job.priority);
        self.shared.want_sweep();
        refused(SubmitErrorKind::Overloaded, job)
    }

    fn prepare(&self, request: Request<I>, now: Instant) -> Result<Prepared<I, O>, SubmitError<I>> {
        // The check `max_cost` answers for, made in place (see there).
        let max = self.shared.fleet.load().max;
        let cost = request.cost;
        let knobs = self.shared.knobs.load();
        let limits = knobs.batching;
        if u64::from(cost.tokens) > max.tokens.min(limits.max_batch_tokens)
            || cost.bytes > max.bytes.min(limits.max_batch_bytes)
            || max.slots == 0
        {
            return Err(SubmitError::new(SubmitErrorKind::CostNeverFits, request));
        }
        if let Err(reason) = self.executor.check(&request.input) {
            return Err(SubmitError {
                kind: SubmitErrorKind::Invalid,
                reason: Some(reason),
                request,
            });
        }
        if request.dedup_key.is_some() && !self.shared.dedup {
            return Err(SubmitError::new(SubmitErrorKind::DedupNotEnabled, request));
        }
        let deadline_at = match request.deadline {
            None => None,
            Some(Deadline::After(d)) if d.is_zero() => {
                return Err(SubmitError::new(SubmitErrorKind::DeadlinePassed, request));
            }
            Some(Deadline::After(d)) => Some(after(now, d)),
            Some(Deadline::At(t)) if t <= now => {
                return Err(SubmitError::new(SubmitErrorKind::DeadlinePassed, request));
            }
            Some(Deadline::At(t)) => Some(t),
        };
        // The level's default deadline applies when the request brings
        // none, and caps one it brings (it may be shorter, not longer).
        let default_at = knobs.default_deadline[request.priority.index()].map(|d| after(now, d));
        let deadline_at = match (deadline_at, default_at) {
            (Some(own), Some(default)) => Some(own.min(default)),
            (own, default) => own.or(default),
        };
        drop(knobs);
        if let Some(t) = request.tenant.as_deref() {
            if let Err(why) = check_tenant_id(t) {
                return Err(SubmitError {
                    kind: SubmitErrorKind::Invalid,
                    reason: Some(why),
                    request,
                });
            }
        }
        // Last of the checks: a request refused after this gives its
        // quota back when its hold drops.
        let hold = match self
            .shared
            .tenants
            .hold(request.tenant.as_deref(), cost.tokens)
        {
            Ok(hold) => hold,
            Err(refusal) => {
                let what = match refusal.exceeded {
                    QuotaExceeded::Requests { limit } => format!("{limit} requests"),
                    QuotaExceeded::Tokens { limit } => format!("{limit} tokens"),
                };
                return Err(SubmitError {
                    kind: SubmitErrorKind::TenantQuota,
                    reason: Some(format!(
                        "tenant {:?} has its quota of {what} queued",
                        refusal.tenant
                    )),
                    request,
                });
            }
        };
        let (completer, ticket) = ticket::pair();
        let job = Job {
            deadline_ns: deadline_at.map_or(u64::MAX, |t| self.shared.ns_since_epoch(t)),
            input: request.input,
            completer,
            priority: request.priority,
            deadline: request.deadline,
            tokens: cost.tokens,
            bytes: cost.bytes,
            has_dedup: request.dedup_key.is_some(),
            dedup_key: request.dedup_key.unwrap_or(0),
            submitted: now,
            received: request.received,
            arrival_ns: 0,
            expire_at: u64::MAX,
            followers: Vec::new(),
            hold,
            displaced: 0,
        };
        Ok((job, ticket))
    }
}

fn refused<I, O>(kind: SubmitErrorKind, job: Job<I, O>) -> SubmitError<I> {
    // The completer inside is dropped here; nobody holds its ticket (the
    // caller gets the request back instead), so its ShutDown goes nowhere.
    SubmitError::new(kind, job.into_request())
}

/// What [`Handle::max_cost`] says, from the fleet's largest capacity and
/// the batch limits. Submit's `prepare` makes the same check in place:
/// calling this there cost 3% of the runtime round trip (1.23 against
/// 1.27 M req/s, three alternated runs). `tests/runtime.rs`
/// `max_cost_follows_the_fleet_and_the_limits` holds the two together: a
/// cost at the answer is accepted, one token more refused.
fn max_cost(max: Capacity, limits: &BatchingConfig) -> Option<Cost> {
    (max.slots > 0).then(|| Cost {
        // A worker may hold more than `u32::MAX` tokens; no cost can.
        tokens: u32::try_from(max.tokens.min(limits.max_batch_tokens)).unwrap_or(u32::MAX),
        bytes: max.bytes.min(limits.max_batch_bytes),
    })
}
