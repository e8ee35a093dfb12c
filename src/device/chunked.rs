//! An adapter that makes any side-effect-free executor interruptible: it
//! runs a batch as chunks of at most `chunk` requests and checks the stop
//! signal between chunks, so a long batch stops within one chunk's time
//! when more urgent work needs its worker, or when every caller has gone.

use super::executor::Executor;
use super::stop::{Interruptible, Stop};
use crate::outcome::ExecutorError;

/// Runs `inner`'s batches in chunks, stopping between them when asked
/// (declares [`Interruptible::Rerun`]: use it only for an executor whose
/// [`execute`](Executor::execute) has no side effect a second run would
/// repeat). Smaller chunks stop sooner and batch less: one chunk's time is
/// what an urgent request waits for a running batch.
///
/// ```
/// use convoy::{BatchFn, Chunked, Executor, Interruptible, Stop, StopTicket};
/// let ex = Chunked::new(BatchFn(|xs: &[u32]| xs.iter().map(|x| x + 1).collect()), 2);
/// assert_eq!(ex.interruptible(), Interruptible::Rerun);
/// assert_eq!(ex.execute(0, &[1, 2, 3]).unwrap(), [2, 3, 4]);
/// // Asked to stop: the first chunk runs, the rest is left unfinished.
/// let ticket = StopTicket::new();
/// ticket.ask(9);
/// let gone = || false;
/// let out = ex.execute_until(0, &[1, 2, 3], &Stop::new(&ticket, 9, &gone)).unwrap();
/// assert_eq!(out, [Some(2), Some(3), None]);
/// ```
#[derive(Debug, Clone)]
pub struct Chunked<E> {
    inner: E,
    chunk: usize,
}

impl<E> Chunked<E> {
    /// `inner`, run `chunk` requests at a time (at least 1).
    pub fn new(inner: E, chunk: usize) -> Self {
        Self {
            inner,
            chunk: chunk.max(1),
        }
    }
}

impl<I: 'static, O: 'static, E: Executor<I, O>> Executor<I, O> for Chunked<E> {
    fn execute(&self, worker: usize, inputs: &[I]) -> Result<Vec<O>, ExecutorError> {
        self.inner.execute(worker, inputs)
    }

    fn check(&self, input: &I) -> Result<(), String> {
        self.inner.check(input)
    }

    fn served_tokens(&self, output: &O) -> Option<u32> {
        self.inner.served_tokens(output)
    }

    fn interruptible(&self) -> Interruptible {
        Interruptible::Rerun
    }

    /// The first chunk always runs (a batch asked to stop before it
    /// started would only be asked again), then one chunk per check.
    fn execute_until(
        &self,
        worker: usize,
        inputs: &[I],
        stop: &Stop<'_>,
    ) -> Result<Vec<Option<O>>, ExecutorError> {
        let mut out = Vec::with_capacity(inputs.len());
        for (k, chunk) in inputs.chunks(self.chunk).enumerate() {
            if k > 0 && stop.requested() {
                break;
            }
            let done = self.inner.execute(worker, chunk)?;
            if done.len() != chunk.len() {
                return Err(ExecutorError::new(format!(
                    "executor returned {} outputs for a chunk of {}",
                    done.len(),
                    chunk.len()
                )));
            }
            out.extend(done.into_iter().map(Some));
        }
        out.resize_with(inputs.len(), || None);
        Ok(out)
    }

    fn name(&self) -> &str {
        self.inner.name()
    }
}
