//! Hugging Face pulls (`hf.co/org/repo[:quant]`), as DMR does them: not through HF's OCI endpoint but its HTTP API —
//! the repository's file tree (`/api/models/<repo>/tree/main?recursive=true`), then each file from
//! `/<repo>/resolve/main/<path>`. A GGUF repository gives one file, chosen by the tag (`latest`, `main` or none → the
//! `Q4_K_M` file, else the first GGUF; another tag → the GGUF whose name contains it); any other repository is taken
//! whole (a safetensors or diffusers model). Files are staged in the store's `hf-staging/` directory (`.incomplete`
//! until done, resumed with Range), each held to the size and hash its tree entry lists (`fetch.rs` downloads one file,
//! `check.rs` says what it must be: a byte past the listed size stops the download, a mismatch keeps nothing of the
//! repository's staging), stamped with the repository's `lastModified` (so the model id is the same on every machine),
//! then imported like a local model. The endpoint is not trusted further than that: its listings are read under
//! `[registry] max_manifest_bytes`, at most `MAX_FILES` files are taken, and error bodies are read under
//! `ERROR_BODY_BYTES`. `HF_TOKEN` (or the request's bearer token) is sent as `Authorization: Bearer`; the endpoint is
//! configurable.

mod check;
mod fetch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use serde::Deserialize;

use super::{Progress, RegistryError};
use crate::store::{Model, Store};
use check::Expected;
use fetch::{fetch, verify, Failure};

/// The most files one pull takes from a repository (one page of HF's tree API; the largest safetensors and
/// diffusers repositories hold a few hundred). More is refused before anything is downloaded.
pub const MAX_FILES: usize = 1000;

/// How much of an error answer's body is read, for its message.
const ERROR_BODY_BYTES: usize = 64 << 10;

/// One entry of HF's tree listing: `{"type","oid","size","path"}`, LFS files also with `"lfs": {"oid", "size",
/// "pointerSize"}`.
#[derive(Debug, Clone, Deserialize)]
pub struct TreeEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub path: String,
    /// Bytes (for LFS files, of the content, not of the pointer).
    #[serde(default)]
    pub size: Option<u64>,
    /// The git blob id: of the content, or of the LFS pointer for LFS files.
    #[serde(default)]
    pub oid: Option<String>,
    #[serde(default)]
    pub lfs: Option<Lfs>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Lfs {
    /// The content's sha256, hex (`sha256` in the model info's siblings).
    #[serde(default, alias = "sha256")]
    pub oid: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Info {
    #[serde(rename = "lastModified", default)]
    last_modified: Option<String>,
}

/// `hf.co/org/repo[:tag]` or `huggingface.co/...` → (`org/repo` as typed, tag).
pub fn parse(from: &str) -> Option<(String, String)> {
    let rest = from
        .strip_prefix("hf.co/")
        .or_else(|| from.strip_prefix("huggingface.co/"))?;
    let (repo, tag) = match rest.rsplit_once(':') {
        Some((r, t)) if !r.is_empty() && !t.contains('/') => (r, t),
        _ => (rest, "latest"),
    };
    let parts: Vec<&str> = repo.split('/').collect();
    let ok = parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        });
    ok.then(|| (repo.to_string(), tag.to_string()))
}

/// Whether a repository file is a vision model's multimodal projector (`mmproj-*.gguf`, as DMR and llama.cpp's
/// repositories name them).
fn is_mmproj(path: &str) -> bool {
    path.ends_with(".gguf") && path.to_ascii_lowercase().contains("mmproj")
}

