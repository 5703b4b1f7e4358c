//! One engine process: spawned in its own process group with `PR_SET_PDEATHSIG` (so it dies with us even when we
//! are SIGKILLed), its stdout/stderr read by a thread each (blocking pipes, off the async reactor) into the log hub
//! and a bounded buffer, readiness polled on
//! `GET /health`, and stopped as a whole group (SIGTERM, grace, SIGKILL, reap). When `stop` or `wait_exit`
//! returns, the engine's whole process group has been signalled and the leader reaped: nothing it spawned remains.
//!
//! PR_SET_PDEATHSIG fires when the *thread* that forked the child exits. We spawn from tokio worker threads, which
//! live as long as the runtime, and the runtime outlives every runner (shutdown stops them first).

use std::collections::VecDeque;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::sandbox::confine::Confinement;

/// Lines of engine output kept per runner.
const LOG_LINES: usize = 200;
/// Longer lines are cut (the rest of the line is dropped).
const MAX_LINE: usize = 4096;
/// Lines of stderr quoted in an error returned to a client.
const TAIL_LINES: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("the engine {status} while loading; its last output:\n{tail}")]
    ExitedDuringStartup { status: String, tail: String },
    #[error("the engine was not ready after {after:?}; its last output:\n{tail}")]
    StartupTimeout { after: Duration, tail: String },
}

/// A bounded, shared buffer of an engine's most recent output lines.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<VecDeque<String>>>);

