//! Engines: what runs beside us. Each engine is one file (`llamacpp`, `vllm`, `diffusers`) implementing
//! [`Engine`]: its command line, where its executable is found, its default context, its memory estimate, the name
//! it answers to, how it counts tokens, which settings and flags it accepts. [`EngineKind::ALL`] registers them;
//! which one serves a model follows its format (GGUF → llama.cpp, safetensors → vLLM, diffusers pipelines →
//! diffusers), as in DMR. `process` spawns an engine in its own process group, captures its
//! output, waits for readiness and stops the whole group; `sandbox` decides what an engine may touch and confines
//! it (user, `no_new_privs`, Landlock). Nothing here decides *when* to start or stop an engine:
//! that is the scheduler's job.

pub mod diffusers;
pub mod flags;
pub mod install;
pub mod llamacpp;
pub mod process;
pub mod sandbox;
pub mod speculative;
pub mod vllm;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::KeepAlive;
use crate::store::{Model, ModelConfig, ModelFormat};

/// What the supervisor knows of one inference engine. Each engine is one file here with one `impl Engine` and
/// one line in [`EngineKind::ALL`]; the scheduler and the HTTP front ask the engine, never name it.
pub trait Engine: Sync + 'static {
    /// Its name in URLs (`/engines/vllm/v1/...`), in `/engines/ps` and in `/engines/status`.
    fn name(&self) -> &'static str;
    /// The model formats it runs (each format has exactly one engine).
    fn formats(&self) -> &'static [ModelFormat];
    /// The modes it can serve.
    fn serves(&self, mode: Mode) -> bool;
    /// How to start it (configured path, `$PATH`, install directory), or why it cannot be.
    fn resolve(
        &self,
        config: &crate::config::EnginesConfig,
        path_var: Option<&str>,
        data_dir: &Path,
    ) -> Result<EngineCommand, String>;
    /// The argv (after the program and its prefix) that starts `spec` on `port`.
    fn argv(&self, spec: &LaunchSpec, port: u16) -> Vec<String>;
    /// The context size to start with, given what the request and the settings asked for (`None`: nothing) and
    /// the model's config. 0 leaves the engine's own default.
    fn context_size(&self, asked: Option<u32>, model: &ModelConfig) -> u32;
    /// The memory a load is expected to take, before the first measurement replaces it. By default the weights
    /// plus a quarter for activations, plus the engine's own footprint.
    fn demand(&self, input: &DemandInput<'_>) -> Result<Need, String> {
        Ok(Need::Any(files_estimate(input)))
    }
    /// Whether it answers to any model name (llama.cpp); otherwise the request's `model` is rewritten to the
    /// name it was started with.
    fn answers_any_model_name(&self) -> bool {
        false
    }
    /// How it counts a chat's tokens with the template applied, if it can.
    fn token_counting(&self) -> Option<TokenCounting> {
        None
    }
    /// Checks engine settings stored by `_configure` (vLLM's `gpu-memory-utilization`, `hf-overrides`).
    fn check_options(&self, options: &vllm::VllmOptions) -> Result<(), String> {
        if options.gpu_memory_utilization.is_some() || options.hf_overrides.is_some() {
            return Err(format!(
                "\"vllm\" settings apply to vLLM models; this one runs on {}",
                self.name()
            ));
        }
        Ok(())
    }
    /// Its install recipe, compiled in: (file name, content); `install.sh` is run (`engines::install`).
    fn install_recipe(&self) -> &'static [(&'static str, &'static str)];
    /// Where its recipe installs it under the data directory (what `POST /engines/uninstall-backend` removes).
    fn install_dir(&self, data_dir: &Path) -> PathBuf;
    /// The runtime flags a network caller may set (`engines::flags`); `None`: none at all.
    fn flag_allowlist(&self) -> Option<&'static [&'static str]> {
        None
    }
    /// The flags that make it serve `n` requests at once (`[[models]] parallel`); `None`: it cannot be told.
    fn parallel_flags(&self, _n: u32) -> Option<Vec<String>> {
        None
    }
    /// Where it reports how its KV cache is used (read by [`Engine::kv_cache_usage`]); `None`: it does not.
    fn kv_usage_path(&self) -> Option<&'static str> {
        None
    }
    /// The share of its KV cache (0..1) that running requests hold, from the answer of
    /// [`Engine::kv_usage_path`] and the context it was started with (0: the engine's default).
    fn kv_cache_usage(&self, _answer: &[u8], _context_size: u32) -> Option<f64> {
        None
    }
    /// The path where it serves one of the routes beyond OpenAI's `/v1/…` pass-throughs ([`EngineRoute`]), or
    /// `None` when it does not serve it (the front then translates or refuses).
    fn route_path(&self, _route: EngineRoute) -> Option<&'static str> {
        None
    }
    /// Why a model cannot be served in `mode` although the engine serves the mode (an embedding model asked to
    /// rerank), when its metadata says so; `None` when nothing says it cannot.
    fn refuses_mode(&self, _mode: Mode, _model: &ModelConfig) -> Option<String> {
        None
    }
    /// Whether its own `/metrics` already carries vLLM's load series (`vllm:num_requests_running`...), so the
    /// supervisor passes them through instead of writing its own for it.
    fn exports_vllm_metrics(&self) -> bool {
        false
    }
    /// Whether it decodes speculatively with a draft model of its own format ([`LaunchSpec::draft`]).
    fn takes_draft(&self) -> bool {
        false
    }
}

