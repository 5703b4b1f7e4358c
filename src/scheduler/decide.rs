//! The scheduler's decisions, as a pure state machine: `decide(&mut State, Event, now) -> Vec<Action>`. No tokio,
//! no processes, no I/O — the actor in `scheduler::mod` turns actions into effects and effects back into events.
//! Table-tested below.
//!
//! Rules: one runner per (model, mode); requests for a queued or loading runner join it; a ready runner is granted
//! at once (and takes the request's keep-alive), so requests for loaded models never wait behind a load; a request
//! for another context size or other flags restarts an idle runner with them. A new runner is *queued* until
//! memory admits it (`memory::plan`): it starts when it fits; idle runners are evicted (LRU) when that makes it fit,
//! and it starts once they have exited; it waits while only busy runners could make room; it is refused (507) when
//! it can never fit. A ready runner serves at most `max_in_flight` requests at once; more wait for a free slot, in
//! arrival order. Both queues are FIFO, bounded together (`max_queue`, 503) and timed (`queue_timeout`, 503). A load that
//! fails for lack of memory evicts every idle runner on its devices and is retried once. A runner is stopped when
//! idle past its keep-alive, when unloaded (idle only, unless forced), or at shutdown; a runner that fails or
//! exits is forgotten at once so the next request starts a new one. Measurements replace predictions and are
//! remembered per (model, mode, context, flags).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::memory::{self, Demand, Device, Hold, Holder, Limits, Plan, Usage};
use crate::config::KeepAlive;
use crate::engines::{LaunchSpec, Mode};
use crate::gpu::DeviceMemory;

pub type WaiterId = u64;
pub type RunnerId = u64;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunnerKey {
    pub model_id: String,
    pub mode: Mode,
    /// The speculative draft's model id: a model with another draft is another runner, as in DMR (whose key is
    /// backend, model, draft, mode; the backend follows from the model here).
    pub draft: Option<String>,
}

/// What a measurement is remembered by: the same model with the same settings (and draft) uses the same memory.
pub type Identity = (String, Mode, Option<String>, u32, Vec<String>);

/// Where a ready runner listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub port: u16,
    pub pid: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Waiting for memory; `after`: runners evicted after an out-of-memory load, which must exit first.
    Queued {
        waiters: Vec<WaiterId>,
        since: Instant,
        seq: u64,
        after: Vec<RunnerId>,
    },
    Loading {
        waiters: Vec<WaiterId>,
    },
    Ready {
        endpoint: Endpoint,
        in_flight: u32,
        /// Requests waiting for a free slot (`in_flight` is at `max_in_flight`), with when they arrived.
        waiting: VecDeque<(WaiterId, Instant)>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Runner {
    pub id: RunnerId,
    pub launch: LaunchSpec,
    pub phase: Phase,
    pub last_used: Option<Instant>,
    /// What it is expected to need: the prediction, or what it measured last time.
    pub demand: Demand,
    /// What it holds per device: its placement until measured, then the measurement.
    pub usage: Usage,
    /// The largest measured total so far.
    pub measured: Option<u64>,
    /// Devices the engine is pinned to (`None`: unpinned, or pinned by the user's flags).
    pub pin: Option<Vec<u32>>,
    /// Already retried after running out of memory.
    pub retried: bool,
}

/// A runner told to stop: its memory counts until it has exited.
#[derive(Debug, Clone, PartialEq)]
pub struct Stopping {
    pub key: RunnerKey,
    pub usage: Usage,
}

#[derive(Debug, Default, Clone)]
pub struct State {
    pub runners: BTreeMap<RunnerKey, Runner>,
    /// Runners told to stop whose exit has not been seen yet.
    pub stopping: BTreeMap<RunnerId, Stopping>,
    pub shutting_down: bool,
    /// The devices as last measured (empty: unknown, memory is not limited unless a budget is set).
    pub devices: Vec<Device>,
    pub limits: Limits,
    /// Measured bytes per (model, mode, context, flags).
    pub learned: BTreeMap<Identity, u64>,
    /// Names of runners evicted for another load since the caller last took them (for metrics).
    pub evicted: Vec<String>,
    next_runner: RunnerId,
    next_seq: u64,
}

/// Which runners an unload applies to.
#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    All,
    Models(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
// Moved once each (into the actor, out of `decide`): boxing the launch would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    Acquire {
        waiter: WaiterId,
        key: RunnerKey,
        launch: LaunchSpec,
        /// The predicted need (replaced by what this model measured before, if it did).
        demand: Demand,
    },
    Loaded {
        runner: RunnerId,
        endpoint: Endpoint,
    },
    LoadFailed {
        runner: RunnerId,
        error: String,
        /// The engine said it ran out of memory.
        oom: bool,
    },
    Exited {
        runner: RunnerId,
        reason: String,
    },
    /// The runner's engine stopped answering its health checks and is being killed: no new request may be
    /// granted to it (its `Exited` follows).
    Unresponsive {
        runner: RunnerId,
    },
    /// The runner's engine exited by itself and has been reaped; its output is still being read, and its `Exited`
    /// follows. No new request may be granted to it meanwhile.
    Exiting {
        runner: RunnerId,
        status: String,
    },
    /// A request on this runner ended (also sent for a grant whose client had already left).
    Released {
        runner: RunnerId,
    },
    /// A memory reading: every device, and what each measured runner uses per device.
    Measured {
        devices: Vec<DeviceMemory>,
        runners: BTreeMap<RunnerId, Usage>,
    },
    Tick,
    /// New limits from a configuration reload.
    Limits(Limits),
    Unload {
        selector: Selector,
        force: bool,
    },
    Shutdown,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    ShuttingDown,
    EngineFailed(String),
    Unloaded,
    /// It can never fit (507).
    NoMemory(String),
    /// The queue for memory is full, or the wait timed out (503 with Retry-After).
    Busy(String),
}

