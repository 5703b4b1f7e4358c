//! Installing engines: each engine's recipe (`engines/<name>/install.sh` and the files beside it, named by its
//! `Engine::install_recipe`) is compiled into the binary, written to a temp directory and run with bash, its output lines reported as progress. Used by
//! `dmr-supervisor engines install NAME` and `POST /engines/install-backend`. Also reads an installed engine's
//! version (the `version` file a recipe writes, or llama.cpp's pinned directory name).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::EngineKind;

/// The files of an engine's recipe: (name, content); `install.sh` is run.
fn recipe(engine: EngineKind) -> &'static [(&'static str, &'static str)] {
    engine.install_recipe()
}

/// Runs `engine`'s recipe with `args`, sending each output line (stdout and stderr) to `progress`. Returns the
/// recipe's last stdout line (the installed path) or why it failed: its last stderr line, where recipes put their
/// reason (stdout only if stderr was silent). The two pipes are read concurrently, so which of them spoke last
/// is not a reliable order and is not used.
pub async fn run(
    engine: EngineKind,
    args: &[String],
    progress: impl Fn(String),
) -> Result<String, String> {
    let dir = tempfile::Builder::new()
        .prefix("dmr-install-")
        .tempdir()
        .map_err(|e| format!("cannot make a temp directory: {e}"))?;
    for (name, content) in recipe(engine) {
        std::fs::write(dir.path().join(name), content)
            .map_err(|e| format!("cannot write the recipe: {e}"))?;
    }
    run_script(engine.name(), dir.path(), args, progress).await
}

/// Runs `dir/install.sh` with bash in `dir`; see [`run`].
async fn run_script(
    name: &str,
    dir: &Path,
    args: &[String],
    progress: impl Fn(String),
) -> Result<String, String> {
    let mut child = Command::new("bash")
        .arg(dir.join("install.sh"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run bash: {e}"))?;
    let (out, err) = (
        child.stdout.take().expect("piped"), // invariant: set above
        child.stderr.take().expect("piped"),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(bool, String)>();
    for (is_out, reader) in [
        (
            true,
            Box::new(out) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        ),
        (false, Box::new(err)),
    ] {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(reader).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send((is_out, line));
            }
        });
    }
    drop(tx);
    let (mut last_out, mut last_err) = (String::new(), String::new());
    while let Some((is_out, line)) = rx.recv().await {
        if is_out {
            last_out.clone_from(&line);
        } else {
            last_err.clone_from(&line);
        }
        progress(line);
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("waiting for the recipe: {e}"))?;
    if status.success() {
        Ok(last_out)
    } else {
        let reason = if last_err.is_empty() {
            last_out
        } else {
            last_err
        };
        Err(format!("installing {name} failed ({status}): {reason}"))
    }
}

/// The version of the engine installed at `program`: the recipe's `version` file beside `bin/`, else (llama.cpp)
/// the pinned directory the `current` link points to.
pub fn version(program: &Path) -> Option<String> {
    let real = std::fs::canonicalize(program).unwrap_or_else(|_| program.to_path_buf());
    let prefixes: Vec<PathBuf> = [program, real.as_path()]
        .iter()
        .filter_map(|p| p.parent()?.parent().map(Path::to_path_buf))
        .collect();
    for prefix in &prefixes {
        if let Ok(v) = std::fs::read_to_string(prefix.join("version")) {
            let v = v.trim();
            if !v.is_empty() {
                return Some(v.to_string());
            }
        }
    }
    let pinned = prefixes.last()?;
    let in_llama_dir = pinned.parent()?.file_name()? == "llama.cpp";
    in_llama_dir.then(|| pinned.file_name().map(|n| n.to_string_lossy().into_owned()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_recipe_is_valid_bash() {
        for engine in EngineKind::ALL {
            for (name, content) in recipe(engine) {
                if name.ends_with(".sh") {
                    let out = std::process::Command::new("bash")
                        .args(["-n", "-c", content])
                        .output()
                        .expect("bash");
                    assert!(
                        out.status.success(),
                        "{}/{name}: {}",
                        engine.name(),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn a_failure_is_explained_by_the_last_stderr_line_whatever_stdout_says_after() {
        let tmp = tempfile::tempdir().unwrap();
        let script = "echo step 1; echo 'x: error: no driver' >&2; sleep 0.2; echo 'step 1: checking'; exit 1";
        std::fs::write(tmp.path().join("install.sh"), script).unwrap();
        let lines = std::sync::Mutex::new(Vec::new());
        let err = run_script("x", tmp.path(), &[], |l| lines.lock().unwrap().push(l))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            "installing x failed (exit status: 1): x: error: no driver"
        );
        assert_eq!(lines.into_inner().unwrap().len(), 3);
        std::fs::write(tmp.path().join("install.sh"), "echo only out; exit 2").unwrap();
        let err = run_script("x", tmp.path(), &[], |_| {}).await.unwrap_err();
        assert_eq!(err, "installing x failed (exit status: 2): only out");
        std::fs::write(
            tmp.path().join("install.sh"),
            "echo progress >&2; echo /opt/x/bin/x",
        )
        .unwrap();
        let ok = run_script("x", tmp.path(), &[], |_| {}).await.unwrap();
        assert_eq!(ok, "/opt/x/bin/x");
    }

    #[test]
    fn versions_come_from_the_recipe_or_the_pinned_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let venv = tmp.path().join("vllm");
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        std::fs::write(venv.join("bin/vllm"), "").unwrap();
        std::fs::write(venv.join("version"), "0.11.0\n").unwrap();
        assert_eq!(version(&venv.join("bin/vllm")).as_deref(), Some("0.11.0"));
        let llama = tmp.path().join("llama.cpp");
        std::fs::create_dir_all(llama.join("0.3.36/bin")).unwrap();
        std::fs::write(llama.join("0.3.36/bin/llama-server"), "").unwrap();
        std::os::unix::fs::symlink("0.3.36", llama.join("current")).unwrap();
        assert_eq!(
            version(&llama.join("current/bin/llama-server")).as_deref(),
            Some("0.3.36")
        );
        assert_eq!(version(Path::new("/usr/bin/true")), None);
    }
}
