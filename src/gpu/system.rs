//! Host memory through `sysinfo`, for CPU-only machines: one device (RAM: total, available) and each asked-for
//! process's resident memory.

use std::sync::Mutex;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, RefreshKind, System};

use super::{DeviceMemory, GpuProbe, ProbeKind, ProcessMemory, Snapshot};

pub struct SystemProbe {
    sys: Mutex<System>,
}

impl SystemProbe {
    pub fn new() -> Self {
        SystemProbe {
            sys: Mutex::new(System::new_with_specifics(RefreshKind::nothing())),
        }
    }
}

impl Default for SystemProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl GpuProbe for SystemProbe {
    fn kind(&self) -> ProbeKind {
        ProbeKind::System
    }

    fn snapshot(&self, pids: &[u32]) -> Result<Snapshot, String> {
        let mut sys = self.sys.lock().unwrap_or_else(|p| p.into_inner());
        sys.refresh_memory();
        let wanted: Vec<Pid> = pids.iter().map(|p| Pid::from_u32(*p)).collect();
        sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&wanted),
            true,
            ProcessRefreshKind::nothing().with_memory(),
        );
        let total = sys.total_memory();
        let free = sys.available_memory().min(total);
        let processes = wanted
            .iter()
            .filter_map(|pid| {
                sys.process(*pid).map(|p| ProcessMemory {
                    pid: pid.as_u32(),
                    device: 0,
                    used: p.memory(),
                })
            })
            .collect();
        Ok(Snapshot {
            devices: vec![DeviceMemory {
                index: 0,
                name: "host memory".into(),
                total,
                free,
                used: total - free,
            }],
            processes,
        })
    }
}
