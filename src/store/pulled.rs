//! The store's side of registry pulls and pushes: where a layer being downloaded lives (`blobs/sha256/<hex>.incomplete`,
//! kept across failures so the next pull resumes it), moving a verified download into place, committing a pulled
//! manifest and config under a tag (all-or-nothing, through `commit`), and reading back what a push needs. It
//! checks digests, media types, layer file paths and sizes (a blob is only "there" with the size its manifest
//! declares), so that a pull can refuse before downloading what the commit would refuse after; it must not know
//! HTTP or registries.

use std::fs::{self, File};
use std::io::Read;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::artifact::{self, digest_hex, sha256_digest, ConfigFile, Manifest};
use super::fsutil::{io_err, remove_quietly};
use super::index::Entry;
use super::name::{self, NameError};
use super::{Model, Store, StoreError};

/// Config media types a pulled model may have: DMR's two, and CNCF ModelPack's.
pub const CONFIG_MEDIA_TYPES: [&str; 3] = [
    artifact::CONFIG_MEDIA_TYPE,
    artifact::CONFIG_V2_MEDIA_TYPE,
    "application/vnd.cncf.model.config.v1+json",
];

/// Layer media types a pulled model may have (DMR's); any other is refused before anything is downloaded.
pub const LAYER_MEDIA_TYPES: [&str; 9] = [
    artifact::GGUF_MEDIA_TYPE,
    artifact::MMPROJ_MEDIA_TYPE,
    "application/vnd.docker.ai.chat.template.jinja",
    "application/vnd.docker.ai.license",
    artifact::SAFETENSORS_MEDIA_TYPE,
    artifact::DDUF_MEDIA_TYPE,
    artifact::FILE_MEDIA_TYPE,
    "application/vnd.docker.ai.vllm.config.tar",
    "application/vnd.docker.ai.dir.tar",
];

/// One layer of a parsed manifest, as a pull sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    /// Its `org.cncf.model.filepath` (checked safe), for one-layer-per-file models.
    pub path: Option<String>,
}

/// What a pull needs from a manifest before downloading anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestInfo {
    pub config_digest: String,
    pub config_media_type: String,
    pub config_size: u64,
    pub layers: Vec<LayerInfo>,
}

/// Parses a manifest and checks its media types; the error names what is not supported (HTTP 422).
pub fn check_manifest(bytes: &[u8]) -> Result<ManifestInfo, String> {
    let m: Manifest =
        serde_json::from_slice(bytes).map_err(|e| format!("the manifest does not parse: {e}"))?;
    if !CONFIG_MEDIA_TYPES.contains(&m.config.media_type.as_str()) {
        return Err(format!(
            "unsupported config media type {:?}: this is not a model artifact (expected one of {})",
            m.config.media_type,
            CONFIG_MEDIA_TYPES.join(", ")
        ));
    }
    let mut layers = Vec::new();
    for l in &m.layers {
        if !LAYER_MEDIA_TYPES.contains(&l.media_type.as_str()) {
            return Err(format!("unsupported layer media type {:?}", l.media_type));
        }
        if digest_hex(&l.digest).is_none() {
            return Err(format!(
                "layer digest {:?} is not a sha256 digest",
                l.digest
            ));
        }
        layers.push(LayerInfo {
            digest: l.digest.clone(),
            size: l.size,
            media_type: l.media_type.clone(),
            path: l.filepath().map(str::to_string),
        });
    }
    if digest_hex(&m.config.digest).is_none() {
        return Err(format!(
            "config digest {:?} is not a sha256 digest",
            m.config.digest
        ));
    }
    check_layer_paths(&m)?;
    if !layers.iter().any(|l| {
        [
            artifact::GGUF_MEDIA_TYPE,
            artifact::SAFETENSORS_MEDIA_TYPE,
            artifact::DDUF_MEDIA_TYPE,
        ]
        .contains(&l.media_type.as_str())
    }) {
        return Err("the artifact has no weights layer (GGUF, safetensors or DDUF)".into());
    }
    Ok(ManifestInfo {
        config_digest: m.config.digest,
        config_media_type: m.config.media_type,
        config_size: m.config.size,
        layers,
    })
}

