//! The client side of `package --gguf`: the files are read here, never by the daemon. The model is built in a
//! temporary store on this machine (the store's own import, so its id is the one a server-side import of the
//! same files would give), then its archive (DMR's export format, `store::archive`) is streamed to the daemon's
//! `POST /models/load` as it is written: no path crosses the wire and the daemon needs no access to the files.
//! The temporary store goes once the archive is written. It must not know about HTTP beyond the body it returns.

use std::path::Path;

use futures_util::StreamExt;

use crate::store::{archive, pulled::Artifact, GgufExtras, ImportProgress, Store, StoreError};

use super::Failure;

/// A model packaged on this machine: the temporary store holding it (removed on drop) and what its archive is
/// written from.
pub struct Packaged {
    artifact: Artifact,
    // Removed on drop, after the archive is written.
    _dir: tempfile::TempDir,
}

/// The files `package --gguf` reads.
pub struct Sources<'a> {
    pub model: &'a Path,
    pub license: Option<&'a Path>,
    pub chat_template: Option<&'a Path>,
    /// A vision model's multimodal projector (`--mmproj`), a GGUF file.
    pub mmproj: Option<&'a Path>,
}

impl Sources<'_> {
    fn extras(&self) -> GgufExtras<'_> {
        GgufExtras {
            license: self.license,
            chat_template: self.chat_template,
            mmproj: self.mmproj,
        }
    }
}

impl Packaged {
    /// Imports `sources` under `tag` into a new temporary store in `$TMPDIR` (a GGUF with a license, a chat
    /// template or a projector through `package_gguf`, anything else through `import`, as `POST /models/create` does).
    pub fn build(
        sources: &Sources<'_>,
        tag: &str,
        progress: &mut dyn FnMut(ImportProgress),
    ) -> Result<Packaged, Failure> {
        let dir = tempfile::Builder::new()
            .prefix("dmr-package-")
            .tempdir()
            .map_err(|e| Failure(format!("cannot make a temporary store: {e}")))?;
        let store = Store::open(dir.path())?;
        let imported = if !sources.extras().is_empty() {
            store.package_gguf(sources.model, tag, sources.extras(), progress)
        } else {
            store.import(sources.model, tag, progress)
        };
        imported.map_err(|e| Failure(local_error(e)))?;
        let artifact = store.artifact(tag)?;
        drop(store);
        Ok(Packaged {
            artifact,
            _dir: dir,
        })
    }

    /// The packaged model's id (its manifest's digest, which the archive keeps).
    pub fn id(&self) -> &str {
        &self.artifact.model.id
    }

    /// The name it is packaged under, normalised as the daemon normalises names (`ai/x` is `ai/x:latest`).
    pub fn name(&self) -> &str {
        self.artifact.model.tags.first().map_or("", String::as_str)
    }

    /// The archive as a request body, written on the blocking pool as it is sent (nothing is buffered whole). A
    /// failure to write it ends the body with an error, so the upload fails and the daemon keeps nothing; the
    /// temporary store is removed once the writer is done.
    pub fn into_body(self) -> reqwest::Body {
        let (writer, reader) = tokio::io::duplex(1 << 20);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
        tokio::task::spawn_blocking(move || {
            let mut sync_writer = tokio_util::io::SyncIoBridge::new(writer);
            let result = archive::write_archive(&self.artifact, &mut sync_writer);
            drop(sync_writer);
            // The body ends now, not after the temporary store is removed: a daemon that has answered must not be
            // left waiting for the body's last chunk. (The client's runtime waits for this task before it exits.)
            let _ = done_tx.send(result.map_err(|e| e.to_string()));
            drop(self);
        });
        let outcome = futures_util::stream::once(done_rx).filter_map(|r| async move {
            match r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(Err(std::io::Error::other(format!(
                    "writing the archive: {e}"
                )))),
                Err(_) => Some(Err(std::io::Error::other("the archive writer stopped"))),
            }
        });
        reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(reader).chain(outcome))
    }

    /// Where the temporary store is (for tests).
    #[cfg(test)]
    fn dir(&self) -> &Path {
        self._dir.path()
    }
}

/// A local import's error, said as the user's files' problem (the paths are the user's own).
fn local_error(e: StoreError) -> String {
    format!("cannot package: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_gguf(path: &Path) {
        std::fs::write(path, crate::store::gguf::writer::tiny_model()).unwrap();
    }

    #[test]
    fn a_client_side_package_loads_with_the_id_a_server_side_import_gives() {
        let files = tempfile::tempdir().unwrap();
        let gguf = files.path().join("m.gguf");
        tiny_gguf(&gguf);
        let (license, template) = (files.path().join("LICENSE"), files.path().join("t.jinja"));
        std::fs::write(&license, "MIT\n").unwrap();
        std::fs::write(&template, "{{ messages }}").unwrap();
        // Any GGUF passes the store's check of a projector; the engine is what reads it.
        let mmproj = files.path().join("mmproj.gguf");
        tiny_gguf(&mmproj);
        let daemon_dir = tempfile::tempdir().unwrap();
        let daemon = Store::open(daemon_dir.path()).unwrap();
        for (lic, tpl, proj) in [
            (None, None, None),
            (Some(&license), Some(&template), None),
            (None, None, Some(&mmproj)),
        ] {
            let sources = Sources {
                model: &gguf,
                license: lic.map(|p| p.as_path()),
                chat_template: tpl.map(|p| p.as_path()),
                mmproj: proj.map(|p| p.as_path()),
            };
            let packaged = Packaged::build(&sources, "ai/up", &mut |_| {}).unwrap();
            let temp_root = packaged.dir().to_path_buf();
            // What the daemon's `POST /models/create` would have done with the same files.
            let reference_dir = tempfile::tempdir().unwrap();
            let reference = Store::open(reference_dir.path()).unwrap();
            let expected = reference
                .package_gguf(&gguf, "ai/ref", sources.extras(), &mut |_| {})
                .unwrap();
            assert_eq!(packaged.id(), expected.id);
            let id = packaged.id().to_string();
            let mut archive = Vec::new();
            archive::write_archive(&packaged.artifact, &mut archive).unwrap();
            drop(packaged);
            assert!(!temp_root.exists(), "the temporary store is removed");
            let loaded = daemon
                .load_archive(
                    &archive[..],
                    Some("ai/up"),
                    crate::config::DEFAULT_MAX_MANIFEST_BYTES,
                    &mut |_| {},
                )
                .unwrap();
            assert_eq!(loaded.id, id);
            assert_eq!(loaded.chat_template.is_some(), tpl.is_some());
            assert_eq!(loaded.mmproj.is_some(), proj.is_some());
            if let Some(blob) = &loaded.mmproj {
                assert_eq!(
                    std::fs::read(blob).unwrap(),
                    std::fs::read(&mmproj).unwrap()
                );
            }
        }
    }

    #[test]
    fn a_missing_file_fails_locally_naming_it() {
        let files = tempfile::tempdir().unwrap();
        let missing = files.path().join("nope.gguf");
        let sources = Sources {
            model: &missing,
            license: None,
            chat_template: None,
            mmproj: None,
        };
        let Err(Failure(why)) = Packaged::build(&sources, "ai/x", &mut |_| {}) else {
            panic!("a missing file packages");
        };
        assert!(why.contains("nope.gguf"), "{why}");
    }
}
