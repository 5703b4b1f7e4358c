//! Configuration: the TOML file is read into raw structs (`raw`), then validated into a [`Config`] in one pass that
//! reports every problem together, each with its key path (`models[1].context_size: must be > 0 or -1`).
//! Defaults live here and nowhere else. This module knows nothing of HTTP, engines' processes or the store's layout.

mod duration;
mod raw;
mod registry;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use duration::{format_go, parse_duration, KeepAlive};
use raw::{RawBytes, RawConfig, Unknown};
pub use registry::{registry_key, CaFile, Mirror, RegistryConfig, DEFAULT_MAX_MANIFEST_BYTES};

use crate::store::name;

/// The default context size given to llama.cpp when neither the config nor the API sets one (DMR's default).
pub const DEFAULT_CONTEXT_SIZE: u32 = 4096;

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub engines: EnginesConfig,
    pub registry: RegistryConfig,
    pub scheduler: SchedulerConfig,
    pub models: Vec<ModelSettings>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Also serve on this Unix socket (trusted: no API key needed; its file mode guards it).
    pub socket: Option<PathBuf>,
    /// When non-empty, every route but `GET /health` needs one of these (Bearer or `x-api-key`).
    pub api_keys: Vec<String>,
    /// Browser origins allowed besides local ones (`"*"`: any).
    pub allowed_origins: Vec<String>,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    /// On SIGTERM the node turns not-ready (`/readyz`, `/health` answer 503) and keeps serving this long, so that
    /// routers and load balancers stop sending before it stops accepting.
    pub drain_delay: Duration,
    /// A connection that has not sent a whole request head this long after it began one is closed (slowloris).
    pub header_read_timeout: Duration,
    /// Connections open at once over TCP; past it, new ones wait in the kernel's backlog until one closes.
    pub max_connections: usize,
    /// A JSON body with more values than this (array elements and object members, at any depth) is refused with
    /// 400 before it reaches an engine.
    pub max_json_elements: usize,
    /// The Responses API keeps at most this many responses in memory (the oldest leave first).
    pub responses_max: usize,
    /// ... and each for this long after it was made.
    pub responses_ttl: Duration,
    /// Whether an image in chat may be an `http(s)://` URL, which the engine then fetches (llama-server does).
    /// Off by default: the engine would reach any address the client names, from the server's network. Images
    /// sent as `data:` URLs (base64) are always accepted by a vision model.
    pub fetch_image_urls: bool,
    /// The largest blob Ollama's `POST /api/blobs/sha256:…` accepts (streamed to disk, never held in memory).
    pub max_blob_bytes: usize,
    /// `tls_cert` and `tls_key`: the TCP listener serves HTTPS with this certificate (the Unix socket stays plain).
    pub tls: Option<TlsIdentity>,
}

/// The listener's certificate chain and key: their files, and what was read from them (checked to be a pair).
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub certified: std::sync::Arc<rustls::sign::CertifiedKey>,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Directories below which `POST /models/create {"from": PATH}` may import server files, for loopback and
    /// Unix-socket callers only. Empty (the default): no server path is importable over the API; `[[models]]
    /// path` in this file is not limited (the operator wrote it).
    pub import_roots: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct EnginesConfig {
    pub llamacpp: LlamaCppConfig,
    pub vllm: VllmConfig,
    pub diffusers: DiffusersConfig,
    pub sandbox: SandboxConfig,
}

impl Default for EnginesConfig {
    fn default() -> Self {
        EnginesConfig {
            llamacpp: LlamaCppConfig::default(),
            vllm: VllmConfig::default(),
            diffusers: DiffusersConfig::default(),
            sandbox: SandboxConfig {
                enabled: true,
                user: None,
                read: Vec::new(),
                write: Vec::new(),
            },
        }
    }
}

/// How engines are confined (`engines::sandbox`): `[engines] sandbox`, `user`, `sandbox_read`, `sandbox_write`.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxConfig {
    /// Off: engines run as the supervisor runs, unconfined (for debugging).
    pub enabled: bool,
    /// The user engines run as when the supervisor runs as root; `None`: root without capabilities.
    pub user: Option<String>,
    /// Extra trees an engine may read and execute (CUDA under /opt, a shared cache).
    pub read: Vec<PathBuf>,
    /// Extra trees an engine may write.
    pub write: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct VllmConfig {
    /// The `vllm` executable (or a Python, with `args = ["-m", "vllm.entrypoints.cli.main"]`); resolution against
    /// PATH and the install dir happens in `engines::vllm`.
    pub binary: Option<PathBuf>,
    /// Arguments placed before `serve`.
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiffusersConfig {
    /// The Python that runs the runner (default: the install dir's venv).
    pub python: Option<PathBuf>,
    /// `runner.py` (default: the install dir's copy).
    pub runner: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub struct LlamaCppConfig {
    /// As configured; resolution against PATH and the install dir happens in `engines::llamacpp`.
    pub binary: Option<PathBuf>,
}

/// The most requests a model may be set to serve at once (`[[models]] parallel`).
const MAX_PARALLEL: i64 = 1024;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub keep_alive: KeepAlive,
    /// The longest keep-alive a client may ask for (a request's `keep_alive`, `_configure`); `None`: no cap.
    pub max_keep_alive: Option<KeepAlive>,
    pub startup_timeout: Duration,
    pub stop_timeout: Duration,
    /// At most this many bytes per device for our runners (`None`: what the device has).
    pub memory_budget: Option<u64>,
    /// Bytes left free on each device.
    pub memory_reserve: u64,
    pub max_loaded_models: Option<usize>,
    /// Requests that may wait for memory before new ones get 503.
    pub max_queue: usize,
    /// Requests one loaded model serves at once; more wait in the queue (and count against `max_queue`).
    pub max_in_flight: u32,
    pub queue_timeout: Duration,
    /// Between health checks of ready engines; three failures in a row and the engine is killed and replaced.
    pub health_interval: Duration,
}

/// Per-model settings from `[[models]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSettings {
    /// Normalised (`ai/tiny:latest`).
    pub name: String,
    /// A model imported into the store at start-up under `name`: a GGUF file (`gguf` or `path`), a safetensors
    /// or diffusers directory, or a `.dduf` file (`path`).
    pub path: Option<PathBuf>,
    /// `None`: the engine's default (for vLLM, the model's `max_position_embeddings`).
    pub context_size: Option<u32>,
    pub runtime_flags: Vec<String>,
    pub keep_alive: Option<KeepAlive>,
    /// Requests the engine serves at once (llama-server's slots, vLLM's sequences); `None`: the engine's default.
    pub parallel: Option<u32>,
    pub vllm: crate::engines::vllm::VllmOptions,
    /// Where the model comes from when the store lacks it: a registry reference or `hf.co/...`, pulled in the
    /// background at start-up (and when a reload adds it), retried with backoff until it arrives.
    pub from: Option<String>,
    /// Load it as soon as it is in the store; `/readyz` answers 503 until every preloaded model has loaded.
    pub preload: bool,
    /// Never evicted for another model's memory, never stopped for being idle.
    pub pinned: bool,
    /// More names for the model (normalised), tagged in the store so that every dialect answers to and lists them.
    pub aliases: Vec<String>,
    /// Speculative decoding with a draft model of the store (completion runners).
    pub speculative: Option<crate::store::Speculative>,
}

