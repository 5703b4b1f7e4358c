//! DMR's repackage: a new model that shares another's layers with a changed config (today: its context size),
//! committed under a new tag like a pulled artifact, so it can be pushed as is. The source model is untouched.

use std::fs;

use super::artifact::{digest_hex, sha256_digest};
use super::fsutil::io_err;
use super::{Model, Store, StoreError};

impl Store {
    /// Commits `target` as `reference`'s layers with `context_size` (when given) in its config. The config keeps
    /// every other field; the model's id is the new manifest's digest.
    pub fn repackage(
        &self,
        reference: &str,
        target: &str,
        context_size: Option<u64>,
    ) -> Result<Model, StoreError> {
        let source = self.get(reference)?;
        let corrupt = |path: &std::path::Path, detail: &str| StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: detail.to_string(),
            source: None,
        };
        let manifest_path = self.manifest_path(digest_hex(&source.id).unwrap_or_default());
        let manifest_bytes = fs::read(&manifest_path).map_err(io_err(&manifest_path))?;
        let mut manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes)
            .map_err(|_| corrupt(&manifest_path, "the manifest does not parse"))?;
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .and_then(digest_hex)
            .ok_or_else(|| corrupt(&manifest_path, "no config digest"))?
            .to_string();
        let config_path = self.blob_path(&config_digest);
        let config_bytes = fs::read(&config_path).map_err(io_err(&config_path))?;
        let mut config: serde_json::Value = serde_json::from_slice(&config_bytes)
            .map_err(|_| corrupt(&config_path, "the config does not parse"))?;
        let Some(fields) = config
            .get_mut("config")
            .and_then(serde_json::Value::as_object_mut)
        else {
            return Err(StoreError::Conflict(format!(
                "model {reference} has no Docker model config to change (a ModelPack artifact?)"
            )));
        };
        if let Some(n) = context_size {
            fields.insert("context_size".into(), n.into());
        }
        let new_config = serde_json::to_vec(&config).expect("a JSON value serialises");
        manifest["config"]["digest"] = sha256_digest(&new_config).into();
        manifest["config"]["size"] = new_config.len().into();
        let new_manifest = serde_json::to_vec(&manifest).expect("a JSON value serialises");
        self.commit_artifact(Some(target), &new_manifest, &new_config, source.created)
    }
}
