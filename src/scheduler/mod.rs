//! The scheduler: the one owner of runner state, and the only module that decides to start or stop an engine.
//! An actor task holds the [`decide::State`]; HTTP handlers talk to it through [`Scheduler`] (acquire a [`Lease`]
//! on a ready runner, list runners, unload, shut down). Decisions are pure (`decide`); this file only carries out
//! their actions: spawning runner tasks, cancelling them, and answering waiters. It also measures memory: right
//! after a load and every [`MEASURE_EVERY`], off the actor's thread, reporting back a `Measured` event.

pub mod decide;
pub mod memory;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::KeepAlive;
use crate::engines::process::{free_port, EngineProcess};
use crate::engines::sandbox::confine::Sandbox;
use crate::engines::{self, EngineCommand, EngineFinder, LaunchSpec, Mode, Timeouts};
use crate::gpu::{self, GpuProbe, ProbeKind};
use crate::metrics::Metrics;
use decide::{decide, Action, Event, Phase, RunnerId, State, WaiterId};
pub use decide::{Endpoint, Rejection, RunnerKey, Selector};
pub use memory::{Demand, Limits, Usage};

/// How often runners' memory is measured while any is loaded.
pub const MEASURE_EVERY: Duration = Duration::from_secs(2);

/// Why a request could not get a runner.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AcquireError {
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    EngineFailed(String),
    #[error("the model was unloaded while it was loading")]
    Unloaded,
    #[error("{0}")]
    NoMemory(String),
    #[error("{0}")]
    Busy(String),
}

impl From<Rejection> for AcquireError {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::ShuttingDown => AcquireError::ShuttingDown,
            Rejection::EngineFailed(e) => AcquireError::EngineFailed(e),
            Rejection::Unloaded => AcquireError::Unloaded,
            Rejection::NoMemory(m) => AcquireError::NoMemory(m),
            Rejection::Busy(m) => AcquireError::Busy(m),
        }
    }
}

/// How a lease whose engine died before the request reached it gets a fresh one: acquiring again, the same way
/// (set by whoever acquired it; the scheduler only carries it).
pub type Renew = Box<
    dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Lease>> + Send>>
        + Send
        + Sync,
>;

/// A request's hold on a ready runner; dropping it tells the scheduler the request ended.
pub struct Lease {
    pub endpoint: Endpoint,
    /// The engine the runner runs.
    pub engine: engines::EngineKind,
    /// The only model name the engine answers to, for engines that check it: the request's `model` is rewritten
    /// to it. `None` for engines that answer to any (`Engine::answers_any_model_name`).
    pub served_name: Option<String>,
    runner: RunnerId,
    tx: mpsc::UnboundedSender<Msg>,
    /// Turns true when the runner's engine stopped answering its health checks.
    hung: watch::Receiver<bool>,
    /// Turns true when the runner is over (its engine gone and the scheduler told).
    exited: watch::Receiver<bool>,
    /// Acquires again, for a request whose engine died before it reached it (`take_renewal`).
    pub renew: Option<Renew>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("endpoint", &self.endpoint)
            .field("engine", &self.engine)
            .field("runner", &self.runner)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// A request could not reach this lease's engine: if the engine process has died (the moment between its
    /// death and the scheduler hearing of it is when such a grant happens), waits until the scheduler has let the
    /// runner go and returns how to acquire again; `None` when the engine is alive (its refusal is the error) or
    /// there is no way to renew.
    pub async fn take_renewal(&mut self, within: Duration) -> Option<Renew> {
        if !crate::engines::process::dead(self.endpoint.pid) {
            return None;
        }
        let mut exited = self.exited.clone();
        tokio::time::timeout(within, exited.wait_for(|e| *e))
            .await
            .ok()?
            .ok()?;
        self.renew.take()
    }

    /// Resolves if the engine is declared unresponsive (and is being killed); never otherwise.
    pub async fn unresponsive(&self) {
        let mut hung = self.hung.clone();
        if hung.wait_for(|h| *h).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Event(Event::Released {
            runner: self.runner,
        }));
    }
}