impl ModelSettings {
    /// Whether the model has work to do after start-up: a pull, aliases to tag, or a load.
    pub fn is_declared(&self) -> bool {
        self.from.is_some() || self.preload || self.pinned || !self.aliases.is_empty()
    }

    pub fn defaults_for(name: &str) -> ModelSettings {
        ModelSettings {
            name: name.to_string(),
            path: None,
            context_size: None,
            runtime_flags: Vec::new(),
            keep_alive: None,
            parallel: None,
            vllm: Default::default(),
            from: None,
            preload: false,
            pinned: false,
            aliases: Vec::new(),
            speculative: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

impl ConfigError {
    /// One line per problem, for printing.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(errors) => errors.clone(),
            other => vec![other.to_string()],
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 12434)),
                socket: None,
                api_keys: Vec::new(),
                allowed_origins: Vec::new(),
                max_body_bytes: 10 * 1024 * 1024,
                shutdown_grace: Duration::from_secs(10),
                drain_delay: Duration::from_secs(5),
                header_read_timeout: Duration::from_secs(30),
                max_connections: 1024,
                max_json_elements: 50_000,
                responses_max: 1000,
                responses_ttl: Duration::from_secs(3600),
                fetch_image_urls: false,
                max_blob_bytes: 256 << 30,
                tls: None,
            },
            store: StoreConfig {
                path: default_store_path(),
                import_roots: Vec::new(),
            },
            engines: EnginesConfig::default(),
            registry: RegistryConfig::default(),
            scheduler: SchedulerConfig {
                keep_alive: KeepAlive::DEFAULT,
                max_keep_alive: None,
                startup_timeout: Duration::from_secs(300),
                stop_timeout: Duration::from_secs(10),
                memory_budget: None,
                memory_reserve: 512 << 20,
                max_loaded_models: None,
                max_queue: 512,
                max_in_flight: 512,
                queue_timeout: Duration::from_secs(300),
                health_interval: Duration::from_secs(5),
            },
            models: Vec::new(),
        }
    }
}

/// `$XDG_DATA_HOME/dmr-supervisor` (usually `~/.local/share/dmr-supervisor`).
pub fn data_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("dmr-supervisor")
}

fn default_store_path() -> PathBuf {
    data_dir().join("models")
}

impl Config {
    /// Reads and validates a config file. Relative paths in it are taken relative to the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Config::parse(&text, &base).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text; `base` resolves relative paths.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        validate(raw, base)
    }
}

fn bytes(raw: &RawBytes) -> Result<u64, String> {
    match raw {
        RawBytes::Int(n) => u64::try_from(*n).map_err(|_| "must be >= 0".to_string()),
        RawBytes::Text(t) => parse_bytes(t),
    }
}

/// A size with an optional unit: `1073741824`, `512MiB`, `1.5 GiB`, `24GB` (SI units are powers of 1000, IEC
/// units powers of 1024, as `docker` and Ollama read them).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim());
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (like 512MiB or 24GB)"))?;
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    Ok((value * scale as f64).round() as u64)
}

/// Collects every error; the config is only built when there are none.
struct Errors(Vec<String>);

impl Errors {
    fn push(&mut self, key: impl std::fmt::Display, message: impl std::fmt::Display) {
        self.0.push(format!("{key}: {message}"));
    }

    fn unknown(&mut self, prefix: &str, unknown: &Unknown) {
        for key in unknown.keys() {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            self.push(path, "unknown key");
        }
    }

    fn duration(&mut self, key: &str, value: Option<&String>, default: Duration) -> Duration {
        match value.map(|v| parse_duration(v)) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.push(key, e);
                default
            }
        }
    }
}

