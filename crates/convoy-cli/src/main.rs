//! `convoy`: replay a real inference trace through the runtime and report
//! what the scheduler did (the default), or compare ordering policies on
//! the same trace and load.
//!
//! ```text
//! convoy [replay] [--trace PATH] [--speedup 1600] [--json FILE] [--metrics-out FILE] [--plot FILE] [--window S]
//! convoy compare [--load 1.2] [--duration 8] [--json FILE]
//! convoy serve [--addr 127.0.0.1:8080] [--config FILE] [--weights DIR]
//! convoy weights --out DIR [--vocab 32000] [--dim 256] [--seed 2023]
//! ```
//!
//! `replay`, `compare` and `serve` run the built-in model with its seeded
//! weights, or with `--weights DIR` the ones in `DIR` (`E.f32`, `W.f32`,
//! `b.f32`); `convoy weights` writes the seeded ones there, so another
//! implementation of the model can load the same and be checked against
//! convoy's outputs.
//!
//! Bad input (a missing or malformed trace, a speed-up of 0, a load ≤ 0, a
//! bad config file) prints the error with the file and line and exits 2.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use convoy::model::{PoolDense, DEFAULT_DIM, DEFAULT_SEED, DEFAULT_VOCAB};
use convoy::{Chunked, Config, Fairness, OrderingPolicy, Preemption, Priority};
use convoy_cli::replay::{self, policy_name, ReplayOptions, Report};
use convoy_cli::tenants::{TenantLine, TenantMix};
use convoy_cli::trace::{PriorityMix, Trace};

const BUNDLED_TRACE: &str = "data/azure_llm_conv_2023.csv";

/// The bundled trace, built into the binary: `cargo run` from a
/// subfolder, or the binary run from anywhere, still has its default
/// trace (719 KB).
const BUNDLED_TEXT: &str = include_str!("../data/azure_llm_conv_2023.csv");

#[derive(Parser)]
#[command(
    name = "convoy",
    version,
    about = "Lock-free request batching: trace replay and policy comparison"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    replay: ReplayArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Replay a trace against the runtime and print a report (the default).
    Replay(ReplayArgs),
    /// Run the same trace through several ordering policies at a load set
    /// relative to the measured capacity, and print them side by side.
    Compare(CompareArgs),
    /// Serve the built-in model over HTTP (POST /v1/infer, GET /metrics,
    /// /healthz, /v1/stats) until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Write the built-in model's seeded weights as E.f32, W.f32 and b.f32
    /// (raw little-endian row-major f32), the files --weights reads.
    Weights(WeightsArgs),
    /// Run a worker host of the built-in model in a pool shared through
    /// Redis, until SIGINT or SIGTERM.
    Worker(cluster::WorkerArgs),
    /// Read a pool shared through Redis.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

#[derive(Args, Clone)]
struct WeightsArgs {
    /// Folder to write into (made if missing; existing files are replaced).
    #[arg(long)]
    out: PathBuf,
    /// Vocabulary size V (E is V×D).
    #[arg(long, default_value_t = DEFAULT_VOCAB)]
    vocab: usize,
    /// Hidden size D (W is D×D, b is D).
    #[arg(long, default_value_t = DEFAULT_DIM)]
    dim: usize,
    /// Seed of the weights' generator (the built-in model's is 2023).
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// A TOML config (see config/convoy.example.toml); default: the
    /// library's defaults with ordering.shed on.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Load the model's weights from E.f32, W.f32 and b.f32 in this folder
    /// (as `convoy weights` writes them) instead of the seeded ones.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Close a connection that has not sent a complete request head within
    /// this many milliseconds (new, slow, or idle between requests);
    /// overrides `[http] header_timeout_ms`. Default 10000.
    #[arg(long)]
    header_timeout_ms: Option<u64>,
    /// The most connections open at once; past it a new connection is
    /// closed at once. Overrides `[http] max_connections`. Default: a
    /// quarter of the file-descriptor limit.
    #[arg(long)]
    max_connections: Option<usize>,
    /// The body must arrive within this many milliseconds after the head,
    /// plus its length at `[http] min_body_bytes_per_s` (default 64 KiB/s);
    /// 408 otherwise. Overrides `[http] body_timeout_ms`. Default 10000.
    #[arg(long)]
    body_timeout_ms: Option<u64>,
    /// Connections whose first request's x-priority header says this level
    /// or a more urgent one are served on a thread of their own, away from
    /// a flood; `none` turns it off. Overrides `[http] urgent`. Default high.
    #[arg(long)]
    urgent: Option<String>,
    /// Run the model on the GPU (the CUDA pool-dense kernel, one worker
    /// per configured worker; `{"vector": …}` requests are then refused);
    /// without one, falls back to CPU workers, saying so on stderr.
    #[arg(long, conflicts_with = "redis")]
    gpu: bool,
    /// Run as a frontend of a pool shared through Redis: batches run on
    /// the pool's worker hosts (`convoy worker`), not in this process.
    #[command(flatten)]
    pool: cluster::PoolArgs,
    /// This frontend's name in the pool (it joins as NAME#EPOCH).
    #[arg(long, default_value = "frontend")]
    name: String,
}

