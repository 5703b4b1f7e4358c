//! DMR's native model-management wire shapes: `/models`, `/models/create` progress lines, `/engines/ps`,
//! `/engines/unload`, `/engines/status`. Field names and casing follow DMR exactly (`Untagged`, `backend_name`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An entry of `GET /models`: `{"id","tags","created","config":{…}}`. `config` is the store's config JSON. Our
/// extension: `"vision": true` for a model that accepts images in chat (it has an mmproj layer); absent otherwise,
/// so that an entry is DMR's shape unless there is something to say.
#[derive(Debug, Serialize)]
pub struct Model<C: Serialize> {
    pub id: String,
    pub tags: Vec<String>,
    pub created: i64,
    pub config: C,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub vision: bool,
}

/// `POST /models/create` body. `name` is our extension for local imports (DMR derives names from references).
#[derive(Debug, Serialize, Deserialize)]
pub struct CreateRequest {
    pub from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(
        rename = "bearer-token",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub bearer_token: Option<String>,
    /// Our extension for packaging a local GGUF: a license file, a chat template and a multimodal projector
    /// (absolute paths), added as DMR's license, chat-template and mmproj layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmproj: Option<String>,
}

/// `POST /models/{name}/push` body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    #[serde(
        rename = "bearer-token",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub bearer_token: Option<String>,
}

/// `POST /models/{name}/repackage` body (DMR's `RepackageRequest`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepackageRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_size: Option<u64>,
}

/// One NDJSON line of pull/import progress.
#[derive(Debug, Serialize)]
pub struct ProgressLine {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<Layer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    /// The model's id, on a load's `success` line (a load may leave the model untagged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Layer {
    pub id: String,
    pub size: u64,
    pub current: u64,
}

/// What a transfer progress line reports: its message's verb and DMR's `mode`.
#[derive(Debug, Clone, Copy)]
pub enum Transfer {
    Pull,
    Push,
    Load,
}

impl ProgressLine {
    pub fn progress(total: u64, layer_id: String, current: u64) -> Self {
        ProgressLine {
            kind: "progress",
            message: format!("Imported: {:.2} MB", current as f64 / 1e6),
            total: Some(total),
            layer: Some(Layer {
                id: layer_id,
                size: total,
                current,
            }),
            mode: Some("pull"),
            id: None,
        }
    }

    /// A pull's, push's or load's progress: bytes of one layer, and of all layers.
    pub fn transfer(
        transfer: Transfer,
        total: u64,
        layer_id: String,
        size: u64,
        current: u64,
        done: u64,
    ) -> Self {
        let (verb, mode) = match transfer {
            Transfer::Pull => ("Downloaded", Some("pull")),
            Transfer::Push => ("Uploaded", Some("push")),
            Transfer::Load => ("Loaded", None),
        };
        ProgressLine {
            kind: "progress",
            message: format!("{verb}: {:.2} MB", done as f64 / 1e6),
            total: Some(total),
            layer: Some(Layer {
                id: layer_id,
                size,
                current,
            }),
            mode,
            id: None,
        }
    }

    pub fn success() -> Self {
        ProgressLine {
            kind: "success",
            message: "Model pulled successfully".into(),
            total: None,
            layer: None,
            mode: None,
            id: None,
        }
    }

    pub fn error(message: &str) -> Self {
        ProgressLine {
            kind: "error",
            message: format!("Error: {message}"),
            total: None,
            layer: None,
            mode: None,
            id: None,
        }
    }

