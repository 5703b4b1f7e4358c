//! Per-model runtime settings made through the API (`POST /engines/_configure`), persisted in the store's
//! directory as `runtime-configs.json` (written atomically) so that they survive restarts, unlike DMR's. Keyed by
//! (model id, mode); a model's settings go when the model is deleted.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::fsutil::{io_err, write_atomic};
use super::{Store, StoreError};

pub(super) const FILE: &str = "runtime-configs.json";

/// One model's settings in one mode, as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    pub model_id: String,
    /// `completion` or `embedding`.
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_flags: Option<Vec<String>>,
    /// As given (`"5m"`, `"-1"`, `"0"`), validated before it is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<String>,
    /// vLLM's `--gpu-memory-utilization`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory_utilization: Option<f64>,
    /// vLLM's `--hf-overrides` (a JSON object whose keys are identifiers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_overrides: Option<serde_json::Value>,
    /// Speculative decoding with a draft model of the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculative: Option<Speculative>,
}

/// Speculative decoding as configured (`_configure`'s `speculative`, `[[models]] speculative`): the draft is a
/// model of the store, by name, resolved when a runner is planned; the ranges are checked before it is stored
/// (`engines::speculative`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Speculative {
    /// Normalised (`ai/tiny:latest`).
    pub draft_model: String,
    /// Tokens the draft proposes at a time; `None`: the engine's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_tokens: Option<u32>,
    /// The least probability a drafted token must have to be proposed (llama.cpp's `--spec-draft-p-min`);
    /// `None`: the engine's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_acceptance_rate: Option<f64>,
}

fn load(path: &Path) -> Result<Vec<RuntimeConfig>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
            source: Some(e),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(path)(e)),
    }
}

impl Store {
    fn runtime_path(&self) -> std::path::PathBuf {
        self.root().join(FILE)
    }

    /// Every stored runtime config (from memory after the first read).
    pub fn runtime_configs(&self) -> Result<Vec<RuntimeConfig>, StoreError> {
        self.with_runtime(|all| all.to_vec())
    }

    /// The stored config of one model in one mode (per request: one lookup, no copy of the others).
    pub fn runtime_config(
        &self,
        model_id: &str,
        mode: &str,
    ) -> Result<Option<RuntimeConfig>, StoreError> {
        self.with_runtime(|all| {
            all.iter()
                .find(|c| c.model_id == model_id && c.mode == mode)
                .cloned()
        })
    }

    /// Runs `f` on the configs, read from disk only when the cache is empty.
    fn with_runtime<T>(&self, f: impl FnOnce(&[RuntimeConfig]) -> T) -> Result<T, StoreError> {
        let mut cache = self.lock();
        if cache.runtime.is_none() {
            cache.runtime = Some(load(&self.runtime_path())?);
        }
        Ok(f(cache.runtime.as_deref().unwrap_or_default()))
    }

    /// Stores `config`, replacing the one for the same (model, mode).
    pub fn set_runtime_config(&self, config: RuntimeConfig) -> Result<(), StoreError> {
        let mut cache = self.lock();
        cache.runtime = None;
        let path = self.runtime_path();
        let mut all = load(&path)?;
        all.retain(|c| !(c.model_id == config.model_id && c.mode == config.mode));
        all.push(config);
        all.sort_by(|a, b| (&a.model_id, &a.mode).cmp(&(&b.model_id, &b.mode)));
        write_atomic(&path, &serde_json::to_vec_pretty(&all).unwrap_or_default())
    }

    /// Drops the configs of models that are no longer in the store. Called by `delete`, under the store lock, after
    /// it has cleared the cache.
    pub(super) fn prune_runtime_configs(&self, gone: &[String]) {
        if gone.is_empty() {
            return;
        }
        let path = self.runtime_path();
        let Ok(mut all) = load(&path) else { return };
        let before = all.len();
        all.retain(|c| !gone.contains(&c.model_id));
        if all.len() != before {
            if let Err(e) =
                write_atomic(&path, &serde_json::to_vec_pretty(&all).unwrap_or_default())
            {
                tracing::warn!(error = %e, "cannot prune runtime configs");
            }
        }
    }
}