#[derive(Args, Clone)]
struct Common {
    /// Trace file: Azure `TIMESTAMP,ContextTokens,GeneratedTokens` or
    /// generic `arrival_s,priority,tokens[,deadline_ms]` (with a header: any
    /// order, priority and deadline optional).
    #[arg(long, default_value = BUNDLED_TRACE)]
    trace: PathBuf,
    /// Seed of the priority mix (5% critical, 15% high, 40% normal, 25% low,
    /// 15% background) for rows without a priority.
    #[arg(long, default_value_t = 2023)]
    seed: u64,
    /// A TOML config (see config/convoy.example.toml); default: the
    /// library's defaults with ordering.shed on.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Load the model's weights from E.f32, W.f32 and b.f32 in this folder
    /// (as `convoy weights` writes them) instead of the seeded ones; the
    /// replayed requests' token ids are drawn from its vocabulary.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Replay at most this many rows (≥ 1).
    #[arg(long, value_parser = at_least_one)]
    limit: Option<usize>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct ReplayArgs {
    #[command(flatten)]
    common: Common,
    /// Trace time runs this many times faster than real time.
    #[arg(long, default_value_t = 1600.0, allow_negative_numbers = true)]
    speedup: f64,
    /// Stop submitting after this many seconds of real time.
    #[arg(long, allow_negative_numbers = true)]
    duration: Option<f64>,
    /// Ordering policy: aging (convoy), strict_priority or fifo.
    #[arg(long, default_value = "aging")]
    policy: String,
    /// Write the final Prometheus text here.
    #[arg(long)]
    metrics_out: Option<PathBuf>,
    /// Draw latency percentiles over time per priority (SVG).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Seconds per window of the latency timeline (the plot and the JSON
    /// `timeline`); default: about 50 windows over the expected run.
    #[arg(long, allow_negative_numbers = true)]
    window: Option<f64>,
    /// Run the workers on the GPU (the CUDA pool-dense kernel, one worker
    /// per configured worker); without one, falls back to CPU workers.
    #[arg(long)]
    gpu: bool,
}

#[derive(Args, Clone)]
struct CompareArgs {
    #[command(flatten)]
    common: Common,
    /// Offered load as a multiple of the capacity measured first.
    #[arg(long, default_value_t = 1.2, allow_negative_numbers = true)]
    load: f64,
    /// Seconds of real time each policy is replayed for.
    #[arg(long, default_value_t = 8.0, allow_negative_numbers = true)]
    duration: f64,
    /// Seconds of the capacity measurement.
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    calibrate: f64,
    /// Keep the config's intake bound instead of sizing it from the
    /// measured capacity (see `replay::wait_bounded_lane_capacity`).
    #[arg(long)]
    keep_intake: bool,
    /// Compare tenant fairness instead of ordering policies: a noisy
    /// tenant sends 10× the load of each of 4 well-behaved ones, and the
    /// well-behaved tenants' latency is measured alone, with the noisy one
    /// under arrival order within each level (`ordering.fairness =
    /// "none"`), and under VTC.
    #[arg(long)]
    tenants: bool,
    /// Compare preemption instead of ordering policies: off, on
    /// (displacing staged batches), and on with the model run in chunks
    /// that stop at a boundary for urgent work (`convoy::Chunked`).
    #[arg(long, conflicts_with = "tenants")]
    preemption: bool,
}

impl Common {
    /// The seeded priority mix for rows without a priority.
    fn mix(&self) -> PriorityMix {
        PriorityMix {
            seed: self.seed,
            ..PriorityMix::default()
        }
    }
}

/// `--limit`'s parser: a count of rows, and a replay of none is a mistake.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("must be a whole number ≥ 1, got {s:?}")),
    }
}

/// Fails before the run rather than after it when an output file cannot be
/// written (a missing folder, a directory, no permission): a replay or a
/// comparison takes seconds to minutes, and its report would be lost. A
/// file that did not exist is not left behind.
fn check_output(option: &str, path: Option<&Path>) -> Result<(), Fail> {
    let Some(path) = path else { return Ok(()) };
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| Fail(format!("{option} {}: {e}", path.display())))?;
    if !existed {
        // Best effort: the write after the run creates it again.
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// A user error: printed, exit code 2.
struct Fail(String);

impl<E: std::fmt::Display> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail(e.to_string())
    }
}

/// `print!` that a closed pipe does not stop. `convoy | head -3` closes
/// stdout early, and `print!` panics on that. Here the reader has what it
/// wanted, so the rest of stdout is dropped and the run goes on to write
/// its `--json`, `--metrics-out` and `--plot` files. Any other write error
/// is a `Fail`.
fn say(text: std::fmt::Arguments) -> Result<(), Fail> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(text).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Fail(format!("writing to stdout: {e}")))
        }
        _ => Ok(()),
    }
}

/// `eprintln!` that a closed stderr does not stop (`convoy compare 2>&1 |
/// head` closes both): a progress or fallback line that cannot be shown
/// is dropped, where `eprintln!` would panic.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `say` with `format!`'s arguments, returning early on a `Fail`.
macro_rules! say {
    ($($arg:tt)*) => { say(format_args!($($arg)*))? };
}

// After the macros, which it uses.
mod cluster;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Compare(args)) => compare(&args),
        Some(Command::Replay(args)) => replay_cmd(&args),
        Some(Command::Serve(args)) => serve(&args),
        Some(Command::Weights(args)) => weights(&args),
        Some(Command::Worker(args)) => cluster::worker(&args),
        Some(Command::Cluster(command)) => cluster::cluster(&command),
        None => replay_cmd(&cli.replay),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(message)) => {
            note!("convoy: {message}");
            ExitCode::from(2)
        }
    }
}

fn load_common(c: &Common) -> Result<(Trace, Config, PoolDense), Fail> {
    let trace = if c.trace == Path::new(BUNDLED_TRACE) && !c.trace.exists() {
        convoy_cli::trace::parse(BUNDLED_TRACE, BUNDLED_TEXT)?
    } else {
        convoy_cli::trace::load(&c.trace)?
    };
    Ok((
        trace,
        load_config(c.config.as_deref())?,
        model(c.weights.as_deref())?,
    ))
}