#[derive(Debug, Clone, PartialEq)]
// Moved once each (into the actor, out of `decide`): boxing the launch would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Action {
    Spawn {
        runner: RunnerId,
        launch: LaunchSpec,
        /// Devices to make visible to the engine (`CUDA_VISIBLE_DEVICES`); `None`: leave it alone.
        pin: Option<Vec<u32>>,
    },
    Stop {
        runner: RunnerId,
    },
    Grant {
        waiter: WaiterId,
        runner: RunnerId,
        endpoint: Endpoint,
    },
    Reject {
        waiter: WaiterId,
        why: Rejection,
    },
}

impl State {
    pub fn new(limits: Limits) -> State {
        State {
            limits,
            ..State::default()
        }
    }

    pub fn find(&self, runner: RunnerId) -> Option<&RunnerKey> {
        self.runners
            .iter()
            .find(|(_, r)| r.id == runner)
            .map(|(k, _)| k)
    }

    /// True once shutdown was asked and every runner is gone.
    pub fn drained(&self) -> bool {
        self.shutting_down && self.runners.is_empty() && self.stopping.is_empty()
    }

    /// When the next idle runner's keep-alive, or the next queued request's wait, runs out.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timeout = self.limits.queue_timeout;
        self.runners
            .values()
            .filter_map(|r| match &r.phase {
                Phase::Queued { since, .. } => Some(*since + timeout),
                Phase::Ready { waiting, .. } if !waiting.is_empty() => {
                    waiting.front().map(|(_, since)| *since + timeout)
                }
                _ => idle_deadline(r),
            })
            .min()
    }

    /// Requests waiting: for memory to load their model, or for a free slot on a loaded one.
    pub fn queued(&self) -> usize {
        self.runners
            .values()
            .map(|r| match &r.phase {
                Phase::Queued { waiters, .. } => waiters.len(),
                Phase::Ready { waiting, .. } => waiting.len(),
                Phase::Loading { .. } => 0,
            })
            .sum()
    }

    fn remove(&mut self, runner: RunnerId) -> Option<Runner> {
        let key = self.find(runner)?.clone();
        self.runners.remove(&key)
    }

    /// Stops a runner (a queued one just goes away); its waiters, if any, are refused with `why`.
    fn stop(&mut self, key: &RunnerKey, actions: &mut Vec<Action>, why: Rejection) {
        let Some(r) = self.runners.remove(key) else {
            return;
        };
        match r.phase {
            Phase::Queued { waiters, .. } => return reject(waiters, why, actions),
            Phase::Loading { waiters } => reject(waiters, why, actions),
            Phase::Ready { waiting, .. } => {
                reject(waiting.into_iter().map(|(w, _)| w).collect(), why, actions)
            }
        }
        self.stopping.insert(
            r.id,
            Stopping {
                key: key.clone(),
                usage: r.usage,
            },
        );
        actions.push(Action::Stop { runner: r.id });
    }

    /// Queues a runner at the back of the line, or at the front (`first`: a retry, admitted once already).
    fn enqueue(&mut self, key: RunnerKey, mut runner: Runner, now: Instant, first: bool) {
        self.next_seq += 1;
        if let Phase::Queued { since, seq, .. } = &mut runner.phase {
            (*since, *seq) = (now, if first { 0 } else { self.next_seq });
        }
        self.runners.insert(key, runner);
    }

    /// The devices admission uses: as measured, else one of the budget's size when one is set.
    fn admission_devices(&self) -> Vec<Device> {
        match (self.devices.is_empty(), self.limits.budget) {
            (true, Some(budget)) => vec![Device {
                index: 0,
                name: "budget".into(),
                total: budget,
                free: budget,
                others: 0,
            }],
            _ => self.devices.clone(),
        }
    }

    /// Every runner that holds or will hold memory, as admission sees it.
    fn holders(&self) -> Vec<Holder> {
        let running = self.runners.values().filter_map(|r| {
            let hold = match r.phase {
                Phase::Queued { .. } => return None,
                _ if r.launch.pinned => Hold::Pinned,
                Phase::Ready { in_flight: 0, .. } => Hold::Idle {
                    last_used: r.last_used,
                },
                _ => Hold::Busy,
            };
            Some(Holder {
                id: r.id,
                usage: r.usage.clone(),
                hold,
            })
        });
        let stopping = self.stopping.iter().map(|(id, s)| Holder {
            id: *id,
            usage: s.usage.clone(),
            hold: Hold::Stopping,
        });
        running.chain(stopping).collect()
    }
}

fn identity(key: &RunnerKey, launch: &LaunchSpec) -> Identity {
    (
        key.model_id.clone(),
        key.mode,
        key.draft.clone(),
        launch.context_size,
        launch.runtime_flags.clone(),
    )
}

