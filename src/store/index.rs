//! The model index, `models.json` (`{"models":[{"id","tags","files",…}]}`), in DMR's shape with
//! two optional additions (`created`, `source`). It owns loading and validating the index,
//! resolving a parsed reference to an entry, moving tags and working out which blobs an entry
//! leaves unreferenced. It must not know about blob contents, GGUF or the artifact formats;
//! writing and deleting files is the caller's job.

use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use super::artifact::digest_hex;
use super::fsutil::{io_err, write_atomic};
use super::name::Reference;
use super::StoreError;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Index {
    /// DMR writes `null` for an empty list.
    #[serde(deserialize_with = "null_as_empty")]
    pub models: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Entry {
    pub id: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub tags: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub files: Vec<String>,
    /// Unix seconds; absent (0) for entries written by DMR.
    #[serde(default)]
    pub created: i64,
    /// Where an imported model came from, for the re-import fast path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

/// The identity of an imported source file: canonical path, size and modification time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Source {
    pub path: String,
    pub size: u64,
    /// Unix seconds.
    pub mtime: i64,
    /// Sub-second part of the modification time, so that a rewrite within the same second is
    /// not mistaken for the same file.
    #[serde(default)]
    pub mtime_nsec: u32,
}

fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Option::<Vec<T>>::deserialize(d).map(Option::unwrap_or_default)
}