/// One runner as `/engines/ps` shows it.
#[derive(Debug, Clone)]
pub struct RunnerInfo {
    pub model_id: String,
    pub model_name: String,
    pub engine: engines::EngineKind,
    pub mode: Mode,
    /// Waiting for memory to start.
    pub queued: bool,
    pub loading: bool,
    /// Requests waiting for it to be ready (queued or loading).
    pub waiting: usize,
    pub in_flight: u32,
    pub last_used: Option<SystemTime>,
    pub keep_alive: KeepAlive,
    pub endpoint: Option<Endpoint>,
    pub context_size: u32,
    /// Expected bytes (the prediction, or what the same model measured before).
    pub predicted: u64,
    /// Largest measured bytes, once measured.
    pub measured: Option<u64>,
    /// Bytes per device it holds: placed, then measured.
    pub usage: Usage,
    /// The speculative draft's display name, when it has one.
    pub draft: Option<String>,
    /// ... and its model id.
    pub draft_id: Option<String>,
    /// `[[models]] pinned`: never evicted.
    pub pinned: bool,
}

impl RunnerInfo {
    /// Whether the runner loads model `id`: as its model, or as its speculative draft.
    pub fn uses(&self, id: &str) -> bool {
        self.model_id == id || self.draft_id.as_deref() == Some(id)
    }
}

enum Msg {
    Event(Event),
    Acquire {
        key: RunnerKey,
        launch: LaunchSpec,
        demand: Demand,
        reply: oneshot::Sender<Result<Lease, AcquireError>>,
    },
    Snapshot(oneshot::Sender<Vec<RunnerInfo>>),
    Unload {
        selector: Selector,
        force: bool,
        reply: oneshot::Sender<Vec<watch::Receiver<bool>>>,
    },
    Shutdown(oneshot::Sender<()>),
    /// Time to measure (from the timer, or after a load).
    Measure,
    /// A measurement finished (the event is `None` when the probe failed).
    MeasureDone(Option<Event>),
}

/// Reads the runners' state from the scheduler's actor; cheap to clone.
#[derive(Clone)]
pub struct Snapshots {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Snapshots {
    /// Every runner as `/engines/ps` shows it (empty once the scheduler is gone).
    pub async fn get(&self) -> Vec<RunnerInfo> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Snapshot(reply)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

pub struct Scheduler {
    tx: mpsc::UnboundedSender<Msg>,
    actor: Mutex<Option<JoinHandle<()>>>,
    probe: ProbeKind,
    devices: usize,
}

impl Scheduler {
    /// Starts the actor. `finder` finds how to start each engine (or why it cannot, reported per load); `probe`
    /// measures memory, read once here so that admission knows the devices from the first request; `on_stop` is
    /// told of a ready engine about to be stopped (the proxy drops its connections to it).
    pub fn start(
        finder: Arc<EngineFinder>,
        timeouts: Timeouts,
        limits: Limits,
        probe: Arc<dyn GpuProbe>,
        on_stop: OnStop,
        metrics: Arc<Metrics>,
    ) -> Scheduler {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = State::new(limits);
        let kind = probe.kind();
        match probe.snapshot(&[]) {
            Ok(snap) => {
                for d in &snap.devices {
                    tracing::info!(
                        device = d.index,
                        name = d.name,
                        total = %memory::human(d.total),
                        free = %memory::human(d.free),
                        "memory"
                    );
                }
                decide(
                    &mut state,
                    Event::Measured {
                        devices: snap.devices,
                        runners: BTreeMap::new(),
                    },
                    Instant::now(),
                );
            }
            Err(e) => tracing::warn!(error = e, "cannot read memory; loads are not limited by it"),
        }
        let devices = state.devices.len();
        let actor = Actor {
            state,
            probe,
            on_stop,
            metrics,
            measuring: false,
            waiters: HashMap::new(),
            runners: HashMap::new(),
            next_waiter: AtomicU64::new(0),
            shutdown_waiters: Vec::new(),
            tx: tx.clone(),
            finder,
            timeouts,
            tracker: TaskTracker::new(),
        };
        let handle = tokio::spawn(actor.run(rx));
        Scheduler {
            tx,
            actor: Mutex::new(Some(handle)),
            probe: kind,
            devices,
        }
    }

    /// Replaces the admission limits (a configuration reload); queued loads are reconsidered at once.
    pub fn set_limits(&self, limits: Limits) {
        let _ = self.tx.send(Msg::Event(Event::Limits(limits)));
    }