fn validate(raw: RawConfig, base: &Path) -> Result<Config, ConfigError> {
    let mut errors = Errors(Vec::new());
    let mut config = Config::default();
    errors.unknown("", &raw.unknown);

    if let Some(server) = raw.server {
        errors.unknown("server", &server.unknown);
        if let Some(listen) = server.listen {
            match listen.parse::<SocketAddr>() {
                Ok(addr) => config.server.listen = addr,
                Err(_) => errors.push(
                    "server.listen",
                    format!("{listen:?} is not an IP:port address"),
                ),
            }
        }
        if let Some(socket) = server.socket {
            match resolve_path(&socket, base) {
                Ok(p) => config.server.socket = Some(p),
                Err(e) => errors.push("server.socket", e),
            }
        }
        if let Some(keys) = server.api_keys {
            for (i, k) in keys.iter().enumerate() {
                if k.trim().is_empty() || k.trim() != k {
                    errors.push(
                        format!("server.api_keys[{i}]"),
                        "must be non-empty, without surrounding spaces",
                    );
                }
            }
            config.server.api_keys = keys;
        }
        if let Some(origins) = server.allowed_origins {
            for (i, o) in origins.iter().enumerate() {
                let ok = o == "*"
                    || ((o.starts_with("http://") || o.starts_with("https://"))
                        && !o.contains(char::is_whitespace));
                if !ok {
                    errors.push(
                        format!("server.allowed_origins[{i}]"),
                        format!("{o:?} is not an origin like \"https://host[:port]\" or \"*\""),
                    );
                }
            }
            config.server.allowed_origins = origins;
        }
        if let Some(n) = server.max_body_bytes {
            match usize::try_from(n) {
                Ok(n) if n > 0 => config.server.max_body_bytes = n,
                _ => errors.push("server.max_body_bytes", "must be > 0"),
            }
        }
        config.server.shutdown_grace = errors.duration(
            "server.shutdown_grace",
            server.shutdown_grace.as_ref(),
            config.server.shutdown_grace,
        );
        config.server.drain_delay = errors.duration(
            "server.drain_delay",
            server.drain_delay.as_ref(),
            config.server.drain_delay,
        );
        config.server.header_read_timeout = errors.duration(
            "server.header_read_timeout",
            server.header_read_timeout.as_ref(),
            config.server.header_read_timeout,
        );
        if config.server.header_read_timeout.is_zero() {
            errors.push("server.header_read_timeout", "must be > 0");
        }
        if let Some(fetch) = server.fetch_image_urls {
            config.server.fetch_image_urls = fetch;
        }
        config.server.responses_ttl = errors.duration(
            "server.responses_ttl",
            server.responses_ttl.as_ref(),
            config.server.responses_ttl,
        );
        if config.server.responses_ttl.is_zero() {
            errors.push("server.responses_ttl", "must be > 0");
        }
        for (key, value, slot) in [
            (
                "server.max_connections",
                server.max_connections,
                &mut config.server.max_connections,
            ),
            (
                "server.max_json_elements",
                server.max_json_elements,
                &mut config.server.max_json_elements,
            ),
            (
                "server.responses_max",
                server.responses_max,
                &mut config.server.responses_max,
            ),
            (
                "server.max_blob_bytes",
                server.max_blob_bytes,
                &mut config.server.max_blob_bytes,
            ),
        ] {
            match value.map(usize::try_from) {
                None => {}
                Some(Ok(n)) if n > 0 => *slot = n,
                Some(_) => errors.push(key, "must be > 0"),
            }
        }
        config.server.tls = tls_identity(
            server.tls_cert.as_deref(),
            server.tls_key.as_deref(),
            base,
            &mut errors,
        );
    }

    if let Some(store) = raw.store {
        errors.unknown("store", &store.unknown);
        if let Some(path) = store.path {
            match resolve_path(&path, base) {
                Ok(p) => config.store.path = p,
                Err(e) => errors.push("store.path", e),
            }
        }
        for (i, root) in store.import_roots.unwrap_or_default().iter().enumerate() {
            match resolve_path(root, base) {
                Ok(p) => config.store.import_roots.push(p),
                Err(e) => errors.push(format!("store.import_roots[{i}]"), e),
            }
        }
    }

    if let Some(engines) = raw.engines {
        errors.unknown("engines", &engines.unknown);
        let sandbox = &mut config.engines.sandbox;
        if let Some(on) = engines.sandbox {
            sandbox.enabled = on;
        }
        if let Some(user) = engines.user {
            match check_user_name(&user) {
                Ok(()) => sandbox.user = Some(user),
                Err(e) => errors.push("engines.user", e),
            }
        }
        for (key, list, slot) in [
            (
                "engines.sandbox_read",
                engines.sandbox_read,
                &mut sandbox.read,
            ),
            (
                "engines.sandbox_write",
                engines.sandbox_write,
                &mut sandbox.write,
            ),
        ] {
            for (i, p) in list.unwrap_or_default().iter().enumerate() {
                match resolve_path(p, base) {
                    Ok(p) if p.parent().is_none() => errors.push(
                        format!("{key}[{i}]"),
                        "the whole file system cannot be allowed",
                    ),
                    Ok(p) => slot.push(p),
                    Err(e) => errors.push(format!("{key}[{i}]"), e),
                }
            }
        }
        if let Some(llamacpp) = engines.llamacpp {
            errors.unknown("engines.llamacpp", &llamacpp.unknown);
            if let Some(binary) = llamacpp.binary {
                match resolve_path(&binary, base) {
                    Ok(p) => config.engines.llamacpp.binary = Some(p),
                    Err(e) => errors.push("engines.llamacpp.binary", e),
                }
            }
        }
        if let Some(vllm) = engines.vllm {
            errors.unknown("engines.vllm", &vllm.unknown);
            if let Some(binary) = vllm.binary {
                match resolve_path(&binary, base) {
                    Ok(p) => config.engines.vllm.binary = Some(p),
                    Err(e) => errors.push("engines.vllm.binary", e),
                }
            }
            config.engines.vllm.args = vllm.args.unwrap_or_default();
        }
        if let Some(diffusers) = engines.diffusers {
            errors.unknown("engines.diffusers", &diffusers.unknown);
            for (key, value, slot) in [
                (
                    "engines.diffusers.python",
                    diffusers.python,
                    &mut config.engines.diffusers.python,
                ),
                (
                    "engines.diffusers.runner",
                    diffusers.runner,
                    &mut config.engines.diffusers.runner,
                ),
            ] {
                if let Some(v) = value {
                    match resolve_path(&v, base) {
                        Ok(p) => *slot = Some(p),
                        Err(e) => errors.push(key, e),
                    }
                }
            }
        }
    }

    if let Some(r) = raw.registry {
        registry::validate(r, base, &mut errors, &mut config.registry);
    }

    if let Some(scheduler) = raw.scheduler {
        errors.unknown("scheduler", &scheduler.unknown);
        if let Some(k) = scheduler.keep_alive {
            match KeepAlive::parse(&k) {
                Ok(k) => config.scheduler.keep_alive = k,
                Err(e) => errors.push("scheduler.keep_alive", e),
            }
        }
        if let Some(k) = scheduler.max_keep_alive {
            match KeepAlive::parse(&k) {
                Ok(k) => config.scheduler.max_keep_alive = Some(k),
                Err(e) => errors.push("scheduler.max_keep_alive", e),
            }
        }
        let s = &mut config.scheduler;
        s.startup_timeout = errors.duration(
            "scheduler.startup_timeout",
            scheduler.startup_timeout.as_ref(),
            s.startup_timeout,
        );
        s.stop_timeout = errors.duration(
            "scheduler.stop_timeout",
            scheduler.stop_timeout.as_ref(),
            s.stop_timeout,
        );
        s.queue_timeout = errors.duration(
            "scheduler.queue_timeout",
            scheduler.queue_timeout.as_ref(),
            s.queue_timeout,
        );
        s.health_interval = errors.duration(
            "scheduler.health_interval",
            scheduler.health_interval.as_ref(),
            s.health_interval,
        );
        if s.health_interval.is_zero() {
            errors.push("scheduler.health_interval", "must be > 0");
        }
        if let Some(b) = &scheduler.memory_budget {
            match bytes(b) {
                Ok(0) => errors.push("scheduler.memory_budget", "must be > 0"),
                Ok(n) => s.memory_budget = Some(n),
                Err(e) => errors.push("scheduler.memory_budget", e),
            }
        }
        if let Some(b) = &scheduler.memory_reserve {
            match bytes(b) {
                Ok(n) => s.memory_reserve = n,
                Err(e) => errors.push("scheduler.memory_reserve", e),
            }
        }
        match scheduler.max_loaded_models {
            None => {}
            Some(n) if n > 0 => s.max_loaded_models = Some(n as usize),
            Some(_) => errors.push("scheduler.max_loaded_models", "must be > 0"),
        }
        match scheduler.max_queue {
            None => {}
            Some(n) if n >= 0 => s.max_queue = n as usize,
            Some(_) => errors.push("scheduler.max_queue", "must be >= 0"),
        }
        match scheduler.max_in_flight {
            None => {}
            Some(n) if n > 0 && n <= u32::MAX as i64 => s.max_in_flight = n as u32,
            Some(_) => errors.push("scheduler.max_in_flight", "must be > 0"),
        }
    }

    for (i, model) in raw.models.unwrap_or_default().into_iter().enumerate() {
        let key = |field: &str| format!("models[{i}].{field}");
        errors.unknown(&format!("models[{i}]"), &model.unknown);
        // A model by reference may leave out its name: the reference is the name.
        let from = match model.from.as_deref().map(name::normalize) {
            None => None,
            Some(Ok(_)) if model.path.is_some() || model.gguf.is_some() => {
                errors.push(key("from"), "give from or path, not both");
                None
            }
            Some(Ok(n)) => Some((model.from.clone().unwrap_or_default(), n)),
            Some(Err(e)) => {
                errors.push(key("from"), e);
                None
            }
        };
        let name = match model
            .name
            .as_deref()
            .map(name::normalize)
            .or_else(|| from.as_ref().map(|(_, n)| Ok(n.clone())))
        {
            None if model.from.is_some() => continue, // its error is reported above
            None => {
                errors.push(key("name"), "missing");
                continue;
            }
            Some(Err(e)) => {
                errors.push(key("name"), e);
                continue;
            }
            Some(Ok(n)) => n,
        };
        if config.models.iter().any(|m| m.name == name) {
            errors.push(key("name"), format!("{name} is configured twice"));
        }
        let (field, given) = match (model.gguf, model.path) {
            (Some(_), Some(_)) => {
                errors.push(key("path"), "give path or gguf, not both");
                ("path", None)
            }
            (Some(g), None) => ("gguf", Some(g)),
            (None, p) => ("path", p),
        };
        let path = match given.as_deref().map(|p| resolve_path(p, base)) {
            None => None,
            Some(Ok(p)) => Some(p),
            Some(Err(e)) => {
                errors.push(key(field), e);
                None
            }
        };
        if let Some(u) = model.gpu_memory_utilization {
            if let Err(e) = crate::engines::vllm::check_utilization(u) {
                errors.push(key("gpu_memory_utilization"), e);
            }
        }
        let hf_overrides = model.hf_overrides.map(|t| {
            // Invariant: a TOML table always has a JSON form (TOML dates become strings).
            serde_json::to_value(t).expect("TOML converts to JSON")
        });
        if let Some(h) = &hf_overrides {
            if let Err(e) = crate::engines::vllm::check_hf_overrides(h) {
                errors.push(key("hf_overrides"), e);
            }
        }
        let context_size = match model.context_size {
            None | Some(-1) => None,
            Some(n) if n > 0 && n <= u32::MAX as i64 => Some(n as u32),
            Some(_) => {
                errors.push(key("context_size"), "must be > 0 or -1");
                None
            }
        };
        let runtime_flags = model.runtime_flags.unwrap_or_default();
        for (j, flag) in runtime_flags.iter().enumerate() {
            if flag.contains('\0') {
                errors.push(key(&format!("runtime_flags[{j}]")), "contains a NUL byte");
            }
        }
        let keep_alive = match model.keep_alive.as_deref().map(KeepAlive::parse) {
            None => None,
            Some(Ok(k)) => Some(k),
            Some(Err(e)) => {
                errors.push(key("keep_alive"), e);
                None
            }
        };
        let parallel = match model.parallel {
            None => None,
            Some(n) if (1..=MAX_PARALLEL).contains(&n) => Some(n as u32),
            Some(_) => {
                errors.push(key("parallel"), format!("must be 1 to {MAX_PARALLEL}"));
                None
            }
        };
        let mut aliases = Vec::new();
        for (j, alias) in model.aliases.unwrap_or_default().iter().enumerate() {
            match name::normalize(alias) {
                Ok(a) if a.contains('@') => errors.push(
                    key(&format!("aliases[{j}]")),
                    "an alias is a tag, not a digest",
                ),
                Ok(a) if a == name || aliases.contains(&a) => errors.push(
                    key(&format!("aliases[{j}]")),
                    format!("{a} is already a name of this model"),
                ),
                Ok(a) => aliases.push(a),
                Err(e) => errors.push(key(&format!("aliases[{j}]")), e),
            }
        }
        for a in &aliases {
            if let Some(other) = config.model_named(a) {
                errors.push(
                    key("aliases"),
                    format!("{a} is already a name of {}", other.name),
                );
            }
        }
        if let Some(other) = config.model_named(&name).filter(|m| m.name != name) {
            errors.push(key("name"), format!("{name} is an alias of {}", other.name));
        }
        let speculative = model
            .speculative
            .and_then(|s| speculative(s, &key("speculative"), &mut errors));
        config.models.push(ModelSettings {
            from: from.map(|(given, _)| given),
            preload: model.preload.unwrap_or(false),
            pinned: model.pinned.unwrap_or(false),
            aliases,
            name,
            path,
            context_size,
            runtime_flags,
            keep_alive,
            parallel,
            speculative,
            vllm: crate::engines::vllm::VllmOptions {
                gpu_memory_utilization: model.gpu_memory_utilization,
                hf_overrides,
            },
        });
    }

    if errors.0.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(errors.0))
    }
}

