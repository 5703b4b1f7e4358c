//! What one Hugging Face file must be, read from its tree entry, and the checks its download passes: the exact
//! listed size (a file that runs past it is cut off at once, one short of it is incomplete; a listed 0 is 0
//! bytes), and the listed hash — an LFS file's sha256 (`lfs.oid`, `lfs.sha256` in the model-info siblings), any
//! other file's git blob id (`oid`: sha1 of `blob {len}\0` + content). An entry without a size is refused, as
//! `huggingface_hub`'s `list_repo_tree` refuses one. Pure logic plus reading a finished file back to hash it; it
//! knows nothing of HTTP or of the store.

use std::io::Read;
use std::path::Path;

use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::TreeEntry;

/// The hash a file's content must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hash {
    /// sha256 of the content, lower-case hex (LFS files).
    Sha256(String),
    /// git's blob id: sha1 of `blob {len}\0` followed by the content, lower-case hex (files kept in git).
    GitBlob(String),
}

/// A file to download, as the tree lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub size: u64,
    pub hash: Option<Hash>,
}

impl Expected {
    /// How the file is named in progress lines: its sha256 digest when known, else its path.
    pub fn layer_id(&self, path: &str) -> String {
        match &self.hash {
            Some(Hash::Sha256(h)) => format!("sha256:{h}"),
            _ => path.to_string(),
        }
    }
}

/// What `entry` promises, or why it cannot be downloaded with a bound and a check.
pub fn expected(entry: &TreeEntry) -> Result<Expected, String> {
    let path = &entry.path;
    let lfs_size = entry.lfs.as_ref().and_then(|l| l.size);
    let size = match (entry.size, lfs_size) {
        (Some(a), Some(b)) if a != b => {
            return Err(format!(
                "{path} is listed with two sizes ({a} and {b} bytes)"
            ))
        }
        (Some(s), _) | (None, Some(s)) => s,
        (None, None) => {
            return Err(format!(
                "{path} is listed without a size; refusing to download it without a bound"
            ))
        }
    };
    let hash = match &entry.lfs {
        Some(lfs) => lfs
            .oid
            .as_deref()
            .map(|h| hex_of(h, 64, path, "sha256").map(Hash::Sha256))
            .transpose()?,
        None => entry
            .oid
            .as_deref()
            .map(|h| hex_of(h, 40, path, "git object id").map(Hash::GitBlob))
            .transpose()?,
    };
    Ok(Expected { size, hash })
}

fn hex_of(h: &str, len: usize, path: &str, what: &str) -> Result<String, String> {
    if h.len() == len && h.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(h.to_ascii_lowercase())
    } else {
        Err(format!("{path} is listed with a malformed {what} {h:?}"))
    }
}

/// Whether `incoming` more bytes, after `have` already arrived, still fit in a file listed at `size`; else why
/// not. A listed 0 admits nothing.
pub fn admit(have: u64, incoming: u64, size: u64) -> Result<(), String> {
    match have.checked_add(incoming) {
        Some(n) if n <= size => Ok(()),
        _ => Err(format!(
            "is larger than the {size} bytes listed (at least {} bytes)",
            have.saturating_add(incoming)
        )),
    }
}

/// Hashes `content` as `hash` wants it, with the content's length given up front (git's blob header needs it).
enum Hasher {
    Sha256(Sha256),
    GitBlob(Sha1),
}

impl Hasher {
    fn new(hash: &Hash, len: u64) -> Hasher {
        match hash {
            Hash::Sha256(_) => Hasher::Sha256(Sha256::new()),
            Hash::GitBlob(_) => {
                let mut h = Sha1::new();
                h.update(format!("blob {len}\0").as_bytes());
                Hasher::GitBlob(h)
            }
        }
    }

    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::GitBlob(h) => h.update(b),
        }
    }

    fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::GitBlob(h) => hex::encode(h.finalize()),
        }
    }
}

/// Reads the file at `path` back and checks it against `want` (blocking: call it on the blocking pool). `Ok(None)`
/// when it matches, `Ok(Some(why))` when it does not.
pub fn check_file(path: &Path, want: &Expected) -> std::io::Result<Option<String>> {
    let f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    check_content(f, len, want)
}

