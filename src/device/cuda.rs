//! The CUDA executor: one batched kernel launch per worker batch, through
//! cudarc, with the driver and NVRTC loaded at run time.
//!
//! The module is compiled once and the weights uploaded once, in
//! [`CudaExecutor::new`]. Each worker then gets its own [`Lane`]: a stream
//! and [`CudaConfig::depth`] staging slots, each with pinned host buffers and
//! device buffers that are reused from batch to batch (they only grow, when
//! a batch is larger than any before it). A batch is packed into a slot's
//! pinned buffer, copied in, launched and copied out asynchronously, with an
//! event recorded behind it; the worker launches the next batch into the
//! next slot while the device runs this one, and fans the outputs out to
//! tickets when the event completes.
//!
//! On a machine without libcuda, NVRTC or a device, [`CudaExecutor::new`]
//! returns a [`CudaError`] that says which is missing; nothing panics (the
//! libraries' presence is checked before any other cudarc call, since
//! cudarc panics when a library it needs cannot be loaded).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cudarc::driver::{
    result, sys, CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr,
    DevicePtrMut, LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use cudarc::nvrtc::{CompileError, CompileOptions};

use crate::config::{Capacity, WorkerSpec};
use crate::device::executor::{Executor, Lane};
use crate::device::kernel::{check_c_strings, KernelSpec, Packed};
use crate::outcome::ExecutorError;

/// Why the CUDA executor could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CudaError {
    /// libcuda (the driver) is not installed or not loadable.
    #[error("no CUDA driver: libcuda could not be loaded (no NVIDIA driver on this machine)")]
    DriverMissing,
    /// NVRTC (the run-time compiler, `libnvrtc.so.13`) is not loadable.
    #[error("no NVRTC: libnvrtc could not be loaded (the CUDA 13 runtime compiler is needed to build kernels)")]
    NvrtcMissing,
    /// The driver is there but the device is not.
    #[error("no CUDA device {ordinal}: {reason}")]
    NoDevice {
        /// The device asked for.
        ordinal: usize,
        /// What the driver said.
        reason: String,
    },
    /// The kernel source did not compile; `log` is NVRTC's.
    #[error("kernel `{function}` failed to compile:\n{log}")]
    Compile {
        /// The kernel function.
        function: String,
        /// NVRTC's log.
        log: String,
    },
    /// The spec or config is unusable (zero width, depth 0, ...).
    #[error("invalid CUDA executor setup: {0}")]
    Invalid(String),
    /// A driver call failed.
    #[error("CUDA driver error while {during}: {message}")]
    Driver {
        /// What convoy was doing.
        during: &'static str,
        /// The driver's error.
        message: String,
    },
}

fn driver(during: &'static str) -> impl FnOnce(result::DriverError) -> CudaError {
    move |e| CudaError::Driver {
        during,
        message: format!("{e:?}"),
    }
}

/// Checks that libcuda and NVRTC can be loaded and that device `ordinal`
/// exists, without touching anything else: what a caller asks before
/// choosing GPU or CPU workers.
///
/// ```
/// match convoy::cuda::probe(0) {
///     Ok(name) => println!("GPU: {name}"),
///     Err(e) => println!("no GPU: {e}"), // this machine, say
/// }
/// ```
pub fn probe(ordinal: usize) -> Result<String, CudaError> {
    // SAFETY: both functions only try to dlopen the library under its known
    // names and drop the handle; they call nothing inside it. This is the
    // check cudarc asks for before any call that would otherwise panic
    // when the library is missing.
    if !unsafe { sys::is_culib_present() } {
        return Err(CudaError::DriverMissing);
    }
    // SAFETY: as above, for NVRTC.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::NvrtcMissing);
    }
    let no_device = |reason: String| CudaError::NoDevice { ordinal, reason };
    let count = CudaContext::device_count().map_err(|e| no_device(format!("{e:?}")))?;
    if ordinal >= count.max(0) as usize {
        return Err(no_device(format!("the driver sees {count} device(s)")));
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| no_device(format!("{e:?}")))?;
    ctx.name().map_err(|e| no_device(format!("{e:?}")))
}