/// `[[models]] speculative`, checked (errors under `key`): a draft named as models are, the ranges of
/// `engines::speculative`. Whether the draft is in the store is known only when a runner is planned.
fn speculative(
    raw: raw::RawSpeculative,
    key: &str,
    errors: &mut Errors,
) -> Option<crate::store::Speculative> {
    use crate::engines::speculative::{check_min_acceptance_rate, check_num_tokens};
    let field = |f: &str| format!("{key}.{f}");
    errors.unknown(key, &raw.unknown);
    let draft_model = match raw.draft_model.as_deref().map(name::normalize) {
        None => {
            errors.push(field("draft_model"), "missing");
            None
        }
        Some(Err(e)) => {
            errors.push(field("draft_model"), e);
            None
        }
        Some(Ok(n)) => Some(n),
    };
    let num_tokens = match raw.num_tokens.map(check_num_tokens) {
        Some(Err(e)) => {
            errors.push(field("num_tokens"), e);
            None
        }
        other => other.and_then(Result::ok),
    };
    let min_acceptance_rate = match raw.min_acceptance_rate.map(check_min_acceptance_rate) {
        Some(Err(e)) => {
            errors.push(field("min_acceptance_rate"), e);
            None
        }
        other => other.and_then(Result::ok),
    };
    Some(crate::store::Speculative {
        draft_model: draft_model?,
        num_tokens,
        min_acceptance_rate,
    })
}