/// Checks `len` bytes of content read from `r` against `want`: the length first, then the hash over what is read.
pub fn check_content(
    mut r: impl Read,
    len: u64,
    want: &Expected,
) -> std::io::Result<Option<String>> {
    if len != want.size {
        return Ok(Some(format!("has {len} bytes, {} listed", want.size)));
    }
    let Some(hash) = &want.hash else {
        return Ok(None);
    };
    let mut h = Hasher::new(hash, len);
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        read += n as u64;
        h.update(&buf[..n]);
    }
    if read != len {
        return Ok(Some(format!(
            "changed while it was read ({read} bytes, {len} before)"
        )));
    }
    Ok(mismatch(hash, h.finish()))
}

fn mismatch(hash: &Hash, actual: String) -> Option<String> {
    let (what, want) = match hash {
        Hash::Sha256(w) => ("sha256", w),
        Hash::GitBlob(w) => ("git object id", w),
    };
    (actual != *want).then(|| format!("has {what} {actual}, {want} listed"))
}

#[cfg(test)]
mod tests {
    use super::super::Lfs;
    use super::*;

    const HELLO_SHA256: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    /// `printf hello | git hash-object --stdin`
    const HELLO_GIT: &str = "b6fc4c620b67d95f953a5c1c1230aaab5db5a1b0";

    fn file(size: Option<u64>, oid: Option<&str>, lfs: Option<Lfs>) -> TreeEntry {
        TreeEntry {
            kind: "file".into(),
            path: "m.gguf".into(),
            size,
            oid: oid.map(str::to_string),
            lfs,
        }
    }

    fn lfs(oid: Option<&str>, size: Option<u64>) -> Option<Lfs> {
        Some(Lfs {
            oid: oid.map(str::to_string),
            size,
        })
    }

    #[test]
    fn an_entry_gives_its_size_and_the_hash_that_fits_its_storage() {
        let git = file(Some(5), Some(HELLO_GIT), None);
        assert_eq!(
            expected(&git).unwrap(),
            Expected {
                size: 5,
                hash: Some(Hash::GitBlob(HELLO_GIT.into()))
            }
        );
        // An LFS file's top-level oid is its pointer's blob id: the content is checked by the LFS sha256.
        let upper = HELLO_SHA256.to_ascii_uppercase();
        let l = file(Some(5), Some(HELLO_GIT), lfs(Some(&upper), Some(5)));
        let want = expected(&l).unwrap();
        assert_eq!(want.hash, Some(Hash::Sha256(HELLO_SHA256.into())));
        assert_eq!(want.layer_id("m.gguf"), format!("sha256:{HELLO_SHA256}"));
        // The size may come from the LFS object alone; no hash at all is allowed (nothing to check).
        let only_lfs = file(None, None, lfs(Some(HELLO_SHA256), Some(5)));
        assert_eq!(expected(&only_lfs).unwrap().size, 5);
        let bare = file(Some(0), None, None);
        assert_eq!(
            expected(&bare).unwrap(),
            Expected {
                size: 0,
                hash: None
            }
        );
        assert_eq!(expected(&bare).unwrap().layer_id("m.gguf"), "m.gguf");
    }

    #[test]
    fn entries_without_a_size_or_with_contradictions_or_malformed_hashes_are_refused() {
        let e = expected(&file(None, Some(HELLO_GIT), None)).unwrap_err();
        assert!(e.contains("m.gguf is listed without a size"), "{e}");
        let e = expected(&file(Some(5), None, lfs(Some(HELLO_SHA256), Some(6)))).unwrap_err();
        assert!(e.contains("two sizes (5 and 6 bytes)"), "{e}");
        let e = expected(&file(Some(5), None, lfs(Some("abc"), None))).unwrap_err();
        assert!(e.contains("malformed sha256"), "{e}");
        let e = expected(&file(Some(5), Some(HELLO_SHA256), None)).unwrap_err();
        assert!(e.contains("malformed git object id"), "{e}");
        let e = expected(&file(Some(5), Some(&"g".repeat(40)), None)).unwrap_err();
        assert!(e.contains("malformed git object id"), "{e}");
    }

