//! Importing a model made of files — a safetensors directory, a diffusers pipeline directory or one `.dduf` file —
//! as DMR packages them: one layer per file, annotated with its path (config v0.2). Each file is streamed into a
//! content-addressed blob while hashing it; then the config blob, the manifest and the runtime *bundle* (a
//! directory of hard links to the blobs under their original paths, which is what an engine is given) are
//! written, and the tag moves in the index — all rolled back if a step fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::artifact::{self, sha256_hex, FileLayer, Manifest};
use super::format::{self, ModelFormat};
use super::fsutil::{self, io_err, remove_quietly, TEMP_PREFIX};
use super::index::{Entry, Source};
use super::name::{self, NameError};
use super::{gguf, ImportProgress, Model, Store, StoreError};

impl Store {
    /// Imports whatever `src` holds under `tag`: a GGUF file, a safetensors or diffusers directory, or a `.dduf`
    /// file (see [`format::detect`]). On error nothing visible in the store changes.
    pub fn import(
        &self,
        src: &Path,
        tag: &str,
        progress: &mut dyn FnMut(ImportProgress),
    ) -> Result<Model, StoreError> {
        match format::detect(src)? {
            ModelFormat::Gguf => self.import_gguf(src, tag, progress),
            other => self.import_files(src, other, tag, progress),
        }
    }

    fn import_files(
        &self,
        src: &Path,
        format: ModelFormat,
        tag: &str,
        progress: &mut dyn FnMut(ImportProgress),
    ) -> Result<Model, StoreError> {
        let tag = name::normalize(tag)?;
        if tag.contains('@') {
            return Err(NameError::NotATag(tag).into());
        }
        let src = fs::canonicalize(src).map_err(io_err(src))?;
        let (root, files) = if format == ModelFormat::Dduf {
            let name = PathBuf::from(src.file_name().unwrap_or_default());
            (
                src.parent().unwrap_or(Path::new("/")).to_path_buf(),
                vec![(name, src.clone())],
            )
        } else {
            (src.clone(), format::list_files(&src)?)
        };
        let mut layers_paths = Vec::with_capacity(files.len());
        for (rel, _) in &files {
            match rel.to_str().filter(|r| format::safe_relative(r)) {
                Some(r) => layers_paths.push(r.to_string()),
                None => {
                    return Err(StoreError::NotAModel {
                        path: src.clone(),
                        detail: format!("file name {} is not valid UTF-8", rel.display()),
                    })
                }
            }
        }
        let source = source_of_files(&src, &files)?;
        if let Some(model) = self.cached_import(&source, &tag)? {
            progress(ImportProgress {
                digest: Some(model.id.clone()),
                total: source.size,
                current: source.size,
            });
            return Ok(model);
        }
        let described = format::describe(format, &root, &files)?;

        let mut temps = Vec::with_capacity(files.len());
        let mut layers = Vec::with_capacity(files.len());
        for ((_, abs), path) in files.iter().zip(layers_paths) {
            let size = fs::metadata(abs).map_err(io_err(abs))?.len();
            let (temp, hex, len) = fsutil::copy_hashed(abs, &self.blob_dir(), size, progress)?;
            temps.push((temp, hex.clone()));
            layers.push(FileLayer {
                path,
                digest: format!("sha256:{hex}"),
                size: len,
            });
        }
        if source_of_files(&src, &files)? != source {
            return Err(StoreError::SourceChanged { path: src });
        }
        let total: u64 = layers.iter().map(|l| l.size).sum();
        let mut config = artifact::ModelConfig {
            format: format.as_str().to_string(),
            parameters: if described.parameters > 0 {
                gguf::format_parameters(described.parameters)
            } else {
                String::new()
            },
            architecture: described.architecture,
            size: gguf::format_size(total),
            context_size: described
                .context_length
                .filter(|c| (1..=i32::MAX as u64).contains(c)),
            ..Default::default()
        };
        match format {
            ModelFormat::Safetensors => config.safetensors = described.metadata,
            _ => config.diffusers = described.metadata,
        }
        let diff_ids: Vec<String> = layers.iter().map(|l| l.digest.clone()).collect();
        let config_bytes = artifact::config_bytes_for(&config, &diff_ids, source.mtime);
        let config_hex = sha256_hex(&config_bytes);
        let config_digest = format!("sha256:{config_hex}");
        let manifest_bytes = artifact::manifest_bytes_for_files(
            (&config_digest, config_bytes.len() as u64),
            &layers,
        );
        let id_hex = sha256_hex(&manifest_bytes);
        let mut owned: Vec<String> = diff_ids.clone();
        owned.push(config_digest.clone());
        owned.dedup();
        let entry = Entry {
            id: format!("sha256:{id_hex}"),
            tags: vec![tag.clone()],
            files: owned,
            created: source.mtime,
            source: Some(source),
        };
        // Invariant: just serialised from this very type.
        let manifest: Manifest =
            serde_json::from_slice(&manifest_bytes).expect("own manifest parses");
        let entry = self.commit(entry, Some(&tag), |created| {
            self.write_artifact(
                created,
                temps,
                (&config_hex, &config_bytes),
                (&id_hex, &manifest_bytes),
                Some(&manifest),
            )
        })?;
        self.load_model(&entry)
    }