/// `[server] tls_cert` and `tls_key`: both or neither; read and checked to be a certificate and its key.
fn tls_identity(
    cert: Option<&str>,
    key: Option<&str>,
    base: &Path,
    errors: &mut Errors,
) -> Option<TlsIdentity> {
    let (cert, key) = match (cert, key) {
        (None, None) => return None,
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => {
            errors.push(
                "server.tls_key",
                "missing: tls_cert and tls_key go together",
            );
            return None;
        }
        (None, Some(_)) => {
            errors.push(
                "server.tls_cert",
                "missing: tls_cert and tls_key go together",
            );
            return None;
        }
    };
    let cert = resolve_path(cert, base).map_err(|e| errors.push("server.tls_cert", e));
    let key = resolve_path(key, base).map_err(|e| errors.push("server.tls_key", e));
    let (Ok(cert), Ok(key)) = (cert, key) else {
        return None;
    };
    match crate::tls::load_identity(&cert, &key) {
        Ok(certified) => Some(TlsIdentity {
            cert,
            key,
            certified,
        }),
        Err(crate::tls::IdentityError::Cert(e)) => {
            errors.push("server.tls_cert", e);
            None
        }
        Err(crate::tls::IdentityError::Key(e)) => {
            errors.push("server.tls_key", e);
            None
        }
    }
}

/// Expands a leading `~/` and makes relative paths relative to `base` (the config file's directory).
/// A user name as `useradd` accepts it (its existence is checked when the daemon starts).
fn check_user_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a user name (letters, digits, '_', '-', '.', at most 32)"
        ))
    }
}

fn resolve_path(p: &str, base: &Path) -> Result<PathBuf, String> {
    if p.is_empty() {
        return Err("empty path".into());
    }
    if p.contains('\0') {
        return Err("path contains a NUL byte".into());
    }
    let path = match p.strip_prefix("~/") {
        Some(rest) => dirs::home_dir()
            .ok_or("no home directory to expand ~ in")?
            .join(rest),
        None => PathBuf::from(p),
    };
    Ok(if path.is_absolute() {
        path
    } else {
        base.join(path)
    })
}

/// What a reload changes: models added, changed or removed (by normalised name), and keys that only take effect
/// after a restart (the listeners, the store, the engine binary).
#[derive(Debug, Default, PartialEq)]
pub struct ConfigDiff {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub needs_restart: Vec<&'static str>,
}

impl Config {
    /// The `[[models]]` entry that `name` (normalised) names: by its name or one of its aliases.
    pub fn model_named(&self, name: &str) -> Option<&ModelSettings> {
        self.models
            .iter()
            .find(|m| m.name == name || m.aliases.iter().any(|a| a == name))
    }

    /// Whether `name` (normalised) is one of a model's `aliases`.
    pub fn is_alias(&self, name: &str) -> bool {
        self.model_named(name).is_some_and(|m| m.name != name)
    }

