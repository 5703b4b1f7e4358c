//! What kind of model a local path holds, decided from its files the way Docker Model Runner decides which engine
//! runs it: a GGUF file (llama.cpp), a Hugging Face safetensors directory (`config.json` + `*.safetensors` +
//! a tokenizer: vLLM), or a diffusers pipeline (a directory with `model_index.json`, or one `.dduf` file:
//! diffusers). Also reads what the config blob records about the latter two (architecture, context length,
//! parameter count from the safetensors headers). It reads files only; it must not write or know the index.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use super::fsutil::io_err;
use super::StoreError;

/// A model's format, as its config blob's `config.format` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelFormat {
    Gguf,
    Safetensors,
    /// A diffusers pipeline directory (`model_index.json`).
    Diffusers,
    /// A diffusers pipeline in one `.dduf` file.
    Dduf,
}

impl ModelFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFormat::Gguf => "gguf",
            ModelFormat::Safetensors => "safetensors",
            ModelFormat::Diffusers => "diffusers",
            ModelFormat::Dduf => "dduf",
        }
    }

    /// From a config blob's `format` (an empty one is DMR's legacy GGUF).
    pub fn parse(s: &str) -> Option<ModelFormat> {
        match s {
            "" | "gguf" => Some(ModelFormat::Gguf),
            "safetensors" => Some(ModelFormat::Safetensors),
            "diffusers" => Some(ModelFormat::Diffusers),
            "dduf" => Some(ModelFormat::Dduf),
            _ => None,
        }
    }
}

/// At most this many files in a model directory (a hostile or mistaken path such as `/` is refused, not walked).
const MAX_FILES: usize = 4096;
/// A safetensors header larger than this is not read (the format allows 100 MB; real ones are far smaller).
const MAX_HEADER: u64 = 100 << 20;

/// What `src` holds. A file is GGUF when it starts with GGUF's magic, or a `.dduf` file; a directory is a diffusers pipeline when it has
/// `model_index.json`, else a safetensors model when it has `config.json` and `*.safetensors` files.
pub fn detect(src: &Path) -> Result<ModelFormat, StoreError> {
    let meta = fs::metadata(src).map_err(io_err(src))?;
    if meta.is_file() {
        let dduf = src
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("dduf"));
        if dduf {
            return Ok(ModelFormat::Dduf);
        }
        // Checked here, before an import starts streaming, so a wrong file is a clear 400 (its bytes not shown).
        let mut magic = [0u8; 4];
        let read = File::open(src).and_then(|mut f| f.read_exact(&mut magic));
        if read.is_err() || &magic != b"GGUF" {
            return Err(StoreError::NotAModel {
                path: src.to_path_buf(),
                detail: "not a GGUF file (it does not start with \"GGUF\"), nor a .dduf file"
                    .into(),
            });
        }
        return Ok(ModelFormat::Gguf);
    }
    if !meta.is_dir() {
        return Err(StoreError::NotAModel {
            path: src.to_path_buf(),
            detail: "neither a file nor a directory".into(),
        });
    }
    if src.join("model_index.json").is_file() {
        return Ok(ModelFormat::Diffusers);
    }
    let has_config = src.join("config.json").is_file();
    let files = list_files(src)?;
    let has_weights = files
        .iter()
        .any(|(rel, _)| rel.extension().is_some_and(|e| e == "safetensors"));
    let has_tokenizer = ["tokenizer.json", "tokenizer_config.json", "tokenizer.model"]
        .iter()
        .any(|t| src.join(t).is_file());
    match (has_config, has_weights, has_tokenizer) {
        (true, true, true) => Ok(ModelFormat::Safetensors),
        _ => Err(StoreError::NotAModel {
            path: src.to_path_buf(),
            detail: "a model directory needs model_index.json (diffusers), or config.json, *.safetensors and a \
                     tokenizer (tokenizer.json or tokenizer_config.json)"
                .into(),
        }),
    }
}