    #[test]
    fn lfs_sha256_is_also_read_from_the_siblings_shape() {
        let l: Lfs = serde_json::from_str(&format!(
            r#"{{"sha256":"{HELLO_SHA256}","size":5,"pointerSize":1}}"#
        ))
        .unwrap();
        assert_eq!(l.oid.as_deref(), Some(HELLO_SHA256));
        let t: TreeEntry = serde_json::from_str(&format!(
            r#"{{"type":"file","oid":"{HELLO_GIT}","size":5,"path":"a","lfs":{{"oid":"{HELLO_SHA256}","size":5,"pointerSize":1}}}}"#
        ))
        .unwrap();
        assert_eq!(
            expected(&t).unwrap().hash,
            Some(Hash::Sha256(HELLO_SHA256.into()))
        );
    }

    #[test]
    fn bytes_past_the_listed_size_are_not_admitted() {
        assert!(admit(0, 5, 5).is_ok());
        assert!(admit(3, 2, 5).is_ok());
        assert!(admit(0, 0, 0).is_ok());
        let e = admit(3, 3, 5).unwrap_err();
        assert!(e.contains("larger than the 5 bytes listed"), "{e}");
        // A listed 0 admits no byte at all.
        assert!(admit(0, 1, 0).is_err());
        assert!(admit(u64::MAX, 1, u64::MAX).is_err(), "no overflow");
    }

    #[test]
    fn content_is_checked_by_size_then_by_sha256_or_git_blob_id() {
        let sha = |s| Expected {
            size: 5,
            hash: Some(Hash::Sha256(String::from(s))),
        };
        let git = |s| Expected {
            size: 5,
            hash: Some(Hash::GitBlob(String::from(s))),
        };
        let check = |b: &[u8], want: &Expected| check_content(b, b.len() as u64, want).unwrap();
        assert_eq!(check(b"hello", &sha(HELLO_SHA256)), None);
        assert_eq!(check(b"hello", &git(HELLO_GIT)), None);
        let e = check(b"jello", &sha(HELLO_SHA256)).unwrap();
        assert!(
            e.starts_with("has sha256 ") && e.ends_with(&format!("{HELLO_SHA256} listed")),
            "{e}"
        );
        let e = check(b"jello", &git(HELLO_GIT)).unwrap();
        assert!(e.contains("git object id"), "{e}");
        // The git id covers the header: the content's sha1 alone is not it.
        let plain_sha1 = hex::encode(Sha1::digest(b"hello"));
        assert!(check(b"hello", &git(&plain_sha1)).is_some());
        assert_eq!(
            check(b"hello!", &sha(HELLO_SHA256)).as_deref(),
            Some("has 6 bytes, 5 listed")
        );
        let unhashed = Expected {
            size: 5,
            hash: None,
        };
        assert_eq!(check(b"jello", &unhashed), None);
    }

    #[test]
    fn a_file_on_disk_is_checked_the_same_way() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        let git = Expected {
            size: 5,
            hash: Some(Hash::GitBlob(HELLO_GIT.into())),
        };
        assert_eq!(check_file(&p, &git).unwrap(), None);
        std::fs::write(&p, b"hellO").unwrap();
        assert!(check_file(&p, &git)
            .unwrap()
            .unwrap()
            .contains("git object id"));
        std::fs::write(&p, b"hello world").unwrap();
        assert_eq!(
            check_file(&p, &git).unwrap().as_deref(),
            Some("has 11 bytes, 5 listed")
        );
        // Empty git blob: e69de29bb2d1d6434b8b29ae775ad8c2e48c5391.
        std::fs::write(&p, b"").unwrap();
        let empty = Expected {
            size: 0,
            hash: Some(Hash::GitBlob(
                "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391".into(),
            )),
        };
        assert_eq!(check_file(&p, &empty).unwrap(), None);
    }
}
