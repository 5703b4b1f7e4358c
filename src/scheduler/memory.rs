//! Memory admission, pure: given what each device can give our runners and what each runner holds, where does a
//! new load go, and what must leave first? No clocks, no I/O; `decide` calls [`plan`] and acts on its answer.
//!
//! A device's *capacity* for our runners is `total − others − reserve`, capped by the configured budget, where
//! `others` is what processes that are not our runners use (measured). A load *fits* a placement when, on every
//! device of it, what our runners hold (a runner that is still stopping counts until it has exited) plus what the
//! load needs is within capacity. When it does not fit, runners are freed in this order until it does: runners
//! already stopping, idle runners least recently used first, then busy or loading ones (which are never stopped:
//! the load waits for them to go idle). Placements: one device (the one left with the most room), else spread
//! over every device in proportion to capacity; a user who pinned devices with flags gets exactly that.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::decide::RunnerId;

/// Bytes per device index.
pub type Usage = BTreeMap<u32, u64>;

pub fn total(u: &Usage) -> u64 {
    u.values().sum()
}

/// One device as the scheduler last measured it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub index: u32,
    pub name: String,
    pub total: u64,
    pub free: u64,
    /// Used by processes that are not our runners.
    pub others: u64,
}

impl Device {
    /// What our runners may hold on this device, all together.
    pub fn capacity(&self, limits: &Limits) -> u64 {
        let c = self
            .total
            .saturating_sub(self.others)
            .saturating_sub(limits.reserve);
        limits.budget.map_or(c, |b| b.min(c))
    }
}

/// Limits from `[scheduler]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// At most this much per device for our runners, whatever the device has.
    pub budget: Option<u64>,
    /// Left free on each device for others and for growth.
    pub reserve: u64,
    pub max_loaded_models: Option<usize>,
    /// Requests that may wait for a load that does not fit yet; more get 503.
    pub max_queue: usize,
    /// How long such a request waits before it gets 503.
    pub queue_timeout: Duration,
    /// Requests one loaded model serves at once; more wait (counted in `max_queue`).
    pub max_in_flight: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            budget: None,
            reserve: 0,
            max_loaded_models: None,
            max_queue: 512,
            queue_timeout: Duration::from_secs(300),
            max_in_flight: u32::MAX,
        }
    }
}

/// What a load asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Demand {
    /// This many bytes, placed by the scheduler.
    Any(u64),
    /// Pinned by the user's flags (`--main-gpu`, `--tensor-split`): these bytes on these devices.
    Pinned(Usage),
}

impl From<crate::engines::Need> for Demand {
    fn from(need: crate::engines::Need) -> Demand {
        match need {
            crate::engines::Need::Any(bytes) => Demand::Any(bytes),
            crate::engines::Need::Pinned(per_device) => Demand::Pinned(per_device),
        }
    }
}

impl Demand {
    pub fn bytes(&self) -> u64 {
        match self {
            Demand::Any(b) => *b,
            Demand::Pinned(u) => total(u),
        }
    }

    /// The same demand scaled to `bytes` (a learned measurement replacing the prediction).
    pub fn scaled_to(&self, bytes: u64) -> Demand {
        match self {
            Demand::Any(_) => Demand::Any(bytes),
            Demand::Pinned(u) => {
                let t = total(u).max(1) as f64;
                Demand::Pinned(
                    u.iter()
                        .map(|(d, b)| (*d, (*b as f64 * bytes as f64 / t).ceil() as u64))
                        .collect(),
                )
            }
        }
    }
}

/// How a runner that holds memory may be freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Told to stop; frees its memory when it exits.
    Stopping,
    Idle {
        last_used: Option<Instant>,
    },
    /// Serving requests, or loading: never stopped for another load.
    Busy,
    /// `[[models]] pinned`: never stopped for another load, busy or idle; loads are planned around it.
    Pinned,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    pub id: RunnerId,
    pub usage: Usage,
    pub hold: Hold,
}

/// Where a load goes: bytes per device, and the devices to pin the engine to (`None`: the user pinned them).
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub usage: Usage,
    pub pin: Option<Vec<u32>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Start it now, there.
    Now(Placement),
    /// Stop these idle runners; it fits once they (and runners already stopping) have exited.
    Evict(Vec<RunnerId>),
    /// It fits only once runners already stopping exit, or busy/loading runners go idle.
    Wait,
    /// It cannot fit even with every runner gone.
    Never(String),
}