/// What `commit` would refuse about a one-layer-per-file manifest, checked before anything is downloaded: once one
/// layer names a file path (`org.cncf.model.filepath`), every layer must name a safe relative one (no `..`, no
/// root), and no two may collide (the same path, or one inside the other: the bundle could not be built).
fn check_layer_paths(m: &Manifest) -> Result<(), String> {
    if m.layers.iter().all(|l| l.filepath().is_none()) {
        return Ok(());
    }
    let mut seen: Vec<&str> = Vec::new();
    for l in &m.layers {
        let path = l.filepath().unwrap_or_default();
        if !super::format::safe_relative(path) {
            return Err(format!(
                "layer {} has no safe file path ({:?}): paths must be relative, without `..`",
                l.digest, path
            ));
        }
        let path = path.trim_end_matches('/');
        let clash = seen.iter().find(|p| {
            **p == path
                || path.strip_prefix(**p).is_some_and(|r| r.starts_with('/'))
                || p.strip_prefix(path).is_some_and(|r| r.starts_with('/'))
        });
        if let Some(other) = clash {
            return Err(format!(
                "layer {} has file path {path:?}, which collides with {other:?}",
                l.digest
            ));
        }
        seen.push(path);
    }
    Ok(())
}

/// Checks a model's config blob against its manifest before the layers are fetched: the digest and size the
/// manifest gives, that it parses, and that its format is one the store knows; the error says what is wrong.
pub fn check_config(info: &ManifestInfo, config: &[u8]) -> Result<(), String> {
    let actual = sha256_digest(config);
    if actual != info.config_digest {
        return Err(format!(
            "the config blob has digest {actual}, its manifest says {}",
            info.config_digest
        ));
    }
    if config.len() as u64 != info.config_size {
        return Err(format!(
            "the config blob {} is {} bytes, its manifest says {}",
            info.config_digest,
            config.len(),
            info.config_size
        ));
    }
    let parsed: ConfigFile = serde_json::from_slice(config)
        .map_err(|e| format!("the model config does not parse: {e}"))?;
    // What the store needs to run the model (`load_model`): a GGUF layer, or a file path on every layer.
    let has = |media: &str| info.layers.iter().any(|l| l.media_type == media);
    let paths = || info.layers.iter().filter_map(|l| l.path.as_deref());
    let every_path = info.layers.iter().all(|l| l.path.is_some());
    match super::ModelFormat::parse(&parsed.config.format) {
        None => Err(format!(
            "unknown model format {:?} in the config",
            parsed.config.format
        )),
        Some(super::ModelFormat::Gguf) if !has(artifact::GGUF_MEDIA_TYPE) => {
            Err("the config says GGUF but the artifact has no GGUF layer".into())
        }
        Some(super::ModelFormat::Gguf) => Ok(()),
        Some(f) if !every_path => Err(format!(
            "a {} model needs a file path (org.cncf.model.filepath) on every layer",
            f.as_str()
        )),
        Some(super::ModelFormat::Dduf) if !paths().any(|p| p.ends_with(".dduf")) => {
            Err("the config says DDUF but no layer is a .dduf file".into())
        }
        Some(_) => Ok(()),
    }
}

/// A layer download in progress: bytes already there (resumed) and the running hash over them.
pub struct Download {
    pub path: PathBuf,
    pub file: File,
    pub hasher: Sha256,
    pub have: u64,
}

impl Store {
    /// Whether the blob `digest` is in the store.
    pub fn has_blob(&self, digest: &str) -> bool {
        digest_hex(digest).is_some_and(|hex| self.blob_path(hex).is_file())
    }

    /// Whether the blob `digest` is in the store with the `declared` size: `Ok(false)` when it is not there, an
    /// error naming both sizes when it is there with another size (the manifest that declared it lies).
    pub fn has_blob_sized(&self, digest: &str, declared: u64) -> Result<bool, StoreError> {
        let Some(path) = self.blob_file(digest) else {
            return Ok(false);
        };
        let actual = fs::metadata(&path).map_err(io_err(&path))?.len();
        if actual != declared {
            return Err(StoreError::SizeMismatch {
                digest: digest.to_string(),
                declared,
                actual,
            });
        }
        Ok(true)
    }

    /// The path of blob `digest`, if it is a well-formed digest and the blob is there.
    pub fn blob_file(&self, digest: &str) -> Option<PathBuf> {
        let path = self.blob_path(digest_hex(digest)?);
        path.is_file().then_some(path)
    }

