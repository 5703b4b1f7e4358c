//! The content-addressed model store, laid out on disk like Docker Model Runner's
//! (`layout.json`, `models.json`, `blobs/sha256/<hex>`, `manifests/sha256/<hex>`). It owns
//! importing GGUF files as OCI-style model artifacts, resolving references to models, tagging
//! and deleting, and keeping every change crash-safe and all-or-nothing. It is synchronous
//! `std::fs` code (the server calls it from `spawn_blocking`) and must not know about HTTP,
//! engines, scheduling or how a model is run.

pub mod archive;
pub mod format;
pub mod gguf;
pub mod name;
pub mod pulled;
pub mod sources;

mod artifact;
mod create;
mod fsutil;
mod gc;
mod import;
mod import_files;
mod index;
mod repackage;
mod runtime;

pub use create::{Base, Recipe};
pub use format::ModelFormat;
pub use gc::{Collected, Protected};
pub use runtime::{RuntimeConfig, Speculative};

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use thiserror::Error;

use artifact::{digest_hex, sha256_digest, ConfigFile, Manifest};
pub use artifact::{rfc3339, rfc3339_at, ModelConfig, MMPROJ_MEDIA_TYPE};
use fsutil::{io_err, remove_quietly, remove_temps, sync_dir, write_new};
use gguf::GgufError;
use index::{Entry, Index};
use name::{NameError, Reference};

const LAYOUT_VERSION: &str = "1.0.0";

/// Why a store operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("model {0:?} not found")]
    NotFound(String),
    #[error("invalid model reference: {0}")]
    BadName(#[from] NameError),
    #[error("model id prefix {prefix:?} is ambiguous: it matches {count} models")]
    Ambiguous { prefix: String, count: usize },
    #[error("{0}")]
    Conflict(String),
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path} is not a usable GGUF file: {source}")]
    Gguf { path: PathBuf, source: GgufError },
    #[error("{path} is not a model: {detail}")]
    NotAModel { path: PathBuf, detail: String },
    #[error("not a usable model archive: {0}")]
    BadArchive(String),
    #[error("source file {path} changed while it was being imported")]
    SourceChanged { path: PathBuf },
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("corrupt model store file {path}: {detail}")]
    Corrupt {
        path: PathBuf,
        detail: String,
        source: Option<serde_json::Error>,
    },
    #[error("blob {digest} is declared as {declared} bytes but holds {actual} bytes")]
    SizeMismatch {
        digest: String,
        declared: u64,
        actual: u64,
    },
    #[error("the blob is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{path} has digest {actual}, expected {expected}")]
    DigestMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

/// A model in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// `sha256:<hex>` of the manifest.
    pub id: String,
    pub tags: Vec<String>,
    /// Unix seconds (the source file's mtime for imports; 0 when unknown).
    pub created: i64,
    pub config: ModelConfig,
    pub format: ModelFormat,
    /// What the engine is given: the GGUF weights blob, the bundle's `model/` directory (safetensors, diffusers),
    /// or the `.dduf` file in it.
    pub weights: PathBuf,
    /// The blob digests the model owns (weights and config).
    pub files: Vec<String>,
    /// A GGUF model's packaged chat template (DMR's `…chat.template.jinja` layer), given to llama-server as
    /// `--chat-template-file` in place of the one in the GGUF's metadata.
    pub chat_template: Option<PathBuf>,
    /// A GGUF model's multimodal projector (DMR's `…mmproj` layer): a vision model's image encoder, given to
    /// llama-server as `--mmproj`. A model with one accepts images in chat.
    pub mmproj: Option<PathBuf>,
}

impl Model {
    /// Whether the model accepts images in chat (it has a multimodal projector).
    pub fn vision(&self) -> bool {
        self.mmproj.is_some()
    }
}

/// The optional layers packaged with a GGUF's weights (`package_gguf`), each a file to copy into the store.
#[derive(Debug, Clone, Copy, Default)]
pub struct GgufExtras<'a> {
    pub license: Option<&'a Path>,
    pub chat_template: Option<&'a Path>,
    pub mmproj: Option<&'a Path>,
}

impl GgufExtras<'_> {
    pub fn is_empty(&self) -> bool {
        self.license.is_none() && self.chat_template.is_none() && self.mmproj.is_none()
    }
}

/// Import progress: `digest` is set on the final report, once the content hash is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportProgress {
    pub digest: Option<String>,
    pub total: u64,
    pub current: u64,
}

/// One effect of a delete (DMR answers `[{"Untagged":"…"},{"Deleted":"sha256:…"}]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    Untagged(String),
    Deleted(String),
}

