//! Engines: what runs beside us. `llamacpp` knows llama-server's command line and where to find the binary;
//! `process` spawns an engine in its own process group, captures its output, waits for readiness and stops the
//! whole group. Nothing here decides *when* to start or stop an engine: that is the scheduler's job.

pub mod flags;
pub mod llamacpp;
pub mod process;

use std::path::PathBuf;
use std::time::Duration;

use crate::config::KeepAlive;

/// What a runner serves, derived from the request path (DMR does the same): a model in completion mode and in
/// embedding mode are two engine processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    Completion,
    Embedding,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Completion => "completion",
            Mode::Embedding => "embedding",
        }
    }
}

/// Everything needed to start one engine for one model: resolved before the scheduler is asked.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchSpec {
    /// The model's display name (its first tag), for logs and `/engines/ps`.
    pub model_name: String,
    /// The GGUF weights file in the store.
    pub model_path: PathBuf,
    pub mode: Mode,
    pub context_size: u32,
    pub runtime_flags: Vec<String>,
    pub keep_alive: KeepAlive,
}

/// What a request asks of its runner beyond the model (Ollama's `options.num_ctx` and `keep_alive`): they
/// override the configured settings for this request, and a different context size reloads the runner.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunnerWishes {
    pub context_size: Option<u32>,
    pub keep_alive: Option<KeepAlive>,
}

/// Timeouts for a runner's life cycle.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub startup: Duration,
    pub stop: Duration,
    /// Between health checks of a ready engine (three failures in a row: killed and replaced).
    pub health: Duration,
}

/// Whether an engine's output says it ran out of memory while loading: CUDA, cuBLAS, Vulkan, Metal and host
/// allocation failures as llama.cpp prints them, and PyTorch's (vLLM, diffusers).
pub fn out_of_memory(output: &str) -> bool {
    const SIGNS: [&str; 8] = [
        "out of memory",
        "cudaMalloc failed",
        "CUBLAS_STATUS_ALLOC_FAILED",
        "unable to allocate",
        "failed to allocate",
        "ErrorOutOfDeviceMemory",
        "OutOfMemoryError",
        "No available memory for the cache blocks",
    ];
    let lower = output.to_ascii_lowercase();
    SIGNS
        .iter()
        .any(|s| lower.contains(&s.to_ascii_lowercase()))
}

/// Whether an engine's output says it could not bind its port (another process took it first).
pub fn port_taken(output: &str) -> bool {
    let lower = output.to_ascii_lowercase();
    lower.contains("couldn't bind") || lower.contains("address already in use")
}

/// The environment that pins an engine to these GPUs, numbered as NVML numbers them (PCI bus order; CUDA's own
/// default order, fastest first, can differ).
pub fn cuda_pin(devices: &[u32]) -> Vec<(String, String)> {
    let list: Vec<String> = devices.iter().map(u32::to_string).collect();
    vec![
        ("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into()),
        ("CUDA_VISIBLE_DEVICES".into(), list.join(",")),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_taken_port_is_recognised() {
        assert!(super::port_taken(
            "start: couldn't bind HTTP server socket, hostname: 127.0.0.1, port: 40000"
        ));
        assert!(super::port_taken(
            "OSError: [Errno 98] Address already in use"
        ));
        assert!(!super::port_taken("error loading model"));
    }

    #[test]
    fn pinning_uses_nvml_numbering() {
        assert_eq!(
            super::cuda_pin(&[2, 0]),
            [
                ("CUDA_DEVICE_ORDER".to_string(), "PCI_BUS_ID".to_string()),
                ("CUDA_VISIBLE_DEVICES".to_string(), "2,0".to_string())
            ]
        );
    }

    #[test]
    fn out_of_memory_is_recognised_in_engine_output() {
        for line in [
            "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 4096.00 MiB on device 0: cudaMalloc failed: out of memory",
            "llama_model_load: error loading model: unable to allocate CUDA0 buffer",
            "alloc_tensor_range: failed to allocate CUDA0 buffer of size 8589934592",
            "CUDA error: CUBLAS_STATUS_ALLOC_FAILED",
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
            "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`",
        ] {
            assert!(super::out_of_memory(line), "{line}");
        }
        assert!(!super::out_of_memory(
            "error: failed to open GGUF file '/nope.gguf'\nmain: exiting due to model loading error"
        ));
    }
}
