//! The scheduler's decisions, as a pure state machine: `decide(&mut State, Event, now) -> Vec<Action>`. No tokio,
//! no processes, no I/O — the actor in `scheduler::mod` turns actions into effects and effects back into events.
//! Table-tested below.
//!
//! Rules: one runner per (model, mode); requests for a loading runner join that one load; a ready runner is
//! granted at once (and takes the request's keep-alive); a request for another context size or other flags
//! restarts an idle runner with them; a runner is stopped when idle past its keep-alive, when unloaded (idle only, unless forced),
//! or at shutdown; a runner that fails or exits is forgotten at once so the next request starts a new one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::config::KeepAlive;
use crate::engines::{LaunchSpec, Mode};

pub type WaiterId = u64;
pub type RunnerId = u64;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunnerKey {
    pub model_id: String,
    pub mode: Mode,
}

/// Where a ready runner listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub port: u16,
    pub pid: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    Loading { waiters: Vec<WaiterId> },
    Ready { endpoint: Endpoint, in_flight: u32 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Runner {
    pub id: RunnerId,
    pub launch: LaunchSpec,
    pub phase: Phase,
    pub last_used: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct State {
    pub runners: BTreeMap<RunnerKey, Runner>,
    /// Runners told to stop whose exit has not been seen yet.
    pub stopping: BTreeMap<RunnerId, RunnerKey>,
    pub shutting_down: bool,
    next_runner: RunnerId,
}

/// Which runners an unload applies to.
#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    All,
    Models(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Acquire {
        waiter: WaiterId,
        key: RunnerKey,
        launch: LaunchSpec,
    },
    Loaded {
        runner: RunnerId,
        endpoint: Endpoint,
    },
    LoadFailed {
        runner: RunnerId,
        error: String,
    },
    Exited {
        runner: RunnerId,
        reason: String,
    },
    /// A request on this runner ended (also sent for a grant whose client had already left).
    Released {
        runner: RunnerId,
    },
    Tick,
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
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Spawn {
        runner: RunnerId,
        launch: LaunchSpec,
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

    /// When the next idle runner's keep-alive runs out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.runners.values().filter_map(idle_deadline).min()
    }

    fn remove(&mut self, runner: RunnerId) -> Option<Runner> {
        let key = self.find(runner)?.clone();
        self.runners.remove(&key)
    }

    fn stop(&mut self, key: &RunnerKey, actions: &mut Vec<Action>, why: Rejection) {
        if let Some(r) = self.runners.remove(key) {
            if let Phase::Loading { waiters } = r.phase {
                actions.extend(waiters.into_iter().map(|waiter| Action::Reject {
                    waiter,
                    why: why.clone(),
                }));
            }
            self.stopping.insert(r.id, key.clone());
            actions.push(Action::Stop { runner: r.id });
        }
    }
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
        } => {
            // A request for another context size or other flags reloads an idle runner; a busy or loading one
            // keeps serving as it is (its requests are not cut short), and the change applies once it is idle.
            let reload = state.runners.get(&key).is_some_and(|r| {
                matches!(r.phase, Phase::Ready { in_flight: 0, .. })
                    && (r.launch.context_size != launch.context_size
                        || r.launch.runtime_flags != launch.runtime_flags)
            });
            if reload && !state.shutting_down {
                state.stop(&key, &mut actions, Rejection::Unloaded);
            }
            if state.shutting_down {
                actions.push(Action::Reject {
                    waiter,
                    why: Rejection::ShuttingDown,
                });
            } else if let Some(r) = state.runners.get_mut(&key) {
                // The latest request's keep-alive wins, as in Ollama.
                r.launch.keep_alive = launch.keep_alive;
                match &mut r.phase {
                    Phase::Loading { waiters } => waiters.push(waiter),
                    Phase::Ready {
                        endpoint,
                        in_flight,
                    } => {
                        *in_flight += 1;
                        r.last_used = Some(now);
                        actions.push(Action::Grant {
                            waiter,
                            runner: r.id,
                            endpoint: *endpoint,
                        });
                    }
                }
            } else {
                state.next_runner += 1;
                let id = state.next_runner;
                let runner = Runner {
                    id,
                    launch: launch.clone(),
                    phase: Phase::Loading {
                        waiters: vec![waiter],
                    },
                    last_used: None,
                };
                state.runners.insert(key, runner);
                actions.push(Action::Spawn { runner: id, launch });
            }
        }
        Event::Loaded { runner, endpoint } => {
            if let Some(key) = state.find(runner).cloned() {
                let r = state.runners.get_mut(&key).expect("find returned this key"); // invariant: just found
                if let Phase::Loading { waiters } = &mut r.phase {
                    let waiters = std::mem::take(waiters);
                    r.phase = Phase::Ready {
                        endpoint,
                        in_flight: waiters.len() as u32,
                    };
                    r.last_used = Some(now);
                    actions.extend(waiters.into_iter().map(|waiter| Action::Grant {
                        waiter,
                        runner,
                        endpoint,
                    }));
                    // A keep-alive of 0 with nobody left waiting (all clients gone) stops at once.
                    release_if_idle_and_done(state, &key, &mut actions);
                }
            }
        }
        Event::LoadFailed { runner, error } => {
            state.stopping.remove(&runner);
            if let Some(r) = state.remove(runner) {
                if let Phase::Loading { waiters } = r.phase {
                    let why = Rejection::EngineFailed(error);
                    actions.extend(waiters.into_iter().map(|waiter| Action::Reject {
                        waiter,
                        why: why.clone(),
                    }));
                }
            }
        }
        Event::Exited { runner, reason } => {
            state.stopping.remove(&runner);
            if let Some(r) = state.remove(runner) {
                if let Phase::Loading { waiters } = r.phase {
                    let why = Rejection::EngineFailed(reason);
                    actions.extend(waiters.into_iter().map(|waiter| Action::Reject {
                        waiter,
                        why: why.clone(),
                    }));
                }
            }
        }
        Event::Released { runner } => {
            if let Some(key) = state.find(runner).cloned() {
                let r = state.runners.get_mut(&key).expect("find returned this key"); // invariant: just found
                if let Phase::Ready { in_flight, .. } = &mut r.phase {
                    *in_flight = in_flight.saturating_sub(1);
                    r.last_used = Some(now);
                }
                release_if_idle_and_done(state, &key, &mut actions);
            }
        }
        Event::Tick => {
            let expired: Vec<RunnerKey> = state
                .runners
                .iter()
                .filter(|(_, r)| idle_deadline(r).is_some_and(|d| d <= now))
                .map(|(k, _)| k.clone())
                .collect();
            for key in expired {
                state.stop(&key, &mut actions, Rejection::Unloaded);
            }
        }
        Event::Unload { selector, force } => {
            let chosen: Vec<RunnerKey> = state
                .runners
                .iter()
                .filter(|(k, r)| {
                    let matches = match &selector {
                        Selector::All => true,
                        Selector::Models(ids) => ids.contains(&k.model_id),
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
    actions
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
            model_path: format!("/blobs/{model}").into(),
            mode: Mode::Completion,
            context_size: 512,
            runtime_flags: vec![],
            keep_alive,
        }
    }

    fn key(model: &str) -> RunnerKey {
        RunnerKey {
            model_id: model.into(),
            mode: Mode::Completion,
        }
    }

    fn acquire(waiter: WaiterId, model: &str) -> Event {
        Event::Acquire {
            waiter,
            key: key(model),
            launch: launch(model, KeepAlive::DEFAULT),
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
                in_flight: 20
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
                    launch: bigger.clone()
                }
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
        };
        let mut l = launch("m", KeepAlive::DEFAULT);
        l.mode = Mode::Embedding;
        let actions = decide(
            &mut s,
            Event::Acquire {
                waiter: 2,
                key: emb,
                launch: l,
            },
            t,
        );
        assert!(matches!(actions[..], [Action::Spawn { runner: 2, .. }]));
    }
}