/// Decides a load of `demand` given `holders` (every runner that holds or will hold memory, stopping ones too).
/// With no known devices memory is not limited; `max_loaded_models` still is.
pub fn plan(devices: &[Device], limits: &Limits, holders: &[Holder], demand: &Demand) -> Plan {
    let capacity: BTreeMap<u32, u64> = devices
        .iter()
        .map(|d| (d.index, d.capacity(limits)))
        .collect();
    let candidates: Vec<Placement> = match demand {
        _ if devices.is_empty() => vec![Placement {
            usage: Usage::new(),
            pin: None,
        }],
        Demand::Pinned(u) => vec![Placement {
            usage: u.clone(),
            pin: None,
        }],
        Demand::Any(bytes) => {
            let mut c: Vec<Placement> = devices
                .iter()
                .map(|d| Placement {
                    usage: Usage::from([(d.index, *bytes)]),
                    pin: Some(vec![d.index]),
                })
                .collect();
            if devices.len() > 1 {
                c.push(spread(*bytes, &capacity));
            }
            c
        }
    };
    // Rank: fits now (one device before the spread; the device left with the most room), then fewest bytes to
    // evict, then waiting.
    let mut best: Option<((u8, bool, u64), Plan)> = None;
    let mut never = None;
    for p in candidates {
        let outcome = one(devices, &capacity, limits, holders, &p);
        let spread = p.usage.len() > 1;
        let (class, cost) = match &outcome {
            Plan::Now(p) => (0, u64::MAX - room_after(&capacity, holders, p)),
            Plan::Evict(v) => (1, evicted_bytes(holders, v)),
            Plan::Wait => (2, 0),
            Plan::Never(_) => {
                never.get_or_insert(outcome);
                continue;
            }
        };
        let rank = (class, spread, cost);
        if best.as_ref().is_none_or(|(r, _)| rank < *r) {
            best = Some((rank, outcome));
        }
    }
    match best {
        Some((_, plan)) => plan,
        None => never.unwrap_or(Plan::Wait),
    }
}

/// The plan for one placement.
fn one(
    devices: &[Device],
    capacity: &BTreeMap<u32, u64>,
    limits: &Limits,
    holders: &[Holder],
    p: &Placement,
) -> Plan {
    for (d, need) in &p.usage {
        let cap = capacity.get(d).copied().unwrap_or(0);
        if *need > cap {
            let device = devices.iter().find(|x| x.index == *d);
            return Plan::Never(never_fits(device, *d, *need, cap, limits));
        }
    }
    let mut order: Vec<&Holder> = holders.iter().collect();
    order.sort_by_key(|h| match h.hold {
        Hold::Stopping => (0, None),
        Hold::Idle { last_used } => (1, last_used),
        Hold::Busy | Hold::Pinned => (2, None),
    });
    let mut used: BTreeMap<u32, u64> = BTreeMap::new();
    for h in holders {
        for (d, b) in &h.usage {
            *used.entry(*d).or_insert(0) += b;
        }
    }
    let over = |used: &BTreeMap<u32, u64>| {
        p.usage.iter().any(|(d, need)| {
            used.get(d).copied().unwrap_or(0) + need > capacity.get(d).copied().unwrap_or(0)
        })
    };
    let mut count = holders.len();
    let too_many = |count: usize| limits.max_loaded_models.is_some_and(|m| count >= m);
    if !over(&used) && !too_many(count) {
        return Plan::Now(p.clone());
    }
    let mut freed: Vec<&Holder> = Vec::new();
    for h in order {
        if !over(&used) && !too_many(count) {
            break;
        }
        if h.hold == Hold::Pinned {
            continue;
        }
        let helps_memory = over(&used)
            && h.usage
                .iter()
                .any(|(d, b)| *b > 0 && p.usage.contains_key(d));
        if !helps_memory && !too_many(count) {
            continue;
        }
        for (d, b) in &h.usage {
            if let Some(u) = used.get_mut(d) {
                *u = u.saturating_sub(*b);
            }
        }
        count -= 1;
        freed.push(h);
    }
    if over(&used) || too_many(count) {
        // Even with every runner but the pinned ones gone it would not fit.
        let pinned: Vec<&Holder> = holders.iter().filter(|h| h.hold == Hold::Pinned).collect();
        if pinned.is_empty() {
            return Plan::Never("max_loaded_models allows no model to load".into());
        }
        let held: u64 = pinned
            .iter()
            .flat_map(|h| h.usage.iter())
            .filter(|(d, _)| p.usage.contains_key(d))
            .map(|(_, b)| b)
            .sum();
        return Plan::Never(format!(
            "does not fit beside the {} pinned model{} ({} held on its devices)",
            pinned.len(),
            if pinned.len() == 1 { "" } else { "s" },
            human(held)
        ));
    }
    if freed.iter().any(|h| h.hold == Hold::Busy) {
        return Plan::Wait;
    }
    let victims: Vec<RunnerId> = freed
        .iter()
        .filter(|h| matches!(h.hold, Hold::Idle { .. }))
        .map(|h| h.id)
        .collect();
    if victims.is_empty() {
        Plan::Wait
    } else {
        Plan::Evict(victims)
    }
}

