//! Which server paths an import asked for over the API may read. Reading a server file into a model and then
//! exporting it hands that file to whoever asked, so a path from the network is an operator's tool, not a feature:
//! it must lie below one of `[store] import_roots` (none by default) once every symlink in it is resolved, and it
//! is never below `/proc`, `/sys`, `/dev` or the store itself. Whether the caller may ask at all (loopback or the
//! Unix socket) is the HTTP front's check; this module only judges paths. `[[models]] path` in the config file is
//! not judged here: the operator wrote it.
//!
//! A path outside the roots is refused before the file system is touched, so the answer never tells whether it
//! exists. Symlinks *inside* a model directory are judged by `format::list_files` (never out of the directory).

use std::path::{Component, Path, PathBuf};

/// Never a source, wherever the roots are: the kernel's views of processes and devices.
const NEVER: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Why a path may not be imported.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SourceError {
    #[error("importing server paths over the API is off: list the directories allowed in [store] import_roots, or upload the model (dmr-supervisor package, POST /models/load)")]
    NoRoots,
    #[error("{0:?} is not an absolute path without '..'")]
    NotPlain(String),
    #[error("{0:?} is not below any of [store] import_roots")]
    OutsideRoots(String),
    #[error("{0:?} resolves to a place that is never imported (/proc, /sys, /dev or the store)")]
    Forbidden(String),
    #[error("no file or directory at {0:?}")]
    Missing(String),
}

/// The canonical path `given` names, if it may be imported: `given` is absolute without `..`, lies below a root
/// both as written and once resolved (symlinks cannot lead out), and is not below [`NEVER`] or `store`.
pub fn allowed(given: &str, roots: &[PathBuf], store: &Path) -> Result<PathBuf, SourceError> {
    if roots.is_empty() {
        return Err(SourceError::NoRoots);
    }
    let path = Path::new(given);
    let plain = path.is_absolute()
        && !given.contains('\0')
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain {
        return Err(SourceError::NotPlain(given.to_string()));
    }
    // Lexically first, so a path outside the roots is refused without touching the file system.
    let roots: Vec<PathBuf> = roots
        .iter()
        .flat_map(|r| {
            [
                r.clone(),
                std::fs::canonicalize(r).unwrap_or_else(|_| r.clone()),
            ]
        })
        .collect();
    if !roots.iter().any(|r| path.starts_with(r)) {
        return Err(SourceError::OutsideRoots(given.to_string()));
    }
    let real = std::fs::canonicalize(path).map_err(|_| SourceError::Missing(given.to_string()))?;
    if !roots.iter().any(|r| real.starts_with(r)) {
        return Err(SourceError::OutsideRoots(given.to_string()));
    }
    let store = std::fs::canonicalize(store).unwrap_or_else(|_| store.to_path_buf());
    if NEVER.iter().any(|n| real.starts_with(n)) || real.starts_with(&store) {
        return Err(SourceError::Forbidden(given.to_string()));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Tree {
        _dir: tempfile::TempDir,
        root: PathBuf,
        store: PathBuf,
        outside: PathBuf,
    }

    fn tree() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let (root, store, outside) = (base.join("models"), base.join("store"), base.join("secret"));
        for d in [&root, &store, &outside] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(root.join("m.gguf"), b"GGUF").unwrap();
        std::fs::write(outside.join("key"), b"secret").unwrap();
        std::fs::write(store.join("blob"), b"x").unwrap();
        Tree {
            _dir: dir,
            root,
            store,
            outside,
        }
    }

    fn s(p: &Path) -> String {
        p.display().to_string()
    }

    #[test]
    fn without_roots_nothing_is_importable() {
        let t = tree();
        let file = s(&t.root.join("m.gguf"));
        assert_eq!(allowed(&file, &[], &t.store), Err(SourceError::NoRoots));
    }

    #[test]
    fn a_file_below_a_root_is_allowed_and_resolved() {
        let t = tree();
        let file = t.root.join("m.gguf");
        assert_eq!(
            allowed(&s(&file), std::slice::from_ref(&t.root), &t.store),
            Ok(file)
        );
    }

    #[test]
    fn paths_outside_the_roots_are_refused_without_saying_whether_they_exist() {
        let t = tree();
        let roots = [t.root.clone()];
        let there = allowed(&s(&t.outside.join("key")), &roots, &t.store);
        let absent = allowed(&s(&t.outside.join("nothing")), &roots, &t.store);
        assert!(
            matches!(there, Err(SourceError::OutsideRoots(_))),
            "{there:?}"
        );
        assert!(
            matches!(absent, Err(SourceError::OutsideRoots(_))),
            "{absent:?}"
        );
        for p in ["/proc/self/environ", "/etc/passwd"] {
            assert!(matches!(
                allowed(p, &roots, &t.store),
                Err(SourceError::OutsideRoots(_))
            ));
        }
    }

    #[test]
    fn dot_dot_and_relative_paths_are_refused() {
        let t = tree();
        let roots = [t.root.clone()];
        let up = format!("{}/../secret/key", s(&t.root));
        assert_eq!(
            allowed(&up, &roots, &t.store),
            Err(SourceError::NotPlain(up.clone()))
        );
        assert!(matches!(
            allowed("models/m.gguf", &roots, &t.store),
            Err(SourceError::NotPlain(_))
        ));
    }

    #[test]
    fn a_symlink_below_a_root_cannot_lead_out_of_the_roots() {
        let t = tree();
        let roots = [t.root.clone()];
        symlink(t.outside.join("key"), t.root.join("license")).unwrap();
        symlink(&t.outside, t.root.join("dir")).unwrap();
        symlink("/proc/self/environ", t.root.join("environ")).unwrap();
        for name in ["license", "dir", "environ"] {
            let p = s(&t.root.join(name));
            assert!(
                matches!(
                    allowed(&p, &roots, &t.store),
                    Err(SourceError::OutsideRoots(_))
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn the_store_and_the_kernels_views_are_never_sources_even_below_a_root() {
        let t = tree();
        let parent = t.root.parent().unwrap().to_path_buf();
        let blob = s(&t.store.join("blob"));
        assert!(matches!(
            allowed(&blob, &[parent], &t.store),
            Err(SourceError::Forbidden(_))
        ));
        let everything = [PathBuf::from("/")];
        for p in ["/proc/self/environ", "/sys/kernel", "/dev/null"] {
            assert!(
                matches!(
                    allowed(p, &everything, &t.store),
                    Err(SourceError::Forbidden(_))
                ),
                "{p}"
            );
        }
    }

    #[test]
    fn a_missing_path_below_a_root_is_missing() {
        let t = tree();
        let p = s(&t.root.join("absent.gguf"));
        assert_eq!(
            allowed(&p, std::slice::from_ref(&t.root), &t.store),
            Err(SourceError::Missing(p.clone()))
        );
    }
}