fn reject(waiters: Vec<WaiterId>, why: Rejection, actions: &mut Vec<Action>) {
    actions.extend(waiters.into_iter().map(|waiter| Action::Reject {
        waiter,
        why: why.clone(),
    }));
}

fn idle_deadline(r: &Runner) -> Option<Instant> {
    match (&r.phase, r.launch.keep_alive, r.last_used) {
        (Phase::Ready { in_flight: 0, .. }, KeepAlive::For(d), Some(t)) => Some(t + d),
        _ => None,
    }
}

pub fn decide(state: &mut State, event: Event, now: Instant) -> Vec<Action> {
    let mut actions = Vec::new();
    match event {
        Event::Acquire {
            waiter,
            key,
            launch,
            demand,
        } => {
            // A request for another context size, other flags or another draft reloads an idle runner of the
            // model and mode (one with another draft has another key); a busy or loading one keeps serving as it
            // is (its requests are not cut short), and the change applies once it is idle.
            let from = RunnerKey {
                model_id: key.model_id.clone(),
                mode: key.mode,
                draft: None,
            };
            let stale: Vec<RunnerKey> = state
                .runners
                .range(from..)
                .take_while(|(k, _)| k.model_id == key.model_id && k.mode == key.mode)
                .filter(|(k, r)| {
                    matches!(r.phase, Phase::Ready { in_flight: 0, .. })
                        && (**k != key
                            || r.launch.context_size != launch.context_size
                            || r.launch.runtime_flags != launch.runtime_flags
                            || r.launch.draft != launch.draft)
                })
                .map(|(k, _)| k.clone())
                .collect();
            if !state.shutting_down {
                for k in &stale {
                    state.stop(k, &mut actions, Rejection::Unloaded);
                }
            }
            let queued = state.queued();
            let queue_full = queued >= state.limits.max_queue;
            let busy = || {
                Rejection::Busy(format!(
                    "{queued} requests are already waiting (for memory to load a model, or for a free slot on a loaded one)"
                ))
            };
            let max_in_flight = state.limits.max_in_flight;
            if state.shutting_down {
                actions.push(Action::Reject {
                    waiter,
                    why: Rejection::ShuttingDown,
                });
            } else if let Some(r) = state.runners.get_mut(&key) {
                // The latest request's keep-alive wins, as in Ollama.
                r.launch.keep_alive = launch.keep_alive;
                match &mut r.phase {
                    Phase::Queued { .. } if queue_full => actions.push(Action::Reject {
                        waiter,
                        why: busy(),
                    }),
                    Phase::Queued { waiters, .. } | Phase::Loading { waiters } => {
                        waiters.push(waiter)
                    }
                    Phase::Ready {
                        endpoint,
                        in_flight,
                        waiting,
                    } => {
                        r.last_used = Some(now);
                        if *in_flight < max_in_flight && waiting.is_empty() {
                            *in_flight += 1;
                            actions.push(Action::Grant {
                                waiter,
                                runner: r.id,
                                endpoint: *endpoint,
                            });
                        } else if queue_full {
                            actions.push(Action::Reject {
                                waiter,
                                why: busy(),
                            });
                        } else {
                            waiting.push_back((waiter, now));
                        }
                    }
                }
            } else if queue_full {
                actions.push(Action::Reject {
                    waiter,
                    why: busy(),
                });
            } else {
                state.next_runner += 1;
                let demand = match state.learned.get(&identity(&key, &launch)) {
                    Some(bytes) => demand.scaled_to(*bytes),
                    None => demand,
                };
                let runner = Runner {
                    id: state.next_runner,
                    launch,
                    phase: Phase::Queued {
                        waiters: vec![waiter],
                        since: now,
                        seq: 0,
                        after: vec![],
                    },
                    last_used: None,
                    demand,
                    usage: Usage::new(),
                    measured: None,
                    pin: None,
                    retried: false,
                };
                state.enqueue(key, runner, now, false);
            }
        }
        Event::Loaded { runner, endpoint } => {
            if let Some(key) = state.find(runner).cloned() {
                let r = state.runners.get_mut(&key).expect("find returned this key"); // invariant: just found
                if let Phase::Loading { waiters } = &mut r.phase {
                    let waiters = std::mem::take(waiters);
                    // Requests that joined the load are granted up to `max_in_flight`; the rest wait for a slot.
                    let mut waiting: VecDeque<(WaiterId, Instant)> =
                        waiters.into_iter().map(|w| (w, now)).collect();
                    let mut in_flight = 0;
                    grant_waiting(
                        runner,
                        endpoint,
                        &mut in_flight,
                        &mut waiting,
                        state.limits.max_in_flight,
                        &mut actions,
                    );
                    r.phase = Phase::Ready {
                        endpoint,
                        in_flight,
                        waiting,
                    };
                    r.last_used = Some(now);
                    // A keep-alive of 0 with nobody left waiting (all clients gone) stops at once.
                    release_if_idle_and_done(state, &key, &mut actions);
                }
            }
        }
        Event::LoadFailed { runner, error, oom } => {
            state.stopping.remove(&runner);
            if let Some(key) = state.find(runner).cloned() {
                let mut r = state.runners.remove(&key).expect("find returned this key"); // invariant: just found
                if let Phase::Loading { waiters } =
                    std::mem::replace(&mut r.phase, Phase::Loading { waiters: vec![] })
                {
                    if oom && !r.retried && !state.shutting_down {
                        retry_after_oom(state, key, r, waiters, now, &mut actions);
                    } else {
                        reject(waiters, Rejection::EngineFailed(error), &mut actions);
                    }
                }
            }
        }
        Event::Exited { runner, reason } => {
            state.stopping.remove(&runner);
            if let Some(r) = state.remove(runner) {
                match r.phase {
                    Phase::Loading { waiters } => {
                        reject(waiters, Rejection::EngineFailed(reason), &mut actions)
                    }
                    Phase::Ready { waiting, .. } => reject(
                        waiting.into_iter().map(|(w, _)| w).collect(),
                        Rejection::EngineFailed(reason),
                        &mut actions,
                    ),
                    Phase::Queued { .. } => {}
                }
            }
        }
        Event::Unresponsive { runner } => {
            if let Some(key) = state.find(runner).cloned() {
                let why = format!(
                    "the engine for {} stopped responding to its health checks",
                    state.runners[&key].launch.model_name
                );
                state.stop(&key, &mut actions, Rejection::EngineFailed(why));
            }
        }
        Event::Exiting { runner, status } => {
            if let Some(key) = state.find(runner).cloned() {
                let why = format!(
                    "the engine for {} {status}",
                    state.runners[&key].launch.model_name
                );
                state.stop(&key, &mut actions, Rejection::EngineFailed(why));
            }
        }
        Event::Released { runner } => {
            if let Some(key) = state.find(runner).cloned() {
                let r = state.runners.get_mut(&key).expect("find returned this key"); // invariant: just found
                if let Phase::Ready {
                    endpoint,
                    in_flight,
                    waiting,
                } = &mut r.phase
                {
                    *in_flight = in_flight.saturating_sub(1);
                    r.last_used = Some(now);
                    grant_waiting(
                        runner,
                        *endpoint,
                        in_flight,
                        waiting,
                        state.limits.max_in_flight,
                        &mut actions,
                    );
                }
                release_if_idle_and_done(state, &key, &mut actions);
            }
        }
        Event::Measured { devices, runners } => measured(state, devices, runners),
        Event::Limits(limits) => {
            state.limits = limits;
            let max = state.limits.max_in_flight;
            for r in state.runners.values_mut() {
                if let Phase::Ready {
                    endpoint,
                    in_flight,
                    waiting,
                } = &mut r.phase
                {
                    grant_waiting(r.id, *endpoint, in_flight, waiting, max, &mut actions);
                }
            }
        }
        Event::Tick => {
            let timeout = state.limits.queue_timeout;
            let expired: Vec<RunnerKey> = state
                .runners
                .iter()
                .filter(|(_, r)| idle_deadline(r).is_some_and(|d| d <= now))
                .map(|(k, _)| k.clone())
                .collect();
            for key in expired {
                state.stop(&key, &mut actions, Rejection::Unloaded);
            }
            let waited_out: Vec<RunnerKey> = state
                .runners
                .iter()
                .filter(|(_, r)| matches!(r.phase, Phase::Queued { since, .. } if since + timeout <= now))
                .map(|(k, _)| k.clone())
                .collect();
            for key in waited_out {
                let why = Rejection::Busy(format!(
                    "waited {} for memory to load {}; the models holding it are busy",
                    crate::config::format_go(timeout),
                    state.runners[&key].launch.model_name
                ));
                state.stop(&key, &mut actions, why);
            }
            for r in state.runners.values_mut() {
                if let Phase::Ready {
                    waiting, in_flight, ..
                } = &mut r.phase
                {
                    while waiting
                        .front()
                        .is_some_and(|(_, since)| *since + timeout <= now)
                    {
                        let (waiter, _) = waiting.pop_front().expect("front checked above"); // invariant
                        actions.push(Action::Reject {
                            waiter,
                            why: Rejection::Busy(format!(
                                "waited {} for one of the {in_flight} requests in flight on {} to finish",
                                crate::config::format_go(timeout),
                                r.launch.model_name
                            )),
                        });
                    }
                }
            }
        }
        Event::Unload { selector, force } => {
            let chosen: Vec<RunnerKey> = state
                .runners
                .iter()
                .filter(|(k, r)| {
                    let matches = match &selector {
                        Selector::All => true,
                        // A model's runners, and those that load it as their draft.
                        Selector::Models(ids) => {
                            ids.contains(&k.model_id)
                                || k.draft.as_ref().is_some_and(|d| ids.contains(d))
                        }
                    };
                    let idle = matches!(r.phase, Phase::Ready { in_flight: 0, .. });
                    matches && (idle || force)
                })
                .map(|(k, _)| k.clone())
                .collect();
            for key in chosen {
                state.stop(&key, &mut actions, Rejection::Unloaded);
            }
        }
        Event::Shutdown => {
            state.shutting_down = true;
            let keys: Vec<RunnerKey> = state.runners.keys().cloned().collect();
            for key in keys {
                state.stop(&key, &mut actions, Rejection::ShuttingDown);
            }
        }
    }
    admit(state, &mut actions);
    actions
}