    /// `bundles/sha256/<id>/`: `model/<path>` hard links to each layer's blob, built in a temp directory and
    /// renamed into place. Returns the directory when it created it (`None`: it was already there).
    pub(super) fn make_bundle(
        &self,
        id_hex: &str,
        manifest: &Manifest,
    ) -> Result<Option<PathBuf>, StoreError> {
        let bundles = self.bundle_dir();
        let target = bundles.join(id_hex);
        if target.join("model").is_dir() {
            return Ok(None);
        }
        fs::create_dir_all(&bundles).map_err(io_err(&bundles))?;
        let temp = bundles.join(format!("{TEMP_PREFIX}{id_hex}-{}", std::process::id()));
        remove_quietly(&temp);
        let build = || -> Result<(), StoreError> {
            for layer in &manifest.layers {
                let rel = layer
                    .filepath()
                    .filter(|p| format::safe_relative(p))
                    .ok_or_else(|| StoreError::Corrupt {
                        path: self.manifest_path(id_hex),
                        detail: format!("layer {} has no safe file path", layer.digest),
                        source: None,
                    })?;
                let hex =
                    artifact::digest_hex(&layer.digest).ok_or_else(|| StoreError::Corrupt {
                        path: self.manifest_path(id_hex),
                        detail: "bad layer digest".into(),
                        source: None,
                    })?;
                let link = temp.join("model").join(rel);
                let dir = link.parent().unwrap_or(&temp);
                fs::create_dir_all(dir).map_err(io_err(dir))?;
                let blob = self.blob_path(hex);
                if fs::hard_link(&blob, &link).is_err() {
                    std::os::unix::fs::symlink(&blob, &link).map_err(io_err(&link))?;
                }
            }
            fs::rename(&temp, &target).map_err(io_err(&target))?;
            fsutil::sync_dir(&bundles)
        };
        match build() {
            Ok(()) => Ok(Some(target)),
            Err(e) => {
                remove_quietly(&temp);
                Err(e)
            }
        }
    }
}

/// The identity of a set of files for the re-import fast path: the source path, their total size and the
/// newest modification time.
fn source_of_files(src: &Path, files: &[(PathBuf, PathBuf)]) -> Result<Source, StoreError> {
    let (mut size, mut newest) = (0u64, (i64::MIN, 0u32));
    for (_, abs) in files {
        let meta = fs::metadata(abs).map_err(io_err(abs))?;
        size += meta.len();
        let t = meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
            .map_or((0, 0), |d| (d.as_secs() as i64, d.subsec_nanos()));
        newest = newest.max(t);
    }
    Ok(Source {
        path: src.to_string_lossy().into_owned(),
        size,
        mtime: newest.0.max(0),
        mtime_nsec: newest.1,
    })
}