/// An engine, as the rest of the daemon holds it: a handle on its [`Engine`], compared, ordered and hashed by its
/// place in [`EngineKind::ALL`].
#[derive(Clone, Copy)]
pub struct EngineKind(&'static dyn Engine);

impl EngineKind {
    /// Every engine, in the order `/engines/status` lists them. Registering an engine is one line here.
    pub const ALL: [EngineKind; 3] = [llamacpp::ENGINE, vllm::ENGINE, diffusers::ENGINE];

    pub const fn new(engine: &'static dyn Engine) -> EngineKind {
        EngineKind(engine)
    }

    /// Its name in URLs (`/engines/vllm/v1/...`), in `/engines/ps` and in `/engines/status`.
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    pub fn from_name(name: &str) -> Option<EngineKind> {
        EngineKind::ALL.into_iter().find(|e| e.name() == name)
    }

    /// The engine that runs a model of this format.
    pub fn for_format(format: ModelFormat) -> EngineKind {
        EngineKind::ALL
            .into_iter()
            .find(|e| e.formats().contains(&format))
            .unwrap_or(llamacpp::ENGINE)
    }

    fn rank(self) -> usize {
        EngineKind::ALL
            .iter()
            .position(|e| e.name() == self.name())
            .unwrap_or(usize::MAX)
    }
}

impl std::ops::Deref for EngineKind {
    type Target = dyn Engine;
    fn deref(&self) -> &Self::Target {
        self.0
    }
}

impl std::fmt::Debug for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl PartialEq for EngineKind {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for EngineKind {}

impl PartialOrd for EngineKind {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EngineKind {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank()
            .cmp(&other.rank())
            .then_with(|| self.name().cmp(other.name()))
    }
}

impl std::hash::Hash for EngineKind {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name().hash(state)
    }
}

/// How an engine counts the tokens of an OpenAI chat request with its chat template applied: what to POST where,
/// and where the count is in the answer.
#[derive(Debug, Clone, Copy)]
pub struct TokenCounting {
    pub path: &'static str,
    /// The body to send, from the chat request.
    pub body: fn(serde_json::Value) -> serde_json::Value,
    /// The count in the engine's answer.
    pub count: fn(serde_json::Value) -> Result<u64, String>,
}

/// What an engine's memory estimate may read.
pub struct DemandInput<'a> {
    pub model: &'a Model,
    pub launch: &'a LaunchSpec,
    /// The size of the model's files in the store.
    pub files_bytes: u64,
    /// Budgeting GPU memory (NVML), not host memory.
    pub gpu: bool,
    /// How many devices the probe saw.
    pub devices: usize,
    /// Measures memory now (vLLM takes a share of the largest GPU).
    pub probe: &'a dyn crate::gpu::GpuProbe,
    /// The draft model of speculative decoding, loaded beside the model.
    pub draft: Option<DraftInput<'a>>,
}

/// What a memory estimate may read of a draft model.
pub struct DraftInput<'a> {
    pub model: &'a Model,
    /// The size of its files in the store.
    pub files_bytes: u64,
}

/// An engine's memory estimate, before the scheduler places it.
#[derive(Debug, Clone, PartialEq)]
pub enum Need {
    /// This many bytes, wherever they fit.
    Any(u64),
    /// Pinned by the runtime flags: these bytes on these devices.
    Pinned(std::collections::BTreeMap<u32, u64>),
}

/// The engine's footprint on this machine (GPU runtimes take more than a CPU process).
pub fn overhead(gpu: bool) -> u64 {
    if gpu {
        crate::gpu::estimate::ENGINE_OVERHEAD_GPU
    } else {
        crate::gpu::estimate::ENGINE_OVERHEAD_CPU
    }
}