/// The config file given, as it is; or the library's defaults with
/// shedding on. The library leaves `ordering.shed` off so that `submit`
/// refuses only for a full queue unless asked to; these commands stand for
/// a server under whatever load comes, where handing back the excess of
/// the least urgent levels keeps the urgent ones within their objectives
/// (README, "Shedding under overload"). A config file says for itself.
fn load_config(path: Option<&Path>) -> Result<Config, Fail> {
    Ok(match path {
        Some(path) => Config::from_toml_file(path)?,
        None => builtin_config(),
    })
}

/// `convoy serve`'s own section of a config file: the HTTP limits. The
/// rest of the file is the runtime's `Config`, read as by the other
/// commands.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    header_timeout_ms: Option<u64>,
    body_timeout_ms: Option<u64>,
    min_body_bytes_per_s: Option<u64>,
    /// `"critical"`, `"high"` … or `"none"`.
    urgent: Option<String>,
    max_connections: Option<usize>,
    max_body_bytes: Option<usize>,
    max_tokens: Option<usize>,
}

/// The runtime's config and the `[http]` section, from `path` (or the
/// built-in config and no section).
fn load_serve_config(path: Option<&Path>) -> Result<(Config, HttpSection), Fail> {
    let Some(path) = path else {
        return Ok((builtin_config(), HttpSection::default()));
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| Fail(format!("config: {}: {e}", path.display())))?;
    let mut table: toml::Table = text
        .parse()
        .map_err(|e| Fail(format!("config: {}: {e}", path.display())))?;
    let http = match table.remove("http") {
        Some(section) => section
            .try_into::<HttpSection>()
            .map_err(|e| Fail(format!("config: {}: [http]: {e}", path.display())))?,
        None => HttpSection::default(),
    };
    let rest =
        toml::to_string(&table).map_err(|e| Fail(format!("config: {}: {e}", path.display())))?;
    let config = Config::from_toml_str(&rest)
        .map_err(|e| Fail(format!("config: {}: {e}", path.display())))?;
    Ok((config, http))
}

/// What the commands run with when no `--config` is given.
fn builtin_config() -> Config {
    Config {
        shed: true,
        ..Config::default()
    }
}

