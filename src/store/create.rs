//! Models made from parts sent over the network (Ollama's `/api/blobs` and `/api/create`). An uploaded blob is
//! streamed into `uploads/sha256/.tmp-…` under a size cap, hashed as it is written, and renamed to its digest only
//! when the digest is the one announced; a mismatch or a body past the cap keeps nothing. `uploads/` is not
//! `blobs/`: the collector of blobs no model names never sees an upload waiting for its `create`. A new GGUF model
//! is then made from an uploaded (or stored) GGUF blob, or from a stored GGUF model, with a [`Recipe`] of what
//! changes: the context size, a system prompt, default request options (kept in the config blob, beside DMR's
//! fields, so they travel with a push), a chat template and a license (DMR's layers). It commits through
//! `commit_artifact`, like a pull. It knows nothing of HTTP or of Ollama's field names.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::PathBuf;

use super::artifact::{self, digest_hex, sha256_digest};
use super::fsutil::{self, io_err, remove_quietly, write_new};
use super::name::{self, NameError};
use super::{gguf, Model, ModelFormat, Store, StoreError};

/// What a created model changes from its base. `None`/empty keeps the base's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recipe {
    pub context_size: Option<u64>,
    pub system: Option<String>,
    /// Default request options (sampling and the like), by name, as the client sent them.
    pub options: BTreeMap<String, serde_json::Value>,
    /// A Jinja chat template: DMR's chat-template layer, replacing the base's (and the GGUF's own).
    pub chat_template: Option<String>,
    /// DMR's license layer, replacing the base's.
    pub license: Option<String>,
}