fn spread(bytes: u64, capacity: &BTreeMap<u32, u64>) -> Placement {
    let sum: u64 = capacity.values().sum::<u64>().max(1);
    Placement {
        usage: capacity
            .iter()
            .map(|(d, c)| (*d, (bytes as f64 * *c as f64 / sum as f64).ceil() as u64))
            .collect(),
        pin: Some(capacity.keys().copied().collect()),
    }
}

fn room_after(capacity: &BTreeMap<u32, u64>, holders: &[Holder], p: &Placement) -> u64 {
    p.usage
        .iter()
        .map(|(d, need)| {
            let used: u64 = holders.iter().filter_map(|h| h.usage.get(d)).sum::<u64>() + need;
            capacity.get(d).copied().unwrap_or(0).saturating_sub(used)
        })
        .min()
        .unwrap_or(0)
}

fn evicted_bytes(holders: &[Holder], victims: &[RunnerId]) -> u64 {
    holders
        .iter()
        .filter(|h| victims.contains(&h.id))
        .map(|h| total(&h.usage))
        .sum()
}

fn never_fits(
    device: Option<&Device>,
    index: u32,
    need: u64,
    capacity: u64,
    limits: &Limits,
) -> String {
    let mut m = format!(
        "needs {} on device {index}, which can give models at most {}",
        human(need),
        human(capacity)
    );
    if let Some(d) = device {
        m += &format!(
            " ({}: {} free of {} total, {} used by other processes, reserve {}",
            d.name,
            human(d.free),
            human(d.total),
            human(d.others),
            human(limits.reserve)
        );
        if let Some(b) = limits.budget {
            m += &format!(", budget {}", human(b));
        }
        m += ")";
    }
    m
}