/// The GPU executor for `--gpu` running `spec`, with `config`'s fleet
/// replaced by as many GPU workers; `None` (after one line saying why)
/// when there is no GPU, and the command runs on CPU workers. `Err` only
/// when stdout fails.
#[cfg(feature = "cuda")]
fn gpu_fleet<I: Send + Sync + 'static, O: Send + 'static>(
    spec: convoy::kernel::KernelSpec<I, O>,
    config: &mut Config,
    workers: usize,
) -> Result<Option<convoy::cuda::CudaExecutor<I, O>>, Fail> {
    use convoy::cuda::{CudaConfig, CudaExecutor};
    let made = CudaExecutor::new(spec, CudaConfig::default()).and_then(|exec| {
        let specs = (0..workers.max(1))
            .map(|i| exec.worker_spec(&format!("gpu{i}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((exec, specs))
    });
    match made {
        Ok((exec, specs)) => {
            say!(
                "convoy: --gpu: {} GPU workers on {}\n",
                specs.len(),
                exec.device_name()
            );
            config.workers = specs;
            Ok(Some(exec))
        }
        Err(e) => {
            note!("convoy: --gpu: no GPU ({e}); running on {workers} CPU workers");
            Ok(None)
        }
    }
}

/// Without the `cuda` feature `--gpu` always falls back.
#[cfg(not(feature = "cuda"))]
fn gpu_fleet<I, O>(
    _: convoy::kernel::KernelSpec<I, O>,
    _: &mut Config,
    workers: usize,
) -> Result<Option<std::convert::Infallible>, Fail> {
    note!("convoy: --gpu: built without the cuda feature; running on {workers} CPU workers");
    Ok(None)
}

/// The longest request a GPU worker takes: above the bundled trace's
/// longest context (14,050 tokens).
const GPU_MAX_TOKENS: usize = 16_384;

/// The pool-dense model: the weights in `dir` (`--weights`), or the
/// built-in ones (default size and seed).
fn model(dir: Option<&Path>) -> Result<PoolDense, Fail> {
    Ok(match dir {
        Some(dir) => PoolDense::from_dir(dir).map_err(|e| Fail(format!("--weights: {e}")))?,
        None => PoolDense::seeded(DEFAULT_VOCAB, DEFAULT_DIM, DEFAULT_SEED)?,
    })
}

/// `convoy weights`: the seeded model's files, for another implementation
/// to load.
fn weights(args: &WeightsArgs) -> Result<(), Fail> {
    let model = PoolDense::seeded(args.vocab, args.dim, args.seed)?;
    model
        .to_dir(&args.out)
        .map_err(|e| Fail(format!("--out: {e}")))?;
    say!(
        "convoy weights: pool-dense V={} D={} seed {} written to {} (E.f32, W.f32, b.f32: raw little-endian row-major f32)\n",
        model.vocab(),
        model.dim(),
        args.seed,
        args.out.display()
    );
    Ok(())
}

fn parse_policy(s: &str) -> Result<OrderingPolicy, Fail> {
    s.parse().map_err(|e| Fail(format!("--policy: {e}")))
}

fn seconds(option: &str, s: f64) -> Result<Duration, Fail> {
    if s.is_finite() && s > 0.0 && s < 1e6 {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(Fail(format!(
            "{option}: must be a number of seconds > 0 and < 1000000, got {s}"
        )))
    }
}

/// "about 2.2 s of submits", or in hours or days when the trace's gaps make
/// the run that long, so `--speedup` or `--duration` can be chosen first.
fn about(expected: Duration) -> String {
    format!("about {} of submits", span_text(expected))
}

/// A span of time in the unit that reads best: `0.002 s`, `12.5 s`,
/// `3.2 min`, `5.6 h`, `7.0 days`.
fn span_text(span: Duration) -> String {
    let s = span.as_secs_f64();
    if s < 1.0 {
        return format!("{s:.3} s");
    }
    let (value, unit) = if s < 120.0 {
        (s, "s")
    } else if s < 2.0 * 3600.0 {
        (s / 60.0, "min")
    } else if s < 2.0 * 86400.0 {
        (s / 3600.0, "h")
    } else {
        (s / 86400.0, "days")
    };
    format!("{value:.1} {unit}")
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} replay [{bar:40}] {pos}/{len} requests {elapsed}")
            .expect("static, valid template")
            .progress_chars("=> "),
    );
    bar
}

fn write(path: &Path, text: &str) -> Result<(), Fail> {
    std::fs::write(path, text).map_err(|e| Fail(format!("{}: {e}", path.display())))
}

fn replay_cmd(args: &ReplayArgs) -> Result<(), Fail> {
    replay::check_speedup(args.speedup)?;
    let policy = parse_policy(&args.policy)?;
    let duration = args
        .duration
        .map(|d| seconds("--duration", d))
        .transpose()?;
    let window = args.window.map(|w| seconds("--window", w)).transpose()?;
    check_output("--json", args.common.json.as_deref())?;
    check_output("--metrics-out", args.metrics_out.as_deref())?;
    check_output("--plot", args.plot.as_deref())?;
    let (trace, mut config, model) = load_common(&args.common)?;
    config.ordering = policy;
    let workers = config.fleet().len();
    let rows = trace.first(args.common.limit);
    let expected = replay::expected_run(rows, args.speedup, duration);
    let window = window.unwrap_or_else(|| replay::timeline_window(expected));
    let gpu = if args.gpu {
        gpu_fleet(
            convoy::kernel::KernelSpec::pool_dense(&model, GPU_MAX_TOKENS),
            &mut config,
            workers,
        )?
    } else {
        None
    };
    say!(
        "convoy replay: {} ({} requests over {} of trace time) at {}× ({}) on {workers} {} workers, pool-dense V={} D={}{}\n",
        trace.source,
        if rows.len() < trace.requests.len() {
            format!("{} of {}", rows.len(), trace.requests.len())
        } else {
            rows.len().to_string()
        },
        span_text(rows.last().map_or(Duration::ZERO, |r| r.arrival)),
        args.speedup,
        about(expected),
        if gpu.is_some() { "GPU" } else { "CPU" },
        model.vocab(),
        model.dim(),
        args.common
            .weights
            .as_ref()
            .map_or(String::new(), |d| format!(" (weights from {})", d.display())),
    );
    let options = ReplayOptions {
        config,
        speedup: args.speedup,
        mix: args.common.mix(),
        limit: args.common.limit,
        duration,
        window,
        vocab: model.vocab(),
        ..ReplayOptions::default()
    };
    let bar = progress_bar(rows.len() as u64);
    let progress = |n| bar.set_position(n);
    let report = match gpu {
        #[cfg(feature = "cuda")]
        Some(exec) => replay::replay(&trace, exec, &options, &progress)?,
        #[cfg(not(feature = "cuda"))]
        Some(never) => match never {},
        None => replay::replay(&trace, model, &options, &progress)?,
    };
    bar.finish_and_clear();
    say!("{}", report.render());
    if let Some(path) = &args.common.json {
        write(path, &serde_json::to_string_pretty(&report.to_json())?)?;
    }
    if let Some(path) = &args.metrics_out {
        write(path, &report.metrics)?;
    }
    if let Some(path) = &args.plot {
        convoy_cli::plot::latency_svg(&report, path).map_err(Fail)?;
    }
    if report.lost != 0 || report.client_unresolved != 0 {
        return Err(Fail(format!(
            "lost {} requests ({} tickets unresolved)",
            report.lost, report.client_unresolved
        )));
    }
    Ok(())
}

fn serve(args: &ServeArgs) -> Result<(), Fail> {
    // Logs go to stderr, at `info` unless RUST_LOG says otherwise
    // (`RUST_LOG=debug` adds every refused request and launched batch).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let (config, http) = load_serve_config(args.config.as_deref())?;
    // A flag wins over the file, the file over the default.
    let header_timeout_ms = args
        .header_timeout_ms
        .or(http.header_timeout_ms)
        .unwrap_or(10_000);
    if header_timeout_ms == 0 {
        return Err(Fail(
            "header timeout (--header-timeout-ms, http.header_timeout_ms): must be at least 1"
                .into(),
        ));
    }
    let max_connections = args
        .max_connections
        .or(http.max_connections)
        .unwrap_or_else(convoy_server::default_max_connections);
    if max_connections == 0 {
        return Err(Fail(
            "connection budget (--max-connections, http.max_connections): must be at least 1"
                .into(),
        ));
    }
    let body_timeout_ms = args
        .body_timeout_ms
        .or(http.body_timeout_ms)
        .unwrap_or(10_000);
    if body_timeout_ms == 0 {
        return Err(Fail(
            "body timeout (--body-timeout-ms, http.body_timeout_ms): must be at least 1".into(),
        ));
    }
    let defaults = convoy_server::HttpLimits::default();
    let min_body_rate = http.min_body_bytes_per_s.unwrap_or(defaults.min_body_rate);
    if min_body_rate == 0 {
        return Err(Fail(
            "http.min_body_bytes_per_s: must be at least 1 byte per second".into(),
        ));
    }
    let urgent = match args.urgent.as_deref().or(http.urgent.as_deref()) {
        None => defaults.urgent,
        Some("none") => None,
        Some(name) => Some(
            name.to_ascii_lowercase()
                .parse::<convoy::Priority>()
                .map_err(|_| {
                    Fail(format!(
                "urgent (--urgent, http.urgent): \"{name}\" is not a priority: give critical, \
                 high, normal, low, background, a level 0-4, or none"
            ))
                })?,
        ),
    };
    let limits = convoy_server::HttpLimits {
        header_timeout: Duration::from_millis(header_timeout_ms),
        body_timeout: Duration::from_millis(body_timeout_ms),
        min_body_rate,
        max_connections,
        urgent,
    };
    let drain = config.shutdown_timeout;
    let model = model(args.weights.as_deref())?;
    let mut request_limits = convoy_server::Limits::for_model(&model);
    if let Some(n) = http.max_body_bytes {
        if n == 0 {
            return Err(Fail("http.max_body_bytes: must be at least 1".into()));
        }
        request_limits.max_body_bytes = n;
    }
    if let Some(n) = http.max_tokens {
        if n == 0 {
            return Err(Fail("http.max_tokens: must be at least 1".into()));
        }
        request_limits.max_tokens = n;
    }
    let mut config = config;
    let workers = config.fleet().len();
    let gpu = if args.gpu {
        gpu_fleet(
            convoy_server::model_kernel(&model, request_limits.max_tokens),
            &mut config,
            workers,
        )?
    } else {
        None
    };
    // A frontend of a pool: the pool's hosts run the batches.
    let frontend = match args.pool.redis {
        Some(_) => Some(cluster::frontend(
            &args.pool,
            &args.name,
            config.clone(),
            model.clone(),
        )?),
        None => None,
    };
    let built = match (gpu, &frontend) {
        (_, Some(f)) => convoy_server::Server::new(
            f.runtime().clone(),
            convoy_server::ModelCodec {
                limits: request_limits,
            },
        )
        .max_body_bytes(request_limits.max_body_bytes),
        (gpu, None) => match gpu {
            #[cfg(feature = "cuda")]
            Some(exec) => convoy_server::model_server_on(config, exec, request_limits)?,
            #[cfg(not(feature = "cuda"))]
            Some(never) => match never {},
            None => convoy_server::model_server_with(config, model, request_limits)?,
        },
    };
    let state = std::sync::Arc::new(built.http_limits(limits));
    let server = state.clone();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let runtime = state.runtime.clone();
    let stats = tokio.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.addr)
            .await
            .map_err(|e| Fail(format!("--addr {}: {e}", args.addr)))?;
        let addr = listener.local_addr()?;
        say!("convoy serve: listening on http://{addr}\n");
        tracing::info!(
            %addr,
            drain_ms = drain.as_millis() as u64,
            header_timeout_ms = limits.header_timeout.as_millis() as u64,
            max_connections = limits.max_connections,
            body_timeout_ms = limits.body_timeout.as_millis() as u64,
            urgent = limits.urgent.map_or("none", |p| p.as_str()),
            "serving"
        );
        // The first SIGINT/SIGTERM drains (bounded by the drain deadline);
        // a second one exits at once, with the counts as they stand.
        let signal = async move {
            convoy_server::shutdown_signal().await;
            tracing::info!("signal: draining; a second signal exits at once");
            tokio::spawn(async move {
                convoy_server::shutdown_signal().await;
                // Exiting either way: a closed stdout has no one to tell.
                let _ = say(format_args!(
                    "convoy serve: stopped at once on a second signal. {}\n",
                    runtime.stats().total()
                ));
                std::process::exit(130);
            });
        };
        convoy_server::serve_until(listener, state, signal)
            .await
            .map_err(Fail::from)
    })?;
    let total = stats.total();
    let shed_at_door: u64 = convoy::Priority::ALL
        .into_iter()
        .map(|p| server.shed_at_door(p))
        .sum();
    tracing::info!(
        refused_connections = server.refused_connections(),
        urgent_connections = server.urgent_connections(),
        shed_at_door,
        "connections refused over the budget, served on the urgent thread; requests shed at the door"
    );
    tracing::info!(
        accepted = total.inserted,
        completed = total.completed,
        refused_full = total.rejected_full,
        refused_shed = total.rejected_shed,
        expired = total.expired,
        failed = total.failed,
        shut_down = total.shut_down,
        lost = total.lost(),
        "stopped"
    );
    if shed_at_door > 0 {
        say!("convoy serve: stopped. {total}; shed at the door, before the runtime: {shed_at_door}\n");
    } else {
        say!("convoy serve: stopped. {total}\n");
    }
    Ok(())
}