impl LogBuffer {
    fn push(&self, line: String) {
        // A poisoned lock only means another reader panicked mid-push; the buffer is still usable.
        let mut lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == LOG_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The last `n` lines, joined with newlines.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let skip = lines.len().saturating_sub(n);
        lines
            .iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

pub struct EngineProcess {
    child: Child,
    pid: u32,
    logs: LogBuffer,
    /// Poked on every output line: readiness is re-checked at once when the engine says something.
    activity: Arc<Notify>,
    /// Each fires when its output reader thread has read to EOF.
    readers: Vec<tokio::sync::oneshot::Receiver<()>>,
    /// Dropped when the engine has exited: the readers stop letting the pipe fill and read to EOF at once, so the
    /// end of an engine is reported without waiting out their pause.
    hurry: Vec<std::sync::mpsc::Sender<()>>,
    /// Set once the engine is ready: from then on the readers let the pipe fill between reads. While it starts
    /// they read each line at once, since readiness is re-polled whenever the engine prints one.
    serving: Arc<std::sync::atomic::AtomicBool>,
    exit: Option<String>,
    /// The model, for log lines.
    label: String,
    /// The sandboxed engine's private directory, removed when the process is dropped (after it is gone).
    _private: Option<tempfile::TempDir>,
}

/// What an engine does not inherit of the supervisor's environment: systemd's notification socket and watchdog
/// (a notification from the engine would speak for the supervisor), and the Hugging Face token the supervisor pulls
/// with.
pub const NOT_INHERITED: [&str; 5] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
];

impl EngineProcess {
    /// Starts `binary args...` in a new process group, with `env` added to ours, confined by `sandbox` when
    /// given. `label` names the engine in logs (the model name).
    pub fn spawn(
        binary: &Path,
        args: &[String],
        env: &[(String, String)],
        label: &str,
        sandbox: Option<Confinement>,
    ) -> Result<EngineProcess, EngineError> {
        let spawn_err = |source| EngineError::Spawn {
            binary: binary.display().to_string(),
            source,
        };
        let parent = nix::unistd::getpid();
        // Plain blocking pipes read by threads of their own, not the async reactor: llama-server writes each log
        // line in three writes, and every write to a pipe the reactor watches wakes a worker thread (edge-triggered
        // epoll reports each one), most of the proxy's CPU per request.
        let (out_r, out_w) = std::io::pipe().map_err(spawn_err)?;
        let (err_r, err_w) = std::io::pipe().map_err(spawn_err)?;
        let mut cmd = Command::new(binary);
        cmd.args(args);
        // systemd's notification socket and watchdog, and the supervisor's credentials, are not the engine's: an
        // engine loads models from the store and never needs them.
        for name in NOT_INHERITED {
            cmd.env_remove(name);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out_w)
            .stderr(err_w)
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: the closure runs in the forked child before exec; it only makes async-signal-safe syscalls
        // (prctl, getppid) and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
                if nix::unistd::getppid() != parent {
                    return Err(std::io::Error::other(
                        "the supervisor exited while the engine was starting",
                    ));
                }
                Ok(())
            });
        }
        // After our own `pre_exec`: the user switch happens before both, the sandbox's steps after PDEATHSIG.
        if let Some(sandbox) = &sandbox {
            sandbox.apply(&mut cmd);
        }
        let spawned = cmd.spawn();
        // The child has entered (or will enter) its own copy of the Landlock ruleset; ours closes here.
        let private = sandbox.map(Confinement::into_private);
        // Our copies of the write ends go, so the readers see EOF when the engine's group is gone.
        drop(cmd);
        let child = spawned.map_err(spawn_err)?;
        let pid = child
            .id()
            .ok_or_else(|| spawn_err(std::io::Error::other("the engine exited at once")))?;
        let logs = LogBuffer::default();
        let activity = Arc::new(Notify::new());
        let mut readers = Vec::new();
        let mut hurry = Vec::new();
        let serving = Arc::new(std::sync::atomic::AtomicBool::new(false));
        for pipe in [out_r, err_r] {
            let (done_tx, done) = tokio::sync::oneshot::channel();
            let (hurry_tx, hurry_rx) = std::sync::mpsc::channel::<()>();
            let (logs, activity, label) = (logs.clone(), activity.clone(), label.to_string());
            let serving = serving.clone();
            let reader = std::thread::Builder::new()
                .name(format!("engine-out-{pid}"))
                .spawn(move || {
                    let pace = Pace {
                        hurry: &hurry_rx,
                        serving: &serving,
                    };
                    read_lines(pipe, pace, &logs, &activity, &label, pid);
                    let _ = done_tx.send(());
                });
            match reader {
                Ok(_) => {
                    readers.push(done);
                    hurry.push(hurry_tx);
                }
                Err(e) => {
                    tracing::warn!(runner.pid = pid, error = %e, "cannot start an output reader")
                }
            }
        }
        tracing::info!(model = label, runner.pid = pid, binary = %binary.display(), ?args, "engine started");
        Ok(EngineProcess {
            child,
            pid,
            logs,
            activity,
            readers,
            hurry,
            serving,
            exit: None,
            label: label.to_string(),
            _private: private,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn logs(&self) -> &LogBuffer {
        &self.logs
    }

    /// Polls `GET /health` on `port` until it answers 200, with a short backoff (5 ms, growing to 200 ms) and an
    /// immediate re-check whenever the engine prints a line. Fails fast when the process exits.
    pub async fn wait_ready(&mut self, port: u16, timeout: Duration) -> Result<(), EngineError> {
        let start = Instant::now();
        loop {
            if probe_health(port).await == Some(200) {
                self.serving
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                return Ok(());
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                return Err(EngineError::StartupTimeout {
                    after: timeout,
                    tail: self.logs.tail(TAIL_LINES),
                });
            }
            let interval =
                (elapsed / 50).clamp(Duration::from_millis(5), Duration::from_millis(200));
            tokio::select! {
                status = self.child.wait() => {
                    let status = describe(status);
                    self.finish(status.clone()).await;
                    return Err(EngineError::ExitedDuringStartup { status, tail: self.logs.tail(TAIL_LINES) });
                }
                _ = tokio::time::sleep(interval) => {}
                _ = self.activity.notified() => {}
            }
        }
    }

    /// Waits until the engine's leader exits by itself and reaps it; its group is not cleared and its output not
    /// drained yet (`wait_exit` does that). Cancel-safe.
    pub async fn reaped(&mut self) -> String {
        if let Some(e) = &self.exit {
            return e.clone();
        }
        describe(self.child.wait().await)
    }

    /// Waits until the engine exits by itself; then clears its process group. Returns how it ended.
    pub async fn wait_exit(&mut self) -> String {
        if let Some(e) = &self.exit {
            return e.clone();
        }
        let status = describe(self.child.wait().await);
        self.finish(status.clone()).await;
        status
    }

    /// SIGTERM to the group, up to `grace` for the leader to exit, then SIGKILL to the group; always reaps.
    pub async fn stop(&mut self, grace: Duration) -> String {
        if let Some(e) = &self.exit {
            return e.clone();
        }
        let pgid = Pid::from_raw(self.pid as i32);
        let _ = killpg(pgid, Signal::SIGTERM);
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => describe(status),
            Err(_) => {
                tracing::warn!(
                    runner.pid = self.pid,
                    ?grace,
                    "engine ignored SIGTERM; killing its process group"
                );
                let _ = killpg(pgid, Signal::SIGKILL);
                describe(self.child.wait().await)
            }
        };
        self.finish(status.clone()).await;
        status
    }

    /// After the leader is reaped: kill whatever is left in its group, and let the log readers drain.
    async fn finish(&mut self, status: String) {
        let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        self.hurry.clear();
        for reader in self.readers.drain(..) {
            // Readers end at EOF, which the group kill guarantees; the timeout is a backstop (a thread still
            // blocked then ends by itself at EOF).
            let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
        }
        tracing::info!(model = %self.label, runner.pid = self.pid, status, "engine stopped");
        self.exit = Some(status);
    }
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (_, Some(sig)) => format!(
                "was killed by signal {}",
                Signal::try_from(sig)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| sig.to_string())
            ),
            _ => "exited".to_string(),
        },
        Err(e) => format!("could not be waited for ({e})"),
    }
}

/// How long an output reader lets an engine's pipe fill between reads.
const COALESCE: Duration = Duration::from_millis(20);