/// The model's files (and its draft's) plus a quarter for activations plus the engine's footprint.
pub fn files_estimate(input: &DemandInput<'_>) -> u64 {
    let files = input.files_bytes + input.draft.as_ref().map_or(0, |d| d.files_bytes);
    files + files / 4 + overhead(input.gpu)
}

/// How to run an engine: an executable and the arguments that come before the engine's own (`python runner.py`,
/// `python -m vllm.entrypoints.cli.main`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineCommand {
    pub program: PathBuf,
    pub prefix: Vec<String>,
}

/// How each engine is started, or why it cannot be (reported to the request that needs it).
pub type EngineCommands = std::collections::BTreeMap<EngineKind, Result<EngineCommand, String>>;

/// Finds how to start an engine from the configuration, `$PATH` and the install directories. It looks again at
/// every start, so an engine installed while the daemon runs (`POST /engines/install-backend`) is found.
#[derive(Debug, Clone)]
pub struct EngineFinder {
    pub config: crate::config::EnginesConfig,
    pub path_var: Option<String>,
    pub data_dir: PathBuf,
    /// How each engine start is confined (`sandbox::confine`).
    pub sandbox: std::sync::Arc<sandbox::confine::Sandbox>,
}

impl EngineFinder {
    pub fn find(&self, engine: EngineKind) -> Result<EngineCommand, String> {
        engine.resolve(&self.config, self.path_var.as_deref(), &self.data_dir)
    }

    pub fn all(&self) -> EngineCommands {
        EngineKind::ALL
            .into_iter()
            .map(|e| (e, self.find(e)))
            .collect()
    }
}

/// The argv (after the program) that starts `spec`'s engine on `port`.
pub fn argv(command: &EngineCommand, spec: &LaunchSpec, port: u16) -> Vec<String> {
    let own = spec.engine.argv(spec, port);
    command.prefix.iter().cloned().chain(own).collect()
}

/// Whether `path` is a file this process may execute.
pub fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The first executable called `name` in the directories of `path_var` (`$PATH`).
pub fn on_path(name: &str, path_var: Option<&str>) -> Option<PathBuf> {
    path_var
        .into_iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// What a runner serves, derived from the request path (DMR does the same): a model in completion, embedding and
/// reranking mode are three engine processes (llama-server restricts an `--embeddings` or `--reranking` server to
/// that use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    Completion,
    Embedding,
    /// `/rerank` and `/score`: a cross-encoder scoring (query, document) pairs.
    Reranking,
    ImageGeneration,
}

impl Mode {
    pub const ALL: [Mode; 4] = [
        Mode::Completion,
        Mode::Embedding,
        Mode::Reranking,
        Mode::ImageGeneration,
    ];

    /// Its name in `/engines/ps`, metrics and `_configure` (DMR's).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Completion => "completion",
            Mode::Embedding => "embedding",
            Mode::Reranking => "reranking",
            Mode::ImageGeneration => "image-generation",
        }
    }
}

/// Routes an engine may serve beyond OpenAI's `/v1/…` pass-throughs; [`Engine::route_path`] says where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineRoute {
    /// Jina/Cohere rerank: `{model, query, documents, top_n}` → `{results: [{index, relevance_score}]}`.
    Rerank,
    /// vLLM's score: `{model, text_1, text_2}` → `{data: [{index, object: "score", score}]}`.
    Score,
    /// Text → token ids, in the engine's own request shape.
    Tokenize,
    /// Token ids → text, in the engine's own request shape.
    Detokenize,
}

