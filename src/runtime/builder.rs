//! [`Builder`]: the config, the executor and the callbacks a runtime starts
//! with, and `build`, which validates them and starts the threads.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use super::collector::{self, Collector};
use super::error::BuildError;
use super::worker::spawn_worker;
use super::{
    Fleet, Handle, Health, Knobs, Release, Runtime, Shared, Spawner, Threads, WorkerState,
};
use crate::config::{Config, ConfigError};
use crate::device::executor::{BatchFn, Executor};
use crate::device::stop::Interruptible;
use crate::intake::doorbell::Doorbell;
use crate::intake::gate::Gate;
use crate::intake::ring;
use crate::intake::shed::Shedding;
use crate::intake::twins::WaitingKeys;
use crate::intake::{Intake, Tenants};
use crate::observe::sla::SlaBoard;
use crate::observe::stats::Counters;
use crate::priority::Priority;
use crate::request::Cost;
use crate::runtime::clearing::Clearing;
use crate::runtime::control::{Mode, Notice};

impl Runtime<(), ()> {
    /// Starts a builder.
    pub fn builder<I: Send + 'static, O: Send + 'static>() -> Builder<I, O> {
        Builder {
            config: Config::default(),
            executor: None,
            on_shortfall: None,
            cloner: None,
        }
    }
}

/// Builds a [`Runtime`].
pub struct Builder<I, O> {
    config: Config,
    executor: Option<Arc<dyn Executor<I, O>>>,
    on_shortfall: Option<Box<dyn Fn(Cost) + Send + 'static>>,
    cloner: Option<fn(&O) -> O>,
}

impl<I: Send + 'static, O: Clone + Send + 'static> Builder<I, O> {
    /// Honours [`Request::dedup_key`](crate::Request::dedup_key): requests
    /// with the same key waiting at the same time run once and each ticket
    /// gets a clone of the output (the rule is in `convoy::dedup`'s source docs). Without this,
    /// a request with a key is refused with `DedupNotEnabled`.
    ///
    /// ```
    /// use convoy::{Config, Request, Runtime};
    /// let rt = Runtime::builder()
    ///     .config(Config { cpu_workers: 1, ..Config::default() })
    ///     .batch_fn(|xs: &[u32]| xs.iter().map(|x| x + 1).collect())
    ///     .deduplicate()
    ///     .build()?;
    /// let h = rt.handle();
    /// let a = h.submit(Request::new(1).dedup_key("same")).unwrap();
    /// let b = h.submit(Request::new(1).dedup_key("same")).unwrap();
    /// assert_eq!((a.wait(), b.wait()), (Ok(2), Ok(2)));
    /// rt.shutdown();
    /// # Ok::<(), convoy::BuildError>(())
    /// ```
    pub fn deduplicate(mut self) -> Self {
        self.cloner = Some(<O as Clone>::clone);
        self
    }
}

impl<I: Send + 'static, O: Send + 'static> Builder<I, O> {
    /// Sets the config (default: `Config::default()`).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// A CPU executor from a closure run on each worker's thread.
    pub fn batch_fn<F>(self, f: F) -> Self
    where
        F: Fn(&[I]) -> Vec<O> + Send + Sync + 'static,
    {
        self.executor(BatchFn(f))
    }

    /// Any executor.
    pub fn executor(mut self, executor: impl Executor<I, O>) -> Self {
        self.executor = Some(Arc::new(executor));
        self
    }

    /// Called on the collector thread when a request fits no worker right
    /// now (seed 003's "need a new worker" signal). Keep it short: the
    /// collector waits for it. A panic in it is caught and logged, and the
    /// collector goes on.
    pub fn on_capacity_shortfall(mut self, f: impl Fn(Cost) + Send + 'static) -> Self {
        self.on_shortfall = Some(Box::new(f));
        self
    }

    /// Validates the config and starts the collector and worker threads.
    pub fn build(self) -> Result<Runtime<I, O>, BuildError> {
        self.config.validate()?;
        let executor = self.executor.ok_or(BuildError::NoExecutor)?;
        let specs = self.config.fleet();
        let (intake, intake_rx) = Intake::new(self.config.intake)?;
        let total_slots: usize = specs.iter().map(|w| w.capacity.slots as usize).sum();
        let (release_tx, release_rx) =
            ring::channel::<Release<I, O>>(total_slots.clamp(2, 1 << 20).next_power_of_two())
                .map_err(|e| {
                    BuildError::Config(ConfigError::Invalid {
                        key: "workers".into(),
                        reason: e.to_string(),
                    })
                })?;
        let shared = Arc::new(Shared {
            gate: Gate::new(),
            doorbell: Doorbell::new(),
            counters: Counters::new(),
            fleet: ArcSwap::from_pointee(Fleet::new(
                specs
                    .iter()
                    .map(|spec| {
                        Arc::new(WorkerState {
                            spec: spec.clone(),
                            health: Health::Up,
                            retired: false,
                        })
                    })
                    .collect(),
            )),
            epoch: Instant::now(),
            mode: Mode::new(),
            changed: Notice::new(),
            knobs: ArcSwap::from_pointee(Knobs::of(&self.config)),
            sla: SlaBoard::default(),
            reserved: ArcSwap::from_pointee(Vec::new()),
            dedup: self.cloner.is_some(),
            // With dedup, sized for as many groups as the intake holds
            // requests.
            waiting_keys: Arc::new(WaitingKeys::for_groups(if self.cloner.is_some() {
                intake
                    .capacity_per_priority()
                    .saturating_mul(Priority::COUNT)
            } else {
                0
            })),
            clearing: Clearing::new(),
            sweep_wanted: Notice::new(),
            shedding: Shedding::new(),
            tenants: Tenants::new(self.config.tenants.limits()),
        });

        let mut worker_threads = Vec::new();
        let mut worker_rings = Vec::new();
        for (index, spec) in specs.iter().enumerate() {
            let (link, handle) = spawn_worker(index, spec, &executor, &release_tx, &shared)?;
            worker_rings.push(Some(link));
            worker_threads.push(handle);
        }
        let checker = executor.clone();
        let new_links = Arc::new(Mutex::new(Vec::new()));
        let spawner = Spawner {
            config: self.config.clone(),
            executor,
            releases: release_tx.clone(),
            new_links: new_links.clone(),
        };
        drop(release_tx);

        let collector = Collector::start(
            collector::Start {
                shared: shared.clone(),
                intake: intake_rx,
                releases: release_rx,
                workers: worker_rings,
                new_links,
                on_shortfall: self.on_shortfall,
                cloner: self.cloner,
                rerun: checker.interruptible() == Interruptible::Rerun,
            },
            &self.config,
        )?;

        Ok(Runtime {
            handle: Handle::new(intake, shared.clone(), checker),
            shared,
            threads: Mutex::new(Some(Threads {
                collector,
                workers: worker_threads,
            })),
            joining: Default::default(),
            control: Mutex::new(spawner),
        })
    }
}