    /// A line of an engine install's output.
    pub fn message(kind: &'static str, message: String) -> Self {
        ProgressLine {
            kind,
            message,
            total: None,
            layer: None,
            mode: None,
            id: None,
        }
    }

    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// An element of the `DELETE /models/{name}` answer.
#[derive(Debug, Serialize)]
pub enum Removed {
    Untagged(String),
    Deleted(String),
}

/// An element of `GET /engines/ps`. `pid` and `port` are our additions.
#[derive(Debug, Serialize)]
pub struct RunnerStatus {
    pub backend_name: &'static str,
    pub model_name: String,
    pub mode: &'static str,
    pub last_used: Option<i64>,
    pub in_use: bool,
    pub loading: bool,
    pub keep_alive: String,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    // Ours, beyond DMR's fields:
    /// Waiting for memory to start.
    pub queued: bool,
    pub in_flight: u32,
    pub context_size: u32,
    /// Expected bytes: the prediction from the GGUF and flags, or what the same model measured before.
    pub predicted_memory: u64,
    /// Largest measured bytes (NVML on GPUs, resident memory in CPU mode), once measured.
    pub measured_memory: Option<u64>,
    /// Bytes per device index (`CUDA_VISIBLE_DEVICES` numbering): placed, then measured.
    pub devices: std::collections::BTreeMap<u32, u64>,
    /// The speculative decoding draft model loaded beside it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draft_model: Option<String>,
    /// `[[models]] pinned`: never evicted, never stopped for being idle.
    pub pinned: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct UnloadRequest {
    #[serde(default)]
    pub all: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default)]
    pub models: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UnloadResponse {
    pub unloaded_runners: usize,
}

#[derive(Debug, Serialize)]
pub struct Version {
    pub version: &'static str,
}

/// `GET /engines/status`: engine name → "Running: …" / "Not Installed: …".
pub type EngineStatus = BTreeMap<&'static str, String>;

/// `POST /engines/uninstall-backend`, as DMR's `uninstall-runner` sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninstallRequest {
    pub backend: String,
}

/// What `dmr-supervisor engines uninstall NAME` sends to `POST /engines/uninstall-backend`.
#[derive(Debug, Serialize)]
pub struct UninstallBody {
    pub backend: String,
}

/// `POST /engines/install-backend`, as DMR's `install-runner` sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallRequest {
    pub backend: String,
    /// Only `latest` (or absent): each recipe installs its pinned version.
    #[serde(default)]
    pub version: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_dmr() {
        let removed = serde_json::to_string(&[
            Removed::Untagged("ai/x:latest".into()),
            Removed::Deleted("sha256:ab".into()),
        ])
        .unwrap();
        assert_eq!(
            removed,
            r#"[{"Untagged":"ai/x:latest"},{"Deleted":"sha256:ab"}]"#
        );
        let line =
            String::from_utf8(ProgressLine::progress(10, "sha256:ab".into(), 5).to_line()).unwrap();
        assert_eq!(
            line,
            "{\"type\":\"progress\",\"message\":\"Imported: 0.00 MB\",\"total\":10,\"layer\":{\"id\":\"sha256:ab\",\"size\":10,\"current\":5},\"mode\":\"pull\"}\n"
        );
        assert_eq!(
            String::from_utf8(ProgressLine::success().to_line()).unwrap(),
            "{\"type\":\"success\",\"message\":\"Model pulled successfully\"}\n"
        );
    }
}

/// `GET /engines/df`: disk used by the store and memory as the scheduler's probe sees it.
#[derive(Debug, Serialize)]
pub struct DiskFree {
    pub store: StoreUsage,
    pub memory: MemoryUsage,
}

