//! Importing a GGUF file into the store: validate, stream into a content-addressed blob while
//! hashing, write the config blob and manifest, then move the tag in the index, rolling every
//! written file back if a later step fails. It must not know how files are made durable (that
//! is `fsutil`) or how the index and artifacts are encoded (`index`, `artifact`).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::artifact::{self, sha256_hex};
use super::fsutil::{self, io_err, remove_quietly, write_new};
use super::index::{Entry, Index, Source};
use super::name::{self, NameError};
use super::{gguf, GgufExtras, ImportProgress, Model, Store, StoreError};

impl Store {
    /// Imports the GGUF file `src` under `tag` (normalised): validates the GGUF header, streams
    /// the file into a blob while hashing it, writes the config blob and manifest, then moves
    /// the tag to the new model in `models.json` (a model left without tags is deleted). A file
    /// already imported from the same path, size and mtime with this tag is returned without
    /// re-hashing. On error nothing visible in the store changes.
    pub fn import_gguf(
        &self,
        src: &Path,
        tag: &str,
        progress: &mut dyn FnMut(ImportProgress),
    ) -> Result<Model, StoreError> {
        self.package_gguf(src, tag, GgufExtras::default(), progress)
    }

    /// [`import_gguf`](Self::import_gguf) with DMR's optional extra layers: a license file, a chat template and a
    /// multimodal projector, packaged as `application/vnd.docker.ai.license`, `…chat.template.jinja` and `…mmproj`
    /// after the weights, so that the artifact is one DMR itself would pull. The projector must be a GGUF file.
    pub fn package_gguf(
        &self,
        src: &Path,
        tag: &str,
        extras: GgufExtras<'_>,
        progress: &mut dyn FnMut(ImportProgress),
    ) -> Result<Model, StoreError> {
        if let Some(mmproj) = extras.mmproj {
            gguf::read_file(mmproj).map_err(|source| StoreError::Gguf {
                path: mmproj.to_path_buf(),
                source,
            })?;
        }
        let extras: Vec<(&Path, &'static str)> = [
            (extras.license, artifact::LICENSE_MEDIA_TYPE),
            (extras.chat_template, artifact::CHAT_TEMPLATE_MEDIA_TYPE),
            (extras.mmproj, artifact::MMPROJ_MEDIA_TYPE),
        ]
        .into_iter()
        .filter_map(|(p, media)| p.map(|p| (p, media)))
        .collect();
        let tag = name::normalize(tag)?;
        if tag.contains('@') {
            return Err(NameError::NotATag(tag).into());
        }
        let src = fs::canonicalize(src).map_err(io_err(src))?;
        let source = source_of(&src)?;
        let cached = if extras.is_empty() {
            self.cached_import(&source, &tag)?
        } else {
            None
        };
        if let Some(model) = cached {
            let (total, digest) = (source.size, model.files.first().cloned());
            progress(ImportProgress {
                digest,
                total,
                current: total,
            });
            return Ok(model);
        }
        let info = gguf::read_file(&src).map_err(|source| StoreError::Gguf {
            path: src.clone(),
            source,
        })?;
        let (temp, hex, len) = fsutil::copy_hashed(&src, &self.blob_dir(), source.size, progress)?;
        if len != source.size || source_of(&src)? != source {
            return Err(StoreError::SourceChanged { path: src });
        }
        let weights = format!("sha256:{hex}");
        let mut extra_temps = Vec::new();
        let mut layers: Vec<(&str, String, u64)> =
            vec![(artifact::GGUF_MEDIA_TYPE, weights.clone(), len)];
        for (path, media) in &extras {
            let size = fs::metadata(path).map_err(io_err(path))?.len();
            let (temp, hex, n) = fsutil::copy_hashed(path, &self.blob_dir(), size, progress)?;
            layers.push((media, format!("sha256:{hex}"), n));
            extra_temps.push((temp, hex));
        }
        let config = artifact::model_config(&info, len);
        let diff_ids: Vec<String> = layers.iter().map(|(_, d, _)| d.clone()).collect();
        let config_bytes = artifact::config_bytes_for(&config, &diff_ids, source.mtime);
        let config_hex = sha256_hex(&config_bytes);
        let config_digest = format!("sha256:{config_hex}");
        let config_len = config_bytes.len() as u64;
        let layer_refs: Vec<(&str, &str, u64)> = layers
            .iter()
            .map(|(m, d, n)| (*m, d.as_str(), *n))
            .collect();
        let manifest = artifact::manifest_bytes_with((&config_digest, config_len), &layer_refs);
        let id_hex = sha256_hex(&manifest);
        let id = format!("sha256:{id_hex}");
        let mut files = diff_ids.clone();
        files.push(config_digest.clone());
        files.dedup();
        let entry = Entry {
            id: id.clone(),
            tags: vec![tag.clone()],
            files,
            created: source.mtime,
            // Only a plain import is found again by its source file.
            source: extras.is_empty().then_some(source),
        };

        let mut blobs = vec![(temp, hex.clone())];
        blobs.extend(extra_temps);
        let entry = self.commit(entry, Some(&tag), |created| {
            self.write_artifact(
                created,
                blobs,
                (&config_hex, &config_bytes),
                (&id_hex, &manifest),
                None,
            )
        })?;
        let layer_blob = |media_type: &str| {
            layers
                .iter()
                .find(|(media, _, _)| *media == media_type)
                .and_then(|(_, digest, _)| artifact::digest_hex(digest))
                .map(|hex| self.blob_path(hex))
        };
        Ok(Model {
            id,
            tags: entry.tags,
            created: entry.created,
            config,
            format: super::ModelFormat::Gguf,
            weights: self.blob_path(&hex),
            files: entry.files,
            chat_template: layer_blob(artifact::CHAT_TEMPLATE_MEDIA_TYPE),
            mmproj: layer_blob(artifact::MMPROJ_MEDIA_TYPE),
        })
    }

