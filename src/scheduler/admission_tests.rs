//! `decide` with memory: a fake GPU (a `Measured` event), predicted demands, and no processes or sleeps.

use super::*;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn launch(model: &str) -> LaunchSpec {
    LaunchSpec {
        model_name: model.into(),
        engine: crate::engines::llamacpp::ENGINE,
        model_path: format!("/blobs/{model}").into(),
        chat_template: None,
        mmproj: None,
        mode: Mode::Completion,
        context_size: 512,
        runtime_flags: vec![],
        keep_alive: KeepAlive::DEFAULT,
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

fn want(waiter: WaiterId, model: &str, bytes: u64) -> Event {
    Event::Acquire {
        waiter,
        key: key(model),
        launch: launch(model),
        demand: Demand::Any(bytes),
    }
}

fn gpu(index: u32, total: u64, used: u64) -> DeviceMemory {
    DeviceMemory {
        index,
        name: format!("gpu{index}"),
        total,
        free: total - used,
        used,
    }
}

fn measured(devices: Vec<DeviceMemory>, runners: &[(RunnerId, u64)]) -> Event {
    Event::Measured {
        devices,
        runners: runners
            .iter()
            .map(|(id, b)| (*id, Usage::from([(0, *b)])))
            .collect(),
    }
}

/// One empty GPU of `total` bytes, no reserve.
fn one_gpu(total: u64, limits: Limits) -> (State, Instant) {
    let mut s = State::new(Limits {
        reserve: 0,
        ..limits
    });
    let t = Instant::now();
    decide(&mut s, measured(vec![gpu(0, total, 0)], &[]), t);
    (s, t)
}

fn ep(runner: RunnerId) -> Endpoint {
    Endpoint {
        port: 9000 + runner as u16,
        pid: 100 + runner as u32,
    }
}

fn loaded(runner: RunnerId) -> Event {
    Event::Loaded {
        runner,
        endpoint: ep(runner),
    }
}

fn exited(runner: RunnerId) -> Event {
    Event::Exited {
        runner,
        reason: "stopped".into(),
    }
}

fn spawned(actions: &[Action]) -> Vec<RunnerId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Spawn { runner, .. } => Some(*runner),
            _ => None,
        })
        .collect()
}

fn stopped(actions: &[Action]) -> Vec<RunnerId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Stop { runner } => Some(*runner),
            _ => None,
        })
        .collect()
}

/// Loads `model` as runner `runner` (waiter = runner) and leaves it idle at `t + secs`.
fn idle_model(s: &mut State, t: Instant, runner: RunnerId, model: &str, bytes: u64, secs: u64) {
    assert_eq!(spawned(&decide(s, want(runner, model, bytes), t)), [runner]);
    decide(s, loaded(runner), t);
    decide(s, Event::Released { runner }, t + Duration::from_secs(secs));
}

#[test]
fn a_load_that_fits_starts_at_once_pinned_to_its_gpu() {
    let (mut s, t) = one_gpu(24 * GIB, Limits::default());
    assert_eq!(
        decide(&mut s, want(1, "a", 8 * GIB), t),
        [Action::Spawn {
            runner: 1,
            launch: launch("a"),
            pin: Some(vec![0])
        }]
    );
    assert_eq!(s.runners[&key("a")].usage, Usage::from([(0, 8 * GIB)]));
}

#[test]
fn the_least_recently_used_idle_runner_is_evicted_and_the_load_waits_for_its_exit() {
    let (mut s, t) = one_gpu(24 * GIB, Limits::default());
    idle_model(&mut s, t, 1, "a", 10 * GIB, 1);
    idle_model(&mut s, t, 2, "b", 10 * GIB, 2);
    let actions = decide(&mut s, want(3, "c", 10 * GIB), t);
    assert_eq!(actions, [Action::Stop { runner: 1 }]);
    assert!(matches!(s.runners[&key("c")].phase, Phase::Queued { .. }));
    // The stopping runner's memory counts until it has exited.
    assert_eq!(decide(&mut s, Event::Tick, t), []);
    assert_eq!(spawned(&decide(&mut s, exited(1), t)), [3]);
    assert!(s.runners.contains_key(&key("b")));
}

