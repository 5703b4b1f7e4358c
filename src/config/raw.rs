//! The configuration file exactly as written: serde structs mirroring the TOML. Unknown keys are captured (not
//! silently dropped) so that validation can reject all of them at once, with their key paths. No defaults and no
//! checks live here; see `config::validate`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Keys nobody declared, kept so that each can be reported as an error.
pub type Unknown = BTreeMap<String, toml::Value>;

#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    pub server: Option<RawServer>,
    pub store: Option<RawStore>,
    pub engines: Option<RawEngines>,
    pub registry: Option<RawRegistry>,
    pub scheduler: Option<RawScheduler>,
    pub models: Option<Vec<RawModel>>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawServer {
    pub listen: Option<String>,
    pub socket: Option<String>,
    pub api_keys: Option<Vec<String>>,
    pub allowed_origins: Option<Vec<String>>,
    pub max_body_bytes: Option<i64>,
    pub shutdown_grace: Option<String>,
    pub drain_delay: Option<String>,
    pub header_read_timeout: Option<String>,
    pub max_connections: Option<i64>,
    pub max_json_elements: Option<i64>,
    pub responses_max: Option<i64>,
    pub responses_ttl: Option<String>,
    pub fetch_image_urls: Option<bool>,
    pub max_blob_bytes: Option<i64>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawStore {
    pub path: Option<String>,
    pub import_roots: Option<Vec<String>>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawEngines {
    pub sandbox: Option<bool>,
    pub user: Option<String>,
    pub sandbox_read: Option<Vec<String>>,
    pub sandbox_write: Option<Vec<String>>,
    pub llamacpp: Option<RawLlamaCpp>,
    pub vllm: Option<RawVllm>,
    pub diffusers: Option<RawDiffusers>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawLlamaCpp {
    pub binary: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRegistry {
    pub max_pulls: Option<i64>,
    pub insecure: Option<Vec<String>>,
    pub secure: Option<Vec<String>>,
    pub mirrors: Option<BTreeMap<String, Vec<String>>>,
    pub ca_certs: Option<Vec<String>>,
    pub docker_config: Option<String>,
    pub hf_endpoint: Option<String>,
    pub max_manifest_bytes: Option<RawBytes>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawVllm {
    pub binary: Option<String>,
    pub args: Option<Vec<String>>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawDiffusers {
    pub python: Option<String>,
    pub runner: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawScheduler {
    pub keep_alive: Option<String>,
    pub max_keep_alive: Option<String>,
    pub startup_timeout: Option<String>,
    pub stop_timeout: Option<String>,
    pub memory_budget: Option<RawBytes>,
    pub memory_reserve: Option<RawBytes>,
    pub max_loaded_models: Option<i64>,
    pub max_queue: Option<i64>,
    pub max_in_flight: Option<i64>,
    pub queue_timeout: Option<String>,
    pub health_interval: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawModel {
    pub name: Option<String>,
    pub gguf: Option<String>,
    pub path: Option<String>,
    pub context_size: Option<i64>,
    pub gpu_memory_utilization: Option<f64>,
    pub hf_overrides: Option<toml::Table>,
    pub runtime_flags: Option<Vec<String>>,
    pub keep_alive: Option<String>,
    pub parallel: Option<i64>,
    pub from: Option<String>,
    pub preload: Option<bool>,
    pub pinned: Option<bool>,
    pub aliases: Option<Vec<String>>,
    pub speculative: Option<RawSpeculative>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// `[[models]] speculative = { draft_model = "...", num_tokens = 8, min_acceptance_rate = 0.5 }`.
#[derive(Debug, Default, Deserialize)]
pub struct RawSpeculative {
    pub draft_model: Option<String>,
    pub num_tokens: Option<i64>,
    pub min_acceptance_rate: Option<f64>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// A size: bytes as an integer, or a string with a unit (`"512MiB"`, `"24 GB"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawBytes {
    Int(i64),
    Text(String),
}