/// How the CUDA executor sizes its lanes and its workers' capacity.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaConfig {
    /// Device ordinal.
    pub device: usize,
    /// Batches in flight per worker (≥ 1; 2 lets the device run batch k
    /// while batch k+1 is copied in).
    pub depth: usize,
    /// Requests per batch the staging buffers start sized for (they grow
    /// if a batch is larger); also the slots a worker advertises per
    /// batch in flight.
    pub max_batch: usize,
    /// Words per batch the staging buffers start sized for.
    pub max_batch_words: usize,
    /// Tokens a GPU worker may hold at once (its ledger capacity), capped
    /// by what its share of free device memory can stage.
    pub token_budget: u64,
    /// Fill each batch's device output with NaN before the launch, so a
    /// row the kernel failed to write shows. For tests.
    pub poison_outputs: bool,
}

impl Default for CudaConfig {
    fn default() -> Self {
        Self {
            device: 0,
            depth: 2,
            max_batch: 512,
            max_batch_words: 512 * 512,
            token_budget: 1 << 20,
            poison_outputs: false,
        }
    }
}

/// Device time counters, summed over all lanes. Statistics only: each is
/// an independent relaxed counter read for a report, never used to order
/// anything.
#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    requests: AtomicU64,
    /// Kernel alone, between the events around the launch.
    kernel_ns: AtomicU64,
    /// Copy in + kernel + copy out.
    device_ns: AtomicU64,
}

/// What the device has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DeviceStats {
    /// Batches finished.
    pub batches: u64,
    /// Requests in them.
    pub requests: u64,
    /// Time in the kernel itself.
    pub kernel: std::time::Duration,
    /// Time from copy-in start to copy-out end.
    pub device: std::time::Duration,
}

struct Inner<I, O> {
    ctx: Arc<CudaContext>,
    function: CudaFunction,
    weights: Vec<CudaSlice<f32>>,
    spec: KernelSpec<I, O>,
    config: CudaConfig,
    counters: Counters,
}

/// Runs batches of `I` through a CUDA kernel described by a
/// [`KernelSpec`]. Cheap to clone; every clone shares the module and the
/// weights.
///
/// ```no_run
/// use convoy::cuda::{CudaConfig, CudaExecutor};
/// use convoy::kernel::KernelSpec;
/// use convoy::{Config, Runtime};
///
/// let model = convoy::model::PoolDense::seeded(32_000, 256, 7).unwrap();
/// let gpu = CudaExecutor::new(KernelSpec::pool_dense(&model, 8192), CudaConfig::default())?;
/// let config = Config { workers: vec![gpu.worker_spec("gpu0")?], ..Config::default() };
/// let rt = Runtime::builder().config(config).executor(gpu).build().unwrap();
/// let out = rt.handle().submit(convoy::Request::new(vec![1u32, 2, 3])).unwrap().wait();
/// assert_eq!(out.unwrap().len(), 256);
/// # Ok::<(), convoy::cuda::CudaError>(())
/// ```
pub struct CudaExecutor<I, O> {
    inner: Arc<Inner<I, O>>,
}

impl<I, O> Clone for CudaExecutor<I, O> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<I, O> std::fmt::Debug for CudaExecutor<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaExecutor")
            .field("spec", &self.inner.spec)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Compiles CUDA C `source` to PTX for compute capability `(major, minor)`
/// with NVRTC alone, and checks that the PTX defines the kernel `function`.
///
/// No driver and no device are needed, so a kernel can be checked where
/// it is built (CI compiles every bundled kernel this way, for sm_75,
/// sm_80 and the H100's sm_90), and a source that names its function
/// wrongly, or forgets `extern "C"` (the name is then mangled), fails here
/// with the name rather than later at load with a bare driver error.
/// `CudaExecutor::new` compiles through this for its device's capability.
///
/// ```
/// use convoy::cuda::{compile_ptx, CudaError};
/// let source = r#"extern "C" __global__ void twice(float *x) { x[threadIdx.x] *= 2.0f; }"#;
/// match compile_ptx(source, "twice", (9, 0)) {
///     Ok(ptx) => assert!(ptx.to_src().contains(".entry twice")),
///     Err(CudaError::NvrtcMissing) => println!("no NVRTC here"), // this machine, say
///     Err(e) => panic!("{e}"),
/// }
/// ```
pub fn compile_ptx(
    source: &str,
    function: &str,
    (major, minor): (i32, i32),
) -> Result<cudarc::nvrtc::Ptx, CudaError> {
    check_c_strings(source, function).map_err(CudaError::Invalid)?;
    // SAFETY: only tries to dlopen NVRTC under its known names and drops
    // the handle; cudarc panics on the compile below if it is missing.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::NvrtcMissing);
    }
    let options = CompileOptions {
        options: vec![format!("--gpu-architecture=compute_{major}{minor}")],
        name: Some(format!("{function}.cu")),
        ..CompileOptions::default()
    };
    let ptx =
        cudarc::nvrtc::compile_ptx_with_opts(source, options).map_err(|e| CudaError::Compile {
            function: function.to_owned(),
            log: compile_log(&e),
        })?;
    if !ptx
        .to_src()
        .lines()
        .any(|line| entry_name(line) == Some(function))
    {
        return Err(CudaError::Compile {
            function: function.to_owned(),
            log: format!(
                "the source compiled, but defines no kernel `{function}`: is it declared `extern \"C\" __global__` under that name?"
            ),
        });
    }
    Ok(ptx)
}