    /// Writes a model's files, recording each one it creates in `created` (for `commit` to roll back): the
    /// downloaded or copied `blobs` (temp files named by their hex digest), the config blob, the runtime bundle for
    /// a one-layer-per-file `bundle` manifest, and the manifest itself. Files already there are left as they are.
    pub(super) fn write_artifact(
        &self,
        created: &mut Vec<PathBuf>,
        blobs: Vec<(fsutil::TempFile, String)>,
        (config_hex, config_bytes): (&str, &[u8]),
        (id_hex, manifest_bytes): (&str, &[u8]),
        bundle: Option<&super::artifact::Manifest>,
    ) -> Result<(), StoreError> {
        for (temp, hex) in blobs {
            let path = self.blob_path(&hex);
            if temp.persist_new(&path)? {
                created.push(path);
            }
        }
        let config_path = self.blob_path(config_hex);
        if write_new(&config_path, config_bytes)? {
            created.push(config_path);
        }
        if let Some(manifest) = bundle {
            if let Some(dir) = self.make_bundle(id_hex, manifest)? {
                created.push(dir);
            }
        }
        let manifest_path = self.manifest_path(id_hex);
        if write_new(&manifest_path, manifest_bytes)? {
            created.push(manifest_path);
        }
        Ok(())
    }

    /// Writes a new model's files with `write` (which records each file or directory it created), then moves
    /// `tag` to the model in the index (a model left without tags is deleted); without a tag the model is added
    /// untagged (a loaded archive), known by its id. On any error everything recorded is
    /// removed, so the store is as it was. Returns the model's entry as the index now holds it.
    pub(super) fn commit(
        &self,
        mut entry: Entry,
        tag: Option<&str>,
        write: impl FnOnce(&mut Vec<PathBuf>) -> Result<(), StoreError>,
    ) -> Result<Entry, StoreError> {
        let mut cache = self.lock();
        // Whatever happens below, the next read goes back to disk.
        cache.invalidate();
        let mut created = Vec::new();
        let result = (|| -> Result<(Index, Vec<Entry>), StoreError> {
            write(&mut created)?;
            let mut index = Index::load(&self.index_path())?;
            let orphans = match tag {
                Some(tag) => index.take_tag(tag, Some(&entry.id)),
                None => Vec::new(),
            };
            if let Some(i) = index.position_of_id(&entry.id) {
                let existing = &mut index.models[i];
                if let Some(tag) = tag.filter(|t| !existing.tags.iter().any(|e| e == t)) {
                    existing.tags.push(tag.to_string());
                }
                if entry.source.is_some() {
                    existing.source = entry.source.take();
                }
                entry = existing.clone();
            } else {
                index.models.push(entry.clone());
            }
            index.save(&self.index_path())?;
            Ok((index, orphans))
        })();
        let (index, orphans) = match result {
            Ok(done) => done,
            Err(e) => {
                created.iter().rev().for_each(|p| remove_quietly(p));
                return Err(e);
            }
        };
        self.collect_garbage(&index, &orphans);
        Ok(entry)
    }

    /// A fast-path hit: a model imported from this very file (same path, size, mtime) that
    /// already carries `tag` and whose files are intact.
    pub(super) fn cached_import(
        &self,
        source: &Source,
        tag: &str,
    ) -> Result<Option<Model>, StoreError> {
        let _guard = self.lock();
        let index = Index::load(&self.index_path())?;
        let hit = index
            .models
            .iter()
            .find(|m| m.source.as_ref() == Some(source) && m.tags.iter().any(|t| t == tag));
        Ok(hit.and_then(|entry| self.load_model(entry).ok()))
    }
}

/// The identity of a source file for the re-import fast path.
pub(super) fn source_of(path: &Path) -> Result<Source, StoreError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(StoreError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let modified = meta.modified().map_err(io_err(path))?;
    let (mtime, mtime_nsec) = match modified.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => (
            -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
            e.duration().subsec_nanos(),
        ),
    };
    Ok(Source {
        path: path.to_string_lossy().into_owned(),
        size: meta.len(),
        mtime,
        mtime_nsec,
    })
}