/// Starts queued runners in arrival order while memory admits them; stops idle runners the head of the queue
/// needs gone; refuses those that can never fit.
fn admit(state: &mut State, actions: &mut Vec<Action>) {
    // Most events find nothing queued: decide that before copying the devices.
    let queued = |s: &State| {
        s.runners
            .values()
            .any(|r| matches!(r.phase, Phase::Queued { .. }))
    };
    if state.shutting_down || !queued(state) {
        return;
    }
    let devices = state.admission_devices();
    loop {
        let head = state
            .runners
            .iter()
            .filter_map(|(k, r)| match &r.phase {
                Phase::Queued { seq, after, .. } => Some((*seq, k.clone(), after.clone())),
                _ => None,
            })
            .min();
        let Some((_, key, after)) = head else { return };
        if after.iter().any(|id| state.stopping.contains_key(id)) {
            return;
        }
        let demand = state.runners[&key].demand.clone();
        match memory::plan(&devices, &state.limits, &state.holders(), &demand) {
            Plan::Now(placement) => {
                let r = state.runners.get_mut(&key).expect("head of the queue"); // invariant: just found
                let Phase::Queued { waiters, .. } = &mut r.phase else {
                    unreachable!("the head is queued")
                };
                r.phase = Phase::Loading {
                    waiters: std::mem::take(waiters),
                };
                r.usage = placement.usage;
                r.pin = placement.pin.clone();
                actions.push(Action::Spawn {
                    runner: r.id,
                    launch: r.launch.clone(),
                    pin: placement.pin,
                });
            }
            Plan::Evict(victims) => {
                for id in victims {
                    if let Some(k) = state.find(id).cloned() {
                        let name = state.runners[&k].launch.model_name.clone();
                        state.evicted.push(name);
                        state.stop(&k, actions, Rejection::Unloaded);
                    }
                }
                return;
            }
            Plan::Wait => return,
            Plan::Never(why) => {
                let name = state.runners[&key].launch.model_name.clone();
                let why = format!("{name} does not fit in memory: it {why}");
                state.stop(&key, actions, Rejection::NoMemory(why));
            }
        }
    }
}