/// Every regular file under `dir` (hidden files and directories skipped), as (path relative to `dir`, absolute
/// path), sorted by relative path so that imports are deterministic. A symlink is followed only to a file inside
/// `dir`: one that leads out of it (a server file, `/proc/self/environ`), or to a directory, is an error.
pub fn list_files(dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>, StoreError> {
    let real_dir = fs::canonicalize(dir).map_err(io_err(dir))?;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(io_err(&d))? {
            let entry = entry.map_err(io_err(&d))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let mut meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
            if meta.file_type().is_symlink() {
                // A link may point at another file of the model (Hugging Face's cache does), never out of it.
                let inside = fs::canonicalize(&path).is_ok_and(|t| t.starts_with(&real_dir));
                meta = fs::metadata(&path).map_err(io_err(&path))?;
                if !inside || meta.is_dir() {
                    return Err(StoreError::NotAModel {
                        path: dir.to_path_buf(),
                        detail: format!(
                            "{} is a symlink to {} outside the model's files",
                            path.strip_prefix(dir).unwrap_or(&path).display(),
                            if meta.is_dir() {
                                "a directory"
                            } else {
                                "a file"
                            }
                        ),
                    });
                }
            }
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                // Invariant: `path` was found under `dir`.
                let rel = path
                    .strip_prefix(dir)
                    .expect("walked from dir")
                    .to_path_buf();
                out.push((rel, path));
                if out.len() > MAX_FILES {
                    return Err(StoreError::NotAModel {
                        path: dir.to_path_buf(),
                        detail: format!("more than {MAX_FILES} files"),
                    });
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Whether `rel` is a safe relative path inside a bundle: normal components only (no `..`, no root, no NUL).
pub fn safe_relative(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.contains('\0')
        && Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// What the config blob records about a safetensors or diffusers model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Described {
    pub architecture: String,
    /// `max_position_embeddings` (safetensors) : the default context size for vLLM.
    pub context_length: Option<u64>,
    pub parameters: u64,
    /// Shown under `config.safetensors` / `config.diffusers`.
    pub metadata: BTreeMap<String, String>,
}

/// Reads `config.json` (architecture, context length) or `model_index.json` (pipeline class), and counts the
/// parameters in the safetensors headers.
pub fn describe(
    format: ModelFormat,
    root: &Path,
    files: &[(PathBuf, PathBuf)],
) -> Result<Described, StoreError> {
    let mut d = Described::default();
    let json = |name: &str| -> Result<Option<serde_json::Value>, StoreError> {
        let path = root.join(name);
        if !path.is_file() {
            return Ok(None);
        }
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::NotAModel {
                path,
                detail: format!("does not parse as JSON: {e}"),
            })
    };
    match format {
        ModelFormat::Safetensors => {
            if let Some(config) = json("config.json")? {
                d.architecture = config["architectures"][0]
                    .as_str()
                    .or(config["model_type"].as_str())
                    .unwrap_or_default()
                    .to_string();
                d.context_length = config["max_position_embeddings"].as_u64();
                for key in ["model_type", "torch_dtype", "max_position_embeddings"] {
                    if let Some(v) = config.get(key).filter(|v| !v.is_null()) {
                        let s = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                        d.metadata.insert(key.to_string(), s);
                    }
                }
            }
        }
        ModelFormat::Diffusers => {
            if let Some(index) = json("model_index.json")? {
                d.architecture = index["_class_name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if let Some(v) = index["_diffusers_version"].as_str() {
                    d.metadata.insert("diffusers_version".into(), v.into());
                }
            }
        }
        ModelFormat::Dduf => d.architecture = "diffusers".into(),
        ModelFormat::Gguf => {}
    }
    for (rel, path) in files {
        if rel.extension().is_some_and(|e| e == "safetensors") {
            d.parameters += safetensors_parameters(path)?;
        }
    }
    Ok(d)
}

/// The number of parameters a safetensors file holds, from its header (8-byte little-endian length, then JSON
/// `{"name": {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}`).
pub fn safetensors_parameters(path: &Path) -> Result<u64, StoreError> {
    let file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    safetensors_header_parameters(file, len).map_err(|detail| StoreError::NotAModel {
        path: path.to_path_buf(),
        detail,
    })
}

/// [`safetensors_parameters`] over any reader of `len` bytes: a header length beyond the file or beyond 100 MB is
/// an error, never an allocation.
pub fn safetensors_header_parameters(mut r: impl Read, len: u64) -> Result<u64, String> {
    let mut head = [0u8; 8];
    r.read_exact(&mut head)
        .map_err(|_| "too short for a safetensors file".to_string())?;
    let n = u64::from_le_bytes(head);
    if n > MAX_HEADER || n > len.saturating_sub(8) {
        return Err(format!("safetensors header of {n} bytes"));
    }
    let mut header = vec![0u8; n as usize];
    r.read_exact(&mut header)
        .map_err(|e| format!("safetensors header: {e}"))?;
    let parsed: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| format!("safetensors header does not parse: {e}"))?;
    Ok(parsed
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, t)| t["shape"].as_array())
        .map(|shape| {
            shape
                .iter()
                .map(|d| d.as_u64().unwrap_or(0))
                .fold(1u64, u64::saturating_mul)
        })
        .fold(0u64, u64::saturating_add))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn safetensors(path: &Path, header: &str) {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[0u8; 64]);
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn formats_are_told_apart_by_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let st = dir.path().join("st");
        fs::create_dir(&st).unwrap();
        fs::write(
            st.join("config.json"),
            r#"{"architectures":["LlamaForCausalLM"],"max_position_embeddings":2048}"#,
        )
        .unwrap();
        assert!(matches!(detect(&st), Err(StoreError::NotAModel { .. })));
        safetensors(
            &st.join("model.safetensors"),
            r#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"__metadata__":{}}"#,
        );
        fs::write(st.join("tokenizer.json"), "{}").unwrap();
        assert_eq!(detect(&st).unwrap(), ModelFormat::Safetensors);
        let files = list_files(&st).unwrap();
        let d = describe(ModelFormat::Safetensors, &st, &files).unwrap();
        assert_eq!(
            (d.architecture.as_str(), d.context_length, d.parameters),
            ("LlamaForCausalLM", Some(2048), 6)
        );

        let pipe = dir.path().join("pipe");
        fs::create_dir_all(pipe.join("unet")).unwrap();
        fs::write(
            pipe.join("model_index.json"),
            r#"{"_class_name":"StableDiffusionPipeline"}"#,
        )
        .unwrap();
        fs::write(pipe.join("unet/config.json"), "{}").unwrap();
        fs::write(pipe.join(".hidden"), "x").unwrap();
        assert_eq!(detect(&pipe).unwrap(), ModelFormat::Diffusers);
        let rels: Vec<_> = list_files(&pipe)
            .unwrap()
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        assert_eq!(
            rels,
            [
                PathBuf::from("model_index.json"),
                PathBuf::from("unet/config.json")
            ]
        );

        let dduf = dir.path().join("x.dduf");
        fs::write(&dduf, "zip").unwrap();
        assert_eq!(detect(&dduf).unwrap(), ModelFormat::Dduf);
    }

    #[test]
    fn symlinks_are_followed_inside_the_model_only() {
        let dir = tempfile::tempdir().unwrap();
        let (model, outside) = (dir.path().join("m"), dir.path().join("secret"));
        fs::create_dir_all(model.join("blobs")).unwrap();
        fs::write(model.join("blobs/weights"), "w").unwrap();
        fs::write(&outside, "HF_TOKEN=hf_secret").unwrap();
        std::os::unix::fs::symlink("blobs/weights", model.join("model.safetensors")).unwrap();
        let rels: Vec<_> = list_files(&model)
            .unwrap()
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        assert_eq!(
            rels,
            [
                PathBuf::from("blobs/weights"),
                PathBuf::from("model.safetensors")
            ]
        );
        for (name, target) in [
            ("tokenizer.json", outside.clone()),
            ("environ", PathBuf::from("/proc/self/environ")),
            ("up", dir.path().to_path_buf()),
            ("loop", model.join("blobs")),
        ] {
            std::os::unix::fs::symlink(&target, model.join(name)).unwrap();
            let err = list_files(&model).unwrap_err().to_string();
            assert!(err.contains(&format!("{name} is a symlink to")), "{err}");
            let shown = |p: &Path| err.contains(&*p.to_string_lossy());
            assert!(
                !err.contains("hf_secret") && !shown(&outside) && !err.contains("/proc"),
                "{err}"
            );
            fs::remove_file(model.join(name)).unwrap();
        }
    }

    #[test]
    fn a_hostile_safetensors_header_is_an_error_not_an_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        let mut bytes = (1u64 << 60).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        fs::write(&p, bytes).unwrap();
        assert!(safetensors_parameters(&p).is_err());
    }

    #[test]
    fn bundle_paths_stay_inside() {
        assert!(safe_relative("unet/diffusion_pytorch_model.safetensors"));
        for bad in ["", "../x", "/etc/passwd", "a/../../b", "a\0b"] {
            assert!(!safe_relative(bad), "{bad:?}");
        }
    }
}
