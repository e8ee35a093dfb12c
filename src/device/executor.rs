//! How a batch runs: the `Executor` trait, the pipelined [`Lane`] a
//! device executor gives each worker, and the CPU closure executor.

use std::fmt;

use super::stop::{Interruptible, Stop};
use crate::outcome::ExecutorError;

/// Runs one batch on one worker. Called on that worker's own thread, so a
/// slow batch never blocks the collector. Return exactly one output per
/// input, in order; anything else (an `Err`, a panic, a wrong count) fails
/// every request of the batch with `Failure::ExecutorFailed`, and the worker
/// lives on.
pub trait Executor<I, O>: Send + Sync + 'static {
    /// Runs `inputs` as one batch on worker `worker`. A `String` or
    /// `&str` error converts with `?` or `.into()`; another error type
    /// through [`ExecutorError::from_error`], which keeps it as the source.
    fn execute(&self, worker: usize, inputs: &[I]) -> Result<Vec<O>, ExecutorError>;

    /// Checks one input at submit, on the caller's thread, so that a
    /// request this executor could never run (a token outside the
    /// embedding table, a request over the maximum length) is refused
    /// with `SubmitErrorKind::Invalid` and handed back, instead of failing
    /// a whole batch later. Accepts everything by default.
    fn check(&self, _input: &I) -> Result<(), String> {
        Ok(())
    }

    /// The tokens `output`'s request really cost, when this executor knows
    /// better than the cost the request declared (a generation that
    /// stopped early, a prompt partly cached). Tenant fairness charges a
    /// request its declared tokens at launch and corrects the charge by
    /// the difference when this says; the tenant's served tokens follow.
    /// `None` (the default): the declared cost stands.
    fn served_tokens(&self, _output: &O) -> Option<u32> {
        None
    }

    /// How this executor's running batches may stop before they finish:
    /// never (the default), when every caller has gone, or also when the
    /// collector asks for more urgent work (a re-run is safe). Anything
    /// but [`Interruptible::No`] makes the worker call
    /// [`execute_until`](Executor::execute_until) instead of `execute`.
    /// A device lane's batches are never interrupted.
    fn interruptible(&self) -> Interruptible {
        Interruptible::No
    }

    /// Runs `inputs` as one batch, checking `stop` at this executor's own
    /// boundaries (between chunks of a long job, steps of a multi-step
    /// one). Returns one entry per input: `Some(output)` for a request it
    /// finished, `None` for one it left unfinished because
    /// [`Stop::requested`] said so. A stopped batch releases its capacity
    /// at once; its unfinished requests end cancelled (every caller had
    /// gone) or wait again (preempted, [`Interruptible::Rerun`]). A `None`
    /// with no stop requested breaks that contract: those requests fail
    /// with an error naming this executor. The default runs
    /// [`execute`](Executor::execute) to the end.
    ///
    /// ```
    /// use convoy::{Executor, ExecutorError, Interruptible, Stop};
    /// /// Squares its inputs one at a time, stopping between them.
    /// struct Steps;
    /// impl Executor<u64, u64> for Steps {
    ///     fn execute(&self, w: usize, xs: &[u64]) -> Result<Vec<u64>, ExecutorError> {
    ///         let all = self.execute_until(w, xs, &Stop::never())?;
    ///         Ok(all.into_iter().flatten().collect())
    ///     }
    ///     fn interruptible(&self) -> Interruptible {
    ///         Interruptible::Rerun
    ///     }
    ///     fn execute_until(&self, _: usize, xs: &[u64], stop: &Stop<'_>)
    ///         -> Result<Vec<Option<u64>>, ExecutorError> {
    ///         let mut out = Vec::with_capacity(xs.len());
    ///         for x in xs {
    ///             if stop.requested() {
    ///                 out.resize(xs.len(), None); // the rest unfinished
    ///                 break;
    ///             }
    ///             out.push(Some(x * x));
    ///         }
    ///         Ok(out)
    ///     }
    /// }
    /// assert_eq!(Steps.execute(0, &[2, 3]).unwrap(), [4, 9]);
    /// ```
    fn execute_until(
        &self,
        worker: usize,
        inputs: &[I],
        stop: &Stop<'_>,
    ) -> Result<Vec<Option<O>>, ExecutorError> {
        let _ = stop;
        Ok(self
            .execute(worker, inputs)?
            .into_iter()
            .map(Some)
            .collect())
    }

    /// A name for errors about this executor (its type by default).
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }

    /// A pipelined lane for worker `worker`, for an executor that can
    /// start a batch and return before it is done (a GPU stream). The
    /// worker then keeps up to [`Lane::depth`] batches in flight, so the
    /// device runs batch k while batch k+1 is copied in. `None` (the
    /// default): the worker calls [`execute`](Executor::execute) and waits.
    /// Called once per worker, on that worker's thread.
    fn lane(&self, _worker: usize) -> Option<Box<dyn Lane<I, O>>> {
        None
    }
}

/// One worker's own pipeline into a device. Owned by that worker's thread
/// (`&mut self`, no lock); batches finish in the order they were launched.
///
/// Every [`launch`](Lane::launch) that returned `Ok` is matched by exactly
/// one [`finish`](Lane::finish), which returns that batch's outputs: the
/// worker relies on this to hand each output to the right tickets.
pub trait Lane<I, O>: Send {
    /// How many launched, unfinished batches this lane holds at most (≥ 1).
    fn depth(&self) -> usize;

    /// Starts `inputs` as one batch and returns without waiting for it.
    /// An `Err` means nothing was launched: that batch alone fails.
    fn launch(&mut self, inputs: &[I]) -> Result<(), ExecutorError>;

    /// Whether the oldest launched batch is done, without waiting.
    fn is_ready(&mut self) -> bool;

    /// Waits for the oldest launched batch and returns its outputs, one
    /// per input, in order.
    fn finish(&mut self) -> Result<Vec<O>, ExecutorError>;
}

/// A CPU executor from a closure `Fn(&[I]) -> Vec<O>`.
pub struct BatchFn<F>(pub F);

impl<F> fmt::Debug for BatchFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BatchFn(..)")
    }
}

impl<I, O, F> Executor<I, O> for BatchFn<F>
where
    F: Fn(&[I]) -> Vec<O> + Send + Sync + 'static,
{
    fn execute(&self, _worker: usize, inputs: &[I]) -> Result<Vec<O>, ExecutorError> {
        Ok((self.0)(inputs))
    }
}