    /// Opens (or creates) `<hex>.incomplete` for `digest`, hashing what an earlier, interrupted pull left there.
    pub fn open_download(&self, digest: &str) -> Result<Download, StoreError> {
        let hex = digest_hex(digest).ok_or(StoreError::BadName(NameError::Empty))?;
        let path = self.blob_dir().join(format!("{hex}.incomplete"));
        let mut hasher = Sha256::new();
        let mut have = 0u64;
        if let Ok(mut f) = File::open(&path) {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).map_err(io_err(&path))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                have += n as u64;
            }
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(Download {
            path,
            file,
            hasher,
            have,
        })
    }

    /// Checks a finished download against `digest` and moves it into place; a mismatch deletes it (the next pull
    /// starts over) and is an error.
    pub fn finish_download(&self, d: Download, digest: &str) -> Result<(), StoreError> {
        d.file.sync_all().map_err(io_err(&d.path))?;
        let actual = format!("sha256:{}", hex::encode(d.hasher.finalize()));
        if actual != digest {
            remove_quietly(&d.path);
            return Err(StoreError::DigestMismatch {
                path: d.path,
                expected: digest.to_string(),
                actual,
            });
        }
        // Invariant: `open_download` only opens well-formed digests.
        let target = self.blob_path(digest_hex(digest).expect("checked when opened"));
        fs::rename(&d.path, &target).map_err(io_err(&target))?;
        Ok(())
    }

    /// Drops a download and its `.incomplete` file (the disk refused a write: nothing there is worth resuming).
    pub fn abandon_download(&self, d: Download) {
        let Download { path, file, .. } = d;
        drop(file);
        remove_quietly(&path);
    }

    /// Forgets a download (a restart from byte 0, when the registry ignores the range asked for).
    pub fn restart_download(&self, d: Download) -> Result<Download, StoreError> {
        d.file.set_len(0).map_err(io_err(&d.path))?;
        Ok(Download {
            hasher: Sha256::new(),
            have: 0,
            ..d
        })
    }

    /// Commits a pulled model under `tag`: checks the manifest and config against `manifest_digest` and the config
    /// digest, checks every layer blob is present, then writes the config blob, the manifest (and the bundle for
    /// one-layer-per-file models) and moves the tag — all or nothing.
    pub fn commit_pulled(
        &self,
        tag: &str,
        manifest_bytes: &[u8],
        config_bytes: &[u8],
    ) -> Result<Model, StoreError> {
        self.commit_artifact(Some(tag), manifest_bytes, config_bytes, 0)
    }

    /// [`commit_pulled`](Self::commit_pulled) with the model's creation time (unix seconds); without a tag the
    /// model is committed untagged.
    pub(super) fn commit_artifact(
        &self,
        tag: Option<&str>,
        manifest_bytes: &[u8],
        config_bytes: &[u8],
        created: i64,
    ) -> Result<Model, StoreError> {
        let tag = tag.map(name::normalize).transpose()?;
        let id = sha256_digest(manifest_bytes);
        // Invariant: sha256_digest always yields a well-formed digest.
        let id_hex = digest_hex(&id).expect("own digest").to_string();
        let info = check_manifest(manifest_bytes).map_err(|detail| StoreError::Corrupt {
            path: self.manifest_path(&id_hex),
            detail,
            source: None,
        })?;
        let config_digest = sha256_digest(config_bytes);
        if config_digest != info.config_digest {
            return Err(StoreError::DigestMismatch {
                path: self.blob_path(digest_hex(&info.config_digest).unwrap_or_default()),
                expected: info.config_digest,
                actual: config_digest,
            });
        }
        let _: ConfigFile =
            serde_json::from_slice(config_bytes).map_err(|e| StoreError::Corrupt {
                path: PathBuf::from(&info.config_digest),
                detail: "the model config does not parse".into(),
                source: Some(e),
            })?;
        for l in &info.layers {
            if !self.has_blob_sized(&l.digest, l.size)? {
                return Err(StoreError::NotFound(l.digest.clone()));
            }
        }
        if config_bytes.len() as u64 != info.config_size {
            return Err(StoreError::SizeMismatch {
                digest: info.config_digest,
                declared: info.config_size,
                actual: config_bytes.len() as u64,
            });
        }
        // Invariant: parsed above.
        let manifest: Manifest = serde_json::from_slice(manifest_bytes).expect("checked");
        let mut files: Vec<String> = info.layers.iter().map(|l| l.digest.clone()).collect();
        files.push(info.config_digest.clone());
        files.dedup();
        let entry = Entry {
            id: id.clone(),
            tags: tag.iter().cloned().collect(),
            files,
            created,
            source: None,
        };
        let config_hex = digest_hex(&info.config_digest)
            .unwrap_or_default()
            .to_string();
        let per_file = manifest.layers.iter().any(|l| l.filepath().is_some());
        let entry = self.commit(entry, tag.as_deref(), |created| {
            self.write_artifact(
                created,
                Vec::new(),
                (&config_hex, config_bytes),
                (&id_hex, manifest_bytes),
                per_file.then_some(&manifest),
            )
        })?;
        self.load_model(&entry)
    }

    /// Adds `new_tag` to the model `reference` names (the tag moves if another model had it).
    pub fn tag(&self, reference: &str, new_tag: &str) -> Result<Model, StoreError> {
        let new_tag = name::normalize(new_tag)?;
        if new_tag.contains('@') {
            return Err(NameError::NotATag(new_tag).into());
        }
        let model = self.get(reference)?;
        let entry = Entry {
            id: model.id.clone(),
            tags: vec![new_tag.clone()],
            files: model.files.clone(),
            created: model.created,
            source: None,
        };
        let entry = self.commit(entry, Some(&new_tag), |_| Ok(()))?;
        self.load_model(&entry)
    }

    /// What a push sends: the raw manifest, the raw config and each layer's (digest, size, path).
    pub fn artifact(&self, reference: &str) -> Result<Artifact, StoreError> {
        let model = self.get(reference)?;
        // Invariant: ids in the index are checked digests.
        let id_hex = digest_hex(&model.id).expect("index ids are digests");
        let manifest_path = self.manifest_path(id_hex);
        let manifest_bytes = fs::read(&manifest_path).map_err(io_err(&manifest_path))?;
        let manifest: Manifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| StoreError::Corrupt {
                path: manifest_path.clone(),
                detail: "does not parse".into(),
                source: Some(e),
            })?;
        let config_path = self.blob_path(digest_hex(&manifest.config.digest).unwrap_or_default());
        let config_bytes = fs::read(&config_path).map_err(io_err(&config_path))?;
        let layers = manifest
            .layers
            .iter()
            .map(|l| {
                let path = self
                    .blob_file(&l.digest)
                    .ok_or_else(|| StoreError::NotFound(l.digest.clone()))?;
                // A manifest that disagrees with its blob is refused here, so no export or push is built from it.
                self.has_blob_sized(&l.digest, l.size)?;
                Ok((l.digest.clone(), l.size, path))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Artifact {
            model,
            manifest_bytes,
            manifest_media_type: manifest.media_type,
            config_digest: manifest.config.digest,
            config_bytes,
            layers,
        })
    }
}