    /// What memory admission measures.
    pub fn probe_kind(&self) -> ProbeKind {
        self.probe
    }

    /// How many devices the probe saw at start (GPUs, or 1 for host memory).
    pub fn device_count(&self) -> usize {
        self.devices
    }

    /// Waits for a ready runner for `key`, starting one if needed (once `demand` fits in memory). Concurrent
    /// callers share one load.
    pub async fn acquire(
        &self,
        key: RunnerKey,
        launch: LaunchSpec,
        demand: Demand,
    ) -> Result<Lease, AcquireError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Acquire {
                key,
                launch,
                demand,
                reply,
            })
            .map_err(|_| AcquireError::ShuttingDown)?;
        rx.await.unwrap_or(Err(AcquireError::ShuttingDown))
    }

    pub async fn snapshot(&self) -> Vec<RunnerInfo> {
        self.snapshots().get().await
    }

    /// A handle that reads snapshots and nothing else (what `service::supervise` needs).
    pub fn snapshots(&self) -> Snapshots {
        Snapshots {
            tx: self.tx.clone(),
        }
    }

    /// Stops the selected runners (idle ones only unless `force`) and waits until their processes are gone.
    /// Returns how many were stopped.
    pub async fn unload(&self, selector: Selector, force: bool) -> usize {
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(Msg::Unload {
                selector,
                force,
                reply,
            })
            .is_err()
        {
            return 0;
        }
        let exits = rx.await.unwrap_or_default();
        let n = exits.len();
        for mut exited in exits {
            let _ = exited.wait_for(|done| *done).await;
        }
        n
    }

    /// Stops every runner (SIGTERM, grace, SIGKILL) and waits until all are reaped. Later requests are refused.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(reply)).is_ok() {
            let _ = rx.await;
        }
        let handle = self.actor.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }
}

/// Called with the endpoint of a ready engine the scheduler is about to stop.
pub type OnStop = Box<dyn Fn(Endpoint) + Send>;

struct RunnerHandle {
    cancel: CancellationToken,
    exited: watch::Receiver<bool>,
    /// Set by the runner when its engine stops answering health checks.
    hung: watch::Receiver<bool>,
    /// Known once it is ready.
    endpoint: Option<Endpoint>,
}