impl Index {
    /// Reads and validates `models.json`; a file that does not parse, or that holds a
    /// malformed digest, is `Corrupt`.
    pub fn load(path: &Path) -> Result<Index, StoreError> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let index: Index = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: "models.json does not parse".to_string(),
            source: Some(e),
        })?;
        let digests = index
            .models
            .iter()
            .flat_map(|m| std::iter::once(&m.id).chain(&m.files));
        if let Some(bad) = digests.into_iter().find(|d| digest_hex(d).is_none()) {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("malformed digest {bad:?}"),
                source: None,
            });
        }
        Ok(index)
    }

    /// Writes the index atomically, indented like DMR's.
    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        // Invariant: strings, integers and vectors always serialise.
        let bytes = serde_json::to_vec_pretty(self).expect("index serialisation cannot fail");
        write_atomic(path, &bytes)
    }

    /// The position of the entry `reference` names: a tag, a full id, a digest reference
    /// (`name@sha256:…`, matched by id like DMR) or a unique id prefix.
    pub fn resolve(&self, reference: &Reference) -> Result<usize, StoreError> {
        let not_found = |r: &str| StoreError::NotFound(r.to_string());
        match reference {
            Reference::Tag(tag) => match tag.split_once('@') {
                Some((_, digest)) => self.position_of_id(digest).ok_or_else(|| not_found(tag)),
                None => self.position_of_tag(tag).ok_or_else(|| not_found(tag)),
            },
            Reference::Id(id) if id.starts_with("sha256:") => {
                self.position_of_id(id).ok_or_else(|| not_found(id))
            }
            Reference::Id(prefix) => {
                let hex = |m: &Entry| m.id.strip_prefix("sha256:").unwrap_or("").to_string();
                let mut hits = self
                    .models
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| hex(m).starts_with(prefix.as_str()));
                match (hits.next(), hits.count()) {
                    (None, _) => Err(not_found(prefix)),
                    (Some((i, _)), 0) => Ok(i),
                    (Some(_), more) => Err(StoreError::Ambiguous {
                        prefix: prefix.clone(),
                        count: more + 1,
                    }),
                }
            }
        }
    }

    pub fn position_of_id(&self, id: &str) -> Option<usize> {
        self.models.iter().position(|m| m.id == id)
    }

    pub fn position_of_tag(&self, tag: &str) -> Option<usize> {
        self.models
            .iter()
            .position(|m| m.tags.iter().any(|t| t == tag))
    }

    /// Removes `tag` from every entry except `keep_id`; entries left without tags are taken
    /// out of the index and returned (their files may now be garbage).
    pub fn take_tag(&mut self, tag: &str, keep_id: Option<&str>) -> Vec<Entry> {
        let mut orphans = Vec::new();
        let mut kept = Vec::with_capacity(self.models.len());
        for mut entry in std::mem::take(&mut self.models) {
            let had = entry.tags.len();
            if keep_id != Some(entry.id.as_str()) {
                entry.tags.retain(|t| t != tag);
            }
            if entry.tags.is_empty() && had > 0 {
                orphans.push(entry);
            } else {
                kept.push(entry);
            }
        }
        self.models = kept;
        orphans
    }

    /// The files of `entry` that no entry left in the index references.
    pub fn unreferenced<'a>(&self, entry: &'a Entry) -> Vec<&'a str> {
        let used = |f: &str| self.models.iter().any(|m| m.files.iter().any(|g| g == f));
        entry
            .files
            .iter()
            .map(String::as_str)
            .filter(|f| !used(f))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn entry(c: char, tags: &[&str], files: &[char]) -> Entry {
        Entry {
            id: id(c),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            files: files.iter().map(|f| id(*f)).collect(),
            created: 0,
            source: None,
        }
    }

    #[test]
    fn loads_dmr_indexes_and_rejects_corrupt_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("models.json");
        let dmr = format!(
            r#"{{"models":[{{"id":"{}","tags":null,"files":["{}"]}}]}}"#,
            id('a'),
            id('b')
        );
        std::fs::write(&path, dmr).expect("write");
        let index = Index::load(&path).expect("DMR index");
        assert_eq!(index.models, [entry('a', &[], &['b'])]);
        std::fs::write(&path, r#"{"models":null}"#).expect("write");
        assert!(Index::load(&path).expect("null models").models.is_empty());
        index.save(&path).expect("save");
        assert_eq!(Index::load(&path).expect("reload"), index);
        for bad in [
            "{",
            "[]",
            r#"{"models":[{"id":"sha256:../../x","tags":[],"files":[]}]}"#,
        ] {
            std::fs::write(&path, bad).expect("write");
            let err = Index::load(&path).expect_err(bad);
            assert!(matches!(err, StoreError::Corrupt { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn resolves_references() {
        let mut a = entry('a', &["ai/x:latest"], &[]);
        a.id = format!("sha256:abcdef{}", "0".repeat(58));
        let mut b = entry('b', &["ai/y:latest", "ai/y:v2"], &[]);
        b.id = format!("sha256:abcdff{}", "0".repeat(58));
        let index = Index {
            models: vec![a.clone(), b],
        };
        let tag = |t: &str| Reference::Tag(t.to_string());
        let pid = |p: &str| Reference::Id(p.to_string());
        assert_eq!(index.resolve(&tag("ai/y:v2")).ok(), Some(1));
        assert_eq!(index.resolve(&Reference::Id(a.id.clone())).ok(), Some(0));
        assert_eq!(index.resolve(&tag(&format!("ai/q@{}", a.id))).ok(), Some(0));
        assert_eq!(index.resolve(&pid("abcdef000000")).ok(), Some(0));
        let err = index.resolve(&pid("abcd00000000")).expect_err("no match");
        assert!(matches!(err, StoreError::NotFound(_)));
        let err = index.resolve(&pid("abcd")).expect_err("two matches");
        assert!(
            matches!(err, StoreError::Ambiguous { count: 2, .. }),
            "{err}"
        );
        assert!(index.resolve(&tag("ai/z:latest")).is_err());
    }

    #[test]
    fn moves_tags_and_finds_garbage() {
        let mut index = Index {
            models: vec![
                entry('a', &["t1"], &['w', 'c']),
                entry('b', &["t1", "t2"], &['w', 'd']),
                entry('e', &["t1"], &['x']),
            ],
        };
        let orphans = index.take_tag("t1", Some(&id('e')));
        assert_eq!(orphans, [entry('a', &[], &['w', 'c'])]);
        assert_eq!(
            index.models,
            [
                entry('b', &["t2"], &['w', 'd']),
                entry('e', &["t1"], &['x'])
            ]
        );
        assert_eq!(index.unreferenced(&orphans[0]), [id('c')]);
        let orphans = index.take_tag("t2", None);
        assert_eq!(index.unreferenced(&orphans[0]), [id('w'), id('d')]);
    }
}