    /// Compares this (running) configuration with `new`.
    pub fn diff(&self, new: &Config) -> ConfigDiff {
        let mut d = ConfigDiff::default();
        for m in &new.models {
            match self.models.iter().find(|o| o.name == m.name) {
                None => d.added.push(m.name.clone()),
                Some(o) if o != m => d.changed.push(m.name.clone()),
                Some(_) => {}
            }
        }
        for o in &self.models {
            if !new.models.iter().any(|m| m.name == o.name) {
                d.removed.push(o.name.clone());
            }
        }
        let (a, b) = (&self.server, &new.server);
        for (key, same) in [
            ("server.listen", a.listen == b.listen),
            ("server.socket", a.socket == b.socket),
            // Turning TLS on or off changes the listener; a new certificate (or new files) does not.
            ("server.tls_cert", a.tls.is_some() == b.tls.is_some()),
            (
                "registry.max_pulls",
                self.registry.max_pulls == new.registry.max_pulls,
            ),
            (
                "server.header_read_timeout",
                a.header_read_timeout == b.header_read_timeout,
            ),
            (
                "server.max_connections",
                a.max_connections == b.max_connections,
            ),
            ("store.path", self.store.path == new.store.path),
            (
                "engines.llamacpp.binary",
                self.engines.llamacpp.binary == new.engines.llamacpp.binary,
            ),
            ("engines.vllm", self.engines.vllm == new.engines.vllm),
            (
                "engines.sandbox",
                self.engines.sandbox == new.engines.sandbox,
            ),
            (
                "engines.diffusers",
                self.engines.diffusers == new.engines.diffusers,
            ),
        ] {
            if !same {
                d.needs_restart.push(key);
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/dmr"))
    }

    #[test]
    fn the_issue_example_parses() {
        let c = parse(
            r#"
            [server]
            listen = "127.0.0.1:12434"
            [store]
            path = "/var/lib/dmr-supervisor"
            [engines.llamacpp]
            binary = "/usr/local/bin/llama-server"
            [[models]]
            name = "ai/tiny"
            gguf = "/path/to/model.gguf"
            context_size = 512
            runtime_flags = ["--temp", "0"]
            "#,
        )
        .unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:12434");
        assert_eq!(c.store.path, PathBuf::from("/var/lib/dmr-supervisor"));
        assert_eq!(
            c.engines.llamacpp.binary,
            Some(PathBuf::from("/usr/local/bin/llama-server"))
        );
        assert_eq!(c.models[0].name, "ai/tiny:latest");
        assert_eq!(c.models[0].context_size, Some(512));
        assert_eq!(c.models[0].runtime_flags, ["--temp", "0"]);
    }

    #[test]
    fn tls_cert_and_key_go_together_and_are_read_as_a_pair() {
        let dir = tempfile::tempdir().unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
        for f in ["test-cert.pem", "test-key.pem", "test-other-key.pem"] {
            std::fs::copy(fixtures.join(f), dir.path().join(f)).unwrap();
        }
        let load = |text: &str| Config::parse(text, dir.path());
        let c = load("[server]\ntls_cert = \"test-cert.pem\"\ntls_key = \"test-key.pem\"").unwrap();
        let tls = c.server.tls.as_ref().expect("TLS on");
        assert_eq!(tls.cert, dir.path().join("test-cert.pem"));
        assert_eq!(tls.key, dir.path().join("test-key.pem"));
        assert!(load("").unwrap().server.tls.is_none());
        let lines = |text: &str| load(text).unwrap_err().lines();
        assert_eq!(
            lines("[server]\ntls_cert = \"test-cert.pem\""),
            ["server.tls_key: missing: tls_cert and tls_key go together"]
        );
        assert_eq!(
            lines("[server]\ntls_key = \"test-key.pem\""),
            ["server.tls_cert: missing: tls_cert and tls_key go together"]
        );
        let wrong =
            lines("[server]\ntls_cert = \"test-cert.pem\"\ntls_key = \"test-other-key.pem\"");
        assert!(
            wrong.len() == 1
                && wrong[0].starts_with("server.tls_key: ")
                && wrong[0].contains("does not belong"),
            "{wrong:?}"
        );
        let swapped = lines("[server]\ntls_cert = \"test-key.pem\"\ntls_key = \"test-cert.pem\"");
        assert!(
            swapped.len() == 1 && swapped[0].starts_with("server.tls_cert: "),
            "{swapped:?}"
        );
        let missing = lines("[server]\ntls_cert = \"nope.pem\"\ntls_key = \"test-key.pem\"");
        assert!(
            missing[0].starts_with("server.tls_cert: cannot read "),
            "{missing:?}"
        );
        // Turning TLS on needs a restart; new files for a TLS listener do not.
        let on = c.clone();
        let off = load("").unwrap();
        assert!(off.diff(&on).needs_restart.contains(&"server.tls_cert"));
        assert!(!on.diff(&c).needs_restart.contains(&"server.tls_cert"));
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.server.listen.port(), 12434);
        assert_eq!(c.server.max_body_bytes, 10 << 20);
        assert_eq!(c.scheduler.keep_alive, KeepAlive::DEFAULT);
        assert!(c.models.is_empty());
    }

    #[test]
    fn the_blob_upload_cap_has_a_default_that_fits_real_ggufs_and_is_checked() {
        let c = parse("").unwrap();
        assert_eq!(c.server.max_blob_bytes, 256 << 30);
        let c = parse("[server]\nmax_blob_bytes = 4096").unwrap();
        assert_eq!(c.server.max_blob_bytes, 4096);
        let err = parse("[server]\nmax_blob_bytes = 0").unwrap_err();
        assert!(
            err.lines()
                .iter()
                .any(|l| l == "server.max_blob_bytes: must be > 0"),
            "{:?}",
            err.lines()
        );
    }

    #[test]
    fn the_responses_store_is_bounded_and_checked() {
        let c = parse("").unwrap();
        assert_eq!(c.server.responses_max, 1000);
        assert_eq!(c.server.responses_ttl, Duration::from_secs(3600));
        assert!(
            !c.server.fetch_image_urls,
            "image URLs are not fetched unless configured"
        );
        assert!(
            parse("[server]\nfetch_image_urls = true")
                .unwrap()
                .server
                .fetch_image_urls
        );
        let c = parse("[server]\nresponses_max = 5\nresponses_ttl = \"90s\"").unwrap();
        assert_eq!(c.server.responses_max, 5);
        assert_eq!(c.server.responses_ttl, Duration::from_secs(90));
        let err = parse("[server]\nresponses_max = 0\nresponses_ttl = \"soon\"").unwrap_err();
        let lines = err.lines();
        assert!(
            lines
                .iter()
                .any(|l| l == "server.responses_max: must be > 0"),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("server.responses_ttl: invalid duration")),
            "{lines:?}"
        );
        let err = parse("[server]\nresponses_ttl = \"0s\"").unwrap_err();
        assert_eq!(err.lines(), ["server.responses_ttl: must be > 0"]);
    }