/// Compiles `spec`'s kernel for compute capability `(major, minor)` with
/// NVRTC alone (see [`compile_ptx`]) and checks its parameters against
/// the [kernel ABI](crate::device::kernel#the-kernel-abi): one pointer per weight
/// buffer, then `words`, `offsets` (pointers), `batch` (a 32-bit int),
/// `out` (a pointer), `width` (a 32-bit int).
///
/// A launch passes those arguments whatever the kernel declares, and the
/// device would read a mismatch as garbage (a weight missing from the
/// signature shifts every argument after it); this refuses it, with both
/// lists, before any device is touched.
///
/// ```
/// use convoy::cuda::{compile_kernel, CudaError};
/// use convoy::kernel::KernelSpec;
/// use convoy::model::PoolDense;
/// let spec = KernelSpec::pool_dense(&PoolDense::seeded(100, 8, 1).unwrap(), 64);
/// match compile_kernel(&spec, (9, 0)) {
///     Ok(ptx) => assert!(ptx.to_src().contains(".target sm_90")),
///     Err(CudaError::NvrtcMissing) => println!("no NVRTC here"),
///     Err(e) => panic!("{e}"),
/// }
/// ```
pub fn compile_kernel<I, O>(
    spec: &KernelSpec<I, O>,
    capability: (i32, i32),
) -> Result<cudarc::nvrtc::Ptx, CudaError> {
    spec.validate().map_err(CudaError::Invalid)?;
    let ptx = compile_ptx(&spec.source, &spec.function, capability)?;
    let want = abi_params(spec.weights.len());
    let got = entry_params(&ptx.to_src(), &spec.function).unwrap_or_default();
    if got != want {
        let list = |ps: &[Param]| {
            ps.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(CudaError::Invalid(format!(
            "kernel `{}` takes ({}), but convoy launches it with ({}): {} weight pointer(s), then words, offsets, batch, out, width",
            spec.function,
            list(&got),
            list(&want),
            spec.weights.len()
        )));
    }
    Ok(ptx)
}

/// A kernel parameter as PTX declares it, by what a launch must pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    /// 64 bits: a pointer (or a 64-bit integer, which a launch cannot tell
    /// from one).
    Bits64,
    /// 32 bits: an `int` or `unsigned` (or a `float`, kept apart below).
    Int32,
    /// A 32-bit float.
    Float32,
    /// Anything else: a struct (`.b8 name[n]`), a half, a double...
    Other,
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Param::Bits64 => "pointer",
            Param::Int32 => "int",
            Param::Float32 => "float",
            Param::Other => "other",
        })
    }
}

/// What the ABI passes for `weights` weight buffers.
fn abi_params(weights: usize) -> Vec<Param> {
    let mut ps = vec![Param::Bits64; weights + 2];
    ps.extend([Param::Int32, Param::Bits64, Param::Int32]);
    ps
}

