//! Crash-safe file primitives for the store: uniquely named temp files that delete themselves
//! unless committed, `write_atomic` (temp + fsync + rename + directory fsync), streaming a file
//! into a temp blob while hashing it, and sweeping leftover temps. It knows paths and bytes only;
//! it must not know the index, the artifact formats or what a model is.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::{ImportProgress, StoreError};

/// Every temp file the store creates starts with this; `open` sweeps them.
pub(super) const TEMP_PREFIX: &str = ".tmp-";
/// Copy buffer size, and the progress reporting granularity.
const CHUNK: usize = 1 << 20;

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A temp file that is removed when dropped, unless it was renamed into place.
pub(super) struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    /// Creates a new, uniquely named temp file in `dir`.
    pub fn create(dir: &Path) -> Result<(TempFile, File), StoreError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("{TEMP_PREFIX}{}-{nanos}-{n}", std::process::id());
            let path = dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok((TempFile { path, armed: true }, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
    }

    /// Renames the temp file to `target` unless `target` already exists (content-addressed
    /// files are identical by name), then fsyncs the directory. Returns whether it created it.
    pub fn persist_new(mut self, target: &Path) -> Result<bool, StoreError> {
        if target.try_exists().map_err(io_err(target))? {
            return Ok(false); // dropping `self` removes the temp
        }
        fs::rename(&self.path, target).map_err(io_err(target))?;
        self.armed = false;
        sync_parent(target);
        Ok(true)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove temp file");
            }
        }
    }
}

/// Replaces `path` with `bytes` atomically (temp file, fsync, rename, fsync of the directory):
/// a reader sees the old or the new content, never a mix. An error means `path` is unchanged.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let (mut temp, mut file) = TempFile::create(parent(path))?;
    let write = file.write_all(bytes).and_then(|()| file.sync_all());
    write.map_err(io_err(&temp.path))?;
    drop(file);
    fs::rename(&temp.path, path).map_err(io_err(path))?;
    temp.armed = false;
    sync_parent(path);
    Ok(())
}

/// Writes `bytes` to `path` atomically unless a file is already there; returns whether it wrote.
pub(super) fn write_new(path: &Path, bytes: &[u8]) -> Result<bool, StoreError> {
    if path.try_exists().map_err(io_err(path))? {
        return Ok(false);
    }
    write_atomic(path, bytes).map(|()| true)
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// Fsyncs the directory holding `path`, so that a rename into it survives a crash. The rename
/// has already happened and cannot be taken back, so a failure is logged, not returned (an
/// error must mean "nothing changed").
fn sync_parent(path: &Path) {
    if let Err(e) = sync_dir(parent(path)) {
        tracing::warn!(error = %e, "cannot fsync directory after rename");
    }
}

/// Fsyncs a directory, making renames and removals in it durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Streams `src` into a new temp file in `dir`, hashing it, reporting progress at most every
/// 1 MiB and once at the end, then fsyncs it. Returns the temp, the hex sha256 and the length.
pub(super) fn copy_hashed(
    src: &Path,
    dir: &Path,
    total: u64,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<(TempFile, String, u64), StoreError> {
    let mut input = File::open(src).map_err(io_err(src))?;
    copy_hashed_from(&mut input, src, dir, total, progress)
}

/// [`copy_hashed`] from any reader; `src` names it in errors.
pub(super) fn copy_hashed_from(
    input: &mut dyn Read,
    src: &Path,
    dir: &Path,
    total: u64,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<(TempFile, String, u64), StoreError> {
    let (temp, mut output) = TempFile::create(dir)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let (mut current, mut reported) = (0u64, 0u64);
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(src)(e)),
        };
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n]).map_err(io_err(&temp.path))?;
        current += n as u64;
        if current - reported >= CHUNK as u64 {
            reported = current;
            let digest = None;
            progress(ImportProgress {
                digest,
                total,
                current,
            });
        }
    }
    output.sync_all().map_err(io_err(&temp.path))?;
    let hex = hex::encode(hasher.finalize());
    let digest = Some(format!("sha256:{hex}"));
    progress(ImportProgress {
        digest,
        total,
        current,
    });
    Ok((temp, hex, current))
}

/// Removes leftover temp files (from a crash) in `dir`; returns how many.
pub(super) fn remove_temps(dir: &Path) -> Result<usize, StoreError> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let is_temp = entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX);
        if is_temp && entry.file_type().map_err(io_err(&entry.path()))?.is_file() {
            fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes `path`, treating "already gone" as success; other failures are only logged, for
/// cleanup that must not fail an operation that already succeeded.
pub(super) fn remove_quietly(path: &Path) {
    let result = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove store file");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.json");
        write_atomic(&path, b"one").expect("write");
        write_atomic(&path, b"two").expect("rewrite");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        assert!(!write_new(&path, b"three").expect("write_new"));
        assert_eq!(names(dir.path()), ["f.json"]);
        let missing = dir.path().join("no/such/dir/f");
        assert!(matches!(
            write_atomic(&missing, b"x"),
            Err(StoreError::Io { .. })
        ));
    }

    #[test]
    fn temp_files_clean_up_after_themselves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (temp, _file) = TempFile::create(dir.path()).expect("create");
        drop(temp);
        assert!(names(dir.path()).is_empty());
        fs::write(dir.path().join("blob"), b"old").expect("write");
        let (temp, _file) = TempFile::create(dir.path()).expect("create");
        assert!(!temp.persist_new(&dir.path().join("blob")).expect("persist"));
        assert_eq!(names(dir.path()), ["blob"]);
        fs::write(dir.path().join(".tmp-leftover"), b"x").expect("write");
        fs::create_dir(dir.path().join(".tmp-dir")).expect("mkdir");
        assert_eq!(remove_temps(dir.path()).expect("sweep"), 1);
        assert_eq!(names(dir.path()), [".tmp-dir", "blob"]);
    }

    #[test]
    fn copy_hashed_reports_progress_per_mebibyte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        let data: Vec<u8> = (0..(5 << 19) + 7).map(|i| (i % 251) as u8).collect(); // 2.5 MiB + 7
        fs::write(&src, &data).expect("write");
        let mut events = Vec::new();
        let (temp, hex, len) =
            copy_hashed(&src, dir.path(), data.len() as u64, &mut |p| events.push(p))
                .expect("copy");
        assert_eq!(len, data.len() as u64);
        assert_eq!(
            format!("sha256:{hex}"),
            super::super::artifact::sha256_digest(&data)
        );
        let currents: Vec<u64> = events.iter().map(|e| e.current).collect();
        assert_eq!(currents, [1 << 20, 2 << 20, len]);
        assert!(events[..2]
            .iter()
            .all(|e| e.digest.is_none() && e.total == len));
        assert_eq!(
            events[2].digest.as_deref(),
            Some(format!("sha256:{hex}").as_str())
        );
        let target = dir.path().join(&hex);
        assert!(temp.persist_new(&target).expect("persist"));
        assert_eq!(fs::read(&target).expect("read"), data);
        assert_eq!(names(dir.path()).len(), 2);
    }
}
