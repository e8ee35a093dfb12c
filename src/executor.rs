//! How a batch runs: the `Executor` trait and the CPU closure executor.

use std::fmt;

/// Runs one batch on one worker. Called on that worker's own thread, so a
/// slow batch never blocks the collector. Return exactly one output per
/// input, in order; anything else (an `Err`, a panic, a wrong count) fails
/// every request of the batch with `Failure::ExecutorFailed`, and the worker
/// lives on.
pub trait Executor<I, O>: Send + Sync + 'static {
    /// Runs `inputs` as one batch on worker `worker`.
    fn execute(&self, worker: usize, inputs: &[I]) -> Result<Vec<O>, String>;
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
    fn execute(&self, _worker: usize, inputs: &[I]) -> Result<Vec<O>, String> {
        Ok((self.0)(inputs))
    }
}
