//! The OCI artifact documents of a packaged model, byte-compatible with Docker Model Runner: the
//! config blob (`{"config":…,"descriptor":…,"rootfs":…}`) and the OCI image manifest that names
//! it and the GGUF layer, plus the digest and timestamp helpers they need. It builds and parses
//! bytes only; it must not touch the file system or know about the index or tags.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::gguf::{self, GgufInfo};

pub(super) const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub(super) const CONFIG_MEDIA_TYPE: &str = "application/vnd.docker.ai.model.config.v0.1+json";
pub(super) const GGUF_MEDIA_TYPE: &str = "application/vnd.docker.ai.gguf.v3";
/// The config of a model packaged one layer per file, each naming its path (safetensors, diffusers).
pub(super) const CONFIG_V2_MEDIA_TYPE: &str = "application/vnd.docker.ai.model.config.v0.2+json";
pub(super) const SAFETENSORS_MEDIA_TYPE: &str = "application/vnd.docker.ai.safetensors";
pub(super) const DDUF_MEDIA_TYPE: &str = "application/vnd.docker.ai.dduf";
pub(super) const FILE_MEDIA_TYPE: &str = "application/vnd.docker.ai.model.file";
/// The annotation that gives a layer's path inside the model directory.
pub(super) const FILEPATH_ANNOTATION: &str = "org.cncf.model.filepath";

/// The `config` object of a model's config blob (DMR's `types.Config`, GGUF subset).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelConfig {
    pub format: String,
    pub quantization: String,
    pub parameters: String,
    pub architecture: String,
    pub size: String,
    pub gguf: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub safetensors: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub diffusers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_size: Option<u64>,
    /// A system prompt for chats that bring none (set by Ollama's `/api/create`; not a DMR field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Default request options, by Ollama's names (`temperature`, `stop`, …; set by `/api/create`; not a DMR field).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, serde_json::Value>,
}

/// The whole config blob.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ConfigFile {
    pub config: ModelConfig,
    #[serde(default)]
    pub descriptor: ConfigDescriptor,
    #[serde(default)]
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ConfigDescriptor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// An OCI image manifest (only the fields the store uses; others are ignored when read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// An OCI content descriptor, fields in go-containerregistry's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub size: u64,
    pub digest: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// The path a layer of a one-layer-per-file model has in the model directory.
    pub fn filepath(&self) -> Option<&str> {
        self.annotations
            .get(FILEPATH_ANNOTATION)
            .map(String::as_str)
    }
}

impl Manifest {
    /// The first GGUF weights layer.
    pub fn weights(&self) -> Option<&Descriptor> {
        self.layers.iter().find(|l| l.media_type == GGUF_MEDIA_TYPE)
    }
}

/// The config a GGUF file gets, as DMR's `ExtractConfig` builds it.
pub(super) fn model_config(info: &GgufInfo, file_size: u64) -> ModelConfig {
    ModelConfig {
        format: "gguf".to_string(),
        quantization: info.quantization(),
        parameters: gguf::format_parameters(info.parameter_count()),
        architecture: info.architecture().unwrap_or_default().trim().to_string(),
        size: gguf::format_size(file_size),
        gguf: info.metadata_strings(),
        // DMR keeps the context length only when it fits an int32.
        context_size: info
            .context_length()
            .filter(|c| (1..=i32::MAX as u64).contains(c)),
        ..Default::default()
    }
}

/// Serialises a config blob; `created` (unix seconds) is an input so that the same file
/// imported twice yields the same bytes, hence the same model id.
#[cfg(test)]
pub(super) fn config_bytes(config: &ModelConfig, weights_digest: &str, created: i64) -> Vec<u8> {
    config_bytes_for(config, &[weights_digest.to_string()], created)
}