/// Where a created model's weights come from.
#[derive(Debug, Clone, Copy)]
pub enum Base<'a> {
    /// A GGUF blob, uploaded or already in the store (`sha256:<hex>`).
    Blob(&'a str),
    /// A stored model (a tag or an id).
    Model(&'a str),
}

impl Store {
    pub(super) fn upload_dir(&self) -> PathBuf {
        self.root.join("uploads/sha256")
    }

    /// Whether `digest` is an uploaded blob or a blob of the store.
    pub fn has_upload(&self, digest: &str) -> bool {
        self.upload_file(digest).is_some() || self.blob_file(digest).is_some()
    }

    fn upload_file(&self, digest: &str) -> Option<PathBuf> {
        let path = self.upload_dir().join(digest_hex(digest)?);
        path.is_file().then_some(path)
    }

    /// Streams `body` into the upload `digest`: at most `cap` bytes (more is [`StoreError::TooLarge`]), hashed as
    /// written, renamed into place only if it hashes to `digest` ([`StoreError::DigestMismatch`] otherwise). On any
    /// error nothing is kept. Returns whether a new file was made (false: it was there already).
    pub fn upload(&self, digest: &str, body: &mut dyn Read, cap: u64) -> Result<bool, StoreError> {
        let hex = digest_hex(digest)
            .ok_or_else(|| NameError::BadDigest(digest.to_string()))?
            .to_string();
        let dir = self.upload_dir();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut capped = body.take(cap.saturating_add(1));
        let label = PathBuf::from(format!("upload {digest}"));
        let (temp, actual, len) =
            fsutil::copy_hashed_from(&mut capped, &label, &dir, 0, &mut |_| {})?;
        if len > cap {
            return Err(StoreError::TooLarge { limit: cap });
        }
        if actual != hex {
            return Err(StoreError::DigestMismatch {
                path: label,
                expected: digest.to_string(),
                actual: format!("sha256:{actual}"),
            });
        }
        if self.blob_file(digest).is_some() {
            return Ok(false);
        }
        temp.persist_new(&dir.join(&hex))
    }

    /// Makes the GGUF model `tag` from `base` with `recipe`, and commits it (the tag moves to it). Nothing of a
    /// failed create stays in the store; the upload it used is removed once the model holds its weights.
    pub fn create_model(
        &self,
        base: Base<'_>,
        tag: &str,
        recipe: &Recipe,
    ) -> Result<Model, StoreError> {
        let tag = name::normalize(tag)?;
        if tag.contains('@') {
            return Err(NameError::NotATag(tag).into());
        }
        let mut protected = self.protect([]);
        let mut added: Vec<String> = Vec::new();
        let result = (|| {
            let (mut manifest, mut config, created) = match base {
                Base::Blob(digest) => {
                    protected.add(digest);
                    let (m, c) = self.artifact_of_blob(digest, &mut added)?;
                    (m, c, now())
                }
                Base::Model(reference) => {
                    let source = self.get(reference)?;
                    if source.format != ModelFormat::Gguf {
                        return Err(StoreError::Conflict(format!(
                            "{reference} is a {} model; only GGUF models can be the base of a new one",
                            source.format.as_str()
                        )));
                    }
                    let art = self.artifact(reference)?;
                    let manifest: artifact::Manifest = serde_json::from_slice(&art.manifest_bytes)
                        .map_err(|_| bad("the base model's manifest does not parse"))?;
                    let config: serde_json::Value = serde_json::from_slice(&art.config_bytes)
                        .map_err(|_| bad("the base model's config does not parse"))?;
                    (manifest, config, source.created)
                }
            };
            for (media, text) in [
                (artifact::CHAT_TEMPLATE_MEDIA_TYPE, &recipe.chat_template),
                (artifact::LICENSE_MEDIA_TYPE, &recipe.license),
            ] {
                let Some(text) = text else { continue };
                let digest = sha256_digest(text.as_bytes());
                protected.add(&digest);
                let path = self.blob_path(digest_hex(&digest).unwrap_or_default());
                if write_new(&path, text.as_bytes())? {
                    added.push(digest.clone());
                }
                manifest.layers.retain(|l| l.media_type != media);
                manifest.layers.push(artifact::Descriptor {
                    media_type: media.to_string(),
                    size: text.len() as u64,
                    digest,
                    annotations: BTreeMap::new(),
                });
            }
            apply(&mut config, &manifest, recipe)?;
            let config_bytes = serde_json::to_vec(&config).map_err(|_| bad("config"))?;
            manifest.config.digest = sha256_digest(&config_bytes);
            manifest.config.size = config_bytes.len() as u64;
            let manifest_bytes = serde_json::to_vec(&manifest).map_err(|_| bad("manifest"))?;
            self.commit_artifact(Some(&tag), &manifest_bytes, &config_bytes, created)
        })();
        drop(protected);
        match &result {
            Ok(model) => {
                if let Base::Blob(digest) = base {
                    if model.files.iter().any(|f| f == digest) {
                        if let Some(upload) = self.upload_file(digest) {
                            remove_quietly(&upload);
                        }
                    }
                }
            }
            Err(_) => self.remove_unreferenced(&added),
        }
        result
    }

    /// The manifest and config of a model made of the GGUF blob `digest` alone: a blob of the store, or an upload,
    /// checked to be GGUF, then linked into `blobs/` (recorded in `added`).
    fn artifact_of_blob(
        &self,
        digest: &str,
        added: &mut Vec<String>,
    ) -> Result<(artifact::Manifest, serde_json::Value), StoreError> {
        let hex = digest_hex(digest)
            .ok_or_else(|| NameError::BadDigest(digest.to_string()))?
            .to_string();
        let blob = self.blob_path(&hex);
        let upload = if blob.is_file() {
            None
        } else {
            let upload = self
                .upload_file(digest)
                .ok_or_else(|| StoreError::NotFound(digest.to_string()))?;
            Some(upload)
        };
        let info = gguf::read_file(upload.as_ref().unwrap_or(&blob)).map_err(|source| {
            StoreError::Gguf {
                path: PathBuf::from(digest),
                source,
            }
        })?;
        if let Some(upload) = upload {
            match fs::hard_link(&upload, &blob) {
                Ok(()) => added.push(digest.to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(&blob)(e)),
            }
        }
        let len = fs::metadata(&blob).map_err(io_err(&blob))?.len();
        let config = artifact::model_config(&info, len);
        let config_bytes = artifact::config_bytes_for(&config, &[digest.to_string()], now());
        let manifest_bytes = artifact::manifest_bytes_with(
            (&sha256_digest(&config_bytes), config_bytes.len() as u64),
            &[(artifact::GGUF_MEDIA_TYPE, digest, len)],
        );
        let manifest = serde_json::from_slice(&manifest_bytes).map_err(|_| bad("manifest"))?;
        let config = serde_json::from_slice(&config_bytes).map_err(|_| bad("config"))?;
        Ok((manifest, config))
    }
}

/// Writes `recipe` into a config blob's JSON (every other field kept), and its `rootfs.diff_ids` from the layers.
fn apply(
    config: &mut serde_json::Value,
    manifest: &artifact::Manifest,
    recipe: &Recipe,
) -> Result<(), StoreError> {
    let Some(fields) = config
        .get_mut("config")
        .and_then(serde_json::Value::as_object_mut)
    else {
        return Err(StoreError::Conflict(
            "the base model has no Docker model config to change (a ModelPack artifact?)".into(),
        ));
    };
    if let Some(n) = recipe.context_size {
        fields.insert("context_size".into(), n.into());
    }
    if let Some(system) = &recipe.system {
        fields.insert("system".into(), system.clone().into());
    }
    if !recipe.options.is_empty() {
        let mut options = fields
            .get("options")
            .and_then(|o| o.as_object().cloned())
            .unwrap_or_default();
        options.extend(recipe.options.clone());
        fields.insert("options".into(), serde_json::Value::Object(options));
    }
    if let Some(rootfs) = config.get_mut("rootfs").and_then(|r| r.as_object_mut()) {
        let ids: Vec<serde_json::Value> = manifest
            .layers
            .iter()
            .map(|l| l.digest.clone().into())
            .collect();
        rootfs.insert("diff_ids".into(), ids.into());
    }
    Ok(())
}

fn bad(what: &str) -> StoreError {
    StoreError::BadArchive(what.to_string())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_gguf() -> Vec<u8> {
        super::super::gguf::writer::tiny_model()
    }

    #[test]
    fn an_upload_is_kept_only_when_its_digest_matches_and_it_fits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let data = b"hello blob".to_vec();
        let digest = sha256_digest(&data);
        let wrong = sha256_digest(b"other");
        let err = store.upload(&wrong, &mut &data[..], 100).unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
        assert!(!store.has_upload(&wrong));
        let err = store.upload(&digest, &mut &data[..], 4).unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { limit: 4 }), "{err}");
        assert!(!store.has_upload(&digest));
        assert_eq!(fs::read_dir(store.upload_dir()).unwrap().count(), 0);
        assert!(store.upload(&digest, &mut &data[..], 100).expect("kept"));
        assert!(store.has_upload(&digest));
        assert!(!store.upload(&digest, &mut &data[..], 100).expect("again"));
        assert!(store.upload("sha256:../x", &mut &data[..], 100).is_err());
        // The collector of unnamed blobs leaves uploads alone.
        store.remove_orphan_blobs().expect("gc");
        assert!(store.has_upload(&digest));
    }

    #[test]
    fn a_model_from_a_blob_then_one_derived_from_it_share_the_weights() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let data = tiny_gguf();
        let digest = sha256_digest(&data);
        store
            .upload(&digest, &mut &data[..], 1 << 30)
            .expect("upload");
        let m = store
            .create_model(Base::Blob(&digest), "me/base", &Recipe::default())
            .expect("create");
        assert_eq!(m.tags, ["me/base:latest"]);
        assert!(m.files.contains(&digest));
        assert!(store.upload_file(&digest).is_none(), "the upload moved");
        assert!(store.has_upload(&digest), "…into the blobs");
        let recipe = Recipe {
            context_size: Some(256),
            system: Some("be brief".into()),
            options: BTreeMap::from([("temperature".into(), serde_json::json!(0.5))]),
            chat_template: Some("{{ messages }}".into()),
            license: None,
        };
        let d = store
            .create_model(Base::Model("me/base"), "me/derived", &recipe)
            .expect("derive");
        assert_ne!(d.id, m.id);
        assert_eq!(d.weights, m.weights);
        assert_eq!(d.config.context_size, Some(256));
        assert_eq!(d.config.system.as_deref(), Some("be brief"));
        assert_eq!(d.config.options["temperature"], serde_json::json!(0.5));
        let template = d.chat_template.as_ref().expect("a template layer");
        assert_eq!(fs::read_to_string(template).unwrap(), "{{ messages }}");
        assert!(store.get("me/base").unwrap().config.system.is_none());
        // Unknown bases and blobs that are not GGUF are refused, keeping nothing.
        let missing = sha256_digest(b"nope");
        assert!(matches!(
            store.create_model(Base::Blob(&missing), "me/x", &Recipe::default()),
            Err(StoreError::NotFound(_))
        ));
        let junk = b"not a gguf at all".to_vec();
        let junk_digest = sha256_digest(&junk);
        store
            .upload(&junk_digest, &mut &junk[..], 100)
            .expect("upload");
        assert!(matches!(
            store.create_model(Base::Blob(&junk_digest), "me/x", &Recipe::default()),
            Err(StoreError::Gguf { .. })
        ));
        assert!(store.blob_file(&junk_digest).is_none());
        assert!(matches!(
            store.create_model(Base::Model("me/none"), "me/x", &Recipe::default()),
            Err(StoreError::NotFound(_))
        ));
        assert!(store.get("me/x").is_err());
    }
}