struct Actor {
    state: State,
    probe: Arc<dyn GpuProbe>,
    on_stop: OnStop,
    metrics: Arc<Metrics>,
    /// A measurement is running (at most one at a time).
    measuring: bool,
    waiters: HashMap<WaiterId, oneshot::Sender<Result<Lease, AcquireError>>>,
    runners: HashMap<RunnerId, RunnerHandle>,
    next_waiter: AtomicU64,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    tx: mpsc::UnboundedSender<Msg>,
    finder: Arc<EngineFinder>,
    timeouts: Timeouts,
    tracker: TaskTracker,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut measure = tokio::time::interval(MEASURE_EVERY);
        measure.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.state.next_deadline();
            let msg = tokio::select! {
                msg = rx.recv() => msg,
                _ = sleep_until(deadline), if deadline.is_some() => Some(Msg::Event(Event::Tick)),
                _ = measure.tick() => Some(Msg::Measure),
            };
            // Unreachable None: the actor holds a sender itself.
            let Some(msg) = msg else { break };
            match msg {
                Msg::Event(event) => {
                    self.apply(event);
                }
                Msg::Acquire {
                    key,
                    launch,
                    demand,
                    reply,
                } => {
                    let waiter = self.next_waiter.fetch_add(1, Ordering::Relaxed);
                    self.waiters.insert(waiter, reply);
                    self.apply(Event::Acquire {
                        waiter,
                        key,
                        launch,
                        demand,
                    });
                }
                Msg::Measure => self.measure(),
                Msg::MeasureDone(event) => {
                    self.measuring = false;
                    if let Some(event) = event {
                        self.apply(event);
                    }
                }
                Msg::Snapshot(reply) => {
                    let _ = reply.send(self.snapshot());
                }
                Msg::Unload {
                    selector,
                    force,
                    reply,
                } => {
                    let stopped = self.apply(Event::Unload { selector, force });
                    let exits = stopped
                        .iter()
                        .filter_map(|id| self.runners.get(id))
                        .map(|h| h.exited.clone());
                    let _ = reply.send(exits.collect());
                }
                Msg::Shutdown(reply) => {
                    self.shutdown_waiters.push(reply);
                    self.apply(Event::Shutdown);
                }
            }
            if self.state.drained() {
                self.tracker.close();
                self.tracker.wait().await;
                for w in self.shutdown_waiters.drain(..) {
                    let _ = w.send(());
                }
                break;
            }
        }
    }

    /// Runs `decide` and carries out its actions; returns the runners it stopped.
    fn apply(&mut self, event: Event) -> Vec<RunnerId> {
        let loaded = matches!(event, Event::Loaded { .. });
        match &event {
            Event::Exited { runner, .. } | Event::LoadFailed { runner, .. } => {
                self.runners.remove(runner);
            }
            Event::Loaded { runner, endpoint } => {
                if let Some(h) = self.runners.get_mut(runner) {
                    h.endpoint = Some(*endpoint);
                }
            }
            _ => {}
        }
        if loaded {
            // Replace the prediction with a measurement as soon as the engine is up.
            let _ = self.tx.send(Msg::Measure);
        }
        let mut stopped = Vec::new();
        let actions = decide(&mut self.state, event, Instant::now());
        for model in self.state.evicted.drain(..) {
            self.metrics.eviction(&model);
        }
        for action in actions {
            match action {
                Action::Spawn {
                    runner,
                    launch,
                    pin,
                } => self.spawn(runner, launch, pin),
                Action::Stop { runner } => {
                    if let Some(h) = self.runners.get(&runner) {
                        if let Some(endpoint) = h.endpoint {
                            (self.on_stop)(endpoint);
                        }
                        h.cancel.cancel();
                    }
                    stopped.push(runner);
                }
                Action::Grant {
                    waiter,
                    runner,
                    endpoint,
                } => {
                    let (hung, exited) = match self.runners.get(&runner) {
                        Some(h) => (h.hung.clone(), h.exited.clone()),
                        None => (watch::channel(false).1, watch::channel(true).1),
                    };
                    let launch = self
                        .state
                        .find(runner)
                        .and_then(|key| self.state.runners.get(key))
                        .map(|r| &r.launch);
                    let Some(launch) = launch else {
                        // A grant names a runner the state holds; if not, the waiter is told, not guessed at,
                        // and the grant is given back as a dropped lease would.
                        let _ = self.tx.send(Msg::Event(Event::Released { runner }));
                        if let Some(w) = self.waiters.remove(&waiter) {
                            let _ = w.send(Err(AcquireError::EngineFailed(
                                "the runner vanished before it was granted".into(),
                            )));
                        }
                        continue;
                    };
                    let engine = launch.engine;
                    let served_name =
                        (!engine.answers_any_model_name()).then(|| launch.model_name.clone());
                    let lease = Lease {
                        endpoint,
                        engine,
                        served_name,
                        runner,
                        tx: self.tx.clone(),
                        hung,
                        exited,
                        renew: None,
                    };
                    // If the client left, the returned lease is dropped here, which releases it.
                    if let Some(w) = self.waiters.remove(&waiter) {
                        let _ = w.send(Ok(lease));
                    }
                }
                Action::Reject { waiter, why } => {
                    if let Some(w) = self.waiters.remove(&waiter) {
                        let _ = w.send(Err(why.into()));
                    }
                }
            }
        }
        stopped
    }

    /// Reads memory off the actor's thread for every runner with a known pid; the result comes back as
    /// `MeasureDone`.
    fn measure(&mut self) {
        if self.measuring || self.state.shutting_down {
            return;
        }
        let pids: Vec<(RunnerId, u32)> = self
            .runners
            .iter()
            .filter_map(|(id, h)| h.endpoint.map(|e| (*id, e.pid)))
            .collect();
        self.measuring = true;
        let (probe, tx) = (self.probe.clone(), self.tx.clone());
        tokio::task::spawn_blocking(move || {
            let list: Vec<u32> = pids.iter().map(|(_, p)| *p).collect();
            let event = match probe.snapshot(&list) {
                Ok(snap) => {
                    let runners = pids
                        .iter()
                        .map(|(id, pid)| (*id, gpu::attribute(&snap, *pid, gpu::pgid_of)))
                        .collect();
                    Some(Event::Measured {
                        devices: snap.devices,
                        runners,
                    })
                }
                Err(e) => {
                    tracing::warn!(error = e, "cannot read memory");
                    None
                }
            };
            let _ = tx.send(Msg::MeasureDone(event));
        });
    }

    fn spawn(&mut self, runner: RunnerId, launch: LaunchSpec, pin: Option<Vec<u32>>) {
        let cancel = CancellationToken::new();
        let (exited_tx, exited) = watch::channel(false);
        let (hung_tx, hung) = watch::channel(false);
        self.runners.insert(
            runner,
            RunnerHandle {
                cancel: cancel.clone(),
                exited,
                hung,
                endpoint: None,
            },
        );
        // Pinning means something only to CUDA; in CPU mode the one "device" is host memory.
        let env = match pin {
            Some(devices) if self.probe.kind() == ProbeKind::Nvml => engines::cuda_pin(&devices),
            _ => Vec::new(),
        };
        let command = self.finder.find(launch.engine);
        let engine = EngineSetup {
            command,
            sandbox: self.finder.sandbox.clone(),
            install_dir: launch.engine.install_dir(&self.finder.data_dir),
            env,
            timeouts: self.timeouts,
            metrics: self.metrics.clone(),
            hung: hung_tx,
        };
        let task = run_runner(runner, launch, engine, self.tx.clone(), cancel);
        self.tracker.spawn(async move {
            task.await;
            let _ = exited_tx.send(true);
        });
    }

    fn snapshot(&self) -> Vec<RunnerInfo> {
        let (now, wall) = (Instant::now(), SystemTime::now());
        self.state
            .runners
            .iter()
            .map(|(key, r)| {
                let waiting = match &r.phase {
                    Phase::Queued { waiters, .. } | Phase::Loading { waiters } => waiters.len(),
                    Phase::Ready { waiting, .. } => waiting.len(),
                };
                let (queued, loading, in_flight, endpoint) = match &r.phase {
                    Phase::Queued { .. } => (true, false, 0, None),
                    Phase::Loading { .. } => (false, true, 0, None),
                    Phase::Ready {
                        endpoint,
                        in_flight,
                        ..
                    } => (false, false, *in_flight, Some(*endpoint)),
                };
                RunnerInfo {
                    model_id: key.model_id.clone(),
                    model_name: r.launch.model_name.clone(),
                    engine: r.launch.engine,
                    mode: key.mode,
                    queued,
                    loading,
                    waiting,
                    in_flight,
                    last_used: r.last_used.map(|t| wall - now.saturating_duration_since(t)),
                    keep_alive: r.launch.keep_alive,
                    endpoint,
                    context_size: r.launch.context_size,
                    predicted: r.demand.bytes(),
                    measured: r.measured,
                    usage: r.usage.clone(),
                    draft: r.launch.draft.as_ref().map(|d| d.name.clone()),
                    draft_id: key.draft.clone(),
                    pinned: r.launch.pinned,
                }
            })
            .collect()
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d.into()).await;
    }
}