fn compare(args: &CompareArgs) -> Result<(), Fail> {
    if !(args.load.is_finite() && args.load > 0.0) {
        return Err(Fail(format!(
            "--load: must be a finite number > 0, got {}",
            args.load
        )));
    }
    let duration = seconds("--duration", args.duration)?;
    let calibrate = seconds("--calibrate", args.calibrate)?;
    check_output("--json", args.common.json.as_deref())?;
    let (trace, mut config, model) = load_common(&args.common)?;
    // The rows replayed (cycled), and their rate in trace time: `--limit`
    // replays the first rows only, whose rate may differ from the whole's.
    let rows = trace.first(args.common.limit);
    let period = replay::cycle_period(rows);
    if period.is_zero() {
        return Err(Fail(format!(
            "{}: the {} replayed requests all arrive at once; compare needs arrival times",
            trace.source,
            rows.len()
        )));
    }
    let rate = rows.len() as f64 / period.as_secs_f64();
    let capacity = replay::calibrate(&trace, model.clone(), &config, calibrate, model.vocab())?;
    let speedup = args.load * capacity / rate;
    if !args.keep_intake {
        config.intake.lane_capacity =
            replay::wait_bounded_lane_capacity(capacity, config.max_wait, config.intake.shards);
    }
    say!(
        "intake bound: {} per priority ({} shards × {}){}\n",
        config.intake.shards * config.intake.lane_capacity,
        config.intake.shards,
        config.intake.lane_capacity,
        if args.keep_intake {
            ", from the config"
        } else {
            ", sized from the measured capacity and max_wait"
        }
    );
    say!(
        "convoy compare: {} | capacity {capacity:.0} req/s measured over {:.1} s | load {:.2} → {:.0} req/s offered (speed-up {speedup:.1}×) for {:.1} s per policy\n",
        trace.source,
        calibrate.as_secs_f64(),
        args.load,
        args.load * capacity,
        duration.as_secs_f64()
    );
    if args.tenants {
        return compare_tenants(args, &trace, &config, model, speedup);
    }
    if args.preemption {
        return compare_preemption(args, &trace, &config, model, speedup);
    }
    let policies = [
        OrderingPolicy::Fifo,
        OrderingPolicy::StrictPriority,
        OrderingPolicy::Aging,
    ];
    say!(
        "fifo and strict_priority run as plain queues (no shedding); aging runs with ordering.shed {}\n",
        if config.shed { "on" } else { "off" }
    );
    let mut reports = Vec::new();
    for policy in policies {
        let options = ReplayOptions {
            config: Config {
                ordering: policy,
                // The baselines stand for schedulers without it (see
                // `shed.rs`); convoy's own rule keeps the config's.
                shed: config.shed && policy == OrderingPolicy::Aging,
                ..config.clone()
            },
            speedup,
            mix: args.common.mix(),
            limit: args.common.limit,
            duration: Some(duration),
            cycle: true,
            vocab: model.vocab(),
            ..ReplayOptions::default()
        };
        note!("  running {} ...", policy_name(policy));
        reports.push(replay::replay(&trace, model.clone(), &options, &|_| {})?);
    }
    say!("{}", render_comparison(&reports));
    if let Some(path) = &args.common.json {
        let json = serde_json::json!({
            "capacity_rps": capacity,
            "load": args.load,
            "speedup": speedup,
            // Over every policy's run, so one field answers "nothing lost".
            "lost": reports.iter().map(|r| r.lost).sum::<u64>(),
            "policies": reports.iter().map(replay::Report::to_json).collect::<Vec<_>>(),
        });
        write(path, &serde_json::to_string_pretty(&json)?)?;
    }
    if let Some(r) = reports
        .iter()
        .find(|r| r.lost != 0 || r.client_unresolved != 0)
    {
        return Err(Fail(format!("{}: lost {} requests", r.policy, r.lost)));
    }
    Ok(())
}