/// An out-of-memory load: evict every idle runner on its devices and queue it again, first in line, to start once
/// they have exited.
fn retry_after_oom(
    state: &mut State,
    key: RunnerKey,
    r: Runner,
    waiters: Vec<WaiterId>,
    now: Instant,
    actions: &mut Vec<Action>,
) {
    let victims: Vec<RunnerKey> = state
        .runners
        .iter()
        .filter(|(_, o)| matches!(o.phase, Phase::Ready { in_flight: 0, .. }) && !o.launch.pinned)
        .filter(|(_, o)| r.usage.is_empty() || o.usage.keys().any(|d| r.usage.contains_key(d)))
        .map(|(k, _)| k.clone())
        .collect();
    let mut after = Vec::new();
    for k in victims {
        after.push(state.runners[&k].id);
        state
            .evicted
            .push(state.runners[&k].launch.model_name.clone());
        state.stop(&k, actions, Rejection::Unloaded);
    }
    state.next_runner += 1;
    let retry = Runner {
        id: state.next_runner,
        phase: Phase::Queued {
            waiters,
            since: now,
            seq: 0,
            after,
        },
        usage: Usage::new(),
        measured: None,
        pin: None,
        retried: true,
        ..r
    };
    state.enqueue(key, retry, now, true);
}

/// A reading replaces what ready and stopping runners hold, is remembered for the next load of the same model,
/// and tells what processes other than our runners use on each device.
fn measured(state: &mut State, devices: Vec<DeviceMemory>, runners: BTreeMap<RunnerId, Usage>) {
    let mut ours: BTreeMap<u32, u64> = BTreeMap::new();
    for usage in runners.values() {
        for (d, b) in usage {
            *ours.entry(*d).or_insert(0) += b;
        }
    }
    for (id, usage) in runners {
        if let Some(s) = state.stopping.get_mut(&id) {
            s.usage = usage;
            continue;
        }
        let Some(key) = state.find(id).cloned() else {
            continue;
        };
        let r = state.runners.get_mut(&key).expect("find returned this key"); // invariant: just found
        if matches!(r.phase, Phase::Ready { .. }) {
            let bytes = memory::total(&usage).max(r.measured.unwrap_or(0));
            r.measured = Some(bytes);
            r.usage = usage;
            state.learned.insert(identity(&key, &r.launch), bytes);
        }
    }
    state.devices = devices
        .into_iter()
        .map(|d| Device {
            others: d
                .used
                .saturating_sub(ours.get(&d.index).copied().unwrap_or(0)),
            index: d.index,
            name: d.name,
            total: d.total,
            free: d.free,
        })
        .collect();
}

/// Grants waiting requests, oldest first, while the runner has free slots.
fn grant_waiting(
    runner: RunnerId,
    endpoint: Endpoint,
    in_flight: &mut u32,
    waiting: &mut VecDeque<(WaiterId, Instant)>,
    max_in_flight: u32,
    actions: &mut Vec<Action>,
) {
    while *in_flight < max_in_flight {
        let Some((waiter, _)) = waiting.pop_front() else {
            break;
        };
        *in_flight += 1;
        actions.push(Action::Grant {
            waiter,
            runner,
            endpoint,
        });
    }
}

