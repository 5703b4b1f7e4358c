//! Memory the scheduler budgets: a `GpuProbe` reads each device's total, free and used memory and what each
//! process uses on it. `NvmlProbe` reads NVIDIA GPUs through NVML, loaded at run time (`libnvidia-ml.so.1`), so
//! the binary starts and serves on machines without it; `SystemProbe` reads host memory with `sysinfo` on CPU-only
//! machines (one "device": RAM, per-process resident memory); `FakeProbe` is set by tests. `attribute` sums what a
//! runner's processes use per device, by process group, because engines like vLLM spawn workers.

pub mod estimate;
mod nvml;
mod system;

use std::collections::BTreeMap;
use std::sync::Mutex;

pub use self::nvml::NvmlProbe;
pub use self::system::SystemProbe;

/// One device's memory, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMemory {
    /// NVML's index, which is what `CUDA_VISIBLE_DEVICES` takes (with `CUDA_DEVICE_ORDER=PCI_BUS_ID`).
    pub index: u32,
    pub name: String,
    pub total: u64,
    pub free: u64,
    pub used: u64,
}

/// Memory one process uses on one device, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessMemory {
    pub pid: u32,
    pub device: u32,
    pub used: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub devices: Vec<DeviceMemory>,
    pub processes: Vec<ProcessMemory>,
}

/// What kind of memory a probe measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// NVIDIA GPU memory, through NVML.
    Nvml,
    /// Host RAM (CPU mode).
    System,
    Fake,
}

impl ProbeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Nvml => "nvml",
            ProbeKind::System => "system",
            ProbeKind::Fake => "fake",
        }
    }
}

pub trait GpuProbe: Send + Sync {
    fn kind(&self) -> ProbeKind;
    /// Reads every device and the processes using them. `pids` are the processes the caller cares about (the
    /// system probe only measures those; NVML lists every process on the GPU anyway).
    fn snapshot(&self, pids: &[u32]) -> Result<Snapshot, String>;
}

/// NVML when the library loads and sees at least one GPU; host memory otherwise (said once in the log).
pub fn detect() -> Box<dyn GpuProbe> {
    match NvmlProbe::init() {
        Ok(p) => {
            tracing::info!(gpus = p.device_count(), "NVML loaded: budgeting GPU memory");
            Box::new(p)
        }
        Err(e) => {
            tracing::info!(
                reason = %e,
                "no usable NVML; running in CPU mode, budgeting host memory"
            );
            Box::new(SystemProbe::new())
        }
    }
}

/// What the processes of one process group use, per device: `pgid_of` tells each pid's group.
pub fn attribute(
    snapshot: &Snapshot,
    pgid: u32,
    pgid_of: impl Fn(u32) -> Option<u32>,
) -> BTreeMap<u32, u64> {
    let mut per_device = BTreeMap::new();
    for p in &snapshot.processes {
        if p.pid == pgid || pgid_of(p.pid) == Some(pgid) {
            *per_device.entry(p.device).or_insert(0) += p.used;
        }
    }
    per_device
}

/// A process's group, from the kernel.
pub fn pgid_of(pid: u32) -> Option<u32> {
    nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid as i32)))
        .ok()
        .map(|g| g.as_raw() as u32)
}

/// A probe whose readings tests set.
#[derive(Debug, Default)]
pub struct FakeProbe {
    pub state: Mutex<Snapshot>,
}

impl FakeProbe {
    pub fn new(snapshot: Snapshot) -> Self {
        FakeProbe {
            state: Mutex::new(snapshot),
        }
    }

    pub fn set(&self, snapshot: Snapshot) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = snapshot;
    }
}

impl GpuProbe for FakeProbe {
    fn kind(&self) -> ProbeKind {
        ProbeKind::Fake
    }

    fn snapshot(&self, _pids: &[u32]) -> Result<Snapshot, String> {
        Ok(self.state.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribution_sums_a_process_group_per_device() {
        let s = Snapshot {
            devices: vec![],
            processes: vec![
                ProcessMemory {
                    pid: 100,
                    device: 0,
                    used: 5,
                },
                ProcessMemory {
                    pid: 101,
                    device: 0,
                    used: 7,
                },
                ProcessMemory {
                    pid: 102,
                    device: 1,
                    used: 11,
                },
                ProcessMemory {
                    pid: 200,
                    device: 0,
                    used: 1000,
                },
            ],
        };
        // 101 and 102 are workers in 100's group; 200 is someone else.
        let groups = |pid| match pid {
            100..=102 => Some(100),
            _ => Some(pid),
        };
        let got = attribute(&s, 100, groups);
        assert_eq!(got, BTreeMap::from([(0, 12), (1, 11)]));
        assert!(attribute(&s, 300, groups).is_empty());
    }

    #[test]
    fn the_system_probe_sees_this_process() {
        let me = std::process::id();
        let s = SystemProbe::new().snapshot(&[me]).unwrap();
        let [host] = s.devices.as_slice() else {
            panic!("one host device: {s:?}")
        };
        assert!(host.total > 0 && host.free <= host.total, "{host:?}");
        let mine = s.processes.iter().find(|p| p.pid == me).unwrap();
        assert!(mine.used > 1 << 20, "{mine:?}");
        assert_eq!(pgid_of(me), Some(nix::unistd::getpgrp().as_raw() as u32));
    }
}