/// A comparison's runs, each named: an error naming the first that lost
/// a request or left a client without an answer.
fn nothing_lost(reports: &[(&str, Report)]) -> Result<(), Fail> {
    match reports
        .iter()
        .find(|(_, r)| r.lost != 0 || r.client_unresolved != 0)
    {
        Some((name, r)) => Err(Fail(format!("{name}: lost {} requests", r.lost))),
        None => Ok(()),
    }
}

/// `compare --tenants`'s quota of requests queued per tenant, unless the
/// config sets one.
const TENANT_QUOTA: u64 = 128;

/// `compare --tenants`: the quiet tenants alone, then beside the noisy
/// one under arrival order within each level, then under VTC.
fn compare_tenants(
    args: &CompareArgs,
    trace: &Trace,
    config: &Config,
    model: PoolDense,
    speedup: f64,
) -> Result<(), Fail> {
    let mix = TenantMix::default();
    say!(
        "tenants: \"noisy\" sends {}× the load of each of {} quiet tenants ({:.0}% of the rows); the quiet tenants alone offer {:.2}× capacity\n",
        mix.noisy_weight,
        mix.quiet,
        100.0 * f64::from(mix.noisy_weight) / (f64::from(mix.noisy_weight) + mix.quiet as f64),
        args.load * mix.quiet as f64 / (f64::from(mix.noisy_weight) + mix.quiet as f64)
    );
    // Every row at one level: fairness orders within a level, and between
    // levels priority stays strict (a quiet tenant's Background request
    // waits behind a noisy one's Critical, by design).
    let level_mix = PriorityMix {
        shares: [0, 0, 100, 0, 0],
        ..args.common.mix()
    };
    // A quota per tenant, unless the config sets one: what a server facing
    // tenants runs with, so one tenant's excess is refused at its door
    // rather than filling the queue every tenant shares.
    let mut tenants = config.tenants.clone();
    if tenants.max_queued.is_none() && tenants.max_queued_tokens.is_none() {
        tenants.max_queued = Some(TENANT_QUOTA);
    }
    say!(
        "every row at Normal; each tenant may have {} queued{}\n",
        tenants
            .max_queued
            .map_or("any number of requests".into(), |q| format!("{q} requests")),
        if config.tenants.max_queued.is_none() && config.tenants.max_queued_tokens.is_none() {
            " (the default of compare --tenants)"
        } else {
            ", from the config"
        }
    );
    let runs = [
        ("quiet alone", Fairness::Vtc, false),
        ("fifo in level", Fairness::None, true),
        ("vtc", Fairness::Vtc, true),
    ];
    let mut reports = Vec::new();
    for (name, fairness, noisy) in runs {
        let options = ReplayOptions {
            config: Config {
                fairness,
                tenants: tenants.clone(),
                ..config.clone()
            },
            speedup,
            mix: level_mix,
            limit: args.common.limit,
            duration: Some(seconds("--duration", args.duration)?),
            cycle: true,
            vocab: model.vocab(),
            tenants: Some(TenantMix {
                noisy_present: noisy,
                ..mix
            }),
            ..ReplayOptions::default()
        };
        note!("  running {name} ...");
        reports.push((
            name,
            replay::replay(trace, model.clone(), &options, &|_| {})?,
        ));
    }
    say!("{}", render_tenants(&reports));
    if let Some(path) = &args.common.json {
        let json = serde_json::json!({
            "load": args.load,
            "speedup": speedup,
            "lost": reports.iter().map(|(_, r)| r.lost).sum::<u64>(),
            "runs": reports.iter().map(|(name, r)| serde_json::json!({
                "run": name,
                "quiet_p50_ms": r.quiet_p50_ms,
                "quiet_p99_ms": r.quiet_p99_ms,
                "jain": r.jain,
                "lost": r.lost,
                "tenants": r.tenants,
            })).collect::<Vec<_>>(),
        });
        write(path, &serde_json::to_string_pretty(&json)?)?;
    }
    nothing_lost(&reports)
}

