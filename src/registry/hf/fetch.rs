//! One Hugging Face file's download into the staging directory: `<target>.incomplete`, resumed with a Range
//! request after a cut, never written past the size the tree lists (a longer answer is cut off at its first
//! extra byte, whether announced by `Content-Length` or not), then checked against the listed hash before it is
//! renamed into place. A file that is not what its listing says is `Failure::Refused` (its partial removed); a
//! cut, an error status or the disk is `Failure::Other` (what arrived is kept for the next pull).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::{check, error_body, io, status_error, File, Hub};
use crate::registry::spool::Spool;
use crate::registry::{Progress, RegistryError};

/// Why a file's download stopped.
pub(super) enum Failure {
    /// The file is not what its tree entry lists: nothing of the repository's staging is kept.
    Refused(RegistryError),
    /// Anything else (a cut, a status, the disk): what arrived stays for the next pull to resume.
    Other(RegistryError),
}

/// The refusal of a file that is not what its tree entry lists.
fn refused(f: &File, what: &str, why: &str) -> Failure {
    Failure::Refused(RegistryError::Registry(format!(
        "{} from {what} {why}; nothing of it is kept",
        f.path
    )))
}

/// Checks a finished file against its listing (on the blocking pool).
pub(super) async fn verify(path: &Path, f: &File, what: &str) -> Result<(), Failure> {
    let (p, want) = (path.to_path_buf(), f.want.clone());
    let checked = tokio::task::spawn_blocking(move || check::check_file(&p, &want))
        .await
        .map_err(|e| Failure::Other(RegistryError::Registry(format!("hash task failed: {e}"))))?;
    match checked {
        Ok(None) => Ok(()),
        Ok(Some(why)) => Err(refused(f, what, &why)),
        Err(e) => Err(Failure::Other(io(e, path))),
    }
}

/// Downloads one file to `target` through `<target>.incomplete`, resuming it with a Range request. Bytes past the
/// listed size are never written: the download stops there, and the partial file is removed; a finished file
/// must have the listed hash.
#[allow(clippy::too_many_arguments)]
pub(super) async fn fetch(
    hub: &Hub,
    url: &str,
    f: &File,
    target: &Path,
    total: u64,
    before: u64,
    progress: &(dyn Fn(Progress) + Send + Sync),
    what: &str,
) -> Result<(), Failure> {
    let size = f.want.size;
    let partial = PathBuf::from(format!("{}.incomplete", target.display()));
    let other = |e: std::io::Error, p: &Path| Failure::Other(io(e, p));
    let discard = |why: String| {
        let _ = std::fs::remove_file(&partial);
        refused(f, what, &why)
    };
    if let Some(dir) = partial.parent() {
        std::fs::create_dir_all(dir).map_err(|e| other(e, dir))?;
    }
    for attempt in 1..=4 {
        let mut have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if have > size {
            std::fs::remove_file(&partial).map_err(|e| other(e, &partial))?;
            have = 0;
        }
        if have < size || !partial.exists() {
            let mut req = hub.get(url);
            if have > 0 {
                req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) if attempt < 4 => {
                    tracing::warn!(url, error = %e, "download failed; retrying");
                    continue;
                }
                Err(e) => {
                    return Err(Failure::Other(RegistryError::Registry(format!(
                        "downloading {url}: {e}"
                    ))))
                }
            };
            let status = resp.status().as_u16();
            if status == 416 && have > 0 {
                return Err(discard(format!(
                    "ends before the {size} bytes listed (a range from {have} is unsatisfiable)"
                )));
            }
            if !(200..300).contains(&status) {
                let body = error_body(resp).await;
                return Err(Failure::Other(status_error(status, what, &body)));
            }
            let append = status == 206;
            if !append {
                have = 0;
            }
            // The length announced is refused before a byte is read.
            if let Some(n) = resp.content_length() {
                if let Err(why) = check::admit(have, n, size) {
                    return Err(discard(why));
                }
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(&partial)
                .map_err(|e| other(e, &partial))?;
            let mut stream = resp.bytes_stream();
            let mut spool = Spool::new(file);
            let mut cut = false;
            let mut last = Instant::now();
            loop {
                let chunk = match stream.next().await {
                    Some(Ok(c)) => Some(c),
                    Some(Err(e)) => {
                        tracing::warn!(url, have, error = %e, "download broke; resuming");
                        cut = true;
                        None
                    }
                    None => None,
                };
                if let Some(c) = &chunk {
                    // Past the listed size: stop reading; nothing beyond it was written.
                    let queued = have + spool.pending() as u64;
                    if let Err(why) = check::admit(queued, c.len() as u64, size) {
                        drop(spool);
                        return Err(discard(why));
                    }
                }
                let due = match &chunk {
                    Some(c) => spool.queue(c) || last.elapsed() >= Duration::from_millis(100),
                    None => true,
                };
                if due {
                    if let Err(e) = spool.flush(|b| have += b.len() as u64).await {
                        // The disk refused: nothing partial is kept.
                        drop(spool);
                        let _ = std::fs::remove_file(&partial);
                        return Err(other(e, &partial));
                    }
                    last = Instant::now();
                    progress(Progress {
                        layer: f.want.layer_id(&f.path),
                        layer_size: size,
                        layer_done: have,
                        total,
                        done: before.saturating_add(have),
                    });
                }
                if chunk.is_none() {
                    break;
                }
            }
            spool.sync().await.map_err(|e| other(e, &partial))?;
            if cut || have < size {
                continue;
            }
        }
        if let Err(e) = verify(&partial, f, what).await {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        std::fs::rename(&partial, target).map_err(|e| other(e, target))?;
        return Ok(());
    }
    Err(Failure::Other(RegistryError::Registry(format!(
        "{} from {what} kept breaking off before the {size} bytes listed; what arrived is kept for the next pull",
        f.path
    ))))
}
