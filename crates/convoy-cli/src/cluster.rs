//! `convoy worker`, `convoy serve --redis` and `convoy cluster status`:
//! the built-in model on a pool of worker hosts shared through Redis.

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use convoy::Executor;
use convoy_cluster::{Frontend, FrontendConfig, HostConfig, LaneSpec, Pool, WorkerHost};
use convoy_server::{Input, ModelExecutor};

use crate::{model, say, Fail};

/// Where a pool is and how long its parts stay live without a heartbeat.
#[derive(Args, Clone)]
pub(crate) struct PoolArgs {
    /// The Redis that holds the pool (`redis://host:port/db`).
    #[arg(long)]
    pub(crate) redis: Option<String>,
    /// The pool's name: several pools can share one Redis.
    #[arg(long, default_value = "default")]
    pub(crate) pool: String,
    /// A frontend or worker host whose heartbeat is older than this many
    /// milliseconds stops counting. Use the same value on every part.
    #[arg(long, default_value_t = 3000)]
    pub(crate) liveness_ms: u64,
}

impl PoolArgs {
    fn window(&self) -> Result<Duration, Fail> {
        if self.liveness_ms < 100 {
            return Err(Fail("--liveness-ms: must be at least 100".into()));
        }
        Ok(Duration::from_millis(self.liveness_ms))
    }
}

#[derive(Args, Clone)]
pub(crate) struct WorkerArgs {
    #[command(flatten)]
    pool: PoolArgs,
    /// This host's name; its workers are NAME/0, NAME/1, ….
    #[arg(long, default_value = "host")]
    name: String,
    /// Address to listen on for batches (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// The address frontends reach this host at (default: the bound one).
    #[arg(long)]
    advertise: Option<String>,
    /// Lanes (CPU workers of the built-in model).
    #[arg(long, default_value_t = 2)]
    lanes: usize,
    /// Requests each lane holds at once.
    #[arg(long, default_value_t = 64)]
    slots: u32,
    /// Tokens each lane holds at once.
    #[arg(long, default_value_t = 65_536)]
    tokens: u64,
    /// Load the model's weights from this folder (`convoy weights`).
    #[arg(long)]
    weights: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Clone)]
pub(crate) enum ClusterCommand {
    /// The pool: workers and their capacity, what each frontend holds,
    /// which parts are live, and the recent shortfalls.
    Status(StatusArgs),
}

#[derive(Args, Clone)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pool: PoolArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn redis_url(args: &PoolArgs) -> Result<&str, Fail> {
    args.redis
        .as_deref()
        .ok_or_else(|| Fail("--redis URL is required (redis://host:port/db)".into()))
}

/// The token cost of one of the model's inputs, as its codec declares it.
pub(crate) fn tokens_of(input: &Input) -> u32 {
    match input {
        Input::Tokens(t) => u32::try_from(t.len()).unwrap_or(u32::MAX),
        Input::Vector(_) => 1,
    }
}

/// `convoy worker`: a worker host of the built-in model until SIGINT or
/// SIGTERM, then out of the pool.
pub(crate) fn worker(args: &WorkerArgs) -> Result<(), Fail> {
    let url = redis_url(&args.pool)?;
    let window = args.pool.window()?;
    if args.lanes == 0 {
        return Err(Fail("--lanes: must be at least 1".into()));
    }
    let listen = args
        .listen
        .parse()
        .map_err(|e| Fail(format!("--listen {}: {e}", args.listen)))?;
    let model = model(args.weights.as_deref())?;
    let config = HostConfig {
        redis_url: url.to_owned(),
        pool: args.pool.pool.clone(),
        name: args.name.clone(),
        listen,
        advertise: args.advertise.clone(),
        lanes: vec![
            LaneSpec {
                slots: args.slots,
                tokens: args.tokens,
                speed: 1.0,
                cost_per_hour: 0.0,
            };
            args.lanes
        ],
        heartbeat: window / 4,
    };
    let host = WorkerHost::start(config, Arc::new(ModelExecutor(Arc::new(model))))?;
    say!(
        "convoy worker: {} listening on {} with {} lanes ({})\n",
        args.name,
        host.addr(),
        args.lanes,
        host.worker_ids().join(", ")
    );
    wait_for_signal()?;
    let s = host.status();
    host.shutdown();
    say!(
        "convoy worker: stopped. batches {}, refused over capacity {}, bad input {}, failed {}\n",
        s.batches,
        s.refusals,
        s.bad_input,
        s.failed
    );
    Ok(())
}

fn wait_for_signal() -> Result<(), Fail> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(convoy_server::shutdown_signal());
    Ok(())
}

/// A frontend of the built-in model on the pool at `args.redis`: its
/// runtime, for `convoy serve` to put behind HTTP.
pub(crate) fn frontend(
    args: &PoolArgs,
    name: &str,
    config: convoy::Config,
    model: convoy::model::PoolDense,
) -> Result<Frontend<Input, Vec<f32>>, Fail> {
    let url = redis_url(args)?;
    let window = args.window()?;
    let mut cfg = FrontendConfig::new(url, name);
    cfg.pool = args.pool.clone();
    cfg.liveness = window;
    cfg.heartbeat = window / 4;
    let checker = ModelExecutor(Arc::new(model));
    let f = Frontend::start_with(cfg, config, tokens_of, move |i| checker.check(i))?;
    Ok(f)
}

/// `convoy cluster …`.
pub(crate) fn cluster(command: &ClusterCommand) -> Result<(), Fail> {
    match command {
        ClusterCommand::Status(args) => status(args),
    }
}

fn status(args: &StatusArgs) -> Result<(), Fail> {
    let url = redis_url(&args.pool)?;
    let window = args.pool.window()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let s = rt.block_on(async {
        let pool = Pool::connect(url, &args.pool.pool).await?;
        pool.status(window)
            .await
            .map_err(|e| convoy_cluster::ClusterError::Unreachable {
                url: url.to_owned(),
                reason: e.to_string(),
            })
    })?;
    if args.json {
        say!("{}\n", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    say!("workers ({}):\n", s.workers.len());
    for w in &s.workers {
        let at = w.info.as_ref().map_or("?".to_owned(), |i| i.addr.clone());
        let seen = w
            .seen_ms_ago
            .map_or("never".to_owned(), |ms| format!("{ms} ms ago"));
        say!(
            "  {:<20} {:<5} slots {:>3}/{:<4} tokens {:>7}/{:<8} at {} (seen {})\n",
            w.id,
            if w.live { "live" } else { "DEAD" },
            w.held.0,
            w.slots,
            w.held.1,
            w.tokens,
            at,
            seen
        );
    }
    say!("frontends ({}):\n", s.frontends.len());
    for f in &s.frontends {
        let (slots, tokens) = f
            .usage
            .values()
            .fold((0, 0), |(a, b), (s, t)| (a + s, b + t));
        say!(
            "  {:<20} {:<5} holds slots {slots}, tokens {tokens} on {} workers (seen {} ms ago)\n",
            f.id,
            if f.live { "live" } else { "stale" },
            f.usage.len(),
            f.seen_ms_ago
        );
    }
    say!("recent shortfalls ({}):\n", s.shortfalls.len());
    for r in &s.shortfalls {
        let fields: Vec<String> = r.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        say!("  {} {}\n", r.id, fields.join(" "));
    }
    Ok(())
}