/// The parameters of entry `function` in PTX text, or `None` if it has no
/// such entry. NVRTC writes them as `.param .u64 f_param_0,` one per
/// line (with `.ptr .global .align n` before the name on some targets).
fn entry_params(ptx: &str, function: &str) -> Option<Vec<Param>> {
    let start = ptx
        .lines()
        .position(|line| entry_name(line) == Some(function))?;
    let decl: String = ptx
        .lines()
        .skip(start)
        .take_while(|line| !line.trim_start().starts_with('{'))
        .collect::<Vec<_>>()
        .join(" ");
    let open = decl.find('(')?;
    let close = decl[open..].find(')')? + open;
    Some(
        decl[open + 1..close]
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                let ty = p
                    .split_whitespace()
                    .skip_while(|w| *w != ".param")
                    .nth(1)
                    .unwrap_or("");
                if p.contains('[') {
                    Param::Other
                } else {
                    match ty {
                        ".u64" | ".s64" | ".b64" => Param::Bits64,
                        ".u32" | ".s32" | ".b32" => Param::Int32,
                        ".f32" => Param::Float32,
                        _ => Param::Other,
                    }
                }
            })
            .collect(),
    )
}

/// The name a PTX line declares with `.entry`, if it declares one.
fn entry_name(line: &str) -> Option<&str> {
    let name = line
        .split_whitespace()
        .skip_while(|w| *w != ".entry")
        .nth(1)?;
    name.split('(').next()
}

/// NVRTC's log out of a compile error, or its debug form.
fn compile_log(e: &CompileError) -> String {
    match e {
        CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
        other => format!("{other:?}"),
    }
}

impl<I: Send + Sync + 'static, O: Send + 'static> CudaExecutor<I, O> {
    /// Compiles `spec`'s kernel for device `config.device` and uploads its
    /// weights. Fails with a typed error, never a panic, when the driver,
    /// NVRTC or the device is missing or the source does not compile.
    pub fn new(spec: KernelSpec<I, O>, config: CudaConfig) -> Result<Self, CudaError> {
        spec.validate().map_err(CudaError::Invalid)?;
        if spec.shared_bytes > 48 * 1024 {
            return Err(CudaError::Invalid(format!(
                "{} bytes of shared memory per block is over the 48 KiB a launch gets without opting in",
                spec.shared_bytes
            )));
        }
        if config.depth == 0 || config.max_batch == 0 {
            return Err(CudaError::Invalid(
                "depth and max_batch must be at least 1".into(),
            ));
        }
        probe(config.device)?;
        let ctx = CudaContext::new(config.device).map_err(driver("opening the device"))?;
        let capability = ctx
            .compute_capability()
            .map_err(driver("reading the compute capability"))?;
        let ptx = compile_kernel(&spec, capability)?;
        let module = ctx.load_module(ptx).map_err(driver("loading the module"))?;
        let function = module
            .load_function(&spec.function)
            .map_err(driver("finding the kernel function in the module"))?;
        let stream = ctx.default_stream();
        let weights = spec
            .weights
            .iter()
            .map(|w| stream.clone_htod(w))
            .collect::<Result<Vec<_>, _>>()
            .map_err(driver("uploading the weights"))?;
        // Every lane's stream reads the weights: they must be complete
        // before the first launch anywhere.
        stream
            .synchronize()
            .map_err(driver("uploading the weights"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                ctx,
                function,
                weights,
                spec,
                config,
                counters: Counters::default(),
            }),
        })
    }

    /// The capacity one GPU worker advertises to the ledger: `depth ×
    /// max_batch` slots, the token budget capped by a quarter of the
    /// device's free memory at 4 bytes a word, and that quarter as bytes.
    /// A quarter leaves room for a few workers on one device.
    pub fn capacity(&self) -> Result<Capacity, CudaError> {
        let (free, _total) = self
            .inner
            .ctx
            .mem_get_info()
            .map_err(driver("reading free device memory"))?;
        let share = (free / 4) as u64;
        let c = &self.inner.config;
        Ok(Capacity {
            slots: u32::try_from(c.depth.saturating_mul(c.max_batch)).unwrap_or(u32::MAX),
            tokens: c.token_budget.min(share / 4).max(1),
            bytes: share,
        })
    }

    /// A worker spec named `name` with [`capacity`](Self::capacity).
    pub fn worker_spec(&self, name: &str) -> Result<WorkerSpec, CudaError> {
        Ok(WorkerSpec {
            name: name.to_owned(),
            capacity: self.capacity()?,
            speed: 1.0,
            cost_per_hour: 0.0,
        })
    }

    /// The device's name.
    pub fn device_name(&self) -> String {
        self.inner
            .ctx
            .name()
            .unwrap_or_else(|e| format!("device {} ({e:?})", self.inner.config.device))
    }

    /// Device time so far, summed over lanes.
    pub fn device_stats(&self) -> DeviceStats {
        let c = &self.inner.counters;
        DeviceStats {
            batches: c.batches.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            kernel: std::time::Duration::from_nanos(c.kernel_ns.load(Ordering::Relaxed)),
            device: std::time::Duration::from_nanos(c.device_ns.load(Ordering::Relaxed)),
        }
    }

    /// A lane of its own, for a caller that drives the device directly
    /// (the benches, the parity tests): `depth` batches in flight.
    pub fn new_lane(&self, depth: usize) -> Result<CudaLane<I, O>, CudaError> {
        CudaLane::new(self.inner.clone(), depth.max(1))
    }
}