/// `compare --preemption`'s chunk: requests per chunk of a batch run by
/// `convoy::Chunked`. A batch of bulk work asked to stop finishes its
/// current chunk first; a few requests' time is what urgent work waits.
const PREEMPTION_CHUNK: usize = 4;

/// `compare --preemption`'s priority mix: bulk Low and Background work
/// with rare urgent requests, the case preemption is for.
const PREEMPTION_SHARES: [u8; Priority::COUNT] = [1, 0, 4, 30, 65];

/// `compare --preemption`: the same load with preemption off, on, and on
/// with running batches that stop at a chunk boundary.
fn compare_preemption(
    args: &CompareArgs,
    trace: &Trace,
    config: &Config,
    model: PoolDense,
    speedup: f64,
) -> Result<(), Fail> {
    let on = config.preemption;
    let off = Preemption {
        enabled: false,
        ..on
    };
    say!(
        "preemption: min_priority_gap {}, max_displacements {}; \"stop\" runs the model in chunks of {PREEMPTION_CHUNK} and stops between them for urgent work\n",
        on.min_gap, on.max_displacements
    );
    // Bulk work with rare urgent requests: batches of Low and Background
    // alone are what preemption can take the place of (a batch with an
    // urgent request already serves it).
    let mix = PriorityMix {
        shares: PREEMPTION_SHARES,
        ..args.common.mix()
    };
    say!(
        "mix: {}% critical, {}% high, {}% normal, {}% low, {}% background\n",
        mix.shares[0],
        mix.shares[1],
        mix.shares[2],
        mix.shares[3],
        mix.shares[4]
    );
    let duration = seconds("--duration", args.duration)?;
    let options = |preemption| ReplayOptions {
        config: Config {
            preemption,
            ..config.clone()
        },
        speedup,
        mix,
        limit: args.common.limit,
        duration: Some(duration),
        cycle: true,
        vocab: model.vocab(),
        ..ReplayOptions::default()
    };
    let mut reports = Vec::new();
    note!("  running off ...");
    reports.push((
        "off",
        replay::replay(trace, model.clone(), &options(off), &|_| {})?,
    ));
    note!("  running displace ...");
    reports.push((
        "displace",
        replay::replay(trace, model.clone(), &options(on), &|_| {})?,
    ));
    note!("  running displace+stop ...");
    let chunked = Chunked::new(model.clone(), PREEMPTION_CHUNK);
    reports.push((
        "displace+stop",
        replay::replay(trace, chunked, &options(on), &|_| {})?,
    ));
    say!("{}", render_preemption(&reports));
    if let Some(path) = &args.common.json {
        let json = serde_json::json!({
            "load": args.load,
            "speedup": speedup,
            "lost": reports.iter().map(|(_, r)| r.lost).sum::<u64>(),
            "runs": reports.iter().map(|(name, r)| {
                let mut j = r.to_json();
                if let Some(o) = j.as_object_mut() {
                    o.insert("run".into(), (*name).into());
                }
                j
            }).collect::<Vec<_>>(),
        });
        write(path, &serde_json::to_string_pretty(&json)?)?;
    }
    nothing_lost(&reports)
}

/// The preemption comparison's table: a column per run.
fn render_preemption(reports: &[(&str, Report)]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = write!(s, "{:<22}", "");
    for (name, _) in reports {
        let _ = write!(s, " | {name:>14}");
    }
    let _ = writeln!(s);
    let mut row = |label: &str, f: &dyn Fn(&Report) -> String| {
        let _ = write!(s, "{label:<22}");
        for (_, r) in reports {
            let _ = write!(s, " | {:>14}", f(r));
        }
        let _ = writeln!(s);
    };
    for p in Priority::ALL {
        row(&format!("{p} p99 ms"), &|r| {
            let line = &r.priorities[p.index()];
            if line.completed == 0 {
                "-".into()
            } else {
                format!("{:.1}", line.p99_ms)
            }
        });
    }
    for p in [Priority::Low, Priority::Background] {
        row(&format!("{p} max ms"), &|r| {
            format!("{:.1}", r.priorities[p.index()].max_ms)
        });
    }
    row("starvation bound ms", &|r| {
        format!("{:.1}", r.starvation_bound_ms())
    });
    row("displaced", &|r| {
        format!("{}", r.priorities.iter().map(|p| p.displaced).sum::<u64>())
    });
    row("interrupted", &|r| {
        format!(
            "{}",
            r.priorities.iter().map(|p| p.interrupted).sum::<u64>()
        )
    });
    row("completed", &|r| format!("{}", r.completed));
    row("decision p50 µs", &|r| format!("{:.1}", r.decision_p50_us));
    row("decision p99 µs", &|r| format!("{:.1}", r.decision_p99_us));
    row("lost", &|r| format!("{}", r.lost));
    let off = reports.first().map_or(0.0, |(_, r)| {
        r.priorities[Priority::Critical.index()].p99_ms
    });
    let _ = writeln!(
        s,
        "goal: Critical p99 at most half of off's ({off:.1} ms), Low and Background within the starvation bound, nothing lost"
    );
    for (name, r) in reports.iter().skip(1) {
        let crit = r.priorities[Priority::Critical.index()].p99_ms;
        let ratio = crit / off.max(1e-9);
        let bound = r.starvation_bound_ms();
        let within = [Priority::Low, Priority::Background]
            .iter()
            .all(|p| r.priorities[p.index()].max_ms <= bound);
        let _ = writeln!(
            s,
            "  {name:<16} Critical p99 {ratio:.2}× off: {}; Low and Background {} the bound",
            if ratio <= 0.5 { "met" } else { "missed" },
            if within { "within" } else { "past" }
        );
    }
    s
}