fn release_if_idle_and_done(state: &mut State, key: &RunnerKey, actions: &mut Vec<Action>) {
    let done = state.runners.get(key).is_some_and(|r| {
        matches!(r.phase, Phase::Ready { in_flight: 0, .. })
            && r.launch.keep_alive == KeepAlive::For(Duration::ZERO)
    });
    if done {
        state.stop(key, actions, Rejection::Unloaded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(model: &str, keep_alive: KeepAlive) -> LaunchSpec {
        LaunchSpec {
            model_name: model.into(),
            engine: crate::engines::llamacpp::ENGINE,
            model_path: format!("/blobs/{model}").into(),
            chat_template: None,
            mmproj: None,
            mode: Mode::Completion,
            context_size: 512,
            runtime_flags: vec![],
            keep_alive,
            pinned: false,
            vllm: Default::default(),
            draft: None,
        }
    }

    fn key(model: &str) -> RunnerKey {
        RunnerKey {
            model_id: model.into(),
            mode: Mode::Completion,
            draft: None,
        }
    }

    fn acquire(waiter: WaiterId, model: &str) -> Event {
        Event::Acquire {
            waiter,
            key: key(model),
            launch: launch(model, KeepAlive::DEFAULT),
            demand: Demand::Any(0),
        }
    }

    const EP: Endpoint = Endpoint {
        port: 9000,
        pid: 42,
    };

    #[test]
    fn concurrent_cold_requests_share_one_spawn() {
        let mut s = State::default();
        let t = Instant::now();
        let mut spawns = 0;
        for w in 1..=20 {
            let actions = decide(&mut s, acquire(w, "m"), t);
            spawns += actions
                .iter()
                .filter(|a| matches!(a, Action::Spawn { .. }))
                .count();
        }
        assert_eq!(spawns, 1);
        let grants = decide(
            &mut s,
            Event::Loaded {
                runner: 1,
                endpoint: EP,
            },
            t,
        );
        assert_eq!(grants.len(), 20);
        assert!(grants.iter().all(|a| matches!(
            a,
            Action::Grant {
                runner: 1,
                endpoint: EP,
                ..
            }
        )));
        assert_eq!(
            s.runners[&key("m")].phase,
            Phase::Ready {
                endpoint: EP,
                in_flight: 20,
                waiting: VecDeque::new(),
            }
        );
        // A ready runner is granted at once.
        assert_eq!(
            decide(&mut s, acquire(21, "m"), t),
            [Action::Grant {
                waiter: 21,
                runner: 1,
                endpoint: EP
            }]
        );
    }

    #[test]
    fn another_context_size_reloads_an_idle_runner_but_never_cuts_a_busy_one() {
        let mut s = State::default();
        let t = Instant::now();
        decide(&mut s, acquire(1, "m"), t);
        decide(
            &mut s,
            Event::Loaded {
                runner: 1,
                endpoint: EP,
            },
            t,
        );
        let mut bigger = launch("m", KeepAlive::For(Duration::ZERO));
        bigger.context_size = 2048;
        let wants_bigger = |waiter| Event::Acquire {
            waiter,
            key: key("m"),
            launch: bigger.clone(),
            demand: Demand::Any(0),
        };
        // Busy: the request shares the running one, and its keep-alive is taken.
        assert_eq!(
            decide(&mut s, wants_bigger(2), t),
            [Action::Grant {
                waiter: 2,
                runner: 1,
                endpoint: EP
            }]
        );
        assert_eq!(
            s.runners[&key("m")].launch.keep_alive,
            KeepAlive::For(Duration::ZERO)
        );
        decide(&mut s, Event::Released { runner: 1 }, t);
        // Keep-alive 0: the runner stops as soon as its last request ends.
        assert_eq!(
            decide(&mut s, Event::Released { runner: 1 }, t),
            [Action::Stop { runner: 1 }]
        );
        // Idle with another context size: stopped and started again with the new one.
        decide(&mut s, acquire(3, "m"), t);
        decide(
            &mut s,
            Event::Loaded {
                runner: 2,
                endpoint: EP,
            },
            t,
        );
        decide(&mut s, Event::Released { runner: 2 }, t);
        assert_eq!(
            decide(&mut s, wants_bigger(4), t),
            [
                Action::Stop { runner: 2 },
                Action::Spawn {
                    runner: 3,
                    launch: bigger.clone(),
                    pin: None,
                }
            ]
        );
    }

    #[test]
    fn another_draft_is_another_runner_and_replaces_the_idle_one() {
        let mut s = State::default();
        let t = Instant::now();
        let drafted = |waiter, draft: &str| {
            let mut launch = launch("m", KeepAlive::DEFAULT);
            launch.draft = Some(crate::engines::speculative::Draft {
                name: draft.into(),
                model_id: draft.into(),
                path: format!("/blobs/{draft}").into(),
                num_tokens: None,
                min_acceptance_rate: None,
            });
            let key = RunnerKey {
                draft: Some(draft.into()),
                ..key("m")
            };
            (
                key.clone(),
                Event::Acquire {
                    waiter,
                    key,
                    launch,
                    demand: Demand::Any(0),
                },
            )
        };
        decide(&mut s, acquire(1, "m"), t);
        decide(
            &mut s,
            Event::Loaded {
                runner: 1,
                endpoint: EP,
            },
            t,
        );
        // Busy without a draft: a drafted runner starts beside it, the busy one is not cut short.
        let (with_a, event) = drafted(2, "a");
        let actions = decide(&mut s, event, t);
        assert!(
            matches!(&actions[..], [Action::Spawn { runner: 2, launch, .. }] if launch.draft.is_some()),
            "{actions:?}"
        );
        assert!(s.runners.contains_key(&key("m")) && s.runners.contains_key(&with_a));
        decide(
            &mut s,
            Event::Loaded {
                runner: 2,
                endpoint: EP,
            },
            t,
        );
        decide(&mut s, Event::Released { runner: 1 }, t);
        decide(&mut s, Event::Released { runner: 2 }, t);
        // Idle: a request with draft b stops both runners of the model (no draft, draft a) and starts its own.
        let (with_b, event) = drafted(3, "b");
        let actions = decide(&mut s, event, t);
        assert_eq!(
            actions[..2],
            [Action::Stop { runner: 1 }, Action::Stop { runner: 2 }]
        );
        assert!(matches!(actions[2], Action::Spawn { runner: 3, .. }));
        assert_eq!(s.runners.keys().collect::<Vec<_>>(), [&with_b]);
        // Another model's runners are not touched.
        decide(&mut s, acquire(4, "other"), t);
        assert!(s.runners.contains_key(&key("other")));
        // Unloading the draft model stops the runner that loads it (forced: it is still loading, its waiter is
        // told).
        let actions = decide(
            &mut s,
            Event::Unload {
                selector: Selector::Models(vec!["b".into()]),
                force: true,
            },
            t,
        );
        assert_eq!(
            actions,
            [
                Action::Reject {
                    waiter: 3,
                    why: Rejection::Unloaded
                },
                Action::Stop { runner: 3 }
            ]
        );
    }

    #[test]
    fn a_failed_load_rejects_every_waiter_and_the_next_request_spawns_again() {
        let mut s = State::default();
        let t = Instant::now();
        decide(&mut s, acquire(1, "m"), t);
        decide(&mut s, acquire(2, "m"), t);
        let actions = decide(
            &mut s,
            Event::LoadFailed {
                runner: 1,
                error: "boom".into(),
                oom: false,
            },
            t,
        );
        let why = Rejection::EngineFailed("boom".into());
        assert_eq!(
            actions,
            [
                Action::Reject {
                    waiter: 1,
                    why: why.clone()
                },
                Action::Reject { waiter: 2, why }
            ]
        );
        assert!(s.runners.is_empty());
        assert!(matches!(
            decide(&mut s, acquire(3, "m"), t)[..],
            [Action::Spawn { runner: 2, .. }]
        ));
    }

    #[test]
    fn an_engine_that_dies_is_forgotten_at_once() {
        let mut s = State::default();
        let t = Instant::now();
        decide(&mut s, acquire(1, "m"), t);
        decide(
            &mut s,
            Event::Loaded {
                runner: 1,
                endpoint: EP,
            },
            t,
        );
        assert!(decide(
            &mut s,
            Event::Exited {
                runner: 1,
                reason: "SIGKILL".into()
            },
            t
        )
        .is_empty());
        assert!(s.runners.is_empty());
        // Its in-flight request's release later is harmless.
        assert!(decide(&mut s, Event::Released { runner: 1 }, t).is_empty());
        assert!(matches!(
            decide(&mut s, acquire(2, "m"), t)[..],
            [Action::Spawn { runner: 2, .. }]
        ));
    }

    #[test]
    fn a_hung_or_reaped_engine_is_out_of_the_choices_before_it_is_gone() {
        // Unresponsive: killed for failing its health checks. Exiting: it exited and its output is being drained.
        let leaving = [
            Event::Unresponsive { runner: 1 },
            Event::Exiting {
                runner: 1,
                status: "was killed by signal SIGKILL".into(),
            },
        ];
        for event in leaving {
            let mut s = State::default();
            let t = Instant::now();
            decide(&mut s, acquire(1, "m"), t);
            decide(
                &mut s,
                Event::Loaded {
                    runner: 1,
                    endpoint: EP,
                },
                t,
            );
            assert_eq!(decide(&mut s, event, t), [Action::Stop { runner: 1 }]);
            assert!(s.runners.is_empty() && s.stopping.contains_key(&1));
            // A request in the moment before the process is reaped starts a fresh runner, not a grant on the old one.
            assert!(matches!(
                decide(&mut s, acquire(2, "m"), t)[..],
                [Action::Spawn { runner: 2, .. }]
            ));
            assert!(decide(&mut s, Event::Released { runner: 1 }, t).is_empty());
            decide(
                &mut s,
                Event::Exited {
                    runner: 1,
                    reason: "killed".into(),
                },
                t,
            );
            assert!(s.stopping.is_empty() && s.runners.len() == 1);
        }
    }

    #[test]
    fn idle_runners_stop_after_keep_alive_but_busy_ones_never() {
        let mut s = State::default();
        let t0 = Instant::now();
        decide(&mut s, acquire(1, "m"), t0);
        decide(
            &mut s,
            Event::Loaded {
                runner: 1,
                endpoint: EP,
            },
            t0,
        );
        let five_min = Duration::from_secs(300);
        // Busy: no deadline, a tick does nothing.
        assert_eq!(s.next_deadline(), None);
        assert!(decide(&mut s, Event::Tick, t0 + five_min * 2).is_empty());
        let t1 = t0 + Duration::from_secs(10);
        decide(&mut s, Event::Released { runner: 1 }, t1);
        assert_eq!(s.next_deadline(), Some(t1 + five_min));
        assert!(decide(
            &mut s,
            Event::Tick,
            t1 + five_min - Duration::from_millis(1)
        )
        .is_empty());
        assert_eq!(
            decide(&mut s, Event::Tick, t1 + five_min),
            [Action::Stop { runner: 1 }]
        );
        assert!(s.runners.is_empty());
        assert!(s.stopping.contains_key(&1));
        // While it stops, a new request starts a fresh runner rather than waiting for the old one.
        assert!(matches!(
            decide(&mut s, acquire(2, "m"), t1 + five_min)[..],
            [Action::Spawn { runner: 2, .. }]
        ));
        decide(
            &mut s,
            Event::Exited {
                runner: 1,
                reason: "stopped".into(),
            },
            t1 + five_min,
        );
        assert!(s.stopping.is_empty());
    }

    #[test]
    fn keep_alive_zero_stops_after_the_last_request_and_forever_never_expires() {
        let mut s = State::default();
        let t = Instant::now();
        let ev = |w, ka| Event::Acquire {
            waiter: w,
            key: key("m"),
            launch: launch("m", ka),
            demand: Demand::Any(0),
        };
        decide(&mut s, ev(1, KeepAlive::For(Duration::ZERO)), t);
        decide(
            &mut s,
            Event::Loaded {
                runner: 1,
                endpoint: EP,
            },
            t,
        );
        assert_eq!(
            decide(&mut s, Event::Released { runner: 1 }, t),
            [Action::Stop { runner: 1 }]
        );
        let mut s = State::default();
        decide(&mut s, ev(1, KeepAlive::Forever), t);
        decide(
            &mut s,
            Event::Loaded {
                runner: 1,
                endpoint: EP,
            },
            t,
        );
        decide(&mut s, Event::Released { runner: 1 }, t);
        assert_eq!(s.next_deadline(), None);
        assert!(decide(&mut s, Event::Tick, t + Duration::from_secs(1 << 30)).is_empty());
    }

    #[test]
    fn unload_takes_idle_runners_and_busy_ones_only_when_forced() {
        let mut s = State::default();
        let t = Instant::now();
        for (w, m) in [(1, "a"), (2, "b")] {
            decide(&mut s, acquire(w, m), t);
            decide(
                &mut s,
                Event::Loaded {
                    runner: w,
                    endpoint: EP,
                },
                t,
            );
        }
        decide(&mut s, Event::Released { runner: 1 }, t); // a idle, b busy
        assert_eq!(
            decide(
                &mut s,
                Event::Unload {
                    selector: Selector::All,
                    force: false
                },
                t
            ),
            [Action::Stop { runner: 1 }]
        );
        let b = Selector::Models(vec!["b".into()]);
        assert!(decide(
            &mut s,
            Event::Unload {
                selector: b.clone(),
                force: false
            },
            t
        )
        .is_empty());
        assert_eq!(
            decide(
                &mut s,
                Event::Unload {
                    selector: b,
                    force: true
                },
                t
            ),
            [Action::Stop { runner: 2 }]
        );
    }

    #[test]
    fn shutdown_stops_everything_rejects_waiters_and_new_requests() {
        let mut s = State::default();
        let t = Instant::now();
        decide(&mut s, acquire(1, "ready"), t);
        decide(
            &mut s,
            Event::Loaded {
                runner: 1,
                endpoint: EP,
            },
            t,
        );
        decide(&mut s, acquire(2, "loading"), t);
        let actions = decide(&mut s, Event::Shutdown, t);
        assert_eq!(
            actions,
            [
                Action::Reject {
                    waiter: 2,
                    why: Rejection::ShuttingDown
                },
                Action::Stop { runner: 2 },
                Action::Stop { runner: 1 },
            ]
        );
        assert_eq!(
            decide(&mut s, acquire(3, "x"), t),
            [Action::Reject {
                waiter: 3,
                why: Rejection::ShuttingDown
            }]
        );
        assert!(!s.drained());
        // A load that finishes after it was stopped is ignored; exits drain the state.
        assert!(decide(
            &mut s,
            Event::Loaded {
                runner: 2,
                endpoint: EP
            },
            t
        )
        .is_empty());
        decide(
            &mut s,
            Event::Exited {
                runner: 1,
                reason: "stopped".into(),
            },
            t,
        );
        decide(
            &mut s,
            Event::LoadFailed {
                runner: 2,
                error: "stopped".into(),
                oom: false,
            },
            t,
        );
        assert!(s.drained());
    }

    #[test]
    fn modes_are_separate_runners() {
        let mut s = State::default();
        let t = Instant::now();
        decide(&mut s, acquire(1, "m"), t);
        let emb = RunnerKey {
            model_id: "m".into(),
            mode: Mode::Embedding,
            draft: None,
        };
        let mut l = launch("m", KeepAlive::DEFAULT);
        l.mode = Mode::Embedding;
        let actions = decide(
            &mut s,
            Event::Acquire {
                waiter: 2,
                key: emb,
                launch: l,
                demand: Demand::Any(0),
            },
            t,
        );
        assert!(matches!(actions[..], [Action::Spawn { runner: 2, .. }]));
    }
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod admission_tests;