    #[test]
    fn the_example_configuration_parses() {
        // Its certificate files are examples: the test's stand in for them (a CA file is a certificate too).
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
        let text = include_str!("../../config.example.toml")
            .replace(
                "/etc/dmr-supervisor/tls/server.pem",
                &format!("{fixtures}/test-cert.pem"),
            )
            .replace(
                "/etc/dmr-supervisor/tls/server.key",
                &format!("{fixtures}/test-key.pem"),
            )
            .replace(
                "/etc/dmr-supervisor/registry-ca.pem",
                &format!("{fixtures}/test-cert.pem"),
            );
        let c = parse(&text).unwrap();
        assert!(c.server.tls.is_some());
        assert!(c.engines.sandbox.enabled);
        assert_eq!(c.engines.sandbox.user.as_deref(), Some("dmr-engine"));
    }

    #[test]
    fn the_engine_sandbox_is_on_by_default_and_its_settings_are_checked() {
        let c = parse("").unwrap();
        assert!(c.engines.sandbox.enabled);
        assert_eq!(c.engines.sandbox.user, None);
        let c = parse(
            "[engines]\nsandbox = false\nuser = \"dmr-engine\"\nsandbox_read = [\"/opt/cuda\", \"lib\"]\nsandbox_write = [\"/srv/cache\"]\n",
        )
        .unwrap();
        let s = &c.engines.sandbox;
        assert!(!s.enabled);
        assert_eq!(s.user.as_deref(), Some("dmr-engine"));
        assert_eq!(s.read, [PathBuf::from("/opt/cuda"), "/etc/dmr/lib".into()]);
        assert_eq!(s.write, [PathBuf::from("/srv/cache")]);
        let err =
            parse("[engines]\nuser = \"-x; rm\"\nsandbox_read = [\"/\"]\nsandbox_write = [\"\"]\n")
                .unwrap_err();
        let lines = err.lines();
        for expected in [
            "engines.user: \"-x; rm\" is not a user name",
            "engines.sandbox_read[0]: the whole file system cannot be allowed",
            "engines.sandbox_write[0]: empty path",
        ] {
            assert!(
                lines.iter().any(|l| l.starts_with(expected)),
                "{expected}: {lines:?}"
            );
        }
    }