/// A figure summed over the quiet tenants of a run.
fn quiet_sum(r: &Report, f: fn(&TenantLine) -> u64) -> u64 {
    r.tenants
        .iter()
        .filter(|t| t.tenant != "noisy")
        .map(f)
        .sum()
}

/// The tenant comparison's table: a column per run.
fn render_tenants(reports: &[(&str, Report)]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = write!(s, "{:<16}", "");
    for (name, _) in reports {
        let _ = write!(s, " | {name:>14}");
    }
    let _ = writeln!(s);
    type Row = fn(&Report) -> String;
    let rows: [(&str, Row); 8] = [
        ("quiet p50 ms", |r| format!("{:.1}", r.quiet_p50_ms)),
        ("quiet p99 ms", |r| format!("{:.1}", r.quiet_p99_ms)),
        ("noisy p99 ms", |r| {
            r.tenants
                .iter()
                .find(|t| t.tenant == "noisy")
                .map_or("-".into(), |t| format!("{:.1}", t.p99_ms))
        }),
        ("quiet done", |r| {
            format!("{}", quiet_sum(r, |t| t.completed))
        }),
        ("quiet refused", |r| {
            format!("{}", quiet_sum(r, |t| t.refused))
        }),
        ("noisy done", |r| {
            r.tenants
                .iter()
                .find(|t| t.tenant == "noisy")
                .map_or("-".into(), |t| format!("{}", t.completed))
        }),
        ("jain (tokens)", |r| format!("{:.3}", r.jain)),
        ("lost", |r| format!("{}", r.lost)),
    ];
    for (name, f) in rows {
        let _ = write!(s, "{name:<16}");
        for (_, r) in reports {
            let _ = write!(s, " | {:>14}", f(r));
        }
        let _ = writeln!(s);
    }
    let alone = reports.first().map_or(0.0, |(_, r)| r.quiet_p99_ms);
    let _ = writeln!(
        s,
        "goal: with the noisy tenant, the quiet tenants' p99 within 1.5× of alone ({:.1} ms); Jain's index over served tokens against max-min fair shares",
        alone
    );
    for (name, r) in reports.iter().skip(1) {
        let ratio = r.quiet_p99_ms / alone.max(1e-9);
        let _ = writeln!(
            s,
            "  {name:<16} {ratio:.2}× alone: {}",
            if ratio <= 1.5 { "met" } else { "missed" }
        );
    }
    s
}

/// One table, a column group per policy.
fn render_comparison(reports: &[Report]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = write!(s, "{:<11}", "");
    for r in reports {
        let _ = write!(s, " | {:^36}", r.policy);
    }
    let _ = writeln!(s);
    let _ = write!(s, "{:<11}", "priority");
    for _ in reports {
        let _ = write!(
            s,
            " | {:>8} {:>8} {:>9} {:>8}",
            "p99 ms", "SLO ms", "wait max", "SLO ok"
        );
    }
    let _ = writeln!(s);
    for p in Priority::ALL {
        let _ = write!(s, "{:<11}", p.as_str());
        for r in reports {
            let l = r.of(p);
            let _ = write!(
                s,
                " | {:>7}{} {:>8.0} {:>9} {:>8}",
                l.figure(l.p99_ms, 1),
                if l.p99_met { ' ' } else { '!' },
                l.slo_p99_ms,
                l.figure(l.queue_wait_max_ms, 1),
                l.compliance_text()
            );
        }
        let _ = writeln!(s);
    }
    for (name, f) in [
        (
            "done",
            (|r: &Report| format!("{}", r.completed)) as fn(&Report) -> String,
        ),
        ("refused", |r| format!("{}", r.refused)),
        ("expired", |r| {
            format!("{}", r.priorities.iter().map(|p| p.expired).sum::<u64>())
        }),
        ("req/s", |r| format!("{:.0}", r.throughput_rps)),
        ("mean batch", |r| format!("{:.1}", r.mean_batch)),
        ("lost", |r| format!("{}", r.lost)),
    ] {
        let _ = write!(s, "{name:<11}");
        for r in reports {
            let _ = write!(s, " | {:>36}", f(r));
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "! p99 over its objective (SLO ms; expired and failed requests count as slower); SLO ok: share within the level's timeout"
    );
    let _ = writeln!(
        s,
        "goal: critical and high within their p99 objective and ≥ 99.9% within timeout; every accepted low and background request served within max_wait + one batch interval; nothing lost"
    );
    for r in reports {
        let goal = r.goal();
        let verdict = if goal.met {
            "met".to_owned()
        } else {
            format!("missed: {}", goal.missed.join("; "))
        };
        let excused = goal
            .excused
            .iter()
            .map(|e| format!("; {e}"))
            .collect::<String>();
        let _ = writeln!(
            s,
            "  {:<16} {verdict} (starvation bound {:.0} ms{excused})",
            r.policy,
            r.starvation_bound_ms()
        );
    }
    s
}
