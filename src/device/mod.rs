//! How a batch runs: the [`Executor`](crate::Executor) trait and its
//! pipelined [`Lane`](crate::Lane), the built-in pool-dense model (the CPU
//! reference), a device kernel's source and packing, and the CUDA executor
//! (feature `cuda`).

pub(crate) mod chunked;
#[cfg(feature = "cuda")]
pub mod cuda;
pub(crate) mod executor;
pub mod kernel;
pub mod model;
pub(crate) mod stop;
