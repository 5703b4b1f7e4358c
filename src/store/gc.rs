//! The store's blob garbage collector: removes blobs in `blobs/sha256` that no model names (neither an index entry
//! nor a manifest file), the leftovers of a refused pull or load. Blobs an operation in flight is about to commit
//! are protected: a pull or load registers their digests (`Store::protect`) before any of them can appear, and the
//! guard unregisters them when it is dropped, after the commit or the failure. `.incomplete` downloads (kept for
//! resuming) and temp files are never touched. It must not know who calls it or when.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::sync::{Arc, Mutex, PoisonError};

use super::artifact::Manifest;
use super::fsutil::{io_err, remove_quietly, sync_dir};
use super::index::Index;
use super::{Store, StoreError};

/// Digests that operations in flight may commit, each with the number of operations that protect it.
pub(super) type Pending = Arc<Mutex<HashMap<String, usize>>>;

/// Keeps its digests from the garbage collector until dropped.
#[derive(Debug)]
pub struct Protected {
    pending: Pending,
    digests: Vec<String>,
}

impl Protected {
    /// Protects one more digest (a blob found in an archive as it is read).
    pub fn add(&mut self, digest: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        *pending.entry(digest.to_string()).or_default() += 1;
        self.digests.push(digest.to_string());
    }
}

impl Drop for Protected {
    fn drop(&mut self) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for d in &self.digests {
            if let Some(n) = pending.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    pending.remove(d);
                }
            }
        }
    }
}

/// What one collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    pub blobs: usize,
    pub bytes: u64,
}

impl Store {
    /// Protects `digests` from [`remove_orphan_blobs`](Self::remove_orphan_blobs) until the guard is dropped.
    /// Register them *before* the blobs can appear in the store.
    pub fn protect<'a>(&self, digests: impl IntoIterator<Item = &'a str>) -> Protected {
        let mut guard = Protected {
            pending: self.pending.clone(),
            digests: Vec::new(),
        };
        for d in digests {
            guard.add(d);
        }
        guard
    }

    /// Removes every blob that no model in the index and no manifest in `manifests/sha256` names, except those
    /// protected by an operation in flight. Runs under the store's lock, so no commit happens meanwhile. A manifest
    /// that does not parse stops it (its blobs cannot be told apart) with an error.
    pub fn remove_orphan_blobs(&self) -> Result<Collected, StoreError> {
        let _guard = self.lock();
        // The order matters: blobs listed first, then what is protected, then what is named. A blob listed here
        // was created before; if its operation is no longer protecting it, it has already committed (it is in
        // the index read below) or failed.
        let dir = self.blob_dir();
        let mut blobs = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_blob =
                name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            if is_blob && entry.file_type().is_ok_and(|t| t.is_file()) {
                blobs.push(name);
            }
        }
        let pending: HashSet<String> = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        let mut named: HashSet<String> = HashSet::new();
        let index = Index::load(&self.index_path())?;
        for m in &index.models {
            named.extend(m.files.iter().cloned());
        }
        let manifests = self.manifest_dir();
        for entry in fs::read_dir(&manifests)
            .map_err(io_err(&manifests))?
            .flatten()
        {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(super::fsutil::TEMP_PREFIX) {
                continue;
            }
            let bytes = fs::read(&path).map_err(io_err(&path))?;
            let manifest: Manifest =
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    path: path.clone(),
                    detail: "does not parse, so the blobs it names are unknown".into(),
                    source: Some(e),
                })?;
            named.insert(manifest.config.digest);
            named.extend(manifest.layers.into_iter().map(|l| l.digest));
        }
        let mut collected = Collected::default();
        for hex in blobs {
            let digest = format!("sha256:{hex}");
            if named.contains(&digest) || pending.contains(&digest) {
                continue;
            }
            let path = self.blob_path(&hex);
            let size = fs::metadata(&path).map_or(0, |m| m.len());
            remove_quietly(&path);
            collected.blobs += 1;
            collected.bytes += size;
        }
        if collected.blobs > 0 {
            if let Err(e) = sync_dir(&dir) {
                tracing::warn!(error = %e, "cannot sync the blob directory");
            }
        }
        Ok(collected)
    }

    /// [`remove_orphan_blobs`](Self::remove_orphan_blobs), logged (`why` says what it follows) rather than
    /// returned: the callers have already failed or finished, and the collector's own failure changes nothing.
    pub fn collect_orphans(&self, why: &str) {
        match self.remove_orphan_blobs() {
            Ok(c) if c.blobs > 0 => {
                tracing::info!(
                    after = why,
                    blobs = c.blobs,
                    bytes = c.bytes,
                    "removed blobs no model names"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(after = why, error = %e, "cannot collect orphan blobs"),
        }
    }

    /// Whether an operation in flight protects `digest`.
    pub(super) fn is_protected(&self, digest: &str) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(digest)
    }
}
