//! NVIDIA GPUs through NVML (`nvml-wrapper`), which loads `libnvidia-ml.so.1` at run time: a machine without the
//! driver gets an error from `init`, not a binary that fails to start.

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;

use super::{DeviceMemory, GpuProbe, ProbeKind, ProcessMemory, Snapshot};

pub struct NvmlProbe {
    nvml: Nvml,
    count: u32,
}

impl NvmlProbe {
    /// Loads NVML (`libnvidia-ml.so.1`, the driver's soname, then the development symlink) and counts GPUs; no
    /// GPU is an error too.
    pub fn init() -> Result<NvmlProbe, String> {
        let nvml = Nvml::builder()
            .lib_path(std::ffi::OsStr::new("libnvidia-ml.so.1"))
            .init()
            .or_else(|_| Nvml::init())
            .map_err(|e| format!("NVML: {e}"))?;
        let count = nvml.device_count().map_err(|e| format!("NVML: {e}"))?;
        if count == 0 {
            return Err("NVML sees no GPU".into());
        }
        Ok(NvmlProbe { nvml, count })
    }

    pub fn device_count(&self) -> u32 {
        self.count
    }
}

impl GpuProbe for NvmlProbe {
    fn kind(&self) -> ProbeKind {
        ProbeKind::Nvml
    }

    fn snapshot(&self, _pids: &[u32]) -> Result<Snapshot, String> {
        let mut snap = Snapshot::default();
        for index in 0..self.count {
            let d = self
                .nvml
                .device_by_index(index)
                .map_err(|e| format!("GPU {index}: {e}"))?;
            let m = d.memory_info().map_err(|e| format!("GPU {index}: {e}"))?;
            snap.devices.push(DeviceMemory {
                index,
                name: d.name().unwrap_or_default(),
                total: m.total,
                free: m.free,
                used: m.used,
            });
            // Compute (CUDA) and graphics processes; a process in both lists is counted once.
            let mut seen = std::collections::BTreeSet::new();
            let compute = d.running_compute_processes().unwrap_or_default();
            let graphics = d.running_graphics_processes().unwrap_or_default();
            for p in compute.into_iter().chain(graphics) {
                if let UsedGpuMemory::Used(used) = p.used_gpu_memory {
                    if seen.insert(p.pid) {
                        snap.processes.push(ProcessMemory {
                            pid: p.pid,
                            device: index,
                            used,
                        });
                    }
                }
            }
        }
        Ok(snap)
    }
}
