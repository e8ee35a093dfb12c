//! The frontend's executor: each local worker stands for one remote
//! worker. A batch is granted by the pool (through the committer, with
//! the other batches of its pass), then sent to its worker host; one the
//! pool denies, or a host refuses as over capacity, never ran and waits
//! again with its arrival time (`ExecutorError::not_run`). A batch whose
//! host vanished fails with [`WorkerLost`], naming the worker: it may
//! have run there, so it is never sent twice.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use convoy::{Executor, ExecutorError, Interruptible, Stop};
use crossbeam::channel::Sender;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::committer::{Msg, PoolCounters, Verdict};
use crate::sync::Remote;
use crate::wire::{self, HostError};

/// A batch's worker host went away (connection refused or dropped, no
/// answer within the batch timeout): its requests fail with this as the
/// source of their `ExecutorFailed` error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("worker {worker} at {addr} lost: {reason}")]
pub struct WorkerLost {
    /// The worker's id (`HOST/LANE`).
    pub worker: String,
    /// Its host's address.
    pub addr: String,
    /// What the transport said.
    pub reason: String,
}

/// How long a worker thread waits before handing back a batch the pool
/// denied, so that a full pool is asked again at this pace rather than
/// at once (the local capacity follows the pool's room at the next
/// commit anyway).
const DENIED_PAUSE: Duration = Duration::from_millis(2);

/// A frontend's check of one input at submit.
pub(crate) type Check<I> = Box<dyn Fn(&I) -> Result<(), String> + Send + Sync>;

pub(crate) struct RemoteExecutor<I> {
    pub(crate) remotes: Arc<ArcSwap<Vec<Remote>>>,
    pub(crate) commits: Sender<Msg>,
    pub(crate) http: reqwest::Client,
    pub(crate) tokio: tokio::runtime::Handle,
    pub(crate) tokens_of: fn(&I) -> u32,
    pub(crate) check: Check<I>,
    pub(crate) timeout: Duration,
    pub(crate) id: Arc<ArcSwap<String>>,
    pub(crate) counters: Arc<PoolCounters>,
}

/// What a send to a host came to.
enum Sent<O> {
    Done(Vec<O>),
    /// The host refused it unrun (over capacity).
    Refused(String),
    /// The host answered with an error; the batch did not run or failed.
    Failed(String),
    /// No answer: the host is gone.
    Lost(String),
}

impl<I, O> Executor<I, O> for RemoteExecutor<I>
where
    I: Serialize + Send + Sync + 'static,
    O: DeserializeOwned + Send + 'static,
{
    fn check(&self, input: &I) -> Result<(), String> {
        (self.check)(input)
    }

    fn execute(&self, worker: usize, inputs: &[I]) -> Result<Vec<O>, ExecutorError> {
        let out = self.execute_until(worker, inputs, &Stop::never())?;
        Ok(out.into_iter().flatten().collect())
    }

    /// A batch the pool denied never ran, so waiting again is safe; a
    /// running remote batch is not stopped (it finishes on its host).
    fn interruptible(&self) -> Interruptible {
        Interruptible::Rerun
    }

    fn execute_until(
        &self,
        worker: usize,
        inputs: &[I],
        _stop: &Stop<'_>,
    ) -> Result<Vec<Option<O>>, ExecutorError> {
        let remote = self.remotes.load().get(worker).cloned().ok_or_else(|| {
            ExecutorError::new(format!("no remote worker for local worker {worker}"))
        })?;
        let slots = u32::try_from(inputs.len()).unwrap_or(u32::MAX);
        let tokens: u64 = inputs.iter().map(|i| u64::from((self.tokens_of)(i))).sum();
        let (reply, verdict) = crossbeam::channel::bounded(1);
        let asked = Msg::Ask {
            worker: remote.id.clone(),
            slots,
            tokens,
            reply,
        };
        if self.commits.send(asked).is_err() {
            return Err(ExecutorError::not_run("the frontend is leaving the pool"));
        }
        match verdict.recv() {
            Ok(Verdict::Granted) => {}
            Ok(Verdict::Denied) => {
                std::thread::sleep(DENIED_PAUSE);
                return Err(ExecutorError::not_run(format!(
                    "pool: no room on {} now",
                    remote.id
                )));
            }
            Ok(Verdict::Unreachable(why)) => {
                std::thread::sleep(DENIED_PAUSE * 10);
                return Err(ExecutorError::not_run(format!("pool unreachable: {why}")));
            }
            Err(_) => return Err(ExecutorError::not_run("the frontend is leaving the pool")),
        }
        let sent = self.send::<O>(&remote, inputs, tokens);
        let _ = self.commits.send(Msg::Release {
            worker: remote.id.clone(),
            slots,
            tokens,
        });
        match sent {
            Sent::Done(outputs) => Ok(outputs.into_iter().map(Some).collect()),
            Sent::Refused(why) => {
                self.counters.host_refusals.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(DENIED_PAUSE);
                Err(ExecutorError::not_run(format!("{}: {why}", remote.id)))
            }
            Sent::Failed(why) => Err(ExecutorError::new(format!("{}: {why}", remote.id))),
            Sent::Lost(reason) => {
                self.counters.lost_batches.fetch_add(1, Ordering::Relaxed);
                let lost = WorkerLost {
                    worker: remote.id.clone(),
                    addr: remote.info.addr.clone(),
                    reason,
                };
                Err(ExecutorError::with_source(lost.to_string(), lost))
            }
        }
    }

    fn name(&self) -> &str {
        "convoy_cluster::RemoteExecutor"
    }
}

impl<I: Serialize> RemoteExecutor<I> {
    fn send<O: DeserializeOwned>(&self, remote: &Remote, inputs: &[I], tokens: u64) -> Sent<O> {
        let body = match wire::encode(inputs) {
            Ok(b) => b,
            Err(e) => return Sent::Failed(format!("inputs do not encode: {e}")),
        };
        let url = format!("http://{}/v1/batch/{}", remote.info.addr, remote.info.lane);
        let request = self
            .http
            .post(url)
            .header(wire::TOKENS, tokens)
            .header(wire::FRONTEND, self.id.load().as_str())
            .header(reqwest::header::CONTENT_TYPE, wire::POSTCARD)
            .timeout(self.timeout)
            .body(body);
        self.tokio.block_on(async move {
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) => return Sent::Lost(e.to_string()),
            };
            let status = response.status();
            let bytes = match response.bytes().await {
                Ok(b) => b,
                Err(e) => return Sent::Lost(e.to_string()),
            };
            if status.is_success() {
                return match wire::decode::<Vec<O>>(&bytes) {
                    Ok(out) => Sent::Done(out),
                    Err(e) => Sent::Failed(format!("outputs do not decode: {e}")),
                };
            }
            let said = serde_json::from_slice::<HostError>(&bytes).unwrap_or_else(|_| HostError {
                error: "http".into(),
                message: format!("HTTP {status}"),
            });
            if said.error == "over_capacity" {
                Sent::Refused(said.message)
            } else {
                Sent::Failed(format!("{}: {}", said.error, said.message))
            }
        })
    }
}
