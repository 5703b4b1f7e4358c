//! DMR's model archive: the tar that `GET /models/{name}/export` writes and `POST /models/load` reads. It holds
//! `blobs/sha256/<hex>` for every layer and for the config, then `manifest.json`, the raw manifest, so a model's
//! id (the manifest's digest) survives the round trip. Writing is deterministic (fixed modes, zero mtimes).
//! Loading checks every blob against the digest its name gives, takes only the entries it knows (anything else,
//! `..` included, is skipped, never written), and commits the model only once the manifest's blobs are all
//! there, each with the size the manifest declares; `manifest.json` and the config are read under the
//! `max_manifest_bytes` cap; blobs the manifest does not name are not kept; a load that fails removes the blobs it
//! added, so the store is as it was. An export writes each tar header from the blob's real size.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use super::artifact::digest_hex;
use super::fsutil::{copy_hashed_from, io_err, remove_quietly};
use super::index::Index;
use super::pulled::{check_config, check_manifest, Artifact, ManifestInfo};
use super::{Model, Store, StoreError};

/// A load's progress: one blob's bytes, and all blob bytes read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadProgress {
    pub digest: String,
    pub size: u64,
    pub current: u64,
    pub done: u64,
}

/// Writes `artifact` as DMR's archive to `out`: the `blobs` and `blobs/sha256` directories, each layer once, the
/// config, then `manifest.json`.
pub fn write_archive(artifact: &Artifact, out: impl Write) -> Result<(), StoreError> {
    let mut tar = tar::Builder::new(out);
    let failed = |what: &str| {
        let what = what.to_string();
        move |e: io::Error| StoreError::Io {
            path: what.into(),
            source: e,
        }
    };
    // Fixed modes and zero mtimes: the same model always exports to the same bytes.
    let header = |kind: tar::EntryType, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        h.set_mtime(0);
        h.set_size(size);
        h
    };
    for dir in ["blobs", "blobs/sha256"] {
        tar.append_data(&mut header(tar::EntryType::Directory, 0), dir, io::empty())
            .map_err(failed(dir))?;
    }
    let file = |size: u64| header(tar::EntryType::Regular, size);
    let mut written = BTreeSet::new();
    for (digest, declared, path) in &artifact.layers {
        let Some(hex) = digest_hex(digest).filter(|_| written.insert(digest.clone())) else {
            continue;
        };
        let blob = File::open(path).map_err(io_err(path))?;
        // The header's size is the blob's own, never the manifest's: a manifest that disagrees would let the
        // blob's bytes be read as tar headers. Such a model is refused (before streaming, by `Store::artifact`).
        let size = blob.metadata().map_err(io_err(path))?.len();
        if size != *declared {
            return Err(StoreError::SizeMismatch {
                digest: digest.clone(),
                declared: *declared,
                actual: size,
            });
        }
        let name = format!("blobs/sha256/{hex}");
        let mut data = blob.take(size);
        tar.append_data(&mut file(size), &name, &mut data)
            .map_err(failed(&name))?;
    }
    if let Some(hex) = digest_hex(&artifact.config_digest) {
        let name = format!("blobs/sha256/{hex}");
        let config = &artifact.config_bytes[..];
        tar.append_data(&mut file(config.len() as u64), &name, config)
            .map_err(failed(&name))?;
    }
    let manifest = &artifact.manifest_bytes[..];
    tar.append_data(&mut file(manifest.len() as u64), "manifest.json", manifest)
        .map_err(failed("manifest.json"))?;
    tar.into_inner()
        .and_then(|mut out| out.flush())
        .map_err(failed("the archive's end"))
}

/// Whether `head` (a body's first bytes) begins with a tar header whose checksum is right: what tells a model
/// archive from a wrong upload before anything is read into the store.
pub fn starts_like_tar(head: &[u8]) -> bool {
    let Some(block) = head.get(..512) else {
        return false;
    };
    let header = tar::Header::from_byte_slice(block);
    header.cksum().is_ok_and(|sum| {
        let mut copy = header.clone();
        copy.set_cksum();
        copy.cksum().is_ok_and(|again| again == sum)
    })
}