/// Bytes for people: `1.5 GiB`, `300 MiB`, `12 KiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size {
            let v = bytes as f64 / size as f64;
            return if v >= 100.0 {
                format!("{v:.0} {unit}")
            } else {
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn gpu(index: u32, total_gib: u64, others_gib: u64) -> Device {
        Device {
            index,
            name: format!("gpu{index}"),
            total: total_gib * GIB,
            free: (total_gib - others_gib) * GIB,
            others: others_gib * GIB,
        }
    }

    fn holder(id: RunnerId, device: u32, gib: u64, hold: Hold) -> Holder {
        Holder {
            id,
            usage: Usage::from([(device, gib * GIB)]),
            hold,
        }
    }

    fn idle(t0: Instant, secs: u64) -> Hold {
        Hold::Idle {
            last_used: Some(t0 + Duration::from_secs(secs)),
        }
    }

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn fits_on_the_device_with_the_most_room() {
        let devices = [gpu(0, 24, 0), gpu(1, 24, 0)];
        let holders = [holder(1, 0, 10, Hold::Busy)];
        assert_eq!(
            plan(&devices, &limits(), &holders, &Demand::Any(8 * GIB)),
            Plan::Now(Placement {
                usage: Usage::from([(1, 8 * GIB)]),
                pin: Some(vec![1])
            })
        );
    }

    #[test]
    fn capacity_subtracts_others_and_reserve_and_honours_the_budget() {
        let d = gpu(0, 24, 4);
        let mut l = limits();
        l.reserve = GIB;
        assert_eq!(d.capacity(&l), 19 * GIB);
        l.budget = Some(6 * GIB);
        assert_eq!(d.capacity(&l), 6 * GIB);
    }

    #[test]
    fn evicts_the_least_recently_used_idle_runner_first() {
        let t0 = Instant::now();
        let devices = [gpu(0, 24, 0)];
        let holders = [
            holder(1, 0, 8, idle(t0, 5)),
            holder(2, 0, 8, idle(t0, 1)),
            holder(3, 0, 6, Hold::Busy),
        ];
        assert_eq!(
            plan(&devices, &limits(), &holders, &Demand::Any(8 * GIB)),
            Plan::Evict(vec![2])
        );
        // 16 GiB needs both idle ones.
        assert_eq!(
            plan(&devices, &limits(), &holders, &Demand::Any(16 * GIB)),
            Plan::Evict(vec![2, 1])
        );
    }

    #[test]
    fn a_busy_or_loading_runner_is_waited_for_never_evicted() {
        let t0 = Instant::now();
        let devices = [gpu(0, 24, 0)];
        let holders = [holder(1, 0, 8, idle(t0, 1)), holder(2, 0, 14, Hold::Busy)];
        assert_eq!(
            plan(&devices, &limits(), &holders, &Demand::Any(20 * GIB)),
            Plan::Wait
        );
    }

    #[test]
    fn a_stopping_runner_counts_until_it_exits() {
        let devices = [gpu(0, 24, 0)];
        let holders = [holder(1, 0, 20, Hold::Stopping)];
        assert_eq!(
            plan(&devices, &limits(), &holders, &Demand::Any(8 * GIB)),
            Plan::Wait
        );
    }

    #[test]
    fn pinned_runners_are_planned_around_never_evicted() {
        let t0 = Instant::now();
        let devices = [gpu(0, 24, 4)]; // 20 GiB for models
                                       // An idle pinned runner is never a victim: the idle unpinned one goes instead.
        let holders = [holder(1, 0, 8, Hold::Pinned), holder(2, 0, 8, idle(t0, 0))];
        assert_eq!(
            plan(&devices, &limits(), &holders, &Demand::Any(10 * GIB)),
            Plan::Evict(vec![2])
        );
        // What fits only with the pinned runner gone never loads, and says why.
        let Plan::Never(why) = plan(&devices, &limits(), &holders, &Demand::Any(14 * GIB)) else {
            panic!("a load that needs a pinned runner gone must be refused")
        };
        assert_eq!(
            why,
            "does not fit beside the 1 pinned model (8.0 GiB held on its devices)"
        );
        // max_loaded_models counts pinned runners, and never frees them.
        let one = Limits {
            max_loaded_models: Some(1),
            ..limits()
        };
        assert!(matches!(
            plan(
                &devices,
                &one,
                &[holder(1, 0, 1, Hold::Pinned)],
                &Demand::Any(GIB)
            ),
            Plan::Never(_)
        ));
    }

    #[test]
    fn never_fits_names_the_numbers() {
        let devices = [gpu(0, 24, 4)];
        let Plan::Never(why) = plan(&devices, &limits(), &[], &Demand::Any(30 * GIB)) else {
            panic!()
        };
        assert_eq!(
            why,
            "needs 30.0 GiB on device 0, which can give models at most 20.0 GiB \
             (gpu0: 20.0 GiB free of 24.0 GiB total, 4.0 GiB used by other processes, reserve 0 B)"
        );
    }

    #[test]
    fn too_big_for_one_gpu_spreads_over_all() {
        let devices = [gpu(0, 24, 0), gpu(1, 24, 0)];
        let Plan::Now(p) = plan(&devices, &limits(), &[], &Demand::Any(40 * GIB)) else {
            panic!()
        };
        assert_eq!(p.usage, Usage::from([(0, 20 * GIB), (1, 20 * GIB)]));
        assert_eq!(p.pin, Some(vec![0, 1]));
    }

    #[test]
    fn a_pinned_demand_is_placed_as_pinned() {
        let t0 = Instant::now();
        let devices = [gpu(0, 24, 0), gpu(1, 24, 0)];
        let pinned = Demand::Pinned(Usage::from([(1, 20 * GIB)]));
        assert_eq!(
            plan(
                &devices,
                &limits(),
                &[holder(1, 1, 8, idle(t0, 0))],
                &pinned
            ),
            Plan::Evict(vec![1])
        );
        assert_eq!(
            plan(&devices, &limits(), &[], &pinned),
            Plan::Now(Placement {
                usage: Usage::from([(1, 20 * GIB)]),
                pin: None
            })
        );
    }

    #[test]
    fn max_loaded_models_evicts_by_count() {
        let t0 = Instant::now();
        let mut l = limits();
        l.max_loaded_models = Some(2);
        let holders = [holder(1, 0, 1, idle(t0, 9)), holder(2, 0, 1, idle(t0, 3))];
        // No devices: memory is unlimited, the count is not.
        assert_eq!(
            plan(&[], &l, &holders, &Demand::Any(GIB)),
            Plan::Evict(vec![2])
        );
        assert_eq!(
            plan(&[], &l, &[holder(1, 0, 1, Hold::Busy)], &Demand::Any(GIB)),
            Plan::Now(Placement {
                usage: Usage::new(),
                pin: None
            })
        );
    }

    #[test]
    fn an_idle_runner_on_another_device_is_not_evicted_for_nothing() {
        let t0 = Instant::now();
        let devices = [gpu(0, 24, 0), gpu(1, 24, 0)];
        let holders = [holder(1, 0, 20, idle(t0, 0)), holder(2, 1, 20, Hold::Busy)];
        assert_eq!(
            plan(&devices, &limits(), &holders, &Demand::Any(10 * GIB)),
            Plan::Evict(vec![1])
        );
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(300 << 20), "300 MiB");
        assert_eq!(human(3 * GIB / 2), "1.5 GiB");
    }
}
