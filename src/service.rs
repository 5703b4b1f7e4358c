//! systemd integration (`Type=notify`): `READY=1` once listening, `STATUS=` lines that say what is loaded,
//! `WATCHDOG=1` pings while the scheduler answers (only when systemd set `WatchdogSec=`), `RELOADING=1` around a
//! config reload and `STOPPING=1` at shutdown. The status line also says how the pulls and preloads of declared
//! models go (`crate::declared`). Outside systemd (`NOTIFY_SOCKET` unset) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use crate::declared::Declared;
use crate::scheduler::{RunnerInfo, Snapshots};

/// How often the status line is refreshed when no watchdog asks for more.
const STATUS_EVERY: Duration = Duration::from_secs(5);

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "cannot notify systemd");
    }
}

/// Tells systemd we are serving.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd a reload has begun (`RELOADING=1` with the monotonic time, as `Type=notify-reload` wants).
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    notify(&states);
}

/// Tells systemd we are shutting down.
pub fn stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: draining requests and stopping engines"),
    ]);
}

/// The watchdog period systemd asks for, as `sd_watchdog_enabled(3)` reads it: `WATCHDOG_USEC`, for this process
/// unless `WATCHDOG_PID` names another one.
fn watchdog_period(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    let usec: u64 = usec?.parse().ok().filter(|u| *u > 0)?;
    match pid.map(str::parse::<u32>) {
        Some(Ok(p)) if p != std::process::id() => None,
        _ => Some(Duration::from_micros(usec)),
    }
}

/// "2 models loaded, 1 loading, 3 requests waiting for memory": what `systemctl status` shows.
pub fn status_line(runners: &[RunnerInfo]) -> String {
    let loaded = runners.iter().filter(|r| r.endpoint.is_some()).count();
    let loading = runners.iter().filter(|r| r.loading).count();
    let queued = runners.iter().filter(|r| r.queued).count();
    let mut s = format!(
        "{loaded} model{} loaded",
        if loaded == 1 { "" } else { "s" }
    );
    if loading > 0 {
        s += &format!(", {loading} loading");
    }
    if queued > 0 {
        s += &format!(", {queued} waiting for memory");
    }
    s
}

/// Until `shutdown`: refreshes the status line and, when systemd asked for a watchdog, pings it at half its
/// period — but only while the scheduler answers, so a wedged scheduler gets the service restarted.
pub async fn supervise(runners: Snapshots, declared: Arc<Declared>, shutdown: CancellationToken) {
    let watchdog = watchdog_period(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
    );
    let every = watchdog.map_or(STATUS_EVERY, |p| (p / 2).min(STATUS_EVERY));
    let watchdog = watchdog.is_some();
    let mut last = String::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let Ok(runners) = tokio::time::timeout(every, runners.get()).await else {
            tracing::warn!("the scheduler did not answer within {every:?}; no watchdog ping");
            continue;
        };
        let mut status = status_line(&runners);
        if let Some(more) = declared.status() {
            status = format!("{status}; {more}");
        }
        let mut states = Vec::new();
        if watchdog {
            states.push(NotifyState::Watchdog);
        }
        if status != last {
            states.push(NotifyState::Status(&status));
        }
        if !states.is_empty() {
            notify(&states);
        }
        last = status;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeepAlive;
    use crate::engines::Mode;
    use crate::scheduler::{Endpoint, Usage};

    fn runner(endpoint: bool, loading: bool, queued: bool) -> RunnerInfo {
        RunnerInfo {
            model_id: "m".into(),
            model_name: "m".into(),
            engine: crate::engines::llamacpp::ENGINE,
            mode: Mode::Completion,
            queued,
            loading,
            waiting: 0,
            in_flight: 0,
            last_used: None,
            keep_alive: KeepAlive::DEFAULT,
            endpoint: endpoint.then_some(Endpoint { port: 1, pid: 2 }),
            context_size: 512,
            predicted: 0,
            measured: None,
            usage: Usage::new(),
            draft: None,
            draft_id: None,
            pinned: false,
        }
    }

    #[test]
    fn the_watchdog_is_ours_unless_another_pid_is_named() {
        let me = std::process::id().to_string();
        let half = Some(Duration::from_millis(500));
        assert_eq!(watchdog_period(Some("500000"), None), half);
        assert_eq!(watchdog_period(Some("500000"), Some(&me)), half);
        assert_eq!(watchdog_period(Some("500000"), Some("1")), None);
        assert_eq!(watchdog_period(Some("0"), None), None);
        assert_eq!(watchdog_period(None, None), None);
    }

    #[test]
    fn the_status_line_counts_runners() {
        assert_eq!(status_line(&[]), "0 models loaded");
        assert_eq!(status_line(&[runner(true, false, false)]), "1 model loaded");
        assert_eq!(
            status_line(&[
                runner(true, false, false),
                runner(true, false, false),
                runner(false, true, false),
                runner(false, false, true)
            ]),
            "2 models loaded, 1 loading, 1 waiting for memory"
        );
    }
}