#[test]
fn several_idle_runners_are_evicted_when_one_is_not_enough() {
    let (mut s, t) = one_gpu(24 * GIB, Limits::default());
    idle_model(&mut s, t, 1, "a", 10 * GIB, 1);
    idle_model(&mut s, t, 2, "b", 10 * GIB, 2);
    assert_eq!(stopped(&decide(&mut s, want(3, "c", 20 * GIB), t)), [1, 2]);
    assert!(spawned(&decide(&mut s, exited(1), t)).is_empty());
    assert_eq!(spawned(&decide(&mut s, exited(2), t)), [3]);
}

#[test]
fn a_busy_victim_is_waited_for_and_loaded_models_are_never_blocked() {
    let (mut s, t) = one_gpu(24 * GIB, Limits::default());
    decide(&mut s, want(1, "a", 16 * GIB), t);
    decide(&mut s, loaded(1), t); // waiter 1 holds a lease: busy
    assert_eq!(decide(&mut s, want(2, "b", 16 * GIB), t), []);
    // Another request for the loaded model is granted at once, queue or not.
    assert_eq!(
        decide(&mut s, want(3, "a", 16 * GIB), t),
        [Action::Grant {
            waiter: 3,
            runner: 1,
            endpoint: ep(1)
        }]
    );
    assert_eq!(decide(&mut s, Event::Released { runner: 1 }, t), []);
    // The last request ends: now idle, it is evicted; b starts once it has exited.
    assert_eq!(
        decide(&mut s, Event::Released { runner: 1 }, t),
        [Action::Stop { runner: 1 }]
    );
    assert_eq!(spawned(&decide(&mut s, exited(1), t)), [2]);
}

#[test]
fn a_model_that_can_never_fit_is_refused_with_the_numbers() {
    let (mut s, t) = one_gpu(24 * GIB, Limits::default());
    decide(&mut s, measured(vec![gpu(0, 24 * GIB, 4 * GIB)], &[]), t);
    let actions = decide(&mut s, want(1, "huge", 30 * GIB), t);
    assert_eq!(
        actions,
        [Action::Reject {
            waiter: 1,
            why: Rejection::NoMemory(
                "huge does not fit in memory: it needs 30.0 GiB on device 0, which can give models at most \
                 20.0 GiB (gpu0: 20.0 GiB free of 24.0 GiB total, 4.0 GiB used by other processes, reserve 0 B)"
                    .into()
            )
        }]
    );
    assert!(s.runners.is_empty());
}

#[test]
fn the_queue_is_bounded_and_cold_requests_share_one_load() {
    let limits = Limits {
        max_queue: 2,
        ..Limits::default()
    };
    let (mut s, t) = one_gpu(24 * GIB, limits);
    decide(&mut s, want(1, "a", 16 * GIB), t);
    decide(&mut s, loaded(1), t);
    assert_eq!(decide(&mut s, want(2, "b", 16 * GIB), t), []);
    assert_eq!(decide(&mut s, want(3, "b", 16 * GIB), t), []);
    for (waiter, model) in [(4, "b"), (5, "c")] {
        let actions = decide(&mut s, want(waiter, model, GIB), t);
        assert!(
            matches!(&actions[..], [Action::Reject { waiter: w, why: Rejection::Busy(m) }] if *w == waiter && m.contains("2 requests are already waiting")),
            "{actions:?}"
        );
    }
    decide(&mut s, Event::Released { runner: 1 }, t);
    assert_eq!(spawned(&decide(&mut s, exited(1), t)), [2]);
    let grants = decide(&mut s, loaded(2), t);
    assert_eq!(
        grants.len(),
        2,
        "both queued requests share runner 2: {grants:?}"
    );
}