/// One runner's life: spawn, wait for readiness, serve until the engine exits or the scheduler cancels, stop.
/// Reports `Loaded`/`LoadFailed` and then `Exited` back to the actor. Never restarts the engine itself.
/// How a runner starts its engine, and where it reports.
struct EngineSetup {
    command: Result<EngineCommand, String>,
    /// Confines each start (`engines::sandbox`).
    sandbox: Arc<Sandbox>,
    /// The engine's install directory, which its sandbox may read.
    install_dir: PathBuf,
    /// Added to the engine's environment (GPU pinning).
    env: Vec<(String, String)>,
    timeouts: Timeouts,
    metrics: Arc<Metrics>,
    /// Told when the engine stops answering its health checks (leases waiting on it answer 504).
    hung: watch::Sender<bool>,
}

/// Engine starts tried when the port picked for it turns out to be taken.
const PORT_ATTEMPTS: u32 = 3;

/// Consecutive failed health checks after which a ready engine is declared unresponsive and killed.
const HEALTH_FAILURES: u32 = 3;

/// Resolves once `port` has failed [`HEALTH_FAILURES`] health checks in a row, `every` apart (each may take up
/// to `every`); returns how long the engine was silent.
async fn unresponsive(port: u16, every: Duration) -> Duration {
    let mut failures = 0;
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let ok = matches!(
            tokio::time::timeout(every, crate::engines::process::probe_health(port)).await,
            Ok(Some(200))
        );
        if ok {
            failures = 0;
            since = Instant::now();
        } else {
            failures += 1;
            if failures >= HEALTH_FAILURES {
                return since.elapsed();
            }
        }
    }
}