impl<I: Send + Sync + 'static, O: Send + 'static> Executor<I, O> for CudaExecutor<I, O> {
    /// Not the usual path (workers take a [`Lane`]); runs one batch on a
    /// lane of its own and waits.
    fn execute(&self, _worker: usize, inputs: &[I]) -> Result<Vec<O>, ExecutorError> {
        let mut lane = self.new_lane(1).map_err(ExecutorError::from_error)?;
        lane.launch(inputs)?;
        lane.finish()
    }

    fn check(&self, input: &I) -> Result<(), String> {
        (self.inner.spec.check)(input)
    }

    fn lane(&self, _worker: usize) -> Option<Box<dyn Lane<I, O>>> {
        let lane: Box<dyn Lane<I, O>> = match self.new_lane(self.inner.config.depth) {
            Ok(lane) => Box::new(lane),
            // Every batch of this worker then fails with the reason,
            // rather than the worker vanishing.
            Err(e) => Box::new(Broken(e.to_string())),
        };
        Some(lane)
    }
}

/// A lane that could not be set up: fails every launch with why.
struct Broken(String);

impl<I, O> Lane<I, O> for Broken {
    fn depth(&self) -> usize {
        1
    }
    fn launch(&mut self, _inputs: &[I]) -> Result<(), ExecutorError> {
        Err(format!("GPU lane unavailable: {}", self.0).into())
    }
    fn is_ready(&mut self) -> bool {
        true
    }
    fn finish(&mut self) -> Result<Vec<O>, ExecutorError> {
        Err(format!("GPU lane unavailable: {}", self.0).into())
    }
}

/// Pinned host memory and device memory of one batch in flight.
struct Slot {
    words_host: PinnedHostSlice<u32>,
    offsets_host: PinnedHostSlice<u32>,
    out_host: PinnedHostSlice<f32>,
    words_dev: CudaSlice<u32>,
    offsets_dev: CudaSlice<u32>,
    out_dev: CudaSlice<f32>,
    /// Before the copy in, around the kernel, after the copy out.
    begin: CudaEvent,
    kernel_start: CudaEvent,
    kernel_end: CudaEvent,
    done: CudaEvent,
    /// Requests of the batch in this slot.
    batch: usize,
}

/// Pinned host memory: write-combined for buffers the host only writes
/// (fast for the device to read), plain for the output the host reads.
fn pinned<T: cudarc::driver::DeviceRepr>(
    ctx: &Arc<CudaContext>,
    len: usize,
    host_reads: bool,
) -> Result<PinnedHostSlice<T>, CudaError> {
    let flags = if host_reads {
        0
    } else {
        sys::CU_MEMHOSTALLOC_WRITECOMBINED
    };
    // SAFETY: the memory is uninitialised; convoy only ever reads back
    // what a copy (or its own write) has put there first: the host writes
    // words and offsets before copying them in, and reads output rows only
    // after the copy out that fills them has completed.
    unsafe { ctx.alloc_pinned_with_flags::<T>(len.max(1), flags) }
        .map_err(driver("allocating pinned host memory"))
}

fn device<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    len: usize,
) -> Result<CudaSlice<T>, CudaError> {
    stream
        .alloc_zeros::<T>(len.max(1))
        .map_err(driver("allocating device memory"))
}