#[test]
fn a_queued_request_gives_up_after_the_queue_timeout() {
    let limits = Limits {
        queue_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let (mut s, t) = one_gpu(24 * GIB, limits);
    decide(&mut s, want(1, "a", 16 * GIB), t);
    decide(&mut s, loaded(1), t);
    decide(&mut s, want(2, "b", 16 * GIB), t);
    assert_eq!(s.next_deadline(), Some(t + Duration::from_secs(60)));
    assert_eq!(decide(&mut s, Event::Tick, t + Duration::from_secs(59)), []);
    let actions = decide(&mut s, Event::Tick, t + Duration::from_secs(60));
    assert!(
        matches!(&actions[..], [Action::Reject { waiter: 2, why: Rejection::Busy(m) }] if m.starts_with("waited 1m0s for memory to load b")),
        "{actions:?}"
    );
    assert!(!s.runners.contains_key(&key("b")));
}

#[test]
fn out_of_memory_on_load_evicts_the_idle_and_retries_once() {
    let (mut s, t) = one_gpu(24 * GIB, Limits::default());
    idle_model(&mut s, t, 1, "a", 8 * GIB, 1);
    assert_eq!(spawned(&decide(&mut s, want(2, "b", 8 * GIB), t)), [2]);
    let oom = |runner| Event::LoadFailed {
        runner,
        error: "cudaMalloc failed: out of memory".into(),
        oom: true,
    };
    // The prediction was wrong: evict what can be evicted and try again once it has exited.
    assert_eq!(decide(&mut s, oom(2), t), [Action::Stop { runner: 1 }]);
    assert_eq!(spawned(&decide(&mut s, exited(1), t)), [3]);
    // A second failure is the engine's answer.
    assert_eq!(
        decide(&mut s, oom(3), t),
        [Action::Reject {
            waiter: 2,
            why: Rejection::EngineFailed("cudaMalloc failed: out of memory".into())
        }]
    );
    assert!(s.runners.is_empty());
}

#[test]
fn measurements_replace_predictions_and_are_remembered() {
    let (mut s, t) = one_gpu(24 * GIB, Limits::default());
    decide(&mut s, want(1, "a", 8 * GIB), t);
    decide(&mut s, loaded(1), t);
    // The GPU shows 5 GiB used, 3 of them by runner 1: someone else holds 2.
    decide(
        &mut s,
        measured(vec![gpu(0, 24 * GIB, 5 * GIB)], &[(1, 3 * GIB)]),
        t,
    );
    let r = &s.runners[&key("a")];
    assert_eq!((r.usage[&0], r.measured), (3 * GIB, Some(3 * GIB)));
    assert_eq!(s.devices[0].others, 2 * GIB);
    // 3 (a) + 2 (others) + 20 > 24: a must go, though the prediction (8 + 20 > 24) would say so too; 19 fits.
    decide(&mut s, Event::Released { runner: 1 }, t);
    assert_eq!(spawned(&decide(&mut s, want(2, "b", 19 * GIB), t)), [2]);
    decide(&mut s, loaded(2), t);
    decide(&mut s, Event::Released { runner: 2 }, t);
    // a, unloaded and asked for again, is expected to need what it measured, not what was predicted.
    decide(
        &mut s,
        Event::Unload {
            selector: Selector::Models(vec!["a".into()]),
            force: false,
        },
        t,
    );
    decide(&mut s, exited(1), t);
    decide(&mut s, want(3, "a", 8 * GIB), t);
    assert_eq!(s.runners[&key("a")].demand, Demand::Any(3 * GIB));
}

#[test]
fn a_budget_limits_memory_without_a_measured_device() {
    // CPU mode in the integration test: no measurement yet, a 30 MiB budget, two 18 MiB models.
    let mut s = State::new(Limits {
        budget: Some(30 * MIB),
        ..Limits::default()
    });
    let t = Instant::now();
    idle_model(&mut s, t, 1, "a", 18 * MIB, 1);
    assert_eq!(stopped(&decide(&mut s, want(2, "b", 18 * MIB), t)), [1]);
    assert_eq!(spawned(&decide(&mut s, exited(1), t)), [2]);
}

#[test]
fn max_loaded_models_evicts_the_least_recently_used() {
    let mut s = State::new(Limits {
        max_loaded_models: Some(2),
        ..Limits::default()
    });
    let t = Instant::now();
    idle_model(&mut s, t, 1, "a", 0, 5);
    idle_model(&mut s, t, 2, "b", 0, 1);
    assert_eq!(stopped(&decide(&mut s, want(3, "c", 0), t)), [2]);
    assert_eq!(spawned(&decide(&mut s, exited(2), t)), [3]);
}

#[test]
fn a_second_gpu_takes_the_load_instead_of_an_eviction() {
    let mut s = State::new(Limits {
        reserve: 0,
        ..Limits::default()
    });
    let t = Instant::now();
    decide(
        &mut s,
        measured(vec![gpu(0, 24 * GIB, 0), gpu(1, 24 * GIB, 0)], &[]),
        t,
    );
    decide(&mut s, want(1, "a", 20 * GIB), t);
    assert_eq!(s.runners[&key("a")].pin, Some(vec![0]));
    let actions = decide(&mut s, want(2, "b", 20 * GIB), t);
    assert!(
        matches!(&actions[..], [Action::Spawn { runner: 2, pin: Some(p), .. }] if p == &vec![1]),
        "{actions:?}"
    );
}

fn grants(actions: &[Action]) -> Vec<WaiterId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Grant { waiter, .. } => Some(*waiter),
            _ => None,
        })
        .collect()
}