    #[test]
    fn speculative_names_a_draft_and_its_ranges_are_checked_with_key_paths() {
        let c = parse(
            "[[models]]\nname = \"ai/big\"\nspeculative = { draft_model = \"small\", num_tokens = 8, min_acceptance_rate = 0.5 }\n",
        )
        .unwrap();
        assert_eq!(
            c.models[0].speculative,
            Some(crate::store::Speculative {
                draft_model: "ai/small:latest".into(),
                num_tokens: Some(8),
                min_acceptance_rate: Some(0.5),
            })
        );
        let c =
            parse("[[models]]\nname = \"a\"\n[models.speculative]\ndraft_model = \"b\"\n").unwrap();
        let s = c.models[0].speculative.as_ref().unwrap();
        assert_eq!((s.num_tokens, s.min_acceptance_rate), (None, None));
        let other =
            parse("[[models]]\nname = \"a\"\nspeculative = { draft_model = \"c\" }\n").unwrap();
        assert_eq!(
            c.diff(&other).changed,
            ["ai/a:latest"],
            "a reload applies another draft"
        );
        let err = parse(
            "[[models]]\nname = \"a\"\nspeculative = { num_tokens = 0, min_acceptance_rate = 1.5, colour = 1 }\n\
             [[models]]\nname = \"b\"\nspeculative = { draft_model = \"Bad Name!\", num_tokens = 65 }\n",
        )
        .unwrap_err();
        let lines = err.lines();
        for want in [
            "models[0].speculative.colour: unknown key",
            "models[0].speculative.draft_model: missing",
            "models[0].speculative.num_tokens: must be 1 to 64, not 0",
            "models[0].speculative.min_acceptance_rate: must be 0 to 1, not 1.5",
            "models[1].speculative.num_tokens: must be 1 to 64, not 65",
        ] {
            assert!(lines.iter().any(|l| l == want), "{want} in {lines:?}");
        }
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("models[1].speculative.draft_model: ")),
            "{lines:?}"
        );
    }

    #[test]
    fn every_error_is_reported_with_its_key_path() {
        let err = parse(
            r#"
            colour = "blue"
            [server]
            listen = "localhost"
            [scheduler]
            keep_alive = "soon"
            [[models]]
            name = "ai/ok"
            context_size = -1
            [[models]]
            name = "ai/bad"
            context_size = 0
            flavour = 1
            [[models]]
            name = "../etc"
            [[models]]
            gguf = "x.gguf"
            "#,
        )
        .unwrap_err();
        let lines = err.lines();
        let expect = [
            "colour: unknown key",
            "server.listen: \"localhost\" is not an IP:port address",
            "scheduler.keep_alive: invalid duration",
            "models[1].flavour: unknown key",
            "models[1].context_size: must be > 0 or -1",
            "models[2].name:",
            "models[3].name: missing",
        ];
        for e in expect {
            assert!(
                lines.iter().any(|l| l.starts_with(e)),
                "missing {e:?} in {lines:#?}"
            );
        }
        assert_eq!(lines.len(), expect.len(), "{lines:#?}");
    }

    #[test]
    fn context_size_minus_one_means_default_and_relative_paths_use_the_config_dir() {
        let c =
            parse("[[models]]\nname = \"tiny\"\ngguf = \"m/t.gguf\"\ncontext_size = -1\n").unwrap();
        assert_eq!(c.models[0].context_size, None);
        assert_eq!(
            c.models[0].path.as_deref(),
            Some(Path::new("/etc/dmr/m/t.gguf"))
        );
    }

    #[test]
    fn models_by_reference_with_aliases_preload_and_pinned() {
        let c = parse(
            "[[models]]\nfrom = \"ai/smollm2:360M-Q4_K_M\"\npreload = true\npinned = true\naliases = [\"smollm2\", \"small\"]\n\
             [[models]]\nname = \"mine\"\nfrom = \"hf.co/org/repo\"\n",
        )
        .unwrap();
        let (a, b) = (&c.models[0], &c.models[1]);
        assert_eq!(a.name, "ai/smollm2:360M-Q4_K_M");
        assert_eq!(a.from.as_deref(), Some("ai/smollm2:360M-Q4_K_M"));
        assert!(a.preload && a.pinned && a.is_declared());
        assert_eq!(a.aliases, ["ai/smollm2:latest", "ai/small:latest"]);
        assert_eq!(b.name, "ai/mine:latest");
        assert_eq!(b.from.as_deref(), Some("hf.co/org/repo"));
        assert!(!b.preload && !b.pinned && b.aliases.is_empty());
        assert!(!ModelSettings::defaults_for("x").is_declared());
    }

    #[test]
    fn bad_references_and_aliases_are_named_by_key() {
        let err = parse(
            "[[models]]\nfrom = \"Bad Ref\"\n\
             [[models]]\nname = \"a\"\nfrom = \"ai/a\"\npath = \"/m.gguf\"\n\
             [[models]]\nname = \"b\"\naliases = [\"b\", \"x@sha256:0000000000000000000000000000000000000000000000000000000000000000\", \"a\"]\n\
             [[models]]\nname = \"c\"\naliases = [\"bee\"]\n[[models]]\nname = \"d\"\naliases = [\"bee\"]\n\
             [[models]]\nname = \"bee\"\n",
        )
        .unwrap_err()
        .to_string();
        let rest: Vec<&str> = err.lines().collect();
        assert!(
            rest.iter().any(|l| l.starts_with("models[0].from:")),
            "{err}"
        );
        assert!(
            rest.contains(&"models[1].from: give from or path, not both"),
            "{err}"
        );
        assert!(
            rest.contains(&"models[2].aliases[0]: ai/b:latest is already a name of this model"),
            "{err}"
        );
        assert!(
            rest.contains(&"models[2].aliases[1]: an alias is a tag, not a digest"),
            "{err}"
        );
        assert!(
            rest.contains(&"models[2].aliases: ai/a:latest is already a name of ai/a:latest"),
            "{err}"
        );
        assert!(
            rest.contains(&"models[4].aliases: ai/bee:latest is already a name of ai/c:latest"),
            "{err}"
        );
        assert!(
            rest.contains(&"models[5].name: ai/bee:latest is an alias of ai/c:latest"),
            "{err}"
        );
        assert_eq!(rest.len(), 7, "{err}");
    }

    #[test]
    fn duplicate_models_and_type_errors() {
        let err = parse("[[models]]\nname = \"tiny\"\n[[models]]\nname = \"ai/tiny:latest\"\n")
            .unwrap_err();
        assert!(err.lines()[0].contains("configured twice"));
        let err = parse("[[models]]\nname = \"tiny\"\ncontext_size = \"big\"\n").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }

    #[test]
    fn memory_limits_parse_with_units_and_bad_ones_are_named() {
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5 GiB"), Ok(3 << 29));
        assert_eq!(parse_bytes("24GB"), Ok(24_000_000_000));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        let c = parse(
            "[scheduler]\nmemory_budget = \"30MiB\"\nmemory_reserve = 0\nmax_loaded_models = 2\nmax_queue = 4\nmax_in_flight = 3\nqueue_timeout = \"1m\"\n",
        )
        .unwrap();
        let s = &c.scheduler;
        assert_eq!(s.memory_budget, Some(30 << 20));
        assert_eq!(
            (s.memory_reserve, s.max_loaded_models, s.max_queue),
            (0, Some(2), 4)
        );
        assert_eq!(s.queue_timeout, Duration::from_secs(60));
        assert_eq!(s.max_in_flight, 3);
        let err = parse(
            "[scheduler]\nmemory_budget = \"lots\"\nmemory_reserve = \"5 parsecs\"\nmax_loaded_models = 0\n",
        )
        .unwrap_err();
        let lines = err.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].starts_with("scheduler.memory_budget: \"lots\" is not a size"));
        assert!(lines[1].contains("unknown unit \"parsecs\""));
        assert_eq!(lines[2], "scheduler.max_loaded_models: must be > 0");
    }

    #[test]
    fn server_access_settings_are_checked() {
        let c = parse(
            "[server]\nsocket = \"run/dmr.sock\"\napi_keys = [\"k1\"]\nallowed_origins = [\"*\", \"https://a.b:8080\"]\n",
        )
        .unwrap();
        assert!(c.server.socket.unwrap().ends_with("run/dmr.sock"));
        assert_eq!(c.server.api_keys, ["k1"]);
        let err =
            parse("[server]\napi_keys = [\"\", \" k\"]\nallowed_origins = [\"example.com\"]\n")
                .unwrap_err();
        let lines = err.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].starts_with("server.api_keys[0]: must be non-empty"));
        assert!(lines[2].starts_with("server.allowed_origins[0]: \"example.com\" is not an origin"));
    }

    #[test]
    fn a_diff_names_models_added_changed_removed_and_keys_that_need_a_restart() {
        let old = parse(
            "[[models]]\nname = \"a\"\ncontext_size = 512\n[[models]]\nname = \"b\"\n[[models]]\nname = \"c\"\n",
        )
        .unwrap();
        let new = parse(
            "[server]\nlisten = \"127.0.0.1:1\"\n[[models]]\nname = \"a\"\ncontext_size = 1024\n[[models]]\nname = \"b\"\n[[models]]\nname = \"d\"\n",
        )
        .unwrap();
        assert_eq!(
            old.diff(&new),
            ConfigDiff {
                added: vec!["ai/d:latest".into()],
                changed: vec!["ai/a:latest".into()],
                removed: vec!["ai/c:latest".into()],
                needs_restart: vec!["server.listen"],
            }
        );
        assert_eq!(new.diff(&new), ConfigDiff::default());
    }
}