/// A config blob naming every layer's digest in `diff_ids`.
pub(super) fn config_bytes_for(config: &ModelConfig, diff_ids: &[String], created: i64) -> Vec<u8> {
    let file = ConfigFile {
        config: config.clone(),
        descriptor: ConfigDescriptor {
            created: Some(rfc3339(created)),
        },
        rootfs: RootFs {
            kind: "rootfs".to_string(),
            diff_ids: diff_ids.to_vec(),
        },
    };
    // Invariant: these types hold only strings, integers and string-keyed maps, which
    // serde_json always serialises.
    serde_json::to_vec(&file).expect("config serialisation cannot fail")
}

/// DMR's layer type for a license file.
pub(super) const LICENSE_MEDIA_TYPE: &str = "application/vnd.docker.ai.license";
/// DMR's layer type for a multimodal projector (a vision model's image encoder, llama-server's `--mmproj`). The
/// model-spec repository says `…gguf.v3.mmproj`; DMR's code, which we follow, uses this one.
pub const MMPROJ_MEDIA_TYPE: &str = "application/vnd.docker.ai.mmproj";
/// DMR's layer type for a chat template.
pub(super) const CHAT_TEMPLATE_MEDIA_TYPE: &str = "application/vnd.docker.ai.chat.template.jinja";

/// Serialises the manifest naming the config blob and the single GGUF layer.
#[cfg(test)]
pub(super) fn manifest_bytes(config: (&str, u64), weights: (&str, u64)) -> Vec<u8> {
    manifest_bytes_with(config, &[(GGUF_MEDIA_TYPE, weights.0, weights.1)])
}

/// Serialises a v0.1 manifest: the config blob and typed layers (media type, digest, size), in order.
pub(super) fn manifest_bytes_with(config: (&str, u64), layers: &[(&str, &str, u64)]) -> Vec<u8> {
    let descriptor = |media_type: &str, (digest, size): (&str, u64)| Descriptor {
        media_type: media_type.to_string(),
        size,
        digest: digest.to_string(),
        annotations: BTreeMap::new(),
    };
    let manifest = Manifest {
        schema_version: 2,
        media_type: MANIFEST_MEDIA_TYPE.to_string(),
        config: descriptor(CONFIG_MEDIA_TYPE, config),
        layers: layers
            .iter()
            .map(|(media, digest, size)| descriptor(media, (digest, *size)))
            .collect(),
    };
    // Invariant: plain strings and integers always serialise.
    serde_json::to_vec(&manifest).expect("manifest serialisation cannot fail")
}

/// One file of a one-layer-per-file model: its path in the model directory, digest and size.
pub(super) struct FileLayer {
    pub path: String,
    pub digest: String,
    pub size: u64,
}

/// The layer media type DMR gives a file of a one-layer-per-file model.
pub(super) fn file_media_type(path: &str) -> &'static str {
    if path.ends_with(".safetensors") {
        SAFETENSORS_MEDIA_TYPE
    } else if path.ends_with(".dduf") {
        DDUF_MEDIA_TYPE
    } else {
        FILE_MEDIA_TYPE
    }
}

/// Serialises the manifest of a one-layer-per-file model (config v0.2, each layer annotated with its path).
pub(super) fn manifest_bytes_for_files(config: (&str, u64), files: &[FileLayer]) -> Vec<u8> {
    let manifest = Manifest {
        schema_version: 2,
        media_type: MANIFEST_MEDIA_TYPE.to_string(),
        config: Descriptor {
            media_type: CONFIG_V2_MEDIA_TYPE.to_string(),
            size: config.1,
            digest: config.0.to_string(),
            annotations: BTreeMap::new(),
        },
        layers: files
            .iter()
            .map(|f| Descriptor {
                media_type: file_media_type(&f.path).to_string(),
                size: f.size,
                digest: f.digest.clone(),
                annotations: BTreeMap::from([(FILEPATH_ANNOTATION.to_string(), f.path.clone())]),
            })
            .collect(),
    };
    // Invariant: plain strings and integers always serialise.
    serde_json::to_vec(&manifest).expect("manifest serialisation cannot fail")
}