/// Everything needed to start one engine for one model: resolved before the scheduler is asked.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchSpec {
    /// The model's display name (its first tag), for logs and `/engines/ps`.
    pub model_name: String,
    pub engine: EngineKind,
    /// What the engine loads: the GGUF weights file, the safetensors or pipeline directory, or the `.dduf` file.
    pub model_path: PathBuf,
    /// A packaged chat template for llama.cpp (`--chat-template-file`), unless the runtime flags pick one.
    pub chat_template: Option<PathBuf>,
    /// A vision model's multimodal projector for llama.cpp (`--mmproj`), from the model's mmproj layer.
    pub mmproj: Option<PathBuf>,
    pub mode: Mode,
    pub context_size: u32,
    pub runtime_flags: Vec<String>,
    pub keep_alive: KeepAlive,
    /// `[[models]] pinned`: never evicted for another load (its keep-alive is forever).
    pub pinned: bool,
    /// vLLM's own settings (`--gpu-memory-utilization`, `--hf-overrides`).
    pub vllm: vllm::VllmOptions,
    /// A draft model for speculative decoding (completion runners of engines that [`Engine::takes_draft`]).
    pub draft: Option<speculative::Draft>,
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
    use super::*;

    #[test]
    fn the_registry_gives_each_format_one_engine_and_each_engine_one_name() {
        let names: Vec<&str> = EngineKind::ALL.map(EngineKind::name).to_vec();
        assert_eq!(
            names,
            ["llama.cpp", "vllm", "diffusers"],
            "the listing order"
        );
        for e in EngineKind::ALL {
            assert_eq!(EngineKind::from_name(e.name()), Some(e));
            assert!(!e.install_recipe().is_empty(), "{e:?}");
            assert!(e.install_recipe().iter().any(|(n, _)| *n == "install.sh"));
        }
        for format in [
            ModelFormat::Gguf,
            ModelFormat::Safetensors,
            ModelFormat::Diffusers,
            ModelFormat::Dduf,
        ] {
            let owners: Vec<_> = EngineKind::ALL
                .into_iter()
                .filter(|e| e.formats().contains(&format))
                .collect();
            assert_eq!(owners, [EngineKind::for_format(format)], "{format:?}");
        }
        let mut sorted = EngineKind::ALL.to_vec();
        sorted.reverse();
        sorted.sort();
        assert_eq!(sorted, EngineKind::ALL, "ordered as registered");
        assert_eq!(EngineKind::from_name("sglang"), None);
    }

    #[test]
    fn engines_say_how_they_count_tokens_and_which_names_they_answer_to() {
        let llama = llamacpp::ENGINE.token_counting().unwrap();
        let chat = serde_json::json!({"model": "m", "messages": [], "max_tokens": 1});
        assert_eq!(llama.path, "/v1/chat/completions/input_tokens");
        assert_eq!((llama.body)(chat.clone()), chat);
        assert_eq!((llama.count)(serde_json::json!({"input_tokens": 7})), Ok(7));
        assert!((llama.count)(serde_json::json!({"count": 7})).is_err());
        let vllm = vllm::ENGINE.token_counting().unwrap();
        assert_eq!(vllm.path, "/tokenize");
        assert_eq!((vllm.body)(chat)["add_generation_prompt"], true);
        assert_eq!(
            (vllm.count)(serde_json::json!({"count": 9, "tokens": []})),
            Ok(9)
        );
        assert!(diffusers::ENGINE.token_counting().is_none());
        assert!(llamacpp::ENGINE.answers_any_model_name());
        assert!(
            !vllm::ENGINE.answers_any_model_name() && !diffusers::ENGINE.answers_any_model_name()
        );
    }

    #[test]
    fn engines_say_where_they_serve_rerank_score_and_tokenize() {
        use EngineRoute::*;
        let paths = |e: EngineKind| [Rerank, Score, Tokenize, Detokenize].map(|r| e.route_path(r));
        assert_eq!(
            paths(vllm::ENGINE),
            [
                Some("/v1/rerank"),
                Some("/v1/score"),
                Some("/tokenize"),
                Some("/detokenize")
            ]
        );
        assert_eq!(
            paths(llamacpp::ENGINE),
            [
                Some("/v1/rerank"),
                None,
                Some("/tokenize"),
                Some("/detokenize")
            ],
            "no /score: the front translates it to rerank"
        );
        assert_eq!(paths(diffusers::ENGINE), [None; 4]);
        assert!(llamacpp::ENGINE.serves(Mode::Reranking) && vllm::ENGINE.serves(Mode::Reranking));
        assert!(!diffusers::ENGINE.serves(Mode::Reranking));
        assert_eq!(
            Mode::ALL.map(Mode::as_str),
            ["completion", "embedding", "reranking", "image-generation"]
        );
    }

    #[test]
    fn only_vllm_takes_vllm_settings_and_checks_them() {
        let share = |x| vllm::VllmOptions {
            gpu_memory_utilization: Some(x),
            hf_overrides: None,
        };
        assert!(vllm::ENGINE.check_options(&share(0.5)).is_ok());
        assert!(vllm::ENGINE.check_options(&share(1.5)).is_err());
        let err = llamacpp::ENGINE.check_options(&share(0.5)).unwrap_err();
        assert!(err.contains("runs on llama.cpp"), "{err}");
        assert!(diffusers::ENGINE.check_options(&Default::default()).is_ok());
    }
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