async fn run_runner(
    runner: RunnerId,
    launch: LaunchSpec,
    engine: EngineSetup,
    tx: mpsc::UnboundedSender<Msg>,
    cancel: CancellationToken,
) {
    let EngineSetup {
        command,
        sandbox,
        install_dir,
        env,
        timeouts,
        metrics,
        hung,
    } = engine;
    let send = |event| {
        let _ = tx.send(Msg::Event(event));
    };
    let model = launch.model_name.as_str();
    let started = Instant::now();
    // The port is free when we pick it but another process may take it before the engine binds it: an engine that
    // says so is started again on another port.
    let mut attempt = 1;
    let (mut process, port, ready) = loop {
        let spawned = command.clone().and_then(|command| {
            let port = free_port().map_err(|e| format!("no free port for the engine: {e}"))?;
            let args = engines::argv(&command, &launch, port);
            let confinement = sandbox.prepare(&command, &install_dir, &launch)?;
            EngineProcess::spawn(&command.program, &args, &env, model, confinement)
                .map(|p| (p, port))
                .map_err(|e| e.to_string())
        });
        let (mut process, port) = match spawned {
            Ok(p) => p,
            Err(error) => {
                tracing::error!(model, error, "cannot start the engine");
                metrics.load(model, "failed", None);
                return send(Event::LoadFailed {
                    runner,
                    error,
                    oom: false,
                });
            }
        };
        let ready = tokio::select! {
            r = process.wait_ready(port, timeouts.startup) => Some(r),
            _ = cancel.cancelled() => None,
        };
        if matches!(ready, Some(Err(_)))
            && attempt < PORT_ATTEMPTS
            && engines::port_taken(&process.logs().tail(20))
        {
            process.stop(timeouts.stop).await;
            tracing::warn!(
                model,
                port,
                attempt,
                "the engine's port was taken; starting it on another one"
            );
            attempt += 1;
            continue;
        }
        break (process, port, ready);
    };
    match ready {
        None => {
            process.stop(timeouts.stop).await;
            return send(Event::LoadFailed {
                runner,
                error: "stopped while loading".into(),
                oom: false,
            });
        }
        Some(Err(e)) => {
            process.stop(timeouts.stop).await;
            let oom = engines::out_of_memory(&process.logs().tail(40));
            tracing::error!(model, error = %e, oom, "the engine failed to load");
            metrics.load(model, if oom { "oom" } else { "failed" }, None);
            return send(Event::LoadFailed {
                runner,
                error: e.to_string(),
                oom,
            });
        }
        Some(Ok(())) => {
            let pid = process.pid();
            tracing::info!(
                model,
                mode = launch.mode.as_str(),
                runner.pid = pid,
                port,
                load_ms = started.elapsed().as_millis() as u64,
                "engine ready"
            );
            metrics.load(model, "ok", Some(started.elapsed()));
            send(Event::Loaded {
                runner,
                endpoint: Endpoint { port, pid },
            });
        }
    }
    let reason = tokio::select! {
        status = process.reaped() => {
            // Out of the scheduler's choices at once: reading the rest of its output (`wait_exit`) takes a moment.
            send(Event::Exiting { runner, status: status.clone() });
            process.wait_exit().await;
            let tail = process.logs().tail(10);
            tracing::warn!(model, status, tail, "the engine exited unexpectedly");
            format!("the engine for {model} {status}")
        }
        _ = cancel.cancelled() => process.stop(timeouts.stop).await,
        silent = unresponsive(port, timeouts.health) => {
            tracing::error!(model, silent_ms = silent.as_millis() as u64, "the engine stopped answering its health checks; killing it");
            // First out of the scheduler's choices, so no request is granted to it while it is killed.
            send(Event::Unresponsive { runner });
            let _ = hung.send(true);
            // A stopped or wedged process ignores SIGTERM: no grace.
            process.stop(Duration::ZERO).await;
            format!("the engine for {model} stopped responding for {silent:?} and was killed")
        }
    };
    send(Event::Exited { runner, reason });
}