/// Reads an engine's output to EOF on a thread of its own: each line goes to the log hub, the runner's buffer and
/// (at debug level) tracing, and wakes `activity`. Once the engine serves, after each read that did not fill the
/// buffer it lets the pipe fill for [`COALESCE`], so that a burst of small writes costs one wake-up; the engine never waits on it (a pipe
/// holds 64 KiB). Once the engine has exited (`hurry` disconnected) it reads to EOF without pausing.
/// When an output reader pauses between reads.
struct Pace<'a> {
    /// Disconnected once the engine has exited: no more pauses.
    hurry: &'a std::sync::mpsc::Receiver<()>,
    /// Set once the engine is ready: no pauses before.
    serving: &'a std::sync::atomic::AtomicBool,
}

fn read_lines(
    mut pipe: impl std::io::Read,
    pace: Pace<'_>,
    logs: &LogBuffer,
    activity: &Notify,
    label: &str,
    pid: u32,
) {
    let label: Arc<str> = Arc::from(label);
    let mut buf = [0u8; 8192];
    let mut line = Vec::with_capacity(256);
    let append = |line: &mut Vec<u8>, part: &[u8]| {
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&part[..part.len().min(room)]);
    };
    let emit = |line: &mut Vec<u8>| {
        let text = match std::str::from_utf8(line) {
            Ok(s) => s.trim_end().to_owned(),
            Err(_) => String::from_utf8_lossy(line).trim_end().to_owned(),
        };
        line.clear();
        if !text.is_empty() {
            tracing::debug!(target: "engine", model = %label, runner.pid = pid, "{text}");
            crate::logs::hub().push_engine(&label, text.clone());
            logs.push(text);
        }
    };
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut rest = &buf[..n];
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            append(&mut line, &rest[..i]);
            emit(&mut line);
            rest = &rest[i + 1..];
        }
        append(&mut line, rest);
        activity.notify_one();
        if n < buf.len() && pace.serving.load(std::sync::atomic::Ordering::Relaxed) {
            // Returns at once when the engine has exited (the sender is gone).
            let _ = pace.hurry.recv_timeout(COALESCE);
        }
    }
    if !line.is_empty() {
        emit(&mut line);
    }
}

/// Whether process `pid` has died: gone, or a zombie not reaped yet (`/proc/PID/stat` state `Z` or `X`).
pub fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_none_or(|state| matches!(state, 'Z' | 'X')),
        Err(_) => true,
    }
}

/// One `GET /health` on loopback; the status code, or `None` when nothing answers yet.
pub async fn probe_health(port: u16) -> Option<u16> {
    let attempt = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 32];
        let mut got = 0;
        while got < 12 {
            let n = s.read(&mut head[got..]).await.ok()?;
            if n == 0 {
                return None;
            }
            got += n;
        }
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// A free loopback port for an engine to listen on.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["-c".into(), script.into()]
    }

    #[tokio::test]
    async fn a_child_that_exits_during_startup_fails_fast_with_its_output() {
        let mut p = EngineProcess::spawn(
            Path::new("/bin/sh"),
            &sh("echo loading; echo 'bad flag --x' >&2; exit 3"),
            &[],
            "t",
            None,
        )
        .unwrap();
        let port = free_port().unwrap();
        let err = p
            .wait_ready(port, Duration::from_secs(30))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("exited with status 3"), "{msg}");
        assert!(msg.contains("bad flag --x"), "{msg}");
    }

    #[tokio::test]
    async fn stop_kills_the_whole_group_even_when_sigterm_is_ignored() {
        // The leader ignores SIGTERM and has a grandchild that ignores it too.
        let script = "trap '' TERM; sh -c 'trap \"\" TERM; echo $$ > \"$0\"; while :; do sleep 0.05; done' \"$0\" & \
                      while :; do sleep 0.05; done";
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        let mut args = sh(script);
        args.push(pidfile.display().to_string());
        let mut p = EngineProcess::spawn(Path::new("/bin/sh"), &args, &[], "t", None).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let grandchild: i32 = loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "grandchild never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let status = p.stop(Duration::from_millis(200)).await;
        assert!(status.contains("SIGKILL"), "{status}");
        // The grandchild is now a zombie or gone (its parent is dead, so init reaps it).
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(grandchild) {
            assert!(
                Instant::now() < deadline,
                "grandchild {grandchild} survived"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .map(|r| !r.trim_start().starts_with('Z'))
                .unwrap_or(false),
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn log_buffer_keeps_the_tail_and_cuts_long_lines() {
        let mut p = EngineProcess::spawn(
            Path::new("/bin/sh"),
            &sh("i=0; while [ $i -lt 300 ]; do echo line$i; i=$((i+1)); done; head -c 10000 /dev/zero | tr '\\0' x"),
            &[],
            "t",
            None,
        )
        .unwrap();
        p.wait_exit().await;
        let tail = p.logs().tail(3);
        let lines: Vec<&str> = tail.lines().collect();
        assert_eq!(lines[..2], ["line298", "line299"]);
        assert_eq!(lines[2].len(), MAX_LINE);
    }
}