/// What an archive entry is, by its name.
#[derive(Debug, PartialEq, Eq)]
enum Member {
    Manifest,
    /// A sha256 blob (its 64 lowercase hex digits).
    Blob(String),
    Other,
}

fn member(name: &str) -> Member {
    let name = name.strip_prefix("./").unwrap_or(name);
    if name == "manifest.json" {
        return Member::Manifest;
    }
    match name.strip_prefix("blobs/sha256/") {
        Some(hex)
            if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Member::Blob(hex.to_string())
        }
        _ => Member::Other,
    }
}

impl Store {
    /// Loads a model archive from `input` and commits it under `tag`, or untagged (known by its id, as DMR does)
    /// without one. Blobs already in the store are skipped, new ones are verified against their names.
    ///
    /// `manifest.json` and the config blob are read into memory only up to `max_manifest` bytes; a larger one is
    /// refused. Each layer's size in the manifest must be its blob's (an archive whose manifest lies is refused),
    /// and blobs the manifest does not name are not kept.
    pub fn load_archive(
        &self,
        input: impl Read,
        tag: Option<&str>,
        max_manifest: u64,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Model, StoreError> {
        let mut added = Vec::new();
        let mut protected = self.protect([]);
        let result = self.load_entries(
            input,
            tag,
            max_manifest,
            progress,
            &mut added,
            &mut protected,
        );
        drop(protected);
        // What the model does not name goes: everything added when the load failed, the extras when it worked.
        self.remove_unreferenced(&added);
        if result.is_err() {
            self.collect_orphans("a failed load");
        }
        result
    }

    fn load_entries(
        &self,
        input: impl Read,
        tag: Option<&str>,
        max_manifest: u64,
        progress: &mut dyn FnMut(LoadProgress),
        added: &mut Vec<String>,
        protected: &mut super::Protected,
    ) -> Result<Model, StoreError> {
        let not_a_model = StoreError::BadArchive;
        let read_err =
            |e: io::Error| not_a_model(format!("it does not read as a tar archive: {e}"));
        let mut archive = tar::Archive::new(input);
        let mut manifest: Option<(Vec<u8>, ManifestInfo)> = None;
        let mut done = 0u64;
        for entry in archive.entries().map_err(read_err)? {
            let mut entry = entry.map_err(read_err)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let size = entry.size();
            match member(&name) {
                Member::Other => continue,
                Member::Manifest => {
                    if manifest.is_some() {
                        return Err(not_a_model("it has two manifest.json entries".into()));
                    }
                    if size > max_manifest {
                        return Err(not_a_model(format!(
                            "manifest.json is {size} bytes (at most {max_manifest}, [registry] max_manifest_bytes)"
                        )));
                    }
                    let mut bytes = Vec::with_capacity(size as usize);
                    // The header's size bounds the entry's reader; the cap holds whatever the header says.
                    (&mut entry)
                        .take(max_manifest + 1)
                        .read_to_end(&mut bytes)
                        .map_err(read_err)?;
                    if bytes.len() as u64 != size {
                        return Err(not_a_model(format!(
                            "it ends inside manifest.json ({} of {size} bytes): cut short?",
                            bytes.len()
                        )));
                    }
                    let info = check_manifest(&bytes).map_err(not_a_model)?;
                    manifest = Some((bytes, info));
                }
                Member::Blob(hex) => {
                    let digest = format!("sha256:{hex}");
                    if let Some((_, info)) = &manifest {
                        // The manifest came first: a blob it does not name is skipped, one it names must have
                        // the size it gives.
                        match declared_size(info, &digest) {
                            None => continue,
                            Some(declared) if declared != size => {
                                return Err(size_lie(&digest, declared, size));
                            }
                            Some(_) => {}
                        }
                    }
                    protected.add(&digest);
                    if self.has_blob(&digest) {
                        done += size;
                        progress(LoadProgress {
                            digest,
                            size,
                            current: size,
                            done,
                        });
                        continue;
                    }
                    let before = done;
                    let mut report = |p: super::ImportProgress| {
                        progress(LoadProgress {
                            digest: digest.clone(),
                            size,
                            current: p.current,
                            done: before + p.current,
                        })
                    };
                    let (temp, actual, len) = copy_hashed_from(
                        &mut entry,
                        Path::new(&name),
                        &self.blob_dir(),
                        size,
                        &mut report,
                    )?;
                    if len != size {
                        return Err(not_a_model(format!(
                            "it ends inside {name} ({len} of {size} bytes): cut short?"
                        )));
                    }
                    if actual != hex {
                        return Err(StoreError::DigestMismatch {
                            path: name.into(),
                            expected: digest,
                            actual: format!("sha256:{actual}"),
                        });
                    }
                    if temp.persist_new(&self.blob_path(&hex))? {
                        added.push(digest);
                    }
                    done += size;
                }
            }
        }
        let (manifest, info) =
            manifest.ok_or_else(|| not_a_model("it has no manifest.json".into()))?;
        for layer in &info.layers {
            match self.has_blob_sized(&layer.digest, layer.size) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(not_a_model(format!(
                        "layer {} is neither in the archive nor in the store",
                        layer.digest
                    )))
                }
                Err(StoreError::SizeMismatch {
                    digest,
                    declared,
                    actual,
                }) => return Err(size_lie(&digest, declared, actual)),
                Err(e) => return Err(e),
            }
        }
        let config_path = digest_hex(&info.config_digest)
            .map(|hex| self.blob_path(hex))
            .filter(|p| p.is_file())
            .ok_or_else(|| {
                not_a_model(format!(
                    "its config blob {} is not in the archive",
                    info.config_digest
                ))
            })?;
        let config_size = fs::metadata(&config_path)
            .map_err(io_err(&config_path))?
            .len();
        if config_size > max_manifest {
            return Err(not_a_model(format!(
                "its config blob {} is {config_size} bytes (at most {max_manifest}, [registry] max_manifest_bytes)",
                info.config_digest
            )));
        }
        let config = fs::read(&config_path).map_err(io_err(&config_path))?;
        check_config(&info, &config).map_err(not_a_model)?;
        self.commit_artifact(tag, &manifest, &config, 0)
    }

    /// Removes the blobs in `digests` that no model in the index references and no operation in flight protects
    /// (what a load added that its model does not name).
    pub(super) fn remove_unreferenced(&self, digests: &[String]) {
        let _guard = self.lock();
        let Ok(index) = Index::load(&self.index_path()) else {
            return; // an unreadable index: leave the blobs rather than guess
        };
        for digest in digests {
            let used =
                index.models.iter().any(|m| m.files.contains(digest)) || self.is_protected(digest);
            if let Some(hex) = digest_hex(digest).filter(|_| !used) {
                remove_quietly(&self.blob_path(hex));
            }
        }
    }
}