/// The files to fetch from a repository's tree for `tag`; an error names why none fit. A GGUF repository gives
/// its chosen weights, then its projector if it has one (F16 preferred, as DMR picks), packaged as the model's
/// mmproj layer.
pub fn choose(tree: &[TreeEntry], tag: &str) -> Result<Vec<TreeEntry>, String> {
    let files: Vec<&TreeEntry> = tree.iter().filter(|e| e.kind == "file").collect();
    let ggufs: Vec<&TreeEntry> = files
        .iter()
        .copied()
        .filter(|e| e.path.ends_with(".gguf") && !is_mmproj(&e.path))
        .collect();
    let projectors: Vec<&TreeEntry> = files
        .iter()
        .copied()
        .filter(|e| is_mmproj(&e.path))
        .collect();
    let projector = projectors
        .iter()
        .find(|e| e.path.to_ascii_lowercase().contains("f16"))
        .or(projectors.first())
        .map(|e| (*e).clone());
    if ggufs.is_empty() {
        let model: Vec<TreeEntry> = files
            .into_iter()
            .filter(|e| {
                let name = e.path.rsplit('/').next().unwrap_or(&e.path);
                !name.starts_with('.') && !name.eq_ignore_ascii_case("README.md")
            })
            .cloned()
            .collect();
        if model.is_empty() {
            return Err("the repository has no files".into());
        }
        return Ok(model);
    }
    let wanted = match tag {
        "" | "latest" | "main" => "Q4_K_M",
        t => t,
    };
    let lower = wanted.to_ascii_lowercase();
    let found = ggufs
        .iter()
        .find(|e| e.path.to_ascii_lowercase().contains(&lower))
        .or(if wanted == "Q4_K_M" {
            ggufs.first()
        } else {
            None
        });
    match found {
        Some(e) => Ok(std::iter::once((*e).clone()).chain(projector).collect()),
        None => Err(format!(
            "no GGUF file in the repository matches {tag:?} (it has {})",
            ggufs
                .iter()
                .map(|e| e.path.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Hugging Face's HTTP API at one endpoint, with the token (if any) sent on every request.
struct Hub {
    http: reqwest::Client,
    endpoint: String,
    token: Option<String>,
}

impl Hub {
    /// A GET of `path` (which starts with `/`).
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.get(format!("{}{path}", self.endpoint));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }
}

/// One file of a plan: its path in the repository and what its download must be.
struct File {
    path: String,
    want: Expected,
}

/// What a Hugging Face pull will fetch, found before anything is downloaded (so its failures are HTTP statuses).
pub struct Plan {
    hub: Hub,
    repo: String,
    files: Vec<File>,
    created: SystemTime,
}

impl Plan {
    pub fn total(&self) -> u64 {
        total(&self.files)
    }
}

fn total(files: &[File]) -> u64 {
    files
        .iter()
        .fold(0u64, |n, f| n.saturating_add(f.want.size))
}

/// Lists `org/repo` on `endpoint` and chooses the files for `tag`; listings larger than `max_listing` bytes, more
/// than `MAX_FILES` files, and entries without a size or with a malformed hash are refused (502).
pub async fn prepare(
    http: reqwest::Client,
    endpoint: &str,
    repo: &str,
    tag: &str,
    token: Option<&str>,
    max_listing: u64,
) -> Result<Plan, RegistryError> {
    let hub = Hub {
        http,
        endpoint: endpoint.trim_end_matches('/').to_string(),
        token: token.filter(|t| !t.is_empty()).map(str::to_string),
    };
    let what = format!("hf.co/{repo}");
    let tree: Vec<TreeEntry> = json(
        hub.get(&format!("/api/models/{repo}/tree/main?recursive=true")),
        &what,
        max_listing,
    )
    .await?;
    let info: Info = json(hub.get(&format!("/api/models/{repo}")), &what, max_listing).await?;
    let chosen = choose(&tree, tag).map_err(RegistryError::NotFound)?;
    if chosen.len() > MAX_FILES {
        return Err(RegistryError::Registry(format!(
            "{what} has {} files to download, more than the {MAX_FILES} a pull takes",
            chosen.len()
        )));
    }
    if let Some(bad) = chosen
        .iter()
        .find(|f| !crate::store::format::safe_relative(&f.path))
    {
        return Err(RegistryError::Registry(format!(
            "the repository lists an unsafe path {:?}",
            bad.path
        )));
    }
    let files = chosen
        .into_iter()
        .map(|e| {
            let want = check::expected(&e)
                .map_err(|why| RegistryError::Registry(format!("{what}: {why}")))?;
            Ok(File { path: e.path, want })
        })
        .collect::<Result<Vec<_>, RegistryError>>()?;
    let created = info
        .last_modified
        .as_deref()
        .and_then(parse_rfc3339)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(Plan {
        hub,
        repo: repo.to_string(),
        files,
        created,
    })
}

/// Downloads a planned pull and imports it under `store_tag`.
pub async fn pull(
    store: Arc<Store>,
    plan: Plan,
    store_tag: &str,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Model, RegistryError> {
    let Plan {
        hub,
        repo,
        files,
        created,
    } = plan;
    let what = format!("hf.co/{repo}");
    let staging = store
        .root()
        .join("hf-staging")
        .join(repo.replace('/', "--"));
    std::fs::create_dir_all(&staging).map_err(|e| io(e, &staging))?;
    let total = total(&files);
    let mut done = 0u64;
    for f in &files {
        let target = staging.join(&f.path);
        let staged = async {
            // A file staged by an earlier pull is checked again: the repository may have changed since.
            if target.is_file() && verify(&target, f, &what).await.is_err() {
                std::fs::remove_file(&target).map_err(|e| Failure::Other(io(e, &target)))?;
            }
            if !target.is_file() {
                let url = format!("/{repo}/resolve/main/{}", f.path);
                fetch(&hub, &url, f, &target, total, done, progress, &what).await?;
            }
            set_mtime(&target, created).map_err(Failure::Other)
        };
        match staged.await {
            Ok(()) => {}
            Err(Failure::Other(e)) => return Err(e),
            Err(Failure::Refused(e)) => {
                let _ = std::fs::remove_dir_all(&staging);
                if let Some(parent) = staging.parent() {
                    let _ = std::fs::remove_dir(parent); // only when no other pull stages there
                }
                return Err(e);
            }
        }
        done = done.saturating_add(f.want.size);
        progress(Progress {
            layer: f.want.layer_id(&f.path),
            layer_size: f.want.size,
            layer_done: f.want.size,
            total,
            done,
        });
    }
    // A single GGUF (and its projector) is imported as a file; anything else as the repository's directory.
    let mmproj: Option<PathBuf> = files
        .iter()
        .find(|f| is_mmproj(&f.path))
        .map(|f| staging.join(&f.path));
    let weights: Vec<&File> = files.iter().filter(|f| !is_mmproj(&f.path)).collect();
    let src: PathBuf = match weights[..] {
        [only] if only.path.ends_with(".gguf") => staging.join(&only.path),
        _ => staging.clone(),
    };
    let (s, tag) = (store.clone(), store_tag.to_string());
    let model = super::on_store(move || match &mmproj {
        Some(mmproj) => {
            let extras = crate::store::GgufExtras {
                mmproj: Some(mmproj),
                ..Default::default()
            };
            s.package_gguf(&src, &tag, extras, &mut |_| {})
        }
        None => s.import(&src, &tag, &mut |_| {}),
    })
    .await?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(model)
}

/// A JSON answer of at most `cap` bytes.
async fn json<T: serde::de::DeserializeOwned>(
    req: reqwest::RequestBuilder,
    what: &str,
    cap: u64,
) -> Result<T, RegistryError> {
    let fail = |e: String| RegistryError::Registry(format!("Hugging Face ({what}): {e}"));
    let resp = req.send().await.map_err(|e| fail(super::with_causes(&e)))?;
    let status = resp.status();
    if !status.is_success() {
        let body = error_body(resp).await;
        return Err(status_error(status.as_u16(), what, &body));
    }
    let too_big = || fail(format!("the listing is larger than {cap} bytes"));
    if resp.content_length().is_some_and(|n| n > cap) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| fail(e.to_string()))?;
        if (body.len() + chunk.len()) as u64 > cap {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| fail(e.to_string()))
}

/// The start of an error answer's body (at most `ERROR_BODY_BYTES`), for its message.
async fn error_body(resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = ERROR_BODY_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= ERROR_BODY_BYTES {
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

fn status_error(status: u16, what: &str, body: &str) -> RegistryError {
    let detail = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string());
    match status {
        401 | 403 => RegistryError::Unauthorized(format!(
            "not authorized for {what}: {detail} (set HF_TOKEN, or pass a bearer token)"
        )),
        404 => RegistryError::NotFound(format!("{what} not found on Hugging Face: {detail}")),
        s => RegistryError::Registry(format!("Hugging Face answered {s} for {what}: {detail}")),
    }
}

fn set_mtime(path: &Path, t: SystemTime) -> Result<(), RegistryError> {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .map_err(|e| io(e, path))?;
    f.set_modified(t).map_err(|e| io(e, path))
}

fn io(e: std::io::Error, path: &Path) -> RegistryError {
    RegistryError::Store(crate::store::StoreError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

/// `2024-05-01T12:34:56.000Z` → a time (UTC; fractions ignored).
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let time = time.trim_end_matches('Z');
    let time = time.split(['.', '+']).next()?;
    let mut t = time.split(':').map(|p| p.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> TreeEntry {
        TreeEntry {
            kind: "file".into(),
            path: path.into(),
            size: Some(1),
            oid: None,
            lfs: None,
        }
    }

    #[test]
    fn references_and_quantisation_choice_follow_dmr() {
        assert_eq!(
            parse("hf.co/Org/Repo-GGUF:Q8_0"),
            Some(("Org/Repo-GGUF".into(), "Q8_0".into()))
        );
        assert_eq!(
            parse("huggingface.co/a/b"),
            Some(("a/b".into(), "latest".into()))
        );
        assert_eq!(parse("hf.co/a/../b"), None);
        assert_eq!(parse("hf.co/a"), None);
        let tree = vec![
            entry("README.md"),
            entry("m-Q8_0.gguf"),
            entry("m-Q4_K_M.gguf"),
            entry("mmproj-f16.gguf"),
        ];
        let paths = |tree: &[TreeEntry], tag| -> Vec<String> {
            choose(tree, tag)
                .unwrap()
                .into_iter()
                .map(|e| e.path)
                .collect()
        };
        assert_eq!(paths(&tree, "latest"), ["m-Q4_K_M.gguf", "mmproj-f16.gguf"]);
        assert_eq!(paths(&tree, "q8_0"), ["m-Q8_0.gguf", "mmproj-f16.gguf"]);
        let mut two = tree.clone();
        two.insert(1, entry("mmproj-Q8_0.gguf"));
        assert_eq!(
            paths(&two, "latest"),
            ["m-Q4_K_M.gguf", "mmproj-f16.gguf"],
            "F16 first"
        );
        two.retain(|e| e.path != "mmproj-f16.gguf");
        assert_eq!(paths(&two, "latest"), ["m-Q4_K_M.gguf", "mmproj-Q8_0.gguf"]);
        assert_eq!(
            paths(&two[2..], "latest"),
            ["m-Q4_K_M.gguf"],
            "no projector, none fetched"
        );
        assert!(choose(&tree, "Q2_K").unwrap_err().contains("no GGUF file"));
        let only = vec![entry("x-f16.gguf")];
        assert_eq!(choose(&only, "latest").unwrap()[0].path, "x-f16.gguf");
        let st = vec![
            entry(".gitattributes"),
            entry("README.md"),
            entry("config.json"),
            entry("model.safetensors"),
        ];
        let paths: Vec<_> = choose(&st, "latest")
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(paths, ["config.json", "model.safetensors"]);
    }

    #[test]
    fn hf_timestamps_parse() {
        let t = parse_rfc3339("2024-05-01T12:34:56.000Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_714_566_896
        );
    }
}