/// The store rooted at one directory. Index changes are serialised by an in-process lock; one
/// process should own a store directory at a time.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    lock: Mutex<Cache>,
    /// Blobs that pulls and loads in flight may commit, kept from the garbage collector.
    pending: gc::Pending,
}

/// What `get` serves from memory: the parsed index and the models already loaded from it. Inference requests
/// resolve their model on every call, so this keeps disk reads and digest checks off that path. Every write
/// clears it (under the same lock), so it is never stale within this process.
#[derive(Debug, Default)]
struct Cache {
    index: Option<Index>,
    /// Models by id, shared with the callers of `get_shared` (the request path: no copy per request).
    models: std::collections::HashMap<String, Arc<Model>>,
    /// `runtime-configs.json`, parsed (read per request by `settings_for`).
    runtime: Option<Vec<RuntimeConfig>>,
}

impl Cache {
    fn index(&mut self, path: &Path) -> Result<&Index, StoreError> {
        if self.index.is_none() {
            self.index = Some(Index::load(path)?);
        }
        // Just filled above when it was empty.
        Ok(self.index.get_or_insert_with(Index::default))
    }

    fn invalidate(&mut self) {
        self.index = None;
        self.models.clear();
        self.runtime = None;
    }
}

impl Store {
    /// Opens the store at `root`, creating the layout if missing and sweeping temp files left by
    /// a crash. A `models.json` or `layout.json` that does not parse is an error, never reset.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for dir in [
            root.join("blobs/sha256"),
            root.join("manifests/sha256"),
            root.join("uploads/sha256"),
        ] {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        let root = fs::canonicalize(root).map_err(io_err(root))?;
        let store = Store {
            root,
            lock: Mutex::new(Cache::default()),
            pending: gc::Pending::default(),
        };
        let bundles = store.bundle_dir();
        if bundles.is_dir() {
            // Bundles being built when the process died.
            for entry in fs::read_dir(&bundles).map_err(io_err(&bundles))?.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(fsutil::TEMP_PREFIX)
                {
                    remove_quietly(&entry.path());
                }
            }
        }
        // Downloads a pull left behind are kept for the next pull to resume, for a week (as DMR does).
        let week = std::time::Duration::from_secs(7 * 24 * 3600);
        for entry in fs::read_dir(store.blob_dir())
            .map_err(io_err(&store.blob_dir()))?
            .flatten()
        {
            let stale = entry.file_name().to_string_lossy().ends_with(".incomplete")
                && entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > week);
            if stale {
                tracing::info!(file = %entry.path().display(), "removing a download older than a week");
                remove_quietly(&entry.path());
            }
        }
        // Uploads (Ollama's `/api/blobs`) that no create used within a week go too.
        for entry in fs::read_dir(store.upload_dir())
            .map_err(io_err(&store.upload_dir()))?
            .flatten()
        {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > week);
            if stale {
                tracing::info!(file = %entry.path().display(), "removing an upload older than a week");
                remove_quietly(&entry.path());
            }
        }
        for dir in [
            store.root.clone(),
            store.blob_dir(),
            store.manifest_dir(),
            store.upload_dir(),
        ] {
            let n = remove_temps(&dir)?;
            if n > 0 {
                tracing::info!(dir = %dir.display(), removed = n, "removed leftover temp files");
            }
        }
        let layout = store.root.join("layout.json");
        let want = format!(r#"{{"version":"{LAYOUT_VERSION}"}}"#);
        if !write_new(&layout, want.as_bytes())? {
            let bytes = fs::read(&layout).map_err(io_err(&layout))?;
            let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&bytes);
            let version = parsed
                .as_ref()
                .ok()
                .and_then(|v| v.get("version")?.as_str());
            if version != Some(LAYOUT_VERSION) {
                return Err(StoreError::Corrupt {
                    path: layout,
                    detail: format!("expected store layout version {LAYOUT_VERSION}"),
                    source: parsed.err(),
                });
            }
        }
        let index = store.index_path();
        if index.try_exists().map_err(io_err(&index))? {
            Index::load(&index)?;
        } else {
            Index::default().save(&index)?;
        }
        Ok(store)
    }

    /// The store's canonical root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `message` with the store's own directory written `<store>`: an error a caller sees names files in the
    /// store, never where the store lies on the server (the log keeps the whole path).
    pub fn redact(&self, message: &str) -> String {
        message.replace(&*self.root.to_string_lossy(), "<store>")
    }

    /// Every model, in index order. An entry whose files are damaged is logged and skipped.
    pub fn list(&self) -> Result<Vec<Model>, StoreError> {
        let _guard = self.lock();
        let index = Index::load(&self.index_path())?;
        let load = |entry: &Entry| match self.load_model(entry) {
            Ok(model) => Some(model),
            Err(e) => {
                tracing::warn!(id = %entry.id, error = %e, "skipping damaged model");
                None
            }
        };
        Ok(index.models.iter().filter_map(load).collect())
    }

    /// The model `reference` names: a tag (normalised), a full id or a unique id prefix.
    pub fn get(&self, reference: &str) -> Result<Model, StoreError> {
        self.get_shared(reference).map(|m| (*m).clone())
    }

    /// [`Store::get`], without copying the model: what the request path uses.
    pub fn get_shared(&self, given: &str) -> Result<Arc<Model>, StoreError> {
        let reference = name::parse_reference(given)?;
        let mut guard = self.lock();
        guard.index(&self.index_path())?;
        let cache = &mut *guard;
        let Some(index) = cache.index.as_ref() else {
            return Err(StoreError::NotFound(given.to_string())); // loaded just above
        };
        let entry = &index.models[index.resolve(&reference)?];
        if let Some(model) = cache.models.get(&entry.id) {
            return Ok(model.clone());
        }
        let entry = entry.clone();
        let model = Arc::new(self.load_model(&entry)?);
        guard.models.insert(entry.id.clone(), model.clone());
        Ok(model)
    }

    /// Deletes by tag (untag; the model goes when its last tag does) or by id (all its tags go;
    /// more than one needs `force`, else `Conflict`).
    pub fn delete(&self, reference: &str, force: bool) -> Result<Vec<Removed>, StoreError> {
        let reference = name::parse_reference(reference)?;
        let mut cache = self.lock();
        cache.invalidate();
        let mut index = Index::load(&self.index_path())?;
        let i = index.resolve(&reference)?;
        let mut removed = Vec::new();
        let orphans = match &reference {
            Reference::Tag(tag) if !tag.contains('@') => {
                removed.push(Removed::Untagged(tag.clone()));
                index.take_tag(tag, None)
            }
            _ => {
                let entry = &index.models[i];
                if entry.tags.len() > 1 && !force {
                    return Err(StoreError::Conflict(format!(
                        "model {} is tagged {}; delete a tag, or force the delete",
                        entry.id,
                        entry.tags.join(", ")
                    )));
                }
                removed.extend(entry.tags.iter().cloned().map(Removed::Untagged));
                vec![index.models.remove(i)]
            }
        };
        removed.extend(orphans.iter().map(|o| Removed::Deleted(o.id.clone())));
        index.save(&self.index_path())?;
        self.collect_garbage(&index, &orphans);
        self.prune_runtime_configs(&orphans.iter().map(|o| o.id.clone()).collect::<Vec<_>>());
        Ok(removed)
    }

    /// Deletes every model and every download left behind (DMR's purge): the store is left empty.
    pub fn purge(&self) -> Result<Vec<Removed>, StoreError> {
        let mut cache = self.lock();
        cache.invalidate();
        let mut index = Index::load(&self.index_path())?;
        let gone = std::mem::take(&mut index.models);
        index.save(&self.index_path())?;
        self.collect_garbage(&index, &gone);
        self.prune_runtime_configs(&gone.iter().map(|e| e.id.clone()).collect::<Vec<_>>());
        let blobs = self.blob_dir();
        for entry in fs::read_dir(&blobs).map_err(io_err(&blobs))?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".incomplete") {
                remove_quietly(&entry.path());
            }
        }
        // Uploads no model has used yet (Ollama's `/api/blobs`).
        let uploads = self.upload_dir();
        for entry in fs::read_dir(&uploads).map_err(io_err(&uploads))?.flatten() {
            remove_quietly(&entry.path());
        }
        Ok(gone
            .into_iter()
            .flat_map(|e| {
                let untagged = e.tags.into_iter().map(Removed::Untagged);
                untagged.chain(std::iter::once(Removed::Deleted(e.id)))
            })
            .collect())
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        // The cache is only ever filled from disk or cleared, so a panic elsewhere cannot leave it wrong.
        self.lock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Deletes the manifests and blobs of `orphans` that `index` no longer references (and any
    /// runtime bundle). Failures are logged: the index is already consistent.
    fn collect_garbage(&self, index: &Index, orphans: &[Entry]) {
        for orphan in orphans {
            let Some(id_hex) = digest_hex(&orphan.id) else {
                continue;
            };
            if index.position_of_id(&orphan.id).is_none() {
                remove_quietly(&self.manifest_path(id_hex));
                remove_quietly(&self.bundle_dir().join(id_hex));
            }
            for file in index.unreferenced(orphan) {
                if let Some(hex) = digest_hex(file) {
                    remove_quietly(&self.blob_path(hex));
                }
            }
        }
        if !orphans.is_empty() {
            for dir in [self.blob_dir(), self.manifest_dir()] {
                if let Err(e) = sync_dir(&dir) {
                    tracing::warn!(error = %e, "cannot sync store directory");
                }
            }
        }
    }

    fn load_model(&self, entry: &Entry) -> Result<Model, StoreError> {
        let index_path = self.index_path();
        let id_hex = digest_hex(&entry.id).ok_or_else(|| corrupt(&index_path, "bad model id"))?;
        let manifest_path = self.manifest_path(id_hex);
        let manifest: Manifest = self.read_verified(&manifest_path, &entry.id)?;
        let config_hex = digest_hex(&manifest.config.digest)
            .ok_or_else(|| corrupt(&manifest_path, "bad config digest"))?;
        let config: ConfigFile =
            self.read_verified(&self.blob_path(config_hex), &manifest.config.digest)?;
        let format = ModelFormat::parse(&config.config.format).ok_or_else(|| {
            corrupt(
                &manifest_path,
                &format!("unknown model format {:?}", config.config.format),
            )
        })?;
        let (chat_template, mmproj) = if format == ModelFormat::Gguf {
            (
                self.layer_blob(&manifest, artifact::CHAT_TEMPLATE_MEDIA_TYPE),
                self.layer_blob(&manifest, artifact::MMPROJ_MEDIA_TYPE),
            )
        } else {
            (None, None)
        };
        let weights = if format == ModelFormat::Gguf {
            let layer = manifest
                .weights()
                .ok_or_else(|| corrupt(&manifest_path, "no GGUF layer"))?;
            let weights_hex = digest_hex(&layer.digest)
                .ok_or_else(|| corrupt(&manifest_path, "bad layer digest"))?;
            let weights = self.blob_path(weights_hex);
            if !weights.is_file() {
                return Err(corrupt(&weights, "weights blob is missing"));
            }
            weights
        } else {
            // The bundle is rebuilt from the blobs if it went missing.
            self.make_bundle(id_hex, &manifest)?;
            let model_dir = self.bundle_dir().join(id_hex).join("model");
            match format {
                ModelFormat::Dduf => manifest
                    .layers
                    .iter()
                    .filter_map(|l| l.filepath())
                    .find(|p| p.ends_with(".dduf"))
                    .map(|p| model_dir.join(p))
                    .ok_or_else(|| corrupt(&manifest_path, "no .dduf layer"))?,
                _ => model_dir,
            }
        };
        Ok(Model {
            id: entry.id.clone(),
            tags: entry.tags.clone(),
            created: entry.created,
            config: config.config,
            format,
            weights,
            files: entry.files.clone(),
            chat_template,
            mmproj,
        })
    }

    /// The blob of a manifest's layer of `media_type` (a chat template, a projector), if it has one and the blob
    /// is there.
    fn layer_blob(&self, manifest: &Manifest, media_type: &str) -> Option<PathBuf> {
        manifest
            .layers
            .iter()
            .find(|l| l.media_type == media_type)
            .and_then(|l| digest_hex(&l.digest))
            .map(|hex| self.blob_path(hex))
            .filter(|p| p.is_file())
    }

    /// Reads a small JSON document, checks that it hashes to `digest`, and parses it.
    fn read_verified<T: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
        digest: &str,
    ) -> Result<T, StoreError> {
        let bytes = fs::read(path).map_err(io_err(path))?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            let (path, expected) = (path.to_path_buf(), digest.to_string());
            return Err(StoreError::DigestMismatch {
                path,
                expected,
                actual,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: "does not parse".to_string(),
            source: Some(e),
        })
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("models.json")
    }

    fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    fn bundle_dir(&self) -> PathBuf {
        self.root.join("bundles/sha256")
    }

    /// The bytes a model's blobs take on disk (what an engine loads, for a memory estimate); blobs that are
    /// missing count nothing.
    pub fn files_size(&self, model: &Model) -> u64 {
        model
            .files
            .iter()
            .filter_map(|d| d.strip_prefix("sha256:"))
            .filter_map(|hex| fs::metadata(self.blob_path(hex)).ok())
            .map(|m| m.len())
            .sum()
    }

    fn manifest_dir(&self) -> PathBuf {
        self.root.join("manifests/sha256")
    }

    fn blob_path(&self, hex: &str) -> PathBuf {
        self.blob_dir().join(hex)
    }

    fn manifest_path(&self, hex: &str) -> PathBuf {
        self.manifest_dir().join(hex)
    }
}

fn corrupt(path: &Path, detail: &str) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: detail.to_string(),
        source: None,
    }
}

#[cfg(test)]
mod tests;