#[derive(Debug, Serialize)]
pub struct StoreUsage {
    pub path: String,
    pub models: usize,
    /// Bytes of every blob in the store (weights, configs, manifests' layers).
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct MemoryUsage {
    /// `nvml` (GPU memory) or `system` (host memory: CPU mode).
    pub probe: &'static str,
    pub devices: Vec<DeviceUsage>,
    pub runners: Vec<RunnerMemory>,
}

#[derive(Debug, Serialize)]
pub struct DeviceUsage {
    pub index: u32,
    pub name: String,
    pub total: u64,
    pub free: u64,
    pub used: u64,
}

#[derive(Debug, Serialize)]
pub struct RunnerMemory {
    pub model_name: String,
    pub mode: &'static str,
    pub pid: u32,
    /// Measured bytes per device index, summed over the runner's process group.
    pub devices: std::collections::BTreeMap<u32, u64>,
}

/// `POST /engines/_configure`, as DMR's CLI and Compose send it.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigureRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(
        default,
        rename = "context-size",
        skip_serializing_if = "Option::is_none"
    )]
    pub context_size: Option<i64>,
    #[serde(
        default,
        rename = "runtime-flags",
        skip_serializing_if = "Option::is_none"
    )]
    pub runtime_flags: Option<Vec<String>>,
    /// One string, split like a shell would (no expansion).
    #[serde(
        default,
        rename = "raw-runtime-flags",
        skip_serializing_if = "Option::is_none"
    )]
    pub raw_runtime_flags: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vllm: Option<VllmSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculative: Option<SpeculativeSettings>,
}

/// `_configure`'s `"speculative"` object (DMR's `SpeculativeDecodingConfig`): a draft model by name; the numbers
/// are read wide so that a value out of range is refused by its range, not by its type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeculativeSettings {
    #[serde(default)]
    pub draft_model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_acceptance_rate: Option<f64>,
}

/// `_configure`'s `"vllm"` object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VllmSettings {
    #[serde(
        default,
        rename = "hf-overrides",
        skip_serializing_if = "Option::is_none"
    )]
    pub hf_overrides: Option<serde_json::Value>,
    #[serde(
        default,
        rename = "gpu-memory-utilization",
        skip_serializing_if = "Option::is_none"
    )]
    pub gpu_memory_utilization: Option<f64>,
}

/// One entry of `GET /engines/_configure`, with DMR's capitalised keys (its Go struct has no JSON tags).
#[derive(Debug, Serialize)]
pub struct ConfiguredModel {
    #[serde(rename = "Backend")]
    pub backend: &'static str,
    #[serde(rename = "Model")]
    pub model: String,
    #[serde(rename = "ModelID")]
    pub model_id: String,
    #[serde(rename = "Mode")]
    pub mode: String,
    #[serde(rename = "Config")]
    pub config: ConfiguredSettings,
}

#[derive(Debug, Serialize)]
pub struct ConfiguredSettings {
    #[serde(rename = "context-size", skip_serializing_if = "Option::is_none")]
    pub context_size: Option<u32>,
    #[serde(rename = "runtime-flags", skip_serializing_if = "Option::is_none")]
    pub runtime_flags: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vllm: Option<VllmSettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speculative: Option<SpeculativeSettings>,
}

/// One exchange as `GET /engines/requests` shows it (newest first).
#[derive(Debug, Clone, Serialize)]
pub struct InspectedRequest {
    pub id: u64,
    /// RFC 3339, when the request arrived.
    pub time: String,
    pub model: String,
    pub dialect: &'static str,
    pub route: String,
    pub status: u16,
    pub duration_ms: f64,
    /// The last user turn (or prompt / input).
    pub prompt: Option<String>,
    /// The answer's text, reassembled from a stream's deltas.
    pub answer: String,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub tokens_per_second: Option<f64>,
    pub context_size: Option<u32>,
    /// (prompt + completion tokens) / context size, in percent.
    pub context_used_percent: Option<f64>,
    pub streamed: bool,
    /// False when the client left before the answer ended.
    pub complete: bool,
    /// The request body, and the answer body (raw stream text for streams), each cut at the inspector's cap.
    pub request: serde_json::Value,
    pub response: serde_json::Value,
    pub truncated: bool,
}

/// `POST /config/reload`'s answer.
#[derive(Debug, Serialize)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Keys that changed but only take effect after a restart.
    pub needs_restart: Vec<&'static str>,
    /// Idle runners stopped to pick up new settings.
    pub restarted_runners: usize,
}