/// Lower-case hex sha256 of `bytes`.
pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `sha256:<hex>` of `bytes`.
pub(super) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// The hex part of a well-formed `sha256:<64 lower-case hex>` digest, else `None` (so that a
/// hostile index can never turn a digest into a path outside the store).
pub(super) fn digest_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then_some(hex)
}

/// Unix seconds as an RFC 3339 UTC timestamp (`1970-01-01T00:00:00Z`).
/// `t` in RFC 3339 (UTC), to the second, or to the millisecond with `millis`.
pub fn rfc3339_at(t: std::time::SystemTime, millis: bool) -> String {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let base = rfc3339(since.as_secs() as i64);
    match base.strip_suffix('Z') {
        Some(b) if millis => format!("{b}.{:03}Z", since.subsec_millis()),
        _ => base,
    }
}

pub fn rfc3339(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(4_102_444_800), "2100-01-01T00:00:00Z");
    }

    #[test]
    fn validates_digests() {
        let hex = "ab".repeat(32);
        assert_eq!(digest_hex(&format!("sha256:{hex}")), Some(hex.as_str()));
        assert_eq!(digest_hex(&format!("sha256:{}", hex.to_uppercase())), None);
        assert_eq!(digest_hex("sha256:../../etc/passwd"), None);
        assert_eq!(digest_hex(&hex), None);
        let empty = sha256_digest(b"");
        assert_eq!(
            empty,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn config_and_manifest_have_dmr_shapes() {
        let config = ModelConfig {
            format: "gguf".into(),
            quantization: "Q4_K_M".into(),
            parameters: "361.82M".into(),
            architecture: "llama".into(),
            size: "256.35MiB".into(),
            gguf: BTreeMap::from([("general.name".to_string(), "x".to_string())]),
            context_size: Some(8192),
            ..Default::default()
        };
        let bytes = config_bytes(&config, "sha256:w", 0);
        let want = concat!(
            r#"{"config":{"format":"gguf","quantization":"Q4_K_M","parameters":"361.82M","#,
            r#""architecture":"llama","size":"256.35MiB","gguf":{"general.name":"x"},"#,
            r#""context_size":8192},"descriptor":{"created":"1970-01-01T00:00:00Z"},"#,
            r#""rootfs":{"type":"rootfs","diff_ids":["sha256:w"]}}"#
        );
        assert_eq!(String::from_utf8_lossy(&bytes), want);
        let parsed: ConfigFile = serde_json::from_slice(&bytes).expect("parses back");
        assert_eq!(parsed.config, config);
        let no_ctx = ModelConfig {
            context_size: None,
            ..config
        };
        let text = String::from_utf8(config_bytes(&no_ctx, "sha256:w", 0)).expect("utf-8");
        assert!(!text.contains("context_size"));

        let manifest = manifest_bytes(("sha256:c", 10), ("sha256:w", 20));
        let want = concat!(
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","#,
            r#""config":{"mediaType":"application/vnd.docker.ai.model.config.v0.1+json","#,
            r#""size":10,"digest":"sha256:c"},"layers":[{"mediaType":"#,
            r#""application/vnd.docker.ai.gguf.v3","size":20,"digest":"sha256:w"}]}"#
        );
        assert_eq!(String::from_utf8_lossy(&manifest), want);
        let parsed: Manifest = serde_json::from_slice(&manifest).expect("parses back");
        assert_eq!(parsed.weights().map(|d| d.size), Some(20));
    }

    #[test]
    fn reads_foreign_configs_leniently() {
        let dmr = r#"{"config":{"format":"safetensors","gguf":{},"safetensors":{"a":"b"}},
            "descriptor":{"created":"2025-01-02T03:04:05.123456789+01:00"},"extra":1}"#;
        let parsed: ConfigFile = serde_json::from_str(dmr).expect("lenient");
        assert_eq!(parsed.config.format, "safetensors");
        assert_eq!(parsed.config.context_size, None);
        assert!(parsed.rootfs.diff_ids.is_empty());
    }
}