/// The size `info` declares for blob `digest` (a layer or the config), if it names it.
fn declared_size(info: &ManifestInfo, digest: &str) -> Option<u64> {
    if info.config_digest == digest {
        return Some(info.config_size);
    }
    info.layers
        .iter()
        .find(|l| l.digest == digest)
        .map(|l| l.size)
}

fn size_lie(digest: &str, declared: u64, actual: u64) -> StoreError {
    StoreError::BadArchive(format!(
        "manifest.json declares blob {digest} as {declared} bytes, but the blob holds {actual} bytes"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_the_manifest_and_sha256_blobs_only() {
        let hex = "ab".repeat(32);
        assert_eq!(member("manifest.json"), Member::Manifest);
        assert_eq!(member("./manifest.json"), Member::Manifest);
        assert_eq!(
            member(&format!("blobs/sha256/{hex}")),
            Member::Blob(hex.clone())
        );
        assert_eq!(
            member(&format!("./blobs/sha256/{hex}")),
            Member::Blob(hex.clone())
        );
        for other in [
            format!("blobs/sha512/{hex}"),
            format!("blobs/sha256/{}", "AB".repeat(32)),
            format!("blobs/sha256/{hex}/x"),
            format!("blobs/sha256/../{hex}"),
            format!("../blobs/sha256/{hex}"),
            "blobs/sha256/abc".to_string(),
            "x/manifest.json".to_string(),
        ] {
            assert_eq!(member(&other), Member::Other, "{other}");
        }
    }
}