impl Slot {
    fn new(
        ctx: &Arc<CudaContext>,
        stream: &Arc<CudaStream>,
        batch: usize,
        words: usize,
        width: usize,
    ) -> Result<Self, CudaError> {
        let timed = |ctx: &Arc<CudaContext>| {
            ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(driver("creating an event"))
        };
        Ok(Self {
            words_host: pinned(ctx, words, false)?,
            offsets_host: pinned(ctx, batch + 1, false)?,
            out_host: pinned(ctx, batch * width, true)?,
            words_dev: device(stream, words)?,
            offsets_dev: device(stream, batch + 1)?,
            out_dev: device(stream, batch * width)?,
            begin: timed(ctx)?,
            kernel_start: timed(ctx)?,
            kernel_end: timed(ctx)?,
            done: timed(ctx)?,
            batch: 0,
        })
    }

    /// Grows the buffers (to the next power of two) for a batch of `batch`
    /// requests and `words` words; steady state allocates nothing.
    fn fit(
        &mut self,
        ctx: &Arc<CudaContext>,
        stream: &Arc<CudaStream>,
        batch: usize,
        words: usize,
        width: usize,
    ) -> Result<(), CudaError> {
        if words > self.words_host.len() {
            let n = words.next_power_of_two();
            self.words_host = pinned(ctx, n, false)?;
            self.words_dev = device(stream, n)?;
        }
        if batch + 1 > self.offsets_host.len() || batch * width > self.out_host.len() {
            let n = batch.next_power_of_two();
            self.offsets_host = pinned(ctx, n + 1, false)?;
            self.out_host = pinned(ctx, n * width, true)?;
            self.offsets_dev = device(stream, n + 1)?;
            self.out_dev = device(stream, n * width)?;
        }
        Ok(())
    }
}

/// One worker's stream into the device, with `depth` staging slots.
pub struct CudaLane<I, O> {
    inner: Arc<Inner<I, O>>,
    stream: Arc<CudaStream>,
    slots: Vec<Slot>,
    /// Slots free to take a batch.
    free: Vec<usize>,
    /// Slots with a batch launched, oldest first.
    busy: VecDeque<usize>,
    /// Reused packing buffer.
    packed: Packed,
}