#[test]
fn a_loaded_model_serves_at_most_max_in_flight_and_the_rest_wait_in_order() {
    let limits = Limits {
        max_in_flight: 2,
        max_queue: 2,
        queue_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let (mut s, t) = one_gpu(24 * GIB, limits);
    // Three requests join the load: two are granted when it is ready, the third waits for a slot.
    for w in 1..=3 {
        decide(&mut s, want(w, "a", GIB), t);
    }
    assert_eq!(grants(&decide(&mut s, loaded(1), t)), [1, 2]);
    assert_eq!(s.queued(), 1);
    assert_eq!(decide(&mut s, want(4, "a", GIB), t), []);
    // The queue (max_queue = 2) is full: the next one is refused at once, with 503's reason.
    let refused = decide(&mut s, want(5, "a", GIB), t);
    assert!(
        matches!(&refused[..], [Action::Reject { waiter: 5, why: Rejection::Busy(m) }] if m.contains("2 requests are already waiting")),
        "{refused:?}"
    );
    // Each release hands its slot to the oldest waiter; the idle runner is never stopped while they wait.
    assert_eq!(
        grants(&decide(&mut s, Event::Released { runner: 1 }, t)),
        [3]
    );
    assert_eq!(
        grants(&decide(&mut s, Event::Released { runner: 1 }, t)),
        [4]
    );
    for _ in 0..2 {
        assert_eq!(decide(&mut s, Event::Released { runner: 1 }, t), []);
    }
    assert!(matches!(
        s.runners[&key("a")].phase,
        Phase::Ready { in_flight: 0, ref waiting, .. } if waiting.is_empty()
    ));
}

#[test]
fn a_request_waiting_for_a_slot_gives_up_after_the_queue_timeout_and_raising_the_limit_grants_the_rest(
) {
    let limits = Limits {
        max_in_flight: 1,
        queue_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let (mut s, t) = one_gpu(24 * GIB, limits);
    decide(&mut s, want(1, "a", GIB), t);
    decide(&mut s, loaded(1), t);
    decide(&mut s, want(2, "a", GIB), t);
    decide(&mut s, want(3, "a", GIB), t + Duration::from_secs(30));
    assert_eq!(s.next_deadline(), Some(t + Duration::from_secs(60)));
    let actions = decide(&mut s, Event::Tick, t + Duration::from_secs(60));
    assert!(
        matches!(&actions[..], [Action::Reject { waiter: 2, why: Rejection::Busy(m) }] if m.starts_with("waited 1m0s for one of the 1 requests in flight on a")),
        "{actions:?}"
    );
    let raised = Limits {
        max_in_flight: 4,
        ..limits
    };
    assert_eq!(grants(&decide(&mut s, Event::Limits(raised), t)), [3]);
}

#[test]
fn requests_waiting_for_a_slot_are_refused_when_their_engine_dies() {
    let limits = Limits {
        max_in_flight: 1,
        ..Limits::default()
    };
    let (mut s, t) = one_gpu(24 * GIB, limits);
    decide(&mut s, want(1, "a", GIB), t);
    decide(&mut s, loaded(1), t);
    decide(&mut s, want(2, "a", GIB), t);
    let actions = decide(&mut s, exited(1), t);
    assert!(
        matches!(
            &actions[..],
            [Action::Reject {
                waiter: 2,
                why: Rejection::EngineFailed(_)
            }]
        ),
        "{actions:?}"
    );
    assert_eq!(s.queued(), 0);
}