/// A stored model as a push sends it.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub model: Model,
    pub manifest_bytes: Vec<u8>,
    pub manifest_media_type: String,
    pub config_digest: String,
    pub config_bytes: Vec<u8>,
    /// (digest, size, blob path)
    pub layers: Vec<(String, u64, PathBuf)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_are_checked_for_dmr_media_types() {
        let m = |config: &str, layer: &str| {
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": config, "size": 2, "digest": format!("sha256:{}", "a".repeat(64))},
                "layers": [{"mediaType": layer, "size": 9, "digest": format!("sha256:{}", "b".repeat(64))}],
            }))
            .unwrap()
        };
        let ok =
            check_manifest(&m(artifact::CONFIG_MEDIA_TYPE, artifact::GGUF_MEDIA_TYPE)).unwrap();
        assert_eq!(ok.layers[0].size, 9);
        let image = check_manifest(&m(
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ));
        assert!(image.unwrap_err().contains("unsupported config media type"));
        let odd = check_manifest(&m(artifact::CONFIG_MEDIA_TYPE, "application/x-tar"));
        assert!(odd.unwrap_err().contains("unsupported layer media type"));
        let no_weights = check_manifest(&m(
            artifact::CONFIG_MEDIA_TYPE,
            "application/vnd.docker.ai.license",
        ));
        assert!(no_weights.unwrap_err().contains("no weights layer"));
    }
}