impl<I, O> CudaLane<I, O> {
    fn new(inner: Arc<Inner<I, O>>, depth: usize) -> Result<Self, CudaError> {
        let stream = inner
            .ctx
            .new_stream()
            .map_err(driver("creating a stream"))?;
        let c = &inner.config;
        let slots = (0..depth)
            .map(|_| {
                Slot::new(
                    &inner.ctx,
                    &stream,
                    c.max_batch,
                    c.max_batch_words,
                    inner.spec.width,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            free: (0..depth).rev().collect(),
            busy: VecDeque::with_capacity(depth),
            inner,
            stream,
            slots,
            packed: Packed::default(),
        })
    }

    fn enqueue(&mut self, slot: usize) -> Result<(), CudaError> {
        let inner = &*self.inner;
        let stream = &self.stream;
        let width = inner.spec.width;
        let packed = &self.packed;
        let batch = packed.batch();
        let s = &mut self.slots[slot];
        s.fit(&inner.ctx, stream, batch, packed.words.len(), width)?;

        // Stage into pinned memory. `as_mut_slice` waits on the pinned
        // buffer's own event, which convoy never records (its copies below
        // go through the raw driver calls), so it returns at once; the
        // slot is only reused after its `done` event completed.
        let words_host = s
            .words_host
            .as_mut_slice()
            .map_err(driver("staging words"))?;
        words_host[..packed.words.len()].copy_from_slice(&packed.words);
        let offsets_host = s
            .offsets_host
            .as_mut_slice()
            .map_err(driver("staging offsets"))?;
        offsets_host[..batch + 1].copy_from_slice(&packed.offsets);

        s.begin
            .record(stream)
            .map_err(driver("recording an event"))?;
        {
            let (words_ptr, _w) = s.words_dev.device_ptr_mut(stream);
            let (offsets_ptr, _o) = s.offsets_dev.device_ptr_mut(stream);
            // SAFETY: the sources are this slot's pinned buffers, which
            // outlive the copies (they are only freed or rewritten after
            // the slot's `done` event has completed, in `finish` or on
            // drop) and hold at least as many elements as copied (`fit`);
            // the destinations are this slot's device buffers, sized by
            // `fit` as well, on this lane's own stream.
            unsafe {
                // A batch of empty requests has no words: no copy to make
                // (a zero-byte copy is not worth trusting every driver on).
                if !packed.words.is_empty() {
                    result::memcpy_htod_async(
                        words_ptr,
                        &words_host[..packed.words.len()],
                        stream.cu_stream(),
                    )
                    .map_err(driver("copying words in"))?;
                }
                result::memcpy_htod_async(
                    offsets_ptr,
                    &offsets_host[..batch + 1],
                    stream.cu_stream(),
                )
                .map_err(driver("copying offsets in"))?;
            }
        }
        if inner.config.poison_outputs {
            let (out_ptr, _p) = s.out_dev.device_ptr_mut(stream);
            // SAFETY: fills the first `batch * width` floats of this
            // slot's device output (sized by `fit`) with 0xFF bytes, a NaN
            // pattern, on this lane's stream, before the kernel writes them.
            unsafe {
                result::memset_d8_async(
                    out_ptr,
                    0xFF,
                    batch * width * std::mem::size_of::<f32>(),
                    stream.cu_stream(),
                )
            }
            .map_err(driver("poisoning the output"))?;
        }

        s.kernel_start
            .record(stream)
            .map_err(driver("recording an event"))?;
        let n = i32::try_from(batch).map_err(|_| CudaError::Invalid("batch over 2^31".into()))?;
        let w = i32::try_from(width).map_err(|_| CudaError::Invalid("width over 2^31".into()))?;
        let mut launch = stream.launch_builder(&inner.function);
        for weight in &inner.weights {
            launch.arg(weight);
        }
        launch.arg(&s.words_dev);
        launch.arg(&s.offsets_dev);
        launch.arg(&n);
        launch.arg(&mut s.out_dev);
        launch.arg(&w);
        let cfg = LaunchConfig {
            grid_dim: (batch as u32, 1, 1),
            block_dim: (inner.spec.block_dim, 1, 1),
            shared_mem_bytes: inner.spec.shared_bytes,
        };
        // SAFETY: the arguments follow the kernel ABI of `crate::device::kernel`
        // (weights in order, words, offsets, batch, out, width), which the
        // kernel's source declares; the buffers hold `offsets[batch]`
        // words, `batch + 1` offsets and `batch * width` outputs (`fit`),
        // and every word was checked by the spec's `pack` (a token id
        // outside the table never gets here). Block size and shared memory
        // were validated in `CudaExecutor::new`.
        unsafe { launch.launch(cfg) }.map_err(driver("launching the kernel"))?;
        drop(launch);
        s.kernel_end
            .record(stream)
            .map_err(driver("recording an event"))?;

        let out_host = s
            .out_host
            .as_mut_slice()
            .map_err(driver("staging the output"))?;
        {
            let (out_ptr, _r) = s.out_dev.device_ptr(stream);
            // SAFETY: copies the batch's `batch * width` output floats into
            // this slot's pinned output buffer (at least that large, by
            // `fit`); the host reads it only in `finish`, after `done`.
            unsafe {
                result::memcpy_dtoh_async(
                    &mut out_host[..batch * width],
                    out_ptr,
                    stream.cu_stream(),
                )
            }
            .map_err(driver("copying the output out"))?;
        }
        s.done
            .record(stream)
            .map_err(driver("recording an event"))?;
        s.batch = batch;
        Ok(())
    }
}

impl<I, O> Drop for CudaLane<I, O> {
    fn drop(&mut self) {
        // The copies in flight read and write this lane's pinned memory:
        // it must not be freed under them.
        let _ = self.stream.synchronize();
    }
}

impl<I: Send + Sync + 'static, O: Send + 'static> Lane<I, O> for CudaLane<I, O> {
    fn depth(&self) -> usize {
        self.slots.len()
    }

    fn launch(&mut self, inputs: &[I]) -> Result<(), ExecutorError> {
        let Some(slot) = self.free.pop() else {
            return Err("every staging slot of this lane is in flight".into());
        };
        if let Err(e) = self.packed.pack(&self.inner.spec, inputs) {
            self.free.push(slot);
            return Err(e.into());
        }
        match self.enqueue(slot) {
            Ok(()) => {
                self.busy.push_back(slot);
                Ok(())
            }
            Err(e) => {
                // Whatever was queued before the failure must finish
                // before the slot is reused.
                let _ = self.stream.synchronize();
                self.free.push(slot);
                Err(ExecutorError::from_error(e))
            }
        }
    }

    fn is_ready(&mut self) -> bool {
        match self.busy.front() {
            // An error counts as ready: `finish` reports it.
            Some(&slot) => self.slots[slot].done.try_is_complete().unwrap_or(true),
            None => true,
        }
    }

    fn finish(&mut self) -> Result<Vec<O>, ExecutorError> {
        let slot = self
            .busy
            .pop_front()
            .ok_or_else(|| "finish without a launched batch".to_owned())?;
        // Back on the free list whatever happens below: `done` has been
        // waited for (or the stream is broken), so nothing still uses it.
        let result = self.collect(slot);
        self.free.push(slot);
        result.map_err(ExecutorError::from_error)
    }
}

impl<I, O> CudaLane<I, O> {
    fn collect(&mut self, slot: usize) -> Result<Vec<O>, CudaError> {
        let s = &mut self.slots[slot];
        s.done
            .synchronize()
            .map_err(driver("waiting for the batch"))?;
        let width = self.inner.spec.width;
        let counters = &self.inner.counters;
        let ms = |a: &CudaEvent, b: &CudaEvent| a.elapsed_ms(b).unwrap_or(0.0).max(0.0) as f64;
        let kernel_ns = (ms(&s.kernel_start, &s.kernel_end) * 1e6) as u64;
        let device_ns = (ms(&s.begin, &s.done) * 1e6) as u64;
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .requests
            .fetch_add(s.batch as u64, Ordering::Relaxed);
        counters.kernel_ns.fetch_add(kernel_ns, Ordering::Relaxed);
        counters.device_ns.fetch_add(device_ns, Ordering::Relaxed);
        let out = s
            .out_host
            .as_slice()
            .map_err(driver("reading the output"))?;
        Ok(out[..s.batch * width]
            .chunks_exact(width)
            .map(|row| (self.inner.spec.unpack)(row))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header NVRTC 13.0 writes for `kernels/pool_dense.cu` at sm_90.
    const POOL_DENSE_PTX: &str = "\
.version 9.0
.target sm_90
.address_size 64

	// .globl	pool_dense
.extern .shared .align 16 .b8 pooled[];

.visible .entry pool_dense(
	.param .u64 pool_dense_param_0,
	.param .u64 pool_dense_param_1,
	.param .u64 pool_dense_param_2,
	.param .u64 pool_dense_param_3,
	.param .u64 pool_dense_param_4,
	.param .u32 pool_dense_param_5,
	.param .u64 pool_dense_param_6,
	.param .u32 pool_dense_param_7
)
{
	.reg .pred 	%p<25>;
";

    #[test]
    fn the_pool_dense_entry_matches_the_abi_for_three_weights() {
        assert_eq!(
            entry_name(".visible .entry pool_dense("),
            Some("pool_dense")
        );
        assert_eq!(
            entry_params(POOL_DENSE_PTX, "pool_dense"),
            Some(abi_params(3))
        );
        assert_ne!(
            entry_params(POOL_DENSE_PTX, "pool_dense"),
            Some(abi_params(2))
        );
        assert_eq!(entry_params(POOL_DENSE_PTX, "pool_dens"), None);
        assert_eq!(entry_params(POOL_DENSE_PTX, "pool_dense_param_0"), None);
    }

    #[test]
    fn params_are_read_by_their_type_whatever_comes_before_the_name() {
        let ptx = "\
.entry f(
	.param .u64 .ptr .global .align 4 f_param_0,
	.param .s32 f_param_1,
	.param .f32 f_param_2,
	.param .align 4 .b8 f_param_3[12],
	.param .f64 f_param_4
)
{
";
        assert_eq!(
            entry_params(ptx, "f"),
            Some(vec![
                Param::Bits64,
                Param::Int32,
                Param::Float32,
                Param::Other,
                Param::Other
            ])
        );
        assert_eq!(entry_params(".visible .entry g()\n{\n", "g"), Some(vec![]));
        assert_eq!(
            abi_params(1)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["pointer", "pointer", "pointer", "int", "pointer", "int"]
        );
    }
}
